//! `pods/portforward`: `GET|POST /portForward/{namespace}/{pod}`, proxied here unchanged by
//! the API server.
//!
//! kubectl (1.31+) first asks for a WebSocket with subprotocol `SPDY/3.1+portforward.k8s.io`
//! and then speaks SPDY inside binary messages (message boundaries mean nothing); if that
//! upgrade fails it asks for plain SPDY (`Upgrade: SPDY/3.1`,
//! `X-Stream-Protocol-Version: portforward.k8s.io`). Both end in the same SPDY session.
//!
//! In the session every forwarded connection is two client-opened streams with headers
//! `streamtype` (`error` or `data`), `port` and `requestid`. Each stream gets an empty
//! SYN_REPLY (with FIN when its headers are invalid, as upstream rejects). Once both have
//! arrived the kubelet connects to `localhost:<port>` inside the pod's network namespace
//! and copies bytes: pod to client until the pod closes (then FIN on the data stream),
//! client to pod until the client's FIN (then a write shutdown towards the pod). A failure
//! to connect is written as text on the error stream; the error stream always ends with
//! FIN, since the client waits for it. Other connections of the session carry on.
//!
//! Clients that speak the WebSocket channel protocol instead (kube-rs, the Python client:
//! subprotocol `v4.channel.k8s.io`, ports in the query) get one connection per port, on
//! channels `2i` (data) and `2i+1` (errors) for the `i`th port; see [`channel_session`].
//!
//! The connection is opened by a short-lived thread that enters the pod's namespace with
//! `setns` (a socket stays in the namespace it was created in), never by a runtime worker
//! thread, which would stay in the pod's namespace afterwards.
//!
//! Data read from the client is handed to the pod connection through a small bounded
//! queue; a pod that does not read stalls the session's reader, which is how TCP would
//! push back too (SPDY's windows are not used, see [`super::spdy`]).

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use super::spdy::{self, Frame, FrameDecoder, FrameEncoder, Headers};
use super::{KubeletApi, RequestError};
use crate::api::PodPorts;
use forward::{channel_session, forward};
use session::run_session;

mod forward;
mod session;
#[cfg(test)]
mod tests;

/// The port-forward protocol, the only version upstream has.
const PROTOCOL: &str = "portforward.k8s.io";
/// The WebSocket subprotocol of SPDY tunnelled in WebSocket.
const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
/// WebSocket subprotocols in order of preference: the tunnel, then the channel protocol
/// (binary only; the base64 variant is not offered).
const WEBSOCKET_PROTOCOLS: [&str; 3] = [TUNNEL_PROTOCOL, "v4.channel.k8s.io", "channel.k8s.io"];
/// Two channels per port must fit in the channel byte.
const MAX_CHANNEL_PORTS: usize = 128;
const PROTOCOL_HEADER: &str = "x-stream-protocol-version";
/// How long the second stream of a connection may take to follow the first (upstream's
/// default `streamCreationTimeout`).
const STREAM_PAIR_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes read from the pod per data frame.
const CHUNK: usize = 32 * 1024;
/// Chunks from the client queued for one pod connection.
const INBOUND_QUEUE: usize = 16;
/// Frames queued for the writer.
const OUTBOUND_QUEUE: usize = 64;

/// Names the pod in errors and says where its ports are.
#[derive(Debug)]
struct Target {
    pod: String,
    ports: PodPorts,
}

