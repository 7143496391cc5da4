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

/// The channel protocol: port `i` is forwarded over one connection, on channels `2i`
/// (data, both ways) and `2i+1` (errors, to the client); each channel's first message is
/// the port, little-endian. The WebSocket closes once every port's connection has ended.
async fn channel_session(socket: WebSocket, target: Arc<Target>, ports: Vec<u16>) {
    let (mut sink, mut source) = socket.split();
    let (out, mut outgoing) = mpsc::channel::<Message>(OUTBOUND_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(message) = outgoing.recv().await {
            if sink.send(message).await.is_err() {
                return;
            }
        }
        let _ = sink.send(Message::Close(None)).await;
    });
    let mut queues = Vec::with_capacity(ports.len());
    let mut forwards = JoinSet::new();
    for (index, port) in ports.into_iter().enumerate() {
        // At most MAX_CHANNEL_PORTS ports, so both channels fit in a byte.
        let data = (2 * index) as u8;
        let error = data + 1;
        for channel in [data, error] {
            let _ = out.send(channel_frame(channel, &port.to_le_bytes())).await;
        }
        let (queue, inbound) = mpsc::channel(INBOUND_QUEUE);
        queues.push(queue);
        let streams = Streams::Channels {
            error,
            data,
            out: out.clone(),
        };
        forwards.spawn(forward(target.clone(), port, streams, inbound));
    }
    drop(out);
    let from_client = async move {
        while let Some(Ok(message)) = source.next().await {
            let frame = match message {
                Message::Binary(frame) => frame,
                Message::Close(_) => break,
                _ => continue,
            };
            let Some((&channel, payload)) = frame.split_first() else {
                continue;
            };
            // Odd channels carry errors to the client only.
            let queue = (channel & 1 == 0)
                .then(|| queues.get(usize::from(channel / 2)))
                .flatten();
            if let (Some(queue), false) = (queue, payload.is_empty()) {
                // A forward that has ended no longer reads; its data is dropped.
                let _ = queue.send(Inbound::Data(frame.slice(1..))).await;
            }
        }
    };
    let all_forwarded = async { while forwards.join_next().await.is_some() {} };
    tokio::select! {
        _ = from_client => {}
        _ = all_forwarded => {}
    }
    // Ends what is still running; the writer then closes the WebSocket.
    drop(forwards);
    let _ = writer.await;
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
        let mut buf = vec![0u8; 2 * CHUNK];
        loop {
            match pipe_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let data = Bytes::copy_from_slice(&buf[..n]);
                    if sink.send(Message::Binary(data)).await.is_err() {
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

/// What the session hands a connection's pod side from the client's data stream.
enum Inbound {
    Data(Bytes),
    /// The client will send no more (its FIN). A closed queue without it is a reset.
    Fin,
}

/// The two streams of one forwarded connection, as they arrive.
#[derive(Default)]
struct Pair {
    error_stream: Option<u32>,
    data_stream: Option<(u32, u16, mpsc::Receiver<Inbound>)>,
}

/// One SPDY connection: reads frames, pairs streams, starts a forward per pair.
struct Session {
    target: Arc<Target>,
    out: mpsc::Sender<Frame>,
    pairs: HashMap<String, Pair>,
    /// Where data frames of each open data stream go.
    inbound: HashMap<u32, mpsc::Sender<Inbound>>,
    forwards: JoinSet<()>,
    pair_timeouts: JoinSet<String>,
    going_away: bool,
}

async fn run_session<T>(io: T, target: Arc<Target>)
where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, writer) = tokio::io::split(io);
    let (out, frames) = mpsc::channel(OUTBOUND_QUEUE);
    let writer = tokio::spawn(write_frames(writer, frames));
    let mut session = Session {
        target,
        out,
        pairs: HashMap::new(),
        inbound: HashMap::new(),
        forwards: JoinSet::new(),
        pair_timeouts: JoinSet::new(),
        going_away: false,
    };
    let mut decoder = FrameDecoder::default();
    let mut buf = BytesMut::with_capacity(2 * CHUNK);
    'read: loop {
        tokio::select! {
            read = reader.read_buf(&mut buf) => match read {
                Ok(0) => break 'read,
                Ok(_) => loop {
                    match decoder.decode(&mut buf) {
                        Ok(Some(frame)) => session.handle(frame).await,
                        Ok(None) => break,
                        Err(e) => {
                            tracing::debug!(pod = %session.target.pod, error = %e, "port-forward: bad SPDY from the client");
                            let _ = session.out.send(Frame::GoAway { last_good_stream_id: 0, status: 1 }).await;
                            break 'read;
                        }
                    }
                },
                Err(e) => {
                    tracing::debug!(pod = %session.target.pod, error = %e, "port-forward connection ended");
                    break 'read;
                }
            },
            Some(Ok(request_id)) = session.pair_timeouts.join_next(), if !session.pair_timeouts.is_empty() => {
                session.pair_timed_out(request_id).await;
            }
        }
    }
    // Forwards end with the session: their sockets close as their tasks are dropped.
    drop(session);
    if let Err(e) = writer.await {
        tracing::debug!(error = %e, "port-forward writer failed");
    }
}

