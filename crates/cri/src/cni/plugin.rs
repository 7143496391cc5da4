//! Running CNI plugins: the configuration list handed to them, each plugin's stdin, the
//! binary's invocation per the CNI 1.0.0 spec, and reading the pod's address from the
//! result. Separate from the pod lifecycle in `cni` because it is the wire protocol with
//! the plugin binaries.

use std::io;
use std::net::Ipv4Addr;
use std::process::Stdio;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::{is_file, CniNetwork, PodState};
use crate::fake_network::Ipv4Cidr;
use crate::{Result, RuntimeError};

/// The spec version of the configuration we hand to plugins.
const CNI_VERSION: &str = "1.0.0";
/// Interface name of the pod's side of the veth pair.
const POD_INTERFACE: &str = "eth0";
/// A hung plugin must not hold the pod's setup forever (the child is killed on drop).
const PLUGIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

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

impl CniNetwork {
    /// The configuration list handed to the plugins.
    pub(super) fn network_config(&self) -> Value {
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

    pub(super) async fn exec_plugin(
        &self,
        command: &str,
        state: &PodState,
        conf: &Value,
    ) -> Result<Vec<u8>> {
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
}

pub(super) fn plugins(network: &Value) -> impl Iterator<Item = &Value> {
    network
        .get("plugins")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

pub(super) fn plugin_type(plugin: &Value) -> &str {
    plugin
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// One plugin's stdin: its own section plus the list's name and version, and the
/// previous result when chaining.
pub(super) fn plugin_conf(network: &Value, plugin: &Value, prev_result: Option<&Value>) -> Value {
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
pub(super) fn pod_ipv4(result: &Value, cidr: &Ipv4Cidr) -> Option<Ipv4Addr> {
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
