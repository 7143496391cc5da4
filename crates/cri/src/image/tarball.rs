//! Reading image tarballs: OCI image layouts (`index.json` and `blobs/`, as `ctr export`,
//! `skopeo` and docker 25+ write them) and classic `docker save` archives (`manifest.json`
//! and `<id>/layer.tar`). The tarball is extracted to a directory first so layers can be
//! streamed from files; nothing outside that directory is written.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use bytes::Bytes;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::oci::{self, Descriptor, Manifest, ManifestDocument};
use super::reference;
use crate::{Result, RuntimeError};

/// A small blob (manifest, config) held in memory.
#[derive(Clone, Debug)]
pub struct Blob {
    pub descriptor: Descriptor,
    pub data: Bytes,
}

impl Blob {
    pub fn new(media_type: &str, data: Bytes) -> Blob {
        Blob {
            descriptor: Descriptor {
                media_type: media_type.to_string(),
                digest: oci::sha256_digest(&data),
                size: data.len() as i64,
                ..Descriptor::default()
            },
            data,
        }
    }
}

/// One image found in a tarball, ready to be stored.
#[derive(Debug)]
pub struct TarballImage {
    /// Normalised names (an image may carry several tags).
    pub names: Vec<String>,
    pub manifest: Blob,
    pub config: Blob,
    /// Layer descriptors and the extracted files holding them.
    pub layers: Vec<(Descriptor, PathBuf)>,
}

/// Extracts `tarball` into `dir` and lists the images in it. Blocking.
pub fn read_tarball(tarball: &Path, dir: &Path) -> Result<Vec<TarballImage>> {
    let file = std::fs::File::open(tarball)?;
    let mut magic = [0u8; 2];
    let gzipped = {
        let mut peek = std::fs::File::open(tarball)?;
        peek.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b]
    };
    if gzipped {
        extract(tar::Archive::new(flate2::read::GzDecoder::new(file)), dir)?;
    } else {
        extract(tar::Archive::new(file), dir)?;
    }
    let mut images = Vec::new();
    if dir.join("index.json").is_file() {
        images = read_oci_layout(dir)?;
    }
    if images.is_empty() && dir.join("manifest.json").is_file() {
        images = read_docker_archive(dir)?;
    }
    if images.is_empty() {
        return Err(RuntimeError::InvalidImage(format!(
            "{}: no named image found (neither an OCI layout with image names nor a docker save archive)",
            tarball.display()
        )));
    }
    Ok(images)
}

