//! The real [`PodNetwork`]: one named network namespace per pod, wired by the CNI
//! reference plugins (`bridge` with `host-local` IPAM, then `loopback`) executed as
//! binaries per the CNI 1.0.0 spec.
//!
//! Namespaces are made like `ip netns add` does, without running it: a short-lived thread
//! unshares its network namespace and bind-mounts it onto `<netns_dir>/rkube-<pod uid>`,
//! which keeps the namespace alive after the thread exits. The plugin result is persisted
//! per pod in `<state_dir>/<pod uid>.json`, so `status()` works after a kubelet restart
//! and `teardown()` runs DEL with the exact configuration and result of the ADD.
//!
//! The node also needs forwarding allowed for its pod CIDR: Docker (and other
//! firewalls) set the FORWARD policy to DROP, and with bridge netfilter even pod-to-pod
//! traffic on one bridge crosses that chain. A chain (`RKUBE-FORWARD` by default) with
//! ACCEPT rules for the CIDR is installed once, jumped to from the top of FORWARD.

use std::collections::HashMap;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use async_trait::async_trait;
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::fake_network::Ipv4Cidr;
use crate::{PodNetwork, PodNetworkStatus, Result, RuntimeError};

/// The spec version of the configuration we hand to plugins.
const CNI_VERSION: &str = "1.0.0";
/// Interface name of the pod's side of the veth pair.
const POD_INTERFACE: &str = "eth0";
/// A hung plugin must not hold the pod's setup forever (the child is killed on drop).
const PLUGIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

#[derive(Clone, Debug)]
pub struct CniConfig {
    /// Where the plugin binaries live (`/usr/lib/cni` on Debian).
    pub plugin_dir: PathBuf,
    /// The Linux bridge pods are attached to (at most 15 characters).
    pub bridge_name: String,
    /// This node's pod CIDR, e.g. `10.244.1.0/24`; the bridge takes its first address.
    pub pod_cidr: String,
    /// Per-pod results and host-local's address reservations (keep it on persistent disk
    /// so addresses stay reserved across kubelet restarts).
    pub state_dir: PathBuf,
    /// Where the namespace files are bind-mounted (`/var/run/netns` is where `ip netns`
    /// looks).
    pub netns_dir: PathBuf,
    /// MTU of the bridge and veths; the plugin picks one when unset.
    pub mtu: Option<u32>,
    /// The CNI network name (shows in the plugins' iptables comments and host-local's
    /// data directory).
    pub network_name: String,
    /// The iptables filter chain holding the forwarding ACCEPT rules.
    pub forward_chain: String,
}

impl CniConfig {
    /// A configuration with the node defaults: plugins from `/usr/lib/cni`, bridge
    /// `rkube0`, namespaces in `/var/run/netns`, chain `RKUBE-FORWARD`.
    pub fn new(pod_cidr: impl Into<String>, state_dir: impl Into<PathBuf>) -> Self {
        Self {
            plugin_dir: PathBuf::from("/usr/lib/cni"),
            bridge_name: "rkube0".to_string(),
            pod_cidr: pod_cidr.into(),
            state_dir: state_dir.into(),
            netns_dir: PathBuf::from("/var/run/netns"),
            mtu: None,
            network_name: "rkube".to_string(),
            forward_chain: "RKUBE-FORWARD".to_string(),
        }
    }
}

/// What is persisted per pod. Written once before ADD (without `result`), so a crash
/// in the middle leaves enough to undo the partial ADD on the next setup or teardown.
#[derive(Debug, Serialize, Deserialize)]
struct PodState {
    pod_uid: String,
    namespace: String,
    name: String,
    netns_path: PathBuf,
    /// The network configuration list the ADD ran with.
    network: Value,
    /// The final ADD result, once the whole chain succeeded.
    #[serde(default)]
    result: Option<Value>,
    #[serde(default)]
    ip: Option<String>,
}

