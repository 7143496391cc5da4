//! A private containerd for tests: a child process with its own config, root, state and
//! socket under a temp dir, stopped by PID on drop. It never touches the system containerd
//! (/run/containerd): every path it uses is ours, and runc gets its own root too
//! ([`ContainerdProcess::runc_root`]), because runc's state otherwise lands in
//! /run/containerd/runc regardless of containerd's `--state`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

use crate::wait::{try_poll, STARTUP_POLL};

const START_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct ContainerdProcess {
    child: Option<Child>,
    dir: tempfile::TempDir,
}

/// Whether this machine can run the real-containerd tests (binaries present, running as root).
pub fn available() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .map(|status| {
            status
                .lines()
                .any(|line| line.starts_with("Uid:") && line.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    root && find_binary("containerd").is_some() && find_binary("runc").is_some()
}

fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into()])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

impl ContainerdProcess {
    /// Starts containerd with a fresh root/state under a temp dir and waits for its socket.
    pub async fn start() -> anyhow::Result<ContainerdProcess> {
        let binary = find_binary("containerd").context(
            "containerd not found (apt-get install -y containerd runc containernetworking-plugins)",
        )?;
        // Short prefix: the socket path must fit in sockaddr_un (108 bytes).
        let dir = tempfile::Builder::new()
            .prefix("rkctd-")
            .tempdir_in("/tmp")
            .context("creating containerd temp dir")?;
        let root = dir.path();
        for sub in ["root", "state", "opt", "runc"] {
            std::fs::create_dir_all(root.join(sub))?;
        }
        let config = format!(
            r#"version = 2
root = "{root}/root"
state = "{root}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{root}/containerd.sock"

[ttrpc]
  address = "{root}/containerd.sock.ttrpc"

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"
"#,
            root = root.display()
        );
        std::fs::write(root.join("config.toml"), config)?;
        let log = File::options()
            .create(true)
            .append(true)
            .open(root.join("containerd.log"))?;
        let child = Command::new(&binary)
            .arg("--config")
            .arg(root.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut process = ContainerdProcess {
            child: Some(child),
            dir,
        };
        let (log, socket) = (process.log_path(), process.socket_path());
        let child = &mut process.child;
        let listening_or_exited = || {
            // Looked at before connecting, so the future borrows nothing of the child.
            let exited = child.as_mut().map_or(Ok(None), Child::try_wait);
            let (log, socket) = (&log, &socket);
            async move {
                if let Some(status) = exited? {
                    bail!(
                        "containerd exited during startup with {status}; log: {}",
                        read_log_tail(log)
                    );
                }
                let connected = tokio::net::UnixStream::connect(socket).await;
                Ok(connected.is_ok().then_some(()))
            }
        };
        try_poll(STARTUP_POLL, START_TIMEOUT, listening_or_exited, || {
            anyhow!(
                "containerd socket not ready after {START_TIMEOUT:?}; log: {}",
                read_log_tail(&log)
            )
        })
        .await?;
        Ok(process)
    }

    /// The gRPC socket.
    pub fn socket_path(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// A runc root of our own, to pass to the runtime (runc options `root`).
    pub fn runc_root(&self) -> PathBuf {
        self.dir.path().join("runc")
    }

    /// The temp dir holding everything; tests may put their own files (logs) under it.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("containerd.log")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills containerd, the shims it started (found by our socket address in their command
    /// line) and their containers, then unmounts whatever is left under our dir.
    pub fn stop(&mut self) {
        let address = self.socket_path().display().to_string();
        for shim in processes_with_arg(&address) {
            for child in children_of(shim) {
                kill_pid(child);
            }
            kill_pid(shim);
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        unmount_under(self.dir.path());
    }
}

impl Drop for ContainerdProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

fn processes_with_arg(arg: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|cmdline| {
                    let text = String::from_utf8_lossy(&cmdline);
                    text.contains("containerd-shim") && text.split('\0').any(|part| part == arg)
                })
                .unwrap_or(false)
        })
        .collect()
}

fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|children| {
            children
                .split_whitespace()
                .filter_map(|child| child.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

fn kill_pid(pid: u32) {
    let _ = Command::new("kill")
        .arg("-9")
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// Lazily unmounts every mount point under `dir` (not `dir` itself), deepest first so
/// nested mounts go before their parents: pod network namespaces, rootfs and volume
/// mounts a test's containerd or kubelet left behind.
pub fn unmount_under(dir: &Path) {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    // The separator keeps `/tmp/abc` from matching a sibling such as `/tmp/abcdef`.
    let prefix = format!("{}/", dir.display());
    let mut targets: Vec<&str> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|target| target.starts_with(&prefix))
        .collect();
    targets.sort_by_key(|target| std::cmp::Reverse(target.len()));
    targets.dedup();
    for target in targets {
        let _ = Command::new("umount")
            .args(["-l", target])
            .stderr(Stdio::null())
            .status();
    }
}

fn read_log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(3000);
    text.get(start..).unwrap_or_default().to_string()
}
