//! Forwarding for the pod CIDR: an iptables chain of ACCEPT rules jumped to from the top
//! of FORWARD, so a DROP policy (Docker's) does not cut pod traffic. Separate because it
//! is node-wide firewall state, installed once, not per-pod networking.

use std::process::Stdio;

use tokio::process::Command;

use super::CniNetwork;
use crate::{Result, RuntimeError};

impl CniNetwork {
    /// Installs, idempotently, the forwarding ACCEPT rules for the pod CIDR.
    pub(super) async fn ensure_forwarding(&self) -> Result<()> {
        let mut ready = self.forwarding_ready.lock().await;
        if *ready {
            return Ok(());
        }
        let chain = self.config.forward_chain.as_str();
        let cidr = self.cidr.to_string();
        if !iptables(&["-S", chain]).await? {
            run_iptables(&["-N", chain]).await?;
        }
        let comment = format!("rkube pod network {}", self.config.network_name);
        for direction in ["-s", "-d"] {
            let rule = [
                direction,
                &cidr,
                "-m",
                "comment",
                "--comment",
                &comment,
                "-j",
                "ACCEPT",
            ];
            let check: Vec<&str> = ["-C", chain].into_iter().chain(rule).collect();
            if !iptables(&check).await? {
                let append: Vec<&str> = ["-A", chain].into_iter().chain(rule).collect();
                run_iptables(&append).await?;
            }
        }
        if !iptables(&["-C", "FORWARD", "-j", chain]).await? {
            run_iptables(&["-I", "FORWARD", "1", "-j", chain]).await?;
        }
        *ready = true;
        Ok(())
    }
}

/// Runs iptables on the filter table; `Err` only when it could not be run at all.
async fn iptables_output(args: &[&str]) -> Result<std::process::Output> {
    Command::new("iptables")
        .arg("-w")
        .args(["-t", "filter"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|err| RuntimeError::Unavailable(format!("running iptables: {err}")))
}

/// Runs iptables; `Ok(false)` when it ran and said no (a failed check).
async fn iptables(args: &[&str]) -> Result<bool> {
    Ok(iptables_output(args).await?.status.success())
}

/// Runs iptables; a refusal is an error carrying its stderr.
async fn run_iptables(args: &[&str]) -> Result<()> {
    let output = iptables_output(args).await?;
    if output.status.success() {
        Ok(())
    } else {
        Err(RuntimeError::Unavailable(format!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}
