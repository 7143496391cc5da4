//! The scheduler's own view of the cluster: nodes with what is placed on them, including
//! pods this scheduler has just bound ("assumed") before the watch confirms the binding.
//! Without assumed pods, the next pods would be placed as if the previous ones did not
//! exist yet, and a burst would pile onto the same node.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;

use crate::model::{HostPort, NodeFacts, PodInfo, Resources};

/// A node and the pods on it.
#[derive(Debug)]
pub struct NodeInfo {
    pub name: String,
    /// `None` while pods still point at a node whose object is gone.
    pub facts: Option<NodeFacts>,
    pub requested: Resources,
    pub non_zero_requested: Resources,
    pub pods: HashMap<String, Arc<PodInfo>>,
    pub used_ports: Vec<HostPort>,
    /// Pods per controlling owner uid.
    pub owner_counts: HashMap<String, u32>,
}

impl NodeInfo {
    fn new(name: &str) -> NodeInfo {
        NodeInfo {
            name: name.to_string(),
            facts: None,
            requested: Resources::default(),
            non_zero_requested: Resources::default(),
            pods: HashMap::new(),
            used_ports: Vec::new(),
            owner_counts: HashMap::new(),
        }
    }

    /// A node with pods, for plugin tests.
    pub fn with_pods(facts: NodeFacts, pods: Vec<PodInfo>) -> NodeInfo {
        let mut info = NodeInfo::new(&facts.name);
        info.facts = Some(facts);
        for p in pods {
            info.add_pod(Arc::new(p));
        }
        info
    }

    fn add_pod(&mut self, pod: Arc<PodInfo>) {
        self.requested.add(&pod.requests);
        self.non_zero_requested.add(&pod.non_zero_requests);
        self.used_ports.extend(pod.host_ports.iter().cloned());
        if let Some(owner) = &pod.controller_uid {
            *self.owner_counts.entry(owner.clone()).or_insert(0) += 1;
        }
        if let Some(old) = self.pods.insert(pod.key.clone(), pod) {
            self.forget_accounting(&old);
        }
    }

    fn remove_pod(&mut self, key: &str) -> Option<Arc<PodInfo>> {
        let pod = self.pods.remove(key)?;
        self.forget_accounting(&pod);
        Some(pod)
    }

    fn forget_accounting(&mut self, pod: &PodInfo) {
        self.requested.subtract(&pod.requests);
        self.non_zero_requested.subtract(&pod.non_zero_requests);
        for port in &pod.host_ports {
            if let Some(i) = self.used_ports.iter().position(|p| p == port) {
                self.used_ports.swap_remove(i);
            }
        }
        if let Some(owner) = &pod.controller_uid {
            if let Some(n) = self.owner_counts.get_mut(owner) {
                *n -= 1;
                if *n == 0 {
                    self.owner_counts.remove(owner);
                }
            }
        }
    }

    pub fn label(&self, key: &str) -> Option<&String> {
        self.facts.as_ref().and_then(|f| f.labels.get(key))
    }
}

#[derive(Debug)]
struct PlacedPod {
    node: String,
    assumed: bool,
}

/// Nodes, placed pods, and the pods with required anti-affinity (checked against every incoming pod).
#[derive(Default, Debug)]
pub struct Cache {
    nodes: HashMap<String, NodeInfo>,
    /// Names of nodes that have a Node object, in the order they were added.
    order: Vec<String>,
    placed: HashMap<String, PlacedPod>,
    anti_affinity_pods: HashMap<String, Arc<PodInfo>>,
}

impl Cache {
    /// Adds or updates a node; true if anything a placement depends on changed.
    pub fn upsert_node(&mut self, node: &Node) -> bool {
        let facts = NodeFacts::new(node);
        let name = facts.name.clone();
        let info = self
            .nodes
            .entry(name.clone())
            .or_insert_with(|| NodeInfo::new(&name));
        if info.facts.as_ref() == Some(&facts) {
            return false;
        }
        if info.facts.is_none() {
            self.order.push(name);
        }
        info.facts = Some(facts);
        true
    }

    pub fn remove_node(&mut self, name: &str) {
        if let Some(info) = self.nodes.get_mut(name) {
            if info.facts.take().is_some() {
                self.order.retain(|n| n != name);
            }
            if info.pods.is_empty() {
                self.nodes.remove(name);
            }
        }
    }

    /// Records a pod the watch shows on a node (confirming it if it was assumed).
    pub fn add_pod(&mut self, pod: Arc<PodInfo>) {
        let Some(node) = pod.node_name.clone() else {
            return;
        };
        self.place(pod, node, false);
    }

    /// Places a pod this scheduler decided on, before the API server confirms the binding.
    pub fn assume(&mut self, pod: &PodInfo, node: &str) {
        self.place(Arc::new(pod.placed_on(node)), node.to_string(), true);
    }

