//! Helpers shared by the controllers: keys, selectors, owner references, pod state, and
//! the wiring every controller repeats (change handlers that enqueue keys, status writes,
//! pod-write bookkeeping), so each controller states only what is its own.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, ObjectMeta, OwnerReference, Time,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Api, Resource, ResourceExt};
use rkube_runtime::{Change, EventRecorder, EventType, Expectations, Observed, WorkQueue};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use crate::ControllerError;

/// `namespace/name`, the work-queue key of a namespaced object.
pub fn key_of(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

pub fn split_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("", key))
}

pub fn now() -> Time {
    Time(Timestamp::now())
}

/// Whether `labels` satisfy `selector` (matchLabels and matchExpressions). An empty
/// selector matches everything, as upstream's LabelSelectorAsSelector does.
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    rkube_api::selectors::label_selector_matches(Some(selector), labels)
}

/// Whether a selector selects nothing on purpose (upstream treats a nil selector so).
pub fn selector_is_empty(selector: &LabelSelector) -> bool {
    selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(|e| e.is_empty())
}

pub fn controller_ref(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

/// The ownerReference a controller puts on what it creates or adopts.
pub fn controller_owner_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).to_string(),
        kind: K::kind(&()).to_string(),
        name: owner.name_any(),
        uid: owner.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

pub fn is_terminating(meta: &ObjectMeta) -> bool {
    meta.deletion_timestamp.is_some()
}

/// Counted by workload controllers: not being deleted and not finished.
pub fn pod_is_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !is_terminating(&pod.metadata) && !matches!(phase, Some("Succeeded") | Some("Failed"))
}

/// When the pod's Ready condition last turned True, if it is True.
pub fn pod_ready_since(pod: &Pod) -> Option<Option<Timestamp>> {
    let cond = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    (cond.status == "True").then(|| cond.last_transition_time.as_ref().map(|t| t.0))
}

pub fn pod_is_ready(pod: &Pod) -> bool {
    pod_ready_since(pod).is_some()
}

/// Ready for at least `min_ready_seconds` at `now`.
pub fn pod_is_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    match pod_ready_since(pod) {
        None => false,
        Some(_) if min_ready_seconds <= 0 => true,
        Some(None) => false,
        Some(Some(since)) => since.as_second() + i64::from(min_ready_seconds) <= now.as_second(),
    }
}

/// An int-or-percent value against `total`: percentages round up for surge and down for
/// unavailability, as upstream's GetScaledValueFromIntOrPercent.
pub fn scaled_value(
    value: Option<&IntOrString>,
    total: i32,
    round_up: bool,
    default_percent: i32,
) -> i32 {
    let percent = |p: i32| {
        let product = i64::from(p) * i64::from(total);
        let scaled = if round_up {
            (product + 99).div_euclid(100)
        } else {
            product.div_euclid(100)
        };
        i32::try_from(scaled).unwrap_or(i32::MAX)
    };
    match value {
        None => percent(default_percent),
        Some(IntOrString::Int(i)) => *i,
        Some(IntOrString::String(s)) => match s
            .strip_suffix('%')
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            Some(p) => percent(p),
            None => s
                .trim()
                .parse()
                .unwrap_or_else(|_| percent(default_percent)),
        },
    }
}

/// Change handler for a controller's own kind: every change to an object may need a sync
/// of that object, keyed `namespace/name`.
pub fn enqueue_own_key<K: Resource>(
    queue: &Arc<WorkQueue<String>>,
) -> impl FnMut(Change<'_, K>) + Send + 'static {
    let queue = queue.clone();
    move |change: Change<'_, K>| {
        let obj = change.object();
        queue.add(key_of(
            &obj.namespace().unwrap_or_default(),
            &obj.name_any(),
        ));
    }
}

