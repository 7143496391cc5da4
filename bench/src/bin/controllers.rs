//! Controller-manager benchmark (issue #3): a Deployment of `--replicas` pods on
//! `--nodes` simulated nodes, from apply to all ready, then a rolling update (image change)
//! to all updated and ready; the controller manager's CPU seconds and peak RSS are read
//! from /proc, so it runs as its own process.
//!
//! The real release binaries (`rkube-apiserver`, `rkube-scheduler`,
//! `rkube-controller-manager` from `--bin-dir`) run as child processes; only the simulated
//! nodes (SimCluster) run in this process. Same-run baseline: creating the same number of
//! pods directly through the API (no scheduler or controller involved).
//!
//! Usage: `cargo build --release -p rkube-apiserver -p rkube-scheduler
//! -p rkube-controller-manager -p rkube-bench && ./target/release/bench-controllers
//! [--nodes 100 --replicas 1000]`

use std::time::{Duration, Instant};

use clap::Parser;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use rkube_bench::components::{ApiServer, BinDirFlag, Binaries, Binary, Storage};
use rkube_bench::procfs::{cpu_seconds, mib, peak_rss_kib};
use rkube_bench::{kube_client, machine_summary};
use rkube_simnode::{NodeTemplate, SimCluster, SimConfig};
use serde_json::json;

/// A Deployment's apply and rolling update through the real control plane, against raw pod creates.
#[derive(Parser, Debug)]
struct Flags {
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    #[arg(long, default_value_t = 1_000)]
    replicas: i32,
    #[command(flatten)]
    bin_dir: BinDirFlag,
    /// Concurrent creates for the baseline.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// The controller manager's --concurrent-syncs.
    #[arg(long, default_value_t = 5)]
    concurrent_syncs: usize,
    /// The controller manager's --controllers (e.g. `replicaset,deployment` to see what
    /// the other controllers' watches cost).
    #[arg(long, default_value = "*")]
    controllers: String,
}