impl PodState {
    fn status(&self) -> Option<PodNetworkStatus> {
        Some(PodNetworkStatus {
            netns_path: self.netns_path.clone(),
            ip: self.ip.clone()?,
        })
    }
}

/// The error document a failing plugin prints on stdout.
#[derive(Debug, Deserialize)]
struct PluginError {
    #[serde(default)]
    code: u32,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    details: String,
}

pub struct CniNetwork {
    config: CniConfig,
    cidr: Ipv4Cidr,
    /// One lock per pod so setups of different pods run in parallel.
    pod_locks: parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Set once the forwarding rules were verified; guards against re-running iptables
    /// on every pod while still retrying after a failure.
    forwarding_ready: tokio::sync::Mutex<bool>,
    netns_dir_ready: tokio::sync::Mutex<bool>,
}

impl CniNetwork {
    /// Checks the configuration; touches nothing on the machine until the first setup.
    pub fn new(config: CniConfig) -> Result<Self> {
        let cidr = Ipv4Cidr::parse(&config.pod_cidr)?;
        if cidr.size() < 4 {
            return Err(RuntimeError::Other(format!(
                "pod CIDR {cidr} has no room for pod addresses"
            )));
        }
        if config.bridge_name.is_empty() || config.bridge_name.len() > 15 {
            return Err(RuntimeError::Other(format!(
                "bridge name {:?} must be 1 to 15 characters",
                config.bridge_name
            )));
        }
        if config.forward_chain.is_empty() || config.forward_chain.len() > 28 {
            return Err(RuntimeError::Other(format!(
                "iptables chain name {:?} must be 1 to 28 characters",
                config.forward_chain
            )));
        }
        Ok(Self {
            config,
            cidr,
            pod_locks: parking_lot::Mutex::new(HashMap::new()),
            forwarding_ready: tokio::sync::Mutex::new(false),
            netns_dir_ready: tokio::sync::Mutex::new(false),
        })
    }

    pub fn config(&self) -> &CniConfig {
        &self.config
    }

    /// The network namespace file of a pod (whether or not it exists).
    pub fn netns_path(&self, pod_uid: &str) -> PathBuf {
        self.config.netns_dir.join(format!("rkube-{pod_uid}"))
    }

    /// The gateway address pods use (the bridge's address).
    pub fn gateway(&self) -> Ipv4Addr {
        self.cidr.nth(1).unwrap_or(self.cidr.network)
    }

    fn state_path(&self, pod_uid: &str) -> PathBuf {
        self.config.state_dir.join(format!("{pod_uid}.json"))
    }

