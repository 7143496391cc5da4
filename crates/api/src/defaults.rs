//! Defaulting of built-in kinds, applied on create and update before validation.
//! (Skeleton: filled in by the defaulting work item.)

use serde_json::Value;

use crate::registry::ResourceInfo;

/// Fills in upstream defaults (e.g. `spec.replicas: 1`, container
/// `imagePullPolicy`, `terminationMessagePath`, service `type: ClusterIP`).
pub fn apply_defaults(_resource: &ResourceInfo, _obj: &mut Value) {}
