//! The Deployment controller: one ReplicaSet per pod template (named
//! `<deployment>-<pod-template-hash>`), moved between with the RollingUpdate or Recreate
//! strategy, revision annotations for `kubectl rollout history/undo`, and the status and
//! conditions `kubectl rollout status` reads. Follows upstream's sync logic
//! (pkg/controller/deployment), with proportional scaling simplified.

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
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use rkube_runtime::{
    object_reference, run_reconcile_workers, spawn_informer, Action, Backoff, EventRecorder,
    EventType, WorkQueue,
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

pub fn start(shared: &Shared, tasks: &mut JoinSet<()>) {
    let queue: Arc<WorkQueue<String>> = WorkQueue::new(Backoff::default());
    let client = shared.client.clone();
    let deployments = spawn_informer(
        tasks,
        Api::<Deployment>::all(client.clone()),
        watcher::Config::default(),
        (),
        enqueue_own_key(&queue),
    );
    let replicasets = spawn_informer(
        tasks,
        Api::<ReplicaSet>::all(client.clone()),
        watcher::Config::default(),
        (),
        enqueue_controller_or_adopters(&queue, "Deployment", deployments.clone(), |d| {
            d.spec.as_ref().map(|s| &s.selector)
        }),
    );
    let controller = Arc::new(DeploymentController {
        client: client.clone(),
        deployments,
        replicasets,
        recorder: EventRecorder::new(client, "deployment-controller", &shared.identity),
    });
    let workers = shared.workers;
    tasks.spawn(async move {
        let _ = controller.deployments.wait_until_ready().await;
        let _ = controller.replicasets.wait_until_ready().await;
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

fn revision_of(meta: &ObjectMeta) -> i64 {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
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

/// (maxSurge, maxUnavailable) resolved against the desired replicas. Both zero would
/// block a rollout, so unavailability becomes 1 then, as upstream.
pub fn max_surge_and_unavailable(d: &Deployment) -> (i32, i32) {
    if is_recreate(d) {
        return (0, 0);
    }
    let rolling = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    let total = desired(d);
    let surge = scaled_value(rolling.and_then(|r| r.max_surge.as_ref()), total, true, 25).max(0);
    let mut unavailable = scaled_value(
        rolling.and_then(|r| r.max_unavailable.as_ref()),
        total,
        false,
        25,
    )
    .max(0);
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable.min(total.max(0)))
}

/// A template with the hash label taken out, as JSON, for comparing templates.
fn template_ignoring_hash(template: &PodTemplateSpec) -> Value {
    let mut t = template.clone();
    if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(POD_TEMPLATE_HASH);
    }
    let mut v = serde_json::to_value(&t).unwrap_or(Value::Null);
    // An empty label map and none are the same template.
    if v["metadata"]["labels"]
        .as_object()
        .is_some_and(|m| m.is_empty())
    {
        if let Some(meta) = v["metadata"].as_object_mut() {
            meta.remove("labels");
        }
    }
    v
}

/// The pod-template-hash: FNV-1a (32 bit) of the template and the collision count,
/// spelled with upstream's vowel-free alphabet so it never forms words.
pub fn pod_template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u32::from(*b);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    };
    feed(template_ignoring_hash(template).to_string().as_bytes());
    if let Some(c) = collision_count {
        feed(&c.to_le_bytes());
    }
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    hash.to_string()
        .bytes()
        .map(|b| char::from(ALPHANUMS[usize::from(b) % ALPHANUMS.len()]))
        .collect()
}

fn condition<'a>(status: &'a DeploymentStatus, type_: &str) -> Option<&'a DeploymentCondition> {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_)
}

