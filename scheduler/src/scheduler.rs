//! The running scheduler: watches feed the cache and the queue; one loop makes decisions
//! (they must be serial, each seeing the previous one's assumed pod); binds and status
//! writes happen beside it with bounded concurrency. Events go through
//! [`rkube_runtime::EventRecorder`], which only queues: repeated FailedScheduling of one pod
//! becomes one Event with a growing count, and the loop never waits for an Event write.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use parking_lot::Mutex;
use rkube_runtime::{object_reference, EventRecorder, EventType};
use serde_json::{json, Value};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinHandle;

use crate::cache::Cache;
use crate::framework::Framework;
use crate::model::PodInfo;
use crate::queue::SchedulingQueue;
use crate::Config;

pub struct Scheduler {
    client: Client,
    name: String,
    cache: Mutex<Cache>,
    queue: SchedulingQueue,
    framework: Framework,
    bind_slots: Arc<Semaphore>,
    write_slots: Arc<Semaphore>,
    events: EventRecorder,
    nodes_synced: AtomicBool,
    pods_synced: AtomicBool,
    synced: Notify,
}

async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

fn is_status(err: &kube::Error, code: u16) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == code)
}

impl Scheduler {
    pub fn new(client: Client, config: &Config) -> Arc<Scheduler> {
        // As upstream: the source component is the scheduler's name, the reporting
        // instance "<scheduler name>-<hostname>".
        let instance = format!(
            "{}-{}",
            config.scheduler_name,
            rkube_runtime::component::hostname()
        );
        let events = EventRecorder::new(client.clone(), &config.scheduler_name, &instance);
        Arc::new(Scheduler {
            client,
            name: config.scheduler_name.clone(),
            cache: Mutex::new(Cache::default()),
            queue: SchedulingQueue::new(config.backoff),
            framework: Framework::new(
                crate::plugins::default_filters(),
                crate::plugins::default_scores(),
                config.percentage_of_nodes_to_score,
            ),
            bind_slots: Arc::new(Semaphore::new(config.bind_concurrency.max(1))),
            write_slots: Arc::new(Semaphore::new(config.write_concurrency.max(1))),
            events,
            nodes_synced: AtomicBool::new(false),
            pods_synced: AtomicBool::new(false),
            synced: Notify::new(),
        })
    }

    /// Starts the watches and the scheduling loop; they end when `stop` turns true.
    pub fn start(self: Arc<Self>, stop: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        vec![
            tokio::spawn(self.clone().watch_nodes(stop.clone())),
            tokio::spawn(self.clone().watch_pods(stop.clone())),
            tokio::spawn(self.clone().schedule_loop(stop)),
        ]
    }

    pub fn is_synced(&self) -> bool {
        self.nodes_synced.load(Ordering::Acquire) && self.pods_synced.load(Ordering::Acquire)
    }

    /// Pods waiting to be scheduled (including ones being bound).
    pub fn pending(&self) -> usize {
        self.queue.len()
    }

