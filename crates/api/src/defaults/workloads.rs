//! Deployments, ReplicaSets, DaemonSets, StatefulSets and Jobs: replicas, update strategies,
//! history limits, a Job's generated selector, and each template's pod spec.

use serde_json::{json, Map, Value};

use super::pod::{default_template, TemplateOwner};
use super::{child_object, object_at, set_if_absent};

pub fn default_deployment(obj: &mut Value) {
    let spec = object_at(obj, "spec");
    set_if_absent(spec, "replicas", json!(1));
    let strategy = child_object(spec, "strategy");
    set_if_absent(strategy, "type", json!("RollingUpdate"));
    if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
        let ru = child_object(strategy, "rollingUpdate");
        set_if_absent(ru, "maxUnavailable", json!("25%"));
        set_if_absent(ru, "maxSurge", json!("25%"));
    }
    set_if_absent(spec, "revisionHistoryLimit", json!(10));
    set_if_absent(spec, "progressDeadlineSeconds", json!(600));
    default_template(spec, TemplateOwner::Workload);
}

pub fn default_replica_set(obj: &mut Value) {
    let spec = object_at(obj, "spec");
    set_if_absent(spec, "replicas", json!(1));
    default_template(spec, TemplateOwner::Workload);
}

pub fn default_daemon_set(obj: &mut Value) {
    let spec = object_at(obj, "spec");
    let strategy = child_object(spec, "updateStrategy");
    set_if_absent(strategy, "type", json!("RollingUpdate"));
    if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
        let ru = child_object(strategy, "rollingUpdate");
        set_if_absent(ru, "maxUnavailable", json!(1));
        set_if_absent(ru, "maxSurge", json!(0));
    }
    set_if_absent(spec, "revisionHistoryLimit", json!(10));
    default_template(spec, TemplateOwner::Workload);
}

pub fn default_stateful_set(obj: &mut Value) {
    let spec = object_at(obj, "spec");
    set_if_absent(spec, "podManagementPolicy", json!("OrderedReady"));
    let strategy = child_object(spec, "updateStrategy");
    set_if_absent(strategy, "type", json!("RollingUpdate"));
    if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
        let ru = child_object(strategy, "rollingUpdate");
        set_if_absent(ru, "partition", json!(0));
    }
    set_if_absent(spec, "replicas", json!(1));
    set_if_absent(spec, "revisionHistoryLimit", json!(10));
    let retention = child_object(spec, "persistentVolumeClaimRetentionPolicy");
    set_if_absent(retention, "whenDeleted", json!("Retain"));
    set_if_absent(retention, "whenScaled", json!("Retain"));
    default_template(spec, TemplateOwner::Workload);
}

pub fn default_job(obj: &mut Value) {
    // Upstream defaults (copying the user's template labels) before the strategy adds its own.
    copy_template_labels_to_job(obj);
    generate_job_selector(obj);
    copy_template_labels_to_job(obj);
    {
        let spec = object_at(obj, "spec");
        let unset = |s: &Map<String, Value>, f: &str| s.get(f).is_none_or(Value::is_null);
        // A non-parallel job leaves both unset; then both are 1.
        if unset(spec, "completions") && unset(spec, "parallelism") {
            spec.insert("completions".into(), json!(1));
        }
        set_if_absent(spec, "parallelism", json!(1));
        let backoff = if unset(spec, "backoffLimitPerIndex") {
            6
        } else {
            i64::from(i32::MAX)
        };
        set_if_absent(spec, "backoffLimit", json!(backoff));
        set_if_absent(spec, "completionMode", json!("NonIndexed"));
        set_if_absent(spec, "suspend", json!(false));
        let replacement = if unset(spec, "podFailurePolicy") {
            "TerminatingOrFailed"
        } else {
            "Failed"
        };
        set_if_absent(spec, "podReplacementPolicy", json!(replacement));
        default_template(spec, TemplateOwner::Job);
    }
}

/// The Job create strategy's generated selector: pods are matched by the Job's uid, and
/// the template carries the job name and uid under both the current and legacy keys.
/// Skipped with `manualSelector: true` or before the server has assigned a uid.
fn generate_job_selector(obj: &mut Value) {
    let uid = obj["metadata"]["uid"].as_str().unwrap_or("").to_string();
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    if uid.is_empty() || obj["spec"]["manualSelector"].as_bool() == Some(true) {
        return;
    }
    let spec = object_at(obj, "spec");
    let template = child_object(spec, "template");
    let labels = child_object(child_object(template, "metadata"), "labels");
    for (label, value) in [
        ("job-name", &name),
        ("batch.kubernetes.io/job-name", &name),
        ("controller-uid", &uid),
        ("batch.kubernetes.io/controller-uid", &uid),
    ] {
        labels.entry(label).or_insert_with(|| json!(value));
    }
    let selector = child_object(spec, "selector");
    child_object(selector, "matchLabels")
        .entry("batch.kubernetes.io/controller-uid")
        .or_insert_with(|| json!(uid));
}

/// The job takes its template's labels when it has none of its own.
fn copy_template_labels_to_job(obj: &mut Value) {
    let template_labels = obj["spec"]["template"]["metadata"]["labels"].clone();
    if template_labels.as_object().is_some_and(|l| !l.is_empty()) {
        let meta = object_at(obj, "metadata");
        if meta
            .get("labels")
            .and_then(Value::as_object)
            .is_none_or(Map::is_empty)
        {
            meta.insert("labels".into(), template_labels);
        }
    }
}