fn extract<R: Read>(mut archive: tar::Archive<R>, dir: &Path) -> Result<()> {
    for entry in archive.entries()? {
        let mut entry = entry?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path()?.into_owned();
        // Only plain relative paths: no `..`, no absolute paths, so nothing escapes `dir`.
        let mut target = dir.to_path_buf();
        for component in path.components() {
            match component {
                Component::Normal(part) => target.push(part),
                Component::CurDir => {}
                _ => {
                    return Err(RuntimeError::InvalidImage(format!(
                        "unsafe path {} in image tarball",
                        path.display()
                    )))
                }
            }
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut out = std::fs::File::create(&target)?;
        std::io::copy(&mut entry, &mut out)?;
    }
    Ok(())
}

fn blob_path(dir: &Path, digest: &str) -> Result<PathBuf> {
    oci::validate_digest(digest)?;
    let hex = digest.trim_start_matches("sha256:");
    let path = dir.join("blobs").join("sha256").join(hex);
    if !path.is_file() {
        return Err(RuntimeError::InvalidImage(format!(
            "blob {digest} missing from the tarball"
        )));
    }
    Ok(path)
}

fn read_blob(dir: &Path, descriptor: &Descriptor) -> Result<Bytes> {
    let data = std::fs::read(blob_path(dir, &descriptor.digest)?)?;
    if oci::sha256_digest(&data) != descriptor.digest {
        return Err(RuntimeError::InvalidImage(format!(
            "blob {} does not match its digest",
            descriptor.digest
        )));
    }
    Ok(Bytes::from(data))
}

fn names_from_annotations(annotations: &BTreeMap<String, String>) -> Vec<String> {
    if let Some(name) = annotations.get(oci::ANNOTATION_CONTAINERD_NAME) {
        if let Ok(name) = reference::normalize(name) {
            return vec![name];
        }
    }
    // The OCI annotation is often just a tag; only a full name says which image this is.
    match annotations.get(oci::ANNOTATION_REF_NAME) {
        Some(name) if name.contains('/') || name.contains(':') => reference::normalize(name)
            .map(|n| vec![n])
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

fn read_oci_layout(dir: &Path) -> Result<Vec<TarballImage>> {
    let index = std::fs::read(dir.join("index.json"))?;
    let ManifestDocument::Index(index) = ManifestDocument::parse(oci::OCI_INDEX, &index)? else {
        return Err(RuntimeError::InvalidImage(
            "index.json is not an index".into(),
        ));
    };
    let mut images: Vec<TarballImage> = Vec::new();
    for entry in &index.manifests {
        let names = names_from_annotations(&entry.annotations);
        if names.is_empty() {
            continue;
        }
        let (manifest, parsed) = resolve_manifest(dir, entry, 0)?;
        let config_descriptor = parsed.config.clone();
        let config = Blob {
            data: read_blob(dir, &config_descriptor)?,
            descriptor: config_descriptor,
        };
        let layers = parsed
            .layers
            .iter()
            .map(|layer| Ok((layer.clone(), blob_path(dir, &layer.digest)?)))
            .collect::<Result<Vec<_>>>()?;
        // Several tags of one image share the manifest: merge names instead of storing twice.
        if let Some(existing) = images
            .iter_mut()
            .find(|image| image.manifest.descriptor.digest == manifest.descriptor.digest)
        {
            existing.names.extend(names);
            continue;
        }
        images.push(TarballImage {
            names,
            manifest,
            config,
            layers,
        });
    }
    Ok(images)
}

/// Follows an index entry down to this platform's image manifest.
fn resolve_manifest(dir: &Path, descriptor: &Descriptor, depth: u32) -> Result<(Blob, Manifest)> {
    if depth > 4 {
        return Err(RuntimeError::InvalidImage("index nesting too deep".into()));
    }
    let data = read_blob(dir, descriptor)?;
    match ManifestDocument::parse(&descriptor.media_type, &data)? {
        ManifestDocument::Image(manifest) => {
            let media_type = manifest
                .media_type
                .clone()
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| non_empty_or(&descriptor.media_type, oci::OCI_MANIFEST));
            let mut blob = Blob::new(&media_type, data);
            blob.descriptor.platform = descriptor.platform.clone();
            Ok((blob, manifest))
        }
        ManifestDocument::Index(index) => {
            let chosen = oci::select_platform(&index).ok_or_else(|| {
                RuntimeError::InvalidImage(format!(
                    "no {} image in index {}",
                    platform_name(),
                    descriptor.digest
                ))
            })?;
            resolve_manifest(dir, chosen, depth + 1)
        }
    }
}

fn platform_name() -> String {
    let platform = oci::host_platform();
    format!("{}/{}", platform.os, platform.architecture)
}

fn non_empty_or(value: &str, default: &str) -> String {
    if value.is_empty() {
        default.to_string()
    } else {
        value.to_string()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerArchiveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn safe_join(dir: &Path, relative: &str) -> Result<PathBuf> {
    let mut path = dir.to_path_buf();
    for component in Path::new(relative).components() {
        match component {
            Component::Normal(part) => path.push(part),
            Component::CurDir => {}
            _ => {
                return Err(RuntimeError::InvalidImage(format!(
                    "unsafe path {relative:?} in manifest.json"
                )))
            }
        }
    }
    Ok(path)
}

fn file_digest(path: &Path) -> Result<(String, i64, bool)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut size: i64 = 0;
    let mut first = [0u8; 2];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        if size == 0 && read >= 2 {
            first = [buffer[0], buffer[1]];
        }
        hasher.update(&buffer[..read]);
        size += read as i64;
    }
    Ok((
        oci::hex_digest(&hasher.finalize()),
        size,
        first == [0x1f, 0x8b],
    ))
}

fn read_docker_archive(dir: &Path) -> Result<Vec<TarballImage>> {
    let entries: Vec<DockerArchiveEntry> =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json"))?)
            .map_err(|e| RuntimeError::InvalidImage(format!("manifest.json: {e}")))?;
    let mut images = Vec::new();
    for entry in entries {
        let names: Vec<String> = entry
            .repo_tags
            .unwrap_or_default()
            .iter()
            .filter_map(|tag| reference::normalize(tag).ok())
            .collect();
        if names.is_empty() {
            continue;
        }
        let config = Blob::new(
            oci::DOCKER_CONFIG,
            Bytes::from(std::fs::read(safe_join(dir, &entry.config)?)?),
        );
        let mut layers = Vec::new();
        for layer in &entry.layers {
            let path = safe_join(dir, layer)?;
            let (digest, size, gzipped) = file_digest(&path)?;
            let media_type = if gzipped {
                oci::DOCKER_LAYER_GZIP
            } else {
                oci::DOCKER_LAYER
            };
            layers.push((
                Descriptor {
                    media_type: media_type.to_string(),
                    digest,
                    size,
                    ..Descriptor::default()
                },
                path,
            ));
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(oci::DOCKER_MANIFEST.to_string()),
            config: config.descriptor.clone(),
            layers: layers.iter().map(|(d, _)| d.clone()).collect(),
        };
        let manifest_bytes = serde_json::to_vec(&manifest)
            .map_err(|e| RuntimeError::Other(format!("encoding manifest: {e}")))?;
        images.push(TarballImage {
            names,
            manifest: Blob::new(oci::DOCKER_MANIFEST, Bytes::from(manifest_bytes)),
            config,
            layers,
        });
    }
    Ok(images)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tarball_with(path: &str, data: &[u8]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        // set_path refuses `..`; write the name bytes directly like a hostile archive would.
        let name = &mut header.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_cksum();
        builder.append(&header, data).unwrap();
        builder.into_inner().unwrap()
    }

    #[test]
    fn refuses_paths_escaping_the_extract_dir() {
        let dir = tempfile::tempdir().unwrap();
        let tarball = dir.path().join("evil.tar");
        std::fs::write(&tarball, tarball_with("../escaped", b"x")).unwrap();
        let extract = dir.path().join("extract");
        std::fs::create_dir(&extract).unwrap();
        let result = read_tarball(&tarball, &extract);
        assert!(
            matches!(result, Err(RuntimeError::InvalidImage(_))),
            "{result:?}"
        );
        assert!(!dir.path().join("escaped").exists());
    }

    #[test]
    fn a_tarball_without_images_is_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let tarball = dir.path().join("empty.tar");
        std::fs::write(&tarball, tarball_with("hello.txt", b"hi")).unwrap();
        let extract = dir.path().join("extract");
        let result = read_tarball(&tarball, &extract);
        assert!(
            matches!(result, Err(RuntimeError::InvalidImage(_))),
            "{result:?}"
        );
    }
}