async fn write_frames<W: AsyncWrite + Unpin>(mut writer: W, mut frames: mpsc::Receiver<Frame>) {
    let mut encoder = FrameEncoder::default();
    let mut buf = BytesMut::new();
    while let Some(frame) = frames.recv().await {
        buf.clear();
        if let Err(e) = encoder.encode(&frame, &mut buf) {
            tracing::warn!(error = %e, "port-forward: encoding a frame failed");
            break;
        }
        // Whatever else is queued goes out in the same write.
        while let Ok(frame) = frames.try_recv() {
            if let Err(e) = encoder.encode(&frame, &mut buf) {
                tracing::warn!(error = %e, "port-forward: encoding a frame failed");
                return;
            }
        }
        if writer.write_all(&buf).await.is_err() || writer.flush().await.is_err() {
            return;
        }
    }
    let _ = writer.shutdown().await;
}

impl Session {
    async fn send(&self, frame: Frame) {
        // Fails only once the writer is gone, and then the reader ends the session too.
        let _ = self.out.send(frame).await;
    }

    async fn handle(&mut self, frame: Frame) {
        match frame {
            Frame::SynStream {
                stream_id, headers, ..
            } => self.stream_opened(stream_id, &headers).await,
            Frame::Data {
                stream_id,
                fin,
                data,
            } => {
                let Some(queue) = self.inbound.get(&stream_id) else {
                    // The error stream's FIN, or a stream already finished.
                    return;
                };
                let delivered = (data.is_empty() || queue.send(Inbound::Data(data)).await.is_ok())
                    && (!fin || queue.send(Inbound::Fin).await.is_ok());
                if fin || !delivered {
                    self.inbound.remove(&stream_id);
                }
            }
            Frame::RstStream { stream_id, .. } => {
                self.inbound.remove(&stream_id);
            }
            // Client pings have odd ids; the answer is the same frame.
            Frame::Ping { id } => self.send(Frame::Ping { id }).await,
            Frame::GoAway { .. } => self.going_away = true,
            Frame::SynReply { stream_id, .. } => {
                // The kubelet opens no streams.
                self.send(Frame::RstStream {
                    stream_id,
                    status: spdy::RST_INVALID_STREAM,
                })
                .await
            }
            Frame::Headers { .. }
            | Frame::Settings { .. }
            | Frame::WindowUpdate { .. }
            | Frame::Unknown { .. } => {}
        }
    }

