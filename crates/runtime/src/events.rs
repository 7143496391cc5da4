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

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

mod correlator;

use correlator::event_name;
pub use correlator::{Correlation, EventCorrelator};

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
mod tests;
