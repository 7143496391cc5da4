//! [`ContainerRuntime`] over containerd: a container record (spec, runc options, our
//! labels) plus a task created right away with the rootfs mounts of a snapshot prepared
//! from the image's top layer, and stdout/stderr going to the kubelet's log files.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use containerd_client::events::{TaskExit, TaskOom};
use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::events_client::EventsClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{PrepareSnapshotRequest, RemoveSnapshotRequest};
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteTaskRequest, GetContainerRequest, GetRequest, KillRequest, ListContainersRequest,
    ListTasksRequest, StartRequest, SubscribeRequest, UpdateContainerRequest, WaitRequest,
};
use containerd_client::types::v1::{Process, Status as TaskStatus};
use futures::StreamExt;
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::{broadcast, mpsc};
use tonic::transport::Channel;
use tonic::Code;

use super::{
    is_not_found, runc_options_any, status_error, timestamp_to_chrono, Connection,
    ContainerdConfig, RUNC_RUNTIME, SPEC_TYPE_URL,
};
use crate::image::oci::{self, ConfigFile};
use crate::{
    ContainerConfig, ContainerInfo, ContainerRuntime, ContainerState, ExecConfig, ExecIo, Result,
    RuntimeError, RuntimeEvent,
};

/// Marks containers this runtime created (`list` returns only those).
pub const LABEL_MANAGED: &str = "io.rkube.managed";
/// Present ("true") on containers created with `stdin_once`.
const LABEL_STDIN_ONCE: &str = "io.rkube.runtime.stdin-once";
pub const LABEL_IMAGE_ID: &str = "io.rkube.image.id";
/// When the task was started (containerd does not record it), RFC 3339.
pub const LABEL_STARTED_AT: &str = "io.rkube.runtime.started-at";
/// Set when the OOM killer hit the container, so the fact survives a kubelet restart.
pub const LABEL_OOM_KILLED: &str = "io.rkube.runtime.oom-killed";

const EVENT_BUFFER: usize = 1024;
const STOP_WAIT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct ContainerdRuntime {
    pub(super) inner: Arc<RuntimeInner>,
}

