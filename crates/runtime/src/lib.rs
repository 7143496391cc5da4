//! rkube-runtime: the plumbing every rkube component and controller shares, on top of
//! kube-rs.
//!
//! - [`component`]: what every binary does alike: reach the API server (`--master`,
//!   `--kubeconfig`), listen (`--bind-address`, `--port`), stop on SIGTERM or SIGINT, set up
//!   logging, serve health endpoints.
//! - [`informer`]: the change (applied or deleted) informers hand their handlers.
//! - [`workqueue`]: upstream's work queue: de-duplicated keys, never one key on two
//!   workers, delayed and rate-limited re-adds.
//! - [`expectations`]: writes a controller made that its cache has not shown yet.
//! - [`leader`]: leader election on a coordination.k8s.io Lease.
//! - [`events`]: core/v1 Event recording.
//! - [`selection`]: `--controllers=*,-job` parsing.
//! - [`shared_informers`]: one watch and cache per resource per process, shared by every
//!   controller that reads it.
//!
//! A controller is: informers whose callbacks map changes to keys -> a [`workqueue::WorkQueue`]
//! -> [`run_workers`] (or [`run_reconcile_workers`]) calling an idempotent `reconcile(key)`
//! that reads the caches.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod component;
pub mod events;
pub mod expectations;
pub mod informer;
pub mod leader;
pub mod selection;
pub mod shared_informers;
pub mod workqueue;

use std::fmt::Display;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

pub use events::{object_reference, EventRecorder, EventType};
pub use expectations::{Expectations, Observed};
pub use informer::Change;
pub use leader::{run_elected, LeaderElectionConfig, LeaderElector};
pub use selection::ControllerSelection;
pub use shared_informers::{SharedInformer, SharedInformers, Synced};
pub use workqueue::{Backoff, WorkQueue};

/// What a reconcile asks for when it succeeds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Action {
    /// Nothing until something changes.
    #[default]
    Done,
    /// Look again after this long (e.g. when minReadySeconds or a deadline will pass).
    RequeueAfter(Duration),
}

/// Starts `workers` tasks on `tasks` that take keys from `queue` and reconcile them: a
/// failure re-adds the key with backoff, success forgets its failures. They end when the
/// queue is shut down.
pub fn run_workers<K, E, R, Fut>(
    tasks: &mut JoinSet<()>,
    name: &'static str,
    queue: Arc<WorkQueue<K>>,
    workers: usize,
    reconcile: R,
) where
    K: Clone + Eq + Hash + Send + Sync + Display + 'static,
    E: Display + Send + 'static,
    R: Fn(K) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, E>> + Send + 'static,
{
    for _ in 0..workers.max(1) {
        let queue = queue.clone();
        let reconcile = reconcile.clone();
        tasks.spawn(async move {
            while let Some(key) = queue.next().await {
                match reconcile(key.clone()).await {
                    Ok(action) => {
                        queue.forget(&key);
                        if let Action::RequeueAfter(delay) = action {
                            queue.add_after(key.clone(), delay);
                        }
                    }
                    Err(e) => {
                        tracing::info!(controller = name, %key, error = %e, "reconcile failed; will retry");
                        queue.add_rate_limited(key.clone());
                    }
                }
                queue.done(&key);
            }
        });
    }
}

/// [`run_workers`] for a controller's own task: reconciles keys from `queue` with
/// `reconcile(controller, key)` on `workers` workers and returns once they have all ended
/// (the queue was shut down). Controllers await it after their caches are synced, so the
/// workers never see a half-listed world.
pub async fn run_reconcile_workers<C, K, E, R, Fut>(
    name: &'static str,
    queue: Arc<WorkQueue<K>>,
    workers: usize,
    controller: Arc<C>,
    reconcile: R,
) where
    C: Send + Sync + 'static,
    K: Clone + Eq + Hash + Send + Sync + Display + 'static,
    E: Display + Send + 'static,
    R: Fn(Arc<C>, K) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, E>> + Send + 'static,
{
    let mut worker_tasks = JoinSet::new();
    run_workers(&mut worker_tasks, name, queue, workers, move |key: K| {
        reconcile(controller.clone(), key)
    });
    while worker_tasks.join_next().await.is_some() {}
}