/// Change handler keyed by bare name, for controllers whose keys are cluster-scoped names
/// (a node, and the node lease named after it).
pub fn enqueue_name<K: Resource>(
    queue: &Arc<WorkQueue<String>>,
) -> impl FnMut(Change<'_, K>) + Send + 'static {
    let queue = queue.clone();
    move |change: Change<'_, K>| queue.add(change.object().name_any())
}

/// Change handler for dependents (pods, ReplicaSets): a change to one can only matter to
/// the `owner_kind` object that controls it, so that one is synced.
pub fn enqueue_controller_of<K: Resource>(
    queue: &Arc<WorkQueue<String>>,
    owner_kind: &'static str,
) -> impl FnMut(Change<'_, K>) + Send + 'static {
    let queue = queue.clone();
    move |change: Change<'_, K>| {
        let obj = change.object();
        if let Some(owner) = controller_ref(obj.meta()).filter(|o| o.kind == owner_kind) {
            queue.add(key_of(&obj.namespace().unwrap_or_default(), &owner.name));
        }
    }
}

/// Like [`enqueue_controller_of`], for controllers that adopt orphans: a dependent without
/// a controller is also enqueued for every `owners` object in its namespace whose selector
/// (`selector_of`) matches it, since any of them may adopt it.
pub fn enqueue_controller_or_adopters<K, Owner>(
    queue: &Arc<WorkQueue<String>>,
    owner_kind: &'static str,
    owners: Store<Owner>,
    selector_of: fn(&Owner) -> Option<&LabelSelector>,
) -> impl FnMut(Change<'_, K>) + Send + 'static
where
    K: Resource,
    Owner: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    let queue = queue.clone();
    move |change: Change<'_, K>| {
        let obj = change.object();
        let namespace = obj.namespace().unwrap_or_default();
        if let Some(owner) = controller_ref(obj.meta()) {
            if owner.kind == owner_kind {
                queue.add(key_of(&namespace, &owner.name));
            }
            return;
        }
        let labels = obj.labels();
        for candidate in owners.state() {
            if candidate.namespace().as_deref() == Some(namespace.as_str())
                && selector_of(&candidate)
                    .is_some_and(|s| !selector_is_empty(s) && selector_matches(s, labels))
            {
                queue.add(key_of(&namespace, &candidate.name_any()));
            }
        }
    }
}

/// The cached pods in `namespace` whose controller is the object with `owner_uid`.
pub fn pods_controlled_by(pods: &Store<Pod>, namespace: &str, owner_uid: &str) -> Vec<Arc<Pod>> {
    pods.state()
        .into_iter()
        .filter(|p| {
            p.namespace().as_deref() == Some(namespace)
                && controller_ref(&p.metadata).is_some_and(|o| o.uid == owner_uid)
        })
        .collect()
}

/// How [`Expectations::satisfied`] sees a pod name, given the cache's `pods`.
pub fn observe_pod_among(pods: &[Arc<Pod>]) -> impl Fn(&str) -> Observed + '_ {
    |pod_name| match pods.iter().find(|p| p.name_any() == pod_name) {
        None => Observed::Absent,
        Some(p) if is_terminating(&p.metadata) => Observed::Terminating,
        Some(_) => Observed::Active,
    }
}

/// A 404 as `Ok(None)`: for writes whose purpose (adopting, releasing, dropping a
/// finalizer, updating a condition) is moot once the object is gone.
pub fn ignore_not_found<T>(result: Result<T, kube::Error>) -> Result<Option<T>, kube::Error> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(None),
        Err(e) => Err(e),
    }
}

/// Sets `obj`'s ownerReferences to `refs`. The uid and resourceVersion in the patch make it
/// apply only to the version the adopt/release decision was made on (a conflict retries
/// the sync). `None` if the object is gone.
pub async fn patch_owner_references<K>(
    api: &Api<K>,
    obj: &K,
    refs: Vec<OwnerReference>,
) -> Result<Option<K>, ControllerError>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": obj.resource_version(), "uid": obj.uid()}});
    let result = api
        .patch(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await;
    Ok(ignore_not_found(result)?)
}

/// Merge-patches `status` onto `name`'s status subresource, only if it differs from `old`:
/// an unchanged write would still bump resourceVersion and wake every watcher, this
/// controller included, into another sync. A merge patch keeps what it leaves out, so each
/// of `clearable_fields` that `status` leaves out is sent as null to remove it.
pub async fn patch_status_if_changed<K, S>(
    api: &Api<K>,
    name: &str,
    old: &S,
    status: &S,
    clearable_fields: &[&str],
) -> Result<(), ControllerError>
where
    K: Clone + DeserializeOwned + Debug,
    S: Serialize + PartialEq,
{
    if status == old {
        return Ok(());
    }
    let mut status_json = serde_json::to_value(status)?;
    if let Some(fields) = status_json.as_object_mut() {
        for field in clearable_fields {
            fields
                .entry(field.to_string())
                .or_insert(serde_json::Value::Null);
        }
    }
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({ "status": status_json })),
    )
    .await?;
    Ok(())
}

