//! Test images built from local files, since no registry is reachable: a busybox image
//! made from busybox-static (`/usr/bin/busybox`) with a symlink per applet, a root user and
//! a PATH. The output is deterministic (fixed timestamps and owners, sorted entries), so the
//! same busybox binary always gives the same digests.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

pub const MEDIA_TYPE_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_TYPE_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_TYPE_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_TYPE_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

const BUSYBOX_CANDIDATES: [&str; 2] = ["/usr/bin/busybox", "/bin/busybox"];
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A blob with its digest (`sha256:<hex>`).
#[derive(Clone, Debug)]
pub struct Blob {
    pub digest: String,
    pub media_type: String,
    pub data: Vec<u8>,
}

impl Blob {
    fn new(media_type: &str, data: Vec<u8>) -> Blob {
        Blob {
            digest: sha256_digest(&data),
            media_type: media_type.to_string(),
            data,
        }
    }
}

/// One single-platform image as the blobs a registry or an OCI layout holds.
#[derive(Clone, Debug)]
pub struct ImageBlobs {
    pub manifest: Blob,
    pub config: Blob,
    pub layers: Vec<Blob>,
    /// Uncompressed digests of the layers (the config's `rootfs.diff_ids`).
    pub diff_ids: Vec<String>,
}

pub fn sha256_digest(data: &[u8]) -> String {
    let hash = Sha256::digest(data);
    let mut out = String::with_capacity(71);
    out.push_str("sha256:");
    for byte in hash {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

fn busybox_path() -> anyhow::Result<&'static str> {
    BUSYBOX_CANDIDATES
        .into_iter()
        .find(|path| Path::new(path).is_file())
        .context("busybox not found (apt-get install -y busybox-static)")
}

fn applets(busybox: &str) -> anyhow::Result<Vec<String>> {
    let output = Command::new(busybox)
        .arg("--list")
        .output()
        .context("running busybox --list")?;
    if !output.status.success() {
        bail!("busybox --list failed: {}", output.status);
    }
    let mut names: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|name| !name.is_empty() && *name != "busybox" && !name.contains('/'))
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header
}

/// The uncompressed root filesystem tar of the busybox image.
fn busybox_layer_tar() -> anyhow::Result<Vec<u8>> {
    let busybox = busybox_path()?;
    let binary = std::fs::read(busybox).with_context(|| format!("reading {busybox}"))?;
    let mut builder = tar::Builder::new(Vec::new());
    for (dir, mode) in [
        ("bin", 0o755),
        ("dev", 0o755),
        ("etc", 0o755),
        ("home", 0o755),
        ("proc", 0o755),
        ("root", 0o700),
        ("sys", 0o755),
        ("tmp", 0o1777),
        ("usr", 0o755),
        ("usr/bin", 0o755),
        ("var", 0o755),
        ("var/www", 0o755),
    ] {
        let mut entry = header(tar::EntryType::Directory, mode, 0);
        builder.append_data(&mut entry, format!("{dir}/"), std::io::empty())?;
    }
    let mut entry = header(tar::EntryType::Regular, 0o755, binary.len() as u64);
    builder.append_data(&mut entry, "bin/busybox", binary.as_slice())?;
    for applet in applets(busybox)? {
        let mut link = header(tar::EntryType::Symlink, 0o777, 0);
        builder.append_link(&mut link, format!("bin/{applet}"), "busybox")?;
    }
    let files: [(&str, &str); 4] = [
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n",
        ),
        ("etc/group", "root:x:0:\nnobody:x:65534:\n"),
        ("etc/hostname", ""),
        ("var/www/index.html", "hello from rkube busybox\n"),
    ];
    for (path, content) in files {
        let mut entry = header(tar::EntryType::Regular, 0o644, content.len() as u64);
        builder.append_data(&mut entry, path, content.as_bytes())?;
    }
    Ok(builder.into_inner()?)
}

fn gzip(data: &[u8]) -> anyhow::Result<Vec<u8>> {
    // GzBuilder writes mtime 0 and no file name, which keeps the digest stable.
    let mut encoder = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::default());
    encoder.write_all(data)?;
    Ok(encoder.finish()?)
}

