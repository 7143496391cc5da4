//! core/v1 Events, as upstream's client-go recorder writes them (reason, message, source
//! component), correlated the way its `EventCorrelator` does so that a thing that keeps
//! happening (a crash loop, a failing pull) updates a few Events instead of adding one
//! object per occurrence:
//!
//! - identical occurrences (same object, reason, message, type, source) update one Event:
//!   `count` += 1 and `lastTimestamp`, by a PATCH of the Event written first;
//! - similar occurrences (same object and reason, different messages): from the 10th
//!   distinct message within 10 minutes on, they are counted on one Event whose message is
//!   prefixed "(combined from similar events): ";
//! - a token bucket per source and object (burst 25, one more every 5 minutes) drops writes
//!   past that rate. Dropped occurrences are still counted: the next write carries them.
//!
//! All state lives in LRU caches of 4096 entries each. Recording never blocks or fails a
//! reconcile: [`EventRecorder::record`] queues the event (dropping it when the queue is
//! full) and one background task per recorder correlates and writes, in order, so a patch
//! never overtakes the create of the Event it updates. Failures are only logged.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

/// Upstream's `maxLruCacheEntries`.
pub const DEFAULT_CACHE_ENTRIES: usize = 4096;
/// Upstream's broadcaster queue (`maxQueuedEvents`): beyond it events are dropped.
pub const DEFAULT_QUEUE_LENGTH: usize = 1000;
/// Prefix of the message of an Event that stands for several similar ones (upstream's).
pub const COMBINED_PREFIX: &str = "(combined from similar events): ";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// Limits of the correlation; the defaults are upstream's.
#[derive(Clone, Debug)]
pub struct CorrelatorOptions {
    /// Entries in each LRU cache (identical events, similar events, spam buckets).
    pub cache_entries: usize,
    /// Distinct messages with one object and reason, within `aggregate_interval`, from
    /// which on they are combined into one Event.
    pub aggregate_max_events: usize,
    /// How long after the last similar event the count of distinct messages starts over.
    pub aggregate_interval: Duration,
    /// Writes one source may make about one object at once.
    pub spam_burst: u32,
    /// One more write is allowed per this interval once the burst is spent.
    pub spam_refill_interval: Duration,
}

impl Default for CorrelatorOptions {
    fn default() -> CorrelatorOptions {
        CorrelatorOptions {
            cache_entries: DEFAULT_CACHE_ENTRIES,
            aggregate_max_events: 10,
            aggregate_interval: Duration::from_secs(600),
            spam_burst: 25,
            spam_refill_interval: Duration::from_secs(300),
        }
    }
}

/// The recorder's source of "now": timestamps of Events and the windows of correlation.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

#[derive(Clone)]
pub struct RecorderOptions {
    pub correlator: CorrelatorOptions,
    pub clock: Arc<dyn Clock>,
    /// Events waiting to be written; more are dropped (and logged at debug level).
    pub queue_length: usize,
    /// Attempts per write when the API server cannot be reached.
    pub max_tries: u32,
    /// Pause between those attempts.
    pub retry_delay: Duration,
}

impl Default for RecorderOptions {
    fn default() -> RecorderOptions {
        RecorderOptions {
            correlator: CorrelatorOptions::default(),
            clock: Arc::new(SystemClock),
            queue_length: DEFAULT_QUEUE_LENGTH,
            max_tries: 3,
            retry_delay: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("event not found")]
    NotFound,
    /// The server refused the write; sending it again would not help.
    #[error("server rejected event: {0}")]
    Rejected(String),
    /// The server could not be reached or failed; a later attempt may succeed.
    #[error("unable to write event: {0}")]
    Unavailable(String),
}

/// Where events are written: the API server, or a fake in unit tests.
#[async_trait]
pub trait EventSink: Send + Sync + 'static {
    async fn create(&self, event: &Event) -> Result<(), SinkError>;
    async fn patch(&self, namespace: &str, name: &str, patch: &Value) -> Result<(), SinkError>;
}

/// Writes events to the API server.
pub struct ApiSink {
    client: Client,
}

impl ApiSink {
    pub fn new(client: Client) -> ApiSink {
        ApiSink { client }
    }
}

