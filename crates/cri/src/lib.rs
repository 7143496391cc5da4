//! The kubelet's side-effect boundary. Everything the kubelet does to the machine goes
//! through one of three traits, each with a real implementation and a fake:
//!
//! - [`ContainerRuntime`]: containers and exec (real: containerd over gRPC, `containerd`
//!   module; fake: `fake` module, also used by simulated nodes);
//! - [`ImageService`]: image presence, pull from registries, import of OCI/Docker tarballs;
//! - [`PodNetwork`]: one network namespace per pod, wired by CNI plugins (real: `cni`
//!   module running the plugin binaries; fake: addresses from a counter).
//!
//! The kubelet builds the OCI runtime spec itself (it knows the pod); the runtime only runs
//! what it is given. Containers carry labels so the kubelet can rebuild its view of the
//! node from the runtime after a restart without disturbing anything.
//!
//! (Interface first: the implementations are filled in by the kubelet work items.)
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod cni;
pub mod containerd;
pub mod fake;
pub mod fake_network;
pub mod image;

use std::collections::BTreeMap;
use std::path::PathBuf;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::{broadcast, mpsc};

/// Labels the kubelet puts on every container (rebuilding state after restart reads them).
pub mod labels {
    pub const POD_UID: &str = "io.rkube.pod.uid";
    pub const POD_NAME: &str = "io.rkube.pod.name";
    pub const POD_NAMESPACE: &str = "io.rkube.pod.namespace";
    pub const CONTAINER_NAME: &str = "io.rkube.container.name";
    /// "init" or "regular".
    pub const CONTAINER_KIND: &str = "io.rkube.container.kind";
    /// How many times this container (name) had been restarted when this one was created.
    pub const RESTART_COUNT: &str = "io.rkube.container.restart-count";
    /// Hash of the container spec it was created from (a changed spec means replace).
    pub const SPEC_HASH: &str = "io.rkube.container.spec-hash";
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No such container, task, image or network namespace.
    #[error("{0} not found")]
    NotFound(String),
    /// It exists already (create of an existing id).
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The image could not be pulled (registry unreachable, unauthorized, not found).
    #[error("failed to pull image {image:?}: {reason}")]
    Pull { image: String, reason: String },
    /// An image tarball or manifest is not understood.
    #[error("invalid image: {0}")]
    InvalidImage(String),
    /// The runtime refused the container (bad command, missing binary, bad spec).
    #[error("failed to create or start container: {0}")]
    Start(String),
    /// The runtime (containerd socket, CNI plugin) could not be reached or failed.
    #[error("runtime unavailable: {0}")]
    Unavailable(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, RuntimeError>;

/// What the image says about how to run it (from the image config).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// The normalised reference, e.g. `docker.io/library/busybox:latest`.
    pub name: String,
    /// `sha256:...` of the image config (what `imageID` reports).
    pub id: String,
    pub size_bytes: u64,
    pub config: ImageConfig,
}

/// Basic-auth credentials for one registry (from imagePullSecrets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryAuth {
    pub username: String,
    pub password: String,
}

#[async_trait]
pub trait ImageService: Send + Sync + 'static {
    /// The image if present locally.
    async fn image_status(&self, reference: &str) -> Result<Option<ImageInfo>>;
    /// Pulls `reference` from its registry (plain HTTP allowed for loopback registries),
    /// stores it and unpacks it so containers can be created from it.
    async fn pull(&self, reference: &str, auth: Option<&RegistryAuth>) -> Result<ImageInfo>;
    /// Imports every image in an OCI or Docker image tarball.
    async fn import(&self, tarball: &std::path::Path) -> Result<Vec<ImageInfo>>;
    async fn list(&self) -> Result<Vec<ImageInfo>>;
}

/// Where a container's output goes: plain files the kubelet serves logs from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogPaths {
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

