//! MVCC key-value storage used by the API server, and only by the API server.
//!
//! The model is etcd's: one global, monotonically increasing revision; every key remembers
//! the revision that created it and the revision that last modified it; writes are guarded by
//! the expected modification revision (compare-and-swap); watches deliver every change after a
//! revision together with the previous value; compaction forgets history, and reading or
//! watching below the compacted revision fails with [`StoreError::Compacted`].
//!
//! Two backends implement [`Store`]:
//! - [`embedded::EmbeddedStore`]: an on-disk log plus in-memory index, the default, so a
//!   single node needs no etcd;
//! - [`etcd::EtcdStore`]: etcd v3 through `etcd-client`.
//!
//! Both are checked by the same conformance suite (`tests/conformance.rs`).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod embedded;
pub mod etcd;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

/// A store revision. Revisions start at 1 for an empty store; 0 means "no revision".
pub type Revision = i64;

/// One version of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Bytes,
    /// Revision of the write that created this key (since its last deletion).
    pub create_revision: Revision,
    /// Revision of the write that produced this version.
    pub mod_revision: Revision,
}

/// The result of a list: the matching keys and the store revision the list was read at.
#[derive(Clone, Debug, Default)]
pub struct ListResult {
    pub kvs: Vec<KeyValue>,
    /// The revision the list is consistent with (the store's revision at read time, or the
    /// requested revision).
    pub revision: Revision,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change delivered by a watch.
#[derive(Clone, Debug)]
pub struct WatchEvent {
    pub kind: EventKind,
    /// For `Put`, the new version. For `Delete`, the key with an empty value and
    /// `mod_revision` set to the revision of the deletion.
    pub kv: KeyValue,
    /// The version before this change; `None` when the key did not exist before.
    pub prev: Option<KeyValue>,
}

impl WatchEvent {
    /// The revision at which this change happened.
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

pub type WatchStream = BoxStream<'static, Result<WatchEvent, StoreError>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `create` found the key already present.
    #[error("key {key:?} already exists")]
    AlreadyExists { key: String },
    /// The key does not exist (update or delete of a missing key).
    #[error("key {key:?} not found")]
    NotFound { key: String },
    /// A compare-and-swap failed: the key was modified since `expected`.
    #[error("key {key:?} was modified: expected revision {expected}, current {current:?}")]
    Conflict {
        key: String,
        expected: Revision,
        /// The current version, when the key still exists.
        current: Option<Box<KeyValue>>,
    },
    /// The requested revision has been compacted away.
    #[error("revision {requested} has been compacted (oldest available is {compacted})")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    /// The requested revision is newer than the store's current revision.
    #[error("revision {requested} is in the future (current is {current})")]
    FutureRevision {
        requested: Revision,
        current: Revision,
    },
    /// The backend cannot be reached or returned a transport-level error; retryable.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Local I/O failed (embedded backend).
    #[error("storage I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// Stored data could not be decoded; the store refuses to guess.
    #[error("storage corrupt: {0}")]
    Corrupt(String),
    /// A value larger than the backend stores; nothing was written.
    #[error("value for key {key:?} is {size} bytes, over the storage limit of {limit} bytes")]
    TooLarge {
        key: String,
        size: usize,
        limit: usize,
    },
}

/// An MVCC key-value store. All methods are safe to call concurrently.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The store's current revision (the revision of the last write; 1 when empty).
    async fn current_revision(&self) -> Result<Revision, StoreError>;

    /// The current version of `key`, if present.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// All keys starting with `prefix`, sorted by key. `at_revision` reads a past
    /// revision (fails with `Compacted` below the compaction point and `FutureRevision`
    /// above the current revision); `None` reads the latest.
    async fn list(
        &self,
        prefix: &str,
        at_revision: Option<Revision>,
    ) -> Result<ListResult, StoreError>;

    /// Creates `key`; fails with `AlreadyExists` if it is present.
    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue, StoreError>;

    /// Replaces `key` if its current `mod_revision` equals `expected_mod_revision`;
    /// otherwise `Conflict` (or `NotFound` if the key is gone).
    async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected_mod_revision: Revision,
    ) -> Result<KeyValue, StoreError>;

    /// Deletes `key`, guarded by `expected_mod_revision` when given. Returns the deleted
    /// version (its `mod_revision` is the revision it had, not the deletion's) and the
    /// revision of the deletion.
    async fn delete(
        &self,
        key: &str,
        expected_mod_revision: Option<Revision>,
    ) -> Result<(KeyValue, Revision), StoreError>;

    /// Every change to keys under `prefix` with revision strictly greater than
    /// `after_revision`, in revision order, with previous values. Fails (immediately or
    /// as the first stream item) with `Compacted` when `after_revision + 1` is compacted.
    /// The stream ends or yields `Unavailable` if the backend connection is lost; callers
    /// resume by watching again from the last revision they saw.
    async fn watch(
        &self,
        prefix: &str,
        after_revision: Revision,
    ) -> Result<WatchStream, StoreError>;

    /// Forgets history before `revision`; later reads and watches below it fail with
    /// `Compacted`. Compacting at or below the current compaction point is a no-op.
    async fn compact(&self, revision: Revision) -> Result<(), StoreError>;
}
