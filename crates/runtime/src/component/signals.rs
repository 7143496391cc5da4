//! SIGTERM (what `kill`, systemd and the kubelet send) and SIGINT (Ctrl-C) both start the
//! same graceful shutdown in every component, so a stopped controller manager gives its
//! leader Lease up and a stopped kubelet leaves its containers to the next one.

use std::fmt;
use std::future::Future;

use tokio::signal::unix::{signal, Signal, SignalKind};

/// Which signal asked the process to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownSignal {
    Terminate,
    Interrupt,
}

impl fmt::Display for ShutdownSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ShutdownSignal::Terminate => "SIGTERM",
            ShutdownSignal::Interrupt => "SIGINT",
        })
    }
}

/// Handlers for SIGTERM and SIGINT. From [`ShutdownSignals::install`] on, neither signal
/// kills the process any more; [`ShutdownSignals::recv`] reports them instead.
pub struct ShutdownSignals {
    terminate: Signal,
    interrupt: Signal,
}

impl ShutdownSignals {
    /// Installs the handlers now (must run inside a tokio runtime). Install them before
    /// starting anything a signal should stop gracefully: until then, SIGTERM kills.
    pub fn install() -> std::io::Result<ShutdownSignals> {
        Ok(ShutdownSignals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for the next SIGTERM or SIGINT.
    pub async fn recv(&mut self) -> ShutdownSignal {
        tokio::select! {
            _ = self.terminate.recv() => ShutdownSignal::Terminate,
            _ = self.interrupt.recv() => ShutdownSignal::Interrupt,
        }
    }

    /// A future that completes on the first SIGTERM or SIGINT, after logging which: the
    /// `shutdown` argument of a component's `run`. A second signal exits the process at
    /// once with status 1, as upstream's components do, so an operator can always stop a
    /// shutdown that hangs (on an unreachable API server, say) without reaching for
    /// SIGKILL.
    pub async fn shutdown(self) {
        self.shutdown_then(|signal| {
            tracing::error!(%signal, "second signal: exiting without finishing the shutdown");
            std::process::exit(1)
        })
        .await
    }

    /// Completes on the first SIGTERM or SIGINT and leaves a task behind that calls
    /// `on_second` with the next one. [`ShutdownSignals::shutdown`] exits there; tests pass
    /// a recorder.
    pub async fn shutdown_then(mut self, on_second: impl FnOnce(ShutdownSignal) + Send + 'static) {
        let signal = self.recv().await;
        tracing::info!(%signal, "shutting down; send it again to exit at once");
        tokio::spawn(async move {
            let second = self.recv().await;
            on_second(second);
        });
    }
}

/// [`ShutdownSignals::install`] then [`ShutdownSignals::shutdown`]: the handlers are in
/// place when this returns. Not for tests that raise signals more than once: the second
/// one would exit the test process.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    Ok(ShutdownSignals::install()?.shutdown())
}
