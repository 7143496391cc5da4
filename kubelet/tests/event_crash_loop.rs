//! A pod crash-looping on the real kubelet (fake runtime, fast backoff) against an
//! in-process API server: every restart records BackOff, Pulled, Created and Started, yet
//! the pod's Event objects stay a handful whose counts grow, instead of one per occurrence.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{spawn_kubelet, FakeNode, FAKE_IMAGE};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams};
use kube::Client;
use rkube_cri::{labels, ContainerRuntime, ContainerState};
use rkube_testkit::TimedOut;
use serde_json::json;

const NODE: &str = "crash-loop-node";
const RESTARTS: i32 = 30;
/// Events the kubelet records per restart: BackOff, Pulled, Created, Started.
const EVENTS_PER_RESTART: usize = 4;

async fn events_about(client: &Client, uid: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(client.clone(), "default");
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.involved_object.uid.as_deref() == Some(uid))
        .collect()
}

async fn restart_count(pods: &Api<Pod>) -> i32 {
    pods.get("crasher")
        .await
        .unwrap()
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|c| c.first().map(|c| c.restart_count))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_looping_pod_keeps_a_bounded_number_of_events() {
    let node = FakeNode::start(NODE, "10.244.9.0/24").await;
    let client = node.client.clone();
    let runtime = node.runtime.clone();
    let mut config = node.kubelet_config();
    // Upstream's 10 s doubling to 5 min, scaled down so that 30 restarts take seconds.
    config.backoff_initial = Duration::from_millis(10);
    config.backoff_max = Duration::from_millis(40);
    let kubelet = spawn_kubelet(config).await;

    let pods = node.pods();
    let uid = node
        .create_pod(json!({
            "metadata": {"name": "crasher"},
            "spec": {"containers": [{"name": "app", "image": FAKE_IMAGE}]}
        }))
        .await
        .metadata
        .uid
        .unwrap();

    // Each look kills the running container; looking often keeps the restarts quick.
    let crashed = rkube_testkit::try_poll(
        Duration::from_millis(20),
        Duration::from_secs(120),
        || async {
            for c in runtime.list().await.unwrap() {
                let ours = c.labels.get(labels::POD_UID) == Some(&uid);
                if ours && matches!(c.state, ContainerState::Running { .. }) {
                    runtime.exit(&c.id, 1).unwrap();
                }
            }
            Ok((restart_count(&pods).await >= RESTARTS).then_some(()))
        },
        || TimedOut,
    )
    .await;
    assert!(
        crashed.is_ok(),
        "only {} restarts",
        restart_count(&pods).await
    );
    let restarts = restart_count(&pods).await as usize;

    // The kubelet writes events in the background: wait until what it has written adds up
    // to the occurrences the rate limit lets through (its burst), then look.
    let events = rkube_testkit::poll_for(Duration::from_secs(30), || async {
        let events = events_about(&client, &uid).await;
        let total: i32 = events.iter().map(|e| e.count.unwrap_or(1)).sum();
        (total >= 25).then_some(events)
    })
    .await;
    let events = match events {
        Ok(events) => events,
        Err(TimedOut) => panic!(
            "the Events never added up to the rate limit's burst: {:#?}",
            events_about(&client, &uid).await
        ),
    };
    let kinds: BTreeSet<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e.reason.clone().unwrap_or_default(),
                e.message.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert!(
        events.len() <= EVENTS_PER_RESTART,
        "{} Event objects after {restarts} restarts ({} occurrences): {kinds:#?}",
        events.len(),
        restarts * EVENTS_PER_RESTART
    );
    assert_eq!(kinds.len(), events.len(), "one object per kind of event");
    let started = events
        .iter()
        .find(|e| e.reason.as_deref() == Some("Started"))
        .unwrap_or_else(|| panic!("no Started event: {kinds:#?}"));
    assert!(
        started.count.unwrap_or(1) > 1,
        "repeats are counted on the first Event: {started:#?}"
    );
    assert!(started.last_timestamp >= started.first_timestamp);
    println!(
        "{restarts} restarts, {} occurrences: {} Event objects, counts {:?}",
        restarts * EVENTS_PER_RESTART,
        events.len(),
        events
            .iter()
            .map(|e| (e.reason.clone().unwrap_or_default(), e.count.unwrap_or(1)))
            .collect::<Vec<_>>()
    );

    kubelet.stop().await;
    node.stop().await;
}
