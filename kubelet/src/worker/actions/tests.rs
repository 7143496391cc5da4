//! Table tests of `compute_pod_actions`, shaped like upstream's TestComputePodActions and
//! TestComputePodActionsWithInitContainers (case names are upstream's where the decision
//! is the same; where rkube decides differently the case says so).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use k8s_openapi::api::core::v1::Pod;
use rkube_cri::{labels, ContainerInfo, ContainerState};
use serde_json::json;

use super::*;

const UID: &str = "uid-1";

/// One observed instance: container name, restart count, state, and whether it was
/// created from the current spec.
struct Instance {
    name: &'static str,
    restart: u32,
    state: ContainerState,
    current_spec: bool,
}

fn at(seconds: i64) -> chrono::DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + seconds, 0).unwrap()
}

fn running(name: &'static str, restart: u32) -> Instance {
    Instance {
        name,
        restart,
        state: ContainerState::Running { started_at: at(0) },
        current_spec: true,
    }
}

/// Exited with `code` after running for `ran` seconds.
fn exited_after(name: &'static str, restart: u32, code: i32, ran: i64) -> Instance {
    Instance {
        name,
        restart,
        state: ContainerState::Exited {
            started_at: Some(at(0)),
            finished_at: at(ran),
            exit_code: code,
            oom_killed: false,
        },
        current_spec: true,
    }
}

fn exited(name: &'static str, restart: u32, code: i32) -> Instance {
    exited_after(name, restart, code, 1)
}

fn with_state(name: &'static str, restart: u32, state: ContainerState) -> Instance {
    Instance {
        name,
        restart,
        state,
        current_spec: true,
    }
}

fn outdated(mut instance: Instance) -> Instance {
    instance.current_spec = false;
    instance
}

fn pod(policy: &str, init: &[&str], regular: &[&str]) -> Pod {
    let containers = |names: &[&str]| -> Vec<serde_json::Value> {
        names
            .iter()
            .map(|n| json!({"name": n, "image": "busybox:1.36"}))
            .collect()
    };
    serde_json::from_value(json!({
        "metadata": {"name": "p", "namespace": "default", "uid": UID},
        "spec": {
            "restartPolicy": policy,
            "initContainers": containers(init),
            "containers": containers(regular),
        }
    }))
    .unwrap()
}

fn observe(pod: &Pod, instances: Vec<Instance>) -> PodContainers {
    let spec = pod.spec.as_ref().unwrap();
    let all = instances
        .into_iter()
        .map(|i| {
            let container = spec
                .init_containers
                .iter()
                .flatten()
                .chain(spec.containers.iter())
                .find(|c| c.name == i.name)
                .unwrap();
            let hash = if i.current_spec {
                spec_hash(container)
            } else {
                "0000000000000000".to_string()
            };
            ContainerInfo {
                id: format!("{}-{}", i.name, i.restart),
                image: "busybox:1.36".into(),
                image_id: "sha256:1".into(),
                labels: BTreeMap::from([
                    (labels::POD_UID.to_string(), UID.to_string()),
                    (labels::CONTAINER_NAME.to_string(), i.name.to_string()),
                    (labels::RESTART_COUNT.to_string(), i.restart.to_string()),
                    (labels::SPEC_HASH.to_string(), hash),
                ]),
                state: i.state,
                created_at: at(i64::from(i.restart)),
                pid: None,
            }
        })
        .collect();
    PodContainers::from_listing(all, UID)
}

/// The actions as short lines, so a table states them at a glance.
fn summary(actions: &PodActions) -> Vec<String> {
    let mut lines = Vec::new();
    if actions.create_sandbox {
        lines.push("create sandbox".to_string());
    }
    for action in &actions.containers {
        lines.push(match action {
            ContainerAction::Start(s) => {
                let attempt = match s.attempt {
                    Attempt::First => "",
                    Attempt::Restart {
                        reset_backoff: false,
                    } => " restart",
                    Attempt::Restart {
                        reset_backoff: true,
                    } => " restart, backoff reset",
                };
                let kind = match s.kind {
                    ContainerKind::Init => "init ",
                    ContainerKind::Regular => "",
                };
                let remove = if s.remove.is_empty() {
                    String::new()
                } else {
                    format!(" removing {}", s.remove.join(","))
                };
                format!(
                    "start {kind}{}[{}] #{}{attempt}{remove}",
                    s.name, s.index, s.restart_count
                )
            }
            ContainerAction::Kill(k) => format!("kill {} ({})", k.id, k.message),
            ContainerAction::BackOff(b) => format!(
                "back off {} ({}s of {}s, after {})",
                b.name,
                b.wait.remaining.as_secs(),
                b.wait.delay.as_secs(),
                b.latest_id
            ),
        });
    }
    lines
}

struct Case {
    name: &'static str,
    policy: &'static str,
    init: &'static [&'static str],
    regular: &'static [&'static str],
    sandbox_ready: bool,
    instances: Vec<Instance>,
    /// Container ids whose liveness probe failed.
    liveness_failed: &'static [&'static str],
    /// Container names inside their crash-loop backoff.
    backing_off: &'static [&'static str],
    expected: &'static [&'static str],
}

