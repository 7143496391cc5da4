//! `exec` and `attach` over WebSocket, in the Kubernetes channel protocols.
//!
//! Every binary frame starts with a channel byte: 0 stdin, 1 stdout, 2 stderr, 3 error
//! (the final `metav1.Status` in v4/v5, plain text in v1), 4 terminal resize
//! (`{"Width":..,"Height":..}`). v5 adds `[255, channel]`, which closes one channel; a
//! client sends `[255, 0]` when its stdin ends. Base64 (text frame) variants are not
//! offered.
//!
//! Output frames are all sent before the status: the session waits for the runtime to
//! close its ends of stdout and stderr (with a grace period after the process exits, in
//! case a runtime keeps them open). When the client goes away the exec future is dropped,
//! which is how the runtime learns to stop the process.
//!
//! Attach: output is what the container writes to its log files from now on (stdout on
//! channel 1, stderr on channel 2, both on 1 with a tty) until it stops; stdin goes to
//! [`rkube_cri::ContainerRuntime::attach`], which reaches the main process of containers
//! created with `stdin: true`. Resize is ignored: main processes never get a terminal.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use rkube_cri::{ContainerRuntime, ExecConfig, ExecIo, LogPaths};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::logs::{Followed, MarkedEnd};
use super::{query_flag, KubeletApi, RequestError, Status, StatusCause, StatusDetails};

pub(crate) const STDIN: u8 = 0;
pub(crate) const STDOUT: u8 = 1;
pub(crate) const STDERR: u8 = 2;
pub(crate) const ERROR: u8 = 3;
pub(crate) const RESIZE: u8 = 4;
pub(crate) const CLOSE: u8 = 255;

/// After the process exits, how long to wait for the runtime to close its output streams.
const OUTPUT_DRAIN_GRACE: Duration = Duration::from_secs(5);
/// After our close frame, how long to wait for the client's before dropping the socket.
const CLOSE_HANDSHAKE_GRACE: Duration = Duration::from_secs(1);