    async fn stream_opened(&mut self, stream_id: u32, headers: &Headers) {
        if stream_id & 1 == 0 || self.going_away {
            self.send(Frame::RstStream {
                stream_id,
                status: spdy::RST_PROTOCOL_ERROR,
            })
            .await;
            return;
        }
        let (port, stream_type) = match stream_headers(headers) {
            Ok(valid) => valid,
            Err(reason) => {
                tracing::debug!(pod = %self.target.pod, stream_id, %reason, "port-forward stream rejected");
                return self.reply(stream_id, true).await;
            }
        };
        let request_id = spdy::header(headers, "requestid")
            .filter(|id| !id.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| {
                // Clients older than request ids open error then data streams back to
                // back, so their ids differ by two (upstream's same guess).
                match stream_type {
                    StreamType::Error => stream_id.to_string(),
                    StreamType::Data => stream_id.saturating_sub(2).to_string(),
                }
            });
        self.reply(stream_id, false).await;
        if !self.pairs.contains_key(&request_id) {
            let timed_out = request_id.clone();
            self.pair_timeouts.spawn(async move {
                tokio::time::sleep(STREAM_PAIR_TIMEOUT).await;
                timed_out
            });
        }
        let pair = self.pairs.entry(request_id.clone()).or_default();
        let duplicate = match stream_type {
            StreamType::Error if pair.error_stream.is_none() => {
                pair.error_stream = Some(stream_id);
                None
            }
            StreamType::Data if pair.data_stream.is_none() => {
                let (queue, receiver) = mpsc::channel(INBOUND_QUEUE);
                self.inbound.insert(stream_id, queue);
                pair.data_stream = Some((stream_id, port, receiver));
                None
            }
            StreamType::Error => Some("error"),
            StreamType::Data => Some("data"),
        };
        if let Some(kind) = duplicate {
            let message = format!(
                "error processing stream for request {request_id}: {kind} stream already assigned"
            );
            tracing::debug!(pod = %self.target.pod, %message, "port-forward");
            self.send(Frame::RstStream {
                stream_id,
                status: spdy::RST_PROTOCOL_ERROR,
            })
            .await;
            return;
        }
        if pair.error_stream.is_some() && pair.data_stream.is_some() {
            if let Some(Pair {
                error_stream: Some(error_stream),
                data_stream: Some((data_stream, port, inbound)),
            }) = self.pairs.remove(&request_id)
            {
                let streams = Streams::Spdy {
                    error: error_stream,
                    data: data_stream,
                    out: self.out.clone(),
                };
                let target = self.target.clone();
                self.forwards.spawn(forward(target, port, streams, inbound));
            }
        }
    }

    async fn reply(&self, stream_id: u32, reject: bool) {
        self.send(Frame::SynReply {
            stream_id,
            fin: reject,
            headers: Vec::new(),
        })
        .await
    }

