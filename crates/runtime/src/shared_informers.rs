//! Shared informers: one watch and one cache per resource per process, however many
//! controllers read it (upstream's SharedInformerFactory).
//!
//! Controllers register in a first phase: each asks [`SharedInformers`] for the informer of
//! a resource, takes its cache ([`SharedInformer::store`]), a readiness handle
//! ([`SharedInformer::synced`]) and adds change handlers ([`SharedInformer::on_change`]).
//! [`SharedInformers::spawn`] then starts one watch per registered resource, so no handler
//! misses the initial list.
//!
//! Consumers that only need object metadata for every kind (the garbage collector) ask for
//! [`SharedInformers::metadata`]; when a typed informer of the same resource is registered,
//! the metadata cache is fed from its events instead of a second watch.

use std::any::{Any, TypeId};
use std::fmt::Debug;
use std::hash::Hash;

use futures::StreamExt;
use kube::api::{ApiResource, DynamicObject, TypeMeta};
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::Store;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::informer::Change;

type Handler<K> = Box<dyn FnMut(Change<'_, K>) + Send>;
type Mirror<K> = Box<dyn FnMut(&Event<K>) + Send>;

/// What makes two informer requests the same watch.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WatchKey {
    pub group: String,
    pub version: String,
    pub plural: String,
    /// `None` for all namespaces.
    pub namespace: Option<String>,
    type_id: TypeId,
}

impl WatchKey {
    fn of<K: Resource + 'static>(dyntype: &K::DynamicType, namespace: Option<&str>) -> WatchKey {
        WatchKey {
            group: K::group(dyntype).to_string(),
            version: K::version(dyntype).to_string(),
            plural: K::plural(dyntype).to_string(),
            namespace: namespace.map(str::to_string),
            type_id: TypeId::of::<K>(),
        }
    }

    fn same_resource(&self, other: &WatchKey) -> bool {
        self.group == other.group
            && self.version == other.version
            && self.plural == other.plural
            && self.namespace == other.namespace
    }
}

impl std::fmt::Display for WatchKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group_version = if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        };
        match &self.namespace {
            Some(ns) => write!(f, "{group_version}/namespaces/{ns}/{}", self.plural),
            None => write!(f, "{group_version}/{}", self.plural),
        }
    }
}

/// A cache, its readiness and its handlers: what one resource's consumers share.
struct Fanout<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    writer: Writer<K>,
    store: Store<K>,
    handlers: Vec<Handler<K>>,
    /// Set once the first list is in the cache. Consumers wait on this rather than on
    /// `Store::wait_until_ready`: kube-runtime's readiness future keeps a single waker, so
    /// with several tasks waiting on clones of one store only the last one is woken.
    ready: watch::Sender<bool>,
}

impl<K> Fanout<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    fn new(dyntype: K::DynamicType) -> Fanout<K> {
        let writer = Writer::new(dyntype);
        let store = writer.as_reader();
        Fanout {
            writer,
            store,
            handlers: Vec::new(),
            ready: watch::Sender::new(false),
        }
    }

    /// The cache takes the event first, so a handler's consumer always finds at least that
    /// state; after each (re-)list every cached object is handed out again (a resync).
    fn apply(&mut self, event: &Event<K>) {
        self.writer.apply_watcher_event(event);
        match event {
            Event::Apply(obj) => self
                .handlers
                .iter_mut()
                .for_each(|h| h(Change::Applied(obj))),
            Event::Delete(obj) => self
                .handlers
                .iter_mut()
                .for_each(|h| h(Change::Deleted(obj))),
            Event::InitDone => {
                for obj in self.store.state() {
                    self.handlers
                        .iter_mut()
                        .for_each(|h| h(Change::Applied(&obj)));
                }
                self.ready.send_replace(true);
            }
            Event::Init | Event::InitApply(_) => {}
        }
    }
}

/// Waits until an informer's cache holds its first full list.
#[derive(Clone)]
pub struct Synced(watch::Receiver<bool>);

impl Synced {
    /// Returns once synced (or at once if the informer will never run).
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|ready| *ready).await;
    }

    pub fn is_synced(&self) -> bool {
        *self.0.borrow()
    }
}

