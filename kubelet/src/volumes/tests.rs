use super::*;
use k8s_openapi::ByteString;
use serde_json::json;

fn pod(volumes: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "ns", "uid": "u1", "labels": {"b": "2", "a": "1"}},
        "spec": {"containers": [{"name": "c", "image": "i"}], "volumes": volumes}
    }))
    .unwrap()
}

fn sources(color: &str) -> Sources {
    let mut s = Sources::default();
    s.config_maps.insert(
        "cfg".into(),
        Some(
            serde_json::from_value(
                json!({"metadata": {"name": "cfg"}, "data": {"color": color, "size": "L"}}),
            )
            .unwrap(),
        ),
    );
    let mut secret: k8s_openapi::api::core::v1::Secret =
        serde_json::from_value(json!({"metadata": {"name": "sec"}})).unwrap();
    secret.data = Some([("token".to_string(), ByteString(b"abc".to_vec()))].into());
    s.secrets.insert("sec".into(), Some(secret));
    s
}

#[test]
fn volumes_are_written_and_refreshed() {
    let tmp = tempfile::tempdir().unwrap();
    let p = pod(json!([
        {"name": "cfg", "configMap": {"name": "cfg"}},
        {"name": "one", "configMap": {"name": "cfg", "items": [{"key": "size", "path": "sub/size.txt", "mode": 0o600}]}},
        {"name": "sec", "secret": {"secretName": "sec", "defaultMode": 0o400}},
        {"name": "scratch", "emptyDir": {}},
        {"name": "info", "downwardAPI": {"items": [
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}
        ]}}
    ]));
    let paths = prepare(tmp.path(), &p, &PodFacts::default(), &sources("blue")).unwrap();
    let read = |v: &str, f: &str| std::fs::read_to_string(paths[v].join(f)).unwrap();
    assert_eq!(read("cfg", "color"), "blue");
    assert_eq!(read("one", "sub/size.txt"), "L");
    assert!(!paths["one"].join("color").exists());
    assert_eq!(read("sec", "token"), "abc");
    let mode = std::fs::metadata(paths["sec"].join("token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o400);
    assert!(paths["scratch"].is_dir());
    assert_eq!(read("info", "labels"), "a=\"1\"\nb=\"2\"\n");
    assert_eq!(read("info", "name"), "web");

    prepare(tmp.path(), &p, &PodFacts::default(), &sources("red")).unwrap();
    assert_eq!(read("cfg", "color"), "red");
    let versions = std::fs::read_dir(&paths["cfg"])
        .unwrap()
        .filter(|e| {
            let n = e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .into_owned();
            n.starts_with("..") && n != "..data"
        })
        .count();
    assert_eq!(versions, 1, "old versions are removed");
}

#[test]
fn missing_objects_and_keys_fail_setup() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = pod(json!([{"name": "v", "configMap": {"name": "nope"}}]));
    let err = prepare(tmp.path(), &missing, &PodFacts::default(), &sources("x")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "MountVolume.SetUp failed for volume \"v\" : configmap \"nope\" not found"
    );
    let optional = pod(json!([{"name": "v", "configMap": {"name": "nope", "optional": true}}]));
    assert!(prepare(tmp.path(), &optional, &PodFacts::default(), &sources("x")).is_ok());
    let bad_key = pod(
        json!([{"name": "v", "secret": {"secretName": "sec", "items": [{"key": "k", "path": "p"}]}}]),
    );
    assert!(
        prepare(tmp.path(), &bad_key, &PodFacts::default(), &sources("x"))
            .unwrap_err()
            .to_string()
            .contains("not found in Secret ns/sec")
    );
}

#[test]
fn file_modes_lose_setuid_setgid_and_sticky_bits() {
    let tmp = tempfile::tempdir().unwrap();
    let p = pod(json!([
        {"name": "cfg", "configMap": {"name": "cfg", "defaultMode": 0o4755}},
        {"name": "item", "configMap": {"name": "cfg", "items": [{"key": "size", "path": "s", "mode": 0o6777}]}},
        {"name": "sec", "secret": {"secretName": "sec", "defaultMode": 0o1777}},
        {"name": "info", "downwardAPI": {"defaultMode": 0o2750, "items": [
            {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
            {"path": "labels", "mode": 0o7444, "fieldRef": {"fieldPath": "metadata.labels"}}
        ]}},
        {"name": "proj", "projected": {"sources": [{"configMap": {"name": "cfg", "items": [{"key": "color", "path": "c", "mode": 0o4700}]}}]}}
    ]));
    let paths = prepare(tmp.path(), &p, &PodFacts::default(), &sources("blue")).unwrap();
    let mode = |v: &str, f: &str| {
        std::fs::metadata(paths[v].join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("cfg", "color"), 0o755);
    assert_eq!(mode("item", "s"), 0o777);
    assert_eq!(mode("sec", "token"), 0o777);
    assert_eq!(mode("info", "name"), 0o750);
    assert_eq!(mode("info", "labels"), 0o444);
    assert_eq!(mode("proj", "c"), 0o700);
}

fn sub_path_error(root: &Path, sub_path: &str) -> String {
    resolve_sub_path(root, "data", sub_path)
        .map(|r| r.path().to_path_buf())
        .expect_err(sub_path)
        .to_string()
}

/// Where a resolved subPath's descriptor points.
fn resolved(root: &Path, sub_path: &str) -> PathBuf {
    let resolved = resolve_sub_path(root, "data", sub_path).unwrap();
    assert_eq!(
        std::fs::read_link(resolved.fd_path()).unwrap(),
        resolved.path()
    );
    resolved.path().to_path_buf()
}

#[test]
fn sub_paths_that_leave_the_volume_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let root = tmp.path().join("volume");
    std::fs::create_dir_all(root.join("real/dir")).unwrap();
    symlink("/", root.join("to-root")).unwrap();
    symlink("../outside", root.join("up")).unwrap();
    symlink("hop2", root.join("hop1")).unwrap();
    symlink("hop3", root.join("hop2")).unwrap();
    symlink("/etc", root.join("hop3")).unwrap();
    // Absolute even though it names a directory of this very volume: on the host
    // it would not be resolved the way the container sees it.
    symlink(root.join("real"), root.join("absolute")).unwrap();
    symlink("real/../../outside", root.join("sneaky")).unwrap();

    let outside_message = "is outside of the volume \"data\"";
    // Through the symlink to /, a directory that would be created in this temp dir.
    let through_root = format!("to-root{}/created", outside.display());
    for sub_path in [
        "to-root",
        "to-root/etc",
        through_root.as_str(),
        "up",
        "up/new-dir",
        "hop1",
        "hop1/passwd",
        "absolute/dir",
        "sneaky/x",
    ] {
        let message = sub_path_error(&root, sub_path);
        assert!(message.contains(outside_message), "{sub_path}: {message}");
    }
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing created outside"
    );
    for sub_path in ["../outside", "real/../../outside", "/etc", "a/../b", ""] {
        let message = sub_path_error(&root, sub_path);
        assert!(
            message.starts_with("invalid subPath"),
            "{sub_path}: {message}"
        );
    }
}