fn sink_error(e: kube::Error) -> SinkError {
    match e {
        kube::Error::Api(status) if status.code == 404 => SinkError::NotFound,
        kube::Error::Api(status)
            if (400..500).contains(&status.code) && status.code != 429 && status.code != 408 =>
        {
            SinkError::Rejected(status.message.clone())
        }
        other => SinkError::Unavailable(other.to_string()),
    }
}

#[async_trait]
impl EventSink for ApiSink {
    async fn create(&self, event: &Event) -> Result<(), SinkError> {
        let namespace = event.metadata.namespace.as_deref().unwrap_or("default");
        let api: Api<Event> = Api::namespaced(self.client.clone(), namespace);
        api.create(&PostParams::default(), event)
            .await
            .map(|_| ())
            .map_err(sink_error)
    }

    async fn patch(&self, namespace: &str, name: &str, patch: &Value) -> Result<(), SinkError> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), namespace);
        api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map(|_| ())
            .map_err(sink_error)
    }
}

// ---------------------------------------------------------------------------------------
// Correlation

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
fn event_name(object: &str, now: Timestamp) -> String {
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

// ---------------------------------------------------------------------------------------
// Recorder

enum Message {
    Record(Box<Event>),
    /// Answered once everything queued before it has been written (or given up on).
    Flush(oneshot::Sender<()>),
}

struct Inner {
    sink: Arc<dyn EventSink>,
    options: RecorderOptions,
    component: String,
    instance: String,
    /// Started by the first `record`, so that a recorder can be built outside a runtime.
    queue: OnceLock<mpsc::Sender<Message>>,
}

#[derive(Clone)]
pub struct EventRecorder {
    inner: Arc<Inner>,
}

impl EventRecorder {
    /// A recorder writing to the API server with upstream's limits.
    pub fn new(client: Client, component: &str, instance: &str) -> EventRecorder {
        EventRecorder::with_sink(
            Arc::new(ApiSink::new(client)),
            component,
            instance,
            RecorderOptions::default(),
        )
    }

    pub fn with_sink(
        sink: Arc<dyn EventSink>,
        component: &str,
        instance: &str,
        options: RecorderOptions,
    ) -> EventRecorder {
        EventRecorder {
            inner: Arc::new(Inner {
                sink,
                options,
                component: component.to_string(),
                instance: instance.to_string(),
                queue: OnceLock::new(),
            }),
        }
    }

    /// Records an event about `object` in its namespace (`default` for cluster-scoped ones).
    /// Never waits: the event is queued, or dropped when the queue is full.
    pub fn record(
        &self,
        object: ObjectReference,
        kind: EventType,
        reason: &str,
        message: impl Into<String>,
    ) {
        let inner = &self.inner;
        let now = inner.options.clock.now();
        let namespace = object
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_string());
        let name = event_name(object.name.as_deref().unwrap_or(""), now);
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(namespace),
                ..Default::default()
            },
            involved_object: object,
            reason: Some(reason.to_string()),
            message: Some(message.into()),
            type_: Some(kind.as_str().to_string()),
            count: Some(1),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            source: Some(EventSource {
                component: Some(inner.component.clone()),
                host: None,
            }),
            reporting_component: Some(inner.component.clone()),
            reporting_instance: Some(inner.instance.clone()),
            ..Default::default()
        };
        let Some(queue) = self.queue() else {
            tracing::debug!(reason, "no async runtime; dropping event");
            return;
        };
        if queue.try_send(Message::Record(Box::new(event))).is_err() {
            tracing::debug!(reason, "event queue full; dropping event");
        }
    }

    /// Waits until every event recorded so far has been written or given up on.
    pub async fn flush(&self) {
        let Some(queue) = self.queue() else {
            return;
        };
        let (done, written) = oneshot::channel();
        if queue.send(Message::Flush(done)).await.is_ok() {
            let _ = written.await;
        }
    }

    fn queue(&self) -> Option<&mpsc::Sender<Message>> {
        if let Some(queue) = self.inner.queue.get() {
            return Some(queue);
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        Some(self.inner.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(self.inner.options.queue_length.max(1));
            // The writer holds no reference to the recorder: it ends when the last clone
            // of the recorder (and so the sender) is dropped.
            runtime.spawn(write_events(
                rx,
                self.inner.sink.clone(),
                self.inner.options.clone(),
            ));
            tx
        }))
    }
}

