//! API server benchmark (issue #2). Starts the real `rkube-apiserver` binary as a child
//! process on each backend and measures, in one run, against a same-run baseline:
//! - create throughput of pods through the API vs raw store writes of the same bytes
//!   at the same concurrency (ratio);
//! - p50/p99 latency of create and get;
//! - list of 10,000 pods (p50/p99);
//! - 100 watchers each receiving every event of 10,000 writes (events/s, server RSS);
//! - RSS of the idle server with 10,000 pods stored.
//!
//! The raw-store baseline is rkube-store's `raw_creates` example, a process of its own as
//! the store is inside the API server's.
//!
//! Usage: `cargo build --release -p rkube-apiserver -p rkube-bench -p rkube-store --example
//! raw_creates && ./target/release/bench-apiserver [--pods N]`

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Bytes;
use clap::Parser;
use futures::StreamExt;
use rkube_bench::components::{ApiServer, BinDirFlag, Binaries, Binary, Storage};
use rkube_bench::procfs::{mib, rss_kib, PeakRssSampler};
use rkube_bench::stats::{run_concurrent, Summary};
use rkube_bench::{create_namespace, machine_summary};
use rkube_testkit::etcd::EtcdProcess;

/// API server throughput, latency, watch fan-out and RSS, against raw store writes.
#[derive(Parser, Debug)]
struct Flags {
    /// Pods created in the throughput phase (also the number stored for list/RSS).
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    /// Concurrent clients for creates (same for the raw-store baseline).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Watchers in the fan-out phase.
    #[arg(long, default_value_t = 100)]
    watchers: usize,
    /// Writes observed by the watchers.
    #[arg(long, default_value_t = 10_000)]
    watch_writes: usize,
    /// List requests timed.
    #[arg(long, default_value_t = 30)]
    lists: usize,
    #[command(flatten)]
    bin_dir: BinDirFlag,
    /// Only this backend (embedded or etcd).
    #[arg(long)]
    backend: Option<String>,
}

fn pod_json(namespace: &str, name: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app": "bench", "tier": "backend", "pod-template-hash": "5d4f8c7b9"},
            "annotations": {"bench.rkube.io/purpose": "throughput measurement of the API server create path"}
        },
        "spec": {
            "containers": [{
                "name": "app",
                "image": "registry.local/bench/app:1.2.3",
                "command": ["/bin/app", "--listen", ":8080", "--log-level", "info"],
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                "env": [{"name": "MODE", "value": "bench"}, {"name": "REPLICA", "value": name}],
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "128Mi"}},
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 5},
                "volumeMounts": [{"name": "config", "mountPath": "/etc/app"}]
            }],
            "volumes": [{"name": "config", "configMap": {"name": "app-config"}}],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30
        }
    })
}

