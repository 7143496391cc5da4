//! The in-memory MVCC index: every version of every key back to the compaction point and
//! one event per revision for watches. Separate from the store because it is pure data
//! (no IO, no locking), rebuilt from the snapshot and log on open and mutated only by
//! applying records.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;

use bytes::Bytes;

use super::wal::Record;
use crate::{EventKind, KeyValue, Revision, StoreError, WatchEvent};

/// One version of a key; `value: None` is a deletion (tombstone).
#[derive(Clone, Debug)]
pub(super) struct Version {
    pub(super) create_revision: Revision,
    pub(super) mod_revision: Revision,
    pub(super) value: Option<Bytes>,
}

impl Version {
    pub(super) fn to_kv(&self, key: &str) -> Option<KeyValue> {
        self.value.as_ref().map(|value| KeyValue {
            key: key.to_string(),
            value: value.clone(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
        })
    }
}

pub(super) struct State {
    /// Versions of each key in revision order, back to the compaction point.
    pub(super) index: BTreeMap<String, Vec<Version>>,
    pub(super) revision: Revision,
    pub(super) compacted: Revision,
    /// One event per revision, contiguous, ending at `revision`.
    pub(super) history: VecDeque<WatchEvent>,
}

impl State {
    pub(super) fn new() -> Self {
        Self {
            index: BTreeMap::new(),
            // etcd reports revision 1 for a fresh cluster; the first write gets 2.
            revision: 1,
            compacted: 0,
            history: VecDeque::new(),
        }
    }

    pub(super) fn latest(&self, key: &str) -> Option<&Version> {
        self.index
            .get(key)
            .and_then(|versions| versions.last())
            .filter(|v| v.value.is_some())
    }

    pub(super) fn visible_at(versions: &[Version], revision: Revision) -> Option<&Version> {
        let idx = versions.partition_point(|v| v.mod_revision <= revision);
        idx.checked_sub(1)
            .map(|i| &versions[i])
            .filter(|v| v.value.is_some())
    }

    pub(super) fn apply(&mut self, record: Record) -> Result<Option<WatchEvent>, StoreError> {
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
    pub(super) fn live_bytes(&self) -> u64 {
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
    pub(super) fn snapshot_records(&self) -> Vec<Record> {
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

    pub(super) fn load_snapshot(records: Vec<Record>) -> Result<State, StoreError> {
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

pub(super) fn prefix_range<'a, V>(
    index: &'a BTreeMap<String, V>,
    prefix: &'a str,
) -> impl Iterator<Item = (&'a String, &'a V)> + 'a {
    index
        .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
        .take_while(move |(k, _)| k.starts_with(prefix))
}
