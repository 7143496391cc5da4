//! The endpoints controller: for every Service with a selector, an Endpoints object of the
//! same name listing the selected pods' addresses (ready ones under `addresses`, the others
//! under `notReadyAddresses`), grouped into subsets by the ports each pod resolves
//! (a named targetPort is looked up in the pod's containers).
//!
//! The Service/pod plumbing here is shared with the EndpointSlice controller.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
    ServicePort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};
use parking_lot::Mutex;
use rkube_api::selectors::set_selector_matches;
use rkube_runtime::{
    run_reconcile_workers, Action, Backoff, Change, SharedInformers, Synced, WorkQueue,
};
use tokio::task::JoinSet;

use crate::util::{enqueue_own_key, is_terminating, key_of, pod_is_ready, split_key};
use crate::{ControllerError, Shared};

pub const NAME: &str = "endpoints";
/// Upstream marks the Endpoints (and slices) of headless services with this label.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

/// The selector of a Service that has one (services without are managed by their users).
pub fn service_selector(svc: &Service) -> Option<&BTreeMap<String, String>> {
    svc.spec
        .as_ref()?
        .selector
        .as_ref()
        .filter(|s| !s.is_empty())
}

fn selects(svc: &Service, pod: &Pod) -> bool {
    svc.namespace() == pod.namespace()
        && service_selector(svc).is_some_and(|sel| set_selector_matches(sel, pod.labels()))
}

/// Which services each pod was last seen in (pod key -> service keys), so that a pod
/// whose labels stop matching is taken out of the services that listed it.
#[derive(Clone, Default)]
pub(crate) struct PodServices(Arc<Mutex<HashMap<String, HashSet<String>>>>);

impl PodServices {
    /// Notes that the service now lists these pods.
    pub(crate) fn record(&self, service_key: &str, pods: &[Arc<Pod>]) {
        let mut map = self.0.lock();
        for pod in pods {
            map.entry(key_of(
                &pod.namespace().unwrap_or_default(),
                &pod.name_any(),
            ))
            .or_default()
            .insert(service_key.to_string());
        }
    }
}

/// Service and pod informers feeding `queue` with service keys. A pod change enqueues
/// the services selecting it now *and* the ones that listed it before (a label change
/// must take it out of the old service's endpoints).
pub(crate) fn watch_services_and_pods(
    queue: &Arc<WorkQueue<String>>,
    informers: &mut SharedInformers,
) -> (Store<Service>, Store<Pod>, PodServices, [Synced; 2]) {
    let (services, services_synced) = informers.all::<Service>().subscribe(enqueue_own_key(queue));
    let pod_queue = queue.clone();
    let svc_cache = services.clone();
    let index = PodServices::default();
    let last_selected = index.0.clone();
    let (pods, pods_synced) = informers
        .all::<Pod>()
        .subscribe(move |change: Change<'_, Pod>| {
            let pod = change.object();
            let pod_key = key_of(&pod.namespace().unwrap_or_default(), &pod.name_any());
            let now: HashSet<String> = match change {
                Change::Deleted(_) => HashSet::new(),
                Change::Applied(_) => svc_cache
                    .state()
                    .iter()
                    .filter(|svc| selects(svc, pod))
                    .map(|svc| key_of(&svc.namespace().unwrap_or_default(), &svc.name_any()))
                    .collect(),
            };
            let mut last = last_selected.lock();
            let before = if now.is_empty() {
                last.remove(&pod_key)
            } else {
                last.insert(pod_key, now.clone())
            };
            for key in now.iter().chain(before.iter().flatten()) {
                pod_queue.add(key.clone());
            }
        });
    (services, pods, index, [services_synced, pods_synced])
}

/// The pods of the service's namespace its selector picks.
pub(crate) fn selected_pods(pods: &Store<Pod>, svc: &Service) -> Vec<Arc<Pod>> {
    pods.state()
        .into_iter()
        .filter(|p| selects(svc, p))
        .collect()
}

/// The container port a service port reaches on this pod; `None` if a named targetPort
/// names no port of the pod (the pod is then left out for that port, as upstream).
pub fn resolve_target_port(pod: &Pod, port: &ServicePort) -> Option<i32> {
    match &port.target_port {
        None => Some(port.port),
        Some(IntOrString::Int(i)) => Some(*i),
        Some(IntOrString::String(name)) => {
            let protocol = port.protocol.as_deref().unwrap_or("TCP");
            let named = pod.spec.as_ref().and_then(|spec| {
                spec.containers
                    .iter()
                    .flat_map(|c| c.ports.iter().flatten())
                    .find(|p| {
                        p.name.as_deref() == Some(name.as_str())
                            && p.protocol.as_deref().unwrap_or("TCP") == protocol
                    })
                    .map(|p| p.container_port)
            });
            named.or_else(|| name.parse().ok())
        }
    }
}

