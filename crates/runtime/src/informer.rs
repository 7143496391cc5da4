//! Informers: a watch feeding a reflector cache, and a callback per change so controllers
//! can enqueue keys. The callback runs after the cache has the change, so a reconcile
//! triggered by it always sees at least that state.

use std::fmt::Debug;
use std::hash::Hash;

use futures::StreamExt;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::Store;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::task::JoinSet;

/// What happened to an object.
#[derive(Debug)]
pub enum Change<'a, K> {
    /// Added or modified, or (after a re-list) present.
    Applied(&'a K),
    /// Deleted; the last state the watch saw.
    Deleted(&'a K),
}

impl<'a, K> Change<'a, K> {
    pub fn object(&self) -> &'a K {
        match self {
            Change::Applied(o) | Change::Deleted(o) => o,
        }
    }
}

/// Starts a watch of `api` on `tasks` and returns its cache. `on_change` runs for every
/// change; after each (re-)list it runs for every cached object, which doubles as a resync.
pub fn spawn_informer<K, F>(
    tasks: &mut JoinSet<()>,
    api: Api<K>,
    config: watcher::Config,
    dyntype: K::DynamicType,
    mut on_change: F,
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
    F: FnMut(Change<'_, K>) + Send + 'static,
{
    let kind = K::kind(&dyntype).to_string();
    let mut writer = Writer::new(dyntype);
    let reader = writer.as_reader();
    let cache = reader.clone();
    tasks.spawn(async move {
        let mut events = std::pin::pin!(watcher::watcher(api, config).default_backoff());
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(event) => event,
                Err(e) => {
                    tracing::debug!(error = %e, kind, "watch failed; retrying with backoff");
                    continue;
                }
            };
            writer.apply_watcher_event(&event);
            match &event {
                Event::Apply(obj) => on_change(Change::Applied(obj)),
                Event::Delete(obj) => on_change(Change::Deleted(obj)),
                Event::InitDone => {
                    for obj in cache.state() {
                        on_change(Change::Applied(&obj));
                    }
                }
                Event::Init | Event::InitApply(_) => {}
            }
        }
    });
    reader
}
