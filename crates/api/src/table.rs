//! `meta.k8s.io/v1` Table columns and cells per kind, matching upstream's printers so that
//! `kubectl get` output looks the same. Kinds without a printer get NAME and AGE.
//! (Skeleton: filled in by the table work item.)

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

/// Column definitions (`name`, `type`, `format`, `description`, `priority`).
pub fn columns(_kind: &str) -> Vec<Value> {
    vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "", "priority": 0}),
        json!({"name": "Age", "type": "string", "format": "", "description": "", "priority": 0}),
    ]
}

/// The cells of one row, in column order.
pub fn cells(_kind: &str, obj: &Value, _now: DateTime<Utc>) -> Vec<Value> {
    vec![obj["metadata"]["name"].clone(), json!("<unknown>")]
}
