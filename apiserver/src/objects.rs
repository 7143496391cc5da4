//! Object bookkeeping shared by every write: what is stored, what the server owns in
//! `metadata`, generation, and the preparation steps of create and update (upstream calls
//! these the resource "strategy").

use chrono::{SecondsFormat, Utc};
use rand::Rng;
use rkube_api::registry::ResourceInfo;
use rkube_api::{defaults, validation, ApiError, StatusCause};
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

/// Upstream's generateName suffix alphabet: no vowels (no accidental words), no
/// look-alike characters.
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

pub fn generate_name(prefix: &str) -> String {
    let mut rng = rand::thread_rng();
    let suffix: String = (0..5)
        .map(|_| NAME_ALPHABET[rng.gen_range(0..NAME_ALPHABET.len())] as char)
        .collect();
    // Upstream trims the prefix so the result fits in 63 bytes. The cut backs off to a
    // character boundary: a non-ASCII prefix is then refused by name validation, not by
    // a panic here.
    let mut cut = prefix.len().min(63 - suffix.len());
    while !prefix.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{suffix}", &prefix[..cut])
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

/// Prepares a new object for storage: names, namespace, server-owned metadata, defaults,
/// validation. `namespace` is the URL's namespace for namespaced resources.
pub fn prepare_create(
    resource: &ResourceInfo,
    namespace: Option<&str>,
    obj: &mut Value,
) -> Result<(), ApiError> {
    check_type(resource, obj, resource.kind, &resource.api_version())?;
    let meta = meta_mut(obj);
    if let Some(ns) = namespace {
        match meta.get("namespace").and_then(Value::as_str) {
            Some(body_ns) if !body_ns.is_empty() && body_ns != ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ))
            }
            _ => {
                meta.insert("namespace".into(), json!(ns));
            }
        }
    } else {
        meta.remove("namespace");
    }
    let has_name = meta
        .get("name")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    if !has_name {
        if let Some(prefix) = meta
            .get("generateName")
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())
        {
            let name = generate_name(prefix);
            meta.insert("name".into(), json!(name));
        }
    }
    meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
    meta.remove("resourceVersion");
    meta.remove("deletionTimestamp");
    meta.remove("deletionGracePeriodSeconds");
    meta.remove("managedFields");
    meta.remove("selfLink");
    if resource.tracks_generation {
        meta.insert("generation".into(), json!(1));
    } else {
        meta.remove("generation");
    }
    defaults::apply_defaults(resource, obj);
    let name = name_of(obj).unwrap_or("").to_string();
    let mut causes = Vec::new();
    if name.is_empty() {
        causes.push(StatusCause::required("metadata.name"));
        // Upstream reports a missing name on its own: nothing else is meaningful without it.
        return Err(ApiError::invalid(resource, "", causes));
    }
    causes.extend(validation::validate_create(resource, obj));
    if !causes.is_empty() {
        return Err(ApiError::invalid(resource, &name, causes));
    }
    Ok(())
}

/// Everything but metadata and status: a change here is a spec change.
fn spec_part(obj: &Value) -> Map<String, Value> {
    obj.as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "metadata" | "status" | "kind" | "apiVersion")
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// Which part of the object an update may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateScope {
    /// The main resource: everything but status (for resources with a status subresource).
    Main,
    /// The status subresource: only status.
    Status,
    /// Server-internal updates (deletion marking): everything, no user restrictions.
    Internal,
}