pub(super) struct RuntimeInner {
    pub(super) connection: Connection,
    pub(super) config: ContainerdConfig,
    events: broadcast::Sender<RuntimeEvent>,
    /// Containers the OOM killer hit, seen in events since we started.
    oom_killed: Mutex<HashSet<String>>,
    /// Top-layer chain id per image config digest (immutable, so never stale).
    chain_ids: Mutex<HashMap<String, String>>,
    event_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for RuntimeInner {
    fn drop(&mut self) {
        if let Some(task) = self.event_task.lock().take() {
            task.abort();
        }
    }
}

impl ContainerdRuntime {
    /// Connects and starts following containerd's task events.
    pub async fn connect(config: &ContainerdConfig) -> Result<ContainerdRuntime> {
        let connection = Connection::connect(config).await?;
        std::fs::create_dir_all(&config.runc_root)?;
        std::fs::create_dir_all(&config.fifo_dir)?;
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let inner = Arc::new(RuntimeInner {
            connection,
            config: config.clone(),
            events,
            oom_killed: Mutex::new(HashSet::new()),
            chain_ids: Mutex::new(HashMap::new()),
            event_task: Mutex::new(None),
        });
        let weak = Arc::downgrade(&inner);
        let task = tokio::spawn(follow_events(weak));
        *inner.event_task.lock() = Some(task);
        Ok(ContainerdRuntime { inner })
    }
}

impl RuntimeInner {
    pub(super) fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.connection.channel()).max_decoding_message_size(64 << 20)
    }

    pub(super) fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.connection.channel())
    }

    fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.connection.channel())
    }

    async fn top_chain_id(&self, image_id: &str) -> Result<Option<String>> {
        if let Some(chain) = self.chain_ids.lock().get(image_id).cloned() {
            return Ok(Some(chain));
        }
        let config = match self.connection.read_content(image_id).await {
            Ok(config) => config,
            Err(RuntimeError::NotFound(_)) => {
                return Err(RuntimeError::NotFound(format!("image {image_id}")))
            }
            Err(error) => return Err(error),
        };
        let chain = oci::chain_ids(&ConfigFile::parse(&config)?.rootfs.diff_ids).pop();
        if let Some(chain) = &chain {
            self.chain_ids
                .lock()
                .insert(image_id.to_string(), chain.clone());
        }
        Ok(chain)
    }

    pub(super) async fn get_container(&self, id: &str) -> Result<Container> {
        self.containers()
            .get(
                self.connection
                    .request(GetContainerRequest { id: id.to_string() }),
            )
            .await
            .map_err(|s| status_error(s, &format!("container {id}")))?
            .into_inner()
            .container
            .ok_or_else(|| RuntimeError::NotFound(format!("container {id}")))
    }

    async fn get_task(&self, id: &str) -> Result<Option<Process>> {
        match self
            .tasks()
            .get(self.connection.request(GetRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            }))
            .await
        {
            Ok(response) => Ok(response.into_inner().process),
            Err(status) if is_not_found(&status) => Ok(None),
            Err(status) => Err(status_error(status, &format!("task {id}"))),
        }
    }

    async fn set_label(&self, id: &str, key: &str, value: &str) -> Result<()> {
        let container = Container {
            id: id.to_string(),
            labels: HashMap::from([(key.to_string(), value.to_string())]),
            ..Container::default()
        };
        self.containers()
            .update(self.connection.request(UpdateContainerRequest {
                container: Some(container),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec![format!("labels.{key}")],
                }),
            }))
            .await
            .map_err(|s| status_error(s, &format!("container {id}")))?;
        Ok(())
    }

    async fn remove_snapshot(&self, key: &str) -> Result<()> {
        match self
            .snapshots()
            .remove(self.connection.request(RemoveSnapshotRequest {
                snapshotter: self.config.snapshotter.clone(),
                key: key.to_string(),
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(status) if is_not_found(&status) => Ok(()),
            Err(status) => Err(status_error(status, &format!("snapshot {key}"))),
        }
    }

    async fn delete_container_record(&self, id: &str) -> Result<()> {
        match self
            .containers()
            .delete(
                self.connection
                    .request(DeleteContainerRequest { id: id.to_string() }),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(status) if is_not_found(&status) => Ok(()),
            Err(status) => Err(status_error(status, &format!("container {id}"))),
        }
    }

    async fn create_under_lease(&self, lease: &str, config: &ContainerConfig) -> Result<()> {
        let id = &config.id;
        let parent = self
            .top_chain_id(&config.image.id)
            .await?
            .unwrap_or_default();
        let prepared = self
            .snapshots()
            .prepare(self.connection.leased(
                PrepareSnapshotRequest {
                    snapshotter: self.config.snapshotter.clone(),
                    key: id.clone(),
                    parent: parent.clone(),
                    labels: HashMap::new(),
                },
                lease,
            ))
            .await;
        let mounts = match prepared {
            Ok(response) => response.into_inner().mounts,
            Err(status) if status.code() == Code::AlreadyExists => {
                if self.get_container(id).await.is_ok() {
                    return Err(RuntimeError::AlreadyExists(format!("container {id}")));
                }
                // A leftover of an interrupted create: start over.
                self.remove_snapshot(id).await?;
                self.snapshots()
                    .prepare(self.connection.leased(
                        PrepareSnapshotRequest {
                            snapshotter: self.config.snapshotter.clone(),
                            key: id.clone(),
                            parent,
                            labels: HashMap::new(),
                        },
                        lease,
                    ))
                    .await
                    .map_err(|s| status_error(s, &format!("snapshot {id}")))?
                    .into_inner()
                    .mounts
            }
            Err(status) => return Err(status_error(status, &format!("snapshot {id}"))),
        };

        let spec = container_spec(config)?;
        let mut labels: HashMap<String, String> = config
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.insert(LABEL_MANAGED.to_string(), "true".to_string());
        labels.insert(LABEL_IMAGE_ID.to_string(), config.image.id.clone());
        if config.stdin && config.stdin_once {
            labels.insert(LABEL_STDIN_ONCE.to_string(), "true".to_string());
        }
        let container = Container {
            id: id.clone(),
            labels,
            image: config.image.name.clone(),
            runtime: Some(Runtime {
                name: RUNC_RUNTIME.to_string(),
                options: Some(runc_options_any(&self.config.runc_root)),
            }),
            spec: Some(prost_types::Any {
                type_url: SPEC_TYPE_URL.to_string(),
                value: spec,
            }),
            snapshotter: self.config.snapshotter.clone(),
            snapshot_key: id.clone(),
            ..Container::default()
        };
        if let Err(status) = self
            .containers()
            .create(self.connection.leased(
                CreateContainerRequest {
                    container: Some(container),
                },
                lease,
            ))
            .await
        {
            let error = status_error(status, &format!("container {id}"));
            if !matches!(error, RuntimeError::AlreadyExists(_)) {
                let _ = self.remove_snapshot(id).await;
            }
            return Err(error);
        }

        let created = async {
            prepare_log_file(&config.logs.stdout)?;
            prepare_log_file(&config.logs.stderr)?;
            let stdin = if config.stdin {
                let path = self.stdin_fifo(id);
                // A FIFO left by an interrupted create of the same id is as good as new.
                if !path.exists() {
                    super::exec::mkfifo(&path)?;
                }
                path.display().to_string()
            } else {
                String::new()
            };
            self.tasks()
                .create(self.connection.request(CreateTaskRequest {
                    container_id: id.clone(),
                    rootfs: mounts,
                    stdin,
                    stdout: config.logs.stdout.display().to_string(),
                    stderr: config.logs.stderr.display().to_string(),
                    terminal: false,
                    checkpoint: None,
                    options: Some(runc_options_any(&self.config.runc_root)),
                    runtime_path: String::new(),
                }))
                .await
                .map_err(|s| RuntimeError::Start(s.message().to_string()))
        }
        .await;
        if let Err(error) = created {
            let _ = self.delete_container_record(id).await;
            let _ = self.remove_snapshot(id).await;
            return Err(error);
        }
        Ok(())
    }

    /// The main process's stdin FIFO of a container created with `stdin`; the shim keeps
    /// it open for writing (until CloseIO), so attach sessions may come and go.
    pub(super) fn stdin_fifo(&self, id: &str) -> PathBuf {
        self.config.fifo_dir.join(format!("{id}.stdin"))
    }

    pub(super) fn stdin_once(container: &Container) -> bool {
        container.labels.contains_key(LABEL_STDIN_ONCE)
    }

    async fn info(&self, container: Container, task: Option<Process>) -> ContainerInfo {
        let created_at =
            timestamp_to_chrono(container.created_at.as_ref()).unwrap_or_else(Utc::now);
        let started_at = container
            .labels
            .get(LABEL_STARTED_AT)
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc));
        let mut pid = None;
        let state = match task.as_ref().map(|t| (t, TaskStatus::try_from(t.status))) {
            None => ContainerState::Unknown,
            Some((_, Ok(TaskStatus::Created))) => ContainerState::Created,
            Some((task, Ok(TaskStatus::Running | TaskStatus::Paused | TaskStatus::Pausing))) => {
                pid = Some(task.pid).filter(|pid| *pid > 0);
                ContainerState::Running {
                    started_at: started_at.unwrap_or(created_at),
                }
            }
            Some((task, Ok(TaskStatus::Stopped))) => {
                let exit_code = exit_code(task.exit_status);
                let oom_killed = self.was_oom_killed(&container, exit_code);
                ContainerState::Exited {
                    started_at,
                    finished_at: timestamp_to_chrono(task.exited_at.as_ref())
                        .unwrap_or_else(Utc::now),
                    exit_code,
                    oom_killed,
                }
            }
            Some(_) => ContainerState::Unknown,
        };
        let image_id = container
            .labels
            .get(LABEL_IMAGE_ID)
            .cloned()
            .unwrap_or_default();
        let labels: BTreeMap<String, String> = container.labels.into_iter().collect();
        ContainerInfo {
            id: container.id,
            image: container.image,
            image_id,
            labels,
            state,
            created_at,
            pid,
        }
    }

    /// Remembers an OOM kill (in memory and as a label, for after a restart) and tells
    /// subscribers.
    async fn record_oom(&self, id: &str) {
        self.oom_killed.lock().insert(id.to_string());
        if let Err(error) = self.set_label(id, LABEL_OOM_KILLED, "true").await {
            tracing::debug!(id, %error, "recording OOM kill");
        }
        let _ = self
            .events
            .send(RuntimeEvent::OomKilled { id: id.to_string() });
    }

    /// OOM kills are known from the event (in memory and as a label) or, if the event was
    /// missed, from the container's memory cgroup, which counts them.
    fn was_oom_killed(&self, container: &Container, exit_code: i32) -> bool {
        if container
            .labels
            .get(LABEL_OOM_KILLED)
            .is_some_and(|v| v == "true")
            || self.oom_killed.lock().contains(&container.id)
        {
            return true;
        }
        // Only a SIGKILL can be the OOM killer's.
        exit_code == 137 && cgroup_counts_oom_kill(container)
    }
}

