//! Workloads (Deployments, ReplicaSets, DaemonSets, StatefulSets, Jobs), HPAs and
//! PodDisruptionBudgets: generation tracking, and the scale subresource.

use rkube_api::registry::ResourceInfo;
use rkube_api::selectors::LabelSelector;
use rkube_api::{kinds, ApiError, StatusCause};
use serde_json::{json, Value};

use super::Strategy;

pub static DEPLOYMENT: Strategy = Strategy {
    rules: &kinds::DEPLOYMENT,
    tracks_generation: true,
    ..Strategy::DEFAULT
};

pub static REPLICA_SET: Strategy = Strategy {
    rules: &kinds::REPLICA_SET,
    tracks_generation: true,
    ..Strategy::DEFAULT
};

pub static DAEMON_SET: Strategy = Strategy {
    rules: &kinds::DAEMON_SET,
    tracks_generation: true,
    ..Strategy::DEFAULT
};

pub static STATEFUL_SET: Strategy = Strategy {
    rules: &kinds::STATEFUL_SET,
    tracks_generation: true,
    ..Strategy::DEFAULT
};

pub static JOB: Strategy = Strategy {
    rules: &kinds::JOB,
    tracks_generation: true,
    ..Strategy::DEFAULT
};

pub static HORIZONTAL_POD_AUTOSCALER: Strategy = Strategy {
    rules: &kinds::HORIZONTAL_POD_AUTOSCALER,
    ..Strategy::DEFAULT
};

pub static POD_DISRUPTION_BUDGET: Strategy = Strategy {
    rules: &kinds::POD_DISRUPTION_BUDGET,
    tracks_generation: true,
    ..Strategy::DEFAULT
};

/// A label selector in its string form (`app=web,tier in (a,b)`), as a Scale reports it:
/// rkube-api's selector, printed as upstream's `Selector.String()`. One that does not parse
/// never passed validation; it reads as selecting nothing, the empty string.
fn selector_string(selector: &Value) -> String {
    LabelSelector::from_json(selector)
        .map(|s| s.to_string())
        .unwrap_or_default()
}

/// The `autoscaling/v1` Scale of a workload (the scale subresource's view of it).
pub fn scale_of(obj: &Value) -> Value {
    let meta = &obj["metadata"];
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"],
            "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(0)},
        "status": {
            "replicas": obj["status"]["replicas"].as_i64().unwrap_or(0),
            "selector": selector_string(&obj["spec"]["selector"]),
        },
    })
}

/// `workload` with the replicas of `desired` (an `autoscaling/v1` Scale), which must be a
/// whole number, at least 0; absent means 0.
pub fn scaled(
    resource: &ResourceInfo,
    name: &str,
    workload: &Value,
    desired: &Value,
) -> Result<Value, ApiError> {
    let replicas = desired["spec"]["replicas"].as_i64().unwrap_or(0);
    if replicas < 0
        || !(desired["spec"]["replicas"].is_i64() || desired["spec"]["replicas"].is_null())
    {
        return Err(ApiError::invalid(
            resource,
            name,
            vec![StatusCause::invalid(
                "spec.replicas",
                &desired["spec"]["replicas"],
                "must be greater than or equal to 0",
            )],
        ));
    }
    let mut new = workload.clone();
    new["spec"]["replicas"] = json!(replicas);
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_strings_match_kubectl_form() {
        let s = selector_string(
            &json!({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]}),
        );
        assert_eq!(s, "app=web,tier in (a,b)");
        // Regression: this copy kept matchLabels before matchExpressions and the values in
        // the order written; upstream's selector String() (and rkube's query-string form)
        // sorts requirements by key and set values.
        let s = selector_string(
            &json!({"matchLabels": {"z": "1"}, "matchExpressions": [{"key": "a", "operator": "In", "values": ["y", "x"]}]}),
        );
        assert_eq!(s, "a in (x,y),z=1");
    }

    #[test]
    fn scaling_takes_whole_non_negative_replicas() {
        let deployments = rkube_api::registry::find("apps", "v1", "deployments").unwrap();
        let deploy = json!({"metadata": {"name": "d"}, "spec": {"replicas": 1}});
        let scale = |replicas: Value| json!({"spec": {"replicas": replicas}});
        let scaled_to = |desired: &Value| scaled(deployments, "d", &deploy, desired);
        assert_eq!(scaled_to(&scale(json!(3))).unwrap()["spec"]["replicas"], 3);
        assert_eq!(
            scaled_to(&json!({"spec": {}})).unwrap()["spec"]["replicas"],
            0
        );
        assert_eq!(scaled_to(&scale(json!(-1))).unwrap_err().code, 422);
        assert_eq!(scaled_to(&scale(json!(1.5))).unwrap_err().code, 422);
        assert_eq!(scaled_to(&scale(json!("2"))).unwrap_err().code, 422);
    }
}
