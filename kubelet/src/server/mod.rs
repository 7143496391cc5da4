//! The kubelet's HTTP server: health, container logs, exec, attach and port forwarding.
//!
//! The API server proxies `pods/log`, `pods/exec` and `pods/attach` here at the connection
//! level, so these endpoints speak to kubectl end to end:
//!
//! - `GET /healthz`, `/livez`, `/readyz` (rkube-runtime's health endpoints)
//! - `GET /containerLogs/{namespace}/{pod}/{container}` (or without the last segment and
//!   `?container=`): plain text, streamed while following. See [`logs`] for how the two
//!   output files are combined and where timestamps come from.
//! - `GET /exec/{namespace}/{pod}/{container}?command=..` and `GET /attach/...`: WebSocket
//!   upgrade speaking the Kubernetes channel protocols (`v5.channel.k8s.io`,
//!   `v4.channel.k8s.io`, `channel.k8s.io`). See [`stream`].
//! - `GET|POST /portForward/{namespace}/{pod}`: SPDY/3.1 upgrade, or SPDY tunnelled in a
//!   WebSocket (`SPDY/3.1+portforward.k8s.io`). See [`portforward`] and [`spdy`].
//!
//! What the server needs from the kubelet is the [`KubeletApi`] trait (defined with the
//! kubelet core in `crate::api`, re-exported here). Lookup failures answer 404/400 with a
//! `metav1.Status` body before any upgrade, so clients see upstream-shaped errors.

mod logs;
mod portforward;
mod spdy;
mod stream;

use std::sync::Arc;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use rkube_runtime::component::health;
use serde::{Deserialize, Serialize};

pub use crate::api::{KubeletApi, LookupError, PodPorts};

/// Why a request could not be served; answered as a `metav1.Status` with the matching code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The pod or container is not known here (404).
    #[error("{0}")]
    NotFound(String),
    /// The parameters are invalid or ask for something impossible (400).
    #[error("{0}")]
    BadRequest(String),
    /// The kubelet or runtime failed (500).
    #[error("{0}")]
    Internal(String),
}

impl From<LookupError> for RequestError {
    fn from(err: LookupError) -> Self {
        match err {
            LookupError::NotFound(message) => RequestError::NotFound(message),
            LookupError::BadRequest(message) => RequestError::BadRequest(message),
        }
    }
}

impl IntoResponse for RequestError {
    fn into_response(self) -> Response {
        let (code, reason) = match &self {
            RequestError::NotFound(_) => (StatusCode::NOT_FOUND, "NotFound"),
            RequestError::BadRequest(_) => (StatusCode::BAD_REQUEST, "BadRequest"),
            RequestError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
        };
        let status = Status {
            kind: Some("Status"),
            api_version: Some("v1"),
            metadata: EmptyMeta {},
            status: "Failure",
            message: Some(self.to_string()),
            reason: Some(reason.to_string()),
            details: None,
            code: Some(code.as_u16()),
        };
        let body = serde_json::to_vec(&status).unwrap_or_default();
        (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
    }
}

/// `metav1.Status`, with fields in upstream's order so bodies read like upstream's.
#[derive(Debug, Serialize)]
pub(crate) struct Status {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    #[serde(rename = "apiVersion", skip_serializing_if = "Option::is_none")]
    pub api_version: Option<&'static str>,
    pub metadata: EmptyMeta,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<StatusDetails>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
}

#[derive(Debug, Serialize)]
pub(crate) struct EmptyMeta {}

#[derive(Debug, Serialize)]
pub(crate) struct StatusDetails {
    pub causes: Vec<StatusCause>,
}

#[derive(Debug, Serialize)]
pub(crate) struct StatusCause {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub message: String,
}

/// The kubelet's HTTP API. Serve it with `axum::serve` (WebSocket upgrades need a real
/// connection; `oneshot` works for everything else).
pub fn router(api: Arc<dyn KubeletApi>) -> Router {
    health::router(health::always_ready())
        .route("/containerLogs/{namespace}/{pod}", get(container_logs))
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs),
        )
        .route("/exec/{namespace}/{pod}", get(exec))
        .route("/exec/{namespace}/{pod}/{container}", get(exec))
        .route("/attach/{namespace}/{pod}", get(attach))
        .route("/attach/{namespace}/{pod}/{container}", get(attach))
        .route(
            "/portForward/{namespace}/{pod}",
            get(port_forward).post(port_forward),
        )
        .with_state(api)
}