fn exit_code(status: u32) -> i32 {
    i32::try_from(status).unwrap_or(255)
}

fn cgroup_counts_oom_kill(container: &Container) -> bool {
    let Some(spec) = container.spec.as_ref() else {
        return false;
    };
    let Ok(spec) = serde_json::from_slice::<serde_json::Value>(&spec.value) else {
        return false;
    };
    let Some(path) = spec
        .pointer("/linux/cgroupsPath")
        .and_then(|p| p.as_str())
        .filter(|p| !p.is_empty() && !p.contains(':') && !p.contains(".."))
    else {
        return false;
    };
    let path = path.trim_start_matches('/');
    let candidates = [
        format!("/sys/fs/cgroup/memory/{path}/memory.oom_control"),
        format!("/sys/fs/cgroup/{path}/memory.events"),
    ];
    candidates.iter().any(|file| {
        std::fs::read_to_string(file).is_ok_and(|text| {
            text.lines().any(|line| {
                let mut parts = line.split_whitespace();
                parts.next() == Some("oom_kill")
                    && parts
                        .next()
                        .and_then(|n| n.parse::<u64>().ok())
                        .unwrap_or(0)
                        > 0
            })
        })
    })
}

fn prepare_log_file(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    // A plain file, created before the task: the shim then writes each stream to its own
    // file (with `file://` URIs it would merge stderr into stdout).
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    Ok(())
}

