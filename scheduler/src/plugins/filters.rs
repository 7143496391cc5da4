//! Filters. Reason strings are upstream's, word for word, because users and tools grep
//! for them in `kubectl describe pod`.

use std::collections::HashSet;

use k8s_openapi::api::core::v1::Taint;
use rkube_api::semantics::scheduling::{required_node_affinity_matches, tolerates};

use super::{CycleState, FilterPlugin, Unfit};
use crate::cache::{Cache, NodeInfo};
use crate::model::{PodInfo, Readiness};

pub const REASON_UNSCHEDULABLE: &str = "node(s) were unschedulable";
pub const REASON_NODE_AFFINITY: &str = "node(s) didn't match Pod's node affinity/selector";
pub const REASON_HOST_PORTS: &str = "node(s) didn't have free ports for the requested pod ports";
pub const REASON_ANTI_AFFINITY: &str = "node(s) didn't match pod anti-affinity rules";
pub const REASON_EXISTING_ANTI_AFFINITY: &str =
    "node(s) didn't satisfy existing pods anti-affinity rules";
pub const REASON_TOO_MANY_PODS: &str = "Too many pods";

fn untolerated_taint_reason(key: &str, value: &str) -> Unfit {
    Unfit::because(format!("node(s) had untolerated taint {{{key}: {value}}}"))
}

fn no_schedule_taint(key: &str) -> Taint {
    Taint {
        key: key.into(),
        value: None,
        effect: "NoSchedule".into(),
        time_added: None,
    }
}

/// `spec.unschedulable` (kubectl cordon), unless the pod tolerates the matching taint.
pub struct NodeUnschedulable;

impl FilterPlugin for NodeUnschedulable {
    fn name(&self) -> &'static str {
        "NodeUnschedulable"
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo, _: &CycleState) -> Result<(), Unfit> {
        let Some(facts) = &node.facts else {
            return Err(Unfit::because(REASON_UNSCHEDULABLE));
        };
        if facts.unschedulable
            && !tolerates(
                &pod.tolerations,
                &no_schedule_taint("node.kubernetes.io/unschedulable"),
            )
        {
            return Err(Unfit::because(REASON_UNSCHEDULABLE));
        }
        Ok(())
    }
}

/// The node's Ready condition must be True. Upstream expresses this through the
/// `node.kubernetes.io/not-ready` and `unreachable` NoSchedule taints that the node
/// lifecycle controller adds, so a pod tolerating those (DaemonSet pods) still fits, and
/// the reason reads as that taint.
pub struct NodeReady;

impl FilterPlugin for NodeReady {
    fn name(&self) -> &'static str {
        "NodeReady"
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo, _: &CycleState) -> Result<(), Unfit> {
        let Some(facts) = &node.facts else {
            return Ok(());
        };
        let key = match facts.readiness {
            Readiness::Ready => return Ok(()),
            Readiness::NotReady => "node.kubernetes.io/not-ready",
            Readiness::Unknown => "node.kubernetes.io/unreachable",
        };
        if tolerates(&pod.tolerations, &no_schedule_taint(key)) {
            Ok(())
        } else {
            Err(untolerated_taint_reason(key, ""))
        }
    }
}

/// NoSchedule and NoExecute taints must be tolerated.
pub struct TaintToleration;

impl FilterPlugin for TaintToleration {
    fn name(&self) -> &'static str {
        "TaintToleration"
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo, _: &CycleState) -> Result<(), Unfit> {
        let Some(facts) = &node.facts else {
            return Ok(());
        };
        let untolerated = facts.taints.iter().find(|t| {
            (t.effect == "NoSchedule" || t.effect == "NoExecute") && !tolerates(&pod.tolerations, t)
        });
        match untolerated {
            Some(t) => Err(untolerated_taint_reason(
                &t.key,
                t.value.as_deref().unwrap_or(""),
            )),
            None => Ok(()),
        }
    }
}

/// `spec.nodeSelector` and required node affinity.
pub struct NodeAffinity;

impl FilterPlugin for NodeAffinity {
    fn name(&self) -> &'static str {
        "NodeAffinity"
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo, _: &CycleState) -> Result<(), Unfit> {
        let Some(facts) = &node.facts else {
            return Ok(());
        };
        if required_node_affinity_matches(
            Some(&pod.node_selector),
            pod.required_node_affinity.as_ref(),
            facts.view(),
        ) {
            Ok(())
        } else {
            Err(Unfit::because(REASON_NODE_AFFINITY))
        }
    }
}

