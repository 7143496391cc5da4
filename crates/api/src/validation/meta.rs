//! What every kind shares: object metadata (name by the kind's [`NameRule`], namespace,
//! labels, annotations), the metadata an update may not change, and label selectors.

use serde_json::{json, Map, Value};

use super::causes::{child, immutable, index, required_detail, too_long};
use super::gofmt;
use super::names::{self, NameRule};
use crate::registry::ResourceInfo;
use crate::status::StatusCause;

/// Upstream's limit on the total size of a object's annotations.
pub const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_str().unwrap_or("")
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

pub(crate) fn validate_annotations(
    ann: &Map<String, Value>,
    path: &str,
    errs: &mut Vec<StatusCause>,
) {
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

/// `metadata` of a new or updated object; `rule` is how the kind's names are checked.
pub(crate) fn validate_object_meta(
    resource: &ResourceInfo,
    rule: NameRule,
    obj: &Value,
) -> Vec<StatusCause> {
    let mut errs = Vec::new();
    let meta = &obj["metadata"];
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

/// The metadata fields an update may not change.
pub(crate) fn validate_object_meta_update(new: &Value, old: &Value) -> Vec<StatusCause> {
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

/// A `metav1.LabelSelector` at `path`: valid keys and values, and operators with the
/// values they need.
pub(crate) fn validate_label_selector(sel: &Value, path: &str, errs: &mut Vec<StatusCause>) {
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
