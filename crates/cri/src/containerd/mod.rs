//! The real runtime and image service: containerd over its gRPC socket.
//!
//! Facts this module relies on (measured against containerd 1.6 from Debian, see the
//! design notes):
//! - every request carries the `containerd-namespace` header;
//! - runc keeps its state under `/run/containerd/runc/<ns>` unless the runc options carry a
//!   `root`, so [`ContainerdConfig::runc_root`] is passed on both the container's runtime
//!   options and the task create options, keeping two containerds on one machine apart;
//! - content and snapshots without a lease or a gc reference are garbage-collected, so every
//!   multi-step write happens under a lease and the stored objects carry gc reference labels;
//! - `Events.Subscribe` returns only once the first event arrives, so it runs in its own task.

mod content;
mod exec;
mod images;
mod runtime;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::{
    CreateRequest as CreateLeaseRequest, DeleteRequest as DeleteLeaseRequest,
};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

pub use images::ContainerdImageService;
pub use runtime::ContainerdRuntime;

use crate::{Result, RuntimeError};

/// How to reach containerd and where runc keeps state.
#[derive(Clone, Debug)]
pub struct ContainerdConfig {
    /// containerd's gRPC socket, e.g. `/run/containerd/containerd.sock`.
    pub socket: PathBuf,
    /// containerd namespace for everything this node creates, e.g. `rkube`.
    pub namespace: String,
    /// runc's state directory (runc options `root`), e.g. `/run/rkube/runc`.
    pub runc_root: PathBuf,
    /// Snapshotter for image layers and container root filesystems.
    pub snapshotter: String,
    /// Where exec FIFOs are created (a fresh directory per exec inside it).
    pub fifo_dir: PathBuf,
}

impl ContainerdConfig {
    /// Defaults for the given socket: namespace `rkube`, overlayfs, runc root and FIFOs under
    /// `state_dir`.
    pub fn new(socket: impl Into<PathBuf>, state_dir: impl Into<PathBuf>) -> ContainerdConfig {
        let state_dir = state_dir.into();
        ContainerdConfig {
            socket: socket.into(),
            namespace: "rkube".to_string(),
            runc_root: state_dir.join("runc"),
            snapshotter: "overlayfs".to_string(),
            fifo_dir: state_dir.join("fifo"),
        }
    }
}

pub(crate) const RUNC_RUNTIME: &str = "io.containerd.runc.v2";
pub(crate) const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
pub(crate) const PROCESS_TYPE_URL: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/Process";
const RUNC_OPTIONS_TYPE_URL: &str = "containerd.runc.v1.Options";
const LEASE_EXPIRY: Duration = Duration::from_secs(3600);

/// `containerd.runc.v1.Options`, which containerd-client does not generate.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct RuncOptions {
    #[prost(bool, tag = "1")]
    pub no_pivot_root: bool,
    #[prost(bool, tag = "2")]
    pub no_new_keyring: bool,
    #[prost(string, tag = "3")]
    pub shim_cgroup: String,
    #[prost(uint32, tag = "4")]
    pub io_uid: u32,
    #[prost(uint32, tag = "5")]
    pub io_gid: u32,
    #[prost(string, tag = "6")]
    pub binary_name: String,
    #[prost(string, tag = "7")]
    pub root: String,
    #[prost(bool, tag = "9")]
    pub systemd_cgroup: bool,
}

pub(crate) fn runc_options_any(runc_root: &std::path::Path) -> prost_types::Any {
    let options = RuncOptions {
        root: runc_root.display().to_string(),
        ..RuncOptions::default()
    };
    prost_types::Any {
        type_url: RUNC_OPTIONS_TYPE_URL.to_string(),
        value: prost::Message::encode_to_vec(&options),
    }
}

/// A channel plus the namespace every request is made in.
#[derive(Clone)]
pub(crate) struct Connection {
    channel: Channel,
    namespace: MetadataValue<tonic::metadata::Ascii>,
}

impl Connection {
    pub(crate) async fn connect(config: &ContainerdConfig) -> Result<Connection> {
        let channel = containerd_client::connect(&config.socket)
            .await
            .map_err(|e| {
                RuntimeError::Unavailable(format!(
                    "connecting to containerd at {}: {e}",
                    config.socket.display()
                ))
            })?;
        let namespace = config.namespace.parse().map_err(|_| {
            RuntimeError::Other(format!(
                "invalid containerd namespace {:?}",
                config.namespace
            ))
        })?;
        Ok(Connection { channel, namespace })
    }

    pub(crate) fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub(crate) fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert("containerd-namespace", self.namespace.clone());
        request
    }

    /// A request whose created objects belong to `lease` until it is deleted.
    pub(crate) fn leased<T>(&self, message: T, lease: &str) -> Request<T> {
        let mut request = self.request(message);
        if let Ok(value) = lease.parse() {
            request.metadata_mut().insert("containerd-lease", value);
        }
        request
    }

    /// A lease that expires by itself if we crash before deleting it.
    pub(crate) async fn create_lease(&self, purpose: &str) -> Result<String> {
        let now = chrono::Utc::now();
        let id = format!(
            "rkube-{purpose}-{}",
            now.timestamp_nanos_opt().unwrap_or_default()
        );
        let expire = now + chrono::Duration::from_std(LEASE_EXPIRY).unwrap_or_default();
        let labels = HashMap::from([(
            "containerd.io/gc.expire".to_string(),
            expire.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        )]);
        LeasesClient::new(self.channel())
            .create(self.request(CreateLeaseRequest {
                id: id.clone(),
                labels,
            }))
            .await
            .map_err(|s| status_error(s, "lease"))?;
        Ok(id)
    }

    pub(crate) async fn delete_lease(&self, id: &str) {
        let result = LeasesClient::new(self.channel())
            .delete(self.request(DeleteLeaseRequest {
                id: id.to_string(),
                sync: false,
            }))
            .await;
        if let Err(status) = result {
            tracing::warn!(lease = id, error = %status, "deleting containerd lease");
        }
    }
}

/// Maps a gRPC status to the runtime's error kinds; `what` names the object.
pub(crate) fn status_error(status: Status, what: &str) -> RuntimeError {
    match status.code() {
        Code::NotFound => RuntimeError::NotFound(what.to_string()),
        Code::AlreadyExists => RuntimeError::AlreadyExists(what.to_string()),
        Code::Unavailable => RuntimeError::Unavailable(format!("{what}: {}", status.message())),
        _ => RuntimeError::Other(format!(
            "{what}: {}: {}",
            code_name(status.code()),
            status.message()
        )),
    }
}

fn code_name(code: Code) -> String {
    format!("{code:?}")
}

pub(crate) fn is_not_found(status: &Status) -> bool {
    status.code() == Code::NotFound
}

pub(crate) fn timestamp_to_chrono(
    timestamp: Option<&prost_types::Timestamp>,
) -> Option<chrono::DateTime<chrono::Utc>> {
    let timestamp = timestamp?;
    let nanos = u32::try_from(timestamp.nanos).unwrap_or(0);
    let time = chrono::DateTime::from_timestamp(timestamp.seconds, nanos)?;
    // containerd reports "never" as the zero time (year 1).
    (time.timestamp() > 0).then_some(time)
}
