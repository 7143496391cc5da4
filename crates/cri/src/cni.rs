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
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::fake_network::Ipv4Cidr;
use crate::{PodNetwork, PodNetworkStatus, Result, RuntimeError};

mod forward;
mod netns;
mod plugin;

use netns::{create_netns, remove_netns};
use plugin::{plugin_conf, plugin_type, plugins, pod_ipv4};

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

async fn is_file(path: &Path) -> bool {
    tokio::fs::metadata(path).await.is_ok()
}

#[cfg(test)]
mod tests;
