//! The Node object (registration, status with capacity and conditions) and its Lease.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::status::timestamp;

pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
pub const KUBELET_VERSION: &str = "v1.32.0-rkube";

/// What the host has, read from /proc (falls back to modest defaults if unreadable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostCapacity {
    pub cpus: usize,
    pub memory_kib: u64,
}

impl HostCapacity {
    pub fn read() -> HostCapacity {
        let cpus = std::fs::read_to_string("/proc/cpuinfo")
            .map(|s| s.lines().filter(|l| l.starts_with("processor")).count())
            .ok()
            .filter(|n| *n > 0)
            .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
            .unwrap_or(1);
        let memory_kib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| parse_meminfo_total(&s))
            .unwrap_or(1024 * 1024);
        HostCapacity { cpus, memory_kib }
    }
}

pub fn parse_meminfo_total(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The facts a node's object is built from.
#[derive(Clone, Debug)]
pub struct NodeFacts {
    pub name: String,
    pub internal_ip: String,
    pub hostname: String,
    pub pod_cidr: Option<String>,
    pub max_pods: u32,
    pub capacity: HostCapacity,
    pub runtime_version: String,
    pub kubelet_port: u16,
}

pub fn node_labels(facts: &NodeFacts) -> BTreeMap<String, String> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), facts.name.clone()),
        (
            "kubernetes.io/os".to_string(),
            std::env::consts::OS.to_string(),
        ),
        ("kubernetes.io/arch".to_string(), arch.to_string()),
        (
            "beta.kubernetes.io/os".to_string(),
            std::env::consts::OS.to_string(),
        ),
        ("beta.kubernetes.io/arch".to_string(), arch.to_string()),
    ])
}

/// The node's status; `previous` keeps condition transition times of unchanged conditions.
pub fn node_status(
    facts: &NodeFacts,
    ready: Result<(), String>,
    previous: Option<&Value>,
) -> Value {
    let now = timestamp(Utc::now());
    let transition = |kind: &str, status: &str| {
        previous
            .and_then(|p| p["conditions"].as_array())
            .and_then(|c| {
                c.iter()
                    .find(|c| c["type"] == kind && c["status"] == status)
            })
            .and_then(|c| c["lastTransitionTime"].as_str())
            .unwrap_or(&now)
            .to_string()
    };
    let pressure = |kind: &str, reason: &str, message: &str| {
        json!({
            "type": kind, "status": "False", "reason": reason, "message": message,
            "lastHeartbeatTime": now, "lastTransitionTime": transition(kind, "False"),
        })
    };
    let (ready_status, reason, message) = match &ready {
        Ok(()) => (
            "True",
            "KubeletReady",
            "kubelet is posting ready status".to_string(),
        ),
        Err(why) => ("False", "KubeletNotReady", why.clone()),
    };
    let memory = format!("{}Ki", facts.capacity.memory_kib);
    let resources = json!({
        "cpu": facts.capacity.cpus.to_string(),
        "memory": memory,
        "pods": facts.max_pods.to_string(),
        "ephemeral-storage": "10Gi",
    });
    json!({
        "capacity": resources,
        "allocatable": resources,
        "conditions": [
            pressure("MemoryPressure", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            pressure("DiskPressure", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            pressure("PIDPressure", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            {
                "type": "Ready", "status": ready_status, "reason": reason, "message": message,
                "lastHeartbeatTime": now, "lastTransitionTime": transition("Ready", ready_status),
            },
        ],
        "addresses": [
            {"type": "InternalIP", "address": facts.internal_ip},
            {"type": "Hostname", "address": facts.hostname},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": facts.kubelet_port}},
        "nodeInfo": {
            "machineID": "", "systemUUID": "", "bootID": "",
            "kernelVersion": kernel_version(),
            "osImage": "rkube",
            "containerRuntimeVersion": facts.runtime_version,
            "kubeletVersion": KUBELET_VERSION,
            "kubeProxyVersion": KUBELET_VERSION,
            "operatingSystem": std::env::consts::OS,
            "architecture": node_labels(facts).get("kubernetes.io/arch").cloned().unwrap_or_default(),
        },
    })
}

fn kernel_version() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Creates the Node (or adopts an existing one) with labels and podCIDR.
pub async fn register(client: &Client, facts: &NodeFacts) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut spec = json!({});
    if let Some(cidr) = &facts.pod_cidr {
        spec = json!({"podCIDR": cidr, "podCIDRs": [cidr]});
    }
    let object = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": facts.name, "labels": node_labels(facts)},
        "spec": spec,
    });
    let node: Node = serde_json::from_value(object.clone()).map_err(kube::Error::SerdeError)?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let patch = json!({"metadata": {"labels": node_labels(facts)}, "spec": spec});
            nodes
                .patch(&facts.name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .map(|_| ())
        }
        Err(e) => Err(e),
    }
}

