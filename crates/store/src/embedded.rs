//! The embedded backend: an in-memory MVCC index made durable by an append-only log.
//!
//! Reads are served from memory under a read lock. Every mutation (create, update, delete,
//! compact) goes to one writer thread, which takes all queued requests at once, checks them
//! against the in-memory state, appends their records to `wal`, issues a single fsync for the
//! whole group and only then applies them, publishes their events and answers the callers. A
//! caller therefore never observes a write that a crash could lose.
//!
//! Watches read the in-memory history (every event since the compaction point) and then a
//! broadcast of committed batches. The broadcast is sent and subscribed to under the state
//! lock, so the hand-over from history to live events has neither gaps nor duplicates. A
//! watcher more than [`EmbeddedOptions::watch_buffer`] batches behind gets
//! [`StoreError::Unavailable`] and its stream ends; it resumes by watching again from the
//! last revision it saw, which the history still covers.
//!
//! When the log is large and mostly dead (overwritten or compacted data), the writer writes
//! `snapshot` (temp file, fsync, rename) and empties the log, so restart time follows the
//! live data, not the write history.

mod recovery;
mod state;
mod wal;
mod writer;

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use parking_lot::RwLock;
use tokio::sync::{broadcast, oneshot};

use crate::{KeyValue, ListResult, Revision, Store, StoreError, WatchEvent, WatchStream};
use recovery::Recovered;
pub use recovery::RepairReport;
use state::{prefix_range, State};
use writer::{Reply, Request, Writer};

const WAL_FILE: &str = "wal";
const SNAPSHOT_FILE: &str = "snapshot";
const LOCK_FILE: &str = "LOCK";
const SNAPSHOT_TMP_FILE: &str = "snapshot.tmp";
const WAL_REPAIR_TMP_FILE: &str = "wal.repair";

/// Tuning knobs; the defaults suit a single-node control plane.
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// The log is replaced by a snapshot once it exceeds this size and is more than twice
    /// the size of the live data.
    pub snapshot_min_log_bytes: u64,
    /// Committed batches a watcher may fall behind before its stream is ended.
    pub watch_buffer: usize,
    /// Largest value a write may store; larger ones fail with [`StoreError::TooLarge`].
    /// Capped at what the log reader accepts, so nothing written is unreadable.
    pub max_value_bytes: usize,
    /// Salvage a log damaged in the middle (anything but a torn final write, which is always
    /// cut): keep the records before the damage, keep the damaged file as
    /// `wal.damaged-<unix seconds>`, and report what was dropped in
    /// [`EmbeddedStore::repair_report`]. Without it such a log stops the store from opening.
    pub repair: bool,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            snapshot_min_log_bytes: 64 << 20,
            watch_buffer: 1024,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            repair: false,
        }
    }
}

/// Far above the API server's object limit (etcd's 1.5 MiB request limit), far below the
/// log's 1 GiB record bound.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 64 << 20;

struct Shared {
    state: RwLock<State>,
    events: broadcast::Sender<Arc<[WatchEvent]>>,
}

