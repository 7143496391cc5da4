//! The four PATCH flavours the Kubernetes API accepts, applied to JSON objects.
//! (Skeleton: strategic merge is filled in by the patch work item.)
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use serde_json::Value;

/// The PATCH flavour, chosen by the request's Content-Type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    /// `application/json-patch+json` (RFC 6902)
    Json,
    /// `application/merge-patch+json` (RFC 7396)
    Merge,
    /// `application/strategic-merge-patch+json`
    StrategicMerge,
    /// `application/apply-patch+yaml` (server-side apply; rkube applies it as an upsert)
    Apply,
}

impl PatchType {
    /// Maps a Content-Type (parameters ignored) to a patch type.
    pub fn from_content_type(content_type: &str) -> Option<PatchType> {
        let essence = content_type.split(';').next().unwrap_or("").trim();
        match essence {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::StrategicMerge),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Some(PatchType::Apply),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// The patch body is not valid JSON (or YAML for apply).
    #[error("error decoding patch: {0}")]
    Decode(String),
    /// The patch is well-formed but cannot be applied to this object.
    #[error("{0}")]
    Apply(String),
}

/// Applies `patch` (the raw request body) of `patch_type` to `original`, an object of
/// `kind` (used to find strategic merge keys). For `Apply`, `original` is `Value::Null`
/// when the object does not exist yet.
pub fn apply_patch(
    patch_type: PatchType,
    original: &Value,
    patch: &[u8],
    _kind: &str,
) -> Result<Value, PatchError> {
    match patch_type {
        PatchType::Json => {
            let ops: json_patch::Patch =
                serde_json::from_slice(patch).map_err(|e| PatchError::Decode(e.to_string()))?;
            let mut doc = original.clone();
            json_patch::patch(&mut doc, &ops).map_err(|e| PatchError::Apply(e.to_string()))?;
            Ok(doc)
        }
        PatchType::Merge | PatchType::StrategicMerge | PatchType::Apply => {
            let p: Value = if patch_type == PatchType::Apply {
                serde_yaml_ng::from_slice(patch).map_err(|e| PatchError::Decode(e.to_string()))?
            } else {
                serde_json::from_slice(patch).map_err(|e| PatchError::Decode(e.to_string()))?
            };
            let mut doc = original.clone();
            json_patch::merge(&mut doc, &p);
            Ok(doc)
        }
    }
}
