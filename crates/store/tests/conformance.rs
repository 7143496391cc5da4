//! One conformance suite for every `Store` backend, plus backend-specific durability tests.
//!
//! Each case is a generic async fn over `&dyn Store`; the `conformance!` macro instantiates
//! it once per backend, each on a fresh store (a new directory, or a new private etcd).

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use rkube_store::embedded::{EmbeddedOptions, EmbeddedStore};
use rkube_store::etcd::EtcdStore;
use rkube_store::{EventKind, KeyValue, Revision, Store, StoreError, WatchEvent, WatchStream};
use rkube_testkit::etcd::EtcdProcess;

/// Only guards against a hang; no assertion depends on how long anything takes.
const PATIENCE: Duration = Duration::from_secs(20);

struct Fixture {
    store: Arc<dyn Store>,
    _keep_alive: Box<dyn Any + Send>,
}

async fn embedded() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    Fixture {
        store: Arc::new(store),
        _keep_alive: Box::new(dir),
    }
}

async fn etcd() -> Fixture {
    let etcd = EtcdProcess::start().await.unwrap();
    let store = EtcdStore::connect(&[etcd.endpoint()]).await.unwrap();
    Fixture {
        store: Arc::new(store),
        _keep_alive: Box::new(etcd),
    }
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn next_event(stream: &mut WatchStream) -> WatchEvent {
    tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("watch event did not arrive")
        .expect("watch stream ended")
        .expect("watch stream failed")
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod embedded_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let fixture = super::embedded().await;
                    super::$case(fixture.store.clone()).await;
                }
            )*
        }
        mod etcd_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let fixture = super::etcd().await;
                    super::$case(fixture.store.clone()).await;
                }
            )*
        }
    };
}

conformance!(
    revision_starts_at_one_and_increments,
    get_and_list_are_sorted_and_prefix_isolated,
    list_at_past_revision,
    create_fails_if_present,
    update_is_compare_and_swap,
    delete_is_compare_and_swap_and_returns_prev,
    watch_replays_history_then_follows_live,
    watch_ignores_other_prefixes,
    compaction_forgets_history,
    future_revision_is_rejected,
    concurrent_cas_increments_lose_nothing,
    concurrent_creates_have_one_winner,
);

async fn revision_starts_at_one_and_increments(store: Arc<dyn Store>) {
    assert_eq!(store.current_revision().await.unwrap(), 1);
    let created = store.create("/r/a", b("1")).await.unwrap();
    assert_eq!(created.create_revision, 2);
    assert_eq!(created.mod_revision, 2);
    assert_eq!(store.current_revision().await.unwrap(), 2);
    let updated = store.update("/r/a", b("2"), 2).await.unwrap();
    assert_eq!(updated.create_revision, 2);
    assert_eq!(updated.mod_revision, 3);
    let (prev, deleted_at) = store.delete("/r/a", None).await.unwrap();
    assert_eq!(prev.mod_revision, 3);
    assert_eq!(deleted_at, 4);
    assert_eq!(store.current_revision().await.unwrap(), 4);
    // Failed writes do not consume revisions.
    assert!(store.update("/r/a", b("x"), 3).await.is_err());
    assert_eq!(store.current_revision().await.unwrap(), 4);
}

async fn get_and_list_are_sorted_and_prefix_isolated(store: Arc<dyn Store>) {
    for key in ["/a/2", "/b/1", "/a/1", "/ab/x", "/a/3"] {
        store.create(key, b(key)).await.unwrap();
    }
    let got = store.get("/a/2").await.unwrap().unwrap();
    assert_eq!(got.value, b("/a/2"));
    assert_eq!(got.create_revision, 2);
    assert!(store.get("/a/4").await.unwrap().is_none());
    assert!(store.get("/a").await.unwrap().is_none());

    let list = store.list("/a/", None).await.unwrap();
    let keys: Vec<_> = list.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/a/1", "/a/2", "/a/3"]);
    assert_eq!(list.revision, store.current_revision().await.unwrap());
    assert!(list.kvs.iter().all(|kv| kv.value == b(&kv.key)));

    let all = store.list("", None).await.unwrap();
    let keys: Vec<_> = all.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/a/1", "/a/2", "/a/3", "/ab/x", "/b/1"]);
    assert!(store.list("/c/", None).await.unwrap().kvs.is_empty());
}

