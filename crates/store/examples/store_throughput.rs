//! Rough create throughput of both backends, and the embedded store's memory for 10,000
//! objects (each with its own buffer, as the API server would produce). A measurement to read, not a test: `cargo run -p rkube-store --example
//! store_throughput [count]`.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use rkube_store::embedded::EmbeddedStore;
use rkube_store::etcd::EtcdStore;
use rkube_store::Store;
use rkube_testkit::etcd::EtcdProcess;

const VALUE_BYTES: usize = 1536;
const CONCURRENCY: usize = 32;

async fn sequential(store: &dyn Store, prefix: &str, count: usize, value: &Bytes) -> f64 {
    let start = Instant::now();
    for i in 0..count {
        store
            .create(&format!("{prefix}/{i:08}"), Bytes::copy_from_slice(value))
            .await
            .unwrap();
    }
    count as f64 / start.elapsed().as_secs_f64()
}

async fn concurrent(store: Arc<dyn Store>, prefix: &str, count: usize, value: &Bytes) -> f64 {
    let start = Instant::now();
    let per_task = count / CONCURRENCY;
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|t| {
            let store = store.clone();
            let value = value.clone();
            let prefix = prefix.to_string();
            tokio::spawn(async move {
                for i in 0..per_task {
                    store
                        .create(
                            &format!("{prefix}/{t:02}-{i:08}"),
                            Bytes::copy_from_slice(&value),
                        )
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    (per_task * CONCURRENCY) as f64 / start.elapsed().as_secs_f64()
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

#[tokio::main]
async fn main() {
    let count: usize = std::env::args()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(2000);
    let value = Bytes::from(vec![b'x'; VALUE_BYTES]);
    // Set TMPDIR to a real disk if /tmp is a tmpfs, or fsync costs nothing.
    let scratch = tempfile::tempdir().unwrap();

    let before = rss_bytes();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&scratch.path().join("m")).unwrap());
    concurrent(store.clone(), "/registry/pods/default", 10_016, &value).await;
    let after = rss_bytes();
    println!(
        "embedded memory for 10,000 x {VALUE_BYTES} B objects: RSS +{:.1} MiB (values alone {:.1} MiB)",
        (after.saturating_sub(before)) as f64 / (1 << 20) as f64,
        (10_000 * VALUE_BYTES) as f64 / (1 << 20) as f64
    );
    drop(store);
    let embedded: Arc<dyn Store> =
        Arc::new(EmbeddedStore::open(&scratch.path().join("a")).unwrap());
    let seq = sequential(embedded.as_ref(), "/seq", count, &value).await;
    let conc = concurrent(embedded.clone(), "/conc", count, &value).await;
    println!("embedded: sequential {seq:.0} creates/s, {CONCURRENCY}-way {conc:.0} creates/s");
    drop(embedded);

    let etcd = EtcdProcess::start().await.unwrap();
    let store: Arc<dyn Store> = Arc::new(EtcdStore::connect(&[etcd.endpoint()]).await.unwrap());
    let seq_etcd = sequential(store.as_ref(), "/seq", count, &value).await;
    let conc_etcd = concurrent(store.clone(), "/conc", count, &value).await;
    println!(
        "etcd:     sequential {seq_etcd:.0} creates/s, {CONCURRENCY}-way {conc_etcd:.0} creates/s"
    );
    println!(
        "ratio embedded/etcd: sequential {:.2}x, {CONCURRENCY}-way {:.2}x",
        seq / seq_etcd,
        conc / conc_etcd
    );
    drop(store);
    drop(etcd);

    let reopen_start = Instant::now();
    let store = EmbeddedStore::open(&scratch.path().join("m")).unwrap();
    println!(
        "embedded reopen of 10,000 objects: {:.0} ms, revision {}",
        reopen_start.elapsed().as_secs_f64() * 1000.0,
        store.current_revision().await.unwrap()
    );
}
