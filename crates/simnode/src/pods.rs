//! The simulated kubelets' pod side: one watch over every bound pod, a keyed work queue,
//! and workers that either mark a pod Running and Ready or finish its deletion.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::{watcher, WatchStreamExt};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};

use crate::{is_status, now_rfc3339, stopped, Shared, SimNode};

/// namespace/name
type PodKey = String;

/// A work queue in the style of client-go's: a key is queued at most once, never handed
/// to two workers at once, and a key that changes while being worked on is queued again
/// when its worker is done. Workers always act on the latest object seen.
#[derive(Default)]
struct WorkQueue {
    state: Mutex<QueueState>,
    ready: Notify,
}

#[derive(Default)]
struct QueueState {
    latest: HashMap<PodKey, Arc<Pod>>,
    queue: VecDeque<PodKey>,
    queued: HashSet<PodKey>,
    processing: HashSet<PodKey>,
    dirty: HashSet<PodKey>,
}

impl WorkQueue {
    fn upsert(&self, key: PodKey, pod: Arc<Pod>) {
        let mut s = self.state.lock();
        s.latest.insert(key.clone(), pod);
        if s.processing.contains(&key) {
            s.dirty.insert(key);
        } else if s.queued.insert(key.clone()) {
            s.queue.push_back(key);
            drop(s);
            self.ready.notify_one();
        }
    }

    fn forget(&self, key: &str) {
        let mut s = self.state.lock();
        s.latest.remove(key);
    }

    /// Latest objects are dropped when a re-list shows them gone.
    fn retain(&self, keep: &HashSet<PodKey>) {
        self.state.lock().latest.retain(|k, _| keep.contains(k));
    }

    async fn next(&self) -> (PodKey, Option<Arc<Pod>>) {
        loop {
            let notified = self.ready.notified();
            {
                let mut s = self.state.lock();
                if let Some(key) = s.queue.pop_front() {
                    s.queued.remove(&key);
                    s.processing.insert(key.clone());
                    let pod = s.latest.get(&key).cloned();
                    return (key, pod);
                }
            }
            notified.await;
        }
    }

    fn done(&self, key: &PodKey) {
        let mut s = self.state.lock();
        s.processing.remove(key);
        if s.dirty.remove(key) && s.queued.insert(key.clone()) {
            s.queue.push_back(key.clone());
            drop(s);
            self.ready.notify_one();
        }
    }
}

fn key_of(pod: &Pod) -> PodKey {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or(""),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}

pub(crate) async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let queue = Arc::new(WorkQueue::default());
    let workers: Vec<_> = (0..shared.concurrency())
        .map(|_| {
            let (shared, queue) = (shared.clone(), queue.clone());
            tokio::spawn(async move {
                loop {
                    let (key, pod) = queue.next().await;
                    if let Some(pod) = pod {
                        handle(&shared, &pod).await;
                    }
                    queue.done(&key);
                }
            })
        })
        .collect();
    let api: Api<Pod> = Api::all(shared.client.clone());
    let config = watcher::Config::default().fields("spec.nodeName!=");
    let mut events = watcher(api, config).default_backoff().boxed();
    let mut relisted: Option<HashSet<PodKey>> = None;
    loop {
        let event = tokio::select! {
            e = events.next() => e,
            _ = stopped(&mut stop) => break,
        };
        match event {
            None => break,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "simulated nodes: pod watch failed; retrying")
            }
            Some(Ok(watcher::Event::Init)) => relisted = Some(HashSet::new()),
            Some(Ok(watcher::Event::InitApply(pod))) => {
                let key = key_of(&pod);
                if let Some(seen) = relisted.as_mut() {
                    seen.insert(key.clone());
                }
                offer(&shared, &queue, key, pod);
            }
            Some(Ok(watcher::Event::InitDone)) => {
                if let Some(seen) = relisted.take() {
                    queue.retain(&seen);
                }
            }
            Some(Ok(watcher::Event::Apply(pod))) => offer(&shared, &queue, key_of(&pod), pod),
            Some(Ok(watcher::Event::Delete(pod))) => queue.forget(&key_of(&pod)),
        }
    }
    for worker in workers {
        worker.abort();
    }
}

/// Queues a pod if one of our live nodes has something to do for it.
fn offer(shared: &Shared, queue: &WorkQueue, key: PodKey, pod: Pod) {
    let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
        return;
    };
    if shared.live_node(node).is_none() {
        return;
    }
    if pod.metadata.deletion_timestamp.is_some() || needs_start(&pod) {
        queue.upsert(key, Arc::new(pod));
    } else {
        queue.forget(&key);
    }
}

fn needs_start(pod: &Pod) -> bool {
    let Some(status) = &pod.status else {
        return true;
    };
    match status.phase.as_deref() {
        Some("Succeeded") | Some("Failed") => false,
        Some("Running") => {
            let ready = status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            !ready || status.pod_ip.is_none()
        }
        _ => true,
    }
}

