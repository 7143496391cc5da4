//! Events expire after `event_ttl`: the sweeper deletes those whose latest timestamp is
//! older, through the delete handler, so watchers see DELETED; other objects stay.

mod common;

use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use chrono::{SecondsFormat, Utc};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rkube_apiserver::{event_ttl, Config, StorageConfig};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use common::Harness;

const HOUR: Duration = Duration::from_secs(3600);
const WAIT: Duration = Duration::from_secs(30);

fn rfc3339(t: chrono::DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn event(name: &str, fields: Value) -> Value {
    let mut e = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": "default"},
        "involvedObject": {"kind": "Pod", "name": "p", "namespace": "default", "uid": "u"},
        "reason": "Started",
        "message": "Started container app",
        "type": "Normal",
        "source": {"component": "kubelet"},
        "count": 1,
    });
    if let (Some(e), Some(f)) = (e.as_object_mut(), fields.as_object()) {
        for (k, v) in f {
            e.insert(k.clone(), v.clone());
        }
    }
    e
}

/// Sends lines of a watch response body (one JSON event each) to a channel.
fn forward_lines<B>(body: B) -> mpsc::UnboundedReceiver<Value>
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Debug,
{
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut body = body;
        let mut buffer = Vec::new();
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buffer.extend_from_slice(&data);
            while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                if let Ok(v) = serde_json::from_slice::<Value>(&line) {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

async fn next_deleted(watch: &mut mpsc::UnboundedReceiver<Value>) -> String {
    loop {
        let event = tokio::time::timeout(WAIT, watch.recv())
            .await
            .expect("no DELETED event in time")
            .expect("watch ended");
        if event["type"] == "DELETED" {
            return event["object"]["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_string();
        }
    }
}

impl Harness {
    async fn event_names(&self) -> Vec<String> {
        let (status, list) = self.get("/api/v1/namespaces/default/events").await;
        assert_eq!(status, 200, "{list}");
        let mut names: Vec<String> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    }
}

#[tokio::test]
async fn events_expire_a_ttl_after_their_latest_timestamp_and_watchers_see_it() {
    let h = Harness::new().await;
    let base = Utc::now();
    let at = |minutes: i64| base + chrono::Duration::minutes(minutes);
    let micro = |t: chrono::DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Micros, true);
    let events = [
        event(
            "stale",
            json!({"firstTimestamp": rfc3339(at(-120)), "lastTimestamp": rfc3339(at(-120))}),
        ),
        // Repeated half an hour after it was created (the recorder patches lastTimestamp).
        event(
            "repeated",
            json!({"firstTimestamp": rfc3339(at(-120)), "lastTimestamp": rfc3339(at(30)), "count": 40}),
        ),
        // As the events.k8s.io API writes them: eventTime and series, no lastTimestamp.
        event(
            "series",
            json!({"eventTime": micro(at(-120)), "series": {"count": 3, "lastObservedTime": micro(at(30))},
                   "reportingComponent": "kubelet", "reportingInstance": "n", "action": "Started"}),
        ),
        // Only old timestamps of its own: the server's creationTimestamp (now) is the latest.
        event(
            "single",
            json!({"eventTime": micro(at(-120)), "reportingComponent": "kubelet", "reportingInstance": "n", "action": "Started"}),
        ),
    ];
    for e in &events {
        let (status, body) = h.json("POST", "/api/v1/namespaces/default/events", e).await;
        assert_eq!(status, 201, "{body}");
    }
    let config_map = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "keep"}});
    let (status, _) = h
        .json("POST", "/api/v1/namespaces/default/configmaps", &config_map)
        .await;
    assert_eq!(status, 201);
    let (_, list) = h.get("/api/v1/namespaces/default/events").await;
    let rv = list["metadata"]["resourceVersion"].as_str().unwrap();
    let response = h
        .request(
            "GET",
            &format!("/api/v1/namespaces/default/events?watch=true&resourceVersion={rv}"),
            "application/json",
            Body::empty(),
        )
        .await;
    assert_eq!(response.status(), 200);
    let mut watch = forward_lines(response.into_body());

    // Nothing is an hour old yet.
    assert_eq!(event_ttl::sweep_once(&h.state, HOUR, at(0)).await, 0);
    assert_eq!(h.event_names().await.len(), 4);

    // 70 minutes on: what last happened at creation is gone, what repeated later stays.
    assert_eq!(event_ttl::sweep_once(&h.state, HOUR, at(70)).await, 2);
    let mut deleted = vec![
        next_deleted(&mut watch).await,
        next_deleted(&mut watch).await,
    ];
    deleted.sort();
    assert_eq!(deleted, ["single", "stale"]);
    assert_eq!(h.event_names().await, ["repeated", "series"]);
    assert_eq!(event_ttl::sweep_once(&h.state, HOUR, at(70)).await, 0);

    // Two hours on, everything has expired; other kinds are never touched.
    assert_eq!(event_ttl::sweep_once(&h.state, HOUR, at(120)).await, 2);
    let mut deleted = vec![
        next_deleted(&mut watch).await,
        next_deleted(&mut watch).await,
    ];
    deleted.sort();
    assert_eq!(deleted, ["repeated", "series"]);
    assert!(h.event_names().await.is_empty());
    let (status, _) = h.get("/api/v1/namespaces/default/configmaps/keep").await;
    assert_eq!(status, 200);
}

