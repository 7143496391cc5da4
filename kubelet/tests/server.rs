//! The kubelet HTTP server over a real socket: logs, exec and attach against a scripted
//! runtime and a fake kubelet.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use common::ScriptedRuntime;
use futures::{SinkExt, StreamExt};
use rkube_cri::{ContainerRuntime, ExecConfig, ExecIo, LogPaths, RuntimeError};
use rkubelet::server::{router, KubeletApi, LookupError};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

const CONTAINER_ID: &str = "web-app-1";

/// The commands exec in the one container knows.
async fn scripted_exec(config: ExecConfig, mut io: ExecIo) -> rkube_cri::Result<i32> {
    let args = &config.command[1..];
    match config.command[0].as_str() {
        "echo" => {
            let _ = io
                .stdout
                .send(Bytes::from(format!("{}\n", args.join(" "))))
                .await;
            Ok(0)
        }
        // fail CODE MESSAGE: MESSAGE on stderr, exit CODE.
        "fail" => {
            let message = Bytes::from(format!("{}\n", args[1]));
            match &io.stderr {
                Some(stderr) => stderr.send(message).await.ok(),
                None => io.stdout.send(message).await.ok(),
            };
            Ok(args[0].parse().unwrap())
        }
        "cat" => {
            let Some(stdin) = io.stdin.as_mut() else {
                return Ok(1);
            };
            while let Some(data) = stdin.recv().await {
                let _ = io.stdout.send(data).await;
            }
            let _ = io.stdout.send(Bytes::from_static(b"<eof>")).await;
            Ok(0)
        }
        // Prints the first terminal size it is told.
        "size" => {
            let Some(resize) = io.resize.as_mut() else {
                return Ok(1);
            };
            let (width, height) = resize.recv().await.unwrap();
            let _ = io
                .stdout
                .send(Bytes::from(format!("{width}x{height}")))
                .await;
            Ok(0)
        }
        other => Err(RuntimeError::Start(format!(
            "exec: {other:?}: executable file not found in $PATH"
        ))),
    }
}

/// Knows one pod, default/web, with one container "app".
struct FakeKubelet {
    runtime: Arc<ScriptedRuntime>,
    logs: PathBuf,
}

impl FakeKubelet {
    fn paths(&self, previous: bool) -> LogPaths {
        let instance = if previous { "0" } else { "1" };
        LogPaths {
            stdout: self.logs.join(instance).join("stdout.log"),
            stderr: self.logs.join(instance).join("stderr.log"),
        }
    }

    fn check(
        &self,
        namespace: &str,
        pod: &str,
        container: Option<&str>,
    ) -> Result<(), LookupError> {
        if namespace != "default" || pod != "web" {
            return Err(LookupError::NotFound(format!("pods {pod:?} not found")));
        }
        match container {
            None | Some("app") => Ok(()),
            Some(other) => Err(LookupError::BadRequest(format!(
                "container {other} is not valid for pod {pod}"
            ))),
        }
    }
}

#[async_trait]
impl KubeletApi for FakeKubelet {
    async fn running_container(
        &self,
        namespace: &str,
        pod: &str,
        container: Option<&str>,
    ) -> Result<String, LookupError> {
        self.check(namespace, pod, container)?;
        Ok(CONTAINER_ID.to_string())
    }

    async fn log_paths(
        &self,
        namespace: &str,
        pod: &str,
        container: Option<&str>,
        previous: bool,
    ) -> Result<LogPaths, LookupError> {
        self.check(namespace, pod, container)?;
        Ok(self.paths(previous))
    }

    fn runtime_for(&self, _container_id: &str) -> Option<Arc<dyn ContainerRuntime>> {
        Some(self.runtime.clone())
    }
}

struct Harness {
    address: SocketAddr,
    runtime: Arc<ScriptedRuntime>,
    kubelet: Arc<FakeKubelet>,
    _dir: tempfile::TempDir,
}

