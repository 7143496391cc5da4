//! Expectations: what a controller has just created or deleted and its cache has not
//! shown yet. Without them a reconcile that runs before the watch delivers its own writes
//! would see too few (or too many) pods and act a second time.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// How the cache currently sees an object the controller expects to change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observed {
    Absent,
    Active,
    /// Present with a deletionTimestamp: counts as deleted.
    Terminating,
}

#[derive(Default)]
struct Pending {
    creations: HashSet<String>,
    deletions: HashSet<String>,
    since: Option<Instant>,
}

pub struct Expectations {
    pending: Mutex<HashMap<String, Pending>>,
    /// Past this, unmet expectations are dropped (a missed watch event must not wedge a
    /// controller forever); upstream uses five minutes.
    ttl: Duration,
}

impl Expectations {
    pub fn new(ttl: Duration) -> Expectations {
        Expectations {
            pending: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    pub fn expect_creation(&self, controller: &str, name: &str) {
        let mut pending = self.pending.lock();
        let entry = pending.entry(controller.to_string()).or_default();
        entry.creations.insert(name.to_string());
        entry.since.get_or_insert_with(Instant::now);
    }

    pub fn expect_deletion(&self, controller: &str, name: &str) {
        let mut pending = self.pending.lock();
        let entry = pending.entry(controller.to_string()).or_default();
        entry.deletions.insert(name.to_string());
        entry.since.get_or_insert_with(Instant::now);
    }

    /// Drops what the cache now shows and says whether nothing is outstanding.
    pub fn satisfied(&self, controller: &str, observe: impl Fn(&str) -> Observed) -> bool {
        let mut pending = self.pending.lock();
        let Some(entry) = pending.get_mut(controller) else {
            return true;
        };
        entry
            .creations
            .retain(|name| observe(name) == Observed::Absent);
        entry
            .deletions
            .retain(|name| observe(name) == Observed::Active);
        let expired = entry.since.is_some_and(|t| t.elapsed() > self.ttl);
        if expired || (entry.creations.is_empty() && entry.deletions.is_empty()) {
            pending.remove(controller);
            return true;
        }
        false
    }

    /// A deletion that failed will not be observed; stop waiting for it.
    pub fn deletion_failed(&self, controller: &str, name: &str) {
        if let Some(entry) = self.pending.lock().get_mut(controller) {
            entry.deletions.remove(name);
        }
    }

    pub fn forget(&self, controller: &str) {
        self.pending.lock().remove(controller);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn satisfied_once_creations_appear_and_deletions_vanish() {
        let exp = Expectations::new(Duration::from_secs(300));
        exp.expect_creation("ns/rs", "a");
        exp.expect_deletion("ns/rs", "b");
        let before = |n: &str| {
            if n == "a" {
                Observed::Absent
            } else {
                Observed::Active
            }
        };
        assert!(!exp.satisfied("ns/rs", before));
        // "a" appeared; "b" is still there.
        assert!(!exp.satisfied("ns/rs", |_| Observed::Active));
        // "b" is terminating: counts as deleted.
        assert!(exp.satisfied("ns/rs", |_| Observed::Terminating));
        assert!(exp.satisfied("other", |_| Observed::Absent));
    }

    #[tokio::test(start_paused = true)]
    async fn unmet_expectations_expire() {
        let exp = Expectations::new(Duration::from_secs(10));
        exp.expect_creation("k", "never");
        assert!(!exp.satisfied("k", |_| Observed::Absent));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(exp.satisfied("k", |_| Observed::Absent));
    }
}
