//! ConfigMaps and Secrets: data keys and sizes, the keys each Secret type needs, and
//! `immutable`.

use std::collections::HashSet;

use serde_json::{json, Value};

use super::causes::{immutable, key, too_long};
use super::{gofmt, names};
use crate::status::StatusCause;

/// Upstream's limit on ConfigMap and Secret data.
pub const MAX_DATA_SIZE: usize = 1024 * 1024;

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

pub fn validate_config_map(obj: &Value, errs: &mut Vec<StatusCause>) {
    let mut seen = HashSet::new();
    let mut size = validate_data_keys(obj, "data", &mut seen, errs);
    // binaryData is base64 in JSON; its decoded size is about 3/4 of the text.
    size += validate_data_keys(obj, "binaryData", &mut seen, errs) * 3 / 4;
    if size > MAX_DATA_SIZE {
        errs.push(too_long(String::new(), MAX_DATA_SIZE));
    }
}

pub fn validate_secret(obj: &Value, errs: &mut Vec<StatusCause>) {
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

/// Nothing in `data` or `binaryData` changes once `immutable` is set.
pub fn validate_immutable_data(new: &Value, old: &Value, errs: &mut Vec<StatusCause>) {
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

pub fn validate_secret_update(new: &Value, old: &Value, errs: &mut Vec<StatusCause>) {
    if new["type"] != old["type"] {
        errs.push(immutable("type", &gofmt::scalar(&new["type"])));
    }
    validate_immutable_data(new, old, errs);
}
