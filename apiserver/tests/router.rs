//! Router tests: the real router and handlers over the embedded store, driven with
//! `oneshot` requests (no socket). Covers the write/read semantics clients rely on and,
//! with proptest, that no request body or URL makes the server panic or store anything.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use rkube_apiserver::{app, bootstrap, open_store, state, ApiState, Config, StorageConfig};
use serde_json::{json, Value};
use tower::ServiceExt;

struct Harness {
    state: Arc<ApiState>,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::watch::Sender<bool>,
}

impl Harness {
    async fn new() -> Harness {
        Harness::with_history(100_000).await
    }

    async fn with_history(history: usize) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::new(StorageConfig::Embedded {
            data_dir: dir.path().to_path_buf(),
        });
        config.watch_history = history;
        let store = open_store(&config.storage).await.unwrap();
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let state = state(&config, store, stop_rx).unwrap();
        bootstrap(&state).await;
        state
            .cache
            .wait_for(None, Duration::from_secs(5))
            .await
            .unwrap();
        Harness {
            state,
            _dir: dir,
            _stop: stop,
        }
    }

    fn router(&self) -> Router {
        app(self.state.clone())
    }

    async fn send(
        &self,
        method: &str,
        uri: &str,
        content_type: &str,
        body: impl Into<Body>,
    ) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", content_type)
            .body(body.into())
            .unwrap();
        let resp = self.router().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, value)
    }

    async fn json(&self, method: &str, uri: &str, body: &Value) -> (StatusCode, Value) {
        self.send(method, uri, "application/json", body.to_string())
            .await
    }

    async fn get(&self, uri: &str) -> (StatusCode, Value) {
        self.send("GET", uri, "application/json", Body::empty())
            .await
    }

    async fn pod_names(&self, namespace: &str) -> Vec<String> {
        let (status, list) = self
            .get(&format!("/api/v1/namespaces/{namespace}/pods"))
            .await;
        assert_eq!(status, StatusCode::OK);
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    }
}

fn pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "web"}},
           "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
}

fn deployment(name: &str, replicas: i64) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
           "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                    "template": {"metadata": {"labels": {"app": name}},
                                 "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}})
}

#[tokio::test]
async fn create_get_update_with_resource_versions() {
    let h = Harness::new().await;
    let (status, created) = h
        .json("POST", "/api/v1/namespaces/default/pods", &pod("web"))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let rv: i64 = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(created["metadata"]["uid"]
        .as_str()
        .is_some_and(|u| !u.is_empty()));
    assert!(created["metadata"]["creationTimestamp"].is_string());

    let (status, got) = h.get("/api/v1/namespaces/default/pods/web").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        got["metadata"]["resourceVersion"],
        created["metadata"]["resourceVersion"]
    );

    let mut changed = got.clone();
    changed["metadata"]["labels"]["tier"] = json!("front");
    let (status, updated) = h
        .json("PUT", "/api/v1/namespaces/default/pods/web", &changed)
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    let rv2: i64 = updated["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rv2 > rv);

    // The stale version loses, with upstream's message.
    let (status, err) = h
        .json("PUT", "/api/v1/namespaces/default/pods/web", &changed)
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(err["reason"], "Conflict");
    assert!(err["message"]
        .as_str()
        .unwrap()
        .contains("the object has been modified"));

    let (status, err) = h
        .json("POST", "/api/v1/namespaces/default/pods", &pod("web"))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(err["reason"], "AlreadyExists");
    assert_eq!(err["message"], "pods \"web\" already exists");
}

