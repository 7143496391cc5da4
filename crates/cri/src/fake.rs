//! In-memory [`ContainerRuntime`] and [`ImageService`] for unit tests and simulated nodes.
//!
//! Containers "run" from `start` until signalled or told to exit ([`FakeRuntime::exit`],
//! [`FakeRuntime::oom_kill`]); a signal ends a container with `128 + signal` unless it was
//! told to ignore SIGTERM. Every exit is broadcast as a [`RuntimeEvent`], like the real
//! runtime does. Nothing touches the machine.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::Utc;
use parking_lot::Mutex;
use tokio::sync::{broadcast, mpsc};

use crate::image::oci;
use crate::image::reference;
use crate::{
    ContainerConfig, ContainerInfo, ContainerRuntime, ContainerState, ExecConfig, ExecIo,
    ImageConfig, ImageInfo, ImageService, RegistryAuth, Result, RuntimeError, RuntimeEvent,
};

const SIGTERM: u32 = 15;

/// What a fake exec prints and returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecOutcome {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

type ExecHandler = Arc<dyn Fn(&str, &ExecConfig) -> ExecOutcome + Send + Sync>;
type StartCheck = Arc<dyn Fn(&ContainerConfig) -> Option<String> + Send + Sync>;

struct FakeContainer {
    config: ContainerConfig,
    state: ContainerState,
    created_at: chrono::DateTime<Utc>,
    pid: Option<u32>,
    ignores_sigterm: bool,
    /// What attach sessions wrote to the main process's stdin.
    stdin_received: Vec<u8>,
    stdin_closed: bool,
}

#[derive(Default)]
struct RuntimeState {
    containers: BTreeMap<String, FakeContainer>,
    next_pid: u32,
    exec_handler: Option<ExecHandler>,
    start_check: Option<StartCheck>,
}

#[derive(Clone)]
pub struct FakeRuntime {
    state: Arc<Mutex<RuntimeState>>,
    events: broadcast::Sender<RuntimeEvent>,
    /// How often `list` was called: listing every container is what a real runtime
    /// charges most for, so tests count it.
    list_calls: Arc<AtomicUsize>,
}

impl Default for FakeRuntime {
    fn default() -> Self {
        FakeRuntime::new()
    }
}

