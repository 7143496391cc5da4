//! Workloads (Deployments, ReplicaSets, DaemonSets, StatefulSets, Jobs) and
//! PodDisruptionBudgets: replica counts, selector and template, update strategies, and the
//! spec fields an update may not change.

use serde_json::{json, Map, Value};

use super::causes::{child, immutable, invalid_raw, required_detail};
use super::meta::{validate_annotations, validate_label_selector, validate_labels};
use super::pod::{self, SpecOwner};
use super::{gofmt, names};
use crate::selectors::LabelSelector;
use crate::status::StatusCause;

pub fn validate_deployment(obj: &Value, errs: &mut Vec<StatusCause>) {
    let spec = &obj["spec"];
    validate_nonnegative(
        obj,
        &[
            "replicas",
            "minReadySeconds",
            "revisionHistoryLimit",
            "progressDeadlineSeconds",
        ],
        errs,
    );
    validate_selector_and_template(
        obj,
        "deployment",
        "ReplicaSet",
        SpecOwner::Workload,
        true,
        errs,
    );
    let strategy = &spec["strategy"];
    match strategy["type"].as_str().unwrap_or("") {
        "Recreate" => {
            if !strategy["rollingUpdate"].is_null() {
                errs.push(StatusCause::forbidden(
                    "spec.strategy.rollingUpdate",
                    "may not be specified when strategy `type` is 'Recreate'",
                ));
            }
        }
        "RollingUpdate" if strategy["rollingUpdate"].is_null() => errs.push(required_detail(
            "spec.strategy.rollingUpdate".to_string(),
            "this should be defaulted and never be nil",
        )),
        "RollingUpdate" => {
            validate_deployment_rolling_update(&strategy["rollingUpdate"], errs);
        }
        _ => errs.push(StatusCause::not_supported(
            "spec.strategy",
            strategy,
            &["Recreate", "RollingUpdate"],
        )),
    }
    if let Some(pds) = spec["progressDeadlineSeconds"].as_i64() {
        if pds <= spec["minReadySeconds"].as_i64().unwrap_or(0) {
            errs.push(StatusCause::invalid(
                "spec.progressDeadlineSeconds",
                &spec["progressDeadlineSeconds"],
                "must be greater than minReadySeconds",
            ));
        }
    }
}

pub fn validate_replica_set(obj: &Value, errs: &mut Vec<StatusCause>) {
    validate_nonnegative(obj, &["replicas", "minReadySeconds"], errs);
    validate_selector_and_template(
        obj,
        "deployment",
        "ReplicaSet",
        SpecOwner::Workload,
        true,
        errs,
    );
}

pub fn validate_daemon_set(obj: &Value, errs: &mut Vec<StatusCause>) {
    validate_nonnegative(obj, &["minReadySeconds", "revisionHistoryLimit"], errs);
    validate_selector_and_template(
        obj,
        "daemonset",
        "DaemonSet",
        SpecOwner::Workload,
        true,
        errs,
    );
    let strategy = &obj["spec"]["updateStrategy"];
    match strategy["type"].as_str().unwrap_or("") {
        "OnDelete" => {}
        "RollingUpdate" if strategy["rollingUpdate"].is_null() => {
            errs.push(StatusCause::required("spec.updateStrategy.rollingUpdate"))
        }
        "RollingUpdate" => validate_daemonset_rolling_update(&strategy["rollingUpdate"], errs),
        _ => errs.push(StatusCause::not_supported(
            "spec.updateStrategy",
            strategy,
            &["RollingUpdate", "OnDelete"],
        )),
    }
}

