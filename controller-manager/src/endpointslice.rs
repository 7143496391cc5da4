//! The EndpointSlice controller: for every Service with a selector, discovery.k8s.io/v1
//! EndpointSlices (IPv4, at most 100 endpoints each, one group of slices per distinct
//! resolved port set) labelled `kubernetes.io/service-name` and managed by
//! `endpointslice-controller.k8s.io`, owned by the Service so they go with it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::reflector::Store;
use kube::{Api, ResourceExt};
use rkube_runtime::{
    run_reconcile_workers, Action, Backoff, Change, Expectations, Observed, SharedInformers,
    WorkQueue,
};
use tokio::task::JoinSet;

use crate::endpoints::{
    is_headless, pod_endpoint, resolved_ports, selected_pods, service_has_ports, service_selector,
    watch_services_and_pods, PodServices, ResolvedPort, HEADLESS_LABEL,
};
use crate::util::{controller_owner_ref, key_of, split_key};
use crate::{ControllerError, Shared};

pub const NAME: &str = "endpointslice";
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
/// Upstream's --max-endpoints-per-slice default.
const MAX_ENDPOINTS_PER_SLICE: usize = 100;

struct EndpointSliceController {
    client: kube::Client,
    services: Store<Service>,
    pods: Store<Pod>,
    slices: Store<EndpointSlice>,
    expectations: Expectations,
    index: PodServices,
}

pub fn start(shared: &Shared, tasks: &mut JoinSet<()>, informers: &mut SharedInformers) {
    let queue: Arc<WorkQueue<String>> = WorkQueue::new(Backoff::default());
    let client = shared.client.clone();
    let (services, pods, index, synced) = watch_services_and_pods(&queue, informers);
    let slice_queue = queue.clone();
    // Every slice, so the garbage collector shares this watch; the controller looks only
    // at the slices it manages.
    let (slices, slices_synced) =
        informers
            .all::<EndpointSlice>()
            .subscribe(move |change: Change<'_, EndpointSlice>| {
                let slice = change.object();
                if !managed_here(slice) {
                    return;
                }
                if let Some(svc) = slice.labels().get(SERVICE_NAME_LABEL) {
                    slice_queue.add(key_of(&slice.namespace().unwrap_or_default(), svc));
                }
            });
    let controller = Arc::new(EndpointSliceController {
        client,
        services,
        pods,
        slices,
        expectations: Expectations::new(Duration::from_secs(300)),
        index,
    });
    let workers = shared.workers;
    tasks.spawn(async move {
        for informer in synced {
            informer.wait().await;
        }
        slices_synced.wait().await;
        run_reconcile_workers(NAME, queue, workers, controller, |c, key| async move {
            c.reconcile(&key).await
        })
        .await;
    });
}

fn managed_here(slice: &EndpointSlice) -> bool {
    slice.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)
}

/// A slice as the controller wants it: its ports and endpoints.
#[derive(Debug, PartialEq)]
struct DesiredSlice {
    ports: Option<Vec<EndpointPort>>,
    endpoints: Vec<Endpoint>,
}

fn to_slice_ports(ports: &[ResolvedPort]) -> Option<Vec<EndpointPort>> {
    (!ports.is_empty()).then(|| {
        ports
            .iter()
            .map(|(name, port, protocol, app_protocol)| EndpointPort {
                name: Some(name.clone().unwrap_or_default()),
                port: Some(*port),
                protocol: Some(protocol.clone()),
                app_protocol: app_protocol.clone(),
            })
            .collect()
    })
}

fn desired_slices(svc: &Service, pods: &[Arc<Pod>]) -> Vec<DesiredSlice> {
    let mut groups: BTreeMap<Vec<ResolvedPort>, Vec<Endpoint>> = BTreeMap::new();
    for pod in pods {
        let Some(ep) = pod_endpoint(svc, pod) else {
            continue;
        };
        let ports = resolved_ports(svc, pod);
        if ports.is_empty() && (service_has_ports(svc) || !is_headless(svc)) {
            continue;
        }
        let serving = ep.ready || crate::util::pod_is_ready(pod);
        groups.entry(ports).or_default().push(Endpoint {
            addresses: vec![ep.ip],
            conditions: Some(EndpointConditions {
                ready: Some(ep.ready),
                serving: Some(serving),
                terminating: Some(ep.terminating),
            }),
            hostname: ep.hostname,
            node_name: ep.node_name,
            target_ref: Some(ep.target_ref),
            ..Default::default()
        });
    }
    let mut out = Vec::new();
    for (ports, mut endpoints) in groups {
        endpoints.sort_by(|a, b| {
            let name = |e: &Endpoint| e.target_ref.as_ref().and_then(|r| r.name.clone());
            (a.addresses.first(), name(a)).cmp(&(b.addresses.first(), name(b)))
        });
        for chunk in endpoints.chunks(MAX_ENDPOINTS_PER_SLICE) {
            out.push(DesiredSlice {
                ports: to_slice_ports(&ports),
                endpoints: chunk.to_vec(),
            });
        }
    }
    out
}

