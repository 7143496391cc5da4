//! The pods of one node: a watch on pods bound here feeding one worker per pod uid,
//! runtime events waking the owning pod's worker, and housekeeping: once the initial list
//! is complete and then periodically, everything of pods no longer bound here
//! (containers, pod network, cgroups, pod directory) is removed, which catches pods
//! deleted while the kubelet was down and a crash between network setup and container
//! start.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::watcher;
use rkube_cri::{labels, RuntimeEvent};
use tokio::sync::{watch, Notify};
use tokio::task::{JoinError, JoinSet};

use crate::context::NodeContext;
use crate::worker::PodWorker;

struct WorkerHandle {
    pod: watch::Sender<Option<Arc<Pod>>>,
    changed: Arc<Notify>,
}

pub struct PodManager {
    node: Arc<NodeContext>,
    workers: HashMap<String, WorkerHandle>,
    /// One task per worker, yielding its pod uid; joined as they end, so the set holds
    /// only live workers however many pods come and go.
    tasks: JoinSet<String>,
    /// Uids of the pods the watch says are bound here.
    bound: HashSet<String>,
    /// Housekeeping waits for the first complete list: before it, `bound` is partial.
    listed: bool,
    task_count: watch::Sender<usize>,
    shutdown: watch::Receiver<bool>,
}

