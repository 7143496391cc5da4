//! rkube-simnode: simulated nodes for tests and benchmarks, in the spirit of kwok.
//!
//! A [`SimCluster`] registers Node objects (capacity, allocatable, Ready=True, addresses,
//! nodeInfo), keeps their Leases in `kube-node-lease` renewed, marks pods bound to its
//! nodes Running and Ready, and finishes their deletions. It only talks to the API server
//! (kube-rs), so whatever it does, a real kubelet could have done.
//!
//! Scale: one process handles thousands of nodes. There is one pod watch for all nodes
//! (field selector `spec.nodeName!=`), one lease loop that renews every live node's lease
//! with bounded concurrency, and a small keyed work queue so that one pod is never
//! handled by two workers at once and its latest state always wins.
//!
//! A node can be stopped ([`SimCluster::stop_node`]) to simulate a dead kubelet: its
//! lease is no longer renewed and its pods are no longer touched.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod pods;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Taint};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use parking_lot::RwLock;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The namespace node heartbeats live in.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// What every node of one batch looks like.
#[derive(Clone, Debug)]
pub struct NodeTemplate {
    /// CPU capacity as a quantity (`"4"`, `"3500m"`).
    pub cpu: String,
    /// Memory capacity as a quantity (`"16Gi"`).
    pub memory: String,
    /// Maximum number of pods.
    pub pods: u32,
    /// Extra labels; `kubernetes.io/hostname`, `kubernetes.io/os` and `kubernetes.io/arch` are always set.
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
}

impl Default for NodeTemplate {
    fn default() -> NodeTemplate {
        NodeTemplate {
            cpu: "4".into(),
            memory: "16Gi".into(),
            pods: 110,
            labels: BTreeMap::new(),
            taints: Vec::new(),
        }
    }
}

impl NodeTemplate {
    pub fn with_label(mut self, key: &str, value: &str) -> NodeTemplate {
        self.labels.insert(key.to_string(), value.to_string());
        self
    }

    pub fn with_taint(mut self, key: &str, value: &str, effect: &str) -> NodeTemplate {
        self.taints.push(Taint {
            key: key.to_string(),
            value: (!value.is_empty()).then(|| value.to_string()),
            effect: effect.to_string(),
            time_added: None,
        });
        self
    }
}

#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Node names are this prefix plus a running number.
    pub name_prefix: String,
    pub lease_duration_seconds: i32,
    /// How often leases are renewed (upstream kubelet: a quarter of the lease duration).
    pub renew_interval: Duration,
    /// Writes in flight at once, per activity (registration, lease renewal, pod updates).
    pub concurrency: usize,
    pub kubelet_version: String,
    /// Mark bound pods Running and finish deletions (off: nodes and leases only).
    pub simulate_pods: bool,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            name_prefix: "sim-node-".into(),
            lease_duration_seconds: 40,
            renew_interval: Duration::from_secs(10),
            concurrency: 32,
            kubelet_version: "v1.32.0".into(),
            simulate_pods: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The API server refused or failed a write the simulation cannot do without.
    #[error("{action} {name}: {source}")]
    Api {
        action: &'static str,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    /// A built object did not convert to its typed form (a bug in this crate or a bad template).
    #[error("building {kind} {name}: {source}")]
    Build {
        kind: &'static str,
        name: String,
        #[source]
        source: serde_json::Error,
    },
    /// The node name is not one of this cluster's nodes.
    #[error("node {0} is not part of this simulated cluster")]
    UnknownNode(String),
}

/// Counters, for tests and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    pub pods_started: u64,
    pub pods_deleted: u64,
    pub lease_renewals: u64,
    pub write_errors: u64,
}

#[derive(Default)]
struct Counters {
    pods_started: AtomicU64,
    pods_deleted: AtomicU64,
    lease_renewals: AtomicU64,
    write_errors: AtomicU64,
}

/// One simulated node.
pub(crate) struct SimNode {
    pub(crate) name: String,
    index: u32,
    pub(crate) host_ip: String,
    next_pod: AtomicU32,
    alive: AtomicBool,
    /// Whether its Node and Lease exist. Only lease renewal and [`SimCluster::node_names`]
    /// wait for this: the pod side serves the node from before its Node is created, since
    /// a pod can be bound to it the moment it exists and may never change again.
    registered: AtomicBool,
}

