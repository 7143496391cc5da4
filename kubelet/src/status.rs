//! Pod status from what the runtime runs and what the kubelet decided (waiting reasons,
//! probe results), computed by upstream's rules; pure so it can be tested without IO.

use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::api::core::v1::Pod;
use rkube_api::semantics::qos::effective_qos_class;
use rkube_cri::{labels, ContainerInfo, ContainerState};
use serde_json::{json, Map, Value};

/// A reason the kubelet holds a container back (ErrImagePull, CrashLoopBackOff, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    pub reason: String,
    pub message: String,
}

impl Waiting {
    pub fn new(reason: &str, message: impl Into<String>) -> Waiting {
        Waiting {
            reason: reason.to_string(),
            message: message.into(),
        }
    }
}

/// One container of the pod as the kubelet sees it.
#[derive(Clone, Debug, Default)]
pub struct ContainerView {
    pub name: String,
    /// The image the spec asks for.
    pub image: String,
    /// The newest runtime instance, and the one before it (for lastState).
    pub current: Option<ContainerInfo>,
    pub previous: Option<ContainerInfo>,
    pub waiting: Option<Waiting>,
    pub ready: bool,
    pub started: bool,
}

impl ContainerView {
    pub fn restart_count(&self) -> u32 {
        self.current
            .as_ref()
            .and_then(|c| c.labels.get(labels::RESTART_COUNT))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    fn exited(&self) -> Option<i32> {
        match self.current.as_ref().map(|c| &c.state) {
            Some(ContainerState::Exited { exit_code, .. }) => Some(*exit_code),
            _ => None,
        }
    }

    fn running(&self) -> bool {
        matches!(
            self.current.as_ref().map(|c| &c.state),
            Some(ContainerState::Running { .. })
        )
    }
}

pub fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn terminated(info: &ContainerInfo) -> Option<Value> {
    let ContainerState::Exited {
        started_at,
        finished_at,
        exit_code,
        oom_killed,
    } = &info.state
    else {
        return None;
    };
    let reason = if *oom_killed {
        "OOMKilled"
    } else if *exit_code == 0 {
        "Completed"
    } else {
        "Error"
    };
    let mut t = json!({
        "exitCode": exit_code,
        "reason": reason,
        "finishedAt": timestamp(*finished_at),
        "containerID": format!("containerd://{}", info.id),
    });
    if let Some(s) = started_at {
        t["startedAt"] = json!(timestamp(*s));
    }
    Some(json!({ "terminated": t }))
}

fn container_status(view: &ContainerView) -> Value {
    let mut status = json!({
        "name": view.name,
        "image": view.image,
        "imageID": view.current.as_ref().map(|c| c.image_id.clone()).unwrap_or_default(),
        "ready": view.ready,
        "started": view.started,
        "restartCount": view.restart_count(),
        "lastState": {},
    });
    if let Some(current) = &view.current {
        status["containerID"] = json!(format!("containerd://{}", current.id));
    }
    let current_terminated = view.current.as_ref().and_then(terminated);
    let previous_terminated = view.previous.as_ref().and_then(terminated);
    let (state, last) = match (&view.waiting, &view.current) {
        (Some(w), _) => (
            json!({"waiting": {"reason": w.reason, "message": w.message}}),
            current_terminated.or(previous_terminated),
        ),
        (None, Some(info)) => {
            let state = match &info.state {
                ContainerState::Running { started_at } => {
                    json!({"running": {"startedAt": timestamp(*started_at)}})
                }
                ContainerState::Exited { .. } => current_terminated.unwrap_or_default(),
                ContainerState::Created => json!({"waiting": {"reason": "ContainerCreating"}}),
                ContainerState::Unknown => {
                    json!({"waiting": {"reason": "ContainerStatusUnknown"}})
                }
            };
            (state, previous_terminated)
        }
        (None, None) => (json!({"waiting": {"reason": "ContainerCreating"}}), None),
    };
    if let Some(waiting) = state.get("waiting") {
        if waiting["message"] == json!("") {
            status["state"] = json!({"waiting": {"reason": waiting["reason"]}});
        } else {
            status["state"] = state.clone();
        }
    } else {
        status["state"] = state;
    }
    if let Some(last) = last {
        status["lastState"] = last;
    }
    status
}

/// Everything the pod's status is computed from.
pub struct PodView<'a> {
    pub pod: &'a Pod,
    pub init: Vec<ContainerView>,
    pub regular: Vec<ContainerView>,
    pub pod_ip: Option<String>,
    pub host_ip: String,
    pub start_time: Option<DateTime<Utc>>,
    pub now: DateTime<Utc>,
    /// A pod-level message (sandbox or volume trouble) shown while Pending.
    pub pending_message: Option<Waiting>,
}

