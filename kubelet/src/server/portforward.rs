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
        tunnelled(target, request).await
    } else {
        plain_spdy(target, request)
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

/// SPDY inside WebSocket binary messages.
async fn tunnelled(target: Arc<Target>, request: Request) -> Result<Response, RequestError> {
    let (mut parts, _body) = request.into_parts();
    let upgrade = WebSocketUpgrade::from_request_parts(&mut parts, &())
        .await
        .map_err(|rejection| {
            RequestError::BadRequest(format!(
                "unable to upgrade connection: {}",
                rejection.body_text()
            ))
        })?
        .protocols([TUNNEL_PROTOCOL]);
    if upgrade.selected_protocol().is_none() {
        return Err(RequestError::BadRequest(format!(
            "unable to upgrade connection: none of the requested subprotocols is supported (supported: {TUNNEL_PROTOCOL})"
        )));
    }
    Ok(upgrade.on_upgrade(move |socket| async move {
        let (session_side, bridge_side) = tokio::io::duplex(2 * CHUNK);
        let session = tokio::spawn(run_session(session_side, target));
        bridge(socket, bridge_side).await;
        if let Err(e) = session.await {
            tracing::warn!(error = %e, "port-forward session failed");
        }
    }))
}

/// Carries the byte stream of `pipe` in WebSocket binary messages, both ways, until either
/// side ends.
async fn bridge(socket: WebSocket, pipe: tokio::io::DuplexStream) {
    let (mut sink, mut source) = socket.split();
    let (mut pipe_read, mut pipe_write) = tokio::io::split(pipe);
    let from_client = async {
        while let Some(Ok(message)) = source.next().await {
            match message {
                Message::Binary(data) => {
                    if pipe_write.write_all(&data).await.is_err() {
                        break;
                    }
                }
                Message::Close(_) => break,
                // Pings are answered by the WebSocket layer; text has no meaning here.
                _ => {}
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
        if stream_id % 2 == 0 || self.going_away {
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
                let streams = Streams {
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

/// The streams of one forwarded connection and the way out to the client.
struct Streams {
    error: u32,
    data: u32,
    out: mpsc::Sender<Frame>,
}

impl Streams {
    async fn send(&self, stream_id: u32, fin: bool, data: Bytes) -> bool {
        self.out
            .send(Frame::Data {
                stream_id,
                fin,
                data,
            })
            .await
            .is_ok()
    }
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
                .send(streams.error, false, Bytes::from(message))
                .await;
            streams.send(streams.error, true, Bytes::new()).await;
            streams.send(streams.data, true, Bytes::new()).await;
            return;
        }
    };
    let (mut from_pod, mut to_pod) = connection.into_split();
    let client_to_pod = async {
        while let Some(message) = inbound.recv().await {
            match message {
                Inbound::Data(data) => {
                    if to_pod.write_all(&data).await.is_err() {
                        return false;
                    }
                }
                Inbound::Fin => {
                    let _ = to_pod.shutdown().await;
                    return true;
                }
            }
        }
        false
    };
    let pod_to_client = async {
        let mut buf = BytesMut::with_capacity(CHUNK);
        loop {
            buf.reserve(CHUNK);
            match from_pod.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if !streams
                        .send(streams.data, false, buf.split().freeze())
                        .await
                    {
                        return;
                    }
                }
            }
        }
        streams.send(streams.data, true, Bytes::new()).await;
    };
    tokio::pin!(client_to_pod, pod_to_client);
    let mut client_finished = false;
    loop {
        tokio::select! {
            finished = &mut client_to_pod, if !client_finished => {
                if !finished {
                    // Reset by the client, or the pod stopped reading: nothing more to do.
                    break;
                }
                client_finished = true;
            }
            _ = &mut pod_to_client => break,
        }
    }
    streams.send(streams.error, true, Bytes::new()).await;
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