// ---------------------------------------------------------------------------------------
// Through `run`, on both backends, with a short TTL.

async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, hyper::body::Incoming) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            body.map(Value::to_string).unwrap_or_default(),
        )))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    (response.status().as_u16(), response.into_body())
}

async fn http_json(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let (status, body) = http(addr, method, path, body).await;
    let bytes = body.collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn expires_through_run(storage: StorageConfig) {
    let mut config = Config::new(storage);
    config.event_ttl = Duration::from_secs(2);
    config.event_sweep_interval = Duration::from_millis(100);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(rkube_apiserver::run(config, listener, async move {
        let _ = stopped.await;
    }));
    rkube_testkit::wait_for("the server to come up", WAIT, || async {
        http_json(addr, "GET", "/api/v1/namespaces/default", None)
            .await
            .0
            == 200
    })
    .await;
    let (status, list) = http_json(addr, "GET", "/api/v1/namespaces/default/events", None).await;
    assert_eq!(status, 200, "{list}");
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, body) = http(
        addr,
        "GET",
        &format!("/api/v1/namespaces/default/events?watch=true&resourceVersion={rv}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let mut watch = forward_lines(body);
    let now = rfc3339(Utc::now());
    let (status, body) = http_json(
        addr,
        "POST",
        "/api/v1/namespaces/default/events",
        Some(&event(
            "short-lived",
            json!({"firstTimestamp": now, "lastTimestamp": now}),
        )),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let config_map = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "keep"}});
    let (status, _) = http_json(
        addr,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        Some(&config_map),
    )
    .await;
    assert_eq!(status, 201);

    assert_eq!(next_deleted(&mut watch).await, "short-lived");
    let (status, _) = http_json(
        addr,
        "GET",
        "/api/v1/namespaces/default/events/short-lived",
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = http_json(
        addr,
        "GET",
        "/api/v1/namespaces/default/configmaps/keep",
        None,
    )
    .await;
    assert_eq!(status, 200);
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_event_ttl_expires_events_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    expires_through_run(StorageConfig::Embedded {
        data_dir: dir.path().to_path_buf(),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_event_ttl_expires_events_on_etcd() {
    let etcd = rkube_testkit::etcd::EtcdProcess::start().await.unwrap();
    expires_through_run(StorageConfig::Etcd {
        endpoints: vec![etcd.endpoint()],
    })
    .await;
}
