//! Exec through containerd: the process spec is the container's own with the command, env
//! and terminal replaced; its stdio are FIFOs in a fresh directory that the shim opens on
//! `Start`, copied to and from the caller's channels.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use containerd_client::services::v1::{
    CloseIoRequest, DeleteProcessRequest, ExecProcessRequest, ResizePtyRequest, StartRequest,
    WaitRequest,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

use super::runtime::RuntimeInner;
use super::{status_error, PROCESS_TYPE_URL};
use crate::{ExecConfig, ExecIo, Result, RuntimeError};

/// After the process exits, how long its output may still be draining from the shim.
const OUTPUT_DRAIN: Duration = Duration::from_secs(10);
/// CloseIO retries before giving up (about 5 s with the backoff in [`close_stdin`]).
const CLOSE_STDIN_ATTEMPTS: u32 = 14;

pub(super) fn mkfifo(path: &Path) -> Result<()> {
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        path,
        rustix::fs::Mode::from_raw_mode(0o600),
    )
    .map_err(|e| RuntimeError::Io(e.into()))
}

fn exec_process_spec(container_spec: &[u8], config: &ExecConfig) -> Result<Vec<u8>> {
    let spec: serde_json::Value = serde_json::from_slice(container_spec)
        .map_err(|e| RuntimeError::Other(format!("container spec: {e}")))?;
    let mut process = spec
        .get("process")
        .cloned()
        .unwrap_or_else(|| serde_json::json!({ "cwd": "/", "user": { "uid": 0, "gid": 0 } }));
    let mut env: Vec<String> = process
        .get("env")
        .and_then(|e| serde_json::from_value(e.clone()).ok())
        .unwrap_or_default();
    for extra in &config.env {
        let key = extra.split('=').next().unwrap_or_default();
        env.retain(|existing| existing.split('=').next() != Some(key));
        env.push(extra.clone());
    }
    if let Some(object) = process.as_object_mut() {
        object.insert("args".into(), serde_json::json!(config.command));
        object.insert("env".into(), serde_json::json!(env));
        object.insert("terminal".into(), serde_json::json!(config.tty));
        object.remove("consoleSize");
    }
    serde_json::to_vec(&process).map_err(|e| RuntimeError::Other(format!("exec spec: {e}")))
}

pub(super) async fn exec(
    inner: &Arc<RuntimeInner>,
    id: &str,
    config: ExecConfig,
    io: ExecIo,
) -> Result<i32> {
    if config.command.is_empty() {
        return Err(RuntimeError::Start("exec needs a command".into()));
    }
    let container = inner.get_container(id).await?;
    let spec = container
        .spec
        .as_ref()
        .ok_or_else(|| RuntimeError::Other(format!("container {id} has no spec")))?;
    let process = exec_process_spec(&spec.value, &config)?;

    let exec_id = format!(
        "exec-{}",
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
    );
    let dir = tempfile::Builder::new()
        .prefix("exec-")
        .tempdir_in(&inner.config.fifo_dir)?;
    let fifo = |name: &str| -> Result<PathBuf> {
        let path = dir.path().join(name);
        mkfifo(&path)?;
        Ok(path)
    };
    let stdin_path = if config.stdin {
        Some(fifo("stdin")?)
    } else {
        None
    };
    let stdout_path = fifo("stdout")?;
    let stderr_path = if config.tty {
        None
    } else {
        Some(fifo("stderr")?)
    };

    // Read ends opened non-blocking before the shim opens the writers (so its blocking open
    // of the write end returns); read only after Start, when the writers exist, since a
    // FIFO without writers reads as end-of-file.
    let stdout_reader = pipe::OpenOptions::new().open_receiver(&stdout_path)?;
    let stderr_reader = match &stderr_path {
        Some(path) => Some(pipe::OpenOptions::new().open_receiver(path)?),
        None => None,
    };
    // Read-write so the open succeeds before the shim opens its read end.
    let stdin_writer = match &stdin_path {
        Some(path) => Some(
            pipe::OpenOptions::new()
                .read_write(true)
                .open_sender(path)?,
        ),
        None => None,
    };
    let path_string = |path: &Option<PathBuf>| {
        path.as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    };
    inner
        .tasks()
        .exec(inner.connection.request(ExecProcessRequest {
            container_id: id.to_string(),
            stdin: path_string(&stdin_path),
            stdout: stdout_path.display().to_string(),
            stderr: path_string(&stderr_path),
            terminal: config.tty,
            spec: Some(prost_types::Any {
                type_url: PROCESS_TYPE_URL.to_string(),
                value: process,
            }),
            exec_id: exec_id.clone(),
        }))
        .await
        .map_err(|s| status_error(s, &format!("exec in container {id}")))?;

    let result = run_started(
        inner,
        id,
        &exec_id,
        stdout_reader,
        stderr_reader,
        stdin_writer,
        io,
    )
    .await;
    let _ = inner
        .tasks()
        .delete_process(inner.connection.request(DeleteProcessRequest {
            container_id: id.to_string(),
            exec_id: exec_id.clone(),
        }))
        .await;
    drop(dir);
    result
}

