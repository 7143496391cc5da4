//! rkubelet: flags -> [`rkubelet::run`].

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use rkube_cri::containerd::{ContainerdConfig, ContainerdImageService, ContainerdRuntime};
use rkube_cri::fake::{FakeImageService, FakeRuntime};
use rkube_cri::fake_network::FakeNetwork;
use rkube_runtime::component::{
    shutdown_signal, telemetry, ApiServerArgs, ListenArgs, ListenDefaults,
};
use rkubelet::{KubeletConfig, NodeRuntime};

/// Upstream kubelet's port. Every interface: the API server proxies logs, exec and attach
/// to it from wherever it runs.
struct KubeletListen;

impl ListenDefaults for KubeletListen {
    const BIND_ADDRESS: &'static str = "0.0.0.0";
    const PORT: u16 = 10250;
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum RuntimeKind {
    /// containerd over its gRPC socket, pod networks through CNI plugins.
    Containerd,
    /// In-memory containers and addresses (simulated nodes; nothing touches the machine).
    Fake,
}

#[derive(Parser, Debug)]
#[command(name = "rkubelet", about = "The rkube node agent", version)]
struct Args {
    #[command(flatten)]
    api_server: ApiServerArgs,
    // The kubelet's HTTP server: logs, exec, attach, healthz.
    #[command(flatten)]
    listen: ListenArgs<KubeletListen>,
    /// Node name (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// The node's InternalIP (also each pod's hostIP).
    #[arg(long, default_value = "127.0.0.1")]
    node_ip: IpAddr,
    /// This node's pod address range (also spec.podCIDR).
    #[arg(long, default_value = "10.244.0.0/24")]
    pod_cidr: String,
    #[arg(long, default_value_t = 110)]
    max_pods: u32,
    /// Node state: pod volumes, /etc/hosts files, container logs, CNI state.
    #[arg(long, default_value = "/var/lib/rkubelet")]
    root_dir: PathBuf,
    /// Cluster DNS server written into pods' resolv.conf (repeatable).
    #[arg(long, default_value = "10.96.0.10")]
    cluster_dns: Vec<String>,
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Seconds between node Lease renewals.
    #[arg(long, default_value_t = 10.0)]
    lease_renew_interval: f64,
    /// Seconds before a crashed container is restarted the second time (doubles after that).
    #[arg(long, default_value_t = 10.0)]
    backoff_initial: f64,
    /// Upper bound in seconds of the crash-loop and image-pull backoff.
    #[arg(long, default_value_t = 300.0)]
    backoff_max: f64,
    /// Import every *.tar in this directory into the image store at startup.
    #[arg(long)]
    image_dir: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "containerd")]
    runtime: RuntimeKind,
    /// containerd's socket.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    containerd_address: PathBuf,
    /// containerd namespace of this node's containers and images.
    #[arg(long, default_value = "rkube")]
    containerd_namespace: String,
    /// Directory of the CNI plugin binaries.
    #[arg(long, default_value = "/usr/lib/cni")]
    cni_bin_dir: PathBuf,
    /// The Linux bridge pods are attached to (at most 15 characters).
    #[arg(long, default_value = "rkube0")]
    cni_bridge: String,
    /// The CNI network name (host-local's reservations and the plugins' iptables comments).
    #[arg(long, default_value = "rkube")]
    cni_network_name: String,
    /// iptables filter chain with the ACCEPT rules for the pod CIDR, jumped to from FORWARD.
    #[arg(long, default_value = "RKUBE-FORWARD")]
    cni_forward_chain: String,
    /// Where pod network namespaces are bind-mounted.
    #[arg(long, default_value = "/var/run/netns")]
    netns_dir: PathBuf,
    /// Simulated nodes in this process (only with --runtime=fake): <node-name>-0..N-1.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// A container's log file is rotated once larger than this (a quantity such as 10Mi).
    #[arg(long, default_value = "10Mi")]
    container_log_max_size: String,
    /// Files kept per container output stream, the live one included (at least 2).
    #[arg(long, default_value_t = rkubelet::logrotate::DEFAULT_MAX_FILES)]
    container_log_max_files: usize,
}

fn seconds(value: f64, flag: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .with_context(|| format!("--{flag} must be a non-negative number of seconds"))
}

async fn runtimes(args: &Args) -> anyhow::Result<Vec<NodeRuntime>> {
    match args.runtime {
        RuntimeKind::Fake => (0..args.nodes.max(1))
            .map(|_| {
                Ok(NodeRuntime {
                    runtime: Arc::new(FakeRuntime::new()),
                    images: Arc::new(FakeImageService::new()),
                    network: Arc::new(FakeNetwork::new(&args.pod_cidr)?),
                    version: "fake://0.1.0".to_string(),
                })
            })
            .collect(),
        RuntimeKind::Containerd => {
            anyhow::ensure!(args.nodes <= 1, "--nodes needs --runtime=fake");
            let mut config =
                ContainerdConfig::new(&args.containerd_address, args.root_dir.join("containerd"));
            config.namespace = args.containerd_namespace.clone();
            let runtime = ContainerdRuntime::connect(&config)
                .await
                .context("connecting to containerd")?;
            let images = ContainerdImageService::connect(&config)
                .await
                .context("connecting to containerd")?;
            let mut cni = rkube_cri::cni::CniConfig::new(&args.pod_cidr, args.root_dir.join("cni"));
            cni.plugin_dir = args.cni_bin_dir.clone();
            cni.bridge_name = args.cni_bridge.clone();
            cni.network_name = args.cni_network_name.clone();
            cni.forward_chain = args.cni_forward_chain.clone();
            cni.netns_dir = args.netns_dir.clone();
            let network = rkube_cri::cni::CniNetwork::new(cni).context("configuring CNI")?;
            Ok(vec![NodeRuntime {
                runtime: Arc::new(runtime),
                images: Arc::new(images),
                network: Arc::new(network),
                version: "containerd://1.6".to_string(),
            }])
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init_tracing();
    let args = Args::parse();
    let shutdown = shutdown_signal().context("installing the SIGTERM and SIGINT handlers")?;
    // Flags are checked before anything is connected to.
    let container_log_rotation = rkubelet::logrotate::RotationPolicy::new(
        rkubelet::logrotate::parse_size(&args.container_log_max_size)?,
        args.container_log_max_files,
    )?;
    let node_name = args.node_name.clone().unwrap_or_else(rkubelet::hostname);
    let client = args.api_server.target().client().await?;
    let runtimes = runtimes(&args).await?;
    let Some(first) = runtimes.first().cloned() else {
        anyhow::bail!("no runtime configured");
    };
    let mut config = KubeletConfig::new(client, &node_name, args.root_dir.clone(), first);
    config.runtimes = runtimes;
    config.node_ip = args.node_ip;
    config.pod_cidr = Some(args.pod_cidr.clone());
    config.max_pods = args.max_pods;
    config.cluster_dns = args.cluster_dns.clone();
    config.cluster_domain = args.cluster_domain.clone();
    config.lease_renew_interval = seconds(args.lease_renew_interval, "lease-renew-interval")?;
    config.backoff_initial = seconds(args.backoff_initial, "backoff-initial")?;
    config.backoff_max = seconds(args.backoff_max, "backoff-max")?;
    config.image_dir = args.image_dir.clone();
    config.container_log_rotation = container_log_rotation;
    let listener = args.listen.bind().await?;
    tracing::info!(node = %node_name, "rkubelet starting");
    rkubelet::run(config, listener, shutdown).await?;
    Ok(())
}
