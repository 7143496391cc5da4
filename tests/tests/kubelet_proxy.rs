//! The API server's proxying of pods/log and pods/exec to the pod's kubelet, driven by the
//! real kubectl. The "kubelet" here is a small stand-in HTTP server that speaks the kubelet's
//! log endpoint and the v5/v4 WebSocket channel protocol; the real kubelet is exercised by
//! the kubelet's own end-to-end tests. What this pins down is the API server side: finding
//! the node's kubelet endpoint, passing streams and upgrades through untouched.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use rkube_e2e::TestCluster;
use serde_json::json;
use std::collections::HashMap;

async fn logs(
    Path((ns, pod, container)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> String {
    let tail = q.get("tailLines").cloned().unwrap_or_else(|| "all".into());
    format!("log of {ns}/{pod}/{container}\ntail={tail}\n")
}

async fn exec(
    ws: WebSocketUpgrade,
    Path((_ns, _pod, container)): Path<(String, String, String)>,
    Query(q): Query<Vec<(String, String)>>,
) -> impl IntoResponse {
    let command: Vec<String> = q
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    ws.protocols(["v5.channel.k8s.io", "v4.channel.k8s.io"])
        .on_upgrade(move |socket| run_exec(socket, container, command))
}

/// Answers like a kubelet running `command`: prints it on stdout, something on stderr, and
/// exits with status 3.
async fn run_exec(mut socket: WebSocket, container: String, command: Vec<String>) {
    let mut stdout = vec![1u8];
    stdout.extend_from_slice(format!("ran {} in {container}\n", command.join(" ")).as_bytes());
    let mut stderr = vec![2u8];
    stderr.extend_from_slice(b"a warning\n");
    let status = json!({"metadata": {}, "status": "Failure", "message": "command terminated with non-zero exit code: exit status 3",
                        "reason": "NonZeroExitCode", "details": {"causes": [{"reason": "ExitCode", "message": "3"}]}});
    let mut status_frame = vec![3u8];
    status_frame.extend_from_slice(status.to_string().as_bytes());
    for frame in [stdout, stderr, status_frame] {
        if socket.send(Message::Binary(frame.into())).await.is_err() {
            return;
        }
    }
    // client-go reads a close without a status code (1005) as an error; a kubelet closes
    // with 1000 (normal closure).
    let _ = socket
        .send(Message::Close(Some(axum::extract::ws::CloseFrame {
            code: 1000,
            reason: "".into(),
        })))
        .await;
}

async fn start_kubelet() -> u16 {
    let app = Router::new()
        .route("/containerLogs/{ns}/{pod}/{container}", get(logs))
        .route("/exec/{ns}/{pod}/{container}", get(exec));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_and_exec_reach_the_kubelet_through_the_api_server() {
    let cluster = TestCluster::start_embedded().await;
    let port = start_kubelet().await;
    let http = cluster.http();
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
        "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}], "daemonEndpoints": {"kubeletEndpoint": {"Port": port}}}});
    let r = http
        .post(format!("{}/api/v1/nodes", cluster.url()))
        .json(&node)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    // Node status is its own subresource; write it there as a kubelet would.
    let mut with_status = r.json::<serde_json::Value>().await.unwrap();
    with_status["status"] = node["status"].clone();
    let r = http
        .put(format!("{}/api/v1/nodes/n1/status", cluster.url()))
        .json(&with_status)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
        "spec": {"nodeName": "n1", "containers": [{"name": "app", "image": "busybox"}]}});
    let r = http
        .post(format!("{}/api/v1/namespaces/default/pods", cluster.url()))
        .json(&pod)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());

    let out = cluster.kubectl_ok(&["logs", "web", "--tail=5"]).await;
    assert_eq!(out, "log of default/web/app\ntail=5\n");

    let out = cluster.kubectl(&["exec", "web", "--", "echo", "hi"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stdout, "ran echo hi in app\n", "stderr: {stderr}");
    assert!(stderr.contains("a warning"), "{stderr}");
    assert_eq!(out.status.code(), Some(3), "stderr: {stderr}");

    // A pod that is not on a node has nowhere to go.
    let pending = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "pending"},
        "spec": {"containers": [{"name": "app", "image": "busybox"}]}});
    http.post(format!("{}/api/v1/namespaces/default/pods", cluster.url()))
        .json(&pending)
        .send()
        .await
        .unwrap();
    let out = cluster.kubectl(&["logs", "pending"]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("pod pending does not have a host assigned"),
        "{stderr}"
    );
}
