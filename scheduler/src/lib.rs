//! rkube-scheduler: assigns pending pods to nodes.
//!
//! Map of the crate:
//! - [`run`]: wiring. Starts the watches, the scheduling loop and the health endpoint; the
//!   binary and the tests call it.
//! - `scheduler`: the running scheduler: watch handlers feeding the cache and the queue, the
//!   scheduling loop, binding with bounded concurrency, unschedulable status, and Events
//!   through `rkube_runtime::EventRecorder` (repeats correlated into one Event's count).
//! - `framework`: one decision (filter, score, pick; or upstream's "0/N nodes are
//!   available" explanation). `plugins`: the [`plugins::FilterPlugin`] and
//!   [`plugins::ScorePlugin`] implementations and the default lists.
//! - `cache`: nodes and what is placed on them, including assumed pods.
//! - `queue`: active / backoff / unschedulable pods, upstream's retry rules.
//! - `model`: pods and nodes reduced to what placement needs (quantities, tolerations and
//!   selectors are `rkube_api`'s).
//!
//! Invariant: the scheduler talks only to the API server (kube-rs over HTTP), and a
//! decision never waits for the network: binds, status writes and Events run beside the
//! scheduling loop, bounded in number (Events are queued, and dropped when the queue is full).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod cache;
pub mod framework;
pub mod model;
pub mod plugins;
pub mod queue;
mod scheduler;

use std::future::Future;
use std::sync::Arc;

use rkube_runtime::component::health;
use tokio::net::TcpListener;

pub use rkube_runtime::component::{ApiServerError, ApiServerTarget};
pub use scheduler::Scheduler;

#[derive(Clone, Debug)]
pub struct Config {
    pub api_server: ApiServerTarget,
    /// Pods whose `spec.schedulerName` is something else are left alone.
    pub scheduler_name: String,
    /// Bindings in flight at once.
    pub bind_concurrency: usize,
    /// Unschedulable-status writes in flight at once (Events are written by the recorder's
    /// own background task, one at a time, as upstream's broadcaster does).
    pub write_concurrency: usize,
    /// Percentage of nodes to look at per pod in large clusters; `None` is upstream's adaptive rule.
    pub percentage_of_nodes_to_score: Option<u32>,
    pub backoff: queue::Backoff,
}

impl Config {
    pub fn new(api_server: ApiServerTarget) -> Config {
        Config {
            api_server,
            scheduler_name: "default-scheduler".to_string(),
            bind_concurrency: 64,
            write_concurrency: 16,
            percentage_of_nodes_to_score: None,
            backoff: queue::Backoff::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// No client for the API server.
    #[error(transparent)]
    ApiServer(#[from] ApiServerError),
    /// The health endpoint failed.
    #[error("serving health endpoint: {0}")]
    Serve(#[from] std::io::Error),
}

/// Runs the scheduler until `shutdown` completes. `listener` serves `/healthz` (alive) and
/// `/readyz` (caches synced).
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SchedulerError> {
    let client = config.api_server.client().await?;
    let scheduler = Scheduler::new(client, &config);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let tasks = scheduler.clone().start(stop_rx);
    tracing::info!(addr = ?listener.local_addr().ok(), name = %config.scheduler_name, "rkube-scheduler running");
    let synced = scheduler.clone();
    let ready: health::ReadyCheck = Arc::new(move || {
        if synced.is_synced() {
            Ok(())
        } else {
            Err("caches not synced".to_string())
        }
    });
    let served = health::serve(listener, health::router(ready), async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    })
    .await;
    for task in tasks {
        let _ = task.await;
    }
    tracing::info!("rkube-scheduler stopped");
    served.map_err(SchedulerError::from)
}
