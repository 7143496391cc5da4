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

mod wal;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use parking_lot::RwLock;
use tokio::sync::{broadcast, oneshot};

use crate::{
    EventKind, KeyValue, ListResult, Revision, Store, StoreError, WatchEvent, WatchStream,
};
use wal::Record;

const WAL_FILE: &str = "wal";
const SNAPSHOT_FILE: &str = "snapshot";
const LOCK_FILE: &str = "LOCK";
const SNAPSHOT_TMP_FILE: &str = "snapshot.tmp";
const WAL_REPAIR_TMP_FILE: &str = "wal.repair";
/// Upper bound on requests committed by one fsync, so one group's latency stays bounded.
const MAX_GROUP: usize = 1024;

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

/// What a repair dropped; its `Display` is the message an operator reads.
#[derive(Clone, Debug)]
pub struct RepairReport {
    /// The damaged log, kept as it was.
    pub damaged_copy: PathBuf,
    pub damage_offset: usize,
    pub reason: String,
    /// Records kept (everything before the damage).
    pub kept_records: usize,
    pub dropped_bytes: usize,
    /// Intact records found after the damage and dropped with it.
    pub dropped_records: usize,
    pub dropped_revisions: Option<(Revision, Revision)>,
}

impl std::fmt::Display for RepairReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "store log repaired: kept {} records before byte {}; dropped {} bytes ({}) holding {} intact records",
            self.kept_records, self.damage_offset, self.dropped_bytes, self.reason, self.dropped_records
        )?;
        if let Some((lo, hi)) = self.dropped_revisions {
            write!(f, " (revisions {lo} to {hi})")?;
        }
        write!(
            f,
            "; the damaged log is kept at {}",
            self.damaged_copy.display()
        )
    }
}

/// One version of a key; `value: None` is a deletion (tombstone).
#[derive(Clone, Debug)]
struct Version {
    create_revision: Revision,
    mod_revision: Revision,
    value: Option<Bytes>,
}

impl Version {
    fn to_kv(&self, key: &str) -> Option<KeyValue> {
        self.value.as_ref().map(|value| KeyValue {
            key: key.to_string(),
            value: value.clone(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
        })
    }
}

struct State {
    /// Versions of each key in revision order, back to the compaction point.
    index: BTreeMap<String, Vec<Version>>,
    revision: Revision,
    compacted: Revision,
    /// One event per revision, contiguous, ending at `revision`.
    history: VecDeque<WatchEvent>,
}

impl State {
    fn new() -> Self {
        Self {
            index: BTreeMap::new(),
            // etcd reports revision 1 for a fresh cluster; the first write gets 2.
            revision: 1,
            compacted: 0,
            history: VecDeque::new(),
        }
    }

    fn latest(&self, key: &str) -> Option<&Version> {
        self.index
            .get(key)
            .and_then(|versions| versions.last())
            .filter(|v| v.value.is_some())
    }

    fn visible_at(versions: &[Version], revision: Revision) -> Option<&Version> {
        let idx = versions.partition_point(|v| v.mod_revision <= revision);
        idx.checked_sub(1)
            .map(|i| &versions[i])
            .filter(|v| v.value.is_some())
    }

