//! Namespaces: a delete turns them Terminating, `spec.finalizers` (emptied by the namespace
//! controller through the finalize subresource) hold them until their content is gone.

use rkube_api::table;
use serde_json::{json, Value};

use super::Strategy;

pub static NAMESPACE: Strategy = Strategy {
    kind: "Namespace",
    printer: &table::NAMESPACE,
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
