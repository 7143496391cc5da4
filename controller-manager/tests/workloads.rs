//! Node lifecycle, endpoints, DaemonSet, Job and StatefulSet controllers end to end, with
//! every real component in-process (API server, scheduler, simulated nodes, controller
//! manager).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use common::{deployment_requesting_cpu as deployment, is_ready, node_of, phase, Env};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use parking_lot::Mutex;
use rkube_simnode::NodeTemplate;
use serde_json::json;

fn ready_condition(node: &Node) -> Option<(String, Option<String>)> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone()))
}

fn has_taint(node: &Node, key: &str) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|ts| ts.iter().any(|t| t.key == key && t.effect == "NoExecute"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unreachable_node_is_tainted_and_its_pods_move_elsewhere() {
    let cluster = Env::with_nodes(3, "*").await;
    cluster
        .create::<Deployment>(deployment("web", 6, "nginx:1"))
        .await;
    let deployments: Api<Deployment> = cluster.api();
    cluster
        .wait_for("6 available", || async {
            deployments
                .get("web")
                .await
                .unwrap()
                .status
                .and_then(|s| s.available_replicas)
                == Some(6)
        })
        .await;
    let pods = cluster.pods("app=web").await;
    let victim_node = node_of(&pods[0]).unwrap().to_string();
    let victims: BTreeSet<String> = pods
        .iter()
        .filter(|p| node_of(p) == Some(victim_node.as_str()))
        .map(|p| p.name_any())
        .collect();
    cluster.nodes().stop_node(&victim_node).unwrap();

    let nodes: Api<Node> = Api::all(cluster.client.clone());
    cluster
        .wait_for("node unreachable and tainted", || async {
            let node = nodes.get(&victim_node).await.unwrap();
            ready_condition(&node) == Some(("Unknown".into(), Some("NodeStatusUnknown".into())))
                && has_taint(&node, "node.kubernetes.io/unreachable")
        })
        .await;
    let node = nodes.get(&victim_node).await.unwrap();
    let message = node.status.unwrap().conditions.unwrap();
    assert!(message.iter().all(|c| c.status == "Unknown"));
    assert_eq!(
        message
            .iter()
            .find(|c| c.type_ == "Ready")
            .and_then(|c| c.message.as_deref()),
        Some("Kubelet stopped posting node status.")
    );

    // The default toleration (2 s in the test config) runs out: the pods are deleted and
    // their ReplicaSet recreates them on the other nodes.
    cluster
        .wait_for("evicted pods replaced on live nodes", || async {
            let pods = cluster.pods("app=web").await;
            let evicted = victims.iter().all(|name| {
                pods.iter()
                    .find(|p| &p.name_any() == name)
                    .is_none_or(|p| p.metadata.deletion_timestamp.is_some())
            });
            let healthy = pods
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter(|p| is_ready(p) && node_of(p) != Some(victim_node.as_str()))
                .count();
            evicted && healthy == 6
        })
        .await;
    // Pods left on the dead node were marked not ready before they were deleted.
    for pod in cluster.pods("app=web").await {
        if node_of(&pod) == Some(victim_node.as_str()) {
            assert!(!is_ready(&pod), "{} still ready", pod.name_any());
        }
    }

    // The kubelet comes back (the test renews the lease in its place): taint removed,
    // conditions restored.
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), "kube-node-lease");
    cluster
        .wait_for("node healthy again", || async {
            let now = k8s_openapi::jiff::Timestamp::now().to_string();
            leases
                .patch(
                    &victim_node,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"renewTime": now}})),
                )
                .await
                .unwrap();
            let node = nodes.get(&victim_node).await.unwrap();
            ready_condition(&node).map(|c| c.0) == Some("True".into())
                && !has_taint(&node, "node.kubernetes.io/unreachable")
        })
        .await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn endpoints_and_slices_follow_pod_readiness() {
    // Pods are placed by hand on a stopped node so the test alone reports their status.
    let cluster = Env::with_nodes(1, "*,-nodelifecycle").await;
    let node = cluster.nodes().node_names()[0].clone();
    cluster.nodes().stop_node(&node).unwrap();
    for (name, ip, port) in [("a", "10.1.0.1", 8080), ("b", "10.1.0.2", 9090)] {
        cluster
            .create::<Pod>(json!({"metadata": {"name": name, "labels": {"app": "web"}},
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "nginx",
                    "ports": [{"name": "http", "containerPort": port}]}]}}))
            .await;
        cluster
            .patch_pod_status(
                name,
                json!({"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                    "conditions": [{"type": "Ready", "status": "True"}]}),
            )
            .await;
    }
    cluster
        .create::<Service>(json!({"metadata": {"name": "web", "labels": {"tier": "front"}},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "web", "port": 80, "targetPort": "http"}]}}))
        .await;
    let endpoints: Api<Endpoints> = cluster.api();
    let slices: Api<EndpointSlice> = cluster.api();
    // (ready ip:port, not-ready ip:port) from the Endpoints object.
    let view = || async {
        let Some(ep) = endpoints.get_opt("web").await.unwrap() else {
            return (BTreeSet::new(), BTreeSet::new());
        };
        let mut ready = BTreeSet::new();
        let mut not_ready = BTreeSet::new();
        for subset in ep.subsets.unwrap_or_default() {
            let port = subset.ports.as_ref().unwrap()[0].port;
            for a in subset.addresses.unwrap_or_default() {
                ready.insert(format!("{}:{port}", a.ip));
            }
            for a in subset.not_ready_addresses.unwrap_or_default() {
                not_ready.insert(format!("{}:{port}", a.ip));
            }
        }
        (ready, not_ready)
    };
    let slice_view = || async {
        let list = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
            .await
            .unwrap();
        let mut out = BTreeMap::new();
        for s in &list.items {
            assert_eq!(s.address_type, "IPv4");
            assert_eq!(
                s.labels()
                    .get("endpointslice.kubernetes.io/managed-by")
                    .map(String::as_str),
                Some("endpointslice-controller.k8s.io")
            );
            let port = s.ports.as_ref().unwrap()[0].port.unwrap();
            for e in &s.endpoints {
                out.insert(
                    format!("{}:{port}", e.addresses[0]),
                    e.conditions.as_ref().unwrap().ready.unwrap(),
                );
            }
        }
        out
    };
    let one = |a: &str| BTreeSet::from([a.to_string()]);
    let both = |a: &str, b: &str| {
        [a.to_string(), b.to_string()]
            .into_iter()
            .collect::<BTreeSet<_>>()
    };
    cluster
        .wait_for("both pods ready in endpoints", || async {
            view().await == (both("10.1.0.1:8080", "10.1.0.2:9090"), BTreeSet::new())
        })
        .await;
    let ep = endpoints.get("web").await.unwrap();
    assert_eq!(ep.labels().get("tier").map(String::as_str), Some("front"));
    let address = ep.subsets.unwrap()[0].addresses.clone().unwrap()[0].clone();
    assert_eq!(address.node_name.as_deref(), Some(node.as_str()));
    assert_eq!(
        address.target_ref.and_then(|r| r.kind).as_deref(),
        Some("Pod")
    );
    cluster
        .wait_for("slices list both as ready", || async {
            slice_view().await
                == BTreeMap::from([
                    ("10.1.0.1:8080".into(), true),
                    ("10.1.0.2:9090".into(), true),
                ])
        })
        .await;

    cluster
        .patch_pod_status(
            "b",
            json!({"conditions": [{"type": "Ready", "status": "False"}]}),
        )
        .await;
    cluster
        .wait_for("b not ready", || async {
            view().await == (one("10.1.0.1:8080"), one("10.1.0.2:9090"))
        })
        .await;
    cluster
        .wait_for("slice endpoint b not ready", || async {
            slice_view().await
                == BTreeMap::from([
                    ("10.1.0.1:8080".into(), true),
                    ("10.1.0.2:9090".into(), false),
                ])
        })
        .await;
    cluster
        .patch_pod_status(
            "b",
            json!({"conditions": [{"type": "Ready", "status": "True"}]}),
        )
        .await;
    cluster
        .wait_for("b ready again", || async {
            view().await == (both("10.1.0.1:8080", "10.1.0.2:9090"), BTreeSet::new())
        })
        .await;
    // A pod whose labels stop matching leaves the endpoints.
    cluster
        .api::<Pod>()
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"app": "other"}}})),
        )
        .await
        .unwrap();
    cluster
        .wait_for("a removed", || async {
            view().await == (one("10.1.0.2:9090"), BTreeSet::new())
                && slice_view().await == BTreeMap::from([("10.1.0.2:9090".into(), true)])
        })
        .await;
    cluster.stop().await;
}