/// One resource's informer while controllers register with it.
pub struct SharedInformer<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    api: Api<K>,
    key: WatchKey,
    dyntype: K::DynamicType,
    fanout: Fanout<K>,
    mirrors: Vec<Mirror<K>>,
}

impl<K> SharedInformer<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    /// The cache; it fills once [`SharedInformers::spawn`] has run.
    pub fn store(&self) -> Store<K> {
        self.fanout.store.clone()
    }

    pub fn synced(&self) -> Synced {
        Synced(self.fanout.ready.subscribe())
    }

    /// Runs `handler` for every change after the cache has it, and for every cached object
    /// after each (re-)list.
    pub fn on_change(&mut self, handler: impl FnMut(Change<'_, K>) + Send + 'static) {
        self.fanout.handlers.push(Box::new(handler));
    }

    /// [`SharedInformer::on_change`], returning the cache and its readiness: what a
    /// controller keeps of each informer it reads.
    pub fn subscribe(
        &mut self,
        handler: impl FnMut(Change<'_, K>) + Send + 'static,
    ) -> (Store<K>, Synced) {
        self.on_change(handler);
        (self.store(), self.synced())
    }

    async fn run(self) {
        let SharedInformer {
            api,
            key,
            mut fanout,
            mut mirrors,
            ..
        } = self;
        let mut events =
            std::pin::pin!(watcher::watcher(api, watcher::Config::default()).default_backoff());
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => {
                    fanout.apply(&event);
                    mirrors.iter_mut().for_each(|m| m(&event));
                }
                Err(e) => {
                    tracing::debug!(error = %e, resource = %key, "watch failed; retrying with backoff");
                }
            }
        }
    }
}

/// Type-erased registration entry, so one factory holds informers of every type.
trait Registered: Send {
    fn key(&self) -> &WatchKey;
    fn as_any(&mut self) -> &mut dyn Any;
    /// Feeds `metadata`'s cache from this informer's events; false if this informer cannot.
    fn attach_metadata(&mut self, metadata: &mut Option<SharedInformer<DynamicObject>>) -> bool;
    fn spawn(self: Box<Self>, tasks: &mut JoinSet<()>);
}

impl<K> Registered for SharedInformer<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    fn key(&self) -> &WatchKey {
        &self.key
    }

    fn as_any(&mut self) -> &mut dyn Any {
        self
    }

    fn attach_metadata(&mut self, metadata: &mut Option<SharedInformer<DynamicObject>>) -> bool {
        if self.key.type_id == TypeId::of::<DynamicObject>() {
            return false;
        }
        let Some(target) = metadata.take() else {
            return false;
        };
        let dyntype = self.dyntype.clone();
        let types = TypeMeta {
            api_version: K::api_version(&dyntype).to_string(),
            kind: K::kind(&dyntype).to_string(),
        };
        let mut fanout = target.fanout;
        let as_metadata = move |obj: &K| DynamicObject {
            types: Some(types.clone()),
            metadata: obj.meta().clone(),
            data: serde_json::Value::Object(Default::default()),
        };
        self.mirrors.push(Box::new(move |event: &Event<K>| {
            let event = match event {
                Event::Apply(obj) => Event::Apply(as_metadata(obj)),
                Event::Delete(obj) => Event::Delete(as_metadata(obj)),
                Event::InitApply(obj) => Event::InitApply(as_metadata(obj)),
                Event::Init => Event::Init,
                Event::InitDone => Event::InitDone,
            };
            fanout.apply(&event);
        }));
        true
    }

    fn spawn(self: Box<Self>, tasks: &mut JoinSet<()>) {
        tasks.spawn(self.run());
    }
}

/// The registry of a process's informers, keyed by resource (and namespace).
pub struct SharedInformers {
    client: kube::Client,
    registered: Vec<Box<dyn Registered>>,
    metadata: Vec<SharedInformer<DynamicObject>>,
}

impl SharedInformers {
    pub fn new(client: kube::Client) -> SharedInformers {
        SharedInformers {
            client,
            registered: Vec::new(),
            metadata: Vec::new(),
        }
    }

