//! Scores, with upstream's formulas and default weights.

use super::{normalize_to_max, CycleState, ScorePlugin, MAX_NODE_SCORE};
use crate::cache::NodeInfo;
use rkube_api::semantics::scheduling::{node_selector_term_matches, tolerates};

use crate::model::PodInfo;

/// Fewer untolerated PreferNoSchedule taints score higher (upstream TaintToleration, weight 3).
pub struct PreferNoScheduleTaints;

impl ScorePlugin for PreferNoScheduleTaints {
    fn name(&self) -> &'static str {
        "TaintToleration"
    }

    fn weight(&self) -> i64 {
        3
    }

    fn score(&self, pod: &PodInfo, node: &NodeInfo, _: &CycleState) -> i64 {
        let Some(facts) = &node.facts else { return 0 };
        facts
            .taints
            .iter()
            .filter(|t| t.effect == "PreferNoSchedule" && !tolerates(&pod.tolerations, t))
            .count() as i64
    }

    fn normalize(&self, scores: &mut [i64]) {
        normalize_to_max(scores, true);
    }
}

/// Sum of the weights of matching preferred node affinity terms (upstream NodeAffinity, weight 2).
pub struct PreferredNodeAffinity;

impl ScorePlugin for PreferredNodeAffinity {
    fn name(&self) -> &'static str {
        "NodeAffinity"
    }

    fn weight(&self) -> i64 {
        2
    }

    fn score(&self, pod: &PodInfo, node: &NodeInfo, _: &CycleState) -> i64 {
        let Some(facts) = &node.facts else { return 0 };
        pod.preferred_node_affinity
            .iter()
            .filter(|t| t.weight != 0 && node_selector_term_matches(&t.preference, facts.view()))
            .map(|t| i64::from(t.weight))
            .sum()
    }

    fn normalize(&self, scores: &mut [i64]) {
        normalize_to_max(scores, false);
    }
}

/// The fraction of cpu and memory requested on the node once the pod is added (0..=1 as f64 each).
fn fractions(pod: &PodInfo, node: &NodeInfo) -> Option<[(f64, i64, i64); 2]> {
    let facts = node.facts.as_ref()?;
    let alloc = &facts.allocatable;
    let used = &node.non_zero_requested;
    let want = &pod.non_zero_requests;
    let cpu = used.milli_cpu.saturating_add(want.milli_cpu);
    let mem = used.memory.saturating_add(want.memory);
    let fraction = |req: i64, cap: i64| {
        if cap <= 0 {
            1.0
        } else {
            (req as f64 / cap as f64).min(1.0)
        }
    };
    Some([
        (fraction(cpu, alloc.milli_cpu), cpu, alloc.milli_cpu),
        (fraction(mem, alloc.memory), mem, alloc.memory),
    ])
}

/// Prefers nodes with the most room left (upstream NodeResourcesFit LeastAllocated, weight 1).
pub struct LeastAllocated;

impl ScorePlugin for LeastAllocated {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }

    fn weight(&self) -> i64 {
        1
    }

    fn score(&self, pod: &PodInfo, node: &NodeInfo, _: &CycleState) -> i64 {
        let Some(resources) = fractions(pod, node) else {
            return 0;
        };
        let per_resource = |(_, requested, capacity): (f64, i64, i64)| {
            if capacity <= 0 || requested > capacity {
                0
            } else {
                (capacity - requested) * MAX_NODE_SCORE / capacity
            }
        };
        resources.iter().map(|r| per_resource(*r)).sum::<i64>() / resources.len() as i64
    }
}

/// Prefers nodes whose cpu and memory use stay even (upstream NodeResourcesBalancedAllocation, weight 1).
pub struct BalancedAllocation;

impl ScorePlugin for BalancedAllocation {
    fn name(&self) -> &'static str {
        "NodeResourcesBalancedAllocation"
    }

    fn weight(&self) -> i64 {
        1
    }

    fn score(&self, pod: &PodInfo, node: &NodeInfo, _: &CycleState) -> i64 {
        let Some([(cpu, _, _), (mem, _, _)]) = fractions(pod, node) else {
            return 0;
        };
        // The standard deviation of two values is half their distance.
        let std_dev = (cpu - mem).abs() / 2.0;
        ((1.0 - std_dev) * MAX_NODE_SCORE as f64) as i64
    }
}

/// Spreads pods of one controller (ReplicaSet, StatefulSet, Job) across nodes: fewer
/// siblings on a node score higher (the spirit of upstream's default PodTopologySpread on
/// hostname, weight 2).
pub struct OwnerSpread;

