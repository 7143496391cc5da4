//! Kubelet benchmark (issue #4). In one run, against same-run baselines:
//! 1. raw container starts through `ContainerdRuntime` (create + start of busybox running
//!    `sleep 3600`), with the runtime's own empty network namespace and with a CNI-wired
//!    one, sequentially and with the pod phase's concurrency: p50/p99 request -> started;
//! 2. pod startup through the real `rkube-apiserver` and `rkubelet` binaries (child
//!    processes, a private containerd, CNI): creation -> Running seen by a watch, p50/p99,
//!    as ratios of the raw figures;
//! 3. kubelet RSS and idle CPU with the pods running;
//! 4. simulated nodes (`rkubelet --runtime fake --nodes N`): are all leases renewed on time.
//!
//! Needs root, containerd, runc and the CNI plugins. It changes the machine only through
//! names it owns and removes them at the end (see `host`): the kubelet's bridge and chain
//! (passed as its `--cni-bridge` and `--cni-forward-chain`) with network namespaces under
//! the run's temp dir (`--netns-dir`), the raw baseline's bridge and chain, and the
//! containers' cgroups.
//!
//! Usage: `cargo build --release -p rkube-apiserver -p rkubelet -p rkube-bench &&
//! ./target/release/bench-kubelet [--phases raw,pods,sim]`

mod host;
mod pods;
mod raw;
mod sim;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::Parser;
use rkube_bench::components::{BinDirFlag, Binaries, Binary};
use rkube_bench::machine_summary;
use rkube_bench::stats::ms;
use rkube_testkit::containerd::ContainerdProcess;

use host::KubeletLeftovers;
use pods::PodResults;
use raw::RawResults;

const IMAGE: &str = "busybox:rkube-bench";
const NODE: &str = "bench-node";

/// Pod start latency on containerd against raw container starts, kubelet RSS and idle CPU, simulated nodes.
#[derive(Parser, Debug)]
pub struct Flags {
    /// Containers per raw batch and pods per pod batch.
    #[arg(long, default_value_t = 50)]
    pub pods: usize,
    /// Requests in flight in the concurrent batches.
    #[arg(long, default_value_t = 5)]
    pub concurrency: usize,
    /// Comma-separated subset of: raw, pods, sim.
    #[arg(long, default_value = "raw,pods,sim")]
    pub phases: String,
    /// The kubelet's pod CIDR (test-only range).
    #[arg(long, default_value = "10.250.200.0/24")]
    pub pod_cidr: String,
    /// The raw baseline's CNI range.
    #[arg(long, default_value = "10.250.201.0/24")]
    pub raw_cidr: String,
    #[arg(long, default_value = "/usr/lib/cni")]
    pub cni_bin_dir: PathBuf,
    /// Seconds of idle CPU measurement with the pods running.
    #[arg(long, default_value_t = 30)]
    pub idle_seconds: u64,
    /// Simulated node counts, tried in order until one fails.
    #[arg(long, default_value = "100,500,1000,2000", value_delimiter = ',')]
    pub sim_nodes: Vec<usize>,
    /// Seconds each simulated-node run lasts before the leases are checked.
    #[arg(long, default_value_t = 60)]
    pub sim_seconds: u64,
    /// --lease-renew-interval of the simulated kubelets.
    #[arg(long, default_value_t = 10.0)]
    pub lease_renew_interval: f64,
    #[command(flatten)]
    pub bin_dir: BinDirFlag,
}

