//! What every write does the same way, whatever the kind: names, namespace and the
//! server-owned metadata, the status/spec split of an update and generation bumps; the
//! kind's defaulting and validation (its [`KindRules`](rkube_api::kinds::KindRules)) run
//! here too.

use rand::Rng;
use rkube_api::registry::ResourceInfo;
use rkube_api::{ApiError, StatusCause};
use serde_json::{json, Map, Value};

use crate::objects::{check_type, meta, meta_mut, name_of, now_rfc3339};

/// Upstream's generateName suffix alphabet: no vowels (no accidental words), no
/// look-alike characters.
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn generate_name(prefix: &str) -> String {
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
    let strategy = super::for_resource(resource);
    if strategy.tracks_generation {
        meta.insert("generation".into(), json!(1));
    } else {
        meta.remove("generation");
    }
    strategy.rules.apply_defaults(obj);
    let name = name_of(obj).unwrap_or("").to_string();
    let mut causes = Vec::new();
    if name.is_empty() {
        causes.push(StatusCause::required("metadata.name"));
        // Upstream reports a missing name on its own: nothing else is meaningful without it.
        return Err(ApiError::invalid(resource, "", causes));
    }
    causes.extend(strategy.rules.validate_create(resource, obj));
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
}

/// Prepares an update of `old` into `new`: carries over server-owned metadata, keeps the
/// part the scope may not change, bumps generation on spec changes, defaults, validates,
/// and keeps what the server assigned on create.
pub fn prepare_update(
    resource: &ResourceInfo,
    old: &Value,
    new: &mut Value,
    scope: UpdateScope,
) -> Result<(), ApiError> {
    check_type(resource, new, resource.kind, &resource.api_version())?;
    let strategy = super::for_resource(resource);
    let tracks_generation = strategy.tracks_generation;
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
    } else if resource.has_status() {
        match old.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(m) = new.as_object_mut() {
                    m.remove("status");
                }
            }
        }
    }
    let old_meta = meta(old);
    let meta = meta_mut(new);
    for owned in [
        "uid",
        "creationTimestamp",
        "namespace",
        "name",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ] {
        match old_meta.get(owned) {
            Some(v) => meta.insert(owned.into(), v.clone()),
            None => meta.remove(owned),
        };
    }
    meta.remove("managedFields");
    meta.remove("selfLink");
    if tracks_generation {
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
        strategy.rules.apply_defaults(new);
    }
    if tracks_generation && spec_part(old) != spec_part(new) {
        let g = new["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
        meta_mut(new).insert("generation".into(), json!(g));
    }
    let causes = strategy.rules.validate_update(resource, new, old);
    if !causes.is_empty() {
        return Err(ApiError::invalid(resource, &name, causes));
    }
    (strategy.keep_assigned_on_update)(resource, old, new)
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
}
