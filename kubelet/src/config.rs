//! Everything a kubelet is told from outside (flags of the binary, fields in tests).

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rkube_cri::{ContainerRuntime, ImageService, PodNetwork};

/// The three side-effect implementations one node uses.
#[derive(Clone)]
pub struct NodeRuntime {
    pub runtime: Arc<dyn ContainerRuntime>,
    pub images: Arc<dyn ImageService>,
    pub network: Arc<dyn PodNetwork>,
    /// Reported as nodeInfo.containerRuntimeVersion, e.g. `containerd://1.6.20`.
    pub version: String,
}

#[derive(Clone)]
pub struct KubeletConfig {
    /// The API server.
    pub client: kube::Client,
    /// The Node name (a simulated node `i` of `node_count` is `<node_name>-<i>`).
    pub node_name: String,
    pub node_ip: IpAddr,
    pub pod_cidr: Option<String>,
    pub max_pods: u32,
    /// Per-node state: pod directories (volumes, /etc/hosts, logs).
    pub root_dir: PathBuf,
    pub cluster_dns: Vec<String>,
    pub cluster_domain: String,
    pub lease_renew_interval: Duration,
    pub lease_duration_seconds: i32,
    /// Node status is written on change and at least this often.
    pub status_report_interval: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// A container that ran this long has its crash-loop backoff forgotten.
    pub backoff_reset: Duration,
    /// Every `*.tar` here is imported into the image store at startup.
    pub image_dir: Option<PathBuf>,
    /// How often a pod is re-synced without any trigger (ConfigMap/Secret volume refresh).
    pub resync_interval: Duration,
    /// One runtime per node; simulated nodes (`node_count > 1`) each get their own.
    pub runtimes: Vec<NodeRuntime>,
    /// When container log files are rotated and how many are kept (see [`crate::logrotate`]).
    pub container_log_rotation: crate::logrotate::RotationPolicy,
    /// How often container log files are checked for rotation.
    pub container_log_monitor_interval: Duration,
    /// Where the cgroup filesystem is mounted (pod cgroups are removed below it).
    pub cgroup_root: PathBuf,
    /// How often containers, networks, cgroups and directories of pods no longer bound
    /// here are looked for and removed (also once the first pod list is in).
    pub housekeeping_interval: Duration,
}

impl KubeletConfig {
    /// Defaults as upstream, for the node `node_name` running on `runtime`.
    pub fn new(
        client: kube::Client,
        node_name: &str,
        root_dir: PathBuf,
        runtime: NodeRuntime,
    ) -> KubeletConfig {
        KubeletConfig {
            client,
            node_name: node_name.to_string(),
            node_ip: IpAddr::from([127, 0, 0, 1]),
            pod_cidr: None,
            max_pods: 110,
            root_dir,
            cluster_dns: vec!["10.96.0.10".to_string()],
            cluster_domain: "cluster.local".to_string(),
            lease_renew_interval: Duration::from_secs(10),
            lease_duration_seconds: 40,
            status_report_interval: Duration::from_secs(60),
            backoff_initial: Duration::from_secs(10),
            backoff_max: Duration::from_secs(300),
            backoff_reset: Duration::from_secs(600),
            image_dir: None,
            resync_interval: Duration::from_secs(60),
            runtimes: vec![runtime],
            container_log_rotation: crate::logrotate::RotationPolicy::default(),
            container_log_monitor_interval: crate::logrotate::DEFAULT_MONITOR_INTERVAL,
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            housekeeping_interval: Duration::from_secs(60),
        }
    }

    /// The name of node `index` when this process runs `runtimes.len()` nodes.
    pub fn node_name_at(&self, index: usize) -> String {
        if self.runtimes.len() <= 1 {
            self.node_name.clone()
        } else {
            format!("{}-{index}", self.node_name)
        }
    }
}
