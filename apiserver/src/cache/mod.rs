//! The watch cache: one storage watch on `/registry/` feeds an in-memory copy of every object
//! plus a bounded history of recent changes. Lists and watches are served from here, so any
//! number of clients cost one storage watch; only writes and single-object reads go to storage.
//!
//! Invariants:
//! - `State::revision` only moves forward, and every event in `history` has a revision in
//!   `(history_floor, revision]`, in order.
//! - A new watcher copies history and subscribes to the live broadcast under one lock, so it
//!   sees every event after its starting revision exactly once.
//! - When the storage watch cannot resume (history compacted away), the cache relists, raises
//!   `history_floor` and tells every watcher to stop; clients then get a clean 410 or relist.
//! - At start the cache lists at an older revision storage still has and replays the changes
//!   since into its history before serving, so that watchers of a previous API server process
//!   resume from their last resourceVersion without a gap (instead of a 410).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use parking_lot::RwLock;
use rkube_api::registry::{ResourceInfo, REGISTRY};
use rkube_store::{EventKind, Revision, Store, StoreError};
use tokio::sync::{broadcast, watch};

mod event;
mod object;

pub use event::{Broadcast, CacheEvent, EventType, Filter, WatchItem};
pub use object::CachedObject;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The requested revision is older than the history kept.
    #[error("too old resource version: {requested} ({oldest})")]
    TooOld {
        requested: Revision,
        oldest: Revision,
    },
    /// The cache did not reach the requested revision in time.
    #[error("Too large resource version: {requested}, current: {current}")]
    TooNew {
        requested: Revision,
        current: Revision,
    },
    /// The cache has not finished its initial list.
    #[error("the watch cache is not ready yet")]
    NotReady,
}

struct State {
    /// Serving: the initial list is loaded and caught up with storage as of its start.
    ready: bool,
    /// The feeder must (re)list: at start, and when storage history was compacted away.
    relist: bool,
    /// After a (re)list at an older revision, the storage revision to replay up to before
    /// serving.
    catch_up_to: Revision,
    revision: Revision,
    objects: HashMap<&'static str, BTreeMap<String, Arc<CachedObject>>>,
    history: VecDeque<Arc<CacheEvent>>,
    /// Watches may resume from any revision >= this.
    history_floor: Revision,
}

pub struct WatchCache {
    state: RwLock<State>,
    history_capacity: usize,
    tx: broadcast::Sender<Broadcast>,
    revision_tx: watch::Sender<Revision>,
    feeder: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

const ROOT_PREFIX: &str = "/registry/";
/// While replaying history after a list at an older revision, this long without an event
/// means the revisions left were writes outside the watched prefix.
const CATCH_UP_IDLE: Duration = Duration::from_secs(1);

impl WatchCache {
    /// Creates the cache and starts feeding it from `store` until `shutdown` turns true.
    pub fn start(
        store: Arc<dyn Store>,
        history_capacity: usize,
        mut shutdown: watch::Receiver<bool>,
    ) -> Arc<WatchCache> {
        let (tx, _) = broadcast::channel(history_capacity.max(1024));
        let (revision_tx, _) = watch::channel(0);
        let cache = Arc::new(WatchCache {
            state: RwLock::new(State {
                ready: false,
                relist: true,
                catch_up_to: 0,
                revision: 0,
                objects: HashMap::new(),
                history: VecDeque::new(),
                history_floor: 0,
            }),
            history_capacity: history_capacity.max(1),
            tx,
            revision_tx,
            feeder: parking_lot::Mutex::new(None),
        });
        let feeder = cache.clone();
        let handle = tokio::spawn(async move {
            tokio::select! {
                _ = feeder.feed(store) => {}
                _ = crate::stopped(&mut shutdown) => {}
            }
        });
        *cache.feeder.lock() = Some(handle);
        cache
    }

    /// Waits for the feeder to finish after shutdown, so that it no longer holds the store
    /// (the embedded store keeps its directory locked until dropped).
    pub async fn join_feeder(&self) {
        let handle = self.feeder.lock().take();
        if let Some(h) = handle {
            let _ = h.await;
        }
    }

    pub fn is_ready(&self) -> bool {
        self.state.read().ready
    }

