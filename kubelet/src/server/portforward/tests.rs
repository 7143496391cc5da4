use super::forward::StreamType;
use super::session::*;
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
