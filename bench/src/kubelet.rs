//! Kubelet benchmark (issue #4). In one run, against same-run baselines:
//! 1. raw container starts through `ContainerdRuntime` (create + start of busybox running
//!    `sleep 3600`), with the runtime's own empty network namespace and with a CNI-wired
//!    one, sequentially and with the pod phase's concurrency: p50/p99 request -> started;
//! 2. pod startup through the real `rkube-apiserver` and `rkubelet` binaries (child
//!    processes, a private containerd, CNI): creation -> Running seen by a watch, p50/p99,
//!    as ratios of the raw figures;
//! 3. kubelet RSS and idle CPU with the pods running;
//! 4. simulated nodes (`rkubelet --runtime fake --nodes N`): are all leases renewed on time.
//!
//! Needs root, containerd, runc and the CNI plugins. It changes the machine only through
//! names it owns and removes them at the end: the kubelet's bridge `rkbkube0` and chain
//! `RKBENCH-KUBE-FWD` with namespaces under the run's temp dir (with a kubelet binary
//! without `--cni-bridge`/`--netns-dir`: its defaults `rkube0`, `RKUBE-FORWARD` and
//! `/var/run/netns`, and the run refuses to start if those already exist), the raw
//! baseline's bridge `rkbench0` and chain `RKBENCH-FWD`, and its containers' cgroups.
//!
//! Usage: `cargo run --release -p rkube-bench --bin bench-kubelet -- [--phases raw,pods,sim]`
//! (expects `target/release/rkube-apiserver` and `target/release/rkubelet`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use futures::StreamExt;
use rkube_cri::cni::{CniConfig, CniNetwork};
use rkube_cri::containerd::{ContainerdConfig, ContainerdImageService, ContainerdRuntime};
use rkube_cri::{ContainerConfig, ContainerRuntime, ImageInfo, ImageService, LogPaths, PodNetwork};
use rkube_testkit::containerd::ContainerdProcess;
use serde_json::{json, Value};
use tokio::sync::Notify;

/// The kubelet binary's defaults, used when it has no flags to change them.
const KUBELET_DEFAULT_BRIDGE: &str = "rkube0";
const KUBELET_DEFAULT_CHAIN: &str = "RKUBE-FORWARD";
const KUBELET_DEFAULT_NETNS_DIR: &str = "/var/run/netns";
/// Private names, when the binary accepts --cni-bridge and friends.
const KUBELET_PRIVATE_BRIDGE: &str = "rkbkube0";
const KUBELET_PRIVATE_CHAIN: &str = "RKBENCH-KUBE-FWD";
const RAW_BRIDGE: &str = "rkbench0";
const RAW_CHAIN: &str = "RKBENCH-FWD";
const RAW_CGROUP_PARENT: &str = "rkube-bench";
const IMAGE: &str = "busybox:rkube-bench";
const NODE: &str = "bench-node";

/// The host names the kubelet's CNI network uses in this run.
struct KubeletNetwork {
    bridge: &'static str,
    chain: &'static str,
    netns_dir: PathBuf,
    /// Whether the names are passed as flags (else they are the binary's defaults).
    private: bool,
}

impl KubeletNetwork {
    fn for_binary(binary: &Path, work: &Path) -> KubeletNetwork {
        let help = Command::new(binary)
            .arg("--help")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if help.contains("--cni-bridge") && help.contains("--netns-dir") {
            KubeletNetwork {
                bridge: KUBELET_PRIVATE_BRIDGE,
                chain: KUBELET_PRIVATE_CHAIN,
                netns_dir: work.join("kubelet-netns"),
                private: true,
            }
        } else {
            KubeletNetwork {
                bridge: KUBELET_DEFAULT_BRIDGE,
                chain: KUBELET_DEFAULT_CHAIN,
                netns_dir: PathBuf::from(KUBELET_DEFAULT_NETNS_DIR),
                private: false,
            }
        }
    }

    fn args(&self) -> Vec<String> {
        if !self.private {
            return Vec::new();
        }
        vec![
            format!("--cni-bridge={}", self.bridge),
            "--cni-network-name=rkube-bench".to_string(),
            format!("--cni-forward-chain={}", self.chain),
            format!("--netns-dir={}", self.netns_dir.display()),
        ]
    }
}

