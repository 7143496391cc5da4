//! The Deployment controller: one ReplicaSet per pod template (named
//! `<deployment>-<pod-template-hash>`), moved between with the RollingUpdate or Recreate
//! strategy, revision annotations for `kubectl rollout history/undo`, and the status and
//! conditions `kubectl rollout status` reads. Follows upstream's sync logic
//! (pkg/controller/deployment):
//! - this module: the controller, its informers, claiming ReplicaSets and the dispatch of
//!   one sync;
//! - [`sync`]: finding/creating the new ReplicaSet, resizing sets, scaling (proportional
//!   when several sets are active);
//! - [`rolling`]: the RollingUpdate strategy and its arithmetic (maxSurge/maxUnavailable,
//!   how far the new set grows and the old ones shrink), pure and table-tested;
//! - [`recreate`]: the Recreate strategy;
//! - [`progress`]: status, the Available and Progressing conditions, the progress deadline;
//! - [`history`]: revisions, the pod-template-hash, annotations copied to ReplicaSets,
//!   revisionHistoryLimit clean-up.

mod history;
mod progress;
mod recreate;
mod rolling;
mod sync;

pub use history::pod_template_hash;
pub use rolling::max_surge_and_unavailable;

use history::*;
use progress::*;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};
use rkube_runtime::{
    object_reference, run_reconcile_workers, Action, Backoff, EventRecorder, EventType,
    SharedInformers, WorkQueue,
};
use serde_json::{json, Value};
use tokio::task::JoinSet;

use crate::util::{
    controller_owner_ref, controller_ref, enqueue_controller_or_adopters, enqueue_own_key,
    is_terminating, now, patch_owner_references, patch_status_if_changed, scaled_value,
    selector_is_empty, selector_matches, split_key,
};
use crate::{ControllerError, Shared};

pub const NAME: &str = "deployment";
pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// Annotations of a Deployment that are not copied to its ReplicaSets.
const NOT_COPIED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    "deployment.kubernetes.io/revision-history",
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];

struct DeploymentController {
    client: kube::Client,
    deployments: Store<Deployment>,
    replicasets: Store<ReplicaSet>,
    recorder: EventRecorder,
}

pub fn start(shared: &Shared, tasks: &mut JoinSet<()>, informers: &mut SharedInformers) {
    let queue: Arc<WorkQueue<String>> = WorkQueue::new(Backoff::default());
    let client = shared.client.clone();
    let (deployments, deployments_synced) = informers
        .all::<Deployment>()
        .subscribe(enqueue_own_key(&queue));
    let (replicasets, replicasets_synced) =
        informers
            .all::<ReplicaSet>()
            .subscribe(enqueue_controller_or_adopters(
                &queue,
                "Deployment",
                deployments.clone(),
                |d| d.spec.as_ref().map(|s| &s.selector),
            ));
    let controller = Arc::new(DeploymentController {
        client: client.clone(),
        deployments,
        replicasets,
        recorder: EventRecorder::new(client, "deployment-controller", &shared.identity),
    });
    let workers = shared.workers;
    tasks.spawn(async move {
        deployments_synced.wait().await;
        replicasets_synced.wait().await;
        run_reconcile_workers(NAME, queue, workers, controller, |c, key| async move {
            c.reconcile(&key).await
        })
        .await;
    });
}