impl SimNode {
    fn new(name: String, index: u32) -> SimNode {
        // Host IPs from 172.16.0.0/12, pod /24s from 10.128.0.0/9: room for 32k nodes.
        let host_ip = format!(
            "172.{}.{}.{}",
            16 + (index >> 16) % 16,
            (index >> 8) & 0xff,
            index & 0xff
        );
        SimNode {
            name,
            index,
            host_ip,
            next_pod: AtomicU32::new(0),
            alive: AtomicBool::new(true),
            registered: AtomicBool::new(false),
        }
    }

    fn pod_cidr(&self) -> String {
        format!(
            "10.{}.{}.0/24",
            128 + (self.index >> 8) % 128,
            self.index & 0xff
        )
    }

    /// The next pod IP in this node's /24 (.2 to .254, wrapping like a recycled range).
    pub(crate) fn next_pod_ip(&self) -> String {
        let n = self.next_pod.fetch_add(1, Ordering::Relaxed) % 253;
        format!(
            "10.{}.{}.{}",
            128 + (self.index >> 8) % 128,
            self.index & 0xff,
            n + 2
        )
    }

    pub(crate) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }

    fn is_registered(&self) -> bool {
        self.registered.load(Ordering::Relaxed)
    }
}

pub(crate) struct Shared {
    pub(crate) client: Client,
    config: SimConfig,
    pub(crate) nodes: RwLock<HashMap<String, Arc<SimNode>>>,
    next_index: AtomicU32,
    counters: Counters,
}

impl Shared {
    pub(crate) fn live_node(&self, name: &str) -> Option<Arc<SimNode>> {
        self.nodes
            .read()
            .get(name)
            .filter(|n| n.is_alive())
            .cloned()
    }

    pub(crate) fn count_started(&self) {
        self.counters.pods_started.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_deleted(&self) {
        self.counters.pods_deleted.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_error(&self) {
        self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn concurrency(&self) -> usize {
        self.config.concurrency.max(1)
    }
}

/// A set of simulated nodes and the tasks that keep them alive. Dropping it stops them.
pub struct SimCluster {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl SimCluster {
    /// Registers `node_count` nodes from `template` with the default [`SimConfig`].
    pub async fn start(
        client: Client,
        node_count: usize,
        template: NodeTemplate,
    ) -> Result<SimCluster, SimError> {
        SimCluster::start_with(client, SimConfig::default(), node_count, template).await
    }

    pub async fn start_with(
        client: Client,
        config: SimConfig,
        node_count: usize,
        template: NodeTemplate,
    ) -> Result<SimCluster, SimError> {
        let shared = Arc::new(Shared {
            client,
            config,
            nodes: RwLock::new(HashMap::new()),
            next_index: AtomicU32::new(0),
            counters: Counters::default(),
        });
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = vec![tokio::spawn(renew_leases(shared.clone(), stop_rx.clone()))];
        if shared.config.simulate_pods {
            tasks.push(tokio::spawn(pods::run(shared.clone(), stop_rx)));
        }
        let cluster = SimCluster {
            tasks,
            shared,
            stop,
        };
        cluster.add_nodes(node_count, &template).await?;
        Ok(cluster)
    }

    /// Registers `count` more nodes; returns their names.
    pub async fn add_nodes(
        &self,
        count: usize,
        template: &NodeTemplate,
    ) -> Result<Vec<String>, SimError> {
        let nodes: Vec<Arc<SimNode>> = (0..count)
            .map(|_| {
                let index = self.shared.next_index.fetch_add(1, Ordering::Relaxed);
                Arc::new(SimNode::new(
                    format!("{}{index}", self.shared.config.name_prefix),
                    index,
                ))
            })
            .collect();
        let shared = &self.shared;
        // Simulated before their Node objects exist, so no pod bound in between is missed.
        shared
            .nodes
            .write()
            .extend(nodes.iter().map(|node| (node.name.clone(), node.clone())));
        let registered = futures::stream::iter(nodes.iter().cloned().map(Ok))
            .try_for_each_concurrent(shared.concurrency(), |node| async move {
                register(shared, &node, template).await?;
                node.registered.store(true, Ordering::Relaxed);
                Ok(())
            })
            .await;
        if let Err(e) = registered {
            // As if none had been added: the caller gets no names to use.
            let mut map = shared.nodes.write();
            for node in &nodes {
                map.remove(&node.name);
            }
            return Err(e);
        }
        Ok(nodes.iter().map(|n| n.name.clone()).collect())
    }

    /// Node names in registration order.
    pub fn node_names(&self) -> Vec<String> {
        let mut nodes: Vec<(u32, String)> = self
            .shared
            .nodes
            .read()
            .values()
            .filter(|n| n.is_registered())
            .map(|n| (n.index, n.name.clone()))
            .collect();
        nodes.sort();
        nodes.into_iter().map(|(_, name)| name).collect()
    }

    /// Simulates a dead kubelet: the node's lease is no longer renewed and its pods are
    /// no longer updated or finished. The Node object stays as it is.
    pub fn stop_node(&self, name: &str) -> Result<(), SimError> {
        let nodes = self.shared.nodes.read();
        let node = nodes
            .get(name)
            .ok_or_else(|| SimError::UnknownNode(name.to_string()))?;
        node.alive.store(false, Ordering::Relaxed);
        Ok(())
    }

    pub fn is_running(&self, name: &str) -> bool {
        self.shared.live_node(name).is_some()
    }

    pub fn stats(&self) -> SimStats {
        let c = &self.shared.counters;
        SimStats {
            pods_started: c.pods_started.load(Ordering::Relaxed),
            pods_deleted: c.pods_deleted.load(Ordering::Relaxed),
            lease_renewals: c.lease_renewals.load(Ordering::Relaxed),
            write_errors: c.write_errors.load(Ordering::Relaxed),
        }
    }

    /// Stops every task and waits for them to end.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for SimCluster {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for task in &self.tasks {
            task.abort();
        }
    }
}

pub(crate) fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn now_micro() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

fn api_error(action: &'static str, name: &str) -> impl FnOnce(kube::Error) -> SimError {
    let name = name.to_string();
    move |source| SimError::Api {
        action,
        name,
        source: Box::new(source),
    }
}

pub(crate) fn is_status(err: &kube::Error, code: u16) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == code)
}

