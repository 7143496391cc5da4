//! SIGTERM and SIGINT raised at this test process reach the shutdown helpers instead of
//! killing it. One test function: the handlers are process-wide, so two tests raising
//! signals at once would see each other's.

use std::time::Duration;

use nix::sys::signal::{raise, Signal};
use rkube_runtime::component::{shutdown_signal, ShutdownSignal, ShutdownSignals};

const TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn sigterm_and_sigint_both_stop_a_component() {
    let mut signals = ShutdownSignals::install().unwrap();
    raise(Signal::SIGTERM).unwrap();
    let received = tokio::time::timeout(TIMEOUT, signals.recv()).await.unwrap();
    assert_eq!(received, ShutdownSignal::Terminate);
    raise(Signal::SIGINT).unwrap();
    let received = tokio::time::timeout(TIMEOUT, signals.recv()).await.unwrap();
    assert_eq!(received, ShutdownSignal::Interrupt);

    // The future components take: the handlers are in place once it is returned, so a
    // signal raised before it is first polled is not lost (nor fatal).
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        let shutdown = shutdown_signal().unwrap();
        raise(signal).unwrap();
        tokio::time::timeout(TIMEOUT, shutdown).await.unwrap();
    }
}
