//! The host names this benchmark's networks use, and their removal: a run changes the
//! machine only through names it owns, and removes them at the end, also after a failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The kubelet's CNI bridge and forwarding chain in this run (its `--cni-bridge` and
/// `--cni-forward-chain`), distinct from a real kubelet's defaults on the same machine.
pub const KUBELET_BRIDGE: &str = "rkbkube0";
pub const KUBELET_CHAIN: &str = "RKBENCH-KUBE-FWD";
pub const KUBELET_NETWORK_NAME: &str = "rkube-bench";
/// The raw baseline's CNI bridge and chain.
pub const RAW_BRIDGE: &str = "rkbench0";
pub const RAW_CHAIN: &str = "RKBENCH-FWD";
/// Parent cgroup of the raw baseline's containers.
pub const RAW_CGROUP_PARENT: &str = "rkube-bench";

/// Refuses to run if a bridge or chain of ours exists already: another run, or something
/// else using the name, which we must not touch.
pub fn ensure_names_free() -> anyhow::Result<()> {
    for (bridge, chain) in [(KUBELET_BRIDGE, KUBELET_CHAIN), (RAW_BRIDGE, RAW_CHAIN)] {
        if link_exists(bridge) || chain_exists(chain) {
            anyhow::bail!(
                "{bridge} or {chain} already exists (another benchmark run?); not touching it"
            );
        }
    }
    Ok(())
}

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

fn chain_exists(chain: &str) -> bool {
    quiet(Command::new("iptables").args(["-S", chain]))
}

/// Removes a bridge and forwarding chain the run created.
fn remove_bridge_and_chain(bridge: &str, chain: &str) {
    if link_exists(bridge) {
        quiet(Command::new("ip").args(["link", "del", bridge]));
    }
    while quiet(Command::new("iptables").args(["-D", "FORWARD", "-j", chain])) {}
    quiet(Command::new("iptables").args(["-F", chain]));
    quiet(Command::new("iptables").args(["-X", chain]));
}

/// Unmounts and deletes network namespace files left by an interrupted run.
fn remove_netns_files(paths: &[PathBuf]) {
    for path in paths {
        if path.exists() {
            quiet(Command::new("umount").arg(path));
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Removes (empty) cgroup directories `relative` in every mounted hierarchy, deepest first.
fn remove_cgroups(relative: &[String]) {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let roots: Vec<PathBuf> = hierarchies.flatten().map(|e| e.path()).collect();
    for root in roots {
        let mut dirs: Vec<PathBuf> = Vec::new();
        for rel in relative {
            let dir = root.join(rel.trim_start_matches('/'));
            collect_dirs(&dir, &mut dirs);
        }
        dirs.sort_by_key(|d| std::cmp::Reverse(d.as_os_str().len()));
        for dir in dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    if !dir.is_dir() {
        return;
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&entry.path(), out);
            }
        }
    }
    out.push(dir.to_path_buf());
}

/// Removes what the raw baseline may have left: its bridge and chain, its namespace
/// directory's mount, and its containers' cgroups.
pub fn remove_raw_leftovers(work: &Path) {
    remove_bridge_and_chain(RAW_BRIDGE, RAW_CHAIN);
    quiet(Command::new("umount").arg(work.join("raw-netns")));
    remove_cgroups(&[RAW_CGROUP_PARENT.to_string()]);
}

/// What the kubelet phase may leave on the machine unless it finishes cleanly.
pub struct KubeletLeftovers {
    /// The kubelet's `--netns-dir`, inside the run's work directory.
    pub netns_dir: PathBuf,
    pub pod_uids: Vec<String>,
}

impl KubeletLeftovers {
    pub fn clean(&self) {
        let netns: Vec<PathBuf> = self
            .pod_uids
            .iter()
            .map(|uid| self.netns_dir.join(format!("rkube-{uid}")))
            .collect();
        remove_netns_files(&netns);
        // CNI makes the namespace directory a mount point of its own.
        quiet(Command::new("umount").arg(&self.netns_dir));
        remove_bridge_and_chain(KUBELET_BRIDGE, KUBELET_CHAIN);
        let cgroups: Vec<String> = self
            .pod_uids
            .iter()
            .map(|uid| format!("rkube/pod{uid}"))
            .collect();
        remove_cgroups(&cgroups);
    }
}
