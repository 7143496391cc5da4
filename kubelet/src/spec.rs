//! The OCI runtime spec of one container, built from the pod, the container and the image
//! config (runc's defaults for mounts, capabilities and masked paths, like containerd's
//! CRI plugin would produce).

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod};
use rkube_api::Quantity;
use rkube_cri::ImageConfig;
use serde_json::{json, Value};

use crate::env::expand;

/// A container that cannot be built; the message goes into the waiting state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Upstream's CreateContainerConfigError (missing ConfigMap/Secret, bad reference).
    #[error("{0}")]
    Config(String),
    /// Upstream's CreateContainerError (nothing to run, bad user).
    #[error("{0}")]
    Create(String),
}

/// A bind mount of a prepared volume or a kubelet-written file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindMount {
    pub source: String,
    pub destination: String,
    pub read_only: bool,
}

/// Everything a container's spec is built from besides the pod and the container.
pub struct SpecInput<'a> {
    pub pod: &'a Pod,
    pub container: &'a Container,
    pub container_id: &'a str,
    pub image: &'a ImageConfig,
    /// The container's own env (expanded, in order).
    pub env: &'a [(String, String)],
    pub netns_path: &'a Path,
    pub mounts: &'a [BindMount],
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

const ALL_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
];

const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];

const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The process args by upstream's rules: `command` replaces the image entrypoint and
/// drops its cmd, `args` replace the cmd; `$(VAR)` refers to the container's env.
pub fn process_args(
    container: &Container,
    image: &ImageConfig,
    env: &[(String, String)],
) -> Vec<String> {
    let command = container.command.clone().unwrap_or_default();
    let args = container.args.clone().unwrap_or_default();
    let (command, args) = match (command.is_empty(), args.is_empty()) {
        (true, true) => (image.entrypoint.clone(), image.cmd.clone()),
        (true, false) => (image.entrypoint.clone(), args),
        (false, _) => (command, args),
    };
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    command
        .iter()
        .chain(args.iter())
        .map(|s| expand(s, lookup))
        .collect()
}

/// Image env overridden by the container's env, in `KEY=value` form, with a PATH and HOSTNAME.
pub fn merged_env(image_env: &[String], env: &[(String, String)], hostname: &str) -> Vec<String> {
    let mut merged: Vec<(String, String)> = Vec::new();
    let mut set = |name: &str, value: &str| {
        if let Some(existing) = merged.iter_mut().find(|(n, _)| n == name) {
            existing.1 = value.to_string();
        } else {
            merged.push((name.to_string(), value.to_string()));
        }
    };
    set("PATH", DEFAULT_PATH);
    set("HOSTNAME", hostname);
    for entry in image_env {
        let (name, value) = entry.split_once('=').unwrap_or((entry.as_str(), ""));
        set(name, value);
    }
    for (name, value) in env {
        set(name, value);
    }
    merged
        .into_iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect()
}

/// The container's `requests` or `limits` amount of `name`. An unparsable amount never
/// passed API validation and counts as unset.
fn resource(container: &Container, which: &str, name: &str) -> Option<Quantity> {
    let resources = container.resources.as_ref()?;
    let map = match which {
        "requests" => resources.requests.as_ref(),
        _ => resources.limits.as_ref(),
    }?;
    map.get(name).and_then(|q| Quantity::try_from(q).ok())
}

