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
//! Usage: `cargo build --release -p rkube-apiserver -p rkube-scheduler -p rkube-controller-manager`
//! then `cargo run --release -p rkube-bench --bin bench-controllers -- [--nodes 100 --replicas 1000]`

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use rkube_simnode::{NodeTemplate, SimCluster, SimConfig};
use serde_json::json;
use tokio::process::{Child, Command};

#[derive(Parser, Debug)]
struct Flags {
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    #[arg(long, default_value_t = 1_000)]
    replicas: i32,
    /// Where the release binaries are.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
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

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields.get(i).context("short /proc stat")?.parse::<f64>()?)
    };
    // fields[0] is field 3 (state), so field n is fields[n - 3]. Linux reports in USER_HZ (100).
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

/// Peak resident set size in MiB (VmHWM).
fn peak_rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .context("no VmHWM")?
        .parse()?;
    Ok(kib / 1024.0)
}

fn spawn(bin_dir: &std::path::Path, name: &str, args: &[String]) -> anyhow::Result<Child> {
    let path = bin_dir.join(name);
    Command::new(&path)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", path.display()))
}

async fn create_pods_directly(
    client: &kube::Client,
    count: i32,
    concurrency: usize,
) -> anyhow::Result<Duration> {
    let api: Api<Pod> = Api::namespaced(client.clone(), "baseline");
    let start = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..count)
        .map(|i| {
            let api = api.clone();
            async move {
                let pod: Pod = serde_json::from_value(json!({
                    "metadata": {"name": format!("direct-{i}"), "labels": {"app": "baseline"}},
                    // Nobody schedules these: they measure the API alone.
                    "spec": {"schedulerName": "none", "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]},
                }))?;
                api.create(&PostParams::default(), &pod).await?;
                Ok(())
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let elapsed = start.elapsed();
    for r in results {
        r?;
    }
    Ok(elapsed)
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
        rss: peak_rss_mib(pid)?,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    let dir = tempfile::tempdir()?;
    let api_port = free_port()?;
    let url = format!("http://127.0.0.1:{api_port}");
    let mut apiserver = spawn(
        &flags.bin_dir,
        "rkube-apiserver",
        &[
            format!("--port={api_port}"),
            format!("--data-dir={}", dir.path().join("data").display()),
        ],
    )?;
    let client = kube::Client::try_from(kube::Config::new(url.parse()?))?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    while namespaces.get("default").await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "API server not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

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
    let mut scheduler = spawn(
        &flags.bin_dir,
        "rkube-scheduler",
        &[
            format!("--api-server={url}"),
            format!("--health-address=127.0.0.1:{}", free_port()?),
        ],
    )?;
    let mut cm = spawn(
        &flags.bin_dir,
        "rkube-controller-manager",
        &[
            format!("--master={url}"),
            "--leader-elect=false".into(),
            format!("--bind-address=127.0.0.1:{}", free_port()?),
            format!("--concurrent-syncs={}", flags.concurrent_syncs),
            format!("--controllers={}", flags.controllers),
        ],
    )?;
    let cm_pid = cm.id().context("controller manager exited")?;
    let api_pid = apiserver.id().context("API server exited")?;
    let scheduler_pid = scheduler.id().context("scheduler exited")?;
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
        "controller-manager benchmark: {} replicas on {} simulated nodes, --controllers={}",
        flags.replicas, flags.nodes, flags.controllers
    );
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
    for child in [&mut cm, &mut scheduler, &mut apiserver] {
        let _ = child.kill().await;
    }
    Ok(())
}