/// One pod's view for endpoints: its address and whether it is ready.
pub(crate) struct PodEndpoint {
    pub ip: String,
    pub ready: bool,
    pub terminating: bool,
    pub hostname: Option<String>,
    pub node_name: Option<String>,
    pub target_ref: ObjectReference,
}

/// The pod's address if it can be an endpoint at all: it has an IP and has not finished.
pub(crate) fn pod_endpoint(svc: &Service, pod: &Pod) -> Option<PodEndpoint> {
    let status = pod.status.as_ref()?;
    let ip = status.pod_ip.clone().filter(|ip| !ip.is_empty())?;
    if matches!(status.phase.as_deref(), Some("Succeeded") | Some("Failed")) {
        return None;
    }
    let spec = pod.spec.as_ref();
    let publish_not_ready = svc
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    let terminating = is_terminating(&pod.metadata);
    let hostname = spec
        .and_then(|s| s.hostname.clone())
        .filter(|h| !h.is_empty())
        .filter(|_| spec.and_then(|s| s.subdomain.as_deref()) == Some(svc.name_any().as_str()));
    Some(PodEndpoint {
        ip,
        ready: publish_not_ready || (pod_is_ready(pod) && !terminating),
        terminating,
        hostname,
        node_name: spec.and_then(|s| s.node_name.clone()),
        target_ref: ObjectReference {
            kind: Some("Pod".into()),
            namespace: pod.namespace(),
            name: Some(pod.name_any()),
            uid: pod.uid(),
            ..Default::default()
        },
    })
}

pub(crate) fn is_headless(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
}

/// (name, port, protocol, appProtocol) of each service port this pod serves.
pub(crate) type ResolvedPort = (Option<String>, i32, String, Option<String>);

pub(crate) fn resolved_ports(svc: &Service, pod: &Pod) -> Vec<ResolvedPort> {
    let mut ports: Vec<ResolvedPort> = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|sp| {
            resolve_target_port(pod, sp).map(|port| {
                (
                    sp.name.clone(),
                    port,
                    sp.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    sp.app_protocol.clone(),
                )
            })
        })
        .collect();
    ports.sort();
    ports
}

pub(crate) fn service_has_ports(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .is_some_and(|p| !p.is_empty())
}

/// The subsets upstream's RepackSubsets would produce: addresses grouped by port set,
/// sorted so that an unchanged set of pods gives an identical object.
pub fn desired_subsets(svc: &Service, pods: &[Arc<Pod>]) -> Vec<EndpointSubset> {
    let mut groups: BTreeMap<Vec<ResolvedPort>, (Vec<EndpointAddress>, Vec<EndpointAddress>)> =
        BTreeMap::new();
    for pod in pods {
        let Some(ep) = pod_endpoint(svc, pod) else {
            continue;
        };
        if ep.terminating && !ep.ready {
            continue;
        }
        let ports = resolved_ports(svc, pod);
        if ports.is_empty() && (service_has_ports(svc) || !is_headless(svc)) {
            continue;
        }
        let address = EndpointAddress {
            ip: ep.ip,
            hostname: ep.hostname,
            node_name: ep.node_name,
            target_ref: Some(ep.target_ref),
        };
        let (ready, not_ready) = groups.entry(ports).or_default();
        if ep.ready {
            ready.push(address);
        } else {
            not_ready.push(address);
        }
    }
    groups
        .into_iter()
        .map(|(ports, (mut ready, mut not_ready))| {
            let by_ip = |a: &EndpointAddress, b: &EndpointAddress| {
                (
                    a.ip.as_str(),
                    a.target_ref.as_ref().and_then(|r| r.name.as_deref()),
                )
                    .cmp(&(
                        b.ip.as_str(),
                        b.target_ref.as_ref().and_then(|r| r.name.as_deref()),
                    ))
            };
            ready.sort_by(by_ip);
            not_ready.sort_by(by_ip);
            EndpointSubset {
                addresses: (!ready.is_empty()).then_some(ready),
                not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                ports: (!ports.is_empty()).then(|| {
                    ports
                        .into_iter()
                        .map(|(name, port, protocol, app_protocol)| EndpointPort {
                            name,
                            port,
                            protocol: Some(protocol),
                            app_protocol,
                        })
                        .collect()
                }),
            }
        })
        .collect()
}

