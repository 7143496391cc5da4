//! The controller manager binary stops gracefully on SIGTERM (what `kill`, systemd and a
//! kubelet send) as on SIGINT: it gives its leader Lease up, so a successor takes over at
//! once instead of waiting out the lease duration. It used to handle only Ctrl-C, so
//! `kill` left the Lease held.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;

use common::Env;
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::wait::await_condition;
use kube::Api;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const LEASE: &str = "rkube-controller-manager";
const TIMEOUT: Duration = Duration::from_secs(60);

fn holder(lease: &Lease) -> Option<&str> {
    lease
        .spec
        .as_ref()?
        .holder_identity
        .as_deref()
        .filter(|holder| !holder.is_empty())
}

async fn signal_releases_the_lease(signal: Signal) {
    let env = Env::start().await;
    let mut controller_manager =
        tokio::process::Command::new(env!("CARGO_BIN_EXE_rkube-controller-manager"))
            .args(["--master", &env.url, "--port", "0"])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
    let pid = Pid::from_raw(i32::try_from(controller_manager.id().unwrap()).unwrap());

    let leases: Api<Lease> = Api::namespaced(env.client.clone(), "kube-system");
    let held = await_condition(leases.clone(), LEASE, |lease: Option<&Lease>| {
        lease.and_then(holder).is_some()
    });
    let lease = tokio::select! {
        lease = tokio::time::timeout(TIMEOUT, held) => lease.expect("no leader within 60 s").unwrap(),
        status = controller_manager.wait() => panic!("the controller manager exited: {status:?}"),
    };
    let identity = lease.as_ref().and_then(holder).unwrap().to_string();

    kill(pid, signal).unwrap();
    let status = tokio::time::timeout(TIMEOUT, controller_manager.wait())
        .await
        .expect("the controller manager did not stop within 60 s")
        .unwrap();
    assert!(
        status.success(),
        "{signal} should stop the controller manager gracefully, got {status:?} (signal {:?})",
        status.signal()
    );

    // It releases before it exits, so the Lease says so now.
    let lease = leases.get(LEASE).await.unwrap();
    assert_eq!(
        holder(&lease),
        None,
        "{identity} still holds the lease after {signal}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_releases_the_leader_lease() {
    signal_releases_the_lease(Signal::SIGTERM).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_releases_the_leader_lease() {
    signal_releases_the_lease(Signal::SIGINT).await;
}