impl Default for Case {
    fn default() -> Case {
        Case {
            name: "",
            policy: "Always",
            init: &[],
            regular: &["c1", "c2", "c3"],
            sandbox_ready: true,
            instances: Vec::new(),
            liveness_failed: &[],
            backing_off: &[],
            expected: &[],
        }
    }
}

fn run(cases: Vec<Case>) {
    for case in cases {
        let pod = pod(case.policy, case.init, case.regular);
        let containers = observe(&pod, case.instances);
        let liveness_failures: HashMap<String, String> = case
            .liveness_failed
            .iter()
            .map(|id| {
                (
                    id.to_string(),
                    "Container c1 failed liveness probe".to_string(),
                )
            })
            .collect();
        let crash_backoff: HashMap<String, BackoffWait> = case
            .backing_off
            .iter()
            .map(|name| {
                let wait = BackoffWait {
                    remaining: Duration::from_secs(5),
                    delay: Duration::from_secs(20),
                };
                (name.to_string(), wait)
            })
            .collect();
        let observed = Observed {
            containers: &containers,
            sandbox_ready: case.sandbox_ready,
            liveness_failures: &liveness_failures,
            crash_backoff: &crash_backoff,
            backoff_reset: Duration::from_secs(600),
        };
        let actions = compute_pod_actions(&pod, &observed);
        assert_eq!(summary(&actions), case.expected, "case: {}", case.name);
    }
}

#[test]
fn compute_pod_actions_for_regular_containers() {
    run(vec![
        Case {
            name: "everything is good; do nothing",
            instances: vec![running("c1", 0), running("c2", 0), running("c3", 0)],
            ..Case::default()
        },
        Case {
            name: "start pod sandbox and all containers for a new pod",
            sandbox_ready: false,
            expected: &[
                "create sandbox",
                "start c1[0] #0",
                "start c2[1] #0",
                "start c3[2] #0",
            ],
            ..Case::default()
        },
        Case {
            name: "a sandbox that is ready is left alone while a missing container starts",
            instances: vec![running("c1", 0), running("c3", 0)],
            expected: &["start c2[1] #0"],
            ..Case::default()
        },
        Case {
            name: "restart exited containers if RestartPolicy == Always",
            instances: vec![exited("c1", 0, 0), exited("c2", 0, 1), running("c3", 0)],
            expected: &["start c1[0] #1 restart", "start c2[1] #1 restart"],
            ..Case::default()
        },
        Case {
            name: "restart failed containers if RestartPolicy == OnFailure",
            policy: "OnFailure",
            instances: vec![exited("c1", 0, 0), exited("c2", 0, 1), running("c3", 0)],
            expected: &["start c2[1] #1 restart"],
            ..Case::default()
        },
        Case {
            name: "don't restart containers if RestartPolicy == Never",
            policy: "Never",
            instances: vec![exited("c1", 0, 0), exited("c2", 0, 1), running("c3", 0)],
            ..Case::default()
        },
        Case {
            // Upstream kills and starts in one sync; rkube kills now and the next sync
            // (requeued at once) starts the replacement through the restart path.
            name: "Kill and recreate the container if the container's spec changed",
            instances: vec![
                outdated(running("c1", 0)),
                running("c2", 0),
                running("c3", 0),
            ],
            expected: &["kill c1-0 (Container definition changed, will be restarted)"],
            ..Case::default()
        },
        Case {
            name: "Kill and recreate the container if the liveness check has failed",
            instances: vec![running("c1", 0), running("c2", 0), running("c3", 0)],
            liveness_failed: &["c1-0"],
            expected: &["kill c1-0 (Container c1 failed liveness probe)"],
            ..Case::default()
        },
        Case {
            name: "a liveness failure of an older instance does not kill the new one",
            instances: vec![
                running("c1", 1),
                exited("c1", 0, 137),
                running("c2", 0),
                running("c3", 0),
            ],
            liveness_failed: &["c1-0"],
            ..Case::default()
        },
        Case {
            name: "Kill and recreate the container if the container is in unknown state",
            instances: vec![
                with_state("c1", 0, ContainerState::Unknown),
                running("c2", 0),
                running("c3", 0),
            ],
            expected: &["start c1[0] #1 restart removing c1-0"],
            ..Case::default()
        },
        Case {
            // A container created but never started is replaced whatever the policy.
            name: "a container left created (start failed) is recreated, even with Never",
            policy: "Never",
            instances: vec![
                with_state("c1", 0, ContainerState::Created),
                running("c2", 0),
                running("c3", 0),
            ],
            expected: &["start c1[0] #1 restart removing c1-0"],
            ..Case::default()
        },
        Case {
            name: "a crash-looping container waits out its backoff",
            instances: vec![exited("c1", 3, 1), running("c2", 0), running("c3", 0)],
            backing_off: &["c1"],
            expected: &["back off c1 (5s of 20s, after c1-3)"],
            ..Case::default()
        },
        Case {
            name: "an instance that ran past the reset period restarts at once, backoff forgotten",
            instances: vec![
                exited_after("c1", 3, 1, 601),
                running("c2", 0),
                running("c3", 0),
            ],
            backing_off: &["c1"],
            expected: &["start c1[0] #4 restart, backoff reset"],
            ..Case::default()
        },
        Case {
            name: "a restart keeps the previous instance for logs --previous, older ones go",
            regular: &["c1"],
            instances: vec![exited("c1", 2, 1), exited("c1", 1, 1), exited("c1", 0, 1)],
            expected: &["start c1[0] #3 restart removing c1-1,c1-0"],
            ..Case::default()
        },
        Case {
            name: "Verify we create a pod sandbox if no ready sandbox for pod with \
                   RestartPolicy=Never and no containers have ever been created",
            policy: "Never",
            regular: &["c1"],
            sandbox_ready: false,
            expected: &["create sandbox", "start c1[0] #0"],
            ..Case::default()
        },
    ]);
}