impl FakeRuntime {
    pub fn new() -> FakeRuntime {
        let (events, _) = broadcast::channel(4096);
        FakeRuntime {
            state: Arc::new(Mutex::new(RuntimeState {
                next_pid: 1000,
                ..RuntimeState::default()
            })),
            events,
            list_calls: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// How many times [`ContainerRuntime::list`] has been called on this runtime (or a
    /// clone of it).
    pub fn list_calls(&self) -> usize {
        self.list_calls.load(Ordering::SeqCst)
    }

    /// Makes `start` fail with the returned message when `check` returns one (e.g. an
    /// unknown command).
    pub fn fail_start_when(
        &self,
        check: impl Fn(&ContainerConfig) -> Option<String> + Send + Sync + 'static,
    ) {
        self.state.lock().start_check = Some(Arc::new(check));
    }

    /// Decides what exec prints and returns. Without a handler, exec echoes stdin to stdout
    /// (like `cat`) and returns 0.
    pub fn set_exec_handler(
        &self,
        handler: impl Fn(&str, &ExecConfig) -> ExecOutcome + Send + Sync + 'static,
    ) {
        self.state.lock().exec_handler = Some(Arc::new(handler));
    }

    /// A container that ignores SIGTERM only stops on SIGKILL (graceful-termination tests).
    pub fn set_ignores_sigterm(&self, id: &str, ignores: bool) -> Result<()> {
        let mut state = self.state.lock();
        let container = state
            .containers
            .get_mut(id)
            .ok_or_else(|| RuntimeError::NotFound(format!("container {id}")))?;
        container.ignores_sigterm = ignores;
        Ok(())
    }

    /// The running container's process exits by itself with `exit_code`.
    pub fn exit(&self, id: &str, exit_code: i32) -> Result<()> {
        self.finish(id, exit_code, false)
    }

    /// The OOM killer ends the running container (exit code 137, `oom_killed`).
    pub fn oom_kill(&self, id: &str) -> Result<()> {
        self.finish(id, 137, true)
    }

    /// The config a container was created with.
    pub fn config(&self, id: &str) -> Option<ContainerConfig> {
        self.state
            .lock()
            .containers
            .get(id)
            .map(|c| c.config.clone())
    }

    /// What attach wrote to a container's stdin, and whether that stdin was closed.
    pub fn attached_stdin(&self, id: &str) -> Option<(Vec<u8>, bool)> {
        let state = self.state.lock();
        let container = state.containers.get(id)?;
        Some((container.stdin_received.clone(), container.stdin_closed))
    }

    pub fn container_ids(&self) -> Vec<String> {
        self.state.lock().containers.keys().cloned().collect()
    }

    fn finish(&self, id: &str, exit_code: i32, oom_killed: bool) -> Result<()> {
        let at = Utc::now();
        {
            let mut state = self.state.lock();
            let container = state
                .containers
                .get_mut(id)
                .ok_or_else(|| RuntimeError::NotFound(format!("container {id}")))?;
            let ContainerState::Running { started_at } = container.state else {
                return Err(RuntimeError::Other(format!(
                    "container {id} is not running"
                )));
            };
            container.state = ContainerState::Exited {
                started_at: Some(started_at),
                finished_at: at,
                exit_code,
                oom_killed,
            };
            container.pid = None;
        }
        if oom_killed {
            let _ = self
                .events
                .send(RuntimeEvent::OomKilled { id: id.to_string() });
        }
        let _ = self.events.send(RuntimeEvent::Exited {
            id: id.to_string(),
            exit_code,
            at,
        });
        Ok(())
    }

    fn info(id: &str, container: &FakeContainer) -> ContainerInfo {
        ContainerInfo {
            id: id.to_string(),
            image: container.config.image.name.clone(),
            image_id: container.config.image.id.clone(),
            labels: container.config.labels.clone(),
            state: container.state.clone(),
            created_at: container.created_at,
            pid: container.pid,
        }
    }
}

#[async_trait]
impl ContainerRuntime for FakeRuntime {
    async fn create(&self, config: ContainerConfig) -> Result<()> {
        let mut state = self.state.lock();
        if state.containers.contains_key(&config.id) {
            return Err(RuntimeError::AlreadyExists(format!(
                "container {}",
                config.id
            )));
        }
        state.containers.insert(
            config.id.clone(),
            FakeContainer {
                config,
                state: ContainerState::Created,
                created_at: Utc::now(),
                pid: None,
                ignores_sigterm: false,
                stdin_received: Vec::new(),
                stdin_closed: false,
            },
        );
        Ok(())
    }

    async fn start(&self, id: &str) -> Result<()> {
        let mut state = self.state.lock();
        let check = state.start_check.clone();
        state.next_pid += 1;
        let pid = state.next_pid;
        let container = state
            .containers
            .get_mut(id)
            .ok_or_else(|| RuntimeError::NotFound(format!("container {id}")))?;
        if container.state != ContainerState::Created {
            return Err(RuntimeError::Start(format!(
                "container {id} was already started"
            )));
        }
        if let Some(message) = check.and_then(|check| check(&container.config)) {
            return Err(RuntimeError::Start(message));
        }
        container.state = ContainerState::Running {
            started_at: Utc::now(),
        };
        container.pid = Some(pid);
        Ok(())
    }

    async fn signal(&self, id: &str, signal: u32) -> Result<()> {
        let ignored = {
            let state = self.state.lock();
            let container = state
                .containers
                .get(id)
                .ok_or_else(|| RuntimeError::NotFound(format!("container {id}")))?;
            if !matches!(container.state, ContainerState::Running { .. }) {
                return Err(RuntimeError::NotFound(format!("process of container {id}")));
            }
            signal == SIGTERM && container.ignores_sigterm
        };
        if ignored {
            return Ok(());
        }
        self.finish(id, 128 + i32::try_from(signal).unwrap_or(0), false)
    }

    async fn remove(&self, id: &str) -> Result<()> {
        self.state.lock().containers.remove(id);
        Ok(())
    }

    async fn status(&self, id: &str) -> Result<ContainerInfo> {
        let state = self.state.lock();
        state
            .containers
            .get(id)
            .map(|container| FakeRuntime::info(id, container))
            .ok_or_else(|| RuntimeError::NotFound(format!("container {id}")))
    }

    async fn list(&self) -> Result<Vec<ContainerInfo>> {
        self.list_calls.fetch_add(1, Ordering::SeqCst);
        let state = self.state.lock();
        Ok(state
            .containers
            .iter()
            .map(|(id, container)| FakeRuntime::info(id, container))
            .collect())
    }

    fn events(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.events.subscribe()
    }

    async fn exec(&self, id: &str, config: ExecConfig, io: ExecIo) -> Result<i32> {
        let handler = {
            let state = self.state.lock();
            let container = state
                .containers
                .get(id)
                .ok_or_else(|| RuntimeError::NotFound(format!("container {id}")))?;
            if !matches!(container.state, ContainerState::Running { .. }) {
                return Err(RuntimeError::Other(format!(
                    "container {id} is not running"
                )));
            }
            state.exec_handler.clone()
        };
        if config.command.is_empty() {
            return Err(RuntimeError::Start("exec needs a command".into()));
        }
        let ExecIo {
            stdin,
            stdout,
            stderr,
            resize: _,
        } = io;
        let Some(handler) = handler else {
            if let Some(mut stdin) = stdin {
                while let Some(data) = stdin.recv().await {
                    let _ = stdout.send(data).await;
                }
            }
            return Ok(0);
        };
        let outcome = handler(id, &config);
        if !outcome.stdout.is_empty() {
            let _ = stdout.send(Bytes::from(outcome.stdout)).await;
        }
        if !outcome.stderr.is_empty() {
            // With a tty (or no stderr wanted) everything goes to stdout, as in the real one.
            match (&stderr, config.tty) {
                (Some(stderr), false) => {
                    let _ = stderr.send(Bytes::from(outcome.stderr)).await;
                }
                _ => {
                    let _ = stdout.send(Bytes::from(outcome.stderr)).await;
                }
            }
        }
        Ok(outcome.exit_code)
    }

    async fn attach(&self, id: &str, mut stdin: mpsc::Receiver<Bytes>) -> Result<()> {
        let open_stdin = |state: &mut RuntimeState| -> Result<()> {
            let container = state
                .containers
                .get_mut(id)
                .ok_or_else(|| RuntimeError::NotFound(format!("container {id}")))?;
            if !container.config.stdin || container.stdin_closed {
                return Err(RuntimeError::Other(format!(
                    "container {id} has no open stdin"
                )));
            }
            Ok(())
        };
        open_stdin(&mut self.state.lock())?;
        while let Some(data) = stdin.recv().await {
            open_stdin(&mut self.state.lock())?;
            if let Some(container) = self.state.lock().containers.get_mut(id) {
                container.stdin_received.extend_from_slice(&data);
            }
        }
        if let Some(container) = self.state.lock().containers.get_mut(id) {
            container.stdin_closed = container.config.stdin_once;
        }
        Ok(())
    }
}

#[derive(Default)]
struct ImageState {
    images: BTreeMap<String, ImageInfo>,
    /// References a pull succeeds for; `None` means any reference.
    registry: Option<HashSet<String>>,
    /// Credentials a registry demands, by normalised reference.
    required_auth: HashMap<String, RegistryAuth>,
    pulls: Vec<String>,
}

/// Images in memory. Pulls succeed for any reference unless a registry was set with
/// [`FakeImageService::set_registry`]; imports parse real tarballs.
#[derive(Clone, Default)]
pub struct FakeImageService {
    state: Arc<Mutex<ImageState>>,
}

impl FakeImageService {
    pub fn new() -> FakeImageService {
        FakeImageService::default()
    }

    /// Makes `reference` present locally (as if imported) and returns it.
    pub fn add_image(&self, reference: &str) -> Result<ImageInfo> {
        let info = fake_image(&reference::normalize(reference)?);
        self.state
            .lock()
            .images
            .insert(info.name.clone(), info.clone());
        Ok(info)
    }

    /// Restricts pulls to these references (others fail as not found).
    pub fn set_registry(&self, references: &[&str]) -> Result<()> {
        let set = references
            .iter()
            .map(|r| reference::normalize(r))
            .collect::<Result<HashSet<_>>>()?;
        self.state.lock().registry = Some(set);
        Ok(())
    }

    /// Pulls of `reference` need exactly these credentials.
    pub fn require_auth(&self, reference: &str, auth: RegistryAuth) -> Result<()> {
        let name = reference::normalize(reference)?;
        self.state.lock().required_auth.insert(name, auth);
        Ok(())
    }

    /// Every pull attempted, normalised, in order.
    pub fn pulls(&self) -> Vec<String> {
        self.state.lock().pulls.clone()
    }
}

fn fake_image(name: &str) -> ImageInfo {
    ImageInfo {
        name: name.to_string(),
        id: oci::sha256_digest(name.as_bytes()),
        size_bytes: 1 << 20,
        config: ImageConfig {
            cmd: vec!["sh".to_string()],
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            ..ImageConfig::default()
        },
    }
}

#[async_trait]
impl ImageService for FakeImageService {
    async fn image_status(&self, reference: &str) -> Result<Option<ImageInfo>> {
        let state = self.state.lock();
        if reference.starts_with("sha256:") {
            return Ok(state.images.values().find(|i| i.id == reference).cloned());
        }
        Ok(state.images.get(&reference::normalize(reference)?).cloned())
    }

    async fn pull(&self, reference: &str, auth: Option<&RegistryAuth>) -> Result<ImageInfo> {
        let name = reference::normalize(reference)?;
        let mut state = self.state.lock();
        state.pulls.push(name.clone());
        let pull_error = |reason: &str| RuntimeError::Pull {
            image: name.clone(),
            reason: reason.to_string(),
        };
        if state.registry.as_ref().is_some_and(|r| !r.contains(&name)) {
            return Err(pull_error("not found: manifest unknown"));
        }
        if let Some(required) = state.required_auth.get(&name) {
            if auth != Some(required) {
                return Err(pull_error("unauthorized: authentication required"));
            }
        }
        let info = fake_image(&name);
        state.images.insert(name, info.clone());
        Ok(info)
    }

    async fn import(&self, tarball: &Path) -> Result<Vec<ImageInfo>> {
        let dir = tempfile::Builder::new()
            .prefix("rkube-fake-import-")
            .tempdir()?;
        let tarball = tarball.to_path_buf();
        let extract_dir = dir.path().to_path_buf();
        let images = tokio::task::spawn_blocking(move || {
            crate::image::tarball::read_tarball(&tarball, &extract_dir)
        })
        .await
        .map_err(|e| RuntimeError::Other(format!("import task: {e}")))??;
        let mut infos = Vec::new();
        let mut state = self.state.lock();
        for image in images {
            let config = oci::ConfigFile::parse(&image.config.data)?;
            let size = image.config.descriptor.size
                + image.layers.iter().map(|(d, _)| d.size).sum::<i64>();
            for name in &image.names {
                let info = ImageInfo {
                    name: name.clone(),
                    id: image.config.descriptor.digest.clone(),
                    size_bytes: u64::try_from(size).unwrap_or(0),
                    config: config.image_config(),
                };
                state.images.insert(name.clone(), info.clone());
                infos.push(info);
            }
        }
        Ok(infos)
    }

    async fn list(&self) -> Result<Vec<ImageInfo>> {
        Ok(self.state.lock().images.values().cloned().collect())
    }
}
