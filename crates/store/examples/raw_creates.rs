//! Raw create throughput of one backend, for a benchmark's same-run baseline: `count`
//! creates of the same value under distinct keys, `concurrency` in flight, each worker
//! starting its next create when its last one is done. It runs as a process of its own, as
//! the store does inside the API server, so benchmarks need not link the store.
//!
//! `raw_creates (--data-dir DIR | --etcd ENDPOINT) --count N --concurrency C --value-file F`
//! prints `writes_per_second <rate>`. A missing or malformed flag exits with status 2.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use rkube_store::embedded::EmbeddedStore;
use rkube_store::etcd::EtcdStore;
use rkube_store::Store;

const USAGE: &str = "usage: raw_creates (--data-dir DIR | --etcd ENDPOINT) --count N \
                     --concurrency C --value-file FILE";

enum Backend {
    Embedded(PathBuf),
    Etcd(String),
}

struct Args {
    backend: Backend,
    count: usize,
    concurrency: usize,
    value: Bytes,
}

fn parse_args() -> Result<Args, String> {
    let mut backend = None;
    let mut count = None;
    let mut concurrency = None;
    let mut value = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value_of = |v: Option<String>| v.ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--data-dir" => backend = Some(Backend::Embedded(value_of(args.next())?.into())),
            "--etcd" => backend = Some(Backend::Etcd(value_of(args.next())?)),
            "--count" => count = Some(value_of(args.next())?),
            "--concurrency" => concurrency = Some(value_of(args.next())?),
            "--value-file" => {
                let path = value_of(args.next())?;
                let bytes = std::fs::read(&path).map_err(|e| format!("reading {path}: {e}"))?;
                value = Some(Bytes::from(bytes));
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    let number = |v: Option<String>, flag: &str| -> Result<usize, String> {
        v.ok_or(format!("{flag} is required"))?
            .parse()
            .map_err(|e| format!("{flag}: {e}"))
    };
    Ok(Args {
        backend: backend.ok_or("--data-dir or --etcd is required")?,
        count: number(count, "--count")?,
        concurrency: number(concurrency, "--concurrency")?.max(1),
        value: value.ok_or("--value-file is required")?,
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("raw_creates: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let store: Arc<dyn Store> = match &args.backend {
        Backend::Embedded(dir) => Arc::new(EmbeddedStore::open(dir)?),
        Backend::Etcd(endpoint) => {
            Arc::new(EtcdStore::connect(std::slice::from_ref(endpoint)).await?)
        }
    };
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (store, next, value) = (store.clone(), next.clone(), args.value.clone());
            let count = args.count;
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return Ok::<(), rkube_store::StoreError>(());
                    }
                    store
                        .create(&format!("/raw/pods/bench/pod-{i}"), value.clone())
                        .await?;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!("writes_per_second {}", args.count as f64 / seconds);
    Ok(())
}