    fn place(&mut self, pod: Arc<PodInfo>, node: String, assumed: bool) {
        let key = pod.key.clone();
        if let Some(previous) = self.placed.get(&key) {
            if previous.node != node {
                self.remove_pod(&key);
            }
        }
        if pod.required_anti_affinity.is_empty() {
            self.anti_affinity_pods.remove(&key);
        } else {
            self.anti_affinity_pods.insert(key.clone(), pod.clone());
        }
        self.nodes
            .entry(node.clone())
            .or_insert_with(|| NodeInfo::new(&node))
            .add_pod(pod);
        self.placed.insert(key, PlacedPod { node, assumed });
    }

    /// Removes a pod; returns whether it held a place (so freed capacity may help pending pods).
    pub fn remove_pod(&mut self, key: &str) -> bool {
        let Some(placed) = self.placed.remove(key) else {
            return false;
        };
        self.anti_affinity_pods.remove(key);
        if let Some(info) = self.nodes.get_mut(&placed.node) {
            info.remove_pod(key);
            if info.facts.is_none() && info.pods.is_empty() {
                self.nodes.remove(&placed.node);
            }
        }
        true
    }

    /// Drops an assumed placement whose binding failed. Confirmed placements stay.
    pub fn forget_assumed(&mut self, key: &str) {
        if self.placed.get(key).is_some_and(|p| p.assumed) {
            self.remove_pod(key);
        }
    }

    pub fn is_assumed(&self, key: &str) -> bool {
        self.placed.get(key).is_some_and(|p| p.assumed)
    }

    pub fn is_placed(&self, key: &str) -> bool {
        self.placed.contains_key(key)
    }

    /// Keys of placed pods, for reconciling after a re-list.
    pub fn placed_keys(&self) -> Vec<(String, bool)> {
        self.placed
            .iter()
            .map(|(k, p)| (k.clone(), p.assumed))
            .collect()
    }

    pub fn node_names(&self) -> Vec<String> {
        self.order.clone()
    }

    /// Nodes with a Node object, in stable order.
    pub fn schedulable_nodes(&self) -> impl Iterator<Item = &NodeInfo> + Clone {
        self.order.iter().filter_map(|n| self.nodes.get(n))
    }

    pub fn node_count(&self) -> usize {
        self.order.len()
    }

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.nodes.get(name)
    }

    /// Every node entry, including ones whose Node object is gone but whose pods remain.
    pub fn all_nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.values()
    }

    pub fn anti_affinity_pods(&self) -> impl Iterator<Item = &Arc<PodInfo>> {
        self.anti_affinity_pods.values()
    }

    /// Where a pod is placed (assumed or confirmed).
    pub fn placement(&self, key: &str) -> Option<&str> {
        self.placed.get(key).map(|p| p.node.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, node: Option<&str>, cpu: &str) -> PodInfo {
        let mut spec =
            json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]});
        if let Some(n) = node {
            spec["nodeName"] = json!(n);
        }
        PodInfo::new(serde_json::from_value(json!({"metadata": {"name": name, "namespace": "d", "uid": name,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "rs1", "controller": true}]},
            "spec": spec})).unwrap())
    }

    fn node(name: &str) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name}, "status": {"allocatable": {"cpu": "2", "memory": "1Gi", "pods": "10"}}}))
            .unwrap()
    }

    #[test]
    fn assumed_pods_count_until_confirmed_or_forgotten() {
        let mut cache = Cache::default();
        assert!(cache.upsert_node(&node("n1")));
        assert!(
            !cache.upsert_node(&node("n1")),
            "an identical update changes nothing"
        );
        cache.assume(&pod("a", None, "500m"), "n1");
        assert!(cache.is_assumed("d/a"));
        assert_eq!(cache.node("n1").unwrap().requested.milli_cpu, 500);
        assert_eq!(cache.node("n1").unwrap().owner_counts["rs1"], 1);
        // The watch confirms: same accounting, no longer assumed.
        cache.add_pod(Arc::new(pod("a", Some("n1"), "500m")));
        assert!(!cache.is_assumed("d/a"));
        assert_eq!(cache.node("n1").unwrap().requested.milli_cpu, 500);
        cache.forget_assumed("d/a");
        assert!(
            cache.is_placed("d/a"),
            "confirmed pods are not forgotten by a failed bind"
        );
        cache.assume(&pod("b", None, "1"), "n1");
        cache.forget_assumed("d/b");
        assert_eq!(cache.node("n1").unwrap().requested.milli_cpu, 500);
        assert!(cache.remove_pod("d/a"));
        let n1 = cache.node("n1").unwrap();
        assert_eq!(n1.requested.milli_cpu, 0);
        assert!(n1.owner_counts.is_empty());
    }

    #[test]
    fn pods_outlive_their_node_object_until_removed() {
        let mut cache = Cache::default();
        cache.upsert_node(&node("n1"));
        cache.add_pod(Arc::new(pod("a", Some("n1"), "1")));
        cache.remove_node("n1");
        assert_eq!(cache.node_count(), 0);
        assert!(cache.node("n1").is_some());
        cache.remove_pod("d/a");
        assert!(cache.node("n1").is_none());
    }
}
