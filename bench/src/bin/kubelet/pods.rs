//! Phases 2 and 3: pods through the real API server and kubelet (creation -> Running seen
//! by a watch), then the kubelet's RSS and idle CPU with the pods running.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use futures::StreamExt;
use rkube_bench::components::{ApiServer, Binaries, Storage};
use rkube_bench::process::ChildProcess;
use rkube_bench::procfs::{cpu_percent, cpu_seconds, mib, rss_kib};
use rkube_bench::stats::{run_concurrent, Summary};
use rkube_bench::{create_namespace, get_json, post_json};
use rkube_testkit::containerd::ContainerdProcess;
use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::host::{KubeletLeftovers, KUBELET_BRIDGE, KUBELET_CHAIN, KUBELET_NETWORK_NAME};
use crate::{Flags, IMAGE, NODE};

/// When each pod was first seen Running, fed by a watch.
#[derive(Default)]
struct RunningTracker {
    seen: Mutex<HashMap<String, Instant>>,
    changed: Notify,
}

impl RunningTracker {
    fn record(&self, name: &str) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if !seen.contains_key(name) {
            seen.insert(name.to_string(), Instant::now());
            self.changed.notify_waiters();
        }
    }

    fn get(&self, name: &str) -> Option<Instant> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .copied()
    }

    async fn wait(&self, name: &str, timeout: Duration) -> Option<Instant> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(at) = self.get(name) {
                return Some(at);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }
}

/// Watches pods in `namespace` from `resource_version`, recording Running ones.
fn spawn_running_watch(
    client: reqwest::Client,
    base: String,
    namespace: String,
    resource_version: String,
    tracker: Arc<RunningTracker>,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(async move {
        let url = format!(
            "{base}/api/v1/namespaces/{namespace}/pods?watch=true&resourceVersion={resource_version}&allowWatchBookmarks=false"
        );
        let resp = client.get(url).send().await?;
        if !resp.status().is_success() {
            bail!("watch: {}", resp.status());
        }
        let mut stream = resp.bytes_stream();
        let mut buffer: Vec<u8> = Vec::new();
        while let Some(chunk) = stream.next().await {
            buffer.extend_from_slice(&chunk?);
            while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                let Ok(event) = serde_json::from_slice::<Value>(&line) else {
                    continue;
                };
                let object = &event["object"];
                if object["status"]["phase"] == "Running" {
                    if let Some(name) = object["metadata"]["name"].as_str() {
                        tracker.record(name);
                    }
                }
            }
        }
        Ok(())
    })
}

fn pod_body(namespace: &str, name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "nodeName": NODE,
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "sleep",
                "image": IMAGE,
                "imagePullPolicy": "Never",
                "command": ["sleep", "3600"]
            }]
        }
    })
}

struct PodBatch {
    latencies: Summary,
    uids: Vec<String>,
}

async fn pod_batch(
    client: &reqwest::Client,
    base: &str,
    namespace: &str,
    total: usize,
    concurrency: usize,
) -> anyhow::Result<PodBatch> {
    create_namespace(client, base, namespace).await?;
    let list = get_json(
        client,
        &format!("{base}/api/v1/namespaces/{namespace}/pods"),
    )
    .await?;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_string();
    let tracker = Arc::new(RunningTracker::default());
    let watch = spawn_running_watch(
        client.clone(),
        base.to_string(),
        namespace.to_string(),
        rv,
        tracker.clone(),
    );
    let uids = Arc::new(Mutex::new(Vec::new()));
    let (c, b, ns, t, u) = (
        client.clone(),
        base.to_string(),
        namespace.to_string(),
        tracker.clone(),
        uids.clone(),
    );
    let batch = run_concurrent(total, concurrency, move |i| {
        let (client, base, ns, tracker, uids) =
            (c.clone(), b.clone(), ns.clone(), t.clone(), u.clone());
        async move {
            let name = format!("pod-{i}");
            let started = Instant::now();
            let created = post_json(
                &client,
                &format!("{base}/api/v1/namespaces/{ns}/pods"),
                &pod_body(&ns, &name),
            )
            .await?;
            if let Some(uid) = created["metadata"]["uid"].as_str() {
                uids.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(uid.to_string());
            }
            match tracker.wait(&name, Duration::from_secs(120)).await {
                Some(at) => Ok(at.saturating_duration_since(started)),
                None => {
                    let pod = get_json(
                        &client,
                        &format!("{base}/api/v1/namespaces/{ns}/pods/{name}"),
                    )
                    .await
                    .unwrap_or(Value::Null);
                    bail!(
                        "pod {ns}/{name} not Running after 120 s: {:#}",
                        pod["status"]
                    )
                }
            }
        }
    })
    .await;
    watch.abort();
    let uids = uids.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(PodBatch {
        latencies: batch?.summary(),
        uids,
    })
}

