//! Hostile and unusual input through the real router (no socket): what real clients send
//! must work, and what an attacker sends must get a clear 4xx Status, store nothing, and
//! leave the server serving.

mod common;

use axum::body::Body;
use axum::http::StatusCode;
use serde_json::{json, Value};

use common::Harness;

impl Harness {
    async fn names(&self, collection: &str) -> Vec<String> {
        let (status, list) = self.get(collection).await;
        assert_eq!(status, StatusCode::OK, "{list}");
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    }

    /// The server still answers an ordinary request.
    async fn assert_serving(&self) {
        let (status, list) = self.get("/api/v1/namespaces").await;
        assert_eq!(status, StatusCode::OK, "{list}");
    }
}

fn pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
           "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
}

/// A Status of the given code, with the reason upstream uses for it.
fn assert_status(status: StatusCode, body: &Value, code: u16, reason: &str) {
    assert_eq!(status.as_u16(), code, "{body}");
    assert_eq!(body["kind"], "Status", "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["reason"], reason, "{body}");
}

const PODS: &str = "/api/v1/namespaces/default/pods";

// ---------------------------------------------------------------------------------------
// What real clients send

#[tokio::test]
async fn paths_with_a_trailing_slash_answer_as_upstream() {
    let h = Harness::new().await;
    h.json("POST", PODS, &pod("web")).await;
    // (path with a trailing slash, the same path without it)
    for (slashed, plain) in [
        ("/version/", "/version"),
        ("/api/", "/api"),
        ("/apis/", "/apis"),
        ("/api/v1/", "/api/v1"),
        ("/apis/apps/", "/apis/apps"),
        ("/apis/apps/v1/", "/apis/apps/v1"),
        ("/api/v1/namespaces/", "/api/v1/namespaces"),
        ("/api/v1/namespaces/default/", "/api/v1/namespaces/default"),
        (
            "/api/v1/namespaces/default/pods/web/",
            "/api/v1/namespaces/default/pods/web",
        ),
    ] {
        let (status, with) = h.get(slashed).await;
        assert_eq!(status, StatusCode::OK, "{slashed}: {with}");
        let (_, without) = h.get(plain).await;
        assert_eq!(with["kind"], without["kind"], "{slashed}");
        assert!(
            with["kind"].is_string() || with["major"].is_string(),
            "{slashed}: {with}"
        );
    }
    let names = h.names("/api/v1/namespaces/default/pods/").await;
    assert_eq!(names, ["web"]);
    // Upstream's health checks and OpenAPI v3 root are exact paths: 404 with a slash.
    for path in ["/healthz/", "/livez/", "/readyz/", "/openapi/v3/"] {
        let (status, _) = h.get(path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
}

#[tokio::test]
async fn namespaces_carry_their_name_label_whatever_the_client_sends() {
    let h = Harness::new().await;
    for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let (status, ns) = h.get(&format!("/api/v1/namespaces/{name}")).await;
        assert_eq!(status, StatusCode::OK, "{ns}");
        assert_eq!(
            ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
            name
        );
    }
    let (status, created) = h
        .json(
            "POST",
            "/api/v1/namespaces",
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {
                "name": "team-a", "labels": {"kubernetes.io/metadata.name": "team-b", "tier": "x"}}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(
        created["metadata"]["labels"],
        json!({"kubernetes.io/metadata.name": "team-a", "tier": "x"})
    );
    let selected = h
        .names("/api/v1/namespaces?labelSelector=kubernetes.io%2Fmetadata.name%3Dteam-a")
        .await;
    assert_eq!(selected, ["team-a"]);

    // Neither an update nor a patch can remove or change it.
    let mut unlabeled = created.clone();
    unlabeled["metadata"]["labels"] = json!({"tier": "y"});
    let (status, updated) = h.json("PUT", "/api/v1/namespaces/team-a", &unlabeled).await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(
        updated["metadata"]["labels"],
        json!({"kubernetes.io/metadata.name": "team-a", "tier": "y"})
    );
    let (status, patched) = h
        .send(
            "PATCH",
            "/api/v1/namespaces/team-a",
            "application/merge-patch+json",
            r#"{"metadata":{"labels":{"kubernetes.io/metadata.name":"other"}}}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(
        patched["metadata"]["labels"]["kubernetes.io/metadata.name"],
        "team-a"
    );
}

#[tokio::test]
async fn a_finalize_body_of_the_wrong_shape_gets_400_and_changes_nothing() {
    // Found by the router fuzz test: finalize took spec.finalizers before type-checking
    // the body, so a spec that was not an object panicked the handler.
    let h = Harness::new().await;
    let (status, created) = h
        .json(
            "POST",
            "/api/v1/namespaces",
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "fin"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    for spec in [
        json!([]),
        json!("x"),
        json!({"finalizers": 5}),
        json!({"finalizers": [1]}),
    ] {
        let body = json!({"apiVersion": "v1", "kind": "Namespace",
                          "metadata": {"name": "fin"}, "spec": spec});
        let (status, err) = h
            .json("PUT", "/api/v1/namespaces/fin/finalize", &body)
            .await;
        assert_status(status, &err, 400, "BadRequest");
    }
    let (status, ns) = h.get("/api/v1/namespaces/fin").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        ns["metadata"]["resourceVersion"],
        created["metadata"]["resourceVersion"]
    );
    assert_eq!(ns["spec"], created["spec"]);
}

// ---------------------------------------------------------------------------------------
// Panics reachable from requests

#[tokio::test]
async fn a_multi_byte_field_selector_gets_400() {
    let h = Harness::new().await;
    for query in [
        "fieldSelector=%C3%A9%3Dx",
        "fieldSelector=a%5C%C3%A9%3Dx",
        "fieldSelector=%F0%9F%98%80",
    ] {
        let (status, err) = h.get(&format!("{PODS}?{query}")).await;
        assert_status(status, &err, 400, "BadRequest");
        let (status, err) = h.get(&format!("{PODS}?watch=1&{query}")).await;
        assert_status(status, &err, 400, "BadRequest");
    }
    // A valid selector naming a non-ASCII value simply matches nothing.
    h.json("POST", PODS, &pod("web")).await;
    assert!(h
        .names(&format!("{PODS}?fieldSelector=metadata.name%3D%C3%A9"))
        .await
        .is_empty());
    h.assert_serving().await;
}

#[tokio::test]
async fn a_multi_byte_generate_name_gets_422_and_nothing_is_stored() {
    let h = Harness::new().await;
    for prefix in [
        "é".repeat(40),
        "a".to_string() + &"é".repeat(40),
        "日本".repeat(20),
    ] {
        let body = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": prefix},
                          "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
        let (status, err) = h.json("POST", PODS, &body).await;
        assert_status(status, &err, 422, "Invalid");
    }
    assert!(h.names(PODS).await.is_empty());
    h.assert_serving().await;
}

/// A pod that ran somewhere, so that deleting it is graceful.
fn scheduled_pod(name: &str, grace: Option<i64>) -> Value {
    let mut p = pod(name);
    p["spec"]["nodeName"] = json!("node-1");
    if let Some(g) = grace {
        p["spec"]["terminationGracePeriodSeconds"] = json!(g);
    }
    p
}

#[tokio::test]
async fn huge_grace_periods_delete_with_the_latest_timestamp_instead_of_failing() {
    let h = Harness::new().await;
    // The pod's own grace period is an int64 with no upper bound upstream.
    let (status, created) = h
        .json("POST", PODS, &scheduled_pod("forever", Some(i64::MAX)))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let (status, deleted) = h
        .send(
            "DELETE",
            &format!("{PODS}/forever"),
            "application/json",
            Body::empty(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{deleted}");
    assert_eq!(
        deleted["metadata"]["deletionTimestamp"],
        "9999-12-31T23:59:59Z"
    );
    assert_eq!(deleted["metadata"]["deletionGracePeriodSeconds"], i64::MAX);

    // The same from the query and from DeleteOptions in the body.
    for (name, uri, body) in [
        (
            "q",
            format!("{PODS}/q?gracePeriodSeconds={}", i64::MAX),
            String::new(),
        ),
        (
            "b",
            format!("{PODS}/b"),
            json!({"gracePeriodSeconds": i64::MAX}).to_string(),
        ),
        (
            "m",
            format!("{PODS}/m?gracePeriodSeconds=9223372036854775"),
            String::new(),
        ),
    ] {
        h.json("POST", PODS, &scheduled_pod(name, None)).await;
        let (status, deleted) = h.send("DELETE", &uri, "application/json", body).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {deleted}");
        assert_eq!(
            deleted["metadata"]["deletionTimestamp"],
            "9999-12-31T23:59:59Z"
        );
    }
    // Past int64: a 400, not a wrapped number.
    let (status, err) = h
        .send(
            "DELETE",
            &format!("{PODS}/q?gracePeriodSeconds=99999999999999999999"),
            "application/json",
            Body::empty(),
        )
        .await;
    assert_status(status, &err, 400, "BadRequest");
    // The kubelet's final delete (grace 0) still removes the pod.
    let (status, gone) = h
        .send(
            "DELETE",
            &format!("{PODS}/forever?gracePeriodSeconds=0"),
            "application/json",
            Body::empty(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{gone}");
    let (status, _) = h.get(&format!("{PODS}/forever")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

// ---------------------------------------------------------------------------------------
// Depth and size limits on every write

const CONFIGMAPS: &str = "/api/v1/namespaces/default/configmaps";

/// `[[...1...]]`: `levels` nested lists.
fn nested_lists(levels: usize) -> String {
    format!("{}1{}", "[".repeat(levels), "]".repeat(levels))
}

/// A ConfigMap whose unknown field `x` makes the whole object nest `levels` deep.
fn deep_configmap(name: &str, levels: usize) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}"}},"x":{}}}"#,
        nested_lists(levels - 1)
    )
}

const DEPTHS: [usize; 10] = [
    100, 125, 126, 127, 128, 129, 200, 10_000, 100_000, 1_000_000,
];
const MAX_DEPTH: usize = 125;

/// Either the write succeeded and the object reads back and deletes, or it got a 4xx
/// Status and left `name` as it was.
async fn assert_readable_or_refused(
    h: &Harness,
    what: &str,
    levels: usize,
    status: StatusCode,
    body: &Value,
    name: &str,
) {
    let (get_status, got) = h.get(&format!("{CONFIGMAPS}/{name}")).await;
    if levels <= MAX_DEPTH {
        assert!(status.is_success(), "{what} at {levels}: {body}");
        assert_eq!(get_status, StatusCode::OK, "{what} at {levels}: {got}");
        assert!(got["x"].is_array(), "{what} at {levels}");
    } else {
        assert!(
            status == StatusCode::BAD_REQUEST || status == StatusCode::UNPROCESSABLE_ENTITY,
            "{what} at {levels}: {status} {body}"
        );
        assert_eq!(body["kind"], "Status", "{what} at {levels}");
        assert!(
            get_status == StatusCode::NOT_FOUND || got.get("x").is_none(),
            "{what} at {levels} stored {got}"
        );
    }
}

#[tokio::test]
async fn nothing_deeper_than_can_be_read_back_is_stored_by_any_write() {
    let h = Harness::new().await;
    for levels in DEPTHS {
        // create, JSON and YAML
        let name = format!("c{levels}");
        let (status, body) = h
            .send(
                "POST",
                CONFIGMAPS,
                "application/json",
                deep_configmap(&name, levels),
            )
            .await;
        assert_readable_or_refused(&h, "create", levels, status, &body, &name).await;
        let name = format!("y{levels}");
        let yaml = format!(
            "{{apiVersion: v1, kind: ConfigMap, metadata: {{name: {name}}}, x: {}}}",
            nested_lists(levels - 1)
        );
        let (status, body) = h.send("POST", CONFIGMAPS, "application/yaml", yaml).await;
        assert_readable_or_refused(&h, "yaml create", levels, status, &body, &name).await;

        // update and every patch type, each on a fresh shallow object
        let shallow =
            |n: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": n}});
        let cases = [
            (
                "update",
                "PUT",
                "application/json",
                deep_configmap("u", levels),
            ),
            (
                "merge",
                "PATCH",
                "application/merge-patch+json",
                format!(r#"{{"x":{}}}"#, nested_lists(levels - 1)),
            ),
            (
                "strategic",
                "PATCH",
                "application/strategic-merge-patch+json",
                format!(r#"{{"x":{}}}"#, nested_lists(levels - 1)),
            ),
            (
                "apply",
                "PATCH",
                "application/apply-patch+yaml",
                format!("{{x: {}}}", nested_lists(levels - 1)),
            ),
            (
                "json",
                "PATCH",
                "application/json-patch+json",
                format!(
                    r#"[{{"op":"add","path":"/x","value":{}}}]"#,
                    nested_lists(levels - 1)
                ),
            ),
        ];
        for (what, method, content_type, body) in cases {
            let name = format!("{what}-{levels}");
            let (status, created) = h.json("POST", CONFIGMAPS, &shallow(&name)).await;
            assert_eq!(status, StatusCode::CREATED, "{created}");
            let body = body.replace(r#""name":"u""#, &format!(r#""name":"{name}""#));
            let (status, answer) = h
                .send(method, &format!("{CONFIGMAPS}/{name}"), content_type, body)
                .await;
            assert_readable_or_refused(&h, what, levels, status, &answer, &name).await;
            let (status, gone) = h
                .send(
                    "DELETE",
                    &format!("{CONFIGMAPS}/{name}"),
                    "application/json",
                    Body::empty(),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{what} at {levels}: delete {gone}");
        }
    }
    h.assert_serving().await;
}

async fn json_patch(h: &Harness, uri: &str, operations: Vec<Value>) -> (StatusCode, Value) {
    h.send(
        "PATCH",
        uri,
        "application/json-patch+json",
        Value::Array(operations).to_string(),
    )
    .await
}

#[tokio::test]
async fn json_patches_that_double_or_deepen_the_object_get_upstreams_errors() {
    let h = Harness::new().await;
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"},
                    "data": {"k": "0123456789abcdef0123456789abcdef"}, "x": [[1]]});
    let (status, created) = h.json("POST", CONFIGMAPS, &cm).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let uri = format!("{CONFIGMAPS}/cm");
    let doubling: Vec<Value> = (0..35)
        .map(|_| json!({"op": "copy", "from": "/x", "path": "/x/-"}))
        .collect();
    let (status, err) = json_patch(&h, &uri, doubling).await;
    assert_status(status, &err, 422, "Invalid");
    assert!(err["message"]
        .as_str()
        .unwrap()
        .starts_with("Unable to complete the copy, the accumulated size increase of copy is"));

    let deepening: Vec<Value> = (0..200)
        .map(|_| json!({"op": "copy", "from": "/x", "path": "/x/0"}))
        .collect();
    let (status, err) = json_patch(&h, &uri, deepening).await;
    assert_status(status, &err, 422, "Invalid");

    let too_many: Vec<Value> = (0..10_001)
        .map(|_| json!({"op": "test", "path": "/data/k", "value": "0123456789abcdef0123456789abcdef"}))
        .collect();
    let (status, err) = json_patch(&h, &uri, too_many).await;
    assert_status(status, &err, 413, "RequestEntityTooLarge");
    assert_eq!(
        err["message"],
        "Request entity too large: The allowed maximum operations in a JSON patch is 10000, got 10001"
    );

    let (status, unchanged) = h.get(&uri).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(unchanged["x"], json!([[1]]));
    assert_eq!(
        unchanged["metadata"]["resourceVersion"],
        created["metadata"]["resourceVersion"]
    );
}

#[tokio::test]
async fn objects_past_etcds_request_limit_get_413_on_every_write() {
    let h = Harness::new().await;
    let cm = |name: &str, bytes: usize| {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
               "x": "a".repeat(bytes)})
    };
    // Under the 3 MiB body limit, over the 1.5 MiB object limit.
    let (status, err) = h.json("POST", CONFIGMAPS, &cm("big", 1_600_000)).await;
    assert_status(status, &err, 413, "RequestEntityTooLarge");
    let (status, err) = h
        .json(
            "POST",
            &format!("{CONFIGMAPS}?dryRun=All"),
            &cm("big", 1_600_000),
        )
        .await;
    assert_status(status, &err, 413, "RequestEntityTooLarge");
    let (status, _) = h.get(&format!("{CONFIGMAPS}/big")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A 1 MiB object is fine...
    let (status, created) = h.json("POST", CONFIGMAPS, &cm("one", 1 << 20)).await;
    assert_eq!(status, StatusCode::CREATED, "{}", created["message"]);
    // ...but no write may grow it past the limit.
    let grow = json!({"y": "b".repeat(700_000)}).to_string();
    for (method, content_type, body) in [
        ("PATCH", "application/merge-patch+json", grow.clone()),
        (
            "PATCH",
            "application/strategic-merge-patch+json",
            grow.clone(),
        ),
        ("PATCH", "application/apply-patch+yaml", grow.clone()),
        (
            "PATCH",
            "application/json-patch+json",
            json!([{"op": "copy", "from": "/x", "path": "/y"}]).to_string(),
        ),
        ("PUT", "application/json", {
            let mut bigger = created.clone();
            bigger["y"] = json!("b".repeat(700_000));
            bigger.to_string()
        }),
    ] {
        let (status, err) = h
            .send(method, &format!("{CONFIGMAPS}/one"), content_type, body)
            .await;
        assert_status(status, &err, 413, "RequestEntityTooLarge");
    }
    let (status, one) = h.get(&format!("{CONFIGMAPS}/one")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(one.get("y").is_none());
    assert_eq!(
        one["metadata"]["resourceVersion"],
        created["metadata"]["resourceVersion"]
    );
}