async fn run_started(
    inner: &Arc<RuntimeInner>,
    id: &str,
    exec_id: &str,
    stdout_reader: pipe::Receiver,
    stderr_reader: Option<pipe::Receiver>,
    stdin_writer: Option<pipe::Sender>,
    io: ExecIo,
) -> Result<i32> {
    // Wait is registered before Start so a process that exits at once is not missed.
    let wait = {
        let mut tasks = inner.tasks();
        let request = inner.connection.request(WaitRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
        });
        tokio::spawn(async move { tasks.wait(request).await })
    };
    if let Err(status) = inner
        .tasks()
        .start(inner.connection.request(StartRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
        }))
        .await
    {
        wait.abort();
        return Err(RuntimeError::Start(status.message().to_string()));
    }

    let ExecIo {
        stdin,
        stdout,
        stderr,
        resize,
    } = io;
    let stdout_copy = tokio::spawn(copy_out(stdout_reader, Some(stdout)));
    let stderr_copy = stderr_reader.map(|reader| tokio::spawn(copy_out(reader, stderr)));
    let stdin_copy = match (stdin_writer, stdin) {
        (Some(writer), Some(receiver)) => {
            let inner = inner.clone();
            let (id, exec_id) = (id.to_string(), exec_id.to_string());
            Some(tokio::spawn(async move {
                copy_in(writer, receiver).await;
                // The shim holds the FIFO open; CloseIO is what gives the process its EOF.
                if let Err(error) = close_stdin(&inner, &id, &exec_id).await {
                    tracing::warn!(%id, %exec_id, %error, "exec: stdin left open");
                }
            }))
        }
        _ => None,
    };
    let resizer = resize.map(|mut sizes| {
        let inner = inner.clone();
        let (id, exec_id) = (id.to_string(), exec_id.to_string());
        tokio::spawn(async move {
            while let Some((width, height)) = sizes.recv().await {
                let _ = inner
                    .tasks()
                    .resize_pty(inner.connection.request(ResizePtyRequest {
                        container_id: id.clone(),
                        exec_id: exec_id.clone(),
                        width: u32::from(width),
                        height: u32::from(height),
                    }))
                    .await;
            }
        })
    });

    let waited = wait
        .await
        .map_err(|e| RuntimeError::Other(format!("exec wait task: {e}")))?;
    if let Some(task) = stdin_copy {
        task.abort();
    }
    if let Some(task) = resizer {
        task.abort();
    }
    let drained = async {
        let _ = stdout_copy.await;
        if let Some(task) = stderr_copy {
            let _ = task.await;
        }
    };
    if tokio::time::timeout(OUTPUT_DRAIN, drained).await.is_err() {
        tracing::warn!(
            id,
            exec_id,
            "exec output did not end after the process exited"
        );
    }
    let response = waited.map_err(|s| status_error(s, &format!("exec in container {id}")))?;
    Ok(i32::try_from(response.into_inner().exit_status).unwrap_or(255))
}

/// Copies `stdin` into the main process's stdin FIFO; see [`ContainerRuntime::attach`].
pub(super) async fn attach(
    inner: &Arc<RuntimeInner>,
    id: &str,
    stdin: mpsc::Receiver<Bytes>,
) -> Result<()> {
    let container = inner.get_container(id).await?;
    let path = inner.stdin_fifo(id);
    if !path.exists() {
        return Err(RuntimeError::Other(format!(
            "container {id} was not created with stdin"
        )));
    }
    // Write-only and non-blocking: fails at once (ENXIO) unless the shim is reading, so
    // the copy never blocks on a container whose task is gone.
    let writer = pipe::OpenOptions::new().open_sender(&path)?;
    copy_in(writer, stdin).await;
    if RuntimeInner::stdin_once(&container) {
        // The shim's own write end is what keeps the process from reading end-of-file;
        // ours is closed by now, so nothing written is lost.
        close_stdin(inner, id, "").await?;
    }
    Ok(())
}

/// CloseIO for a process's stdin (`exec_id` empty: the main process). Retried for a while:
/// without it the process never reads end-of-file and a `kubectl exec -i` hangs, and an
/// exec whose input ended at once can ask before the shim is ready for it (a `kubectl exec -i
/// ... cat` hung in CI with its input delivered).
async fn close_stdin(inner: &Arc<RuntimeInner>, id: &str, exec_id: &str) -> Result<()> {
    let mut delay = Duration::from_millis(20);
    let mut attempts = 0;
    loop {
        let result = inner
            .tasks()
            .close_io(inner.connection.request(CloseIoRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                stdin: true,
            }))
            .await;
        match result {
            Ok(_) => return Ok(()),
            Err(status) if attempts < CLOSE_STDIN_ATTEMPTS => {
                tracing::debug!(%id, %exec_id, %status, "CloseIO failed; retrying");
                attempts += 1;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(500));
            }
            Err(status) => {
                return Err(status_error(
                    status,
                    &format!("closing stdin of container {id}"),
                ))
            }
        }
    }
}

async fn copy_out(mut reader: pipe::Receiver, sink: Option<mpsc::Sender<Bytes>>) {
    let mut buffer = vec![0u8; 32 * 1024];
    loop {
        match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => {
                if let Some(sink) = &sink {
                    // A gone receiver still needs the FIFO drained, or the process blocks.
                    let _ = sink.send(Bytes::copy_from_slice(&buffer[..read])).await;
                }
            }
        }
    }
}

async fn copy_in(mut writer: pipe::Sender, mut source: mpsc::Receiver<Bytes>) {
    while let Some(data) = source.recv().await {
        if writer.write_all(&data).await.is_err() {
            return;
        }
    }
}
