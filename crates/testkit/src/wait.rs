//! Waiting in tests for a condition that the system under test makes true eventually.
//!
//! [`try_poll`] is the one poll loop; the others are shapes of it: [`poll_for`] (a value),
//! [`poll_until`] (a yes/no), and [`wait_for`]/[`wait_for_value`], which panic on timeout.

use std::future::Future;
use std::time::Duration;

/// How often a condition is checked again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// How often a process that is starting is looked at: tests start many, so waiting less
/// adds up.
pub(crate) const STARTUP_POLL: Duration = Duration::from_millis(20);

/// The condition did not hold within the timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut;

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("timed out")
    }
}

impl std::error::Error for TimedOut {}

/// Runs `check` every `interval` until it returns `Ok(Some(value))`, and returns that value.
/// An `Err` from `check` ends the wait at once with that error (a process that died will
/// not become ready). After `timeout` the result is `Err(on_timeout())`, so the caller can
/// say what it last saw. `check` always runs at least once.
pub async fn try_poll<T, E, F, Fut>(
    interval: Duration,
    timeout: Duration,
    mut check: F,
    on_timeout: impl FnOnce() -> E,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, E>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(on_timeout());
        }
        tokio::time::sleep(interval).await;
    }
}

/// Checks `check` every [`POLL_INTERVAL`] until it returns `Some(value)`; `Err(TimedOut)`
/// if it has not after `timeout`.
pub async fn poll_for<T, F, Fut>(timeout: Duration, mut check: F) -> Result<T, TimedOut>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let check = || {
        let found = check();
        async move { Ok::<_, TimedOut>(found.await) }
    };
    try_poll(POLL_INTERVAL, timeout, check, || TimedOut).await
}

/// Checks `check` until it holds, every [`POLL_INTERVAL`]; `Err(TimedOut)` if it still
/// does not after `timeout`.
pub async fn poll_until<F, Fut>(timeout: Duration, mut check: F) -> Result<(), TimedOut>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    poll_for(timeout, || {
        let holds = check();
        async move { holds.await.then_some(()) }
    })
    .await
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

/// [`poll_for`], panicking with "timed out waiting for {what}" on timeout.
pub async fn wait_for_value<T, F, Fut>(what: &str, timeout: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match poll_for(timeout, check).await {
        Ok(value) => value,
        Err(TimedOut) => panic!("timed out waiting for {what} ({timeout:?})"),
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

    #[tokio::test(start_paused = true)]
    async fn poll_for_returns_what_the_check_found() {
        let calls = Cell::new(0);
        let found = poll_for(Duration::from_secs(10), || {
            calls.set(calls.get() + 1);
            let seen = calls.get();
            async move { (seen == 4).then_some(seen * 10) }
        })
        .await;
        assert_eq!(found, Ok(40));
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_from_the_check_ends_the_wait_at_once() {
        let start = tokio::time::Instant::now();
        let calls = Cell::new(0);
        let result: Result<(), String> = try_poll(
            Duration::from_millis(10),
            Duration::from_secs(60),
            || {
                calls.set(calls.get() + 1);
                let seen = calls.get();
                async move {
                    if seen == 2 {
                        Err("the process died".to_string())
                    } else {
                        Ok(None)
                    }
                }
            },
            || "timed out".to_string(),
        )
        .await;
        assert_eq!(result, Err("the process died".to_string()));
        assert_eq!(calls.get(), 2);
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn on_timeout_describes_the_failure() {
        let result: Result<(), String> = try_poll(
            Duration::from_millis(10),
            Duration::from_millis(50),
            || async { Ok(None) },
            || "still starting; log: boot".to_string(),
        )
        .await;
        assert_eq!(result, Err("still starting; log: boot".to_string()));
    }
}
