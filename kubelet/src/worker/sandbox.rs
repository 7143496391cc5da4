//! The pod's sandbox: its directory, its network (set up once, or found after a kubelet
//! restart), its /etc/hosts and resolv.conf, and its volumes (`volume_setup`): what every
//! container of the pod is created against.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use rkube_cri::PodNetworkStatus;

use super::PodWorker;
use crate::env::{PodFacts, Sources};
use crate::spec;
use crate::status::Waiting;
use crate::volumes;

/// What a pod's containers are created against.
pub struct Prepared {
    pub(super) pod_dir: PathBuf,
    pub(super) network: PodNetworkStatus,
    pub(super) facts: PodFacts,
    pub(super) sources: Sources,
    pub(super) volume_paths: BTreeMap<String, PathBuf>,
    pub(super) hosts: String,
    pub(super) resolv: String,
}

impl PodWorker {
    /// Network (when `create_sandbox`), /etc/hosts and resolv.conf, volumes. An error
    /// says why containers wait.
    pub(super) async fn prepare_pod(
        &mut self,
        pod: &Pod,
        create_sandbox: bool,
    ) -> Result<Prepared, Waiting> {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let pod_dir = self.node.pod_dir(&self.uid);
        if let Err(e) = std::fs::create_dir_all(&pod_dir) {
            return Err(Waiting::new(
                "ContainerCreating",
                format!("creating pod directory: {e}"),
            ));
        }
        if create_sandbox {
            self.ensure_network(pod).await?;
        }
        let network = self
            .network
            .clone()
            .ok_or_else(|| Waiting::new("ContainerCreating", "no pod network"))?;
        let facts = PodFacts {
            pod_ip: network.ip.clone(),
            host_ip: self.node.host_ip.clone(),
            node_name: self.node.name.clone(),
        };
        let hostname = spec::pod_hostname(pod);
        let hosts = pod_dir.join("etc-hosts");
        let resolv = pod_dir.join("resolv.conf");
        let config = &self.node.config;
        let written = write_if_changed(&hosts, &volumes::hosts_file(&network.ip, &hostname, pod))
            .and_then(|_| {
                write_if_changed(
                    &resolv,
                    &volumes::resolv_conf(&namespace, &config.cluster_domain, &config.cluster_dns),
                )
            });
        if let Err(e) = written {
            return Err(Waiting::new(
                "ContainerCreating",
                format!("writing /etc/hosts: {e}"),
            ));
        }
        let (sources, volume_paths) = self.prepare_volumes(pod, &pod_dir, &facts).await?;
        Ok(Prepared {
            pod_dir,
            network,
            facts,
            sources,
            volume_paths,
            hosts: hosts.to_string_lossy().into_owned(),
            resolv: resolv.to_string_lossy().into_owned(),
        })
    }

    /// The pod's network: the one a previous kubelet set up, or a new one.
    async fn ensure_network(&mut self, pod: &Pod) -> Result<(), Waiting> {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let network = &self.node.runtime.network;
        let existing = network.status(&self.uid).await.ok().flatten();
        let result = match existing {
            Some(s) => Ok(s),
            None => network.setup(&self.uid, &namespace, &name).await,
        };
        match result {
            Ok(s) => {
                self.network = Some(s);
                Ok(())
            }
            Err(e) => {
                let message = format!("Failed to create pod sandbox: {e}");
                self.warn_once(
                    pod,
                    None,
                    format!("sandbox:{e}"),
                    "FailedCreatePodSandBox",
                    message.clone(),
                );
                Err(Waiting::new("ContainerCreating", message))
            }
        }
    }
}

fn write_if_changed(path: &Path, content: &str) -> std::io::Result<()> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(content) {
        return Ok(());
    }
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, content)?;
    std::fs::rename(&temp, path)
}