/// Query parameters in order, repeated keys kept (`command` repeats).
type RawQuery = Query<Vec<(String, String)>>;

/// The container named in the path, else `?container=`, else none (the pod's only one).
fn container_from(path_container: Option<String>, query: &[(String, String)]) -> Option<String> {
    path_container.or_else(|| query_value(query, "container").map(str::to_string))
}

pub(crate) fn query_value<'a>(query: &'a [(String, String)], key: &str) -> Option<&'a str> {
    query
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Upstream's query boolean: absent, "false" or "0" is false; anything else (even empty)
/// is true. kubectl sends `true`, the API server's own redirects send `1`.
pub(crate) fn query_flag(query: &[(String, String)], key: &str) -> bool {
    match query_value(query, key) {
        None => false,
        Some(value) => !(value.eq_ignore_ascii_case("false") || value == "0"),
    }
}

/// `{namespace}/{pod}` or `{namespace}/{pod}/{container}`: one handler serves both routes.
#[derive(Deserialize)]
struct ContainerPath {
    namespace: String,
    pod: String,
    container: Option<String>,
}

async fn container_logs(
    State(api): State<Arc<dyn KubeletApi>>,
    Path(path): Path<ContainerPath>,
    Query(query): RawQuery,
) -> Response {
    let container = container_from(path.container, &query);
    logs::serve(api, path.namespace, path.pod, container, query).await
}

async fn exec(
    State(api): State<Arc<dyn KubeletApi>>,
    Path(path): Path<ContainerPath>,
    Query(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    serve_stream(stream::Kind::Exec, api, path, query, upgrade).await
}

async fn attach(
    State(api): State<Arc<dyn KubeletApi>>,
    Path(path): Path<ContainerPath>,
    Query(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    serve_stream(stream::Kind::Attach, api, path, query, upgrade).await
}

async fn port_forward(
    State(api): State<Arc<dyn KubeletApi>>,
    Path((namespace, pod)): Path<(String, String)>,
    request: axum::extract::Request,
) -> Response {
    portforward::serve(api, namespace, pod, request).await
}

/// Exec and attach differ only in `kind`; both take the same lookup and upgrade path.
async fn serve_stream(
    kind: stream::Kind,
    api: Arc<dyn KubeletApi>,
    path: ContainerPath,
    query: Vec<(String, String)>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let container = container_from(path.container, &query);
    stream::serve(
        kind,
        api,
        path.namespace,
        path.pod,
        container,
        query,
        upgrade,
    )
    .await
}

/// Go's RFC3339Nano: nanoseconds with trailing zeros trimmed, `Z` for UTC.
pub(crate) fn rfc3339_nano(at: chrono::DateTime<chrono::Utc>) -> String {
    use chrono::Timelike;
    let seconds = at.format("%Y-%m-%dT%H:%M:%S").to_string();
    let nanos = at.nanosecond() % 1_000_000_000;
    if nanos == 0 {
        return format!("{seconds}Z");
    }
    let fraction = format!("{nanos:09}");
    format!("{seconds}.{}Z", fraction.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn rfc3339_nano_trims_trailing_zeros_like_go() {
        let base = chrono::Utc.with_ymd_and_hms(2024, 5, 6, 7, 8, 9).unwrap();
        assert_eq!(rfc3339_nano(base), "2024-05-06T07:08:09Z");
        let with_millis = base + chrono::Duration::milliseconds(120);
        assert_eq!(rfc3339_nano(with_millis), "2024-05-06T07:08:09.12Z");
        let with_nanos = base + chrono::Duration::nanoseconds(1);
        assert_eq!(rfc3339_nano(with_nanos), "2024-05-06T07:08:09.000000001Z");
    }

    #[test]
    fn query_flags_follow_upstream_conversion() {
        let query: Vec<(String, String)> = [("a", "true"), ("b", "0"), ("c", ""), ("d", "FALSE")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert!(query_flag(&query, "a"));
        assert!(!query_flag(&query, "b"));
        assert!(query_flag(&query, "c"));
        assert!(!query_flag(&query, "d"));
        assert!(!query_flag(&query, "missing"));
    }

    #[test]
    fn error_status_body_is_upstream_shaped() {
        let response = RequestError::NotFound("pods \"x\" not found".into()).into_response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }
}
