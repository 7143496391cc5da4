//! The pure half of event recording: deciding from what was seen before whether an
//! occurrence becomes a new Event, an update of one, or nothing. Separate from the
//! recorder because it does no IO and is tested on its own with a caller-given clock.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};

use super::{CorrelatorOptions, COMBINED_PREFIX};

/// A map that forgets its least recently used entry beyond `capacity`.
struct Lru<V> {
    capacity: usize,
    tick: u64,
    entries: HashMap<String, (u64, V)>,
    order: BTreeMap<u64, String>,
}

impl<V> Lru<V> {
    fn new(capacity: usize) -> Lru<V> {
        Lru {
            capacity: capacity.max(1),
            tick: 0,
            entries: HashMap::new(),
            order: BTreeMap::new(),
        }
    }

    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// The entry for `key` (created with `default` if absent), now the most recently used.
    fn touch(&mut self, key: &str, default: impl FnOnce() -> V) -> &mut V {
        let tick = self.next_tick();
        if !self.entries.contains_key(key) {
            while self.entries.len() >= self.capacity {
                let Some((_, oldest)) = self.order.pop_first() else {
                    break;
                };
                self.entries.remove(&oldest);
            }
        }
        let slot = self
            .entries
            .entry(key.to_string())
            .or_insert_with(|| (tick, default()));
        self.order.remove(&slot.0);
        slot.0 = tick;
        self.order.insert(tick, key.to_string());
        &mut slot.1
    }

    fn get(&self, key: &str) -> Option<&V> {
        self.entries.get(key).map(|(_, v)| v)
    }

    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Distinct messages seen recently for one object and reason.
struct SimilarRecord {
    messages: HashSet<String>,
    last: Timestamp,
}

/// What was last written for one event key.
#[derive(Clone, Default)]
struct Observation {
    count: i32,
    first_timestamp: Option<Time>,
    name: String,
}

struct TokenBucket {
    tokens: f64,
    refilled_at: Timestamp,
}

/// What to write for one recorded event.
#[derive(Debug, Clone, PartialEq)]
pub enum Correlation {
    /// Over the source's rate for this object: write nothing now.
    Skip,
    /// A new Event.
    Create(Event),
    /// A further occurrence of an Event already written: `patch` updates it (count,
    /// lastTimestamp, message); `event` is the whole updated Event, created instead when
    /// the original is gone (expired or deleted).
    Patch { event: Event, patch: Value },
}

/// Decides, for each event in order, whether it becomes a new Event, an update of an
/// earlier one, or nothing. Pure: the caller provides the time.
pub struct EventCorrelator {
    options: CorrelatorOptions,
    similar: Lru<SimilarRecord>,
    observed: Lru<Observation>,
    spam: Lru<TokenBucket>,
}

fn elapsed(from: Timestamp, to: Timestamp) -> Duration {
    let nanos = to.as_nanosecond() - from.as_nanosecond();
    Duration::from_nanos(u64::try_from(nanos.max(0)).unwrap_or(u64::MAX))
}

fn source_parts(event: &Event) -> [&str; 2] {
    let source = event.source.as_ref();
    [
        source.and_then(|s| s.component.as_deref()).unwrap_or(""),
        source.and_then(|s| s.host.as_deref()).unwrap_or(""),
    ]
}

fn object_parts(event: &Event) -> [&str; 5] {
    let o = &event.involved_object;
    [
        o.kind.as_deref().unwrap_or(""),
        o.namespace.as_deref().unwrap_or(""),
        o.name.as_deref().unwrap_or(""),
        o.uid.as_deref().unwrap_or(""),
        o.api_version.as_deref().unwrap_or(""),
    ]
}

fn join(parts: &[&str]) -> String {
    // NUL cannot occur in any of these fields' valid values, so keys never collide.
    parts.join("\u{0}")
}

/// Identifies occurrences of the same event (upstream's getEventKey).
fn event_key(event: &Event) -> String {
    let mut parts: Vec<&str> = source_parts(event).to_vec();
    parts.extend(object_parts(event));
    parts.push(event.involved_object.field_path.as_deref().unwrap_or(""));
    parts.push(event.type_.as_deref().unwrap_or(""));
    parts.push(event.reason.as_deref().unwrap_or(""));
    parts.push(event.message.as_deref().unwrap_or(""));
    join(&parts)
}

/// Identifies similar events, which differ only in their message.
fn similar_key(event: &Event) -> String {
    let mut parts: Vec<&str> = source_parts(event).to_vec();
    parts.extend(object_parts(event));
    parts.push(event.type_.as_deref().unwrap_or(""));
    parts.push(event.reason.as_deref().unwrap_or(""));
    parts.push(event.reporting_component.as_deref().unwrap_or(""));
    parts.push(event.reporting_instance.as_deref().unwrap_or(""));
    join(&parts)
}

/// Identifies one source writing about one object, for the rate limit.
fn spam_key(event: &Event) -> String {
    let mut parts: Vec<&str> = source_parts(event).to_vec();
    parts.extend(object_parts(event));
    join(&parts)
}

static LAST_NAME_NANOS: AtomicI64 = AtomicI64::new(0);

/// Upstream names Events "<object>.<unix nanos in hex>". Nanos are taken strictly
/// increasing within the process, so two events of one instant (or of a test clock that
/// stands still) never get the same name.
pub(super) fn event_name(object: &str, now: Timestamp) -> String {
    let wanted = i64::try_from(now.as_nanosecond()).unwrap_or(i64::MAX);
    let previous = LAST_NAME_NANOS
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
            Some(wanted.max(last.saturating_add(1)))
        })
        .unwrap_or(wanted);
    format!("{object}.{:x}", wanted.max(previous.saturating_add(1)))
}

