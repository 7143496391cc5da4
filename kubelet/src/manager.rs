//! The pods of one node: a watch on pods bound here feeding one worker per pod uid,
//! runtime events waking the owning pod's worker, and removal of containers whose pod
//! no longer exists (found once the initial list is complete).

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::watcher;
use rkube_cri::{labels, RuntimeEvent};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinSet;

use crate::context::NodeContext;
use crate::worker::PodWorker;

struct WorkerHandle {
    pod: watch::Sender<Option<Arc<Pod>>>,
    changed: Arc<Notify>,
}

pub struct PodManager {
    node: Arc<NodeContext>,
    workers: HashMap<String, WorkerHandle>,
    tasks: JoinSet<()>,
    finished_tx: mpsc::UnboundedSender<String>,
    shutdown: watch::Receiver<bool>,
}

fn key(pod: &Pod) -> (String, String) {
    (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

impl PodManager {
    /// Runs until shutdown; the workers then stop without touching containers.
    pub async fn run(node: Arc<NodeContext>, shutdown: watch::Receiver<bool>) {
        let (finished_tx, mut finished_rx) = mpsc::unbounded_channel::<String>();
        let mut manager = PodManager {
            node: node.clone(),
            workers: HashMap::new(),
            tasks: JoinSet::new(),
            finished_tx,
            shutdown: shutdown.clone(),
        };
        let api: Api<Pod> = Api::all(node.client.clone());
        let config = watcher::Config::default().fields(&format!("spec.nodeName={}", node.name));
        let mut stream = watcher(api, config).boxed();
        let mut events = node.runtime.runtime.events();
        let mut shutdown = shutdown;
        let mut initial: Vec<String> = Vec::new();
        let mut orphans_checked = false;
        loop {
            tokio::select! {
                event = stream.next() => match event {
                    Some(Ok(watcher::Event::Apply(pod))) => manager.apply(pod),
                    Some(Ok(watcher::Event::InitApply(pod))) => {
                        initial.extend(pod.metadata.uid.clone());
                        manager.apply(pod);
                    }
                    Some(Ok(watcher::Event::Delete(pod))) => manager.delete(&pod),
                    Some(Ok(watcher::Event::Init)) => initial.clear(),
                    Some(Ok(watcher::Event::InitDone)) => {
                        // A relist may have missed deletions: pods not listed are gone.
                        let listed: std::collections::HashSet<&String> = initial.iter().collect();
                        let gone: Vec<String> = manager.workers.keys().filter(|u| !listed.contains(u)).cloned().collect();
                        for uid in gone {
                            manager.delete_uid(&uid);
                        }
                        if !orphans_checked {
                            orphans_checked = true;
                            manager.remove_orphans(&initial).await;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(node = %node.name, error = %e, "pod watch failed; retrying");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                    None => break,
                },
                event = events.recv() => match event {
                    Ok(RuntimeEvent::Exited { id, .. }) | Ok(RuntimeEvent::OomKilled { id }) => manager.wake_owner(&id).await,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => manager.wake_all(),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        events = node.runtime.runtime.events();
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                },
                Some(uid) = finished_rx.recv() => {
                    if manager.workers.get(&uid).is_some_and(|w| w.pod.is_closed()) {
                        manager.workers.remove(&uid);
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
        manager.workers.clear();
        while manager.tasks.join_next().await.is_some() {}
    }

    fn apply(&mut self, pod: Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        let pod = Arc::new(pod);
        self.node.pods.write().insert(key(&pod), pod.clone());
        if let Some(worker) = self.workers.get(&uid) {
            if !worker.pod.is_closed() {
                worker.pod.send_replace(Some(pod));
                return;
            }
        }
        let worker_uid = uid.clone();
        let (tx, rx) = watch::channel(Some(pod));
        let changed = Arc::new(Notify::new());
        let worker = PodWorker::new(self.node.clone(), uid.clone(), changed.clone());
        let shutdown = self.shutdown.clone();
        let finished = self.finished_tx.clone();
        self.tasks.spawn(async move {
            worker.run(rx, shutdown).await;
            let _ = finished.send(uid);
        });
        self.workers
            .insert(worker_uid, WorkerHandle { pod: tx, changed });
    }

    fn delete(&mut self, pod: &Pod) {
        {
            let mut pods = self.node.pods.write();
            let k = key(pod);
            if pods
                .get(&k)
                .is_some_and(|p| p.metadata.uid == pod.metadata.uid)
            {
                pods.remove(&k);
            }
        }
        if let Some(uid) = &pod.metadata.uid {
            self.delete_uid(uid);
        }
    }

    /// The pod is gone from the API: its worker stops everything of it and ends.
    fn delete_uid(&mut self, uid: &str) {
        if let Some(worker) = self.workers.get(uid) {
            worker.pod.send_replace(None);
        }
        self.node
            .pods
            .write()
            .retain(|_, p| p.metadata.uid.as_deref() != Some(uid));
    }

    async fn wake_owner(&self, container_id: &str) {
        let owner = match self.node.runtime.runtime.status(container_id).await {
            Ok(info) => info.labels.get(labels::POD_UID).cloned(),
            Err(_) => None,
        };
        match owner.and_then(|uid| self.workers.get(&uid)) {
            Some(worker) => worker.changed.notify_one(),
            None => self.wake_all(),
        }
    }

    fn wake_all(&self) {
        for worker in self.workers.values() {
            worker.changed.notify_one();
        }
    }

    /// Containers of pods that no longer exist (deleted while the kubelet was down).
    async fn remove_orphans(&self, listed: &[String]) {
        let runtime = &self.node.runtime.runtime;
        let Ok(all) = runtime.list().await else {
            return;
        };
        let mut orphan_pods = std::collections::HashSet::new();
        for c in all {
            let Some(uid) = c.labels.get(labels::POD_UID) else {
                continue;
            };
            if listed.contains(uid) {
                continue;
            }
            tracing::info!(container = %c.id, pod_uid = %uid, "removing container of a pod that no longer exists");
            let _ = runtime.signal(&c.id, 9).await;
            let _ = runtime.remove(&c.id).await;
            orphan_pods.insert(uid.clone());
        }
        for uid in orphan_pods {
            let _ = self.node.runtime.network.teardown(&uid).await;
            let _ = std::fs::remove_dir_all(self.node.pod_dir(&uid));
        }
    }
}