pub(crate) async fn serve(
    api: Arc<dyn KubeletApi>,
    namespace: String,
    pod: String,
    request: Request,
) -> Response {
    let ports = match api.pod_ports(&namespace, &pod).await {
        Ok(ports) => ports,
        Err(e) => return RequestError::from(e).into_response(),
    };
    let target = Arc::new(Target {
        pod: format!("{namespace}/{pod}"),
        ports,
    });
    let wants_websocket = request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let result = if wants_websocket {
        websocket(target, request).await
    } else {
        plain_spdy(target, request)
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

/// A WebSocket: SPDY tunnelled in binary messages (kubectl), or the channel protocol
/// (kube-rs, the Python client).
async fn websocket(target: Arc<Target>, request: Request) -> Result<Response, RequestError> {
    let (mut parts, _body) = request.into_parts();
    let upgrade = WebSocketUpgrade::from_request_parts(&mut parts, &())
        .await
        .map_err(|rejection| {
            RequestError::BadRequest(format!(
                "unable to upgrade connection: {}",
                rejection.body_text()
            ))
        })?;
    let offered = upgrade.requested_protocols().count();
    let upgrade = upgrade.protocols(WEBSOCKET_PROTOCOLS);
    let tunnel = match upgrade.selected_protocol().map(|p| p.as_bytes()) {
        Some(protocol) => protocol == TUNNEL_PROTOCOL.as_bytes(),
        None if offered == 0 => false,
        None => {
            return Err(RequestError::BadRequest(format!(
                "unable to upgrade connection: none of the requested subprotocols is supported (supported: {})",
                WEBSOCKET_PROTOCOLS.join(", ")
            )))
        }
    };
    if tunnel {
        return Ok(upgrade.on_upgrade(move |socket| async move {
            let (session_side, bridge_side) = tokio::io::duplex(2 * CHUNK);
            let session = tokio::spawn(run_session(session_side, target));
            bridge(socket, bridge_side).await;
            if let Err(e) = session.await {
                tracing::warn!(error = %e, "port-forward session failed");
            }
        }));
    }
    let ports = query_ports(parts.uri.query().unwrap_or(""))?;
    Ok(upgrade.on_upgrade(move |socket| channel_session(socket, target, ports)))
}

/// The ports of a channel-protocol request: `port=` (what upstream's API server sends) or
/// `ports=` (what clients send it, passed through here), repeated or comma-separated.
fn query_ports(query: &str) -> Result<Vec<u16>, RequestError> {
    let mut ports = Vec::new();
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != "port" && key != "ports" {
            continue;
        }
        let value = value.replace("%2C", ",").replace("%2c", ",");
        if value.is_empty() {
            return Err(RequestError::BadRequest(format!(
                "query parameter \"{key}\" cannot be empty"
            )));
        }
        for port in value.split(',') {
            match port.parse::<u16>() {
                Ok(0) => {
                    return Err(RequestError::BadRequest(format!(
                        "port \"{value}\" must be > 0"
                    )))
                }
                Ok(port) => ports.push(port),
                Err(e) => {
                    return Err(RequestError::BadRequest(format!(
                        "unable to parse \"{value}\" as a port: {e}"
                    )))
                }
            }
        }
    }
    if ports.is_empty() {
        return Err(RequestError::BadRequest(
            "query parameter \"port\" is required".into(),
        ));
    }
    if ports.len() > MAX_CHANNEL_PORTS {
        return Err(RequestError::BadRequest(format!(
            "at most {MAX_CHANNEL_PORTS} ports can be forwarded over one connection"
        )));
    }
    Ok(ports)
}

/// Carries the byte stream of `pipe` in WebSocket binary messages, both ways, until either
/// side ends.
async fn bridge(socket: WebSocket, pipe: tokio::io::DuplexStream) {
    let (mut sink, mut source) = socket.split();
    let (mut pipe_read, mut pipe_write) = tokio::io::split(pipe);
    let from_client = async {
        while let Some(Ok(message)) = source.next().await {
            let data = match message {
                Message::Binary(data) => data,
                Message::Close(_) => break,
                // Pings are answered by the WebSocket layer; text has no meaning here.
                _ => continue,
            };
            if pipe_write.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = pipe_write.shutdown().await;
    };
    let to_client = async {
        // Read into a shared buffer and hand each chunk on as a frozen slice of it, as the
        // pod side does, rather than copying every chunk once more.
        let mut buf = BytesMut::with_capacity(2 * CHUNK);
        loop {
            buf.reserve(2 * CHUNK);
            match pipe_read.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if sink
                        .send(Message::Binary(buf.split().freeze()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        let _ = sink.send(Message::Close(None)).await;
    };
    tokio::select! {
        _ = from_client => {}
        _ = to_client => {}
    }
}

/// SPDY directly on the upgraded HTTP/1.1 connection.
fn plain_spdy(target: Arc<Target>, mut request: Request) -> Result<Response, RequestError> {
    let headers = request.headers();
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has(header::CONNECTION, "upgrade") || !has(header::UPGRADE, "SPDY/3.1") {
        return Err(RequestError::BadRequest(format!(
            "unable to upgrade: missing upgrade headers in request: {:?}",
            upgrade_headers(headers)
        )));
    }
    negotiate(headers)?;
    let on_upgrade = request
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>()
        .ok_or_else(|| {
            RequestError::BadRequest("unable to upgrade: the connection cannot be upgraded".into())
        })?;
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => run_session(TokioIo::new(upgraded), target).await,
            Err(e) => tracing::warn!(error = %e, "port-forward upgrade failed"),
        }
    });
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let out = response.headers_mut();
    out.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    out.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    out.insert(PROTOCOL_HEADER, HeaderValue::from_static(PROTOCOL));
    Ok(response)
}

fn upgrade_headers(headers: &HeaderMap) -> Vec<String> {
    [header::CONNECTION, header::UPGRADE]
        .iter()
        .flat_map(|name| {
            headers
                .get_all(name)
                .iter()
                .map(move |v| format!("{name}: {}", v.to_str().unwrap_or("")))
        })
        .collect()
}

/// Upstream's handshake: a client that names no protocol gets the only one; one that
/// names others is refused.
fn negotiate(headers: &HeaderMap) -> Result<(), RequestError> {
    let offered: Vec<&str> = headers
        .get_all(PROTOCOL_HEADER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    if offered.is_empty() || offered.contains(&PROTOCOL) {
        return Ok(());
    }
    Err(RequestError::BadRequest(format!(
        "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server supports [\"{PROTOCOL}\"]"
    )))
}