fn key(pod: &Pod) -> (String, String) {
    (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

impl PodManager {
    /// Runs until shutdown; the workers then stop without touching containers.
    pub async fn run(node: Arc<NodeContext>, shutdown: watch::Receiver<bool>) {
        let api: Api<Pod> = Api::all(node.client.clone());
        let config = watcher::Config::default().fields(&format!("spec.nodeName={}", node.name));
        let stream = watcher(api, config).boxed();
        PodManager::new(node, shutdown).run_with(stream).await;
    }

    pub fn new(node: Arc<NodeContext>, shutdown: watch::Receiver<bool>) -> PodManager {
        PodManager {
            node,
            workers: HashMap::new(),
            tasks: JoinSet::new(),
            bound: HashSet::new(),
            listed: false,
            task_count: watch::channel(0).0,
            shutdown,
        }
    }

    /// The number of worker tasks not yet joined, updated after every event handled.
    pub fn task_count(&self) -> watch::Receiver<usize> {
        self.task_count.subscribe()
    }

    /// Runs on the pod events of `stream` until it ends or shutdown.
    pub async fn run_with(
        mut self,
        mut stream: impl Stream<Item = Result<watcher::Event<Pod>, watcher::Error>> + Unpin,
    ) {
        let node = self.node.clone();
        let mut events = node.runtime.runtime.events();
        let mut shutdown = self.shutdown.clone();
        let mut initial: Vec<String> = Vec::new();
        let period = node.config.housekeeping_interval;
        // The first pass runs when the initial list is complete, not on the first tick.
        let mut housekeeping =
            tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = stream.next() => match event {
                    Some(Ok(watcher::Event::Apply(pod))) => self.apply(pod),
                    Some(Ok(watcher::Event::InitApply(pod))) => {
                        initial.extend(pod.metadata.uid.clone());
                        self.apply(pod);
                    }
                    Some(Ok(watcher::Event::Delete(pod))) => self.delete(&pod),
                    Some(Ok(watcher::Event::Init)) => initial.clear(),
                    Some(Ok(watcher::Event::InitDone)) => {
                        // A relist may have missed deletions: pods not listed are gone.
                        let listed: HashSet<String> = initial.iter().cloned().collect();
                        let gone: Vec<String> = self
                            .workers
                            .keys()
                            .chain(self.bound.iter())
                            .filter(|u| !listed.contains(*u))
                            .cloned()
                            .collect();
                        for uid in gone {
                            self.delete_uid(&uid);
                        }
                        self.bound = listed;
                        if !self.listed {
                            self.listed = true;
                            self.housekeeping().await;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(node = %node.name, error = %e, "pod watch failed; retrying");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                    None => break,
                },
                event = events.recv() => match event {
                    Ok(RuntimeEvent::Exited { id, .. }) | Ok(RuntimeEvent::OomKilled { id }) => self.wake_owner(&id).await,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => self.wake_all(),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        events = node.runtime.runtime.events();
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                },
                Some(joined) = self.tasks.join_next(), if !self.tasks.is_empty() => self.worker_ended(joined),
                _ = housekeeping.tick(), if self.listed => self.housekeeping().await,
                _ = shutdown.changed() => break,
            }
            self.task_count.send_replace(self.tasks.len());
        }
        self.workers.clear();
        while self.tasks.join_next().await.is_some() {}
        self.task_count.send_replace(0);
    }

    fn worker_ended(&mut self, joined: Result<String, JoinError>) {
        match joined {
            Ok(uid) => {
                if self.workers.get(&uid).is_some_and(|w| w.pod.is_closed()) {
                    self.workers.remove(&uid);
                }
            }
            Err(e) => {
                // Its pod gets a new worker on its next change; meanwhile it is still
                // bound, so housekeeping leaves it alone.
                tracing::error!(node = %self.node.name, error = %e, "pod worker failed");
                self.workers.retain(|_, w| !w.pod.is_closed());
            }
        }
    }

    fn apply(&mut self, pod: Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        self.bound.insert(uid.clone());
        let pod = Arc::new(pod);
        self.node.pods.write().insert(key(&pod), pod.clone());
        if let Some(worker) = self.workers.get(&uid) {
            if !worker.pod.is_closed() {
                worker.pod.send_replace(Some(pod));
                return;
            }
        }
        let worker_uid = uid.clone();
        let (tx, rx) = watch::channel(Some(pod));
        let changed = Arc::new(Notify::new());
        let worker = PodWorker::new(self.node.clone(), uid.clone(), changed.clone());
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            worker.run(rx, shutdown).await;
            uid
        });
        self.workers
            .insert(worker_uid, WorkerHandle { pod: tx, changed });
    }

    fn delete(&mut self, pod: &Pod) {
        {
            let mut pods = self.node.pods.write();
            let k = key(pod);
            if pods
                .get(&k)
                .is_some_and(|p| p.metadata.uid == pod.metadata.uid)
            {
                pods.remove(&k);
            }
        }
        if let Some(uid) = &pod.metadata.uid {
            self.delete_uid(uid);
        }
    }

    /// The pod is gone from the API: its worker stops everything of it and ends.
    fn delete_uid(&mut self, uid: &str) {
        self.bound.remove(uid);
        if let Some(worker) = self.workers.get(uid) {
            worker.pod.send_replace(None);
        }
        self.node
            .pods
            .write()
            .retain(|_, p| p.metadata.uid.as_deref() != Some(uid));
    }

    async fn wake_owner(&self, container_id: &str) {
        let owner = match self.node.runtime.runtime.status(container_id).await {
            Ok(info) => info.labels.get(labels::POD_UID).cloned(),
            Err(_) => None,
        };
        match owner.and_then(|uid| self.workers.get(&uid)) {
            Some(worker) => worker.changed.notify_one(),
            None => self.wake_all(),
        }
    }

    fn wake_all(&self) {
        for worker in self.workers.values() {
            worker.changed.notify_one();
        }
    }

    /// Removes everything of pods this node holds something for (containers, a pod
    /// network, a pod directory) that are neither bound here nor have a worker still
    /// tearing them down. Cgroups are looked up only for such pods, never by listing the
    /// cgroup tree: other kubelets on the machine (tests run several) share it.
    async fn housekeeping(&self) {
        let runtime = &self.node.runtime.runtime;
        let network = &self.node.runtime.network;
        let containers = match runtime.list().await {
            Ok(all) => all,
            Err(e) => {
                tracing::warn!(node = %self.node.name, error = %e, "housekeeping skipped: listing containers failed");
                return;
            }
        };
        let keep = |uid: &str| self.bound.contains(uid) || self.workers.contains_key(uid);
        let mut stale: HashMap<String, Vec<String>> = HashMap::new();
        for c in containers {
            if let Some(uid) = c.labels.get(labels::POD_UID).filter(|u| !keep(u)) {
                stale.entry(uid.clone()).or_default().push(c.id);
            }
        }
        match network.list().await {
            Ok(uids) => {
                for uid in uids.into_iter().filter(|u| !keep(u)) {
                    stale.entry(uid).or_default();
                }
            }
            Err(e) => {
                tracing::warn!(node = %self.node.name, error = %e, "listing pod networks failed")
            }
        }
        if let Ok(dirs) = std::fs::read_dir(self.node.root.join("pods")) {
            for dir in dirs.flatten() {
                if let Some(uid) = dir.file_name().to_str().filter(|u| !keep(u)) {
                    stale.entry(uid.to_string()).or_default();
                }
            }
        }
        for (uid, ids) in stale {
            tracing::info!(node = %self.node.name, pod_uid = %uid, containers = ids.len(), "removing what is left of a pod no longer bound to this node");
            for id in &ids {
                let _ = runtime.signal(id, 9).await;
                if let Err(e) = runtime.remove(id).await {
                    tracing::warn!(container = %id, error = %e, "removing container of a pod no longer bound here failed");
                }
            }
            if let Err(e) = network.teardown(&uid).await {
                tracing::warn!(pod_uid = %uid, error = %e, "tearing down the network of a pod no longer bound here failed; retried at the next housekeeping");
                continue;
            }
            let busy = crate::spec::remove_pod_cgroups(&self.node.config.cgroup_root, &uid);
            if !busy.is_empty() {
                tracing::warn!(pod_uid = %uid, cgroups = ?busy, "cgroups of a pod no longer bound here are still in use");
            }
            if let Err(e) = crate::volumes::remove_pod_dir(&self.node.pod_dir(&uid)) {
                tracing::warn!(pod_uid = %uid, error = %e, "removing the directory of a pod no longer bound here failed");
            }
        }
    }
}

