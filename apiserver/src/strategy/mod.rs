//! Per-resource strategies, as upstream's registry keeps them: everything the API server does
//! differently for one kind is found in that kind's [`Strategy`], so that the handlers only
//! implement the verbs.
//!
//! - `prepare` ([`prepare_create`], [`prepare_update`]): what every write shares
//!   (server-owned metadata, the status/spec split of an update, generation bumps), and the
//!   kind's defaulting and validation;
//! - one module per family of kinds, each holding its `Strategy` values and the rules behind
//!   its subresources (a pod's binding, a workload's scale, a namespace's finalize and
//!   lifecycle).
//!
//! The Kubernetes semantics themselves live in `rkube-api` (no IO, shared with the other
//! components): a strategy names its kind's [`KindRules`] there, which hold the name rule,
//! defaulting, validation and Table printer.

pub mod namespace;
pub mod pod;
mod prepare;
pub mod service;
mod simple;
pub mod workloads;

use rkube_api::kinds::KindRules;
use rkube_api::registry::ResourceInfo;
use rkube_api::ApiError;
use serde_json::Value;

use crate::ApiState;

pub use prepare::{prepare_create, prepare_update, UpdateScope};

/// What the API server does differently for one kind. Kinds with nothing special take
/// [`Strategy::DEFAULT`] for every field they do not name.
pub struct Strategy {
    /// The kind's rules in rkube-api: its kind (in every group that serves it; both
    /// Event APIs share one), name rule, defaulting, validation and Table printer.
    pub rules: &'static KindRules,
    /// Whether `metadata.generation` is maintained: 1 on create, bumped whenever anything
    /// but metadata and status changes (upstream: workloads and PodDisruptionBudgets).
    pub tracks_generation: bool,
    /// Sets the fields the server assigns from the cluster's state (a Service's ClusterIP
    /// and NodePorts), on create once the namespace is known to be live.
    pub assign_on_create: fn(&ApiState, &ResourceInfo, &mut Value) -> Result<(), ApiError>,
    /// Last step of every update, given the stored object: keeps the assigned
    /// fields the update left out, and refuses changes to them.
    pub keep_assigned_on_update: fn(&ResourceInfo, &Value, &mut Value) -> Result<(), ApiError>,
    /// The grace period of a delete, for kinds deleted gracefully (pods): given the object
    /// and the grace period the client asked for. `None`: deleted without one, at once
    /// unless finalizers hold it.
    pub grace_period: Option<fn(&Value, Option<i64>) -> i64>,
    /// What a delete changes besides the deletion marks (a namespace turns Terminating).
    pub mark_terminating: fn(&mut Value),
    /// Whether something besides `metadata.finalizers` still holds a terminating object in
    /// storage (a namespace's `spec.finalizers`).
    pub held_after_deletion: fn(&Value) -> bool,
    /// Whether the API server deletes these objects `--event-ttl` after their last
    /// activity (upstream's TTL on the event registry).
    pub expires_after_event_ttl: bool,
}

impl Strategy {
    /// Nothing kind-specific: metadata rules only, NAME and AGE columns.
    pub const DEFAULT: Strategy = Strategy {
        rules: &KindRules::DEFAULT,
        tracks_generation: false,
        assign_on_create: |_, _, _| Ok(()),
        keep_assigned_on_update: |_, _, _| Ok(()),
        grace_period: None,
        mark_terminating: |_| {},
        held_after_deletion: |_| false,
        expires_after_event_ttl: false,
    };
}

/// Every strategy, one per kind served.
static STRATEGIES: &[&Strategy] = &[
    &namespace::NAMESPACE,
    &pod::POD,
    &service::SERVICE,
    &service::ENDPOINTS,
    &service::ENDPOINT_SLICE,
    &simple::CONFIG_MAP,
    &simple::SECRET,
    &simple::NODE,
    &simple::EVENT,
    &simple::SERVICE_ACCOUNT,
    &workloads::DEPLOYMENT,
    &workloads::REPLICA_SET,
    &workloads::DAEMON_SET,
    &workloads::STATEFUL_SET,
    &workloads::JOB,
    &workloads::HORIZONTAL_POD_AUTOSCALER,
    &simple::LEASE,
    &workloads::POD_DISRUPTION_BUDGET,
];

/// The strategy of a served resource (every entry of the registry has one, checked by a
/// test; anything else gets the default).
pub fn for_resource(resource: &ResourceInfo) -> &'static Strategy {
    STRATEGIES
        .iter()
        .copied()
        .find(|s| s.rules.kind == resource.kind)
        .unwrap_or(&Strategy::DEFAULT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rkube_api::registry::REGISTRY;

    #[test]
    fn every_served_kind_has_exactly_one_strategy() {
        for resource in REGISTRY {
            let matching = STRATEGIES
                .iter()
                .filter(|s| s.rules.kind == resource.kind)
                .count();
            assert_eq!(matching, 1, "{}", resource.kind);
        }
        for strategy in STRATEGIES {
            assert!(
                REGISTRY.iter().any(|r| r.kind == strategy.rules.kind),
                "strategy for {} which is not served",
                strategy.rules.kind
            );
        }
    }

    #[test]
    fn generation_is_tracked_for_workloads_and_disruption_budgets() {
        let tracking: Vec<&str> = REGISTRY
            .iter()
            .filter(|r| for_resource(r).tracks_generation)
            .map(|r| r.kind)
            .collect();
        assert_eq!(
            tracking,
            [
                "Deployment",
                "ReplicaSet",
                "DaemonSet",
                "StatefulSet",
                "Job",
                "PodDisruptionBudget"
            ]
        );
    }
}
