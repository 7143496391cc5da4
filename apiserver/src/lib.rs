//! rkube-apiserver: the Kubernetes REST API over axum, backed by an MVCC store.
//!
//! Map of the crate:
//! - [`run`] / [`app`]: wiring. `run(config, listener, shutdown)` is what the binary and
//!   the tests call; [`app`] is the router, usable without a socket.
//! - `path`: the Kubernetes URL space -> (resource, namespace, name, subresource).
//! - `handlers`: the verbs (get, list, watch, create, update, patch, delete,
//!   deletecollection) and the scale/binding/eviction/finalize subresources, one module each.
//! - `strategy`: what differs between kinds, one `Strategy` per kind (server-owned fields,
//!   generation, deletion, subresource rules, printer); `strategy::prepare_*` is what every
//!   write shares (metadata, status/spec split, defaulting and validation).
//! - `cache`: the watch cache feeding lists and watches from one storage watch.
//! - `objects`: stored-object bookkeeping (encoding, size and depth limits, metadata
//!   accessors, body type/schema checks); `admission`: ClusterIP/NodePort allocation.
//! - `discovery`: /version, /api, /apis, resource lists, OpenAPI v3.
//! - `render`: lists, Tables and watch events from cached bytes.
//!
//! Invariant: this crate is the only one in the workspace that depends on `rkube-store`.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod admission;
pub mod cache;
pub mod discovery;
pub mod error;
pub mod event_ttl;
pub mod handlers;
pub mod limits;
pub mod objects;
pub mod path;
pub mod proxy;
pub mod query;
pub mod render;
pub mod strategy;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request as HttpRequest, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body_util::BodyExt;
use rkube_api::ApiError;
use rkube_store::Store;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admission::{Ipv4Range, ServiceAllocator};
use crate::cache::WatchCache;
use crate::error::ErrorResponse;
use crate::path::Route;
use crate::query::Params;
use crate::render::json_value;

/// Where objects are stored.
#[derive(Clone, Debug)]
pub enum StorageConfig {
    /// The embedded on-disk store under this directory (the default).
    Embedded { data_dir: PathBuf },
    /// An etcd v3 cluster.
    Etcd { endpoints: Vec<String> },
}

#[derive(Clone, Debug)]
pub struct Config {
    pub storage: StorageConfig,
    /// Events kept for watches resuming from an older resourceVersion.
    pub watch_history: usize,
    pub service_cluster_ip_range: String,
    /// How often old storage revisions are compacted (upstream: 5 minutes).
    pub compaction_interval: Duration,
    /// Events are deleted this long after their last occurrence (upstream's `--event-ttl`,
    /// 1 h); zero keeps them forever.
    pub event_ttl: Duration,
    /// How often expired Events are looked for (more often when the TTL is short).
    pub event_sweep_interval: Duration,
    /// Requests in flight, request and watch timeouts (upstream's defaults).
    pub limits: limits::Limits,
}