async fn handle(shared: &Shared, pod: &Pod) {
    let Some(node) = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .and_then(|n| shared.live_node(n))
    else {
        return;
    };
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or("");
    let api: Api<Pod> = Api::namespaced(shared.client.clone(), namespace);
    if pod.metadata.deletion_timestamp.is_some() {
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: pod.metadata.uid.clone().map(|uid| Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(name, &params).await {
            Ok(_) => shared.count_deleted(),
            Err(e) if is_status(&e, 404) || is_status(&e, 409) => {}
            Err(e) => {
                shared.count_error();
                tracing::debug!(pod = %name, error = %e, "simulated node: finishing deletion failed");
            }
        }
        return;
    }
    if !needs_start(pod) {
        return;
    }
    match api
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(running_status(pod, &node)),
        )
        .await
    {
        Ok(_) => shared.count_started(),
        Err(e) if is_status(&e, 404) => {}
        Err(e) => {
            shared.count_error();
            tracing::debug!(pod = %name, error = %e, "simulated node: marking pod running failed");
        }
    }
}

/// The status a kubelet reports once every container is up and ready. Keeps an IP the
/// pod already has, so a retried update does not renumber it.
fn running_status(pod: &Pod, node: &SimNode) -> Value {
    let now = now_rfc3339();
    let status = pod.status.as_ref();
    let pod_ip = status
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_else(|| node.next_pod_ip());
    let start_time = status
        .and_then(|s| s.start_time.as_ref())
        .and_then(|t| serde_json::to_value(t).ok())
        .unwrap_or(json!(now));
    let uid = pod.metadata.uid.as_deref().unwrap_or("");
    let spec = pod.spec.as_ref();
    let container_status = |name: &str, image: &str, ready: bool| {
        let mut s = json!({
            "name": name,
            "image": image,
            "imageID": format!("sim://{image}"),
            "containerID": format!("sim://{uid}/{name}"),
            "ready": ready,
            "started": ready,
            "restartCount": 0,
        });
        s["state"] = if ready {
            json!({"running": {"startedAt": now}})
        } else {
            json!({"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}})
        };
        s
    };
    let containers: Vec<Value> = spec
        .map(|s| {
            s.containers
                .iter()
                .map(|c| container_status(&c.name, c.image.as_deref().unwrap_or(""), true))
                .collect()
        })
        .unwrap_or_default();
    let init_containers: Vec<Value> = spec
        .and_then(|s| s.init_containers.as_ref())
        .map(|cs| {
            cs.iter()
                .map(|c| container_status(&c.name, c.image.as_deref().unwrap_or(""), false))
                .collect()
        })
        .unwrap_or_default();
    let condition = |kind: &str| json!({"type": kind, "status": "True", "lastProbeTime": null, "lastTransitionTime": now});
    let mut out = json!({"status": {
        "phase": "Running",
        "conditions": [
            condition("PodReadyToStartContainers"),
            condition("Initialized"),
            condition("Ready"),
            condition("ContainersReady"),
            condition("PodScheduled"),
        ],
        "hostIP": node.host_ip,
        "hostIPs": [{"ip": node.host_ip}],
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": start_time,
        "containerStatuses": containers,
    }});
    if !init_containers.is_empty() {
        out["status"]["initContainerStatuses"] = json!(init_containers);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(value: Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn running_status_reports_every_container_ready_with_the_node_addresses() {
        let node = SimNode::new("n".into(), 3);
        let p = pod(
            json!({"metadata": {"name": "p", "namespace": "d", "uid": "u1"},
            "spec": {"nodeName": "n", "containers": [{"name": "a", "image": "nginx"}, {"name": "b", "image": "redis"}]}}),
        );
        let status = running_status(&p, &node)["status"].clone();
        assert_eq!(status["phase"], "Running");
        assert_eq!(status["hostIP"], node.host_ip);
        assert_eq!(status["containerStatuses"][1]["containerID"], "sim://u1/b");
        assert_eq!(status["containerStatuses"][0]["ready"], true);
        assert_eq!(status["containerStatuses"][0]["restartCount"], 0);
        let types: Vec<&str> = status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        for t in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
            assert!(types.contains(&t), "{t} missing from {types:?}");
        }
        // The typed form must accept what we send.
        let _: k8s_openapi::api::core::v1::PodStatus = serde_json::from_value(status).unwrap();
    }

    #[test]
    fn only_pods_not_yet_running_and_ready_need_a_start() {
        assert!(needs_start(&pod(
            json!({"metadata": {"name": "p"}, "status": {"phase": "Pending"}})
        )));
        assert!(!needs_start(&pod(
            json!({"metadata": {"name": "p"}, "status": {"phase": "Succeeded"}})
        )));
        let running = json!({"metadata": {"name": "p"}, "status": {"phase": "Running", "podIP": "10.0.0.2",
            "conditions": [{"type": "Ready", "status": "True"}]}});
        assert!(!needs_start(&pod(running)));
    }

    #[tokio::test]
    async fn a_key_changed_while_processing_is_handed_out_again_with_the_latest_object() {
        let q = WorkQueue::default();
        let p1 = Arc::new(pod(
            json!({"metadata": {"name": "p", "resourceVersion": "1"}}),
        ));
        let p2 = Arc::new(pod(
            json!({"metadata": {"name": "p", "resourceVersion": "2"}}),
        ));
        q.upsert("d/p".into(), p1.clone());
        q.upsert("d/p".into(), p1);
        let (key, got) = q.next().await;
        assert_eq!(got.unwrap().metadata.resource_version.as_deref(), Some("1"));
        q.upsert("d/p".into(), p2);
        assert!(
            q.state.lock().queue.is_empty(),
            "a key being processed must not be queued twice"
        );
        q.done(&key);
        let (_, got) = q.next().await;
        assert_eq!(got.unwrap().metadata.resource_version.as_deref(), Some("2"));
    }
}