async fn bench_backend(flags: &Flags, binaries: &Binaries, backend: &str) -> anyhow::Result<()> {
    println!("\n== backend: {backend} ==");
    let etcd = if backend == "etcd" {
        Some(EtcdProcess::start().await?)
    } else {
        None
    };
    let storage = match &etcd {
        Some(etcd) => Storage::Etcd(etcd.endpoint()),
        None => Storage::Embedded,
    };

    // Baseline: the same bytes written straight to the same kind of store, same concurrency.
    let scratch = tempfile::tempdir()?;
    let sample = serde_json::to_vec(&pod_json("bench", "pod-0"))?;
    let raw_rate = binaries
        .raw_store_creates(
            &storage,
            scratch.path(),
            &sample,
            flags.pods,
            flags.concurrency,
        )
        .await?;

    let server = ApiServer::start(binaries, &storage).await?;
    let url = server.url().to_string();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(flags.concurrency * 2)
        .build()?;
    create_namespace(&client, &url, "bench").await?;
    let bodies: Arc<Vec<Bytes>> = Arc::new(
        (0..flags.pods)
            .map(|i| serde_json::to_vec(&pod_json("bench", &format!("pod-{i}"))).map(Bytes::from))
            .collect::<Result<_, _>>()?,
    );
    let (c, u, b) = (client.clone(), url.clone(), bodies.clone());
    let creates = run_concurrent(flags.pods, flags.concurrency, move |i| {
        let (c, url, body) = (c.clone(), u.clone(), b[i].clone());
        async move {
            let started = Instant::now();
            let r = c
                .post(format!("{url}/api/v1/namespaces/bench/pods"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await?;
            if r.status() != reqwest::StatusCode::CREATED {
                bail!("create: {} {}", r.status(), r.text().await?);
            }
            Ok(started.elapsed())
        }
    })
    .await?;
    let api_rate = creates.rate();
    println!(
        "create throughput: API {:.0} pods/s vs raw store {:.0} writes/s (concurrency {}) -> ratio {:.2}",
        api_rate,
        raw_rate,
        flags.concurrency,
        api_rate / raw_rate
    );
    println!(
        "create latency: {} (concurrency {})",
        creates.summary().line(),
        flags.concurrency
    );

    // GET latency, sequential, random names.
    let mut get_latencies = Vec::new();
    for i in 0..2000usize {
        let name = format!("pod-{}", (i * 7919) % flags.pods);
        let started = Instant::now();
        let r = client
            .get(format!("{url}/api/v1/namespaces/bench/pods/{name}"))
            .send()
            .await?;
        let ok = r.status().is_success();
        r.bytes().await?;
        get_latencies.push(started.elapsed());
        if !ok {
            bail!("get {name} failed");
        }
    }
    println!(
        "get latency: {} (sequential)",
        Summary::of(get_latencies).line()
    );

    // List of every pod.
    let mut list_latencies = Vec::new();
    for _ in 0..flags.lists {
        let started = Instant::now();
        let r = client
            .get(format!("{url}/api/v1/namespaces/bench/pods"))
            .send()
            .await?;
        let body = r.bytes().await?;
        list_latencies.push(started.elapsed());
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        let n = v["items"].as_array().map(Vec::len).unwrap_or(0);
        if n != flags.pods {
            bail!("list returned {n} pods, expected {}", flags.pods);
        }
    }
    println!(
        "list of {} pods: {} ({} lists, body decoded by the client)",
        flags.pods,
        Summary::of(list_latencies).line(),
        flags.lists
    );

    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "idle RSS with {} pods stored: {:.1} MiB",
        flags.pods,
        mib(rss_kib(server.pid())?)
    );

    // Watch fan-out: watchers on a fresh namespace, then writes there.
    create_namespace(&client, &url, "watch").await?;
    let received = Arc::new(AtomicUsize::new(0));
    let mut watchers = Vec::new();
    let target = flags.watch_writes;
    for _ in 0..flags.watchers {
        let c = client.clone();
        let watch_url = format!("{url}/api/v1/namespaces/watch/pods?watch=true&resourceVersion=0");
        let received = received.clone();
        watchers.push(tokio::spawn(async move {
            let resp = c.get(watch_url).send().await?;
            let mut stream = resp.bytes_stream();
            let mut seen = 0usize;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                let lines = chunk.iter().filter(|b| **b == b'\n').count();
                seen += lines;
                received.fetch_add(lines, Ordering::Relaxed);
                if seen >= target {
                    break;
                }
            }
            anyhow::Ok(seen)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sampler = PeakRssSampler::start(server.pid(), Duration::from_millis(100));
    let (c, u) = (client.clone(), url.clone());
    let started = Instant::now();
    let writes = run_concurrent(flags.watch_writes, flags.concurrency, move |i| {
        let (c, url) = (c.clone(), u.clone());
        async move {
            let write_started = Instant::now();
            let body = serde_json::to_vec(&pod_json("watch", &format!("w-{i}")))?;
            let r = c
                .post(format!("{url}/api/v1/namespaces/watch/pods"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await?;
            if !r.status().is_success() {
                bail!("create: {}", r.status());
            }
            Ok(write_started.elapsed())
        }
    })
    .await?;
    let mut total_seen = 0;
    for w in watchers {
        total_seen += tokio::time::timeout(Duration::from_secs(300), w).await???;
    }
    let fanout_wall = started.elapsed();
    let peak = sampler.stop();
    let expected = flags.watchers * flags.watch_writes;
    println!(
        "watch fan-out: {} watchers x {} writes: {} of {} events delivered in {:.2} s -> {:.0} events/s (writes took {:.2} s); peak server RSS {:.1} MiB",
        flags.watchers,
        flags.watch_writes,
        total_seen,
        expected,
        fanout_wall.as_secs_f64(),
        total_seen as f64 / fanout_wall.as_secs_f64(),
        writes.wall.as_secs_f64(),
        mib(peak)
    );
    if total_seen != expected {
        bail!("watchers missed events: {total_seen} of {expected}");
    }
    drop(server);
    drop(etcd);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    let binaries = Binaries::require(
        &flags.bin_dir,
        &[Binary::ApiServer, Binary::RawStoreCreates],
    )?;
    println!(
        "rkube-apiserver benchmark: {} pods, concurrency {}, {} watchers x {} writes, {}",
        flags.pods,
        flags.concurrency,
        flags.watchers,
        flags.watch_writes,
        machine_summary()
    );
    for backend in ["embedded", "etcd"] {
        if flags.backend.as_deref().is_some_and(|b| b != backend) {
            continue;
        }
        bench_backend(&flags, &binaries, backend).await?;
    }
    Ok(())
}
