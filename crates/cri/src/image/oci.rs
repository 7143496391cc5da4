//! The parts of the OCI image spec (and Docker's schema 2, its ancestor) that running an
//! image needs, parsed leniently: unknown fields are ignored and `mediaType` may be absent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{ImageConfig, Result, RuntimeError};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Accept header for manifest requests: every manifest kind this module understands.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// containerd label of an image's name annotation in OCI layouts it writes.
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

/// The image config ("container image JSON").
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ConfigFile {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub config: Option<RunConfig>,
    pub rootfs: RootFs,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

impl ConfigFile {
    pub fn parse(bytes: &[u8]) -> Result<ConfigFile> {
        serde_json::from_slice(bytes)
            .map_err(|e| RuntimeError::InvalidImage(format!("image config: {e}")))
    }

    pub fn image_config(&self) -> ImageConfig {
        let run = self.config.clone().unwrap_or_default();
        ImageConfig {
            entrypoint: run.entrypoint.unwrap_or_default(),
            cmd: run.cmd.unwrap_or_default(),
            env: run.env.unwrap_or_default(),
            working_dir: run.working_dir.filter(|dir| !dir.is_empty()),
            user: run.user.filter(|user| !user.is_empty()),
        }
    }
}

/// A manifest document: a single image, or a list of them per platform.
pub enum ManifestDocument {
    Image(Manifest),
    Index(Index),
}

impl ManifestDocument {
    /// Parses by the declared media type, falling back to the document's shape (OCI makes
    /// `mediaType` optional).
    pub fn parse(media_type: &str, bytes: &[u8]) -> Result<ManifestDocument> {
        let invalid = |e: serde_json::Error| RuntimeError::InvalidImage(format!("manifest: {e}"));
        let is_index = match media_type {
            OCI_INDEX | DOCKER_MANIFEST_LIST => true,
            OCI_MANIFEST | DOCKER_MANIFEST => false,
            _ => {
                let value: serde_json::Value = serde_json::from_slice(bytes).map_err(invalid)?;
                value.get("manifests").is_some()
            }
        };
        if is_index {
            Ok(ManifestDocument::Index(
                serde_json::from_slice(bytes).map_err(invalid)?,
            ))
        } else {
            let manifest: Manifest = serde_json::from_slice(bytes).map_err(invalid)?;
            if manifest.schema_version != 2 {
                return Err(RuntimeError::InvalidImage(format!(
                    "manifest schema version {} is not supported",
                    manifest.schema_version
                )));
            }
            Ok(ManifestDocument::Image(manifest))
        }
    }
}

/// This machine's platform in OCI terms.
pub fn host_platform() -> Platform {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    };
    Platform {
        architecture: architecture.to_string(),
        os: "linux".to_string(),
        variant: None,
    }
}

/// The index entry for this machine's platform (attestations and other platforms skipped).
pub fn select_platform(index: &Index) -> Option<&Descriptor> {
    let host = host_platform();
    let matches = |d: &&Descriptor| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == host.os && p.architecture == host.architecture)
    };
    index.manifests.iter().find(matches).or_else(|| {
        // Single-platform indexes (like `ctr export` writes) often omit the platform.
        let unlabelled: Vec<&Descriptor> = index
            .manifests
            .iter()
            .filter(|d| d.platform.is_none())
            .collect();
        (unlabelled.len() == 1).then(|| unlabelled[0])
    })
}

pub fn sha256_digest(data: &[u8]) -> String {
    hex_digest(&Sha256::digest(data))
}

pub fn hex_digest(hash: &[u8]) -> String {
    let mut out = String::with_capacity(7 + hash.len() * 2);
    out.push_str("sha256:");
    for byte in hash {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// Chain ids of the layer stack: the snapshot names containerd uses for unpacked layers.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut chain: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match chain.last() {
            None => diff_id.clone(),
            Some(parent) => sha256_digest(format!("{parent} {diff_id}").as_bytes()),
        };
        chain.push(next);
    }
    chain
}

/// Checks a digest string is `sha256:<64 hex>`, so it is safe as a file name or URL part.
pub fn validate_digest(digest: &str) -> Result<()> {
    let ok = digest
        .strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::InvalidImage(format!(
            "unsupported digest {digest:?}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_spec() {
        let a = "sha256:a".to_string();
        let b = "sha256:b".to_string();
        let chain = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chain[0], a);
        assert_eq!(chain[1], sha256_digest(b"sha256:a sha256:b"));
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn parses_manifest_without_media_type() {
        let doc = br#"{"schemaVersion":2,"config":{"digest":"sha256:c","size":1},"layers":[]}"#;
        assert!(matches!(
            ManifestDocument::parse("", doc).unwrap(),
            ManifestDocument::Image(_)
        ));
        let index = br#"{"schemaVersion":2,"manifests":[{"digest":"sha256:m","size":2,"platform":{"architecture":"s390x","os":"linux"}}]}"#;
        let ManifestDocument::Index(index) = ManifestDocument::parse("", index).unwrap() else {
            panic!("expected an index");
        };
        assert!(select_platform(&index).is_none() || host_platform().architecture == "s390x");
    }

    #[test]
    fn image_config_from_config_file() {
        let config = ConfigFile::parse(
            br#"{"config":{"Cmd":["sh"],"Env":["PATH=/bin"],"WorkingDir":""},"rootfs":{"type":"layers","diff_ids":["sha256:x"]}}"#,
        )
        .unwrap();
        let image = config.image_config();
        assert_eq!(image.cmd, vec!["sh"]);
        assert_eq!(image.env, vec!["PATH=/bin"]);
        assert_eq!(image.working_dir, None);
        assert_eq!(config.rootfs.diff_ids, vec!["sha256:x"]);
    }
}