fn daemonset(image: &str) -> serde_json::Value {
    json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}},
            "template": {"metadata": {"labels": {"app": "agent"}},
                "spec": {"containers": [{"name": "c", "image": image}]}}}})
}

async fn one_per_node(cluster: &Env, expected: usize) -> bool {
    let pods: Vec<Pod> = cluster
        .pods("app=agent")
        .await
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let nodes: BTreeSet<&str> = pods.iter().filter_map(node_of).collect();
    pods.len() == expected && nodes.len() == expected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn daemonset_runs_one_pod_per_node_follows_new_nodes_and_rolls() {
    let cluster = Env::with_nodes(3, "*").await;
    cluster.create::<DaemonSet>(daemonset("agent:1")).await;
    let daemonsets: Api<DaemonSet> = cluster.api();
    let settled = |count: i32| {
        let daemonsets = daemonsets.clone();
        async move {
            let ds = daemonsets.get("agent").await.unwrap();
            let s = ds.status.unwrap_or_default();
            s.observed_generation == ds.metadata.generation
                && s.desired_number_scheduled == count
                && s.current_number_scheduled == count
                && s.number_ready == count
                && s.updated_number_scheduled == Some(count)
                && s.number_available == Some(count)
        }
    };
    cluster.wait_for("3 daemons", || settled(3)).await;
    assert!(one_per_node(&cluster, 3).await);
    let pod = &cluster.pods("app=agent").await[0];
    let terms = pod
        .spec
        .as_ref()
        .unwrap()
        .affinity
        .as_ref()
        .unwrap()
        .node_affinity
        .as_ref()
        .unwrap()
        .required_during_scheduling_ignored_during_execution
        .as_ref()
        .unwrap()
        .node_selector_terms
        .clone();
    let field = &terms[0].match_fields.as_ref().unwrap()[0];
    assert_eq!(
        (
            field.key.as_str(),
            field.values.as_ref().unwrap()[0].as_str()
        ),
        ("metadata.name", node_of(pod).unwrap())
    );

    cluster
        .nodes()
        .add_nodes(1, &NodeTemplate::default())
        .await
        .unwrap();
    // A node whose taint the daemon does not tolerate gets none.
    cluster
        .nodes()
        .add_nodes(
            1,
            &NodeTemplate::default().with_taint("dedicated", "db", "NoSchedule"),
        )
        .await
        .unwrap();
    cluster
        .wait_for("4 daemons", || async { settled(4).await })
        .await;
    assert!(one_per_node(&cluster, 4).await);

    daemonsets
        .patch(
            "agent",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "agent:2"}]}}}})),
        )
        .await
        .unwrap();
    cluster
        .wait_for("rolled to agent:2", || async {
            let pods: Vec<Pod> = cluster.pods("app=agent").await;
            settled(4).await
                && pods.len() == 4
                && pods.iter().all(|p| {
                    p.spec.as_ref().unwrap().containers[0].image.as_deref() == Some("agent:2")
                })
        })
        .await;
    cluster.stop().await;
}