    async fn watch_nodes(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let api: Api<Node> = Api::all(self.client.clone());
        let mut events = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        let mut relisted: Option<HashSet<String>> = None;
        loop {
            let event = tokio::select! {
                e = events.next() => e,
                _ = stopped(&mut stop) => return,
            };
            let changed = match event {
                None => return,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "node watch failed; retrying");
                    false
                }
                Some(Ok(watcher::Event::Init)) => {
                    relisted = Some(HashSet::new());
                    false
                }
                Some(Ok(watcher::Event::InitApply(node))) => {
                    if let (Some(seen), Some(name)) =
                        (relisted.as_mut(), node.metadata.name.as_ref())
                    {
                        seen.insert(name.clone());
                    }
                    self.cache.lock().upsert_node(&node)
                }
                Some(Ok(watcher::Event::InitDone)) => {
                    if let Some(seen) = relisted.take() {
                        let mut cache = self.cache.lock();
                        for name in cache.node_names().into_iter().filter(|n| !seen.contains(n)) {
                            cache.remove_node(&name);
                        }
                    }
                    self.nodes_synced.store(true, Ordering::Release);
                    self.synced.notify_waiters();
                    true
                }
                Some(Ok(watcher::Event::Apply(node))) => self.cache.lock().upsert_node(&node),
                Some(Ok(watcher::Event::Delete(node))) => {
                    if let Some(name) = &node.metadata.name {
                        self.cache.lock().remove_node(name);
                    }
                    false
                }
            };
            if changed {
                self.queue.move_all_unschedulable();
            }
        }
    }

    async fn watch_pods(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let api: Api<Pod> = Api::all(self.client.clone());
        let mut events = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        let mut relisted: Option<HashSet<String>> = None;
        loop {
            let event = tokio::select! {
                e = events.next() => e,
                _ = stopped(&mut stop) => return,
            };
            match event {
                None => return,
                Some(Err(e)) => tracing::warn!(error = %e, "pod watch failed; retrying"),
                Some(Ok(watcher::Event::Init)) => relisted = Some(HashSet::new()),
                Some(Ok(watcher::Event::InitApply(pod))) => {
                    let info = Arc::new(PodInfo::new(pod));
                    if let Some(seen) = relisted.as_mut() {
                        seen.insert(info.key.clone());
                    }
                    self.on_pod(info);
                }
                Some(Ok(watcher::Event::InitDone)) => {
                    if let Some(seen) = relisted.take() {
                        self.forget_unseen(&seen);
                    }
                    self.pods_synced.store(true, Ordering::Release);
                    self.synced.notify_waiters();
                }
                Some(Ok(watcher::Event::Apply(pod))) => self.on_pod(Arc::new(PodInfo::new(pod))),
                Some(Ok(watcher::Event::Delete(pod))) => {
                    let info = PodInfo::new(pod);
                    self.queue.remove(&info.key);
                    if self.cache.lock().remove_pod(&info.key) {
                        self.queue.move_all_unschedulable();
                    }
                }
            }
        }
    }

    /// After a re-list (for instance when the API server restarted), pods that were deleted
    /// while the watch was down must leave the cache and the queue.
    fn forget_unseen(&self, seen: &HashSet<String>) {
        let mut freed = false;
        {
            let mut cache = self.cache.lock();
            for (key, _) in cache
                .placed_keys()
                .into_iter()
                .filter(|(k, _)| !seen.contains(k))
            {
                freed |= cache.remove_pod(&key);
            }
        }
        for key in self.queue.keys().into_iter().filter(|k| !seen.contains(k)) {
            self.queue.remove(&key);
        }
        if freed {
            self.queue.move_all_unschedulable();
        }
    }

    fn on_pod(&self, info: Arc<PodInfo>) {
        if info.node_name.is_some() {
            self.queue.remove(&info.key);
            let freed = {
                let mut cache = self.cache.lock();
                if info.terminal {
                    cache.remove_pod(&info.key)
                } else {
                    cache.add_pod(info);
                    false
                }
            };
            if freed {
                self.queue.move_all_unschedulable();
            }
            return;
        }
        // Our binding of this pod is in flight: an older, unbound version must not requeue it.
        if self.cache.lock().is_assumed(&info.key) {
            return;
        }
        if info.scheduler_name != self.name
            || info.deleting
            || info.terminal
            || info.scheduling_gated
        {
            self.queue.remove(&info.key);
            return;
        }
        self.queue.add_or_update(info);
    }

    async fn wait_for_sync(&self, stop: &mut watch::Receiver<bool>) -> bool {
        loop {
            let notified = self.synced.notified();
            if self.is_synced() {
                return true;
            }
            tokio::select! {
                _ = notified => {}
                _ = stopped(stop) => return false,
            }
        }
    }

    async fn schedule_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        // Deciding before the caches are full would place pods on a partial picture.
        if !self.wait_for_sync(&mut stop).await {
            return;
        }
        let mut start = 0usize;
        loop {
            // Waiting for a bind slot first keeps the decision as late, and so as informed, as possible.
            let permit = tokio::select! {
                p = self.bind_slots.clone().acquire_owned() => p,
                _ = stopped(&mut stop) => return,
            };
            let Ok(permit) = permit else { return };
            let popped = tokio::select! {
                p = self.queue.pop() => p,
                _ = stopped(&mut stop) => return,
            };
            let info = popped.info;
            let decision = {
                let mut cache = self.cache.lock();
                if cache.is_placed(&info.key) {
                    // Bound meanwhile (by us before a restart, or by someone else).
                    drop(cache);
                    self.queue.bound(&info.key);
                    continue;
                }
                let decision = self.framework.schedule(&info, &cache, &mut start);
                if let Ok(node) = &decision {
                    cache.assume(&info, node);
                }
                decision
            };
            match decision {
                Ok(node) => {
                    tokio::spawn(self.clone().bind(info, node, permit));
                }
                Err(fit) => {
                    drop(permit);
                    self.queue.unschedulable(&info.key, popped.cycle);
                    let message = fit.to_string();
                    tracing::debug!(pod = %info.key, %message, "unschedulable");
                    self.report_unschedulable(&info, message);
                }
            }
        }
    }

    async fn bind(
        self: Arc<Self>,
        info: Arc<PodInfo>,
        node: String,
        _permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &info.namespace);
        let binding = json!({
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": info.name, "namespace": info.namespace, "uid": info.uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        });
        match api
            .create_subresource::<_, Value>("binding", &info.name, &PostParams::default(), &binding)
            .await
        {
            Ok(_) => {
                self.queue.bound(&info.key);
                self.record_event(
                    &info,
                    EventType::Normal,
                    "Scheduled",
                    format!("Successfully assigned {} to {node}", info.key),
                );
            }
            Err(e) => {
                self.cache.lock().forget_assumed(&info.key);
                // The capacity held for this pod is free again.
                self.queue.move_all_unschedulable();
                if is_status(&e, 404) {
                    self.queue.remove(&info.key);
                } else if is_status(&e, 409) {
                    // Already bound or being deleted: the watch brings the outcome.
                    self.queue.remove(&info.key);
                    tracing::debug!(pod = %info.key, error = %e, "binding conflict");
                } else {
                    tracing::warn!(pod = %info.key, %node, error = %e, "binding failed; retrying after backoff");
                    self.queue.failed(&info.key);
                    self.record_event(
                        &info,
                        EventType::Warning,
                        "FailedScheduling",
                        format!("Binding rejected: {e}"),
                    );
                }
            }
        }
    }

    /// PodScheduled=False/Unschedulable with the message (only when it changed, as upstream)
    /// and a FailedScheduling Event (every attempt; the recorder counts repeats on one Event).
    fn report_unschedulable(self: &Arc<Self>, info: &Arc<PodInfo>, message: String) {
        self.record_event(
            info,
            EventType::Warning,
            "FailedScheduling",
            message.clone(),
        );
        if info.scheduled_condition_message.as_deref() == Some(message.as_str()) {
            return;
        }
        let this = self.clone();
        let info = info.clone();
        tokio::spawn(async move {
            let Ok(_slot) = this.write_slots.clone().acquire_owned().await else {
                return;
            };
            let api: Api<Pod> = Api::namespaced(this.client.clone(), &info.namespace);
            let patch = json!({"status": {"conditions": [{
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": message,
                "lastProbeTime": null,
                "lastTransitionTime": now_rfc3339(),
            }]}});
            match api
                .patch_status(
                    &info.name,
                    &PatchParams::default(),
                    &Patch::Strategic(patch),
                )
                .await
            {
                Ok(_) => {}
                Err(e) if is_status(&e, 404) => {}
                Err(e) => {
                    tracing::warn!(pod = %info.key, error = %e, "writing unschedulable status failed")
                }
            }
        });
    }

    /// Queues the Event and returns at once: this runs inside the scheduling loop.
    fn record_event(&self, info: &PodInfo, kind: EventType, reason: &str, message: String) {
        self.events
            .record(object_reference(info.pod.as_ref()), kind, reason, message);
    }
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
