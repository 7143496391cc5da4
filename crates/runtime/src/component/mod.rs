//! What every rkube component binary shares, so that the API server, scheduler, controller
//! manager and kubelet (and kube-proxy next) are started, reached and stopped the same way:
//!
//! - [`api_server`]: `--master` / `--kubeconfig` / inference -> a `kube::Client`.
//! - [`listen`]: `--bind-address` + `--port` for a component's HTTP server.
//! - [`signals`]: SIGTERM and SIGINT both start a graceful shutdown.
//! - [`telemetry`]: one `tracing` setup (`RUST_LOG`, default `info`, to stderr).
//! - [`health`]: `/healthz`, `/livez` and `/readyz`.
//!
//! A binary's `main` is then: [`telemetry::init_tracing`], parse flags (flattening
//! [`ApiServerArgs`] and [`ListenArgs`]), install [`signals::shutdown_signal`] before
//! anything is started, bind, and hand the listener and the shutdown future to the
//! component's `run`.

pub mod api_server;
pub mod health;
pub mod listen;
pub mod signals;
pub mod telemetry;

pub use api_server::{ApiServerArgs, ApiServerError, ApiServerTarget};

/// The host's name: the kubelet's default node name and Hostname address, and the
/// instance in the scheduler's Events. Falls back to "localhost" rather than failing.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}
pub use listen::{ListenArgs, ListenDefaults, ListenError};
pub use signals::{shutdown_signal, ShutdownSignal, ShutdownSignals};