    async fn pair_timed_out(&mut self, request_id: String) {
        let Some(pair) = self.pairs.remove(&request_id) else {
            return;
        };
        let message = format!("(request={request_id}) timed out waiting for streams");
        tracing::debug!(pod = %self.target.pod, %message, "port-forward");
        if let Some(error_stream) = pair.error_stream {
            self.send(Frame::Data {
                stream_id: error_stream,
                fin: true,
                data: Bytes::from(message),
            })
            .await;
        }
        if let Some((data_stream, _, _)) = pair.data_stream {
            self.inbound.remove(&data_stream);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamType {
    Error,
    Data,
}

/// The port and stream type of a new stream, with upstream's reasons for refusing one.
fn stream_headers(headers: &Headers) -> Result<(u16, StreamType), String> {
    let port = spdy::header(headers, "port")
        .filter(|p| !p.is_empty())
        .ok_or_else(|| "\"port\" header is required".to_string())?;
    let port = match port.parse::<u16>() {
        Ok(0) => return Err(format!("port {port:?} must be > 0")),
        Ok(n) => n,
        Err(e) => return Err(format!("unable to parse {port:?} as a port: {e}")),
    };
    match spdy::header(headers, "streamtype") {
        None | Some("") => Err("\"streamtype\" header is required".into()),
        Some("error") => Ok((port, StreamType::Error)),
        Some("data") => Ok((port, StreamType::Data)),
        Some(other) => Err(format!("invalid stream type {other:?}")),
    }
}

/// The two streams of one forwarded connection and the way out to the client.
enum Streams {
    /// SPDY streams (ids), ended with FIN.
    Spdy {
        error: u32,
        data: u32,
        out: mpsc::Sender<Frame>,
    },
    /// WebSocket channels (numbers), which the channel protocol cannot end one by one.
    Channels {
        error: u8,
        data: u8,
        out: mpsc::Sender<Message>,
    },
}

impl Streams {
    /// Sends `data` on one of the streams, then ends it if `fin`. False once the client
    /// side of the session is gone.
    async fn send(&self, stream: StreamType, fin: bool, data: Bytes) -> bool {
        match self {
            Streams::Spdy {
                error,
                data: d,
                out,
            } => {
                let stream_id = if stream == StreamType::Error {
                    *error
                } else {
                    *d
                };
                out.send(Frame::Data {
                    stream_id,
                    fin,
                    data,
                })
                .await
                .is_ok()
            }
            Streams::Channels {
                error,
                data: d,
                out,
            } => {
                if data.is_empty() {
                    return !out.is_closed();
                }
                let channel = if stream == StreamType::Error {
                    *error
                } else {
                    *d
                };
                out.send(channel_frame(channel, &data)).await.is_ok()
            }
        }
    }
}

fn channel_frame(channel: u8, data: &[u8]) -> Message {
    let mut frame = Vec::with_capacity(data.len() + 1);
    frame.push(channel);
    frame.extend_from_slice(data);
    Message::Binary(Bytes::from(frame))
}

/// How copying from the client to the pod ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientSide {
    /// The client's FIN, passed on as a write shutdown.
    Finished,
    /// The client reset the stream (or the session ended): the connection is abandoned.
    Reset,
    /// Writing to the pod failed; its replies may still come.
    PodStoppedReading,
}

/// Connects to the pod's `port` and copies both ways; see the module docs for when it ends.
async fn forward(
    target: Arc<Target>,
    port: u16,
    streams: Streams,
    mut inbound: mpsc::Receiver<Inbound>,
) {
    let connection = match connect(&target.ports, port).await {
        Ok(connection) => connection,
        Err(e) => {
            let where_ = match &target.ports.netns {
                Some(netns) => format!("inside namespace {:?}", netns.display().to_string()),
                None => "on the host network".to_string(),
            };
            let message = format!(
                "error forwarding port {port} to pod {}, uid {}: failed to connect to localhost:{port} {where_}: {e}",
                target.pod, target.ports.uid
            );
            tracing::info!(%message, "port-forward");
            streams
                .send(StreamType::Error, false, Bytes::from(message))
                .await;
            streams.send(StreamType::Error, true, Bytes::new()).await;
            streams.send(StreamType::Data, true, Bytes::new()).await;
            return;
        }
    };
    let (mut from_pod, mut to_pod) = connection.into_split();
    // Owns the queue, so once it ends the session stops queueing for this connection.
    let client_to_pod = async move {
        while let Some(message) = inbound.recv().await {
            match message {
                Inbound::Data(data) => {
                    if to_pod.write_all(&data).await.is_err() {
                        return ClientSide::PodStoppedReading;
                    }
                }
                Inbound::Fin => {
                    let _ = to_pod.shutdown().await;
                    return ClientSide::Finished;
                }
            }
        }
        ClientSide::Reset
    };
    let pod_to_client = async {
        let mut buf = BytesMut::with_capacity(CHUNK);
        loop {
            buf.reserve(CHUNK);
            match from_pod.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if !streams
                        .send(StreamType::Data, false, buf.split().freeze())
                        .await
                    {
                        return;
                    }
                }
            }
        }
        streams.send(StreamType::Data, true, Bytes::new()).await;
    };
    tokio::pin!(client_to_pod, pod_to_client);
    let mut client_finished = false;
    loop {
        tokio::select! {
            client = &mut client_to_pod, if !client_finished => {
                if client == ClientSide::Reset {
                    break;
                }
                // What the pod still sends goes out until it closes.
                client_finished = true;
            }
            _ = &mut pod_to_client => break,
        }
    }
    streams.send(StreamType::Error, true, Bytes::new()).await;
}

/// A connection to `localhost:port` in the pod's network.
async fn connect(ports: &PodPorts, port: u16) -> io::Result<TcpStream> {
    let Some(netns) = ports.netns.clone() else {
        return match TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await {
            Ok(stream) => Ok(stream),
            Err(v4) => TcpStream::connect((Ipv6Addr::LOCALHOST, port))
                .await
                .map_err(|_| v4),
        };
    };
    let (done, result) = oneshot::channel();
    std::thread::Builder::new()
        .name("port-forward-netns".into())
        .spawn(move || {
            let _ = done.send(connect_in_namespace(&netns, port));
        })?;
    let stream = result
        .await
        .map_err(|_| io::Error::other("the connecting thread ended without an answer"))??;
    stream.set_nonblocking(true)?;
    TcpStream::from_std(stream)
}