/// What a workload controller books after writing its pods: expectations, so the next
/// sync waits for the cache to show the writes, and the events `kubectl describe` shows.
pub struct PodWriteLog<'a> {
    pub expectations: &'a Expectations,
    pub recorder: &'a EventRecorder,
    /// The controller's work-queue key, under which expectations are kept.
    pub key: &'a str,
    /// The object the events are about.
    pub owner: &'a ObjectReference,
}

impl PodWriteLog<'_> {
    /// Books the results of pod creations; the first error is returned after all are
    /// booked, so one failure does not lose the expectations of the successes.
    pub fn creations(
        &self,
        results: impl IntoIterator<Item = Result<Pod, kube::Error>>,
    ) -> Result<(), kube::Error> {
        let mut first_error = None;
        for result in results {
            match result {
                Ok(p) => {
                    self.expectations.expect_creation(self.key, &p.name_any());
                    self.recorder.record(
                        self.owner.clone(),
                        EventType::Normal,
                        "SuccessfulCreate",
                        format!("Created pod: {}", p.name_any()),
                    );
                }
                Err(e) => {
                    self.recorder.record(
                        self.owner.clone(),
                        EventType::Warning,
                        "FailedCreate",
                        format!("Error creating: {e}"),
                    );
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Books the results of pod deletions (by pod name), whose deletions the caller
    /// expected before sending them. A pod already gone is what was wanted; a failed
    /// deletion withdraws its expectation and, with `warn_on_failure`, records FailedDelete.
    /// Returns the first error.
    pub fn deletions<T>(
        &self,
        results: impl IntoIterator<Item = (String, Result<T, kube::Error>)>,
        warn_on_failure: bool,
    ) -> Result<(), kube::Error> {
        let mut first_error = None;
        for (name, result) in results {
            match result {
                Ok(_) => self.recorder.record(
                    self.owner.clone(),
                    EventType::Normal,
                    "SuccessfulDelete",
                    format!("Deleted pod: {name}"),
                ),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => {
                    self.expectations.deletion_failed(self.key, &name);
                    if warn_on_failure {
                        self.recorder.record(
                            self.owner.clone(),
                            EventType::Warning,
                            "FailedDelete",
                            format!("Error deleting: {e}"),
                        );
                    }
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    #[test]
    fn selectors_match_labels_and_expressions() {
        let labels: BTreeMap<String, String> = [
            ("app".to_string(), "web".to_string()),
            ("tier".to_string(), "fe".to_string()),
        ]
        .into();
        let mut sel = LabelSelector {
            match_labels: Some([("app".to_string(), "web".to_string())].into()),
            match_expressions: None,
        };
        assert!(selector_matches(&sel, &labels));
        sel.match_expressions = Some(vec![LabelSelectorRequirement {
            key: "tier".into(),
            operator: "NotIn".into(),
            values: Some(vec!["fe".into()]),
        }]);
        assert!(!selector_matches(&sel, &labels));
        sel.match_expressions = Some(vec![LabelSelectorRequirement {
            key: "zone".into(),
            operator: "DoesNotExist".into(),
            values: None,
        }]);
        assert!(selector_matches(&sel, &labels));
        // Regression: a malformed expression (NotIn without values) matched every pod here,
        // while the API server's matcher (and upstream's LabelSelectorAsSelector) select
        // nothing with it.
        sel.match_expressions = Some(vec![LabelSelectorRequirement {
            key: "zone".into(),
            operator: "NotIn".into(),
            values: None,
        }]);
        assert!(!selector_matches(&sel, &labels));
    }

    #[test]
    fn int_or_percent_rounding_matches_upstream() {
        let p = |s: &str| IntOrString::String(s.to_string());
        assert_eq!(scaled_value(Some(&p("25%")), 10, true, 25), 3);
        assert_eq!(scaled_value(Some(&p("25%")), 10, false, 25), 2);
        assert_eq!(scaled_value(None, 1, true, 25), 1);
        assert_eq!(scaled_value(None, 1, false, 25), 0);
        assert_eq!(scaled_value(Some(&IntOrString::Int(2)), 10, false, 25), 2);
    }
}
