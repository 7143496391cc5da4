//! The garbage collector: deletes objects whose owners are all gone (Background), deletes
//! an owner's dependents before the owner when it carries the `foregroundDeletion`
//! finalizer, and strips the ownerReference from dependents when it carries `orphan`.
//!
//! One informer per deletable resource feeds an owner -> dependents graph; a change to an
//! object queues it, its owners (a foreground owner waits on its dependents) and, when it
//! is deleted, its dependents.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{
    DeleteParams, DynamicObject, ListParams, Patch, PatchParams, Preconditions, PropagationPolicy,
};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};
use parking_lot::Mutex;
use rkube_runtime::{run_reconcile_workers, Action, Backoff, Change, SharedInformers, WorkQueue};
use serde_json::json;
use tokio::task::JoinSet;

use crate::discovery::{deletable_resources, is_event, DeletableResource};
use crate::util::ignore_not_found;
use crate::{ControllerError, Shared};

pub const NAME: &str = "garbagecollector";
pub const FOREGROUND: &str = "foregroundDeletion";
pub const ORPHAN: &str = "orphan";

/// One object: which resource, where, what.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Node {
    resource: usize,
    namespace: Option<String>,
    name: String,
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "#{}:{ns}/{}", self.resource, self.name),
            None => write!(f, "#{}:{}", self.resource, self.name),
        }
    }
}

#[derive(Default)]
struct Graph {
    by_uid: HashMap<String, Node>,
    owners: HashMap<String, Vec<String>>,
    dependents: HashMap<String, HashSet<String>>,
}

impl Graph {
    /// Records `obj` and returns the owner uids whose dependents changed.
    fn upsert(&mut self, node: Node, uid: &str, owners: Vec<String>) -> Vec<String> {
        self.by_uid.insert(uid.to_string(), node);
        let previous = self
            .owners
            .insert(uid.to_string(), owners.clone())
            .unwrap_or_default();
        for old in &previous {
            if !owners.contains(old) {
                if let Some(set) = self.dependents.get_mut(old) {
                    set.remove(uid);
                }
            }
        }
        for owner in &owners {
            self.dependents
                .entry(owner.clone())
                .or_default()
                .insert(uid.to_string());
        }
        previous.into_iter().chain(owners).collect()
    }

    fn remove(&mut self, uid: &str) -> Vec<String> {
        self.by_uid.remove(uid);
        let owners = self.owners.remove(uid).unwrap_or_default();
        for owner in &owners {
            if let Some(set) = self.dependents.get_mut(owner) {
                set.remove(uid);
            }
        }
        owners
    }

    fn dependents_of(&self, uid: &str) -> Vec<Node> {
        self.dependents
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|d| self.by_uid.get(d).cloned())
            .collect()
    }
}

struct GarbageCollector {
    client: kube::Client,
    resources: Vec<DeletableResource>,
    stores: Vec<Store<DynamicObject>>,
    graph: Arc<Mutex<Graph>>,
}

