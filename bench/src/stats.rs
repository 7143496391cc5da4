//! Latency percentiles and a closed-loop load generator.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The `p` quantile (0..=1) of ascending `sorted` latencies, nearest rank; zero if empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let Some(last) = sorted.len().checked_sub(1) else {
        return Duration::ZERO;
    };
    let index = (last as f64 * p).round() as usize;
    sorted[index.min(last)]
}

/// `12.34 ms`
pub fn ms(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1000.0)
}

/// The median and 99th percentile of a batch of latencies.
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    pub p50: Duration,
    pub p99: Duration,
}

impl Summary {
    pub fn of(mut latencies: Vec<Duration>) -> Summary {
        latencies.sort();
        Summary {
            p50: percentile(&latencies, 0.5),
            p99: percentile(&latencies, 0.99),
        }
    }

    /// `p50 12.34 ms p99 56.78 ms`, aligned for tables.
    pub fn line(&self) -> String {
        format!("p50 {:>10}  p99 {:>10}", ms(self.p50), ms(self.p99))
    }

    /// Each percentile as a multiple of the baseline's.
    pub fn ratio(&self, baseline: &Summary) -> String {
        let times =
            |value: Duration, base: Duration| value.as_secs_f64() / base.as_secs_f64().max(1e-9);
        format!(
            "p50 {:.2}x  p99 {:.2}x",
            times(self.p50, baseline.p50),
            times(self.p99, baseline.p99)
        )
    }
}

/// What [`run_concurrent`] measured.
pub struct Batch {
    /// From the first operation's start to the last one's end.
    pub wall: Duration,
    /// One per operation, in completion order.
    pub latencies: Vec<Duration>,
}

impl Batch {
    /// Operations per second over the wall time.
    pub fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64()
    }

    pub fn summary(&self) -> Summary {
        Summary::of(self.latencies.clone())
    }
}

/// Runs `op(i)` for every i in `0..total` with `concurrency` operations in flight, each
/// worker starting its next as soon as its last is done (a closed loop, like a client
/// pool). `op` returns its own latency, since only it knows what "done" means (a response,
/// or a watch event that came later); the first error ends the batch.
pub async fn run_concurrent<F, Fut>(
    total: usize,
    concurrency: usize,
    op: F,
) -> anyhow::Result<Batch>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<Duration>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let op = op.clone();
            let next = next.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    latencies.push(op(i).await?);
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(total);
    for worker in workers {
        latencies.extend(worker.await??);
    }
    Ok(Batch {
        wall: started.elapsed(),
        latencies,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_takes_the_nearest_rank() {
        let sorted: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&sorted, 0.5), Duration::from_millis(51));
        assert_eq!(percentile(&sorted, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&sorted, 1.0), Duration::from_millis(100));
        assert_eq!(percentile(&sorted[..1], 0.99), Duration::from_millis(1));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }

    #[tokio::test]
    async fn run_concurrent_runs_every_index_once() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        let batch = run_concurrent(50, 4, move |i| {
            let record = record.clone();
            async move {
                record.lock().unwrap().push(i);
                Ok(Duration::from_millis(i as u64))
            }
        })
        .await
        .unwrap();
        let mut seen = seen.lock().unwrap().clone();
        seen.sort();
        assert_eq!(seen, (0..50).collect::<Vec<_>>());
        assert_eq!(batch.latencies.len(), 50);
    }
}
