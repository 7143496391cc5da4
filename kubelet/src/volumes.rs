//! Pod volumes on the node: emptyDir and hostPath directories, and ConfigMap, Secret and
//! downwardAPI volumes written atomically the way upstream's atomic writer does it (a
//! timestamped directory, a `..data` symlink swapped by rename, and per-key symlinks), so
//! a reader never sees a half-written update.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use k8s_openapi::api::core::v1::{KeyToPath, Pod, Volume};
use sha2::{Digest, Sha256};

use crate::env::{field_value, format_map, PodFacts, Sources};

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The volume cannot be set up yet (missing ConfigMap/Secret or key); retried.
    #[error("MountVolume.SetUp failed for volume {volume:?} : {message}")]
    SetUp { volume: String, message: String },
    #[error("volume {volume:?}: {source}")]
    Io {
        volume: String,
        #[source]
        source: std::io::Error,
    },
}

/// Why a volumeMount's subPath cannot be mounted; the container waits with
/// CreateContainerConfigError and this message.
#[derive(Debug, thiserror::Error)]
pub enum SubPathError {
    #[error("invalid subPath {sub_path:?}: must be a relative path without '..'")]
    Invalid { sub_path: String },
    #[error("subPath {sub_path:?} is outside of the volume {volume:?}: {reason}")]
    Outside {
        sub_path: String,
        volume: String,
        reason: &'static str,
    },
    #[error("preparing subPath {sub_path:?} of volume {volume:?}: {source}")]
    Io {
        sub_path: String,
        volume: String,
        #[source]
        source: std::io::Error,
    },
}

/// A subPath resolved beneath its volume: the descriptor of what was checked, and the
/// symlink-free path it had when it was checked.
#[derive(Debug)]
pub struct ResolvedSubPath {
    fd: OwnedFd,
    path: PathBuf,
}

