//! A work queue of keys with upstream client-go semantics: a key waiting in the queue is
//! held once however often it is added, and a key being processed is never handed to a
//! second worker; adding it meanwhile marks it dirty so it is processed again afterwards.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

/// Failure backoff: `base * 2^failures`, capped.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(5),
            max: Duration::from_secs(60),
        }
    }
}

struct State<K> {
    queue: VecDeque<K>,
    dirty: HashSet<K>,
    processing: HashSet<K>,
    failures: HashMap<K, u32>,
    shut_down: bool,
}

pub struct WorkQueue<K> {
    state: Mutex<State<K>>,
    ready: Notify,
    backoff: Backoff,
}

impl<K: Clone + Eq + Hash + Send + Sync + 'static> WorkQueue<K> {
    pub fn new(backoff: Backoff) -> Arc<Self> {
        Arc::new(WorkQueue {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                dirty: HashSet::new(),
                processing: HashSet::new(),
                failures: HashMap::new(),
                shut_down: false,
            }),
            ready: Notify::new(),
            backoff,
        })
    }

    pub fn add(&self, key: K) {
        let mut state = self.state.lock();
        if state.shut_down || !state.dirty.insert(key.clone()) {
            return;
        }
        // A key being processed goes back in the queue when its worker calls `done`.
        if !state.processing.contains(&key) {
            state.queue.push_back(key);
            drop(state);
            self.ready.notify_one();
        }
    }

    /// Adds the key once `delay` has passed.
    pub fn add_after(self: &Arc<Self>, key: K, delay: Duration) {
        if delay.is_zero() {
            self.add(key);
            return;
        }
        let queue = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Some(queue) = queue.upgrade() {
                queue.add(key);
            }
        });
    }

    /// Adds the key after a delay that doubles with each failure since the last `forget`.
    pub fn add_rate_limited(self: &Arc<Self>, key: K) {
        let failures = {
            let mut state = self.state.lock();
            let n = state.failures.entry(key.clone()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(20));
        let delay = self
            .backoff
            .base
            .saturating_mul(factor)
            .min(self.backoff.max);
        self.add_after(key, delay);
    }

    /// Clears the failure count of a key that was processed successfully.
    pub fn forget(&self, key: &K) {
        self.state.lock().failures.remove(key);
    }

    pub fn failures(&self, key: &K) -> u32 {
        self.state.lock().failures.get(key).copied().unwrap_or(0)
    }

    /// The next key to process, or `None` once the queue is shut down. The caller must
    /// call [`WorkQueue::done`] with it afterwards.
    pub async fn next(&self) -> Option<K> {
        loop {
            let notified = self.ready.notified();
            {
                let mut state = self.state.lock();
                if state.shut_down {
                    return None;
                }
                if let Some(key) = state.queue.pop_front() {
                    state.dirty.remove(&key);
                    state.processing.insert(key.clone());
                    let more = !state.queue.is_empty();
                    drop(state);
                    // notify_one stores a single permit; pass it on so other idle workers wake.
                    if more {
                        self.ready.notify_one();
                    }
                    return Some(key);
                }
            }
            notified.await;
        }
    }

    pub fn done(&self, key: &K) {
        let mut state = self.state.lock();
        state.processing.remove(key);
        if state.dirty.contains(key) {
            state.queue.push_back(key.clone());
            drop(state);
            self.ready.notify_one();
        }
    }

    pub fn shut_down(&self) {
        self.state.lock().shut_down = true;
        self.ready.notify_waiters();
    }

    pub fn len(&self) -> usize {
        self.state.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn duplicate_adds_collapse_and_processing_keys_are_not_handed_out_twice() {
        let queue = WorkQueue::new(Backoff::default());
        queue.add("a");
        queue.add("a");
        queue.add("b");
        assert_eq!(queue.len(), 2);
        let first = queue.next().await.unwrap();
        assert_eq!(first, "a");
        queue.add("a");
        // "a" is being processed: the re-add waits for `done`.
        assert_eq!(queue.next().await.unwrap(), "b");
        assert!(queue.is_empty());
        queue.done(&"a");
        assert_eq!(queue.next().await.unwrap(), "a");
    }

    #[tokio::test]
    async fn shut_down_wakes_waiting_workers() {
        let queue: Arc<WorkQueue<u32>> = WorkQueue::new(Backoff::default());
        let waiter = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.next().await })
        };
        tokio::task::yield_now().await;
        queue.shut_down();
        assert_eq!(waiter.await.unwrap(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limited_adds_back_off_and_forget_resets() {
        let queue = WorkQueue::new(Backoff {
            base: Duration::from_millis(10),
            max: Duration::from_secs(1),
        });
        queue.add_rate_limited(1u32);
        queue.add_rate_limited(1u32);
        queue.add_rate_limited(1u32);
        assert_eq!(queue.failures(&1), 3);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(queue.next().await, Some(1));
        queue.forget(&1);
        assert_eq!(queue.failures(&1), 0);
    }
}