#[test]
fn compute_pod_actions_with_init_containers() {
    let base = || Case {
        init: &["init1", "init2"],
        regular: &["c1", "c2"],
        ..Case::default()
    };
    run(vec![
        Case {
            name: "initialization completed; start all containers",
            instances: vec![exited("init1", 0, 0), exited("init2", 0, 0)],
            expected: &["start c1[0] #0", "start c2[1] #0"],
            ..base()
        },
        Case {
            name: "no init containers have been started; start the first one",
            sandbox_ready: false,
            expected: &["create sandbox", "start init init1[0] #0"],
            ..base()
        },
        Case {
            name: "the next init container starts once the previous one succeeded",
            instances: vec![exited("init1", 0, 0)],
            expected: &["start init init2[1] #0"],
            ..base()
        },
        Case {
            name: "initialization in progress; do nothing",
            instances: vec![exited("init1", 0, 0), running("init2", 0)],
            ..base()
        },
        Case {
            name: "initialization failed; restart the last init container if RestartPolicy == Always",
            instances: vec![exited("init1", 0, 0), exited("init2", 0, 1)],
            expected: &["start init init2[1] #1 restart"],
            ..base()
        },
        Case {
            name: "initialization failed; restart the last init container if RestartPolicy == OnFailure",
            policy: "OnFailure",
            instances: vec![exited("init1", 0, 0), exited("init2", 0, 1)],
            expected: &["start init init2[1] #1 restart"],
            ..base()
        },
        Case {
            // Upstream kills the pod; rkube leaves it, and the status reports it Failed.
            name: "initialization failed and RestartPolicy == Never: nothing more starts",
            policy: "Never",
            instances: vec![exited("init1", 0, 1)],
            ..base()
        },
        Case {
            name: "init container state unknown; kill and recreate the last init container \
                   if RestartPolicy == Always",
            instances: vec![
                exited("init1", 0, 0),
                with_state("init2", 0, ContainerState::Unknown),
            ],
            expected: &["start init init2[1] #1 restart removing init2-0"],
            ..base()
        },
        Case {
            name: "an init container is in the created state due to an unknown error when \
                   starting container; restart it",
            instances: vec![with_state("init1", 0, ContainerState::Created)],
            expected: &["start init init1[0] #1 restart removing init1-0"],
            ..base()
        },
        Case {
            name: "a failed init container backing off holds back everything after it",
            instances: vec![exited("init1", 2, 1)],
            backing_off: &["init1"],
            expected: &["back off init1 (5s of 20s, after init1-2)"],
            ..base()
        },
        Case {
            name: "regular containers are not touched while initialization is in progress",
            instances: vec![running("init1", 0), outdated(running("c1", 0))],
            ..base()
        },
    ]);
}

#[test]
fn termination_grace_prefers_the_deletions_period() {
    let deleted = |deletion: Option<i64>, spec: Option<i64>| {
        let mut pod = pod("Always", &[], &["c1"]);
        pod.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        pod.metadata.deletion_grace_period_seconds = deletion;
        pod.spec.as_mut().unwrap().termination_grace_period_seconds = spec;
        termination_grace(&pod)
    };
    let secs = |s: u64| Some(Duration::from_secs(s));
    assert_eq!(deleted(Some(5), Some(60)), secs(5));
    assert_eq!(deleted(None, Some(60)), secs(60));
    assert_eq!(deleted(None, None), secs(30));
    assert_eq!(deleted(Some(-3), None), secs(0));
    assert_eq!(termination_grace(&pod("Always", &[], &["c1"])), None);
    let mut pod = pod("Always", &[], &["c1"]);
    assert_eq!(grace_period(&pod), Duration::from_secs(30));
    pod.spec.as_mut().unwrap().termination_grace_period_seconds = Some(-1);
    assert_eq!(grace_period(&pod), Duration::ZERO);
}
