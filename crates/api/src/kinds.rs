//! Each built-in kind's rules in one place: how its names are checked, its defaulting, its
//! validation and its `kubectl get` printer. The API server's per-resource strategy points
//! at one of these statics; a component that only has a kind name looks one up with
//! [`find`].
//!
//! The rules themselves live by family in [`defaults`](crate::defaults),
//! [`validation`](crate::validation) and [`table`](crate::table).

use serde_json::Value;

use crate::defaults::{self, cluster, config, service, workloads};
use crate::registry::ResourceInfo;
use crate::status::StatusCause;
use crate::table::{self, Printer};
use crate::validation::names::NameRule;
use crate::validation::{self as v, meta};

/// What rkube-api knows about one kind. Kinds with nothing special take
/// [`KindRules::DEFAULT`] for every field they do not name.
pub struct KindRules {
    /// The kind these rules serve, in every group that serves it (both Event APIs share
    /// them).
    pub kind: &'static str,
    /// How `metadata.name` (and `generateName`) is checked.
    pub name_rule: NameRule,
    /// Fills in upstream's defaults; given an object, never anything else.
    pub defaults: fn(&mut Value),
    /// The kind's own checks, beyond the metadata every kind shares.
    pub validate_kind: fn(&Value, &mut Vec<StatusCause>),
    /// The kind's own rules for an update (`new`, `old`): what may not change.
    pub validate_kind_update: fn(&Value, &Value, &mut Vec<StatusCause>),
    /// Columns and cells of `kubectl get`.
    pub printer: &'static Printer,
}

impl KindRules {
    /// Metadata rules only, no defaults, NAME and AGE columns.
    pub const DEFAULT: KindRules = KindRules {
        kind: "",
        name_rule: NameRule::Dns1123Subdomain,
        defaults: |_| {},
        validate_kind: |_, _| {},
        validate_kind_update: |_, _, _| {},
        printer: &table::DEFAULT,
    };

    /// Fills in upstream's defaults (only absent fields; nothing the client sent changes).
    /// Anything but a JSON object is left alone for validation to refuse.
    pub fn apply_defaults(&self, obj: &mut Value) {
        if obj.is_object() {
            (self.defaults)(obj);
        }
    }

    /// Every problem with a new object (after defaulting). `resource` says whether it is
    /// namespaced.
    pub fn validate_create(&self, resource: &ResourceInfo, obj: &Value) -> Vec<StatusCause> {
        let mut errs = meta::validate_object_meta(resource, self.name_rule, obj);
        (self.validate_kind)(obj, &mut errs);
        errs
    }

    /// Every problem with an update of `old` to `new` (after defaulting), including the
    /// fields that may not change.
    pub fn validate_update(
        &self,
        resource: &ResourceInfo,
        new: &Value,
        old: &Value,
    ) -> Vec<StatusCause> {
        let mut errs = meta::validate_object_meta(resource, self.name_rule, new);
        errs.extend(meta::validate_object_meta_update(new, old));
        (self.validate_kind)(new, &mut errs);
        (self.validate_kind_update)(new, old, &mut errs);
        errs
    }
}

pub static NAMESPACE: KindRules = KindRules {
    kind: "Namespace",
    name_rule: NameRule::Dns1123Label,
    defaults: cluster::default_namespace,
    printer: &table::NAMESPACE,
    ..KindRules::DEFAULT
};

pub static POD: KindRules = KindRules {
    kind: "Pod",
    defaults: defaults::pod::default_pod,
    validate_kind: v::pod::validate_pod,
    validate_kind_update: v::pod::validate_pod_update,
    printer: &table::POD,
    ..KindRules::DEFAULT
};

pub static SERVICE: KindRules = KindRules {
    kind: "Service",
    name_rule: NameRule::Dns1035Label,
    defaults: service::default_service,
    validate_kind: v::service::validate_service,
    validate_kind_update: v::service::validate_service_update,
    printer: &table::SERVICE,
};

pub static ENDPOINTS: KindRules = KindRules {
    kind: "Endpoints",
    defaults: service::default_endpoints,
    printer: &table::ENDPOINTS,
    ..KindRules::DEFAULT
};

pub static ENDPOINT_SLICE: KindRules = KindRules {
    kind: "EndpointSlice",
    defaults: service::default_endpoint_slice,
    printer: &table::ENDPOINT_SLICE,
    ..KindRules::DEFAULT
};

pub static CONFIG_MAP: KindRules = KindRules {
    kind: "ConfigMap",
    validate_kind: v::config::validate_config_map,
    validate_kind_update: v::config::validate_immutable_data,
    printer: &table::CONFIG_MAP,
    ..KindRules::DEFAULT
};

pub static SECRET: KindRules = KindRules {
    kind: "Secret",
    defaults: config::default_secret,
    validate_kind: v::config::validate_secret,
    validate_kind_update: v::config::validate_secret_update,
    printer: &table::SECRET,
    ..KindRules::DEFAULT
};