    /// The informer of every `K` in the cluster.
    pub fn all<K>(&mut self) -> &mut SharedInformer<K>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    {
        let api = Api::all(self.client.clone());
        self.typed(api, (), None)
    }

    /// The informer of the `K`s in one namespace.
    pub fn namespaced<K>(&mut self, namespace: &str) -> &mut SharedInformer<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Debug
            + Send
            + Sync
            + 'static,
    {
        let api = Api::namespaced(self.client.clone(), namespace);
        self.typed(api, (), Some(namespace))
    }

    fn typed<K>(
        &mut self,
        api: Api<K>,
        dyntype: K::DynamicType,
        namespace: Option<&str>,
    ) -> &mut SharedInformer<K>
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        K::DynamicType: Eq + Hash + Clone + Send + Sync,
    {
        let key = WatchKey::of::<K>(&dyntype, namespace);
        let index = match self.registered.iter().position(|r| r.key() == &key) {
            Some(index) => index,
            None => {
                self.registered.push(Box::new(SharedInformer {
                    api,
                    key,
                    fanout: Fanout::new(dyntype.clone()),
                    mirrors: Vec::new(),
                    dyntype,
                }));
                self.registered.len() - 1
            }
        };
        match self.registered[index]
            .as_any()
            .downcast_mut::<SharedInformer<K>>()
        {
            Some(informer) => informer,
            // The key holds the TypeId, so the entry found is a SharedInformer<K>.
            None => unreachable!("informer registered under another type's key"),
        }
    }

    /// A metadata-only informer of `resource` in all namespaces (objects carry metadata
    /// and type, no spec or status). It shares the watch of a typed informer of the same
    /// resource when one is registered by the time of [`SharedInformers::spawn`].
    pub fn metadata(&mut self, resource: &ApiResource) -> &mut SharedInformer<DynamicObject> {
        let key = WatchKey::of::<DynamicObject>(resource, None);
        let index = match self.metadata.iter().position(|m| m.key == key) {
            Some(index) => index,
            None => {
                self.metadata.push(SharedInformer {
                    api: Api::all_with(self.client.clone(), resource),
                    key,
                    fanout: Fanout::new(resource.clone()),
                    mirrors: Vec::new(),
                    dyntype: resource.clone(),
                });
                self.metadata.len() - 1
            }
        };
        &mut self.metadata[index]
    }

    /// Joins metadata informers to typed informers of the same resource; what remains
    /// watches on its own.
    fn resolve(&mut self) {
        for metadata in std::mem::take(&mut self.metadata) {
            let key = metadata.key.clone();
            let mut pending = Some(metadata);
            for typed in &mut self.registered {
                if typed.key().same_resource(&key) && typed.attach_metadata(&mut pending) {
                    break;
                }
            }
            if let Some(own) = pending {
                self.registered.push(Box::new(own));
            }
        }
    }

    /// The watches [`SharedInformers::spawn`] would start, one per resource.
    pub fn watches(&mut self) -> Vec<WatchKey> {
        self.resolve();
        self.registered.iter().map(|r| r.key().clone()).collect()
    }

