//! The running scheduler: watches feed the cache and the queue; one loop makes decisions
//! (they must be serial, each seeing the previous one's assumed pod); binds, status writes
//! and Events happen beside it with bounded concurrency.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio::task::JoinHandle;

use crate::cache::Cache;
use crate::framework::Framework;
use crate::model::PodInfo;
use crate::queue::SchedulingQueue;
use crate::Config;

/// Events waiting to be written; beyond this they are dropped, as upstream's broadcaster
/// does under load: Events are for people, and must not slow scheduling down.
const EVENT_BACKLOG: usize = 10_000;

pub struct Scheduler {
    client: Client,
    name: String,
    cache: Mutex<Cache>,
    queue: SchedulingQueue,
    framework: Framework,
    bind_slots: Arc<Semaphore>,
    write_slots: Arc<Semaphore>,
    events: mpsc::Sender<Event>,
    events_rx: Mutex<Option<mpsc::Receiver<Event>>>,
    write_concurrency: usize,
    nodes_synced: AtomicBool,
    pods_synced: AtomicBool,
    synced: Notify,
    event_seq: AtomicU64,
}

async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

fn is_status(err: &kube::Error, code: u16) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == code)
}

impl Scheduler {
    pub fn new(client: Client, config: &Config) -> Arc<Scheduler> {
        let (events, events_rx) = mpsc::channel(EVENT_BACKLOG);
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
            events_rx: Mutex::new(Some(events_rx)),
            write_concurrency: config.write_concurrency.max(1),
            nodes_synced: AtomicBool::new(false),
            pods_synced: AtomicBool::new(false),
            synced: Notify::new(),
            event_seq: AtomicU64::new(0),
        })
    }

    /// Starts the watches, the scheduling loop and the Event writer; they end when `stop` turns true.
    pub fn start(self: Arc<Self>, stop: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        let mut tasks = vec![
            tokio::spawn(self.clone().watch_nodes(stop.clone())),
            tokio::spawn(self.clone().watch_pods(stop.clone())),
            tokio::spawn(self.clone().schedule_loop(stop.clone())),
        ];
        if let Some(rx) = self.events_rx.lock().take() {
            tasks.push(tokio::spawn(self.clone().write_events(rx, stop)));
        }
        tasks
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
                    "Normal",
                    "Scheduled",
                    "Binding",
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
                        "Warning",
                        "FailedScheduling",
                        "Scheduling",
                        format!("Binding rejected: {e}"),
                    );
                }
            }
        }
    }

    /// PodScheduled=False/Unschedulable with the message (only when it changed, as upstream)
    /// and a FailedScheduling Event (every attempt).
    fn report_unschedulable(self: &Arc<Self>, info: &Arc<PodInfo>, message: String) {
        self.record_event(
            info,
            "Warning",
            "FailedScheduling",
            "Scheduling",
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

    fn record_event(
        &self,
        info: &PodInfo,
        kind: &str,
        reason: &str,
        action: &str,
        message: String,
    ) {
        let now = now_rfc3339();
        let now_micro = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let nanos = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
        let seq = self.event_seq.fetch_add(1, Ordering::Relaxed);
        // Upstream names Events "<object>.<unix nanos in hex>"; the sequence keeps names unique within a nanosecond.
        let name = format!("{}.{:x}", info.name, nanos.wrapping_add(seq as i64));
        let event = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": info.namespace},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": info.name,
                "namespace": info.namespace,
                "uid": info.uid,
                "resourceVersion": info.pod.metadata.resource_version,
            },
            "reason": reason,
            "message": message,
            "type": kind,
            "action": action,
            "source": {"component": self.name},
            "reportingComponent": self.name,
            "reportingInstance": self.name,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "eventTime": now_micro,
            "count": 1,
        });
        match serde_json::from_value::<Event>(event) {
            Ok(event) => {
                if self.events.try_send(event).is_err() {
                    tracing::debug!(pod = %info.key, reason, "event backlog full; dropping event");
                }
            }
            Err(e) => tracing::warn!(error = %e, "building event"),
        }
    }

    async fn write_events(
        self: Arc<Self>,
        rx: mpsc::Receiver<Event>,
        mut stop: watch::Receiver<bool>,
    ) {
        let this = &self;
        let writes = tokio_stream::wrappers::ReceiverStream::new(rx).for_each_concurrent(
            self.write_concurrency,
            |event| async move {
                let namespace = event
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into());
                let api: Api<Event> = Api::namespaced(this.client.clone(), &namespace);
                if let Err(e) = api.create(&PostParams::default(), &event).await {
                    tracing::debug!(error = %e, "writing event failed");
                }
            },
        );
        tokio::select! {
            _ = writes => {}
            _ = stopped(&mut stop) => {}
        }
    }
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub(crate) fn health_router(scheduler: Arc<Scheduler>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(s): State<Arc<Scheduler>>| async move {
                if s.is_synced() {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
                }
            }),
        )
        .with_state(scheduler)
}