/// The kubelet's spec with the rootfs pointed at the bundle's `rootfs` directory, as JSON.
fn container_spec(config: &ContainerConfig) -> Result<Vec<u8>> {
    let mut spec = config.spec.clone();
    let mut root = spec.root().clone().unwrap_or_else(|| {
        let mut root = oci_spec::runtime::Root::default();
        root.set_readonly(Some(false));
        root
    });
    root.set_path(std::path::PathBuf::from("rootfs"));
    spec.set_root(Some(root));
    serde_json::to_vec(&spec).map_err(|e| RuntimeError::Start(format!("encoding OCI spec: {e}")))
}

/// Forwards containerd's task exit and OOM events, resubscribing whenever the stream ends.
async fn follow_events(runtime: std::sync::Weak<RuntimeInner>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(inner) = runtime.upgrade() else {
            return;
        };
        let namespace = inner.config.namespace.clone();
        let filters = vec![
            format!("namespace=={namespace},topic==\"/tasks/exit\""),
            format!("namespace=={namespace},topic==\"/tasks/oom\""),
        ];
        let channel = inner.connection.channel();
        // No strong reference while waiting: Subscribe only returns with the first event,
        // and the runtime must still be droppable meanwhile (its Drop aborts this task).
        drop(inner);
        let subscribed = EventsClient::new(channel)
            .subscribe(SubscribeRequest { filters })
            .await;
        let mut stream = match subscribed {
            Ok(response) => {
                backoff = Duration::from_millis(100);
                response.into_inner()
            }
            Err(status) => {
                tracing::warn!(error = %status, "subscribing to containerd events");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        while let Some(envelope) = stream.next().await {
            let Some(inner) = runtime.upgrade() else {
                return;
            };
            let envelope = match envelope {
                Ok(envelope) => envelope,
                Err(status) => {
                    tracing::warn!(error = %status, "containerd event stream failed");
                    break;
                }
            };
            let Some(event) = envelope.event else {
                continue;
            };
            let type_name = event.type_url.rsplit('/').next().unwrap_or_default();
            match type_name {
                "containerd.events.TaskExit" => {
                    let Ok(exit) = TaskExit::decode(event.value.as_slice()) else {
                        continue;
                    };
                    // Exec processes end too; only the init process is the container.
                    if !exit.id.is_empty() && exit.id != exit.container_id {
                        continue;
                    }
                    let exit_code = exit_code(exit.exit_status);
                    // The shim watches for OOM only once the task has started, so a process
                    // killed right away gets no TaskOOM event; its cgroup still counts it.
                    if exit_code == 137 && !inner.oom_killed.lock().contains(&exit.container_id) {
                        if let Ok(container) = inner.get_container(&exit.container_id).await {
                            if cgroup_counts_oom_kill(&container) {
                                inner.record_oom(&exit.container_id).await;
                            }
                        }
                    }
                    let _ = inner.events.send(RuntimeEvent::Exited {
                        id: exit.container_id,
                        exit_code,
                        at: timestamp_to_chrono(exit.exited_at.as_ref()).unwrap_or_else(Utc::now),
                    });
                }
                "containerd.events.TaskOOM" => {
                    let Ok(oom) = TaskOom::decode(event.value.as_slice()) else {
                        continue;
                    };
                    if !inner.oom_killed.lock().contains(&oom.container_id) {
                        inner.record_oom(&oom.container_id).await;
                    }
                }
                _ => {}
            }
        }
        tokio::time::sleep(backoff).await;
    }
}

#[async_trait]
impl ContainerRuntime for ContainerdRuntime {
    async fn create(&self, config: ContainerConfig) -> Result<()> {
        let lease = self.inner.connection.create_lease("container").await?;
        let result = self.inner.create_under_lease(&lease, &config).await;
        // The container record now holds the snapshot; the lease only covered the gap.
        self.inner.connection.delete_lease(&lease).await;
        result
    }

    async fn start(&self, id: &str) -> Result<()> {
        self.inner
            .tasks()
            .start(self.inner.connection.request(StartRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            }))
            .await
            .map_err(|status| match status.code() {
                Code::NotFound => RuntimeError::NotFound(format!("container {id}")),
                _ => RuntimeError::Start(status.message().to_string()),
            })?;
        let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        if let Err(error) = self.inner.set_label(id, LABEL_STARTED_AT, &now).await {
            tracing::warn!(id, %error, "recording start time");
        }
        Ok(())
    }

    async fn signal(&self, id: &str, signal: u32) -> Result<()> {
        self.inner
            .tasks()
            .kill(self.inner.connection.request(KillRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
                signal,
                all: false,
            }))
            .await
            .map_err(|s| status_error(s, &format!("container {id}")))?;
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<()> {
        let inner = &self.inner;
        if let Some(task) = inner.get_task(id).await? {
            if task.status != TaskStatus::Stopped as i32 {
                let _ = self.signal(id, 9).await;
                // Waiting makes the delete below succeed instead of racing the kill.
                let mut tasks = inner.tasks();
                let wait = tasks.wait(inner.connection.request(WaitRequest {
                    container_id: id.to_string(),
                    exec_id: String::new(),
                }));
                let _ = tokio::time::timeout(STOP_WAIT, wait).await;
            }
            match inner
                .tasks()
                .delete(inner.connection.request(DeleteTaskRequest {
                    container_id: id.to_string(),
                }))
                .await
            {
                Ok(_) => {}
                Err(status) if is_not_found(&status) => {}
                Err(status) => return Err(status_error(status, &format!("task {id}"))),
            }
        }
        inner.delete_container_record(id).await?;
        inner.remove_snapshot(id).await?;
        let _ = std::fs::remove_file(inner.stdin_fifo(id));
        inner.oom_killed.lock().remove(id);
        Ok(())
    }

    async fn status(&self, id: &str) -> Result<ContainerInfo> {
        let container = self.inner.get_container(id).await?;
        let task = self.inner.get_task(id).await?;
        Ok(self.inner.info(container, task).await)
    }

    async fn list(&self) -> Result<Vec<ContainerInfo>> {
        let inner = &self.inner;
        let containers = inner
            .containers()
            .list(inner.connection.request(ListContainersRequest {
                filters: vec![format!("labels.\"{LABEL_MANAGED}\"==true")],
            }))
            .await
            .map_err(|s| status_error(s, "containers"))?
            .into_inner()
            .containers;
        let mut tasks: HashMap<String, Process> = inner
            .tasks()
            .list(inner.connection.request(ListTasksRequest {
                filter: String::new(),
            }))
            .await
            .map_err(|s| status_error(s, "tasks"))?
            .into_inner()
            .tasks
            .into_iter()
            // containerd fills `id` (not `container_id`) in listed processes.
            .map(|task| (task.id.clone(), task))
            .collect();
        let mut infos = Vec::with_capacity(containers.len());
        for container in containers {
            let task = tasks.remove(&container.id);
            infos.push(inner.info(container, task).await);
        }
        Ok(infos)
    }

    fn events(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.inner.events.subscribe()
    }

    async fn attach(&self, id: &str, stdin: mpsc::Receiver<Bytes>) -> Result<()> {
        super::exec::attach(&self.inner, id, stdin).await
    }

    async fn exec(&self, id: &str, config: ExecConfig, io: ExecIo) -> Result<i32> {
        super::exec::exec(&self.inner, id, config, io).await
    }
}
