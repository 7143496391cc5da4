//! One scheduling decision: filter nodes, score the feasible ones, pick the best (ties at
//! random), or explain why none fits in upstream's words.

use std::collections::BTreeMap;
use std::fmt;

use rand::Rng;

use crate::cache::{Cache, NodeInfo};
use crate::model::PodInfo;
use crate::plugins::{
    default_filters, default_scores, CycleState, FilterPlugin, ScorePlugin, Unfit,
};

/// Upstream's minFeasibleNodesToFind: below this many nodes, every node is considered.
const MIN_FEASIBLE_NODES_TO_FIND: usize = 100;

/// Why a pod fits nowhere; `Display` is upstream's FitError message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FitError {
    NoNodes,
    /// (number of nodes, reason -> number of nodes giving it)
    Unfit {
        nodes: usize,
        reasons: BTreeMap<String, usize>,
    },
}

impl fmt::Display for FitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FitError::NoNodes => write!(f, "no nodes available to schedule pods"),
            FitError::Unfit { nodes, reasons } => {
                write!(f, "0/{nodes} nodes are available:")?;
                // Upstream sorts the "<count> <reason>" strings themselves.
                let mut parts: Vec<String> = reasons
                    .iter()
                    .map(|(reason, n)| format!("{n} {reason}"))
                    .collect();
                parts.sort();
                if !parts.is_empty() {
                    write!(f, " {}.", parts.join(", "))?;
                }
                Ok(())
            }
        }
    }
}

pub struct Framework {
    filters: Vec<Box<dyn FilterPlugin>>,
    scores: Vec<Box<dyn ScorePlugin>>,
    /// `None`: upstream's adaptive percentage (50% minus 1% per 125 nodes, at least 5%).
    percentage_of_nodes_to_score: Option<u32>,
}

impl Default for Framework {
    fn default() -> Framework {
        Framework::new(default_filters(), default_scores(), None)
    }
}

impl Framework {
    pub fn new(
        filters: Vec<Box<dyn FilterPlugin>>,
        scores: Vec<Box<dyn ScorePlugin>>,
        percentage_of_nodes_to_score: Option<u32>,
    ) -> Framework {
        Framework {
            filters,
            scores,
            percentage_of_nodes_to_score,
        }
    }