impl Config {
    pub fn new(storage: StorageConfig) -> Config {
        Config {
            storage,
            watch_history: 10_000,
            service_cluster_ip_range: "10.96.0.0/12".to_string(),
            compaction_interval: Duration::from_secs(300),
            event_ttl: event_ttl::DEFAULT_EVENT_TTL,
            event_sweep_interval: event_ttl::DEFAULT_SWEEP_INTERVAL,
            limits: limits::Limits::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("opening storage: {0}")]
    Storage(#[from] rkube_store::StoreError),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("serving HTTP: {0}")]
    Serve(#[from] std::io::Error),
}

/// Shared by every request.
pub struct ApiState {
    pub store: Arc<dyn Store>,
    pub cache: Arc<WatchCache>,
    pub shutdown: watch::Receiver<bool>,
    pub services: ServiceAllocator,
    pub limiter: limits::Limiter,
}

pub async fn open_store(storage: &StorageConfig) -> Result<Arc<dyn Store>, ServerError> {
    Ok(match storage {
        StorageConfig::Embedded { data_dir } => {
            // Opening replays the log from disk: blocking work, kept off the async workers.
            let dir = data_dir.clone();
            let opened = tokio::task::spawn_blocking(move || {
                rkube_store::embedded::EmbeddedStore::open(&dir)
            })
            .await
            .map_err(|e| ServerError::Config(format!("store open task failed: {e}")))??;
            Arc::new(opened)
        }
        StorageConfig::Etcd { endpoints } => {
            Arc::new(rkube_store::etcd::EtcdStore::connect(endpoints).await?)
        }
    })
}

/// Builds the shared state over an opened store and starts the watch cache.
pub fn state(
    config: &Config,
    store: Arc<dyn Store>,
    shutdown: watch::Receiver<bool>,
) -> Result<Arc<ApiState>, ServerError> {
    let range: Ipv4Range = config
        .service_cluster_ip_range
        .parse()
        .map_err(ServerError::Config)?;
    let cache = WatchCache::start(store.clone(), config.watch_history, shutdown.clone());
    Ok(Arc::new(ApiState {
        store,
        cache,
        shutdown,
        services: ServiceAllocator::new(range),
        limiter: limits::Limiter::new(&config.limits),
    }))
}

/// Serves the API on `listener` until `shutdown` completes, then drains requests (watches
/// end at once) and returns.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let store = open_store(&config.storage).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let state = state(&config, store.clone(), stop_rx)?;
    bootstrap(&state).await;
    let compactor = tokio::spawn(compact_periodically(
        store.clone(),
        config.compaction_interval,
        state.shutdown.clone(),
    ));
    let event_sweeper = tokio::spawn(event_ttl::sweep_periodically(
        state.clone(),
        config.event_ttl,
        config.event_sweep_interval,
        state.shutdown.clone(),
    ));
    let addr = listener.local_addr()?;
    tracing::info!(%addr, storage = ?config.storage, "rkube-apiserver serving");
    let graceful = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    axum::serve(listener, app(state.clone()))
        .with_graceful_shutdown(graceful)
        .await?;
    compactor.abort();
    let _ = compactor.await;
    // It holds the state (and so the store): it must be gone before the store is released.
    event_sweeper.abort();
    let _ = event_sweeper.await;
    state.cache.join_feeder().await;
    drop(state);
    // The store closes (and releases its directory) when the last handle goes. axum's
    // connection tasks report completion just before dropping their copy of the router
    // state, so serve() can return while one still holds the store: wait for them, so
    // that a restart on the same data directory finds it free.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while Arc::strong_count(&store) > 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(store);
    tracing::info!("rkube-apiserver stopped");
    Ok(())
}

/// Completes when the shutdown flag turns true (or its sender is gone). A plain function so
/// that no watch guard is held across an await (it is not `Send`).
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Creates the namespaces every cluster has. Idempotent; retried until storage answers.
pub async fn bootstrap(state: &ApiState) {
    let Some(namespaces) = rkube_api::registry::find("", "v1", "namespaces") else {
        return;
    };
    for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let mut obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        if let Err(e) = strategy::prepare_create(namespaces, None, &mut obj) {
            tracing::error!(error = %e, "bootstrap namespace {name} invalid");
            continue;
        }
        let Ok(bytes) = objects::encode_for_storage(&mut obj) else {
            continue;
        };
        let mut delay = Duration::from_millis(100);
        loop {
            match state
                .store
                .create(&namespaces.key(None, name), Bytes::from(bytes.clone()))
                .await
            {
                Ok(_) | Err(rkube_store::StoreError::AlreadyExists { .. }) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "bootstrap: creating namespace {name} failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// Upstream compacts etcd every five minutes to the revision seen five minutes earlier, so
/// history of at least one interval is always available to resuming watchers.
async fn compact_periodically(
    store: Arc<dyn Store>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut previous: Option<i64> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stopped(&mut shutdown) => return,
        }
        if let Some(rev) = previous {
            if let Err(e) = store.compact(rev).await {
                tracing::warn!(error = %e, revision = rev, "compaction failed");
            }
        }
        previous = store.current_revision().await.ok();
    }
}

/// The router. Fixed paths are routes; everything under /api and /apis goes through
/// the Kubernetes URL parser.
pub fn app(state: Arc<ApiState>) -> Router {
    let version = get(|| async { json_value(StatusCode::OK, &discovery::version()) });
    let core = get(|headers: HeaderMap| async move { root_discovery(&headers, true) });
    let groups = get(|headers: HeaderMap| async move { root_discovery(&headers, false) });
    // Upstream serves these three with a trailing slash too (the Python client asks for
    // `/version/`, `/api/` and `/apis/`); resource paths take one through `path::parse`.
    // The health checks and `/openapi/v3/` do not: upstream answers 404 there.
    let router = Router::new()
        .route("/version", version.clone())
        .route("/version/", version)
        .route("/healthz", get(health))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(health))
        .route("/api", core.clone())
        .route("/api/", core)
        .route("/apis", groups.clone())
        .route("/apis/", groups)
        .route(
            "/openapi/v3",
            get(|| async { json_value(StatusCode::OK, &discovery::openapi_index()) }),
        )
        .route("/openapi/v3/{*path}", get(openapi_document))
        .fallback(resource_request)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(state.limiter.layer())
        .with_state(state);
    error::catch_panics(router)
}

/// `/api` and `/apis`: aggregated discovery when the client asks for it (one round trip
/// instead of one per group version), the classic documents otherwise.
fn root_discovery(headers: &HeaderMap, core: bool) -> Response {
    let accept = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if discovery::wants_aggregated(accept) {
        let mut resp = json_value(StatusCode::OK, &discovery::aggregated(core));
        resp.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static(discovery::AGGREGATED_CONTENT_TYPE),
        );
        return resp;
    }
    let doc = if core {
        discovery::api_versions()
    } else {
        discovery::api_group_list()
    };
    json_value(StatusCode::OK, &doc)
}

async fn health(State(state): State<Arc<ApiState>>) -> Response {
    if state.cache.is_ready() {
        "ok".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "watch cache not ready").into_response()
    }
}