impl ResolvedSubPath {
    /// The resolved directory or file as a path without symlinks, beneath the volume.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// This process's name for exactly the resolved file, whatever is renamed or swapped
    /// into its path later; valid while `self` lives.
    pub fn fd_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// Bind-mounts exactly the resolved file onto `target` (replacing an earlier mount
    /// there), through its descriptor: a symlink swapped into the subPath since it was
    /// resolved cannot redirect the mount. The runtime then mounts `target`, which only
    /// the kubelet can change. (The runtime cannot take the descriptor itself: a bind
    /// mount from another process's mount namespace is refused.)
    pub fn bind(&self, target: &Path) -> std::io::Result<()> {
        unmount(target)?;
        let is_dir =
            rustix::fs::FileType::from_raw_mode(rustix::fs::fstat(&self.fd)?.st_mode).is_dir();
        match std::fs::symlink_metadata(target) {
            Ok(meta) if meta.is_dir() == is_dir => {}
            Ok(meta) => {
                if meta.is_dir() {
                    std::fs::remove_dir(target)?
                } else {
                    std::fs::remove_file(target)?
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if is_dir {
            std::fs::create_dir_all(target)?;
        } else if !target.exists() {
            std::fs::File::create(target)?;
        }
        nix::mount::mount(
            Some(&self.fd_path()),
            target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(std::io::Error::from)
    }
}

/// The kubelet's bind mounts of subPaths, below a pod's directory.
pub fn sub_path_mounts(pod_dir: &Path) -> PathBuf {
    pod_dir.join("volume-subpaths")
}

/// Where container `container`'s volumeMount number `index` has its subPath mounted.
pub fn sub_path_target(
    pod_dir: &Path,
    volume: &str,
    container: &str,
    index: usize,
) -> Option<PathBuf> {
    // Names become path components; validation makes them DNS labels, but this is the
    // kubelet's own directory and it does not rely on that.
    let plain =
        |name: &str| !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0']);
    (plain(volume) && plain(container)).then(|| {
        sub_path_mounts(pod_dir)
            .join(volume)
            .join(container)
            .join(index.to_string())
    })
}

fn unmount(target: &Path) -> std::io::Result<()> {
    match nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH) {
        // Not a mount point, or not there at all.
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(std::io::Error::new(
            std::io::Error::from(e).kind(),
            format!("unmounting {}: {e}", target.display()),
        )),
    }
}

/// Unmounts every subPath mount of the pod. Its directory must not be removed while one
/// is left: removing the tree would delete through the mount into the volume.
pub fn unmount_sub_paths(pod_dir: &Path) -> std::io::Result<()> {
    let Ok(volumes) = std::fs::read_dir(sub_path_mounts(pod_dir)) else {
        return Ok(());
    };
    for volume in volumes {
        for container in std::fs::read_dir(volume?.path())? {
            for target in std::fs::read_dir(container?.path())? {
                unmount(&target?.path())?;
            }
        }
    }
    Ok(())
}

/// Removes the pod's directory once nothing is mounted below it.
pub fn remove_pod_dir(pod_dir: &Path) -> std::io::Result<()> {
    unmount_sub_paths(pod_dir)?;
    match std::fs::remove_dir_all(pod_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Resolves `sub_path` beneath `volume_root` (the CVE-2017-1002101 class): symlinks are
/// followed only while they stay inside the volume, absolute symlinks and `..` that would
/// leave it are refused, and missing directories are created one at a time beneath the
/// deepest existing one, never through a symlink.
pub fn resolve_sub_path(
    volume_root: &Path,
    volume: &str,
    sub_path: &str,
) -> Result<ResolvedSubPath, SubPathError> {
    let relative = Path::new(sub_path);
    let components: Vec<&std::ffi::OsStr> = relative
        .components()
        .map(|c| match c {
            Component::Normal(name) => Some(name),
            _ => None,
        })
        .collect::<Option<_>>()
        .filter(|c: &Vec<_>| !c.is_empty())
        .ok_or_else(|| SubPathError::Invalid {
            sub_path: sub_path.to_string(),
        })?;
    let fail = |errno: Errno| match errno {
        // openat2 reports an escape through `..` or an absolute symlink as EXDEV, and a
        // symlink where none may be (or a magic link) as ELOOP.
        Errno::XDEV => SubPathError::Outside {
            sub_path: sub_path.to_string(),
            volume: volume.to_string(),
            reason: "it resolves through a symlink that leaves the volume",
        },
        Errno::LOOP => SubPathError::Outside {
            sub_path: sub_path.to_string(),
            volume: volume.to_string(),
            reason: "a symlink in it cannot be followed safely",
        },
        other => SubPathError::Io {
            sub_path: sub_path.to_string(),
            volume: volume.to_string(),
            source: other.into(),
        },
    };
    let path_flags = OFlags::PATH | OFlags::CLOEXEC;
    let beneath = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
    let root = rustix::fs::open(volume_root, path_flags | OFlags::DIRECTORY, Mode::empty())
        .map_err(fail)?;
    let resolved = |fd: OwnedFd| -> Result<ResolvedSubPath, SubPathError> {
        // openat2 already kept the walk beneath the root; this double-checks the result
        // and gives the symlink-free path the mount is made from.
        let io = |source: std::io::Error| SubPathError::Io {
            sub_path: sub_path.to_string(),
            volume: volume.to_string(),
            source,
        };
        let root_path =
            std::fs::read_link(format!("/proc/self/fd/{}", root.as_raw_fd())).map_err(io)?;
        let path = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).map_err(io)?;
        if !path.starts_with(&root_path) {
            return Err(SubPathError::Outside {
                sub_path: sub_path.to_string(),
                volume: volume.to_string(),
                reason: "it was moved out of the volume while being resolved",
            });
        }
        Ok(ResolvedSubPath { fd, path })
    };
    match rustix::fs::openat2(&root, relative, path_flags, Mode::empty(), beneath) {
        Ok(fd) => return resolved(fd),
        Err(Errno::NOENT) => {}
        Err(e) => return Err(fail(e)),
    }
    let mut current: Option<OwnedFd> = None;
    let mut prefix = PathBuf::new();
    for component in components {
        prefix.push(component);
        let dir_flags = path_flags | OFlags::DIRECTORY;
        let next = match rustix::fs::openat2(&root, &prefix, dir_flags, Mode::empty(), beneath) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => {
                let parent = current.as_ref().map_or(root.as_fd(), |fd| fd.as_fd());
                match rustix::fs::mkdirat(parent, component, Mode::from_raw_mode(0o777)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(fail(e)),
                }
                // What is there now must be a directory, not a symlink raced in.
                rustix::fs::openat2(
                    parent,
                    component,
                    dir_flags | OFlags::NOFOLLOW,
                    Mode::empty(),
                    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
                )
                .map_err(fail)?
            }
            Err(e) => return Err(fail(e)),
        };
        current = Some(next);
    }
    match current {
        Some(fd) => resolved(fd),
        None => Err(SubPathError::Invalid {
            sub_path: sub_path.to_string(),
        }),
    }
}

/// The ConfigMaps and Secrets the pod's volumes read.
pub fn referenced_objects(pod: &Pod) -> (Vec<String>, Vec<String>) {
    let mut config_maps = Vec::new();
    let mut secrets = Vec::new();
    for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        if let Some(cm) = &volume.config_map {
            config_maps.push(cm.name.clone());
        }
        if let Some(secret) = &volume.secret {
            secrets.extend(secret.secret_name.clone());
        }
        for source in volume
            .projected
            .iter()
            .flat_map(|p| p.sources.iter().flatten())
        {
            if let Some(cm) = &source.config_map {
                config_maps.push(cm.name.clone());
            }
            if let Some(secret) = &source.secret {
                secrets.push(secret.name.clone());
            }
        }
    }
    (config_maps, secrets)
}

/// One file of a projected volume: relative path, content, mode.
type Payload = BTreeMap<String, (Vec<u8>, u32)>;

fn project(
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: u32,
    volume: &str,
    what: &str,
) -> Result<Payload, VolumeError> {
    let mut payload = Payload::new();
    match items {
        Some(items) if !items.is_empty() => {
            for item in items {
                let Some(content) = data.get(&item.key) else {
                    return Err(VolumeError::SetUp {
                        volume: volume.to_string(),
                        message: format!("configuration key {:?} not found in {what}", item.key),
                    });
                };
                let mode = item.mode.map(|m| m as u32).unwrap_or(default_mode);
                payload.insert(item.path.clone(), (content.clone(), mode));
            }
        }
        _ => {
            for (key, content) in data {
                payload.insert(key, (content, default_mode));
            }
        }
    }
    Ok(payload)
}

fn config_map_payload(
    volume: &Volume,
    sources: &Sources,
    namespace: &str,
) -> Result<Payload, VolumeError> {
    let Some(source) = &volume.config_map else {
        return Ok(Payload::new());
    };
    let mode = source.default_mode.map(|m| m as u32).unwrap_or(0o644);
    let Some(cm) = sources
        .config_maps
        .get(&source.name)
        .and_then(Option::as_ref)
    else {
        if source.optional == Some(true) {
            return Ok(Payload::new());
        }
        return Err(VolumeError::SetUp {
            volume: volume.name.clone(),
            message: format!("configmap {:?} not found", source.name),
        });
    };
    let mut data: BTreeMap<String, Vec<u8>> = cm
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    for (k, v) in cm.binary_data.iter().flatten() {
        data.insert(k.clone(), v.0.clone());
    }
    project(
        data,
        source.items.as_ref(),
        mode,
        &volume.name,
        &format!("ConfigMap {namespace}/{}", source.name),
    )
}

fn secret_payload(
    volume: &Volume,
    sources: &Sources,
    namespace: &str,
) -> Result<Payload, VolumeError> {
    let Some(source) = &volume.secret else {
        return Ok(Payload::new());
    };
    let name = source.secret_name.clone().unwrap_or_default();
    let mode = source.default_mode.map(|m| m as u32).unwrap_or(0o644);
    let Some(secret) = sources.secrets.get(&name).and_then(Option::as_ref) else {
        if source.optional == Some(true) {
            return Ok(Payload::new());
        }
        return Err(VolumeError::SetUp {
            volume: volume.name.clone(),
            message: format!("secret {name:?} not found"),
        });
    };
    let data = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    project(
        data,
        source.items.as_ref(),
        mode,
        &volume.name,
        &format!("Secret {namespace}/{name}"),
    )
}

fn downward_payload(volume: &Volume, pod: &Pod, facts: &PodFacts) -> Result<Payload, VolumeError> {
    let Some(source) = &volume.downward_api else {
        return Ok(Payload::new());
    };
    let default_mode = source.default_mode.map(|m| m as u32).unwrap_or(0o644);
    let mut payload = Payload::new();
    for item in source.items.iter().flatten() {
        let Some(field) = &item.field_ref else {
            continue;
        };
        let content = match field.field_path.as_str() {
            "metadata.labels" => format_map(pod.metadata.labels.as_ref()),
            "metadata.annotations" => format_map(pod.metadata.annotations.as_ref()),
            path => field_value(pod, facts, path).map_err(|message| VolumeError::SetUp {
                volume: volume.name.clone(),
                message,
            })?,
        };
        let mode = item.mode.map(|m| m as u32).unwrap_or(default_mode);
        payload.insert(item.path.clone(), (content.into_bytes(), mode));
    }
    Ok(payload)
}

/// Sets up every volume of `pod` under `pod_dir/volumes` and returns the host path of each.
pub fn prepare(
    pod_dir: &Path,
    pod: &Pod,
    facts: &PodFacts,
    sources: &Sources,
) -> Result<BTreeMap<String, PathBuf>, VolumeError> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut paths = BTreeMap::new();
    for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let io = |source: std::io::Error| VolumeError::Io {
            volume: volume.name.clone(),
            source,
        };
        let dir = pod_dir.join("volumes").join(&volume.name);
        let path = if let Some(host) = &volume.host_path {
            let path = PathBuf::from(&host.path);
            match host.type_.as_deref() {
                Some("DirectoryOrCreate") => std::fs::create_dir_all(&path).map_err(io)?,
                Some("Directory") if !path.is_dir() => {
                    return Err(VolumeError::SetUp {
                        volume: volume.name.clone(),
                        message: format!(
                            "hostPath type check failed: {} is not a directory",
                            host.path
                        ),
                    })
                }
                Some("FileOrCreate") if !path.exists() => {
                    if let Some(parent) = path.parent() {
                        std::fs::create_dir_all(parent).map_err(io)?;
                    }
                    std::fs::File::create(&path).map_err(io)?;
                }
                _ => {}
            }
            path
        } else if volume.empty_dir.is_some() {
            std::fs::create_dir_all(&dir).map_err(io)?;
            dir
        } else if volume.config_map.is_some() {
            write_atomic(&dir, &config_map_payload(volume, sources, namespace)?).map_err(io)?;
            dir
        } else if volume.secret.is_some() {
            write_atomic(&dir, &secret_payload(volume, sources, namespace)?).map_err(io)?;
            dir
        } else if volume.downward_api.is_some() {
            write_atomic(&dir, &downward_payload(volume, pod, facts)?).map_err(io)?;
            dir
        } else if volume.projected.is_some() {
            let mut payload = Payload::new();
            for source in volume
                .projected
                .iter()
                .flat_map(|p| p.sources.iter().flatten())
            {
                let as_volume = Volume {
                    name: volume.name.clone(),
                    config_map: source.config_map.as_ref().map(|c| {
                        k8s_openapi::api::core::v1::ConfigMapVolumeSource {
                            name: c.name.clone(),
                            items: c.items.clone(),
                            optional: c.optional,
                            default_mode: None,
                        }
                    }),
                    secret: source.secret.as_ref().map(|s| {
                        k8s_openapi::api::core::v1::SecretVolumeSource {
                            secret_name: Some(s.name.clone()),
                            items: s.items.clone(),
                            optional: s.optional,
                            default_mode: None,
                        }
                    }),
                    ..Volume::default()
                };
                payload.extend(config_map_payload(&as_volume, sources, namespace)?);
                payload.extend(secret_payload(&as_volume, sources, namespace)?);
            }
            write_atomic(&dir, &payload).map_err(io)?;
            dir
        } else {
            return Err(VolumeError::SetUp {
                volume: volume.name.clone(),
                message: "volume type is not supported by rkubelet (supported: emptyDir, hostPath, configMap, secret, downwardAPI, projected configMap/secret)".to_string(),
            });
        };
        paths.insert(volume.name.clone(), path);
    }
    Ok(paths)
}

