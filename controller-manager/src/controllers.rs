//! Which controllers run, and the informers they share: every controller registers its
//! handlers with one [`SharedInformers`], then one watch per resource starts for all of
//! them (upstream's SharedInformerFactory), so a pod event is decoded and cached once per
//! process however many controllers read pods.

use rkube_runtime::{ControllerSelection, SharedInformers};
use tokio::task::JoinSet;

use crate::{
    daemonset, deployment, endpoints, endpointslice, garbagecollector, job, namespace,
    nodelifecycle, replicaset, statefulset, Shared,
};

/// Every controller name `--controllers` accepts, in upstream's spelling.
pub const KNOWN_CONTROLLERS: &[&str] = &[
    replicaset::NAME,
    deployment::NAME,
    garbagecollector::NAME,
    namespace::NAME,
    nodelifecycle::NAME,
    endpoints::NAME,
    endpointslice::NAME,
    daemonset::NAME,
    job::NAME,
    statefulset::NAME,
];

/// The controllers `selection` enables, in start order (all are on by default).
pub fn enabled_controllers(selection: &ControllerSelection) -> Vec<&'static str> {
    KNOWN_CONTROLLERS
        .iter()
        .copied()
        .filter(|name| selection.is_enabled(name, true))
        .collect()
}

/// Registers the selected controllers with one set of shared informers and starts them on
/// `tasks`, then starts the informers.
pub async fn start_controllers(
    shared: &Shared,
    selection: &ControllerSelection,
    tasks: &mut JoinSet<()>,
) {
    let mut informers = SharedInformers::new(shared.client.clone());
    for name in enabled_controllers(selection) {
        register(name, shared, tasks, &mut informers).await;
    }
    informers.spawn(tasks);
}

async fn register(
    name: &str,
    shared: &Shared,
    tasks: &mut JoinSet<()>,
    informers: &mut SharedInformers,
) {
    match name {
        replicaset::NAME => replicaset::start(shared, tasks, informers),
        deployment::NAME => deployment::start(shared, tasks, informers),
        garbagecollector::NAME => garbagecollector::start(shared, tasks, informers).await,
        namespace::NAME => namespace::start(shared, tasks, informers),
        nodelifecycle::NAME => nodelifecycle::start(shared, tasks, informers),
        endpoints::NAME => endpoints::start(shared, tasks, informers),
        endpointslice::NAME => endpointslice::start(shared, tasks, informers),
        daemonset::NAME => daemonset::start(shared, tasks, informers),
        job::NAME => job::start(shared, tasks, informers),
        statefulset::NAME => statefulset::start(shared, tasks, informers),
        // KNOWN_CONTROLLERS and this match list the same names.
        _ => tracing::warn!(controller = name, "no such controller"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disabled_controller_is_not_started() {
        let enabled = enabled_controllers(&ControllerSelection::parse("*,-replicaset"));
        assert!(!enabled.contains(&replicaset::NAME));
        assert!(enabled.contains(&deployment::NAME));
        assert_eq!(enabled.len(), KNOWN_CONTROLLERS.len() - 1);
        assert_eq!(
            enabled_controllers(&ControllerSelection::parse("job,deployment")),
            [deployment::NAME, job::NAME]
        );
    }
}
