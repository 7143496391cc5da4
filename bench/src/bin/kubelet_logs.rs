//! Kubelet container-log serving benchmark (issue #7): the `rkubelet` binary (a child
//! process, `--runtime fake`, rotation out of the way with `--container-log-max-size 2Gi`)
//! serves `GET /containerLogs` without `tailLines` of a 1 GiB log file. Printed next to
//! same-run baselines:
//! - memory: the kubelet's RSS idle with the file in place, its peak RSS sampled while it
//!   serves the request, and its VmHWM before and after;
//! - speed: `cat <file> > /dev/null` throughput (page cache warm, as for the request; cat
//!   may hand the copy to the kernel), `cat <file> | cat > /dev/null` (every byte copied
//!   through a pipe once), and the request's throughput as a ratio of both.
//!
//! The API server (embedded store) is a child process too; the client reads the response
//! directly from the kubelet's port (what the API server's proxy would forward).
//!
//! Usage: `cargo build --release -p rkube-apiserver -p rkubelet -p rkube-bench &&
//! ./target/release/bench-kubelet-logs [--size-mib 1024]`

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use rkube_bench::components::{ApiServer, BinDirFlag, Binaries, Binary, Storage};
use rkube_bench::process::ChildProcess;
use rkube_bench::procfs::{mib, peak_rss_kib, rss_kib, PeakRssSampler};
use rkube_bench::{kube_client, machine_summary};

const NODE: &str = "bench-logs";

/// The kubelet serving a large container log: throughput and RSS, against `cat | cat`.
#[derive(Parser, Debug)]
struct Flags {
    /// Size of the log file in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    #[command(flatten)]
    bin_dir: BinDirFlag,
}

/// Writes `size` bytes of 100-byte numbered lines.
fn write_log(path: &Path, size: u64) -> anyhow::Result<()> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let padding = "x".repeat(100);
    let mut written = 0u64;
    let mut i = 0u64;
    while written < size {
        let head = format!("2026-01-01T00:00:00Z line {i:012} ");
        let line = format!("{head}{}\n", &padding[..99 - head.len()]);
        out.write_all(line.as_bytes())?;
        written += line.len() as u64;
        i += 1;
    }
    out.flush()?;
    out.get_ref().sync_all()?;
    Ok(())
}

/// Seconds `cat path > /dev/null` takes.
fn cat_seconds(path: &Path) -> anyhow::Result<f64> {
    let start = Instant::now();
    let status = Command::new("cat")
        .arg(path)
        .stdout(std::fs::File::create("/dev/null")?)
        .status()?;
    anyhow::ensure!(status.success(), "cat failed");
    Ok(start.elapsed().as_secs_f64())
}

/// Seconds `cat path | cat > /dev/null` takes.
fn piped_cat_seconds(path: &Path) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut reader = Command::new("cat")
        .arg(path)
        .stdout(Stdio::piped())
        .spawn()?;
    let pipe = reader.stdout.take().context("no pipe")?;
    let status = Command::new("cat")
        .stdin(pipe)
        .stdout(std::fs::File::create("/dev/null")?)
        .status()?;
    anyhow::ensure!(status.success() && reader.wait()?.success(), "cat failed");
    Ok(start.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    let binaries = Binaries::require(&flags.bin_dir, &[Binary::ApiServer, Binary::Kubelet])?;
    println!("kubelet log-serving benchmark: {}", machine_summary());
    let work = tempfile::tempdir()?;
    let server = ApiServer::start(&binaries, &Storage::Embedded).await?;
    let client = kube_client(server.url())?;

    let root = work.path().join("kubelet");
    let (mut command, kubelet_port) = binaries.kubelet_command(server.url(), NODE, &root)?;
    command.args(["--runtime", "fake", "--container-log-max-size", "2Gi"]);
    let kubelet = ChildProcess::spawn(&mut command, "rkubelet")?;
    let kubelet_pid = kubelet.pid();

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let deadline = Instant::now() + Duration::from_secs(30);
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "chatty"},
        "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": "busybox"}]}
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    let uid = loop {
        let pod = pods.get("chatty").await?;
        let running = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|phase| phase == "Running");
        if running {
            break pod.metadata.uid.context("pod without uid")?;
        }
        anyhow::ensure!(Instant::now() < deadline, "the pod never ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = root.join("pods").join(&uid).join("logs/app/0.stdout");
    anyhow::ensure!(log.exists(), "no log file at {}", log.display());

    let size = flags.size_mib << 20;
    println!("writing a {} MiB log ...", flags.size_mib);
    write_log(&log, size)?;
    let size = std::fs::metadata(&log)?.len();

    // Warm the page cache for both readers, then the baseline.
    cat_seconds(&log)?;
    let cat = (0..3)
        .map(|_| cat_seconds(&log))
        .collect::<anyhow::Result<Vec<f64>>>()?
        .into_iter()
        .fold(f64::INFINITY, f64::min);

    // A second baseline that copies every byte once through a pipe, as a server must.
    let piped = (0..3)
        .map(|_| piped_cat_seconds(&log))
        .collect::<anyhow::Result<Vec<f64>>>()?
        .into_iter()
        .fold(f64::INFINITY, f64::min);

    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = rss_kib(kubelet_pid)?;
    let hwm_before = peak_rss_kib(kubelet_pid)?;

    let sampler = PeakRssSampler::start(kubelet_pid, Duration::from_millis(10));
    let start = Instant::now();
    let response = reqwest::get(format!(
        "http://127.0.0.1:{kubelet_port}/containerLogs/default/chatty/app"
    ))
    .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "logs request: {}",
        response.status()
    );
    let mut body = response.bytes_stream();
    let mut received = 0u64;
    while let Some(chunk) = body.next().await {
        received += chunk?.len() as u64;
    }
    let served = start.elapsed().as_secs_f64();
    let peak = sampler.stop().max(idle_rss);
    anyhow::ensure!(received == size, "received {received} of {size} bytes");
    let hwm_after = peak_rss_kib(kubelet_pid)?;

    let throughput = |seconds: f64| size as f64 / (1 << 20) as f64 / seconds;
    println!(
        "\n== kubelet: GET /containerLogs of a {} MiB log, no tailLines ==",
        size >> 20
    );
    println!(
        "baseline cat > /dev/null:  {:8.0} MiB/s ({cat:.2} s, best of 3, page cache warm)",
        throughput(cat)
    );
    println!(
        "baseline cat | cat:        {:8.0} MiB/s ({piped:.2} s, best of 3)",
        throughput(piped)
    );
    println!(
        "kubelet logs request:      {:8.0} MiB/s ({served:.2} s) = {:.2} x cat, {:.2} x cat | cat",
        throughput(served),
        cat / served,
        piped / served
    );
    println!("kubelet RSS idle (baseline): {:7.1} MiB", mib(idle_rss));
    println!(
        "kubelet RSS peak serving:    {:7.1} MiB (+{:.1} MiB over idle, sampled every 10 ms)",
        mib(peak),
        mib(peak.saturating_sub(idle_rss))
    );
    println!(
        "kubelet VmHWM before/after:  {:7.1} / {:.1} MiB",
        mib(hwm_before),
        mib(hwm_after)
    );
    drop(kubelet);
    drop(server);
    Ok(())
}