fn replicas_of(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn status_replicas(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().map(|s| s.replicas).unwrap_or(0)
}

fn available_of(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

fn desired(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn is_recreate(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        == Some("Recreate")
}

/// The ReplicaSets of one Deployment as one sync sees them.
struct Sets {
    new: Option<ReplicaSet>,
    old: Vec<ReplicaSet>,
}

impl Sets {
    fn all(&self) -> Vec<&ReplicaSet> {
        self.new.iter().chain(self.old.iter()).collect()
    }
}

impl DeploymentController {
    async fn reconcile(&self, key: &str) -> Result<Action, ControllerError> {
        let (namespace, name) = split_key(key);
        let Some(d) = self
            .deployments
            .get(&ObjectRef::new(name).within(namespace))
        else {
            return Ok(Action::Done);
        };
        let d: Deployment = (*d).clone();
        let spec = d.spec.clone().unwrap_or_default();
        if selector_is_empty(&spec.selector) {
            if d.metadata.generation != d.status.as_ref().and_then(|s| s.observed_generation) {
                self.recorder.record(
                    object_reference(&d),
                    EventType::Warning,
                    "SelectingAll",
                    "This deployment is selecting all pods. A non-empty selector is required.",
                );
                let patch = json!({"status": {"observedGeneration": d.metadata.generation}});
                self.deployments_api(namespace)
                    .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
            }
            return Ok(Action::Done);
        }
        let owned = self.claim_replicasets(&d).await?;
        let mut pending: Option<(&'static str, String)> = None;
        if is_terminating(&d.metadata) {
            let sets = self.split(&d, owned);
            return self.sync_status(&d, &sets, None).await;
        }
        if spec.paused == Some(true) || self.is_scaling_event(&d, &owned) {
            let mut sets = self.get_all(&d, owned, false, &mut pending).await?;
            self.scale(&d, &mut sets).await?;
            if spec.paused != Some(true) && self.complete(&d, &sets) {
                self.cleanup(&d, &sets).await?;
            }
            return self.sync_status(&d, &sets, pending).await;
        }
        if is_recreate(&d) {
            self.rollout_recreate(&d, owned, &mut pending).await
        } else {
            self.rollout_rolling(&d, owned, &mut pending).await
        }
    }

    fn deployments_api(&self, namespace: &str) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), namespace)
    }

    fn rs_api(&self, namespace: &str) -> Api<ReplicaSet> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Owned ReplicaSets, after adopting matching orphans and releasing owned ones that no
    /// longer match.
    async fn claim_replicasets(&self, d: &Deployment) -> Result<Vec<ReplicaSet>, ControllerError> {
        let namespace = d.namespace().unwrap_or_default();
        let uid = d.uid().unwrap_or_default();
        let selector = d
            .spec
            .as_ref()
            .map(|s| s.selector.clone())
            .unwrap_or_default();
        let api = self.rs_api(&namespace);
        let mut owned = Vec::new();
        for rs in self.replicasets.state() {
            if rs.namespace().as_deref() != Some(namespace.as_str()) {
                continue;
            }
            let matches = selector_matches(&selector, rs.labels());
            match controller_ref(&rs.metadata) {
                Some(owner) if owner.uid == uid => {
                    if matches || is_terminating(&d.metadata) {
                        owned.push((*rs).clone());
                    } else {
                        let refs: Vec<_> = rs
                            .metadata
                            .owner_references
                            .iter()
                            .flatten()
                            .filter(|r| r.uid != uid)
                            .cloned()
                            .collect();
                        patch_owner_references(&api, &rs, refs).await?;
                    }
                }
                None if matches
                    && !is_terminating(&rs.metadata)
                    && !is_terminating(&d.metadata) =>
                {
                    let mut refs = rs.metadata.owner_references.clone().unwrap_or_default();
                    refs.push(controller_owner_ref(d));
                    if let Some(updated) = patch_owner_references(&api, &rs, refs).await? {
                        owned.push(updated);
                    }
                }
                _ => {}
            }
        }
        owned.sort_by(|a, b| {
            (
                a.metadata.creation_timestamp.as_ref().map(|t| t.0),
                a.name_any(),
            )
                .cmp(&(
                    b.metadata.creation_timestamp.as_ref().map(|t| t.0),
                    b.name_any(),
                ))
        });
        Ok(owned)
    }

    /// New = the oldest ReplicaSet whose template equals the Deployment's (ignoring the hash).
    fn split(&self, d: &Deployment, owned: Vec<ReplicaSet>) -> Sets {
        let template = template_ignoring_hash(&d.spec.clone().unwrap_or_default().template);
        let mut new = None;
        let mut old = Vec::new();
        for rs in owned {
            let same = rs
                .spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .is_some_and(|t| template_ignoring_hash(t) == template);
            if same && new.is_none() {
                new = Some(rs);
            } else {
                old.push(rs);
            }
        }
        Sets { new, old }
    }

    fn is_scaling_event(&self, d: &Deployment, owned: &[ReplicaSet]) -> bool {
        let want = desired(d).to_string();
        owned.iter().filter(|rs| replicas_of(rs) > 0).any(|rs| {
            rs.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(DESIRED_REPLICAS))
                .is_some_and(|v| *v != want)
        })
    }
}
