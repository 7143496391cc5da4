//! rkube-apiserver: parses flags, sets up logging, and hands over to `rkube_apiserver::run`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use rkube_apiserver::{Config, StorageConfig};
use rkube_runtime::component::{shutdown_signal, telemetry, ListenArgs, ListenDefaults};

// Many small, short-lived allocations (JSON values per request): mimalloc handles them with
// far less contention and fragmentation than glibc's malloc on this workload.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Loopback by default: expose the API deliberately (it has no authentication).
struct ApiServerListen;

impl ListenDefaults for ApiServerListen {
    const BIND_ADDRESS: &'static str = "127.0.0.1";
    const PORT: u16 = 6443;
}

#[derive(Parser, Debug)]
#[command(
    name = "rkube-apiserver",
    version,
    about = "The rkube API server (Kubernetes REST API)"
)]
struct Flags {
    #[command(flatten)]
    listen: ListenArgs<ApiServerListen>,
    /// Directory of the embedded store (used unless --etcd-servers is given).
    #[arg(long, default_value = "./rkube-data")]
    data_dir: PathBuf,
    /// Salvage a damaged embedded store log before serving: keep the records before the
    /// damage, keep the damaged log as <data-dir>/wal.damaged-<unix seconds>, and log what
    /// was dropped. Only for a store that refuses to open because its log is damaged in the
    /// middle (a torn final write is always cut without it); acknowledged writes after the
    /// damage are lost, so copy the data directory first.
    #[arg(long)]
    embedded_repair: bool,
    /// Comma-separated etcd client URLs; selects the etcd backend.
    #[arg(long, value_delimiter = ',')]
    etcd_servers: Vec<String>,
    /// CIDR for Service ClusterIPs.
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cluster_ip_range: String,
    /// Watch events kept for watchers resuming from an older resourceVersion.
    #[arg(long, default_value_t = 10_000)]
    watch_history: usize,
    /// Seconds between storage compactions.
    #[arg(long, default_value_t = 300)]
    compaction_interval_seconds: u64,
    /// How long Events are kept after their last occurrence (a Go duration such as 1h,
    /// 30m or 90s; 0 keeps them forever).
    #[arg(long, default_value = "1h", value_parser = rkube_apiserver::limits::parse_duration_flag)]
    event_ttl: Duration,
    /// Non-mutating requests in flight at once; past it requests get 429 (0: no limit).
    #[arg(long, default_value_t = 400)]
    max_requests_inflight: usize,
    /// Mutating requests in flight at once; past it requests get 429 (0: no limit).
    #[arg(long, default_value_t = 200)]
    max_mutating_requests_inflight: usize,
    /// How long a request may take before it gets 504 (a Go duration such as 1m0s);
    /// watches and logs/exec/attach/portforward excepted.
    #[arg(long, default_value = "1m0s", value_parser = rkube_apiserver::limits::parse_duration_flag)]
    request_timeout: Duration,
    /// A watch without timeoutSeconds ends after a random time between this many seconds
    /// and twice as many.
    #[arg(long, default_value_t = 1800)]
    min_request_timeout: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init_tracing();
    let flags = Flags::parse();
    let shutdown = shutdown_signal().context("installing the SIGTERM and SIGINT handlers")?;
    if flags.embedded_repair && flags.etcd_servers.is_empty() {
        repair_embedded_store(flags.data_dir.clone()).await?;
    }
    let storage = if flags.etcd_servers.is_empty() {
        StorageConfig::Embedded {
            data_dir: flags.data_dir,
        }
    } else {
        StorageConfig::Etcd {
            endpoints: flags.etcd_servers,
        }
    };
    let mut config = Config::new(storage);
    config.service_cluster_ip_range = flags.service_cluster_ip_range;
    config.watch_history = flags.watch_history;
    config.compaction_interval = Duration::from_secs(flags.compaction_interval_seconds.max(1));
    config.event_ttl = flags.event_ttl;
    config.limits = rkube_apiserver::limits::Limits {
        max_requests_inflight: flags.max_requests_inflight,
        max_mutating_requests_inflight: flags.max_mutating_requests_inflight,
        request_timeout: flags.request_timeout,
        min_request_timeout: Duration::from_secs(flags.min_request_timeout),
    };
    let listener = flags.listen.bind().await?;
    // Printed for scripts that start us on port 0.
    println!("listening on {}", listener.local_addr()?);
    rkube_apiserver::run(config, listener, shutdown).await?;
    Ok(())
}

/// Opens the embedded store once in repair mode (it logs what it dropped) and closes it, so
/// that the server then opens a log that is intact.
async fn repair_embedded_store(data_dir: PathBuf) -> anyhow::Result<()> {
    let options = rkube_store::embedded::EmbeddedOptions {
        repair: true,
        ..Default::default()
    };
    let dir = data_dir.clone();
    let store = tokio::task::spawn_blocking(move || {
        rkube_store::embedded::EmbeddedStore::open_with(&dir, options)
    })
    .await?
    .with_context(|| format!("repairing the store in {}", data_dir.display()))?;
    if store.repair_report().is_none() {
        tracing::info!(data_dir = %data_dir.display(), "--embedded-repair: the store log is intact; nothing to repair");
    }
    tokio::task::spawn_blocking(move || drop(store)).await?;
    Ok(())
}
