//! rkube-controller-manager: level-triggered controllers behind leader election.
//!
//! Map of the crate:
//! - [`run`]: serves `/healthz` on the listener, campaigns for the Lease
//!   `kube-system/rkube-controller-manager`, and while leading runs the selected
//!   controllers; losing the lease stops them, regaining it starts them afresh.
//! - one module per controller (`replicaset`, `deployment`, `garbagecollector`,
//!   `namespace`, `nodelifecycle`, `endpoints`, `endpointslice`, `daemonset`, `job`,
//!   `statefulset`), each built the same way: informers (rkube-runtime) map changes to keys
//!   on a work queue, workers reconcile one key at a time from the caches.
//! - `util`: selectors, owner references, pod readiness, int-or-percent.
//!
//! Controllers never talk to storage; everything goes through the API server.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod daemonset;
pub mod deployment;
pub mod discovery;
pub mod endpoints;
pub mod endpointslice;
pub mod garbagecollector;
pub mod job;
pub mod namespace;
pub mod nodelifecycle;
pub mod replicaset;
pub mod statefulset;
pub mod util;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::Store;
use kube::runtime::{watcher, WatchStreamExt};
use rkube_runtime::component::health;
use rkube_runtime::{run_elected, Change, ControllerSelection, LeaderElectionConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use rkube_runtime::component::{ApiServerError, ApiServerTarget};

/// Every controller name `--controllers` accepts, in upstream's spelling.
pub const KNOWN_CONTROLLERS: &[&str] = &[
    replicaset::NAME,
    deployment::NAME,
    garbagecollector::NAME,
    namespace::NAME,
    nodelifecycle::NAME,
    endpoints::NAME,
    endpointslice::NAME,
    daemonset::NAME,
    job::NAME,
    statefulset::NAME,
];

#[derive(Clone, Debug)]
pub struct LeaderElectionSettings {
    pub enabled: bool,
    pub namespace: String,
    pub name: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Default for LeaderElectionSettings {
    fn default() -> Self {
        LeaderElectionSettings {
            enabled: true,
            namespace: "kube-system".into(),
            name: "rkube-controller-manager".into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Node lifecycle timings (upstream flag names).
#[derive(Clone, Debug)]
pub struct NodeLifecycleSettings {
    /// A node whose lease has not been renewed for this long is marked unreachable.
    pub node_monitor_grace_period: Duration,
    /// How often every node's health is re-checked.
    pub node_monitor_period: Duration,
    /// tolerationSeconds assumed for pods without a toleration of the unreachable taint
    /// (upstream's DefaultTolerationSeconds admission plugin adds it; we apply it here).
    pub default_unreachable_toleration_seconds: i64,
    /// The same for the not-ready taint.
    pub default_not_ready_toleration_seconds: i64,
}

impl Default for NodeLifecycleSettings {
    fn default() -> Self {
        NodeLifecycleSettings {
            node_monitor_grace_period: Duration::from_secs(50),
            node_monitor_period: Duration::from_secs(5),
            default_unreachable_toleration_seconds: 300,
            default_not_ready_toleration_seconds: 300,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub api: ApiServerTarget,
    pub controllers: ControllerSelection,
    pub leader_election: LeaderElectionSettings,
    /// Unique per instance; the Lease holder identity and events' reporting instance.
    pub identity: String,
    /// Concurrent reconciles per controller.
    pub workers: usize,
    pub node_lifecycle: NodeLifecycleSettings,
    /// How often the namespace controller re-checks a namespace whose content is still
    /// being deleted.
    pub namespace_resync: Duration,
    /// First delay before a Job replaces a failed pod; doubles per failure (upstream: 10 s).
    pub job_backoff_base: Duration,
}

impl Config {
    pub fn new(api: ApiServerTarget) -> Config {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
        Config {
            api,
            controllers: ControllerSelection::default(),
            leader_election: LeaderElectionSettings::default(),
            identity: format!("{host}_{}", uuid::Uuid::new_v4()),
            workers: 5,
            node_lifecycle: NodeLifecycleSettings::default(),
            namespace_resync: Duration::from_secs(2),
            job_backoff_base: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No client for the API server.
    #[error(transparent)]
    ApiServer(#[from] ApiServerError),
    /// A `--controllers` entry names no controller.
    #[error("unknown controllers in --controllers: {0}")]
    UnknownControllers(String),
    /// The health endpoint could not be served.
    #[error("serving /healthz: {0}")]
    Serve(#[from] std::io::Error),
}

/// The error every reconcile returns; the key is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// A request to the API server failed.
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
    /// Serializing a request body failed.
    #[error("encoding: {0}")]
    Json(#[from] serde_json::Error),
    /// The work is not done and must be looked at again (e.g. a failed creation).
    #[error("{0}")]
    Pending(String),
}

/// What every controller gets.
#[derive(Clone)]
pub struct Shared {
    pub client: kube::Client,
    pub identity: String,
    pub workers: usize,
    pub namespace_resync: Duration,
    pub node_lifecycle: NodeLifecycleSettings,
    pub job_backoff_base: Duration,
}

type PodHandler = Box<dyn FnMut(Change<'_, Pod>) + Send>;

/// One pod watch and cache shared by the node lifecycle, endpoints, EndpointSlice,
/// DaemonSet, Job and StatefulSet controllers (a watch per controller would decode every
/// pod event six more times). Handlers are registered first, then [`SharedPods::spawn`]
/// starts the watch, so none misses the initial list.
pub struct SharedPods {
    writer: Writer<Pod>,
    store: Store<Pod>,
    handlers: Vec<PodHandler>,
    /// Set once the first list is in the cache. Controllers wait on this rather than on
    /// `Store::wait_until_ready`: kube-runtime's readiness future keeps a single waker, so
    /// with several tasks waiting on clones of one store only the last one is woken.
    ready: watch::Sender<bool>,
}

impl Default for SharedPods {
    fn default() -> Self {
        let writer = Writer::new(());
        let store = writer.as_reader();
        SharedPods {
            writer,
            store,
            handlers: Vec::new(),
            ready: watch::Sender::new(false),
        }
    }
}

impl SharedPods {
    /// The cache; it fills once the watch is spawned.
    pub fn store(&self) -> Store<Pod> {
        self.store.clone()
    }

    /// Becomes true once the cache holds the first full list.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// Runs `handler` for every change after the cache has it, and for every cached pod
    /// after each (re-)list.
    pub fn on_change(&mut self, handler: impl FnMut(Change<'_, Pod>) + Send + 'static) {
        self.handlers.push(Box::new(handler));
    }

    /// Starts the watch (nothing, if no controller registered).
    pub fn spawn(self, client: &kube::Client, tasks: &mut JoinSet<()>) {
        let SharedPods {
            mut writer,
            store,
            mut handlers,
            ready,
        } = self;
        if handlers.is_empty() {
            return;
        }
        let api: kube::Api<Pod> = kube::Api::all(client.clone());
        tasks.spawn(async move {
            let mut events =
                std::pin::pin!(watcher::watcher(api, watcher::Config::default()).default_backoff());
            while let Some(event) = events.next().await {
                let event = match event {
                    Ok(event) => event,
                    Err(e) => {
                        tracing::debug!(error = %e, "shared pod watch failed; retrying with backoff");
                        continue;
                    }
                };
                writer.apply_watcher_event(&event);
                match &event {
                    watcher::Event::Apply(pod) => {
                        handlers.iter_mut().for_each(|h| h(Change::Applied(pod)))
                    }
                    watcher::Event::Delete(pod) => {
                        handlers.iter_mut().for_each(|h| h(Change::Deleted(pod)))
                    }
                    watcher::Event::InitDone => {
                        for pod in store.state() {
                            handlers.iter_mut().for_each(|h| h(Change::Applied(&pod)));
                        }
                        ready.send_replace(true);
                    }
                    watcher::Event::Init | watcher::Event::InitApply(_) => {}
                }
            }
        });
    }
}

/// Starts the selected controllers on `tasks`.
pub async fn start_controllers(
    shared: &Shared,
    selection: &ControllerSelection,
    tasks: &mut JoinSet<()>,
) {
    if selection.is_enabled(replicaset::NAME, true) {
        replicaset::start(shared, tasks);
    }
    if selection.is_enabled(deployment::NAME, true) {
        deployment::start(shared, tasks);
    }
    if selection.is_enabled(garbagecollector::NAME, true) {
        garbagecollector::start(shared, tasks).await;
    }
    if selection.is_enabled(namespace::NAME, true) {
        namespace::start(shared, tasks);
    }
    let mut pods = SharedPods::default();
    if selection.is_enabled(nodelifecycle::NAME, true) {
        nodelifecycle::start(shared, tasks, &mut pods);
    }
    if selection.is_enabled(endpoints::NAME, true) {
        endpoints::start(shared, tasks, &mut pods);
    }
    if selection.is_enabled(endpointslice::NAME, true) {
        endpointslice::start(shared, tasks, &mut pods);
    }
    if selection.is_enabled(daemonset::NAME, true) {
        daemonset::start(shared, tasks, &mut pods);
    }
    if selection.is_enabled(job::NAME, true) {
        job::start(shared, tasks, &mut pods);
    }
    if selection.is_enabled(statefulset::NAME, true) {
        statefulset::start(shared, tasks, &mut pods);
    }
    pods.spawn(&shared.client, tasks);
}

/// Runs the controller manager until `shutdown` completes: `/healthz` on `listener`,
/// controllers while this instance holds the lease (always, if election is disabled).
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let unknown = config.controllers.unknown(KNOWN_CONTROLLERS);
    if !unknown.is_empty() {
        return Err(Error::UnknownControllers(unknown.join(",")));
    }
    let client = config.api.client().await?;
    let shared = Shared {
        client: client.clone(),
        identity: config.identity.clone(),
        workers: config.workers,
        namespace_resync: config.namespace_resync,
        node_lifecycle: config.node_lifecycle.clone(),
        job_backoff_base: config.job_backoff_base,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let is_leader = Arc::new(AtomicBool::new(false));

    let leader = Router::new()
        .route(
            "/leader",
            get(|State(leader): State<Arc<AtomicBool>>| async move {
                if leader.load(Ordering::SeqCst) {
                    "true"
                } else {
                    "false"
                }
            }),
        )
        .with_state(is_leader.clone());
    let health = health::router(health::always_ready()).merge(leader);
    let mut health_stop = stop_rx.clone();
    // Dropping `run` (rather than completing `shutdown`) must stop everything it started,
    // so its tasks live in JoinSets, which abort on drop.
    let mut server = JoinSet::new();
    server.spawn(health::serve(listener, health, async move {
        let _ = health_stop.wait_for(|s| *s).await;
    }));

    let selection = config.controllers.clone();
    let lead = move |mut stop: watch::Receiver<bool>| {
        let shared = shared.clone();
        let selection = selection.clone();
        async move {
            let mut tasks = JoinSet::new();
            start_controllers(&shared, &selection, &mut tasks).await;
            let _ = stop.wait_for(|s| *s).await;
            // Aborting is safe: every reconcile is idempotent and re-run by the next leader.
            tasks.shutdown().await;
        }
    };
    let mut election = JoinSet::new();
    if config.leader_election.enabled {
        let le = &config.leader_election;
        let mut lec = LeaderElectionConfig::new(&le.namespace, &le.name, &config.identity);
        lec.lease_duration = le.lease_duration;
        lec.renew_deadline = le.renew_deadline;
        lec.retry_period = le.retry_period;
        election.spawn(run_elected(client, lec, is_leader, stop_rx, lead));
    } else {
        is_leader.store(true, Ordering::SeqCst);
        election.spawn(lead(stop_rx));
    }
    shutdown.await;
    let _ = stop_tx.send(true);
    while election.join_next().await.is_some() {}
    while let Some(result) = server.join_next().await {
        match result {
            Ok(served) => served?,
            Err(e) => tracing::warn!(error = %e, "health server task failed"),
        }
    }
    Ok(())
}