/// The busybox image's blobs (one gzip layer, OCI media types), e.g. to push to a registry.
pub fn busybox_image() -> anyhow::Result<ImageBlobs> {
    let layer_tar = busybox_layer_tar()?;
    let diff_id = sha256_digest(&layer_tar);
    let layer = Blob::new(MEDIA_TYPE_OCI_LAYER_GZIP, gzip(&layer_tar)?);
    let config = serde_json::json!({
        "architecture": oci_arch(),
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "Env": [PATH_ENV],
            "Cmd": ["sh"],
        },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{ "created": "1970-01-01T00:00:00Z", "created_by": "rkube-testkit busybox" }],
    });
    let config = Blob::new(MEDIA_TYPE_OCI_CONFIG, serde_json::to_vec(&config)?);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_MANIFEST,
        "config": descriptor(&config),
        "layers": [descriptor(&layer)],
    });
    let manifest = Blob::new(MEDIA_TYPE_OCI_MANIFEST, serde_json::to_vec(&manifest)?);
    Ok(ImageBlobs {
        manifest,
        config,
        layers: vec![layer],
        diff_ids: vec![diff_id],
    })
}

fn descriptor(blob: &Blob) -> serde_json::Value {
    serde_json::json!({
        "mediaType": blob.media_type,
        "digest": blob.digest,
        "size": blob.data.len(),
    })
}

/// Writes `<dir>/<sanitised name_tag>.tar`, an OCI image layout tarball of the busybox image
/// named `name_tag` (e.g. `busybox:test` or `docker.io/library/busybox:test`), and returns
/// its path. The name goes in both `io.containerd.image.name` and (tag only)
/// `org.opencontainers.image.ref.name`, as `ctr export` writes them.
pub fn busybox_oci_tarball(dir: &Path, name_tag: &str) -> anyhow::Result<PathBuf> {
    let image = busybox_image()?;
    let tag = name_tag
        .rsplit_once(':')
        .filter(|(_, tag)| !tag.contains('/'))
        .map_or("latest", |(_, tag)| tag);
    let mut manifest_descriptor = descriptor(&image.manifest);
    manifest_descriptor["annotations"] = serde_json::json!({
        "io.containerd.image.name": name_tag,
        "org.opencontainers.image.ref.name": tag,
    });
    manifest_descriptor["platform"] =
        serde_json::json!({ "architecture": oci_arch(), "os": "linux" });
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_INDEX,
        "manifests": [manifest_descriptor],
    });
    let mut builder = tar::Builder::new(Vec::new());
    for dir in ["blobs/", "blobs/sha256/"] {
        let mut entry = header(tar::EntryType::Directory, 0o755, 0);
        builder.append_data(&mut entry, dir, std::io::empty())?;
    }
    let mut add = |path: &str, data: &[u8]| -> std::io::Result<()> {
        let mut entry = header(tar::EntryType::Regular, 0o644, data.len() as u64);
        builder.append_data(&mut entry, path, data)
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    add("index.json", &serde_json::to_vec(&index)?)?;
    let mut blobs: Vec<&Blob> = vec![&image.config, &image.manifest];
    blobs.extend(image.layers.iter());
    blobs.sort_by(|a, b| a.digest.cmp(&b.digest));
    for blob in blobs {
        let hex = blob.digest.trim_start_matches("sha256:");
        add(&format!("blobs/sha256/{hex}"), &blob.data)?;
    }
    let tarball = builder.into_inner()?;
    let file_name: String = name_tag
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let path = dir.join(format!("{file_name}.tar"));
    std::fs::write(&path, tarball).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Writes `<dir>/<sanitised name_tag>-docker.tar`, the busybox image as `docker save` writes
/// it (`manifest.json`, `<id>.json` config, `<id>/layer.tar` uncompressed), and returns it.
pub fn busybox_docker_tarball(dir: &Path, name_tag: &str) -> anyhow::Result<PathBuf> {
    let image = busybox_image()?;
    let layer_tar = busybox_layer_tar()?;
    let layer_id = image.diff_ids[0].trim_start_matches("sha256:").to_string();
    let config_name = format!("{}.json", image.config.digest.trim_start_matches("sha256:"));
    let layer_path = format!("{layer_id}/layer.tar");
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": [name_tag],
        "Layers": [layer_path],
    }]);
    let mut builder = tar::Builder::new(Vec::new());
    let mut entry = header(tar::EntryType::Directory, 0o755, 0);
    builder.append_data(&mut entry, format!("{layer_id}/"), std::io::empty())?;
    let mut add = |path: &str, data: &[u8]| -> std::io::Result<()> {
        let mut entry = header(tar::EntryType::Regular, 0o644, data.len() as u64);
        builder.append_data(&mut entry, path, data)
    };
    add(&config_name, &image.config.data)?;
    add(&layer_path, &layer_tar)?;
    add("manifest.json", &serde_json::to_vec(&manifest)?)?;
    let tarball = builder.into_inner()?;
    let file_name: String = name_tag
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let path = dir.join(format!("{file_name}-docker.tar"));
    std::fs::write(&path, tarball).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
