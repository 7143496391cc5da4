//! The four PATCH flavours the Kubernetes API accepts, applied to JSON objects.
//!
//! - `json`: RFC 6902 via the `json-patch` crate.
//! - `merge`: RFC 7396 via the `json-patch` crate.
//! - `strategic`: strategic merge patch ([`strategic`] module), with the per-kind list merge
//!   keys of upstream's Go struct tags restated in [`schema`].
//! - `apply`: server-side apply treated as an upsert: the body (YAML or JSON) is merged with
//!   strategic merge semantics. Field ownership (`managedFields`) is not tracked, so fields a
//!   manager stops sending are kept rather than removed, and conflicts are never reported.
//!
//! Invariants: the result is always a JSON object nested at most [`MAX_DEPTH`] levels, no
//! input panics, and what a patch may cost is bounded: at most [`MAX_JSON_PATCH_OPERATIONS`]
//! operations, `copy` operations adding at most [`MAX_COPY_BYTES`], no recursion deeper than
//! the documents it is given.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod limits;
mod schema;
mod strategic;
#[cfg(test)]
mod tests;

pub use limits::{
    check_yaml_nesting, encoded_len, exceeds_depth, from_yaml_slice, MAX_COPY_BYTES, MAX_DEPTH,
    MAX_JSON_PATCH_OPERATIONS,
};
use schema::Schema;
use serde_json::{Map, Value};

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
            "application/apply-patch+yaml" | "application/apply-patch+json" => {
                Some(PatchType::Apply)
            }
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
    /// A JSON patch with more operations than upstream allows (upstream answers 413).
    #[error(
        "The allowed maximum operations in a JSON patch is {MAX_JSON_PATCH_OPERATIONS}, got {0}"
    )]
    TooManyOperations(usize),
    /// `copy` operations would add more than [`MAX_COPY_BYTES`] (upstream's words; 422).
    #[error("Unable to complete the copy, the accumulated size increase of copy is {accumulated}, exceeding the limit {limit}")]
    CopyTooLarge { accumulated: usize, limit: usize },
    /// The result would nest deeper than [`MAX_DEPTH`], past what can be stored and read back.
    #[error("the patched object would nest deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

/// Applies `patch` (the raw request body) of `patch_type` to `original`, an object of
/// `kind` (used to find strategic merge keys). For `Apply`, `original` is `Value::Null`
/// when the object does not exist yet.
///
/// The result is always a JSON object; a patch that would turn the object into anything
/// else is a [`PatchError::Apply`]. Never panics, whatever the bytes.
pub fn apply_patch(
    patch_type: PatchType,
    original: &Value,
    patch: &[u8],
    kind: &str,
) -> Result<Value, PatchError> {
    let result = match patch_type {
        PatchType::Json => {
            let ops: json_patch::Patch = serde_json::from_slice(patch)
                .map_err(|e| PatchError::Decode(format!("invalid JSON patch: {e}")))?;
            limits::apply_json_patch(original, &ops)?
        }
        PatchType::Merge => {
            let patch: Value = serde_json::from_slice(patch)
                .map_err(|e| PatchError::Decode(format!("invalid JSON merge patch: {e}")))?;
            let mut doc = original.clone();
            json_patch::merge(&mut doc, &patch);
            doc
        }
        PatchType::StrategicMerge => {
            let patch: Value = serde_json::from_slice(patch)
                .map_err(|e| PatchError::Decode(format!("invalid strategic merge patch: {e}")))?;
            let patch = expect_object(patch, "strategic merge patch")?;
            strategic::merge(original, &patch, schema_for(kind))?
        }
        PatchType::Apply => {
            // YAML is a superset of JSON, so one parser covers both bodies kubectl sends.
            let patch: Value = from_yaml_slice(patch)
                .map_err(|e| PatchError::Decode(format!("invalid apply configuration: {e}")))?;
            let patch = expect_object(patch, "apply configuration")?;
            // Upsert: a missing object starts empty, which also drops nulls from the body.
            strategic::merge(original, &patch, schema_for(kind))?
        }
    };
    if !result.is_object() {
        return Err(PatchError::Apply(format!(
            "patched object must be a JSON object, got {}",
            type_name(&result)
        )));
    }
    // Merges cannot nest deeper than their inputs, but YAML decodes one level deeper than
    // JSON does, and JSON patches are checked operation by operation already: this is the
    // one check every flavour passes.
    if exceeds_depth(&result, MAX_DEPTH) {
        return Err(PatchError::TooDeep);
    }
    Ok(result)
}

/// Built-in kinds use upstream's merge keys. Unknown kinds (custom resources) get an empty
/// schema, so every list is replaced: merge-patch semantics, where upstream would answer 415.
fn schema_for(kind: &str) -> &'static Schema {
    Schema::for_kind(kind).unwrap_or_else(Schema::empty)
}

fn expect_object(patch: Value, what: &str) -> Result<Map<String, Value>, PatchError> {
    match patch {
        Value::Object(map) => Ok(map),
        other => Err(PatchError::Decode(format!(
            "{what} must be a JSON object, got {}",
            type_name(&other)
        ))),
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}
