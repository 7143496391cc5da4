//! What the scheduler needs to know about pods and nodes, extracted once from the API
//! objects so that filtering thousands of nodes per pod touches only plain data.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    Node, NodeSelector, Pod, PreferredSchedulingTerm, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use rkube_api::selectors::label_selector_matches;
use rkube_api::semantics::scheduling::NodeView;
use rkube_api::Quantity;

pub type Labels = BTreeMap<String, String>;

/// Upstream scores pods without requests as if they asked for this much
/// (`DefaultMilliCPURequest`, `DefaultMemoryRequest`), so empty pods still spread.
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
pub const DEFAULT_MEMORY_REQUEST: i64 = 200 * 1024 * 1024;

/// Amounts of the resources the scheduler accounts for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
    pub pods: i64,
    /// Extended resources (`nvidia.com/gpu`, hugepages-*), in whole units.
    pub scalar: BTreeMap<String, i64>,
}

impl Resources {
    fn from_list(
        list: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
    ) -> Resources {
        let mut r = Resources::default();
        for (name, q) in list.into_iter().flatten() {
            // An unparsable quantity never passed API validation; counting it as zero keeps one bad object from
            // stopping the scheduler.
            let q = Quantity::try_from(q).unwrap_or_default();
            match name.as_str() {
                "cpu" => r.milli_cpu = q.milli_value(),
                "memory" => r.memory = q.value(),
                "ephemeral-storage" => r.ephemeral_storage = q.value(),
                "pods" => r.pods = q.value(),
                other => {
                    r.scalar.insert(other.to_string(), q.value());
                }
            }
        }
        r
    }

    pub fn add(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_add(other.milli_cpu);
        self.memory = self.memory.saturating_add(other.memory);
        self.ephemeral_storage = self
            .ephemeral_storage
            .saturating_add(other.ephemeral_storage);
        self.pods = self.pods.saturating_add(other.pods);
        for (k, v) in &other.scalar {
            let e = self.scalar.entry(k.clone()).or_insert(0);
            *e = e.saturating_add(*v);
        }
    }

    pub fn subtract(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_sub(other.milli_cpu);
        self.memory = self.memory.saturating_sub(other.memory);
        self.ephemeral_storage = self
            .ephemeral_storage
            .saturating_sub(other.ephemeral_storage);
        self.pods = self.pods.saturating_sub(other.pods);
        for (k, v) in &other.scalar {
            let e = self.scalar.entry(k.clone()).or_insert(0);
            *e = e.saturating_sub(*v);
        }
    }

    fn max_with(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.max(other.milli_cpu);
        self.memory = self.memory.max(other.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(other.ephemeral_storage);
        for (k, v) in &other.scalar {
            let e = self.scalar.entry(k.clone()).or_insert(0);
            *e = (*e).max(*v);
        }
    }
}

/// A host port a pod claims: (protocol, host IP, port). An empty or 0.0.0.0 IP claims every address.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    pub protocol: String,
    pub ip: String,
    pub port: i32,
}

impl HostPort {
    pub fn conflicts_with(&self, other: &HostPort) -> bool {
        let wildcard = |ip: &str| ip.is_empty() || ip == "0.0.0.0" || ip == "::";
        self.port == other.port
            && self.protocol == other.protocol
            && (self.ip == other.ip || wildcard(&self.ip) || wildcard(&other.ip))
    }
}

/// A required pod (anti-)affinity term with its namespaces resolved.
#[derive(Clone, Debug)]
pub struct AffinityTerm {
    /// `None` (no labelSelector) selects no pod, as upstream's conversion of a null selector.
    pub selector: Option<LabelSelector>,
    /// Namespaces the term's selector applies to; `None` means all (an empty namespaceSelector).
    pub namespaces: Option<Vec<String>>,
    pub topology_key: String,
}

impl AffinityTerm {
    pub fn matches(&self, pod: &PodInfo) -> bool {
        let in_namespace = self
            .namespaces
            .as_ref()
            .is_none_or(|ns| ns.contains(&pod.namespace));
        in_namespace && label_selector_matches(self.selector.as_ref(), &pod.labels)
    }
}

