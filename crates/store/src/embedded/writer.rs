//! The single writer thread: it takes queued mutations in groups, checks them against the
//! state, appends their records with one fsync, then applies and publishes them, and
//! decides when to replace the log by a snapshot. Separate because it is the only code
//! that changes the state or the files after open.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{mpsc, Arc};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::state::Version;
use super::wal::{self, Record};
use super::{sync_dir, EmbeddedOptions, Shared, SNAPSHOT_FILE, SNAPSHOT_TMP_FILE};
use crate::{KeyValue, Revision, StoreError};

/// Upper bound on requests committed by one fsync, so one group's latency stays bounded.
const MAX_GROUP: usize = 1024;

pub(super) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

pub(super) enum Request {
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

pub(super) struct Writer {
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
    /// A writer appending to `wal`, of which the first `wal_len` bytes are valid records.
    pub(super) fn new(
        shared: Arc<Shared>,
        dir: PathBuf,
        wal: File,
        wal_len: u64,
        options: EmbeddedOptions,
    ) -> Writer {
        Writer {
            shared,
            dir,
            wal,
            wal_len,
            next_snapshot_check: options.snapshot_min_log_bytes,
            options,
            failed: None,
        }
    }

    pub(super) fn run(mut self, requests: mpsc::Receiver<Request>) {
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

fn io_error_copy(e: &std::io::Error) -> StoreError {
    StoreError::Io(std::io::Error::new(e.kind(), e.to_string()))
}