async fn write_events(
    mut queue: mpsc::Receiver<Message>,
    sink: Arc<dyn EventSink>,
    options: RecorderOptions,
) {
    let mut correlator = EventCorrelator::new(options.correlator.clone());
    while let Some(message) = queue.recv().await {
        match message {
            Message::Flush(done) => {
                let _ = done.send(());
            }
            Message::Record(event) => {
                let now = options.clock.now();
                let correlation = correlator.correlate(*event, now);
                write_with_retries(sink.as_ref(), &correlation, &options).await;
            }
        }
    }
}

async fn write_with_retries(
    sink: &dyn EventSink,
    correlation: &Correlation,
    options: &RecorderOptions,
) {
    let mut tries = 0;
    loop {
        tries += 1;
        match write_once(sink, correlation).await {
            Ok(()) => return,
            Err(SinkError::Unavailable(e)) if tries < options.max_tries => {
                tracing::debug!(error = %e, "writing event failed; will retry");
                tokio::time::sleep(options.retry_delay).await;
            }
            Err(e) => {
                tracing::debug!(error = %e, "writing event failed; giving up");
                return;
            }
        }
    }
}

async fn write_once(sink: &dyn EventSink, correlation: &Correlation) -> Result<(), SinkError> {
    match correlation {
        Correlation::Skip => Ok(()),
        Correlation::Create(event) => sink.create(event).await,
        Correlation::Patch { event, patch } => {
            let namespace = event.metadata.namespace.as_deref().unwrap_or("default");
            let name = event.metadata.name.as_deref().unwrap_or("");
            match sink.patch(namespace, name, patch).await {
                // Expired or deleted since: write it anew, with the count so far.
                Err(SinkError::NotFound) => sink.create(event).await,
                other => other,
            }
        }
    }
}