fn print_pods(raw: Option<&RawResults>, pods: &PodResults, flags: &Flags) {
    println!("\n== pod startup through rkube-apiserver + rkubelet (creation -> Running seen by a watch) ==");
    let rows = [
        (
            "sequential",
            &pods.sequential,
            raw.map(|r| (&r.cni_seq, &r.runtime_netns_seq)),
        ),
        (
            "concurrent",
            &pods.concurrent,
            raw.map(|r| (&r.cni_conc, &r.runtime_netns_conc)),
        ),
    ];
    for (label, summary, base) in rows {
        let label = if label == "concurrent" {
            format!("{label} ({} in flight)", flags.concurrency)
        } else {
            label.to_string()
        };
        print!("{label:<24} {}", summary.line());
        if let Some((cni, runtime_netns)) = base {
            print!(
                "  | vs raw+CNI: {}  | vs raw (no CNI): {}",
                summary.ratio(cni),
                summary.ratio(runtime_netns)
            );
        }
        println!();
    }
    println!(
        "CPU per pod started (concurrent batch): rkubelet {:.1} ms, rkube-apiserver {:.1} ms",
        pods.kubelet_cpu_per_pod, pods.apiserver_cpu_per_pod
    );
    let p99 = pods.sequential.p99.max(pods.concurrent.p99);
    println!(
        "goal p99 < 1 s: {} (worst p99 {})",
        if p99 < Duration::from_secs(1) {
            "met"
        } else {
            "MISSED"
        },
        ms(p99)
    );
    println!(
        "\n== kubelet with {} running pods ==\nRSS {:.1} MiB (goal < 40 MB)  idle CPU {:.2}% of a core over {} s (goal < 1%)",
        pods.running, pods.rss_mib, pods.idle_cpu, flags.idle_seconds
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    let binaries = Binaries::require(&flags.bin_dir, &[Binary::ApiServer, Binary::Kubelet])?;
    let phases: Vec<&str> = flags.phases.split(',').map(str::trim).collect();
    let wants = |p: &str| phases.contains(&p);
    println!(
        "rkubelet benchmark: {} containers/pods per batch, concurrency {}, {}",
        flags.pods,
        flags.concurrency,
        machine_summary()
    );
    let work = tempfile::Builder::new()
        .prefix("rkbench-")
        .tempdir_in("/tmp")?;

    let mut raw = None;
    let mut pods = None;
    if wants("raw") || wants("pods") {
        if !rkube_testkit::containerd::available() {
            bail!("the raw and pods phases need root, containerd and runc");
        }
        host::ensure_names_free()?;
        let containerd = ContainerdProcess::start().await?;
        let mut leftovers = KubeletLeftovers {
            netns_dir: work.path().join("kubelet-netns"),
            pod_uids: Vec::new(),
        };
        let result = async {
            if wants("raw") {
                let r = raw::raw_phase(&flags, &containerd, work.path()).await?;
                println!("\n== raw containerd: create + start of busybox `sleep 3600` (request -> started) ==");
                let c = flags.concurrency;
                println!("runtime netns, sequential   {}", r.runtime_netns_seq.line());
                println!("runtime netns, {c} in flight  {}", r.runtime_netns_conc.line());
                println!("CNI netns, sequential       {}", r.cni_seq.line());
                println!("CNI netns, {c} in flight      {}", r.cni_conc.line());
                raw = Some(r);
            }
            if wants("pods") {
                let result =
                    pods::pods_phase(&flags, &binaries, &containerd, work.path(), &mut leftovers)
                        .await?;
                pods = Some(result);
            }
            anyhow::Ok(())
        }
        .await;
        drop(containerd);
        host::remove_raw_leftovers(work.path());
        leftovers.clean();
        result?;
    }
    if let Some(p) = &pods {
        print_pods(raw.as_ref(), p, &flags);
    }

    if wants("sim") {
        println!(
            "\n== simulated nodes (rkubelet --runtime fake --nodes N, lease renew interval {} s, checked after {} s; on time = renewTime age <= {} s) ==",
            flags.lease_renew_interval,
            flags.sim_seconds,
            flags.lease_renew_interval + 2.0
        );
        let mut largest = None;
        for &n in &flags.sim_nodes {
            let r = match sim::sim_run(&flags, &binaries, n, work.path()).await {
                Ok(r) => r,
                Err(e) => {
                    println!("N={n}: failed: {e:#}");
                    break;
                }
            };
            let ok = r.on_time == r.nodes;
            println!(
                "N={:<5} nodes {:>5}  leases {:>5}  on time {:>5}  worst age {:>6.1} s  kubelet CPU {:>5.1}%  RSS {:>6.1} MiB  apiserver CPU {:>5.1}%  -> {}",
                r.nodes,
                r.registered,
                r.leases,
                r.on_time,
                r.worst_age,
                r.cpu,
                r.rss_mib,
                r.server_cpu,
                if ok { "holds" } else { "FAILS" }
            );
            if !ok {
                break;
            }
            largest = Some(r.nodes);
        }
        match largest {
            Some(n) => println!("largest N with every lease on time: {n}"),
            None => println!("no N held"),
        }
    }
    Ok(())
}