fn payload_digest(payload: &Payload) -> String {
    let mut hasher = Sha256::new();
    for (path, (content, mode)) in payload {
        hasher.update(path.as_bytes());
        hasher.update([0]);
        hasher.update(mode.to_le_bytes());
        hasher.update((content.len() as u64).to_le_bytes());
        hasher.update(content);
    }
    hasher
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The bits of a requested file mode (defaultMode, items[].mode) that are applied.
const FILE_MODE_MASK: u32 = 0o777;

/// Makes `dir` show exactly `payload`; unchanged content leaves everything alone.
pub fn write_atomic(dir: &Path, payload: &Payload) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let version = format!("..{}", payload_digest(payload));
    let data_link = dir.join("..data");
    let current = std::fs::read_link(&data_link).ok();
    if current.as_deref() == Some(Path::new(&version)) {
        return Ok(());
    }
    let version_dir = dir.join(&version);
    if version_dir.exists() {
        std::fs::remove_dir_all(&version_dir)?;
    }
    std::fs::create_dir_all(&version_dir)?;
    for (path, (content, mode)) in payload {
        let relative = Path::new(path);
        if relative.is_absolute()
            || relative
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("invalid path {path:?}"),
            ));
        }
        let file_path = version_dir.join(relative);
        if let Some(parent) = file_path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut file = std::fs::File::create(&file_path)?;
        file.write_all(content)?;
        file.sync_all()?;
        // Like upstream, only permission bits: setuid, setgid and sticky never pass.
        std::fs::set_permissions(
            &file_path,
            std::fs::Permissions::from_mode(*mode & FILE_MODE_MASK),
        )?;
    }
    let temp_link = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&temp_link);
    symlink(&version, &temp_link)?;
    std::fs::rename(&temp_link, &data_link)?;
    let top_level: Vec<String> = payload
        .keys()
        .filter_map(|p| p.split('/').next().map(str::to_string))
        .collect();
    for name in &top_level {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("..data").join(name), &link)?;
        }
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "..data" || name == version {
            continue;
        }
        if name.starts_with("..") {
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                std::fs::remove_dir_all(path)?;
            } else {
                std::fs::remove_file(path)?;
            }
        } else if !top_level.contains(&name) {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// /etc/hosts of a pod: localhost entries and the pod's own name on its IP.
pub fn hosts_file(pod_ip: &str, hostname: &str, pod: &Pod) -> String {
    let mut out = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    if !pod_ip.is_empty() {
        let spec = pod.spec.as_ref();
        match spec.and_then(|s| s.subdomain.as_deref()) {
            Some(sub) if !sub.is_empty() => {
                let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
                out.push_str(&format!(
                    "{pod_ip}\t{hostname}.{sub}.{ns}.svc.cluster.local\t{hostname}\n"
                ));
            }
            _ => out.push_str(&format!("{pod_ip}\t{hostname}\n")),
        }
    }
    for alias in pod
        .spec
        .iter()
        .flat_map(|s| s.host_aliases.iter().flatten())
    {
        out.push_str(&format!(
            "{}\t{}\n",
            alias.ip,
            alias.hostnames.clone().unwrap_or_default().join("\t")
        ));
    }
    out
}

/// /etc/resolv.conf: the cluster DNS server and the search path of the pod's namespace.
pub fn resolv_conf(namespace: &str, cluster_domain: &str, dns: &[String]) -> String {
    let mut out = String::new();
    for server in dns {
        out.push_str(&format!("nameserver {server}\n"));
    }
    out.push_str(&format!(
        "search {namespace}.svc.{cluster_domain} svc.{cluster_domain} {cluster_domain}\noptions ndots:5\n"
    ));
    out
}

#[cfg(test)]
mod tests {
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
}
