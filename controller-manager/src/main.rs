//! rkube-controller-manager: flags -> [`rkube_controller_manager::run`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use rkube_controller_manager::{run, ApiTarget, Config};
use rkube_runtime::ControllerSelection;

#[derive(Parser, Debug)]
#[command(
    name = "rkube-controller-manager",
    about = "Runs rkube's controllers against an API server"
)]
struct Flags {
    /// API server URL (e.g. http://127.0.0.1:6443); overrides --kubeconfig.
    #[arg(long, visible_aliases = ["server", "api-server"])]
    master: Option<String>,
    /// Path to a kubeconfig; without it and --master, KUBECONFIG or ~/.kube/config.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Controllers to run: `*` for all on by default, `name` to add, `-name` to remove.
    #[arg(long, default_value = "*")]
    controllers: String,
    /// Address for /healthz.
    #[arg(long, default_value = "127.0.0.1:10257")]
    bind_address: String,
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    #[arg(long, default_value = "15")]
    leader_elect_lease_duration_seconds: u64,
    #[arg(long, default_value = "10")]
    leader_elect_renew_deadline_seconds: u64,
    #[arg(long, default_value = "2")]
    leader_elect_retry_period_seconds: u64,
    #[arg(long, default_value = "kube-system")]
    leader_elect_resource_namespace: String,
    #[arg(long, default_value = "rkube-controller-manager")]
    leader_elect_resource_name: String,
    /// How long a node may miss lease renewals before it is marked not ready.
    #[arg(long, default_value = "50")]
    node_monitor_grace_period_seconds: u64,
    /// How often node health is checked.
    #[arg(long, default_value = "5")]
    node_monitor_period_seconds: u64,
    /// Toleration seconds assumed for pods without a toleration of the unreachable taint.
    #[arg(long, default_value = "300")]
    default_unreachable_toleration_seconds: i64,
    /// Toleration seconds assumed for pods without a toleration of the not-ready taint.
    #[arg(long, default_value = "300")]
    default_not_ready_toleration_seconds: i64,
    /// Concurrent reconciles per controller.
    #[arg(long, default_value = "5")]
    concurrent_syncs: usize,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let flags = Flags::parse();
    let api = match (flags.master, flags.kubeconfig) {
        (Some(url), _) => ApiTarget::Url(url),
        (None, Some(path)) => ApiTarget::Kubeconfig(path),
        (None, None) => ApiTarget::Infer,
    };
    let mut config = Config::new(api);
    config.controllers = ControllerSelection::parse(&flags.controllers);
    config.workers = flags.concurrent_syncs;
    let le = &mut config.leader_election;
    le.enabled = flags.leader_elect;
    le.lease_duration = Duration::from_secs(flags.leader_elect_lease_duration_seconds);
    le.renew_deadline = Duration::from_secs(flags.leader_elect_renew_deadline_seconds);
    le.retry_period = Duration::from_secs(flags.leader_elect_retry_period_seconds);
    le.namespace = flags.leader_elect_resource_namespace;
    le.name = flags.leader_elect_resource_name;
    config.node_lifecycle.node_monitor_grace_period =
        Duration::from_secs(flags.node_monitor_grace_period_seconds);
    config.node_lifecycle.node_monitor_period =
        Duration::from_secs(flags.node_monitor_period_seconds.max(1));
    config.node_lifecycle.default_unreachable_toleration_seconds =
        flags.default_unreachable_toleration_seconds;
    config.node_lifecycle.default_not_ready_toleration_seconds =
        flags.default_not_ready_toleration_seconds;
    let listener = match tokio::net::TcpListener::bind(&flags.bind_address).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "rkube-controller-manager: binding {}: {e}",
                flags.bind_address
            );
            return ExitCode::FAILURE;
        }
    };
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match run(config, listener, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rkube-controller-manager: {e}");
            ExitCode::FAILURE
        }
    }
}