    pub fn filter_names(&self) -> Vec<&'static str> {
        self.filters.iter().map(|f| f.name()).collect()
    }

    pub fn score_names(&self) -> Vec<&'static str> {
        self.scores.iter().map(|s| s.name()).collect()
    }

    /// Upstream's numFeasibleNodesToFind: large clusters stop filtering once enough nodes
    /// fit, trading a little placement quality for speed.
    fn feasible_nodes_to_find(&self, all: usize) -> usize {
        if all < MIN_FEASIBLE_NODES_TO_FIND {
            return all;
        }
        let percentage = match self.percentage_of_nodes_to_score {
            Some(p) if p > 0 => p.min(100) as usize,
            _ => (50usize.saturating_sub(all / 125)).max(5),
        };
        (all * percentage / 100).max(MIN_FEASIBLE_NODES_TO_FIND)
    }

    /// Picks a node for `pod`. `start` rotates where filtering begins, so that successive pods
    /// do not always look at the same first nodes; it is advanced past the nodes looked at.
    pub fn schedule(
        &self,
        pod: &PodInfo,
        cache: &Cache,
        start: &mut usize,
    ) -> Result<String, FitError> {
        let nodes: Vec<&NodeInfo> = cache.schedulable_nodes().collect();
        let all = nodes.len();
        if all == 0 {
            return Err(FitError::NoNodes);
        }
        let mut state = CycleState::default();
        for f in &self.filters {
            f.pre_filter(pod, cache, &mut state);
        }
        let wanted = self.feasible_nodes_to_find(all);
        let mut feasible: Vec<&NodeInfo> = Vec::with_capacity(wanted.min(all));
        let mut unfit: Vec<Unfit> = Vec::new();
        let mut looked = 0;
        for i in 0..all {
            let node = nodes[(*start + i) % all];
            looked += 1;
            match self
                .filters
                .iter()
                .try_for_each(|f| f.filter(pod, node, &state))
            {
                Ok(()) => {
                    feasible.push(node);
                    if feasible.len() >= wanted {
                        break;
                    }
                }
                Err(reasons) => unfit.push(reasons),
            }
        }
        *start = (*start + looked) % all;
        if feasible.is_empty() {
            let mut reasons = BTreeMap::new();
            for u in unfit {
                for r in u.0 {
                    *reasons.entry(r.into_owned()).or_insert(0) += 1;
                }
            }
            return Err(FitError::Unfit {
                nodes: all,
                reasons,
            });
        }
        if feasible.len() == 1 {
            return Ok(feasible[0].name.clone());
        }
        Ok(self.select(pod, &feasible, &mut state))
    }

    fn select(&self, pod: &PodInfo, feasible: &[&NodeInfo], state: &mut CycleState) -> String {
        let mut totals = vec![0i64; feasible.len()];
        for plugin in &self.scores {
            plugin.pre_score(pod, feasible, state);
            let mut scores: Vec<i64> = feasible
                .iter()
                .map(|n| plugin.score(pod, n, state))
                .collect();
            plugin.normalize(&mut scores);
            for (total, s) in totals.iter_mut().zip(scores) {
                *total += s * plugin.weight();
            }
        }
        // Reservoir sampling over the best scores: each tied node equally likely, one pass.
        let mut rng = rand::thread_rng();
        let mut best = 0;
        let mut ties = 0u32;
        for (i, &total) in totals.iter().enumerate() {
            if total > totals[best] {
                best = i;
                ties = 1;
            } else if total == totals[best] {
                ties += 1;
                if rng.gen_range(0..ties) == 0 {
                    best = i;
                }
            }
        }
        feasible[best].name.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashSet;
    use std::sync::Arc;

    fn node(name: &str, cpu: &str, taint: Option<&str>) -> k8s_openapi::api::core::v1::Node {
        let mut n = json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {"allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True"}]}});
        if let Some(key) = taint {
            n["spec"] = json!({"taints": [{"key": key, "effect": "NoSchedule"}]});
        }
        serde_json::from_value(n).unwrap()
    }

    fn pod(name: &str, cpu: &str) -> PodInfo {
        PodInfo::new(
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "d"},
                "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]}}))
            .unwrap(),
        )
    }

    #[test]
    fn message_matches_upstream_format() {
        let mut cache = Cache::default();
        cache.upsert_node(&node("a", "1", None));
        cache.upsert_node(&node("b", "1", None));
        cache.upsert_node(&node(
            "cp",
            "8",
            Some("node-role.kubernetes.io/control-plane"),
        ));
        let err = Framework::default()
            .schedule(&pod("p", "2"), &cache, &mut 0)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/3 nodes are available: 1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }, 2 Insufficient cpu."
        );
        assert_eq!(
            Framework::default()
                .schedule(&pod("p", "1"), &Cache::default(), &mut 0)
                .unwrap_err()
                .to_string(),
            "no nodes available to schedule pods"
        );
    }

    #[test]
    fn picks_a_fitting_node_and_breaks_ties_at_random() {
        let mut cache = Cache::default();
        cache.upsert_node(&node("small", "1", None));
        cache.upsert_node(&node("big-1", "8", None));
        cache.upsert_node(&node("big-2", "8", None));
        let fw = Framework::default();
        let mut chosen = HashSet::new();
        for _ in 0..200 {
            let n = fw.schedule(&pod("p", "2"), &cache, &mut 0).unwrap();
            assert_ne!(n, "small");
            chosen.insert(n);
        }
        assert_eq!(
            chosen.len(),
            2,
            "equal nodes must both be picked sometimes: {chosen:?}"
        );
    }

    #[test]
    fn assumed_pods_push_the_next_pod_elsewhere() {
        let mut cache = Cache::default();
        cache.upsert_node(&node("a", "1", None));
        cache.upsert_node(&node("b", "1", None));
        let fw = Framework::default();
        let first = fw.schedule(&pod("p1", "600m"), &cache, &mut 0).unwrap();
        cache.assume(&pod("p1", "600m"), &first);
        let second = fw.schedule(&pod("p2", "600m"), &cache, &mut 0).unwrap();
        assert_ne!(first, second);
        cache.assume(&pod("p2", "600m"), &second);
        assert!(fw.schedule(&pod("p3", "600m"), &cache, &mut 0).is_err());
        let _ = Arc::new(());
    }

    #[test]
    fn large_clusters_stop_after_enough_feasible_nodes() {
        let fw = Framework::default();
        assert_eq!(fw.feasible_nodes_to_find(50), 50);
        assert_eq!(fw.feasible_nodes_to_find(1000), 420);
        assert_eq!(fw.feasible_nodes_to_find(5000), 500);
        assert_eq!(
            Framework::new(vec![], vec![], Some(100)).feasible_nodes_to_find(1000),
            1000
        );
    }

    #[test]
    fn every_default_plugin_is_listed() {
        let fw = Framework::default();
        assert_eq!(
            fw.filter_names(),
            [
                "NodeUnschedulable",
                "NodeReady",
                "TaintToleration",
                "NodeAffinity",
                "NodePorts",
                "NodeResourcesFit",
                "InterPodAffinity"
            ]
        );
        assert_eq!(fw.score_names().len(), 5);
    }
}