pub fn validate_stateful_set(obj: &Value, errs: &mut Vec<StatusCause>) {
    let spec = &obj["spec"];
    validate_nonnegative(
        obj,
        &["replicas", "minReadySeconds", "revisionHistoryLimit"],
        errs,
    );
    validate_selector_and_template(
        obj,
        "statefulset",
        "StatefulSet",
        SpecOwner::Workload,
        true,
        errs,
    );
    match spec["podManagementPolicy"].as_str().unwrap_or("") {
        "OrderedReady" | "Parallel" => {}
        _ => errs.push(StatusCause::invalid(
            "spec.podManagementPolicy",
            &spec["podManagementPolicy"],
            "must be 'OrderedReady' or 'Parallel'",
        )),
    }
    let strategy = &spec["updateStrategy"];
    match strategy["type"].as_str().unwrap_or("") {
        "OnDelete" => {
            if !strategy["rollingUpdate"].is_null() {
                errs.push(invalid_raw(
                    "spec.updateStrategy.rollingUpdate".to_string(),
                    &strategy["rollingUpdate"].to_string(),
                    "only allowed for updateStrategy 'RollingUpdate'",
                ));
            }
        }
        "RollingUpdate" => {
            let ru = &strategy["rollingUpdate"];
            if ru["partition"].as_i64().is_some_and(|p| p < 0) {
                errs.push(StatusCause::invalid(
                    "spec.updateStrategy.rollingUpdate.partition",
                    &ru["partition"],
                    "must be greater than or equal to 0",
                ));
            }
            if !ru["maxUnavailable"].is_null() {
                let path = "spec.updateStrategy.rollingUpdate.maxUnavailable";
                if validate_int_or_percent(&ru["maxUnavailable"], path, true, errs) == Some(0) {
                    errs.push(invalid_raw(
                        path.to_string(),
                        &int_or_string_text(&ru["maxUnavailable"]),
                        "cannot be 0",
                    ));
                }
            }
        }
        "" => errs.push(StatusCause::required("spec.updateStrategy")),
        _ => errs.push(invalid_raw(
            "spec.updateStrategy".to_string(),
            &strategy.to_string(),
            "must be 'RollingUpdate' or 'OnDelete'",
        )),
    }
}

pub fn validate_job(obj: &Value, errs: &mut Vec<StatusCause>) {
    let spec = &obj["spec"];
    validate_nonnegative(
        obj,
        &[
            "parallelism",
            "completions",
            "backoffLimit",
            "ttlSecondsAfterFinished",
        ],
        errs,
    );
    if let Some(ads) = spec["activeDeadlineSeconds"].as_i64() {
        if ads <= 0 {
            errs.push(StatusCause::invalid(
                "spec.activeDeadlineSeconds",
                &spec["activeDeadlineSeconds"],
                "must be greater than 0",
            ));
        }
    }
    match spec["completionMode"].as_str() {
        None | Some("NonIndexed") => {}
        Some("Indexed") => {
            if spec["completions"].is_null() {
                errs.push(required_detail(
                    "spec.completions".to_string(),
                    "when completion mode is Indexed",
                ));
            }
        }
        Some(_) => errs.push(StatusCause::not_supported(
            "spec.completionMode",
            &spec["completionMode"],
            &["NonIndexed", "Indexed"],
        )),
    }
    // The server generates a Job's selector when the client leaves it out.
    validate_selector_and_template(obj, "job", "Job", SpecOwner::Job, false, errs);
}

pub fn validate_pod_disruption_budget(obj: &Value, errs: &mut Vec<StatusCause>) {
    let spec = &obj["spec"];
    if !spec["minAvailable"].is_null() && !spec["maxUnavailable"].is_null() {
        errs.push(invalid_raw(
            "spec".to_string(),
            &spec.to_string(),
            "minAvailable and maxUnavailable cannot be both set",
        ));
    }
}

/// Deployments, ReplicaSets and DaemonSets: the selector never changes.
pub fn validate_selector_update(new: &Value, old: &Value, errs: &mut Vec<StatusCause>) {
    let selector = &new["spec"]["selector"];
    if *selector != old["spec"]["selector"] {
        errs.push(immutable("spec.selector", &gofmt::label_selector(selector)));
    }
}

