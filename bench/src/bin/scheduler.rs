//! Scheduler benchmark (issue #3): pods bound per second, end to end through the API
//! server, on simulated nodes, next to the API server's raw pod-create throughput measured
//! in the same run on the same server.
//!
//! Phases: (1) the real `rkube-apiserver` binary as a child process (embedded store);
//! (2) baseline: create `--pods` pods that no scheduler owns, at `--concurrency`;
//! (3) register `--nodes` simulated nodes (in this process); (4) create `--pods` pending
//! pods with no scheduler running; (5) start the real `rkube-scheduler` binary and time
//! until the watch has seen every one of them bound. The simulated kubelets run throughout,
//! so bound pods are also marked Running, as in a real cluster.
//!
//! Usage: `cargo build --release -p rkube-apiserver -p rkube-scheduler -p rkube-bench &&
//! ./target/release/bench-scheduler [--nodes 1000 --pods 10000]`

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::watcher;
use rkube_bench::components::{ApiServer, BinDirFlag, Binaries, Binary, Storage};
use rkube_bench::kube_client;
use rkube_simnode::{NodeTemplate, SimCluster, SimConfig};
use serde_json::json;

/// Pods bound per second on simulated nodes, against raw pod creates.
#[derive(Parser, Debug)]
struct Flags {
    #[arg(long, default_value_t = 1_000)]
    nodes: usize,
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    /// Concurrent creates, for the baseline and for creating the pending pods.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Scheduler bindings in flight.
    #[arg(long, default_value_t = 64)]
    bind_concurrency: usize,
    /// Do not run simulated kubelets (nodes still exist; pods stay Pending after binding).
    #[arg(long)]
    no_kubelets: bool,
    #[command(flatten)]
    bin_dir: BinDirFlag,
}

fn pod(name: &str, scheduler: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "bench"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "bench",
                "uid": "0b6c1a4e-0000-4000-8000-000000000001", "controller": true}]},
        "spec": {"schedulerName": scheduler, "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10",
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]},
    }))?)
}

/// Creates `count` pods named `<prefix>-<i>` for `scheduler`; the wall time.
async fn create_pods(
    client: &kube::Client,
    prefix: &str,
    count: usize,
    scheduler: &str,
    concurrency: usize,
) -> anyhow::Result<Duration> {
    let (prefix, scheduler) = (prefix.to_string(), scheduler.to_string());
    rkube_bench::create_pods(client, "default", count, concurrency, move |i| {
        pod(&format!("{prefix}-{i}"), &scheduler)
    })
    .await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    let binaries = Binaries::require(&flags.bin_dir, &[Binary::ApiServer, Binary::Scheduler])?;
    println!("scheduler benchmark: {}", rkube_bench::machine_summary());
    let server = ApiServer::start(&binaries, &Storage::Embedded).await?;
    let url = server.url().to_string();
    let client = kube_client(&url)?;

    // Baseline: the same pods, created the same way, that nothing else reacts to.
    let baseline = create_pods(
        &client,
        "baseline",
        flags.pods,
        "bench-nobody",
        flags.concurrency,
    )
    .await?;
    let create_rate = flags.pods as f64 / baseline.as_secs_f64();
    println!(
        "API server pod creates: {} pods in {:.2}s = {create_rate:.0} pods/s (concurrency {})",
        flags.pods,
        baseline.as_secs_f64(),
        flags.concurrency
    );

    let started = Instant::now();
    let template = NodeTemplate {
        cpu: "32".into(),
        memory: "256Gi".into(),
        pods: 110,
        ..NodeTemplate::default()
    };
    let config = SimConfig {
        concurrency: 32,
        simulate_pods: !flags.no_kubelets,
        ..SimConfig::default()
    };
    let nodes = SimCluster::start_with(client.clone(), config, flags.nodes, template).await?;
    println!(
        "registered {} simulated nodes in {:.2}s",
        flags.nodes,
        started.elapsed().as_secs_f64()
    );

    let pending = create_pods(
        &client,
        "sched",
        flags.pods,
        "default-scheduler",
        flags.concurrency,
    )
    .await?;
    println!(
        "created {} pending pods in {:.2}s",
        flags.pods,
        pending.as_secs_f64()
    );

    // Count bindings from a watch on bound pods, started before the scheduler.
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let (synced_tx, synced_rx) = tokio::sync::oneshot::channel::<()>();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Instant>();
    let target = flags.pods;
    let counter = tokio::spawn(async move {
        let mut bound = HashSet::new();
        let mut synced = Some(synced_tx);
        let mut done = Some(done_tx);
        let mut events = watcher(api, watcher::Config::default().fields("spec.nodeName!=")).boxed();
        while let Some(event) = events.next().await {
            let pod = match event {
                Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p)) => p,
                Ok(watcher::Event::InitDone) => {
                    if let Some(tx) = synced.take() {
                        let _ = tx.send(());
                    }
                    continue;
                }
                _ => continue,
            };
            if pod
                .metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("sched-"))
            {
                bound.insert(pod.metadata.name.unwrap_or_default());
                if bound.len() >= target {
                    if let Some(tx) = done.take() {
                        let _ = tx.send(Instant::now());
                    }
                }
            }
        }
    });
    synced_rx.await.context("bound-pod watch ended")?;

    let start = Instant::now();
    let mut scheduler = binaries.start_scheduler(
        &url,
        &[format!("--bind-concurrency={}", flags.bind_concurrency)],
    )?;
    let finished = tokio::time::timeout(Duration::from_secs(600), done_rx)
        .await
        .context("scheduling did not finish in 10 minutes")??;
    let elapsed = finished - start;
    let bind_rate = flags.pods as f64 / elapsed.as_secs_f64();
    println!(
        "scheduler: {} pods bound on {} nodes in {:.2}s = {bind_rate:.0} pods/s (from scheduler start, including its initial list)",
        flags.pods,
        flags.nodes,
        elapsed.as_secs_f64()
    );
    println!(
        "ratio scheduler binds / API server creates: {:.2}",
        bind_rate / create_rate
    );
    let stats = nodes.stats();
    println!(
        "simulated kubelets: {} pods started, {} write errors",
        stats.pods_started, stats.write_errors
    );

    scheduler.stop(Duration::from_secs(10));
    counter.abort();
    nodes.shutdown().await;
    drop(server);
    Ok(())
}
