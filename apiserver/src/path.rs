//! Parsing of resource URLs (`/api/v1/namespaces/default/pods/web/status`) into a
//! [`Target`]. Done by hand rather than with router patterns because the Kubernetes URL
//! space is ambiguous for patterns (`/api/v1/namespaces/x/status` is a subresource of a
//! namespace, `/api/v1/namespaces/x/pods` a collection inside one).

use rkube_api::registry::{self, ResourceInfo, Subresource};

/// What a request under `/api` or `/apis` addresses.
#[derive(Debug)]
pub enum Route {
    /// `/api/v1`: core resource list.
    CoreResourceList,
    /// `/apis/<group>`: one API group.
    Group(String),
    /// `/apis/<group>/<version>`: resource list of one group version.
    GroupVersionResourceList { group: String, version: String },
    /// A resource, collection or subresource.
    Resource(Target),
}

#[derive(Debug)]
pub struct Target {
    pub resource: &'static ResourceInfo,
    /// The namespace from the URL (namespaced resources only; `None` = all namespaces).
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<Subresource>,
}

/// Why a path does not name anything we serve.
#[derive(Debug, PartialEq, Eq)]
pub enum PathError {
    /// Nothing at this path (404 "the server could not find the requested resource").
    NotFound,
}

pub fn parse(path: &str) -> Result<Route, PathError> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["api", "v1"] => Ok(Route::CoreResourceList),
        ["api", "v1", rest @ ..] => parse_resource("", "v1", rest),
        ["apis", group] => Ok(Route::Group((*group).to_string())),
        ["apis", group, version] => Ok(Route::GroupVersionResourceList {
            group: (*group).to_string(),
            version: (*version).to_string(),
        }),
        ["apis", group, version, rest @ ..] => parse_resource(group, version, rest),
        _ => Err(PathError::NotFound),
    }
}

fn lookup(group: &str, version: &str, plural: &str) -> Result<&'static ResourceInfo, PathError> {
    registry::find(group, version, plural).ok_or(PathError::NotFound)
}

fn non_empty(s: &str) -> Result<String, PathError> {
    if s.is_empty() {
        Err(PathError::NotFound)
    } else {
        Ok(s.to_string())
    }
}

fn parse_resource(group: &str, version: &str, rest: &[&str]) -> Result<Route, PathError> {
    let target = |resource, namespace: Option<&str>, name: Option<&str>, sub: Option<&str>| {
        let subresource = match sub {
            Some(s) => {
                let parsed = Subresource::parse(s).ok_or(PathError::NotFound)?;
                if !ResourceInfo::has_subresource(resource, parsed) {
                    return Err(PathError::NotFound);
                }
                Some(parsed)
            }
            None => None,
        };
        Ok(Route::Resource(Target {
            resource,
            namespace: namespace.map(non_empty).transpose()?,
            name: name.map(non_empty).transpose()?,
            subresource,
        }))
    };
    let namespaced_collection = |plural: &str| {
        lookup(group, version, plural).and_then(|r| {
            if r.namespaced {
                Ok(r)
            } else {
                Err(PathError::NotFound)
            }
        })
    };
    match rest {
        [plural] => target(lookup(group, version, plural)?, None, None, None),
        // `/namespaces/<ns>/<plural>` wins over `/<cluster-resource>/<name>/<sub>` only when
        // <plural> is a namespaced resource; `namespaces/x/status` stays a subresource.
        ["namespaces", ns, plural] if namespaced_collection(plural).is_ok() => {
            target(namespaced_collection(plural)?, Some(ns), None, None)
        }
        [plural, name] => {
            let r = lookup(group, version, plural)?;
            if r.namespaced {
                return Err(PathError::NotFound);
            }
            target(r, None, Some(name), None)
        }
        [plural, name, sub] => {
            let r = lookup(group, version, plural)?;
            if r.namespaced {
                return Err(PathError::NotFound);
            }
            target(r, None, Some(name), Some(sub))
        }
        ["namespaces", ns, plural, name] => {
            target(namespaced_collection(plural)?, Some(ns), Some(name), None)
        }
        ["namespaces", ns, plural, name, sub] => target(
            namespaced_collection(plural)?,
            Some(ns),
            Some(name),
            Some(sub),
        ),
        _ => Err(PathError::NotFound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(path: &str) -> Target {
        match parse(path) {
            Ok(Route::Resource(t)) => t,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn parses_the_kubernetes_url_space() {
        let t = resource("/api/v1/namespaces/default/pods/web/status");
        assert_eq!(t.resource.plural, "pods");
        assert_eq!(t.namespace.as_deref(), Some("default"));
        assert_eq!(t.name.as_deref(), Some("web"));
        assert_eq!(t.subresource, Some(Subresource::Status));

        let t = resource("/api/v1/namespaces/kube-system");
        assert_eq!(t.resource.plural, "namespaces");
        assert_eq!(t.name.as_deref(), Some("kube-system"));

        let t = resource("/api/v1/namespaces/kube-system/status");
        assert_eq!(t.resource.plural, "namespaces");
        assert_eq!(t.subresource, Some(Subresource::Status));

        let t = resource("/api/v1/namespaces/kube-system/configmaps");
        assert_eq!(t.resource.plural, "configmaps");
        assert!(t.name.is_none());

        let t = resource("/apis/apps/v1/deployments");
        assert!(t.namespace.is_none());

        let t = resource("/apis/apps/v1/namespaces/a/deployments/d/scale");
        assert_eq!(t.subresource, Some(Subresource::Scale));
        assert!(matches!(parse("/api/v1"), Ok(Route::CoreResourceList)));
        assert!(matches!(parse("/apis/apps"), Ok(Route::Group(_))));
    }

    #[test]
    fn rejects_what_is_not_served() {
        for p in [
            "/api/v1/widgets",
            "/api/v1/nodes/n1/scale",
            "/api/v1/pods/web",
            "/apis/apps/v2/deployments",
            "/api/v1/namespaces/default/pods/web/status/extra",
            "/api/v1/namespaces//pods",
            "/api/v2/pods",
        ] {
            assert!(parse(p).is_err(), "{p}");
        }
    }
}
