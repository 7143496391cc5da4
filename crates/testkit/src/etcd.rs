//! A private etcd for tests: a child process with its own data directory and loopback
//! ports, stopped by PID and killed on drop.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::free_port;
use crate::wait::{try_poll, STARTUP_POLL};

const ETCD_BINARY: &str = "/usr/bin/etcd";
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Port pairs tried before giving up on a start that keeps finding its port taken.
const PORT_ATTEMPTS: u32 = 5;

/// A running (or stopped, between [`EtcdProcess::stop`] and [`EtcdProcess::restart`]) etcd.
#[derive(Debug)]
pub struct EtcdProcess {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
}

impl EtcdProcess {
    /// Starts etcd on free loopback ports with a fresh data directory and waits until it
    /// reports healthy.
    pub async fn start() -> anyhow::Result<EtcdProcess> {
        let dir = tempfile::Builder::new()
            .prefix("rkube-etcd-")
            .tempdir()
            .context("creating etcd temp dir")?;
        let mut etcd = EtcdProcess {
            child: None,
            dir,
            client_port: free_port()?,
            peer_port: free_port()?,
        };
        // free_port releases the port before etcd binds it, so a test starting at the same
        // moment can take it: pick new ports when that happened (seen in CI), not otherwise.
        let mut attempts = 1;
        loop {
            match etcd.spawn().await {
                Ok(()) => return Ok(etcd),
                Err(error)
                    if attempts < PORT_ATTEMPTS
                        && format!("{error:#}").contains("address already in use") =>
                {
                    attempts += 1;
                    etcd.client_port = free_port()?;
                    etcd.peer_port = free_port()?;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// The client URL, e.g. `http://127.0.0.1:40123`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// etcd's combined stdout and stderr, for diagnosing a failed test.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the process (SIGKILL, like a crash) and waits for it to exit.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().context("killing etcd")?;
            child.wait().context("waiting for etcd")?;
        }
        Ok(())
    }

    /// Stops etcd if running and starts it again with the same data directory and ports.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        self.spawn().await
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let client_url = self.endpoint();
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("opening etcd log")?;
        let mut command = Command::new(ETCD_BINARY);
        command
            .arg("--name=rkube-test")
            .arg(format!("--data-dir={}", self.data_dir().display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=rkube-test={peer_url}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(arch) = unsupported_arch() {
            // etcd 3.4 refuses to start on anything but amd64 unless told the arch by name.
            command.env("ETCD_UNSUPPORTED_ARCH", arch);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {ETCD_BINARY}"))?;
        self.child = Some(child);
        let (log, port) = (self.log_path(), self.client_port);
        let child = &mut self.child;
        let healthy_or_exited = || {
            // Looked at before the probe, so the future borrows nothing of the child.
            let exited = child.as_mut().map_or(Ok(None), Child::try_wait);
            let log = &log;
            async move {
                if let Some(status) = exited? {
                    bail!(
                        "etcd exited during startup with {status}; log: {}",
                        read_log_tail(log)
                    );
                }
                Ok(healthy(port).await.then_some(()))
            }
        };
        let started = try_poll(STARTUP_POLL, START_TIMEOUT, healthy_or_exited, || {
            anyhow!(
                "etcd not healthy after {START_TIMEOUT:?}; log: {}",
                read_log_tail(&log)
            )
        })
        .await;
        if started.is_err() {
            // Killing one that already exited only reaps it.
            let _ = self.stop();
        }
        started
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn unsupported_arch() -> Option<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => None,
        "aarch64" => Some("arm64"),
        "powerpc64" => Some("ppc64le"),
        "s390x" => Some("s390x"),
        other => Some(other),
    }
}

/// etcd's `/health` endpoint on the client port, spoken as plain HTTP/1.0 so the testkit
/// needs no HTTP client.
async fn healthy(port: u16) -> bool {
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&response).contains("\"health\":\"true\""))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Ok(true))
    )
}

fn read_log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(2000);
    text.get(start..).unwrap_or_default().to_string()
}