struct EndpointsController {
    client: kube::Client,
    services: Store<Service>,
    pods: Store<Pod>,
    endpoints: Store<Endpoints>,
    index: PodServices,
}

pub fn start(shared: &Shared, tasks: &mut JoinSet<()>, informers: &mut SharedInformers) {
    let queue: Arc<WorkQueue<String>> = WorkQueue::new(Backoff::default());
    let client = shared.client.clone();
    let (services, pods, index, synced) = watch_services_and_pods(&queue, informers);
    let (endpoints, endpoints_synced) = informers
        .all::<Endpoints>()
        .subscribe(enqueue_own_key(&queue));
    let controller = Arc::new(EndpointsController {
        client,
        services,
        pods,
        endpoints,
        index,
    });
    let workers = shared.workers;
    tasks.spawn(async move {
        for informer in synced {
            informer.wait().await;
        }
        endpoints_synced.wait().await;
        run_reconcile_workers(NAME, queue, workers, controller, |c, key| async move {
            c.reconcile(&key).await
        })
        .await;
    });
}

impl EndpointsController {
    async fn reconcile(&self, key: &str) -> Result<Action, ControllerError> {
        let (namespace, name) = split_key(key);
        let api: Api<Endpoints> = Api::namespaced(self.client.clone(), namespace);
        let existing = self.endpoints.get(&ObjectRef::new(name).within(namespace));
        let Some(svc) = self.services.get(&ObjectRef::new(name).within(namespace)) else {
            // The service is gone: so are its endpoints (only ones we would have made).
            if existing.is_some() {
                match api.delete(name, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
            return Ok(Action::Done);
        };
        if service_selector(&svc).is_none() {
            return Ok(Action::Done);
        }
        let pods = selected_pods(&self.pods, &svc);
        self.index.record(key, &pods);
        let subsets = desired_subsets(&svc, &pods);
        let mut labels = svc.labels().clone();
        if is_headless(&svc) {
            labels.insert(HEADLESS_LABEL.into(), String::new());
        }
        let subsets_opt = (!subsets.is_empty()).then_some(subsets);
        match existing {
            Some(current)
                if current.subsets == subsets_opt
                    && current.metadata.labels.clone().unwrap_or_default() == labels =>
            {
                Ok(Action::Done)
            }
            Some(current) => {
                let mut updated = (*current).clone();
                updated.subsets = subsets_opt;
                updated.metadata.labels = Some(labels);
                api.replace(name, &PostParams::default(), &updated).await?;
                Ok(Action::Done)
            }
            None => {
                let ep = Endpoints {
                    metadata: ObjectMeta {
                        name: Some(name.to_string()),
                        namespace: Some(namespace.to_string()),
                        labels: Some(labels),
                        ..Default::default()
                    },
                    subsets: subsets_opt,
                };
                match api.create(&PostParams::default(), &ep).await {
                    Ok(_) => Ok(Action::Done),
                    // Made meanwhile (our cache is behind): the informer event re-runs us.
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(Action::Done),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn named_target_ports_resolve_per_pod_and_readiness_splits_addresses() {
        let svc: Service = serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "d"},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]}})).unwrap();
        let pod = |name: &str, ip: &str, port: i32, ready: bool| -> Arc<Pod> {
            Arc::new(serde_json::from_value(json!({"metadata": {"name": name, "namespace": "d", "uid": name, "labels": {"app": "web"}},
                "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": port}]}]},
                "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}})).unwrap())
        };
        let pods = vec![
            pod("b", "10.0.0.2", 8080, true),
            pod("a", "10.0.0.1", 8080, false),
            pod("c", "10.0.0.3", 9090, true),
        ];
        let subsets = desired_subsets(&svc, &pods);
        assert_eq!(subsets.len(), 2, "{subsets:?}");
        let on_8080 = subsets
            .iter()
            .find(|s| s.ports.as_ref().unwrap()[0].port == 8080)
            .unwrap();
        assert_eq!(on_8080.addresses.as_ref().unwrap()[0].ip, "10.0.0.2");
        assert_eq!(
            on_8080.not_ready_addresses.as_ref().unwrap()[0].ip,
            "10.0.0.1"
        );
        let target = on_8080.addresses.as_ref().unwrap()[0]
            .target_ref
            .clone()
            .unwrap();
        assert_eq!(target.kind.as_deref(), Some("Pod"));
        assert_eq!(target.name.as_deref(), Some("b"));
    }
}