/// Sets a condition, keeping lastTransitionTime when the status does not change (and the
/// whole condition when nothing but the times would change).
fn set_condition(
    status: &mut DeploymentStatus,
    type_: &str,
    value: &str,
    reason: &str,
    message: String,
) {
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    let existing = conditions.iter().position(|c| c.type_ == type_);
    if let Some(i) = existing {
        let c = &conditions[i];
        if c.status == value
            && c.reason.as_deref() == Some(reason)
            && c.message.as_deref() == Some(message.as_str())
        {
            return;
        }
    }
    let transition = existing
        .and_then(|i| conditions.get(i))
        .filter(|c| c.status == value)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(now);
    let new = DeploymentCondition {
        type_: type_.to_string(),
        status: value.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message),
        last_transition_time: Some(transition),
        last_update_time: Some(now()),
    };
    match existing {
        Some(i) => conditions[i] = new,
        None => conditions.push(new),
    }
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

    /// Splits into new and old, brings the new one's annotations up to date, and creates it
    /// if `create` and there is none. Also keeps the Deployment's revision annotation.
    async fn get_all(
        &self,
        d: &Deployment,
        owned: Vec<ReplicaSet>,
        create: bool,
        pending: &mut Option<(&'static str, String)>,
    ) -> Result<Sets, ControllerError> {
        let mut sets = self.split(d, owned);
        let max_old = sets
            .old
            .iter()
            .map(|rs| revision_of(&rs.metadata))
            .max()
            .unwrap_or(0);
        let revision = max_old + 1;
        let namespace = d.namespace().unwrap_or_default();
        let (surge, _) = max_surge_and_unavailable(d);
        if let Some(rs) = sets.new.take() {
            let current = revision_of(&rs.metadata);
            let wanted_revision = if current < revision {
                revision
            } else {
                current
            };
            let mut annotations = rs.metadata.annotations.clone().unwrap_or_default();
            copy_annotations(d, &mut annotations);
            annotations.insert(REVISION.into(), wanted_revision.to_string());
            annotations
                .entry(DESIRED_REPLICAS.into())
                .or_insert_with(|| desired(d).to_string());
            annotations
                .entry(MAX_REPLICAS.into())
                .or_insert_with(|| (desired(d) + surge).to_string());
            let min_ready = d.spec.as_ref().and_then(|s| s.min_ready_seconds);
            let rs_min_ready = rs.spec.as_ref().and_then(|s| s.min_ready_seconds);
            let rs = if Some(&annotations) != rs.metadata.annotations.as_ref()
                || min_ready.unwrap_or(0) != rs_min_ready.unwrap_or(0)
            {
                let mut updated = rs.clone();
                updated.metadata.annotations = Some(annotations);
                if let Some(spec) = updated.spec.as_mut() {
                    spec.min_ready_seconds = min_ready;
                }
                self.rs_api(&namespace)
                    .replace(&rs.name_any(), &PostParams::default(), &updated)
                    .await?
            } else {
                rs
            };
            if d.status
                .as_ref()
                .and_then(|s| condition(s, "Progressing"))
                .is_none()
            {
                *pending = Some((
                    "FoundNewReplicaSet",
                    format!("Found new replica set \"{}\"", rs.name_any()),
                ));
            }
            sets.new = Some(rs);
        } else if create {
            sets.new = Some(self.create_new_rs(d, &sets, revision, pending).await?);
        }
        if let Some(rs) = &sets.new {
            let rev = revision_of(&rs.metadata).to_string();
            if d.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(REVISION))
                != Some(&rev)
            {
                let patch = json!({"metadata": {"annotations": {REVISION: rev}}});
                self.deployments_api(&namespace)
                    .patch(
                        &d.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await?;
            }
        }
        Ok(sets)
    }

    async fn create_new_rs(
        &self,
        d: &Deployment,
        sets: &Sets,
        revision: i64,
        pending: &mut Option<(&'static str, String)>,
    ) -> Result<ReplicaSet, ControllerError> {
        let namespace = d.namespace().unwrap_or_default();
        let spec = d.spec.clone().unwrap_or_default();
        let collision_count = d.status.as_ref().and_then(|s| s.collision_count);
        let hash = pod_template_hash(&spec.template, collision_count);
        let mut template = spec.template.clone();
        template
            .metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let mut selector = spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_with(BTreeMap::new)
            .insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let (surge, _) = max_surge_and_unavailable(d);
        let replicas = self.new_rs_replicas(d, sets, None);
        let mut annotations = BTreeMap::new();
        copy_annotations(d, &mut annotations);
        annotations.insert(REVISION.into(), revision.to_string());
        annotations.insert(DESIRED_REPLICAS.into(), desired(d).to_string());
        annotations.insert(MAX_REPLICAS.into(), (desired(d) + surge).to_string());
        let name = format!("{}-{}", d.name_any(), hash);
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
                annotations: Some(annotations),
                owner_references: Some(vec![controller_owner_ref(d)]),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                min_ready_seconds: spec.min_ready_seconds,
                selector,
                template: Some(template),
            }),
            status: None,
        };
        match self
            .rs_api(&namespace)
            .create(&PostParams::default(), &rs)
            .await
        {
            Ok(created) => {
                if replicas > 0 {
                    self.recorder.record(
                        object_reference(d),
                        EventType::Normal,
                        "ScalingReplicaSet",
                        format!("Scaled up replica set {name} from 0 to {replicas}"),
                    );
                }
                *pending = Some((
                    "NewReplicaSetCreated",
                    format!("Created new replica set \"{name}\""),
                ));
                Ok(created)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                // Ours already (a stale cache), or a hash collision: bump collisionCount and retry.
                let existing = self.rs_api(&namespace).get(&name).await?;
                let ours = controller_ref(&existing.metadata)
                    .is_some_and(|o| Some(&o.uid) == d.metadata.uid.as_ref());
                let same = existing
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.as_ref())
                    .is_some_and(|t| {
                        template_ignoring_hash(t) == template_ignoring_hash(&spec.template)
                    });
                if ours && same {
                    return Ok(existing);
                }
                let patch = json!({"status": {"collisionCount": collision_count.unwrap_or(0) + 1}});
                self.deployments_api(&namespace)
                    .patch_status(
                        &d.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await?;
                Err(ControllerError::Pending(format!(
                    "hash collision for replica set {name}"
                )))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// How many replicas the new ReplicaSet may have now (upstream NewRSNewReplicas).
    fn new_rs_replicas(&self, d: &Deployment, sets: &Sets, new: Option<&ReplicaSet>) -> i32 {
        let want = desired(d);
        if is_recreate(d) {
            return want;
        }
        let (surge, _) = max_surge_and_unavailable(d);
        let current: i32 = sets.all().iter().map(|rs| replicas_of(rs)).sum();
        let new_replicas = new.map(replicas_of).unwrap_or(0);
        let max_total = want + surge;
        if current >= max_total {
            return new_replicas;
        }
        let scale_up = max_total - current;
        new_replicas + scale_up.min(want - new_replicas).max(0)
    }

    /// Sets a ReplicaSet's size (and its desired/max annotations); records the event.
    async fn scale_rs(
        &self,
        d: &Deployment,
        rs: &ReplicaSet,
        to: i32,
    ) -> Result<ReplicaSet, ControllerError> {
        let from = replicas_of(rs);
        let (surge, _) = max_surge_and_unavailable(d);
        let mut updated = rs.clone();
        let annotations = updated
            .metadata
            .annotations
            .get_or_insert_with(BTreeMap::new);
        let desired_s = desired(d).to_string();
        let max_s = (desired(d) + surge).to_string();
        let annotations_changed = annotations.get(DESIRED_REPLICAS) != Some(&desired_s)
            || annotations.get(MAX_REPLICAS) != Some(&max_s);
        if from == to && !annotations_changed {
            return Ok(rs.clone());
        }
        annotations.insert(DESIRED_REPLICAS.into(), desired_s);
        annotations.insert(MAX_REPLICAS.into(), max_s);
        updated.spec.get_or_insert_with(Default::default).replicas = Some(to);
        let result = self
            .rs_api(&rs.namespace().unwrap_or_default())
            .replace(&rs.name_any(), &PostParams::default(), &updated)
            .await?;
        if from != to {
            let direction = if to > from { "up" } else { "down" };
            self.recorder.record(
                object_reference(d),
                EventType::Normal,
                "ScalingReplicaSet",
                format!(
                    "Scaled {direction} replica set {} from {from} to {to}",
                    rs.name_any()
                ),
            );
        }
        Ok(result)
    }

    /// Scaling without a template change (also while paused). One active ReplicaSet takes
    /// the new size; several share the difference in proportion to their sizes, new first.
    async fn scale(&self, d: &Deployment, sets: &mut Sets) -> Result<(), ControllerError> {
        let want = desired(d);
        let active_count = sets.all().iter().filter(|rs| replicas_of(rs) > 0).count();
        if active_count <= 1 {
            let target = match (&sets.new, sets.all().iter().find(|rs| replicas_of(rs) > 0)) {
                (_, Some(active)) => Some(active.name_any()),
                (Some(new), None) => Some(new.name_any()),
                (None, None) => sets.old.last().map(|rs| rs.name_any()),
            };
            if let Some(target) = target {
                self.resize(d, sets, &target, |_| want).await?;
            }
            return Ok(());
        }
        if let Some(new) = sets.new.clone() {
            if replicas_of(&new) == want && available_of(&new) >= want {
                for name in sets
                    .old
                    .iter()
                    .filter(|rs| replicas_of(rs) > 0)
                    .map(|rs| rs.name_any())
                    .collect::<Vec<_>>()
                {
                    self.resize(d, sets, &name, |_| 0).await?;
                }
                return Ok(());
            }
        }
        let (surge, _) = max_surge_and_unavailable(d);
        let allowed = if is_recreate(d) { want } else { want + surge };
        let current: i32 = sets.all().iter().map(|rs| replicas_of(rs)).sum();
        let to_add = allowed - current;
        if to_add == 0 || current == 0 {
            return Ok(());
        }
        let mut order: Vec<(String, i32)> = sets
            .all()
            .iter()
            .filter(|rs| replicas_of(rs) > 0)
            .map(|rs| (rs.name_any(), replicas_of(rs)))
            .collect();
        if to_add < 0 {
            // Shrink the oldest first: the list is new-then-oldest-first, so move new last.
            order.rotate_left(usize::from(
                sets.new.as_ref().is_some_and(|n| replicas_of(n) > 0),
            ));
        }
        let mut sizes: Vec<(String, i32)> = Vec::new();
        let mut added = 0;
        for (name, size) in &order {
            let share = i32::try_from(i64::from(*size) * i64::from(to_add) / i64::from(current))
                .unwrap_or(0);
            let share = if to_add > 0 {
                share.min(to_add - added)
            } else {
                share.max(to_add - added)
            };
            added += share;
            sizes.push((name.clone(), (size + share).max(0)));
        }
        if let Some(first) = sizes.first_mut() {
            first.1 = (first.1 + to_add - added).max(0);
        }
        for (name, size) in sizes {
            self.resize(d, sets, &name, |_| size).await?;
        }
        Ok(())
    }

    /// Scales the named set and puts the updated object back into `sets`; true if it changed size.
    async fn resize(
        &self,
        d: &Deployment,
        sets: &mut Sets,
        name: &str,
        size: impl Fn(i32) -> i32,
    ) -> Result<bool, ControllerError> {
        let slot = if sets.new.as_ref().is_some_and(|n| n.name_any() == name) {
            sets.new.as_mut()
        } else {
            sets.old.iter_mut().find(|rs| rs.name_any() == name)
        };
        let Some(slot) = slot else { return Ok(false) };
        let from = replicas_of(slot);
        let to = size(from);
        *slot = self.scale_rs(d, slot, to).await?;
        Ok(from != to)
    }

    async fn rollout_rolling(
        &self,
        d: &Deployment,
        owned: Vec<ReplicaSet>,
        pending: &mut Option<(&'static str, String)>,
    ) -> Result<Action, ControllerError> {
        let mut sets = self.get_all(d, owned, true, pending).await?;
        let want = desired(d);
        // Scale the new ReplicaSet up as far as surge allows.
        if let Some(new) = sets.new.clone() {
            let current = replicas_of(&new);
            let target = if current > want {
                want
            } else {
                self.new_rs_replicas(d, &sets, Some(&new))
            };
            if target != current
                && self
                    .resize(d, &mut sets, &new.name_any(), |_| target)
                    .await?
            {
                return self.sync_status(d, &sets, pending.take()).await;
            }
        }
        if self.scale_down_old(d, &mut sets).await? {
            return self.sync_status(d, &sets, pending.take()).await;
        }
        if self.complete(d, &sets) {
            self.cleanup(d, &sets).await?;
        }
        self.sync_status(d, &sets, pending.take()).await
    }

    /// Upstream reconcileOldReplicaSets: first drop unhealthy old replicas, then scale old
    /// ones down while at least `replicas - maxUnavailable` stay available.
    async fn scale_down_old(
        &self,
        d: &Deployment,
        sets: &mut Sets,
    ) -> Result<bool, ControllerError> {
        let old_count: i32 = sets.old.iter().map(replicas_of).sum();
        if old_count == 0 {
            return Ok(false);
        }
        let want = desired(d);
        let (_, unavailable) = max_surge_and_unavailable(d);
        let min_available = want - unavailable;
        let all_count: i32 = sets.all().iter().map(|rs| replicas_of(rs)).sum();
        let new_unavailable = sets
            .new
            .as_ref()
            .map(|n| replicas_of(n) - available_of(n))
            .unwrap_or(0);
        let max_scaled_down = all_count - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return Ok(false);
        }
        let mut changed = false;
        // Unhealthy old replicas cost no availability to remove.
        let mut cleaned = 0;
        let names: Vec<String> = sets.old.iter().map(|rs| rs.name_any()).collect();
        for name in &names {
            if cleaned >= max_scaled_down {
                break;
            }
            let Some(rs) = sets.old.iter().find(|rs| &rs.name_any() == name) else {
                continue;
            };
            let (replicas, available) = (replicas_of(rs), available_of(rs));
            if replicas == 0 || replicas <= available {
                continue;
            }
            let down = (replicas - available).min(max_scaled_down - cleaned);
            cleaned += down;
            changed |= self.resize(d, sets, name, |r| r - down).await?;
        }
        let available_total: i32 = sets.all().iter().map(|rs| available_of(rs)).sum();
        if available_total > min_available {
            let mut budget = available_total - min_available;
            for name in &names {
                if budget <= 0 {
                    break;
                }
                let Some(rs) = sets.old.iter().find(|rs| &rs.name_any() == name) else {
                    continue;
                };
                let replicas = replicas_of(rs);
                if replicas == 0 {
                    continue;
                }
                let down = replicas.min(budget);
                budget -= down;
                changed |= self.resize(d, sets, name, |r| r - down).await?;
            }
        }
        Ok(changed)
    }

    async fn rollout_recreate(
        &self,
        d: &Deployment,
        owned: Vec<ReplicaSet>,
        pending: &mut Option<(&'static str, String)>,
    ) -> Result<Action, ControllerError> {
        let mut sets = self.get_all(d, owned, false, pending).await?;
        let mut scaled = false;
        for name in sets
            .old
            .iter()
            .filter(|rs| replicas_of(rs) > 0)
            .map(|rs| rs.name_any())
            .collect::<Vec<_>>()
        {
            scaled |= self.resize(d, &mut sets, &name, |_| 0).await?;
        }
        if scaled {
            return self.sync_status(d, &sets, pending.take()).await;
        }
        // Recreate: no new pod starts while an old one still runs.
        if sets.old.iter().any(|rs| status_replicas(rs) > 0) {
            return self.sync_status(d, &sets, pending.take()).await;
        }
        if sets.new.is_none() {
            let owned = sets.old.clone();
            sets = self.get_all(d, owned, true, pending).await?;
        }
        if let Some(new) = sets.new.clone() {
            let want = desired(d);
            if replicas_of(&new) != want {
                self.resize(d, &mut sets, &new.name_any(), |_| want).await?;
            }
        }
        if self.complete(d, &sets) {
            self.cleanup(d, &sets).await?;
        }
        self.sync_status(d, &sets, pending.take()).await
    }

    fn complete(&self, d: &Deployment, sets: &Sets) -> bool {
        let status = self.calculate_status(d, sets);
        deployment_complete(d, &status)
    }

    /// Deletes old, empty ReplicaSets beyond revisionHistoryLimit, lowest revision first.
    async fn cleanup(&self, d: &Deployment, sets: &Sets) -> Result<(), ControllerError> {
        let Some(limit) = d.spec.as_ref().and_then(|s| s.revision_history_limit) else {
            return Ok(());
        };
        let mut cleanable: Vec<&ReplicaSet> = sets
            .old
            .iter()
            .filter(|rs| !is_terminating(&rs.metadata))
            .collect();
        let excess = i64::try_from(cleanable.len()).unwrap_or(0) - i64::from(limit);
        if excess <= 0 {
            return Ok(());
        }
        cleanable.sort_by_key(|rs| {
            (
                revision_of(&rs.metadata),
                rs.metadata.creation_timestamp.as_ref().map(|t| t.0),
            )
        });
        let api = self.rs_api(&d.namespace().unwrap_or_default());
        for rs in cleanable
            .into_iter()
            .take(usize::try_from(excess).unwrap_or(0))
        {
            let settled =
                rs.status.as_ref().and_then(|s| s.observed_generation) >= rs.metadata.generation;
            if replicas_of(rs) != 0 || status_replicas(rs) != 0 || !settled {
                continue;
            }
            match api.delete(&rs.name_any(), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn calculate_status(&self, d: &Deployment, sets: &Sets) -> DeploymentStatus {
        let all = sets.all();
        let available: i32 = all.iter().map(|rs| available_of(rs)).sum();
        let total_spec: i32 = all.iter().map(|rs| replicas_of(rs)).sum();
        let old = d.status.clone().unwrap_or_default();
        let mut status = DeploymentStatus {
            observed_generation: d.metadata.generation,
            replicas: Some(all.iter().map(|rs| status_replicas(rs)).sum()),
            updated_replicas: Some(sets.new.as_ref().map(status_replicas).unwrap_or(0)),
            ready_replicas: Some(
                all.iter()
                    .map(|rs| {
                        rs.status
                            .as_ref()
                            .and_then(|s| s.ready_replicas)
                            .unwrap_or(0)
                    })
                    .sum(),
            ),
            available_replicas: Some(available),
            unavailable_replicas: Some((total_spec - available).max(0)),
            collision_count: old.collision_count,
            conditions: old.conditions.clone(),
        };
        let (_, unavailable) = max_surge_and_unavailable(d);
        if available >= desired(d) - unavailable {
            set_condition(
                &mut status,
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
            );
        } else {
            set_condition(
                &mut status,
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
            );
        }
        status
    }

    /// Computes and writes the status with the Progressing condition (upstream
    /// syncRolloutStatus); requeues for the progress deadline while a rollout is under way.
    async fn sync_status(
        &self,
        d: &Deployment,
        sets: &Sets,
        pending: Option<(&'static str, String)>,
    ) -> Result<Action, ControllerError> {
        let mut status = self.calculate_status(d, sets);
        let old = d.status.clone().unwrap_or_default();
        let spec = d.spec.clone().unwrap_or_default();
        let new_name = sets
            .new
            .as_ref()
            .map(|rs| rs.name_any())
            .unwrap_or_default();
        let paused = spec.paused == Some(true);
        let current_reason = condition(&old, "Progressing").and_then(|c| c.reason.clone());
        let mut requeue = None;
        if paused {
            if current_reason.as_deref() != Some("DeploymentPaused") {
                set_condition(
                    &mut status,
                    "Progressing",
                    "Unknown",
                    "DeploymentPaused",
                    "Deployment is paused".into(),
                );
            }
        } else if let Some(deadline) = spec.progress_deadline_seconds.filter(|s| *s != i32::MAX) {
            if current_reason.as_deref() == Some("DeploymentPaused") {
                set_condition(
                    &mut status,
                    "Progressing",
                    "Unknown",
                    "DeploymentResumed",
                    "Deployment is resumed".into(),
                );
            }
            if let Some((reason, message)) = pending {
                set_condition(&mut status, "Progressing", "True", reason, message);
            }
            if deployment_complete(d, &status) {
                set_condition(
                    &mut status,
                    "Progressing",
                    "True",
                    "NewReplicaSetAvailable",
                    format!("ReplicaSet \"{new_name}\" has successfully progressed."),
                );
            } else if deployment_progressing(&status, &old) {
                let message = format!("ReplicaSet \"{new_name}\" is progressing.");
                let conditions = status.conditions.get_or_insert_with(Vec::new);
                let transition = conditions
                    .iter()
                    .find(|c| c.type_ == "Progressing" && c.status == "True")
                    .and_then(|c| c.last_transition_time.clone())
                    .unwrap_or_else(now);
                conditions.retain(|c| c.type_ != "Progressing");
                conditions.push(DeploymentCondition {
                    type_: "Progressing".into(),
                    status: "True".into(),
                    reason: Some("ReplicaSetUpdated".into()),
                    message: Some(message),
                    last_transition_time: Some(transition),
                    last_update_time: Some(now()),
                });
            } else if let Some(cond) = condition(&status, "Progressing").cloned() {
                let reason = cond.reason.as_deref().unwrap_or_default();
                if reason != "NewReplicaSetAvailable" && reason != "ProgressDeadlineExceeded" {
                    let since = cond
                        .last_update_time
                        .as_ref()
                        .map(|t| t.0.as_second())
                        .unwrap_or_else(|| Timestamp::now().as_second());
                    let remaining = since + i64::from(deadline) - Timestamp::now().as_second();
                    if remaining <= 0 {
                        set_condition(
                            &mut status,
                            "Progressing",
                            "False",
                            "ProgressDeadlineExceeded",
                            format!("ReplicaSet \"{new_name}\" has timed out progressing."),
                        );
                        self.recorder.record(
                            object_reference(d),
                            EventType::Warning,
                            "ProgressDeadlineExceeded",
                            format!("ReplicaSet \"{new_name}\" has timed out progressing."),
                        );
                    } else {
                        requeue = Some(Duration::from_secs(
                            u64::try_from(remaining).unwrap_or(1) + 1,
                        ));
                    }
                }
            }
        }
        patch_status_if_changed(
            &self.deployments_api(&d.namespace().unwrap_or_default()),
            &d.name_any(),
            &old,
            &status,
            &["conditions"],
        )
        .await?;
        Ok(requeue.map(Action::RequeueAfter).unwrap_or_default())
    }
}

fn deployment_complete(d: &Deployment, status: &DeploymentStatus) -> bool {
    let want = desired(d);
    status.updated_replicas == Some(want)
        && status.replicas == Some(want)
        && status.available_replicas == Some(want)
        && status.observed_generation >= d.metadata.generation
}

fn deployment_progressing(new: &DeploymentStatus, old: &DeploymentStatus) -> bool {
    let old_replicas =
        |s: &DeploymentStatus| s.replicas.unwrap_or(0) - s.updated_replicas.unwrap_or(0);
    new.updated_replicas.unwrap_or(0) > old.updated_replicas.unwrap_or(0)
        || old_replicas(new) < old_replicas(old)
        || new.ready_replicas.unwrap_or(0) > old.ready_replicas.unwrap_or(0)
        || new.available_replicas.unwrap_or(0) > old.available_replicas.unwrap_or(0)
}

fn copy_annotations(d: &Deployment, into: &mut BTreeMap<String, String>) {
    for (k, v) in d.metadata.annotations.iter().flatten() {
        if !NOT_COPIED.contains(&k.as_str()) {
            into.insert(k.clone(), v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    fn deployment(
        replicas: i32,
        surge: Option<IntOrString>,
        unavailable: Option<IntOrString>,
    ) -> Deployment {
        Deployment {
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                strategy: Some(DeploymentStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateDeployment {
                        max_surge: surge,
                        max_unavailable: unavailable,
                    }),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn surge_rounds_up_unavailable_rounds_down() {
        assert_eq!(
            max_surge_and_unavailable(&deployment(10, None, None)),
            (3, 2)
        );
        assert_eq!(
            max_surge_and_unavailable(&deployment(1, None, None)),
            (1, 0)
        );
        let zero = Some(IntOrString::Int(0));
        assert_eq!(
            max_surge_and_unavailable(&deployment(3, zero.clone(), zero)),
            (0, 1)
        );
    }

    #[test]
    fn template_hash_ignores_its_own_label_and_changes_with_the_template() {
        let mut t = PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some([("app".to_string(), "x".to_string())].into()),
                ..Default::default()
            }),
            spec: None,
        };
        let h = pod_template_hash(&t, None);
        assert!(h.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
        let mut labelled = t.clone();
        labelled
            .metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert(POD_TEMPLATE_HASH.into(), h.clone());
        assert_eq!(pod_template_hash(&labelled, None), h);
        assert_ne!(pod_template_hash(&t, Some(1)), h);
        t.metadata.as_mut().unwrap().annotations =
            Some([("restartedAt".to_string(), "now".to_string())].into());
        assert_ne!(pod_template_hash(&t, None), h);
    }
}
