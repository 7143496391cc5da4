//! [`ImageService`] over containerd: images are records in the Images service pointing at a
//! manifest in the content store; layers are unpacked into committed snapshots named by
//! chain id, which is what containers are created from.
//!
//! gc references written on every image (so containerd keeps all of it once the lease used
//! while writing is gone): manifest -> config and layers, config -> top snapshot, layer ->
//! its uncompressed digest.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    ApplyRequest, CreateImageRequest, GetImageRequest, Image, ListImagesRequest, UpdateImageRequest,
};
use containerd_client::types::Descriptor as GrpcDescriptor;
use futures::TryStreamExt;
use parking_lot::Mutex;
use tonic::Code;

use super::content::BlobSource;
use super::{status_error, Connection, ContainerdConfig};
use crate::image::oci::{self, ConfigFile, Descriptor, Manifest, ManifestDocument};
use crate::image::registry::RegistryClient;
use crate::image::tarball::{self, Blob};
use crate::image::Reference;
use crate::{ImageInfo, ImageService, RegistryAuth, Result, RuntimeError};

const LABEL_UNCOMPRESSED: &str = "containerd.io/uncompressed";
const LABEL_GC_CONFIG: &str = "containerd.io/gc.ref.content.config";

#[derive(Clone)]
pub struct ContainerdImageService {
    inner: Arc<Inner>,
}

struct Inner {
    connection: Connection,
    snapshotter: String,
    registry: RegistryClient,
    /// Parsed images by manifest digest: manifests are immutable, so this never goes stale.
    by_manifest: Mutex<HashMap<String, (i64, crate::ImageConfig, String)>>,
}

/// A layer to store: its descriptor, uncompressed digest and where its bytes come from.
struct LayerToStore {
    descriptor: Descriptor,
    diff_id: String,
    source: BlobSource,
}