/// Creates `count` pods in namespace `baseline` that nothing schedules or owns; the wall time.
async fn create_pods_directly(
    client: &kube::Client,
    count: i32,
    concurrency: usize,
) -> anyhow::Result<Duration> {
    rkube_bench::create_pods(client, "baseline", usize::try_from(count)?, concurrency, |i| {
        Ok(serde_json::from_value(json!({
            "metadata": {"name": format!("direct-{i}"), "labels": {"app": "baseline"}},
            // Nobody schedules these: they measure the API alone.
            "spec": {"schedulerName": "none", "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]},
        }))?)
    })
    .await
}

/// Waits until the Deployment has observed its generation and all replicas are updated,
/// ready and available with no old pods left.
async fn wait_rolled_out(api: &Api<Deployment>, replicas: i32) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let d = api.get("bench").await?;
        let s = d.status.clone().unwrap_or_default();
        if s.observed_generation == d.metadata.generation
            && s.replicas == Some(replicas)
            && s.updated_replicas == Some(replicas)
            && s.ready_replicas == Some(replicas)
            && s.available_replicas == Some(replicas)
        {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "deployment not rolled out: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Usage {
    cpu: f64,
    rss: f64,
}

fn usage(pid: u32) -> anyhow::Result<Usage> {
    Ok(Usage {
        cpu: cpu_seconds(pid)?,
        rss: mib(peak_rss_kib(pid)?),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    let binaries = Binaries::require(
        &flags.bin_dir,
        &[
            Binary::ApiServer,
            Binary::Scheduler,
            Binary::ControllerManager,
        ],
    )?;
    println!(
        "controller-manager benchmark: {} replicas on {} simulated nodes, --controllers={}, {}",
        flags.replicas,
        flags.nodes,
        flags.controllers,
        machine_summary()
    );
    let apiserver = ApiServer::start(&binaries, &Storage::Embedded).await?;
    let url = apiserver.url().to_string();
    let client = kube_client(&url)?;
    let namespaces: Api<Namespace> = Api::all(client.clone());

    // Baseline: the same number of pods created directly, then removed again.
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "baseline"}}))?;
    namespaces.create(&PostParams::default(), &ns).await?;
    let direct = create_pods_directly(&client, flags.replicas, flags.concurrency).await?;
    let baseline_pods: Api<Pod> = Api::namespaced(client.clone(), "baseline");
    baseline_pods
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await?;

    let nodes = SimCluster::start_with(
        client.clone(),
        SimConfig::default(),
        flags.nodes,
        NodeTemplate::default(),
    )
    .await?;
    let scheduler = binaries.start_scheduler(&url, &[])?;
    let cm = binaries.start_controller_manager(
        &url,
        &[
            format!("--concurrent-syncs={}", flags.concurrent_syncs),
            format!("--controllers={}", flags.controllers),
        ],
    )?;
    let cm_pid = cm.pid();
    let api_pid = apiserver.pid();
    let scheduler_pid = scheduler.pid();
    // Let the controller manager list and settle before the clock starts.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let body: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "bench"},
        "spec": {"replicas": flags.replicas, "selector": {"matchLabels": {"app": "bench"}},
            "template": {"metadata": {"labels": {"app": "bench"}},
                "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10",
                    "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]}}},
    }))?;
    let cm_before = usage(cm_pid)?;
    let api_before = cpu_seconds(api_pid)?;
    let sched_before = cpu_seconds(scheduler_pid)?;
    let start = Instant::now();
    deployments.create(&PostParams::default(), &body).await?;
    wait_rolled_out(&deployments, flags.replicas).await?;
    let create_time = start.elapsed();
    let cm_created = usage(cm_pid)?;
    let api_created = cpu_seconds(api_pid)?;
    let sched_created = cpu_seconds(scheduler_pid)?;

    let start = Instant::now();
    deployments
        .patch(
            "bench",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [
                {"name": "app", "image": "registry.k8s.io/pause:3.9"}]}}}})),
        )
        .await?;
    wait_rolled_out(&deployments, flags.replicas).await?;
    let rollout_time = start.elapsed();
    let cm_rolled = usage(cm_pid)?;
    let api_rolled = cpu_seconds(api_pid)?;
    let sched_rolled = cpu_seconds(scheduler_pid)?;
    let stats = nodes.stats();

    let n = f64::from(flags.replicas);
    println!(
        "  baseline: {} pods created directly through the API: {:.2} s ({:.0} pods/s)",
        flags.replicas,
        direct.as_secs_f64(),
        n / direct.as_secs_f64()
    );
    println!(
        "  apply -> all {} ready:           {:.2} s ({:.1}x baseline)",
        flags.replicas,
        create_time.as_secs_f64(),
        create_time.as_secs_f64() / direct.as_secs_f64()
    );
    println!(
        "    CPU: controller-manager {:.2} s, API server {:.2} s, scheduler {:.2} s",
        cm_created.cpu - cm_before.cpu,
        api_created - api_before,
        sched_created - sched_before
    );
    println!(
        "  rolling update -> all updated and ready: {:.2} s ({:.1}x baseline)",
        rollout_time.as_secs_f64(),
        rollout_time.as_secs_f64() / direct.as_secs_f64()
    );
    println!(
        "    CPU: controller-manager {:.2} s, API server {:.2} s, scheduler {:.2} s",
        cm_rolled.cpu - cm_created.cpu,
        api_rolled - api_created,
        sched_rolled - sched_created
    );
    println!(
        "  controller-manager peak RSS: {:.1} MiB (before the deployment: {:.1} MiB)",
        cm_rolled.rss, cm_before.rss
    );
    println!(
        "  simulated nodes: {} pods started, {} deletions finished, {} write errors",
        stats.pods_started, stats.pods_deleted, stats.write_errors
    );

    nodes.shutdown().await;
    drop((cm, scheduler, apiserver));
    Ok(())
}
