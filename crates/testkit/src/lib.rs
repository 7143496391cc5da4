//! Helpers for tests and benchmarks that need real processes: free loopback ports and a
//! private etcd started as a child process with its own data directory, stopped by PID.

pub mod containerd;
pub mod etcd;
pub mod images;

use std::net::TcpListener;

/// A free TCP port on 127.0.0.1 (bound and released; racy only against other processes
/// picking ports at the same moment, which is acceptable for tests).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