    /// The configuration list handed to the plugins.
    fn network_config(&self) -> Value {
        let mut bridge = json!({
            "type": "bridge",
            "bridge": self.config.bridge_name,
            "isGateway": true,
            "ipMasq": true,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": self.cidr.to_string(), "gateway": self.gateway().to_string() }]],
                // Pods reach services and other nodes' pods through the node.
                "routes": [{ "dst": "0.0.0.0/0" }],
                "dataDir": self.config.state_dir.join("ipam"),
            },
        });
        if let Some(mtu) = self.config.mtu {
            bridge["mtu"] = json!(mtu);
        }
        json!({
            "cniVersion": CNI_VERSION,
            "name": self.config.network_name,
            "plugins": [bridge, { "type": "loopback" }],
        })
    }

    fn pod_lock(&self, pod_uid: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.pod_locks
            .lock()
            .entry(pod_uid.to_string())
            .or_default()
            .clone()
    }

    /// Drops the pod's lock entry once nobody else holds or waits for it; clones are
    /// only taken under the map lock, so a count of 1 (the map's own) is final.
    fn release_pod_lock(&self, pod_uid: &str, lock: Arc<tokio::sync::Mutex<()>>) {
        drop(lock);
        let mut locks = self.pod_locks.lock();
        if locks
            .get(pod_uid)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            locks.remove(pod_uid);
        }
    }

    async fn read_state(&self, pod_uid: &str) -> Result<Option<PodState>> {
        let path = self.state_path(pod_uid);
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err.into()),
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|err| {
            RuntimeError::Other(format!(
                "corrupt pod network state {}: {err}",
                path.display()
            ))
        })
    }

    async fn write_state(&self, state: &PodState) -> Result<()> {
        tokio::fs::create_dir_all(&self.config.state_dir).await?;
        let path = self.state_path(&state.pod_uid);
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(state)
            .map_err(|err| RuntimeError::Other(format!("encoding pod network state: {err}")))?;
        tokio::fs::write(&tmp, bytes).await?;
        tokio::fs::rename(&tmp, &path).await?;
        Ok(())
    }

    async fn remove_state(&self, pod_uid: &str) -> Result<()> {
        match tokio::fs::remove_file(self.state_path(pod_uid)).await {
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err.into()),
            _ => Ok(()),
        }
    }

    async fn setup_locked(
        &self,
        pod_uid: &str,
        namespace: &str,
        name: &str,
    ) -> Result<PodNetworkStatus> {
        if let Some(state) = self.read_state(pod_uid).await? {
            if let Some(status) = state.status() {
                if is_file(&status.netns_path).await {
                    return Ok(status);
                }
            }
            // A half-done ADD, or a namespace lost with a reboot: undo, then start over.
            self.teardown_state(&state, false).await?;
        }
        let netns_path = self.netns_path(pod_uid);
        if is_file(&netns_path).await {
            // A namespace with no state: nothing of ours is known to be inside; recreate.
            remove_netns(netns_path.clone()).await?;
        }

        self.ensure_forwarding().await?;
        self.ensure_netns_dir().await?;

        let mut state = PodState {
            pod_uid: pod_uid.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
            netns_path: netns_path.clone(),
            network: self.network_config(),
            result: None,
            ip: None,
        };
        self.write_state(&state).await?;
        create_netns(netns_path.clone()).await?;

        match self.add_network(&state).await {
            Ok((result, ip)) => {
                state.result = Some(result);
                state.ip = Some(ip.clone());
                self.write_state(&state).await?;
                Ok(PodNetworkStatus { netns_path, ip })
            }
            Err(err) => {
                // Leave nothing behind; the plugin's error is what the caller needs.
                let _ = self.teardown_state(&state, true).await;
                Err(err)
            }
        }
    }

    /// Runs ADD through the chain, each plugin getting the previous one's result.
    async fn add_network(&self, state: &PodState) -> Result<(Value, String)> {
        let mut prev_result: Option<Value> = None;
        let mut last_with_ips: Option<Value> = None;
        for plugin in plugins(&state.network) {
            let conf = plugin_conf(&state.network, plugin, prev_result.as_ref());
            let output = self.exec_plugin("ADD", state, &conf).await?;
            let result: Value = serde_json::from_slice(&output).map_err(|err| {
                RuntimeError::Unavailable(format!(
                    "CNI plugin {} returned an unreadable result: {err}",
                    plugin_type(plugin)
                ))
            })?;
            if result
                .get("ips")
                .and_then(Value::as_array)
                .is_some_and(|ips| !ips.is_empty())
            {
                last_with_ips = Some(result.clone());
            }
            prev_result = Some(result);
        }
        let result = prev_result.unwrap_or(Value::Null);
        // The final result should carry the IPs forward; fall back to the last plugin
        // that reported any in case a chained plugin dropped them.
        let ip = pod_ipv4(&result, &self.cidr)
            .or_else(|| last_with_ips.as_ref().and_then(|r| pod_ipv4(r, &self.cidr)))
            .ok_or_else(|| {
                RuntimeError::Unavailable(format!(
                    "CNI result has no IPv4 address in {}: {result}",
                    self.cidr
                ))
            })?;
        Ok((result, ip.to_string()))
    }

    /// DEL in reverse order with the configuration and result of the ADD, then removes
    /// the namespace and the state. DEL must tolerate a namespace that is gone. A failed
    /// DEL keeps the state for a retry, unless `best_effort` (undoing a failed ADD,
    /// where the ADD's error is the one to report).
    async fn teardown_state(&self, state: &PodState, best_effort: bool) -> Result<()> {
        let plugins: Vec<&Value> = plugins(&state.network).collect();
        for plugin in plugins.into_iter().rev() {
            let conf = plugin_conf(&state.network, plugin, state.result.as_ref());
            match self.exec_plugin("DEL", state, &conf).await {
                Err(err) if !best_effort => return Err(err),
                _ => {}
            }
        }
        remove_netns(state.netns_path.clone()).await?;
        self.remove_state(&state.pod_uid).await
    }

    async fn exec_plugin(&self, command: &str, state: &PodState, conf: &Value) -> Result<Vec<u8>> {
        let kind = plugin_type(conf);
        if kind.is_empty() || kind.contains('/') {
            return Err(RuntimeError::Other(format!(
                "invalid CNI plugin type {kind:?}"
            )));
        }
        let binary = self.config.plugin_dir.join(kind);
        if !is_file(&binary).await {
            return Err(RuntimeError::Unavailable(format!(
                "CNI plugin {kind} not found at {}",
                binary.display()
            )));
        }
        let stdin = serde_json::to_vec(conf)
            .map_err(|err| RuntimeError::Other(format!("encoding CNI config: {err}")))?;
        let mut child = Command::new(&binary)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &state.pod_uid)
            .env("CNI_NETNS", &state.netns_path)
            .env("CNI_IFNAME", POD_INTERFACE)
            .env("CNI_PATH", &self.config.plugin_dir)
            .env(
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
                    state.namespace, state.name, state.pod_uid
                ),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|err| {
                RuntimeError::Unavailable(format!("running CNI plugin {}: {err}", binary.display()))
            })?;
        if let Some(mut pipe) = child.stdin.take() {
            // A plugin that fails before reading its config closes the pipe early; its
            // exit status and error document below say why.
            match pipe.write_all(&stdin).await {
                Err(err) if err.kind() != io::ErrorKind::BrokenPipe => return Err(err.into()),
                _ => {}
            }
            // Dropping the pipe closes it: plugins read stdin to the end.
        }
        let output = tokio::time::timeout(PLUGIN_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| {
                RuntimeError::Unavailable(format!(
                    "CNI plugin {kind} {command} for pod {} did not finish within {:?}",
                    state.pod_uid, PLUGIN_TIMEOUT
                ))
            })??;
        if output.status.success() {
            return Ok(output.stdout);
        }
        let reason = match serde_json::from_slice::<PluginError>(&output.stdout) {
            Ok(err) if !err.msg.is_empty() => {
                let mut text = err.msg;
                if !err.details.is_empty() {
                    text = format!("{text}: {}", err.details);
                }
                format!("{text} (code {})", err.code)
            }
            _ => {
                let stderr = String::from_utf8_lossy(&output.stderr);
                let stdout = String::from_utf8_lossy(&output.stdout);
                format!("{} {}", stdout.trim(), stderr.trim())
                    .trim()
                    .to_string()
            }
        };
        Err(RuntimeError::Unavailable(format!(
            "CNI plugin {kind} {command} for pod {} failed: {reason}",
            state.pod_uid
        )))
    }

    /// Installs, idempotently, the forwarding ACCEPT rules for the pod CIDR.
    async fn ensure_forwarding(&self) -> Result<()> {
        let mut ready = self.forwarding_ready.lock().await;
        if *ready {
            return Ok(());
        }
        let chain = self.config.forward_chain.as_str();
        let cidr = self.cidr.to_string();
        if !iptables(&["-S", chain]).await? {
            run_iptables(&["-N", chain]).await?;
        }
        let comment = format!("rkube pod network {}", self.config.network_name);
        for direction in ["-s", "-d"] {
            let rule = [
                direction,
                &cidr,
                "-m",
                "comment",
                "--comment",
                &comment,
                "-j",
                "ACCEPT",
            ];
            let check: Vec<&str> = ["-C", chain].into_iter().chain(rule).collect();
            if !iptables(&check).await? {
                let append: Vec<&str> = ["-A", chain].into_iter().chain(rule).collect();
                run_iptables(&append).await?;
            }
        }
        if !iptables(&["-C", "FORWARD", "-j", chain]).await? {
            run_iptables(&["-I", "FORWARD", "1", "-j", chain]).await?;
        }
        *ready = true;
        Ok(())
    }

    async fn ensure_netns_dir(&self) -> Result<()> {
        let mut ready = self.netns_dir_ready.lock().await;
        if !*ready {
            let dir = self.config.netns_dir.clone();
            blocking(move || make_shared_mount_point(&dir)).await?;
            *ready = true;
        }
        Ok(())
    }
}

