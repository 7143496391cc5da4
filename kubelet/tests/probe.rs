//! Probes against real local servers: an axum app for httpGet, TCP listeners, and a
//! scripted runtime for exec.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use common::ScriptedRuntime;
use k8s_openapi::api::core::v1::{ExecAction, HTTPGetAction, HTTPHeader, Probe, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rkube_cri::RuntimeError;
use rkubelet::probe::{run, ProbeResult, ProbeTarget};

/// Exec: `ok` exits 0, `fail` prints and exits 1, `hang` never ends; returns the commands
/// it was asked to run.
fn target(pod_ip: Option<&str>) -> (ProbeTarget, Arc<Mutex<Vec<Vec<String>>>>) {
    let commands = Arc::new(Mutex::new(Vec::new()));
    let recorded = commands.clone();
    let runtime = ScriptedRuntime::with_exec("c1", move |config, io| {
        recorded.lock().unwrap().push(config.command.clone());
        Box::pin(async move {
            match config.command[0].as_str() {
                "ok" => Ok(0),
                "fail" => {
                    let _ = io.stdout.send(Bytes::from_static(b"not healthy: ")).await;
                    let _ = io
                        .stderr
                        .unwrap()
                        .send(Bytes::from_static(b"disk full\n"))
                        .await;
                    Ok(1)
                }
                "hang" => std::future::pending().await,
                other => Err(RuntimeError::Start(format!("{other}: not found"))),
            }
        })
    });
    let target = ProbeTarget {
        pod_ip: pod_ip.map(str::to_string),
        container_id: "c1".into(),
        runtime: Arc::new(runtime),
    };
    (target, commands)
}

fn exec_probe(command: &[&str]) -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: Some(command.iter().map(|s| s.to_string()).collect()),
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn exec_probe_passes_on_exit_zero_and_fails_with_the_output() {
    let (target, commands) = target(None);
    assert_eq!(
        run(&exec_probe(&["ok", "--check"]), &target).await,
        ProbeResult::Success
    );
    assert_eq!(commands.lock().unwrap()[0], vec!["ok", "--check"]);
    assert_eq!(
        run(&exec_probe(&["fail"]), &target).await,
        ProbeResult::Failure("not healthy: disk full\n".into())
    );
    match run(&exec_probe(&["missing"]), &target).await {
        ProbeResult::Failure(message) => {
            assert!(message.contains("missing: not found"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn exec_probe_times_out() {
    let (target, _) = target(None);
    let mut probe = exec_probe(&["hang", "forever"]);
    probe.timeout_seconds = Some(1);
    assert_eq!(
        run(&probe, &target).await,
        ProbeResult::Failure("command \"hang forever\" timed out".into())
    );
}

/// Serves /ok (200, records headers), /fail (500), /redirect (302 to /ok), /slow (never answers in time).
async fn http_server() -> (SocketAddr, Arc<Mutex<Vec<HeaderMap>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorder = seen.clone();
    let app = Router::new()
        .route(
            "/ok",
            get(move |headers: HeaderMap| {
                let recorder = recorder.clone();
                async move {
                    recorder.lock().unwrap().push(headers);
                    "fine"
                }
            }),
        )
        .route(
            "/fail",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "broken") }),
        )
        .route(
            "/redirect",
            get(|| async { (StatusCode::FOUND, [("location", "/ok")]) }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (address, seen)
}

fn http_probe(port: u16, path: &str) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            port: IntOrString::Int(i32::from(port)),
            path: Some(path.into()),
            ..Default::default()
        }),
        timeout_seconds: Some(1),
        ..Default::default()
    }
}

#[tokio::test]
async fn http_probe_success_sends_upstream_headers_and_probe_headers() {
    let (address, seen) = http_server().await;
    let (target, _) = target(Some("127.0.0.1"));
    assert_eq!(
        run(&http_probe(address.port(), "/ok"), &target).await,
        ProbeResult::Success
    );
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0]["user-agent"], "kube-probe/1.32");
        assert_eq!(seen[0]["accept"], "*/*");
    }

    let mut probe = http_probe(address.port(), "/ok");
    probe.http_get.as_mut().unwrap().http_headers = Some(vec![
        HTTPHeader {
            name: "X-Custom".into(),
            value: "yes".into(),
        },
        HTTPHeader {
            name: "User-Agent".into(),
            value: "mine".into(),
        },
    ]);
    // A numeric string port is a port number.
    probe.http_get.as_mut().unwrap().port = IntOrString::String(address.port().to_string());
    assert_eq!(run(&probe, &target).await, ProbeResult::Success);
    let seen = seen.lock().unwrap();
    assert_eq!(seen[1]["x-custom"], "yes");
    let agents: Vec<_> = seen[1].get_all("user-agent").iter().collect();
    assert_eq!(agents, vec!["mine"]);
}