/// The scheduling-relevant view of a pod.
#[derive(Debug)]
pub struct PodInfo {
    pub key: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: Labels,
    /// What the pod reserves on a node (filtering and accounting).
    pub requests: Resources,
    /// Requests with upstream's defaults for cpu and memory left unset (scoring).
    pub non_zero_requests: Resources,
    pub node_selector: Labels,
    pub required_node_affinity: Option<NodeSelector>,
    pub preferred_node_affinity: Vec<PreferredSchedulingTerm>,
    pub tolerations: Vec<Toleration>,
    pub host_ports: Vec<HostPort>,
    pub required_anti_affinity: Vec<AffinityTerm>,
    /// uid of the controlling owner (ReplicaSet, StatefulSet, ...), for spreading.
    pub controller_uid: Option<String>,
    pub priority: i32,
    pub scheduler_name: String,
    pub node_name: Option<String>,
    pub scheduling_gated: bool,
    pub deleting: bool,
    /// Succeeded or Failed: holds no resources any more.
    pub terminal: bool,
    /// The PodScheduled condition's message as last seen, to avoid rewriting the same status.
    pub scheduled_condition_message: Option<String>,
    pub pod: Arc<Pod>,
}

impl PodInfo {
    pub fn new(pod: Pod) -> PodInfo {
        let pod = Arc::new(pod);
        let meta = &pod.metadata;
        let namespace = meta
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_string());
        let name = meta.name.clone().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let (requests, non_zero_requests) = pod_requests(&spec);
        let affinity = spec.affinity.as_ref();
        let node_affinity = affinity.and_then(|a| a.node_affinity.as_ref());
        let anti = affinity.and_then(|a| a.pod_anti_affinity.as_ref());
        let required_anti_affinity = anti
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .into_iter()
            .flatten()
            .map(|term| AffinityTerm {
                selector: term.label_selector.clone(),
                namespaces: match (&term.namespaces, &term.namespace_selector) {
                    (Some(ns), _) if !ns.is_empty() => Some(ns.clone()),
                    // An empty namespaceSelector selects every namespace. Non-empty ones would need
                    // namespace labels; they are treated as "all namespaces" (the stricter reading).
                    (_, Some(_)) => None,
                    _ => Some(vec![namespace.clone()]),
                },
                topology_key: term.topology_key.clone(),
            })
            .collect();
        let host_ports = spec
            .containers
            .iter()
            .chain(
                spec.init_containers
                    .iter()
                    .flatten()
                    .filter(|c| c.restart_policy.as_deref() == Some("Always")),
            )
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                let port = p.host_port.filter(|&hp| hp > 0)?;
                Some(HostPort {
                    protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    ip: p.host_ip.clone().unwrap_or_default(),
                    port,
                })
            })
            .collect();
        let status = pod.status.as_ref();
        PodInfo {
            key: format!("{namespace}/{name}"),
            uid: meta.uid.clone().unwrap_or_default(),
            labels: meta.labels.clone().unwrap_or_default(),
            requests,
            non_zero_requests,
            node_selector: spec.node_selector.clone().unwrap_or_default(),
            required_node_affinity: node_affinity.and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .clone()
            }),
            preferred_node_affinity: node_affinity
                .and_then(|a| {
                    a.preferred_during_scheduling_ignored_during_execution
                        .clone()
                })
                .unwrap_or_default(),
            tolerations: spec.tolerations.clone().unwrap_or_default(),
            host_ports,
            required_anti_affinity,
            controller_uid: meta
                .owner_references
                .iter()
                .flatten()
                .find(|o| o.controller == Some(true))
                .map(|o| o.uid.clone()),
            priority: spec.priority.unwrap_or(0),
            scheduler_name: spec
                .scheduler_name
                .clone()
                .unwrap_or_else(|| "default-scheduler".into()),
            node_name: spec.node_name.clone().filter(|n| !n.is_empty()),
            scheduling_gated: spec
                .scheduling_gates
                .as_ref()
                .is_some_and(|g| !g.is_empty()),
            deleting: meta.deletion_timestamp.is_some(),
            terminal: matches!(
                status.and_then(|s| s.phase.as_deref()),
                Some("Succeeded") | Some("Failed")
            ),
            scheduled_condition_message: status
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| {
                    cs.iter()
                        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
                })
                .and_then(|c| c.message.clone()),
            namespace,
            name,
            pod,
        }
    }

    /// The same pod, placed on `node` (for assumed pods).
    pub fn placed_on(&self, node: &str) -> PodInfo {
        let mut pod = (*self.pod).clone();
        if let Some(spec) = pod.spec.as_mut() {
            spec.node_name = Some(node.to_string());
        }
        PodInfo::new(pod)
    }

    /// Whether an update could change where the pod fits (as opposed to, say, a status write).
    pub fn scheduling_inputs_differ(&self, other: &PodInfo) -> bool {
        self.labels != other.labels || self.pod.spec != other.pod.spec
    }
}