#[async_trait]
impl PodNetwork for CniNetwork {
    async fn setup(&self, pod_uid: &str, namespace: &str, name: &str) -> Result<PodNetworkStatus> {
        check_pod_uid(pod_uid)?;
        let lock = self.pod_lock(pod_uid);
        let result = {
            let _guard = lock.lock().await;
            self.setup_locked(pod_uid, namespace, name).await
        };
        self.release_pod_lock(pod_uid, lock);
        result
    }

    async fn status(&self, pod_uid: &str) -> Result<Option<PodNetworkStatus>> {
        check_pod_uid(pod_uid)?;
        let Some(status) = self.read_state(pod_uid).await?.and_then(|s| s.status()) else {
            return Ok(None);
        };
        Ok(is_file(&status.netns_path).await.then_some(status))
    }

    async fn teardown(&self, pod_uid: &str) -> Result<()> {
        check_pod_uid(pod_uid)?;
        let lock = self.pod_lock(pod_uid);
        let result = {
            let _guard = lock.lock().await;
            match self.read_state(pod_uid).await {
                Ok(Some(state)) => self.teardown_state(&state, false).await,
                Ok(None) => remove_netns(self.netns_path(pod_uid)).await,
                Err(err) => Err(err),
            }
        };
        self.release_pod_lock(pod_uid, lock);
        result
    }

