//! Discovery documents (`/version`, `/api`, `/apis`, per group and group-version) and the
//! minimal OpenAPI v3 that kubectl needs for its default validation. All derived from the
//! resource registry.

use rkube_api::registry::{self, ResourceInfo};
use serde_json::{json, Value};

/// The Kubernetes version rkube claims, so that kubectl prints no version-skew warnings.
pub const KUBE_MAJOR: &str = "1";
pub const KUBE_MINOR: &str = "32";
pub const KUBE_GIT_VERSION: &str = "v1.32.0-rkube";

pub fn version() -> Value {
    json!({
        "major": KUBE_MAJOR,
        "minor": KUBE_MINOR,
        "gitVersion": KUBE_GIT_VERSION,
        "gitCommit": env!("CARGO_PKG_VERSION"),
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, go_arch()),
    })
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

pub fn api_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [],
    })
}

fn groups() -> Vec<(&'static str, &'static str)> {
    registry::group_versions()
        .into_iter()
        .filter(|(g, _)| !g.is_empty())
        .collect()
}

fn group_json(group: &str, version: &str) -> Value {
    let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
    json!({"name": group, "versions": [gv.clone()], "preferredVersion": gv})
}

pub fn api_group_list() -> Value {
    let groups: Vec<Value> = groups()
        .into_iter()
        .map(|(g, v)| group_json(g, v))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn api_group(group: &str) -> Option<Value> {
    let (g, v) = groups().into_iter().find(|(g, _)| *g == group)?;
    let mut doc = group_json(g, v);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Some(doc)
}

fn resource_entries(r: &ResourceInfo) -> Vec<Value> {
    let mut main = json!({
        "name": r.plural,
        "singularName": r.singular,
        "namespaced": r.namespaced,
        "kind": r.kind,
        "verbs": r.verbs(),
    });
    if !r.short_names.is_empty() {
        main["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        main["categories"] = json!(r.categories);
    }
    let mut out = vec![main];
    for sub in r.subresources {
        let (group, version, kind) = sub.foreign_kind().unwrap_or((r.group, r.version, r.kind));
        let mut entry = json!({
            "name": format!("{}/{}", r.plural, sub.name()),
            "singularName": "",
            "namespaced": r.namespaced,
            "kind": kind,
            "verbs": sub.verbs(),
        });
        if sub.foreign_kind().is_some() {
            entry["group"] = json!(group);
            entry["version"] = json!(version);
        }
        out.push(entry);
    }
    out
}

/// `APIResourceList` for one group version; `None` if it is not served.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let served = groups().contains(&(group, version)) || (group.is_empty() && version == "v1");
    if !served {
        return None;
    }
    let resources: Vec<Value> = registry::REGISTRY
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .flat_map(resource_entries)
        .collect();
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

/// The media type of aggregated discovery (one request for every group's resources).
pub const AGGREGATED_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether an Accept header asks for aggregated discovery (kubectl 1.32 does, with plain
/// JSON as fallback).
pub fn wants_aggregated(accept: &str) -> bool {
    accept.split(',').any(|entry| {
        let params: Vec<&str> = entry.split(';').map(str::trim).collect();
        params.first() == Some(&"application/json")
            && params.contains(&"g=apidiscovery.k8s.io")
            && params.contains(&"v=v2")
            && params.contains(&"as=APIGroupDiscoveryList")
    })
}

fn aggregated_resource(r: &ResourceInfo) -> Value {
    let mut entry = json!({
        "resource": r.plural,
        "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
        "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": r.singular,
        "verbs": r.verbs(),
    });
    if !r.short_names.is_empty() {
        entry["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        entry["categories"] = json!(r.categories);
    }
    let subresources: Vec<Value> = r
        .subresources
        .iter()
        .map(|sub| {
            let (group, version, kind) = sub.foreign_kind().unwrap_or((r.group, r.version, r.kind));
            json!({
                "subresource": sub.name(),
                "responseKind": {"group": group, "version": version, "kind": kind},
                "verbs": sub.verbs(),
            })
        })
        .collect();
    if !subresources.is_empty() {
        entry["subresources"] = json!(subresources);
    }
    entry
}

/// `APIGroupDiscoveryList` for `/api` (`core = true`) or `/apis`.
pub fn aggregated(core: bool) -> Value {
    let gvs: Vec<(&str, &str)> = if core { vec![("", "v1")] } else { groups() };
    let items: Vec<Value> = gvs
        .into_iter()
        .map(|(group, version)| {
            let resources: Vec<Value> = registry::REGISTRY
                .iter()
                .filter(|r| r.group == group && r.version == version)
                .map(aggregated_resource)
                .collect();
            json!({
                "metadata": {"name": group},
                "versions": [{"version": version, "resources": resources, "freshness": "Current"}],
            })
        })
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    })
}

fn openapi_path_key(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// A content hash for cache busting: kubectl caches OpenAPI documents by URL.
fn content_hash(doc: &Value) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    doc.to_string().hash(&mut h);
    format!("{:016X}", h.finish())
}

pub fn openapi_index() -> Value {
    let mut paths = serde_json::Map::new();
    let mut all = vec![("", "v1")];
    all.extend(groups());
    for (g, v) in all {
        if let Some(doc) = openapi_document(g, v) {
            let key = openapi_path_key(g, v);
            let url = format!("/openapi/v3/{}?hash={}", key, content_hash(&doc));
            paths.insert(key, json!({"serverRelativeURL": url}));
        }
    }
    json!({"paths": paths})
}

/// The OpenAPI v3 document for one group version: per kind, a PATCH operation carrying the
/// group-version-kind and the `fieldValidation` parameter. That is what kubectl's
/// validation looks for to decide that the server validates fields itself. Schemas are not
/// served (so kubectl does not try schema-driven client-side patches).
pub fn openapi_document(group: &str, version: &str) -> Option<Value> {
    let mut paths = serde_json::Map::new();
    for r in registry::REGISTRY
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let prefix = if group.is_empty() {
            format!("/api/{version}")
        } else {
            format!("/apis/{group}/{version}")
        };
        let item_path = if r.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("{prefix}/{}/{{name}}", r.plural)
        };
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let op = |action: &str| {
            json!({
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
                "parameters": [
                    {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                    {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                    {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                ],
                "responses": {"200": {"description": "OK"}},
            })
        };
        paths.insert(
            item_path,
            json!({"get": {"x-kubernetes-action": "get", "x-kubernetes-group-version-kind": gvk,
                           "responses": {"200": {"description": "OK"}}},
                   "put": op("put"), "patch": op("patch")}),
        );
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": KUBE_GIT_VERSION},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_subresource_is_autoscaling_v1() {
        let apps = resource_list("apps", "v1").unwrap();
        let scale = apps["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "deployments/scale")
            .unwrap();
        assert_eq!(scale["group"], "autoscaling");
        assert_eq!(scale["version"], "v1");
        assert_eq!(scale["kind"], "Scale");
    }

    #[test]
    fn aggregated_discovery_lists_every_resource_once() {
        let core = aggregated(true);
        let pods = core["items"][0]["versions"][0]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "pods")
            .unwrap();
        assert_eq!(pods["scope"], "Namespaced");
        assert!(pods["subresources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["subresource"] == "exec"));
        let apps = aggregated(false);
        let total: usize = apps["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["versions"][0]["resources"].as_array().unwrap().len())
            .sum();
        assert_eq!(
            total
                + core["items"][0]["versions"][0]["resources"]
                    .as_array()
                    .unwrap()
                    .len(),
            registry::REGISTRY.len()
        );
        assert!(wants_aggregated(
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
        ));
        assert!(!wants_aggregated("application/json"));
    }

    #[test]
    fn every_served_group_is_in_the_list_and_the_openapi_index() {
        let list = api_group_list();
        let names: Vec<&str> = list["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["name"].as_str().unwrap())
            .collect();
        for g in [
            "apps",
            "batch",
            "coordination.k8s.io",
            "discovery.k8s.io",
            "policy",
            "autoscaling",
        ] {
            assert!(names.contains(&g), "{g}");
        }
        let index = openapi_index();
        assert!(index["paths"]["api/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap()
            .starts_with("/openapi/v3/api/v1?hash="));
        assert!(index["paths"].get("apis/apps/v1").is_some());
        assert!(resource_list("apps", "v9").is_none());
    }
}