async fn list_at_past_revision(store: Arc<dyn Store>) {
    let k1 = store.create("/h/k1", b("v1")).await.unwrap(); // 2
    store
        .update("/h/k1", b("v2"), k1.mod_revision)
        .await
        .unwrap(); // 3
    store.create("/h/k2", b("w1")).await.unwrap(); // 4
    store.delete("/h/k1", None).await.unwrap(); // 5
    store.create("/other", b("o")).await.unwrap(); // 6

    let view = |kvs: Vec<KeyValue>| -> Vec<(String, String)> {
        kvs.into_iter()
            .map(|kv| (kv.key, String::from_utf8(kv.value.to_vec()).unwrap()))
            .collect()
    };
    let at = |rev| {
        let store = store.clone();
        async move {
            let list = store.list("/h/", Some(rev)).await.unwrap();
            assert_eq!(list.revision, rev);
            view(list.kvs)
        }
    };
    assert_eq!(at(1).await, vec![]);
    assert_eq!(at(2).await, vec![("/h/k1".into(), "v1".into())]);
    assert_eq!(at(3).await, vec![("/h/k1".into(), "v2".into())]);
    assert_eq!(
        at(4).await,
        vec![("/h/k1".into(), "v2".into()), ("/h/k2".into(), "w1".into())]
    );
    assert_eq!(at(5).await, vec![("/h/k2".into(), "w1".into())]);
    assert_eq!(at(6).await, vec![("/h/k2".into(), "w1".into())]);
    let past = store.list("/h/", Some(3)).await.unwrap();
    assert_eq!(past.kvs[0].create_revision, 2);
    assert_eq!(past.kvs[0].mod_revision, 3);
}