/// Upstream's effective request: the larger of the sum over app containers (plus sidecars)
/// and the largest init container, plus pod overhead.
fn pod_requests(spec: &k8s_openapi::api::core::v1::PodSpec) -> (Resources, Resources) {
    let container_requests = |c: &k8s_openapi::api::core::v1::Container| {
        let resources = c.resources.as_ref();
        // The API server defaults requests to limits; older objects may lack that.
        let requests = resources.and_then(|r| r.requests.as_ref());
        let mut r = Resources::from_list(requests);
        let limits = Resources::from_list(resources.and_then(|r| r.limits.as_ref()));
        let has = |name: &str| requests.is_some_and(|m| m.contains_key(name));
        if !has("cpu") {
            r.milli_cpu = limits.milli_cpu;
        }
        if !has("memory") {
            r.memory = limits.memory;
        }
        r
    };
    let mut sum = Resources::default();
    for c in &spec.containers {
        sum.add(&container_requests(c));
    }
    let mut sidecars = Resources::default();
    let mut init_max = Resources::default();
    for c in spec.init_containers.iter().flatten() {
        let r = container_requests(c);
        if c.restart_policy.as_deref() == Some("Always") {
            sidecars.add(&r);
            sum.add(&r);
        } else {
            let mut with_sidecars = r.clone();
            with_sidecars.add(&sidecars);
            init_max.max_with(&with_sidecars);
        }
    }
    sum.max_with(&init_max);
    if let Some(overhead) = &spec.overhead {
        sum.add(&Resources::from_list(Some(overhead)));
    }
    sum.pods = 1;
    let mut non_zero = sum.clone();
    if non_zero.milli_cpu == 0 {
        non_zero.milli_cpu = DEFAULT_MILLI_CPU_REQUEST;
    }
    if non_zero.memory == 0 {
        non_zero.memory = DEFAULT_MEMORY_REQUEST;
    }
    (sum, non_zero)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    NotReady,
    Unknown,
}

/// The scheduling-relevant view of a Node object.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeFacts {
    pub name: String,
    pub labels: Labels,
    pub taints: Vec<Taint>,
    pub allocatable: Resources,
    pub unschedulable: bool,
    pub readiness: Readiness,
}