    fn apply(&mut self, record: Record) -> Result<Option<WatchEvent>, StoreError> {
        match record {
            Record::Put {
                revision,
                create_revision,
                key,
                value,
            } => {
                self.expect_next(revision)?;
                let prev = self.latest(&key).and_then(|v| v.to_kv(&key));
                let version = Version {
                    create_revision,
                    mod_revision: revision,
                    value: Some(value.clone()),
                };
                let event = WatchEvent {
                    kind: EventKind::Put,
                    kv: KeyValue {
                        key: key.clone(),
                        value,
                        create_revision,
                        mod_revision: revision,
                    },
                    prev,
                };
                self.index
                    .entry(key)
                    .or_insert_with(|| Vec::with_capacity(1))
                    .push(version);
                Ok(Some(self.record_event(event)))
            }
            Record::Delete { revision, key } => {
                self.expect_next(revision)?;
                let prev = self
                    .latest(&key)
                    .and_then(|v| v.to_kv(&key))
                    .ok_or_else(|| {
                        StoreError::Corrupt(format!("delete of absent key {key:?} at {revision}"))
                    })?;
                let event = WatchEvent {
                    kind: EventKind::Delete,
                    kv: KeyValue {
                        key: key.clone(),
                        value: Bytes::new(),
                        // etcd reports deletions with create_revision 0.
                        create_revision: 0,
                        mod_revision: revision,
                    },
                    prev: Some(prev),
                };
                self.index.entry(key).or_default().push(Version {
                    create_revision: 0,
                    mod_revision: revision,
                    value: None,
                });
                Ok(Some(self.record_event(event)))
            }
            Record::Compact { revision } => {
                if revision > self.revision {
                    return Err(StoreError::Corrupt(format!(
                        "compaction at {revision} beyond revision {}",
                        self.revision
                    )));
                }
                self.compact(revision);
                Ok(None)
            }
            Record::SnapshotHeader { .. } | Record::BaseKv { .. } => Err(StoreError::Corrupt(
                "snapshot record outside a snapshot".into(),
            )),
        }
    }

    fn expect_next(&self, revision: Revision) -> Result<(), StoreError> {
        if revision == self.revision + 1 {
            Ok(())
        } else {
            Err(StoreError::Corrupt(format!(
                "record at revision {revision} follows revision {}",
                self.revision
            )))
        }
    }

    fn record_event(&mut self, event: WatchEvent) -> WatchEvent {
        self.revision = event.revision();
        self.history.push_back(event.clone());
        event
    }

    fn compact(&mut self, revision: Revision) {
        if revision <= self.compacted {
            return;
        }
        self.index.retain(|_, versions| {
            // Keep the version visible at `revision` and everything newer; a tombstone
            // visible at `revision` hides nothing anyone may still read.
            let visible = versions.partition_point(|v| v.mod_revision <= revision);
            let mut keep_from = visible.saturating_sub(1);
            if visible > 0 && versions[keep_from].value.is_none() {
                keep_from = visible;
            }
            versions.drain(..keep_from);
            !versions.is_empty()
        });
        while self
            .history
            .front()
            .is_some_and(|e| e.revision() < revision)
        {
            self.history.pop_front();
        }
        self.history.shrink_to_fit();
        self.compacted = revision;
    }

    /// Rough size of what a snapshot would hold, to decide whether rewriting pays off.
    fn live_bytes(&self) -> u64 {
        let base: usize = self
            .index
            .iter()
            .filter_map(|(k, vs)| {
                vs.last()
                    .map(|v| k.len() + v.value.as_ref().map_or(0, Bytes::len) + 32)
            })
            .sum();
        let history: usize = self
            .history
            .iter()
            .map(|e| e.kv.key.len() + e.kv.value.len() + 32)
            .sum();
        (base + history) as u64
    }

    /// The snapshot is the state just before the oldest retained event plus every retained
    /// event, so watches from the compaction point keep working after a restart.
    fn snapshot_records(&self) -> Vec<Record> {
        let base_revision = self
            .history
            .front()
            .map_or(self.revision, |e| e.revision() - 1);
        let mut records = vec![Record::SnapshotHeader {
            compacted: self.compacted,
            base_revision,
        }];
        // The key changed by the first retained event may have lost its older versions to
        // compaction; that event's `prev` is exactly its state at `base_revision`.
        let first = self.history.front();
        let first_key = first.map(|e| e.kv.key.as_str());
        if let Some(prev) = first.and_then(|e| e.prev.as_ref()) {
            records.push(Record::BaseKv {
                create_revision: prev.create_revision,
                mod_revision: prev.mod_revision,
                key: prev.key.clone(),
                value: prev.value.clone(),
            });
        }
        for (key, versions) in &self.index {
            if Some(key.as_str()) == first_key {
                continue;
            }
            if let Some(v) = Self::visible_at(versions, base_revision) {
                records.push(Record::BaseKv {
                    create_revision: v.create_revision,
                    mod_revision: v.mod_revision,
                    key: key.clone(),
                    value: v.value.clone().unwrap_or_default(),
                });
            }
        }
        for event in &self.history {
            records.push(match event.kind {
                EventKind::Put => Record::Put {
                    revision: event.kv.mod_revision,
                    create_revision: event.kv.create_revision,
                    key: event.kv.key.clone(),
                    value: event.kv.value.clone(),
                },
                EventKind::Delete => Record::Delete {
                    revision: event.kv.mod_revision,
                    key: event.kv.key.clone(),
                },
            });
        }
        records
    }

