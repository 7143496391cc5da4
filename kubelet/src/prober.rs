//! Probe scheduling for one container: startup, liveness and readiness probes each on
//! their own period with upstream's thresholds; results feed the pod worker, which
//! restarts on liveness failure and reports readiness.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use parking_lot::Mutex;
use rkube_cri::ContainerRuntime;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Runs one probe once; `Err` carries upstream's failure message.
#[async_trait]
pub trait ProbeExecutor: Send + Sync + 'static {
    async fn run(
        &self,
        probe: &Probe,
        pod_ip: &str,
        container_id: &str,
        runtime: &Arc<dyn ContainerRuntime>,
    ) -> Result<(), String>;
}

/// The executor of `crate::probe` (exec through the runtime, HTTP GET, TCP connect).
pub struct RuntimeProbes;

#[async_trait]
impl ProbeExecutor for RuntimeProbes {
    async fn run(
        &self,
        probe: &Probe,
        pod_ip: &str,
        container_id: &str,
        runtime: &Arc<dyn ContainerRuntime>,
    ) -> Result<(), String> {
        let target = crate::probe::ProbeTarget {
            pod_ip: (!pod_ip.is_empty()).then(|| pod_ip.to_string()),
            container_id: container_id.to_string(),
            runtime: runtime.clone(),
        };
        match crate::probe::run(probe, &target).await {
            // Unknown (nothing to decide, e.g. no pod IP yet) counts as neither.
            crate::probe::ProbeResult::Success | crate::probe::ProbeResult::Unknown => Ok(()),
            crate::probe::ProbeResult::Failure(message) => Err(message),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    Startup,
    Liveness,
    Readiness,
}

impl ProbeKind {
    fn name(self) -> &'static str {
        match self {
            ProbeKind::Startup => "Startup",
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
        }
    }
}

/// What the probes of one container concluded so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeStatus {
    pub started: bool,
    pub ready: bool,
    /// Set once the liveness probe failed `failureThreshold` times in a row.
    pub liveness_failure: Option<String>,
}

pub type EventSink = Arc<dyn Fn(&'static str, String) + Send + Sync>;

/// The probe tasks of one running container; dropping it stops them.
pub struct ContainerProbes {
    pub status: Arc<Mutex<ProbeStatus>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for ContainerProbes {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Everything a probe loop needs about its container.
#[derive(Clone)]
pub struct ProbeContext {
    pub pod_ip: String,
    pub container_id: String,
    pub runtime: Arc<dyn ContainerRuntime>,
    pub executor: Arc<dyn ProbeExecutor>,
    /// Woken when a result changes.
    pub changed: Arc<Notify>,
    pub events: EventSink,
}

fn seconds(value: Option<i32>, default: i32) -> Duration {
    Duration::from_secs(value.filter(|v| *v > 0).unwrap_or(default) as u64)
}

pub fn start(container: &Container, context: ProbeContext) -> ContainerProbes {
    let status = Arc::new(Mutex::new(ProbeStatus {
        started: container.startup_probe.is_none(),
        ready: container.readiness_probe.is_none(),
        liveness_failure: None,
    }));
    let mut tasks = Vec::new();
    for (kind, probe) in [
        (ProbeKind::Startup, &container.startup_probe),
        (ProbeKind::Liveness, &container.liveness_probe),
        (ProbeKind::Readiness, &container.readiness_probe),
    ] {
        if let Some(probe) = probe {
            tasks.push(tokio::spawn(probe_loop(
                kind,
                with_numeric_ports(probe, container),
                context.clone(),
                status.clone(),
            )));
        }
    }
    ContainerProbes { status, tasks }
}

/// The probe with named ports replaced by the container's port numbers (a name that does
/// not resolve is left for the probe to fail on).
fn with_numeric_ports(probe: &Probe, container: &Container) -> Probe {
    let mut probe = probe.clone();
    if let Some(http) = probe.http_get.as_mut() {
        if let Ok(port) = crate::probe::resolve_port(&http.port, container) {
            http.port = IntOrString::Int(i32::from(port));
        }
    }
    if let Some(tcp) = probe.tcp_socket.as_mut() {
        if let Ok(port) = crate::probe::resolve_port(&tcp.port, container) {
            tcp.port = IntOrString::Int(i32::from(port));
        }
    }
    probe
}

async fn probe_loop(
    kind: ProbeKind,
    probe: Probe,
    context: ProbeContext,
    status: Arc<Mutex<ProbeStatus>>,
) {
    let period = seconds(probe.period_seconds, 10);
    let timeout = seconds(probe.timeout_seconds, 1);
    let success_threshold = probe.success_threshold.filter(|v| *v > 0).unwrap_or(1) as u32;
    let failure_threshold = probe.failure_threshold.filter(|v| *v > 0).unwrap_or(3) as u32;
    let initial_delay = Duration::from_secs(probe.initial_delay_seconds.unwrap_or(0).max(0) as u64);
    tokio::time::sleep(initial_delay).await;
    let (mut successes, mut failures) = (0u32, 0u32);
    loop {
        let started = status.lock().started;
        match kind {
            ProbeKind::Startup if started => return,
            ProbeKind::Liveness | ProbeKind::Readiness if !started => {
                tokio::time::sleep(period.min(Duration::from_secs(1))).await;
                continue;
            }
            _ => {}
        }
        let result = match tokio::time::timeout(
            timeout,
            context.executor.run(
                &probe,
                &context.pod_ip,
                &context.container_id,
                &context.runtime,
            ),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(format!("command timed out after {}s", timeout.as_secs())),
        };
        let changed = match result {
            Ok(()) => {
                failures = 0;
                successes = successes.saturating_add(1);
                let mut s = status.lock();
                match kind {
                    ProbeKind::Startup if !s.started => {
                        s.started = true;
                        true
                    }
                    ProbeKind::Readiness if !s.ready && successes >= success_threshold => {
                        s.ready = true;
                        true
                    }
                    _ => false,
                }
            }
            Err(message) => {
                successes = 0;
                failures = failures.saturating_add(1);
                (context.events)(
                    "Unhealthy",
                    format!("{} probe failed: {message}", kind.name()),
                );
                let mut s = status.lock();
                if failures < failure_threshold {
                    false
                } else {
                    match kind {
                        ProbeKind::Readiness if s.ready => {
                            s.ready = false;
                            true
                        }
                        ProbeKind::Liveness | ProbeKind::Startup
                            if s.liveness_failure.is_none() =>
                        {
                            s.liveness_failure = Some(format!(
                                "Container failed {} probe, will be restarted",
                                kind.name().to_lowercase()
                            ));
                            true
                        }
                        _ => false,
                    }
                }
            }
        };
        if changed {
            context.changed.notify_one();
        }
        tokio::time::sleep(period).await;
    }
}