impl ContainerdImageService {
    pub async fn connect(config: &ContainerdConfig) -> Result<ContainerdImageService> {
        let connection = Connection::connect(config).await?;
        Ok(ContainerdImageService {
            inner: Arc::new(Inner {
                connection,
                snapshotter: config.snapshotter.clone(),
                registry: RegistryClient::new()?,
                by_manifest: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The chain id of the image's top layer: the snapshot a container's rootfs is
    /// prepared from.
    pub async fn top_chain_id(&self, image_id: &str) -> Result<Option<String>> {
        let config = ConfigFile::parse(&self.inner.connection.read_content(image_id).await?)?;
        Ok(oci::chain_ids(&config.rootfs.diff_ids).pop())
    }
}

impl Inner {
    fn images(&self) -> ImagesClient<tonic::transport::Channel> {
        ImagesClient::new(self.connection.channel())
    }

    fn snapshots(&self) -> SnapshotsClient<tonic::transport::Channel> {
        SnapshotsClient::new(self.connection.channel())
    }

    async fn info_for(&self, image: &Image) -> Result<ImageInfo> {
        let target = image.target.as_ref().ok_or_else(|| {
            RuntimeError::InvalidImage(format!("image {} has no target", image.name))
        })?;
        if let Some((size, config, id)) = self.by_manifest.lock().get(&target.digest).cloned() {
            return Ok(ImageInfo {
                name: image.name.clone(),
                id,
                size_bytes: u64::try_from(size).unwrap_or(0),
                config,
            });
        }
        let data = self.connection.read_content(&target.digest).await?;
        let manifest = match ManifestDocument::parse(&target.media_type, &data)? {
            ManifestDocument::Image(manifest) => manifest,
            ManifestDocument::Index(index) => {
                // Images created by other tools may point at an index.
                let chosen = oci::select_platform(&index).ok_or_else(|| {
                    RuntimeError::InvalidImage(format!(
                        "{}: no image for this platform",
                        image.name
                    ))
                })?;
                let data = self.connection.read_content(&chosen.digest).await?;
                match ManifestDocument::parse(&chosen.media_type, &data)? {
                    ManifestDocument::Image(manifest) => manifest,
                    ManifestDocument::Index(_) => {
                        return Err(RuntimeError::InvalidImage(format!(
                            "{}: nested index",
                            image.name
                        )))
                    }
                }
            }
        };
        let config = ConfigFile::parse(
            &self
                .connection
                .read_content(&manifest.config.digest)
                .await?,
        )?;
        let size = manifest.config.size + manifest.layers.iter().map(|l| l.size).sum::<i64>();
        let entry = (size, config.image_config(), manifest.config.digest.clone());
        self.by_manifest
            .lock()
            .insert(target.digest.clone(), entry.clone());
        Ok(ImageInfo {
            name: image.name.clone(),
            id: entry.2,
            size_bytes: u64::try_from(size).unwrap_or(0),
            config: entry.1,
        })
    }

    async fn get_image(&self, name: &str) -> Result<Option<Image>> {
        match self
            .images()
            .get(self.connection.request(GetImageRequest {
                name: name.to_string(),
            }))
            .await
        {
            Ok(response) => Ok(response.into_inner().image),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(status_error(status, &format!("image {name}"))),
        }
    }

    async fn list_images(&self) -> Result<Vec<Image>> {
        Ok(self
            .images()
            .list(
                self.connection
                    .request(ListImagesRequest { filters: vec![] }),
            )
            .await
            .map_err(|s| status_error(s, "images"))?
            .into_inner()
            .images)
    }

    /// Stores manifest, config and layers, unpacks the layers and (re)points every name at
    /// the manifest. Everything happens under one lease, dropped at the end.
    async fn store(
        &self,
        names: &[String],
        manifest: Blob,
        config: Blob,
        layers: Vec<LayerToStore>,
    ) -> Result<Vec<ImageInfo>> {
        let lease = self.connection.create_lease("image").await?;
        let result = self
            .store_under_lease(&lease, names, manifest, config, layers)
            .await;
        self.connection.delete_lease(&lease).await;
        result
    }

    async fn store_under_lease(
        &self,
        lease: &str,
        names: &[String],
        manifest: Blob,
        config: Blob,
        layers: Vec<LayerToStore>,
    ) -> Result<Vec<ImageInfo>> {
        let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.clone()).collect();
        let chain_ids = oci::chain_ids(&diff_ids);
        let mut layer_descriptors = Vec::with_capacity(layers.len());
        for layer in layers {
            let labels = HashMap::from([(LABEL_UNCOMPRESSED.to_string(), layer.diff_id.clone())]);
            self.connection
                .ensure_content(
                    lease,
                    &layer.descriptor.digest,
                    layer.descriptor.size,
                    labels,
                    layer.source,
                )
                .await?;
            layer_descriptors.push(layer.descriptor);
        }
        for (index, layer) in layer_descriptors.iter().enumerate() {
            let parent = index.checked_sub(1).map(|p| chain_ids[p].clone());
            self.unpack_layer(lease, layer, &chain_ids[index], parent.as_deref())
                .await?;
        }
        let mut config_labels = HashMap::new();
        if let Some(top) = chain_ids.last() {
            config_labels.insert(
                format!("containerd.io/gc.ref.snapshot.{}", self.snapshotter),
                top.clone(),
            );
        }
        self.connection
            .ensure_content(
                lease,
                &config.descriptor.digest,
                config.descriptor.size,
                config_labels,
                BlobSource::Bytes(config.data.clone()),
            )
            .await?;
        let mut manifest_labels = HashMap::from([(
            LABEL_GC_CONFIG.to_string(),
            config.descriptor.digest.clone(),
        )]);
        for (index, layer) in layer_descriptors.iter().enumerate() {
            manifest_labels.insert(
                format!("containerd.io/gc.ref.content.l.{index}"),
                layer.digest.clone(),
            );
        }
        self.connection
            .ensure_content(
                lease,
                &manifest.descriptor.digest,
                manifest.descriptor.size,
                manifest_labels,
                BlobSource::Bytes(manifest.data.clone()),
            )
            .await?;
        let parsed = ConfigFile::parse(&config.data)?;
        let size = config.descriptor.size + layer_descriptors.iter().map(|l| l.size).sum::<i64>();
        self.by_manifest.lock().insert(
            manifest.descriptor.digest.clone(),
            (
                size,
                parsed.image_config(),
                config.descriptor.digest.clone(),
            ),
        );
        let target = GrpcDescriptor {
            media_type: manifest.descriptor.media_type.clone(),
            digest: manifest.descriptor.digest.clone(),
            size: manifest.descriptor.size,
            annotations: HashMap::new(),
        };
        let mut infos = Vec::new();
        for name in names {
            self.put_image(lease, name, target.clone()).await?;
            infos.push(ImageInfo {
                name: name.clone(),
                id: config.descriptor.digest.clone(),
                size_bytes: u64::try_from(size).unwrap_or(0),
                config: parsed.image_config(),
            });
        }
        Ok(infos)
    }

    async fn put_image(&self, lease: &str, name: &str, target: GrpcDescriptor) -> Result<()> {
        let image = Image {
            name: name.to_string(),
            labels: HashMap::new(),
            target: Some(target),
            created_at: None,
            updated_at: None,
        };
        let created = self
            .images()
            .create(self.connection.leased(
                CreateImageRequest {
                    image: Some(image.clone()),
                    source_date_epoch: None,
                },
                lease,
            ))
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(status) if status.code() == Code::AlreadyExists => {
                self.images()
                    .update(self.connection.leased(
                        UpdateImageRequest {
                            image: Some(image),
                            update_mask: Some(prost_types::FieldMask {
                                paths: vec!["target".to_string()],
                            }),
                            source_date_epoch: None,
                        },
                        lease,
                    ))
                    .await
                    .map_err(|s| status_error(s, &format!("image {name}")))?;
                Ok(())
            }
            Err(status) => Err(status_error(status, &format!("image {name}"))),
        }
    }

    async fn snapshot_exists(&self, key: &str) -> Result<bool> {
        match self
            .snapshots()
            .stat(self.connection.request(StatSnapshotRequest {
                snapshotter: self.snapshotter.clone(),
                key: key.to_string(),
            }))
            .await
        {
            Ok(_) => Ok(true),
            Err(status) if status.code() == Code::NotFound => Ok(false),
            Err(status) => Err(status_error(status, &format!("snapshot {key}"))),
        }
    }

    /// Applies one layer on top of its parent and commits it under its chain id.
    async fn unpack_layer(
        &self,
        lease: &str,
        layer: &Descriptor,
        chain_id: &str,
        parent: Option<&str>,
    ) -> Result<()> {
        if self.snapshot_exists(chain_id).await? {
            return Ok(());
        }
        let key = format!(
            "extract-{}-{chain_id}",
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
        );
        let mounts = self
            .snapshots()
            .prepare(self.connection.leased(
                PrepareSnapshotRequest {
                    snapshotter: self.snapshotter.clone(),
                    key: key.clone(),
                    parent: parent.unwrap_or_default().to_string(),
                    labels: HashMap::new(),
                },
                lease,
            ))
            .await
            .map_err(|s| status_error(s, &format!("snapshot for layer {}", layer.digest)))?
            .into_inner()
            .mounts;
        let applied = DiffClient::new(self.connection.channel())
            .apply(self.connection.leased(
                ApplyRequest {
                    diff: Some(GrpcDescriptor {
                        media_type: layer.media_type.clone(),
                        digest: layer.digest.clone(),
                        size: layer.size,
                        annotations: HashMap::new(),
                    }),
                    mounts,
                    payloads: HashMap::new(),
                    sync_fs: false,
                },
                lease,
            ))
            .await;
        if let Err(status) = applied {
            self.remove_snapshot(&key).await;
            return Err(status_error(
                status,
                &format!("applying layer {}", layer.digest),
            ));
        }
        let committed = self
            .snapshots()
            .commit(self.connection.leased(
                CommitSnapshotRequest {
                    snapshotter: self.snapshotter.clone(),
                    name: chain_id.to_string(),
                    key: key.clone(),
                    labels: HashMap::new(),
                },
                lease,
            ))
            .await;
        match committed {
            Ok(_) => Ok(()),
            // Someone else unpacked the same layer meanwhile.
            Err(status) if status.code() == Code::AlreadyExists => {
                self.remove_snapshot(&key).await;
                Ok(())
            }
            Err(status) => {
                self.remove_snapshot(&key).await;
                Err(status_error(
                    status,
                    &format!("committing layer {}", layer.digest),
                ))
            }
        }
    }

    async fn remove_snapshot(&self, key: &str) {
        let _ = self
            .snapshots()
            .remove(self.connection.request(RemoveSnapshotRequest {
                snapshotter: self.snapshotter.clone(),
                key: key.to_string(),
            }))
            .await;
    }
}

fn layer_diff_ids(config: &Blob, layers: usize) -> Result<Vec<String>> {
    let parsed = ConfigFile::parse(&config.data)?;
    if parsed.rootfs.diff_ids.len() != layers {
        return Err(RuntimeError::InvalidImage(format!(
            "config {} lists {} layers, the manifest {layers}",
            config.descriptor.digest,
            parsed.rootfs.diff_ids.len()
        )));
    }
    Ok(parsed.rootfs.diff_ids)
}

#[async_trait]
impl ImageService for ContainerdImageService {
    async fn image_status(&self, reference: &str) -> Result<Option<ImageInfo>> {
        if reference.starts_with("sha256:") {
            for image in self.inner.list_images().await? {
                let info = self.inner.info_for(&image).await?;
                if info.id == reference {
                    return Ok(Some(info));
                }
            }
            return Ok(None);
        }
        let name = Reference::parse(reference)?.to_string();
        match self.inner.get_image(&name).await? {
            Some(image) => Ok(Some(self.inner.info_for(&image).await?)),
            None => Ok(None),
        }
    }

    async fn pull(&self, reference: &str, auth: Option<&RegistryAuth>) -> Result<ImageInfo> {
        let parsed = Reference::parse(reference)?;
        let name = parsed.to_string();
        let pull_error = |reason: String| RuntimeError::Pull {
            image: name.clone(),
            reason,
        };
        let mut session = self.inner.registry.session(&parsed, auth);
        let mut fetched = session.manifest(parsed.manifest_reference()).await?;
        let manifest = loop {
            match ManifestDocument::parse(&fetched.media_type, &fetched.data)? {
                ManifestDocument::Image(manifest) => break manifest,
                ManifestDocument::Index(index) => {
                    let chosen = oci::select_platform(&index).ok_or_else(|| {
                        pull_error("no manifest for this platform in the image index".into())
                    })?;
                    let digest = chosen.digest.clone();
                    fetched = session.manifest(&digest).await?;
                    if ManifestDocument::parse(&fetched.media_type, &fetched.data)
                        .is_ok_and(|doc| matches!(doc, ManifestDocument::Index(_)))
                    {
                        return Err(pull_error("nested image index".into()));
                    }
                }
            }
        };
        let manifest_media_type = manifest_media_type(&manifest, &fetched.media_type);
        let config_data = session.blob_bytes(&manifest.config.digest).await?;
        let config = Blob {
            descriptor: manifest.config.clone(),
            data: config_data,
        };
        let diff_ids = layer_diff_ids(&config, manifest.layers.len())?;
        let mut layers = Vec::with_capacity(manifest.layers.len());
        for (layer, diff_id) in manifest.layers.iter().zip(diff_ids) {
            oci::validate_digest(&layer.digest)?;
            // Present layers are not downloaded again.
            let source = if self
                .inner
                .connection
                .content_info(&layer.digest)
                .await?
                .is_some()
            {
                BlobSource::Bytes(bytes::Bytes::new())
            } else {
                let response = session.blob(&layer.digest).await?;
                let image = name.clone();
                BlobSource::Stream(Box::pin(response.bytes_stream().map_err(move |e| {
                    RuntimeError::Pull {
                        image: image.clone(),
                        reason: format!("downloading layer: {e}"),
                    }
                })))
            };
            layers.push(LayerToStore {
                descriptor: layer.clone(),
                diff_id,
                source,
            });
        }
        let mut manifest_blob = Blob::new(&manifest_media_type, fetched.data.clone());
        manifest_blob.descriptor.digest = fetched.digest.clone();
        let mut infos = self
            .inner
            .store(std::slice::from_ref(&name), manifest_blob, config, layers)
            .await?;
        infos
            .pop()
            .ok_or_else(|| pull_error("nothing stored".into()))
    }

    async fn import(&self, tarball: &Path) -> Result<Vec<ImageInfo>> {
        let dir = tempfile::Builder::new().prefix("rkube-import-").tempdir()?;
        let images = {
            let tarball = tarball.to_path_buf();
            let extract_dir = dir.path().to_path_buf();
            tokio::task::spawn_blocking(move || tarball::read_tarball(&tarball, &extract_dir))
                .await
                .map_err(|e| RuntimeError::Other(format!("import task: {e}")))??
        };
        let mut infos = Vec::new();
        for image in images {
            let diff_ids = layer_diff_ids(&image.config, image.layers.len())?;
            let layers = image
                .layers
                .into_iter()
                .zip(diff_ids)
                .map(|((descriptor, path), diff_id)| LayerToStore {
                    descriptor,
                    diff_id,
                    source: BlobSource::File(path),
                })
                .collect();
            infos.extend(
                self.inner
                    .store(&image.names, image.manifest, image.config, layers)
                    .await?,
            );
        }
        Ok(infos)
    }

    async fn list(&self) -> Result<Vec<ImageInfo>> {
        let mut infos = Vec::new();
        for image in self.inner.list_images().await? {
            match self.inner.info_for(&image).await {
                Ok(info) => infos.push(info),
                // An image whose content is incomplete (another client's) is not ours to list.
                Err(error) => tracing::debug!(image = %image.name, %error, "skipping image"),
            }
        }
        Ok(infos)
    }
}

fn manifest_media_type(manifest: &Manifest, served: &str) -> String {
    match manifest.media_type.as_deref() {
        Some(media_type) if !media_type.is_empty() => media_type.to_string(),
        _ if !served.is_empty() && served != "application/json" => served.to_string(),
        _ => oci::OCI_MANIFEST.to_string(),
    }
}
