//! The end-to-end harness: an rkube API server running in-process on a loopback port,
//! with a kubeconfig for real clients (kubectl, kube-rs, the Python client).
//!
//! The server runs on its own thread and Tokio runtime, so a test may block (run kubectl
//! synchronously, sleep, panic) without starving the server, and the server outlives the
//! test's runtime until the [`TestCluster`] is dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use rkube_apiserver::{Config, StorageConfig};
use tokio::sync::oneshot;

pub mod cluster;
pub mod crash;

pub use rkube_testkit::etcd::EtcdProcess;
pub use rkube_testkit::free_port;
use rkube_testkit::{try_poll, POLL_INTERVAL};

/// How long to wait for the server to answer /readyz (it waits for storage and the
/// watch cache), and for a graceful shutdown to finish.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a process starting or stopping is looked at: starts and stops happen many
/// times a test, so waiting less adds up.
pub const QUICK_POLL: Duration = Duration::from_millis(20);

/// Turns on server logs when `RUST_LOG` is set; quiet otherwise. Safe to call many times.
pub fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

pub use rkube_testkit::kubectl_binary;

/// The real kubectl for one cluster: its own kubeconfig, its own discovery cache (kubectl
/// caches discovery for hours per host:port, which would leak between tests), and no
/// inherited KUBECONFIG or HOME.
pub struct Kubectl {
    pub kubeconfig: PathBuf,
    pub cache_dir: PathBuf,
    pub home: PathBuf,
}

impl Kubectl {
    /// A command to be completed and spawned by the caller (stdin closed by default).
    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(kubectl_binary());
        command
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg(format!("--cache-dir={}", self.cache_dir.display()))
            .args(args)
            .env_remove("KUBECONFIG")
            .env("HOME", &self.home)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// Runs to completion, whatever the exit status.
    pub async fn run(&self, args: &[&str]) -> Output {
        self.command(args)
            .output()
            .await
            .unwrap_or_else(|e| panic!("running {}: {e}", kubectl_binary().display()))
    }

