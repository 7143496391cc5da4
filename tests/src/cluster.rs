//! A one-node cluster of the real binaries: `rkube-apiserver`, `rkube-scheduler`,
//! `rkube-controller-manager` and `rkubelet` as separate child processes on free loopback
//! ports, the kubelet on a private containerd with CNI networking and the busybox test
//! image imported from a tarball. Driven with the real kubectl.
//!
//! Everything the cluster creates on the machine is named after the test process (pod
//! CIDR `10.250.<n>.0/24`, bridge, iptables chain, network namespaces in the cluster's
//! temp dir), so parallel tests do not share network state, and it is all removed on drop:
//! children are killed by PID, containerd kills its shims and containers, mounts under the
//! temp dir are undone, and the bridge and chain are deleted by name.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use rkube_testkit::containerd::ContainerdProcess;
use rkube_testkit::{try_poll, TimedOut, POLL_INTERVAL};
use serde_json::Value;

use crate::{free_port, kubeconfig_for, kubectl_binary, Kubectl, QUICK_POLL};

/// The busybox test image, imported by the kubelet at startup.
pub const IMAGE: &str = "busybox:e2e";
/// The same image content under a second tag, for rolling updates.
pub const IMAGE_V2: &str = "busybox:e2e-v2";
pub const NODE_NAME: &str = "e2e-node";

const START_TIMEOUT: Duration = Duration::from_secs(90);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// How often the cluster's state is polled: probes may run kubectl, so not too often.
pub const CLUSTER_POLL: Duration = Duration::from_millis(250);
/// Lines of each component's log printed when a test fails.
const LOG_TAIL_LINES: usize = 40;

/// A component binary running as a child process, killed by PID on drop.
struct Component {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Component {
    fn spawn(name: &'static str, args: &[String], logs: &Path) -> anyhow::Result<Component> {
        let binary = component_binary(name)?;
        let log = logs.join(format!("{name}.log"));
        let file = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let child = Command::new(&binary)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RKUBE_E2E_LOG").unwrap_or("info".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("spawning {}", binary.display()))?;
        Ok(Component { name, child, log })
    }

    fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited with {status}; log:\n{}",
                self.name,
                tail(&self.log, LOG_TAIL_LINES)
            );
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL if it has not exited within [`STOP_TIMEOUT`].
    async fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let child = &mut self.child;
        let exited = || std::future::ready(Ok(child.try_wait().transpose()));
        match try_poll(QUICK_POLL, STOP_TIMEOUT, exited, || TimedOut).await {
            Ok(exited) => Ok(exited?),
            Err(TimedOut) => {
                let _ = self.child.kill();
                Ok(self.child.wait()?)
            }
        }
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A component binary in the target directory the running test was built into
/// (`target/<profile>/deps/<test>` -> `target/<profile>/<name>`).
pub fn component_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable has no target directory")?;
    let binary = profile_dir.join(name);
    if !binary.exists() {
        bail!(
            "{} not built; run `cargo build --workspace --bins` first",
            binary.display()
        );
    }
    Ok(binary)
}

/// The last `lines` lines of a file (empty if unreadable).
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Whether this machine can run these tests: root, containerd, runc, CNI plugins, iptables.
pub fn available() -> bool {
    rkube_testkit::containerd::available()
        && Path::new("/usr/lib/cni/bridge").exists()
        && Command::new("iptables")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
}

/// Network names owned by one cluster.
#[derive(Clone, Debug)]
struct NetworkNames {
    pod_cidr: String,
    bridge: String,
    network: String,
    forward_chain: String,
}

