//! Validation of built-in kinds. Every problem found is reported (422 lists all causes),
//! with upstream's reasons, field paths and messages.
//!
//! - [`names`]: name, label, key and port-name syntax with upstream's messages.
//! - [`pod`]: pod spec rules (pods and workload templates) and the pod update rule.
//! - [`gofmt`]: Go-style renderings of bad values (`map[string]string{...}`).

pub mod gofmt;
pub mod names;
pub mod pod;

use std::collections::HashSet;
use std::net::IpAddr;

use serde_json::{json, Map, Value};

use crate::registry::ResourceInfo;
use crate::selectors::LabelSelector;
use crate::status::StatusCause;
use names::NameRule;
use pod::SpecOwner;

/// Upstream's limit on the total size of a object's annotations.
pub const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;
/// Upstream's limit on ConfigMap and Secret data.
pub const MAX_DATA_SIZE: usize = 1024 * 1024;
/// The default `--service-node-port-range`.
pub const NODE_PORT_RANGE: (i64, i64) = (30000, 32767);

/// Validates a new object (after defaulting).
pub fn validate_create(resource: &ResourceInfo, obj: &Value) -> Vec<StatusCause> {
    let mut errs = validate_object_meta(resource, obj);
    errs.extend(validate_kind(resource.kind, obj));
    errs
}

/// Validates an update of `old` to `new` (after defaulting), including immutable fields.
pub fn validate_update(resource: &ResourceInfo, new: &Value, old: &Value) -> Vec<StatusCause> {
    let mut errs = validate_object_meta(resource, new);
    errs.extend(validate_object_meta_update(new, old));
    errs.extend(validate_kind(resource.kind, new));
    errs.extend(validate_kind_update(resource.kind, new, old));
    errs
}

// ---- field path and cause helpers -------------------------------------------------------

