//! Container logs on a private containerd (as root): the shim appends to the files the
//! kubelet hands it, a container that writes fast has its logs rotated by the kubelet
//! while it runs, a follower sees every line exactly once across the rotations, and after
//! a restart `previous` serves the rotated instance, ending with its last line.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, PostParams};
use kube::Client;
use rkube_cri::cni::{CniConfig, CniNetwork};
use rkube_cri::containerd::{ContainerdConfig, ContainerdImageService, ContainerdRuntime};
use rkube_cri::{ContainerRuntime, PodNetwork};
use rkube_testkit::containerd::ContainerdProcess;
use rkubelet::logrotate::RotationPolicy;
use rkubelet::{KubeletConfig, NodeRuntime};
use serde_json::{json, Value};

const NODE: &str = "logs-node";
const IMAGE: &str = "busybox:rkube-e2e-logs";
const LINES: usize = 200_000;
const MAX_SIZE: u64 = 64 * 1024;
const MAX_FILES: usize = 4;

async fn wait_for(pods: &Api<Pod>, name: &str, what: &str, check: impl Fn(&Value) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let status = pods
            .get_opt(name)
            .await
            .unwrap()
            .map(|p| serde_json::to_value(p.status).unwrap())
            .unwrap_or(Value::Null);
        if check(&status) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pod {name} never got {what}: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The open-file flags (octal, from /proc/<pid>/fdinfo) of every descriptor of any
/// process that has `path` open.
fn open_flags_of(path: &Path) -> Vec<u32> {
    let mut flags = Vec::new();
    for process in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(fds) = std::fs::read_dir(process.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).ok().as_deref() != Some(path) {
                continue;
            }
            let info = process.path().join("fdinfo").join(fd.file_name());
            if let Ok(text) = std::fs::read_to_string(info) {
                flags.extend(
                    text.lines()
                        .filter_map(|line| line.strip_prefix("flags:"))
                        .filter_map(|octal| u32::from_str_radix(octal.trim(), 8).ok()),
                );
            }
        }
    }
    flags
}

fn expected_output() -> String {
    let mut text: String = (0..LINES).map(|i| format!("line {i}\n")).collect();
    text.push_str("done\n");
    text
}

