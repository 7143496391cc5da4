//! Simulated nodes against an in-process API server.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::Api;
use rkube_simnode::{NodeTemplate, SimCluster, SimConfig, NODE_LEASE_NAMESPACE};
use rkube_testkit::wait_for;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_register_ready_and_a_stopped_node_stops_renewing() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let config = rkube_apiserver::Config::new(rkube_apiserver::StorageConfig::Embedded {
        data_dir: dir.path().to_path_buf(),
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(rkube_apiserver::run(config, listener, async move {
        let _ = stopped.await;
    }));
    let client = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    wait_for("the API server to come up", WAIT, || async {
        namespaces.get(NODE_LEASE_NAMESPACE).await.is_ok()
    })
    .await;
    let config = SimConfig {
        renew_interval: Duration::from_millis(300),
        ..SimConfig::default()
    };
    let template = NodeTemplate {
        cpu: "2".into(),
        memory: "8Gi".into(),
        pods: 20,
        ..NodeTemplate::default()
    }
    .with_label("zone", "a");
    let cluster = SimCluster::start_with(client.clone(), config, 2, template)
        .await
        .unwrap();
    let names = cluster.node_names();
    assert_eq!(names.len(), 2);

    let nodes: Api<Node> = Api::all(client.clone());
    let node = nodes.get(&names[0]).await.unwrap();
    let status = node.status.unwrap();
    assert_eq!(status.allocatable.unwrap()["cpu"].0, "2");
    let ready = status
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "True");
    assert_eq!(status.node_info.unwrap().kubelet_version, "v1.32.0");
    assert_eq!(node.metadata.labels.unwrap()["zone"], "a");

    let leases: Api<Lease> = Api::namespaced(client.clone(), NODE_LEASE_NAMESPACE);
    let renew_time = |lease: Lease| {
        lease
            .spec
            .and_then(|s| s.renew_time)
            .map(|t| t.0.to_string())
    };
    let renewals_at_stop = cluster.stats().lease_renewals;
    cluster.stop_node(&names[0]).unwrap();
    assert!(!cluster.is_running(&names[0]));
    // A renewal of the stopped node's lease already under way may still land. Renewal rounds
    // run one after another, and the round under way adds at most two (one per node): a third
    // renewal is from a later round, so by then the one under way has finished.
    wait_for(
        "a renewal round that began after the stop",
        WAIT,
        || async { cluster.stats().lease_renewals >= renewals_at_stop + 3 },
    )
    .await;
    let dead_before = renew_time(leases.get(&names[0]).await.unwrap());
    let live_before = renew_time(leases.get(&names[1]).await.unwrap());
    assert!(dead_before.is_some() && live_before.is_some());
    wait_for("the live node's lease renewed", WAIT, || async {
        renew_time(leases.get(&names[1]).await.unwrap()) != live_before
    })
    .await;
    // Two more live renewals, then the stopped node's lease must still be where it was.
    let stats = cluster.stats().lease_renewals;
    wait_for("two more lease renewals", WAIT, || async {
        cluster.stats().lease_renewals >= stats + 2
    })
    .await;
    assert_eq!(
        renew_time(leases.get(&names[0]).await.unwrap()),
        dead_before
    );
    assert!(cluster.stop_node("no-such-node").is_err());

    cluster.shutdown().await;
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