fn node_object(node: &SimNode, template: &NodeTemplate) -> Value {
    let mut labels = template.labels.clone();
    labels.insert("kubernetes.io/hostname".into(), node.name.clone());
    labels.insert("kubernetes.io/os".into(), "linux".into());
    labels.insert("kubernetes.io/arch".into(), "amd64".into());
    labels.insert("type".into(), "simulated".into());
    let taints: Vec<Value> = template
        .taints
        .iter()
        .map(|t| {
            let mut taint = json!({"key": t.key, "effect": t.effect});
            if let Some(v) = &t.value {
                taint["value"] = json!(v);
            }
            taint
        })
        .collect();
    let cidr = node.pod_cidr();
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node.name, "labels": labels, "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr], "taints": taints},
    })
}

fn node_status(config: &SimConfig, node: &SimNode, template: &NodeTemplate) -> Value {
    let now = now_rfc3339();
    let resources = json!({"cpu": template.cpu, "memory": template.memory, "pods": template.pods.to_string(), "ephemeral-storage": "100Gi"});
    let condition = |kind: &str, status: &str, reason: &str, message: &str| {
        json!({"type": kind, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    json!({"status": {
        "capacity": resources,
        "allocatable": resources,
        "phase": "Running",
        "conditions": [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
        ],
        "addresses": [{"type": "InternalIP", "address": node.host_ip}, {"type": "Hostname", "address": node.name}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {
            "machineID": format!("sim-{}", node.index),
            "systemUUID": format!("sim-{}", node.index),
            "bootID": format!("sim-{}", node.index),
            "kernelVersion": "6.0.0-sim",
            "osImage": "rkube simulated node",
            "containerRuntimeVersion": "sim://1.0.0",
            "kubeletVersion": config.kubelet_version,
            "kubeProxyVersion": config.kubelet_version,
            "operatingSystem": "linux",
            "architecture": "amd64",
        },
    }})
}

/// Creates (or adopts) the Node, writes its status, and creates its Lease.
async fn register(
    shared: &Shared,
    node: &SimNode,
    template: &NodeTemplate,
) -> Result<(), SimError> {
    let nodes: Api<Node> = Api::all(shared.client.clone());
    let object: Node =
        serde_json::from_value(node_object(node, template)).map_err(|source| SimError::Build {
            kind: "Node",
            name: node.name.clone(),
            source,
        })?;
    let uid = match nodes.create(&PostParams::default(), &object).await {
        Ok(created) => created.metadata.uid,
        Err(e) if is_status(&e, 409) => {
            nodes
                .get(&node.name)
                .await
                .map_err(api_error("reading node", &node.name))?
                .metadata
                .uid
        }
        Err(e) => return Err(api_error("creating node", &node.name)(e)),
    };
    nodes
        .patch_status(
            &node.name,
            &PatchParams::default(),
            &Patch::Merge(node_status(&shared.config, node, template)),
        )
        .await
        .map_err(api_error("writing status of node", &node.name))?;
    let leases: Api<Lease> = Api::namespaced(shared.client.clone(), NODE_LEASE_NAMESPACE);
    let lease: Lease = serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": node.name,
            "namespace": NODE_LEASE_NAMESPACE,
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node.name, "uid": uid.unwrap_or_default()}],
        },
        "spec": {"holderIdentity": node.name, "leaseDurationSeconds": shared.config.lease_duration_seconds, "renewTime": now_micro()},
    }))
    .map_err(|source| SimError::Build { kind: "Lease", name: node.name.clone(), source })?;
    match leases.create(&PostParams::default(), &lease).await {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, 409) => renew_lease(shared, node)
            .await
            .map_err(api_error("renewing lease", &node.name)),
        Err(e) => Err(api_error("creating lease", &node.name)(e)),
    }
}

