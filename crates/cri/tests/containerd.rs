//! The containerd runtime and image service against a private containerd (as root), with
//! an image built from busybox-static.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use oci_spec::runtime::{LinuxBuilder, LinuxMemoryBuilder, LinuxResourcesBuilder, Spec};
use rkube_cri::containerd::{ContainerdConfig, ContainerdImageService, ContainerdRuntime};
use rkube_cri::{
    ContainerConfig, ContainerRuntime, ContainerState, ExecConfig, ExecIo, ImageInfo, ImageService,
    LogPaths, RuntimeError, RuntimeEvent,
};
use rkube_testkit::containerd::ContainerdProcess;
use tokio::sync::{broadcast, mpsc};

const IMAGE: &str = "docker.io/library/busybox:rkube-test";

struct Node {
    containerd: ContainerdProcess,
    runtime: ContainerdRuntime,
    images: ContainerdImageService,
    image: ImageInfo,
}

async fn node() -> Node {
    assert!(
        rkube_testkit::containerd::available(),
        "these tests need root and containerd + runc (apt-get install -y containerd runc)"
    );
    let containerd = ContainerdProcess::start().await.unwrap();
    let config = config_for(&containerd);
    let runtime = ContainerdRuntime::connect(&config).await.unwrap();
    let images = ContainerdImageService::connect(&config).await.unwrap();
    let tarball =
        rkube_testkit::images::busybox_oci_tarball(containerd.dir(), "busybox:rkube-test").unwrap();
    let imported = images.import(&tarball).await.unwrap();
    assert_eq!(imported.len(), 1);
    let image = imported.into_iter().next().unwrap();
    Node {
        containerd,
        runtime,
        images,
        image,
    }
}

fn config_for(containerd: &ContainerdProcess) -> ContainerdConfig {
    let mut config =
        ContainerdConfig::new(containerd.socket_path(), containerd.dir().join("rkube"));
    config.runc_root = containerd.runc_root();
    config
}

/// Ids unique across concurrently running test processes (they share the cgroup tree).
fn unique_id(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

fn spec(id: &str, args: &[&str]) -> Spec {
    let mut spec = Spec::default();
    let mut process = spec.process().clone().unwrap();
    process.set_args(Some(args.iter().map(|a| a.to_string()).collect()));
    spec.set_process(Some(process));
    let mut root = spec.root().clone().unwrap();
    root.set_readonly(Some(false));
    spec.set_root(Some(root));
    let mut linux = spec.linux().clone().unwrap();
    linux.set_cgroups_path(Some(PathBuf::from(format!("/rkube-test/{id}"))));
    spec.set_linux(Some(linux));
    spec
}

fn container(node: &Node, id: &str, spec: Spec) -> ContainerConfig {
    let logs = node.containerd.dir().join("logs").join(id);
    ContainerConfig {
        id: id.to_string(),
        image: node.image.clone(),
        spec,
        labels: BTreeMap::from([
            (
                rkube_cri::labels::POD_NAME.to_string(),
                "test-pod".to_string(),
            ),
            (
                rkube_cri::labels::CONTAINER_NAME.to_string(),
                id.to_string(),
            ),
        ]),
        logs: LogPaths {
            stdout: logs.join("stdout.log"),
            stderr: logs.join("stderr.log"),
        },
        stdin: false,
        stdin_once: false,
    }
}

async fn wait_exit(events: &mut broadcast::Receiver<RuntimeEvent>, id: &str) -> i32 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("no exit event within 60 s")
            .unwrap();
        if let RuntimeEvent::Exited {
            id: exited,
            exit_code,
            ..
        } = event
        {
            if exited == id {
                return exit_code;
            }
        }
    }
}

/// The shim copies output asynchronously; wait (bounded) until the file holds something.
async fn read_when_written(path: &Path) -> String {
    let written = rkube_testkit::poll_for(Duration::from_secs(5), || async {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        (!text.is_empty()).then_some(text)
    })
    .await;
    written.unwrap_or_default()
}

