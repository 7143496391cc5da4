//! The release binaries, started as processes. The flags they share (where the API server
//! is, where to listen, where to keep state) are spelled here once, so a renamed flag is one
//! edit; a benchmark adds the flags specific to what it measures.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::process::ChildProcess;

/// How long the API server may take to answer /readyz (storage open, namespaces created).
const API_SERVER_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The `--bin-dir` flag every benchmark takes.
#[derive(clap::Args, Debug, Clone)]
pub struct BinDirFlag {
    /// Directory of the release binaries (default: the directory of this benchmark's own
    /// executable, i.e. target/release when it runs from there).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
}

/// A binary a benchmark runs.
#[derive(Clone, Copy, Debug)]
pub enum Binary {
    ApiServer,
    Scheduler,
    ControllerManager,
    Kubelet,
    /// rkube-store's `raw_creates` example: the raw-store baseline of the API server
    /// benchmark, in a process of its own as the store is in the API server's.
    RawStoreCreates,
}

impl Binary {
    fn relative_path(self) -> &'static str {
        match self {
            Binary::ApiServer => "rkube-apiserver",
            Binary::Scheduler => "rkube-scheduler",
            Binary::ControllerManager => "rkube-controller-manager",
            Binary::Kubelet => "rkubelet",
            Binary::RawStoreCreates => "examples/raw_creates",
        }
    }

    fn package(self) -> &'static str {
        match self {
            Binary::ApiServer => "rkube-apiserver",
            Binary::Scheduler => "rkube-scheduler",
            Binary::ControllerManager => "rkube-controller-manager",
            Binary::Kubelet => "rkubelet",
            Binary::RawStoreCreates => "rkube-store",
        }
    }
}

/// The one cargo command that builds `binaries` (an example is not built by default, and
/// naming one alone would leave the packages' binaries out).
fn build_command(binaries: &[Binary]) -> String {
    let mut command = String::from("cargo build --release");
    for binary in binaries {
        command.push_str(" -p ");
        command.push_str(binary.package());
    }
    if binaries
        .iter()
        .any(|b| matches!(b, Binary::RawStoreCreates))
    {
        command.push_str(" --bins --example raw_creates");
    }
    command
}

/// Where the binaries are.
pub struct Binaries {
    dir: PathBuf,
}

impl Binaries {
    /// The `--bin-dir` directory, checked to hold every binary in `needed`; the error names
    /// the cargo command that builds the missing ones.
    pub fn require(flag: &BinDirFlag, needed: &[Binary]) -> anyhow::Result<Binaries> {
        let dir = match &flag.bin_dir {
            Some(dir) => dir.clone(),
            None => std::env::current_exe()?
                .parent()
                .context("this executable has no directory")?
                .to_path_buf(),
        };
        let binaries = Binaries { dir };
        let missing: Vec<Binary> = needed
            .iter()
            .copied()
            .filter(|b| !binaries.path(*b).exists())
            .collect();
        if !missing.is_empty() {
            let names: Vec<&str> = missing.iter().map(|b| b.relative_path()).collect();
            bail!(
                "{} not found in {}: build with `{}` (or pass --bin-dir)",
                names.join(", "),
                binaries.dir.display(),
                build_command(&missing)
            );
        }
        Ok(binaries)
    }

    pub fn path(&self, binary: Binary) -> PathBuf {
        self.dir.join(binary.relative_path())
    }

    /// A command for `binary`: warnings only, no stdin, stdout discarded, stderr inherited
    /// (callers redirect it to a log file where the output is long).
    pub fn command(&self, binary: Binary) -> Command {
        let mut command = Command::new(self.path(binary));
        command
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        command
    }

    /// A scheduler for the API server at `api_url`, with `extra` flags.
    pub fn start_scheduler(&self, api_url: &str, extra: &[String]) -> anyhow::Result<ChildProcess> {
        let mut command = self.command(Binary::Scheduler);
        command
            .arg(format!("--master={api_url}"))
            .arg("--port=0")
            .args(extra);
        ChildProcess::spawn(&mut command, "rkube-scheduler")
    }

