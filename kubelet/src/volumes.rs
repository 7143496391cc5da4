//! Pod volumes on the node: emptyDir and hostPath directories, and ConfigMap, Secret and
//! downwardAPI volumes written atomically the way upstream's atomic writer does it (a
//! timestamped directory, a `..data` symlink swapped by rename, and per-key symlinks), so
//! a reader never sees a half-written update.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{KeyToPath, Pod, Volume};
use sha2::{Digest, Sha256};

use crate::env::{field_value, format_map, PodFacts, Sources};

mod subpath;

pub use subpath::{
    remove_pod_dir, resolve_sub_path, sub_path_mounts, sub_path_target, unmount_sub_paths,
    ResolvedSubPath, SubPathError,
};

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
mod tests;
