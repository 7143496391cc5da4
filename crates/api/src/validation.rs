//! Validation of built-in kinds. Every problem found is reported (422 lists all causes).
//! (Skeleton: filled in by the validation work item.)

use serde_json::Value;

use crate::registry::ResourceInfo;
use crate::status::StatusCause;

/// Validates a new object (after defaulting).
pub fn validate_create(_resource: &ResourceInfo, _obj: &Value) -> Vec<StatusCause> {
    Vec::new()
}

/// Validates an update of `old` to `new` (after defaulting), including immutable fields.
pub fn validate_update(_resource: &ResourceInfo, _new: &Value, _old: &Value) -> Vec<StatusCause> {
    Vec::new()
}