/// Subprotocols in order of preference.
const PROTOCOLS: [&str; 3] = ["v5.channel.k8s.io", "v4.channel.k8s.io", "channel.k8s.io"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Exec,
    Attach,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// `channel.k8s.io`, or no subprotocol: errors as plain text, nothing on success.
    V1,
    /// `v4.channel.k8s.io`: the final status as JSON.
    V4,
    /// `v5.channel.k8s.io`: v4 plus closing single channels.
    V5,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct StreamOptions {
    command: Vec<String>,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

impl StreamOptions {
    fn parse(kind: Kind, query: &[(String, String)]) -> Result<Self, RequestError> {
        let options = StreamOptions {
            command: query
                .iter()
                .filter(|(k, _)| k == "command")
                .map(|(_, v)| v.clone())
                .collect(),
            stdin: query_flag(query, "stdin"),
            stdout: query_flag(query, "stdout"),
            stderr: query_flag(query, "stderr"),
            tty: query_flag(query, "tty"),
        };
        if kind == Kind::Exec && options.command.is_empty() {
            return Err(RequestError::BadRequest(
                "you must specify at least one command for the container".into(),
            ));
        }
        if !options.stdin && !options.stdout && !options.stderr {
            return Err(RequestError::BadRequest(
                "you must specify at least 1 of stdin, stdout, stderr".into(),
            ));
        }
        Ok(options)
    }
}

pub(crate) async fn serve(
    kind: Kind,
    api: Arc<dyn KubeletApi>,
    namespace: String,
    pod: String,
    container: Option<String>,
    query: Vec<(String, String)>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    match prepare(
        kind,
        api,
        &namespace,
        &pod,
        container.as_deref(),
        &query,
        upgrade,
    )
    .await
    {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

async fn prepare(
    kind: Kind,
    api: Arc<dyn KubeletApi>,
    namespace: &str,
    pod: &str,
    container: Option<&str>,
    query: &[(String, String)],
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, RequestError> {
    let options = StreamOptions::parse(kind, query)?;
    let container_id = api.running_container(namespace, pod, container).await?;
    let runtime = api.runtime_for(&container_id).ok_or_else(|| {
        RequestError::Internal(format!("no runtime knows container {container_id:?}"))
    })?;
    let log_paths = match kind {
        Kind::Attach => Some(api.log_paths(namespace, pod, container, false).await?),
        Kind::Exec => None,
    };
    let upgrade = upgrade.map_err(|rejection| {
        RequestError::BadRequest(format!(
            "unable to upgrade connection: {}",
            rejection.body_text()
        ))
    })?;
    let offered = upgrade.requested_protocols().count();
    let upgrade = upgrade.protocols(PROTOCOLS);
    let protocol = match upgrade.selected_protocol().map(|p| p.as_bytes()) {
        Some(b"v5.channel.k8s.io") => Protocol::V5,
        Some(b"v4.channel.k8s.io") => Protocol::V4,
        Some(_) => Protocol::V1,
        None if offered == 0 => Protocol::V1,
        None => {
            return Err(RequestError::BadRequest(format!(
                "unable to upgrade connection: none of the requested subprotocols is supported (supported: {})",
                PROTOCOLS.join(", ")
            )))
        }
    };
    Ok(upgrade.on_upgrade(move |socket| async move {
        match (kind, log_paths) {
            (Kind::Attach, Some(paths)) => {
                attach_session(socket, protocol, runtime, container_id, paths, options).await
            }
            _ => exec_session(socket, protocol, runtime, container_id, options).await,
        }
    }))
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut payload = Vec::with_capacity(data.len() + 1);
    payload.push(channel);
    payload.extend_from_slice(data);
    Message::Binary(Bytes::from(payload))
}

#[derive(Deserialize)]
struct TerminalSize {
    #[serde(rename = "Width")]
    width: u16,
    #[serde(rename = "Height")]
    height: u16,
}

/// Reads the client's frames until it goes away: stdin data and closes, terminal sizes.
fn spawn_client_reader(
    mut source: futures::stream::SplitStream<WebSocket>,
    protocol: Protocol,
    mut stdin: Option<mpsc::Sender<Bytes>>,
    resize: Option<mpsc::Sender<(u16, u16)>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(Ok(message)) = source.next().await {
            let data = match message {
                Message::Binary(data) => data,
                Message::Close(_) => break,
                _ => continue,
            };
            let Some((&channel, payload)) = data.split_first() else {
                continue;
            };
            match channel {
                STDIN => {
                    if let Some(sender) = &stdin {
                        if sender.send(Bytes::copy_from_slice(payload)).await.is_err() {
                            // The process closed its stdin; later input has nowhere to go.
                            stdin = None;
                        }
                    }
                }
                RESIZE => {
                    if let (Some(sender), Ok(size)) =
                        (&resize, serde_json::from_slice::<TerminalSize>(payload))
                    {
                        let _ = sender.try_send((size.width, size.height));
                    }
                }
                CLOSE if protocol == Protocol::V5 && payload.first() == Some(&STDIN) => {
                    stdin = None;
                }
                _ => {}
            }
        }
    })
}

async fn exec_session(
    socket: WebSocket,
    protocol: Protocol,
    runtime: Arc<dyn ContainerRuntime>,
    container_id: String,
    options: StreamOptions,
) {
    let (mut sink, source) = socket.split();
    let (stdin_sender, stdin_receiver) = if options.stdin {
        let (sender, receiver) = mpsc::channel::<Bytes>(16);
        (Some(sender), Some(receiver))
    } else {
        (None, None)
    };
    let (resize_sender, resize_receiver) = if options.tty {
        let (sender, receiver) = mpsc::channel::<(u16, u16)>(4);
        (Some(sender), Some(receiver))
    } else {
        (None, None)
    };
    let (stdout_sender, mut stdout_receiver) = mpsc::channel::<Bytes>(16);
    let (stderr_sender, mut stderr_receiver) = if options.stderr && !options.tty {
        let (sender, receiver) = mpsc::channel::<Bytes>(16);
        (Some(sender), Some(receiver))
    } else {
        (None, None)
    };
    let io = ExecIo {
        stdin: stdin_receiver,
        stdout: stdout_sender,
        stderr: stderr_sender,
        resize: resize_receiver,
    };
    let config = ExecConfig {
        command: options.command.clone(),
        env: Vec::new(),
        tty: options.tty,
        stdin: options.stdin,
    };
    let mut client = spawn_client_reader(source, protocol, stdin_sender, resize_sender);
    let exec_id = container_id.clone();
    let mut exec = tokio::spawn(async move { runtime.exec(&exec_id, config, io).await });

    let mut outcome: Option<Result<rkube_cri::Result<i32>, tokio::task::JoinError>> = None;
    let mut stdout_open = true;
    let mut stderr_open = stderr_receiver.is_some();
    let drain_deadline = tokio::time::sleep(Duration::MAX);
    tokio::pin!(drain_deadline);
    loop {
        if outcome.is_some() && !stdout_open && !stderr_open {
            break;
        }
        tokio::select! {
            result = &mut exec, if outcome.is_none() => {
                outcome = Some(result);
                drain_deadline.as_mut().reset(tokio::time::Instant::now() + OUTPUT_DRAIN_GRACE);
            }
            chunk = stdout_receiver.recv(), if stdout_open => match chunk {
                Some(data) if options.stdout => {
                    if sink.send(frame(STDOUT, &data)).await.is_err() {
                        exec.abort();
                        client.abort();
                        return;
                    }
                }
                Some(_) => {}
                None => stdout_open = false,
            },
            chunk = recv_optional(&mut stderr_receiver), if stderr_open => match chunk {
                Some(data) => {
                    if sink.send(frame(STDERR, &data)).await.is_err() {
                        exec.abort();
                        client.abort();
                        return;
                    }
                }
                None => stderr_open = false,
            },
            _ = &mut client => {
                // The client went away: nobody is left to read the result.
                exec.abort();
                return;
            }
            _ = &mut drain_deadline, if outcome.is_some() => {
                tracing::warn!(container = %container_id, "exec output streams still open after the process exited");
                break;
            }
        }
    }
    let status = match outcome {
        Some(Ok(Ok(0))) => success_status(),
        Some(Ok(Ok(code))) => exit_code_status(&options.command, code),
        Some(Ok(Err(err))) => {
            internal_status(format!("error executing command in container: {err}"))
        }
        Some(Err(err)) => internal_status(format!("error executing command in container: {err}")),
        None => internal_status("error executing command in container: no result".into()),
    };
    finish(sink, client, protocol, status).await;
}

async fn recv_optional(receiver: &mut Option<mpsc::Receiver<Bytes>>) -> Option<Bytes> {
    match receiver {
        Some(receiver) => receiver.recv().await,
        None => None,
    }
}

async fn attach_session(
    socket: WebSocket,
    protocol: Protocol,
    runtime: Arc<dyn ContainerRuntime>,
    container_id: String,
    paths: LogPaths,
    options: StreamOptions,
) {
    let (mut sink, source) = socket.split();
    // Output is taken from the logs' ends as they are before any input is passed on: a
    // process that answers its input at once (`kubectl run -i`) would otherwise have its
    // answer in the log before a follower looked for the end, and the client never sees it.
    let stdout_end = MarkedEnd::of(paths.stdout).await;
    let stderr_end = MarkedEnd::of(paths.stderr).await;
    let stdin_sender = options.stdin.then(|| {
        let (sender, receiver) = mpsc::channel::<Bytes>(16);
        let (runtime, id) = (runtime.clone(), container_id.clone());
        // Runs until the client's stdin ends (or the client goes), not until the output
        // does: stdinOnce is applied when the input is over.
        tokio::spawn(async move {
            if let Err(error) = runtime.attach(&id, receiver).await {
                tracing::warn!(id, %error, "attach: stdin not delivered");
            }
        });
        sender
    });
    // Resize does not apply: the main process never has a terminal.
    let mut client = spawn_client_reader(source, protocol, stdin_sender, None);
    let (stdout_sender, mut stdout_receiver) = mpsc::channel::<Bytes>(16);
    let (stderr_sender, mut stderr_receiver) = mpsc::channel::<Bytes>(16);
    let stdout_follower = tokio::spawn(follow_marked(
        stdout_end,
        Followed {
            id: container_id.clone(),
            runtime: runtime.clone(),
        },
        stdout_sender,
    ));
    let stderr_follower = tokio::spawn(follow_marked(
        stderr_end,
        Followed {
            id: container_id,
            runtime,
        },
        stderr_sender,
    ));
    let stderr_channel = if options.tty { STDOUT } else { STDERR };
    let mut stdout_open = options.stdout;
    let mut stderr_open = options.stderr;
    if !stdout_open {
        stdout_follower.abort();
    }
    if !stderr_open {
        stderr_follower.abort();
    }
    while stdout_open || stderr_open {
        tokio::select! {
            chunk = stdout_receiver.recv(), if stdout_open => match chunk {
                Some(data) => {
                    if sink.send(frame(STDOUT, &data)).await.is_err() {
                        break;
                    }
                }
                None => stdout_open = false,
            },
            chunk = stderr_receiver.recv(), if stderr_open => match chunk {
                Some(data) => {
                    if sink.send(frame(stderr_channel, &data)).await.is_err() {
                        break;
                    }
                }
                None => stderr_open = false,
            },
            _ = &mut client => {
                stdout_follower.abort();
                stderr_follower.abort();
                return;
            }
        }
    }
    stdout_follower.abort();
    stderr_follower.abort();
    finish(sink, client, protocol, success_status()).await;
}

/// A log that could not be marked ends its stream at once, as one that cannot be read would.
async fn follow_marked(
    end: std::io::Result<MarkedEnd>,
    followed: Followed,
    out: mpsc::Sender<Bytes>,
) -> std::io::Result<()> {
    end?.follow(followed, out).await
}

/// Sends the final status and closes the connection.
async fn finish(
    mut sink: SplitSink<WebSocket, Message>,
    mut client: JoinHandle<()>,
    protocol: Protocol,
    status: Status,
) {
    let payload = match protocol {
        Protocol::V4 | Protocol::V5 => serde_json::to_vec(&status).ok(),
        // v1 reports only failures, as text.
        Protocol::V1 => status
            .message
            .as_ref()
            .filter(|_| status.status != "Success")
            .map(|m| m.clone().into_bytes()),
    };
    if let Some(payload) = payload {
        let _ = sink.send(frame(ERROR, &payload)).await;
    }
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code: 1000,
            reason: "".into(),
        })))
        .await;
    if tokio::time::timeout(CLOSE_HANDSHAKE_GRACE, &mut client)
        .await
        .is_err()
    {
        client.abort();
    }
}

