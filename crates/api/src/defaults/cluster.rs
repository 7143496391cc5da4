//! Namespaces (the name label, the `kubernetes` finalizer, phase Active) and Nodes
//! (allocatable defaults to capacity).

use serde_json::{json, Value};

use super::{child_object, object_at, set_if_absent};

/// The label upstream's API server sets on every namespace, valued with its name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

pub fn default_namespace(obj: &mut Value) {
    // The namespace strategy forces this label on every create and update, so
    // selectors (NetworkPolicy, admission rules, `kubectl get ns -l`) can pick
    // namespaces by name; users cannot change or remove it.
    if let Some(name) = obj["metadata"]["name"].as_str().map(str::to_string) {
        let metadata = object_at(obj, "metadata");
        child_object(metadata, "labels").insert(NAMESPACE_NAME_LABEL.into(), json!(name));
    }
    // The finalizer comes from the namespace create strategy, the phase from
    // SetDefaults_NamespaceStatus.
    let spec = object_at(obj, "spec");
    set_if_absent(spec, "finalizers", json!(["kubernetes"]));
    let status = object_at(obj, "status");
    set_if_absent(status, "phase", json!("Active"));
}

pub fn default_node(obj: &mut Value) {
    let status = object_at(obj, "status");
    if let Some(capacity) = status.get("capacity").cloned() {
        set_if_absent(status, "allocatable", capacity);
    }
}
