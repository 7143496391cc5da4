//! Kinds whose only rules are their defaulting, validation and printer (and, for Events,
//! expiry after `--event-ttl`).

use rkube_api::kinds;

use super::Strategy;

pub static CONFIG_MAP: Strategy = Strategy {
    rules: &kinds::CONFIG_MAP,
    ..Strategy::DEFAULT
};

pub static SECRET: Strategy = Strategy {
    rules: &kinds::SECRET,
    ..Strategy::DEFAULT
};

pub static SERVICE_ACCOUNT: Strategy = Strategy {
    rules: &kinds::SERVICE_ACCOUNT,
    ..Strategy::DEFAULT
};

pub static NODE: Strategy = Strategy {
    rules: &kinds::NODE,
    ..Strategy::DEFAULT
};

pub static LEASE: Strategy = Strategy {
    rules: &kinds::LEASE,
    ..Strategy::DEFAULT
};

pub static EVENT: Strategy = Strategy {
    rules: &kinds::EVENT,
    expires_after_event_ttl: true,
    ..Strategy::DEFAULT
};
