//! Acknowledged writes survive crashes: the real `rkube-apiserver` binary (embedded store),
//! and etcd under it, are killed with SIGKILL at random moments while concurrent writers and
//! watchers use them, then restarted on the same data. See `rkube_e2e::crash` for the model.
//!
//! `RKUBE_CRASH_ITERATIONS` overrides the number of kills; `RKUBE_CRASH_SEED` replays a
//! schedule (the seed is printed).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rkube_e2e::crash::{
    list_state, parking_mutex::Mutex, reconcile, run_writer, ApiServerProcess, KeyModel, Rng,
    Tally, Watcher, WriterReport,
};
use rkube_e2e::EtcdProcess;

const WRITERS: usize = 6;
const KEYS_PER_WRITER: usize = 6;
const WATCHERS: usize = 2;
/// Only guards against a hang.
const PATIENCE: Duration = Duration::from_secs(60);

fn iterations(default: usize) -> usize {
    std::env::var("RKUBE_CRASH_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Everything the clients know, carried from one server process to the next.
struct Clients {
    http: reqwest::Client,
    keys: Vec<Vec<KeyModel>>,
    watchers: Vec<Arc<Mutex<Watcher>>>,
    tally: Tally,
    rng: Rng,
}

/// One round of load against `url`, until `crash` has killed something.
struct Round {
    stop: Arc<AtomicBool>,
    writers: Vec<tokio::task::JoinHandle<anyhow::Result<WriterReport>>>,
    watchers: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Clients {
    async fn new(url: &str) -> Clients {
        let http = reqwest::Client::new();
        let mut watchers = Vec::new();
        for _ in 0..WATCHERS {
            let watcher = Watcher::from_list(&http, url).await.unwrap();
            watchers.push(Arc::new(Mutex::new(watcher)));
        }
        Clients {
            http,
            keys: (0..WRITERS)
                .map(|w| {
                    (0..KEYS_PER_WRITER)
                        .map(|k| KeyModel {
                            name: format!("crash-{w}-{k}"),
                            ..KeyModel::default()
                        })
                        .collect()
                })
                .collect(),
            watchers,
            tally: Tally::default(),
            rng: Rng::from_env_or_time(),
        }
    }

    fn start_round(&mut self, url: &str) -> Round {
        let stop = Arc::new(AtomicBool::new(false));
        let writers = std::mem::take(&mut self.keys)
            .into_iter()
            .enumerate()
            .map(|(w, keys)| {
                tokio::spawn(run_writer(
                    self.http.clone(),
                    url.to_string(),
                    keys,
                    self.rng.fork(),
                    stop.clone(),
                    w,
                ))
            })
            .collect();
        let watchers = self
            .watchers
            .iter()
            .map(|w| {
                tokio::spawn(Watcher::follow(
                    w.clone(),
                    self.http.clone(),
                    url.to_string(),
                    None,
                ))
            })
            .collect();
        Round {
            stop,
            writers,
            watchers,
        }
    }

    /// Collects the writers (after the crash has made their requests fail or finish) and
    /// the watchers (ended by the crash, or aborted when their server lives on).
    async fn end_round(&mut self, round: Round) {
        round.stop.store(true, Ordering::Relaxed);
        for writer in round.writers {
            let WriterReport { keys, acked } = tokio::time::timeout(PATIENCE, writer)
                .await
                .expect("a writer hung")
                .expect("a writer panicked")
                .expect("a writer got an unexpected answer");
            self.tally.acked_writes += acked.len() as u64;
            self.tally.acked_versions.extend(acked);
            self.keys.push(keys);
        }
        for watcher in round.watchers {
            watcher.abort();
            match watcher.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("a watcher could not resume: {e:#}"),
                Err(e) if e.is_cancelled() => {}
                Err(e) => panic!("a watcher panicked: {e}"),
            }
        }
    }

    /// After a restart: every key holds its last acknowledged version, or the version of a
    /// write whose answer the crash swallowed.
    async fn check_after_restart(&mut self, url: &str) {
        let (listed, _) = list_state(&self.http, url).await.unwrap();
        for keys in &mut self.keys {
            reconcile(keys, &listed, &mut self.tally);
        }
    }

    /// Resumes every watcher up to a last write, then checks each saw every acknowledged
    /// write exactly once and that its events add up to the final list.
    async fn finish(&mut self, url: &str, backend: &str, iterations: usize) {
        self.check_after_restart(url).await;
        let marker = serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "crash-marker"}, "data": {"v": "end"},
        });
        let created: serde_json::Value = self
            .http
            .post(format!("{url}/api/v1/namespaces/default/configmaps"))
            .json(&marker)
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap();
        let marker_rv: i64 = created["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        for watcher in &self.watchers {
            tokio::time::timeout(
                PATIENCE,
                Watcher::follow(
                    watcher.clone(),
                    self.http.clone(),
                    url.to_string(),
                    Some(marker_rv),
                ),
            )
            .await
            .expect("a watcher did not reach the final write")
            .unwrap();
        }
        let (final_state, _) = list_state(&self.http, url).await.unwrap();
        let mut problems = Vec::new();
        let mut events = 0;
        for (i, watcher) in self.watchers.iter().enumerate() {
            let watcher = watcher.lock();
            events += watcher.events.len();
            for problem in watcher.check(&self.tally.acked_versions, &final_state) {
                problems.push(format!("watcher {i}: {problem}"));
            }
        }
        let tally = &self.tally;
        println!(
            "crash test ({backend}): {iterations} kills, {} acknowledged writes, {} answers lost \
             in a crash ({} of those writes committed), {} acknowledged writes lost; {} watch \
             events checked",
            tally.acked_writes,
            tally.unanswered,
            tally.unanswered_committed,
            tally.lost.len(),
            events
        );
        assert!(
            tally.lost.is_empty(),
            "acknowledged writes lost:\n{}",
            tally.lost.join("\n")
        );
        assert!(problems.is_empty(), "{}", problems.join("\n"));
        assert!(
            tally.acked_writes >= iterations as u64,
            "too few writes were acknowledged to prove anything"
        );
    }

    /// A random moment in the middle of the load.
    fn load_time(&mut self) -> Duration {
        Duration::from_millis(100 + self.rng.below(500))
    }
}