impl EventCorrelator {
    pub fn new(options: CorrelatorOptions) -> EventCorrelator {
        let entries = options.cache_entries;
        EventCorrelator {
            options,
            similar: Lru::new(entries),
            observed: Lru::new(entries),
            spam: Lru::new(entries),
        }
    }

    /// Entries held by the largest of the caches (bounded by `cache_entries`).
    pub fn cached_entries(&self) -> usize {
        self.similar
            .len()
            .max(self.observed.len())
            .max(self.spam.len())
    }

    /// Correlates `event` (a fresh occurrence: count 1, first = last timestamp) seen at `now`.
    pub fn correlate(&mut self, event: Event, now: Timestamp) -> Correlation {
        let (mut event, key) = self.combine_similar(event, now);

        let mut patch = None;
        if let Some(seen) = self.observed.get(&key).cloned() {
            event.metadata.name = Some(seen.name);
            event.first_timestamp = seen.first_timestamp;
            event.count = Some(seen.count.saturating_add(1));
            patch = Some(json!({
                "count": event.count,
                "lastTimestamp": event.last_timestamp,
                "message": event.message,
            }));
        }
        // Counted even when the write is skipped below: the next write carries the total.
        let observation = Observation {
            count: event.count.unwrap_or(1),
            first_timestamp: event.first_timestamp.clone(),
            name: event.metadata.name.clone().unwrap_or_default(),
        };
        *self.observed.touch(&key, Observation::default) = observation;

        if !self.take_token(&event, now) {
            return Correlation::Skip;
        }
        match patch {
            Some(patch) => Correlation::Patch { event, patch },
            None => Correlation::Create(event),
        }
    }

    /// Returns the event to count (the event itself, or the combined one that stands for
    /// it) and the key it is counted under.
    fn combine_similar(&mut self, event: Event, now: Timestamp) -> (Event, String) {
        let max = self.options.aggregate_max_events.max(1);
        let interval = self.options.aggregate_interval;
        let group = similar_key(&event);
        let record = self.similar.touch(&group, || SimilarRecord {
            messages: HashSet::new(),
            last: now,
        });
        if elapsed(record.last, now) > interval {
            record.messages.clear();
        }
        record
            .messages
            .insert(event.message.clone().unwrap_or_default());
        record.last = now;
        if record.messages.len() < max {
            let key = event_key(&event);
            return (event, key);
        }
        // Keep the set bounded: one slot is freed, so the next new message is combined too.
        if let Some(any) = record.messages.iter().next().cloned() {
            record.messages.remove(&any);
        }
        let object = event.involved_object.name.clone().unwrap_or_default();
        let combined = Event {
            metadata: ObjectMeta {
                name: Some(event_name(&object, now)),
                namespace: event.metadata.namespace.clone(),
                ..Default::default()
            },
            message: Some(format!(
                "{COMBINED_PREFIX}{}",
                event.message.as_deref().unwrap_or("")
            )),
            count: Some(1),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            ..event
        };
        (combined, group)
    }

    fn take_token(&mut self, event: &Event, now: Timestamp) -> bool {
        let burst = f64::from(self.options.spam_burst.max(1));
        let refill = self.options.spam_refill_interval.as_secs_f64();
        let bucket = self.spam.touch(&spam_key(event), || TokenBucket {
            tokens: burst,
            refilled_at: now,
        });
        if refill > 0.0 {
            let gained = elapsed(bucket.refilled_at, now).as_secs_f64() / refill;
            bucket.tokens = (bucket.tokens + gained).min(burst);
        } else {
            bucket.tokens = burst;
        }
        bucket.refilled_at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
