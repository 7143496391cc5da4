//! Per-key exponential backoff as upstream's kubelet uses for crash loops and image pulls:
//! the first retry is immediate, each further one waits twice as long (up to a maximum),
//! and a key that stayed healthy long enough starts over.

use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
struct Entry {
    delay: Duration,
    last: Instant,
}

#[derive(Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    entries: HashMap<String, Entry>,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            entries: HashMap::new(),
        }
    }

    /// How long `key` must still wait at `now` (None: it may go now).
    pub fn remaining(&self, key: &str, now: Instant) -> Option<Duration> {
        let entry = self.entries.get(key)?;
        let until = entry.last + entry.delay;
        (now < until).then(|| until - now)
    }

    /// The current delay of `key` (what the next wait would be after a failure).
    pub fn delay(&self, key: &str) -> Option<Duration> {
        self.entries.get(key).map(|e| e.delay)
    }

    /// Records a retry of `key` at `now`: the next one waits longer.
    pub fn record_retry(&mut self, key: &str, now: Instant) {
        let delay = match self.entries.get(key) {
            Some(e) => (e.delay * 2).min(self.max),
            None => self.initial,
        };
        self.entries
            .insert(key.to_string(), Entry { delay, last: now });
    }

    pub fn reset(&mut self, key: &str) {
        self.entries.remove(key);
    }

    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.entries.retain(|k, _| keep(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_max_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(10), Duration::from_secs(300));
        let t0 = Instant::now();
        assert_eq!(b.remaining("c", t0), None);
        b.record_retry("c", t0);
        assert_eq!(
            b.remaining("c", t0 + Duration::from_secs(4)),
            Some(Duration::from_secs(6))
        );
        assert_eq!(b.remaining("c", t0 + Duration::from_secs(10)), None);
        let mut delays = Vec::new();
        let mut t = t0;
        for _ in 0..7 {
            t += b.delay("c").unwrap();
            b.record_retry("c", t);
            delays.push(b.delay("c").unwrap().as_secs());
        }
        assert_eq!(delays, [20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(b.remaining("other", t), None);
        b.reset("c");
        assert_eq!(b.remaining("c", t), None);
        b.record_retry("c", t);
        assert_eq!(b.delay("c"), Some(Duration::from_secs(10)));
    }
}