async fn create_fails_if_present(store: Arc<dyn Store>) {
    store.create("/c/x", b("1")).await.unwrap();
    match store.create("/c/x", b("2")).await {
        Err(StoreError::AlreadyExists { key }) => assert_eq!(key, "/c/x"),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(store.get("/c/x").await.unwrap().unwrap().value, b("1"));
    // After a deletion the key can be created again, with a fresh create_revision.
    store.delete("/c/x", None).await.unwrap();
    let again = store.create("/c/x", b("3")).await.unwrap();
    assert_eq!(again.create_revision, again.mod_revision);
    assert_eq!(
        again.create_revision,
        store.current_revision().await.unwrap()
    );
}

async fn update_is_compare_and_swap(store: Arc<dyn Store>) {
    let v1 = store.create("/u/x", b("1")).await.unwrap();
    let v2 = store.update("/u/x", b("2"), v1.mod_revision).await.unwrap();
    assert_eq!(v2.create_revision, v1.create_revision);
    assert!(v2.mod_revision > v1.mod_revision);
    assert_eq!(store.get("/u/x").await.unwrap().unwrap(), v2);

    match store.update("/u/x", b("stale"), v1.mod_revision).await {
        Err(StoreError::Conflict {
            key,
            expected,
            current,
        }) => {
            assert_eq!(key, "/u/x");
            assert_eq!(expected, v1.mod_revision);
            assert_eq!(*current.unwrap(), v2);
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert_eq!(store.get("/u/x").await.unwrap().unwrap().value, b("2"));

    match store.update("/u/missing", b("x"), 0).await {
        Err(StoreError::NotFound { key }) => assert_eq!(key, "/u/missing"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    match store.update("/u/missing", b("x"), v2.mod_revision).await {
        Err(StoreError::NotFound { .. }) => {}
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(store.get("/u/missing").await.unwrap().is_none());
}

async fn delete_is_compare_and_swap_and_returns_prev(store: Arc<dyn Store>) {
    let v1 = store.create("/d/x", b("1")).await.unwrap();
    let v2 = store.update("/d/x", b("2"), v1.mod_revision).await.unwrap();
    match store.delete("/d/x", Some(v1.mod_revision)).await {
        Err(StoreError::Conflict { current, .. }) => assert_eq!(*current.unwrap(), v2),
        other => panic!("expected Conflict, got {other:?}"),
    }
    let (prev, deleted_at) = store.delete("/d/x", Some(v2.mod_revision)).await.unwrap();
    assert_eq!(prev, v2);
    assert_eq!(deleted_at, store.current_revision().await.unwrap());
    assert!(deleted_at > v2.mod_revision);
    assert!(store.get("/d/x").await.unwrap().is_none());
    match store.delete("/d/x", None).await {
        Err(StoreError::NotFound { key }) => assert_eq!(key, "/d/x"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    match store.delete("/d/x", Some(v2.mod_revision)).await {
        Err(StoreError::NotFound { .. }) => {}
        other => panic!("expected NotFound, got {other:?}"),
    }
    // Unguarded delete of a present key.
    store.create("/d/y", b("y")).await.unwrap();
    let (prev, _) = store.delete("/d/y", None).await.unwrap();
    assert_eq!(prev.value, b("y"));
}

async fn watch_replays_history_then_follows_live(store: Arc<dyn Store>) {
    let a1 = store.create("/w/a", b("a1")).await.unwrap(); // 2
    let a2 = store
        .update("/w/a", b("a2"), a1.mod_revision)
        .await
        .unwrap(); // 3
    let b1 = store.create("/w/b", b("b1")).await.unwrap(); // 4

    let mut stream = store.watch("/w/", a1.mod_revision).await.unwrap();
    let e = next_event(&mut stream).await;
    assert_eq!(e.kind, EventKind::Put);
    assert_eq!(e.kv, a2);
    assert_eq!(e.prev, Some(a1.clone()));
    let e = next_event(&mut stream).await;
    assert_eq!(e.kv, b1);
    assert_eq!(e.prev, None);

    let (_, deleted_at) = store.delete("/w/a", None).await.unwrap();
    let e = next_event(&mut stream).await;
    assert_eq!(e.kind, EventKind::Delete);
    assert_eq!(e.kv.key, "/w/a");
    assert!(e.kv.value.is_empty());
    assert_eq!(e.revision(), deleted_at);
    assert_eq!(e.prev, Some(a2));

    let b2 = store
        .update("/w/b", b("b2"), b1.mod_revision)
        .await
        .unwrap();
    let e = next_event(&mut stream).await;
    assert_eq!(e.kv, b2);
    assert_eq!(e.prev, Some(b1));

    // A watch from the current revision sees only what comes next.
    let now = store.current_revision().await.unwrap();
    let mut tail = store.watch("/w/", now).await.unwrap();
    let c = store.create("/w/c", b("c")).await.unwrap();
    assert_eq!(next_event(&mut tail).await.kv, c);
    assert_eq!(next_event(&mut stream).await.kv, c);
}

async fn watch_ignores_other_prefixes(store: Arc<dyn Store>) {
    let start = store.current_revision().await.unwrap();
    store.create("/q/x", b("q")).await.unwrap();
    store.create("/pp", b("not under /p/")).await.unwrap();
    let mut stream = store.watch("/p/", start).await.unwrap();
    store.create("/q/y", b("q")).await.unwrap();
    let p = store.create("/p/y", b("p")).await.unwrap();
    let e = next_event(&mut stream).await;
    assert_eq!(e.kv, p);
}

async fn compaction_forgets_history(store: Arc<dyn Store>) {
    let mut last = store.create("/k/x", b("0")).await.unwrap(); // 2
    for i in 1..=4 {
        last = store
            .update("/k/x", b(&i.to_string()), last.mod_revision)
            .await
            .unwrap(); // 3..=6
    }
    store.compact(4).await.unwrap();

    match store.list("/k/", Some(3)).await {
        Err(StoreError::Compacted {
            requested,
            compacted,
        }) => {
            assert_eq!(requested, 3);
            assert_eq!(compacted, 4);
        }
        other => panic!("expected Compacted, got {other:?}"),
    }
    let at4 = store.list("/k/", Some(4)).await.unwrap();
    assert_eq!(at4.kvs[0].value, b("2"));
    let at6 = store.list("/k/", Some(6)).await.unwrap();
    assert_eq!(at6.kvs[0].value, b("4"));

    // Watching from a compacted revision fails, either at once or as the first item.
    match store.watch("/k/", 1).await {
        Err(StoreError::Compacted { .. }) => {}
        Err(other) => panic!("expected Compacted, got {other:?}"),
        Ok(mut stream) => match tokio::time::timeout(PATIENCE, stream.next()).await.unwrap() {
            Some(Err(StoreError::Compacted { compacted, .. })) => assert_eq!(compacted, 4),
            other => panic!("expected Compacted, got {other:?}"),
        },
    }
    // From just after the compaction point, history is still there.
    let mut stream = store.watch("/k/", 4).await.unwrap();
    let e = next_event(&mut stream).await;
    assert_eq!(e.revision(), 5);
    assert_eq!(e.prev.unwrap().value, b("2"));

    // Compacting at or below the compaction point is a no-op.
    store.compact(2).await.unwrap();
    store.compact(4).await.unwrap();
    assert!(store.list("/k/", Some(4)).await.is_ok());
    assert_eq!(store.get("/k/x").await.unwrap().unwrap(), last);
}

async fn future_revision_is_rejected(store: Arc<dyn Store>) {
    store.create("/f/x", b("1")).await.unwrap();
    let current = store.current_revision().await.unwrap();
    match store.list("/f/", Some(current + 10)).await {
        Err(StoreError::FutureRevision {
            requested,
            current: c,
        }) => {
            assert_eq!(requested, current + 10);
            assert_eq!(c, current);
        }
        other => panic!("expected FutureRevision, got {other:?}"),
    }
    match store.compact(current + 10).await {
        Err(StoreError::FutureRevision { .. }) => {}
        other => panic!("expected FutureRevision, got {other:?}"),
    }
}

async fn concurrent_cas_increments_lose_nothing(store: Arc<dyn Store>) {
    const TASKS: usize = 8;
    const INCREMENTS: usize = 25;
    store.create("/counter", b("0")).await.unwrap();
    let mut handles = Vec::new();
    for _ in 0..TASKS {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let mut conflicts = 0usize;
            for _ in 0..INCREMENTS {
                let mut current = store.get("/counter").await.unwrap().unwrap();
                loop {
                    let n: u64 = std::str::from_utf8(&current.value)
                        .unwrap()
                        .parse()
                        .unwrap();
                    match store
                        .update("/counter", b(&(n + 1).to_string()), current.mod_revision)
                        .await
                    {
                        Ok(_) => break,
                        Err(StoreError::Conflict {
                            current: Some(latest),
                            ..
                        }) => {
                            conflicts += 1;
                            current = *latest;
                        }
                        Err(e) => panic!("unexpected error {e:?}"),
                    }
                }
            }
            conflicts
        }));
    }
    for handle in handles {
        handle.await.unwrap();
    }
    let final_value = store.get("/counter").await.unwrap().unwrap();
    assert_eq!(final_value.value, b(&(TASKS * INCREMENTS).to_string()));
    // One revision per successful increment, none for the failed attempts.
    assert_eq!(
        final_value.mod_revision,
        2 + (TASKS * INCREMENTS) as Revision
    );
}

async fn concurrent_creates_have_one_winner(store: Arc<dyn Store>) {
    const TASKS: usize = 16;
    let mut handles = Vec::new();
    for i in 0..TASKS {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            store.create("/race", b(&i.to_string())).await
        }));
    }
    let mut winners = Vec::new();
    for handle in handles {
        match handle.await.unwrap() {
            Ok(kv) => winners.push(kv),
            Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }
    assert_eq!(winners.len(), 1);
    assert_eq!(store.get("/race").await.unwrap().unwrap(), winners[0]);
}

// ---- embedded-only: durability ----

mod embedded_durability {
    use super::*;
    use std::io::Write;

    fn open(dir: &std::path::Path) -> EmbeddedStore {
        EmbeddedStore::open(dir).unwrap()
    }

    #[tokio::test]
    async fn a_directory_in_use_cannot_be_opened_twice() {
        let dir = tempfile::tempdir().unwrap();
        let first = open(dir.path());
        let err = EmbeddedStore::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("in use"), "{err}");
        drop(first);
        open(dir.path());
    }

    #[tokio::test]
    async fn reopen_keeps_values_revisions_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let (a2, before_all, before_at3, revision) = {
            let store = open(dir.path());
            let a1 = store.create("/x/a", b("a1")).await.unwrap();
            let a2 = store
                .update("/x/a", b("a2"), a1.mod_revision)
                .await
                .unwrap();
            store.create("/x/b", b("b1")).await.unwrap();
            store.delete("/x/b", None).await.unwrap();
            store.create("/x/c", b("c1")).await.unwrap();
            let all = store.list("", None).await.unwrap().kvs;
            let at3 = store.list("", Some(3)).await.unwrap().kvs;
            (a2, all, at3, store.current_revision().await.unwrap())
        };
        let store = open(dir.path());
        assert_eq!(store.current_revision().await.unwrap(), revision);
        assert_eq!(store.list("", None).await.unwrap().kvs, before_all);
        assert_eq!(store.list("", Some(3)).await.unwrap().kvs, before_at3);
        assert_eq!(store.get("/x/a").await.unwrap().unwrap(), a2);
        assert!(store.get("/x/b").await.unwrap().is_none());
        // History survives too: a watch from the start replays every write.
        let mut stream = store.watch("/x/", 1).await.unwrap();
        let mut revisions = Vec::new();
        for _ in 2..=revision {
            revisions.push(next_event(&mut stream).await.revision());
        }
        assert_eq!(revisions, (2..=revision).collect::<Vec<_>>());
        let next = store.create("/x/d", b("d")).await.unwrap();
        assert_eq!(next.mod_revision, revision + 1);
    }

    #[tokio::test]
    async fn compaction_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path());
            let mut kv = store.create("/k", b("0")).await.unwrap();
            for i in 1..5 {
                kv = store
                    .update("/k", b(&i.to_string()), kv.mod_revision)
                    .await
                    .unwrap();
            }
            store.compact(4).await.unwrap();
        }
        let store = open(dir.path());
        assert!(matches!(
            store.list("", Some(3)).await,
            Err(StoreError::Compacted { compacted: 4, .. })
        ));
        assert_eq!(store.list("", Some(4)).await.unwrap().kvs[0].value, b("2"));
    }

    #[tokio::test]
    async fn torn_tail_record_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path());
            for key in ["/t/1", "/t/2", "/t/3"] {
                store.create(key, b(key)).await.unwrap();
            }
        }
        let wal = dir.path().join("wal");
        let len = std::fs::metadata(&wal).unwrap().len();
        // A crash in the middle of writing the last record.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&wal)
            .unwrap()
            .set_len(len - 5)
            .unwrap();
        {
            let store = open(dir.path());
            assert_eq!(store.current_revision().await.unwrap(), 3);
            let keys: Vec<_> = store
                .list("/t/", None)
                .await
                .unwrap()
                .kvs
                .into_iter()
                .map(|kv| kv.key)
                .collect();
            assert_eq!(keys, ["/t/1", "/t/2"]);
            // The log is usable again: new writes land after the cut and survive a reopen.
            let kv = store.create("/t/3", b("again")).await.unwrap();
            assert_eq!(kv.mod_revision, 4);
        }
        // Garbage appended by a torn write is cut off as well.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&wal)
            .unwrap()
            .write_all(&[7, 0, 0, 0, 1, 2, 3])
            .unwrap();
        let store = open(dir.path());
        assert_eq!(store.get("/t/3").await.unwrap().unwrap().value, b("again"));
        assert_eq!(store.current_revision().await.unwrap(), 4);
    }

    #[tokio::test]
    async fn corruption_in_the_middle_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path());
            for key in ["/m/1", "/m/2", "/m/3"] {
                store.create(key, b(key)).await.unwrap();
            }
        }
        let wal = dir.path().join("wal");
        let mut bytes = std::fs::read(&wal).unwrap();
        bytes[12] ^= 0xff; // inside the first record's payload
        std::fs::write(&wal, bytes).unwrap();
        assert!(matches!(
            EmbeddedStore::open(dir.path()),
            Err(StoreError::Corrupt(_))
        ));
    }

    /// Writes `/d/1`..`/d/5` and returns the log's record boundaries.
    async fn five_records(dir: &std::path::Path) -> Vec<usize> {
        let store = open(dir);
        let mut ends = vec![0];
        for i in 1..=5 {
            store.create(&format!("/d/{i}"), b("v")).await.unwrap();
            ends.push(std::fs::metadata(dir.join("wal")).unwrap().len() as usize);
        }
        ends
    }

    async fn keys(store: &EmbeddedStore) -> Vec<String> {
        let list = store.list("/d/", None).await.unwrap();
        list.kvs.into_iter().map(|kv| kv.key).collect()
    }

    #[tokio::test]
    async fn damaged_length_in_the_middle_stops_the_store_until_repaired() {
        for bad_len in [u32::MAX, 0, 7_000, 20] {
            let dir = tempfile::tempdir().unwrap();
            let ends = five_records(dir.path()).await;
            let wal = dir.path().join("wal");
            let mut bytes = std::fs::read(&wal).unwrap();
            // The length field of the third record (revision 4).
            bytes[ends[2]..ends[2] + 4].copy_from_slice(&bad_len.to_le_bytes());
            std::fs::write(&wal, &bytes).unwrap();

            let err = EmbeddedStore::open(dir.path()).unwrap_err();
            let message = err.to_string();
            assert!(matches!(err, StoreError::Corrupt(_)), "{message}");
            assert!(message.contains(&wal.display().to_string()), "{message}");
            assert!(message.contains(&format!("byte {}", ends[2])), "{message}");
            assert!(message.contains("--embedded-repair"), "{message}");
            // Refusing must not touch the log.
            assert_eq!(std::fs::read(&wal).unwrap(), bytes);

            let repair = EmbeddedOptions {
                repair: true,
                ..EmbeddedOptions::default()
            };
            let store = EmbeddedStore::open_with(dir.path(), repair.clone()).unwrap();
            let report = store.repair_report().expect("a repair report").clone();
            assert_eq!(keys(&store).await, ["/d/1", "/d/2"], "length {bad_len}");
            assert_eq!(report.damage_offset, ends[2]);
            assert_eq!(report.kept_records, 2);
            assert_eq!(report.dropped_records, 2, "{report}");
            assert_eq!(report.dropped_revisions, Some((5, 6)), "{report}");
            assert_eq!(std::fs::read(&report.damaged_copy).unwrap(), bytes);
            let kv = store.create("/d/new", b("n")).await.unwrap();
            assert_eq!(kv.mod_revision, 4);
            drop(store);
            // The repaired log opens without the flag, and a second repair has nothing to do.
            let store = open(dir.path());
            assert_eq!(keys(&store).await, ["/d/1", "/d/2", "/d/new"]);
            drop(store);
            let store = EmbeddedStore::open_with(dir.path(), repair).unwrap();
            assert!(store.repair_report().is_none());
        }
    }

    #[tokio::test]
    async fn zero_filled_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let ends = five_records(dir.path()).await;
        let wal = dir.path().join("wal");
        let intact = std::fs::read(&wal).unwrap();
        // Preallocated blocks after a power loss: zeros after the last record, and zeros
        // over the second half of a last record that was never acknowledged.
        let all = ["/d/1", "/d/2", "/d/3", "/d/4", "/d/5"];
        for (damaged, expected) in [
            ([intact.clone(), vec![0; 8192]].concat(), &all[..]),
            (
                [&intact[..ends[4] + 10], &[0; 4096][..]].concat(),
                &all[..4],
            ),
        ] {
            std::fs::write(&wal, &damaged).unwrap();
            let store = open(dir.path());
            assert_eq!(keys(&store).await, expected);
            drop(store);
            let kept = std::fs::metadata(&wal).unwrap().len() as usize;
            assert_eq!(
                kept,
                ends[expected.len()],
                "the zeros are cut from the file"
            );
        }
    }

    #[tokio::test]
    async fn oversized_values_are_refused_and_later_writes_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path());
            // Past the log's 1 GiB record bound: before this was checked, such a write was
            // acknowledged and then read back as a torn tail, cutting off every later write.
            // (Zeroed memory is never touched: the size alone refuses it.)
            let huge = Bytes::from(vec![0u8; 1 << 30]);
            match store.create("/o/huge", huge).await {
                Err(StoreError::TooLarge { size, limit, .. }) => {
                    assert_eq!(size, 1 << 30);
                    assert!(limit < 1 << 30);
                }
                other => panic!("expected TooLarge, got {other:?}"),
            }
            store.create("/o/after", b("kept")).await.unwrap();
        }
        let store = open(dir.path());
        assert_eq!(
            store.get("/o/after").await.unwrap().unwrap().value,
            b("kept")
        );

        let dir = tempfile::tempdir().unwrap();
        let options = EmbeddedOptions {
            max_value_bytes: 1000,
            ..EmbeddedOptions::default()
        };
        let store = EmbeddedStore::open_with(dir.path(), options.clone()).unwrap();
        let kv = store
            .create("/o/a", Bytes::from(vec![b'a'; 1000]))
            .await
            .unwrap();
        assert!(matches!(
            store.create("/o/b", Bytes::from(vec![b'b'; 1001])).await,
            Err(StoreError::TooLarge {
                size: 1001,
                limit: 1000,
                ..
            })
        ));
        assert!(matches!(
            store
                .update("/o/a", Bytes::from(vec![b'a'; 1001]), kv.mod_revision)
                .await,
            Err(StoreError::TooLarge { .. })
        ));
        // Refused writes take no revision and leave nothing behind.
        assert_eq!(store.current_revision().await.unwrap(), kv.mod_revision);
        let after = store.create("/o/c", b("c")).await.unwrap();
        drop(store);
        let store = EmbeddedStore::open_with(dir.path(), options).unwrap();
        assert_eq!(store.get("/o/c").await.unwrap().unwrap(), after);
        assert!(store.get("/o/b").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn snapshot_then_restart_keeps_state_and_history() {
        let dir = tempfile::tempdir().unwrap();
        let options = EmbeddedOptions {
            snapshot_min_log_bytes: 32 << 10,
            ..EmbeddedOptions::default()
        };
        let value = Bytes::from(vec![b'v'; 1000]);
        let (before, compacted_at, history_before) = {
            let store = EmbeddedStore::open_with(dir.path(), options.clone()).unwrap();
            let mut kvs = Vec::new();
            for i in 0..4 {
                kvs.push(
                    store
                        .create(&format!("/s/{i}"), value.clone())
                        .await
                        .unwrap(),
                );
            }
            // Rewrites make the log mostly dead data, which is what triggers a snapshot.
            for round in 0..40 {
                for kv in kvs.iter_mut() {
                    let mut v = value.to_vec();
                    v[0] = b'0' + (round % 10) as u8;
                    *kv = store
                        .update(&kv.key, v.into(), kv.mod_revision)
                        .await
                        .unwrap();
                }
                if round == 20 {
                    let rev = store.current_revision().await.unwrap();
                    store.compact(rev - 2).await.unwrap();
                }
            }
            // The automatic trigger: the log outgrew twice the live data after compaction.
            assert!(
                dir.path().join("snapshot").exists(),
                "no snapshot was written automatically"
            );
            store.delete("/s/3", None).await.unwrap();
            let compacted_at = store.current_revision().await.unwrap() - 30;
            store.compact(compacted_at).await.unwrap();
            let mut history = Vec::new();
            let mut stream = store.watch("/s/", compacted_at - 1).await.unwrap();
            let now = store.current_revision().await.unwrap();
            for _ in compacted_at..=now {
                let e = next_event(&mut stream).await;
                history.push((e.kind, e.kv, e.prev));
            }
            // The oldest retained event must keep its previous value across the snapshot,
            // although compaction dropped that version from the index.
            assert!(history[0].2.is_some());
            store.snapshot().await.unwrap();
            assert_eq!(
                std::fs::metadata(dir.path().join("wal")).unwrap().len(),
                0,
                "a forced snapshot empties the log"
            );
            // Writes after the snapshot live only in the log and are replayed on top of it.
            for kv in kvs.iter_mut().take(2) {
                *kv = store
                    .update(&kv.key, b("tail"), kv.mod_revision)
                    .await
                    .unwrap();
            }
            let mut stream = store.watch("/s/", compacted_at - 1).await.unwrap();
            let now = store.current_revision().await.unwrap();
            let mut full_history = Vec::new();
            for _ in compacted_at..=now {
                let e = next_event(&mut stream).await;
                full_history.push((e.kind, e.kv, e.prev));
            }
            assert_eq!(full_history[..history.len()], history[..]);
            (
                store.list("", None).await.unwrap(),
                compacted_at,
                full_history,
            )
        };
        let store = EmbeddedStore::open_with(dir.path(), options).unwrap();
        let after = store.list("", None).await.unwrap();
        assert_eq!(after.revision, before.revision);
        assert_eq!(after.kvs, before.kvs);
        assert!(matches!(
            store.list("", Some(compacted_at - 1)).await,
            Err(StoreError::Compacted { .. })
        ));
        let mut stream = store.watch("/s/", compacted_at - 1).await.unwrap();
        let mut history_after = Vec::new();
        for _ in 0..history_before.len() {
            let e = next_event(&mut stream).await;
            history_after.push((e.kind, e.kv, e.prev));
        }
        assert_eq!(history_after, history_before);
        let next = store.create("/s/new", b("n")).await.unwrap();
        assert_eq!(next.mod_revision, before.revision + 1);
    }

    #[tokio::test]
    async fn lagging_watcher_gets_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let options = EmbeddedOptions {
            watch_buffer: 2,
            ..EmbeddedOptions::default()
        };
        let store = EmbeddedStore::open_with(dir.path(), options).unwrap();
        let mut stream = store.watch("/", 1).await.unwrap();
        for i in 0..10 {
            store.create(&format!("/l/{i}"), b("x")).await.unwrap();
        }
        match tokio::time::timeout(PATIENCE, stream.next()).await.unwrap() {
            Some(Err(StoreError::Unavailable(_))) => {}
            other => panic!("expected Unavailable, got {other:?}"),
        }
        assert!(stream.next().await.is_none());
        // Resuming from the last revision seen replays from history.
        let mut resumed = store.watch("/", 1).await.unwrap();
        assert_eq!(next_event(&mut resumed).await.kv.key, "/l/0");
    }
}