/// Prepares an update of `old` into `new`: carries over server-owned metadata, keeps the
/// part the scope may not change, bumps generation on spec changes, defaults, validates.
pub fn prepare_update(
    resource: &ResourceInfo,
    old: &Value,
    new: &mut Value,
    scope: UpdateScope,
) -> Result<(), ApiError> {
    check_type(resource, new, resource.kind, &resource.api_version())?;
    let name = name_of(old).unwrap_or("").to_string();
    match name_of(new) {
        Some(n) if n != name => {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )))
        }
        _ => {}
    }
    if scope == UpdateScope::Status {
        // Status writes change status only; metadata and spec come from the stored object.
        let status = new.get("status").cloned();
        *new = old.clone();
        match status {
            Some(s) => new["status"] = s,
            None => {
                if let Some(m) = new.as_object_mut() {
                    m.remove("status");
                }
            }
        }
    } else if scope == UpdateScope::Main && resource.has_status() {
        match old.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(m) = new.as_object_mut() {
                    m.remove("status");
                }
            }
        }
    }
    let old_meta = meta(old).clone();
    let meta = meta_mut(new);
    for owned in ["uid", "creationTimestamp", "namespace", "name"] {
        match old_meta.get(owned) {
            Some(v) => meta.insert(owned.into(), v.clone()),
            None => meta.remove(owned),
        };
    }
    if scope != UpdateScope::Internal {
        for owned in ["deletionTimestamp", "deletionGracePeriodSeconds"] {
            match old_meta.get(owned) {
                Some(v) => meta.insert(owned.into(), v.clone()),
                None => meta.remove(owned),
            };
        }
    }
    meta.remove("managedFields");
    meta.remove("selfLink");
    if resource.tracks_generation {
        let old_generation = old_meta
            .get("generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        meta.insert("generation".into(), json!(old_generation));
    } else {
        meta.remove("generation");
    }
    // A status write carries the stored (already defaulted) spec; defaulting it again
    // could only invent differences.
    if scope != UpdateScope::Status {
        defaults::apply_defaults(resource, new);
    }
    if resource.tracks_generation && spec_part(old) != spec_part(new) {
        let g = new["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
        meta_mut(new).insert("generation".into(), json!(g));
    }
    if scope != UpdateScope::Internal {
        let causes = validation::validate_update(resource, new, old);
        if !causes.is_empty() {
            return Err(ApiError::invalid(resource, &name, causes));
        }
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
    use rkube_api::registry::find;

    #[test]
    fn generated_names_fit_and_use_the_alphabet() {
        let n = generate_name("web-");
        assert!(n.starts_with("web-") && n.len() == 9);
        let long = "a".repeat(80);
        assert_eq!(generate_name(&long).len(), 63);
        // 'é' is two bytes: 58 bytes would end inside the 30th one.
        let accented = "é".repeat(40);
        let n = generate_name(&accented);
        assert!(
            n.starts_with(&"é".repeat(29)) && n.len() == 29 * 2 + 5,
            "{n}"
        );
    }

    #[test]
    fn generation_moves_only_on_spec_changes() {
        let deploy = find("apps", "v1", "deployments").unwrap();
        let mut old = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d", "namespace": "default"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"a": "b"}},
                     "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        prepare_create(deploy, Some("default"), &mut old).unwrap();
        assert_eq!(old["metadata"]["generation"], 1);

        let mut relabeled = old.clone();
        relabeled["metadata"]["labels"] = json!({"x": "y"});
        prepare_update(deploy, &old, &mut relabeled, UpdateScope::Main).unwrap();
        assert_eq!(relabeled["metadata"]["generation"], 1);

        let mut scaled = old.clone();
        scaled["spec"]["replicas"] = json!(3);
        prepare_update(deploy, &old, &mut scaled, UpdateScope::Main).unwrap();
        assert_eq!(scaled["metadata"]["generation"], 2);
        assert_eq!(scaled["metadata"]["uid"], old["metadata"]["uid"]);
    }

    #[test]
    fn status_updates_touch_only_status() {
        let pods = find("", "v1", "pods").unwrap();
        let mut old = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"a": "1"}},
            "spec": {"containers": [{"name": "c", "image": "i"}]}});
        prepare_create(pods, Some("default"), &mut old).unwrap();
        let mut new = old.clone();
        new["metadata"]["labels"] = json!({"a": "2"});
        new["status"] = json!({"phase": "Running"});
        prepare_update(pods, &old, &mut new, UpdateScope::Status).unwrap();
        assert_eq!(new["metadata"]["labels"]["a"], "1");
        assert_eq!(new["status"]["phase"], "Running");
    }

    #[test]
    fn kind_mismatch_is_rejected() {
        let pods = find("", "v1", "pods").unwrap();
        let mut svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}});
        let err = prepare_create(pods, Some("default"), &mut svc).unwrap_err();
        assert_eq!(err.code, 400);
    }

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