#[tokio::test]
async fn http_probe_follows_redirects_and_fails_on_500() {
    let (address, _) = http_server().await;
    let (target, _) = target(Some("127.0.0.1"));
    assert_eq!(
        run(&http_probe(address.port(), "/redirect"), &target).await,
        ProbeResult::Success
    );
    assert_eq!(
        run(&http_probe(address.port(), "/fail"), &target).await,
        ProbeResult::Failure("HTTP probe failed with statuscode: 500".into())
    );
}

#[tokio::test]
async fn http_probe_connection_refused_reads_like_upstream() {
    // A port that was just free: bind, note it, close.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let (target, _) = target(Some("127.0.0.1"));
    assert_eq!(
        run(&http_probe(port, "/healthz"), &target).await,
        ProbeResult::Failure(format!(
            "Get \"http://127.0.0.1:{port}/healthz\": dial tcp 127.0.0.1:{port}: connect: connection refused"
        ))
    );
}

#[tokio::test]
async fn http_probe_times_out() {
    let (address, _) = http_server().await;
    let (target, _) = target(Some("127.0.0.1"));
    assert_eq!(
        run(&http_probe(address.port(), "/slow"), &target).await,
        ProbeResult::Failure(format!(
            "Get \"http://127.0.0.1:{}/slow\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)",
            address.port()
        ))
    );
}

#[tokio::test]
async fn http_probe_uses_the_explicit_host_and_needs_an_address() {
    let (address, _) = http_server().await;
    let (no_ip, _) = target(None);
    assert_eq!(
        run(&http_probe(address.port(), "/ok"), &no_ip).await,
        ProbeResult::Unknown
    );
    let mut probe = http_probe(address.port(), "/ok");
    probe.http_get.as_mut().unwrap().host = Some("127.0.0.1".into());
    assert_eq!(run(&probe, &no_ip).await, ProbeResult::Success);

    let mut named = http_probe(address.port(), "/ok");
    named.http_get.as_mut().unwrap().port = IntOrString::String("http".into());
    let (with_ip, _) = target(Some("127.0.0.1"));
    assert_eq!(
        run(&named, &with_ip).await,
        ProbeResult::Failure("port http not found".into())
    );
}

fn tcp_probe(port: u16) -> Probe {
    Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::Int(i32::from(port)),
            host: None,
        }),
        timeout_seconds: Some(1),
        ..Default::default()
    }
}

#[tokio::test]
async fn tcp_probe_connects_or_reports_refused() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (target, _) = target(Some("127.0.0.1"));
    assert_eq!(run(&tcp_probe(port), &target).await, ProbeResult::Success);
    drop(listener);
    assert_eq!(
        run(&tcp_probe(port), &target).await,
        ProbeResult::Failure(format!(
            "dial tcp 127.0.0.1:{port}: connect: connection refused"
        ))
    );
}

#[tokio::test]
async fn probe_without_handler_is_unknown() {
    let (target, _) = target(Some("127.0.0.1"));
    assert_eq!(run(&Probe::default(), &target).await, ProbeResult::Unknown);
}
