//! Bad requests over HTTP: each gets a metav1.Status with the upstream code and reason,
//! stores nothing, and leaves the server healthy.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use rkube_e2e::TestCluster;
use serde_json::{json, Value};

const CONFIG_MAPS: &str = "/api/v1/namespaces/default/configmaps";
const JSON: &str = "application/json";

async fn send(
    cluster: &TestCluster,
    method: Method,
    path: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    cluster
        .http()
        .request(method, format!("{}{path}", cluster.url()))
        .header("Content-Type", content_type)
        .header("Accept", JSON)
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Asserts the response is a Status with this HTTP code, `code` field and reason.
async fn expect_status(response: reqwest::Response, code: u16, reason: &str) -> Value {
    let http_code = response.status().as_u16();
    let text = response.text().await.unwrap();
    let status: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not a JSON Status ({e}): {text}"));
    assert_eq!(http_code, code, "{status}");
    assert_eq!(status["kind"], "Status", "{status}");
    assert_eq!(status["apiVersion"], "v1", "{status}");
    assert_eq!(status["status"], "Failure", "{status}");
    assert_eq!(status["code"], code, "{status}");
    assert_eq!(status["reason"], reason, "{status}");
    assert!(
        status["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{status}"
    );
    status
}

async fn config_map_names(cluster: &TestCluster) -> Vec<String> {
    let list: Value = cluster
        .http()
        .get(format!("{}{CONFIG_MAPS}", cluster.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut names: Vec<String> = list["items"]
        .as_array()
        .unwrap_or_else(|| panic!("list without items: {list}"))
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// After a rejected request: nothing new stored, and the server still ready.
async fn assert_unchanged_and_healthy(cluster: &TestCluster, before: &[String]) {
    assert_eq!(config_map_names(cluster).await, before);
    let ready = cluster
        .http()
        .get(format!("{}/readyz", cluster.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_bad_request() {
    let cluster = TestCluster::start_embedded().await;
    let before = config_map_names(&cluster).await;
    let body = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"half""#;
    let response = send(&cluster, Method::POST, CONFIG_MAPS, JSON, body).await;
    expect_status(response, 400, "BadRequest").await;
    assert_unchanged_and_healthy(&cluster, &before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yaml_body_sent_as_json_is_bad_request() {
    let cluster = TestCluster::start_embedded().await;
    let before = config_map_names(&cluster).await;
    let body = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-yaml\n";
    let response = send(&cluster, Method::POST, CONFIG_MAPS, JSON, body).await;
    expect_status(response, 400, "BadRequest").await;
    assert_unchanged_and_healthy(&cluster, &before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_kind_for_the_url_is_bad_request() {
    let cluster = TestCluster::start_embedded().await;
    let before = config_map_names(&cluster).await;
    let body =
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "not-a-config-map"}});
    let response = send(&cluster, Method::POST, CONFIG_MAPS, JSON, body.to_string()).await;
    expect_status(response, 400, "BadRequest").await;
    assert_unchanged_and_healthy(&cluster, &before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_resource_is_not_found() {
    let cluster = TestCluster::start_embedded().await;
    let before = config_map_names(&cluster).await;
    let response = send(
        &cluster,
        Method::GET,
        "/api/v1/namespaces/default/widgets",
        JSON,
        "",
    )
    .await;
    expect_status(response, 404, "NotFound").await;
    let body = json!({"apiVersion": "v1", "kind": "Widget", "metadata": {"name": "w"}});
    let response = send(
        &cluster,
        Method::POST,
        "/apis/example.com/v1/widgets",
        JSON,
        body.to_string(),
    )
    .await;
    expect_status(response, 404, "NotFound").await;
    assert_unchanged_and_healthy(&cluster, &before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_three_mebibytes_is_too_large() {
    let cluster = TestCluster::start_embedded().await;
    let before = config_map_names(&cluster).await;
    let big = "x".repeat(3 * 1024 * 1024 + 1);
    let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "huge"}, "data": {"big": big}});
    let response = send(&cluster, Method::POST, CONFIG_MAPS, JSON, body.to_string()).await;
    expect_status(response, 413, "RequestEntityTooLarge").await;
    assert_unchanged_and_healthy(&cluster, &before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_name_is_unprocessable() {
    let cluster = TestCluster::start_embedded().await;
    let before = config_map_names(&cluster).await;
    let body =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "Not_A_DNS_Name"}});
    let response = send(&cluster, Method::POST, CONFIG_MAPS, JSON, body.to_string()).await;
    let status = expect_status(response, 422, "Invalid").await;
    assert_eq!(status["details"]["name"], "Not_A_DNS_Name", "{status}");
    assert_eq!(status["details"]["kind"], "ConfigMap", "{status}");
    let causes = status["details"]["causes"]
        .as_array()
        .unwrap_or_else(|| panic!("no causes: {status}"));
    assert!(
        causes
            .iter()
            .any(|c| c["field"] == "metadata.name" && c["reason"] == "FieldValueInvalid"),
        "{status}"
    );
    assert_unchanged_and_healthy(&cluster, &before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_with_stale_resource_version_conflicts() {
    let cluster = TestCluster::start_embedded().await;
    let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "contested"}, "data": {"v": "1"}});
    let created: Value = send(&cluster, Method::POST, CONFIG_MAPS, JSON, body.to_string())
        .await
        .json()
        .await
        .unwrap();
    let stale_rv = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();

    let path = format!("{CONFIG_MAPS}/contested");
    let mut update = created.clone();
    update["data"]["v"] = json!("2");
    let response = send(&cluster, Method::PUT, &path, JSON, update.to_string()).await;
    assert_eq!(response.status(), StatusCode::OK);

    let before = config_map_names(&cluster).await;
    let mut stale = created.clone();
    stale["metadata"]["resourceVersion"] = json!(stale_rv);
    stale["data"]["v"] = json!("stale");
    let response = send(&cluster, Method::PUT, &path, JSON, stale.to_string()).await;
    let status = expect_status(response, 409, "Conflict").await;
    assert_eq!(
        status["message"],
        "Operation cannot be fulfilled on configmaps \"contested\": the object has been modified; \
         please apply your changes to the latest version and try again"
    );
    let current: Value = send(&cluster, Method::GET, &path, JSON, "")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(current["data"]["v"], "2");
    assert_unchanged_and_healthy(&cluster, &before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_label_selector_is_bad_request() {
    let cluster = TestCluster::start_embedded().await;
    let before = config_map_names(&cluster).await;
    for selector in ["app in (a", "app=(x", "=value", "a==b==c"] {
        let response = cluster
            .http()
            .get(format!("{}{CONFIG_MAPS}", cluster.url()))
            .query(&[("labelSelector", selector)])
            .send()
            .await
            .unwrap();
        expect_status(response, 400, "BadRequest").await;
    }
    assert_unchanged_and_healthy(&cluster, &before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_too_old_resource_version_gets_expired_event() {
    let cluster = TestCluster::start_embedded_with(|c| c.watch_history = 10).await;
    let mut first_rv = None;
    for i in 0..50 {
        let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("cm-{i}")}});
        let created: Value = send(&cluster, Method::POST, CONFIG_MAPS, JSON, body.to_string())
            .await
            .json()
            .await
            .unwrap();
        first_rv.get_or_insert_with(|| {
            created["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .to_string()
        });
    }
    let before = config_map_names(&cluster).await;
    let first_rv = first_rv.unwrap();

    let mut response = cluster
        .http()
        .get(format!("{}{CONFIG_MAPS}", cluster.url()))
        .query(&[
            ("watch", "true"),
            ("resourceVersion", first_rv.as_str()),
            ("timeoutSeconds", "30"),
        ])
        .send()
        .await
        .unwrap();
    // The error comes as an event on a 200 stream; kube-rs relists only on that form.
    assert_eq!(response.status(), StatusCode::OK);
    let mut buffer = Vec::new();
    while !buffer.contains(&b'\n') {
        match tokio::time::timeout(Duration::from_secs(60), response.chunk())
            .await
            .unwrap()
            .unwrap()
        {
            Some(chunk) => buffer.extend_from_slice(&chunk),
            None => break,
        }
    }
    let line = buffer.split(|b| *b == b'\n').next().unwrap();
    let event: Value = serde_json::from_slice(line).unwrap_or_else(|e| {
        panic!(
            "first watch line is not JSON ({e}): {}",
            String::from_utf8_lossy(&buffer)
        )
    });
    assert_eq!(event["type"], "ERROR", "{event}");
    assert_eq!(event["object"]["kind"], "Status", "{event}");
    assert_eq!(event["object"]["code"], 410, "{event}");
    assert_eq!(event["object"]["reason"], "Expired", "{event}");
    drop(response);
    assert_unchanged_and_healthy(&cluster, &before).await;
}
