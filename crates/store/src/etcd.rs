//! The etcd v3 backend.
//!
//! Every conditional write is one etcd transaction whose failure branch reads the key, so a
//! `Conflict` carries the current version without a second round trip. Lists page through
//! the range at one fixed revision, so a large list is consistent and no single response
//! approaches gRPC message limits. The client reconnects on its own after etcd restarts;
//! calls made while etcd is down fail with `Unavailable` after the request timeout.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, PutOptions,
    Txn, TxnOp, TxnOpResponse, TxnResponse, WatchOptions,
};
use futures::StreamExt;

use crate::{
    EventKind, KeyValue, ListResult, Revision, Store, StoreError, WatchEvent, WatchStream,
};

/// Keys per page when listing; matches the order of magnitude the Kubernetes API server uses.
const LIST_PAGE: i64 = 500;
const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// etcd's error texts, which are its stable API for these conditions (gRPC code OutOfRange).
const ERR_COMPACTED: &str = "required revision has been compacted";
const ERR_FUTURE: &str = "required revision is a future revision";

/// A [`Store`] over an etcd v3 cluster.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connects to `endpoints` (e.g. `http://127.0.0.1:2379`). Fails with `Unavailable` when
    /// no endpoint answers within the connect timeout.
    pub async fn connect(endpoints: &[String]) -> Result<EtcdStore, StoreError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(10))
            // Detects a dead peer on an idle watch stream instead of waiting forever.
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(unavailable)?;
        let store = EtcdStore { client };
        // `connect` is lazy; make a bad endpoint fail here rather than on first use.
        store.current_revision().await?;
        Ok(store)
    }

    fn kv(&self) -> etcd_client::KvClient {
        self.client
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        self.kv().txn(txn).await.map_err(unavailable)
    }

    /// The oldest revision still readable, learned the only way etcd 3.4 tells it: a watch
    /// from a compacted revision is cancelled with the compaction revision.
    async fn compacted_revision(&self, requested: Revision) -> Revision {
        let probe = async {
            let mut watch = self
                .client
                .watch_client()
                .watch(
                    "\0",
                    Some(WatchOptions::new().with_start_revision(requested)),
                )
                .await
                .ok()?;
            while let Ok(Some(resp)) = watch.message().await {
                if resp.compact_revision() > 0 {
                    return Some(resp.compact_revision());
                }
                if resp.created() && !resp.canceled() {
                    return None;
                }
            }
            None
        };
        tokio::time::timeout(Duration::from_secs(5), probe)
            .await
            .ok()
            .flatten()
            // Unknown: "at least one past what was asked" is the only safe statement.
            .unwrap_or(requested + 1)
    }
}

