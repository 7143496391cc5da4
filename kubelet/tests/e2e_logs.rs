//! Container logs on a private containerd (as root): the shim appends to the files the
//! kubelet hands it, a container that writes fast has its logs rotated by the kubelet
//! while it runs, a follower sees every line exactly once across the rotations, and after
//! a restart `previous` serves the rotated instance, ending with its last line.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{spawn_kubelet, wait_for_status, RealNode, RealNodeParams};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use rkube_cri::ContainerRuntime;
use rkubelet::logrotate::RotationPolicy;
use serde_json::json;

const NODE: &str = "logs-node";
const IMAGE: &str = "busybox:rkube-e2e-logs";
const LINES: usize = 200_000;
const MAX_SIZE: u64 = 64 * 1024;
const MAX_FILES: usize = 4;

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
    let node = RealNode::start(RealNodeParams {
        node: NODE,
        image: IMAGE,
        name_prefix: "rkl",
        cidr_octet_base: 150,
    })
    .await;
    let client = node.client.clone();
    let runtime = node.runtime.clone();
    let kubelet_root = node.kubelet_root();
    let mut config = node.kubelet_config();
    config.backoff_initial = Duration::from_secs(1);
    config.backoff_max = Duration::from_secs(2);
    config.container_log_rotation = RotationPolicy::new(MAX_SIZE, MAX_FILES).unwrap();
    config.container_log_monitor_interval = Duration::from_millis(50);
    let kubelet = spawn_kubelet(config).await;
    let kubelet_port = kubelet.port;

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
    wait_for_status(&pods, "chatty", "Running", |s| {
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
    wait_for_status(&pods, "chatty", "a restart", |s| {
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

    kubelet.stop().await;
    node.clean_up().await;
}
