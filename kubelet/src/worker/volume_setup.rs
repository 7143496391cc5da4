//! A pod's volumes and a container's mounts: the ConfigMaps and Secrets the pod refers to
//! are fetched each sync (so a changed ConfigMap reaches its volume), the volumes are
//! written under the pod directory, and each container gets its bind mounts, a subPath
//! resolved beneath its volume and bind-mounted by the kubelet first.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::api::Api;

use super::sandbox::Prepared;
use super::PodWorker;
use crate::env::{self, PodFacts, Sources};
use crate::spec::BindMount;
use crate::status::Waiting;
use crate::volumes;

impl PodWorker {
    /// The objects the pod's volumes and environment come from, and each volume's path.
    pub(super) async fn prepare_volumes(
        &mut self,
        pod: &Pod,
        pod_dir: &Path,
        facts: &PodFacts,
    ) -> Result<(Sources, BTreeMap<String, PathBuf>), Waiting> {
        let sources = self.fetch_sources(pod).await;
        match volumes::prepare(pod_dir, pod, facts, &sources) {
            Ok(paths) => Ok((sources, paths)),
            Err(e) => {
                let message = e.to_string();
                self.warn_once(
                    pod,
                    None,
                    format!("mount:{message}"),
                    "FailedMount",
                    message.clone(),
                );
                Err(Waiting::new("ContainerCreating", message))
            }
        }
    }

    async fn fetch_sources(&self, pod: &Pod) -> Sources {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let (mut config_maps, mut secrets) = volumes::referenced_objects(pod);
        let spec = pod.spec.as_ref();
        for c in spec.iter().flat_map(|s| {
            s.init_containers
                .iter()
                .flatten()
                .chain(s.containers.iter())
        }) {
            let (cms, ss) = env::referenced_objects(c);
            config_maps.extend(cms);
            secrets.extend(ss);
        }
        let mut sources = Sources::default();
        let cm_api: Api<ConfigMap> = Api::namespaced(self.node.client.clone(), &namespace);
        for name in config_maps {
            if let std::collections::btree_map::Entry::Vacant(e) =
                sources.config_maps.entry(name.clone())
            {
                e.insert(cm_api.get_opt(&name).await.ok().flatten());
            }
        }
        let secret_api: Api<Secret> = Api::namespaced(self.node.client.clone(), &namespace);
        for name in secrets {
            if let std::collections::btree_map::Entry::Vacant(e) =
                sources.secrets.entry(name.clone())
            {
                e.insert(secret_api.get_opt(&name).await.ok().flatten());
            }
        }
        sources
    }
}

/// The container's bind mounts; a subPath is resolved beneath its volume and mounted
/// by the kubelet under the pod directory first.
pub(super) fn container_mounts(
    container: &Container,
    prepared: &Prepared,
) -> Result<Vec<BindMount>, String> {
    let mut mounts = Vec::new();
    let mut destinations = HashSet::new();
    for (index, m) in container.volume_mounts.iter().flatten().enumerate() {
        let Some(source) = prepared.volume_paths.get(&m.name) else {
            return Err(format!(
                "cannot find volume {:?} to mount into container {:?}",
                m.name, container.name
            ));
        };
        let mut source = source.to_string_lossy().into_owned();
        if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            let resolved = volumes::resolve_sub_path(Path::new(&source), &m.name, sub)
                .map_err(|e| e.to_string())?;
            let target =
                volumes::sub_path_target(&prepared.pod_dir, &m.name, &container.name, index)
                    .ok_or_else(|| format!("invalid volume name {:?}", m.name))?;
            resolved.bind(&target).map_err(|e| {
                format!(
                    "failed to prepare subPath for volumeMount {:?} of container {:?}: {e}",
                    m.name, container.name
                )
            })?;
            source = target.to_string_lossy().into_owned();
        }
        destinations.insert(m.mount_path.clone());
        mounts.push(BindMount {
            source,
            destination: m.mount_path.clone(),
            read_only: m.read_only.unwrap_or(false),
        });
    }
    for (destination, source) in [
        ("/etc/hosts", &prepared.hosts),
        ("/etc/resolv.conf", &prepared.resolv),
    ] {
        if !destinations.contains(destination) {
            mounts.push(BindMount {
                source: source.clone(),
                destination: destination.to_string(),
                read_only: false,
            });
        }
    }
    Ok(mounts)
}