impl ScorePlugin for OwnerSpread {
    fn name(&self) -> &'static str {
        "PodTopologySpread"
    }

    fn weight(&self) -> i64 {
        2
    }

    fn score(&self, pod: &PodInfo, node: &NodeInfo, _: &CycleState) -> i64 {
        pod.controller_uid
            .as_ref()
            .and_then(|uid| node.owner_counts.get(uid))
            .copied()
            .unwrap_or(0) as i64
    }

    fn normalize(&self, scores: &mut [i64]) {
        normalize_to_max(scores, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NodeFacts, Readiness, Resources};
    use serde_json::{json, Value};

    fn pod(name: &str, spec: Value) -> PodInfo {
        let mut spec = spec;
        if spec.get("containers").is_none() {
            spec["containers"] =
                json!([{"name": "c", "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}}]);
        }
        PodInfo::new(serde_json::from_value(json!({"metadata": {"name": name, "namespace": "d",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "rs-1", "controller": true}]},
            "spec": spec})).unwrap())
    }

    fn node(name: &str, labels: Value, pods: Vec<PodInfo>) -> NodeInfo {
        NodeInfo::with_pods(
            NodeFacts {
                name: name.into(),
                labels: serde_json::from_value(labels).unwrap(),
                taints: vec![],
                allocatable: Resources {
                    milli_cpu: 4000,
                    memory: 8 << 30,
                    ephemeral_storage: 0,
                    pods: 110,
                    scalar: Default::default(),
                },
                unschedulable: false,
                readiness: Readiness::Ready,
            },
            pods,
        )
    }

    fn scores(plugin: &dyn ScorePlugin, p: &PodInfo, nodes: &[NodeInfo]) -> Vec<i64> {
        let state = CycleState::default();
        let mut s: Vec<i64> = nodes.iter().map(|n| plugin.score(p, n, &state)).collect();
        plugin.normalize(&mut s);
        s
    }

    #[test]
    fn least_allocated_prefers_the_emptier_node() {
        let busy = node(
            "busy",
            json!({}),
            vec![pod("a", json!({})), pod("b", json!({}))],
        );
        let idle = node("idle", json!({}), vec![]);
        let s = scores(&LeastAllocated, &pod("new", json!({})), &[busy, idle]);
        assert!(s[1] > s[0], "{s:?}");
        // idle: cpu 3500/4000 -> 87, memory 7/8 -> 87.
        assert_eq!(s[1], 87);
    }

    #[test]
    fn balanced_allocation_prefers_even_use() {
        let cpu_heavy = node(
            "cpu",
            json!({}),
            vec![pod(
                "a",
                json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "3"}}}]}),
            )],
        );
        let even = node(
            "even",
            json!({}),
            vec![pod(
                "b",
                json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "2", "memory": "4Gi"}}}]}),
            )],
        );
        let s = scores(
            &BalancedAllocation,
            &pod("new", json!({})),
            &[cpu_heavy, even],
        );
        assert!(s[1] > s[0], "{s:?}");
    }

    #[test]
    fn owner_spread_prefers_nodes_without_siblings() {
        let with_sibling = node("a", json!({}), vec![pod("rs-x", json!({}))]);
        let without = node("b", json!({}), vec![]);
        assert_eq!(
            scores(
                &OwnerSpread,
                &pod("rs-y", json!({})),
                &[with_sibling, without]
            ),
            vec![0, 100]
        );
    }

    #[test]
    fn preferred_affinity_and_prefer_no_schedule_taints() {
        let p = pod(
            "p",
            json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 10, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}},
            {"weight": 30, "preference": {"matchExpressions": [{"key": "disk", "operator": "Exists"}]}}]}}}),
        );
        let nodes = [
            node("x", json!({"zone": "a"}), vec![]),
            node("y", json!({"zone": "a", "disk": "ssd"}), vec![]),
            node("z", json!({}), vec![]),
        ];
        assert_eq!(scores(&PreferredNodeAffinity, &p, &nodes), vec![25, 100, 0]);

        let mut tainted = node("t", json!({}), vec![]);
        if let Some(f) = tainted.facts.as_mut() {
            f.taints.push(k8s_openapi::api::core::v1::Taint {
                key: "k".into(),
                value: None,
                effect: "PreferNoSchedule".into(),
                time_added: None,
            });
        }
        let clean = node("c", json!({}), vec![]);
        assert_eq!(
            scores(&PreferNoScheduleTaints, &p, &[tainted, clean]),
            vec![0, 100]
        );
    }
}