#[tokio::test]
async fn import_lists_image_with_config() {
    let node = node().await;
    assert_eq!(node.image.name, IMAGE);
    assert!(node.image.id.starts_with("sha256:"));
    assert_eq!(node.image.config.cmd, vec!["sh"]);
    assert!(node.image.config.env.iter().any(|e| e.starts_with("PATH=")));
    let status = node
        .images
        .image_status("busybox:rkube-test")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, node.image);
    let by_id = node
        .images
        .image_status(&node.image.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_id.id, node.image.id);
    assert!(node
        .images
        .image_status("busybox:absent")
        .await
        .unwrap()
        .is_none());
    let listed = node.images.list().await.unwrap();
    assert!(listed.iter().any(|i| i.name == IMAGE));
    // Importing again is harmless.
    let tarball =
        rkube_testkit::images::busybox_oci_tarball(node.containerd.dir(), "busybox:rkube-test")
            .unwrap();
    assert_eq!(
        node.images.import(&tarball).await.unwrap()[0].id,
        node.image.id
    );
}

#[tokio::test]
async fn docker_save_tarball_imports_and_runs() {
    let node = node().await;
    let tarball = rkube_testkit::images::busybox_docker_tarball(
        node.containerd.dir(),
        "example.test/tools:v1",
    )
    .unwrap();
    let imported = node.images.import(&tarball).await.unwrap();
    assert_eq!(imported.len(), 1);
    let image = imported.into_iter().next().unwrap();
    assert_eq!(image.name, "example.test/tools:v1");
    // Same config as the OCI tarball's: the image id is the config digest.
    assert_eq!(image.id, node.image.id);
    let id = unique_id("docker-save");
    let mut events = node.runtime.events();
    let mut config = container(
        &node,
        &id,
        spec(&id, &["sh", "-c", "cat /etc/passwd | head -n 1"]),
    );
    config.image = image;
    let logs = config.logs.clone();
    node.runtime.create(config).await.unwrap();
    node.runtime.start(&id).await.unwrap();
    assert_eq!(wait_exit(&mut events, &id).await, 0);
    assert_eq!(
        read_when_written(&logs.stdout).await,
        "root:x:0:0:root:/root:/bin/sh\n"
    );
    node.runtime.remove(&id).await.unwrap();
}

#[tokio::test]
async fn container_exit_code_and_separate_log_streams() {
    let node = node().await;
    let id = unique_id("exit3");
    let mut events = node.runtime.events();
    let config = container(
        &node,
        &id,
        spec(&id, &["sh", "-c", "echo out; echo err >&2; exit 3"]),
    );
    let logs = config.logs.clone();
    node.runtime.create(config).await.unwrap();
    assert_eq!(
        node.runtime.status(&id).await.unwrap().state,
        ContainerState::Created
    );
    node.runtime.start(&id).await.unwrap();
    assert_eq!(wait_exit(&mut events, &id).await, 3);
    let info = node.runtime.status(&id).await.unwrap();
    match info.state {
        ContainerState::Exited {
            exit_code,
            oom_killed,
            started_at,
            ..
        } => {
            assert_eq!(exit_code, 3);
            assert!(!oom_killed);
            assert!(started_at.is_some());
        }
        other => panic!("unexpected state {other:?}"),
    }
    assert_eq!(read_when_written(&logs.stdout).await, "out\n");
    assert_eq!(read_when_written(&logs.stderr).await, "err\n");
    node.runtime.remove(&id).await.unwrap();
    node.runtime.remove(&id).await.unwrap();
    assert!(matches!(
        node.runtime.status(&id).await,
        Err(RuntimeError::NotFound(_))
    ));
}

#[tokio::test]
async fn long_running_container_is_listed_and_stops_on_sigterm() {
    let node = node().await;
    let id = unique_id("sleeper");
    let mut events = node.runtime.events();
    // sh as PID 1 ignores SIGTERM without a handler; trap makes it exit on it.
    let config = container(
        &node,
        &id,
        spec(
            &id,
            &[
                "sh",
                "-c",
                "trap 'exit 143' TERM; while true; do sleep 0.1; done",
            ],
        ),
    );
    node.runtime.create(config.clone()).await.unwrap();
    assert!(matches!(
        node.runtime.create(config).await,
        Err(RuntimeError::AlreadyExists(_))
    ));
    node.runtime.start(&id).await.unwrap();
    let listed = node.runtime.list().await.unwrap();
    let info = listed
        .iter()
        .find(|c| c.id == id)
        .expect("container listed");
    assert!(matches!(info.state, ContainerState::Running { .. }));
    assert!(info.pid.is_some());
    assert_eq!(info.labels[rkube_cri::labels::POD_NAME], "test-pod");
    assert_eq!(info.image, IMAGE);
    assert_eq!(info.image_id, node.image.id);

    node.runtime.signal(&id, 15).await.unwrap();
    assert_eq!(wait_exit(&mut events, &id).await, 143);
    node.runtime.remove(&id).await.unwrap();
    assert!(node
        .runtime
        .list()
        .await
        .unwrap()
        .iter()
        .all(|c| c.id != id));
}