    pub fn revision(&self) -> Revision {
        self.state.read().revision
    }

    /// Waits until the cache has applied `revision` (or is at least ready, for `None`).
    pub async fn wait_for(
        &self,
        revision: Option<Revision>,
        timeout: Duration,
    ) -> Result<Revision, CacheError> {
        let mut rx = self.revision_tx.subscribe();
        let want = revision.unwrap_or(0);
        let waited = tokio::time::timeout(timeout, async {
            loop {
                {
                    let st = self.state.read();
                    if st.ready && st.revision >= want {
                        return st.revision;
                    }
                }
                if rx.changed().await.is_err() {
                    // The feeder is gone (shutdown); report whatever we have.
                    return self.state.read().revision;
                }
            }
        })
        .await;
        match waited {
            Ok(rev) if rev >= want && self.is_ready() => Ok(rev),
            Ok(_) | Err(_) => {
                let st = self.state.read();
                if !st.ready {
                    Err(CacheError::NotReady)
                } else {
                    Err(CacheError::TooNew {
                        requested: want,
                        current: st.revision,
                    })
                }
            }
        }
    }

    /// The matching objects, sorted by key, and the revision they are consistent with.
    pub fn list(&self, filter: &Filter) -> Result<(Vec<Arc<CachedObject>>, Revision), CacheError> {
        let st = self.state.read();
        if !st.ready {
            return Err(CacheError::NotReady);
        }
        let items = Self::matching(&st, filter);
        Ok((items, st.revision))
    }

    fn matching(st: &State, filter: &Filter) -> Vec<Arc<CachedObject>> {
        let Some(objects) = st.objects.get(filter.resource.plural) else {
            return Vec::new();
        };
        let matches = |o: &&Arc<CachedObject>| filter.matches(o);
        match &filter.namespace {
            Some(ns) if filter.resource.namespaced => {
                let prefix = filter.resource.namespace_prefix(ns);
                objects
                    .range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .map(|(_, v)| v)
                    .filter(matches)
                    .cloned()
                    .collect()
            }
            _ => objects.values().filter(matches).cloned().collect(),
        }
    }

    /// Looks up one object by storage key.
    pub fn get(&self, resource: &ResourceInfo, key: &str) -> Option<Arc<CachedObject>> {
        self.state
            .read()
            .objects
            .get(resource.plural)?
            .get(key)
            .cloned()
    }