/// Runs on a thread of its own, which it leaves in the pod's namespace: the thread ends
/// right after, and the socket keeps the namespace it was made in.
fn connect_in_namespace(netns: &Path, port: u16) -> io::Result<std::net::TcpStream> {
    let namespace = std::fs::File::open(netns)?;
    nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|errno| io::Error::other(format!("entering the namespace: {errno}")))?;
    let dial = |ip: std::net::IpAddr| {
        std::net::TcpStream::connect_timeout(&SocketAddr::new(ip, port), CONNECT_TIMEOUT)
    };
    // IPv4 loopback first, then IPv6; the first error is the one reported.
    dial(Ipv4Addr::LOCALHOST.into()).or_else(|v4| dial(Ipv6Addr::LOCALHOST.into()).map_err(|_| v4))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use tokio::io::DuplexStream;
    use tokio::net::TcpListener;

    /// The client's end of a session: encodes what it sends, decodes what it gets.
    struct Client {
        io: DuplexStream,
        encoder: FrameEncoder,
        decoder: FrameDecoder,
        buf: BytesMut,
    }

    impl Client {
        /// A session whose pod network is this test's own namespace, entered through
        /// its path as a pod's would be.
        fn start() -> Client {
            let (client, server) = tokio::io::duplex(64 * 1024);
            let target = Arc::new(Target {
                pod: "default/web".into(),
                ports: PodPorts {
                    uid: "uid-1".into(),
                    netns: Some(PathBuf::from("/proc/self/ns/net")),
                },
            });
            tokio::spawn(run_session(server, target));
            Client {
                io: client,
                encoder: FrameEncoder::default(),
                decoder: FrameDecoder::default(),
                buf: BytesMut::new(),
            }
        }

        async fn send(&mut self, frame: Frame) {
            let mut wire = BytesMut::new();
            self.encoder.encode(&frame, &mut wire).unwrap();
            self.io.write_all(&wire).await.unwrap();
        }

        async fn next(&mut self) -> Frame {
            loop {
                if let Some(frame) = self.decoder.decode(&mut self.buf).unwrap() {
                    return frame;
                }
                let n = self.io.read_buf(&mut self.buf).await.unwrap();
                assert_ne!(n, 0, "the session ended");
            }
        }

        async fn open(&mut self, stream_id: u32, stream_type: &str, port: u16, request_id: &str) {
            let headers = vec![
                ("streamtype".to_string(), stream_type.to_string()),
                ("port".to_string(), port.to_string()),
                ("requestid".to_string(), request_id.to_string()),
            ];
            self.send(Frame::SynStream {
                stream_id,
                associated_to: 0,
                priority: 0,
                fin: false,
                unidirectional: false,
                headers,
            })
            .await;
        }

        /// Opens a connection's streams as kubectl does: error (half-closed at once) then
        /// data.
        async fn connect(&mut self, error: u32, port: u16, request_id: &str) {
            self.open(error, "error", port, request_id).await;
            assert_eq!(self.next().await, reply(error, false));
            self.send(data(error, true, b"")).await;
            self.open(error + 2, "data", port, request_id).await;
            assert_eq!(self.next().await, reply(error + 2, false));
        }

        /// Everything sent on `stream_id` up to its FIN, collecting other frames aside.
        async fn read_stream(&mut self, stream_id: u32, others: &mut Vec<Frame>) -> Vec<u8> {
            let mut content = Vec::new();
            loop {
                match self.next().await {
                    Frame::Data {
                        stream_id: id,
                        fin,
                        data,
                    } if id == stream_id => {
                        content.extend_from_slice(&data);
                        if fin {
                            return content;
                        }
                    }
                    other => others.push(other),
                }
            }
        }
    }

    fn reply(stream_id: u32, fin: bool) -> Frame {
        Frame::SynReply {
            stream_id,
            fin,
            headers: Vec::new(),
        }
    }

    fn data(stream_id: u32, fin: bool, bytes: &[u8]) -> Frame {
        Frame::Data {
            stream_id,
            fin,
            data: Bytes::copy_from_slice(bytes),
        }
    }

    /// Answers each connection with "echo:" and what it read until the client's FIN.
    async fn echo_server() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    socket.read_to_end(&mut request).await.unwrap();
                    socket.write_all(b"echo:").await.unwrap();
                    socket.write_all(&request).await.unwrap();
                });
            }
        });
        port
    }

    /// A loopback port nothing listens on.
    async fn closed_port() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn forwards_both_ways_with_half_close_and_ends_both_streams() {
        let port = echo_server().await;
        let mut client = Client::start();
        client.connect(1, port, "0").await;
        client.send(data(3, false, b"hello ")).await;
        client.send(data(3, true, b"pod")).await;
        let mut others = Vec::new();
        assert_eq!(client.read_stream(3, &mut others).await, b"echo:hello pod");
        assert_eq!(client.read_stream(1, &mut others).await, b"");
        assert!(others.is_empty(), "{others:?}");
    }

    #[tokio::test]
    async fn a_refused_port_is_reported_on_the_error_stream_and_the_session_goes_on() {
        let refused = closed_port().await;
        let port = echo_server().await;
        let mut client = Client::start();
        client.connect(1, refused, "0").await;
        let mut others = Vec::new();
        let message = String::from_utf8(client.read_stream(1, &mut others).await).unwrap();
        assert!(
            message.starts_with(&format!(
                "error forwarding port {refused} to pod default/web, uid uid-1: failed to connect to localhost:{refused} inside namespace \"/proc/self/ns/net\": "
            )),
            "{message}"
        );
        assert!(message.contains("refused"), "{message}");
        // The data stream ends too, and the next connection works.
        assert!(others.is_empty(), "{others:?}");
        assert_eq!(client.next().await, data(3, true, b""));
        client.connect(5, port, "1").await;
        client.send(data(7, true, b"again")).await;
        assert_eq!(client.read_stream(7, &mut others).await, b"echo:again");
    }

    #[tokio::test]
    async fn invalid_streams_are_refused_and_pings_answered() {
        let mut client = Client::start();
        client.open(1, "data", 0, "0").await;
        assert_eq!(client.next().await, reply(1, true));
        client.open(3, "stdin", 80, "0").await;
        assert_eq!(client.next().await, reply(3, true));
        client.send(Frame::Ping { id: 7 }).await;
        assert_eq!(client.next().await, Frame::Ping { id: 7 });
        // A second error stream for one request is refused; the first stands.
        client.open(5, "error", 80, "9").await;
        assert_eq!(client.next().await, reply(5, false));
        client.open(7, "error", 80, "9").await;
        assert_eq!(client.next().await, reply(7, false));
        assert_eq!(
            client.next().await,
            Frame::RstStream {
                stream_id: 7,
                status: spdy::RST_PROTOCOL_ERROR
            }
        );
    }

    #[tokio::test]
    async fn a_reset_data_stream_still_ends_the_error_stream() {
        // A pod that never answers nor closes: only the client's reset ends the copy.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (held_tx, mut held) = mpsc::channel(1);
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            held_tx.send(socket).await.unwrap();
        });
        let mut client = Client::start();
        client.connect(1, port, "0").await;
        let _pod_side = held.recv().await.unwrap();
        client
            .send(Frame::RstStream {
                stream_id: 3,
                status: 5,
            })
            .await;
        let mut others = Vec::new();
        assert_eq!(client.read_stream(1, &mut others).await, b"");
    }

    #[test]
    fn stream_headers_are_checked_like_upstream() {
        let headers = |pairs: &[(&str, &str)]| -> Headers {
            pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            stream_headers(&headers(&[("port", "80"), ("streamtype", "data")])),
            Ok((80, StreamType::Data))
        );
        assert_eq!(
            stream_headers(&headers(&[("streamtype", "data")])),
            Err("\"port\" header is required".into())
        );
        assert!(
            stream_headers(&headers(&[("port", "70000"), ("streamtype", "data")]))
                .unwrap_err()
                .starts_with("unable to parse \"70000\" as a port")
        );
        assert_eq!(
            stream_headers(&headers(&[("port", "80")])),
            Err("\"streamtype\" header is required".into())
        );
    }

    /// Knows one pod, default/web, whose network is this test's own namespace.
    struct OnePod;

    #[async_trait::async_trait]
    impl KubeletApi for OnePod {
        async fn running_container(
            &self,
            _namespace: &str,
            _pod: &str,
            _container: Option<&str>,
        ) -> Result<String, crate::api::LookupError> {
            Err(crate::api::LookupError::NotFound("no containers".into()))
        }
        async fn log_paths(
            &self,
            _namespace: &str,
            _pod: &str,
            _container: Option<&str>,
            _previous: bool,
        ) -> Result<rkube_cri::LogPaths, crate::api::LookupError> {
            Err(crate::api::LookupError::NotFound("no logs".into()))
        }
        fn runtime_for(&self, _id: &str) -> Option<Arc<dyn rkube_cri::ContainerRuntime>> {
            None
        }
        async fn pod_ports(
            &self,
            namespace: &str,
            pod: &str,
        ) -> Result<PodPorts, crate::api::LookupError> {
            if (namespace, pod) != ("default", "web") {
                return Err(crate::api::LookupError::NotFound(format!(
                    "pod {pod:?} not found"
                )));
            }
            Ok(PodPorts {
                uid: "uid-1".into(),
                netns: Some(PathBuf::from("/proc/self/ns/net")),
            })
        }
    }

    /// Answers the first chunk it reads with "echo:" and that chunk, then closes.
    async fn echo_once_server() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let n = socket.read(&mut buf).await.unwrap();
                    socket.write_all(b"echo:").await.unwrap();
                    socket.write_all(&buf[..n]).await.unwrap();
                });
            }
        });
        port
    }

    /// The next binary message; None once the WebSocket closes.
    async fn next_binary<S, E>(socket: &mut S) -> Option<Vec<u8>>
    where
        S: futures::Stream<Item = Result<tokio_tungstenite::tungstenite::Message, E>> + Unpin,
        E: std::fmt::Display,
    {
        use tokio_tungstenite::tungstenite::Message as WsMessage;
        loop {
            match socket.next().await {
                Some(Ok(WsMessage::Binary(data))) => return Some(data.to_vec()),
                Some(Ok(WsMessage::Close(_))) | None => return None,
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("{e}"),
            }
        }
    }

    #[tokio::test]
    async fn the_websocket_channel_protocol_forwards_each_port_on_its_channels() {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        use tokio_tungstenite::tungstenite::Message as WsMessage;

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let kubelet = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, super::super::router(Arc::new(OnePod)))
                .await
                .unwrap()
        });
        let open = echo_once_server().await;
        let closed = closed_port().await;
        let url = format!("ws://{kubelet}/portForward/default/web?ports={open}%2C{closed}");
        let mut request = url.into_client_request().unwrap();
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "v4.channel.k8s.io".parse().unwrap(),
        );
        let (mut socket, response) = tokio_tungstenite::connect_async(request).await.unwrap();
        assert_eq!(
            response.headers()["sec-websocket-protocol"],
            "v4.channel.k8s.io"
        );
        // Each channel first names its port.
        let mut firsts = Vec::new();
        for _ in 0..4 {
            firsts.push(next_binary(&mut socket).await.unwrap());
        }
        firsts.sort();
        let named = |channel: u8, port: u16| {
            let mut frame = vec![channel];
            frame.extend_from_slice(&port.to_le_bytes());
            frame
        };
        let mut expected = vec![
            named(0, open),
            named(1, open),
            named(2, closed),
            named(3, closed),
        ];
        expected.sort();
        assert_eq!(firsts, expected);

        socket
            .send(WsMessage::Binary(Bytes::from_static(b"\x00hi")))
            .await
            .unwrap();
        let mut data = Vec::new();
        let mut errors = String::new();
        while let Some(frame) = next_binary(&mut socket).await {
            match frame[0] {
                0 => data.extend_from_slice(&frame[1..]),
                3 => errors.push_str(std::str::from_utf8(&frame[1..]).unwrap()),
                other => panic!("unexpected channel {other}: {frame:?}"),
            }
        }
        // Both forwards ended (the pod closed; the other port refused), and so did the
        // WebSocket.
        assert_eq!(data, b"echo:hi");
        assert!(
            errors.starts_with(&format!(
                "error forwarding port {closed} to pod default/web"
            )),
            "{errors}"
        );
    }

    #[test]
    fn channel_protocol_ports_come_from_the_query() {
        assert_eq!(query_ports("ports=80%2C8080").unwrap(), vec![80, 8080]);
        assert_eq!(query_ports("port=80&port=81").unwrap(), vec![80, 81]);
        assert_eq!(
            query_ports("container=x").unwrap_err(),
            RequestError::BadRequest("query parameter \"port\" is required".into())
        );
        assert!(query_ports("ports=0").is_err());
        assert!(query_ports("ports=http").is_err());
    }

    #[test]
    fn protocol_negotiation_follows_upstream() {
        let mut headers = HeaderMap::new();
        assert!(negotiate(&headers).is_ok());
        headers.insert(
            PROTOCOL_HEADER,
            HeaderValue::from_static("portforward.k8s.io"),
        );
        assert!(negotiate(&headers).is_ok());
        headers.insert(
            PROTOCOL_HEADER,
            HeaderValue::from_static("v2.portforward.k8s.io"),
        );
        assert!(negotiate(&headers).is_err());
    }
}