pub static NODE: KindRules = KindRules {
    kind: "Node",
    defaults: cluster::default_node,
    printer: &table::NODE,
    ..KindRules::DEFAULT
};

pub static EVENT: KindRules = KindRules {
    kind: "Event",
    printer: &table::EVENT,
    ..KindRules::DEFAULT
};

pub static SERVICE_ACCOUNT: KindRules = KindRules {
    kind: "ServiceAccount",
    printer: &table::SERVICE_ACCOUNT,
    ..KindRules::DEFAULT
};

pub static DEPLOYMENT: KindRules = KindRules {
    kind: "Deployment",
    defaults: workloads::default_deployment,
    validate_kind: v::workloads::validate_deployment,
    validate_kind_update: v::workloads::validate_selector_update,
    printer: &table::DEPLOYMENT,
    ..KindRules::DEFAULT
};

pub static REPLICA_SET: KindRules = KindRules {
    kind: "ReplicaSet",
    defaults: workloads::default_replica_set,
    validate_kind: v::workloads::validate_replica_set,
    validate_kind_update: v::workloads::validate_selector_update,
    printer: &table::REPLICA_SET,
    ..KindRules::DEFAULT
};

pub static DAEMON_SET: KindRules = KindRules {
    kind: "DaemonSet",
    defaults: workloads::default_daemon_set,
    validate_kind: v::workloads::validate_daemon_set,
    validate_kind_update: v::workloads::validate_selector_update,
    printer: &table::DAEMON_SET,
    ..KindRules::DEFAULT
};

pub static STATEFUL_SET: KindRules = KindRules {
    kind: "StatefulSet",
    defaults: workloads::default_stateful_set,
    validate_kind: v::workloads::validate_stateful_set,
    validate_kind_update: v::workloads::validate_stateful_set_update,
    printer: &table::STATEFUL_SET,
    ..KindRules::DEFAULT
};

pub static JOB: KindRules = KindRules {
    kind: "Job",
    defaults: workloads::default_job,
    validate_kind: v::workloads::validate_job,
    validate_kind_update: v::workloads::validate_job_update,
    printer: &table::JOB,
    ..KindRules::DEFAULT
};

pub static HORIZONTAL_POD_AUTOSCALER: KindRules = KindRules {
    kind: "HorizontalPodAutoscaler",
    ..KindRules::DEFAULT
};

pub static LEASE: KindRules = KindRules {
    kind: "Lease",
    printer: &table::LEASE,
    ..KindRules::DEFAULT
};

pub static POD_DISRUPTION_BUDGET: KindRules = KindRules {
    kind: "PodDisruptionBudget",
    validate_kind: v::workloads::validate_pod_disruption_budget,
    printer: &table::POD_DISRUPTION_BUDGET,
    ..KindRules::DEFAULT
};

/// Every kind's rules, one entry per kind served.
pub static ALL: &[&KindRules] = &[
    &NAMESPACE,
    &POD,
    &SERVICE,
    &ENDPOINTS,
    &ENDPOINT_SLICE,
    &CONFIG_MAP,
    &SECRET,
    &NODE,
    &EVENT,
    &SERVICE_ACCOUNT,
    &DEPLOYMENT,
    &REPLICA_SET,
    &DAEMON_SET,
    &STATEFUL_SET,
    &JOB,
    &HORIZONTAL_POD_AUTOSCALER,
    &LEASE,
    &POD_DISRUPTION_BUDGET,
];

/// The rules of a kind known only by name (built-in kinds are named uniquely across
/// groups).
pub fn find(kind: &str) -> Option<&'static KindRules> {
    ALL.iter().copied().find(|rules| rules.kind == kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::REGISTRY;

    #[test]
    fn every_served_kind_has_exactly_one_set_of_rules() {
        for resource in REGISTRY {
            let matching = ALL.iter().filter(|r| r.kind == resource.kind).count();
            assert_eq!(matching, 1, "{}", resource.kind);
        }
        for rules in ALL {
            assert!(
                REGISTRY.iter().any(|r| r.kind == rules.kind),
                "rules for {} which is not served",
                rules.kind
            );
        }
    }

    #[test]
    fn names_are_labels_for_namespaces_and_services_and_subdomains_elsewhere() {
        let rule_of = |kind| find(kind).map(|r| r.name_rule);
        assert_eq!(rule_of("Namespace"), Some(NameRule::Dns1123Label));
        assert_eq!(rule_of("Service"), Some(NameRule::Dns1035Label));
        for kind in ["Pod", "ConfigMap", "Deployment", "Lease"] {
            assert_eq!(rule_of(kind), Some(NameRule::Dns1123Subdomain), "{kind}");
        }
        assert!(find("NoSuchKind").is_none());
    }

    #[test]
    fn anything_but_an_object_is_left_for_validation() {
        let mut not_an_object = serde_json::json!(["x"]);
        SECRET.apply_defaults(&mut not_an_object);
        assert_eq!(not_an_object, serde_json::json!(["x"]));
    }
}