impl NodeFacts {
    /// What node selectors look at (`rkube_api::semantics::scheduling`).
    pub fn view(&self) -> NodeView<'_, Labels> {
        NodeView {
            name: &self.name,
            labels: &self.labels,
        }
    }

    pub fn new(node: &Node) -> NodeFacts {
        let status = node.status.as_ref();
        let spec = node.spec.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.as_str());
        NodeFacts {
            name: node.metadata.name.clone().unwrap_or_default(),
            labels: node.metadata.labels.clone().unwrap_or_default(),
            taints: spec.and_then(|s| s.taints.clone()).unwrap_or_default(),
            allocatable: Resources::from_list(
                status.and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref())),
            ),
            unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
            readiness: match ready {
                Some("True") => Readiness::Ready,
                Some("False") => Readiness::NotReady,
                _ => Readiness::Unknown,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rkube_api::semantics::scheduling::node_selector_matches;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> PodInfo {
        PodInfo::new(serde_json::from_value(v).unwrap())
    }

    #[test]
    fn requests_sum_containers_and_take_the_largest_init_container() {
        let p = pod(
            json!({"metadata": {"name": "p", "namespace": "d"}, "spec": {
                "containers": [
                    {"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}},
                    {"name": "b", "resources": {"limits": {"cpu": "200m"}}},
                ],
                "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "1", "memory": "1Mi"}}}],
            }}),
        );
        assert_eq!(p.requests.milli_cpu, 1000);
        assert_eq!(p.requests.memory, 64 << 20);
        assert_eq!(p.requests.pods, 1);
        let empty =
            pod(json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}}));
        assert_eq!(empty.requests.milli_cpu, 0);
        assert_eq!(empty.non_zero_requests.milli_cpu, DEFAULT_MILLI_CPU_REQUEST);
        assert_eq!(empty.non_zero_requests.memory, DEFAULT_MEMORY_REQUEST);
    }

    #[test]
    fn node_selector_operators() {
        let node = NodeFacts {
            name: "n1".into(),
            labels: [
                ("zone".to_string(), "a".to_string()),
                ("cores".to_string(), "8".to_string()),
            ]
            .into(),
            taints: vec![],
            allocatable: Resources::default(),
            unschedulable: false,
            readiness: Readiness::Ready,
        };
        let sel = |exprs: serde_json::Value| -> NodeSelector {
            serde_json::from_value(json!({"nodeSelectorTerms": [{"matchExpressions": exprs}]}))
                .unwrap()
        };
        let m = |exprs| node_selector_matches(&sel(exprs), node.view());
        assert!(m(
            json!([{"key": "zone", "operator": "In", "values": ["a", "b"]}])
        ));
        assert!(!m(
            json!([{"key": "zone", "operator": "NotIn", "values": ["a"]}])
        ));
        assert!(m(
            json!([{"key": "gpu", "operator": "NotIn", "values": ["x"]}])
        ));
        assert!(m(json!([{"key": "zone", "operator": "Exists"}])));
        assert!(m(json!([{"key": "gpu", "operator": "DoesNotExist"}])));
        assert!(m(
            json!([{"key": "cores", "operator": "Gt", "values": ["4"]}])
        ));
        assert!(!m(
            json!([{"key": "cores", "operator": "Lt", "values": ["4"]}])
        ));
        assert!(
            !m(json!([{"key": "zone", "operator": "Gt", "values": ["4"]}])),
            "non-numeric label never matches Gt"
        );
        let by_field: NodeSelector = serde_json::from_value(
            json!({"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]}),
        )
        .unwrap();
        assert!(node_selector_matches(&by_field, node.view()));
        let ored: NodeSelector = serde_json::from_value(json!({"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z"]}]},
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
        ]}))
        .unwrap();
        assert!(node_selector_matches(&ored, node.view()));
    }

    /// Regression: the scheduler's copy read only the first value of `Gt`/`Lt` and of
    /// matchFields `In`, where upstream (and the API server's validation) require exactly
    /// one, and took an unknown field for a mismatch rather than an empty value.
    #[test]
    fn malformed_node_selector_requirements_match_nothing() {
        let node = NodeFacts {
            name: "n1".into(),
            labels: [("cores".to_string(), "8".to_string())].into(),
            taints: vec![],
            allocatable: Resources::default(),
            unschedulable: false,
            readiness: Readiness::Ready,
        };
        let m = |term: serde_json::Value| {
            let sel: NodeSelector =
                serde_json::from_value(json!({"nodeSelectorTerms": [term]})).unwrap();
            node_selector_matches(&sel, node.view())
        };
        assert!(!m(
            json!({"matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["4", "100"]}]})
        ));
        assert!(!m(
            json!({"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1", "n2"]}]})
        ));
        assert!(m(
            json!({"matchFields": [{"key": "spec.other", "operator": "NotIn", "values": ["x"]}]})
        ));
    }

    /// Regression: a required anti-affinity term without a labelSelector selected every pod
    /// in its namespaces; upstream converts a null selector to one that selects nothing.
    #[test]
    fn affinity_term_without_selector_matches_no_pod() {
        let p = pod(
            json!({"metadata": {"name": "p", "namespace": "d", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "a"}], "affinity": {"podAntiAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [{"topologyKey": "kubernetes.io/hostname"}]}}}}),
        );
        let other = pod(
            json!({"metadata": {"name": "q", "namespace": "d", "labels": {"app": "db"}},
            "spec": {"containers": [{"name": "a"}]}}),
        );
        assert_eq!(p.required_anti_affinity.len(), 1);
        assert!(!p.required_anti_affinity[0].matches(&other));
        assert!(!p.required_anti_affinity[0].matches(&p));
    }

    #[test]
    fn host_ports_conflict_on_wildcard_addresses() {
        let p = |ip: &str, port| HostPort {
            protocol: "TCP".into(),
            ip: ip.into(),
            port,
        };
        assert!(p("", 80).conflicts_with(&p("10.0.0.1", 80)));
        assert!(!p("10.0.0.2", 80).conflicts_with(&p("10.0.0.1", 80)));
        assert!(!p("", 80).conflicts_with(&p("", 81)));
        let udp = HostPort {
            protocol: "UDP".into(),
            ip: "".into(),
            port: 80,
        };
        assert!(!udp.conflicts_with(&p("", 80)));
    }
}
