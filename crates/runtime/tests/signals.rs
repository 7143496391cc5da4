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
    // signal raised before it is first polled is not lost (nor fatal). A second signal
    // goes to the forced-exit hook (which exits in `shutdown`; here it reports).
    for (first, second) in [
        (Signal::SIGTERM, Signal::SIGINT),
        (Signal::SIGINT, Signal::SIGTERM),
    ] {
        let (seconds_tx, mut seconds) = tokio::sync::mpsc::unbounded_channel();
        let shutdown = ShutdownSignals::install()
            .unwrap()
            .shutdown_then(move |signal| {
                let _ = seconds_tx.send(signal);
            });
        raise(first).unwrap();
        tokio::time::timeout(TIMEOUT, shutdown).await.unwrap();
        raise(second).unwrap();
        let forced = tokio::time::timeout(TIMEOUT, seconds.recv()).await.unwrap();
        let expected = if second == Signal::SIGINT {
            ShutdownSignal::Interrupt
        } else {
            ShutdownSignal::Terminate
        };
        assert_eq!(forced, Some(expected));
    }
}

/// The real `shutdown`: the first signal completes it, the second exits with status 1. The
/// test runs itself again as a child process (the exit would end the test process) and
/// checks the child's exit status.
#[test]
fn a_second_signal_exits_at_once() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return second_signal_child();
    }
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "a_second_signal_exits_at_once", "--nocapture"])
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(1),
        "child: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("first signal handled"), "child: {stdout}");
}

const CHILD_ENV: &str = "RKUBE_SIGNALS_TEST_CHILD";

fn second_signal_child() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let shutdown = shutdown_signal().unwrap();
        raise(Signal::SIGTERM).unwrap();
        tokio::time::timeout(TIMEOUT, shutdown).await.unwrap();
        println!("first signal handled");
        raise(Signal::SIGTERM).unwrap();
        // The forced exit ends the process; returning from here makes the parent fail.
        tokio::time::sleep(TIMEOUT).await;
    });
}
