//! What the runtime runs for one pod: one listing of the node's containers per sync, grouped
//! by container name, then kept current from the sync's own actions (the status of each
//! container it created, killed or removed) so that a sync lists the node only once.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Container;
use rkube_cri::{labels, ContainerInfo, ContainerState};
use sha2::{Digest, Sha256};

/// A container's spec hash: a changed spec means the container is replaced.
pub fn spec_hash(container: &Container) -> String {
    let bytes = serde_json::to_vec(container).unwrap_or_default();
    Sha256::digest(&bytes)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// How many times the container had been restarted when this instance was created.
pub fn restart_count(info: &ContainerInfo) -> u32 {
    info.labels
        .get(labels::RESTART_COUNT)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub fn is_running(info: &ContainerInfo) -> bool {
    matches!(info.state, ContainerState::Running { .. })
}

fn container_name(info: &ContainerInfo) -> String {
    info.labels
        .get(labels::CONTAINER_NAME)
        .cloned()
        .unwrap_or_default()
}

/// Newest first: the highest restart count, then the latest creation.
fn sort_newest_first(instances: &mut [ContainerInfo]) {
    instances.sort_by(|a, b| {
        restart_count(b)
            .cmp(&restart_count(a))
            .then(b.created_at.cmp(&a.created_at))
    });
}

/// A pod's runtime instances by container name, newest first.
pub fn group_instances(
    mut all: Vec<ContainerInfo>,
    uid: &str,
) -> HashMap<String, Vec<ContainerInfo>> {
    all.retain(|c| c.labels.get(labels::POD_UID).map(String::as_str) == Some(uid));
    sort_newest_first(&mut all);
    let mut by_name: HashMap<String, Vec<ContainerInfo>> = HashMap::new();
    for c in all {
        by_name.entry(container_name(&c)).or_default().push(c);
    }
    by_name
}

/// One pod's containers by name, newest instance first.
#[derive(Clone, Debug, Default)]
pub struct PodContainers {
    by_name: HashMap<String, Vec<ContainerInfo>>,
}

impl PodContainers {
    /// The pod `uid`'s share of a listing of every container on the node.
    pub fn from_listing(all: Vec<ContainerInfo>, uid: &str) -> PodContainers {
        PodContainers {
            by_name: group_instances(all, uid),
        }
    }

    /// Every instance of `name`, newest first.
    pub fn instances(&self, name: &str) -> &[ContainerInfo] {
        self.by_name.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn latest(&self, name: &str) -> Option<&ContainerInfo> {
        self.instances(name).first()
    }

    /// The instance before the latest (what `logs --previous` reads).
    pub fn previous(&self, name: &str) -> Option<&ContainerInfo> {
        self.instances(name).get(1)
    }

    pub fn all(&self) -> impl Iterator<Item = (&String, &Vec<ContainerInfo>)> {
        self.by_name.iter()
    }

    /// Records what the runtime now says about one container (new or known).
    pub fn upsert(&mut self, info: ContainerInfo) {
        let list = self.by_name.entry(container_name(&info)).or_default();
        match list.iter_mut().find(|c| c.id == info.id) {
            Some(known) => *known = info,
            None => list.push(info),
        }
        sort_newest_first(list);
    }

    pub fn remove(&mut self, id: &str) {
        for list in self.by_name.values_mut() {
            list.retain(|c| c.id != id);
        }
        self.by_name.retain(|_, list| !list.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::Utc;

    use super::*;

    fn info(id: &str, uid: &str, name: &str, restart: u32) -> ContainerInfo {
        ContainerInfo {
            id: id.into(),
            image: "i".into(),
            image_id: "sha256:1".into(),
            labels: BTreeMap::from([
                (labels::POD_UID.to_string(), uid.to_string()),
                (labels::CONTAINER_NAME.to_string(), name.to_string()),
                (labels::RESTART_COUNT.to_string(), restart.to_string()),
            ]),
            state: ContainerState::Created,
            created_at: Utc::now(),
            pid: None,
        }
    }

    fn ids(containers: &PodContainers, name: &str) -> Vec<String> {
        containers
            .instances(name)
            .iter()
            .map(|c| c.id.clone())
            .collect()
    }

    #[test]
    fn instances_group_by_container_newest_first() {
        let all = vec![
            info("a0", "u", "a", 0),
            info("a2", "u", "a", 2),
            info("b0", "u", "b", 0),
            info("x", "other", "a", 5),
            info("a1", "u", "a", 1),
        ];
        let grouped = group_instances(all.clone(), "u");
        let ids_of_a: Vec<&str> = grouped["a"].iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids_of_a, ["a2", "a1", "a0"]);
        assert_eq!(grouped["b"].len(), 1);
        assert_eq!(grouped.len(), 2);

        let containers = PodContainers::from_listing(all, "u");
        assert_eq!(containers.latest("a").unwrap().id, "a2");
        assert_eq!(containers.previous("a").unwrap().id, "a1");
        assert!(containers.latest("x").is_none());
    }

    #[test]
    fn upsert_and_remove_keep_the_newest_first() {
        let mut containers = PodContainers::from_listing(vec![info("a0", "u", "a", 0)], "u");
        containers.upsert(info("a1", "u", "a", 1));
        assert_eq!(ids(&containers, "a"), ["a1", "a0"]);
        let mut running = info("a1", "u", "a", 1);
        running.state = ContainerState::Running {
            started_at: Utc::now(),
        };
        containers.upsert(running);
        assert_eq!(ids(&containers, "a"), ["a1", "a0"]);
        assert!(is_running(containers.latest("a").unwrap()));
        containers.remove("a0");
        assert_eq!(ids(&containers, "a"), ["a1"]);
        containers.remove("a1");
        assert_eq!(containers.all().count(), 0);
    }

    #[test]
    fn spec_hash_changes_with_the_spec() {
        let a: Container =
            serde_json::from_value(serde_json::json!({"name": "c", "image": "busybox:1"})).unwrap();
        let b: Container =
            serde_json::from_value(serde_json::json!({"name": "c", "image": "busybox:2"})).unwrap();
        assert_eq!(spec_hash(&a), spec_hash(&a.clone()));
        assert_ne!(spec_hash(&a), spec_hash(&b));
    }
}
