//! Crash testing with real processes: the `rkube-apiserver` binary (and etcd) are killed with
//! SIGKILL while concurrent writers and watchers use them, restarted on the same data, and
//! what clients were told is checked against what the server has afterwards.
//!
//! The model is what clients know. Each key belongs to one writer, so its state is exact:
//! the last acknowledged version, plus at most one write whose answer was lost in the crash
//! (it may or may not have been committed). After a restart every key must hold its last
//! acknowledged version, or the lost-answer write; anything else is a lost acknowledged write.
//! Watchers keep the last resourceVersion they saw and resume from it after each restart;
//! their events must be strictly increasing, include every acknowledged write, and add up
//! to the final list.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use rkube_testkit::try_poll;
use serde_json::{json, Value};

use crate::cluster::component_binary;
use crate::{free_port, QUICK_POLL};

const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Guards against a hung request only; no assertion depends on it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
const NAMESPACE: &str = "default";
/// How often a list is retried while storage comes back.
const QUICK_POLL_LIST: Duration = Duration::from_millis(50);

/// `rkube-apiserver` as a child process on a free loopback port, killed on drop.
pub struct ApiServerProcess {
    child: Option<Child>,
    pub url: String,
    log: PathBuf,
}

impl ApiServerProcess {
    /// Starts the binary with `args` (storage flags) and waits until /readyz answers 200.
    pub async fn start(args: &[String], log: &Path) -> anyhow::Result<ApiServerProcess> {
        let binary = component_binary("rkube-apiserver")?;
        let port = free_port()?;
        let file = std::fs::File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let child = Command::new(&binary)
            .args(["--bind-address", "127.0.0.1", "--port", &port.to_string()])
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("spawning {}", binary.display()))?;
        let mut server = ApiServerProcess {
            child: Some(child),
            url: format!("http://127.0.0.1:{port}"),
            log: log.to_path_buf(),
        };
        server.wait_ready().await?;
        Ok(server)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let readyz = format!("{}/readyz", self.url);
        let log = self.log.clone();
        let child = &mut self.child;
        let ready = || {
            // Looked at before the request, so the future borrows nothing of the child.
            let exited = child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            let (client, readyz, log) = (&client, &readyz, &log);
            async move {
                if let Some(status) = exited {
                    bail!(
                        "rkube-apiserver exited with {status}; log:\n{}",
                        tail_of(log)
                    );
                }
                let response = client
                    .get(readyz)
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await;
                Ok(response
                    .is_ok_and(|r| r.status().is_success())
                    .then_some(()))
            }
        };
        try_poll(QUICK_POLL, START_TIMEOUT, ready, || {
            anyhow!(
                "rkube-apiserver not ready after {START_TIMEOUT:?}; log:\n{}",
                tail_of(&log)
            )
        })
        .await
    }

    /// SIGKILL, like a crash or the OOM killer, and wait for the process to be gone.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().context("killing rkube-apiserver")?;
            child.wait().context("waiting for rkube-apiserver")?;
        }
        Ok(())
    }

    pub fn log_tail(&self) -> String {
        tail_of(&self.log)
    }
}

