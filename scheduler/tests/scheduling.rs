//! End to end through a real (in-process) API server with simulated nodes: placement
//! decisions, unschedulable reporting, retries when the cluster changes, restarts.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{pod, pod_with, ApiServer, Env, Scheduler};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use rkube_runtime::events::CorrelatorOptions;
use rkube_scheduler::queue::Backoff;
use rkube_simnode::NodeTemplate;
use serde_json::json;

fn small() -> NodeTemplate {
    NodeTemplate {
        cpu: "1".into(),
        memory: "4Gi".into(),
        ..NodeTemplate::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pods_are_bound_marked_running_and_get_a_scheduled_event() {
    let env = Env::start(3, NodeTemplate::default()).await;
    let nodes = env.nodes.node_names();
    for i in 0..6 {
        env.create_pod(pod(&format!("p{i}"), "100m")).await;
    }
    for i in 0..6 {
        let node = env.wait_bound(&format!("p{i}")).await;
        assert!(nodes.contains(&node), "{node} is not a simulated node");
    }
    let event = env.wait_event("p0", "Scheduled", None).await;
    assert_eq!(event.type_.as_deref(), Some("Normal"));
    assert_eq!(
        event.source.as_ref().and_then(|s| s.component.as_deref()),
        Some("default-scheduler")
    );
    let node = env.wait_bound("p0").await;
    assert_eq!(
        event.message.as_deref(),
        Some(format!("Successfully assigned default/p0 to {node}").as_str())
    );
    // The simulated kubelet takes it from there.
    rkube_testkit::wait_for("p0 to run", common::WAIT, || async {
        let p = env.pods().get("p0").await.unwrap();
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
    })
    .await;
    let p = env.pods().get("p0").await.unwrap();
    let conditions = p.status.unwrap().conditions.unwrap();
    let scheduled = conditions
        .iter()
        .find(|c| c.type_ == "PodScheduled")
        .unwrap();
    assert_eq!(scheduled.status, "True");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unschedulable_pod_explains_why_and_is_placed_once_a_node_is_added() {
    let env = Env::start(2, small()).await;
    let control_plane = NodeTemplate {
        cpu: "8".into(),
        ..NodeTemplate::default()
    }
    .with_label("node-role.kubernetes.io/control-plane", "")
    .with_taint("node-role.kubernetes.io/control-plane", "", "NoSchedule");
    env.nodes.add_nodes(1, &control_plane).await.unwrap();
    env.create_pod(pod("big", "2")).await;
    let message = "0/3 nodes are available: 1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }, 2 Insufficient cpu.";
    env.wait_unschedulable("big", message).await;
    let event = env
        .wait_event("big", "FailedScheduling", Some(message))
        .await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(event.involved_object.kind.as_deref(), Some("Pod"));
    assert_eq!(
        event.source.as_ref().and_then(|s| s.component.as_deref()),
        Some("default-scheduler")
    );

    let added = env
        .nodes
        .add_nodes(
            1,
            &NodeTemplate {
                cpu: "4".into(),
                ..NodeTemplate::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(env.wait_bound("big").await, added[0]);
    env.stop().await;
}

/// An unschedulable pod is retried again and again (here every few milliseconds); upstream's
/// recorder counts the repeats on one FailedScheduling Event instead of adding an object per
/// attempt, which would only be removed by the API server's --event-ttl.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pod_retried_many_times_keeps_one_failed_scheduling_event_whose_count_grows() {
    let env = Env::start_with(2, NodeTemplate::default(), |config| {
        // Retried without any cluster change, as fast as the queue allows.
        config.backoff = Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(5),
            max_unschedulable: Duration::from_millis(5),
        };
    })
    .await;
    // Every write about the pod, from before its first attempt on.
    let events: Api<Event> = Api::namespaced(env.client.clone(), "default");
    let from = events
        .list_metadata(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut writes = events
        .watch(&WatchParams::default(), &from)
        .await
        .unwrap()
        .boxed();
    env.create_pod(pod_with(
        "nowhere",
        "100m",
        json!({"nodeSelector": {"accelerator": "tpu"}}),
    ))
    .await;
    let message = "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector.";
    env.wait_unschedulable("nowhere", message).await;

    // The recorder's token bucket lets the scheduler write about one pod `spam_burst` times
    // and then once per 5 minutes. Watching every one of those writes sees every Event
    // object the retries can produce for the rest of the test, so nothing is left to chance.
    // Attempts that saw the cluster before both nodes were known explain it differently, so
    // a few Events may exist; one per attempt may not.
    let bound = 3;
    let burst = CorrelatorOptions::default().spam_burst as usize;
    let mut objects = BTreeSet::new();
    let mut written = 0;
    let watched = tokio::time::timeout(common::WAIT, async {
        while written < burst {
            let event = match writes.try_next().await.unwrap() {
                Some(WatchEvent::Added(event) | WatchEvent::Modified(event)) => event,
                Some(_) => continue,
                None => panic!("the watch of Events ended after {written} writes"),
            };
            if event.involved_object.name.as_deref() != Some("nowhere")
                || event.reason.as_deref() != Some("FailedScheduling")
            {
                continue;
            }
            written += 1;
            objects.insert(event.metadata.name.clone().unwrap_or_default());
            assert!(
                objects.len() <= bound,
                "{} FailedScheduling Events for one pod after {written} writes: {objects:?}",
                objects.len()
            );
        }
    })
    .await;
    assert!(
        watched.is_ok(),
        "saw {written} of the {burst} writes the recorder may make: {objects:?}"
    );

    let events = env.events_for("nowhere", "FailedScheduling").await;
    let counts: Vec<(Option<String>, Option<i32>)> = events
        .iter()
        .map(|e| (e.message.clone(), e.count))
        .collect();
    assert!(events.len() <= bound, "{counts:?}");
    let with_message: Vec<&Event> = events
        .iter()
        .filter(|e| e.message.as_deref() == Some(message))
        .collect();
    assert_eq!(with_message.len(), 1, "{counts:?}");
    let event = with_message[0];
    // Most of the writes were repeats counted on this one Event.
    let counted = 20;
    assert!(
        event.count.unwrap_or(0) >= counted,
        "no FailedScheduling Event reached count {counted}: {counts:?}"
    );
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(
        event.source.as_ref().and_then(|s| s.component.as_deref()),
        Some("default-scheduler")
    );
    let (first, last) = (
        event.first_timestamp.clone().map(|t| t.0),
        event.last_timestamp.clone().map(|t| t.0),
    );
    assert!(
        first.is_some() && first <= last,
        "a counted Event keeps its first timestamp: {event:?}"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exhausted_cpu_reports_insufficient_cpu_and_frees_up_on_delete() {
    let env = Env::start(2, small()).await;
    env.create_pod(pod("a", "600m")).await;
    env.create_pod(pod("b", "600m")).await;
    let (na, nb) = (env.wait_bound("a").await, env.wait_bound("b").await);
    assert_ne!(na, nb, "600m + 600m does not fit one 1-cpu node");
    env.create_pod(pod("c", "600m")).await;
    env.wait_unschedulable("c", "0/2 nodes are available: 2 Insufficient cpu.")
        .await;
    // Deleting a pod frees its cpu; the simulated kubelet finishes the deletion, and the scheduler retries.
    env.pods().delete("a", &Default::default()).await.unwrap();
    assert_eq!(env.wait_bound("c").await, na);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn taints_tolerations_and_node_selectors_decide_placement() {
    let env = Env::start(2, NodeTemplate::default()).await;
    let gpu = NodeTemplate::default()
        .with_label("accelerator", "gpu")
        .with_taint("dedicated", "gpu", "NoSchedule");
    let gpu_nodes = env.nodes.add_nodes(2, &gpu).await.unwrap();
    let soft = NodeTemplate::default()
        .with_label("tier", "soft")
        .with_taint("avoid", "", "PreferNoSchedule");
    let soft_nodes = env.nodes.add_nodes(1, &soft).await.unwrap();
    for i in 0..6 {
        env.create_pod(pod(&format!("plain{i}"), "100m")).await;
    }
    let toleration =
        json!([{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]);
    for i in 0..3 {
        env.create_pod(pod_with(
            &format!("trainer{i}"),
            "100m",
            json!({"tolerations": toleration, "nodeSelector": {"accelerator": "gpu"}}),
        ))
        .await;
    }
    for i in 0..6 {
        let node = env.wait_bound(&format!("plain{i}")).await;
        assert!(
            !gpu_nodes.contains(&node),
            "plain{i} landed on tainted {node}"
        );
        assert!(
            !soft_nodes.contains(&node),
            "plain{i} landed on PreferNoSchedule {node} while clean nodes had room"
        );
    }
    for i in 0..3 {
        let node = env.wait_bound(&format!("trainer{i}")).await;
        assert!(gpu_nodes.contains(&node), "trainer{i} landed on {node}");
    }
    // A selector nothing matches.
    env.create_pod(pod_with(
        "nowhere",
        "100m",
        json!({"nodeSelector": {"accelerator": "tpu"}}),
    ))
    .await;
    env.wait_unschedulable(
        "nowhere",
        "0/5 nodes are available: 2 node(s) had untolerated taint {dedicated: gpu}, 3 node(s) didn't match Pod's node affinity/selector.",
    )
    .await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_affinity_required_and_preferred() {
    let env = Env::start(0, NodeTemplate::default()).await;
    let mut zone_nodes = BTreeMap::new();
    for zone in ["a", "b", "c"] {
        let names = env
            .nodes
            .add_nodes(
                2,
                &NodeTemplate::default().with_label("topology.kubernetes.io/zone", zone),
            )
            .await
            .unwrap();
        zone_nodes.insert(zone, names);
    }
    // Scoring only weighs the nodes the scheduler has seen: a pod placed while its node
    // watch was still delivering zone b could land elsewhere (seen in CI). Nodes arrive in
    // order, so once a pod pinned to the last one is bound, all six are known.
    let last = zone_nodes["c"][1].clone();
    env.create_pod(pod_with(
        "sentinel",
        "10m",
        json!({"nodeSelector": {"kubernetes.io/hostname": last}}),
    ))
    .await;
    assert_eq!(env.wait_bound("sentinel").await, last);
    let required = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "NotIn", "values": ["a", "b"]}]}]}}});
    let preferred = json!({"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 100, "preference": {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["b"]}]}}]}});
    for i in 0..3 {
        env.create_pod(pod_with(
            &format!("req{i}"),
            "100m",
            json!({"affinity": required}),
        ))
        .await;
        env.create_pod(pod_with(
            &format!("pref{i}"),
            "100m",
            json!({"affinity": preferred}),
        ))
        .await;
    }
    for i in 0..3 {
        assert!(zone_nodes["c"].contains(&env.wait_bound(&format!("req{i}")).await));
        assert!(zone_nodes["b"].contains(&env.wait_bound(&format!("pref{i}")).await));
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn required_anti_affinity_keeps_replicas_on_distinct_hosts() {
    let env = Env::start(3, NodeTemplate::default()).await;
    let anti = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"role": "db"}}, "topologyKey": "kubernetes.io/hostname"}]}});
    let db = |name: &str| {
        let mut p = pod_with(name, "100m", json!({"affinity": anti}));
        p["metadata"]["labels"] = json!({"role": "db"});
        p
    };
    for i in 0..3 {
        env.create_pod(db(&format!("db{i}"))).await;
    }
    let mut hosts = Vec::new();
    for i in 0..3 {
        hosts.push(env.wait_bound(&format!("db{i}")).await);
    }
    hosts.sort();
    hosts.dedup();
    assert_eq!(hosts.len(), 3, "two replicas share a host: {hosts:?}");
    env.create_pod(db("db3")).await;
    env.wait_unschedulable(
        "db3",
        "0/3 nodes are available: 3 node(s) didn't satisfy existing pods anti-affinity rules.",
    )
    .await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_of_one_owner_spread_evenly() {
    let env = Env::start(4, NodeTemplate::default()).await;
    // Unrelated load on the first node, so spreading (not only free capacity) decides.
    let first = env.nodes.node_names()[0].clone();
    env.create_pod(pod_with("filler", "100m", json!({"nodeName": first})))
        .await;
    for i in 0..8 {
        let mut p = pod(&format!("web-{i}"), "10m");
        p["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "6f1c9f52-1111-4c3e-9d2b-000000000001", "controller": true}]);
        env.create_pod(p).await;
    }
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..8 {
        *per_node
            .entry(env.wait_bound(&format!("web-{i}")).await)
            .or_default() += 1;
    }
    assert_eq!(per_node.len(), 4, "{per_node:?}");
    assert!(per_node.values().all(|&n| n == 2), "{per_node:?}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pods_for_other_schedulers_are_left_alone() {
    let env = Env::start(1, NodeTemplate::default()).await;
    env.create_pod(pod_with(
        "theirs",
        "100m",
        json!({"schedulerName": "someone-else"}),
    ))
    .await;
    env.create_pod(pod("ours", "100m")).await;
    env.wait_bound("ours").await;
    // Created first and queued in the same watch stream; if it were ours it would be bound by now.
    let theirs = env.pods().get("theirs").await.unwrap();
    assert_eq!(theirs.spec.unwrap().node_name, None);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keeps_scheduling_across_an_api_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let api = ApiServer::start(dir.path(), None).await;
    let addr = api.addr;
    let client = api.client();
    let nodes = rkube_simnode::SimCluster::start(client.clone(), 2, NodeTemplate::default())
        .await
        .unwrap();
    let scheduler = Scheduler::start(api.url()).await;
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(client.clone(), "default");
    let create = |name: &str| {
        serde_json::from_value::<k8s_openapi::api::core::v1::Pod>(pod(name, "100m")).unwrap()
    };
    pods.create(&Default::default(), &create("before"))
        .await
        .unwrap();
    let wait_bound = |name: &'static str| {
        let pods = pods.clone();
        async move {
            rkube_testkit::wait_for(
                &format!("{name} to be bound"),
                Duration::from_secs(60),
                || async {
                    pods.get(name)
                        .await
                        .is_ok_and(|p| p.spec.and_then(|s| s.node_name).is_some())
                },
            )
            .await;
        }
    };
    wait_bound("before").await;
    api.stop().await;
    let api = ApiServer::start(dir.path(), Some(addr)).await;
    pods.create(&Default::default(), &create("after"))
        .await
        .unwrap();
    wait_bound("after").await;
    scheduler.stop().await;
    nodes.shutdown().await;
    api.stop().await;
}