/// linux.resources: cpu shares from the request (the limit when there is none; 2 for
/// best effort), CFS quota from the cpu limit, memory limit.
pub fn linux_resources(container: &Container, privileged: bool) -> Value {
    let cpu_request = resource(container, "requests", "cpu")
        .or_else(|| resource(container, "limits", "cpu"))
        .map(|q| q.milli_value());
    // Upstream's MilliCPUToShares bounds: at least 2, at most 262144.
    let shares = cpu_request
        .map(|m| (m.saturating_mul(1024) / 1000).clamp(2, 262_144))
        .unwrap_or(2);
    let mut cpu = json!({"shares": shares});
    // A zero limit means no quota, as upstream's milliCPUToQuota; otherwise at least 1ms.
    if let Some(limit) = resource(container, "limits", "cpu")
        .map(|q| q.milli_value())
        .filter(|&m| m > 0)
    {
        let period = 100_000i64;
        cpu["period"] = json!(period);
        cpu["quota"] = json!((limit.saturating_mul(period) / 1000).max(1000));
    }
    let mut out = json!({
        "devices": [{"allow": privileged, "access": "rwm"}],
        "cpu": cpu,
    });
    if let Some(limit) = resource(container, "limits", "memory").map(|q| q.value()) {
        out["memory"] = json!({"limit": limit});
    }
    out
}

fn numeric_user(user: &str) -> Result<(Option<i64>, Option<i64>), SpecError> {
    if user.is_empty() {
        return Ok((None, None));
    }
    let (u, g) = user.split_once(':').unwrap_or((user, ""));
    let uid = u.parse::<i64>().map_err(|_| {
        SpecError::Create(format!(
            "image user {user:?} is not numeric; set securityContext.runAsUser"
        ))
    })?;
    let gid = if g.is_empty() {
        None
    } else {
        Some(g.parse::<i64>().map_err(|_| {
            SpecError::Create(format!(
                "image group in {user:?} is not numeric; set securityContext.runAsGroup"
            ))
        })?)
    };
    Ok((Some(uid), gid))
}

/// The pod's hostname as seen inside its containers.
pub fn pod_hostname(pod: &Pod) -> String {
    let name = pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    // A hostname is at most 63 bytes; upstream truncates long pod names the same way.
    name.chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches(['-', '.'])
        .to_string()
}