impl Drop for ApiServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A small deterministic PRNG (xorshift64*), seeded per run and printed, so a failing
/// schedule can be replayed with `RKUBE_CRASH_SEED`.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn from_env_or_time() -> Rng {
        let seed = std::env::var("RKUBE_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        println!("crash test seed: RKUBE_CRASH_SEED={seed}");
        Rng(seed.max(1))
    }

    pub fn fork(&mut self) -> Rng {
        Rng(self.next_u64().max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// What a writer's client knows about one key.
#[derive(Clone, Debug, Default)]
pub struct KeyModel {
    pub name: String,
    /// The last acknowledged state: `(resourceVersion, value)`, or `None` when absent.
    pub acked: Option<(i64, String)>,
    /// A write whose answer was lost: it may or may not have happened.
    pub unanswered: Option<Write>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    Put(String),
    Delete,
}

/// Totals over a whole run.
#[derive(Debug, Default)]
pub struct Tally {
    pub acked_writes: u64,
    /// Writes whose answer was lost in a crash, and how many of them turned out committed.
    pub unanswered: u64,
    pub unanswered_committed: u64,
    /// Acknowledged writes missing (or changed without a write to explain it) after a restart.
    pub lost: Vec<String>,
    /// Acknowledged creates and updates: (name, resourceVersion), for the watcher check.
    pub acked_versions: Vec<(String, i64)>,
}

/// The last 40 lines of a log file.
fn tail_of(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// `name -> (resourceVersion, data.v)` of every ConfigMap in the test namespace, read with a
/// consistent list (retried while storage is coming back).
pub async fn list_state(
    client: &reqwest::Client,
    url: &str,
) -> anyhow::Result<(BTreeMap<String, (i64, String)>, i64)> {
    let last_failure = Mutex::new(String::new());
    let listed = || async {
        let resp = client
            .get(format!("{url}/api/v1/namespaces/{NAMESPACE}/configmaps"))
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await;
        let resp = match resp {
            Ok(resp) if resp.status().is_success() => resp,
            other => {
                *last_failure.lock().unwrap() = format!("{other:?}");
                return Ok(None);
            }
        };
        let list: Value = resp.json().await?;
        let mut state = BTreeMap::new();
        for item in list["items"].as_array().context("list without items")? {
            state.insert(
                item["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                (
                    rv_of(item)?,
                    item["data"]["v"].as_str().unwrap_or_default().to_string(),
                ),
            );
        }
        let rv = list["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .context("list without resourceVersion")?;
        Ok(Some((state, rv)))
    };
    try_poll(QUICK_POLL_LIST, START_TIMEOUT, listed, || {
        anyhow!(
            "listing ConfigMaps kept failing: {}",
            last_failure.lock().unwrap()
        )
    })
    .await
}

fn rv_of(obj: &Value) -> anyhow::Result<i64> {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("object without a numeric resourceVersion: {obj}"))
}

/// Checks every key against what the server lists after a restart, records lost
/// acknowledged writes, and settles the unanswered writes (their outcome is now known).
pub fn reconcile(
    keys: &mut [KeyModel],
    listed: &BTreeMap<String, (i64, String)>,
    tally: &mut Tally,
) {
    for key in keys.iter_mut() {
        let observed = listed.get(&key.name).cloned();
        if observed == key.acked {
            if key.unanswered.take().is_some() {
                tally.unanswered += 1;
            }
            continue;
        }
        let acked_rv = key.acked.as_ref().map_or(0, |(rv, _)| *rv);
        let explained = match (&key.unanswered, &observed) {
            (Some(Write::Put(value)), Some((rv, v))) => v == value && *rv > acked_rv,
            (Some(Write::Delete), None) => true,
            _ => false,
        };
        if explained {
            tally.unanswered += 1;
            tally.unanswered_committed += 1;
            key.unanswered = None;
            key.acked = observed;
        } else {
            tally.lost.push(format!(
                "{}: acknowledged {:?}, unanswered {:?}, but the server has {:?}",
                key.name, key.acked, key.unanswered, observed
            ));
            // Continue from what the server has, so one loss is reported once.
            key.unanswered = None;
            key.acked = observed;
        }
    }
}

/// Writes to its own keys until `stop` or until a request fails without an answer (the
/// server or its storage died); returns the keys with what it learned.
pub async fn run_writer(
    client: reqwest::Client,
    url: String,
    mut keys: Vec<KeyModel>,
    mut rng: Rng,
    stop: Arc<AtomicBool>,
    writer: usize,
) -> anyhow::Result<WriterReport> {
    let mut acked = Vec::new();
    let mut seq = 0u64;
    let base = format!("{url}/api/v1/namespaces/{NAMESPACE}/configmaps");
    while !stop.load(Ordering::Relaxed) {
        let index = rng.below(keys.len() as u64) as usize;
        let key = &mut keys[index];
        seq += 1;
        let value = format!("w{writer}-{seq}-{}", rng.next_u64());
        let body = |rv: Option<i64>| {
            let mut metadata = json!({"name": key.name});
            if let Some(rv) = rv {
                metadata["resourceVersion"] = json!(rv.to_string());
            }
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": {"v": value}})
        };
        let (write, request) = match &key.acked {
            None => (
                Write::Put(value.clone()),
                client.post(&base).json(&body(None)),
            ),
            Some(_) if rng.below(8) == 0 => {
                (Write::Delete, client.delete(format!("{base}/{}", key.name)))
            }
            Some((rv, _)) => (
                Write::Put(value.clone()),
                client
                    .put(format!("{base}/{}", key.name))
                    .json(&body(Some(*rv))),
            ),
        };
        let response = request.timeout(REQUEST_TIMEOUT).send().await;
        let answered = match response {
            Ok(resp) if resp.status().is_success() => resp.json::<Value>().await.ok(),
            Ok(resp) if resp.status().is_server_error() => None,
            Ok(resp) => {
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                bail!(
                    "writer {writer}: {write:?} of {} got {status}: {text}",
                    key.name
                );
            }
            Err(_) => None,
        };
        match (answered, write) {
            (Some(obj), Write::Put(value)) => {
                let rv = rv_of(&obj)?;
                if obj["data"]["v"] != value.as_str() {
                    bail!("writer {writer}: the answer to writing {value} holds {obj}");
                }
                acked.push((key.name.clone(), rv));
                key.acked = Some((rv, value));
            }
            (Some(_), Write::Delete) => key.acked = None,
            (None, write) => {
                // The server (or its storage) died mid-request; the write may have landed.
                key.unanswered = Some(write);
                break;
            }
        }
    }
    Ok(WriterReport { keys, acked })
}

/// A writer's keys after a round, and the versions it was acknowledged.
pub struct WriterReport {
    pub keys: Vec<KeyModel>,
    /// `(name, resourceVersion)` of each acknowledged create or update.
    pub acked: Vec<(String, i64)>,
}

/// A client watching ConfigMaps across restarts, resuming from the last resourceVersion
/// it saw.
#[derive(Debug, Default)]
pub struct Watcher {
    /// The resourceVersion it started from (its initial list's).
    pub start_rv: i64,
    pub last_rv: i64,
    /// What the initial list plus every event so far add up to: name -> resourceVersion.
    pub state: BTreeMap<String, i64>,
    /// Every event received: (type, name, resourceVersion).
    pub events: Vec<(String, String, i64)>,
    /// Protocol violations seen (out-of-order or repeated revisions, ERROR events).
    pub violations: Vec<String>,
}

impl Watcher {
    pub async fn from_list(client: &reqwest::Client, url: &str) -> anyhow::Result<Watcher> {
        let (listed, rv) = list_state(client, url).await?;
        Ok(Watcher {
            start_rv: rv,
            last_rv: rv,
            state: listed.into_iter().map(|(k, (rv, _))| (k, rv)).collect(),
            ..Watcher::default()
        })
    }

    fn apply(&mut self, line: &[u8]) {
        let event: Value = match serde_json::from_slice(line) {
            Ok(v) => v,
            Err(e) => {
                self.violations.push(format!("undecodable watch line: {e}"));
                return;
            }
        };
        let kind = event["type"].as_str().unwrap_or_default().to_string();
        let object = &event["object"];
        if kind == "ERROR" {
            self.violations
                .push(format!("resuming from {} failed: {object}", self.last_rv));
            return;
        }
        let Ok(rv) = rv_of(object) else {
            self.violations
                .push(format!("event without resourceVersion: {event}"));
            return;
        };
        if kind == "BOOKMARK" {
            if rv < self.last_rv {
                self.violations
                    .push(format!("bookmark {rv} after {}", self.last_rv));
            }
            self.last_rv = rv;
            return;
        }
        if rv <= self.last_rv {
            self.violations.push(format!(
                "{kind} at {rv} after {}: a duplicate or out of order",
                self.last_rv
            ));
        }
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        match kind.as_str() {
            "ADDED" | "MODIFIED" => {
                self.state.insert(name.clone(), rv);
            }
            "DELETED" => {
                self.state.remove(&name);
            }
            other => self
                .violations
                .push(format!("unexpected event type {other}")),
        }
        self.last_rv = rv;
        self.events.push((kind, name, rv));
    }

    /// Watches from `last_rv` until the stream ends or breaks (the server died), `until_rv`
    /// has been seen, or the task is aborted; fails only when the server refuses the watch. Every complete line is applied under the lock, so an
    /// abort never leaves an event half-applied.
    pub async fn follow(
        watcher: Arc<parking_mutex::Mutex<Watcher>>,
        client: reqwest::Client,
        url: String,
        until_rv: Option<i64>,
    ) -> anyhow::Result<()> {
        let from = watcher.lock().last_rv;
        let sent = client
            .get(format!(
                "{url}/api/v1/namespaces/{NAMESPACE}/configmaps?watch=1&resourceVersion={from}&allowWatchBookmarks=true"
            ))
            .send()
            .await;
        // A transport error is the server dying under us: the next round resumes.
        let Ok(mut resp) = sent else { return Ok(()) };
        if !resp.status().is_success() {
            let status = resp.status();
            bail!(
                "watch from {from} answered {status}: {}",
                resp.text().await.unwrap_or_default()
            );
        }
        let mut buf = Vec::new();
        while let Ok(Some(chunk)) = resp.chunk().await {
            buf.extend_from_slice(&chunk);
            while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=end).collect();
                let mut w = watcher.lock();
                w.apply(&line);
                if until_rv.is_some_and(|until| w.last_rv >= until) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// The exactly-once check: every acknowledged create or update after the watcher's
    /// start was delivered (revisions are already checked to strictly increase), and the
    /// events add up to the final list.
    pub fn check(
        &self,
        acked: &[(String, i64)],
        final_state: &BTreeMap<String, (i64, String)>,
    ) -> Vec<String> {
        let mut problems = self.violations.clone();
        let seen: std::collections::HashSet<(&str, i64)> = self
            .events
            .iter()
            .map(|(_, n, rv)| (n.as_str(), *rv))
            .collect();
        let missed: Vec<_> = acked
            .iter()
            .filter(|(name, rv)| *rv > self.start_rv && !seen.contains(&(name.as_str(), *rv)))
            .collect();
        if !missed.is_empty() {
            problems.push(format!(
                "{} acknowledged writes never delivered, e.g. {:?}",
                missed.len(),
                &missed[..missed.len().min(5)]
            ));
        }
        let expected: BTreeMap<String, i64> = final_state
            .iter()
            .map(|(k, (rv, _))| (k.clone(), *rv))
            .collect();
        if self.state != expected {
            problems.push(format!(
                "the events add up to {:?}, the final list is {:?}",
                self.state, expected
            ));
        }
        problems
    }
}

/// parking_lot is not a dependency of this crate; a std mutex that ignores poisoning
/// (a panicking watcher task fails the test anyway) is all the watchers need.
pub mod parking_mutex {
    pub struct Mutex<T>(std::sync::Mutex<T>);

    impl<T> Mutex<T> {
        pub fn new(value: T) -> Self {
            Mutex(std::sync::Mutex::new(value))
        }

        pub fn lock(&self) -> std::sync::MutexGuard<'_, T> {
            self.0.lock().unwrap_or_else(|e| e.into_inner())
        }
    }
}