// ---- etcd-only: surviving an etcd restart ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_restart_under_live_store() {
    let mut etcd = EtcdProcess::start().await.unwrap();
    let store = EtcdStore::connect(&[etcd.endpoint()]).await.unwrap();
    let first = store.create("/e/a", b("1")).await.unwrap();
    let mut stream = store.watch("/e/", 1).await.unwrap();
    let last_seen = next_event(&mut stream).await.revision();
    assert_eq!(last_seen, first.mod_revision);

    etcd.stop().unwrap();
    match store.get("/e/a").await {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("expected Unavailable while etcd is down, got {other:?}"),
    }
    // The live watch ends (or fails) instead of hanging silently.
    match tokio::time::timeout(PATIENCE, stream.next()).await.unwrap() {
        None | Some(Err(StoreError::Unavailable(_))) => {}
        other => panic!("expected the watch to end, got {other:?}"),
    }

    etcd.restart().await.unwrap();
    let updated = || async {
        match store.update("/e/a", b("2"), first.mod_revision).await {
            Ok(kv) => Ok(Some(kv)),
            Err(StoreError::Unavailable(e)) => {
                tracing::debug!(%e, "etcd not back yet");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    };
    let second = rkube_testkit::try_poll(rkube_testkit::POLL_INTERVAL, PATIENCE, updated, || {
        StoreError::Unavailable("still unavailable after the patience ran out".into())
    })
    .await
    .unwrap_or_else(|e| panic!("store did not recover after etcd restart: {e:?}"));
    let third = store.create("/e/b", b("3")).await.unwrap();
    assert_eq!(store.get("/e/a").await.unwrap().unwrap(), second);

    let mut resumed = store.watch("/e/", last_seen).await.unwrap();
    let e = next_event(&mut resumed).await;
    assert_eq!(e.revision(), last_seen + 1);
    assert_eq!(e.kv, second);
    assert_eq!(e.prev, Some(first));
    let e = next_event(&mut resumed).await;
    assert_eq!(e.kv, third);
}