/// Host ports already taken on the node.
pub struct HostPorts;

impl FilterPlugin for HostPorts {
    fn name(&self) -> &'static str {
        "NodePorts"
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo, _: &CycleState) -> Result<(), Unfit> {
        let taken = pod
            .host_ports
            .iter()
            .any(|want| node.used_ports.iter().any(|used| used.conflicts_with(want)));
        if taken {
            Err(Unfit::because(REASON_HOST_PORTS))
        } else {
            Ok(())
        }
    }
}

/// Requests against allocatable minus what is already requested on the node. Reports
/// every insufficient resource, as upstream does.
pub struct NodeResourcesFit;

impl FilterPlugin for NodeResourcesFit {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo, _: &CycleState) -> Result<(), Unfit> {
        let Some(facts) = &node.facts else {
            return Ok(());
        };
        let (want, used, have) = (&pod.requests, &node.requested, &facts.allocatable);
        let mut reasons = Vec::new();
        if used.pods + 1 > have.pods {
            reasons.push(REASON_TOO_MANY_PODS.into());
        }
        let short = |want: i64, used: i64, have: i64| want > 0 && want > have.saturating_sub(used);
        if short(want.milli_cpu, used.milli_cpu, have.milli_cpu) {
            reasons.push("Insufficient cpu".into());
        }
        if short(want.memory, used.memory, have.memory) {
            reasons.push("Insufficient memory".into());
        }
        if short(
            want.ephemeral_storage,
            used.ephemeral_storage,
            have.ephemeral_storage,
        ) {
            reasons.push("Insufficient ephemeral-storage".into());
        }
        for (name, amount) in &want.scalar {
            let used = used.scalar.get(name).copied().unwrap_or(0);
            let have = have.scalar.get(name).copied().unwrap_or(0);
            if short(*amount, used, have) {
                reasons.push(format!("Insufficient {name}").into());
            }
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(Unfit(reasons))
        }
    }
}

/// Topology domains (topologyKey, value) the pod may not join.
#[derive(Default)]
struct AntiAffinityDomains {
    /// Domains with an existing pod whose anti-affinity rejects this pod.
    rejected_by_existing: HashSet<(String, String)>,
    /// Domains holding a pod that this pod's own anti-affinity terms reject.
    rejected_by_pod: HashSet<(String, String)>,
}

/// Required pod anti-affinity, both ways: the pod's own terms against pods already in
/// a topology domain, and existing pods' terms against the pod. Domains are computed
/// once per pod, so filtering a node is two set lookups.
pub struct InterPodAntiAffinity;

