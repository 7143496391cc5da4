//! `GET /containerLogs` over a real socket while the logs rotate underneath: a follower
//! continues into the new file without losing or repeating lines, whole reads and
//! `tailLines` cover the rotated files oldest first, `previous` reads a rotated instance,
//! and out-of-range parameters are 400s.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use common::ScriptedRuntime;
use rkube_cri::{ContainerRuntime, LogPaths};
use rkubelet::logrotate::{rotate, CollapseRange, RotationPolicy};
use rkubelet::server::{router, KubeletApi, LookupError};

const CONTAINER_ID: &str = "writer-1";

/// Pod `default/app`; instance 1 is current, instance 0 the previous.
struct FakeKubelet {
    runtime: Arc<ScriptedRuntime>,
    dir: PathBuf,
}

impl FakeKubelet {
    fn paths(&self, instance: u32) -> LogPaths {
        LogPaths {
            stdout: self.dir.join(format!("{instance}.stdout")),
            stderr: self.dir.join(format!("{instance}.stderr")),
        }
    }
}

#[async_trait]
impl KubeletApi for FakeKubelet {
    async fn running_container(
        &self,
        _namespace: &str,
        _pod: &str,
        _container: Option<&str>,
    ) -> Result<String, LookupError> {
        Ok(CONTAINER_ID.to_string())
    }

    async fn log_paths(
        &self,
        namespace: &str,
        pod: &str,
        _container: Option<&str>,
        previous: bool,
    ) -> Result<LogPaths, LookupError> {
        if namespace != "default" || pod != "app" {
            return Err(LookupError::NotFound(format!("pods {pod:?} not found")));
        }
        Ok(self.paths(if previous { 0 } else { 1 }))
    }

    fn runtime_for(&self, _container_id: &str) -> Option<Arc<dyn ContainerRuntime>> {
        Some(self.runtime.clone())
    }
}

struct Harness {
    address: SocketAddr,
    kubelet: Arc<FakeKubelet>,
    _dir: tempfile::TempDir,
}

async fn start() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let kubelet = Arc::new(FakeKubelet {
        runtime: Arc::new(ScriptedRuntime::new(CONTAINER_ID)),
        dir: dir.path().to_path_buf(),
    });
    for instance in [0, 1] {
        let paths = kubelet.paths(instance);
        std::fs::File::create(&paths.stdout).unwrap();
        std::fs::File::create(&paths.stderr).unwrap();
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = router(kubelet.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Harness {
        address,
        kubelet,
        _dir: dir,
    }
}

async fn get(harness: &Harness, path_and_query: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{}{path_and_query}", harness.address))
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

fn line(i: usize) -> String {
    format!("stdout line {i:07}\n")
}

fn lines(range: std::ops::Range<usize>) -> String {
    range.map(line).collect()
}

/// Appends `range` to `live` one write per line, rotating at 16 KiB every 500 lines.
fn write_and_rotate(live: &Path, range: std::ops::Range<usize>, max_files: usize) -> usize {
    use std::io::Write;
    let policy = RotationPolicy::new(16 * 1024, max_files).unwrap();
    let mut file = std::fs::OpenOptions::new().append(true).open(live).unwrap();
    let mut rotations = 0;
    for i in range {
        file.write_all(line(i).as_bytes()).unwrap();
        if i % 500 == 0 && rotate(live, &policy, &CollapseRange).unwrap() {
            rotations += 1;
        }
    }
    rotations
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_continues_across_rotations_without_losing_or_repeating_lines() {
    let harness = start().await;
    let live = harness.kubelet.paths(1).stdout;
    // Some output before the request, part of it rotated already.
    write_and_rotate(&live, 0..2_000, 1_000);
    let response = reqwest::get(format!(
        "http://{}/containerLogs/default/app?follow=true",
        harness.address
    ))
    .await
    .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body = tokio::spawn(response.text());
    let writer = {
        let live = live.clone();
        // In bursts, so rotations happen between the follower's polls as well as during.
        tokio::task::spawn_blocking(move || {
            (1..30)
                .map(|burst| {
                    let rotations =
                        write_and_rotate(&live, burst * 2_000..(burst + 1) * 2_000, 1_000);
                    std::thread::sleep(std::time::Duration::from_millis(70));
                    rotations
                })
                .sum::<usize>()
        })
    };
    let rotations = writer.await.unwrap();
    assert!(
        rotations >= 20,
        "only {rotations} rotations while following"
    );
    harness.kubelet.runtime.stop();
    let body = body.await.unwrap().unwrap();
    assert!(body == lines(0..60_000), "follow lost or repeated lines");
}

#[tokio::test]
async fn whole_reads_tail_and_previous_span_the_rotated_files() {
    let harness = start().await;
    let live = harness.kubelet.paths(1).stdout;
    write_and_rotate(&live, 0..20_000, 1_000);
    let (status, body) = get(&harness, "/containerLogs/default/app").await;
    assert_eq!(status, 200);
    assert!(body == lines(0..20_000), "whole read differs");

    let (_, body) = get(&harness, "/containerLogs/default/app?tailLines=3000").await;
    assert_eq!(body, lines(17_000..20_000));
    let (_, body) = get(&harness, "/containerLogs/default/app?limitBytes=100").await;
    assert_eq!(body, lines(0..20_000)[..100]);

    // The previous instance, rotated and pruned to 3 files: the newest lines, in order.
    let previous = harness.kubelet.paths(0).stdout;
    write_and_rotate(&previous, 0..20_000, 3);
    let (status, body) = get(&harness, "/containerLogs/default/app?previous=true").await;
    assert_eq!(status, 200);
    assert!(body.len() > 16 * 1024 && body.len() < 5 * 16 * 1024);
    assert!(lines(0..20_000).ends_with(&body));
    let (_, body) = get(
        &harness,
        "/containerLogs/default/app?previous=true&tailLines=2",
    )
    .await;
    assert_eq!(body, lines(19_998..20_000));
}

#[tokio::test]
async fn since_seconds_past_the_date_range_is_a_bad_request_and_the_server_keeps_serving() {
    let harness = start().await;
    for huge in ["9223372036854775807", "100000000000000"] {
        let (status, body) = get(
            &harness,
            &format!("/containerLogs/default/app?sinceSeconds={huge}"),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(status["reason"], "BadRequest");
        assert!(status["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!("sinceSeconds: Invalid value: {huge}:")));
    }
    let (status, _) = get(&harness, "/containerLogs/default/app?sinceSeconds=60").await;
    assert_eq!(status, 200);
}
