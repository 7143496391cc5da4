//! Schema checks against the upstream types (k8s-openapi): a body whose fields have the
//! wrong JSON type is rejected as upstream's decoder would, and with
//! `fieldValidation=Strict` unknown fields are reported.
//!
//! Unknown fields are found by a round trip: decode into the typed struct (which ignores
//! unknown keys), encode again, and list every key of the original that did not survive.

use k8s_openapi::api::{apps, autoscaling, batch, coordination, core, discovery, policy};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// What a typed decode found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TypeReport {
    /// Dotted paths of fields the type does not know, e.g. `spec.replicaz`.
    pub unknown_fields: Vec<String>,
}

/// Why a body does not decode into its kind.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct TypeError(pub String);

fn decode<T: DeserializeOwned + Serialize>(
    obj: &Value,
    find_unknown: bool,
) -> Result<Option<Value>, TypeError> {
    // Deserializing from `&Value` avoids cloning the object; only unknown-field detection
    // needs the typed value encoded again.
    let typed = T::deserialize(obj).map_err(|e| TypeError(e.to_string()))?;
    if !find_unknown {
        return Ok(None);
    }
    serde_json::to_value(&typed)
        .map(Some)
        .map_err(|e| TypeError(e.to_string()))
}

/// Upstream accepts quantities as JSON numbers (`cpu: 1`) and stores them as strings;
/// k8s-openapi only decodes strings. Converts numbers in quantity maps to strings.
pub fn normalize_quantities(obj: &mut Value) {
    match obj {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if is_quantity_map(k) {
                    if let Value::Object(q) = v {
                        for qv in q.values_mut() {
                            if let Value::Number(n) = qv {
                                *qv = Value::String(n.to_string());
                            }
                        }
                    }
                } else {
                    normalize_quantities(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize_quantities),
        _ => {}
    }
}

fn is_quantity_map(key: &str) -> bool {
    matches!(
        key,
        "limits" | "requests" | "capacity" | "allocatable" | "hard" | "used" | "overhead"
    )
}

/// Checks `obj` against the upstream type for `kind`; with `find_unknown`, also lists
/// fields the type does not know (that costs a second encode). Kinds without a typed schema
/// pass. Call [`normalize_quantities`] first.
pub fn check(kind: &str, obj: &Value, find_unknown: bool) -> Result<TypeReport, TypeError> {
    let u = find_unknown;
    let decoded = match kind {
        "Namespace" => decode::<core::v1::Namespace>(obj, u),
        "Pod" => decode::<core::v1::Pod>(obj, u),
        "Service" => decode::<core::v1::Service>(obj, u),
        "Endpoints" => decode::<core::v1::Endpoints>(obj, u),
        "ConfigMap" => decode::<core::v1::ConfigMap>(obj, u),
        "Secret" => decode::<core::v1::Secret>(obj, u),
        "Node" => decode::<core::v1::Node>(obj, u),
        "Event" => decode::<core::v1::Event>(obj, u),
        "ServiceAccount" => decode::<core::v1::ServiceAccount>(obj, u),
        "Deployment" => decode::<apps::v1::Deployment>(obj, u),
        "ReplicaSet" => decode::<apps::v1::ReplicaSet>(obj, u),
        "DaemonSet" => decode::<apps::v1::DaemonSet>(obj, u),
        "StatefulSet" => decode::<apps::v1::StatefulSet>(obj, u),
        "Job" => decode::<batch::v1::Job>(obj, u),
        "HorizontalPodAutoscaler" => decode::<autoscaling::v1::HorizontalPodAutoscaler>(obj, u),
        "Lease" => decode::<coordination::v1::Lease>(obj, u),
        "EndpointSlice" => decode::<discovery::v1::EndpointSlice>(obj, u),
        "PodDisruptionBudget" => decode::<policy::v1::PodDisruptionBudget>(obj, u),
        _ => return Ok(TypeReport::default()),
    }?;
    let mut unknown = Vec::new();
    if let Some(decoded) = decoded {
        missing_keys(obj, &decoded, "", &mut unknown);
    }
    Ok(TypeReport {
        unknown_fields: unknown,
    })
}

fn missing_keys(original: &Value, decoded: &Value, path: &str, out: &mut Vec<String>) {
    match (original, decoded) {
        (Value::Object(o), Value::Object(d)) => {
            for (k, v) in o {
                let child = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match d.get(k) {
                    Some(dv) => missing_keys(v, dv, &child, out),
                    // Nulls and empty values legitimately vanish in the round trip.
                    None if is_emptyish(v) => {}
                    None if is_free_form(path) => {}
                    None => out.push(child),
                }
            }
        }
        (Value::Array(o), Value::Array(d)) => {
            for (i, (ov, dv)) in o.iter().zip(d.iter()).enumerate() {
                missing_keys(ov, dv, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn is_emptyish(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// Maps whose keys are data, not schema (labels, data, ...): never "unknown".
fn is_free_form(path: &str) -> bool {
    let last = path.rsplit('.').next().unwrap_or(path);
    matches!(
        last,
        "labels"
            | "annotations"
            | "data"
            | "binaryData"
            | "stringData"
            | "selector"
            | "matchLabels"
            | "nodeSelector"
            | "limits"
            | "requests"
            | "capacity"
            | "allocatable"
            | "hard"
            | "used"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_unknown_fields_at_any_depth() {
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": {"any": "thing"}},
            "spec": {"replicaz": 3, "selector": {"matchLabels": {"a": "b"}},
                     "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i", "imagePullPolicyy": "x"}]}}}});
        let report = check("Deployment", &d, true).unwrap();
        assert_eq!(
            report.unknown_fields,
            vec![
                "spec.replicaz",
                "spec.template.spec.containers[0].imagePullPolicyy"
            ]
        );
    }

    #[test]
    fn wrong_types_are_errors() {
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"replicas": "three", "selector": {}, "template": {}}});
        assert!(check("Deployment", &d, false).is_err());
    }

    #[test]
    fn numeric_quantities_are_accepted_as_strings() {
        let mut p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "i", "resources": {"limits": {"cpu": 1, "memory": 134217728}}}]}});
        normalize_quantities(&mut p);
        assert_eq!(
            p["spec"]["containers"][0]["resources"]["limits"]["cpu"],
            "1"
        );
        assert!(check("Pod", &p, true).unwrap().unknown_fields.is_empty());
    }

    #[test]
    fn a_clean_object_has_no_unknown_fields() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "annotations": {}}, "data": {"k": "v"}});
        assert_eq!(
            check("ConfigMap", &cm, true).unwrap(),
            TypeReport::default()
        );
        assert_eq!(
            check("Widget", &json!({"x": 1}), true).unwrap(),
            TypeReport::default()
        );
    }
}