/// A StatefulSet's selector, and all of its spec but a few fields, never change.
pub fn validate_stateful_set_update(new: &Value, old: &Value, errs: &mut Vec<StatusCause>) {
    const MUTABLE: &[&str] = &[
        "replicas",
        "ordinals",
        "template",
        "updateStrategy",
        "persistentVolumeClaimRetentionPolicy",
        "minReadySeconds",
    ];
    let strip = |v: &Value| -> Value {
        let mut spec = v["spec"].clone();
        if let Some(o) = spec.as_object_mut() {
            for f in MUTABLE {
                o.remove(*f);
            }
        }
        spec
    };
    validate_selector_update(new, old, errs);
    if strip(new) != strip(old) {
        errs.push(StatusCause::forbidden(
            "spec",
            "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
        ));
    }
}

pub fn validate_job_update(new: &Value, old: &Value, errs: &mut Vec<StatusCause>) {
    let (ns, os) = (&new["spec"], &old["spec"]);
    // An absent selector on the new object is filled in from the old by the server.
    if !ns["selector"].is_null() && ns["selector"] != os["selector"] {
        errs.push(immutable(
            "spec.selector",
            &gofmt::label_selector(&ns["selector"]),
        ));
    }
    if ns["template"] != os["template"] {
        errs.push(immutable("spec.template", &ns["template"].to_string()));
    }
    if ns["completionMode"] != os["completionMode"] {
        errs.push(immutable(
            "spec.completionMode",
            &gofmt::scalar(&ns["completionMode"]),
        ));
    }
    if ns["completions"] != os["completions"] && ns["completionMode"] != json!("Indexed") {
        errs.push(immutable(
            "spec.completions",
            &gofmt::scalar(&ns["completions"]),
        ));
    }
}

/// `spec.<field> >= 0` for each field present.
fn validate_nonnegative(obj: &Value, fields: &[&str], errs: &mut Vec<StatusCause>) {
    for f in fields {
        let v = &obj["spec"][*f];
        if v.as_i64().is_some_and(|n| n < 0) {
            errs.push(StatusCause::invalid(
                format!("spec.{f}"),
                v,
                "must be greater than or equal to 0",
            ));
        }
    }
}

/// The selector/template pair shared by every workload: the selector is required and
/// non-empty, the template's labels must match it, and the template is a valid pod spec.
fn validate_selector_and_template(
    obj: &Value,
    empty_selector_kind: &str,
    template_kind: &str,
    owner: SpecOwner,
    selector_required: bool,
    errs: &mut Vec<StatusCause>,
) {
    let spec = &obj["spec"];
    let selector = &spec["selector"];
    let mut parsed = None;
    if selector.is_null() {
        if selector_required {
            errs.push(StatusCause::required("spec.selector"));
        }
    } else {
        validate_label_selector(selector, "spec.selector", errs);
        let count = selector["matchLabels"].as_object().map_or(0, Map::len)
            + selector["matchExpressions"].as_array().map_or(0, Vec::len);
        if count == 0 {
            errs.push(invalid_raw(
                "spec.selector".to_string(),
                &gofmt::label_selector(selector),
                &format!("empty selector is invalid for {empty_selector_kind}"),
            ));
        }
        match LabelSelector::from_json(selector) {
            Ok(s) => parsed = Some(s),
            Err(_) => errs.push(invalid_raw(
                "spec.selector".to_string(),
                &gofmt::label_selector(selector),
                "invalid label selector",
            )),
        }
    }

    let template = &spec["template"];
    let labels = template["metadata"]["labels"].as_object();
    if let Some(sel) = parsed.filter(|s| !s.is_empty()) {
        if !sel.matches(labels) {
            errs.push(invalid_raw(
                "spec.template.metadata.labels".to_string(),
                &gofmt::string_map(labels),
                "`selector` does not match template `labels`",
            ));
        }
    }
    if let Some(labels) = labels {
        validate_labels(labels, "spec.template.metadata.labels", errs);
    }
    if let Some(ann) = template["metadata"]["annotations"].as_object() {
        validate_annotations(ann, "spec.template.metadata.annotations", errs);
    }
    errs.extend(pod::validate_pod_spec(
        &template["spec"],
        "spec.template.spec",
        owner,
    ));
    if owner == SpecOwner::Workload && !template["spec"]["activeDeadlineSeconds"].is_null() {
        errs.push(StatusCause::forbidden(
            "spec.template.spec.activeDeadlineSeconds",
            format!("activeDeadlineSeconds in {template_kind} is not Supported"),
        ));
    }
}