/// A node on the fake runtime, images and network, with its state and cgroup root in a
/// temp dir and an API client that reaches nothing (writes fail fast and are logged).
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;
    use std::time::Duration;

    use k8s_openapi::api::core::v1::Pod;
    use rkube_cri::fake::{FakeImageService, FakeRuntime};
    use rkube_cri::fake_network::FakeNetwork;
    use rkube_runtime::EventRecorder;
    use serde_json::json;

    use crate::config::{KubeletConfig, NodeRuntime};
    use crate::context::NodeContext;

    pub const NODE: &str = "test-node";
    pub const IMAGE: &str = "busybox:1.36";

    pub struct TestNode {
        pub node: Arc<NodeContext>,
        pub runtime: FakeRuntime,
        pub images: FakeImageService,
        pub network: Arc<FakeNetwork>,
        pub dir: tempfile::TempDir,
    }

    pub fn node() -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        let client =
            kube::Client::try_from(kube::Config::new("http://127.0.0.1:1".parse().unwrap()))
                .unwrap();
        let runtime = FakeRuntime::new();
        let images = FakeImageService::new();
        images.add_image(IMAGE).unwrap();
        let network = Arc::new(FakeNetwork::new("10.244.9.0/24").unwrap());
        let node_runtime = NodeRuntime {
            runtime: Arc::new(runtime.clone()),
            images: Arc::new(images.clone()),
            network: network.clone(),
            version: "fake://0.1.0".into(),
        };
        let root = dir.path().join("kubelet");
        let mut config = KubeletConfig::new(client.clone(), NODE, root.clone(), node_runtime);
        config.cgroup_root = dir.path().join("cgroup");
        config.housekeeping_interval = Duration::from_millis(100);
        let node = Arc::new(NodeContext {
            name: NODE.to_string(),
            client: client.clone(),
            runtime: config.runtimes[0].clone(),
            config: Arc::new(config),
            host_ip: "127.0.0.1".into(),
            root,
            recorder: EventRecorder::new(client, "kubelet", NODE),
            probes: Arc::new(crate::prober::RuntimeProbes),
            pods: Default::default(),
        });
        TestNode {
            node,
            runtime,
            images,
            network,
            dir,
        }
    }

    pub fn pod(name: &str, uid: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "uid": uid},
            "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": IMAGE}]}
        }))
        .unwrap()
    }

    /// Polls `check` until it holds; fails after 30 s.
    pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
        rkube_testkit::wait_for(
            what,
            Duration::from_secs(30),
            || std::future::ready(check()),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use futures::channel::mpsc;
    use rkube_cri::{ContainerConfig, ContainerRuntime, ImageService, LogPaths, PodNetwork};

    use super::testing::{self, eventually, pod};
    use super::*;

    type Events = mpsc::UnboundedSender<Result<watcher::Event<Pod>, watcher::Error>>;

    fn start(test: &testing::TestNode) -> (Events, watch::Receiver<usize>, watch::Sender<bool>) {
        let (events, stream) = mpsc::unbounded();
        let (stop, stopped) = watch::channel(false);
        let manager = PodManager::new(test.node.clone(), stopped);
        let count = manager.task_count();
        tokio::spawn(manager.run_with(stream));
        (events, count, stop)
    }

    fn send(events: &Events, event: watcher::Event<Pod>) {
        events.unbounded_send(Ok(event)).unwrap();
    }

    fn live_containers(test: &testing::TestNode) -> Vec<String> {
        test.runtime.container_ids()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn worker_tasks_are_joined_as_pods_come_and_go() {
        let test = testing::node();
        let (events, count, _stop) = start(&test);
        send(&events, watcher::Event::Init);
        send(&events, watcher::Event::InitDone);
        for i in 0..40 {
            let p = pod(&format!("p{i}"), &format!("uid-{i}"));
            send(&events, watcher::Event::Apply(p.clone()));
            send(&events, watcher::Event::Delete(p));
        }
        // Events are handled in order: once the last pod has a network, every earlier
        // one was seen, and their workers end after tearing their pods down.
        send(&events, watcher::Event::Apply(pod("last", "uid-last")));
        let network = test.network.clone();
        eventually("the last pod has a network", || {
            futures::executor::block_on(network.status("uid-last"))
                .unwrap()
                .is_some()
        })
        .await;
        eventually("the 40 deleted pods are torn down", || {
            network.allocated() == 1 && live_containers(&test).len() == 1
        })
        .await;
        eventually("only the last pod's worker task is left", || {
            *count.borrow() == 1
        })
        .await;
    }

    fn cgroup(
        test: &testing::TestNode,
        hierarchy: &str,
        uid: &str,
        container: &str,
    ) -> std::path::PathBuf {
        let mut dir = test.node.config.cgroup_root.join(hierarchy);
        dir.push(crate::spec::pod_cgroup(uid));
        if !container.is_empty() {
            dir.push(container);
        }
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    async fn orphan_container(test: &testing::TestNode, uid: &str) -> String {
        let id = format!("ctr-{uid}");
        let image = test
            .images
            .image_status(testing::IMAGE)
            .await
            .unwrap()
            .unwrap();
        let logs = test.dir.path().join("logs");
        test.runtime
            .create(ContainerConfig {
                id: id.clone(),
                image,
                spec: oci_spec::runtime::Spec::default(),
                labels: BTreeMap::from([(labels::POD_UID.to_string(), uid.to_string())]),
                logs: LogPaths {
                    stdout: logs.join("out"),
                    stderr: logs.join("err"),
                },
                stdin: false,
                stdin_once: false,
            })
            .await
            .unwrap();
        test.runtime.start(&id).await.unwrap();
        id
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn housekeeping_removes_everything_of_pods_no_longer_bound_here() {
        let test = testing::node();
        // Left by a kubelet that was down while these pods were deleted, or crashed
        // between network setup and container start.
        test.network
            .setup("ghost-net", "default", "ghost-net")
            .await
            .unwrap();
        let ghost_container = orphan_container(&test, "ghost-ctr").await;
        test.network
            .setup("ghost-ctr", "default", "ghost-ctr")
            .await
            .unwrap();
        let ghost_dir = test.node.pod_dir("ghost-dir");
        std::fs::create_dir_all(ghost_dir.join("volumes/v")).unwrap();
        let ghost_cgroups = [
            cgroup(&test, "", "ghost-ctr", "ctr-ghost-ctr"),
            cgroup(&test, "", "ghost-ctr", ""),
            cgroup(&test, "memory", "ghost-dir", "c0"),
            cgroup(&test, "cpu", "ghost-net", ""),
        ];
        // A cgroup with processes cannot be removed (here: a directory with a file).
        let busy = cgroup(&test, "pids", "ghost-net", "busy");
        std::fs::write(busy.join("cgroup.procs"), "42\n").unwrap();
        // Cgroups of a pod that is still bound, and of one this node never knew.
        let kept_cgroup = cgroup(&test, "", "kept", "");
        let foreign_cgroup = cgroup(&test, "", "other-kubelets-pod", "");

        let (events, _count, _stop) = start(&test);
        send(&events, watcher::Event::Init);
        send(&events, watcher::Event::InitApply(pod("kept", "kept")));
        send(&events, watcher::Event::InitDone);

        let network = test.network.clone();
        let gone = |p: &Path| !p.exists();
        eventually("the leftovers of unbound pods are removed", || {
            let networks = futures::executor::block_on(network.list()).unwrap();
            networks == ["kept"]
                && !live_containers(&test).contains(&ghost_container)
                && gone(&ghost_dir)
                && ghost_cgroups.iter().all(|c| gone(c))
        })
        .await;
        assert!(busy.exists(), "a cgroup in use is left alone");
        assert!(kept_cgroup.exists() && foreign_cgroup.exists());
        assert!(test.node.pod_dir("kept").exists());
        assert_eq!(
            live_containers(&test).len(),
            1,
            "the bound pod's container runs"
        );

        // And periodically: a network set up for a pod that then vanished.
        test.network
            .setup("late-ghost", "default", "late-ghost")
            .await
            .unwrap();
        eventually("a later leftover is removed", || {
            futures::executor::block_on(network.list()).unwrap() == ["kept"]
        })
        .await;
    }
}