fn success_status() -> Status {
    Status {
        kind: None,
        api_version: None,
        metadata: super::EmptyMeta {},
        status: "Success",
        message: None,
        reason: None,
        details: None,
        code: None,
    }
}

/// Upstream's wording: the kubelet wraps containerd's "error executing command [..], exit
/// code N" and clients read the code from the cause.
fn exit_code_status(command: &[String], code: i32) -> Status {
    Status {
        kind: None,
        api_version: None,
        metadata: super::EmptyMeta {},
        status: "Failure",
        message: Some(format!(
            "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
            command.join(" ")
        )),
        reason: Some("NonZeroExitCode".into()),
        details: Some(StatusDetails {
            causes: vec![StatusCause { reason: Some("ExitCode".into()), message: code.to_string() }],
        }),
        code: None,
    }
}

fn internal_status(message: String) -> Status {
    Status {
        kind: None,
        api_version: None,
        metadata: super::EmptyMeta {},
        status: "Failure",
        message: Some(format!("Internal error occurred: {message}")),
        reason: Some("InternalError".into()),
        details: Some(StatusDetails {
            causes: vec![StatusCause {
                reason: None,
                message,
            }],
        }),
        code: Some(500),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_code_status_matches_upstream_json() {
        let command = vec!["sh".to_string(), "-c".to_string(), "exit 3".to_string()];
        let json = serde_json::to_string(&exit_code_status(&command, 3)).unwrap();
        assert_eq!(
            json,
            r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#
        );
        assert_eq!(
            serde_json::to_string(&success_status()).unwrap(),
            r#"{"metadata":{},"status":"Success"}"#
        );
    }

    #[test]
    fn stream_options_require_a_command_and_a_stream() {
        let q = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let options = StreamOptions::parse(
            Kind::Exec,
            &q(&[
                ("command", "sh"),
                ("command", "-c"),
                ("command", "echo hi"),
                ("stdout", "true"),
            ]),
        )
        .unwrap();
        assert_eq!(options.command, vec!["sh", "-c", "echo hi"]);
        assert!(options.stdout && !options.stdin && !options.tty);
        assert!(StreamOptions::parse(Kind::Exec, &q(&[("stdout", "true")])).is_err());
        assert!(StreamOptions::parse(Kind::Exec, &q(&[("command", "ls")])).is_err());
        assert!(StreamOptions::parse(Kind::Attach, &q(&[("stdout", "1")])).is_ok());
    }
}