/// Deletes every pod of `namespace` and waits until the kubelet finished them.
async fn delete_pods(client: &reqwest::Client, base: &str, namespace: &str) -> anyhow::Result<()> {
    let list = get_json(
        client,
        &format!("{base}/api/v1/namespaces/{namespace}/pods"),
    )
    .await?;
    let names: Vec<String> = list["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    for name in names {
        let r = client
            .delete(format!("{base}/api/v1/namespaces/{namespace}/pods/{name}"))
            .send()
            .await?;
        if !r.status().is_success() && r.status() != reqwest::StatusCode::NOT_FOUND {
            bail!("deleting {namespace}/{name}: {}", r.status());
        }
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let list = get_json(
            client,
            &format!("{base}/api/v1/namespaces/{namespace}/pods"),
        )
        .await?;
        let left = list["items"].as_array().map_or(0, Vec::len);
        if left == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{left} pods of {namespace} still present 180 s after deletion");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub struct PodResults {
    pub sequential: Summary,
    pub concurrent: Summary,
    /// CPU milliseconds per pod started (kubelet, API server), over the concurrent batch.
    pub kubelet_cpu_per_pod: f64,
    pub apiserver_cpu_per_pod: f64,
    pub rss_mib: f64,
    pub idle_cpu: f64,
    pub running: usize,
}

pub async fn pods_phase(
    flags: &Flags,
    binaries: &Binaries,
    containerd: &ContainerdProcess,
    work: &Path,
    leftovers: &mut KubeletLeftovers,
) -> anyhow::Result<PodResults> {
    let server = ApiServer::start(binaries, &Storage::Embedded).await?;
    let base = server.url().to_string();
    let image_dir = work.join("images");
    std::fs::create_dir_all(&image_dir)?;
    rkube_testkit::images::busybox_oci_tarball(&image_dir, IMAGE)?;
    let log_path = work.join("kubelet.log");
    let (mut command, _) = binaries.kubelet_command(&base, NODE, &work.join("kubelet"))?;
    command
        .args(["--node-ip", "127.0.0.1", "--pod-cidr", &flags.pod_cidr])
        .args(["--runtime", "containerd"])
        .arg("--containerd-address")
        .arg(containerd.socket_path())
        .arg("--cni-bin-dir")
        .arg(&flags.cni_bin_dir)
        .arg(format!("--cni-bridge={KUBELET_BRIDGE}"))
        .arg(format!("--cni-network-name={KUBELET_NETWORK_NAME}"))
        .arg(format!("--cni-forward-chain={KUBELET_CHAIN}"))
        .arg("--netns-dir")
        .arg(&leftovers.netns_dir)
        .arg("--image-dir")
        .arg(&image_dir)
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log_path)?);
    let mut kubelet = ChildProcess::spawn(&mut command, "rkubelet")?;
    let client = reqwest::Client::new();
    // Ready once the node is registered: images are imported before registration.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if kubelet.exited() {
            bail!("rkubelet exited; see {}", log_path.display());
        }
        let r = client
            .get(format!("{base}/api/v1/nodes/{NODE}"))
            .send()
            .await?;
        if r.status().is_success() {
            break;
        }
        if Instant::now() > deadline {
            bail!("node {NODE} not registered after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Untimed warm-up pod, like the raw phase's warm-up container.
    let warm = pod_batch(&client, &base, "bench-warmup", 1, 1).await;
    if let Ok(w) = &warm {
        leftovers.pod_uids.extend(w.uids.iter().cloned());
    }
    warm?;
    delete_pods(&client, &base, "bench-warmup").await?;

    let seq = pod_batch(&client, &base, "bench-seq", flags.pods, 1).await;
    if let Ok(b) = &seq {
        leftovers.pod_uids.extend(b.uids.iter().cloned());
    }
    let seq = seq?;
    delete_pods(&client, &base, "bench-seq").await?;
    let kubelet_before = cpu_seconds(kubelet.pid())?;
    let server_before = cpu_seconds(server.pid())?;
    let conc = pod_batch(&client, &base, "bench-conc", flags.pods, flags.concurrency).await;
    if let Ok(b) = &conc {
        leftovers.pod_uids.extend(b.uids.iter().cloned());
    }
    let conc = conc?;
    let per_pod_ms = |before: f64, pid: u32| -> anyhow::Result<f64> {
        let used = (cpu_seconds(pid)? - before).max(0.0);
        Ok(1000.0 * used / flags.pods.max(1) as f64)
    };
    let kubelet_cpu_per_pod = per_pod_ms(kubelet_before, kubelet.pid())?;
    let apiserver_cpu_per_pod = per_pod_ms(server_before, server.pid())?;

    // Idle: every pod Running, nothing changing. Let status writes and probes settle first.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pods = get_json(
        &client,
        &format!("{base}/api/v1/namespaces/bench-conc/pods"),
    )
    .await?;
    let running = pods["items"].as_array().map_or(0, |items| {
        items
            .iter()
            .filter(|p| p["status"]["phase"] == "Running")
            .count()
    });
    let idle_cpu = cpu_percent(kubelet.pid(), Duration::from_secs(flags.idle_seconds)).await?;
    let rss_mib = mib(rss_kib(kubelet.pid())?);

    delete_pods(&client, &base, "bench-conc").await?;
    kubelet.stop(Duration::from_secs(20));
    drop(server);
    Ok(PodResults {
        sequential: seq.latencies,
        concurrent: conc.latencies,
        kubelet_cpu_per_pod,
        apiserver_cpu_per_pod,
        rss_mib,
        idle_cpu,
        running,
    })
}
