//! Leader election on a coordination.k8s.io/v1 Lease, with upstream's rules: a candidate
//! takes the lease when it is free or when its record has not changed for a whole lease
//! duration *by the candidate's own clock* (so clock skew between machines does not
//! matter); the leader renews every retry period and steps down when it cannot renew
//! within the renew deadline. Writes are compare-and-swap on resourceVersion, so two
//! candidates never both win.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::time::Instant;

#[derive(Clone, Debug)]
pub struct LeaderElectionConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl LeaderElectionConfig {
    /// Upstream defaults: 15 s lease, 10 s renew deadline, 2 s retry.
    pub fn new(namespace: &str, name: &str, identity: &str) -> LeaderElectionConfig {
        LeaderElectionConfig {
            namespace: namespace.to_string(),
            name: name.to_string(),
            identity: identity.to_string(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// The lease record as last seen, and when this candidate saw it change.
struct Observed {
    record: Option<LeaseSpec>,
    at: Instant,
}

pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaderElectionConfig,
    observed: Option<Observed>,
}

impl LeaderElector {
    pub fn new(client: Client, config: LeaderElectionConfig) -> LeaderElector {
        LeaderElector {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
        }
    }

    fn lease_seconds(&self) -> i32 {
        i32::try_from(self.config.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    /// One attempt: `Ok(true)` if this candidate holds the lease afterwards.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let Some(current) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.config.identity.clone()),
                    lease_duration_seconds: Some(self.lease_seconds()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(created.spec);
                    Ok(true)
                }
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = current.spec.clone().unwrap_or_default();
        self.observe(Some(spec.clone()));
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let held_by_me = holder.as_deref() == Some(self.config.identity.as_str());
        if let Some(_other) = holder.as_ref().filter(|_| !held_by_me) {
            let duration = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map(Duration::from_secs)
                .unwrap_or(self.config.lease_duration);
            let since = self
                .observed
                .as_ref()
                .map(|o| o.at)
                .unwrap_or_else(Instant::now);
            if since.elapsed() < duration {
                return Ok(false);
            }
        }
        let mut next = spec.clone();
        if !held_by_me {
            next.acquire_time = Some(now.clone());
            next.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        next.holder_identity = Some(self.config.identity.clone());
        next.lease_duration_seconds = Some(self.lease_seconds());
        next.renew_time = Some(now);
        let mut lease = current;
        lease.spec = Some(next);
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(updated) => {
                self.observe(updated.spec);
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn observe(&mut self, record: Option<LeaseSpec>) {
        let changed = self.observed.as_ref().is_none_or(|o| o.record != record);
        if changed {
            self.observed = Some(Observed {
                record,
                at: Instant::now(),
            });
        }
    }

    /// Gives the lease up so another candidate can take it at once (upstream's
    /// ReleaseOnCancel).
    pub async fn release(&mut self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            return Ok(());
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
        lease.spec = Some(spec);
        self.api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await?;
        Ok(())
    }
}

/// Campaigns for the lease until `shutdown` turns true. Each time this candidate becomes
/// leader, `lead(stop)` runs; `stop` turns true when leadership is lost or on shutdown,
/// and `lead` is given `retry_period` to return before it is dropped. `is_leader` mirrors
/// the state for health checks and tests.
pub async fn run_elected<F, Fut>(
    client: Client,
    config: LeaderElectionConfig,
    is_leader: Arc<AtomicBool>,
    mut shutdown: watch::Receiver<bool>,
    mut lead: F,
) where
    F: FnMut(watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut elector = LeaderElector::new(client, config.clone());
    loop {
        // Candidate: retry until acquired (jittered so candidates do not move in lockstep).
        loop {
            if *shutdown.borrow() {
                return;
            }
            match elector.try_acquire_or_renew().await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election: acquiring the lease failed"),
            }
            let jitter = config.retry_period.mul_f64(rand_fraction() * 0.2);
            tokio::select! {
                _ = tokio::time::sleep(config.retry_period + jitter) => {}
                _ = shutdown.changed() => {}
            }
        }
        tracing::info!(identity = %config.identity, lease = %config.name, "became leader");
        is_leader.store(true, Ordering::SeqCst);
        let (stop_tx, stop_rx) = watch::channel(false);
        // A JoinSet, not a bare spawn: if this future is dropped (the process is being torn
        // down without a graceful stop), the controllers must stop with it.
        let mut leading = tokio::task::JoinSet::new();
        leading.spawn(lead(stop_rx));
        let mut last_renewal = Instant::now();
        let shutting_down = loop {
            tokio::select! {
                _ = tokio::time::sleep(config.retry_period) => {}
                _ = shutdown.changed() => {}
                _ = leading.join_next() => {
                    tracing::warn!("controllers stopped while leading; giving the lease up");
                    break true;
                }
            }
            if *shutdown.borrow() {
                break true;
            }
            match tokio::time::timeout(config.renew_deadline, elector.try_acquire_or_renew()).await
            {
                Ok(Ok(true)) => last_renewal = Instant::now(),
                Ok(Ok(false)) => {
                    tracing::warn!("leader election: lease taken by another candidate");
                    break false;
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "leader election: renewing failed"),
                Err(_) => tracing::warn!("leader election: renewing timed out"),
            }
            if last_renewal.elapsed() >= config.renew_deadline {
                tracing::warn!("leader election: could not renew within the deadline");
                break false;
            }
        };
        is_leader.store(false, Ordering::SeqCst);
        let _ = stop_tx.send(true);
        if tokio::time::timeout(config.retry_period, leading.join_next())
            .await
            .is_err()
        {
            leading.shutdown().await;
        }
        tracing::info!(identity = %config.identity, "stopped leading");
        if shutting_down {
            if let Err(e) = elector.release().await {
                tracing::warn!(error = %e, "leader election: releasing the lease failed");
            }
            return;
        }
    }
}

fn rand_fraction() -> f64 {
    f64::from(uuid::Uuid::new_v4().as_u128() as u16) / f64::from(u16::MAX)
}