    /// Starts one watch per registered resource on `tasks`.
    pub fn spawn(mut self, tasks: &mut JoinSet<()>) {
        self.resolve();
        for informer in self.registered {
            informer.spawn(tasks);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::{ConfigMap, Pod};

    fn unreachable_client() -> kube::Client {
        // Nothing is contacted: these tests only register, they never spawn.
        let uri = "http://127.0.0.1:9".parse().unwrap();
        kube::Client::try_from(kube::Config::new(uri)).unwrap()
    }

    fn resource_of<K: Resource<DynamicType = ()>>() -> ApiResource {
        ApiResource::erase::<K>(&())
    }

    #[tokio::test]
    async fn one_watch_per_resource_however_many_consumers() {
        let mut informers = SharedInformers::new(unreachable_client());
        informers.all::<Pod>().on_change(|_| {});
        let first = informers.all::<Pod>().store();
        informers.all::<Pod>().on_change(|_| {});
        let second = informers.all::<Pod>().store();
        assert_eq!(informers.all::<Pod>().fanout.handlers.len(), 2);
        // Both consumers read one cache: what the one informer applies, both see.
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns"}
        }))
        .unwrap();
        let informer = informers.all::<Pod>();
        for event in [Event::Init, Event::InitApply(pod), Event::InitDone] {
            informer.fanout.apply(&event);
        }
        assert_eq!((first.len(), second.len()), (1, 1));
        informers.namespaced::<Lease>("kube-node-lease");
        informers.all::<Lease>();
        let watches: Vec<String> = informers.watches().iter().map(|w| w.to_string()).collect();
        assert_eq!(
            watches,
            [
                "v1/pods",
                "coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                "coordination.k8s.io/v1/leases"
            ]
        );
    }

    #[tokio::test]
    async fn metadata_consumers_ride_on_a_typed_watch_of_the_same_resource() {
        let mut informers = SharedInformers::new(unreachable_client());
        informers.all::<Pod>();
        informers.metadata(&resource_of::<Pod>());
        informers.metadata(&resource_of::<Pod>());
        informers.metadata(&resource_of::<ConfigMap>());
        // A namespaced typed informer sees less than a metadata consumer needs.
        informers.namespaced::<Lease>("kube-node-lease");
        informers.metadata(&resource_of::<Lease>());
        let watches: Vec<String> = informers.watches().iter().map(|w| w.to_string()).collect();
        assert_eq!(
            watches,
            [
                "v1/pods",
                "coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                "v1/configmaps",
                "coordination.k8s.io/v1/leases"
            ]
        );
    }

    #[tokio::test]
    async fn a_metadata_view_keeps_metadata_and_type_only() {
        let (store, mut metadata_fanout) = {
            let fanout = Fanout::<DynamicObject>::new(resource_of::<Pod>());
            (fanout.store.clone(), Some(fanout))
        };
        let mut typed = SharedInformer::<Pod> {
            api: Api::all(unreachable_client()),
            key: WatchKey::of::<Pod>(&(), None),
            dyntype: (),
            fanout: Fanout::new(()),
            mirrors: Vec::new(),
        };
        let mut metadata = metadata_fanout.take().map(|fanout| SharedInformer {
            api: Api::all_with(unreachable_client(), &resource_of::<Pod>()),
            key: WatchKey::of::<DynamicObject>(&resource_of::<Pod>(), None),
            dyntype: resource_of::<Pod>(),
            fanout,
            mirrors: Vec::new(),
        });
        assert!(typed.attach_metadata(&mut metadata));
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1",
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                              "name": "rs", "uid": "u0"}]},
            "spec": {"containers": [{"name": "c", "image": "i"}]}
        }))
        .unwrap();
        let events = [Event::Init, Event::InitApply(pod.clone()), Event::InitDone];
        for event in &events {
            typed.mirrors.iter_mut().for_each(|m| m(event));
        }
        let cached = store
            .get(
                &kube::runtime::reflector::ObjectRef::new_with("p", resource_of::<Pod>())
                    .within("ns"),
            )
            .unwrap();
        assert_eq!(cached.metadata.uid.as_deref(), Some("u1"));
        assert_eq!(
            cached.metadata.owner_references.as_ref().unwrap()[0].uid,
            "u0"
        );
        assert_eq!(cached.types.as_ref().unwrap().kind, "Pod");
        assert_eq!(cached.data, serde_json::json!({}));
        typed
            .mirrors
            .iter_mut()
            .for_each(|m| m(&Event::Delete(pod.clone())));
        assert!(store.is_empty());
    }

    #[tokio::test]
    async fn every_waiter_wakes_when_the_first_list_is_in() {
        let mut informers = SharedInformers::new(unreachable_client());
        let waiters: Vec<_> = (0..3)
            .map(|_| tokio::spawn(informers.all::<ConfigMap>().synced().wait()))
            .collect();
        let informer = informers.all::<ConfigMap>();
        assert!(!informer.synced().is_synced());
        informer.fanout.apply(&Event::Init);
        informer.fanout.apply(&Event::InitDone);
        for waiter in waiters {
            tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
                .await
                .expect("a waiter was not woken")
                .unwrap();
        }
    }
}