    /// Pods with a state file: it is written before the namespace is created and removed
    /// after it is gone, so it covers half-done setups too. Namespace files alone are not
    /// listed: the namespace directory may be shared with other kubelets on the machine.
    async fn list(&self) -> Result<Vec<String>> {
        let mut entries = match tokio::fs::read_dir(&self.config.state_dir).await {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(err.into()),
        };
        let mut uids = Vec::new();
        while let Some(entry) = entries.next_entry().await? {
            let name = entry.file_name();
            let Some(uid) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if check_pod_uid(uid).is_ok() {
                uids.push(uid.to_string());
            }
        }
        uids.sort();
        Ok(uids)
    }
}

/// Pod UIDs become file names and CNI container ids, which allow only these characters.
fn check_pod_uid(pod_uid: &str) -> Result<()> {
    let valid = !pod_uid.is_empty()
        && pod_uid.len() <= 200
        && !pod_uid.starts_with('.')
        && pod_uid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(())
    } else {
        Err(RuntimeError::Other(format!("invalid pod uid {pod_uid:?}")))
    }
}

fn plugins(network: &Value) -> impl Iterator<Item = &Value> {
    network
        .get("plugins")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn plugin_type(plugin: &Value) -> &str {
    plugin
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// One plugin's stdin: its own section plus the list's name and version, and the
/// previous result when chaining.
fn plugin_conf(network: &Value, plugin: &Value, prev_result: Option<&Value>) -> Value {
    let mut conf = plugin.clone();
    if let Some(object) = conf.as_object_mut() {
        object.insert("cniVersion".into(), network["cniVersion"].clone());
        object.insert("name".into(), network["name"].clone());
        if let Some(prev) = prev_result {
            object.insert("prevResult".into(), prev.clone());
        }
    }
    conf
}

/// The pod's IPv4 address from a CNI result: the first inside the pod CIDR, preferring
/// one on an interface inside the namespace (the result lists host-side ones too).
fn pod_ipv4(result: &Value, cidr: &Ipv4Cidr) -> Option<Ipv4Addr> {
    let interfaces = result.get("interfaces").and_then(Value::as_array);
    let in_sandbox = |ip: &Value| {
        let index = ip.get("interface").and_then(Value::as_u64)?;
        let interface = interfaces?.get(usize::try_from(index).ok()?)?;
        Some(
            interface
                .get("sandbox")
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty()),
        )
    };
    let candidates: Vec<(Ipv4Addr, Option<bool>)> = result
        .get("ips")?
        .as_array()?
        .iter()
        .filter_map(|ip| {
            let address = ip.get("address")?.as_str()?;
            let addr: Ipv4Addr = address.split('/').next()?.parse().ok()?;
            cidr.contains(addr).then(|| (addr, in_sandbox(ip)))
        })
        .collect();
    candidates
        .iter()
        .find(|(_, sandbox)| *sandbox == Some(true))
        .or_else(|| candidates.first())
        .map(|(addr, _)| *addr)
}

async fn is_file(path: &Path) -> bool {
    tokio::fs::metadata(path).await.is_ok()
}

/// Runs iptables; `Ok(false)` when it ran and said no (a failed check).
async fn iptables(args: &[&str]) -> Result<bool> {
    let output = Command::new("iptables")
        .arg("-w")
        .args(["-t", "filter"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|err| RuntimeError::Unavailable(format!("running iptables: {err}")))?;
    Ok(output.status.success())
}

async fn run_iptables(args: &[&str]) -> Result<()> {
    let output = Command::new("iptables")
        .arg("-w")
        .args(["-t", "filter"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|err| RuntimeError::Unavailable(format!("running iptables: {err}")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(RuntimeError::Unavailable(format!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

async fn blocking<T: Send + 'static>(
    job: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(job)
        .await
        .map_err(|err| RuntimeError::Other(format!("blocking task failed: {err}")))?
}

fn errno_error(errno: Errno, what: String) -> RuntimeError {
    let err = io::Error::from(errno);
    RuntimeError::Io(io::Error::new(err.kind(), format!("{what}: {err}")))
}

/// Makes `dir` a mount point with shared propagation, as `ip netns` does, so that
/// unmounting a namespace here also unmounts the copies other mount namespaces (made
/// after it was mounted) hold, instead of keeping the namespace alive there.
fn make_shared_mount_point(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let make_shared = || {
        nix::mount::mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match make_shared() {
        Ok(()) => Ok(()),
        // Not a mount point yet: bind it onto itself, then retry.
        Err(Errno::EINVAL) => {
            nix::mount::mount(
                Some(dir),
                dir,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| errno_error(e, format!("bind-mounting {}", dir.display())))?;
            make_shared().map_err(|e| errno_error(e, format!("making {} shared", dir.display())))
        }
        Err(e) => Err(errno_error(e, format!("making {} shared", dir.display()))),
    }
}

/// Creates a network namespace pinned at `path`. The unshare happens on a thread of its
/// own, so no runtime worker thread ever changes namespace; the bind mount outlives it.
async fn create_netns(path: PathBuf) -> Result<()> {
    blocking(move || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|err| {
                io::Error::new(err.kind(), format!("creating {}: {err}", path.display()))
            })?;
        let target = path.clone();
        let pinned = std::thread::Builder::new()
            .name("netns-create".into())
            .spawn(move || -> std::result::Result<(), (Errno, &'static str)> {
                nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(|e| (e, "unshare"))?;
                nix::mount::mount(
                    Some("/proc/thread-self/ns/net"),
                    &target,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|e| (e, "bind-mount"))
            })?
            .join()
            .map_err(|_| RuntimeError::Other("network namespace thread panicked".into()))?;
        if let Err((errno, step)) = pinned {
            let _ = std::fs::remove_file(&path);
            return Err(errno_error(
                errno,
                format!("creating network namespace {} ({step})", path.display()),
            ));
        }
        Ok(())
    })
    .await
}

/// Unmounts and deletes a namespace file; a missing or unmounted file is fine.
async fn remove_netns(path: PathBuf) -> Result<()> {
    blocking(move || {
        match nix::mount::umount2(&path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(Errno::ENOENT) | Err(Errno::EINVAL) => {}
            Err(e) => return Err(errno_error(e, format!("unmounting {}", path.display()))),
        }
        match std::fs::remove_file(&path) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(io::Error::new(
                err.kind(),
                format!("removing {}: {err}", path.display()),
            )
            .into()),
            _ => Ok(()),
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr() -> Ipv4Cidr {
        Ipv4Cidr::parse("10.244.1.0/24").unwrap()
    }

    #[test]
    fn the_pod_address_is_the_sandbox_one_inside_the_cidr() {
        let result = json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                { "name": "rkube0", "mac": "aa" },
                { "name": "veth1", "mac": "bb" },
                { "name": "eth0", "mac": "cc", "sandbox": "/var/run/netns/x" }
            ],
            "ips": [
                { "address": "192.168.0.5/24", "interface": 2 },
                { "address": "10.244.1.9/24", "interface": 0 },
                { "address": "10.244.1.7/24", "gateway": "10.244.1.1", "interface": 2 }
            ]
        });
        assert_eq!(
            pod_ipv4(&result, &cidr()),
            Some("10.244.1.7".parse().unwrap())
        );
        let without_interfaces = json!({ "ips": [{ "address": "10.244.1.4/24" }] });
        assert_eq!(
            pod_ipv4(&without_interfaces, &cidr()),
            Some("10.244.1.4".parse().unwrap())
        );
        assert_eq!(pod_ipv4(&json!({ "ips": [] }), &cidr()), None);
        assert_eq!(pod_ipv4(&json!({}), &cidr()), None);
    }

    #[test]
    fn plugin_config_carries_name_version_and_previous_result() {
        let network = CniNetwork::new(CniConfig::new("10.244.1.0/24", "/tmp/x")).unwrap();
        let list = network.network_config();
        let kinds: Vec<&str> = plugins(&list).map(plugin_type).collect();
        assert_eq!(kinds, ["bridge", "loopback"]);
        let bridge = plugins(&list).next().unwrap();
        let prev = json!({ "ips": [] });
        let conf = plugin_conf(&list, bridge, Some(&prev));
        assert_eq!(conf["cniVersion"], "1.0.0");
        assert_eq!(conf["name"], "rkube");
        assert_eq!(conf["prevResult"], prev);
        assert_eq!(conf["bridge"], "rkube0");
        assert_eq!(conf["ipam"]["ranges"][0][0]["subnet"], "10.244.1.0/24");
        assert_eq!(conf["ipam"]["dataDir"], "/tmp/x/ipam");
        assert!(plugin_conf(&list, bridge, None).get("prevResult").is_none());
    }

    #[test]
    fn bad_configuration_and_pod_uids_are_rejected() {
        assert!(CniNetwork::new(CniConfig::new("10.244.1.0", "/tmp/x")).is_err());
        let mut long_bridge = CniConfig::new("10.244.1.0/24", "/tmp/x");
        long_bridge.bridge_name = "a-very-long-bridge-name".into();
        assert!(CniNetwork::new(long_bridge).is_err());
        for bad in ["", "../etc", "a/b", ".hidden", "a b"] {
            assert!(check_pod_uid(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_pod_uid("0f6c2a3e-1b2c-4d5e-8f90-123456789abc").is_ok());
    }
}
