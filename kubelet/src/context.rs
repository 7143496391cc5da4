//! What every pod worker of one node shares.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::Client;
use parking_lot::RwLock;
use rkube_cri::LogPaths;
use rkube_runtime::{object_reference, EventRecorder, EventType};

use crate::config::{KubeletConfig, NodeRuntime};
use crate::prober::ProbeExecutor;

pub struct NodeContext {
    pub name: String,
    pub client: Client,
    pub runtime: NodeRuntime,
    pub config: Arc<KubeletConfig>,
    pub host_ip: String,
    /// This node's state directory (pods/<uid>/...).
    pub root: PathBuf,
    pub recorder: EventRecorder,
    pub probes: Arc<dyn ProbeExecutor>,
    /// The pods bound here as last seen, by (namespace, name), for the HTTP server.
    pub pods: RwLock<HashMap<(String, String), Arc<Pod>>>,
}

impl NodeContext {
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.root.join("pods").join(uid)
    }

    /// Where instance number `restart` of `container` writes its output.
    pub fn log_paths(&self, uid: &str, container: &str, restart: u32) -> LogPaths {
        let dir = self.pod_dir(uid).join("logs").join(container);
        LogPaths {
            stdout: dir.join(format!("{restart}.stdout")),
            stderr: dir.join(format!("{restart}.stderr")),
        }
    }

    /// Records an event about `pod` (or one of its containers when `container` is set).
    pub fn event(
        &self,
        pod: &Pod,
        container: Option<&str>,
        kind: EventType,
        reason: &str,
        message: impl Into<String>,
    ) {
        let mut reference: ObjectReference = object_reference(pod);
        if let Some(name) = container {
            let init = pod
                .spec
                .as_ref()
                .and_then(|s| s.init_containers.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.name == name));
            let list = if init { "initContainers" } else { "containers" };
            reference.field_path = Some(format!("spec.{list}{{{name}}}"));
        }
        self.recorder.record(reference, kind, reason, message);
    }
}