/// An `IntOrString` that must be a non-negative int or a percentage; returns the number.
fn validate_int_or_percent(
    v: &Value,
    path: &str,
    at_most_100_percent: bool,
    errs: &mut Vec<StatusCause>,
) -> Option<i64> {
    match v {
        Value::Null => None,
        Value::Number(n) => {
            let n = n.as_i64().unwrap_or(-1);
            if n < 0 {
                errs.push(invalid_raw(
                    path.to_string(),
                    &n.to_string(),
                    "must be greater than or equal to 0",
                ));
            }
            Some(n)
        }
        Value::String(s) => {
            let Some(n) = s
                .strip_suffix('%')
                .filter(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit()))
                .and_then(|d| d.parse::<i64>().ok())
            else {
                errs.push(invalid_raw(
                    path.to_string(),
                    s,
                    &names::regex_error(
                        "a valid percent string must be a numeric string followed by an ending '%'",
                        "[0-9]+%",
                        &["1%", "93%"],
                    ),
                ));
                return None;
            };
            if at_most_100_percent && n > 100 {
                errs.push(invalid_raw(
                    path.to_string(),
                    s,
                    "must not be greater than 100%",
                ));
            }
            Some(n)
        }
        other => {
            errs.push(invalid_raw(
                path.to_string(),
                &other.to_string(),
                "must be an integer or percentage (e.g '5%')",
            ));
            None
        }
    }
}

fn int_or_string_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn validate_deployment_rolling_update(ru: &Value, errs: &mut Vec<StatusCause>) {
    let path = "spec.strategy.rollingUpdate";
    let mu_path = child(path, "maxUnavailable");
    let unavailable = validate_int_or_percent(&ru["maxUnavailable"], &mu_path, true, errs);
    let surge = validate_int_or_percent(&ru["maxSurge"], &child(path, "maxSurge"), false, errs);
    if unavailable.unwrap_or(0) == 0 && surge.unwrap_or(0) == 0 {
        errs.push(invalid_raw(
            mu_path,
            &int_or_string_text(&ru["maxUnavailable"]),
            "may not be 0 when `maxSurge` is 0",
        ));
    }
}

/// A DaemonSet rolls either by taking nodes down (maxUnavailable) or by surging, not both.
fn validate_daemonset_rolling_update(ru: &Value, errs: &mut Vec<StatusCause>) {
    let path = "spec.updateStrategy.rollingUpdate";
    let mu_path = child(path, "maxUnavailable");
    let ms_path = child(path, "maxSurge");
    let unavailable = validate_int_or_percent(&ru["maxUnavailable"], &mu_path, true, errs);
    let surge = validate_int_or_percent(&ru["maxSurge"], &ms_path, true, errs);
    match (unavailable.unwrap_or(0) != 0, surge.unwrap_or(0) != 0) {
        (true, true) => errs.push(invalid_raw(
            ms_path,
            &int_or_string_text(&ru["maxSurge"]),
            "may not be set when maxUnavailable is non-zero",
        )),
        (false, false) => errs.push(required_detail(mu_path, "cannot be 0 when maxSurge is 0")),
        _ => {}
    }
}