pub(crate) fn child(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

pub(crate) fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

pub(crate) fn key(path: &str, k: &str) -> String {
    format!("{path}[{k}]")
}

/// `Invalid value: <rendered>: <detail>` where the value is already rendered Go-style.
pub(crate) fn invalid_raw(field: String, rendered: &str, detail: &str) -> StatusCause {
    StatusCause::new(
        "FieldValueInvalid",
        field,
        format!("Invalid value: {rendered}: {detail}"),
    )
}

/// `Required value: <detail>`.
pub(crate) fn required_detail(field: String, detail: &str) -> StatusCause {
    StatusCause::new(
        "FieldValueRequired",
        field,
        format!("Required value: {detail}"),
    )
}

/// `Not found: <value>`.
pub(crate) fn not_found(field: String, value: &Value) -> StatusCause {
    StatusCause::new("FieldValueNotFound", field, format!("Not found: {value}"))
}

/// `Too long: may not be more than <max> bytes`.
pub(crate) fn too_long(field: String, max: usize) -> StatusCause {
    StatusCause::new(
        "FieldValueTooLong",
        field,
        format!("Too long: may not be more than {max} bytes"),
    )
}

fn immutable(field: &str, rendered: &str) -> StatusCause {
    invalid_raw(field.to_string(), rendered, "field is immutable")
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_str().unwrap_or("")
}

// ---- object meta -------------------------------------------------------------------------

/// How `metadata.name` is checked for each kind.
pub fn name_rule(kind: &str) -> NameRule {
    match kind {
        "Namespace" => NameRule::Dns1123Label,
        "Service" => NameRule::Dns1035Label,
        _ => NameRule::Dns1123Subdomain,
    }
}

/// Label keys and values (`metadata.labels`, `spec.selector`, `nodeSelector`).
pub(crate) fn validate_labels(
    labels: &Map<String, Value>,
    path: &str,
    errs: &mut Vec<StatusCause>,
) {
    for (k, v) in labels {
        for msg in names::qualified_name_errors(k) {
            errs.push(StatusCause::invalid(path, &json!(k), msg));
        }
        let value = v.as_str().unwrap_or("");
        for msg in names::label_value_errors(value) {
            errs.push(StatusCause::invalid(path, &json!(value), msg));
        }
    }
}

fn validate_annotations(ann: &Map<String, Value>, path: &str, errs: &mut Vec<StatusCause>) {
    let mut total = 0;
    for (k, v) in ann {
        for msg in names::qualified_name_errors(&k.to_lowercase()) {
            errs.push(StatusCause::invalid(path, &json!(k), msg));
        }
        total += k.len() + v.as_str().map_or(0, str::len);
    }
    if total > TOTAL_ANNOTATION_SIZE_LIMIT {
        errs.push(too_long(path.to_string(), TOTAL_ANNOTATION_SIZE_LIMIT));
    }
}

fn validate_object_meta(resource: &ResourceInfo, obj: &Value) -> Vec<StatusCause> {
    let mut errs = Vec::new();
    let meta = &obj["metadata"];
    let rule = name_rule(resource.kind);
    let generate_name = str_at(meta, &["generateName"]);
    if !generate_name.is_empty() {
        for msg in rule.errors(generate_name, true) {
            errs.push(StatusCause::invalid(
                "metadata.generateName",
                &meta["generateName"],
                msg,
            ));
        }
    }
    let name = str_at(meta, &["name"]);
    if name.is_empty() {
        errs.push(required_detail(
            "metadata.name".to_string(),
            "name or generateName is required",
        ));
    } else {
        for msg in rule.errors(name, false) {
            errs.push(StatusCause::invalid("metadata.name", &meta["name"], msg));
        }
    }
    let namespace = str_at(meta, &["namespace"]);
    if resource.namespaced {
        if namespace.is_empty() {
            errs.push(StatusCause::required("metadata.namespace"));
        } else {
            for msg in names::dns1123_label_errors(namespace) {
                errs.push(StatusCause::invalid(
                    "metadata.namespace",
                    &meta["namespace"],
                    msg,
                ));
            }
        }
    } else if !namespace.is_empty() {
        errs.push(StatusCause::forbidden(
            "metadata.namespace",
            "not allowed on this type",
        ));
    }
    if let Some(labels) = meta["labels"].as_object() {
        validate_labels(labels, "metadata.labels", &mut errs);
    }
    if let Some(ann) = meta["annotations"].as_object() {
        validate_annotations(ann, "metadata.annotations", &mut errs);
    }
    errs
}

fn validate_object_meta_update(new: &Value, old: &Value) -> Vec<StatusCause> {
    let mut errs = Vec::new();
    for field in ["name", "namespace", "uid", "creationTimestamp"] {
        let before = &old["metadata"][field];
        let after = &new["metadata"][field];
        // Unset on the new object means "keep"; the server copies these before validating.
        if !after.is_null() && !before.is_null() && before != after {
            errs.push(immutable(
                &format!("metadata.{field}"),
                &gofmt::scalar(after),
            ));
        }
    }
    errs
}

// ---- per kind ----------------------------------------------------------------------------

fn validate_kind(kind: &str, obj: &Value) -> Vec<StatusCause> {
    let mut errs = Vec::new();
    match kind {
        "Pod" => errs.extend(pod::validate_pod_spec(&obj["spec"], "spec", SpecOwner::Pod)),
        "Deployment" => validate_deployment(obj, &mut errs),
        "ReplicaSet" => {
            validate_nonnegative(obj, &["replicas", "minReadySeconds"], &mut errs);
            validate_selector_and_template(
                obj,
                "deployment",
                "ReplicaSet",
                SpecOwner::Workload,
                true,
                &mut errs,
            );
        }
        "DaemonSet" => validate_daemonset(obj, &mut errs),
        "StatefulSet" => validate_statefulset(obj, &mut errs),
        "Job" => validate_job(obj, &mut errs),
        "Service" => validate_service(obj, &mut errs),
        "ConfigMap" => validate_configmap(obj, &mut errs),
        "Secret" => validate_secret(obj, &mut errs),
        "PodDisruptionBudget" => {
            let spec = &obj["spec"];
            if !spec["minAvailable"].is_null() && !spec["maxUnavailable"].is_null() {
                errs.push(invalid_raw(
                    "spec".to_string(),
                    &spec.to_string(),
                    "minAvailable and maxUnavailable cannot be both set",
                ));
            }
        }
        _ => {}
    }
    errs
}

fn validate_kind_update(kind: &str, new: &Value, old: &Value) -> Vec<StatusCause> {
    let mut errs = Vec::new();
    match kind {
        "Pod" => errs.extend(pod::validate_pod_spec_update(new, old)),
        "Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet" => {
            let selector = &new["spec"]["selector"];
            if *selector != old["spec"]["selector"] {
                errs.push(immutable("spec.selector", &gofmt::label_selector(selector)));
            }
            if kind == "StatefulSet" {
                validate_statefulset_update(new, old, &mut errs);
            }
        }
        "Job" => {
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
        "Service" => validate_service_update(new, old, &mut errs),
        "Secret" => {
            if new["type"] != old["type"] {
                errs.push(immutable("type", &gofmt::scalar(&new["type"])));
            }
            validate_immutable_data(new, old, &mut errs);
        }
        "ConfigMap" => validate_immutable_data(new, old, &mut errs),
        _ => {}
    }
    errs
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

fn validate_label_selector(sel: &Value, path: &str, errs: &mut Vec<StatusCause>) {
    if let Some(labels) = sel["matchLabels"].as_object() {
        validate_labels(labels, &child(path, "matchLabels"), errs);
    }
    for (i, expr) in sel["matchExpressions"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .enumerate()
    {
        let epath = index(&child(path, "matchExpressions"), i);
        let has_values = expr["values"].as_array().is_some_and(|v| !v.is_empty());
        match expr["operator"].as_str().unwrap_or("") {
            "In" | "NotIn" if !has_values => errs.push(required_detail(
                child(&epath, "values"),
                "must be specified when `operator` is 'In' or 'NotIn'",
            )),
            "Exists" | "DoesNotExist" if has_values => errs.push(StatusCause::forbidden(
                child(&epath, "values"),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            _ => errs.push(StatusCause::invalid(
                child(&epath, "operator"),
                &expr["operator"],
                "not a valid selector operator",
            )),
        }
        let k = expr["key"].as_str().unwrap_or("");
        for msg in names::qualified_name_errors(k) {
            errs.push(StatusCause::invalid(child(&epath, "key"), &json!(k), msg));
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

fn validate_deployment(obj: &Value, errs: &mut Vec<StatusCause>) {
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

fn validate_daemonset(obj: &Value, errs: &mut Vec<StatusCause>) {
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

fn validate_statefulset(obj: &Value, errs: &mut Vec<StatusCause>) {
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

fn validate_statefulset_update(new: &Value, old: &Value, errs: &mut Vec<StatusCause>) {
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
    if strip(new) != strip(old) {
        errs.push(StatusCause::forbidden(
            "spec",
            "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
        ));
    }
}

fn validate_job(obj: &Value, errs: &mut Vec<StatusCause>) {
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

// ---- Service -------------------------------------------------------------------------------

const SERVICE_TYPES: &[&str] = &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];

fn validate_service(obj: &Value, errs: &mut Vec<StatusCause>) {
    let spec = &obj["spec"];
    let svc_type = spec["type"].as_str().unwrap_or("ClusterIP");
    if !SERVICE_TYPES.contains(&svc_type) {
        errs.push(StatusCause::not_supported(
            "spec.type",
            &spec["type"],
            SERVICE_TYPES,
        ));
    }
    let cluster_ip = spec["clusterIP"].as_str().unwrap_or("");
    let headless = cluster_ip == "None";
    let ports = spec["ports"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if ports.is_empty() && !headless && svc_type != "ExternalName" {
        errs.push(StatusCause::required("spec.ports"));
    }
    if svc_type == "ExternalName" {
        let external = spec["externalName"].as_str().unwrap_or("");
        if external.is_empty() {
            errs.push(StatusCause::required("spec.externalName"));
        } else {
            for msg in names::dns1123_subdomain_errors(external.trim_end_matches('.')) {
                errs.push(StatusCause::invalid(
                    "spec.externalName",
                    &spec["externalName"],
                    msg,
                ));
            }
        }
    } else if !cluster_ip.is_empty() && !headless && cluster_ip.parse::<IpAddr>().is_err() {
        errs.push(StatusCause::invalid(
            "spec.clusterIP",
            &spec["clusterIP"],
            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
        ));
    }

    let require_name = ports.len() > 1;
    let mut port_names = HashSet::new();
    let mut port_keys = HashSet::new();
    for (i, port) in ports.iter().enumerate() {
        let ppath = index("spec.ports", i);
        let name = port["name"].as_str().unwrap_or("");
        if require_name && name.is_empty() {
            errs.push(StatusCause::required(child(&ppath, "name")));
        } else if !name.is_empty() {
            for msg in names::dns1123_label_errors(name) {
                errs.push(StatusCause::invalid(
                    child(&ppath, "name"),
                    &port["name"],
                    msg,
                ));
            }
            if !port_names.insert(name.to_string()) {
                errs.push(StatusCause::duplicate(child(&ppath, "name"), &port["name"]));
            }
        }
        let number = port["port"].as_i64().unwrap_or(0);
        if !(1..=65535).contains(&number) {
            errs.push(StatusCause::invalid(
                child(&ppath, "port"),
                &json!(number),
                "must be between 1 and 65535, inclusive",
            ));
        }
        let proto = port["protocol"].as_str().unwrap_or("");
        if proto.is_empty() {
            errs.push(StatusCause::required(child(&ppath, "protocol")));
        } else if !["SCTP", "TCP", "UDP"].contains(&proto) {
            errs.push(StatusCause::not_supported(
                child(&ppath, "protocol"),
                &port["protocol"],
                &["SCTP", "TCP", "UDP"],
            ));
        } else if !port_keys.insert((number, proto.to_string())) {
            errs.push(StatusCause::duplicate(
                ppath.clone(),
                &json!({"port": number, "protocol": proto}),
            ));
        }
        match &port["targetPort"] {
            Value::Number(n) if !(1..=65535).contains(&n.as_i64().unwrap_or(0)) => {
                errs.push(StatusCause::invalid(
                    child(&ppath, "targetPort"),
                    &port["targetPort"],
                    "must be between 1 and 65535, inclusive",
                ));
            }
            Value::String(s) => {
                for msg in names::port_name_errors(s) {
                    errs.push(StatusCause::invalid(
                        child(&ppath, "targetPort"),
                        &port["targetPort"],
                        msg,
                    ));
                }
            }
            _ => {}
        }
        if let Some(node_port) = port["nodePort"].as_i64().filter(|n| *n != 0) {
            let np_path = child(&ppath, "nodePort");
            if svc_type == "ClusterIP" || svc_type == "ExternalName" {
                errs.push(StatusCause::forbidden(
                    np_path,
                    format!("may not be used when `type` is '{svc_type}'"),
                ));
            } else if !(NODE_PORT_RANGE.0..=NODE_PORT_RANGE.1).contains(&node_port) {
                errs.push(StatusCause::invalid(
                    np_path,
                    &json!(node_port),
                    format!(
                        "provided port is not in the valid range. The range of valid ports is {}-{}",
                        NODE_PORT_RANGE.0, NODE_PORT_RANGE.1
                    ),
                ));
            }
        }
    }

    if let Some(sel) = spec["selector"].as_object() {
        validate_labels(sel, "spec.selector", errs);
    }
    if let Some(aff) = spec["sessionAffinity"].as_str() {
        if aff != "ClientIP" && aff != "None" {
            errs.push(StatusCause::not_supported(
                "spec.sessionAffinity",
                &spec["sessionAffinity"],
                &["ClientIP", "None"],
            ));
        }
    }
    if let Some(policy) = spec["ipFamilyPolicy"].as_str() {
        const POLICIES: &[&str] = &["PreferDualStack", "RequireDualStack", "SingleStack"];
        if !POLICIES.contains(&policy) {
            errs.push(StatusCause::not_supported(
                "spec.ipFamilyPolicy",
                &spec["ipFamilyPolicy"],
                POLICIES,
            ));
        }
    }
    for field in ["internalTrafficPolicy", "externalTrafficPolicy"] {
        if let Some(policy) = spec[field].as_str() {
            if policy != "Cluster" && policy != "Local" {
                errs.push(StatusCause::not_supported(
                    format!("spec.{field}"),
                    &spec[field],
                    &["Cluster", "Local"],
                ));
            }
        }
    }
}

fn validate_service_update(new: &Value, old: &Value, errs: &mut Vec<StatusCause>) {
    let (ns, os) = (&new["spec"], &old["spec"]);
    let old_ip = os["clusterIP"].as_str().unwrap_or("");
    let new_ip = ns["clusterIP"].as_str().unwrap_or("");
    // Moving to ExternalName releases the IP; an empty new value means "keep the old one".
    if ns["type"].as_str() != Some("ExternalName")
        && !old_ip.is_empty()
        && !new_ip.is_empty()
        && old_ip != new_ip
    {
        let ips: Vec<String> = match ns["clusterIPs"].as_array() {
            Some(list) if !list.is_empty() => list
                .iter()
                .map(|v| v.as_str().unwrap_or("").to_string())
                .collect(),
            _ => vec![new_ip.to_string()],
        };
        errs.push(invalid_raw(
            "spec.clusterIPs[0]".to_string(),
            &gofmt::string_slice(&ips),
            "may not change once set",
        ));
    }
}

// ---- ConfigMap and Secret -----------------------------------------------------------------

fn validate_data_keys(
    obj: &Value,
    field: &str,
    seen: &mut HashSet<String>,
    errs: &mut Vec<StatusCause>,
) -> usize {
    let mut size = 0;
    if let Some(data) = obj[field].as_object() {
        for (k, v) in data {
            for msg in names::config_key_errors(k) {
                errs.push(StatusCause::invalid(key(field, k), &json!(k), msg));
            }
            if !seen.insert(k.clone()) {
                errs.push(StatusCause::invalid(
                    key(field, k),
                    &json!(k),
                    "duplicate of key present in data",
                ));
            }
            size += v.as_str().map_or(0, str::len);
        }
    }
    size
}

fn validate_configmap(obj: &Value, errs: &mut Vec<StatusCause>) {
    let mut seen = HashSet::new();
    let mut size = validate_data_keys(obj, "data", &mut seen, errs);
    // binaryData is base64 in JSON; its decoded size is about 3/4 of the text.
    size += validate_data_keys(obj, "binaryData", &mut seen, errs) * 3 / 4;
    if size > MAX_DATA_SIZE {
        errs.push(too_long(String::new(), MAX_DATA_SIZE));
    }
}

fn validate_secret(obj: &Value, errs: &mut Vec<StatusCause>) {
    let mut seen = HashSet::new();
    let size = validate_data_keys(obj, "data", &mut seen, errs) * 3 / 4;
    if let Some(string_data) = obj["stringData"].as_object() {
        for k in string_data.keys() {
            for msg in names::config_key_errors(k) {
                errs.push(StatusCause::invalid(key("stringData", k), &json!(k), msg));
            }
        }
    }
    if size > MAX_DATA_SIZE {
        errs.push(too_long("data".to_string(), MAX_DATA_SIZE));
    }
    let has = |k: &str| obj["data"].get(k).is_some() || obj["stringData"].get(k).is_some();
    let required_keys: &[&str] = match obj["type"].as_str().unwrap_or("") {
        "kubernetes.io/dockerconfigjson" => &[".dockerconfigjson"],
        "kubernetes.io/dockercfg" => &[".dockercfg"],
        "kubernetes.io/tls" => &["tls.crt", "tls.key"],
        "kubernetes.io/ssh-auth" => &["ssh-privatekey"],
        _ => &[],
    };
    for k in required_keys {
        if !has(k) {
            errs.push(StatusCause::required(key("data", k)));
        }
    }
    if obj["type"].as_str() == Some("kubernetes.io/service-account-token")
        && obj["metadata"]["annotations"]["kubernetes.io/service-account.name"].is_null()
    {
        errs.push(StatusCause::required(
            "metadata.annotations[kubernetes.io/service-account.name]",
        ));
    }
}

fn validate_immutable_data(new: &Value, old: &Value, errs: &mut Vec<StatusCause>) {
    if old["immutable"].as_bool() != Some(true) {
        return;
    }
    if new["immutable"].as_bool() != Some(true) {
        errs.push(StatusCause::forbidden(
            "immutable",
            "field is immutable when `immutable` is set",
        ));
    }
    for field in ["data", "binaryData"] {
        if new[field] != old[field] {
            errs.push(StatusCause::forbidden(
                field,
                "field is immutable when `immutable` is set",
            ));
        }
    }
}

#[cfg(test)]
mod tests;
