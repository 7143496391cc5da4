use std::collections::HashSet;
use std::sync::atomic::Ordering;

use parking_lot::Mutex;
use serde_json::json;

use super::*;

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
