//! rkube-scheduler: flags -> `rkube_scheduler::run`.

use anyhow::Context;
use clap::Parser;
use rkube_runtime::component::{
    shutdown_signal, telemetry, ApiServerArgs, ListenArgs, ListenDefaults,
};
use rkube_scheduler::Config;

/// Upstream kube-scheduler's address and port for /healthz and /readyz.
struct SchedulerListen;

impl ListenDefaults for SchedulerListen {
    const BIND_ADDRESS: &'static str = "127.0.0.1";
    const PORT: u16 = 10259;
}

#[derive(Parser, Debug)]
#[command(name = "rkube-scheduler", about = "Assigns pending pods to nodes")]
struct Args {
    #[command(flatten)]
    api_server: ApiServerArgs,
    // Serves /healthz, /livez and /readyz.
    #[command(flatten)]
    listen: ListenArgs<SchedulerListen>,
    #[arg(long, default_value = "default-scheduler")]
    scheduler_name: String,
    /// Bindings in flight at once.
    #[arg(long, default_value_t = 64)]
    bind_concurrency: usize,
    /// Unschedulable-status writes in flight at once.
    #[arg(long, default_value_t = 16)]
    write_concurrency: usize,
    /// Percentage of nodes to consider per pod in large clusters (default: upstream's adaptive rule).
    #[arg(long)]
    percentage_of_nodes_to_score: Option<u32>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init_tracing();
    let args = Args::parse();
    let shutdown = shutdown_signal().context("installing the SIGTERM and SIGINT handlers")?;
    let mut config = Config::new(args.api_server.target());
    config.scheduler_name = args.scheduler_name;
    config.bind_concurrency = args.bind_concurrency;
    config.write_concurrency = args.write_concurrency;
    config.percentage_of_nodes_to_score = args.percentage_of_nodes_to_score;
    let listener = args.listen.bind().await?;
    rkube_scheduler::run(config, listener, shutdown).await?;
    Ok(())
}
