//! Waiting in tests for a condition that the system under test makes true eventually.

use std::future::Future;
use std::time::Duration;

/// How often a condition is checked again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The condition did not hold within the timeout.
#[derive(Debug)]
pub struct TimedOut;

/// Checks `check` until it holds, every [`POLL_INTERVAL`]; `Err(TimedOut)` if it still
/// does not after `timeout` (it is always checked at least once).
pub async fn poll_until<F, Fut>(timeout: Duration, mut check: F) -> Result<(), TimedOut>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(TimedOut);
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// [`poll_until`], panicking with "timed out waiting for {what}" on timeout.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    if poll_until(timeout, check).await.is_err() {
        panic!("timed out waiting for {what} ({timeout:?})");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[tokio::test(start_paused = true)]
    async fn returns_once_the_condition_holds() {
        let calls = Cell::new(0);
        let result = poll_until(Duration::from_secs(10), || {
            calls.set(calls.get() + 1);
            let done = calls.get() == 3;
            async move { done }
        })
        .await;
        assert!(result.is_ok());
        assert_eq!(calls.get(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_the_timeout() {
        let start = tokio::time::Instant::now();
        let result = poll_until(Duration::from_secs(1), || async { false }).await;
        assert!(result.is_err());
        assert!(start.elapsed() >= Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "timed out waiting for the answer")]
    async fn wait_for_names_what_it_waited_for() {
        wait_for("the answer", Duration::from_millis(300), || async { false }).await;
    }
}
