//! The SPDY session: frames in and out, streams paired by request id, one forward per pair.

use super::forward::{Inbound, StreamType, Streams};
use super::*;

/// The two streams of one forwarded connection, as they arrive.
#[derive(Default)]
pub(super) struct Pair {
    error_stream: Option<u32>,
    data_stream: Option<(u32, u16, mpsc::Receiver<Inbound>)>,
}

/// One SPDY connection: reads frames, pairs streams, starts a forward per pair.
pub(super) struct Session {
    target: Arc<Target>,
    out: mpsc::Sender<Frame>,
    pairs: HashMap<String, Pair>,
    /// Where data frames of each open data stream go.
    inbound: HashMap<u32, mpsc::Sender<Inbound>>,
    forwards: JoinSet<()>,
    pair_timeouts: JoinSet<String>,
    going_away: bool,
}

pub(super) async fn run_session<T>(io: T, target: Arc<Target>)
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

pub(super) async fn write_frames<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut frames: mpsc::Receiver<Frame>,
) {
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

/// The port and stream type of a new stream, with upstream's reasons for refusing one.
pub(super) fn stream_headers(headers: &Headers) -> Result<(u16, StreamType), String> {
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
