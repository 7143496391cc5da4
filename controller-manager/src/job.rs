//! The Job controller: runs pods until `completions` of them succeeded (or, without
//! completions, until one succeeded and none is running), at most `parallelism` at a time;
//! fails the Job past `backoffLimit` failed pods (BackoffLimitExceeded) or after
//! `activeDeadlineSeconds` (DeadlineExceeded). Failed pods of a `restartPolicy: Never`
//! template are replaced after an exponential delay; with `OnFailure` the kubelet restarts
//! containers in place and their restarts count towards the backoff limit.
//!
//! Counts come from the pods that exist (no tracking finalizers): `succeeded` and `failed`
//! never go down, but a finished pod deleted by someone else is not counted again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::batch::v1::{Job, JobCondition};
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};
use parking_lot::Mutex;
use rkube_runtime::{
    object_reference, run_reconcile_workers, Action, Backoff, EventRecorder, EventType,
    Expectations, SharedInformers, WorkQueue,
};
use serde_json::{json, Value};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::util::{
    controller_owner_ref, enqueue_controller_of, enqueue_own_key, is_terminating, now,
    observe_pod_among, pod_is_active, pod_is_ready, pods_controlled_by, split_key, PodWriteLog,
};
use crate::{ControllerError, Shared};

pub const NAME: &str = "job";
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
pub const CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";
/// Upstream caps the replacement delay at six minutes.
const MAX_BACKOFF: Duration = Duration::from_secs(360);

struct JobController {
    client: kube::Client,
    jobs: Store<Job>,
    pods: Store<Pod>,
    expectations: Expectations,
    recorder: EventRecorder,
    backoff_base: Duration,
    /// Per job: the failure count last seen and when it was first seen at that value.
    failures_seen: Mutex<HashMap<String, (i32, Instant)>>,
}

pub fn start(shared: &Shared, tasks: &mut JoinSet<()>, informers: &mut SharedInformers) {
    let queue: Arc<WorkQueue<String>> = WorkQueue::new(Backoff::default());
    let client = shared.client.clone();
    let (jobs, jobs_synced) = informers.all::<Job>().subscribe(enqueue_own_key(&queue));
    let (pods, pods_synced) = informers
        .all::<Pod>()
        .subscribe(enqueue_controller_of(&queue, "Job"));
    let controller = Arc::new(JobController {
        client: client.clone(),
        jobs,
        pods,
        expectations: Expectations::new(Duration::from_secs(300)),
        recorder: EventRecorder::new(client, "job-controller", &shared.identity),
        backoff_base: shared.job_backoff_base,
        failures_seen: Mutex::new(HashMap::new()),
    });
    let workers = shared.workers;
    tasks.spawn(async move {
        jobs_synced.wait().await;
        pods_synced.wait().await;
        run_reconcile_workers(NAME, queue, workers, controller, |c, key| async move {
            c.reconcile(&key).await
        })
        .await;
    });
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

pub fn is_finished(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        })
}

/// Container restarts of running or pending pods (what upstream counts for OnFailure).
fn restarts(pods: &[Arc<Pod>]) -> i32 {
    pods.iter()
        .filter(|p| matches!(phase(p), Some("Running") | Some("Pending") | None))
        .filter_map(|p| p.status.as_ref())
        .flat_map(|s| {
            s.container_statuses
                .iter()
                .flatten()
                .chain(s.init_container_statuses.iter().flatten())
        })
        .map(|c| c.restart_count)
        .sum()
}

/// Why the job has failed, if it has: (reason, message).
fn failure(
    job: &Job,
    failed: i32,
    active: &[Arc<Pod>],
    start: Timestamp,
    now_ts: Timestamp,
) -> Option<(&'static str, &'static str)> {
    let spec = job.spec.clone().unwrap_or_default();
    let limit = spec.backoff_limit.unwrap_or(6);
    let on_failure = spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        == Some("OnFailure");
    let past_on_failure = on_failure && {
        let r = restarts(active);
        if limit == 0 {
            r > 0
        } else {
            r >= limit
        }
    };
    if failed > limit || past_on_failure {
        return Some((
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit",
        ));
    }
    if let Some(deadline) = spec.active_deadline_seconds {
        if start.as_second() + deadline <= now_ts.as_second() {
            return Some((
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
            ));
        }
    }
    None
}

fn condition(type_: &str, reason: &str, message: &str) -> JobCondition {
    JobCondition {
        type_: type_.to_string(),
        status: "True".into(),
        reason: Some(reason.to_string()),
        message: Some(message.to_string()),
        last_probe_time: Some(now()),
        last_transition_time: Some(now()),
    }
}

