//! The EventRecorder against an in-process API server, on a test clock: a pod that
//! crash-loops for two simulated hours keeps a bounded number of Event objects whose
//! counts keep growing, where one object per occurrence used to be written.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Namespace, ObjectReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams};
use kube::Client;
use parking_lot::Mutex;
use rkube_runtime::events::{Clock, RecorderOptions};
use rkube_runtime::{EventRecorder, EventType};
use tokio::sync::oneshot;

struct TestClock(Mutex<Timestamp>);

impl TestClock {
    fn advance(&self, by: Duration) {
        let mut now = self.0.lock();
        let nanos = now.as_nanosecond() + by.as_nanos() as i128;
        *now = Timestamp::from_nanosecond(nanos).unwrap();
    }
}

impl Clock for TestClock {
    fn now(&self) -> Timestamp {
        *self.0.lock()
    }
}

struct Server {
    client: Client,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), rkube_apiserver::ServerError>>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let config = rkube_apiserver::Config::new(rkube_apiserver::StorageConfig::Embedded {
            data_dir: dir.path().join("store"),
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(rkube_apiserver::run(config, listener, async move {
            let _ = stopped.await;
        }));
        let client = Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
        let namespaces: Api<Namespace> = Api::all(client.clone());
        rkube_testkit::wait_for(
            "the API server to come up",
            Duration::from_secs(30),
            || async { namespaces.get("default").await.is_ok() },
        )
        .await;
        Server {
            client,
            stop: Some(stop),
            task,
            _dir: dir,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.unwrap().unwrap();
    }

    async fn events_about(&self, uid: &str) -> Vec<Event> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), "default");
        api.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.involved_object.uid.as_deref() == Some(uid))
            .collect()
    }
}

fn container_of_crasher() -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some("crasher".into()),
        namespace: Some("default".into()),
        uid: Some("crasher-uid".into()),
        field_path: Some("spec.containers{app}".into()),
        ..Default::default()
    }
}

/// What the kubelet records each time it restarts a crashed container (worker.rs), in order.
fn record_one_restart(recorder: &EventRecorder) {
    let app = container_of_crasher;
    recorder.record(
        app(),
        EventType::Warning,
        "BackOff",
        "Back-off restarting failed container app in pod crasher_default(crasher-uid)",
    );
    recorder.record(
        app(),
        EventType::Normal,
        "Pulled",
        "Container image \"busybox:1.36\" already present on machine",
    );
    recorder.record(app(), EventType::Normal, "Created", "Created container app");
    recorder.record(app(), EventType::Normal, "Started", "Started container app");
}

const EVENTS_PER_RESTART: usize = 4;

fn total_count(events: &[Event]) -> i64 {
    events.iter().map(|e| i64::from(e.count.unwrap_or(1))).sum()
}

fn count_of(events: &[Event], reason: &str) -> i32 {
    events
        .iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .map(|e| e.count.unwrap_or(1))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_pod_keeps_a_bounded_number_of_events_whose_counts_grow() {
    let server = Server::start().await;
    let clock = Arc::new(TestClock(Mutex::new(Timestamp::now())));
    let recorder = EventRecorder::with_sink(
        Arc::new(rkube_runtime::events::ApiSink::new(server.client.clone())),
        "kubelet",
        "node-1",
        RecorderOptions {
            clock: clock.clone(),
            ..Default::default()
        },
    );
    // The kubelet's crash-loop backoff: 10 s doubling up to 5 minutes.
    let mut backoff = Duration::from_secs(10);
    let mut elapsed = Duration::ZERO;
    let mut previous_total = 0;
    let mut rows = Vec::new();
    for restart in 1..=30 {
        record_one_restart(&recorder);
        clock.advance(backoff);
        elapsed += backoff;
        backoff = (backoff * 2).min(Duration::from_secs(300));
        if [1, 5, 10, 20, 30].contains(&restart) {
            recorder.flush().await;
            let events = server.events_about("crasher-uid").await;
            let total = total_count(&events);
            rows.push((
                restart,
                elapsed,
                restart * EVENTS_PER_RESTART,
                events.len(),
                total,
            ));
            assert!(
                events.len() <= EVENTS_PER_RESTART,
                "after {restart} restarts: {} Event objects: {events:#?}",
                events.len()
            );
            assert!(total >= previous_total, "counts never go down");
            assert!(total <= (restart * EVENTS_PER_RESTART) as i64);
            previous_total = total;
        }
    }
    let events = server.events_about("crasher-uid").await;
    // Every occurrence the rate limit let through was counted on one of four objects...
    assert_eq!(events.len(), EVENTS_PER_RESTART, "{events:#?}");
    // ...and the counts kept growing after the burst was spent: one write per five minutes
    // carries all occurrences since.
    let (_, _, _, _, total_at_10) = rows[2];
    assert!(
        previous_total > total_at_10,
        "counts stopped at {total_at_10} after 10 restarts"
    );
    assert!(count_of(&events, "Started") > 10, "{events:#?}");
    for e in &events {
        assert_eq!(
            e.source.as_ref().unwrap().component.as_deref(),
            Some("kubelet")
        );
        assert!(e.last_timestamp.as_ref().unwrap().0 > e.first_timestamp.as_ref().unwrap().0);
    }

    println!("restarts | simulated time | Events before (one per occurrence) | Event objects after | sum of counts after");
    for (restart, elapsed, before, objects, total) in &rows {
        println!(
            "{restart:>8} | {:>11}s | {before:>34} | {objects:>19} | {total:>19}",
            elapsed.as_secs()
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_deleted_on_the_server_is_written_again_with_its_count() {
    let server = Server::start().await;
    let recorder = EventRecorder::new(server.client.clone(), "kubelet", "node-1");
    for _ in 0..3 {
        recorder.record(
            container_of_crasher(),
            EventType::Normal,
            "Started",
            "Started container app",
        );
    }
    recorder.flush().await;
    let events = server.events_about("crasher-uid").await;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0].count, Some(3));
    let name = events[0].metadata.name.clone().unwrap();

    // As the API server's TTL sweeper would.
    let api: Api<Event> = Api::namespaced(server.client.clone(), "default");
    api.delete(&name, &DeleteParams::default()).await.unwrap();
    recorder.record(
        container_of_crasher(),
        EventType::Normal,
        "Started",
        "Started container app",
    );
    recorder.flush().await;
    let events = server.events_about("crasher-uid").await;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0].metadata.name.as_deref(), Some(name.as_str()));
    assert_eq!(events[0].count, Some(4));
    server.stop().await;
}
