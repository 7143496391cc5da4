//! Kinds whose only rules are their defaulting, validation and printer (and, for Events,
//! expiry after `--event-ttl`).

use rkube_api::table;

use super::Strategy;

pub static CONFIG_MAP: Strategy = Strategy {
    kind: "ConfigMap",
    printer: &table::CONFIG_MAP,
    ..Strategy::DEFAULT
};

pub static SECRET: Strategy = Strategy {
    kind: "Secret",
    printer: &table::SECRET,
    ..Strategy::DEFAULT
};

pub static SERVICE_ACCOUNT: Strategy = Strategy {
    kind: "ServiceAccount",
    printer: &table::SERVICE_ACCOUNT,
    ..Strategy::DEFAULT
};

pub static NODE: Strategy = Strategy {
    kind: "Node",
    printer: &table::NODE,
    ..Strategy::DEFAULT
};

pub static LEASE: Strategy = Strategy {
    kind: "Lease",
    printer: &table::LEASE,
    ..Strategy::DEFAULT
};

pub static EVENT: Strategy = Strategy {
    kind: "Event",
    printer: &table::EVENT,
    expires_after_event_ttl: true,
    ..Strategy::DEFAULT
};