#[derive(Parser, Debug)]
struct Flags {
    /// Containers per raw batch and pods per pod batch.
    #[arg(long, default_value_t = 50)]
    pods: usize,
    /// Requests in flight in the concurrent batches.
    #[arg(long, default_value_t = 5)]
    concurrency: usize,
    /// Comma-separated subset of: raw, pods, sim.
    #[arg(long, default_value = "raw,pods,sim")]
    phases: String,
    /// The kubelet's pod CIDR (test-only range).
    #[arg(long, default_value = "10.250.200.0/24")]
    pod_cidr: String,
    /// The raw baseline's CNI range.
    #[arg(long, default_value = "10.250.201.0/24")]
    raw_cidr: String,
    #[arg(long, default_value = "/usr/lib/cni")]
    cni_bin_dir: PathBuf,
    /// Seconds of idle CPU measurement with the pods running.
    #[arg(long, default_value_t = 30)]
    idle_seconds: u64,
    /// Simulated node counts, tried in order until one fails.
    #[arg(long, default_value = "100,500,1000,2000", value_delimiter = ',')]
    sim_nodes: Vec<usize>,
    /// Seconds each simulated-node run lasts before the leases are checked.
    #[arg(long, default_value_t = 60)]
    sim_seconds: u64,
    /// --lease-renew-interval of the simulated kubelets.
    #[arg(long, default_value_t = 10.0)]
    lease_renew_interval: f64,
    #[arg(long, default_value = "target/release/rkube-apiserver")]
    apiserver: PathBuf,
    #[arg(long, default_value = "target/release/rkubelet")]
    kubelet: PathBuf,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[derive(Clone, Copy, Debug)]
struct Summary {
    p50: Duration,
    p99: Duration,
}

impl Summary {
    fn of(mut latencies: Vec<Duration>) -> Summary {
        latencies.sort();
        Summary {
            p50: percentile(&latencies, 0.5),
            p99: percentile(&latencies, 0.99),
        }
    }

    fn line(&self) -> String {
        format!("p50 {:>9}  p99 {:>9}", ms(self.p50), ms(self.p99))
    }

