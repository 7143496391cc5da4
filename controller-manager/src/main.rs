//! rkube-controller-manager: flags -> [`rkube_controller_manager::run`].

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use rkube_controller_manager::{run, Config};
use rkube_runtime::component::{
    shutdown_signal, telemetry, ApiServerArgs, ListenArgs, ListenDefaults,
};
use rkube_runtime::ControllerSelection;

/// Upstream kube-controller-manager's address and port for /healthz.
struct ControllerManagerListen;

impl ListenDefaults for ControllerManagerListen {
    const BIND_ADDRESS: &'static str = "127.0.0.1";
    const PORT: u16 = 10257;
}

#[derive(Parser, Debug)]
#[command(
    name = "rkube-controller-manager",
    about = "Runs rkube's controllers against an API server"
)]
struct Flags {
    #[command(flatten)]
    api_server: ApiServerArgs,
    // Serves /healthz, /livez, /readyz and /leader.
    #[command(flatten)]
    listen: ListenArgs<ControllerManagerListen>,
    /// Controllers to run: `*` for all on by default, `name` to add, `-name` to remove.
    #[arg(long, default_value = "*")]
    controllers: String,
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
    telemetry::init_tracing();
    let flags = Flags::parse();
    // Before the lease is campaigned for: a SIGTERM must release it, not kill the process.
    let shutdown = match shutdown_signal() {
        Ok(shutdown) => shutdown,
        Err(e) => {
            eprintln!("rkube-controller-manager: installing the SIGTERM and SIGINT handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut config = Config::new(flags.api_server.target());
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
    let listener = match flags.listen.bind().await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("rkube-controller-manager: {e}");
            return ExitCode::FAILURE;
        }
    };
    match run(config, listener, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rkube-controller-manager: {e}");
            ExitCode::FAILURE
        }
    }
}