/// Acts as the containers of a job: every pod of `job` that is Running and Ready finishes
/// with `phase`. Returns the most pods seen active at once.
async fn finish_job_pods(cluster: &Env, job: &str, phase_to_set: &str, stop_when: i32) -> usize {
    let jobs: Api<Job> = cluster.api();
    let most_active = std::cell::Cell::new(0);
    cluster
        .wait_for(&format!("job {job} to finish"), || async {
            let j = jobs.get(job).await.unwrap();
            if cluster_job_finished(&j) {
                return true;
            }
            let pods = cluster
                .pods(&format!("batch.kubernetes.io/job-name={job}"))
                .await;
            let active: Vec<&Pod> = pods
                .iter()
                .filter(|p| {
                    p.metadata.deletion_timestamp.is_none()
                        && !matches!(phase(p), Some("Succeeded") | Some("Failed"))
                })
                .collect();
            most_active.set(most_active.get().max(active.len()));
            let done = pods
                .iter()
                .filter(|p| phase(p) == Some(phase_to_set))
                .count();
            for pod in active {
                if is_ready(pod) && i32::try_from(done).unwrap() < stop_when {
                    let exit = if phase_to_set == "Succeeded" { 0 } else { 1 };
                    cluster
                        .patch_pod_status(
                            &pod.name_any(),
                            json!({"phase": phase_to_set, "conditions": [{"type": "Ready", "status": "False"}],
                                "containerStatuses": [{"name": "c", "image": "busybox", "imageID": "", "ready": false, "restartCount": 0,
                                    "state": {"terminated": {"exitCode": exit, "reason": if exit == 0 {"Completed"} else {"Error"}}}}]}),
                        )
                        .await;
                    break;
                }
            }
            false
        })
        .await;
    most_active.get()
}