    fn ratio(&self, base: &Summary) -> String {
        format!(
            "p50 {:.2}x  p99 {:.2}x",
            self.p50.as_secs_f64() / base.p50.as_secs_f64().max(1e-9),
            self.p99.as_secs_f64() / base.p99.as_secs_f64().max(1e-9)
        )
    }
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

/// utime + stime of a process in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may contain spaces; the fields after it are fixed.
    let after = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest)
        .context("malformed /proc/pid/stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `after` starts at field 3.
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU use of `pid` over `window`, as a percentage of one core.
async fn cpu_percent(pid: u32, window: Duration) -> anyhow::Result<f64> {
    let before = cpu_ticks(pid)?;
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let after = cpu_ticks(pid)?;
    let seconds = (after - before) as f64 / clock_ticks_per_second();
    Ok(100.0 * seconds / started.elapsed().as_secs_f64())
}

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

fn chain_exists(chain: &str) -> bool {
    quiet(Command::new("iptables").args(["-S", chain]))
}

/// Removes a bridge and forwarding chain the run created.
fn remove_bridge_and_chain(bridge: &str, chain: &str) {
    if link_exists(bridge) {
        quiet(Command::new("ip").args(["link", "del", bridge]));
    }
    while quiet(Command::new("iptables").args(["-D", "FORWARD", "-j", chain])) {}
    quiet(Command::new("iptables").args(["-F", chain]));
    quiet(Command::new("iptables").args(["-X", chain]));
}

/// Unmounts and deletes network namespace files left by an interrupted run.
fn remove_netns_files(paths: &[PathBuf]) {
    for path in paths {
        if path.exists() {
            quiet(Command::new("umount").arg(path));
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Removes (empty) cgroup directories `relative` in every mounted hierarchy, deepest first.
fn remove_cgroups(relative: &[String]) {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let roots: Vec<PathBuf> = hierarchies.flatten().map(|e| e.path()).collect();
    for root in roots {
        let mut dirs: Vec<PathBuf> = Vec::new();
        for rel in relative {
            let dir = root.join(rel.trim_start_matches('/'));
            collect_dirs(&dir, &mut dirs);
        }
        dirs.sort_by_key(|d| std::cmp::Reverse(d.as_os_str().len()));
        for dir in dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    if !dir.is_dir() {
        return;
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&entry.path(), out);
            }
        }
    }
    out.push(dir.to_path_buf());
}

/// A child process stopped (SIGTERM, then SIGKILL) on drop.
struct Process {
    child: Child,
    name: &'static str,
}

impl Process {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(&mut self, grace: Duration) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        quiet(Command::new("kill").args(["-TERM", &self.child.id().to_string()]));
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} did not stop after SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

struct ApiServer {
    process: Process,
    url: String,
    _dir: tempfile::TempDir,
}

async fn start_apiserver(binary: &Path) -> anyhow::Result<ApiServer> {
    let dir = tempfile::tempdir()?;
    let port = rkube_testkit::free_port()?;
    let child = Command::new(binary)
        .arg("--port")
        .arg(port.to_string())
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let server = ApiServer {
        process: Process {
            child,
            name: "rkube-apiserver",
        },
        url: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = client
            .get(format!("{}/api/v1/namespaces/kube-node-lease", server.url))
            .send()
            .await
        {
            if r.status().is_success() {
                return Ok(server);
            }
        }
        if Instant::now() > deadline {
            bail!("API server did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn post(client: &reqwest::Client, url: &str, body: &Value) -> anyhow::Result<Value> {
    let r = client.post(url).json(body).send().await?;
    let status = r.status();
    let text = r.text().await?;
    if !status.is_success() {
        bail!("POST {url}: {status} {text}");
    }
    Ok(serde_json::from_str(&text)?)
}

async fn get(client: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    let r = client.get(url).send().await?;
    let status = r.status();
    let text = r.text().await?;
    if !status.is_success() {
        bail!("GET {url}: {status} {text}");
    }
    Ok(serde_json::from_str(&text)?)
}

/// Runs `op(i)` for i in 0..total with `concurrency` in flight; per-op latencies as measured
/// by `op` itself (it knows when its request started and when it was satisfied).
async fn run_concurrent<F, Fut>(
    total: usize,
    concurrency: usize,
    op: F,
) -> anyhow::Result<Vec<Duration>>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<Duration>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let op = op.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                latencies.push(op(i).await?);
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut all = Vec::with_capacity(total);
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(all)
}

// ---------------------------------------------------------------------------------------
// Phase 1: raw containerd

/// A minimal runtime spec: `sleep 3600` as root, own cgroup, and either the runtime's own
/// fresh network namespace or the given one.
fn raw_spec(id: &str, netns: Option<&Path>) -> anyhow::Result<oci_spec::runtime::Spec> {
    let mut spec = serde_json::to_value(oci_spec::runtime::Spec::default())?;
    spec["process"]["args"] = json!(["sleep", "3600"]);
    spec["root"]["readonly"] = json!(false);
    spec["linux"]["cgroupsPath"] = json!(format!("/{RAW_CGROUP_PARENT}/{id}"));
    if let Some(path) = netns {
        if let Some(namespaces) = spec["linux"]["namespaces"].as_array_mut() {
            for ns in namespaces.iter_mut() {
                if ns["type"] == "network" {
                    ns["path"] = json!(path.display().to_string());
                }
            }
        }
    }
    Ok(serde_json::from_value(spec)?)
}

struct RawNode {
    runtime: Arc<ContainerdRuntime>,
    network: Arc<CniNetwork>,
    image: ImageInfo,
    logs: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RawMode {
    RuntimeNetns,
    Cni,
}

async fn raw_batch(
    node: &Arc<RawNode>,
    mode: RawMode,
    total: usize,
    concurrency: usize,
    tag: &str,
) -> anyhow::Result<Summary> {
    let ids: Vec<String> = (0..total)
        .map(|i| format!("raw-{tag}-{i}-{}", std::process::id()))
        .collect();
    let ids = Arc::new(ids);
    let n = node.clone();
    let i2 = ids.clone();
    let latencies = run_concurrent(total, concurrency, move |i| {
        let node = n.clone();
        let id = i2[i].clone();
        async move {
            let started = Instant::now();
            let netns = match mode {
                RawMode::Cni => Some(node.network.setup(&id, "bench", &id).await?.netns_path),
                RawMode::RuntimeNetns => None,
            };
            let config = ContainerConfig {
                id: id.clone(),
                image: node.image.clone(),
                spec: raw_spec(&id, netns.as_deref())?,
                labels: [
                    (rkube_cri::labels::POD_NAME.to_string(), id.clone()),
                    (
                        rkube_cri::labels::CONTAINER_NAME.to_string(),
                        "sleep".to_string(),
                    ),
                ]
                .into_iter()
                .collect(),
                logs: LogPaths {
                    stdout: node.logs.join(&id).join("stdout.log"),
                    stderr: node.logs.join(&id).join("stderr.log"),
                },
                stdin: false,
                stdin_once: false,
            };
            node.runtime.create(config).await?;
            node.runtime.start(&id).await?;
            Ok(started.elapsed())
        }
    })
    .await?;
    // Stop and remove everything before the next batch so batches don't load each other.
    for id in ids.iter() {
        node.runtime.remove(id).await?;
        if mode == RawMode::Cni {
            node.network.teardown(id).await?;
        }
    }
    Ok(Summary::of(latencies))
}

struct RawResults {
    runtime_netns_seq: Summary,
    runtime_netns_conc: Summary,
    cni_seq: Summary,
    cni_conc: Summary,
}

async fn raw_phase(
    flags: &Flags,
    containerd: &ContainerdProcess,
    work: &Path,
) -> anyhow::Result<RawResults> {
    let mut config = ContainerdConfig::new(containerd.socket_path(), work.join("raw-state"));
    config.runc_root = containerd.runc_root();
    config.namespace = "rkube-bench-raw".to_string();
    let runtime = Arc::new(ContainerdRuntime::connect(&config).await?);
    let images = ContainerdImageService::connect(&config).await?;
    let tarball = rkube_testkit::images::busybox_oci_tarball(work, IMAGE)?;
    let image = images
        .import(&tarball)
        .await?
        .into_iter()
        .next()
        .context("import returned no image")?;
    let mut cni = CniConfig::new(flags.raw_cidr.clone(), work.join("raw-cni"));
    cni.plugin_dir = flags.cni_bin_dir.clone();
    cni.bridge_name = RAW_BRIDGE.to_string();
    cni.network_name = "rkube-bench-raw".to_string();
    cni.forward_chain = RAW_CHAIN.to_string();
    cni.netns_dir = work.join("raw-netns");
    let network = Arc::new(CniNetwork::new(cni)?);
    let node = Arc::new(RawNode {
        runtime,
        network,
        image,
        logs: work.join("raw-logs"),
    });
    // One untimed container first: the first start pays for loading the shim binary,
    // snapshotter caches and the bridge creation; pods get the same warm-up below.
    raw_batch(&node, RawMode::Cni, 1, 1, "warmup").await?;
    let n = flags.pods;
    let c = flags.concurrency;
    Ok(RawResults {
        runtime_netns_seq: raw_batch(&node, RawMode::RuntimeNetns, n, 1, "rs").await?,
        runtime_netns_conc: raw_batch(&node, RawMode::RuntimeNetns, n, c, "rc").await?,
        cni_seq: raw_batch(&node, RawMode::Cni, n, 1, "cs").await?,
        cni_conc: raw_batch(&node, RawMode::Cni, n, c, "cc").await?,
    })
}

// ---------------------------------------------------------------------------------------
// Phase 2 and 3: pods through the API server and rkubelet

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
    post(
        client,
        &format!("{base}/api/v1/namespaces"),
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}),
    )
    .await?;
    let list = get(
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
    let result = run_concurrent(total, concurrency, move |i| {
        let (client, base, ns, tracker, uids) =
            (c.clone(), b.clone(), ns.clone(), t.clone(), u.clone());
        async move {
            let name = format!("pod-{i}");
            let started = Instant::now();
            let created = post(
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
                    let pod = get(
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
        latencies: Summary::of(result?),
        uids,
    })
}

/// Deletes every pod of `namespace` and waits until the kubelet finished them.
async fn delete_pods(client: &reqwest::Client, base: &str, namespace: &str) -> anyhow::Result<()> {
    let list = get(
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
        let list = get(
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

struct PodResults {
    sequential: Summary,
    concurrent: Summary,
    /// CPU milliseconds per pod started (kubelet, API server), over the concurrent batch.
    kubelet_cpu_per_pod: f64,
    apiserver_cpu_per_pod: f64,
    rss_mib: f64,
    idle_cpu: f64,
    running: usize,
}

/// Everything the kubelet phase leaves on the machine unless it finishes cleanly.
struct HostLeftovers {
    network: KubeletNetwork,
    pod_uids: Vec<String>,
}

impl HostLeftovers {
    fn clean(&self) {
        let netns: Vec<PathBuf> = self
            .pod_uids
            .iter()
            .map(|uid| self.network.netns_dir.join(format!("rkube-{uid}")))
            .collect();
        remove_netns_files(&netns);
        if self.network.private {
            // CNI makes the namespace directory a mount point of its own.
            quiet(Command::new("umount").arg(&self.network.netns_dir));
        }
        remove_bridge_and_chain(self.network.bridge, self.network.chain);
        let cgroups: Vec<String> = self
            .pod_uids
            .iter()
            .map(|uid| format!("rkube/pod{uid}"))
            .collect();
        remove_cgroups(&cgroups);
    }
}

async fn pods_phase(
    flags: &Flags,
    containerd: &ContainerdProcess,
    work: &Path,
    leftovers: &mut HostLeftovers,
) -> anyhow::Result<PodResults> {
    let server = start_apiserver(&flags.apiserver).await?;
    let image_dir = work.join("images");
    std::fs::create_dir_all(&image_dir)?;
    rkube_testkit::images::busybox_oci_tarball(&image_dir, IMAGE)?;
    let root_dir = work.join("kubelet");
    let port = rkube_testkit::free_port()?;
    let log = std::fs::File::create(work.join("kubelet.log"))?;
    let child = Command::new(&flags.kubelet)
        .args(["--server", &server.url, "--node-name", NODE])
        .args(["--node-ip", "127.0.0.1", "--pod-cidr", &flags.pod_cidr])
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--root-dir")
        .arg(&root_dir)
        .args(["--runtime", "containerd"])
        .arg("--containerd-address")
        .arg(containerd.socket_path())
        .arg("--cni-bin-dir")
        .arg(&flags.cni_bin_dir)
        .arg("--image-dir")
        .arg(&image_dir)
        .args(leftovers.network.args())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", flags.kubelet.display()))?;
    let mut kubelet = Process {
        child,
        name: "rkubelet",
    };
    let client = reqwest::Client::new();
    // Ready once the node is registered: images are imported before registration.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if kubelet.exited() {
            bail!(
                "rkubelet exited; see {}",
                work.join("kubelet.log").display()
            );
        }
        let r = client
            .get(format!("{}/api/v1/nodes/{NODE}", server.url))
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
    let warm = pod_batch(&client, &server.url, "bench-warmup", 1, 1).await;
    if let Ok(w) = &warm {
        leftovers.pod_uids.extend(w.uids.iter().cloned());
    }
    warm?;
    delete_pods(&client, &server.url, "bench-warmup").await?;

    let seq = pod_batch(&client, &server.url, "bench-seq", flags.pods, 1).await;
    if let Ok(b) = &seq {
        leftovers.pod_uids.extend(b.uids.iter().cloned());
    }
    let seq = seq?;
    delete_pods(&client, &server.url, "bench-seq").await?;
    let kubelet_before = cpu_ticks(kubelet.pid())?;
    let server_before = cpu_ticks(server.process.pid())?;
    let conc = pod_batch(
        &client,
        &server.url,
        "bench-conc",
        flags.pods,
        flags.concurrency,
    )
    .await;
    if let Ok(b) = &conc {
        leftovers.pod_uids.extend(b.uids.iter().cloned());
    }
    let conc = conc?;
    let per_pod_ms = |before: u64, pid: u32| -> anyhow::Result<f64> {
        let ticks = cpu_ticks(pid)?.saturating_sub(before) as f64;
        Ok(1000.0 * ticks / clock_ticks_per_second() / flags.pods.max(1) as f64)
    };
    let kubelet_cpu_per_pod = per_pod_ms(kubelet_before, kubelet.pid())?;
    let apiserver_cpu_per_pod = per_pod_ms(server_before, server.process.pid())?;

    // Idle: every pod Running, nothing changing. Let status writes and probes settle first.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pods = get(
        &client,
        &format!("{}/api/v1/namespaces/bench-conc/pods", server.url),
    )
    .await?;
    let running = pods["items"].as_array().map_or(0, |items| {
        items
            .iter()
            .filter(|p| p["status"]["phase"] == "Running")
            .count()
    });
    let idle_cpu = cpu_percent(kubelet.pid(), Duration::from_secs(flags.idle_seconds)).await?;
    let rss_mib = rss_kib(kubelet.pid())? as f64 / 1024.0;

    delete_pods(&client, &server.url, "bench-conc").await?;
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

// ---------------------------------------------------------------------------------------
// Phase 4: simulated nodes

struct SimResult {
    nodes: usize,
    registered: usize,
    leases: usize,
    on_time: usize,
    worst_age: f64,
    cpu: f64,
    rss_mib: f64,
    server_cpu: f64,
}

fn parse_time(value: &Value) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(value.as_str()?)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

async fn sim_run(flags: &Flags, nodes: usize, work: &Path) -> anyhow::Result<SimResult> {
    let server = start_apiserver(&flags.apiserver).await?;
    let prefix = format!("sim{nodes}");
    let port = rkube_testkit::free_port()?;
    let root = work.join(format!("sim-{nodes}"));
    std::fs::create_dir_all(&root)?;
    let log = std::fs::File::create(root.join("kubelet.log"))?;
    let child = Command::new(&flags.kubelet)
        .args(["--server", &server.url, "--node-name", &prefix])
        .args(["--runtime", "fake", "--nodes", &nodes.to_string()])
        .arg("--lease-renew-interval")
        .arg(flags.lease_renew_interval.to_string())
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--root-dir")
        .arg(&root)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", flags.kubelet.display()))?;
    let mut kubelet = Process {
        child,
        name: "rkubelet (simulated nodes)",
    };
    let started = Instant::now();
    let window = Duration::from_secs(flags.sim_seconds);
    // CPU over the second half: registration of N nodes is a burst, the steady state
    // (lease renewals, status updates) is what a node count has to sustain.
    tokio::time::sleep(window / 2).await;
    let kubelet_before = cpu_ticks(kubelet.pid())?;
    let server_before = cpu_ticks(server.process.pid())?;
    let half = Instant::now();
    tokio::time::sleep(window.saturating_sub(started.elapsed())).await;
    if kubelet.exited() {
        bail!(
            "rkubelet --nodes {nodes} exited; see {}",
            root.join("kubelet.log").display()
        );
    }
    let ticks = clock_ticks_per_second();
    let elapsed = half.elapsed().as_secs_f64();
    let cpu = 100.0 * (cpu_ticks(kubelet.pid())? - kubelet_before) as f64 / ticks / elapsed;
    let server_cpu =
        100.0 * (cpu_ticks(server.process.pid())? - server_before) as f64 / ticks / elapsed;
    let rss_mib = rss_kib(kubelet.pid())? as f64 / 1024.0;

    let client = reqwest::Client::new();
    let leases = get(
        &client,
        &format!(
            "{}/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
            server.url
        ),
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
    let node_list = get(&client, &format!("{}/api/v1/nodes", server.url)).await?;
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

// ---------------------------------------------------------------------------------------

fn print_pods(raw: Option<&RawResults>, pods: &PodResults, flags: &Flags) {
    println!("\n== pod startup through rkube-apiserver + rkubelet (creation -> Running seen by a watch) ==");
    let rows = [
        (
            "sequential",
            &pods.sequential,
            raw.map(|r| (&r.cni_seq, &r.runtime_netns_seq)),
        ),
        (
            "concurrent",
            &pods.concurrent,
            raw.map(|r| (&r.cni_conc, &r.runtime_netns_conc)),
        ),
    ];
    for (label, summary, base) in rows {
        let label = if label == "concurrent" {
            format!("{label} ({} in flight)", flags.concurrency)
        } else {
            label.to_string()
        };
        print!("{label:<24} {}", summary.line());
        if let Some((cni, runtime_netns)) = base {
            print!(
                "  | vs raw+CNI: {}  | vs raw (no CNI): {}",
                summary.ratio(cni),
                summary.ratio(runtime_netns)
            );
        }
        println!();
    }
    println!(
        "CPU per pod started (concurrent batch): rkubelet {:.1} ms, rkube-apiserver {:.1} ms",
        pods.kubelet_cpu_per_pod, pods.apiserver_cpu_per_pod
    );
    let p99 = pods.sequential.p99.max(pods.concurrent.p99);
    println!(
        "goal p99 < 1 s: {} (worst p99 {})",
        if p99 < Duration::from_secs(1) {
            "met"
        } else {
            "MISSED"
        },
        ms(p99)
    );
    println!(
        "\n== kubelet with {} running pods ==\nRSS {:.1} MiB (goal < 40 MB)  idle CPU {:.2}% of a core over {} s (goal < 1%)",
        pods.running, pods.rss_mib, pods.idle_cpu, flags.idle_seconds
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    for binary in [&flags.apiserver, &flags.kubelet] {
        if !binary.exists() {
            bail!(
                "{} not found: cargo build --release -p rkube-apiserver -p rkubelet",
                binary.display()
            );
        }
    }
    let phases: Vec<&str> = flags.phases.split(',').map(str::trim).collect();
    let wants = |p: &str| phases.contains(&p);
    println!(
        "rkubelet benchmark: {} containers/pods per batch, concurrency {}, {} CPUs, load average {}",
        flags.pods,
        flags.concurrency,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let work = tempfile::Builder::new()
        .prefix("rkbench-")
        .tempdir_in("/tmp")?;

    let mut raw = None;
    let mut pods = None;
    if wants("raw") || wants("pods") {
        if !rkube_testkit::containerd::available() {
            bail!("the raw and pods phases need root, containerd and runc");
        }
        let network = KubeletNetwork::for_binary(&flags.kubelet, work.path());
        for (bridge, chain) in [(network.bridge, network.chain), (RAW_BRIDGE, RAW_CHAIN)] {
            if link_exists(bridge) || chain_exists(chain) {
                bail!("{bridge} or {chain} already exists (another kubelet on this machine?); not touching it");
            }
        }
        let containerd = ContainerdProcess::start().await?;
        let result = async {
            if wants("raw") {
                let r = raw_phase(&flags, &containerd, work.path()).await?;
                println!("\n== raw containerd: create + start of busybox `sleep 3600` (request -> started) ==");
                let c = flags.concurrency;
                println!("runtime netns, sequential   {}", r.runtime_netns_seq.line());
                println!("runtime netns, {c} in flight  {}", r.runtime_netns_conc.line());
                println!("CNI netns, sequential       {}", r.cni_seq.line());
                println!("CNI netns, {c} in flight      {}", r.cni_conc.line());
                raw = Some(r);
            }
            let mut leftovers = HostLeftovers {
                network,
                pod_uids: Vec::new(),
            };
            let result = if wants("pods") {
                pods_phase(&flags, &containerd, work.path(), &mut leftovers)
                    .await
                    .map(Some)
            } else {
                Ok(None)
            };
            anyhow::Ok((result, leftovers))
        }
        .await;
        let raw_cgroups = [RAW_CGROUP_PARENT.to_string()];
        drop(containerd);
        remove_bridge_and_chain(RAW_BRIDGE, RAW_CHAIN);
        quiet(Command::new("umount").arg(work.path().join("raw-netns")));
        remove_cgroups(&raw_cgroups);
        let (result, leftovers) = match result {
            Ok(pair) => pair,
            Err(e) => {
                let fallback = KubeletNetwork::for_binary(&flags.kubelet, work.path());
                HostLeftovers {
                    network: fallback,
                    pod_uids: Vec::new(),
                }
                .clean();
                return Err(e);
            }
        };
        leftovers.clean();
        pods = result?;
    }
    if let Some(p) = &pods {
        print_pods(raw.as_ref(), p, &flags);
    }

    if wants("sim") {
        println!(
            "\n== simulated nodes (rkubelet --runtime fake --nodes N, lease renew interval {} s, checked after {} s; on time = renewTime age <= {} s) ==",
            flags.lease_renew_interval,
            flags.sim_seconds,
            flags.lease_renew_interval + 2.0
        );
        let mut largest = None;
        for &n in &flags.sim_nodes {
            let r = match sim_run(&flags, n, work.path()).await {
                Ok(r) => r,
                Err(e) => {
                    println!("N={n}: failed: {e:#}");
                    break;
                }
            };
            let ok = r.on_time == r.nodes;
            println!(
                "N={:<5} nodes {:>5}  leases {:>5}  on time {:>5}  worst age {:>6.1} s  kubelet CPU {:>5.1}%  RSS {:>6.1} MiB  apiserver CPU {:>5.1}%  -> {}",
                r.nodes,
                r.registered,
                r.leases,
                r.on_time,
                r.worst_age,
                r.cpu,
                r.rss_mib,
                r.server_cpu,
                if ok { "holds" } else { "FAILS" }
            );
            if !ok {
                break;
            }
            largest = Some(r.nodes);
        }
        match largest {
            Some(n) => println!("largest N with every lease on time: {n}"),
            None => println!("no N held"),
        }
    }
    Ok(())
}
