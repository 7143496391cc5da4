//! Defaulting of built-in kinds, applied on create and update before validation. Each
//! kind's [`KindRules`](crate::kinds::KindRules) names its defaulting function here.
//!
//! Values are upstream's `SetDefaults_*` functions (plus the few fields upstream's create
//! strategies and default admission plugins fill in, marked as such), so `kubectl get -o yaml`
//! shows what it shows against Kubernetes. Only absent fields are filled; nothing the client
//! sent is changed.
//!
//! - [`pod`]: pods, and the pod spec of every template.
//! - [`workloads`]: Deployments, ReplicaSets, DaemonSets, StatefulSets and Jobs.
//! - [`service`]: Services, Endpoints and EndpointSlices.
//! - [`config`]: Secrets (ConfigMaps have no defaults).
//! - [`cluster`]: Namespaces and Nodes.

pub mod cluster;
pub mod config;
pub mod pod;
pub mod service;
pub mod workloads;

use serde_json::{json, Map, Value};

pub use cluster::NAMESPACE_NAME_LABEL;

/// The object at `obj[field]`, created as `{}` when absent or not an object.
pub(crate) fn object_at<'a>(obj: &'a mut Value, field: &str) -> &'a mut Map<String, Value> {
    let map = ensure_object(obj);
    let entry = map.entry(field.to_string()).or_insert_with(|| json!({}));
    ensure_object(entry)
}

fn ensure_object(v: &mut Value) -> &mut Map<String, Value> {
    if !v.is_object() {
        *v = json!({});
    }
    match v {
        Value::Object(m) => m,
        _ => unreachable!("replaced by an object just above"),
    }
}

pub(crate) fn child_object<'a>(
    map: &'a mut Map<String, Value>,
    field: &str,
) -> &'a mut Map<String, Value> {
    let entry = map.entry(field.to_string()).or_insert_with(|| json!({}));
    ensure_object(entry)
}

pub(crate) fn set_if_absent(map: &mut Map<String, Value>, field: &str, value: Value) {
    match map.get(field) {
        Some(v) if !v.is_null() => {}
        _ => {
            map.insert(field.to_string(), value);
        }
    }
}

pub(crate) fn default_port_protocols(ports: Option<&mut Value>) {
    if let Some(ports) = ports.and_then(Value::as_array_mut) {
        for port in ports {
            if let Some(p) = port.as_object_mut() {
                set_if_absent(p, "protocol", json!("TCP"));
            }
        }
    }
}

#[cfg(test)]
mod tests;
