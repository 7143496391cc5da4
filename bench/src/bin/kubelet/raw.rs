//! Phase 1, the baseline: create + start of busybox `sleep 3600` straight through rkube's
//! containerd runtime, with the runtime's own network namespace and with a CNI one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use rkube_bench::stats::{run_concurrent, Summary};
use rkube_cri::cni::{CniConfig, CniNetwork};
use rkube_cri::containerd::{ContainerdConfig, ContainerdImageService, ContainerdRuntime};
use rkube_cri::{ContainerConfig, ContainerRuntime, ImageInfo, ImageService, LogPaths, PodNetwork};
use rkube_testkit::containerd::ContainerdProcess;
use serde_json::json;

use crate::host::{RAW_BRIDGE, RAW_CGROUP_PARENT, RAW_CHAIN};
use crate::{Flags, IMAGE};

/// A minimal runtime spec: `sleep 3600` as root, own cgroup, and either the runtime's own
/// fresh network namespace or the given one.
fn raw_spec(id: &str, netns: Option<&Path>) -> anyhow::Result<oci_spec::runtime::Spec> {
    let mut spec = serde_json::to_value(oci_spec::runtime::Spec::default())?;
    spec["process"]["args"] = json!(["sleep", "3600"]);
    spec["root"]["readonly"] = json!(false);
    spec["linux"]["cgroupsPath"] = json!(format!("/{RAW_CGROUP_PARENT}/{id}"));
    if let Some(path) = netns {
        if let Some(namespaces) = spec["linux"]["namespaces"].as_array_mut() {
            for ns in namespaces.iter_mut() {
                if ns["type"] == "network" {
                    ns["path"] = json!(path.display().to_string());
                }
            }
        }
    }
    Ok(serde_json::from_value(spec)?)
}

struct RawNode {
    runtime: Arc<ContainerdRuntime>,
    network: Arc<CniNetwork>,
    image: ImageInfo,
    logs: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RawMode {
    RuntimeNetns,
    Cni,
}

async fn raw_batch(
    node: &Arc<RawNode>,
    mode: RawMode,
    total: usize,
    concurrency: usize,
    tag: &str,
) -> anyhow::Result<Summary> {
    let ids: Vec<String> = (0..total)
        .map(|i| format!("raw-{tag}-{i}-{}", std::process::id()))
        .collect();
    let ids = Arc::new(ids);
    let n = node.clone();
    let i2 = ids.clone();
    let batch = run_concurrent(total, concurrency, move |i| {
        let node = n.clone();
        let id = i2[i].clone();
        async move {
            let started = Instant::now();
            let netns = match mode {
                RawMode::Cni => Some(node.network.setup(&id, "bench", &id).await?.netns_path),
                RawMode::RuntimeNetns => None,
            };
            let config = ContainerConfig {
                id: id.clone(),
                image: node.image.clone(),
                spec: raw_spec(&id, netns.as_deref())?,
                labels: [
                    (rkube_cri::labels::POD_NAME.to_string(), id.clone()),
                    (
                        rkube_cri::labels::CONTAINER_NAME.to_string(),
                        "sleep".to_string(),
                    ),
                ]
                .into_iter()
                .collect(),
                logs: LogPaths {
                    stdout: node.logs.join(&id).join("stdout.log"),
                    stderr: node.logs.join(&id).join("stderr.log"),
                },
                stdin: false,
                stdin_once: false,
            };
            node.runtime.create(config).await?;
            node.runtime.start(&id).await?;
            Ok(started.elapsed())
        }
    })
    .await?;
    // Stop and remove everything before the next batch so batches don't load each other.
    for id in ids.iter() {
        node.runtime.remove(id).await?;
        if mode == RawMode::Cni {
            node.network.teardown(id).await?;
        }
    }
    Ok(batch.summary())
}

pub struct RawResults {
    pub runtime_netns_seq: Summary,
    pub runtime_netns_conc: Summary,
    pub cni_seq: Summary,
    pub cni_conc: Summary,
}

pub async fn raw_phase(
    flags: &Flags,
    containerd: &ContainerdProcess,
    work: &Path,
) -> anyhow::Result<RawResults> {
    let mut config = ContainerdConfig::new(containerd.socket_path(), work.join("raw-state"));
    config.runc_root = containerd.runc_root();
    config.namespace = "rkube-bench-raw".to_string();
    let runtime = Arc::new(ContainerdRuntime::connect(&config).await?);
    let images = ContainerdImageService::connect(&config).await?;
    let tarball = rkube_testkit::images::busybox_oci_tarball(work, IMAGE)?;
    let image = images
        .import(&tarball)
        .await?
        .into_iter()
        .next()
        .context("import returned no image")?;
    let mut cni = CniConfig::new(flags.raw_cidr.clone(), work.join("raw-cni"));
    cni.plugin_dir = flags.cni_bin_dir.clone();
    cni.bridge_name = RAW_BRIDGE.to_string();
    cni.network_name = "rkube-bench-raw".to_string();
    cni.forward_chain = RAW_CHAIN.to_string();
    cni.netns_dir = work.join("raw-netns");
    let network = Arc::new(CniNetwork::new(cni)?);
    let node = Arc::new(RawNode {
        runtime,
        network,
        image,
        logs: work.join("raw-logs"),
    });
    // One untimed container first: the first start pays for loading the shim binary,
    // snapshotter caches and the bridge creation; pods get the same warm-up below.
    raw_batch(&node, RawMode::Cni, 1, 1, "warmup").await?;
    let n = flags.pods;
    let c = flags.concurrency;
    Ok(RawResults {
        runtime_netns_seq: raw_batch(&node, RawMode::RuntimeNetns, n, 1, "rs").await?,
        runtime_netns_conc: raw_batch(&node, RawMode::RuntimeNetns, n, c, "rc").await?,
        cni_seq: raw_batch(&node, RawMode::Cni, n, 1, "cs").await?,
        cni_conc: raw_batch(&node, RawMode::Cni, n, c, "cc").await?,
    })
}
