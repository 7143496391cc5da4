//! Object bookkeeping shared by every request: encoding for storage (resourceVersion
//! stripped, depth and size limits), metadata accessors, and the checks of a request body's
//! type and schema. What a write prepares and validates is in `crate::strategy`.

use chrono::{SecondsFormat, Utc};
use rkube_api::registry::ResourceInfo;
use rkube_api::ApiError;
use rkube_store::Revision;
use serde_json::{json, Map, Value};

/// Decodes a stored object and stamps its resourceVersion (storage never holds it: the
/// modification revision is the resourceVersion).
pub fn decode_stored(bytes: &[u8], revision: Revision) -> Result<Value, serde_json::Error> {
    let mut obj: Value = serde_json::from_slice(bytes)?;
    set_resource_version(&mut obj, revision);
    Ok(obj)
}

pub fn set_resource_version(obj: &mut Value, revision: Revision) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert(
            "resourceVersion".into(),
            Value::String(revision.to_string()),
        );
    }
}

/// The largest object stored: etcd's default request limit (`--max-request-bytes`, 1.5 MiB),
/// applied to both storage backends before writing, so that the embedded store takes nothing
/// etcd would refuse.
pub const MAX_STORED_BYTES: usize = 1_572_864;

/// Refuses objects nested deeper than can be stored and read back. Request bodies are
/// checked as soon as they are decoded, before anything recurses over them.
pub fn check_depth(obj: &Value) -> Result<(), ApiError> {
    if rkube_patch::exceeds_depth(obj, rkube_patch::MAX_DEPTH) {
        return Err(ApiError::bad_request(format!(
            "the object is nested deeper than {} levels, the most that can be stored",
            rkube_patch::MAX_DEPTH
        )));
    }
    Ok(())
}

/// Room above [`MAX_STORED_BYTES`] for what a delete adds (deletionTimestamp, grace period,
/// the orphan/foreground finalizer, a namespace's Terminating phase): an object stored at
/// the limit must still be deletable, or it could never be removed.
pub const DELETION_HEADROOM_BYTES: usize = 16 * 1024;

fn check_size_within(len: usize, limit: usize) -> Result<(), ApiError> {
    if len > limit {
        // What etcd answers, with upstream's 413 wording around it.
        return Err(ApiError::too_large(format!(
            "Request entity too large: etcdserver: request is too large (the object is {len} bytes, limit is {limit})"
        )));
    }
    Ok(())
}

fn check_size(len: usize) -> Result<(), ApiError> {
    check_size_within(len, MAX_STORED_BYTES)
}

/// What [`encode_for_storage`] checks, for writes that stop short of storage (dry runs).
pub fn check_storable(obj: &Value) -> Result<(), ApiError> {
    check_depth(obj)?;
    check_size(rkube_patch::encoded_len(obj))
}

/// The bytes to store: the object without resourceVersion (removed from `obj` in place;
/// callers stamp the new one after the write). Every write passes here, so this is where
/// the depth and size limits hold whatever produced the object.
pub fn encode_for_storage(obj: &mut Value) -> Result<Vec<u8>, ApiError> {
    encode_within(obj, MAX_STORED_BYTES)
}

/// [`encode_for_storage`] for an object a delete has marked: it may exceed the limit by
/// [`DELETION_HEADROOM_BYTES`].
pub fn encode_marked_for_deletion(obj: &mut Value) -> Result<Vec<u8>, ApiError> {
    encode_within(obj, MAX_STORED_BYTES + DELETION_HEADROOM_BYTES)
}

fn encode_within(obj: &mut Value, limit: usize) -> Result<Vec<u8>, ApiError> {
    check_depth(obj)?;
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    let bytes =
        serde_json::to_vec(obj).map_err(|e| ApiError::internal(format!("encoding object: {e}")))?;
    check_size_within(bytes.len(), limit)?;
    Ok(bytes)
}

pub fn meta(obj: &Value) -> &Value {
    &obj["metadata"]
}

