//! The simulated kubelets' pod side: one watch over every bound pod, a keyed work queue,
//! and workers that either mark a pod Running and Ready or finish its deletion.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::{watcher, WatchStreamExt};
use parking_lot::Mutex;
use rkube_runtime::workqueue::{Backoff, WorkQueue};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::{is_status, now_rfc3339, stopped, Shared, SimNode};

/// namespace/name
type PodKey = String;

/// The latest bound pod seen per key, next to rkube-runtime's work queue of keys: a key is
/// queued at most once and never handed to two workers at once, workers act on the latest
/// object, and a failed write is retried with backoff (the API server sheds load with 429s
/// under bursts; a pod whose write was dropped would otherwise stay Pending for good).
struct PodQueue {
    keys: Arc<WorkQueue<PodKey>>,
    latest: Mutex<HashMap<PodKey, Arc<Pod>>>,
}

impl PodQueue {
    fn new() -> PodQueue {
        PodQueue {
            keys: WorkQueue::new(Backoff::default()),
            latest: Mutex::new(HashMap::new()),
        }
    }

    fn upsert(&self, key: PodKey, pod: Arc<Pod>) {
        self.latest.lock().insert(key.clone(), pod);
        self.keys.add(key);
    }

    fn forget(&self, key: &PodKey) {
        self.latest.lock().remove(key);
        self.keys.forget(key);
    }

    /// Latest objects are dropped when a re-list shows them gone.
    fn retain(&self, keep: &HashSet<PodKey>) {
        self.latest.lock().retain(|k, _| keep.contains(k));
    }

    fn latest(&self, key: &PodKey) -> Option<Arc<Pod>> {
        self.latest.lock().get(key).cloned()
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
    let queue = Arc::new(PodQueue::new());
    let workers: Vec<_> = (0..shared.concurrency())
        .map(|_| {
            let (shared, queue) = (shared.clone(), queue.clone());
            tokio::spawn(async move {
                while let Some(key) = queue.keys.next().await {
                    if let Some(pod) = queue.latest(&key) {
                        match handle(&shared, &pod).await {
                            Handled::Done => queue.keys.forget(&key),
                            Handled::Retry => queue.keys.add_rate_limited(key.clone()),
                        }
                    }
                    queue.keys.done(&key);
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
fn offer(shared: &Shared, queue: &PodQueue, key: PodKey, pod: Pod) {
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

/// Whether a pod's work is finished or its write should be retried.
enum Handled {
    Done,
    Retry,
}

async fn handle(shared: &Shared, pod: &Pod) -> Handled {
    let Some(node) = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .and_then(|n| shared.live_node(n))
    else {
        return Handled::Done;
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
        return match api.delete(name, &params).await {
            Ok(_) => {
                shared.count_deleted();
                Handled::Done
            }
            Err(e) if is_status(&e, 404) || is_status(&e, 409) => Handled::Done,
            Err(e) => {
                shared.count_error();
                tracing::debug!(pod = %name, error = %e, "simulated node: finishing deletion failed; retrying");
                Handled::Retry
            }
        };
    }
    if !needs_start(pod) {
        return Handled::Done;
    }
    match api
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(running_status(pod, &node)),
        )
        .await
    {
        Ok(_) => {
            shared.count_started();
            Handled::Done
        }
        Err(e) if is_status(&e, 404) => Handled::Done,
        Err(e) => {
            shared.count_error();
            tracing::debug!(pod = %name, error = %e, "simulated node: marking pod running failed; retrying");
            Handled::Retry
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
        let q = PodQueue::new();
        let p1 = Arc::new(pod(
            json!({"metadata": {"name": "p", "resourceVersion": "1"}}),
        ));
        let p2 = Arc::new(pod(
            json!({"metadata": {"name": "p", "resourceVersion": "2"}}),
        ));
        q.upsert("d/p".into(), p1.clone());
        q.upsert("d/p".into(), p1);
        let key = q.keys.next().await.unwrap();
        let got = q.latest(&key).unwrap();
        assert_eq!(got.metadata.resource_version.as_deref(), Some("1"));
        q.upsert("d/p".into(), p2);
        assert!(
            q.keys.is_empty(),
            "a key being processed must not be queued twice"
        );
        q.keys.done(&key);
        let key = q.keys.next().await.unwrap();
        let got = q.latest(&key).unwrap();
        assert_eq!(got.metadata.resource_version.as_deref(), Some("2"));
    }
}
