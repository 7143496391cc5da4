//! Namespaces: a delete turns them Terminating, which closes them to new content;
//! `spec.finalizers` (emptied by the namespace controller through the finalize subresource)
//! hold them until their content is gone.

use rkube_api::{kinds, registry, ApiError};
use serde_json::{json, Value};

use super::Strategy;
use crate::error::{store_error, ApiResult};
use crate::objects;
use crate::ApiState;

pub static NAMESPACE: Strategy = Strategy {
    rules: &kinds::NAMESPACE,
    mark_terminating: |ns| ns["status"]["phase"] = json!("Terminating"),
    held_after_deletion: |ns| {
        ns["spec"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty())
    },
    ..Strategy::DEFAULT
};

/// A write to `namespaces/<name>/finalize`: only `spec.finalizers` may change, everything
/// else stays as stored.
pub fn finalize(stored: &Value, mut requested: Value) -> Value {
    let mut next = stored.clone();
    next["spec"]["finalizers"] = requested["spec"]["finalizers"].take();
    next
}

/// Creating a namespaced object needs its namespace to exist and not be terminating
/// (upstream's NamespaceLifecycle admission).
pub async fn check_accepts_content(state: &ApiState, namespace: &str) -> ApiResult<()> {
    let ns_resource = registry::find("", "v1", "namespaces")
        .ok_or_else(|| ApiError::internal("namespaces not registered"))?;
    let key = ns_resource.key(None, namespace);
    let terminating = match state.cache.get(ns_resource, &key) {
        // Deleting a namespace sets its phase to Terminating together with the
        // deletionTimestamp; the selectable fields hold the phase, no JSON parse needed.
        Some(cached) => cached
            .fields
            .iter()
            .any(|(f, v)| *f == "status.phase" && v == "Terminating"),
        // Not in the cache yet (created a moment ago?): ask storage, which is authoritative.
        None => match state
            .store
            .get(&key)
            .await
            .map_err(|e| store_error(ns_resource, namespace, e))?
        {
            Some(kv) => serde_json::from_slice::<Value>(&kv.value)
                .map(|v| objects::is_terminating(&v))
                .unwrap_or(false),
            None => return Err(ApiError::not_found(ns_resource, namespace).into()),
        },
    };
    if terminating {
        return Err(ApiError::forbidden(format!(
            "unable to create new content in namespace {namespace} because it is being terminated"
        ))
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finalize_changes_only_the_finalizers() {
        let stored = json!({"metadata": {"name": "ns", "labels": {"a": "1"}},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Terminating"}});
        let requested = json!({"metadata": {"name": "ns", "labels": {"a": "2"}},
            "spec": {"finalizers": []}, "status": {"phase": "Active"}});
        let finalized = finalize(&stored, requested);
        assert_eq!(finalized["spec"]["finalizers"], json!([]));
        assert_eq!(finalized["metadata"], stored["metadata"]);
        assert_eq!(finalized["status"], stored["status"]);
    }

    #[test]
    fn a_deleted_namespace_is_terminating_and_held_by_its_finalizers() {
        let mut ns = json!({"metadata": {"name": "ns"}, "spec": {"finalizers": ["kubernetes"]}});
        (NAMESPACE.mark_terminating)(&mut ns);
        assert_eq!(ns["status"]["phase"], "Terminating");
        assert!((NAMESPACE.held_after_deletion)(&ns));
        ns["spec"]["finalizers"] = json!([]);
        assert!(!(NAMESPACE.held_after_deletion)(&ns));
    }
}