/// Everything needed to create a container.
#[derive(Clone, Debug)]
pub struct ContainerConfig {
    /// Unique id, chosen by the kubelet.
    pub id: String,
    pub image: ImageInfo,
    /// The full OCI runtime spec (process, mounts, namespaces incl. the pod's network
    /// namespace path, cgroups path, resources). The runtime adds only the rootfs.
    pub spec: oci_spec::runtime::Spec,
    pub labels: BTreeMap<String, String>,
    pub logs: LogPaths,
    /// The main process gets a stdin that [`ContainerRuntime::attach`] writes to (the pod
    /// spec's `stdin`); otherwise its stdin is empty.
    pub stdin: bool,
    /// The first attach that ends closes that stdin for good (the pod spec's `stdinOnce`).
    pub stdin_once: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContainerState {
    /// Created, not started.
    Created,
    Running {
        started_at: DateTime<Utc>,
    },
    Exited {
        started_at: Option<DateTime<Utc>>,
        finished_at: DateTime<Utc>,
        exit_code: i32,
        /// The kernel OOM killer ended it.
        oom_killed: bool,
    },
    Unknown,
}

#[derive(Clone, Debug)]
pub struct ContainerInfo {
    pub id: String,
    pub image: String,
    pub image_id: String,
    pub labels: BTreeMap<String, String>,
    pub state: ContainerState,
    pub created_at: DateTime<Utc>,
    /// The main process's PID while running (for probes that enter its namespaces).
    pub pid: Option<u32>,
}

/// Something happened to a container; the kubelet re-syncs the owning pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuntimeEvent {
    Exited {
        id: String,
        exit_code: i32,
        at: DateTime<Utc>,
    },
    OomKilled {
        id: String,
    },
}

/// A process to run inside a running container.
#[derive(Clone, Debug, Default)]
pub struct ExecConfig {
    pub command: Vec<String>,
    pub env: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
}

/// The streams of an exec or attach. Closing `stdin` (dropping its sender) closes the
/// process's stdin; `stdout`/`stderr` end when the process's streams do. With a tty,
/// everything arrives on `stdout`.
pub struct ExecIo {
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    pub stdout: mpsc::Sender<Bytes>,
    pub stderr: Option<mpsc::Sender<Bytes>>,
    /// Terminal size changes (columns, rows).
    pub resize: Option<mpsc::Receiver<(u16, u16)>>,
}

#[async_trait]
pub trait ContainerRuntime: Send + Sync + 'static {
    /// Creates the container (and its task) from `config`, not started.
    async fn create(&self, config: ContainerConfig) -> Result<()>;
    async fn start(&self, id: &str) -> Result<()>;
    /// Sends a signal (15 = SIGTERM, 9 = SIGKILL) to the container's main process.
    async fn signal(&self, id: &str, signal: u32) -> Result<()>;
    /// Removes the container, its task and its writable layer. Idempotent.
    async fn remove(&self, id: &str) -> Result<()>;
    async fn status(&self, id: &str) -> Result<ContainerInfo>;
    /// Every container this runtime manages for the kubelet (those with kubelet labels).
    async fn list(&self) -> Result<Vec<ContainerInfo>>;
    /// Container lifecycle events; lagging receivers should re-list.
    fn events(&self) -> broadcast::Receiver<RuntimeEvent>;
    /// Runs a process in a running container, wiring `io`, and returns its exit code.
    async fn exec(&self, id: &str, config: ExecConfig, io: ExecIo) -> Result<i32>;
    /// Feeds `stdin` to the main process of a container created with
    /// [`ContainerConfig::stdin`], returning when the sender is dropped; with
    /// [`ContainerConfig::stdin_once`] the process then reads end-of-file. Output is not
    /// part of this: it goes to the log files, which the caller follows.
    async fn attach(&self, id: &str, stdin: mpsc::Receiver<Bytes>) -> Result<()> {
        drop(stdin);
        Err(RuntimeError::Other(format!(
            "this runtime cannot write to the stdin of container {id}"
        )))
    }
}

/// A pod's network as the kubelet sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNetworkStatus {
    /// Path of the network namespace containers join (e.g. /var/run/netns/<id>).
    pub netns_path: PathBuf,
    pub ip: String,
}

#[async_trait]
pub trait PodNetwork: Send + Sync + 'static {
    /// Creates the pod's network namespace and wires it (idempotent for the same pod).
    async fn setup(&self, pod_uid: &str, namespace: &str, name: &str) -> Result<PodNetworkStatus>;
    /// The pod's network if it is set up (used after a kubelet restart).
    async fn status(&self, pod_uid: &str) -> Result<Option<PodNetworkStatus>>;
    /// Unwires and deletes the namespace (idempotent).
    async fn teardown(&self, pod_uid: &str) -> Result<()>;
    /// The uids of every pod this network holds anything for, including a half-done
    /// setup, so the kubelet can tear down networks whose pod is gone (deleted while the
    /// kubelet was down, or a crash between network setup and container start).
    async fn list(&self) -> Result<Vec<String>>;
}
