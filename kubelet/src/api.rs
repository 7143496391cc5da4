//! What the kubelet's HTTP server (logs, exec, attach, port forwarding) needs from the
//! kubelet: which container serves a request, where its logs are, the runtime to exec
//! through, and the network namespace a pod's ports are in.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use rkube_cri::{ContainerRuntime, LogPaths};

/// Why a lookup failed; the message is upstream's wording where it has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// No such pod on this node, or no such container in it (HTTP 404).
    #[error("{0}")]
    NotFound(String),
    /// The request is ambiguous or asks for something that cannot be (HTTP 400).
    #[error("{0}")]
    BadRequest(String),
}

#[async_trait]
pub trait KubeletApi: Send + Sync + 'static {
    /// The id of the running container `container` (None: the pod's only container) of
    /// pod `namespace/pod`.
    async fn running_container(
        &self,
        namespace: &str,
        pod: &str,
        container: Option<&str>,
    ) -> Result<String, LookupError>;

    /// The log files of the current (or, with `previous`, the last terminated) instance.
    async fn log_paths(
        &self,
        namespace: &str,
        pod: &str,
        container: Option<&str>,
        previous: bool,
    ) -> Result<LogPaths, LookupError>;

    /// The runtime that runs the container `container_id` (for exec and attach).
    fn runtime_for(&self, container_id: &str) -> Option<Arc<dyn ContainerRuntime>>;

    /// Where connections to pod `namespace/pod`'s ports are opened (port forwarding).
    /// Kubelets that cannot forward ports keep this default.
    async fn pod_ports(&self, namespace: &str, pod: &str) -> Result<PodPorts, LookupError> {
        let _ = (namespace, pod);
        Err(LookupError::BadRequest(
            "port forwarding is not supported by this kubelet".into(),
        ))
    }
}

/// A pod's network as port forwarding reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPorts {
    /// The pod's uid (upstream names it in forwarding errors).
    pub uid: String,
    /// The pod's network namespace; None for a pod on the host's network.
    pub netns: Option<PathBuf>,
}
