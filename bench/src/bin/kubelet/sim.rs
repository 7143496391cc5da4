//! Phase 4: simulated nodes (`rkubelet --runtime fake --nodes N`): does one process keep
//! every node's Lease renewed on time?

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use rkube_bench::components::{ApiServer, Binaries, Storage};
use rkube_bench::get_json;
use rkube_bench::process::ChildProcess;
use rkube_bench::procfs::{cpu_seconds, mib, rss_kib};
use serde_json::Value;

use crate::Flags;

pub struct SimResult {
    pub nodes: usize,
    pub registered: usize,
    pub leases: usize,
    pub on_time: usize,
    pub worst_age: f64,
    pub cpu: f64,
    pub rss_mib: f64,
    pub server_cpu: f64,
}

fn parse_time(value: &Value) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(value.as_str()?)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

pub async fn sim_run(
    flags: &Flags,
    binaries: &Binaries,
    nodes: usize,
    work: &Path,
) -> anyhow::Result<SimResult> {
    let server = ApiServer::start(binaries, &Storage::Embedded).await?;
    let base = server.url().to_string();
    let prefix = format!("sim{nodes}");
    let root = work.join(format!("sim-{nodes}"));
    std::fs::create_dir_all(&root)?;
    let log_path = root.join("kubelet.log");
    let (mut command, _) = binaries.kubelet_command(&base, &prefix, &root)?;
    command
        .args(["--runtime", "fake", "--nodes", &nodes.to_string()])
        .arg(format!(
            "--lease-renew-interval={}",
            flags.lease_renew_interval
        ))
        .stderr(std::fs::File::create(&log_path)?);
    let mut kubelet = ChildProcess::spawn(&mut command, "rkubelet (simulated nodes)")?;
    let started = Instant::now();
    let window = Duration::from_secs(flags.sim_seconds);
    // CPU over the second half: registration of N nodes is a burst, the steady state
    // (lease renewals, status updates) is what a node count has to sustain.
    tokio::time::sleep(window / 2).await;
    let kubelet_before = cpu_seconds(kubelet.pid())?;
    let server_before = cpu_seconds(server.pid())?;
    let half = Instant::now();
    tokio::time::sleep(window.saturating_sub(started.elapsed())).await;
    if kubelet.exited() {
        bail!(
            "rkubelet --nodes {nodes} exited; see {}",
            log_path.display()
        );
    }
    let elapsed = half.elapsed().as_secs_f64();
    let cpu = 100.0 * (cpu_seconds(kubelet.pid())? - kubelet_before) / elapsed;
    let server_cpu = 100.0 * (cpu_seconds(server.pid())? - server_before) / elapsed;
    let rss_mib = mib(rss_kib(kubelet.pid())?);

    let client = reqwest::Client::new();
    let leases = get_json(
        &client,
        &format!("{base}/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"),
    )
    .await?;
    let now = chrono::Utc::now();
    let limit = flags.lease_renew_interval + 2.0;
    let mut ages: HashMap<String, f64> = HashMap::new();
    for lease in leases["items"].as_array().into_iter().flatten() {
        let Some(name) = lease["metadata"]["name"].as_str() else {
            continue;
        };
        if let Some(renewed) = parse_time(&lease["spec"]["renewTime"]) {
            let age = (now - renewed).num_milliseconds() as f64 / 1000.0;
            ages.insert(name.to_string(), age);
        }
    }
    let expected: Vec<String> = (0..nodes).map(|i| format!("{prefix}-{i}")).collect();
    let on_time = expected
        .iter()
        .filter(|n| ages.get(*n).is_some_and(|age| *age <= limit))
        .count();
    let worst_age = expected
        .iter()
        .map(|n| ages.get(n).copied().unwrap_or(f64::INFINITY))
        .fold(0.0, f64::max);
    let node_list = get_json(&client, &format!("{base}/api/v1/nodes")).await?;
    let registered = node_list["items"].as_array().map_or(0, |items| {
        items
            .iter()
            .filter(|n| {
                n["metadata"]["name"]
                    .as_str()
                    .is_some_and(|name| name.starts_with(&format!("{prefix}-")))
            })
            .count()
    });
    let leases = expected.iter().filter(|n| ages.contains_key(*n)).count();
    kubelet.stop(Duration::from_secs(20));
    drop(server);
    Ok(SimResult {
        nodes,
        registered,
        leases,
        on_time,
        worst_age,
        cpu,
        rss_mib,
        server_cpu,
    })
}