impl EndpointSliceController {
    async fn reconcile(&self, key: &str) -> Result<Action, ControllerError> {
        let (namespace, name) = split_key(key);
        let existing: Vec<Arc<EndpointSlice>> = self
            .slices
            .state()
            .into_iter()
            .filter(|s| {
                managed_here(s)
                    && s.namespace().as_deref() == Some(namespace)
                    && s.labels().get(SERVICE_NAME_LABEL).map(String::as_str) == Some(name)
            })
            .collect();
        let satisfied = self.expectations.satisfied(key, |slice| {
            match existing.iter().find(|s| s.name_any() == slice) {
                None => Observed::Absent,
                Some(s) if s.metadata.deletion_timestamp.is_some() => Observed::Terminating,
                Some(_) => Observed::Active,
            }
        });
        if !satisfied {
            // Our own writes are not in the cache yet; their events bring us back.
            return Ok(Action::Done);
        }
        let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), namespace);
        let Some(svc) = self
            .services
            .get(&kube::runtime::reflector::ObjectRef::new(name).within(namespace))
        else {
            // Owned by the service: the garbage collector removes them.
            self.expectations.forget(key);
            return Ok(Action::Done);
        };
        if service_selector(&svc).is_none() {
            return Ok(Action::Done);
        }
        let pods = selected_pods(&self.pods, &svc);
        self.index.record(key, &pods);
        let mut desired = desired_slices(&svc, &pods);
        // A service without endpoints still gets one (empty) slice, as upstream.
        if desired.is_empty() {
            desired.push(DesiredSlice {
                ports: svc.spec.as_ref().and_then(|s| s.ports.as_ref()).map(|ps| {
                    ps.iter()
                        .map(|p| EndpointPort {
                            name: Some(p.name.clone().unwrap_or_default()),
                            port: None,
                            protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".into())),
                            app_protocol: p.app_protocol.clone(),
                        })
                        .collect()
                }),
                endpoints: Vec::new(),
            });
        }
        let mut labels = svc.labels().clone();
        labels.insert(SERVICE_NAME_LABEL.into(), name.to_string());
        labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
        if is_headless(&svc) {
            labels.insert(HEADLESS_LABEL.into(), String::new());
        }
        let owner = controller_owner_ref(&*svc);

        // Pair each desired slice with an existing one of the same ports; update those,
        // create the rest, delete existing ones left over.
        let mut unused: Vec<Arc<EndpointSlice>> = existing
            .into_iter()
            .filter(|s| s.metadata.deletion_timestamp.is_none())
            .collect();
        unused.sort_by_key(|s| s.name_any());
        for want in desired {
            let matching = unused.iter().position(|s| s.ports == want.ports);
            let Some(i) = matching else {
                let slice = EndpointSlice {
                    metadata: ObjectMeta {
                        generate_name: Some(format!("{name}-")),
                        namespace: Some(namespace.to_string()),
                        labels: Some(labels.clone()),
                        owner_references: Some(vec![owner.clone()]),
                        ..Default::default()
                    },
                    address_type: "IPv4".into(),
                    endpoints: want.endpoints,
                    ports: want.ports,
                };
                let created = api.create(&PostParams::default(), &slice).await?;
                self.expectations.expect_creation(key, &created.name_any());
                continue;
            };
            let current = unused.remove(i);
            if current.endpoints == want.endpoints
                && current.address_type == "IPv4"
                && current.metadata.labels.as_ref() == Some(&labels)
            {
                continue;
            }
            let mut updated = (*current).clone();
            updated.endpoints = want.endpoints;
            updated.address_type = "IPv4".into();
            updated.metadata.labels = Some(labels.clone());
            api.replace(&current.name_any(), &PostParams::default(), &updated)
                .await?;
        }
        for stale in unused {
            let slice_name = stale.name_any();
            self.expectations.expect_deletion(key, &slice_name);
            match api.delete(&slice_name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => {
                    self.expectations.deletion_failed(key, &slice_name);
                    return Err(e.into());
                }
            }
        }
        Ok(Action::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn slices_carry_conditions_and_split_at_the_endpoint_limit() {
        let svc: Service =
            serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "d"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}}))
            .unwrap();
        let pods: Vec<Arc<Pod>> = (0..150)
            .map(|i| {
                let ready = if i % 2 == 0 { "True" } else { "False" };
                Arc::new(serde_json::from_value(json!({"metadata": {"name": format!("p{i}"), "namespace": "d", "labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "c"}]},
                    "status": {"phase": "Running", "podIP": format!("10.0.{}.{}", i / 200, i % 200 + 1),
                        "conditions": [{"type": "Ready", "status": ready}]}})).unwrap())
            })
            .collect();
        let slices = desired_slices(&svc, &pods);
        assert_eq!(slices.len(), 2);
        assert_eq!(slices[0].endpoints.len(), 100);
        assert_eq!(slices[1].endpoints.len(), 50);
        let port = &slices[0].ports.as_ref().unwrap()[0];
        assert_eq!((port.port, port.name.as_deref()), (Some(8080), Some("")));
        let ready = slices
            .iter()
            .flat_map(|s| &s.endpoints)
            .filter(|e| e.conditions.as_ref().unwrap().ready == Some(true))
            .count();
        assert_eq!(ready, 75);
    }
}