    fn load_snapshot(records: Vec<Record>) -> Result<State, StoreError> {
        let mut records = records.into_iter();
        let Some(Record::SnapshotHeader {
            compacted,
            base_revision,
        }) = records.next()
        else {
            return Err(StoreError::Corrupt("snapshot lacks its header".into()));
        };
        let mut state = State::new();
        state.revision = base_revision;
        state.compacted = compacted;
        for record in records {
            match record {
                Record::BaseKv {
                    create_revision,
                    mod_revision,
                    key,
                    value,
                } => {
                    if !state.history.is_empty() || mod_revision > base_revision {
                        return Err(StoreError::Corrupt("misplaced snapshot base record".into()));
                    }
                    state.index.insert(
                        key,
                        vec![Version {
                            create_revision,
                            mod_revision,
                            value: Some(value),
                        }],
                    );
                }
                other => {
                    state.apply(other)?;
                }
            }
        }
        Ok(state)
    }
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum Request {
    Create {
        key: String,
        value: Bytes,
        reply: Reply<KeyValue>,
    },
    Update {
        key: String,
        value: Bytes,
        expected: Revision,
        reply: Reply<KeyValue>,
    },
    Delete {
        key: String,
        expected: Option<Revision>,
        reply: Reply<(KeyValue, Revision)>,
    },
    Compact {
        revision: Revision,
        reply: Reply<()>,
    },
    Snapshot {
        reply: Reply<()>,
    },
}

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
        // Leftovers of a snapshot or repair interrupted before its rename.
        for leftover in [SNAPSHOT_TMP_FILE, WAL_REPAIR_TMP_FILE] {
            let tmp = dir.join(leftover);
            if tmp.exists() {
                std::fs::remove_file(&tmp)?;
            }
        }
        let snapshot_path = dir.join(SNAPSHOT_FILE);
        let mut state = if snapshot_path.exists() {
            let buf = std::fs::read(&snapshot_path)?;
            let parsed = wal::parse(&buf);
            // The snapshot was fsync'd before it was renamed into place: no torn tail allowed.
            if let Some(damage) = parsed.damage {
                return Err(StoreError::Corrupt(format!(
                    "store snapshot {} is damaged at byte {} ({}); restore the data directory from a backup",
                    snapshot_path.display(),
                    damage.offset,
                    damage.reason
                )));
            }
            State::load_snapshot(parsed.records).map_err(|e| in_file(&snapshot_path, e))?
        } else {
            State::new()
        };
        let snapshot_revision = state.revision;

