//! Subresources the kubelet serves (pods/log, exec, attach, portforward): the API server
//! finds the pod's node, and proxies the request to that node's kubelet HTTP port
//! (`status.daemonEndpoints.kubeletEndpoint.Port` on the node's InternalIP). Streaming
//! responses (`logs -f`) are passed through as they come; upgrades (WebSocket exec) are
//! proxied at the connection level, so the client speaks to the kubelet end to end.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderValue, Request as HttpRequest, StatusCode};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use rkube_api::registry::{self, Subresource};
use rkube_api::ApiError;
use serde_json::Value;

use crate::error::ApiResult;
use crate::handlers::Request;
use crate::ApiState;

/// Upstream's default kubelet port, used when a node does not report one.
const DEFAULT_KUBELET_PORT: u64 = 10250;

fn internal(msg: String) -> ApiError {
    ApiError::internal(msg)
}

/// `host:port` of the kubelet running `node`.
fn kubelet_address(state: &ApiState, node: &str) -> Result<String, ApiError> {
    let nodes =
        registry::find("", "v1", "nodes").ok_or_else(|| internal("nodes not registered".into()))?;
    let cached = state
        .cache
        .get(nodes, &nodes.key(None, node))
        .ok_or_else(|| ApiError::not_found(nodes, node))?;
    let obj = cached.value().map_err(|e| internal(e.to_string()))?;
    let addresses = obj["status"]["addresses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let pick = |kind: &str| {
        addresses
            .iter()
            .find(|a| a["type"] == kind)
            .and_then(|a| a["address"].as_str())
            .map(str::to_string)
    };
    let host = pick("InternalIP")
        .or_else(|| pick("Hostname"))
        .ok_or_else(|| {
            ApiError::bad_request(format!("node {node} reports no address for its kubelet"))
        })?;
    let port = obj["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .filter(|p| *p > 0 && *p < 65536)
        .unwrap_or(DEFAULT_KUBELET_PORT);
    Ok(if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

/// The container a request is for: `container=` from the query, else the pod's default
/// (annotation `kubectl.kubernetes.io/default-container`, or its only container).
fn container_name(pod: &Value, requested: Option<&str>) -> Result<String, ApiError> {
    if let Some(c) = requested.filter(|c| !c.is_empty()) {
        return Ok(c.to_string());
    }
    if let Some(d) =
        pod["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"].as_str()
    {
        return Ok(d.to_string());
    }
    let names: Vec<&str> = pod["spec"]["containers"]
        .as_array()
        .map(|cs| cs.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default();
    match names.as_slice() {
        [one] => Ok((*one).to_string()),
        _ => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {}, choose one of: [{}]",
            pod["metadata"]["name"].as_str().unwrap_or(""),
            names.join(" ")
        ))),
    }
}

fn query_value<'a>(query: &'a str, key: &str) -> Option<std::borrow::Cow<'a, str>> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains('%') && !s.contains('+') {
        return std::borrow::Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(
                    std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                    16,
                ) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    std::borrow::Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

pub async fn to_kubelet(
    state: Arc<ApiState>,
    req: Request,
    sub: Subresource,
) -> ApiResult<Response> {
    let resource = req.target.resource;
    let namespace = req.target.namespace.clone().unwrap_or_default();
    let name = req.target.name.clone().unwrap_or_default();
    let kv = state
        .store
        .get(&resource.key(Some(&namespace), &name))
        .await
        .map_err(|e| crate::error::store_error(resource, &name, e))?
        .ok_or_else(|| ApiError::not_found(resource, &name))?;
    let pod: Value = serde_json::from_slice(&kv.value).map_err(|e| internal(e.to_string()))?;
    let node = pod["spec"]["nodeName"].as_str().unwrap_or("");
    if node.is_empty() {
        return Err(
            ApiError::bad_request(format!("pod {name} does not have a host assigned")).into(),
        );
    }
    let address = kubelet_address(&state, node)?;
    let query = req.raw_query.clone().unwrap_or_default();
    let path = match sub {
        Subresource::PortForward => format!("/portForward/{namespace}/{name}"),
        _ => {
            let container = container_name(&pod, query_value(&query, "container").as_deref())?;
            let verb = match sub {
                Subresource::Log => "containerLogs",
                Subresource::Exec => "exec",
                _ => "attach",
            };
            format!("/{verb}/{namespace}/{name}/{container}")
        }
    };
    let uri = if query.is_empty() {
        path
    } else {
        format!("{path}?{query}")
    };
    forward(&address, &uri, req).await
}

async fn forward(address: &str, uri: &str, mut req: Request) -> ApiResult<Response> {
    let dial_error = |e: &dyn std::fmt::Display| {
        internal(format!("error dialing backend: dial tcp {address}: {e}"))
    };
    let tcp = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| dial_error(&e))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| dial_error(&e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "kubelet connection ended");
        }
    });
    let mut builder = HttpRequest::builder().method(req.method.clone()).uri(uri);
    for (k, v) in req.headers.iter() {
        // Hop-by-hop headers stay, for upgrades need them end to end; Host is the kubelet's.
        if k != header::HOST && k != header::CONTENT_LENGTH {
            builder = builder.header(k, v);
        }
    }
    builder = builder.header(header::HOST, address);
    let outgoing = builder
        .body(http_body_util::Full::new(req.body.clone()))
        .map_err(|e| internal(format!("building kubelet request: {e}")))?;
    let mut response = sender
        .send_request(outgoing)
        .await
        .map_err(|e| dial_error(&e))?;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let client_upgrade = req.upgrade.take().ok_or_else(|| {
            ApiError::bad_request(
                "the kubelet switched protocols but the request was not an upgrade",
            )
        })?;
        let kubelet_upgrade = hyper::upgrade::on(&mut response);
        let mut reply = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
        for (k, v) in response.headers() {
            reply = reply.header(k, v);
        }
        tokio::spawn(async move {
            match (client_upgrade.await, kubelet_upgrade.await) {
                (Ok(client), Ok(kubelet)) => {
                    let mut client = TokioIo::new(client);
                    let mut kubelet = TokioIo::new(kubelet);
                    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut kubelet).await {
                        tracing::debug!(error = %e, "upgraded stream ended");
                    }
                }
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(error = %e, "upgrade to kubelet failed")
                }
            }
        });
        return reply
            .body(Body::empty())
            .map_err(|e| internal(e.to_string()).into());
    }
    let (parts, body) = response.into_parts();
    let mut out = Response::new(Body::new(body));
    *out.status_mut() = parts.status;
    for (k, v) in parts.headers.iter() {
        if k != header::TRANSFER_ENCODING && k != header::CONNECTION {
            out.headers_mut().insert(k, v.clone());
        }
    }
    if !out.headers().contains_key(header::CONTENT_TYPE) {
        out.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn picks_the_container_like_upstream() {
        let one = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}});
        assert_eq!(container_name(&one, None).unwrap(), "a");
        assert_eq!(container_name(&one, Some("b")).unwrap(), "b");
        let two = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        let err = container_name(&two, None).unwrap_err();
        assert_eq!(
            err.message,
            "a container name must be specified for pod p, choose one of: [a b]"
        );
        let defaulted = json!({"metadata": {"name": "p", "annotations": {"kubectl.kubernetes.io/default-container": "b"}},
                               "spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        assert_eq!(container_name(&defaulted, None).unwrap(), "b");
    }

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(
            query_value("command=sh&container=my%2Dc", "container").as_deref(),
            Some("my-c")
        );
        assert_eq!(query_value("a=1", "container"), None);
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