impl JobController {
    async fn reconcile(&self, key: &str) -> Result<Action, ControllerError> {
        let (namespace, name) = split_key(key);
        let Some(job) = self.jobs.get(&ObjectRef::new(name).within(namespace)) else {
            self.expectations.forget(key);
            self.failures_seen.lock().remove(key);
            return Ok(Action::Done);
        };
        if is_finished(&job) || is_terminating(&job.metadata) {
            return Ok(Action::Done);
        }
        let spec = job.spec.clone().unwrap_or_default();
        let job_uid = job.uid().unwrap_or_default();
        let owned = pods_controlled_by(&self.pods, namespace, &job_uid);
        let satisfied = self.expectations.satisfied(key, observe_pod_among(&owned));
        let active: Vec<Arc<Pod>> = owned.iter().filter(|p| pod_is_active(p)).cloned().collect();
        let count = |ph: &str| {
            i32::try_from(owned.iter().filter(|p| phase(p) == Some(ph)).count()).unwrap_or(i32::MAX)
        };
        let old = job.status.clone().unwrap_or_default();
        let succeeded = count("Succeeded").max(old.succeeded.unwrap_or(0));
        let failed = count("Failed").max(old.failed.unwrap_or(0));
        let now_ts = Timestamp::now();
        let suspended = spec.suspend.unwrap_or(false);
        let start_time = old.start_time.clone().or_else(|| (!suspended).then(now));
        let start = start_time.as_ref().map(|t| t.0).unwrap_or(now_ts);
        let job_ref = object_reference(&*job);

        let mut conditions = old.conditions.clone().unwrap_or_default();
        let mut completion_time = old.completion_time.clone();
        let mut remaining_active = active.clone();
        let mut requeue: Option<Duration> = None;
        let complete = match spec.completions {
            Some(c) => succeeded >= c,
            None => succeeded > 0 && active.is_empty(),
        };
        let failed_reason = if complete || suspended {
            None
        } else {
            failure(&job, failed, &active, start, now_ts)
        };
        if let Some((reason, message)) = failed_reason {
            self.delete_pods(key, &job_ref, &active).await?;
            remaining_active.clear();
            conditions.push(condition("Failed", reason, message));
            self.recorder
                .record(job_ref.clone(), EventType::Warning, reason, message);
        } else if complete {
            self.delete_pods(key, &job_ref, &active).await?;
            remaining_active.clear();
            conditions.push(condition(
                "Complete",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
            ));
            completion_time = Some(now());
            self.recorder.record(
                job_ref.clone(),
                EventType::Normal,
                "Completed",
                "Job completed",
            );
        } else if suspended {
            self.delete_pods(key, &job_ref, &active).await?;
            remaining_active.clear();
        } else if satisfied {
            let parallelism = spec.parallelism.unwrap_or(1).max(0);
            let want = match spec.completions {
                Some(c) => parallelism.min((c - succeeded).max(0)),
                None if succeeded > 0 => 0,
                None => parallelism,
            };
            let want = usize::try_from(want).unwrap_or(0);
            if active.len() < want {
                match self.replacement_delay(key, failed) {
                    Some(delay) => requeue = Some(delay),
                    None => {
                        self.create_pods(key, &job, &job_ref, want - active.len())
                            .await?
                    }
                }
            } else if active.len() > want {
                let mut ranked = active.clone();
                // Not-ready and newer pods go first.
                ranked.sort_by_key(|p| {
                    (
                        pod_is_ready(p),
                        std::cmp::Reverse(p.metadata.creation_timestamp.as_ref().map(|t| t.0)),
                    )
                });
                self.delete_pods(key, &job_ref, &ranked[..active.len() - want])
                    .await?;
            }
        }
        if failed_reason.is_none() && !complete {
            if let Some(deadline) = spec.active_deadline_seconds {
                let left = (start.as_second() + deadline - now_ts.as_second()).max(1);
                let left = Duration::from_secs(u64::try_from(left).unwrap_or(1));
                requeue = Some(requeue.map_or(left, |r| r.min(left)));
            }
        }

        let positive = |n: usize| {
            let n = i32::try_from(n).unwrap_or(i32::MAX);
            if n > 0 {
                json!(n)
            } else {
                Value::Null
            }
        };
        let ready = remaining_active.iter().filter(|p| pod_is_ready(p)).count();
        let patch_status = json!({
            "active": positive(remaining_active.len()),
            "ready": i32::try_from(ready).unwrap_or(i32::MAX),
            "succeeded": if succeeded > 0 { json!(succeeded) } else { Value::Null },
            "failed": if failed > 0 { json!(failed) } else { Value::Null },
            "startTime": start_time.as_ref().map(|t: &Time| json!(t)).unwrap_or(Value::Null),
            "completionTime": completion_time.as_ref().map(|t| json!(t)).unwrap_or(Value::Null),
            "conditions": if conditions.is_empty() { Value::Null } else { json!(conditions) },
        });
        let current = serde_json::to_value(&old)?;
        let changed = patch_status
            .as_object()
            .into_iter()
            .flatten()
            .any(|(k, v)| current.get(k).unwrap_or(&Value::Null) != v);
        if changed {
            let api: Api<Job> = Api::namespaced(self.client.clone(), namespace);
            api.patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": patch_status})),
            )
            .await?;
        }
        Ok(requeue.map_or(Action::Done, Action::RequeueAfter))
    }

    /// How long to wait before replacing failed pods: `base * 2^(failed-1)` from when this
    /// controller first saw that many failures; `None` when it may create now.
    fn replacement_delay(&self, key: &str, failed: i32) -> Option<Duration> {
        if failed <= 0 {
            return None;
        }
        let mut seen = self.failures_seen.lock();
        let entry = seen
            .entry(key.to_string())
            .or_insert((failed, Instant::now()));
        if entry.0 != failed {
            *entry = (failed, Instant::now());
        }
        let exponent = u32::try_from(failed - 1).unwrap_or(0).min(16);
        let delay = self
            .backoff_base
            .saturating_mul(2u32.saturating_pow(exponent))
            .min(MAX_BACKOFF);
        let elapsed = entry.1.elapsed();
        (elapsed < delay).then(|| delay - elapsed)
    }

    async fn create_pods(
        &self,
        key: &str,
        job: &Job,
        job_ref: &ObjectReference,
        count: usize,
    ) -> Result<(), ControllerError> {
        let namespace = job.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let template = job.spec.clone().unwrap_or_default().template;
        let meta = template.metadata.unwrap_or_default();
        let mut labels = meta.labels.unwrap_or_default();
        let uid = job.uid().unwrap_or_default();
        for (k, v) in [
            (JOB_NAME_LABEL, job.name_any()),
            ("job-name", job.name_any()),
            (CONTROLLER_UID_LABEL, uid.clone()),
            ("controller-uid", uid),
        ] {
            labels.entry(k.to_string()).or_insert(v);
        }
        let pod = Pod {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}-", job.name_any())),
                labels: Some(labels),
                annotations: meta.annotations,
                owner_references: Some(vec![controller_owner_ref(job)]),
                ..Default::default()
            },
            spec: template.spec,
            status: None,
        };
        let post = PostParams::default();
        let results = join_all((0..count.min(500)).map(|_| api.create(&post, &pod))).await;
        Ok(self.pod_write_log(key, job_ref).creations(results)?)
    }

    async fn delete_pods(
        &self,
        key: &str,
        job_ref: &ObjectReference,
        pods: &[Arc<Pod>],
    ) -> Result<(), ControllerError> {
        let results = join_all(pods.iter().map(|p| {
            let api: Api<Pod> =
                Api::namespaced(self.client.clone(), &p.namespace().unwrap_or_default());
            let name = p.name_any();
            self.expectations.expect_deletion(key, &name);
            async move {
                (
                    name.clone(),
                    api.delete(&name, &DeleteParams::default()).await,
                )
            }
        }))
        .await;
        Ok(self.pod_write_log(key, job_ref).deletions(results, false)?)
    }

    fn pod_write_log<'a>(&'a self, key: &'a str, job_ref: &'a ObjectReference) -> PodWriteLog<'a> {
        PodWriteLog {
            expectations: &self.expectations,
            recorder: &self.recorder,
            key,
            owner: job_ref,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(spec: Value) -> Job {
        serde_json::from_value(json!({"metadata": {"name": "j"}, "spec": spec})).unwrap()
    }

    #[test]
    fn backoff_limit_counts_failed_pods_and_on_failure_restarts() {
        let t = Timestamp::now();
        let never = job(
            json!({"backoffLimit": 1, "template": {"spec": {"restartPolicy": "Never", "containers": []}}}),
        );
        assert_eq!(failure(&never, 1, &[], t, t), None);
        assert_eq!(
            failure(&never, 2, &[], t, t).map(|f| f.0),
            Some("BackoffLimitExceeded")
        );
        let on_failure = job(
            json!({"backoffLimit": 2, "template": {"spec": {"restartPolicy": "OnFailure", "containers": []}}}),
        );
        let restarted: Arc<Pod> = Arc::new(serde_json::from_value(json!({"metadata": {"name": "p"}, "status": {"phase": "Running",
            "containerStatuses": [{"name": "c", "image": "i", "imageID": "", "ready": true, "restartCount": 2}]}})).unwrap());
        assert_eq!(
            failure(&on_failure, 0, &[restarted], t, t).map(|f| f.0),
            Some("BackoffLimitExceeded")
        );
    }

    #[test]
    fn active_deadline_fails_the_job() {
        let j = job(json!({"activeDeadlineSeconds": 5, "template": {"spec": {"containers": []}}}));
        let start = Timestamp::from_second(1_000).unwrap();
        assert_eq!(
            failure(&j, 0, &[], start, Timestamp::from_second(1_004).unwrap()),
            None
        );
        assert_eq!(
            failure(&j, 0, &[], start, Timestamp::from_second(1_005).unwrap()).map(|f| f.0),
            Some("DeadlineExceeded")
        );
    }
}
