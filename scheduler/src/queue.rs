//! The scheduling queue, after upstream's PriorityQueue: an active queue (highest
//! priority, then oldest first), a backoff queue for pods waiting out their per-pod
//! backoff, and a set of unschedulable pods that wait for a cluster change. A pod found
//! unschedulable is only tried again when something changes (or after a long timeout), and
//! then no sooner than its backoff (1 s doubling to 10 s), so nothing busy-loops.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::model::PodInfo;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Active,
    Backoff(Instant),
    Unschedulable(Instant),
    /// Popped by the scheduling loop, or binding.
    InFlight,
}

struct Entry {
    info: Arc<PodInfo>,
    place: Place,
    attempts: u32,
    last_failure: Option<Instant>,
    /// Queue order among equal priorities: first come first served.
    seq: u64,
}

#[derive(Default)]
struct State {
    pods: HashMap<String, Entry>,
    active: BTreeSet<(Reverse<i32>, u64, String)>,
    backoff: BTreeSet<(Instant, u64, String)>,
    /// Bumped whenever the cluster changes in a way that may help unschedulable pods.
    move_cycle: u64,
    seq: u64,
}

/// What the scheduling loop gets from [`SchedulingQueue::pop`].
pub struct Popped {
    pub info: Arc<PodInfo>,
    pub attempts: u32,
    /// The move cycle when popped: a failure that raced with a cluster change goes to
    /// backoff, not to the unschedulable set, so that change is not missed.
    pub cycle: u64,
}

#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    /// Unschedulable pods are retried at least this often even without cluster changes.
    pub max_unschedulable: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        // Upstream's podInitialBackoffSeconds, podMaxBackoffSeconds and podMaxInUnschedulablePodsDuration.
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(10),
            max_unschedulable: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    fn after(&self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(31);
        self.initial.saturating_mul(1u32 << doublings).min(self.max)
    }
}

pub struct SchedulingQueue {
    state: Mutex<State>,
    ready: Notify,
    backoff: Backoff,
}

impl SchedulingQueue {
    pub fn new(backoff: Backoff) -> SchedulingQueue {
        SchedulingQueue {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            backoff,
        }
    }

    /// A pending pod was added or updated.
    pub fn add_or_update(&self, info: Arc<PodInfo>) {
        let mut s = self.state.lock();
        let now = Instant::now();
        let s = &mut *s;
        match s.pods.get_mut(&info.key) {
            None => {
                s.seq += 1;
                let seq = s.seq;
                s.active
                    .insert((Reverse(info.priority), seq, info.key.clone()));
                s.pods.insert(
                    info.key.clone(),
                    Entry {
                        info,
                        place: Place::Active,
                        attempts: 0,
                        last_failure: None,
                        seq,
                    },
                );
                self.ready.notify_one();
            }
            Some(entry) => {
                let changed = entry.info.scheduling_inputs_differ(&info);
                if let Place::Active = entry.place {
                    if entry.info.priority != info.priority {
                        s.active.remove(&(
                            Reverse(entry.info.priority),
                            entry.seq,
                            info.key.clone(),
                        ));
                        s.active
                            .insert((Reverse(info.priority), entry.seq, info.key.clone()));
                    }
                }
                entry.info = info;
                // An update that may change the outcome ends the wait for a cluster change.
                if changed {
                    if let Place::Unschedulable(_) = entry.place {
                        let key = entry.info.key.clone();
                        Self::requeue(s, &self.backoff, &key, now);
                        self.ready.notify_one();
                    }
                }
            }
        }
    }

    pub fn remove(&self, key: &str) {
        let mut s = self.state.lock();
        if let Some(entry) = s.pods.remove(key) {
            match entry.place {
                Place::Active => {
                    s.active
                        .remove(&(Reverse(entry.info.priority), entry.seq, key.to_string()));
                }
                Place::Backoff(at) => {
                    s.backoff.remove(&(at, entry.seq, key.to_string()));
                }
                Place::Unschedulable(_) | Place::InFlight => {}
            }
        }
    }