#[test]
fn sub_paths_inside_the_volume_resolve_and_missing_directories_are_made() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("volume");
    std::fs::create_dir_all(root.join("real/dir")).unwrap();
    std::fs::write(root.join("real/file"), "x").unwrap();
    symlink("real/dir", root.join("alias")).unwrap();
    let root = root.canonicalize().unwrap();

    assert_eq!(resolved(&root, "real/dir"), root.join("real/dir"));
    assert_eq!(resolved(&root, "real/file"), root.join("real/file"));
    assert_eq!(resolved(&root, "alias"), root.join("real/dir"));
    assert_eq!(
        resolved(&root, "alias/new/nested"),
        root.join("real/dir/new/nested")
    );
    assert!(root.join("real/dir/new/nested").is_dir());
    assert_eq!(resolved(&root, "a/b/c"), root.join("a/b/c"));
    assert!(root.join("a/b/c").is_dir());

    // A key of a ConfigMap volume: symlinks through ..data, all inside the volume.
    let p = pod(json!([
        {"name": "cfg", "configMap": {"name": "cfg", "items": [{"key": "size", "path": "sub/size.txt"}]}}
    ]));
    let paths = prepare(tmp.path(), &p, &PodFacts::default(), &sources("blue")).unwrap();
    let file = resolve_sub_path(&paths["cfg"], "cfg", "sub/size.txt")
        .unwrap()
        .path()
        .to_path_buf();
    assert_eq!(std::fs::read_to_string(file).unwrap(), "L");
}

/// As root (CI is): the kubelet's own bind mount of a subPath.
#[test]
fn a_sub_path_mount_is_not_redirected_by_a_later_swap_and_pod_dir_removal_unmounts_it() {
    let tmp = tempfile::tempdir().unwrap();
    let volume = tmp.path().join("hostpath-volume");
    std::fs::create_dir_all(volume.join("logs/app")).unwrap();
    std::fs::write(volume.join("logs/app/keep"), "volume data").unwrap();
    let secret = tmp.path().join("secret");
    std::fs::create_dir_all(&secret).unwrap();
    std::fs::write(secret.join("key"), "host secret").unwrap();
    let pod_dir = tmp.path().join("pod");
    let target = sub_path_target(&pod_dir, "data", "main", 0).unwrap();

    let resolved = resolve_sub_path(&volume, "data", "logs/app").unwrap();
    // The container swaps the checked directory for a symlink out of the volume
    // before the mount is made.
    std::fs::rename(volume.join("logs/app"), volume.join("logs/moved")).unwrap();
    symlink(&secret, volume.join("logs/app")).unwrap();
    resolved.bind(&target).unwrap();
    assert_eq!(
        std::fs::read_to_string(target.join("keep")).unwrap(),
        "volume data"
    );
    assert!(
        !target.join("key").exists(),
        "the mount followed the swapped-in symlink"
    );
    // Mounting again (a restarted container) replaces the mount instead of stacking.
    resolved.bind(&target).unwrap();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let target_text = target.to_string_lossy().into_owned();
    assert_eq!(
        mounts.lines().filter(|l| l.contains(&target_text)).count(),
        1
    );

    assert!(sub_path_target(&pod_dir, "..", "main", 0).is_none());
    assert!(sub_path_target(&pod_dir, "data", "a/b", 0).is_none());

    // Removing the pod directory unmounts first: the volume's files survive.
    remove_pod_dir(&pod_dir).unwrap();
    assert!(!pod_dir.exists());
    assert_eq!(
        std::fs::read_to_string(volume.join("logs/moved/keep")).unwrap(),
        "volume data"
    );
    assert_eq!(
        std::fs::read_to_string(secret.join("key")).unwrap(),
        "host secret"
    );
}

#[test]
fn hosts_and_resolv_conf() {
    let p = pod(json!([]));
    let hosts = hosts_file("10.1.0.4", "web", &p);
    assert!(hosts.contains("127.0.0.1\tlocalhost\n"));
    assert!(hosts.contains("10.1.0.4\tweb\n"));
    let resolv = resolv_conf("ns", "cluster.local", &["10.96.0.10".to_string()]);
    assert_eq!(resolv, "nameserver 10.96.0.10\nsearch ns.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n");
}