        let wal_path = dir.join(WAL_FILE);
        let wal_existed = wal_path.exists();
        let buf = if wal_existed {
            std::fs::read(&wal_path)?
        } else {
            Vec::new()
        };
        let parsed = wal::parse(&buf);
        let mut repair_report = None;
        let mut cut_tail = false;
        if let Some(damage) = &parsed.damage {
            if damage.is_torn_tail() {
                tracing::warn!(
                    path = %wal_path.display(),
                    valid_bytes = parsed.valid_len,
                    cut_bytes = buf.len() - parsed.valid_len,
                    zero_filled = damage.all_zero,
                    reason = %damage.reason,
                    "cutting off a torn final write in the store log"
                );
                cut_tail = true;
            } else if options.repair {
                let report = salvage_log(dir, &wal_path, &buf, &parsed, damage)?;
                tracing::warn!("{report}");
                repair_report = Some(report);
            } else {
                return Err(StoreError::Corrupt(damaged_log_message(
                    &wal_path, &parsed, damage,
                )));
            }
        }
        let valid_len = parsed.valid_len;
        drop(buf);
        for record in parsed.records {
            let already_in_snapshot = match &record {
                Record::Put { revision, .. } | Record::Delete { revision, .. } => {
                    *revision <= snapshot_revision
                }
                Record::Compact { revision } => *revision <= state.compacted,
                _ => false,
            };
            if !already_in_snapshot {
                state.apply(record).map_err(|e| in_file(&wal_path, e))?;
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&wal_path)?;
        if cut_tail {
            file.set_len(valid_len as u64)?;
            file.sync_all()?;
        }
        if !wal_existed {
            sync_dir(dir)?;
        }

        let (events, _) = broadcast::channel(options.watch_buffer.max(1));
        let shared = Arc::new(Shared {
            state: RwLock::new(state),
            events,
        });
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            shared: shared.clone(),
            dir: dir.to_path_buf(),
            wal: file,
            wal_len: valid_len as u64,
            next_snapshot_check: options.snapshot_min_log_bytes,
            options,
            failed: None,
        };
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

fn in_file(path: &Path, error: StoreError) -> StoreError {
    match error {
        StoreError::Corrupt(message) => {
            StoreError::Corrupt(format!("{}: {message}", path.display()))
        }
        other => other,
    }
}

fn damaged_log_message(path: &Path, parsed: &wal::Parsed, damage: &wal::Damage) -> String {
    let revisions = damage
        .revisions_after
        .map(|(lo, hi)| format!(" (revisions {lo} to {hi})"))
        .unwrap_or_default();
    format!(
        "store log {} is damaged at byte {} ({}), and {} intact records{revisions} follow the damage; \
         refusing to open, since cutting the log there would drop acknowledged writes. Restore the \
         data directory from a backup, or start once with --embedded-repair to keep the {} records \
         before byte {} and set the damaged log aside",
        path.display(),
        damage.offset,
        damage.reason,
        damage.intact_after,
        parsed.records.len(),
        damage.offset,
    )
}

/// Replaces the log by its intact prefix, keeping the damaged original next to it. At every
/// instant `wal` is either the original or the complete prefix: a crash mid-repair loses
/// nothing.
fn salvage_log(
    dir: &Path,
    wal_path: &Path,
    buf: &[u8],
    parsed: &wal::Parsed,
    damage: &wal::Damage,
) -> Result<RepairReport, StoreError> {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut damaged_copy = dir.join(format!("{WAL_FILE}.damaged-{seconds}"));
    let mut n = 1;
    while damaged_copy.exists() {
        damaged_copy = dir.join(format!("{WAL_FILE}.damaged-{seconds}.{n}"));
        n += 1;
    }
    let tmp = dir.join(WAL_REPAIR_TMP_FILE);
    {
        let mut file = File::create(&tmp)?;
        file.write_all(&buf[..parsed.valid_len])?;
        file.sync_all()?;
    }
    std::fs::hard_link(wal_path, &damaged_copy)?;
    std::fs::rename(&tmp, wal_path)?;
    sync_dir(dir)?;
    Ok(RepairReport {
        damaged_copy,
        damage_offset: damage.offset,
        reason: damage.reason.clone(),
        kept_records: parsed.records.len(),
        dropped_bytes: buf.len() - parsed.valid_len,
        dropped_records: damage.intact_after,
        dropped_revisions: damage.revisions_after,
    })
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn io_error_copy(e: &std::io::Error) -> StoreError {
    StoreError::Io(std::io::Error::new(e.kind(), e.to_string()))
}

/// A request checked against the state, waiting for its records to be durable.
enum Planned {
    Create(Reply<KeyValue>, KeyValue),
    Update(Reply<KeyValue>, KeyValue),
    Delete(Reply<(KeyValue, Revision)>, KeyValue, Revision),
    Compact(Reply<()>),
    Rejected(Rejection),
}

enum Rejection {
    Kv(Reply<KeyValue>, StoreError),
    Delete(Reply<(KeyValue, Revision)>, StoreError),
    Compact(Reply<()>, StoreError),
}

impl Rejection {
    fn send(self) {
        match self {
            Rejection::Kv(r, e) => drop(r.send(Err(e))),
            Rejection::Delete(r, e) => drop(r.send(Err(e))),
            Rejection::Compact(r, e) => drop(r.send(Err(e))),
        }
    }
}

impl Planned {
    fn fail(self, error: &std::io::Error) {
        match self {
            Planned::Create(r, _) | Planned::Update(r, _) => {
                drop(r.send(Err(io_error_copy(error))))
            }
            Planned::Delete(r, _, _) => drop(r.send(Err(io_error_copy(error)))),
            Planned::Compact(r) => drop(r.send(Err(io_error_copy(error)))),
            Planned::Rejected(rejection) => rejection.send(),
        }
    }

    fn succeed(self) {
        match self {
            Planned::Create(r, kv) | Planned::Update(r, kv) => drop(r.send(Ok(kv))),
            Planned::Delete(r, prev, revision) => drop(r.send(Ok((prev, revision)))),
            Planned::Compact(r) => drop(r.send(Ok(()))),
            Planned::Rejected(rejection) => rejection.send(),
        }
    }
}

struct Writer {
    shared: Arc<Shared>,
    dir: PathBuf,
    wal: File,
    wal_len: u64,
    next_snapshot_check: u64,
    options: EmbeddedOptions,
    /// Set when a failed append could not be undone: appending more would bury garbage in
    /// the middle of the log, so every later write fails instead.
    failed: Option<std::io::Error>,
}

impl Writer {
    fn run(mut self, requests: mpsc::Receiver<Request>) {
        while let Ok(first) = requests.recv() {
            let mut group = Vec::new();
            let mut snapshot_replies = Vec::new();
            let mut next = Some(first);
            while let Some(request) = next {
                match request {
                    Request::Snapshot { reply } => snapshot_replies.push(reply),
                    other => group.push(other),
                }
                next = if group.len() < MAX_GROUP {
                    requests.try_recv().ok()
                } else {
                    None
                };
            }
            if !group.is_empty() {
                self.commit_group(group);
            }
            if snapshot_replies.is_empty() {
                self.maybe_snapshot();
            } else {
                let result = self.snapshot_now();
                for reply in snapshot_replies {
                    let _ = reply.send(result.as_ref().map_err(io_error_copy).copied());
                }
            }
        }
    }

    fn commit_group(&mut self, group: Vec<Request>) {
        let (planned, records) = self.plan(group);
        if let Some(error) = &self.failed {
            planned.into_iter().for_each(|p| p.fail(error));
            return;
        }
        if !records.is_empty() {
            let mut buf = Vec::new();
            for record in &records {
                wal::encode(record, &mut buf);
            }
            if let Err(error) = self.append(&buf) {
                tracing::error!(%error, "store log append failed");
                planned.into_iter().for_each(|p| p.fail(&error));
                return;
            }
            let mut state = self.shared.state.write();
            let mut events = Vec::with_capacity(records.len());
            for record in records {
                match state.apply(record) {
                    Ok(Some(event)) => events.push(event),
                    Ok(None) => {}
                    // The plan was made against this very state by this thread.
                    Err(error) => tracing::error!(%error, "planned record failed to apply"),
                }
            }
            if !events.is_empty() {
                // No receivers is fine: nobody is watching.
                let _ = self.shared.events.send(events.into());
            }
        }
        planned.into_iter().for_each(Planned::succeed);
    }

    /// Checks each request against the state as left by the requests before it in the group.
    fn plan(&self, group: Vec<Request>) -> (Vec<Planned>, Vec<Record>) {
        let state = self.shared.state.read();
        let mut pending: HashMap<String, Option<Version>> = HashMap::new();
        let mut revision = state.revision;
        let mut compacted = state.compacted;
        let mut planned = Vec::with_capacity(group.len());
        let mut records = Vec::new();
        let current = |pending: &HashMap<String, Option<Version>>, key: &str| match pending.get(key)
        {
            Some(v) => v.clone(),
            None => state.latest(key).cloned(),
        };
        for request in group {
            match request {
                Request::Create { key, value, reply } => {
                    if let Some(error) = self.oversized(&key, &value) {
                        planned.push(Planned::Rejected(Rejection::Kv(reply, error)));
                        continue;
                    }
                    if current(&pending, &key).is_some() {
                        planned.push(Planned::Rejected(Rejection::Kv(
                            reply,
                            StoreError::AlreadyExists { key },
                        )));
                        continue;
                    }
                    revision += 1;
                    let kv = KeyValue {
                        key: key.clone(),
                        value: value.clone(),
                        create_revision: revision,
                        mod_revision: revision,
                    };
                    pending.insert(
                        key.clone(),
                        Some(Version {
                            create_revision: revision,
                            mod_revision: revision,
                            value: Some(value.clone()),
                        }),
                    );
                    records.push(Record::Put {
                        revision,
                        create_revision: revision,
                        key,
                        value,
                    });
                    planned.push(Planned::Create(reply, kv));
                }
                Request::Update {
                    key,
                    value,
                    expected,
                    reply,
                } => {
                    if let Some(error) = self.oversized(&key, &value) {
                        planned.push(Planned::Rejected(Rejection::Kv(reply, error)));
                        continue;
                    }
                    let Some(existing) = current(&pending, &key) else {
                        planned.push(Planned::Rejected(Rejection::Kv(
                            reply,
                            StoreError::NotFound { key },
                        )));
                        continue;
                    };
                    if existing.mod_revision != expected {
                        let current = existing.to_kv(&key).map(Box::new);
                        planned.push(Planned::Rejected(Rejection::Kv(
                            reply,
                            StoreError::Conflict {
                                key,
                                expected,
                                current,
                            },
                        )));
                        continue;
                    }
                    revision += 1;
                    let kv = KeyValue {
                        key: key.clone(),
                        value: value.clone(),
                        create_revision: existing.create_revision,
                        mod_revision: revision,
                    };
                    pending.insert(
                        key.clone(),
                        Some(Version {
                            create_revision: existing.create_revision,
                            mod_revision: revision,
                            value: Some(value.clone()),
                        }),
                    );
                    records.push(Record::Put {
                        revision,
                        create_revision: existing.create_revision,
                        key,
                        value,
                    });
                    planned.push(Planned::Update(reply, kv));
                }
                Request::Delete {
                    key,
                    expected,
                    reply,
                } => {
                    let Some(prev) = current(&pending, &key).and_then(|v| v.to_kv(&key)) else {
                        planned.push(Planned::Rejected(Rejection::Delete(
                            reply,
                            StoreError::NotFound { key },
                        )));
                        continue;
                    };
                    if let Some(expected) = expected.filter(|e| *e != prev.mod_revision) {
                        planned.push(Planned::Rejected(Rejection::Delete(
                            reply,
                            StoreError::Conflict {
                                key,
                                expected,
                                current: Some(Box::new(prev)),
                            },
                        )));
                        continue;
                    }
                    revision += 1;
                    pending.insert(key.clone(), None);
                    records.push(Record::Delete { revision, key });
                    planned.push(Planned::Delete(reply, prev, revision));
                }
                // `run` takes snapshot requests out of the group before planning.
                Request::Snapshot { reply } => {
                    let _ = reply.send(Err(StoreError::Unavailable(
                        "snapshot request reached the write planner".into(),
                    )));
                }
                Request::Compact {
                    revision: target,
                    reply,
                } => {
                    if target > revision {
                        planned.push(Planned::Rejected(Rejection::Compact(
                            reply,
                            StoreError::FutureRevision {
                                requested: target,
                                current: revision,
                            },
                        )));
                        continue;
                    }
                    if target > compacted {
                        compacted = target;
                        records.push(Record::Compact { revision: target });
                    }
                    planned.push(Planned::Compact(reply));
                }
            }
        }
        (planned, records)
    }

    /// A record the log reader would take for garbage must never be written: it and every
    /// later write would be cut off as a torn tail on the next open.
    fn oversized(&self, key: &str, value: &Bytes) -> Option<StoreError> {
        let record_limit = wal::MAX_PAYLOAD.saturating_sub(wal::kv_payload_len(key, &[]));
        let limit = self.options.max_value_bytes.min(record_limit);
        (value.len() > limit).then(|| StoreError::TooLarge {
            key: key.to_string(),
            size: value.len(),
            limit,
        })
    }

    fn append(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let result = self.wal.write_all(buf).and_then(|()| self.wal.sync_data());
        match result {
            Ok(()) => {
                self.wal_len += buf.len() as u64;
                Ok(())
            }
            Err(error) => {
                // Cut the partial group off so later appends do not follow garbage.
                let undo = self
                    .wal
                    .set_len(self.wal_len)
                    .and_then(|()| self.wal.sync_all());
                if let Err(undo_error) = undo {
                    tracing::error!(%undo_error, "could not undo failed log append; store is now read-only");
                    self.failed = Some(std::io::Error::new(
                        error.kind(),
                        format!("store log is unusable after a failed write: {error}"),
                    ));
                }
                Err(error)
            }
        }
    }

    fn maybe_snapshot(&mut self) {
        if self.failed.is_some()
            || self.wal_len < self.options.snapshot_min_log_bytes
            || self.wal_len < self.next_snapshot_check
        {
            return;
        }
        let live_bytes = self.shared.state.read().live_bytes();
        if self.wal_len <= 2 * live_bytes {
            // Mostly live data: look again after the log has grown some more.
            self.next_snapshot_check = self.wal_len + self.options.snapshot_min_log_bytes / 4;
            return;
        }
        if let Err(error) = self.snapshot_now() {
            tracing::error!(%error, "store snapshot failed; keeping the log");
            self.next_snapshot_check = self.wal_len + self.options.snapshot_min_log_bytes / 4;
        }
    }

    fn snapshot_now(&mut self) -> std::io::Result<()> {
        if let Some(error) = &self.failed {
            return Err(std::io::Error::new(error.kind(), error.to_string()));
        }
        let records = self.shared.state.read().snapshot_records();
        self.write_snapshot(&records)?;
        tracing::info!(
            records = records.len(),
            "store snapshot written, log emptied"
        );
        self.wal_len = 0;
        self.next_snapshot_check = self.options.snapshot_min_log_bytes;
        Ok(())
    }

    fn write_snapshot(&mut self, records: &[Record]) -> std::io::Result<()> {
        let tmp = self.dir.join(SNAPSHOT_TMP_FILE);
        let mut file = File::create(&tmp)?;
        let mut buf = Vec::with_capacity(1 << 20);
        for record in records {
            wal::encode(record, &mut buf);
            if buf.len() >= 1 << 20 {
                file.write_all(&buf)?;
                buf.clear();
            }
        }
        file.write_all(&buf)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, self.dir.join(SNAPSHOT_FILE))?;
        sync_dir(&self.dir)?;
        // Records left in the log if we crash right here are skipped on replay by revision.
        self.wal.set_len(0)?;
        self.wal.sync_all()
    }
}

fn prefix_range<'a, V>(
    index: &'a BTreeMap<String, V>,
    prefix: &'a str,
) -> impl Iterator<Item = (&'a String, &'a V)> + 'a {
    index
        .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
        .take_while(move |(k, _)| k.starts_with(prefix))
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