fn embedded_args(data: &Path) -> Vec<String> {
    vec!["--data-dir".into(), data.display().to_string()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_kill_9_of_the_api_server() {
    rkube_e2e::init_logging();
    let iterations = iterations(20);
    let dir = tempfile::tempdir().unwrap();
    let args = embedded_args(&dir.path().join("data"));
    let log = dir.path().join("apiserver.log");
    let mut server = ApiServerProcess::start(&args, &log).await.unwrap();
    let mut clients = Clients::new(&server.url).await;
    for _ in 0..iterations {
        let round = clients.start_round(&server.url);
        tokio::time::sleep(clients.load_time()).await;
        server.kill9().unwrap();
        clients.end_round(round).await;
        server = ApiServerProcess::start(&args, &log).await.unwrap();
        clients.check_after_restart(&server.url).await;
    }
    clients
        .finish(&server.url, "embedded store", iterations)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_kill_9_of_etcd() {
    rkube_e2e::init_logging();
    let iterations = iterations(10);
    let dir = tempfile::tempdir().unwrap();
    let mut etcd = EtcdProcess::start().await.unwrap();
    let args = vec!["--etcd-servers".to_string(), etcd.endpoint()];
    let log = dir.path().join("apiserver.log");
    let mut server = ApiServerProcess::start(&args, &log).await.unwrap();
    let mut clients = Clients::new(&server.url).await;
    for i in 0..iterations {
        let round = clients.start_round(&server.url);
        tokio::time::sleep(clients.load_time()).await;
        etcd.stop().unwrap();
        // Every third time the API server dies too, while etcd is down.
        let restart_server = i % 3 == 2;
        if restart_server {
            server.kill9().unwrap();
        }
        etcd.restart().await.unwrap();
        if restart_server {
            server = ApiServerProcess::start(&args, &log).await.unwrap();
        }
        clients.end_round(round).await;
        clients.check_after_restart(&server.url).await;
    }
    clients.finish(&server.url, "etcd", iterations).await;
}