    pub fn contains(&self, key: &str) -> bool {
        self.state.lock().pods.contains_key(key)
    }

    /// Keys of every pending pod (for reconciling after a re-list).
    pub fn keys(&self) -> Vec<String> {
        self.state.lock().pods.keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.state.lock().pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Moves an entry out of the unschedulable set: to active if its backoff is over, else to backoff.
    fn requeue(s: &mut State, backoff: &Backoff, key: &str, now: Instant) {
        let Some(entry) = s.pods.get_mut(key) else {
            return;
        };
        let ready_at = entry
            .last_failure
            .map(|t| t + backoff.after(entry.attempts))
            .unwrap_or(now);
        if ready_at <= now {
            entry.place = Place::Active;
            s.active
                .insert((Reverse(entry.info.priority), entry.seq, key.to_string()));
        } else {
            entry.place = Place::Backoff(ready_at);
            s.backoff.insert((ready_at, entry.seq, key.to_string()));
        }
    }

    /// Something changed that may let unschedulable pods fit (a node added or changed, a pod gone).
    pub fn move_all_unschedulable(&self) {
        let mut s = self.state.lock();
        s.move_cycle += 1;
        let now = Instant::now();
        let waiting: Vec<String> = s
            .pods
            .iter()
            .filter(|(_, e)| matches!(e.place, Place::Unschedulable(_)))
            .map(|(k, _)| k.clone())
            .collect();
        if waiting.is_empty() {
            return;
        }
        for key in waiting {
            Self::requeue(&mut s, &self.backoff, &key, now);
        }
        drop(s);
        self.ready.notify_one();
    }

    /// The next pod to schedule; waits until there is one.
    pub async fn pop(&self) -> Popped {
        loop {
            let notified = self.ready.notified();
            let wake_at = {
                let mut s = self.state.lock();
                let now = Instant::now();
                self.flush(&mut s, now);
                if let Some(first) = s.active.pop_first() {
                    let (_, _, key) = first;
                    let cycle = s.move_cycle;
                    if let Some(entry) = s.pods.get_mut(&key) {
                        entry.place = Place::InFlight;
                        return Popped {
                            info: entry.info.clone(),
                            attempts: entry.attempts,
                            cycle,
                        };
                    }
                    continue;
                }
                let next_backoff = s.backoff.first().map(|(at, _, _)| *at);
                let next_flush = s
                    .pods
                    .values()
                    .filter_map(|e| match e.place {
                        Place::Unschedulable(since) => Some(since + self.backoff.max_unschedulable),
                        _ => None,
                    })
                    .min();
                [next_backoff, next_flush].into_iter().flatten().min()
            };
            match wake_at {
                Some(at) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    fn flush(&self, s: &mut State, now: Instant) {
        while let Some((at, _, _)) = s.backoff.first() {
            if *at > now {
                break;
            }
            let Some((_, seq, key)) = s.backoff.pop_first() else {
                break;
            };
            if let Some(entry) = s.pods.get_mut(&key) {
                entry.place = Place::Active;
                s.active.insert((Reverse(entry.info.priority), seq, key));
            }
        }
        let stale: Vec<String> = s
            .pods
            .iter()
            .filter(|(_, e)| matches!(e.place, Place::Unschedulable(since) if since + self.backoff.max_unschedulable <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for key in stale {
            Self::requeue(s, &self.backoff, &key, now);
        }
    }

    /// No node fits the pod. Returns the backoff it now has.
    pub fn unschedulable(&self, key: &str, popped_cycle: u64) {
        let mut s = self.state.lock();
        let now = Instant::now();
        let moved_meanwhile = s.move_cycle > popped_cycle;
        let Some(entry) = s.pods.get_mut(key) else {
            return;
        };
        entry.attempts += 1;
        entry.last_failure = Some(now);
        if moved_meanwhile {
            let at = now + self.backoff.after(entry.attempts);
            entry.place = Place::Backoff(at);
            let seq = entry.seq;
            s.backoff.insert((at, seq, key.to_string()));
            drop(s);
            self.ready.notify_one();
        } else {
            entry.place = Place::Unschedulable(now);
        }
    }

    /// Scheduling or binding failed for a reason other than fit (an API error): retry after backoff.
    pub fn failed(&self, key: &str) {
        let mut s = self.state.lock();
        let now = Instant::now();
        let Some(entry) = s.pods.get_mut(key) else {
            return;
        };
        entry.attempts += 1;
        entry.last_failure = Some(now);
        let at = now + self.backoff.after(entry.attempts);
        entry.place = Place::Backoff(at);
        let seq = entry.seq;
        s.backoff.insert((at, seq, key.to_string()));
        drop(s);
        self.ready.notify_one();
    }

    /// The pod was bound; it leaves the queue.
    pub fn bound(&self, key: &str) {
        self.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, priority: i32) -> Arc<PodInfo> {
        Arc::new(PodInfo::new(
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": "d"},
                "spec": {"priority": priority, "containers": [{"name": "c"}]}}))
            .unwrap(),
        ))
    }

    fn queue() -> SchedulingQueue {
        SchedulingQueue::new(Backoff::default())
    }

    #[tokio::test]
    async fn pops_by_priority_then_arrival() {
        let q = queue();
        q.add_or_update(pod("low", 0));
        q.add_or_update(pod("high", 10));
        q.add_or_update(pod("low2", 0));
        assert_eq!(q.pop().await.info.name, "high");
        assert_eq!(q.pop().await.info.name, "low");
        assert_eq!(q.pop().await.info.name, "low2");
    }

    #[test]
    fn backoff_doubles_from_one_second_to_ten() {
        let b = Backoff::default();
        let secs: Vec<u64> = (1..=6).map(|a| b.after(a).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 10, 10]);
    }

    #[tokio::test(start_paused = true)]
    async fn unschedulable_pods_wait_for_a_change_then_their_backoff() {
        let q = queue();
        q.add_or_update(pod("p", 0));
        let popped = q.pop().await;
        q.unschedulable("d/p", popped.cycle);
        // Nothing changed: pop must not return within the long wait, only after the 5 minute flush.
        let waited = tokio::time::timeout(Duration::from_secs(60), q.pop()).await;
        assert!(
            waited.is_err(),
            "an unschedulable pod came back without a cluster change"
        );
        q.move_all_unschedulable();
        let start = Instant::now();
        let again = q.pop().await;
        assert_eq!(again.info.name, "p");
        assert_eq!(again.attempts, 1);
        // The failure was more than its 1 s backoff ago, so it came back at once.
        assert!(Instant::now() - start < Duration::from_secs(1));

        // Second failure: a change right away still waits out the 2 s backoff.
        q.unschedulable("d/p", again.cycle);
        q.move_all_unschedulable();
        let start = Instant::now();
        let third = q.pop().await;
        assert_eq!(third.attempts, 2);
        assert!(Instant::now() - start >= Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_during_the_attempt_sends_the_pod_to_backoff_not_to_waiting() {
        let q = queue();
        q.add_or_update(pod("p", 0));
        let popped = q.pop().await;
        q.move_all_unschedulable();
        q.unschedulable("d/p", popped.cycle);
        let again = tokio::time::timeout(Duration::from_secs(5), q.pop()).await;
        assert!(again.is_ok(), "the change during the attempt was lost");
    }

    #[tokio::test(start_paused = true)]
    async fn removed_pods_are_never_returned() {
        let q = queue();
        q.add_or_update(pod("a", 0));
        q.add_or_update(pod("b", 0));
        q.remove("d/a");
        assert_eq!(q.pop().await.info.name, "b");
        assert!(tokio::time::timeout(Duration::from_secs(600), q.pop())
            .await
            .is_err());
    }
}