pub fn restart_policy(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always")
}

/// True when every init container has exited 0.
pub fn init_done(init: &[ContainerView]) -> bool {
    init.iter().all(|c| c.exited() == Some(0))
}

/// Upstream's getPhase.
pub fn phase(pod: &Pod, init: &[ContainerView], regular: &[ContainerView]) -> &'static str {
    let policy = restart_policy(pod);
    if !init_done(init) {
        let failed = init
            .iter()
            .any(|c| matches!(c.exited(), Some(code) if code != 0) && c.waiting.is_none());
        if failed && policy == "Never" {
            return "Failed";
        }
        return "Pending";
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for c in regular {
        if c.waiting.is_some() || c.current.is_none() {
            let restarted_before = c.exited().is_some() || c.previous.is_some();
            if restarted_before {
                stopped += 1;
            } else {
                waiting += 1;
            }
        } else if c.running() {
            running += 1;
        } else if let Some(code) = c.exited() {
            stopped += 1;
            if code == 0 {
                succeeded += 1;
            }
        } else {
            waiting += 1;
        }
    }
    if waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped > 0 {
        if policy == "Always" {
            "Running"
        } else if stopped == succeeded {
            "Succeeded"
        } else if policy == "Never" {
            "Failed"
        } else {
            "Running"
        }
    } else {
        "Pending"
    }
}

fn condition(
    previous: Option<&Value>,
    kind: &str,
    ok: bool,
    reason: Option<&str>,
    message: Option<String>,
    now: &str,
) -> Value {
    let status = if ok { "True" } else { "False" };
    let previous = previous
        .and_then(|s| s["conditions"].as_array())
        .and_then(|conds| conds.iter().find(|c| c["type"] == kind));
    let transition = match previous {
        Some(p) if p["status"] == status => {
            p["lastTransitionTime"].as_str().unwrap_or(now).to_string()
        }
        _ => now.to_string(),
    };
    let mut c = json!({"type": kind, "status": status, "lastProbeTime": null, "lastTransitionTime": transition});
    if let Some(reason) = reason {
        c["reason"] = json!(reason);
    }
    if let Some(message) = message {
        c["message"] = json!(message);
    }
    c
}