pub fn build_spec(input: &SpecInput<'_>) -> Result<oci_spec::runtime::Spec, SpecError> {
    let SpecInput {
        pod,
        container,
        container_id,
        image,
        env,
        netns_path,
        mounts,
    } = input;
    let args = process_args(container, image, env);
    if args.is_empty() {
        return Err(SpecError::Create(
            "failed to generate container spec: no command specified".to_string(),
        ));
    }
    let pod_spec = pod.spec.as_ref();
    let pod_security = pod_spec.and_then(|s| s.security_context.as_ref());
    let security = container.security_context.as_ref();
    let privileged = security.and_then(|s| s.privileged).unwrap_or(false);
    let (image_uid, image_gid) = numeric_user(image.user.as_deref().unwrap_or(""))?;
    let uid = security
        .and_then(|s| s.run_as_user)
        .or_else(|| pod_security.and_then(|s| s.run_as_user))
        .or(image_uid)
        .unwrap_or(0);
    let gid = security
        .and_then(|s| s.run_as_group)
        .or_else(|| pod_security.and_then(|s| s.run_as_group))
        .or(image_gid)
        .unwrap_or(0);
    let mut additional_gids: Vec<i64> = Vec::new();
    if let Some(fs_group) = pod_security.and_then(|s| s.fs_group) {
        additional_gids.push(fs_group);
    }
    for g in pod_security
        .and_then(|s| s.supplemental_groups.clone())
        .unwrap_or_default()
    {
        if !additional_gids.contains(&g) {
            additional_gids.push(g);
        }
    }
    let capabilities: Vec<&str> = if privileged {
        ALL_CAPABILITIES.to_vec()
    } else {
        let mut caps: Vec<&str> = DEFAULT_CAPABILITIES.to_vec();
        let configured = security.and_then(|s| s.capabilities.as_ref());
        let with_prefix = |c: &String| {
            if c.starts_with("CAP_") {
                c.clone()
            } else {
                format!("CAP_{c}")
            }
        };
        let added: Vec<String> = configured
            .and_then(|c| c.add.as_ref())
            .map(|a| a.iter().map(with_prefix).collect())
            .unwrap_or_default();
        let dropped: Vec<String> = configured
            .and_then(|c| c.drop.as_ref())
            .map(|a| a.iter().map(with_prefix).collect())
            .unwrap_or_default();
        for cap in &added {
            if let Some(known) = ALL_CAPABILITIES.iter().find(|k| **k == cap.as_str()) {
                if !caps.contains(known) {
                    caps.push(known);
                }
            }
        }
        if dropped.iter().any(|d| d == "CAP_ALL") {
            caps.clear();
        }
        caps.retain(|c| !dropped.iter().any(|d| d == c));
        caps
    };
    let hostname = pod_hostname(pod);
    let cwd = container
        .working_dir
        .clone()
        .filter(|w| !w.is_empty())
        .or_else(|| image.working_dir.clone().filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".to_string());
    let sys_options = if privileged {
        json!(["nosuid", "noexec", "nodev"])
    } else {
        json!(["nosuid", "noexec", "nodev", "ro"])
    };
    let mut oci_mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": sys_options}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
    ];
    for mount in mounts.iter() {
        let mode = if mount.read_only { "ro" } else { "rw" };
        oci_mounts.push(json!({
            "destination": mount.destination,
            "type": "bind",
            "source": mount.source,
            "options": ["rbind", "rprivate", mode],
        }));
    }
    let pod_uid = pod.metadata.uid.as_deref().unwrap_or("");
    let mut linux = json!({
        "namespaces": [
            {"type": "pid"},
            {"type": "ipc"},
            {"type": "uts"},
            {"type": "mount"},
            {"type": "network", "path": netns_path.to_string_lossy()},
        ],
        "cgroupsPath": format!("/{}/{container_id}", pod_cgroup(pod_uid)),
        "resources": linux_resources(container, privileged),
    });
    if !privileged {
        linux["maskedPaths"] = json!(MASKED_PATHS);
        linux["readonlyPaths"] = json!(READONLY_PATHS);
    }
    let spec = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": container.tty.unwrap_or(false),
            "user": {"uid": uid, "gid": gid, "additionalGids": additional_gids},
            "args": args,
            "env": merged_env(&image.env, env, &hostname),
            "cwd": cwd,
            "capabilities": {
                "bounding": capabilities,
                "effective": capabilities,
                "permitted": capabilities,
            },
            // No rlimits: raising RLIMIT_NOFILE needs CAP_SYS_RESOURCE, which nested nodes lack; the
            // process inherits the shim's limits as under containerd's CRI plugin.
            "noNewPrivileges": security.and_then(|s| s.allow_privilege_escalation) == Some(false),
        },
        "root": {
            "path": "rootfs",
            "readonly": security.and_then(|s| s.read_only_root_filesystem).unwrap_or(false),
        },
        "hostname": hostname,
        "mounts": oci_mounts,
        "linux": linux,
    });
    serde_json::from_value(spec)
        .map_err(|e| SpecError::Create(format!("failed to generate container spec: {e}")))
}

/// The pod's parent cgroup, relative to a hierarchy's root. runc creates it with the
/// pod's first container and never removes it, so the kubelet does ([`remove_pod_cgroups`]).
pub fn pod_cgroup(pod_uid: &str) -> String {
    format!("rkube/pod{pod_uid}")
}

/// Removes the pod's cgroup, and the container cgroups below it, from every hierarchy
/// under `cgroup_root` (cgroup v2 at the root itself, v1 one per controller below it).
/// Only empty cgroups go: rmdir refuses one that still has processes, so this never takes
/// one from a live container (whose runtime must stop it first). Returns the cgroups
/// that could not be removed.
pub fn remove_pod_cgroups(cgroup_root: &Path, pod_uid: &str) -> Vec<PathBuf> {
    // Pod UIDs are server-generated; anything else must not become a path.
    if pod_uid.is_empty()
        || !pod_uid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Vec::new();
    }
    let relative = pod_cgroup(pod_uid);
    let mut dirs = vec![cgroup_root.join(&relative)];
    if let Ok(hierarchies) = std::fs::read_dir(cgroup_root) {
        dirs.extend(
            hierarchies
                .flatten()
                .filter(|h| h.file_type().is_ok_and(|t| t.is_dir()))
                .map(|h| h.path().join(&relative)),
        );
    }
    let mut left = Vec::new();
    for dir in dirs {
        // A container cgroup outlives its container when the runtime died before
        // deleting it; the pod's cgroup cannot go while one remains.
        if let Ok(children) = std::fs::read_dir(&dir) {
            for child in children.flatten() {
                if child.file_type().is_ok_and(|t| t.is_dir()) {
                    remove_cgroup_dir(&child.path(), &mut left);
                }
            }
        }
        remove_cgroup_dir(&dir, &mut left);
    }
    left
}

