//! The in-memory runtime and image service behave like the real ones where the kubelet can
//! tell: lifecycle, exit codes, signals, events, exec, pulls and imports.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use rkube_cri::fake::{ExecOutcome, FakeImageService, FakeRuntime};
use rkube_cri::{
    ContainerConfig, ContainerRuntime, ContainerState, ExecConfig, ExecIo, ImageService, LogPaths,
    RegistryAuth, RuntimeError, RuntimeEvent,
};
use tokio::sync::{broadcast, mpsc};

fn config(id: &str, images: &FakeImageService) -> ContainerConfig {
    ContainerConfig {
        id: id.to_string(),
        image: images.add_image("busybox").unwrap(),
        spec: oci_spec::runtime::Spec::default(),
        labels: BTreeMap::from([("io.rkube.pod.name".to_string(), "p".to_string())]),
        logs: LogPaths {
            stdout: "/nonexistent/out".into(),
            stderr: "/nonexistent/err".into(),
        },
        stdin: false,
        stdin_once: false,
    }
}

async fn next_event(events: &mut broadcast::Receiver<RuntimeEvent>) -> RuntimeEvent {
    tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("event")
        .unwrap()
}

#[tokio::test]
async fn lifecycle_signals_and_events() {
    let runtime = FakeRuntime::new();
    let images = FakeImageService::new();
    let mut events = runtime.events();
    runtime.create(config("a", &images)).await.unwrap();
    assert!(matches!(
        runtime.create(config("a", &images)).await,
        Err(RuntimeError::AlreadyExists(_))
    ));
    assert_eq!(
        runtime.status("a").await.unwrap().state,
        ContainerState::Created
    );
    runtime.start("a").await.unwrap();
    let info = runtime.status("a").await.unwrap();
    assert!(matches!(info.state, ContainerState::Running { .. }));
    assert!(info.pid.is_some());
    assert_eq!(info.image, "docker.io/library/busybox:latest");
    assert!(matches!(
        runtime.start("a").await,
        Err(RuntimeError::Start(_))
    ));

    runtime.signal("a", 15).await.unwrap();
    match next_event(&mut events).await {
        RuntimeEvent::Exited { id, exit_code, .. } => {
            assert_eq!(id, "a");
            assert_eq!(exit_code, 143);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(
        runtime.status("a").await.unwrap().state,
        ContainerState::Exited {
            exit_code: 143,
            oom_killed: false,
            ..
        }
    ));

    runtime.create(config("b", &images)).await.unwrap();
    runtime.start("b").await.unwrap();
    runtime.set_ignores_sigterm("b", true).unwrap();
    runtime.signal("b", 15).await.unwrap();
    assert!(matches!(
        runtime.status("b").await.unwrap().state,
        ContainerState::Running { .. }
    ));
    runtime.signal("b", 9).await.unwrap();
    assert!(matches!(
        runtime.status("b").await.unwrap().state,
        ContainerState::Exited { exit_code: 137, .. }
    ));

    assert_eq!(runtime.list().await.unwrap().len(), 2);
    runtime.remove("a").await.unwrap();
    runtime.remove("a").await.unwrap();
    assert!(matches!(
        runtime.status("a").await,
        Err(RuntimeError::NotFound(_))
    ));
    assert_eq!(runtime.container_ids(), vec!["b".to_string()]);
}

#[tokio::test]
async fn exit_codes_and_oom_are_settable() {
    let runtime = FakeRuntime::new();
    let images = FakeImageService::new();
    let mut events = runtime.events();
    for id in ["exits", "oom"] {
        runtime.create(config(id, &images)).await.unwrap();
        runtime.start(id).await.unwrap();
    }
    runtime.exit("exits", 3).unwrap();
    assert!(matches!(
        next_event(&mut events).await,
        RuntimeEvent::Exited { exit_code: 3, .. }
    ));
    assert!(
        runtime.exit("exits", 4).is_err(),
        "an exited container cannot exit again"
    );
    runtime.oom_kill("oom").unwrap();
    assert_eq!(
        next_event(&mut events).await,
        RuntimeEvent::OomKilled { id: "oom".into() }
    );
    assert!(matches!(
        runtime.status("oom").await.unwrap().state,
        ContainerState::Exited {
            exit_code: 137,
            oom_killed: true,
            ..
        }
    ));
}

#[tokio::test]
async fn start_failures_and_exec() {
    let runtime = FakeRuntime::new();
    let images = FakeImageService::new();
    runtime.fail_start_when(|config| {
        (config.id == "bad").then(|| "exec: \"nope\": executable file not found".to_string())
    });
    runtime.create(config("bad", &images)).await.unwrap();
    assert!(matches!(
        runtime.start("bad").await,
        Err(RuntimeError::Start(_))
    ));

    runtime.create(config("ok", &images)).await.unwrap();
    runtime.start("ok").await.unwrap();
    // Default exec: stdin echoed, exit 0.
    let (stdin_tx, stdin_rx) = mpsc::channel(4);
    let (stdout, mut stdout_rx) = mpsc::channel(4);
    stdin_tx.send(Bytes::from_static(b"ping")).await.unwrap();
    drop(stdin_tx);
    let code = runtime
        .exec(
            "ok",
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
    assert_eq!(stdout_rx.recv().await.unwrap(), Bytes::from_static(b"ping"));

    runtime.set_exec_handler(|_, config| ExecOutcome {
        stdout: format!("ran {}", config.command.join(" ")).into_bytes(),
        stderr: b"warn".to_vec(),
        exit_code: 5,
    });
    let (stdout, mut stdout_rx) = mpsc::channel(4);
    let (stderr, mut stderr_rx) = mpsc::channel(4);
    let code = runtime
        .exec(
            "ok",
            ExecConfig {
                command: vec!["sh".into(), "-c".into(), "x".into()],
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
    assert_eq!(
        stdout_rx.recv().await.unwrap(),
        Bytes::from_static(b"ran sh -c x")
    );
    assert_eq!(stderr_rx.recv().await.unwrap(), Bytes::from_static(b"warn"));

    runtime.exit("ok", 0).unwrap();
    let (stdout, _rx) = mpsc::channel(4);
    let stopped = runtime
        .exec(
            "ok",
            ExecConfig {
                command: vec!["true".into()],
                ..ExecConfig::default()
            },
            ExecIo {
                stdin: None,
                stdout,
                stderr: None,
                resize: None,
            },
        )
        .await;
    assert!(stopped.is_err(), "exec in a stopped container fails");
}

#[tokio::test]
async fn fake_images_pull_auth_and_import() {
    let images = FakeImageService::new();
    assert!(images.image_status("busybox").await.unwrap().is_none());
    let pulled = images.pull("busybox", None).await.unwrap();
    assert_eq!(pulled.name, "docker.io/library/busybox:latest");
    assert_eq!(
        images
            .image_status("docker.io/library/busybox")
            .await
            .unwrap(),
        Some(pulled.clone())
    );
    assert_eq!(images.image_status(&pulled.id).await.unwrap(), Some(pulled));

    images
        .set_registry(&["registry.test/app:1", "registry.test/private:1"])
        .unwrap();
    assert!(matches!(
        images.pull("registry.test/app:2", None).await,
        Err(RuntimeError::Pull { .. })
    ));
    images.pull("registry.test/app:1", None).await.unwrap();
    let auth = RegistryAuth {
        username: "u".into(),
        password: "p".into(),
    };
    images
        .require_auth("registry.test/private:1", auth.clone())
        .unwrap();
    assert!(images.pull("registry.test/private:1", None).await.is_err());
    images
        .pull("registry.test/private:1", Some(&auth))
        .await
        .unwrap();
    assert_eq!(images.pulls().len(), 5);

    let dir = tempfile::tempdir().unwrap();
    let tarball = rkube_testkit::images::busybox_oci_tarball(dir.path(), "busybox:fake").unwrap();
    let imported = images.import(&tarball).await.unwrap();
    assert_eq!(imported.len(), 1);
    assert_eq!(imported[0].name, "docker.io/library/busybox:fake");
    assert_eq!(imported[0].config.cmd, vec!["sh"]);
    assert!(images
        .list()
        .await
        .unwrap()
        .iter()
        .any(|i| i.name == imported[0].name));

    let docker =
        rkube_testkit::images::busybox_docker_tarball(dir.path(), "busybox:saved").unwrap();
    let saved = images.import(&docker).await.unwrap();
    assert_eq!(saved.len(), 1);
    assert_eq!(saved[0].name, "docker.io/library/busybox:saved");
    assert_eq!(saved[0].id, imported[0].id, "same config, same image id");

    let garbage = dir.path().join("garbage.tar");
    std::fs::write(&garbage, b"not a tarball at all").unwrap();
    assert!(images.import(&garbage).await.is_err());
}

async fn attach_input(runtime: &FakeRuntime, id: &str, input: &'static [u8]) -> bool {
    let (sender, receiver) = mpsc::channel(1);
    sender.send(Bytes::from_static(input)).await.unwrap();
    drop(sender);
    runtime.attach(id, receiver).await.is_ok()
}

#[tokio::test]
async fn attach_records_stdin_and_stdin_once_closes_it() {
    let runtime = FakeRuntime::new();
    let images = FakeImageService::new();
    let mut open = config("open", &images);
    open.stdin = true;
    let mut once = config("once", &images);
    once.stdin = true;
    once.stdin_once = true;
    for config in [open, once, config("none", &images)] {
        runtime.create(config).await.unwrap();
    }

    assert!(attach_input(&runtime, "open", b"a").await);
    assert!(attach_input(&runtime, "open", b"b").await);
    assert_eq!(
        runtime.attached_stdin("open"),
        Some((b"ab".to_vec(), false))
    );

    assert!(attach_input(&runtime, "once", b"a").await);
    assert!(!attach_input(&runtime, "once", b"b").await);
    assert_eq!(runtime.attached_stdin("once"), Some((b"a".to_vec(), true)));

    assert!(!attach_input(&runtime, "none", b"a").await);
    assert!(!attach_input(&runtime, "missing", b"a").await);
}