/// The pod's status object; `previous` (the status last written) keeps transition times.
pub fn pod_status(view: &PodView<'_>, previous: Option<&Value>) -> Value {
    let now = timestamp(view.now);
    let phase = phase(view.pod, &view.init, &view.regular);
    let terminal = phase == "Succeeded" || phase == "Failed";
    let incomplete: Vec<&str> = view
        .init
        .iter()
        .filter(|c| c.exited() != Some(0))
        .map(|c| c.name.as_str())
        .collect();
    let unready: Vec<&str> = view
        .regular
        .iter()
        .filter(|c| !c.ready)
        .map(|c| c.name.as_str())
        .collect();
    let initialized = incomplete.is_empty();
    let ready = unready.is_empty() && !terminal;
    let (ready_reason, ready_message) = if terminal {
        (Some("PodCompleted"), None)
    } else if !ready {
        (
            Some("ContainersNotReady"),
            Some(format!(
                "containers with unready status: [{}]",
                unready.join(" ")
            )),
        )
    } else {
        (None, None)
    };
    let conditions = vec![
        condition(previous, "PodScheduled", true, None, None, &now),
        condition(
            previous,
            "Initialized",
            initialized,
            (!initialized).then_some("ContainersNotInitialized"),
            (!initialized).then(|| {
                format!(
                    "containers with incomplete status: [{}]",
                    incomplete.join(" ")
                )
            }),
            &now,
        ),
        condition(
            previous,
            "ContainersReady",
            ready,
            ready_reason,
            ready_message.clone(),
            &now,
        ),
        condition(previous, "Ready", ready, ready_reason, ready_message, &now),
    ];
    let mut status = Map::new();
    status.insert("phase".into(), json!(phase));
    status.insert("conditions".into(), json!(conditions));
    status.insert("hostIP".into(), json!(view.host_ip));
    status.insert("hostIPs".into(), json!([{"ip": view.host_ip}]));
    if let Some(ip) = view.pod_ip.as_ref().filter(|ip| !ip.is_empty()) {
        status.insert("podIP".into(), json!(ip));
        status.insert("podIPs".into(), json!([{"ip": ip}]));
    }
    if let Some(start) = view.start_time {
        status.insert("startTime".into(), json!(timestamp(start)));
    }
    if let Some(pending) = view.pending_message.as_ref().filter(|_| phase == "Pending") {
        status.insert("reason".into(), json!(pending.reason));
        status.insert("message".into(), json!(pending.message));
    }
    // Set once by the API server at creation; upstream's kubelet reports it unchanged.
    status.insert(
        "qosClass".into(),
        json!(effective_qos_class(view.pod).as_str()),
    );
    if !view.init.is_empty() {
        status.insert(
            "initContainerStatuses".into(),
            json!(view.init.iter().map(container_status).collect::<Vec<_>>()),
        );
    }
    status.insert(
        "containerStatuses".into(),
        json!(view
            .regular
            .iter()
            .map(container_status)
            .collect::<Vec<_>>()),
    );
    Value::Object(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn pod(policy: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u"},
            "spec": {"restartPolicy": policy, "containers": [{"name": "a", "image": "i"}, {"name": "b", "image": "i"}]}
        }))
        .unwrap()
    }

    fn info(id: &str, restarts: u32, state: ContainerState) -> ContainerInfo {
        ContainerInfo {
            id: id.into(),
            image: "i".into(),
            image_id: "sha256:abc".into(),
            labels: BTreeMap::from([(labels::RESTART_COUNT.to_string(), restarts.to_string())]),
            state,
            created_at: Utc::now(),
            pid: None,
        }
    }

    fn running(id: &str) -> ContainerInfo {
        info(
            id,
            0,
            ContainerState::Running {
                started_at: Utc::now(),
            },
        )
    }

    fn exited(id: &str, restarts: u32, code: i32) -> ContainerInfo {
        info(
            id,
            restarts,
            ContainerState::Exited {
                started_at: Some(Utc::now()),
                finished_at: Utc::now(),
                exit_code: code,
                oom_killed: false,
            },
        )
    }

    fn view(name: &str, current: Option<ContainerInfo>) -> ContainerView {
        ContainerView {
            name: name.into(),
            image: "i".into(),
            current,
            ..ContainerView::default()
        }
    }

    #[test]
    fn phase_follows_upstream_rules() {
        let both_running = [view("a", Some(running("1"))), view("b", Some(running("2")))];
        assert_eq!(phase(&pod("Always"), &[], &both_running), "Running");
        let one_creating = [view("a", Some(running("1"))), view("b", None)];
        assert_eq!(phase(&pod("Always"), &[], &one_creating), "Pending");
        let done = [
            view("a", Some(exited("1", 0, 0))),
            view("b", Some(exited("2", 0, 0))),
        ];
        assert_eq!(phase(&pod("Never"), &[], &done), "Succeeded");
        assert_eq!(phase(&pod("OnFailure"), &[], &done), "Succeeded");
        assert_eq!(phase(&pod("Always"), &[], &done), "Running");
        let failed = [
            view("a", Some(exited("1", 0, 1))),
            view("b", Some(exited("2", 0, 0))),
        ];
        assert_eq!(phase(&pod("Never"), &[], &failed), "Failed");
        assert_eq!(phase(&pod("OnFailure"), &[], &failed), "Running");
        let mut crashloop = view("a", Some(exited("1", 3, 1)));
        crashloop.waiting = Some(Waiting::new("CrashLoopBackOff", "back-off"));
        assert_eq!(
            phase(
                &pod("Always"),
                &[],
                &[crashloop, view("b", Some(running("2")))]
            ),
            "Running"
        );
        let init_failed = [view("init", Some(exited("0", 0, 2)))];
        assert_eq!(
            phase(&pod("Never"), &init_failed, &[view("a", None)]),
            "Failed"
        );
        assert_eq!(
            phase(&pod("Always"), &init_failed, &[view("a", None)]),
            "Pending"
        );
    }

    fn view_of(p: &Pod) -> PodView<'_> {
        PodView {
            pod: p,
            init: vec![],
            regular: vec![view("a", Some(running("1")))],
            pod_ip: None,
            host_ip: "127.0.0.1".into(),
            start_time: None,
            now: Utc::now(),
            pending_message: None,
        }
    }

    /// Regression: the kubelet compared quantity strings, so `1000m` against `1` was
    /// Burstable while the API server (and upstream) call the pod Guaranteed.
    #[test]
    fn qos_compares_quantities_by_value() {
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u"},
            "spec": {"containers": [{"name": "a", "image": "i", "resources": {
                "requests": {"cpu": "1000m", "memory": "1Gi"},
                "limits": {"cpu": "1", "memory": "1073741824"}}}]}
        }))
        .unwrap();
        assert_eq!(pod_status(&view_of(&p), None)["qosClass"], "Guaranteed");
    }

    /// Regression: the kubelet recomputed `status.qosClass` and overwrote the class the
    /// API server set at creation, which upstream never changes afterwards.
    #[test]
    fn qos_class_set_by_the_api_server_is_kept() {
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u"},
            "spec": {"containers": [{"name": "a", "image": "i"}]},
            "status": {"qosClass": "Burstable"}
        }))
        .unwrap();
        assert_eq!(pod_status(&view_of(&p), None)["qosClass"], "Burstable");
    }

    #[test]
    fn status_reports_states_conditions_and_keeps_transition_times() {
        let p = pod("Always");
        let mut a = view("a", Some(running("aaa")));
        a.ready = true;
        a.started = true;
        a.previous = Some(info(
            "old",
            0,
            ContainerState::Exited {
                started_at: None,
                finished_at: Utc::now(),
                exit_code: 137,
                oom_killed: true,
            },
        ));
        let mut b = view("b", Some(exited("bbb", 2, 1)));
        b.waiting = Some(Waiting::new(
            "CrashLoopBackOff",
            "back-off 20s restarting failed container=b pod=p_default(u)",
        ));
        let t0 = Utc::now() - chrono::Duration::seconds(100);
        let v = PodView {
            pod: &p,
            init: vec![],
            regular: vec![a, b],
            pod_ip: Some("10.0.0.2".into()),
            host_ip: "127.0.0.1".into(),
            start_time: Some(t0),
            now: t0,
            pending_message: None,
        };
        let first = pod_status(&v, None);
        assert_eq!(first["phase"], "Running");
        assert_eq!(first["podIP"], "10.0.0.2");
        assert_eq!(first["podIPs"], json!([{"ip": "10.0.0.2"}]));
        assert_eq!(first["qosClass"], "BestEffort");
        let a = &first["containerStatuses"][0];
        assert_eq!(a["containerID"], "containerd://aaa");
        assert!(a["state"]["running"]["startedAt"].is_string());
        assert_eq!(a["lastState"]["terminated"]["reason"], "OOMKilled");
        assert_eq!(a["ready"], true);
        let b = &first["containerStatuses"][1];
        assert_eq!(b["state"]["waiting"]["reason"], "CrashLoopBackOff");
        assert_eq!(b["lastState"]["terminated"]["exitCode"], 1);
        assert_eq!(b["lastState"]["terminated"]["reason"], "Error");
        assert_eq!(b["restartCount"], 2);
        let ready = first["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(ready["status"], "False");
        assert_eq!(ready["message"], "containers with unready status: [b]");

        let later = PodView {
            now: t0 + chrono::Duration::seconds(50),
            ..v
        };
        let second = pod_status(&later, Some(&first));
        assert_eq!(second, first, "nothing changed, so the status is identical");
    }
}