impl FilterPlugin for InterPodAntiAffinity {
    fn name(&self) -> &'static str {
        "InterPodAffinity"
    }

    fn pre_filter(&self, pod: &PodInfo, cluster: &Cache, state: &mut CycleState) {
        let mut domains = AntiAffinityDomains::default();
        for existing in cluster.anti_affinity_pods() {
            let Some(node) = existing.node_name.as_deref().and_then(|n| cluster.node(n)) else {
                continue;
            };
            for term in existing
                .required_anti_affinity
                .iter()
                .filter(|t| t.matches(pod))
            {
                if let Some(value) = node.label(&term.topology_key) {
                    domains
                        .rejected_by_existing
                        .insert((term.topology_key.clone(), value.clone()));
                }
            }
        }
        if !pod.required_anti_affinity.is_empty() {
            for node in cluster.all_nodes() {
                for term in &pod.required_anti_affinity {
                    let Some(value) = node.label(&term.topology_key) else {
                        continue;
                    };
                    if node
                        .pods
                        .values()
                        .any(|other| other.key != pod.key && term.matches(other))
                    {
                        domains
                            .rejected_by_pod
                            .insert((term.topology_key.clone(), value.clone()));
                    }
                }
            }
        }
        state.insert(domains);
    }

    fn filter(&self, pod: &PodInfo, node: &NodeInfo, state: &CycleState) -> Result<(), Unfit> {
        let Some(domains) = state.get::<AntiAffinityDomains>() else {
            return Ok(());
        };
        let Some(facts) = &node.facts else {
            return Ok(());
        };
        let in_domain = |set: &HashSet<(String, String)>| {
            // Few keys are in use; look each one up on the node.
            set.iter()
                .any(|(key, value)| facts.labels.get(key) == Some(value))
        };
        if in_domain(&domains.rejected_by_existing) {
            return Err(Unfit::because(REASON_EXISTING_ANTI_AFFINITY));
        }
        if !pod.required_anti_affinity.is_empty() && in_domain(&domains.rejected_by_pod) {
            return Err(Unfit::because(REASON_ANTI_AFFINITY));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NodeFacts, Resources};
    use serde_json::{json, Value};
    use std::sync::Arc;

    fn pod(spec: Value) -> PodInfo {
        pod_named("p", json!({}), spec)
    }

    fn pod_named(name: &str, labels: Value, spec: Value) -> PodInfo {
        let mut spec = spec;
        if spec.get("containers").is_none() {
            spec["containers"] = json!([{"name": "c"}]);
        }
        PodInfo::new(serde_json::from_value(json!({"metadata": {"name": name, "namespace": "d", "labels": labels}, "spec": spec})).unwrap())
    }

    fn facts(name: &str) -> NodeFacts {
        NodeFacts {
            name: name.into(),
            labels: [("kubernetes.io/hostname".to_string(), name.to_string())].into(),
            taints: vec![],
            allocatable: Resources {
                milli_cpu: 2000,
                memory: 4 << 30,
                ephemeral_storage: 0,
                pods: 3,
                scalar: Default::default(),
            },
            unschedulable: false,
            readiness: Readiness::Ready,
        }
    }

    fn run(plugin: &dyn FilterPlugin, pod: &PodInfo, node: &NodeInfo) -> Result<(), Unfit> {
        let mut state = CycleState::default();
        let mut cache = Cache::default();
        let _ = &mut cache;
        plugin.pre_filter(pod, &cache, &mut state);
        plugin.filter(pod, node, &state)
    }

    #[test]
    fn unschedulable_and_not_ready_nodes_are_rejected_unless_tolerated() {
        let mut f = facts("n");
        f.unschedulable = true;
        let node = NodeInfo::with_pods(f, vec![]);
        assert_eq!(
            run(&NodeUnschedulable, &pod(json!({})), &node),
            Err(Unfit::because(REASON_UNSCHEDULABLE))
        );
        let tolerant = pod(
            json!({"tolerations": [{"key": "node.kubernetes.io/unschedulable", "operator": "Exists"}]}),
        );
        assert_eq!(run(&NodeUnschedulable, &tolerant, &node), Ok(()));

        let mut f = facts("n");
        f.readiness = Readiness::Unknown;
        let node = NodeInfo::with_pods(f, vec![]);
        assert_eq!(
            run(&NodeReady, &pod(json!({})), &node),
            Err(Unfit::because(
                "node(s) had untolerated taint {node.kubernetes.io/unreachable: }"
            ))
        );
        let tolerant = pod(
            json!({"tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoSchedule"}]}),
        );
        assert_eq!(run(&NodeReady, &tolerant, &node), Ok(()));
    }

    #[test]
    fn taints_need_tolerations_except_prefer_no_schedule() {
        let mut f = facts("n");
        f.taints = vec![
            Taint {
                key: "soft".into(),
                value: None,
                effect: "PreferNoSchedule".into(),
                time_added: None,
            },
            Taint {
                key: "node-role.kubernetes.io/control-plane".into(),
                value: None,
                effect: "NoSchedule".into(),
                time_added: None,
            },
        ];
        let node = NodeInfo::with_pods(f, vec![]);
        assert_eq!(
            run(&TaintToleration, &pod(json!({})), &node),
            Err(Unfit::because(
                "node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }"
            ))
        );
        let tolerant = pod(
            json!({"tolerations": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]}),
        );
        assert_eq!(run(&TaintToleration, &tolerant, &node), Ok(()));
    }

    #[test]
    fn node_selector_and_required_affinity() {
        let mut f = facts("n");
        f.labels.insert("disk".into(), "ssd".into());
        let node = NodeInfo::with_pods(f, vec![]);
        assert_eq!(
            run(
                &NodeAffinity,
                &pod(json!({"nodeSelector": {"disk": "ssd"}})),
                &node
            ),
            Ok(())
        );
        assert_eq!(
            run(
                &NodeAffinity,
                &pod(json!({"nodeSelector": {"disk": "hdd"}})),
                &node
            ),
            Err(Unfit::because(REASON_NODE_AFFINITY))
        );
        let affinity = |op: &str| {
            pod(
                json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "disk", "operator": op, "values": ["ssd"]}]}]}}}}),
            )
        };
        assert_eq!(run(&NodeAffinity, &affinity("In"), &node), Ok(()));
        assert!(run(&NodeAffinity, &affinity("NotIn"), &node).is_err());
    }

    #[test]
    fn resources_report_every_shortage_and_the_pod_count() {
        let resident = pod(
            json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "1500m", "memory": "1Gi"}}}]}),
        );
        let node = NodeInfo::with_pods(facts("n"), vec![resident]);
        let fits = pod(
            json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "500m", "memory": "3Gi"}}}]}),
        );
        assert_eq!(run(&NodeResourcesFit, &fits, &node), Ok(()));
        let big = pod(
            json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "501m", "memory": "3073Mi", "example.com/gpu": "1"}}}]}),
        );
        assert_eq!(
            run(&NodeResourcesFit, &big, &node),
            Err(Unfit(vec![
                "Insufficient cpu".into(),
                "Insufficient memory".into(),
                "Insufficient example.com/gpu".into()
            ]))
        );
        let full = NodeInfo::with_pods(
            facts("n"),
            vec![
                pod_named("a", json!({}), json!({})),
                pod_named("b", json!({}), json!({})),
                pod_named("c", json!({}), json!({})),
            ],
        );
        assert_eq!(
            run(&NodeResourcesFit, &pod(json!({})), &full),
            Err(Unfit::because(REASON_TOO_MANY_PODS))
        );
    }

    #[test]
    fn host_ports_in_use_reject_the_node() {
        let with_port = |name: &str| {
            pod_named(
                name,
                json!({}),
                json!({"containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 8080}]}]}),
            )
        };
        let node = NodeInfo::with_pods(facts("n"), vec![with_port("a")]);
        assert_eq!(
            run(&HostPorts, &with_port("b"), &node),
            Err(Unfit::because(REASON_HOST_PORTS))
        );
        assert_eq!(run(&HostPorts, &pod(json!({})), &node), Ok(()));
    }

    #[test]
    fn anti_affinity_both_ways_on_hostname() {
        let anti = json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "kubernetes.io/hostname"}]}}});
        let mut cache = Cache::default();
        for n in ["n1", "n2"] {
            let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(json!({"metadata": {"name": n,
                "labels": {"kubernetes.io/hostname": n}}, "status": {"allocatable": {"pods": "10"}}}))
            .unwrap();
            cache.upsert_node(&node);
        }
        let mut spec = anti.clone();
        spec["nodeName"] = json!("n1");
        spec["containers"] = json!([{"name": "c"}]);
        cache.add_pod(Arc::new(pod_named("db-0", json!({"app": "db"}), spec)));
        let check = |p: &PodInfo, node: &str| {
            let mut state = CycleState::default();
            InterPodAntiAffinity.pre_filter(p, &cache, &mut state);
            InterPodAntiAffinity.filter(p, cache.node(node).unwrap(), &state)
        };
        let db1 = pod_named("db-1", json!({"app": "db"}), anti.clone());
        assert_eq!(
            check(&db1, "n1"),
            Err(Unfit::because(REASON_EXISTING_ANTI_AFFINITY))
        );
        assert_eq!(check(&db1, "n2"), Ok(()));
        // A pod without rules is still kept away by the existing pod's rule only if it matches.
        assert_eq!(
            check(&pod_named("web", json!({"app": "web"}), json!({})), "n1"),
            Ok(())
        );
        // The incoming pod's own rule against an existing pod without rules.
        let mut cache2 = Cache::default();
        std::mem::swap(&mut cache2, &mut cache);
        let n1: k8s_openapi::api::core::v1::Node = serde_json::from_value(
            json!({"metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1"}}}),
        )
        .unwrap();
        cache.upsert_node(&n1);
        cache.add_pod(Arc::new(pod_named(
            "plain-db",
            json!({"app": "db"}),
            json!({"nodeName": "n1"}),
        )));
        let mut state = CycleState::default();
        InterPodAntiAffinity.pre_filter(&db1, &cache, &mut state);
        assert_eq!(
            InterPodAntiAffinity.filter(&db1, cache.node("n1").unwrap(), &state),
            Err(Unfit::because(REASON_ANTI_AFFINITY))
        );
    }
}
