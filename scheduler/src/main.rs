//! rkube-scheduler: flags -> `rkube_scheduler::run`.
use std::path::PathBuf;

use clap::Parser;
use rkube_scheduler::{ApiServer, Config};

#[derive(Parser, Debug)]
#[command(name = "rkube-scheduler", about = "Assigns pending pods to nodes")]
struct Args {
    /// API server URL (http only), e.g. http://127.0.0.1:6443. Without it, --kubeconfig or the usual inference.
    #[arg(long = "master", visible_aliases = ["server", "api-server"], env = "RKUBE_API_SERVER")]
    api_server: Option<String>,
    /// Path to a kubeconfig file.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
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
    /// Address for /healthz and /readyz.
    #[arg(long, default_value = "127.0.0.1:10259")]
    health_address: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let api_server = match (args.api_server, args.kubeconfig) {
        (Some(url), _) => ApiServer::Url(url),
        (None, Some(path)) => ApiServer::Kubeconfig(path),
        (None, None) => ApiServer::Infer,
    };
    let mut config = Config::new(api_server);
    config.scheduler_name = args.scheduler_name;
    config.bind_concurrency = args.bind_concurrency;
    config.write_concurrency = args.write_concurrency;
    config.percentage_of_nodes_to_score = args.percentage_of_nodes_to_score;
    let listener = tokio::net::TcpListener::bind(&args.health_address).await?;
    rkube_scheduler::run(config, listener, shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
