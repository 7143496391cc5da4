//! The controller manager lists and watches each resource once, however many of its
//! controllers read it: counted at an in-process API server whose router records every
//! list and watch request by resource.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::Request;
use axum::middleware::Next;
use common::{deployment, nodes_config, wait_for, ControllerManager, TIMEOUT};
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, PostParams};
use kube::Api;
use parking_lot::Mutex;
use serde_json::json;

/// Marks the test's own requests, which are not counted.
const TEST_CLIENT_HEADER: &str = "x-rkube-test-client";

/// Requests per resource path (namespace left out), lists and watches apart.
#[derive(Clone, Default)]
struct Counts(Arc<Mutex<BTreeMap<(String, &'static str), usize>>>);

impl Counts {
    fn record(&self, request: &Request) {
        if request.method() != axum::http::Method::GET
            || request.headers().contains_key(TEST_CLIENT_HEADER)
        {
            return;
        }
        let query = request.uri().query().unwrap_or_default();
        let watch = query
            .split('&')
            .any(|pair| pair == "watch=true" || pair == "watch=1");
        let Some(resource) = collection_of(request.uri().path()) else {
            return;
        };
        let verb = if watch { "watch" } else { "list" };
        *self.0.lock().entry((resource, verb)).or_default() += 1;
    }

    fn get(&self, resource: &str, verb: &str) -> usize {
        self.0
            .lock()
            .iter()
            .filter(|((r, v), _)| r == resource && *v == verb)
            .map(|(_, n)| *n)
            .sum()
    }

    fn snapshot(&self) -> BTreeMap<(String, &'static str), usize> {
        self.0.lock().clone()
    }
}

/// `/api/v1/namespaces/ns/pods` and `/api/v1/pods` -> `v1/pods`; `None` for anything but
/// a collection (a single object, discovery).
fn collection_of(path: &str) -> Option<String> {
    let rest = path
        .strip_prefix("/api/")
        .or_else(|| path.strip_prefix("/apis/"))?;
    let parts: Vec<&str> = rest.split('/').collect();
    let (group_version, tail) = if path.starts_with("/api/") {
        (parts.first()?.to_string(), &parts[1..])
    } else {
        (format!("{}/{}", parts.first()?, parts.get(1)?), &parts[2..])
    };
    let tail = match tail {
        ["namespaces", _, rest @ ..] if !rest.is_empty() => rest,
        other => other,
    };
    match tail {
        [resource] => Some(format!("{group_version}/{resource}")),
        _ => None,
    }
}

struct CountingApiServer {
    url: String,
    client: kube::Client,
    counts: Counts,
    _server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl CountingApiServer {
    async fn start() -> CountingApiServer {
        let dir = tempfile::tempdir().unwrap();
        let config = rkube_apiserver::Config::new(rkube_apiserver::StorageConfig::Embedded {
            data_dir: dir.path().join("data"),
        });
        let store = rkube_apiserver::open_store(&config.storage).await.unwrap();
        let (_stop, stopped) = tokio::sync::watch::channel(false);
        let state = rkube_apiserver::state(&config, store, stopped).unwrap();
        rkube_apiserver::bootstrap(&state).await;
        let counts = Counts::default();
        let recorder = counts.clone();
        let app = rkube_apiserver::app(state).layer(axum::middleware::from_fn(
            move |request: Request, next: Next| {
                recorder.record(&request);
                next.run(request)
            },
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            // Keeps the shutdown sender alive for as long as the server runs.
            let _stop = _stop;
            axum::serve(listener, app).await.unwrap();
        });
        let mut kube_config = kube::Config::new(url.parse().unwrap());
        kube_config.default_namespace = "default".into();
        kube_config.headers.push((
            axum::http::HeaderName::from_static(TEST_CLIENT_HEADER),
            axum::http::HeaderValue::from_static("1"),
        ));
        let client = kube::Client::try_from(kube_config).unwrap();
        CountingApiServer {
            url,
            client,
            counts,
            _server: server,
            _dir: dir,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_resource_is_listed_and_watched_once() {
    let server = CountingApiServer::start().await;
    let client = server.client.clone();
    let cm = ControllerManager::start(nodes_config(&server.url, "*")).await;

    // Barriers: each controller has synced its caches (it only acts after) once it acts.
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::default_namespaced(client.clone());
    deployments
        .create(
            &PostParams::default(),
            &serde_json::from_value(deployment("web", 1, "img")).unwrap(),
        )
        .await
        .unwrap();
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    wait_for(
        "deployment and replicaset controllers made a pod",
        TIMEOUT,
        || async {
            !pods
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .is_empty()
        },
    )
    .await;
    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::default_namespaced(client.clone());
    services
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "web"},
                "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}))
            .unwrap(),
        )
        .await
        .unwrap();
    let endpoints: Api<Endpoints> = Api::default_namespaced(client.clone());
    let slices: Api<EndpointSlice> = Api::default_namespaced(client.clone());
    wait_for("endpoints and slice controllers wrote", TIMEOUT, || async {
        endpoints.get_opt("web").await.unwrap().is_some()
            && !slices
                .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
                .await
                .unwrap()
                .items
                .is_empty()
    })
    .await;
    // The collector starts work only once every one of its caches is synced.
    let configmaps: Api<ConfigMap> = Api::default_namespaced(client.clone());
    configmaps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "orphan", "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "gone", "uid": "no-such-uid"}]}}))
            .unwrap(),
        )
        .await
        .unwrap();
    wait_for(
        "garbage collector synced and collected",
        TIMEOUT,
        || async { configmaps.get_opt("orphan").await.unwrap().is_none() },
    )
    .await;
    // Every informer's watch follows its list at once.
    let counts = server.counts.clone();
    wait_for("every listed resource watched", TIMEOUT, || async {
        counts
            .snapshot()
            .keys()
            .filter(|(_, verb)| *verb == "list")
            .all(|(resource, _)| counts.get(resource, "watch") > 0)
    })
    .await;
    cm.stop().await;

    let counts = server.counts.snapshot();
    for ((resource, verb), n) in &counts {
        eprintln!("{verb:5} {resource}: {n}");
    }
    let repeated: Vec<String> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|((resource, verb), n)| format!("{verb} {resource} x{n}"))
        .collect();
    assert!(
        repeated.is_empty(),
        "requested more than once: {repeated:?}"
    );
    for shared in [
        "v1/pods",
        "apps/v1/replicasets",
        "v1/nodes",
        "v1/services",
        "coordination.k8s.io/v1/leases",
        "discovery.k8s.io/v1/endpointslices",
    ] {
        assert_eq!(server.counts.get(shared, "watch"), 1, "{shared}");
    }
}

#[test]
fn collection_paths_name_their_resource() {
    assert_eq!(collection_of("/api/v1/pods").as_deref(), Some("v1/pods"));
    assert_eq!(
        collection_of("/api/v1/namespaces/default/pods").as_deref(),
        Some("v1/pods")
    );
    assert_eq!(
        collection_of("/api/v1/namespaces").as_deref(),
        Some("v1/namespaces")
    );
    assert_eq!(collection_of("/api/v1/namespaces/default"), None);
    assert_eq!(
        collection_of("/apis/apps/v1/namespaces/d/replicasets").as_deref(),
        Some("apps/v1/replicasets")
    );
    assert_eq!(
        collection_of("/apis/apps/v1/namespaces/d/replicasets/x"),
        None
    );
    assert_eq!(collection_of("/apis/apps/v1"), None);
}