#[tokio::test]
async fn generation_status_and_scale() {
    let h = Harness::new().await;
    let (status, d) = h
        .json(
            "POST",
            "/apis/apps/v1/namespaces/default/deployments",
            &deployment("d", 2),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{d}");
    assert_eq!(d["metadata"]["generation"], 1);

    // Status writes go through /status only and do not bump generation.
    let mut with_status = d.clone();
    with_status["status"] = json!({"replicas": 2, "observedGeneration": 1});
    let (status, s) = h
        .json(
            "PUT",
            "/apis/apps/v1/namespaces/default/deployments/d/status",
            &with_status,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{s}");
    assert_eq!(s["status"]["replicas"], 2);
    assert_eq!(s["metadata"]["generation"], 1);

    // A main-resource write cannot change status.
    let mut sneaky = s.clone();
    sneaky["status"]["replicas"] = json!(99);
    let (_, after) = h
        .json(
            "PUT",
            "/apis/apps/v1/namespaces/default/deployments/d",
            &sneaky,
        )
        .await;
    assert_eq!(after["status"]["replicas"], 2);

    let (status, scale) = h
        .send(
            "PATCH",
            "/apis/apps/v1/namespaces/default/deployments/d/scale",
            "application/merge-patch+json",
            r#"{"spec":{"replicas":4}}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{scale}");
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["apiVersion"], "autoscaling/v1");
    assert_eq!(scale["spec"]["replicas"], 4);
    assert_eq!(scale["status"]["selector"], "app=d");
    let (_, d) = h
        .get("/apis/apps/v1/namespaces/default/deployments/d")
        .await;
    assert_eq!(d["spec"]["replicas"], 4);
    assert_eq!(d["metadata"]["generation"], 2);
}

#[tokio::test]
async fn strategic_merge_patch_changes_one_container() {
    let h = Harness::new().await;
    let mut d = deployment("web", 1);
    d["spec"]["template"]["spec"]["containers"] =
        json!([{"name": "a", "image": "one:1"}, {"name": "b", "image": "two:1"}]);
    h.json("POST", "/apis/apps/v1/namespaces/default/deployments", &d)
        .await;
    let patch = r#"{"spec":{"template":{"spec":{"$setElementOrder/containers":[{"name":"a"},{"name":"b"}],"containers":[{"name":"b","image":"two:2"}]}}}}"#;
    let (status, patched) = h
        .send(
            "PATCH",
            "/apis/apps/v1/namespaces/default/deployments/web",
            "application/strategic-merge-patch+json",
            patch,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    let containers = &patched["spec"]["template"]["spec"]["containers"];
    assert_eq!(containers[0]["image"], "one:1");
    assert_eq!(containers[1]["image"], "two:2");
    assert_eq!(patched["metadata"]["generation"], 2);
}

#[tokio::test]
async fn server_side_apply_upserts() {
    let h = Harness::new().await;
    let body = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cfg\ndata:\n  a: \"1\"\n";
    let uri = "/api/v1/namespaces/default/configmaps/cfg?fieldManager=kubectl&force=false";
    let (status, created) = h
        .send("PATCH", uri, "application/apply-patch+yaml", body)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let (status, updated) = h
        .send(
            "PATCH",
            uri,
            "application/apply-patch+yaml",
            body.replace("\"1\"", "\"2\""),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(updated["data"]["a"], "2");
}

#[tokio::test]
async fn selectors_and_pagination() {
    let h = Harness::new().await;
    for i in 0..7 {
        let mut p = pod(&format!("p{i}"));
        p["metadata"]["labels"]["parity"] = json!(if i % 2 == 0 { "even" } else { "odd" });
        assert_eq!(
            h.json("POST", "/api/v1/namespaces/default/pods", &p)
                .await
                .0,
            StatusCode::CREATED
        );
    }
    let (_, even) = h
        .get("/api/v1/namespaces/default/pods?labelSelector=parity%3Deven")
        .await;
    assert_eq!(even["items"].as_array().unwrap().len(), 4);
    let (_, one) = h
        .get("/api/v1/namespaces/default/pods?fieldSelector=metadata.name%3Dp3")
        .await;
    assert_eq!(one["items"][0]["metadata"]["name"], "p3");
    let (status, err) = h
        .get("/api/v1/namespaces/default/pods?fieldSelector=spec.bogus%3Dx")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");

    // Pages share one resourceVersion and together hold every item exactly once.
    let mut names = Vec::new();
    let mut token: Option<String> = None;
    let mut list_rv: Option<String> = None;
    loop {
        let uri = match &token {
            Some(t) => format!("/api/v1/namespaces/default/pods?limit=3&continue={t}"),
            None => "/api/v1/namespaces/default/pods?limit=3".to_string(),
        };
        let (status, page) = h.get(&uri).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let rv = page["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(list_rv.get_or_insert(rv.clone()), &rv);
        names.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["metadata"]["name"].as_str().unwrap().to_string()),
        );
        // A write between pages must not show up in later pages.
        if token.is_none() {
            h.json("POST", "/api/v1/namespaces/default/pods", &pod("p9"))
                .await;
        }
        match page["metadata"]["continue"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
    }
    assert_eq!(names, (0..7).map(|i| format!("p{i}")).collect::<Vec<_>>());
}

#[tokio::test]
async fn graceful_pod_deletion_and_finalizers() {
    let h = Harness::new().await;
    // A pod on a node is only marked; its kubelet finishes the deletion with grace 0.
    let mut p = pod("bound");
    p["spec"]["nodeName"] = json!("node-1");
    h.json("POST", "/api/v1/namespaces/default/pods", &p).await;
    let (status, marked) = h
        .send(
            "DELETE",
            "/api/v1/namespaces/default/pods/bound",
            "application/json",
            Body::empty(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(marked["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(marked["metadata"]["deletionGracePeriodSeconds"], 30);
    assert_eq!(
        h.get("/api/v1/namespaces/default/pods/bound").await.0,
        StatusCode::OK
    );
    let (status, _) = h
        .send(
            "DELETE",
            "/api/v1/namespaces/default/pods/bound",
            "application/json",
            r#"{"gracePeriodSeconds":0}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        h.get("/api/v1/namespaces/default/pods/bound").await.0,
        StatusCode::NOT_FOUND
    );

    // A finalizer blocks removal until it is removed.
    let mut cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "held", "finalizers": ["example.com/hold"]}});
    h.json("POST", "/api/v1/namespaces/default/configmaps", &cm)
        .await;
    h.send(
        "DELETE",
        "/api/v1/namespaces/default/configmaps/held",
        "application/json",
        Body::empty(),
    )
    .await;
    let (status, held) = h.get("/api/v1/namespaces/default/configmaps/held").await;
    assert_eq!(status, StatusCode::OK);
    assert!(held["metadata"]["deletionTimestamp"].is_string());
    cm = held.clone();
    cm["metadata"]["finalizers"] = json!([]);
    let (status, _) = h
        .json("PUT", "/api/v1/namespaces/default/configmaps/held", &cm)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        h.get("/api/v1/namespaces/default/configmaps/held").await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn namespace_must_exist_and_names_are_validated() {
    let h = Harness::new().await;
    let (status, err) = h
        .json("POST", "/api/v1/namespaces/nope/pods", &pod("p"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(err["message"], "namespaces \"nope\" not found");
    let (status, err) = h
        .json("POST", "/api/v1/namespaces/default/pods", &pod("Bad_Name"))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["reason"], "Invalid");
    assert!(err["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["field"] == "metadata.name"));
    assert!(h.pod_names("default").await.is_empty());
}

#[tokio::test]
async fn a_terminating_namespace_takes_no_new_objects() {
    let h = Harness::new().await;
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "doomed"}});
    assert_eq!(
        h.json("POST", "/api/v1/namespaces", &ns).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        h.json("POST", "/api/v1/namespaces/doomed/pods", &pod("before"))
            .await
            .0,
        StatusCode::CREATED
    );
    let (status, marked) = h
        .send(
            "DELETE",
            "/api/v1/namespaces/doomed",
            "application/json",
            Body::empty(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // The namespace finalizer keeps it until the namespace controller has emptied it.
    assert_eq!(marked["status"]["phase"], "Terminating");
    let current = h.state.store.current_revision().await.unwrap();
    h.state
        .cache
        .wait_for(Some(current), Duration::from_secs(5))
        .await
        .unwrap();
    let (status, err) = h
        .json("POST", "/api/v1/namespaces/doomed/pods", &pod("after"))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{err}");
    assert_eq!(
        err["message"],
        "unable to create new content in namespace doomed because it is being terminated"
    );
    // Finalizing (what the namespace controller does last) removes it.
    let mut fin = marked.clone();
    fin["spec"]["finalizers"] = json!([]);
    let (status, _) = h
        .json("PUT", "/api/v1/namespaces/doomed/finalize", &fin)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        h.get("/api/v1/namespaces/doomed").await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn generate_name_and_binding() {
    let h = Harness::new().await;
    let p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "web-"}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
    let (status, created) = h.json("POST", "/api/v1/namespaces/default/pods", &p).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let name = created["metadata"]["name"].as_str().unwrap().to_string();
    assert!(name.starts_with("web-") && name.len() == 9);
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name}, "target": {"kind": "Node", "name": "n1"}});
    let (status, _) = h
        .json(
            "POST",
            &format!("/api/v1/namespaces/default/pods/{name}/binding"),
            &binding,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, bound) = h
        .get(&format!("/api/v1/namespaces/default/pods/{name}"))
        .await;
    assert_eq!(bound["spec"]["nodeName"], "n1");
    let (status, err) = h
        .json(
            "POST",
            &format!("/api/v1/namespaces/default/pods/{name}/binding"),
            &binding,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
}

#[tokio::test]
async fn services_get_cluster_ips() {
    let h = Harness::new().await;
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
                     "spec": {"type": "NodePort", "selector": {"app": "x"}, "ports": [{"port": 80}]}});
    let (status, created) = h
        .json("POST", "/api/v1/namespaces/default/services", &svc)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let ip = created["spec"]["clusterIP"].as_str().unwrap();
    assert!(ip.starts_with("10."), "{ip}");
    let node_port = created["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
    assert!((30000..=32767).contains(&node_port));
    let mut taken = svc.clone();
    taken["metadata"]["name"] = json!("s2");
    taken["spec"]["clusterIP"] = json!(ip);
    let (status, _) = h
        .json("POST", "/api/v1/namespaces/default/services", &taken)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn discovery_and_errors_for_unknown_paths() {
    let h = Harness::new().await;
    let (status, v) = h.get("/version").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["minor"], "32");
    let (status, apps) = h.get("/apis/apps/v1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(apps["kind"], "APIResourceList");
    let (status, err) = h.get("/api/v1/widgets").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(err["kind"], "Status");
    let (status, _) = h
        .send(
            "PATCH",
            "/api/v1/namespaces/default/pods/x",
            "application/merge-patch+json",
            "{}",
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    h.json("POST", "/api/v1/namespaces/default/pods", &pod("x"))
        .await;
    let (status, err) = h
        .send(
            "PATCH",
            "/api/v1/namespaces/default/pods/x",
            "text/plain",
            "{}",
        )
        .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{err}");
}

#[tokio::test]
async fn oversized_and_malformed_bodies_are_refused_and_nothing_is_stored() {
    let h = Harness::new().await;
    let mut big = pod("big");
    big["metadata"]["annotations"] = json!({"x": "a".repeat(3 * 1024 * 1024 + 10)});
    let (status, err) = h
        .json("POST", "/api/v1/namespaces/default/pods", &big)
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{err}");
    assert_eq!(err["reason"], "RequestEntityTooLarge");
    let (status, err) = h
        .send(
            "POST",
            "/api/v1/namespaces/default/pods",
            "application/json",
            "{\"kind\": ",
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(err["reason"], "BadRequest");
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "wrong"}});
    let (status, _) = h
        .json("POST", "/api/v1/namespaces/default/pods", &svc)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, err) = h
        .send("POST", "/api/v1/namespaces/default/pods?fieldValidation=Strict", "application/json", r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"u"},"spec":{"containerz":[{"name":"c"}]}}"#)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert!(err["message"]
        .as_str()
        .unwrap()
        .contains("unknown field \"spec.containerz\""));
    assert!(h.pod_names("default").await.is_empty());
}

#[tokio::test]
async fn watch_from_a_compacted_history_gets_410_as_an_event() {
    let h = Harness::with_history(5).await;
    let (_, first) = h
        .json("POST", "/api/v1/namespaces/default/pods", &pod("w0"))
        .await;
    let rv = first["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    for i in 1..20 {
        h.json(
            "POST",
            "/api/v1/namespaces/default/pods",
            &pod(&format!("w{i}")),
        )
        .await;
    }
    let current = h.state.store.current_revision().await.unwrap();
    h.state
        .cache
        .wait_for(Some(current), Duration::from_secs(5))
        .await
        .unwrap();
    let (status, body) = h
        .get(&format!(
            "/api/v1/namespaces/default/pods?watch=true&resourceVersion={rv}"
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["type"], "ERROR", "{body}");
    assert_eq!(body["object"]["code"], 410);
    assert_eq!(body["object"]["reason"], "Expired");
}

#[tokio::test]
async fn watch_replays_history_then_times_out() {
    let h = Harness::new().await;
    let (_, first) = h
        .json("POST", "/api/v1/namespaces/default/pods", &pod("a"))
        .await;
    let rv = first["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    h.json("POST", "/api/v1/namespaces/default/pods", &pod("b"))
        .await;
    h.send(
        "DELETE",
        "/api/v1/namespaces/default/pods/a",
        "application/json",
        Body::empty(),
    )
    .await;
    let current = h.state.store.current_revision().await.unwrap();
    h.state
        .cache
        .wait_for(Some(current), Duration::from_secs(5))
        .await
        .unwrap();
    let req = Request::builder()
        .uri(format!(
            "/api/v1/namespaces/default/pods?watch=true&resourceVersion={rv}&timeoutSeconds=1"
        ))
        .body(Body::empty())
        .unwrap();
    let resp = h.router().oneshot(req).await.unwrap();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let events: Vec<Value> = bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    let summary: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_string(),
                e["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![("ADDED".into(), "b".into()), ("DELETED".into(), "a".into())]
    );
    let deleted_rv: i64 = events[1]["object"]["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(deleted_rv, current);
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn arbitrary_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            "[a-zA-Z0-9_.$/-]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("metadata".to_string()),
                        Just("spec".to_string()),
                        Just("name".to_string()),
                        Just("containers".to_string()),
                        Just("kind".to_string()),
                        "[a-z$/]{1,8}"
                    ],
                    inner,
                    0..5
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn content_type() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "application/json",
            "application/yaml",
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
            "application/json-patch+json",
            "application/apply-patch+yaml",
            "application/vnd.kubernetes.protobuf",
            "text/plain",
        ])
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

        /// Any body, to any write endpoint, with any content type: an answer (never a
        /// panic, never a 5xx), and a failed request stores nothing.
        #[test]
        fn no_body_crashes_or_half_writes(
            body in prop_oneof![arbitrary_json().prop_map(|v| v.to_string().into_bytes()), prop::collection::vec(any::<u8>(), 0..64)],
            method in prop::sample::select(vec!["POST", "PUT", "PATCH", "DELETE"]),
            path in prop::sample::select(vec![
                "/api/v1/namespaces/default/pods",
                "/api/v1/namespaces/default/pods/seed",
                "/api/v1/namespaces/default/pods/seed/status",
                "/apis/apps/v1/namespaces/default/deployments/seed/scale",
                "/api/v1/namespaces/default/pods/seed/binding",
                "/api/v1/namespaces/default/pods/seed/eviction",
                "/api/v1/namespaces",
            ]),
            ct in content_type(),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let h = Harness::new().await;
                h.json("POST", "/api/v1/namespaces/default/pods", &pod("seed")).await;
                h.json("POST", "/apis/apps/v1/namespaces/default/deployments", &deployment("seed", 1)).await;
                let before = h.state.store.current_revision().await.unwrap();
                let (status, resp) = h.send(method, path, ct, body.clone()).await;
                prop_assert!(status.as_u16() < 500, "{method} {path} {ct}: {status} {resp}");
                if !status.is_success() {
                    prop_assert_eq!(resp["kind"].as_str(), Some("Status"), "{}", resp);
                    let after = h.state.store.current_revision().await.unwrap();
                    prop_assert_eq!(before, after, "a failed request wrote to storage");
                }
                Ok(())
            })?;
        }
    }
}