pub async fn start(shared: &Shared, tasks: &mut JoinSet<()>, informers: &mut SharedInformers) {
    let client = shared.client.clone();
    let resources = loop {
        match deletable_resources(&client).await {
            Ok(r) => break r,
            Err(e) => {
                tracing::warn!(error = %e, "garbage collector: discovery failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let resources: Vec<DeletableResource> = resources
        .into_iter()
        .filter(|r| !is_event(&r.resource))
        .collect();
    let queue: Arc<WorkQueue<Node>> = WorkQueue::new(Backoff::default());
    let graph = Arc::new(Mutex::new(Graph::default()));
    let mut stores = Vec::new();
    let mut synced = Vec::new();
    for (index, resource) in resources.iter().enumerate() {
        let queue = queue.clone();
        let graph = graph.clone();
        let namespaced = resource.namespaced;
        // Metadata is all the graph needs; a resource another controller watches typed
        // shares that watch.
        let (store, store_synced) = informers.metadata(&resource.resource).subscribe(
            move |change: Change<'_, DynamicObject>| {
                let obj = change.object();
                let Some(uid) = obj.uid() else { return };
                let node = Node {
                    resource: index,
                    namespace: if namespaced { obj.namespace() } else { None },
                    name: obj.name_any(),
                };
                let mut graph = graph.lock();
                let (touched_owners, dependents) = match change {
                    Change::Applied(_) => {
                        let owners = obj
                            .owner_references()
                            .iter()
                            .map(|r| r.uid.clone())
                            .collect();
                        (graph.upsert(node.clone(), &uid, owners), Vec::new())
                    }
                    Change::Deleted(_) => (graph.remove(&uid), graph.dependents_of(&uid)),
                };
                let owners: Vec<Node> = touched_owners
                    .iter()
                    .filter_map(|u| graph.by_uid.get(u).cloned())
                    .collect();
                drop(graph);
                if matches!(change, Change::Applied(_))
                    && (!obj.owner_references().is_empty()
                        || obj.metadata.deletion_timestamp.is_some())
                {
                    queue.add(node);
                }
                for n in owners.into_iter().chain(dependents) {
                    queue.add(n);
                }
            },
        );
        stores.push(store);
        synced.push(store_synced);
    }
    let gc = Arc::new(GarbageCollector {
        client,
        resources,
        stores,
        graph,
    });
    let workers = shared.workers;
    tasks.spawn(async move {
        for store_synced in synced {
            store_synced.wait().await;
        }
        run_reconcile_workers(NAME, queue, workers, gc, |g, node: Node| async move {
            g.reconcile(&node).await
        })
        .await;
    });
}

enum OwnerState {
    Absent,
    Present,
}

impl GarbageCollector {
    fn get(&self, node: &Node) -> Option<Arc<DynamicObject>> {
        let resource = &self.resources.get(node.resource)?.resource;
        let mut key = ObjectRef::new_with(&node.name, resource.clone());
        if let Some(ns) = &node.namespace {
            key = key.within(ns);
        }
        self.stores.get(node.resource)?.get(&key)
    }

    fn api(&self, node: &Node) -> Option<Api<DynamicObject>> {
        let resource = &self.resources.get(node.resource)?.resource;
        Some(match &node.namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, resource),
            None => Api::all_with(self.client.clone(), resource),
        })
    }

    async fn reconcile(&self, node: &Node) -> Result<Action, ControllerError> {
        let Some(obj) = self.get(node) else {
            return Ok(Action::Done);
        };
        let Some(api) = self.api(node) else {
            return Ok(Action::Done);
        };
        let uid = obj.uid().unwrap_or_default();
        let finalizers = obj.finalizers().to_vec();
        if obj.metadata.deletion_timestamp.is_some() {
            if finalizers.iter().any(|f| f == ORPHAN) {
                self.orphan_dependents(&uid, obj.namespace().as_deref())
                    .await?;
                self.remove_finalizer(&api, &obj, ORPHAN).await?;
                return Ok(Action::Done);
            }
            if finalizers.iter().any(|f| f == FOREGROUND) {
                return self.delete_dependents_first(&api, &obj, &uid).await;
            }
        }
        let refs = obj.owner_references().to_vec();
        if refs.is_empty() {
            return Ok(Action::Done);
        }
        let mut absent = Vec::new();
        for r in &refs {
            if matches!(self.owner_state(r, node).await?, OwnerState::Absent) {
                absent.push(r.uid.clone());
            }
        }
        if absent.is_empty() {
            return Ok(Action::Done);
        }
        if absent.len() == refs.len() {
            if obj.metadata.deletion_timestamp.is_none() {
                tracing::debug!(object = %node, "owners gone; deleting");
                delete(&api, &obj, PropagationPolicy::Background).await?;
            }
        } else {
            let remaining: Vec<_> = refs
                .into_iter()
                .filter(|r| !absent.contains(&r.uid))
                .collect();
            patch_refs(&api, &obj, remaining).await?;
        }
        Ok(Action::Done)
    }

    /// The cache first; when it does not have the owner, the API server (the owner's
    /// informer may lag behind the dependent's), so nothing is deleted on stale data.
    async fn owner_state(
        &self,
        owner: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
        dependent: &Node,
    ) -> Result<OwnerState, ControllerError> {
        // The graph only learns of deletions from watch events; after a re-list it may still
        // name an object the cache no longer has, so the cache must agree.
        let cached = self.graph.lock().by_uid.get(&owner.uid).cloned();
        if let Some(node) = cached {
            if self
                .get(&node)
                .is_some_and(|o| o.uid().as_deref() == Some(owner.uid.as_str()))
            {
                return Ok(OwnerState::Present);
            }
        }
        let (group, version) = match owner.api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", owner.api_version.as_str()),
        };
        let Some(index) = self.resources.iter().position(|r| {
            r.resource.group == group
                && r.resource.version == version
                && r.resource.kind == owner.kind
        }) else {
            // A kind this server does not serve cannot be checked; keep the dependent.
            return Ok(OwnerState::Present);
        };
        let namespaced = self.resources[index].namespaced;
        let owner_node = Node {
            resource: index,
            namespace: if namespaced {
                dependent.namespace.clone()
            } else {
                None
            },
            name: owner.name.clone(),
        };
        let Some(api) = self.api(&owner_node) else {
            return Ok(OwnerState::Present);
        };
        match api.get_opt(&owner.name).await? {
            Some(found) if found.uid().as_deref() == Some(owner.uid.as_str()) => {
                Ok(OwnerState::Present)
            }
            _ => Ok(OwnerState::Absent),
        }
    }

    /// Strips the owner's reference from every dependent the API server lists, not only
    /// those in the graph: a dependent created moments ago may not have reached this
    /// controller's informer yet, and once the owner's finalizer is gone it would look
    /// ownerless and be deleted instead of orphaned (seen in CI). Orphan deletions are rare,
    /// so one list per deletable resource is affordable.
    async fn orphan_dependents(
        &self,
        owner_uid: &str,
        owner_namespace: Option<&str>,
    ) -> Result<(), ControllerError> {
        for deletable in &self.resources {
            let resource = &deletable.resource;
            let list_api: Api<DynamicObject> = match (deletable.namespaced, owner_namespace) {
                (true, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, resource),
                // A cluster-scoped object cannot name a namespaced owner.
                (false, Some(_)) => continue,
                (_, None) => Api::all_with(self.client.clone(), resource),
            };
            for obj in list_api.list(&ListParams::default()).await?.items {
                if !obj.owner_references().iter().any(|r| r.uid == owner_uid) {
                    continue;
                }
                let api = match obj.namespace() {
                    Some(ns) => Api::namespaced_with(self.client.clone(), &ns, resource),
                    None => Api::all_with(self.client.clone(), resource),
                };
                let remaining: Vec<_> = obj
                    .owner_references()
                    .iter()
                    .filter(|r| r.uid != owner_uid)
                    .cloned()
                    .collect();
                patch_refs(&api, &obj, remaining).await?;
            }
        }
        Ok(())
    }

    /// Foreground: delete every dependent, and let the owner go once no dependent that
    /// blocks owner deletion is left.
    async fn delete_dependents_first(
        &self,
        api: &Api<DynamicObject>,
        owner: &DynamicObject,
        owner_uid: &str,
    ) -> Result<Action, ControllerError> {
        let dependents = self.graph.lock().dependents_of(owner_uid);
        let mut blocking = 0;
        for dep in dependents {
            let (Some(obj), Some(dep_api)) = (self.get(&dep), self.api(&dep)) else {
                continue;
            };
            let blocks = obj
                .owner_references()
                .iter()
                .any(|r| r.uid == owner_uid && r.block_owner_deletion == Some(true));
            if blocks {
                blocking += 1;
            }
            if obj.metadata.deletion_timestamp.is_none() {
                let has_own_dependents = !self
                    .graph
                    .lock()
                    .dependents_of(&obj.uid().unwrap_or_default())
                    .is_empty();
                let policy = if has_own_dependents {
                    PropagationPolicy::Foreground
                } else {
                    PropagationPolicy::Background
                };
                delete(&dep_api, &obj, policy).await?;
            }
        }
        if blocking == 0 {
            self.remove_finalizer(api, owner, FOREGROUND).await?;
            return Ok(Action::Done);
        }
        // Dependents' deletions re-queue the owner; this is only the safety net.
        Ok(Action::RequeueAfter(Duration::from_secs(5)))
    }

    async fn remove_finalizer(
        &self,
        api: &Api<DynamicObject>,
        obj: &DynamicObject,
        finalizer: &str,
    ) -> Result<(), ControllerError> {
        let remaining: Vec<&String> = obj
            .finalizers()
            .iter()
            .filter(|f| *f != finalizer)
            .collect();
        let patch = json!({"metadata": {"finalizers": remaining, "resourceVersion": obj.resource_version()}});
        let result = api
            .patch(
                &obj.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await;
        ignore_not_found(result)?;
        Ok(())
    }
}

async fn delete(
    api: &Api<DynamicObject>,
    obj: &DynamicObject,
    policy: PropagationPolicy,
) -> Result<(), ControllerError> {
    let params = DeleteParams {
        propagation_policy: Some(policy),
        preconditions: Some(Preconditions {
            uid: obj.uid(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(&obj.name_any(), &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn patch_refs(
    api: &Api<DynamicObject>,
    obj: &DynamicObject,
    refs: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
) -> Result<(), ControllerError> {
    let refs = if refs.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::to_value(refs)?
    };
    let patch =
        json!({"metadata": {"ownerReferences": refs, "resourceVersion": obj.resource_version()}});
    let result = api
        .patch(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await;
    ignore_not_found(result)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> Node {
        Node {
            resource: 0,
            namespace: Some("ns".into()),
            name: name.into(),
        }
    }

    #[test]
    fn graph_tracks_dependents_through_owner_changes_and_removal() {
        let mut g = Graph::default();
        g.upsert(node("owner"), "o", vec![]);
        g.upsert(node("dep"), "d", vec!["o".into()]);
        assert_eq!(g.dependents_of("o"), vec![node("dep")]);
        let touched = g.upsert(node("dep"), "d", vec![]);
        assert_eq!(touched, vec!["o".to_string()]);
        assert!(g.dependents_of("o").is_empty());
        g.upsert(node("dep"), "d", vec!["o".into()]);
        assert_eq!(g.remove("d"), vec!["o".to_string()]);
        assert!(g.dependents_of("o").is_empty());
    }
}