/// A reference to `obj` for an event's involvedObject or an ownerReference target.
pub fn object_reference<K: Resource<DynamicType = ()>>(obj: &K) -> ObjectReference {
    ObjectReference {
        api_version: Some(K::api_version(&()).to_string()),
        kind: Some(K::kind(&()).to_string()),
        name: Some(obj.name_any()),
        namespace: obj.namespace(),
        uid: obj.uid(),
        resource_version: obj.resource_version(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).unwrap()
    }

    fn pod(name: &str, uid: &str) -> ObjectReference {
        ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(name.into()),
            namespace: Some("default".into()),
            uid: Some(uid.into()),
            ..Default::default()
        }
    }

    fn occurrence(object: ObjectReference, reason: &str, message: &str, now: Timestamp) -> Event {
        Event {
            metadata: ObjectMeta {
                name: Some(event_name(object.name.as_deref().unwrap_or(""), now)),
                namespace: Some("default".into()),
                ..Default::default()
            },
            involved_object: object,
            reason: Some(reason.into()),
            message: Some(message.into()),
            type_: Some("Normal".into()),
            count: Some(1),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            source: Some(EventSource {
                component: Some("kubelet".into()),
                host: None,
            }),
            reporting_component: Some("kubelet".into()),
            reporting_instance: Some("node-1".into()),
            ..Default::default()
        }
    }

    fn created(c: Correlation) -> Event {
        match c {
            Correlation::Create(e) => e,
            other => panic!("expected a create, got {other:?}"),
        }
    }

    fn patched(c: Correlation) -> (Event, Value) {
        match c {
            Correlation::Patch { event, patch } => (event, patch),
            other => panic!("expected a patch, got {other:?}"),
        }
    }

    #[test]
    fn identical_events_update_the_first_one() {
        let mut c = EventCorrelator::new(CorrelatorOptions::default());
        let first = created(c.correlate(
            occurrence(pod("p", "u1"), "Started", "Started container app", at(0)),
            at(0),
        ));
        for n in 2..=5 {
            let (event, patch) = patched(c.correlate(
                occurrence(pod("p", "u1"), "Started", "Started container app", at(n)),
                at(n),
            ));
            assert_eq!(event.metadata.name, first.metadata.name);
            assert_eq!(event.count, Some(n as i32));
            assert_eq!(event.first_timestamp, Some(Time(at(0))));
            assert_eq!(event.last_timestamp, Some(Time(at(n))));
            assert_eq!(patch["count"], json!(n));
            assert_eq!(patch["lastTimestamp"], json!(Time(at(n))));
            assert_eq!(patch["message"], "Started container app");
        }
    }

    #[test]
    fn other_objects_containers_and_messages_are_other_events() {
        let mut c = EventCorrelator::new(CorrelatorOptions::default());
        created(c.correlate(occurrence(pod("p", "u1"), "Started", "m", at(0)), at(0)));
        // The pod recreated under the same name is another object.
        created(c.correlate(occurrence(pod("p", "u2"), "Started", "m", at(0)), at(0)));
        let mut sidecar = pod("p", "u1");
        sidecar.field_path = Some("spec.containers{sidecar}".into());
        created(c.correlate(occurrence(sidecar, "Started", "m", at(0)), at(0)));
        created(c.correlate(occurrence(pod("p", "u1"), "Started", "m2", at(0)), at(0)));
        created(c.correlate(occurrence(pod("p", "u1"), "Killing", "m", at(0)), at(0)));
    }

    #[test]
    fn ten_similar_events_within_ten_minutes_are_combined() {
        let mut c = EventCorrelator::new(CorrelatorOptions::default());
        let rs = pod("rs", "u1");
        for i in 0..9 {
            let e = created(c.correlate(
                occurrence(
                    rs.clone(),
                    "SuccessfulCreate",
                    &format!("Created pod: p{i}"),
                    at(i),
                ),
                at(i),
            ));
            assert_eq!(
                e.message.as_deref(),
                Some(format!("Created pod: p{i}").as_str())
            );
        }
        let combined = created(c.correlate(
            occurrence(rs.clone(), "SuccessfulCreate", "Created pod: p9", at(9)),
            at(9),
        ));
        assert_eq!(
            combined.message.as_deref(),
            Some("(combined from similar events): Created pod: p9")
        );
        assert_eq!(combined.count, Some(1));
        let (again, patch) = patched(c.correlate(
            occurrence(rs.clone(), "SuccessfulCreate", "Created pod: p10", at(10)),
            at(10),
        ));
        assert_eq!(again.metadata.name, combined.metadata.name);
        assert_eq!(again.count, Some(2));
        assert_eq!(
            patch["message"],
            "(combined from similar events): Created pod: p10"
        );
        // Ten minutes of quiet: messages are counted afresh.
        let later = 10 + 601;
        let e = created(c.correlate(
            occurrence(rs, "SuccessfulCreate", "Created pod: p11", at(later)),
            at(later),
        ));
        assert_eq!(e.message.as_deref(), Some("Created pod: p11"));
    }

    #[test]
    fn a_source_gets_a_burst_per_object_then_one_write_per_five_minutes_carrying_the_count() {
        let mut c = EventCorrelator::new(CorrelatorOptions::default());
        let occur = |now| occurrence(pod("p", "u1"), "BackOff", "Back-off restarting", now);
        created(c.correlate(occur(at(0)), at(0)));
        for _ in 1..25 {
            patched(c.correlate(occur(at(0)), at(0)));
        }
        for _ in 25..40 {
            assert_eq!(c.correlate(occur(at(1)), at(1)), Correlation::Skip);
        }
        // Other objects have their own budget.
        created(c.correlate(occurrence(pod("q", "u9"), "BackOff", "x", at(1)), at(1)));
        // After five minutes one more write goes through, with every occurrence counted.
        let (event, patch) = patched(c.correlate(occur(at(300)), at(300)));
        assert_eq!(event.count, Some(41));
        assert_eq!(patch["count"], 41);
        assert_eq!(c.correlate(occur(at(301)), at(301)), Correlation::Skip);
    }

    #[test]
    fn caches_stay_bounded_and_keep_the_recently_used() {
        let options = CorrelatorOptions {
            cache_entries: 8,
            ..Default::default()
        };
        let mut c = EventCorrelator::new(options);
        created(c.correlate(occurrence(pod("kept", "k"), "R", "m", at(0)), at(0)));
        for i in 0..100 {
            // Spaced out so that the rate limit is not what this test sees.
            let now = at(i * 300);
            created(c.correlate(
                occurrence(pod(&format!("p{i}"), &format!("u{i}")), "R", "m", now),
                now,
            ));
            if i % 4 == 0 {
                // Seen again now and then: stays cached, so it keeps counting.
                patched(c.correlate(occurrence(pod("kept", "k"), "R", "m", now), now));
            }
            assert!(c.cached_entries() <= 8, "{}", c.cached_entries());
        }
        // Long evicted: written anew.
        created(c.correlate(occurrence(pod("p0", "u0"), "R", "m", at(0)), at(0)));
    }

    #[test]
    fn names_are_unique_even_when_the_clock_stands_still() {
        let a = event_name("p", at(0));
        let b = event_name("p", at(0));
        assert_ne!(a, b);
    }

    #[derive(Default)]
    struct FakeSink {
        writes: Mutex<Vec<(String, Value)>>,
        missing: Mutex<HashSet<String>>,
    }

    #[async_trait]
    impl EventSink for FakeSink {
        async fn create(&self, event: &Event) -> Result<(), SinkError> {
            self.writes
                .lock()
                .push(("create".into(), serde_json::to_value(event).unwrap()));
            Ok(())
        }

        async fn patch(&self, _: &str, name: &str, patch: &Value) -> Result<(), SinkError> {
            if self.missing.lock().remove(name) {
                return Err(SinkError::NotFound);
            }
            self.writes
                .lock()
                .push((format!("patch {name}"), patch.clone()));
            Ok(())
        }
    }

    #[tokio::test]
    async fn the_recorder_writes_in_order_and_recreates_an_event_that_is_gone() {
        let sink = Arc::new(FakeSink::default());
        let recorder = EventRecorder::with_sink(
            sink.clone(),
            "kubelet",
            "node-1",
            RecorderOptions::default(),
        );
        for _ in 0..3 {
            recorder.record(
                pod("p", "u1"),
                EventType::Normal,
                "Started",
                "Started container app",
            );
        }
        recorder.flush().await;
        let writes = sink.writes.lock().clone();
        assert_eq!(writes.len(), 3, "{writes:?}");
        let name = writes[0].1["metadata"]["name"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(writes[0].0, "create");
        assert_eq!(writes[1], (format!("patch {name}"), writes[1].1.clone()));
        assert_eq!(writes[2].1["count"], 3);

        // Expired by the API server's TTL: the next occurrence creates it again, counted.
        sink.missing.lock().insert(name.clone());
        recorder.record(
            pod("p", "u1"),
            EventType::Normal,
            "Started",
            "Started container app",
        );
        recorder.flush().await;
        let last = sink.writes.lock().last().cloned().unwrap();
        assert_eq!(last.0, "create");
        assert_eq!(last.1["metadata"]["name"], name.as_str());
        assert_eq!(last.1["count"], 4);
    }

    /// A sink whose writes never finish, like an API server that accepts connections but
    /// never answers.
    struct HangingSink {
        attempts: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl EventSink for HangingSink {
        async fn create(&self, _: &Event) -> Result<(), SinkError> {
            self.attempts.fetch_add(1, Ordering::SeqCst);
            std::future::pending().await
        }

        async fn patch(&self, _: &str, _: &str, _: &Value) -> Result<(), SinkError> {
            std::future::pending().await
        }
    }

    #[tokio::test]
    async fn recording_never_waits_for_the_server() {
        let sink = Arc::new(HangingSink {
            attempts: Default::default(),
        });
        let options = RecorderOptions {
            queue_length: 10,
            ..Default::default()
        };
        let recorder = EventRecorder::with_sink(sink.clone(), "kubelet", "node-1", options);
        // Far more than the queue holds, from a single-threaded runtime: had record()
        // waited for room, this loop would never end.
        for i in 0..10_000 {
            recorder.record(
                pod(&format!("p{i}"), "u"),
                EventType::Normal,
                "Started",
                "m",
            );
        }
        tokio::task::yield_now().await;
        assert!(sink.attempts.load(Ordering::SeqCst) <= 1);
    }
}
