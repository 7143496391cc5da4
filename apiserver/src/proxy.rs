//! The seam for subresources the kubelet serves (pods/log, exec, attach, portforward).
//! The API server will proxy these to the pod's kubelet once the kubelet exists (issue #4);
//! until then it answers with a clear error instead of pretending.

use std::sync::Arc;

use axum::response::Response;
use rkube_api::registry::Subresource;
use rkube_api::ApiError;

use crate::error::ApiResult;
use crate::handlers::Request;
use crate::ApiState;

pub async fn to_kubelet(
    state: Arc<ApiState>,
    req: Request,
    sub: Subresource,
) -> ApiResult<Response> {
    let key = req.target.resource.key(
        req.target.namespace.as_deref(),
        req.target.name.as_deref().unwrap_or(""),
    );
    let name = req.target.name.as_deref().unwrap_or("");
    let kv = state
        .store
        .get(&key)
        .await
        .map_err(|e| crate::error::store_error(req.target.resource, name, e))?
        .ok_or_else(|| ApiError::not_found(req.target.resource, name))?;
    let pod: serde_json::Value =
        serde_json::from_slice(&kv.value).map_err(|e| ApiError::internal(e.to_string()))?;
    let node = pod["spec"]["nodeName"].as_str().unwrap_or("");
    if node.is_empty() {
        return Err(
            ApiError::bad_request(format!("pod {name} does not have a host assigned")).into(),
        );
    }
    Err(ApiError::service_unavailable(format!(
        "pods/{} is served by the kubelet on node {node}; rkube's API server does not proxy to kubelets yet",
        sub.name()
    ))
    .into())
}