impl NetworkNames {
    /// Derived from our PID (nextest runs each test in its own process); the CIDR skips
    /// third octets some other bridge already routes.
    fn for_this_process() -> NetworkNames {
        let pid = std::process::id();
        let routes = Command::new("ip")
            .args(["-4", "route", "show"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let start = pid % 250;
        let octet = (0..250)
            .map(|i| (start + i) % 250)
            .find(|n| !routes.contains(&format!("10.250.{n}.")))
            .unwrap_or(start);
        NetworkNames {
            pod_cidr: format!("10.250.{octet}.0/24"),
            bridge: format!("rkc{:x}", pid & 0xff_ffff),
            network: format!("rkc-{pid}"),
            forward_chain: format!("RKC-{pid}"),
        }
    }
}

/// One node with the control plane, each a real binary; see the module docs.
pub struct NodeCluster {
    dir: tempfile::TempDir,
    url: String,
    kubelet_args: Vec<String>,
    kubelet_port: u16,
    network: NetworkNames,
    http: reqwest::Client,
    apiserver: Option<Component>,
    scheduler: Option<Component>,
    controller_manager: Option<Component>,
    kubelet: Option<Component>,
    containerd: Option<ContainerdProcess>,
}

impl NodeCluster {
    /// Starts everything and waits until the node is Ready. The kubelet's crash-loop
    /// backoff starts at 1 s and stops at 8 s, so restarts are visible within a test.
    pub async fn start() -> anyhow::Result<NodeCluster> {
        crate::init_logging();
        if !available() {
            bail!(
                "these tests need root, containerd, runc, containernetworking-plugins and iptables"
            );
        }
        // Short prefix under /tmp: namespace and socket paths live inside.
        let dir = tempfile::Builder::new()
            .prefix("rkc-")
            .tempdir_in("/tmp")
            .context("creating the cluster temp dir")?;
        let logs = dir.path().join("logs");
        let images = dir.path().join("images");
        for sub in [&logs, &images] {
            std::fs::create_dir_all(sub)?;
        }
        rkube_testkit::images::busybox_oci_tarball(&images, IMAGE)?;
        rkube_testkit::images::busybox_oci_tarball(&images, IMAGE_V2)?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()?;
        let network = NetworkNames::for_this_process();
        let api_port = free_port()?;
        let url = format!("http://127.0.0.1:{api_port}");
        let kubelet_port = free_port()?;
        let mut cluster = NodeCluster {
            url: url.clone(),
            kubelet_args: Vec::new(),
            kubelet_port,
            network: network.clone(),
            http,
            apiserver: None,
            scheduler: None,
            controller_manager: None,
            kubelet: None,
            containerd: None,
            dir,
        };
        std::fs::write(cluster.kubeconfig_path(), kubeconfig_for(&cluster.url))?;

        cluster.apiserver = Some(Component::spawn(
            "rkube-apiserver",
            &[
                format!("--port={api_port}"),
                format!("--data-dir={}", cluster.path("apiserver").display()),
            ],
            &logs,
        )?);
        cluster
            .wait(
                "the API server to be ready",
                START_TIMEOUT,
                |c| async move {
                    let r = c.http.get(format!("{}/readyz", c.url)).send().await.ok()?;
                    r.status().is_success().then_some(())
                },
            )
            .await;
        cluster.scheduler = Some(Component::spawn(
            "rkube-scheduler",
            &[
                format!("--master={url}"),
                // Nothing here reads their health endpoints: any free port.
                "--port=0".into(),
            ],
            &logs,
        )?);
        cluster.controller_manager = Some(Component::spawn(
            "rkube-controller-manager",
            &[format!("--master={url}"), "--port=0".into()],
            &logs,
        )?);

        let containerd = ContainerdProcess::start().await?;
        cluster.kubelet_args = vec![
            format!("--master={url}"),
            format!("--node-name={NODE_NAME}"),
            "--node-ip=127.0.0.1".into(),
            format!("--pod-cidr={}", network.pod_cidr),
            "--bind-address=127.0.0.1".into(),
            format!("--port={kubelet_port}"),
            format!("--root-dir={}", cluster.path("kubelet").display()),
            "--runtime=containerd".into(),
            format!(
                "--containerd-address={}",
                containerd.socket_path().display()
            ),
            "--cni-bin-dir=/usr/lib/cni".into(),
            format!("--cni-bridge={}", network.bridge),
            format!("--cni-network-name={}", network.network),
            format!("--cni-forward-chain={}", network.forward_chain),
            format!("--netns-dir={}", cluster.path("netns").display()),
            format!("--image-dir={}", images.display()),
            "--backoff-initial=1".into(),
            "--backoff-max=8".into(),
            "--lease-renew-interval=2".into(),
        ];
        cluster.containerd = Some(containerd);
        cluster.kubelet = Some(Component::spawn("rkubelet", &cluster.kubelet_args, &logs)?);
        cluster.wait_node_ready().await;
        Ok(cluster)
    }

    /// `http://127.0.0.1:PORT` of the API server.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn pod_cidr(&self) -> &str {
        &self.network.pod_cidr
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn kubeconfig_path(&self) -> PathBuf {
        self.path("kubeconfig")
    }

    /// Fails (with the component's log) if a control-plane process or the kubelet died.
    pub fn check_components(&mut self) -> anyhow::Result<()> {
        for component in [
            &mut self.apiserver,
            &mut self.scheduler,
            &mut self.controller_manager,
            &mut self.kubelet,
        ]
        .into_iter()
        .flatten()
        {
            component.check_running()?;
        }
        Ok(())
    }

    /// Polls `probe` every [`CLUSTER_POLL`] until it returns `Some`, panicking after
    /// `timeout` with what was awaited.
    pub async fn wait<'a, T, F, Fut>(&'a self, what: &str, timeout: Duration, mut probe: F) -> T
    where
        F: FnMut(&'a NodeCluster) -> Fut,
        Fut: Future<Output = Option<T>> + 'a,
    {
        let probe = || {
            let found = probe(self);
            async move { Ok(found.await) }
        };
        match try_poll(CLUSTER_POLL, timeout, probe, || TimedOut).await {
            Ok(value) => value,
            Err(TimedOut) => panic!("timed out after {timeout:?} waiting for {what}"),
        }
    }

    /// GET a path of the API server as JSON; `None` on 404.
    pub async fn get_json(&self, path: &str) -> Option<Value> {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return None;
        }
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        Some(
            response
                .json()
                .await
                .unwrap_or_else(|e| panic!("GET {path}: {e}")),
        )
    }

    /// A pod in `default`, or `None` once it is gone.
    pub async fn pod(&self, name: &str) -> Option<Value> {
        self.get_json(&format!("/api/v1/namespaces/default/pods/{name}"))
            .await
    }

    /// Pods in `default` matching a label selector (e.g. `app=web`).
    pub async fn pods(&self, selector: &str) -> Vec<Value> {
        let list = self
            .get_json(&format!(
                "/api/v1/namespaces/default/pods?labelSelector={selector}"
            ))
            .await
            .unwrap_or(Value::Null);
        list["items"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until `check` accepts the pod (which must exist) and returns it.
    pub async fn wait_pod(&self, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let check = &check;
        let accepted = || async {
            let pod = self.pod(name).await;
            Ok(pod.filter(|pod| check(pod)))
        };
        match try_poll(CLUSTER_POLL, START_TIMEOUT, accepted, || TimedOut).await {
            Ok(pod) => pod,
            Err(TimedOut) => panic!(
                "pod {name} never got {what}; last status: {:#}",
                self.pod(name).await.unwrap_or(Value::Null)["status"]
            ),
        }
    }

    async fn wait_node_ready(&self) {
        self.wait("the node to be Ready", START_TIMEOUT, |c| async move {
            let node = c.get_json(&format!("/api/v1/nodes/{NODE_NAME}")).await?;
            condition_true(&node, "Ready").then_some(())
        })
        .await;
    }

    /// The real kubectl pointed at this cluster.
    pub fn kubectl_runner(&self) -> Kubectl {
        Kubectl {
            kubeconfig: self.kubeconfig_path(),
            cache_dir: self.path("kubectl-cache"),
            home: self.dir.path().to_path_buf(),
        }
    }

    /// A kubectl command for this cluster, to be completed and spawned by the caller.
    pub fn kubectl_command(&self, args: &[&str]) -> tokio::process::Command {
        self.kubectl_runner().command(args)
    }

    /// Runs kubectl to completion, whatever its exit status.
    pub async fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_runner().run(args).await
    }

    /// Runs kubectl and panics with its output unless it succeeds; returns stdout.
    pub async fn kubectl_ok(&self, args: &[&str]) -> String {
        self.kubectl_runner().run_ok(args).await
    }

    /// `kubectl apply -f -` with `manifest` (YAML or JSON) on stdin.
    pub async fn apply(&self, manifest: &str) -> String {
        use tokio::io::AsyncWriteExt;
        let mut child = self
            .kubectl_command(&["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning kubectl apply");
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(manifest.as_bytes())
            .await
            .expect("writing the manifest");
        drop(stdin);
        let output = child.wait_with_output().await.expect("kubectl apply");
        assert!(
            output.status.success(),
            "kubectl apply failed ({}):\n{manifest}\nstderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The kubelet's HTTP address (logs, exec, healthz).
    pub fn kubelet_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.kubelet_port)
    }

    pub fn kubelet_pid(&self) -> Option<u32> {
        self.kubelet.as_ref().map(|k| k.child.id())
    }

    /// Stops the kubelet with SIGTERM (its containers keep running) and starts it again
    /// with the same flags; returns once the new process serves HTTP.
    pub async fn restart_kubelet(&mut self) -> anyhow::Result<()> {
        if let Some(mut kubelet) = self.kubelet.take() {
            kubelet.terminate().await?;
        }
        let logs = self.path("logs");
        self.kubelet = Some(Component::spawn("rkubelet", &self.kubelet_args, &logs)?);
        let healthz = format!("{}/healthz", self.kubelet_url());
        let (http, kubelet) = (&self.http, &mut self.kubelet);
        let serving = || {
            // Looked at before the request, so the future borrows nothing of the kubelet.
            let running = kubelet.as_mut().map_or(Ok(()), Component::check_running);
            let healthz = &healthz;
            async move {
                running?;
                let response = http.get(healthz).send().await;
                Ok(response
                    .is_ok_and(|r| r.status().is_success())
                    .then_some(()))
            }
        };
        try_poll(POLL_INTERVAL, START_TIMEOUT, serving, || {
            anyhow!("the restarted kubelet did not serve /healthz")
        })
        .await
    }

    /// Runs `ctr` against this node's containerd and namespace; returns stdout.
    pub fn ctr(&self, args: &[&str]) -> anyhow::Result<String> {
        let containerd = self.containerd.as_ref().context("containerd stopped")?;
        let output = Command::new("ctr")
            .arg(format!("--address={}", containerd.socket_path().display()))
            .arg("--namespace=rkube")
            .args(args)
            .output()
            .context("running ctr")?;
        if !output.status.success() {
            bail!(
                "ctr {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Container IDs containerd holds for this node, seen independently of the kubelet.
    pub fn runtime_containers(&self) -> anyhow::Result<Vec<String>> {
        Ok(self
            .ctr(&["containers", "list", "--quiet"])?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect())
    }

    /// Tasks (container processes) containerd runs: (container ID, PID, status).
    pub fn runtime_tasks(&self) -> anyhow::Result<Vec<(String, u32, String)>> {
        Ok(self
            .ctr(&["tasks", "list"])?
            .lines()
            .skip(1)
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                let id = fields.next()?.to_string();
                let pid = fields.next()?.parse().ok()?;
                let status = fields.next()?.to_string();
                Some((id, pid, status))
            })
            .collect())
    }

    /// Prints the tail of every component's log to stderr (test output).
    pub fn print_logs(&self) {
        let logs = self.path("logs");
        let mut names: Vec<PathBuf> = std::fs::read_dir(&logs)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        if let Some(containerd) = &self.containerd {
            names.push(containerd.log_path());
        }
        names.sort();
        for log in names {
            eprintln!(
                "----- {} (last {LOG_TAIL_LINES} lines)\n{}",
                log.display(),
                tail(&log, LOG_TAIL_LINES)
            );
        }
    }

    /// UIDs of every pod the API server holds, asked synchronously (for [`Drop`]).
    fn pod_uids_blocking(&self) -> Vec<String> {
        let output = Command::new(kubectl_binary())
            .arg(format!("--kubeconfig={}", self.kubeconfig_path().display()))
            .arg(format!(
                "--cache-dir={}",
                self.path("kubectl-cache").display()
            ))
            .args([
                "get",
                "pods",
                "--all-namespaces",
                "--request-timeout=10s",
                "-o",
                "jsonpath={.items[*].metadata.uid}",
            ])
            .env_remove("KUBECONFIG")
            .env("HOME", self.dir.path())
            .stdin(Stdio::null())
            .output();
        output
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn cleanup_network(&self) {
        rkube_testkit::containerd::unmount_under(self.dir.path());
        let _ = Command::new("ip")
            .args(["link", "delete", &self.network.bridge])
            .stderr(Stdio::null())
            .status();
        let iptables = |args: &[&str]| {
            Command::new("iptables")
                .args(["-w", "-t", "filter"])
                .args(args)
                .stderr(Stdio::null())
                .output()
                .is_ok_and(|o| o.status.success())
        };
        let chain = self.network.forward_chain.as_str();
        while iptables(&["-D", "FORWARD", "-j", chain]) {}
        iptables(&["-F", chain]);
        iptables(&["-X", chain]);
    }
}

impl Drop for NodeCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        let pod_uids = self.pod_uids_blocking();
        // The kubelet first so nothing restarts containers while containerd goes away.
        self.kubelet.take();
        self.controller_manager.take();
        self.scheduler.take();
        self.apiserver.take();
        // Kills the shims and every container, so the network namespaces have no users left.
        self.containerd.take();
        self.cleanup_network();
        remove_pod_cgroups(&pod_uids);
    }
}

/// Removes the cgroups runc made for these pods' containers (`rkube/pod<uid>/<container>`
/// in every hierarchy, as the kubelet lays them out); the containers were killed with
/// containerd, so nothing deleted them. Retries briefly while killed processes exit.
fn remove_pod_cgroups(pod_uids: &[String]) {
    let root = Path::new("/sys/fs/cgroup");
    let mut hierarchies = vec![root.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(root) {
        hierarchies.extend(entries.flatten().map(|e| e.path()));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for uid in pod_uids {
        for hierarchy in &hierarchies {
            let pod = hierarchy.join("rkube").join(format!("pod{uid}"));
            if !pod.is_dir() {
                continue;
            }
            let containers: Vec<PathBuf> = std::fs::read_dir(&pod)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.path())
                        .filter(|p| p.is_dir())
                        .collect()
                })
                .unwrap_or_default();
            for dir in containers.iter().chain([&pod]) {
                while std::fs::remove_dir(dir).is_err() && dir.exists() && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
}

/// Whether `object.status.conditions` has `type` with status "True".
pub fn condition_true(object: &Value, condition: &str) -> bool {
    object["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == condition && c["status"] == "True")
    })
}

/// One HTTP/1.0 GET over a plain TCP connection (no proxies, no client library between
/// the test and the pod); returns the whole response, headers included.
pub async fn http_get(address: &str, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(address),
    )
    .await
    .context("connect timed out")??;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())
        .await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .context("read timed out")??;
    Ok(String::from_utf8_lossy(&response).into_owned())
}