/// The embedded, durable store. Open it with [`EmbeddedStore::open`].
pub struct EmbeddedStore {
    /// Held (with an exclusive lock) for the store's lifetime: two processes appending to
    /// one log would corrupt it.
    _lock: File,
    shared: Arc<Shared>,
    requests: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
    repair_report: Option<RepairReport>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`. Synchronous: it reads the snapshot and log
    /// and cuts off a torn final write; call it before serving, or via `spawn_blocking`.
    pub fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
        Self::open_with(dir, EmbeddedOptions::default())
    }

    pub fn open_with(dir: &Path, options: EmbeddedOptions) -> Result<EmbeddedStore, StoreError> {
        std::fs::create_dir_all(dir)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))?;
        if let Err(e) = lock.try_lock() {
            return Err(StoreError::Io(std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                format!(
                    "store directory {} is in use by another process ({e})",
                    dir.display()
                ),
            )));
        }
        let Recovered {
            state,
            wal,
            wal_len,
            repair_report,
        } = recovery::recover(dir, options.repair)?;

        let (events, _) = broadcast::channel(options.watch_buffer.max(1));
        let shared = Arc::new(Shared {
            state: RwLock::new(state),
            events,
        });
        let (tx, rx) = mpsc::channel();
        let writer = Writer::new(shared.clone(), dir.to_path_buf(), wal, wal_len, options);
        let handle = std::thread::Builder::new()
            .name("rkube-store-writer".into())
            .spawn(move || writer.run(rx))?;
        Ok(EmbeddedStore {
            _lock: lock,
            shared,
            requests: Some(tx),
            writer: Some(handle),
            repair_report,
        })
    }

    /// What opening with [`EmbeddedOptions::repair`] dropped; `None` when the log needed no
    /// repair.
    pub fn repair_report(&self) -> Option<&RepairReport> {
        self.repair_report.as_ref()
    }

    /// Writes a snapshot now and empties the log, whatever their sizes (e.g. before a
    /// backup or a planned shutdown). Normally the store decides this on its own.
    pub async fn snapshot(&self) -> Result<(), StoreError> {
        self.submit(|reply| Request::Snapshot { reply }).await
    }

    async fn submit<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        let sent = self
            .requests
            .as_ref()
            .is_some_and(|requests| requests.send(make(reply)).is_ok());
        if !sent {
            return Err(StoreError::Unavailable("store writer has stopped".into()));
        }
        answer
            .await
            .map_err(|_| StoreError::Unavailable("store writer has stopped".into()))?
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        // Closing the channel ends the writer after it has answered what is queued; joining
        // makes a reopen of the same directory see everything this instance wrote.
        self.requests.take();
        if let Some(handle) = self.writer.take() {
            let _ = handle.join();
        }
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn current_revision(&self) -> Result<Revision, StoreError> {
        Ok(self.shared.state.read().revision)
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Ok(self
            .shared
            .state
            .read()
            .latest(key)
            .and_then(|v| v.to_kv(key)))
    }

    async fn list(
        &self,
        prefix: &str,
        at_revision: Option<Revision>,
    ) -> Result<ListResult, StoreError> {
        let state = self.shared.state.read();
        // Like etcd, a revision of zero or below means "latest".
        let revision = match at_revision.filter(|r| *r > 0) {
            None => state.revision,
            Some(r) if r > state.revision => {
                return Err(StoreError::FutureRevision {
                    requested: r,
                    current: state.revision,
                })
            }
            Some(r) if r < state.compacted => {
                return Err(StoreError::Compacted {
                    requested: r,
                    compacted: state.compacted,
                })
            }
            Some(r) => r,
        };
        let kvs = prefix_range(&state.index, prefix)
            .filter_map(|(key, versions)| {
                State::visible_at(versions, revision).and_then(|v| v.to_kv(key))
            })
            .collect();
        Ok(ListResult { kvs, revision })
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue, StoreError> {
        let key = key.to_string();
        self.submit(|reply| Request::Create { key, value, reply })
            .await
    }

    async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected_mod_revision: Revision,
    ) -> Result<KeyValue, StoreError> {
        let key = key.to_string();
        self.submit(|reply| Request::Update {
            key,
            value,
            expected: expected_mod_revision,
            reply,
        })
        .await
    }

    async fn delete(
        &self,
        key: &str,
        expected_mod_revision: Option<Revision>,
    ) -> Result<(KeyValue, Revision), StoreError> {
        let key = key.to_string();
        self.submit(|reply| Request::Delete {
            key,
            expected: expected_mod_revision,
            reply,
        })
        .await
    }

    async fn watch(
        &self,
        prefix: &str,
        after_revision: Revision,
    ) -> Result<WatchStream, StoreError> {
        let (backlog, live) = {
            let state = self.shared.state.read();
            if after_revision.saturating_add(1) < state.compacted {
                return Err(StoreError::Compacted {
                    requested: after_revision + 1,
                    compacted: state.compacted,
                });
            }
            // Subscribing under the lock the writer publishes under: every event is either
            // in the history copied here or in the broadcast, never both, never neither.
            let live = self.shared.events.subscribe();
            let skip = state.history.front().map_or(0, |first| {
                usize::try_from(after_revision.saturating_add(1) - first.revision()).unwrap_or(0)
            });
            let backlog: Vec<WatchEvent> = state
                .history
                .iter()
                .skip(skip)
                .filter(|e| e.kv.key.starts_with(prefix))
                .cloned()
                .collect();
            (backlog, live)
        };
        let live = LiveEvents {
            receiver: live,
            prefix: prefix.to_string(),
            after_revision,
            ready: VecDeque::new(),
            finished: false,
        };
        let live = futures::stream::unfold(live, |mut live| async move {
            live.next().await.map(|item| (item, live))
        });
        Ok(futures::stream::iter(backlog.into_iter().map(Ok))
            .chain(live)
            .boxed())
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.submit(|reply| Request::Compact { revision, reply })
            .await
    }
}

struct LiveEvents {
    receiver: broadcast::Receiver<Arc<[WatchEvent]>>,
    prefix: String,
    after_revision: Revision,
    ready: VecDeque<WatchEvent>,
    finished: bool,
}

impl LiveEvents {
    async fn next(&mut self) -> Option<Result<WatchEvent, StoreError>> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(Ok(event));
            }
            if self.finished {
                return None;
            }
            match self.receiver.recv().await {
                Ok(batch) => self.ready.extend(
                    batch
                        .iter()
                        .filter(|e| {
                            e.revision() > self.after_revision && e.kv.key.starts_with(&self.prefix)
                        })
                        .cloned(),
                ),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    self.finished = true;
                    return Some(Err(StoreError::Unavailable(format!(
                        "watcher fell {missed} batches behind; watch again from the last revision seen"
                    ))));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}