fn cluster_job_finished(job: &Job) -> bool {
    rkube_controller_manager::job::is_finished(job)
}

fn condition(job: &Job, type_: &str) -> Option<(String, Option<String>)> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn job_completes_with_parallelism_and_fails_past_its_backoff_limit() {
    let cluster = Env::with_nodes(2, "*").await;
    cluster
        .create::<Job>(json!({"metadata": {"name": "work"}, "spec": {"completions": 3, "parallelism": 2,
            "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}}))
        .await;
    let most_active = finish_job_pods(&cluster, "work", "Succeeded", 3).await;
    assert!(most_active <= 2, "{most_active} pods ran at once");
    let jobs: Api<Job> = cluster.api();
    let job = jobs.get("work").await.unwrap();
    assert_eq!(
        condition(&job, "Complete"),
        Some(("True".into(), Some("CompletionsReached".into())))
    );
    let status = job.status.unwrap();
    assert_eq!(status.succeeded, Some(3));
    assert!(status.completion_time.is_some() && status.start_time.is_some());
    assert_eq!(status.active, None);
    for pod in cluster.pods("batch.kubernetes.io/job-name=work").await {
        assert!(pod
            .labels()
            .contains_key("batch.kubernetes.io/controller-uid"));
    }

    cluster
        .create::<Job>(json!({"metadata": {"name": "flaky"}, "spec": {"backoffLimit": 1,
            "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}}))
        .await;
    finish_job_pods(&cluster, "flaky", "Failed", 2).await;
    let job = jobs.get("flaky").await.unwrap();
    assert_eq!(
        condition(&job, "Failed"),
        Some(("True".into(), Some("BackoffLimitExceeded".into())))
    );
    assert_eq!(job.status.unwrap().failed, Some(2));
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn statefulset_creates_in_order_and_scales_down_in_reverse() {
    let cluster = Env::with_nodes(2, "*").await;
    // Record, from a watch, the order pods appear and start terminating, and whether every
    // lower ordinal was ready when a pod appeared.
    let appeared: Arc<Mutex<Vec<String>>> = Arc::default();
    let terminating: Arc<Mutex<Vec<String>>> = Arc::default();
    let violations: Arc<Mutex<Vec<String>>> = Arc::default();
    let pods_api: Api<Pod> = cluster.api();
    let watch = {
        let (appeared, terminating, violations) =
            (appeared.clone(), terminating.clone(), violations.clone());
        tokio::spawn(async move {
            let mut ready: BTreeMap<String, bool> = BTreeMap::new();
            let config = watcher::Config::default().labels("app=web");
            let mut events = std::pin::pin!(watcher::watcher(pods_api, config));
            while let Some(event) = events.next().await {
                let pod = match event {
                    Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p)) => p,
                    _ => continue,
                };
                let name = pod.name_any();
                if !ready.contains_key(&name) {
                    let ordinal: usize = name.trim_start_matches("web-").parse().unwrap();
                    for lower in 0..ordinal {
                        if ready.get(&format!("web-{lower}")) != Some(&true) {
                            violations
                                .lock()
                                .push(format!("{name} before web-{lower} was ready"));
                        }
                    }
                    appeared.lock().push(name.clone());
                }
                if pod.metadata.deletion_timestamp.is_some() {
                    let mut t = terminating.lock();
                    if !t.contains(&name) {
                        t.push(name.clone());
                    }
                }
                ready.insert(
                    name,
                    is_ready(&pod) && pod.metadata.deletion_timestamp.is_none(),
                );
            }
        })
    };
    cluster
        .create::<StatefulSet>(json!({"metadata": {"name": "web"}, "spec": {"replicas": 3, "serviceName": "web",
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "nginx:1"}]}}}}))
        .await;
    let sets: Api<StatefulSet> = cluster.api();
    let settled = |replicas: i32| {
        let sets = sets.clone();
        async move {
            let s = sets.get("web").await.unwrap();
            let st = s.status.unwrap_or_default();
            st.observed_generation == s.metadata.generation
                && st.replicas == replicas
                && st.ready_replicas == Some(replicas)
                && st.updated_replicas == Some(replicas)
                && st.current_replicas == Some(replicas)
                && st.current_revision == st.update_revision
        }
    };
    cluster.wait_for("3 ready", || settled(3)).await;
    assert_eq!(*appeared.lock(), vec!["web-0", "web-1", "web-2"]);
    assert!(violations.lock().is_empty(), "{:?}", violations.lock());
    let web1 = cluster.api::<Pod>().get("web-1").await.unwrap();
    let spec = web1.spec.unwrap();
    assert_eq!(spec.hostname.as_deref(), Some("web-1"));
    assert_eq!(spec.subdomain.as_deref(), Some("web"));

    sets.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await
    .unwrap();
    cluster
        .wait_for("scaled to 1", || async {
            settled(1).await && cluster.pods("app=web").await.len() == 1
        })
        .await;
    assert_eq!(*terminating.lock(), vec!["web-2", "web-1"]);

    // A template change replaces the remaining pod at the new revision.
    let before = sets
        .get("web")
        .await
        .unwrap()
        .status
        .unwrap()
        .update_revision;
    sets.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "nginx:2"}]}}}})),
    )
    .await
    .unwrap();
    cluster
        .wait_for("rolled to nginx:2", || async {
            let pod = cluster.api::<Pod>().get_opt("web-0").await.unwrap();
            settled(1).await
                && pod.is_some_and(|p| {
                    p.spec.unwrap().containers[0].image.as_deref() == Some("nginx:2")
                        && is_ready_ok(&p.status)
                })
        })
        .await;
    assert_ne!(
        sets.get("web")
            .await
            .unwrap()
            .status
            .unwrap()
            .update_revision,
        before
    );
    watch.abort();
    cluster.stop().await;
}

fn is_ready_ok(status: &Option<k8s_openapi::api::core::v1::PodStatus>) -> bool {
    status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
