//! The kubelet on a private containerd with CNI (as root): a subPath is mounted from
//! beneath its volume (and one that a symlink leads out of is refused), and what a pod
//! deleted while the kubelet was down leaves behind (containers, network, cgroups, pod
//! directory) is removed when the kubelet starts again.

mod common;

use common::{
    pod_cgroups, spawn_kubelet, status_of, wait_for_status, RealNode, RealNodeParams, WAIT,
};
use kube::api::DeleteParams;
use rkube_cri::PodNetwork;
use serde_json::json;

const NODE: &str = "safety-node";
const IMAGE: &str = "busybox:rkube-e2e";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sub_paths_stay_in_their_volume_and_pods_deleted_while_down_are_swept() {
    let node = RealNode::start(RealNodeParams {
        node: NODE,
        image: IMAGE,
        name_prefix: "rks",
        // Distinct from e2e_containerd.rs (10.200-249.x) so both can run at once.
        cidr_octet_base: 150,
    })
    .await;
    let kubelet = spawn_kubelet(node.kubelet_config()).await;
    let pods = node.pods();

    // A legitimate nested subPath: created inside the volume and mounted from there.
    let writer_uid = node
        .create_pod(json!({
            "metadata": {"name": "writer"},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "volumes": [{"name": "data", "emptyDir": {}}],
                "containers": [{
                    "name": "main", "image": IMAGE,
                    "command": ["sh", "-c", "echo written-through-subpath > /sub/file; sleep 3600"],
                    "volumeMounts": [{"name": "data", "mountPath": "/sub", "subPath": "nested/dir"}]
                }]
            }
        }))
        .await
        .metadata
        .uid
        .unwrap();
    let written = node
        .dir
        .path()
        .join("kubelet/pods")
        .join(&writer_uid)
        .join("volumes/data/nested/dir/file");
    let wrote = rkube_testkit::poll_until(WAIT, || async {
        std::fs::read_to_string(&written).ok().as_deref() == Some("written-through-subpath\n")
    })
    .await;
    assert!(
        wrote.is_ok(),
        "the container never wrote through its subPath: {:#}",
        status_of(&pods, "writer").await
    );

    // An init container plants a symlink to / in the volume; the subPath through it is
    // refused instead of bind-mounting the host's /etc.
    node.create_pod(json!({
        "metadata": {"name": "escaper"},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "volumes": [{"name": "data", "emptyDir": {}}],
            "initContainers": [{
                "name": "plant", "image": IMAGE,
                "command": ["ln", "-s", "/", "/data/escape"],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}]
            }],
            "containers": [{
                "name": "main", "image": IMAGE, "command": ["sleep", "3600"],
                "volumeMounts": [{"name": "data", "mountPath": "/host-etc", "subPath": "escape/etc"}]
            }]
        }
    }))
    .await;
    let refused = wait_for_status(&pods, "escaper", "its escaping subPath refused", |s| {
        s["containerStatuses"][0]["state"]["waiting"]["reason"] == "CreateContainerConfigError"
    })
    .await["containerStatuses"][0]["state"]["waiting"]
        .clone();
    let message = refused["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("subPath \"escape/etc\" is outside of the volume \"data\""),
        "{refused:#}"
    );

    // The kubelet goes down; the writer pod is deleted meanwhile.
    let writer_cgroups = pod_cgroups(&writer_uid);
    assert!(!writer_cgroups.is_empty(), "the running pod has cgroups");
    assert!(node.network.status(&writer_uid).await.unwrap().is_some());
    kubelet.stop().await;
    pods.delete("writer", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    assert!(pods.get_opt("writer").await.unwrap().is_none());
    assert_eq!(
        node.containers_of(&writer_uid).await.len(),
        1,
        "left running while down"
    );

    // Started again, the kubelet removes all of it.
    let kubelet = spawn_kubelet(node.kubelet_config()).await;
    let pod_dir = node.dir.path().join("kubelet/pods").join(&writer_uid);
    let node_ref = &node;
    let uid_ref = &writer_uid;
    rkube_testkit::wait_for(
        "the deleted pod's leftovers to be removed",
        WAIT,
        move || {
            let node = node_ref;
            let writer_uid = uid_ref.clone();
            let pod_dir = pod_dir.clone();
            async move {
                node.containers_of(&writer_uid).await.is_empty()
                    && node.network.status(&writer_uid).await.unwrap().is_none()
                    && pod_cgroups(&writer_uid).is_empty()
                    && !pod_dir.exists()
            }
        },
    )
    .await;
    assert!(
        node.network
            .list()
            .await
            .unwrap()
            .iter()
            .all(|u| u != &writer_uid),
        "the network state is gone"
    );

    kubelet.stop().await;
    node.clean_up().await;
}
