//! Filter and score plugins, as in upstream's scheduling framework (with only the
//! extension points rkube needs). To add one, implement [`FilterPlugin`] or
//! [`ScorePlugin`] and list it in [`default_filters`] or [`default_scores`].
//!
//! Filters run in list order and a node's first failing filter gives its reasons, as
//! upstream; those reasons make up the "0/N nodes are available: ..." message.

mod filters;
mod scores;

use std::any::{Any, TypeId};
use std::borrow::Cow;
use std::collections::HashMap;

pub use filters::{
    HostPorts, InterPodAntiAffinity, NodeAffinity, NodeReady, NodeResourcesFit, NodeUnschedulable,
    TaintToleration,
};
pub use scores::{
    BalancedAllocation, LeastAllocated, OwnerSpread, PreferNoScheduleTaints, PreferredNodeAffinity,
};

use crate::cache::{Cache, NodeInfo};
use crate::model::PodInfo;

/// Scores are normalized to 0..=MAX_NODE_SCORE before weighting (upstream's MaxNodeScore).
pub const MAX_NODE_SCORE: i64 = 100;

/// Why a node does not fit; each reason counts once in the unschedulable message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unfit(pub Vec<Cow<'static, str>>);

impl Unfit {
    pub fn because(reason: impl Into<Cow<'static, str>>) -> Unfit {
        Unfit(vec![reason.into()])
    }
}

/// Per-cycle data plugins compute once per pod (in `pre_filter`/`pre_score`) and read per node.
#[derive(Default)]
pub struct CycleState {
    slots: HashMap<TypeId, Box<dyn Any + Send + Sync>>,
}

impl CycleState {
    pub fn insert<T: Any + Send + Sync>(&mut self, value: T) {
        self.slots.insert(TypeId::of::<T>(), Box::new(value));
    }

    pub fn get<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.slots
            .get(&TypeId::of::<T>())
            .and_then(|b| b.downcast_ref())
    }
}

pub trait FilterPlugin: Send + Sync {
    fn name(&self) -> &'static str;

    /// Runs once per pod before any node is filtered.
    fn pre_filter(&self, _pod: &PodInfo, _cluster: &Cache, _state: &mut CycleState) {}

    fn filter(&self, pod: &PodInfo, node: &NodeInfo, state: &CycleState) -> Result<(), Unfit>;
}

pub trait ScorePlugin: Send + Sync {
    fn name(&self) -> &'static str;

    /// Multiplies this plugin's normalized score (upstream's default weights).
    fn weight(&self) -> i64;

    /// Runs once per pod over the nodes that passed filtering.
    fn pre_score(&self, _pod: &PodInfo, _nodes: &[&NodeInfo], _state: &mut CycleState) {}

    /// A raw score; [`ScorePlugin::normalize`] maps the raw scores of all nodes to 0..=100.
    fn score(&self, pod: &PodInfo, node: &NodeInfo, state: &CycleState) -> i64;

    /// Defaults to nothing, for plugins whose raw scores are already 0..=100.
    fn normalize(&self, _scores: &mut [i64]) {}
}

/// Scales scores so the highest becomes 100 (or, `reverse`, the lowest becomes 100).
pub fn normalize_to_max(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    for s in scores.iter_mut() {
        if max == 0 {
            *s = if reverse { MAX_NODE_SCORE } else { 0 };
        } else {
            let scaled = *s * MAX_NODE_SCORE / max;
            *s = if reverse {
                MAX_NODE_SCORE - scaled
            } else {
                scaled
            };
        }
    }
}

/// In upstream's order: cheap, node-only checks first; anti-affinity (which looks at other pods) last.
pub fn default_filters() -> Vec<Box<dyn FilterPlugin>> {
    vec![
        Box::new(NodeUnschedulable),
        Box::new(NodeReady),
        Box::new(TaintToleration),
        Box::new(NodeAffinity),
        Box::new(HostPorts),
        Box::new(NodeResourcesFit),
        Box::new(InterPodAntiAffinity),
    ]
}

/// With upstream's default weights.
pub fn default_scores() -> Vec<Box<dyn ScorePlugin>> {
    vec![
        Box::new(PreferNoScheduleTaints),
        Box::new(PreferredNodeAffinity),
        Box::new(LeastAllocated),
        Box::new(BalancedAllocation),
        Box::new(OwnerSpread),
    ]
}