fn log_dir(kubelet_root: &Path, uid: &str) -> PathBuf {
    kubelet_root
        .join("pods")
        .join(uid)
        .join("logs")
        .join("chatty")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logs_rotate_under_a_fast_writer_and_follow_and_previous_still_work() {
    assert!(
        rkube_testkit::containerd::available(),
        "these tests need root and containerd + runc + containernetworking-plugins"
    );
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let config = rkube_apiserver::Config::new(rkube_apiserver::StorageConfig::Embedded {
        data_dir: dir.path().join("store"),
    });
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(rkube_apiserver::run(config, listener, async move {
        let _ = server_stopped.await;
    }));
    let client = Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    while namespaces.get("default").await.is_err() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let containerd = ContainerdProcess::start().await.unwrap();
    let mut cd_config =
        ContainerdConfig::new(containerd.socket_path(), containerd.dir().join("rkube"));
    cd_config.runc_root = containerd.runc_root();
    let runtime = Arc::new(ContainerdRuntime::connect(&cd_config).await.unwrap());
    let images = Arc::new(ContainerdImageService::connect(&cd_config).await.unwrap());
    let image_dir = dir.path().join("images");
    std::fs::create_dir_all(&image_dir).unwrap();
    rkube_testkit::images::busybox_oci_tarball(&image_dir, IMAGE).unwrap();
    let pid = std::process::id();
    let cidr = format!("10.{}.{}.0/24", 150 + pid % 50, (pid / 50) % 250);
    let mut cni = CniConfig::new(cidr.clone(), dir.path().join("cni"));
    cni.bridge_name = format!("rkl{:06x}", pid & 0xff_ffff);
    cni.network_name = format!("rkl-{pid:08x}");
    cni.forward_chain = format!("RKL-{pid:08x}");
    cni.netns_dir = dir.path().join("netns");
    let network = Arc::new(CniNetwork::new(cni.clone()).unwrap());
    let kubelet_root = dir.path().join("kubelet");
    let mut config = KubeletConfig::new(
        client.clone(),
        NODE,
        kubelet_root.clone(),
        NodeRuntime {
            runtime: runtime.clone(),
            images,
            network: network.clone(),
            version: "containerd://1.6".into(),
        },
    );
    config.pod_cidr = Some(cidr);
    config.image_dir = Some(image_dir);
    config.backoff_initial = Duration::from_secs(1);
    config.backoff_max = Duration::from_secs(2);
    config.container_log_rotation = RotationPolicy::new(MAX_SIZE, MAX_FILES).unwrap();
    config.container_log_monitor_interval = Duration::from_millis(50);
    let kubelet_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let kubelet_port = kubelet_listener.local_addr().unwrap().port();
    let (stop_kubelet, kubelet_stopped) = tokio::sync::oneshot::channel::<()>();
    let kubelet = tokio::spawn(rkubelet::run(config, kubelet_listener, async move {
        let _ = kubelet_stopped.await;
    }));

    // Waits for a go file, writes fast (about 10 bytes a line), then fails, so it restarts.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "chatty"},
        "spec": {
            "nodeName": NODE,
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "chatty", "image": IMAGE, "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", format!(
                    "until [ -e /tmp/go ]; do sleep 0.1; done; \
                     i=0; while [ $i -lt {LINES} ]; do echo \"line $i\"; i=$((i+1)); \
                     [ $((i % 4000)) -eq 0 ] && sleep 0.05; done; \
                     echo done; exit 1"
                )]
            }]
        }
    }))
    .unwrap();
    let uid = pods
        .create(&PostParams::default(), &pod)
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap();
    wait_for(&pods, "chatty", "Running", |s| {
        s["containerStatuses"][0]["state"]["running"].is_object()
    })
    .await;
    let logs = log_dir(&kubelet_root, &uid);
    let live = logs.join("0.stdout");

    // The design of rotation rests on this: the shim appends.
    let flags = open_flags_of(&live);
    assert!(!flags.is_empty(), "nothing has {} open", live.display());
    assert!(
        flags.iter().all(|f| f & 0o2000 != 0),
        "the shim's descriptors lack O_APPEND (0o2000): {flags:?}"
    );

    let follow = reqwest::get(format!(
        "http://127.0.0.1:{kubelet_port}/containerLogs/default/chatty/chatty?follow=true"
    ))
    .await
    .unwrap();
    assert_eq!(follow.status().as_u16(), 200);
    let followed = tokio::spawn(follow.text());
    let container_id = runtime
        .list()
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.labels.get(rkube_cri::labels::POD_UID) == Some(&uid))
        .unwrap()
        .id;
    let (stdout, _stdout_receiver) = tokio::sync::mpsc::channel(16);
    let (stderr, _stderr_receiver) = tokio::sync::mpsc::channel(16);
    let go = runtime
        .exec(
            &container_id,
            rkube_cri::ExecConfig {
                command: vec!["touch".into(), "/tmp/go".into()],
                env: Vec::new(),
                tty: false,
                stdin: false,
            },
            rkube_cri::ExecIo {
                stdin: None,
                stdout,
                stderr: Some(stderr),
                resize: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(go, 0);

    let followed = tokio::time::timeout(Duration::from_secs(120), followed)
        .await
        .expect("the follow ends when the container exits")
        .unwrap()
        .unwrap();
    assert!(
        followed == expected_output(),
        "follow lost or repeated lines: {} bytes, want {}",
        followed.len(),
        expected_output().len()
    );

    // After the restart, `previous` is instance 0: its newest lines, contiguous, complete.
    wait_for(&pods, "chatty", "a restart", |s| {
        s["containerStatuses"][0]["restartCount"]
            .as_i64()
            .is_some_and(|n| n >= 1)
    })
    .await;
    // The kubelet rotated while the container wrote (instance 0 no longer changes now that
    // it has exited and the rotator has had its pass): segments exist, within the count.
    let files: Vec<PathBuf> = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("0.stdout"))
        .collect();
    assert!(files.len() > 1, "never rotated: {files:?}");
    assert!(files.len() <= MAX_FILES, "{files:?}");

    let previous = reqwest::get(format!(
        "http://127.0.0.1:{kubelet_port}/containerLogs/default/chatty/chatty?previous=true"
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    let kept: u64 = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    // Exactly the kept files' bytes, and older files were dropped.
    assert_eq!(previous.len() as u64, kept);
    assert!(!previous.starts_with("line 0\n"), "nothing was pruned");
    assert!(
        expected_output().ends_with(&previous),
        "previous is not the end of the output"
    );
    let tail = reqwest::get(format!(
        "http://127.0.0.1:{kubelet_port}/containerLogs/default/chatty/chatty?previous=true&tailLines=2"
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert_eq!(tail, format!("line {}\ndone\n", LINES - 1));
    for file in &files {
        if let Ok(metadata) = std::fs::metadata(file) {
            assert!(
                metadata.blocks() * 512 + metadata.blksize() >= metadata.len(),
                "{} is sparse",
                file.display()
            );
        }
    }

    // Cleanup: the kubelet leaves containers on shutdown, so remove what is left here.
    let _ = stop_kubelet.send(());
    kubelet.await.unwrap().unwrap();
    for c in runtime.list().await.unwrap() {
        let _ = runtime.signal(&c.id, 9).await;
        let _ = runtime.remove(&c.id).await;
    }
    let _ = network.teardown(&uid).await;
    let _ = std::process::Command::new("ip")
        .args(["link", "del", &cni.bridge_name])
        .output();
    let iptables = |args: &[&str]| {
        std::process::Command::new("iptables")
            .args(["-w", "-t", "filter"])
            .args(args)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    while iptables(&["-D", "FORWARD", "-j", &cni.forward_chain]) {}
    iptables(&["-F", &cni.forward_chain]);
    iptables(&["-X", &cni.forward_chain]);
    drop(containerd);
    let _ = stop_server.send(());
}
