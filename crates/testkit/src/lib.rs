//! Helpers for tests and benchmarks that need real processes: free loopback ports and a
//! private etcd started as a child process with its own data directory, stopped by PID;
//! and the one `wait_for` (poll a condition until a timeout) the repository's tests share.

pub mod containerd;
pub mod etcd;
pub mod images;
pub mod wait;

pub use wait::{poll_for, poll_until, try_poll, wait_for, wait_for_value, TimedOut, POLL_INTERVAL};

use std::net::TcpListener;
use std::path::PathBuf;

/// The kubectl binary: `$KUBECTL` if set, else /usr/bin/kubectl (1.32 on these machines),
/// else `kubectl` on PATH (where scripts/install-deps put the PyPI build).
pub fn kubectl_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("KUBECTL") {
        return PathBuf::from(path);
    }
    let system = PathBuf::from("/usr/bin/kubectl");
    if system.exists() {
        system
    } else {
        PathBuf::from("kubectl")
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; racy only against other processes
/// picking ports at the same moment, which is acceptable for tests).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