fn remove_cgroup_dir(dir: &Path, left: &mut Vec<PathBuf>) {
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => left.push(dir.to_path_buf()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(container: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "uid-1"},
            "spec": {"containers": [container], "securityContext": {"runAsGroup": 7, "fsGroup": 2000}}
        }))
        .unwrap()
    }

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["default-arg".into()],
            env: vec![
                "PATH=/bin".into(),
                "FROM_IMAGE=1".into(),
                "OVERRIDE=image".into(),
            ],
            working_dir: Some("/work".into()),
            user: Some("1000".into()),
        }
    }

    fn container_of(p: &Pod) -> Container {
        p.spec.as_ref().unwrap().containers[0].clone()
    }

    #[test]
    fn args_follow_kubernetes_command_rules() {
        let img = image();
        let env = vec![("NAME".to_string(), "world".to_string())];
        let c = |v: Value| -> Container { serde_json::from_value(v).unwrap() };
        assert_eq!(
            process_args(&c(json!({"name": "a"})), &img, &env),
            ["/entry", "default-arg"]
        );
        assert_eq!(
            process_args(&c(json!({"name": "a", "args": ["x"]})), &img, &env),
            ["/entry", "x"]
        );
        assert_eq!(
            process_args(&c(json!({"name": "a", "command": ["/bin/sh"]})), &img, &env),
            ["/bin/sh"]
        );
        assert_eq!(
            process_args(
                &c(json!({"name": "a", "command": ["echo"], "args": ["hi $(NAME)", "$(UNSET)"]})),
                &img,
                &env
            ),
            ["echo", "hi world", "$(UNSET)"]
        );
    }

    #[test]
    fn spec_has_runc_defaults_user_resources_namespaces_and_mounts() {
        let p = pod(json!({
            "name": "c", "image": "busybox",
            "securityContext": {"runAsUser": 33},
            "resources": {"requests": {"cpu": "250m"}, "limits": {"cpu": "500m", "memory": "64Mi"}},
            "env": [{"name": "OVERRIDE", "value": "container"}]
        }));
        let c = container_of(&p);
        let env = vec![("OVERRIDE".to_string(), "container".to_string())];
        let mounts = vec![BindMount {
            source: "/var/lib/x/etc-hosts".into(),
            destination: "/etc/hosts".into(),
            read_only: false,
        }];
        let spec = build_spec(&SpecInput {
            pod: &p,
            container: &c,
            container_id: "cid",
            image: &image(),
            env: &env,
            netns_path: Path::new("/var/run/netns/pod"),
            mounts: &mounts,
        })
        .unwrap();
        let v = serde_json::to_value(&spec).unwrap();
        assert_eq!(v["process"]["args"], json!(["/entry", "default-arg"]));
        assert_eq!(v["process"]["user"]["uid"], 33);
        assert_eq!(v["process"]["user"]["gid"], 7);
        assert_eq!(v["process"]["user"]["additionalGids"], json!([2000]));
        assert_eq!(v["process"]["cwd"], "/work");
        let env: Vec<&str> = v["process"]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        assert!(env.contains(&"PATH=/bin"));
        assert!(env.contains(&"FROM_IMAGE=1"));
        assert!(env.contains(&"OVERRIDE=container"));
        assert!(env.contains(&"HOSTNAME=web"));
        assert!(!env.contains(&"OVERRIDE=image"));
        assert_eq!(v["linux"]["cgroupsPath"], "/rkube/poduid-1/cid");
        assert_eq!(v["linux"]["resources"]["cpu"]["shares"], 256);
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 50000);
        assert_eq!(v["linux"]["resources"]["cpu"]["period"], 100000);
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 64 * 1024 * 1024);
        let namespaces = v["linux"]["namespaces"].as_array().unwrap();
        assert_eq!(namespaces.len(), 5);
        assert!(namespaces.contains(&json!({"type": "network", "path": "/var/run/netns/pod"})));
        let destinations: Vec<&str> = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        for d in [
            "/proc",
            "/dev",
            "/dev/shm",
            "/dev/mqueue",
            "/sys",
            "/etc/hosts",
        ] {
            assert!(
                destinations.contains(&d),
                "{d} missing from {destinations:?}"
            );
        }
        assert!(v["linux"]["maskedPaths"].as_array().unwrap().len() > 3);
        assert!(!v["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap()
            .contains(&json!("CAP_SYS_ADMIN")));
    }

    #[test]
    fn privileged_gets_all_capabilities_and_devices() {
        let p = pod(
            json!({"name": "c", "image": "i", "command": ["sh"], "securityContext": {"privileged": true}}),
        );
        let c = container_of(&p);
        let spec = build_spec(&SpecInput {
            pod: &p,
            container: &c,
            container_id: "id",
            image: &ImageConfig::default(),
            env: &[],
            netns_path: Path::new("/n"),
            mounts: &[],
        })
        .unwrap();
        let v = serde_json::to_value(&spec).unwrap();
        assert!(v["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap()
            .contains(&json!("CAP_SYS_ADMIN")));
        assert_eq!(v["linux"]["resources"]["devices"][0]["allow"], true);
        assert!(v["linux"].get("maskedPaths").is_none());
        assert_eq!(v["linux"]["resources"]["cpu"]["shares"], 2);
    }

    #[test]
    fn nothing_to_run_and_named_users_are_create_errors() {
        let p = pod(json!({"name": "c", "image": "i"}));
        let c = container_of(&p);
        let build = |img: &ImageConfig| {
            build_spec(&SpecInput {
                pod: &p,
                container: &c,
                container_id: "id",
                image: img,
                env: &[],
                netns_path: Path::new("/n"),
                mounts: &[],
            })
        };
        assert!(
            matches!(build(&ImageConfig::default()), Err(SpecError::Create(m)) if m.contains("no command specified"))
        );
        let named = ImageConfig {
            cmd: vec!["sh".into()],
            user: Some("nobody".into()),
            ..ImageConfig::default()
        };
        assert!(matches!(build(&named), Err(SpecError::Create(_))));
    }

    /// Regression: the f64 parser dropped `n`, `u`, `E` and `Ei` amounts, so a cpu limit of
    /// `100n` left the container without any CFS quota.
    #[test]
    fn cpu_and_memory_limits_in_every_suffix_reach_the_spec() {
        let resources = |limits: Value| {
            let p = pod(json!({"name": "c", "image": "i", "resources": {"limits": limits}}));
            linux_resources(&container_of(&p), false)
        };
        let tiny = resources(json!({"cpu": "100n", "memory": "1Ei"}));
        assert_eq!(tiny["cpu"]["period"], 100_000);
        assert_eq!(
            tiny["cpu"]["quota"], 1000,
            "100n rounds up to 1m; the quota floor is 1ms"
        );
        assert_eq!(tiny["cpu"]["shares"], 2);
        assert_eq!(tiny["memory"]["limit"], 1i64 << 60);
        let micro = resources(json!({"cpu": "250000u", "memory": "0.5Gi"}));
        assert_eq!(micro["cpu"]["quota"], 25_000);
        assert_eq!(micro["cpu"]["shares"], 256);
        assert_eq!(micro["memory"]["limit"], 1i64 << 29);
    }
}
