//! rkube-controller-manager: level-triggered controllers behind leader election.
//!
//! Map of the crate:
//! - [`run`]: serves `/healthz` on the listener, campaigns for the Lease
//!   `kube-system/rkube-controller-manager`, and while leading runs the selected
//!   controllers; losing the lease stops them, regaining it starts them afresh.
//! - `controllers`: which controllers `--controllers` selects; they register with one set
//!   of shared informers (one watch per resource) before the watches start.
//! - one module per controller (`replicaset`, `deployment`, `garbagecollector`,
//!   `namespace`, `nodelifecycle`, `endpoints`, `endpointslice`, `daemonset`, `job`,
//!   `statefulset`), each built the same way: informers (rkube-runtime) map changes to keys
//!   on a work queue, workers reconcile one key at a time from the caches.
//! - `util`: selectors, owner references, pod readiness, int-or-percent.
//!
//! Controllers never talk to storage; everything goes through the API server.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod controllers;
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
use rkube_runtime::component::health;
use rkube_runtime::{run_elected, ControllerSelection, LeaderElectionConfig};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use controllers::{enabled_controllers, start_controllers, KNOWN_CONTROLLERS};
pub use rkube_runtime::component::{ApiServerError, ApiServerTarget};

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
