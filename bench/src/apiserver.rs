//! API server benchmark (issue #2). Starts the real `rkube-apiserver` binary as a child
//! process on each backend and measures, in one run, against a same-run baseline:
//! - create throughput of pods through the API vs raw store writes of the same bytes
//!   at the same concurrency (ratio);
//! - p50/p99 latency of create and get;
//! - list of 10,000 pods (p50/p99);
//! - 100 watchers each receiving every event of 10,000 writes (events/s, server RSS);
//! - RSS of the idle server with 10,000 pods stored.
//!
//! Usage: `cargo run --release -p rkube-bench --bin bench-apiserver -- [--pods N]`
//! (expects `target/release/rkube-apiserver`; build it first).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use futures::StreamExt;
use rkube_store::Store;
use rkube_testkit::etcd::EtcdProcess;

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
    /// Path of the rkube-apiserver binary.
    #[arg(long, default_value = "target/release/rkube-apiserver")]
    apiserver: PathBuf,
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

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix("VmRSS:") {
            return Ok(rest.trim().trim_end_matches("kB").trim().parse()?);
        }
    }
    bail!("no VmRSS for pid {pid}")
}

struct Server {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(binary: &PathBuf, etcd: Option<&str>) -> anyhow::Result<Server> {
        let dir = tempfile::tempdir()?;
        let port = rkube_testkit::free_port()?;
        let mut cmd = Command::new(binary);
        cmd.arg("--port")
            .arg(port.to_string())
            .arg("--data-dir")
            .arg(dir.path().join("data"));
        if let Some(e) = etcd {
            cmd.arg("--etcd-servers").arg(e);
        }
        cmd.env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let url = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = client.get(format!("{url}/readyz")).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            if Instant::now() > deadline {
                bail!("API server did not become ready");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Server {
            child,
            url,
            _dir: dir,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn create_namespace(client: &reqwest::Client, url: &str, name: &str) -> anyhow::Result<()> {
    let body =
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
    let r = client
        .post(format!("{url}/api/v1/namespaces"))
        .json(&body)
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("creating namespace {name}: {}", r.text().await?);
    }
    Ok(())
}

/// Runs `total` operations with `concurrency` workers; returns wall time and per-op latencies.
async fn run_concurrent<F, Fut>(
    total: usize,
    concurrency: usize,
    op: F,
) -> anyhow::Result<(Duration, Vec<Duration>)>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let op = op.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let t = Instant::now();
                op(i).await?;
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::with_capacity(total);
    for t in tasks {
        all.extend(t.await??);
    }
    let wall = started.elapsed();
    all.sort();
    Ok((wall, all))
}

async fn bench_backend(flags: &Flags, backend: &str) -> anyhow::Result<()> {
    println!("\n== backend: {backend} ==");
    let etcd = if backend == "etcd" {
        Some(EtcdProcess::start().await?)
    } else {
        None
    };
    let endpoint = etcd.as_ref().map(|e| e.endpoint());

    // Baseline: the same bytes written straight to the same kind of store, same concurrency.
    let raw_dir = tempfile::tempdir()?;
    let raw: Arc<dyn Store> = match &endpoint {
        Some(e) => Arc::new(rkube_store::etcd::EtcdStore::connect(std::slice::from_ref(e)).await?),
        None => Arc::new(rkube_store::embedded::EmbeddedStore::open(raw_dir.path())?),
    };
    let sample = Bytes::from(serde_json::to_vec(&pod_json("bench", "pod-0"))?);
    let raw_store = raw.clone();
    let (raw_wall, _) = run_concurrent(flags.pods, flags.concurrency, move |i| {
        let store = raw_store.clone();
        let value = sample.clone();
        async move {
            store
                .create(&format!("/raw/pods/bench/pod-{i}"), value)
                .await?;
            Ok(())
        }
    })
    .await?;
    let raw_rate = flags.pods as f64 / raw_wall.as_secs_f64();
    drop(raw);

    let server = Server::start(&flags.apiserver, endpoint.as_deref()).await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(flags.concurrency * 2)
        .build()?;
    create_namespace(&client, &server.url, "bench").await?;
    let bodies: Arc<Vec<Bytes>> = Arc::new(
        (0..flags.pods)
            .map(|i| serde_json::to_vec(&pod_json("bench", &format!("pod-{i}"))).map(Bytes::from))
            .collect::<Result<_, _>>()?,
    );
    let url = server.url.clone();
    let c = client.clone();
    let b = bodies.clone();
    let (api_wall, create_lat) = run_concurrent(flags.pods, flags.concurrency, move |i| {
        let (c, url, body) = (c.clone(), url.clone(), b[i].clone());
        async move {
            let r = c
                .post(format!("{url}/api/v1/namespaces/bench/pods"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await?;
            if r.status() != reqwest::StatusCode::CREATED {
                bail!("create: {} {}", r.status(), r.text().await?);
            }
            Ok(())
        }
    })
    .await?;
    let api_rate = flags.pods as f64 / api_wall.as_secs_f64();
    println!(
        "create throughput: API {:.0} pods/s vs raw store {:.0} writes/s (concurrency {}) -> ratio {:.2}",
        api_rate,
        raw_rate,
        flags.concurrency,
        api_rate / raw_rate
    );
    println!(
        "create latency: p50 {} p99 {} (concurrency {})",
        ms(percentile(&create_lat, 0.5)),
        ms(percentile(&create_lat, 0.99)),
        flags.concurrency
    );

    // GET latency, sequential, random names.
    let mut get_lat = Vec::new();
    for i in 0..2000usize {
        let name = format!("pod-{}", (i * 7919) % flags.pods);
        let t = Instant::now();
        let r = client
            .get(format!(
                "{}/api/v1/namespaces/bench/pods/{name}",
                server.url
            ))
            .send()
            .await?;
        let ok = r.status().is_success();
        r.bytes().await?;
        get_lat.push(t.elapsed());
        if !ok {
            bail!("get {name} failed");
        }
    }
    get_lat.sort();
    println!(
        "get latency: p50 {} p99 {} (sequential)",
        ms(percentile(&get_lat, 0.5)),
        ms(percentile(&get_lat, 0.99))
    );

    // List of every pod.
    let mut list_lat = Vec::new();
    for _ in 0..flags.lists {
        let t = Instant::now();
        let r = client
            .get(format!("{}/api/v1/namespaces/bench/pods", server.url))
            .send()
            .await?;
        let body = r.bytes().await?;
        list_lat.push(t.elapsed());
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        let n = v["items"].as_array().map(Vec::len).unwrap_or(0);
        if n != flags.pods {
            bail!("list returned {n} pods, expected {}", flags.pods);
        }
    }
    list_lat.sort();
    println!(
        "list of {} pods: p50 {} p99 {} ({} lists, body decoded by the client)",
        flags.pods,
        ms(percentile(&list_lat, 0.5)),
        ms(percentile(&list_lat, 0.99)),
        flags.lists
    );

    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "idle RSS with {} pods stored: {:.1} MiB",
        flags.pods,
        rss_kib(server.pid())? as f64 / 1024.0
    );

    // Watch fan-out: watchers on a fresh namespace, then writes there.
    create_namespace(&client, &server.url, "watch").await?;
    let received = Arc::new(AtomicUsize::new(0));
    let mut watchers = Vec::new();
    let target = flags.watch_writes;
    for _ in 0..flags.watchers {
        let c = client.clone();
        let url = format!(
            "{}/api/v1/namespaces/watch/pods?watch=true&resourceVersion=0",
            server.url
        );
        let received = received.clone();
        watchers.push(tokio::spawn(async move {
            let resp = c.get(url).send().await?;
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
    let peak = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let peak = peak.clone();
        let pid = server.pid();
        tokio::spawn(async move {
            loop {
                if let Ok(kib) = rss_kib(pid) {
                    peak.fetch_max(kib as usize, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let url = server.url.clone();
    let c = client.clone();
    let started = Instant::now();
    let (write_wall, _) = run_concurrent(flags.watch_writes, flags.concurrency, move |i| {
        let (c, url) = (c.clone(), url.clone());
        async move {
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
            Ok(())
        }
    })
    .await?;
    let mut total_seen = 0;
    for w in watchers {
        total_seen += tokio::time::timeout(Duration::from_secs(300), w).await???;
    }
    let fanout_wall = started.elapsed();
    sampler.abort();
    let expected = flags.watchers * flags.watch_writes;
    println!(
        "watch fan-out: {} watchers x {} writes: {} of {} events delivered in {:.2} s -> {:.0} events/s (writes took {:.2} s); peak server RSS {:.1} MiB",
        flags.watchers,
        flags.watch_writes,
        total_seen,
        expected,
        fanout_wall.as_secs_f64(),
        total_seen as f64 / fanout_wall.as_secs_f64(),
        write_wall.as_secs_f64(),
        peak.load(Ordering::Relaxed) as f64 / 1024.0
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
    if !flags.apiserver.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p rkube-apiserver`",
            flags.apiserver.display()
        );
    }
    println!(
        "rkube-apiserver benchmark: {} pods, concurrency {}, {} watchers x {} writes, {} CPUs",
        flags.pods,
        flags.concurrency,
        flags.watchers,
        flags.watch_writes,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    for backend in ["embedded", "etcd"] {
        if flags.backend.as_deref().is_some_and(|b| b != backend) {
            continue;
        }
        bench_backend(&flags, backend).await?;
    }
    Ok(())
}