    /// Every object of `resource` (for allocators and admission checks).
    pub fn all(&self, resource: &ResourceInfo) -> Vec<Arc<CachedObject>> {
        self.state
            .read()
            .objects
            .get(resource.plural)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Starts a watch. `after = None` sends every current object as a synthetic ADDED and
    /// then changes; `after = Some(rv)` sends changes after `rv` from history, then live.
    pub fn watch(
        &self,
        filter: &Filter,
        after: Option<Revision>,
    ) -> Result<(Vec<WatchItem>, Revision, broadcast::Receiver<Broadcast>), CacheError> {
        let st = self.state.read();
        if !st.ready {
            return Err(CacheError::NotReady);
        }
        let rx = self.tx.subscribe();
        let items = match after {
            None => Self::matching(&st, filter)
                .into_iter()
                .map(WatchItem::Existing)
                .collect(),
            Some(rv) => {
                if rv < st.history_floor {
                    return Err(CacheError::TooOld {
                        requested: rv,
                        oldest: st.history_floor,
                    });
                }
                if rv > st.revision {
                    return Err(CacheError::TooNew {
                        requested: rv,
                        current: st.revision,
                    });
                }
                // History is ordered; skip to the first event after rv.
                let start = st.history.partition_point(|e| e.revision <= rv);
                st.history
                    .range(start..)
                    .filter(|e| filter.classify(e).is_some())
                    .cloned()
                    .map(WatchItem::Event)
                    .collect()
            }
        };
        Ok((items, st.revision, rx))
    }

    async fn feed(&self, store: Arc<dyn Store>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            if self.state.read().relist {
                match self.initial_list(store.as_ref()).await {
                    Ok((list, catch_up_to)) => {
                        self.reset(list.kvs, list.revision, catch_up_to);
                        backoff = Duration::from_millis(100);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "watch cache: initial list failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                }
            }
            let from = self.revision();
            match store.watch(ROOT_PREFIX, from).await {
                Ok(mut stream) => {
                    loop {
                        let item = if self.is_ready() {
                            stream.next().await
                        } else {
                            match tokio::time::timeout(CATCH_UP_IDLE, stream.next()).await {
                                Ok(item) => item,
                                Err(_) => {
                                    // The revisions left are writes outside /registry/.
                                    self.finish_catch_up();
                                    continue;
                                }
                            }
                        };
                        let Some(item) = item else { break };
                        match item {
                            Ok(ev) => {
                                self.apply(ev);
                                backoff = Duration::from_millis(100);
                            }
                            Err(StoreError::Compacted { .. }) => {
                                tracing::warn!(
                                    "watch cache: history compacted under us; relisting"
                                );
                                self.must_relist();
                                break;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, revision = from, "watch cache: storage watch failed; resuming");
                                break;
                            }
                        }
                    }
                }
                Err(StoreError::Compacted { .. }) => {
                    tracing::warn!("watch cache: cannot resume, history compacted; relisting");
                    self.must_relist();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "watch cache: cannot watch storage; retrying");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Lists at an older revision when storage still has it, so that replaying the changes
    /// since fills the history: a client that watched the previous API server process can
    /// then resume from its last resourceVersion instead of getting 410 and relisting.
    /// Returns the list and the revision to catch up to before serving.
    async fn initial_list(
        &self,
        store: &dyn Store,
    ) -> Result<(rkube_store::ListResult, Revision), StoreError> {
        let current = store.current_revision().await?;
        let span = Revision::try_from(self.history_capacity).unwrap_or(Revision::MAX);
        let from = current.saturating_sub(span).max(1);
        // Only at start: a relist after compaction must not move the revision backwards.
        if from < current && self.revision() == 0 {
            match store.list(ROOT_PREFIX, Some(from)).await {
                Ok(list) => return Ok((list, current)),
                Err(StoreError::Compacted { .. } | StoreError::FutureRevision { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let list = store.list(ROOT_PREFIX, None).await?;
        let revision = list.revision;
        Ok((list, revision))
    }

    fn must_relist(&self) {
        let mut st = self.state.write();
        st.ready = false;
        st.relist = true;
    }

    fn finish_catch_up(&self) {
        let mut st = self.state.write();
        if !st.ready && !st.relist {
            st.ready = true;
            let revision = st.revision;
            drop(st);
            self.revision_tx.send_replace(revision);
        }
    }

    fn reset(&self, kvs: Vec<rkube_store::KeyValue>, revision: Revision, catch_up_to: Revision) {
        let mut objects: HashMap<&'static str, BTreeMap<String, Arc<CachedObject>>> =
            HashMap::new();
        for kv in kvs {
            let Some(resource) = resource_of_key(&kv.key) else {
                continue;
            };
            match CachedObject::from_stored(resource, kv.key.clone(), kv.value, kv.mod_revision) {
                Ok(obj) => {
                    objects
                        .entry(resource.plural)
                        .or_default()
                        .insert(kv.key, Arc::new(obj));
                }
                Err(e) => {
                    tracing::error!(key = %kv.key, error = %e, "watch cache: undecodable object skipped")
                }
            }
        }
        let mut st = self.state.write();
        st.objects = objects;
        st.history.clear();
        st.history_floor = revision;
        st.revision = revision;
        st.relist = false;
        st.catch_up_to = catch_up_to;
        st.ready = revision >= catch_up_to;
        // Existing watchers may have missed changes; they must start over.
        let _ = self.tx.send(Broadcast::Reset);
        drop(st);
        self.revision_tx.send_replace(revision);
    }

    fn apply(&self, ev: rkube_store::WatchEvent) {
        let revision = ev.revision();
        let resource = resource_of_key(&ev.kv.key);
        // Decode outside the lock: readers should never wait on JSON parsing.
        let decoded = match (resource, ev.kind) {
            (Some(resource), EventKind::Put) => Some(
                CachedObject::from_stored(
                    resource,
                    ev.kv.key.clone(),
                    ev.kv.value.clone(),
                    revision,
                )
                .map(Arc::new),
            ),
            _ => None,
        };
        let mut st = self.state.write();
        if revision <= st.revision {
            return;
        }
        st.revision = revision;
        if !st.ready && !st.relist && revision >= st.catch_up_to {
            st.ready = true;
        }
        if let Some(resource) = resource {
            let map = st.objects.entry(resource.plural).or_default();
            let event = match (ev.kind, decoded) {
                (EventKind::Put, Some(Ok(obj))) => {
                    let prev = map.insert(ev.kv.key, obj.clone());
                    Some(CacheEvent {
                        revision,
                        resource,
                        object: obj,
                        prev,
                        deleted: false,
                    })
                }
                (EventKind::Put, Some(Err(error))) => {
                    // No event can describe this change, and keeping the old copy would serve
                    // a version storage no longer has. Treat the object as absent, as the
                    // initial list does, and make every watcher start over: resuming from
                    // before this revision is refused (410), so clients relist.
                    let dropped = map.remove(&ev.kv.key).is_some();
                    tracing::error!(
                        key = %ev.kv.key,
                        revision,
                        %error,
                        dropped_cached_copy = dropped,
                        "watch cache: stored object cannot be decoded; it is left out of lists and watches, and every watcher must relist"
                    );
                    st.history.clear();
                    st.history_floor = revision;
                    let _ = self.tx.send(Broadcast::Reset);
                    None
                }
                (EventKind::Delete, _) => map.remove(&ev.kv.key).map(|prev| {
                    // Upstream's DELETED carries the last state stamped with the deletion revision.
                    let object = Arc::new(prev.at_revision(revision));
                    CacheEvent {
                        revision,
                        resource,
                        object,
                        prev: Some(prev),
                        deleted: true,
                    }
                }),
                (EventKind::Put, None) => None,
            };
            if let Some(event) = event {
                let event = Arc::new(event);
                st.history.push_back(event.clone());
                while st.history.len() > self.history_capacity {
                    if let Some(old) = st.history.pop_front() {
                        st.history_floor = old.revision;
                    }
                }
                let _ = self.tx.send(Broadcast::Event(event));
            }
        }
        drop(st);
        self.revision_tx.send_replace(revision);
    }

    /// The revision a bookmark for the watcher reading `rx` may carry: the cache's revision
    /// once that watcher has taken every broadcast (each change up to it was sent or
    /// filtered out), `None` while changes are still queued for it. A bookmark past a
    /// queued change would let a client resuming from it skip that change.
    pub fn bookmark_revision(&self, rx: &broadcast::Receiver<Broadcast>) -> Option<Revision> {
        // Broadcasts are sent under the write lock together with the revision update, so
        // under the read lock the queue and the revision agree.
        let st = self.state.read();
        rx.is_empty().then_some(st.revision)
    }
}

/// `/registry/<plural>/...` -> the resource.
pub fn resource_of_key(key: &str) -> Option<&'static ResourceInfo> {
    let plural = key.strip_prefix(ROOT_PREFIX)?.split('/').next()?;
    REGISTRY.iter().find(|r| r.plural == plural)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rkube_api::selectors::{FieldSelector, LabelSelector};

    const CM_KEY: &str = "/registry/configmaps/ns/x";

    /// A ready cache over an empty store that nobody writes to, so the test alone feeds it
    /// (revisions 2 and up) through `apply`.
    async fn idle_cache() -> (Arc<WatchCache>, tempfile::TempDir, watch::Sender<bool>) {
        let dir = tempfile::tempdir().unwrap();
        let store = rkube_store::embedded::EmbeddedStore::open(dir.path()).unwrap();
        let (stop, stopped) = watch::channel(false);
        let cache = WatchCache::start(Arc::new(store), 100, stopped);
        cache.wait_for(None, Duration::from_secs(20)).await.unwrap();
        (cache, dir, stop)
    }

    fn put(revision: Revision, value: &str) -> rkube_store::WatchEvent {
        rkube_store::WatchEvent {
            kind: EventKind::Put,
            kv: rkube_store::KeyValue {
                key: CM_KEY.into(),
                value: Bytes::from(value.to_string()),
                create_revision: 2,
                mod_revision: revision,
            },
            prev: None,
        }
    }

    fn configmaps() -> Filter {
        Filter {
            resource: rkube_api::registry::find("", "v1", "configmaps").unwrap(),
            namespace: None,
            labels: LabelSelector::default(),
            fields: FieldSelector::default(),
        }
    }

    const CM: &str = r#"{"kind":"ConfigMap","metadata":{"name":"x","namespace":"ns"}}"#;

    #[tokio::test]
    async fn a_new_cache_serves_watches_resuming_from_before_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(rkube_store::embedded::EmbeddedStore::open(dir.path()).unwrap());
        let mut kv = store.create(CM_KEY, Bytes::from(CM)).await.unwrap();
        for _ in 0..4 {
            kv = store
                .update(CM_KEY, Bytes::from(CM), kv.mod_revision)
                .await
                .unwrap();
        }
        assert_eq!(kv.mod_revision, 6);
        // Like an API server restarted after a client last saw revision 3.
        let (_stop, stopped) = watch::channel(false);
        let cache = WatchCache::start(store, 100, stopped);
        assert_eq!(
            cache.wait_for(None, Duration::from_secs(20)).await.unwrap(),
            6,
            "ready only once caught up with storage"
        );
        let (items, _, _) = cache.watch(&configmaps(), Some(3)).unwrap();
        let revisions: Vec<Revision> = items
            .iter()
            .map(|item| match item {
                WatchItem::Event(e) => e.revision,
                WatchItem::Existing(_) => panic!("a resumed watch sends no synthetic ADDED"),
            })
            .collect();
        assert_eq!(revisions, [4, 5, 6]);
        assert_eq!(
            cache.get(configmaps().resource, CM_KEY).unwrap().revision,
            6
        );
    }

    #[tokio::test]
    async fn bookmarks_never_pass_an_event_still_queued_for_the_watcher() {
        let (cache, _dir, _stop) = idle_cache().await;
        let (_, start, mut rx) = cache.watch(&configmaps(), None).unwrap();
        assert_eq!(cache.bookmark_revision(&rx), Some(start));
        cache.apply(put(2, CM));
        cache.apply(put(3, CM));
        assert_eq!(cache.revision(), 3);
        // Revision 3 would tell a client resuming from the bookmark that it has seen both.
        assert_eq!(cache.bookmark_revision(&rx), None);
        assert!(matches!(rx.try_recv(), Ok(Broadcast::Event(e)) if e.revision == 2));
        assert_eq!(cache.bookmark_revision(&rx), None);
        assert!(matches!(rx.try_recv(), Ok(Broadcast::Event(e)) if e.revision == 3));
        assert_eq!(cache.bookmark_revision(&rx), Some(3));
    }

    #[tokio::test]
    async fn an_undecodable_update_ends_every_watch_and_drops_the_stale_copy() {
        let (cache, _dir, _stop) = idle_cache().await;
        let cm = configmaps();
        cache.apply(put(2, CM));
        let (_, _, mut rx) = cache.watch(&cm, Some(2)).unwrap();
        cache.apply(put(3, "{not json"));
        assert_eq!(cache.revision(), 3);
        // The watcher cannot be given this change, so it is told to start over...
        assert!(matches!(rx.try_recv(), Ok(Broadcast::Reset)));
        // ...and resuming from before it is refused, which makes clients relist.
        assert!(matches!(
            cache.watch(&cm, Some(2)),
            Err(CacheError::TooOld {
                requested: 2,
                oldest: 3
            })
        ));
        // The relist does not serve the version storage replaced.
        assert!(cache.get(cm.resource, CM_KEY).is_none());
        assert!(cache.list(&cm).unwrap().0.is_empty());
        // A later good version is an ADDED for watchers that relisted without it.
        let (_, _, mut rx) = cache.watch(&cm, Some(3)).unwrap();
        cache.apply(put(4, CM));
        match rx.try_recv() {
            Ok(Broadcast::Event(e)) => {
                assert_eq!(cm.classify(&e).map(|(t, _)| t), Some(EventType::Added));
            }
            other => panic!("expected an event, got {other:?}"),
        }
    }
}