/// Conditions without heartbeat times, to decide whether a status write is a change.
fn significant(status: &Value) -> Value {
    let mut s = status.clone();
    if let Some(conditions) = s["conditions"].as_array_mut() {
        for c in conditions {
            if let Some(c) = c.as_object_mut() {
                c.remove("lastHeartbeatTime");
            }
        }
    }
    s
}

/// Writes node status on change (checked every `check`) and at least every `report`.
pub async fn status_loop<F, Fut>(
    client: Client,
    facts: NodeFacts,
    check: Duration,
    report: Duration,
    readiness: F,
    mut shutdown: watch::Receiver<bool>,
) where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let nodes: Api<Node> = Api::all(client);
    let mut last: Option<Value> = None;
    let mut last_write = tokio::time::Instant::now();
    loop {
        let ready = readiness().await;
        let status = node_status(&facts, ready, last.as_ref());
        let changed = last.as_ref().map(significant) != Some(significant(&status));
        if changed || last_write.elapsed() >= report {
            match nodes
                .patch_status(
                    &facts.name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": status})),
                )
                .await
            {
                Ok(_) => {
                    last = Some(status);
                    last_write = tokio::time::Instant::now();
                }
                Err(e) => {
                    tracing::warn!(node = %facts.name, error = %e, "updating node status failed")
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(check) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Keeps the node's Lease in kube-node-lease renewed.
pub async fn lease_loop(
    client: Client,
    node: String,
    duration_seconds: i32,
    renew: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let leases: Api<Lease> = Api::namespaced(client, NODE_LEASE_NAMESPACE);
    loop {
        let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let spec = json!({"holderIdentity": node, "leaseDurationSeconds": duration_seconds, "renewTime": now});
        let result = match leases
            .patch(
                &node,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": spec})),
            )
            .await
        {
            Err(kube::Error::Api(e)) if e.code == 404 => {
                let lease = json!({
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": node, "namespace": NODE_LEASE_NAMESPACE},
                    "spec": spec,
                });
                match serde_json::from_value::<Lease>(lease) {
                    Ok(lease) => leases
                        .create(&PostParams::default(), &lease)
                        .await
                        .map(|_| ()),
                    Err(e) => Err(kube::Error::SerdeError(e)),
                }
            }
            other => other.map(|_| ()),
        };
        if let Err(e) = result {
            tracing::warn!(%node, error = %e, "renewing node lease failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(renew) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> NodeFacts {
        NodeFacts {
            name: "n1".into(),
            internal_ip: "10.0.0.1".into(),
            hostname: "host".into(),
            pod_cidr: Some("10.244.1.0/24".into()),
            max_pods: 110,
            capacity: HostCapacity {
                cpus: 4,
                memory_kib: 8_000_000,
            },
            runtime_version: "fake://0.1".into(),
            kubelet_port: 10250,
        }
    }

    #[test]
    fn meminfo_parses() {
        assert_eq!(
            parse_meminfo_total("MemTotal:       16318480 kB\nMemFree: 1 kB\n"),
            Some(16318480)
        );
        assert_eq!(parse_meminfo_total("nothing"), None);
    }

    #[test]
    fn status_has_capacity_conditions_and_endpoint() {
        let ready = node_status(&facts(), Ok(()), None);
        assert_eq!(ready["capacity"]["cpu"], "4");
        assert_eq!(ready["allocatable"]["memory"], "8000000Ki");
        assert_eq!(ready["allocatable"]["pods"], "110");
        assert_eq!(ready["daemonEndpoints"]["kubeletEndpoint"]["Port"], 10250);
        assert_eq!(ready["nodeInfo"]["kubeletVersion"], KUBELET_VERSION);
        let cond = |s: &Value, t: &str| {
            s["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == t)
                .unwrap()
                .clone()
        };
        assert_eq!(cond(&ready, "Ready")["reason"], "KubeletReady");
        assert_eq!(cond(&ready, "MemoryPressure")["status"], "False");
        let not_ready = node_status(
            &facts(),
            Err("container runtime is down".into()),
            Some(&ready),
        );
        assert_eq!(cond(&not_ready, "Ready")["status"], "False");
        assert_eq!(cond(&not_ready, "Ready")["reason"], "KubeletNotReady");
        assert_eq!(
            cond(&not_ready, "DiskPressure")["lastTransitionTime"],
            cond(&ready, "DiskPressure")["lastTransitionTime"]
        );
        assert_eq!(
            significant(&ready),
            significant(&node_status(&facts(), Ok(()), Some(&ready)))
        );
        assert_eq!(node_labels(&facts())["kubernetes.io/hostname"], "n1");
    }
}
