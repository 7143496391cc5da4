//! Resource requests: dispatch by verb to the read, watch, write, delete and subresource
//! paths.
//!
//! Reads of collections and watches come from the watch cache; reads of one object and all
//! writes go to storage, writes guarded by compare-and-swap on the modification revision.
//! What differs between kinds is not decided here but by the resource's
//! [`Strategy`](crate::strategy::Strategy).

mod body;
mod delete;
mod read;
mod subresource;
mod watch;
mod write;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap, Method};
use axum::response::Response;
use bytes::Bytes;
use rkube_api::registry::Subresource;
use rkube_api::ApiError;

use crate::error::ApiResult;
use crate::path::Target;
use crate::query::Params;
use crate::strategy::UpdateScope;
use crate::ApiState;

pub use body::decode_body;

/// Upstream's request body limit.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;
/// How long a read waits for the watch cache to reach a requested revision.
const CACHE_WAIT: Duration = Duration::from_secs(3);
/// Optimistic-concurrency retries for writes without a client-given resourceVersion.
const MAX_WRITE_ATTEMPTS: usize = 16;

pub struct Request {
    pub method: Method,
    pub target: Target,
    pub params: Params,
    /// The query string as sent (forwarded verbatim to kubelets).
    pub raw_query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The client's side of an HTTP upgrade (exec/attach over WebSocket).
    pub upgrade: Option<hyper::upgrade::OnUpgrade>,
}

impl Request {
    pub(crate) fn key(&self) -> String {
        self.target
            .resource
            .key(self.target.namespace.as_deref(), self.name())
    }

    pub(crate) fn name(&self) -> &str {
        self.target.name.as_deref().unwrap_or("")
    }

    pub(crate) fn content_type(&self) -> &str {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
    }
}

pub async fn dispatch(state: Arc<ApiState>, req: Request) -> ApiResult<Response> {
    let r = req.target.resource;
    if r.namespaced && req.target.namespace.is_none() && req.method != Method::GET {
        return Err(ApiError::method_not_allowed(format!(
            "{} is namespaced: use /namespaces/<namespace>/{} for {}",
            r.plural, r.plural, req.method
        ))
        .into());
    }
    match (
        &req.method,
        req.target.name.is_some(),
        req.target.subresource,
    ) {
        (&Method::GET, false, None) if req.params.is_watch() => watch::watch(state, req).await,
        (&Method::GET, false, None) => read::list(state, req).await,
        (&Method::GET, true, None) | (&Method::GET, true, Some(Subresource::Status)) => {
            read::get(state, req).await
        }
        (&Method::POST, false, None) => write::create(state, req).await,
        (&Method::PUT, true, None) => write::update(state, req, UpdateScope::Main).await,
        (&Method::PUT, true, Some(Subresource::Status)) => {
            write::update(state, req, UpdateScope::Status).await
        }
        (&Method::PATCH, true, None) => write::patch(state, req, UpdateScope::Main).await,
        (&Method::PATCH, true, Some(Subresource::Status)) => {
            write::patch(state, req, UpdateScope::Status).await
        }
        (&Method::DELETE, true, None) => delete::delete(state, req).await,
        (&Method::DELETE, false, None) => delete::delete_collection(state, req).await,
        (&Method::GET, true, Some(Subresource::Scale)) => subresource::scale_get(state, req).await,
        (&Method::PUT, true, Some(Subresource::Scale))
        | (&Method::PATCH, true, Some(Subresource::Scale)) => {
            subresource::scale_write(state, req).await
        }
        (&Method::POST, true, Some(Subresource::Binding)) => subresource::bind(state, req).await,
        (&Method::POST, true, Some(Subresource::Eviction)) => subresource::evict(state, req).await,
        (&Method::PUT, true, Some(Subresource::Finalize)) => {
            subresource::finalize(state, req).await
        }
        (_, true, Some(sub)) if sub.is_kubelet_stream() => {
            crate::proxy::to_kubelet(state, req, sub).await
        }
        _ => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({} {})",
            req.method,
            r.qualified_name()
        ))
        .into()),
    }
}