fn unavailable(e: etcd_client::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn is_compacted(e: &etcd_client::Error) -> bool {
    e.to_string().contains(ERR_COMPACTED)
}

fn is_future(e: &etcd_client::Error) -> bool {
    e.to_string().contains(ERR_FUTURE)
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Result<Revision, StoreError> {
    header
        .map(|h| h.revision())
        .ok_or_else(|| StoreError::Unavailable("etcd response without header".into()))
}

fn to_kv(kv: &etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
    let key = kv
        .key_str()
        .map_err(|_| StoreError::Corrupt("etcd key is not UTF-8".into()))?;
    Ok(KeyValue {
        key: key.to_string(),
        value: Bytes::copy_from_slice(kv.value()),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    })
}

/// The exclusive end of the key range starting with `prefix` (etcd's "\0" means "to the end").
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The first key range start for `prefix`; etcd rejects an empty key.
fn range_start(prefix: &str) -> Vec<u8> {
    if prefix.is_empty() {
        vec![0]
    } else {
        prefix.as_bytes().to_vec()
    }
}

/// The current version of the key read by a transaction's failure branch.
fn current_from_else(resp: &TxnResponse) -> Result<Option<KeyValue>, StoreError> {
    for op in resp.op_responses() {
        if let TxnOpResponse::Get(get) = op {
            return get.kvs().first().map(to_kv).transpose();
        }
    }
    Ok(None)
}

#[async_trait]
impl Store for EtcdStore {
    async fn current_revision(&self) -> Result<Revision, StoreError> {
        let resp = self
            .kv()
            .get("\0", Some(GetOptions::new().with_count_only()))
            .await
            .map_err(unavailable)?;
        header_revision(resp.header())
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let resp = self.kv().get(key, None).await.map_err(unavailable)?;
        resp.kvs().first().map(to_kv).transpose()
    }

    async fn list(
        &self,
        prefix: &str,
        at_revision: Option<Revision>,
    ) -> Result<ListResult, StoreError> {
        let end = prefix_end(prefix);
        let mut start = range_start(prefix);
        let mut revision = at_revision.filter(|r| *r > 0).unwrap_or(0);
        let mut kvs = Vec::new();
        let mut kv_client = self.kv();
        loop {
            let options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(LIST_PAGE)
                .with_revision(revision);
            let resp = match kv_client.get(start.clone(), Some(options)).await {
                Ok(resp) => resp,
                Err(e) if is_compacted(&e) => {
                    return Err(StoreError::Compacted {
                        requested: revision,
                        compacted: self.compacted_revision(revision).await,
                    })
                }
                Err(e) if is_future(&e) => {
                    return Err(StoreError::FutureRevision {
                        requested: revision,
                        current: self.current_revision().await?,
                    })
                }
                Err(e) => return Err(unavailable(e)),
            };
            if revision == 0 {
                // Later pages must read the same revision as the first.
                revision = header_revision(resp.header())?;
            }
            for kv in resp.kvs() {
                kvs.push(to_kv(kv)?);
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => break,
            }
        }
        Ok(ListResult { kvs, revision })
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue, StoreError> {
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value.to_vec(), None)]);
        let resp = self.txn(txn).await?;
        if !resp.succeeded() {
            return Err(StoreError::AlreadyExists {
                key: key.to_string(),
            });
        }
        let revision = header_revision(resp.header())?;
        Ok(KeyValue {
            key: key.to_string(),
            value,
            create_revision: revision,
            mod_revision: revision,
        })
    }

    async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected_mod_revision: Revision,
    ) -> Result<KeyValue, StoreError> {
        // `version > 0` keeps an absent key (whose mod_revision reads as 0) from matching.
        let txn = Txn::new()
            .when([
                Compare::version(key, CompareOp::Greater, 0),
                Compare::mod_revision(key, CompareOp::Equal, expected_mod_revision),
            ])
            .and_then([TxnOp::put(
                key,
                value.to_vec(),
                Some(PutOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.txn(txn).await?;
        if !resp.succeeded() {
            return Err(match current_from_else(&resp)? {
                None => StoreError::NotFound {
                    key: key.to_string(),
                },
                Some(current) => StoreError::Conflict {
                    key: key.to_string(),
                    expected: expected_mod_revision,
                    current: Some(Box::new(current)),
                },
            });
        }
        let revision = header_revision(resp.header())?;
        let create_revision = resp
            .op_responses()
            .into_iter()
            .find_map(|op| match op {
                TxnOpResponse::Put(put) => put.prev_key().map(|kv| kv.create_revision()),
                _ => None,
            })
            .ok_or_else(|| StoreError::Unavailable("etcd put returned no previous key".into()))?;
        Ok(KeyValue {
            key: key.to_string(),
            value,
            create_revision,
            mod_revision: revision,
        })
    }

    async fn delete(
        &self,
        key: &str,
        expected_mod_revision: Option<Revision>,
    ) -> Result<(KeyValue, Revision), StoreError> {
        let mut compares = vec![Compare::version(key, CompareOp::Greater, 0)];
        if let Some(expected) = expected_mod_revision {
            compares.push(Compare::mod_revision(key, CompareOp::Equal, expected));
        }
        let txn = Txn::new()
            .when(compares)
            .and_then([TxnOp::delete(
                key,
                Some(DeleteOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.txn(txn).await?;
        if !resp.succeeded() {
            return Err(match current_from_else(&resp)? {
                None => StoreError::NotFound {
                    key: key.to_string(),
                },
                Some(current) => StoreError::Conflict {
                    key: key.to_string(),
                    expected: expected_mod_revision.unwrap_or_default(),
                    current: Some(Box::new(current)),
                },
            });
        }
        let revision = header_revision(resp.header())?;
        let prev = resp
            .op_responses()
            .into_iter()
            .find_map(|op| match op {
                TxnOpResponse::Delete(del) => del.prev_kvs().first().map(to_kv),
                _ => None,
            })
            .transpose()?
            .ok_or_else(|| {
                StoreError::Unavailable("etcd delete returned no previous key".into())
            })?;
        Ok((prev, revision))
    }

    async fn watch(
        &self,
        prefix: &str,
        after_revision: Revision,
    ) -> Result<WatchStream, StoreError> {
        let options = WatchOptions::new()
            .with_range(prefix_end(prefix))
            .with_start_revision(after_revision.saturating_add(1))
            .with_prev_key();
        let stream = self
            .client
            .watch_client()
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .watch(range_start(prefix), Some(options))
            .await
            .map_err(unavailable)?;
        let state = WatchState {
            stream,
            requested: after_revision.saturating_add(1),
            ready: std::collections::VecDeque::new(),
            finished: false,
        };
        Ok(futures::stream::unfold(state, |mut state| async move {
            state.next().await.map(|item| (item, state))
        })
        .boxed())
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        match self.kv().compact(revision, None).await {
            Ok(_) => Ok(()),
            // Compacting at or below the compaction point is a no-op by contract.
            Err(e) if is_compacted(&e) => Ok(()),
            Err(e) if is_future(&e) => Err(StoreError::FutureRevision {
                requested: revision,
                current: self.current_revision().await?,
            }),
            Err(e) => Err(unavailable(e)),
        }
    }
}

struct WatchState {
    /// Owns both halves: dropping the request sender would end the gRPC stream.
    stream: etcd_client::WatchStream,
    requested: Revision,
    ready: std::collections::VecDeque<WatchEvent>,
    finished: bool,
}

impl WatchState {
    async fn next(&mut self) -> Option<Result<WatchEvent, StoreError>> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(Ok(event));
            }
            if self.finished {
                return None;
            }
            let resp = match self.stream.message().await {
                Ok(Some(resp)) => resp,
                Ok(None) => return None,
                Err(e) => {
                    self.finished = true;
                    return Some(Err(unavailable(e)));
                }
            };
            if resp.compact_revision() > 0 {
                self.finished = true;
                return Some(Err(StoreError::Compacted {
                    requested: self.requested,
                    compacted: resp.compact_revision(),
                }));
            }
            if resp.canceled() {
                self.finished = true;
                return Some(Err(StoreError::Unavailable(format!(
                    "etcd cancelled the watch: {}",
                    resp.cancel_reason()
                ))));
            }
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                let kind = match event.event_type() {
                    EventType::Put => EventKind::Put,
                    EventType::Delete => EventKind::Delete,
                };
                let converted = (|| {
                    Ok::<_, StoreError>(WatchEvent {
                        kind,
                        kv: to_kv(kv)?,
                        prev: event.prev_kv().map(to_kv).transpose()?,
                    })
                })();
                match converted {
                    Ok(event) => self.ready.push_back(event),
                    Err(e) => {
                        self.finished = true;
                        self.ready.clear();
                        return Some(Err(e));
                    }
                }
            }
        }
    }
}