#[tokio::test]
async fn remove_kills_running_container_and_is_idempotent() {
    let node = node().await;
    let id = unique_id("removed");
    node.runtime
        .create(container(&node, &id, spec(&id, &["sleep", "1000"])))
        .await
        .unwrap();
    node.runtime.start(&id).await.unwrap();
    node.runtime.remove(&id).await.unwrap();
    node.runtime.remove(&id).await.unwrap();
    node.runtime.remove("never-existed").await.unwrap();
    assert!(matches!(
        node.runtime.status(&id).await,
        Err(RuntimeError::NotFound(_))
    ));
    // The id is free again.
    node.runtime
        .create(container(&node, &id, spec(&id, &["true"])))
        .await
        .unwrap();
    node.runtime.remove(&id).await.unwrap();
}

#[tokio::test]
async fn missing_binary_fails_create_or_start_cleanly() {
    let node = node().await;
    let id = unique_id("nobinary");
    let result = async {
        node.runtime
            .create(container(&node, &id, spec(&id, &["/no/such/binary"])))
            .await?;
        node.runtime.start(&id).await
    }
    .await;
    assert!(matches!(result, Err(RuntimeError::Start(_))), "{result:?}");
    node.runtime.remove(&id).await.unwrap();
}

async fn collect(mut receiver: mpsc::Receiver<Bytes>) -> String {
    let mut out = Vec::new();
    while let Some(chunk) = receiver.recv().await {
        out.extend_from_slice(&chunk);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn exec_exit_code_output_and_stdin() {
    let node = node().await;
    let id = unique_id("execd");
    node.runtime
        .create(container(&node, &id, spec(&id, &["sleep", "1000"])))
        .await
        .unwrap();
    node.runtime.start(&id).await.unwrap();

    let (stdout, stdout_rx) = mpsc::channel(16);
    let (stderr, stderr_rx) = mpsc::channel(16);
    let output = tokio::spawn(collect(stdout_rx));
    let errors = tokio::spawn(collect(stderr_rx));
    let code = node
        .runtime
        .exec(
            &id,
            ExecConfig {
                command: vec![
                    "sh".into(),
                    "-c".into(),
                    "echo hi; echo oops >&2; exit 5".into(),
                ],
                env: vec!["EXTRA=1".into()],
                ..ExecConfig::default()
            },
            ExecIo {
                stdin: None,
                stdout,
                stderr: Some(stderr),
                resize: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(code, 5);
    assert_eq!(output.await.unwrap(), "hi\n");
    assert_eq!(errors.await.unwrap(), "oops\n");

    let (stdin_tx, stdin_rx) = mpsc::channel(16);
    let (stdout, stdout_rx) = mpsc::channel(16);
    let output = tokio::spawn(collect(stdout_rx));
    stdin_tx
        .send(Bytes::from_static(b"line one\n"))
        .await
        .unwrap();
    stdin_tx
        .send(Bytes::from_static(b"line two\n"))
        .await
        .unwrap();
    drop(stdin_tx);
    let code = node
        .runtime
        .exec(
            &id,
            ExecConfig {
                command: vec!["cat".into()],
                stdin: true,
                ..ExecConfig::default()
            },
            ExecIo {
                stdin: Some(stdin_rx),
                stdout,
                stderr: None,
                resize: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert_eq!(output.await.unwrap(), "line one\nline two\n");

    // A tty: output arrives on stdout; resize requests are accepted.
    let (stdout, stdout_rx) = mpsc::channel(16);
    let (resize_tx, resize_rx) = mpsc::channel(4);
    resize_tx.send((100, 40)).await.unwrap();
    let output = tokio::spawn(collect(stdout_rx));
    let code = node
        .runtime
        .exec(
            &id,
            ExecConfig {
                command: vec![
                    "sh".into(),
                    "-c".into(),
                    "sleep 0.2; stty size; exit 7".into(),
                ],
                tty: true,
                ..ExecConfig::default()
            },
            ExecIo {
                stdin: None,
                stdout,
                stderr: None,
                resize: Some(resize_rx),
            },
        )
        .await
        .unwrap();
    drop(resize_tx);
    assert_eq!(code, 7);
    let text = output.await.unwrap();
    assert!(text.contains("40 100"), "tty output {text:?}");

    node.runtime.remove(&id).await.unwrap();
    assert!(matches!(
        node.runtime
            .exec(
                &id,
                ExecConfig {
                    command: vec!["true".into()],
                    ..ExecConfig::default()
                },
                ExecIo {
                    stdin: None,
                    stdout: mpsc::channel(1).0,
                    stderr: None,
                    resize: None,
                },
            )
            .await,
        Err(RuntimeError::NotFound(_))
    ));
}

#[tokio::test]
async fn memory_limit_reports_oom_killed() {
    let node = node().await;
    let id = unique_id("oom");
    let mut events = node.runtime.events();
    let mut spec = spec(
        &id,
        &[
            "sh",
            "-c",
            "x=$(head -c 64000000 /dev/zero | tr '\\0' a); echo survived",
        ],
    );
    let limit: i64 = 16 << 20;
    let resources = LinuxResourcesBuilder::default()
        .memory(LinuxMemoryBuilder::default().limit(limit).build().unwrap())
        .build()
        .unwrap();
    let mut linux = spec
        .linux()
        .clone()
        .unwrap_or_else(|| LinuxBuilder::default().build().unwrap());
    linux.set_resources(Some(resources));
    spec.set_linux(Some(linux));
    let config = container(&node, &id, spec);
    let logs = config.logs.clone();
    node.runtime.create(config).await.unwrap();
    node.runtime.start(&id).await.unwrap();
    let mut oom_event = false;
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(60), events.recv())
            .await
            .expect("no exit event within 60 s")
            .unwrap()
        {
            RuntimeEvent::OomKilled { id: killed } if killed == id => oom_event = true,
            RuntimeEvent::Exited {
                id: exited,
                exit_code,
                ..
            } if exited == id => break exit_code,
            _ => {}
        }
    };
    // The OOM event may come just after the exit (containerd publishes both).
    while !oom_event {
        match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
            Ok(Ok(RuntimeEvent::OomKilled { id: killed })) if killed == id => oom_event = true,
            Ok(Ok(_)) => {}
            _ => break,
        }
    }
    assert!(oom_event, "no OomKilled event");
    let info = node.runtime.status(&id).await.unwrap();
    let stdout = std::fs::read_to_string(&logs.stdout).unwrap_or_default();
    match info.state {
        ContainerState::Exited {
            exit_code,
            oom_killed,
            ..
        } => {
            assert!(
                oom_killed,
                "exit {exit_code} (event {code}), stdout {stdout:?}"
            );
            assert_eq!(exit_code, 137);
        }
        other => panic!("unexpected state {other:?}"),
    }
    node.runtime.remove(&id).await.unwrap();
}

/// A private docker-registry (Debian's `docker-registry`) on loopback, stopped on drop.
struct Registry {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_registry() -> Registry {
    let binary = Path::new("/usr/bin/docker-registry");
    assert!(
        binary.is_file(),
        "the pull test needs Debian's docker-registry (apt-get install -y docker-registry)"
    );
    let dir = tempfile::tempdir().unwrap();
    let port = rkube_testkit::free_port().unwrap();
    let config = format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
        dir.path().join("data").display()
    );
    std::fs::write(dir.path().join("config.yml"), config).unwrap();
    let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
    let child = std::process::Command::new(binary)
        .arg("serve")
        .arg(dir.path().join("config.yml"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let registry = Registry {
        child,
        port,
        _dir: dir,
    };
    let client = reqwest::Client::new();
    rkube_testkit::wait_for(
        "the registry to come up",
        Duration::from_secs(30),
        || async {
            let response = client
                .get(format!("http://127.0.0.1:{port}/v2/"))
                .send()
                .await;
            response.is_ok_and(|r| r.status().is_success())
        },
    )
    .await;
    registry
}

async fn push_blob(client: &reqwest::Client, base: &str, repo: &str, digest: &str, data: &[u8]) {
    let response = client
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "starting upload");
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let location = if location.starts_with("http") {
        location
    } else {
        format!("{base}{location}")
    };
    let separator = if location.contains('?') { '&' } else { '?' };
    let response = client
        .put(format!("{location}{separator}digest={digest}"))
        .header("content-type", "application/octet-stream")
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "finishing upload of {digest}");
}

#[tokio::test]
async fn pull_from_local_registry_and_run() {
    let node = node().await;
    let registry = start_registry().await;
    let base = format!("http://127.0.0.1:{}", registry.port);
    let client = reqwest::Client::new();
    let image = rkube_testkit::images::busybox_image().unwrap();
    let repo = "rkube/busybox";
    push_blob(
        &client,
        &base,
        repo,
        &image.config.digest,
        &image.config.data,
    )
    .await;
    for layer in &image.layers {
        push_blob(&client, &base, repo, &layer.digest, &layer.data).await;
    }
    let response = client
        .put(format!("{base}/v2/{repo}/manifests/pulled"))
        .header("content-type", &image.manifest.media_type)
        .body(image.manifest.data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "pushing manifest");

    let reference = format!("127.0.0.1:{}/{repo}:pulled", registry.port);
    let missing = node
        .images
        .pull(&format!("127.0.0.1:{}/{repo}:absent", registry.port), None)
        .await;
    assert!(
        matches!(missing, Err(RuntimeError::Pull { .. })),
        "{missing:?}"
    );

    let pulled = node.images.pull(&reference, None).await.unwrap();
    assert_eq!(pulled.name, reference);
    assert_eq!(pulled.id, image.config.digest);
    assert_eq!(pulled.config.cmd, vec!["sh"]);
    let status = node.images.image_status(&reference).await.unwrap().unwrap();
    assert_eq!(status.id, image.config.digest);
    // By digest too.
    let by_digest = format!(
        "127.0.0.1:{}/{repo}@{}",
        registry.port, image.manifest.digest
    );
    assert_eq!(
        node.images.pull(&by_digest, None).await.unwrap().id,
        pulled.id
    );

    let id = unique_id("pulled");
    let mut events = node.runtime.events();
    let mut config = container(&node, &id, spec(&id, &["sh", "-c", "echo from-pulled"]));
    config.image = pulled;
    let logs = config.logs.clone();
    node.runtime.create(config).await.unwrap();
    node.runtime.start(&id).await.unwrap();
    assert_eq!(wait_exit(&mut events, &id).await, 0);
    assert_eq!(read_when_written(&logs.stdout).await, "from-pulled\n");
    node.runtime.remove(&id).await.unwrap();
}

/// Not a benchmark assertion: prints create+start latency through the runtime (p50 over
/// 20) as the raw baseline the kubelet's pod startup is compared with.
#[tokio::test]
async fn create_start_latency_baseline() {
    let node = node().await;
    let mut samples = Vec::new();
    for i in 0..20 {
        let id = unique_id(&format!("lat{i}"));
        let config = container(&node, &id, spec(&id, &["sleep", "1000"]));
        let started = Instant::now();
        node.runtime.create(config).await.unwrap();
        node.runtime.start(&id).await.unwrap();
        samples.push(started.elapsed());
        node.runtime.remove(&id).await.unwrap();
    }
    samples.sort();
    println!(
        "containerd create+start over {} runs: p50 {:?}, p90 {:?}, max {:?}",
        samples.len(),
        samples[samples.len() / 2],
        samples[samples.len() * 9 / 10],
        samples[samples.len() - 1]
    );
    assert_eq!(samples.len(), 20);
}

/// Feeds `input` to the container's stdin through one attach session.
async fn attach_input(runtime: &ContainerdRuntime, id: &str, input: &str) {
    let (sender, receiver) = mpsc::channel(1);
    sender.send(Bytes::from(input.to_string())).await.unwrap();
    drop(sender);
    runtime.attach(id, receiver).await.unwrap();
}

#[tokio::test]
async fn attach_feeds_main_process_stdin_and_stdin_once_closes_it() {
    let node = node().await;
    let mut events = node.runtime.events();
    let script = "while read line; do echo \"got $line\"; done; echo eof";

    // Without stdinOnce, stdin outlives each session: the process reads no end-of-file.
    let open = unique_id("stdin-open");
    let mut config = container(&node, &open, spec(&open, &["sh", "-c", script]));
    config.stdin = true;
    let open_logs = config.logs.clone();
    node.runtime.create(config).await.unwrap();
    node.runtime.start(&open).await.unwrap();
    attach_input(&node.runtime, &open, "one\n").await;
    attach_input(&node.runtime, &open, "two\n").await;
    let read_open_logs = || std::fs::read_to_string(&open_logs.stdout).unwrap_or_default();
    let _ = rkube_testkit::poll_until(Duration::from_secs(5), || async {
        read_open_logs().contains("got two")
    })
    .await;
    assert_eq!(read_open_logs(), "got one\ngot two\n");
    assert!(matches!(
        node.runtime.status(&open).await.unwrap().state,
        ContainerState::Running { .. }
    ));
    node.runtime.remove(&open).await.unwrap();

    // With stdinOnce, the end of the first session is the end of the input.
    let once = unique_id("stdin-once");
    let mut config = container(&node, &once, spec(&once, &["sh", "-c", script]));
    config.stdin = true;
    config.stdin_once = true;
    let once_logs = config.logs.clone();
    node.runtime.create(config).await.unwrap();
    node.runtime.start(&once).await.unwrap();
    attach_input(&node.runtime, &once, "only\n").await;
    assert_eq!(wait_exit(&mut events, &once).await, 0);
    assert_eq!(
        read_when_written(&once_logs.stdout).await,
        "got only\neof\n"
    );
    node.runtime.remove(&once).await.unwrap();

    // A container created without stdin refuses to be written to.
    let none = unique_id("stdin-none");
    node.runtime
        .create(container(&node, &none, spec(&none, &["sleep", "60"])))
        .await
        .unwrap();
    let (_sender, receiver) = mpsc::channel(1);
    assert!(node.runtime.attach(&none, receiver).await.is_err());
    node.runtime.remove(&none).await.unwrap();
}

/// `kubectl run -i` shape: input written and ended at once, on containers started just
/// before. Every line must reach the process before its end-of-file; repeated on fresh
/// containers because a lost-input race would show only now and then.
#[tokio::test]
async fn attach_stdin_once_delivers_all_input_before_end_of_file() {
    const ROUNDS: usize = 20;
    let node = node().await;
    let mut events = node.runtime.events();
    let script = "while read line; do echo \"got $line\"; done; echo eof";
    let expected = "got one\ngot two\ngot three\neof\n";
    let mut wrong = Vec::new();
    for round in 0..ROUNDS {
        let id = unique_id(&format!("stdin-race-{round}"));
        let mut config = container(&node, &id, spec(&id, &["sh", "-c", script]));
        config.stdin = true;
        config.stdin_once = true;
        let logs = config.logs.clone();
        node.runtime.create(config).await.unwrap();
        node.runtime.start(&id).await.unwrap();
        let (sender, receiver) = mpsc::channel(4);
        for line in ["one\n", "two\n", "three\n"] {
            sender
                .send(Bytes::from_static(line.as_bytes()))
                .await
                .unwrap();
        }
        drop(sender);
        node.runtime.attach(&id, receiver).await.unwrap();
        assert_eq!(wait_exit(&mut events, &id).await, 0);
        let read_logs = || std::fs::read_to_string(&logs.stdout).unwrap_or_default();
        let _ = rkube_testkit::poll_until(Duration::from_secs(5), || async {
            read_logs().ends_with("eof\n")
        })
        .await;
        let output = read_logs();
        if output != expected {
            wrong.push((round, output));
        }
        node.runtime.remove(&id).await.unwrap();
    }
    assert!(
        wrong.is_empty(),
        "{} of {ROUNDS} rounds lost input: {wrong:?}",
        wrong.len()
    );
}
