//! Forwarding one connection: connecting inside the pod's network namespace, copying both
//! ways, and the channel protocol's session (one connection per port).

use super::*;

/// What the session hands a connection's pod side from the client's data stream.
pub(super) enum Inbound {
    Data(Bytes),
    /// The client will send no more (its FIN). A closed queue without it is a reset.
    Fin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StreamType {
    Error,
    Data,
}

/// The channel protocol: port `i` is forwarded over one connection, on channels `2i`
/// (data, both ways) and `2i+1` (errors, to the client); each channel's first message is
/// the port, little-endian. The WebSocket closes once every port's connection has ended.
pub(super) async fn channel_session(socket: WebSocket, target: Arc<Target>, ports: Vec<u16>) {
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

/// The two streams of one forwarded connection and the way out to the client.
pub(super) enum Streams {
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

pub(super) fn channel_frame(channel: u8, data: &[u8]) -> Message {
    let mut frame = Vec::with_capacity(data.len() + 1);
    frame.push(channel);
    frame.extend_from_slice(data);
    Message::Binary(Bytes::from(frame))
}

/// How copying from the client to the pod ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ClientSide {
    /// The client's FIN, passed on as a write shutdown.
    Finished,
    /// The client reset the stream (or the session ended): the connection is abandoned.
    Reset,
    /// Writing to the pod failed; its replies may still come.
    PodStoppedReading,
}

/// Connects to the pod's `port` and copies both ways; see the module docs for when it ends.
pub(super) async fn forward(
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
pub(super) async fn connect(ports: &PodPorts, port: u16) -> io::Result<TcpStream> {
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
pub(super) fn connect_in_namespace(netns: &Path, port: u16) -> io::Result<std::net::TcpStream> {
    let namespace = std::fs::File::open(netns)?;
    nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|errno| io::Error::other(format!("entering the namespace: {errno}")))?;
    let dial = |ip: std::net::IpAddr| {
        std::net::TcpStream::connect_timeout(&SocketAddr::new(ip, port), CONNECT_TIMEOUT)
    };
    // IPv4 loopback first, then IPv6; the first error is the one reported.
    dial(Ipv4Addr::LOCALHOST.into()).or_else(|v4| dial(Ipv6Addr::LOCALHOST.into()).map_err(|_| v4))
}
