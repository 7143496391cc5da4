//! Changes as the cache keeps and broadcasts them, and the filter through which a list or a
//! watcher sees them.

use std::sync::Arc;

use rkube_api::registry::ResourceInfo;
use rkube_api::selectors::{FieldSelector, LabelSelector};
use rkube_store::Revision;

use super::CachedObject;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as stored in history and broadcast to watchers.
#[derive(Debug)]
pub struct CacheEvent {
    pub revision: Revision,
    pub resource: &'static ResourceInfo,
    /// The object after the change; for deletions, the last state with the deletion's
    /// resourceVersion.
    pub object: Arc<CachedObject>,
    pub prev: Option<Arc<CachedObject>>,
    pub deleted: bool,
}

#[derive(Clone, Debug)]
pub enum Broadcast {
    Event(Arc<CacheEvent>),
    /// The cache was rebuilt; every watcher must end its stream.
    Reset,
}

/// Which objects a list or watch wants.
#[derive(Clone, Debug)]
pub struct Filter {
    pub resource: &'static ResourceInfo,
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Filter {
    pub fn matches(&self, obj: &CachedObject) -> bool {
        if !std::ptr::eq(obj.resource, self.resource) {
            return false;
        }
        if let Some(ns) = &self.namespace {
            if &obj.namespace != ns {
                return false;
            }
        }
        self.labels.matches(obj.labels.as_ref()) && self.fields.matches(&obj.fields)
    }

    /// How a change looks through this filter: an object moving out of the selection is a
    /// deletion for this watcher, one moving in is an addition.
    pub fn classify<'a>(&self, ev: &'a CacheEvent) -> Option<(EventType, &'a Arc<CachedObject>)> {
        if !std::ptr::eq(ev.resource, self.resource) {
            return None;
        }
        let was = ev.prev.as_ref().is_some_and(|p| self.matches(p));
        if ev.deleted {
            return was.then_some((EventType::Deleted, &ev.object));
        }
        let is = self.matches(&ev.object);
        match (was, is) {
            (false, true) => Some((EventType::Added, &ev.object)),
            (true, true) => Some((EventType::Modified, &ev.object)),
            (true, false) => Some((EventType::Deleted, &ev.object)),
            (false, false) => None,
        }
    }
}

/// What a new watcher gets before live events.
pub enum WatchItem {
    /// A synthetic ADDED for an object that existed when the watch started.
    Existing(Arc<CachedObject>),
    /// A change from history.
    Event(Arc<CacheEvent>),
}