/// Takes the raw URI rather than a `Path` extractor, whose rejection of an undecodable path
/// (`%FF`) is plain text instead of a Status.
async fn openapi_document(uri: axum::http::Uri) -> Response {
    let path = uri.path().strip_prefix("/openapi/v3/").unwrap_or("");
    let segments: Vec<&str> = path.split('/').collect();
    let doc = match segments.as_slice() {
        ["api", v] => discovery::openapi_document("", v),
        ["apis", g, v] => discovery::openapi_document(g, v),
        _ => None,
    };
    match doc {
        Some(d) => json_value(StatusCode::OK, &d),
        None => ErrorResponse(ApiError::path_not_found()).into_response(),
    }
}

async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    let limited = http_body_util::Limited::new(body, handlers::MAX_BODY_BYTES);
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::too_large(
                "Request entity too large: limit is 3145728",
            ))
        }
        Err(e) => Err(ApiError::bad_request(format!("reading request body: {e}"))),
    }
}

async fn resource_request(State(state): State<Arc<ApiState>>, request: HttpRequest) -> Response {
    let (mut parts, body) = request.into_parts();
    let route = match path::parse(parts.uri.path()) {
        Ok(r) => r,
        Err(_) => return ErrorResponse(ApiError::path_not_found()).into_response(),
    };
    let target = match route {
        Route::CoreResourceList => return discovery_or_404(discovery::resource_list("", "v1")),
        Route::Group(g) => return discovery_or_404(discovery::api_group(&g)),
        Route::GroupVersionResourceList { group, version } => {
            return discovery_or_404(discovery::resource_list(&group, &version))
        }
        Route::Resource(t) => t,
    };
    let params = match Params::from_query(parts.uri.query()) {
        Ok(p) => p,
        Err(e) => return ErrorResponse(e).into_response(),
    };
    let body = if parts.method == Method::GET {
        Bytes::new()
    } else {
        match read_body(body).await {
            Ok(b) => b,
            Err(e) => return ErrorResponse(e).into_response(),
        }
    };
    tracing::debug!(method = %parts.method, uri = %parts.uri, "request");
    let req = handlers::Request {
        method: parts.method.clone(),
        target,
        params,
        raw_query: parts.uri.query().map(str::to_string),
        upgrade: parts.extensions.remove::<hyper::upgrade::OnUpgrade>(),
        headers: parts.headers,
        body,
    };
    match handlers::dispatch(state, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// A fixed path asked with a method it does not serve: a Status, as everywhere else.
async fn method_not_allowed() -> Response {
    ErrorResponse(ApiError::method_not_allowed(
        "the server does not allow this method on the requested resource",
    ))
    .into_response()
}

fn discovery_or_404(doc: Option<serde_json::Value>) -> Response {
    match doc {
        Some(d) => json_value(StatusCode::OK, &d),
        None => ErrorResponse(ApiError::path_not_found()).into_response(),
    }
}
