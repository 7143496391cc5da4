//! Pods: graceful deletion, and the rules of the binding subresource (eviction is a delete).

use rkube_api::registry::ResourceInfo;
use rkube_api::{kinds, ApiError, StatusCause};
use serde_json::{json, Value};

use super::Strategy;
use crate::objects;

pub static POD: Strategy = Strategy {
    rules: &kinds::POD,
    grace_period: Some(grace_period),
    ..Strategy::DEFAULT
};

/// The grace period a pod deletion gets: immediate for pods that never ran anywhere or
/// have finished, as upstream.
fn grace_period(pod: &Value, requested: Option<i64>) -> i64 {
    let unscheduled = pod["spec"]["nodeName"].as_str().is_none_or(str::is_empty);
    let finished = matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded") | Some("Failed")
    );
    if unscheduled || finished {
        return 0;
    }
    requested
        .or_else(|| pod["spec"]["terminationGracePeriodSeconds"].as_i64())
        .unwrap_or(30)
        .max(0)
}

/// The node a Binding names, which must be given.
pub fn binding_target(
    resource: &ResourceInfo,
    name: &str,
    binding: &Value,
) -> Result<String, ApiError> {
    let node = binding["target"]["name"].as_str().unwrap_or("");
    if node.is_empty() {
        return Err(ApiError::invalid(
            resource,
            name,
            vec![StatusCause::required("target.name")],
        ));
    }
    Ok(node.to_string())
}

/// `pod` bound to `node`: refused when it is being deleted or already bound; otherwise
/// `spec.nodeName` is set and the PodScheduled condition turns True.
pub fn bind(
    resource: &ResourceInfo,
    name: &str,
    pod: &Value,
    node: &str,
) -> Result<Value, ApiError> {
    if objects::is_terminating(pod) {
        return Err(ApiError::conflict_because(
            resource,
            name,
            "pod is being deleted, cannot be assigned to a host",
        ));
    }
    if let Some(existing) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
        return Err(ApiError::conflict_because(
            resource,
            name,
            &format!("pod {name} is already assigned to node \"{existing}\""),
        ));
    }
    let mut bound = pod.clone();
    bound["spec"]["nodeName"] = json!(node);
    let mut conditions: Vec<Value> = bound["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["type"] != "PodScheduled")
        .cloned()
        .collect();
    conditions.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": objects::now_rfc3339()}));
    bound["status"]["conditions"] = json!(conditions);
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_that_never_ran_are_deleted_at_once() {
        assert_eq!(grace_period(&json!({"spec": {}}), Some(30)), 0);
        assert_eq!(
            grace_period(
                &json!({"spec": {"nodeName": "n", "terminationGracePeriodSeconds": 5}}),
                None
            ),
            5
        );
        assert_eq!(
            grace_period(
                &json!({"spec": {"nodeName": "n"}, "status": {"phase": "Failed"}}),
                Some(9)
            ),
            0
        );
        assert_eq!(
            grace_period(&json!({"spec": {"nodeName": "n"}}), Some(0)),
            0
        );
    }

    #[test]
    fn binding_sets_the_node_once_and_marks_the_pod_scheduled() {
        let pods = rkube_api::registry::find("", "v1", "pods").unwrap();
        let pending = json!({"metadata": {"name": "p"}, "spec": {},
            "status": {"conditions": [{"type": "PodScheduled", "status": "False"}]}});
        let bound = bind(pods, "p", &pending, "n1").unwrap();
        assert_eq!(bound["spec"]["nodeName"], "n1");
        let conditions = bound["status"]["conditions"].as_array().unwrap();
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0]["status"], "True");

        assert_eq!(bind(pods, "p", &bound, "n2").unwrap_err().code, 409);
        let mut deleting = pending;
        deleting["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        assert_eq!(bind(pods, "p", &deleting, "n1").unwrap_err().code, 409);
        assert_eq!(
            binding_target(pods, "p", &json!({"target": {}}))
                .unwrap_err()
                .code,
            422
        );
    }
}