/// Mutable metadata, created if absent. Callers have checked that `obj` is an object
/// (`check_type`); anything else is replaced rather than panicking.
pub fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = json!({});
    }
    let Value::Object(root) = obj else {
        unreachable!("made an object above")
    };
    let meta = root.entry("metadata").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    let Value::Object(map) = meta else {
        unreachable!("made an object above")
    };
    map
}

pub fn name_of(obj: &Value) -> Option<&str> {
    meta(obj)["name"].as_str().filter(|s| !s.is_empty())
}

pub fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Checks that the body's apiVersion/kind (when present) match the URL, and fills them in.
pub fn check_type(
    resource: &ResourceInfo,
    obj: &mut Value,
    expect_kind: &str,
    expect_api_version: &str,
) -> Result<(), ApiError> {
    let Some(map) = obj.as_object_mut() else {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    };
    let kind = map.get("kind").and_then(Value::as_str).unwrap_or("");
    let api_version = map.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    if (!kind.is_empty() && kind != expect_kind)
        || (!api_version.is_empty() && api_version != expect_api_version)
    {
        return Err(ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: the object's kind/apiVersion does not match the request URL ({})",
            if kind.is_empty() { "object" } else { kind },
            api_version,
            expect_kind,
            resource.qualified_name()
        )));
    }
    map.insert("kind".into(), json!(expect_kind));
    map.insert("apiVersion".into(), json!(expect_api_version));
    Ok(())
}

/// Rejects bodies whose fields have the wrong JSON type for their kind and, with
/// `fieldValidation=Strict` (kubectl's default), unknown fields - both as upstream does.
pub fn check_schema(
    resource: &ResourceInfo,
    obj: &mut Value,
    strict: bool,
) -> Result<(), ApiError> {
    rkube_api::typed::normalize_quantities(obj);
    let report = rkube_api::typed::check(resource.kind, obj, strict).map_err(|e| {
        ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: {}",
            resource.kind, resource.version, resource.kind, e
        ))
    })?;
    if strict && !report.unknown_fields.is_empty() {
        let list: Vec<String> = report
            .unknown_fields
            .iter()
            .map(|f| format!("unknown field \"{f}\""))
            .collect();
        return Err(ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
            resource.kind,
            resource.version,
            resource.kind,
            list.join(", ")
        )));
    }
    Ok(())
}

/// Whether two versions are equal apart from resourceVersion (a no-op write is skipped,
/// as upstream does, so resourceVersion does not move).
pub fn same_content(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut c = v.clone();
        if let Some(m) = c.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        c
    };
    strip(a) == strip(b)
}

pub fn has_finalizers(obj: &Value) -> bool {
    meta(obj)["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty())
}

pub fn is_terminating(obj: &Value) -> bool {
    !meta(obj)["deletionTimestamp"].is_null()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_at_the_size_limit_can_still_be_marked_for_deletion() {
        // Found by the router fuzz test: a namespace stored just under the limit could not
        // be deleted, because deletionTimestamp and the Terminating phase pushed it over.
        let mut at_limit = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "big", "finalizers": ["example.com/keep"]},
            "data": {"k": ""}});
        let overhead = serde_json::to_vec(&at_limit).unwrap().len();
        at_limit["data"]["k"] = json!("x".repeat(MAX_STORED_BYTES - overhead));
        assert_eq!(
            serde_json::to_vec(&at_limit).unwrap().len(),
            MAX_STORED_BYTES
        );
        assert!(encode_for_storage(&mut at_limit.clone()).is_ok());

        let mut marked = at_limit;
        marked["metadata"]["deletionTimestamp"] = json!("2026-12-03T07:00:00Z");
        marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        assert_eq!(
            encode_for_storage(&mut marked.clone()).unwrap_err().code,
            413
        );
        assert!(encode_marked_for_deletion(&mut marked.clone()).is_ok());

        let mut grown = marked;
        grown["data"]["more"] = json!("y".repeat(DELETION_HEADROOM_BYTES));
        assert_eq!(
            encode_marked_for_deletion(&mut grown).unwrap_err().code,
            413
        );
    }
}