async fn renew_lease(shared: &Shared, node: &SimNode) -> Result<(), kube::Error> {
    let leases: Api<Lease> = Api::namespaced(shared.client.clone(), NODE_LEASE_NAMESPACE);
    let patch = json!({"spec": {
        "holderIdentity": node.name,
        "leaseDurationSeconds": shared.config.lease_duration_seconds,
        "renewTime": now_micro(),
    }});
    leases
        .patch(&node.name, &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    shared
        .counters
        .lease_renewals
        .fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// One loop for all nodes: every interval, renew the lease of each live node, a bounded
/// number at a time, so 1,000 nodes cost 1,000 small writes per interval and no more tasks.
async fn renew_leases(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(shared.config.renew_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopped(&mut stop) => return,
        }
        let live: Vec<Arc<SimNode>> = shared
            .nodes
            .read()
            .values()
            .filter(|n| n.is_alive() && n.is_registered())
            .cloned()
            .collect();
        let shared = &shared;
        futures::stream::iter(live)
            .for_each_concurrent(shared.concurrency(), |node| async move {
                // The node may have been stopped since the batch was collected.
                if !node.is_alive() {
                    return;
                }
                if let Err(e) = renew_lease(shared, &node).await {
                    shared.count_error();
                    tracing::debug!(node = %node.name, error = %e, "lease renewal failed; next interval retries");
                }
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_unique_per_node_and_pod_ips_stay_in_the_node_range() {
        let a = SimNode::new("a".into(), 1);
        let b = SimNode::new("b".into(), 257);
        assert_ne!(a.host_ip, b.host_ip);
        assert_ne!(a.pod_cidr(), b.pod_cidr());
        let first = a.next_pod_ip();
        let second = a.next_pod_ip();
        assert_ne!(first, second);
        assert!(first.starts_with("10.128.1."), "{first}");
        assert!(b.next_pod_ip().starts_with("10.129.1."));
        for _ in 0..600 {
            let ip = a.next_pod_ip();
            let last: u32 = ip.rsplit('.').next().unwrap().parse().unwrap();
            assert!((2..=254).contains(&last), "{ip}");
        }
    }

    #[test]
    fn node_objects_carry_template_labels_taints_and_capacity() {
        let template = NodeTemplate::default().with_label("zone", "a").with_taint(
            "dedicated",
            "gpu",
            "NoSchedule",
        );
        let node = SimNode::new("sim-node-0".into(), 0);
        let object = node_object(&node, &template);
        assert_eq!(object["metadata"]["labels"]["zone"], "a");
        assert_eq!(
            object["metadata"]["labels"]["kubernetes.io/hostname"],
            "sim-node-0"
        );
        assert_eq!(
            object["spec"]["taints"][0],
            json!({"key": "dedicated", "value": "gpu", "effect": "NoSchedule"})
        );
        let typed: Node = serde_json::from_value(object).unwrap();
        assert_eq!(typed.spec.unwrap().taints.unwrap().len(), 1);
        let status = node_status(&SimConfig::default(), &node, &template);
        assert_eq!(status["status"]["allocatable"]["cpu"], "4");
        assert_eq!(status["status"]["allocatable"]["pods"], "110");
        assert_eq!(status["status"]["conditions"][3]["type"], "Ready");
        assert_eq!(status["status"]["conditions"][3]["status"], "True");
    }
}
