//! Which resources exist, from the API server's discovery: the garbage collector watches
//! every deletable one, the namespace controller empties every namespaced one.

use kube::core::discovery::{verbs, ApiCapabilities, ApiResource, Scope};
use kube::discovery::Discovery;

/// A resource the controllers can list, watch and delete.
#[derive(Clone, Debug)]
pub struct DeletableResource {
    pub resource: ApiResource,
    pub namespaced: bool,
    pub delete_collection: bool,
}

/// Events are excluded: upstream's garbage collector ignores them too (they are many,
/// short-lived and never owners).
pub async fn deletable_resources(
    client: &kube::Client,
) -> Result<Vec<DeletableResource>, kube::Error> {
    let discovery = Discovery::new(client.clone()).run().await?;
    let mut out = Vec::new();
    for group in discovery.groups() {
        for (resource, caps) in group.recommended_resources() {
            if !deletable(&caps) {
                continue;
            }
            out.push(DeletableResource {
                namespaced: caps.scope == Scope::Namespaced,
                delete_collection: caps.supports_operation(verbs::DELETE_COLLECTION),
                resource,
            });
        }
    }
    Ok(out)
}

fn deletable(caps: &ApiCapabilities) -> bool {
    [verbs::LIST, verbs::WATCH, verbs::DELETE]
        .iter()
        .all(|v| caps.supports_operation(v))
}

pub fn is_event(resource: &ApiResource) -> bool {
    resource.plural == "events"
}