    /// Runs and panics with the output unless it succeeds; returns stdout.
    pub async fn run_ok(&self, args: &[&str]) -> String {
        let output = self.run(args).await;
        assert!(
            output.status.success(),
            "kubectl {} failed ({}):\nstdout: {}\nstderr: {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

/// A kubeconfig for an rkube API server at `server` (plain HTTP, no credentials), with
/// `default` as the current namespace.
pub fn kubeconfig_for(server: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: rkube
  cluster:
    server: {server}
contexts:
- name: rkube
  context:
    cluster: rkube
    user: rkube
    namespace: default
current-context: rkube
users:
- name: rkube
  user: {{}}
"
    )
}

/// The workspace root (holds `examples/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// A running server thread and the means to stop it.
struct ServerThread {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl ServerThread {
    fn spawn(config: Config, addr: SocketAddr) -> anyhow::Result<ServerThread> {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (bound_tx, bound_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let thread = std::thread::Builder::new()
            .name(format!("rkube-apiserver-{}", addr.port()))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .map_err(|e| format!("building runtime: {e}"))?;
                runtime.block_on(async move {
                    let listener = match bind_with_retry(addr).await {
                        Ok(l) => {
                            let _ = bound_tx.send(Ok(()));
                            l
                        }
                        Err(e) => {
                            let message = format!("binding {addr}: {e}");
                            let _ = bound_tx.send(Err(message.clone()));
                            return Err(message);
                        }
                    };
                    let shutdown = async move {
                        let _ = stop_rx.await;
                    };
                    rkube_apiserver::run(config, listener, shutdown)
                        .await
                        .map_err(|e| e.to_string())
                })
            })
            .context("spawning the API server thread")?;
        match bound_rx.recv_timeout(READY_TIMEOUT) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!(e),
            Err(e) => bail!("API server thread did not bind: {e}"),
        }
        Ok(ServerThread {
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Asks for a graceful shutdown and waits for `run` to return.
    async fn shutdown(&mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let finished = || std::future::ready(Ok(self.is_finished().then_some(())));
        try_poll(QUICK_POLL, SHUTDOWN_TIMEOUT, finished, || {
            anyhow!("API server did not shut down within {SHUTDOWN_TIMEOUT:?}")
        })
        .await?;
        self.join()
    }

    fn join(&mut self) -> anyhow::Result<()> {
        match self.thread.take().map(JoinHandle::join) {
            None => Ok(()),
            Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => bail!("API server returned an error: {e}"),
            Some(Err(_)) => bail!("API server thread panicked"),
        }
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Waiting here keeps a test's data directory alive until the server is done with
        // it; a server that hangs on shutdown is left behind rather than hanging the test.
        // Drop cannot await, so this one wait does not go through rkube_testkit.
        let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
        while !self.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.is_finished() {
            let _ = self.join();
        }
    }
}

/// The port was just released by the previous server (restart) or picked as free; a
/// lingering socket can hold it for a moment.
async fn bind_with_retry(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let bound = || async {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => Ok(Some(listener)),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Ok(None),
            Err(e) => Err(e),
        }
    };
    try_poll(POLL_INTERVAL, Duration::from_secs(10), bound, || {
        std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("{addr} still in use after 10 s"),
        )
    })
    .await
}

/// An API server on 127.0.0.1 with its own data directory, kubeconfig and kubectl cache.
/// Stopped (gracefully) when dropped.
pub struct TestCluster {
    config: Config,
    addr: SocketAddr,
    server: ServerThread,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl TestCluster {
    /// A server with the embedded store in a fresh temporary directory.
    pub async fn start_embedded() -> TestCluster {
        Self::start_embedded_with(|_| {}).await
    }

    /// Like [`TestCluster::start_embedded`], with a chance to change the config first
    /// (e.g. a tiny `watch_history`).
    pub async fn start_embedded_with(tune: impl FnOnce(&mut Config)) -> TestCluster {
        let dir = temp_dir();
        let mut config = Config::new(StorageConfig::Embedded {
            data_dir: dir.path().join("data"),
        });
        tune(&mut config);
        Self::start(config, dir)
            .await
            .expect("starting an embedded test cluster")
    }

    /// A server storing in the etcd at `endpoint`.
    pub async fn start_etcd(endpoint: &str) -> TestCluster {
        Self::start_etcd_with(endpoint, |_| {}).await
    }

    pub async fn start_etcd_with(endpoint: &str, tune: impl FnOnce(&mut Config)) -> TestCluster {
        let mut config = Config::new(StorageConfig::Etcd {
            endpoints: vec![endpoint.to_string()],
        });
        tune(&mut config);
        Self::start(config, temp_dir())
            .await
            .expect("starting an etcd test cluster")
    }

    /// Starts a server with any config; the temp dir holds the kubeconfig, kubectl's cache
    /// and (for the embedded store, if the config points there) the data.
    pub async fn start(config: Config, dir: tempfile::TempDir) -> anyhow::Result<TestCluster> {
        init_logging();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .context("building HTTP client")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let server = ServerThread::spawn(config.clone(), addr)?;
        let cluster = TestCluster {
            config,
            addr,
            server,
            dir,
            http,
        };
        std::fs::write(cluster.kubeconfig_path(), kubeconfig_for(&cluster.url()))
            .context("writing kubeconfig")?;
        std::fs::create_dir_all(cluster.kubectl_cache_dir())?;
        cluster.wait_ready().await?;
        Ok(cluster)
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A directory owned by this cluster, removed when it is dropped.
    pub fn temp_path(&self) -> &Path {
        self.dir.path()
    }

    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    fn kubectl_cache_dir(&self) -> PathBuf {
        self.dir.path().join("kubectl-cache")
    }

    /// A plain HTTP client (30 s timeout) for raw requests against [`TestCluster::url`].
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// A kube-rs client for this server.
    pub fn kube_client(&self) -> kube::Client {
        let url = self.url().parse().expect("cluster URL is a valid URI");
        let mut config = kube::Config::new(url);
        config.default_namespace = "default".to_string();
        kube::Client::try_from(config).expect("building a kube client")
    }

    /// The real kubectl pointed at this cluster.
    pub fn kubectl_runner(&self) -> Kubectl {
        Kubectl {
            kubeconfig: self.kubeconfig_path(),
            cache_dir: self.kubectl_cache_dir(),
            home: self.dir.path().to_path_buf(),
        }
    }

    /// A `kubectl` command for this cluster, to be completed and spawned by the caller.
    pub fn kubectl_command(&self, args: &[&str]) -> tokio::process::Command {
        self.kubectl_runner().command(args)
    }

    /// Runs kubectl to completion and returns its output, whatever the exit status.
    pub async fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_runner().run(args).await
    }

    /// Runs kubectl and panics with its output unless it succeeds; returns stdout.
    pub async fn kubectl_ok(&self, args: &[&str]) -> String {
        self.kubectl_runner().run_ok(args).await
    }

    /// Polls /readyz until it answers 200.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let url = format!("{}/readyz", self.url());
        let ready = || async {
            if self.server.is_finished() {
                bail!("API server stopped while starting");
            }
            let response = self.http.get(&url).send().await;
            Ok(response
                .is_ok_and(|r| r.status().is_success())
                .then_some(()))
        };
        try_poll(QUICK_POLL, READY_TIMEOUT, ready, || {
            anyhow!(
                "API server at {} not ready after {READY_TIMEOUT:?}",
                self.url()
            )
        })
        .await
    }

    /// Graceful shutdown (the shutdown future completes, `run` returns), then a new server
    /// on the same port with the same config and data.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.server.shutdown().await?;
        self.server = ServerThread::spawn(self.config.clone(), self.addr)?;
        self.wait_ready().await
    }

    /// Graceful shutdown without restarting; later requests fail to connect.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.server.shutdown().await
    }
}

fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("rkube-e2e-")
        .tempdir()
        .expect("creating a temp dir")
}

/// The real `rkube-apiserver` binary as a child process, for tests of the binary itself
/// (flags, signals). Built by `cargo build -p rkube-apiserver`; found next to the test
/// executable in the target directory.
pub struct ServerProcess {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl ServerProcess {
    /// Path of the binary in the target directory the running test was built into.
    pub fn binary() -> anyhow::Result<PathBuf> {
        let exe = std::env::current_exe()?;
        // target/<profile>/deps/<test-binary>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .context("test executable has no target directory")?;
        let binary = profile_dir.join("rkube-apiserver");
        if !binary.exists() {
            bail!(
                "{} not built; run `cargo build -p rkube-apiserver` first",
                binary.display()
            );
        }
        Ok(binary)
    }

    /// Starts the binary with the embedded store in a temp dir on a free port plus any
    /// extra flags, and waits until it is ready.
    pub async fn start_embedded(extra_args: &[&str]) -> anyhow::Result<ServerProcess> {
        let dir = temp_dir();
        let port = free_port()?;
        let log = std::fs::File::create(dir.path().join("apiserver.log"))?;
        let child = std::process::Command::new(Self::binary()?)
            .arg(format!("--port={port}"))
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .args(extra_args)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning rkube-apiserver")?;
        let mut process = ServerProcess {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        let http = reqwest::Client::new();
        let readyz = format!("{}/readyz", process.url);
        let ready = || {
            // Looked at before the request, so the future borrows nothing of `process`.
            let exited = process.child.try_wait();
            let (http, readyz) = (&http, &readyz);
            async move {
                if let Some(status) = exited? {
                    bail!("rkube-apiserver exited during startup: {status}");
                }
                let response = http.get(readyz).send().await;
                Ok(response
                    .is_ok_and(|r| r.status().is_success())
                    .then_some(()))
            }
        };
        try_poll(QUICK_POLL, READY_TIMEOUT, ready, || {
            anyhow!("rkube-apiserver not ready after {READY_TIMEOUT:?}")
        })
        .await?;
        Ok(process)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Generates, for each `async fn scenario(cluster: &TestCluster)` named, one test in
/// `mod embedded` and one in `mod etcd` (with a private etcd), so every scenario is written
/// once and run against both storage backends.
#[macro_export]
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod embedded {
            $(
                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let cluster = $crate::TestCluster::start_embedded().await;
                    super::$scenario(&cluster).await;
                }
            )*
        }
        mod etcd {
            $(
                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let etcd = $crate::EtcdProcess::start().await.expect("starting etcd");
                    let cluster = $crate::TestCluster::start_etcd(&etcd.endpoint()).await;
                    super::$scenario(&cluster).await;
                    drop(cluster);
                    drop(etcd);
                }
            )*
        }
    };
}