    /// A controller manager for the API server at `api_url`, without leader election, with
    /// `extra` flags.
    pub fn start_controller_manager(
        &self,
        api_url: &str,
        extra: &[String],
    ) -> anyhow::Result<ChildProcess> {
        let mut command = self.command(Binary::ControllerManager);
        command
            .arg(format!("--master={api_url}"))
            .arg("--port=0")
            .arg("--leader-elect=false")
            .args(extra);
        ChildProcess::spawn(&mut command, "rkube-controller-manager")
    }

    /// A kubelet command for node `node_name` of the API server at `api_url`, serving on a
    /// free loopback port (returned) with its state under `root_dir`; the caller adds the
    /// runtime's flags and spawns it.
    pub fn kubelet_command(
        &self,
        api_url: &str,
        node_name: &str,
        root_dir: &Path,
    ) -> anyhow::Result<(Command, u16)> {
        let port = crate::free_port()?;
        let mut command = self.command(Binary::Kubelet);
        command
            .arg(format!("--master={api_url}"))
            .arg(format!("--node-name={node_name}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg("--root-dir")
            .arg(root_dir);
        Ok((command, port))
    }

    /// rkube-store's raw create throughput: `count` creates of `value` at `concurrency`,
    /// on a fresh embedded store under `scratch` or on the given etcd. Writes per second.
    pub async fn raw_store_creates(
        &self,
        storage: &Storage,
        scratch: &Path,
        value: &[u8],
        count: usize,
        concurrency: usize,
    ) -> anyhow::Result<f64> {
        let value_file = scratch.join("raw-value.json");
        std::fs::write(&value_file, value)?;
        let mut command = tokio::process::Command::new(self.path(Binary::RawStoreCreates));
        match storage {
            Storage::Embedded => command.arg("--data-dir").arg(scratch.join("raw-store")),
            Storage::Etcd(endpoint) => command.arg("--etcd").arg(endpoint),
        };
        let output = command
            .arg("--count")
            .arg(count.to_string())
            .arg("--concurrency")
            .arg(concurrency.to_string())
            .arg("--value-file")
            .arg(&value_file)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .output()
            .await
            .context("running raw_creates")?;
        if !output.status.success() {
            bail!("raw_creates failed: {}", output.status);
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        stdout
            .lines()
            .find_map(|line| line.strip_prefix("writes_per_second "))
            .context("raw_creates printed no writes_per_second")?
            .trim()
            .parse()
            .context("parsing raw_creates' writes_per_second")
    }
}

/// Where an API server keeps its objects.
pub enum Storage {
    /// The embedded store, in a fresh temporary directory.
    Embedded,
    /// The etcd at this endpoint.
    Etcd(String),
}

/// The real `rkube-apiserver` as a child process on a free loopback port.
pub struct ApiServer {
    pub process: ChildProcess,
    url: String,
    _data: tempfile::TempDir,
}

impl ApiServer {
    /// Starts it and waits until /readyz answers (storage open, system namespaces created).
    pub async fn start(binaries: &Binaries, storage: &Storage) -> anyhow::Result<ApiServer> {
        let data = tempfile::Builder::new()
            .prefix("rkube-bench-apiserver-")
            .tempdir()?;
        let port = crate::free_port()?;
        let mut command = binaries.command(Binary::ApiServer);
        command
            .arg(format!("--port={port}"))
            .arg("--data-dir")
            .arg(data.path().join("data"));
        if let Storage::Etcd(endpoint) = storage {
            command.arg(format!("--etcd-servers={endpoint}"));
        }
        let mut server = ApiServer {
            process: ChildProcess::spawn(&mut command, "rkube-apiserver")?,
            url: format!("http://127.0.0.1:{port}"),
            _data: data,
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + API_SERVER_READY_TIMEOUT;
        loop {
            if server.process.exited() {
                bail!("rkube-apiserver exited while starting");
            }
            let ready = client.get(format!("{}/readyz", server.url)).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return Ok(server);
            }
            if Instant::now() > deadline {
                bail!("rkube-apiserver not ready after {API_SERVER_READY_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_build_command_covers_binaries_and_the_store_example() {
        assert_eq!(
            build_command(&[Binary::ApiServer, Binary::Kubelet]),
            "cargo build --release -p rkube-apiserver -p rkubelet"
        );
        assert_eq!(
            build_command(&[Binary::ApiServer, Binary::RawStoreCreates]),
            "cargo build --release -p rkube-apiserver -p rkube-store --bins --example raw_creates"
        );
    }
}