async fn start() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    for instance in ["0", "1"] {
        std::fs::create_dir_all(dir.path().join(instance)).unwrap();
    }
    let runtime = Arc::new(
        ScriptedRuntime::with_exec(CONTAINER_ID, |config, io| {
            Box::pin(scripted_exec(config, io))
        })
        .with_attach_echo(dir.path().join("1").join("stdout.log")),
    );
    let kubelet = Arc::new(FakeKubelet {
        runtime: runtime.clone(),
        logs: dir.path().to_path_buf(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = router(kubelet.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Harness {
        address,
        runtime,
        kubelet,
        _dir: dir,
    }
}

fn write_with_mtime(path: &Path, content: &str, modified: DateTime<Utc>) {
    std::fs::write(path, content).unwrap();
    let file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    file.set_modified(SystemTime::from(modified)).unwrap();
}

fn append(path: &Path, content: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap();
    file.write_all(content.as_bytes()).unwrap();
}

async fn get(harness: &Harness, path_and_query: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{}{path_and_query}", harness.address))
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test]
async fn healthz_answers_ok() {
    let harness = start().await;
    assert_eq!(get(&harness, "/healthz").await, (200, "ok".to_string()));
}

/// stdout written an hour ago, stderr a minute ago.
fn write_current_logs(harness: &Harness) -> (DateTime<Utc>, DateTime<Utc>) {
    let paths = harness.kubelet.paths(false);
    let older = Utc::now() - chrono::Duration::hours(1);
    let newer = Utc::now() - chrono::Duration::minutes(1);
    write_with_mtime(&paths.stdout, "out 1\nout 2\nout 3\n", older);
    write_with_mtime(&paths.stderr, "err 1\nerr 2\n", newer);
    (older, newer)
}

#[tokio::test]
async fn logs_combine_both_streams_older_file_first() {
    let harness = start().await;
    write_current_logs(&harness);
    let (status, body) = get(&harness, "/containerLogs/default/web/app").await;
    assert_eq!(status, 200);
    assert_eq!(body, "out 1\nout 2\nout 3\nerr 1\nerr 2\n");

    // stderr older this time: it comes first.
    let paths = harness.kubelet.paths(false);
    let file = std::fs::OpenOptions::new()
        .append(true)
        .open(&paths.stderr)
        .unwrap();
    file.set_modified(SystemTime::now() - Duration::from_secs(7200))
        .unwrap();
    let (_, body) = get(&harness, "/containerLogs/default/web?container=app").await;
    assert_eq!(body, "err 1\nerr 2\nout 1\nout 2\nout 3\n");
}

#[tokio::test]
async fn logs_tail_lines_apply_to_the_combined_output() {
    let harness = start().await;
    write_current_logs(&harness);
    let (_, body) = get(&harness, "/containerLogs/default/web/app?tailLines=3").await;
    assert_eq!(body, "out 3\nerr 1\nerr 2\n");
    let (_, body) = get(&harness, "/containerLogs/default/web/app?tailLines=1").await;
    assert_eq!(body, "err 2\n");
    let (_, body) = get(&harness, "/containerLogs/default/web/app?tailLines=0").await;
    assert_eq!(body, "");
}

#[tokio::test]
async fn logs_timestamps_are_the_file_modification_times() {
    let harness = start().await;
    let (older, newer) = write_current_logs(&harness);
    let (_, body) = get(
        &harness,
        "/containerLogs/default/web/app?timestamps=true&tailLines=4",
    )
    .await;
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 4);
    let parse = |line: &str| -> (DateTime<Utc>, String) {
        let (stamp, text) = line.split_once(' ').unwrap();
        (
            DateTime::parse_from_rfc3339(stamp)
                .unwrap()
                .with_timezone(&Utc),
            text.to_string(),
        )
    };
    assert_eq!(parse(lines[0]), (older, "out 2".to_string()));
    assert_eq!(parse(lines[1]), (older, "out 3".to_string()));
    assert_eq!(parse(lines[2]), (newer, "err 1".to_string()));
    assert_eq!(parse(lines[3]), (newer, "err 2".to_string()));
}

#[tokio::test]
async fn logs_since_seconds_drop_older_files() {
    let harness = start().await;
    write_current_logs(&harness);
    let (_, body) = get(&harness, "/containerLogs/default/web/app?sinceSeconds=600").await;
    assert_eq!(body, "err 1\nerr 2\n");
    let (_, body) = get(&harness, "/containerLogs/default/web/app?sinceSeconds=10").await;
    assert_eq!(body, "");
}

#[tokio::test]
async fn logs_previous_read_the_previous_instance_and_limit_bytes_cuts() {
    let harness = start().await;
    write_current_logs(&harness);
    let previous = harness.kubelet.paths(true);
    std::fs::write(&previous.stdout, "crashed once\n").unwrap();
    let (_, body) = get(&harness, "/containerLogs/default/web/app?previous=true").await;
    assert_eq!(body, "crashed once\n");
    let (_, body) = get(&harness, "/containerLogs/default/web/app?limitBytes=8").await;
    assert_eq!(body, "out 1\nou");
}

#[tokio::test]
async fn logs_of_unknown_pod_or_bad_parameters_are_status_errors() {
    let harness = start().await;
    let (status, body) = get(&harness, "/containerLogs/default/nope/app").await;
    assert_eq!(status, 404);
    let status_body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status_body["kind"], "Status");
    assert_eq!(status_body["status"], "Failure");
    assert_eq!(status_body["reason"], "NotFound");
    assert_eq!(status_body["code"], 404);
    assert_eq!(status_body["message"], "pods \"nope\" not found");

    let (status, body) = get(&harness, "/containerLogs/default/web/other").await;
    assert_eq!(status, 400);
    assert!(
        body.contains("container other is not valid for pod web"),
        "{body}"
    );

    let (status, _) = get(&harness, "/containerLogs/default/web/app?tailLines=-2").await;
    assert_eq!(status, 400);
}

/// Reads the streamed body until `want` has been seen in full.
async fn read_until(
    stream: &mut (impl futures::Stream<Item = reqwest::Result<Bytes>> + Unpin),
    received: &mut String,
    want: &str,
) {
    while !received.contains(want) {
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("log stream stalled")
            .expect("log stream ended early")
            .unwrap();
        received.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

#[tokio::test]
async fn logs_follow_streams_new_lines_until_the_container_exits() {
    let harness = start().await;
    let paths = harness.kubelet.paths(false);
    std::fs::write(&paths.stdout, "before\nhalf").unwrap();
    let response = reqwest::get(format!(
        "http://{}/containerLogs/default/web/app?follow=true",
        harness.address
    ))
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/plain");
    let mut stream = response.bytes_stream();
    let mut received = String::new();
    read_until(&mut stream, &mut received, "before\n").await;

    append(&paths.stdout, " done\n");
    read_until(&mut stream, &mut received, "half done\n").await;
    append(&paths.stderr, "on stderr\n");
    read_until(&mut stream, &mut received, "on stderr\n").await;

    append(&paths.stdout, "last words");
    harness.runtime.stop();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap()
    {
        received.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    assert_eq!(received, "before\nhalf done\non stderr\nlast words");
}

#[tokio::test]
async fn logs_follow_of_a_stopped_container_returns_what_is_there() {
    let harness = start().await;
    std::fs::write(harness.kubelet.paths(false).stdout, "only line\n").unwrap();
    harness.runtime.stop();
    let (_, body) = get(&harness, "/containerLogs/default/web/app?follow=true").await;
    assert_eq!(body, "only line\n");
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(
    harness: &Harness,
    path_and_query: &str,
    protocols: &str,
) -> Result<(Socket, String), u16> {
    let mut request = format!("ws://{}{path_and_query}", harness.address)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_str(protocols).unwrap(),
    );
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, response)) => {
            let protocol = response
                .headers()
                .get("Sec-WebSocket-Protocol")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            Ok((socket, protocol))
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(other) => panic!("connect: {other}"),
    }
}

/// Everything the server sent, per channel, until it closed the connection.
async fn collect_channels(socket: &mut Socket) -> HashMap<u8, Vec<u8>> {
    let mut channels: HashMap<u8, Vec<u8>> = HashMap::new();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("exec stalled");
        match message {
            Some(Ok(Message::Binary(data))) => {
                let (channel, payload) = data.split_first().unwrap();
                channels
                    .entry(*channel)
                    .or_default()
                    .extend_from_slice(payload);
            }
            Some(Ok(Message::Close(_))) | None => return channels,
            Some(Ok(_)) => {}
            Some(Err(err)) => panic!("websocket error: {err}"),
        }
    }
}

fn text(channels: &HashMap<u8, Vec<u8>>, channel: u8) -> String {
    String::from_utf8(channels.get(&channel).cloned().unwrap_or_default()).unwrap()
}

#[tokio::test]
async fn exec_v5_streams_stdout_then_success() {
    let harness = start().await;
    let (mut socket, protocol) = connect(
        &harness,
        "/exec/default/web/app?command=echo&command=hello&command=world&stdout=true&stderr=true",
        "v5.channel.k8s.io, v4.channel.k8s.io",
    )
    .await
    .unwrap();
    assert_eq!(protocol, "v5.channel.k8s.io");
    let channels = collect_channels(&mut socket).await;
    assert_eq!(text(&channels, 1), "hello world\n");
    assert_eq!(text(&channels, 3), r#"{"metadata":{},"status":"Success"}"#);
}

#[tokio::test]
async fn exec_v4_reports_stderr_and_the_exit_code() {
    let harness = start().await;
    let (mut socket, protocol) = connect(
        &harness,
        "/exec/default/web?container=app&command=fail&command=3&command=boom&stdout=1&stderr=1",
        "v4.channel.k8s.io",
    )
    .await
    .unwrap();
    assert_eq!(protocol, "v4.channel.k8s.io");
    let channels = collect_channels(&mut socket).await;
    assert_eq!(text(&channels, 2), "boom\n");
    assert_eq!(text(&channels, 1), "");
    let status: serde_json::Value = serde_json::from_slice(&channels[&3]).unwrap();
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["reason"], "ExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "3");
    assert_eq!(
        status["message"],
        "command terminated with non-zero exit code: error executing command [fail 3 boom], exit code 3"
    );
}

#[tokio::test]
async fn exec_v5_passes_stdin_until_the_client_closes_it() {
    let harness = start().await;
    let (mut socket, _) = connect(
        &harness,
        "/exec/default/web/app?command=cat&stdin=true&stdout=true",
        "v5.channel.k8s.io",
    )
    .await
    .unwrap();
    socket
        .send(Message::Binary(Bytes::from_static(b"\x00hello ")))
        .await
        .unwrap();
    socket
        .send(Message::Binary(Bytes::from_static(b"\x00there")))
        .await
        .unwrap();
    socket
        .send(Message::Binary(Bytes::from_static(&[255, 0])))
        .await
        .unwrap();
    let channels = collect_channels(&mut socket).await;
    assert_eq!(text(&channels, 1), "hello there<eof>");
    assert_eq!(text(&channels, 3), r#"{"metadata":{},"status":"Success"}"#);
}

#[tokio::test]
async fn exec_with_tty_passes_terminal_resizes() {
    let harness = start().await;
    let (mut socket, _) = connect(
        &harness,
        "/exec/default/web/app?command=size&stdin=true&stdout=true&tty=true",
        "v5.channel.k8s.io",
    )
    .await
    .unwrap();
    let mut resize = vec![4u8];
    resize.extend_from_slice(br#"{"Width":120,"Height":40}"#);
    socket
        .send(Message::Binary(Bytes::from(resize)))
        .await
        .unwrap();
    let channels = collect_channels(&mut socket).await;
    assert_eq!(text(&channels, 1), "120x40");
    assert_eq!(text(&channels, 3), r#"{"metadata":{},"status":"Success"}"#);
}

#[tokio::test]
async fn exec_runtime_errors_are_internal_error_statuses() {
    let harness = start().await;
    let (mut socket, _) = connect(
        &harness,
        "/exec/default/web/app?command=nosuch&stdout=true",
        "v4.channel.k8s.io",
    )
    .await
    .unwrap();
    let channels = collect_channels(&mut socket).await;
    let status: serde_json::Value = serde_json::from_slice(&channels[&3]).unwrap();
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["reason"], "InternalError");
    assert_eq!(status["code"], 500);
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("executable file not found"),
        "{status}"
    );
}

#[tokio::test]
async fn exec_v1_reports_only_failures_as_text() {
    let harness = start().await;
    let (mut socket, protocol) = connect(
        &harness,
        "/exec/default/web/app?command=fail&command=2&command=x&stdout=true",
        "channel.k8s.io",
    )
    .await
    .unwrap();
    assert_eq!(protocol, "channel.k8s.io");
    let channels = collect_channels(&mut socket).await;
    assert_eq!(
        text(&channels, 3),
        "command terminated with non-zero exit code: error executing command [fail 2 x], exit code 2"
    );
}

#[tokio::test]
async fn exec_refuses_unknown_pods_and_bad_requests_before_upgrading() {
    let harness = start().await;
    let unknown = connect(
        &harness,
        "/exec/default/nope/app?command=echo&stdout=true",
        "v5.channel.k8s.io",
    )
    .await;
    assert_eq!(unknown.err(), Some(404));
    let no_command = connect(
        &harness,
        "/exec/default/web/app?stdout=true",
        "v5.channel.k8s.io",
    )
    .await;
    assert_eq!(no_command.err(), Some(400));
    let bad_protocol = connect(
        &harness,
        "/exec/default/web/app?command=echo&stdout=true",
        "SPDY/3.1",
    )
    .await;
    assert_eq!(bad_protocol.err(), Some(400));

    // A plain GET (no upgrade) is a Status error too.
    let (status, body) = get(&harness, "/exec/default/web/app?command=echo&stdout=true").await;
    assert_eq!(status, 400);
    assert!(body.contains("\"status\":\"Failure\""), "{body}");
}

#[tokio::test]
async fn attach_streams_new_output_until_the_container_stops() {
    let harness = start().await;
    let paths = harness.kubelet.paths(false);
    std::fs::write(&paths.stdout, "old output\n").unwrap();
    let (mut socket, _) = connect(
        &harness,
        "/attach/default/web/app?stdout=true&stderr=true",
        "v5.channel.k8s.io",
    )
    .await
    .unwrap();
    // Attach shows only what comes after it connected; give it a moment to start tailing.
    let mut received: HashMap<u8, Vec<u8>> = HashMap::new();
    let writer_paths = paths.clone();
    let runtime = harness.runtime.clone();
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        append(&writer_paths.stdout, "prompt> ");
        append(&writer_paths.stderr, "warning\n");
        tokio::time::sleep(Duration::from_millis(500)).await;
        runtime.stop();
    });
    for (channel, data) in collect_channels(&mut socket).await {
        received.insert(channel, data);
    }
    writer.await.unwrap();
    assert_eq!(text(&received, 1), "prompt> ");
    assert_eq!(text(&received, 2), "warning\n");
    assert_eq!(text(&received, 3), r#"{"metadata":{},"status":"Success"}"#);
}

/// `kubectl run -i`: the input is sent as soon as the session is up, and the main process
/// answers it at once. Its answers are output that came after the attach, so they must
/// all reach the client, before the `done` that follows the end of the input. Repeated:
/// an answer written before the kubelet started following the log was lost only now and
/// then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_stdin_answers_written_at_once_reach_the_client() {
    const ROUNDS: usize = 20;
    let harness = start().await;
    let mut wrong = Vec::new();
    for round in 0..ROUNDS {
        let (mut socket, _) = connect(
            &harness,
            "/attach/default/web/app?stdin=true&stdout=true",
            "v5.channel.k8s.io",
        )
        .await
        .unwrap();
        for frame in [&b"\x00one\n"[..], b"\x00two\n", &[255, 0]] {
            socket
                .send(Message::Binary(Bytes::copy_from_slice(frame)))
                .await
                .unwrap();
        }
        let mut stdout = String::new();
        while !stdout.ends_with("done\n") {
            let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
                .await
                .expect("attach sent no `done`");
            match message {
                Some(Ok(Message::Binary(data))) if data.first() == Some(&1) => {
                    stdout.push_str(&String::from_utf8_lossy(&data[1..]));
                }
                Some(Ok(_)) => {}
                other => panic!("attach ended before `done`: {other:?}"),
            }
        }
        if stdout != "got one\ngot two\ndone\n" {
            wrong.push((round, stdout));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {ROUNDS} sessions lost output: {wrong:?}",
        wrong.len()
    );
}
