//! The namespace controller: empties a Terminating namespace (every namespaced resource in
//! discovery), reports what remains in its conditions, and once nothing is left removes
//! the `kubernetes` finalizer through `namespaces/<name>/finalize`, after which the API
//! server deletes the namespace.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, NamespaceCondition};
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};
use rkube_runtime::{run_reconcile_workers, Action, Backoff, Change, SharedInformers, WorkQueue};
use serde_json::json;
use tokio::task::JoinSet;

use crate::discovery::deletable_resources;
use crate::util::{ignore_not_found, now};
use crate::{ControllerError, Shared};

pub const NAME: &str = "namespace";
const FINALIZER: &str = "kubernetes";

struct NamespaceController {
    client: kube::Client,
    namespaces: Store<Namespace>,
    resync: std::time::Duration,
}

pub fn start(shared: &Shared, tasks: &mut JoinSet<()>, informers: &mut SharedInformers) {
    let queue: Arc<WorkQueue<String>> = WorkQueue::new(Backoff::default());
    let q = queue.clone();
    let (namespaces, namespaces_synced) =
        informers
            .all::<Namespace>()
            .subscribe(move |change: Change<'_, Namespace>| {
                let ns = change.object();
                if ns.metadata.deletion_timestamp.is_some() {
                    q.add(ns.name_any());
                }
            });
    let controller = Arc::new(NamespaceController {
        client: shared.client.clone(),
        namespaces,
        resync: shared.namespace_resync,
    });
    let workers = shared.workers;
    tasks.spawn(async move {
        namespaces_synced.wait().await;
        run_reconcile_workers(NAME, queue, workers, controller, |c, key| async move {
            c.reconcile(&key).await
        })
        .await;
    });
}

impl NamespaceController {
    async fn reconcile(&self, name: &str) -> Result<Action, ControllerError> {
        let Some(ns) = self.namespaces.get(&ObjectRef::new(name)) else {
            return Ok(Action::Done);
        };
        if ns.metadata.deletion_timestamp.is_none() {
            return Ok(Action::Done);
        }
        let finalizers = ns
            .spec
            .as_ref()
            .and_then(|s| s.finalizers.clone())
            .unwrap_or_default();
        if !finalizers.iter().any(|f| f == FINALIZER) {
            return Ok(Action::Done);
        }
        let resources = deletable_resources(&self.client).await?;
        let mut remaining: Vec<String> = Vec::new();
        let mut failures: Vec<String> = Vec::new();
        for resource in resources.iter().filter(|r| r.namespaced) {
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), name, &resource.resource);
            let list = match api.list(&ListParams::default()).await {
                Ok(list) => list,
                Err(e) => {
                    failures.push(format!("{}: {e}", resource.resource.plural));
                    continue;
                }
            };
            if list.items.is_empty() {
                continue;
            }
            remaining.push(format!(
                "{} has {} resource instances",
                resource.resource.plural,
                list.items.len()
            ));
            let result = if resource.delete_collection {
                api.delete_collection(&DeleteParams::background(), &ListParams::default())
                    .await
                    .map(|_| ())
            } else {
                let mut result = Ok(());
                for obj in list
                    .items
                    .iter()
                    .filter(|o| o.metadata.deletion_timestamp.is_none())
                {
                    if let Err(e) = api
                        .delete(&obj.name_any(), &DeleteParams::background())
                        .await
                    {
                        if !matches!(&e, kube::Error::Api(s) if s.code == 404) {
                            result = Err(e);
                        }
                    }
                }
                result
            };
            if let Err(e) = result {
                failures.push(format!("{}: {e}", resource.resource.plural));
            }
        }
        self.set_conditions(&ns, &remaining, &failures).await?;
        if !remaining.is_empty() || !failures.is_empty() {
            return Ok(Action::RequeueAfter(self.resync));
        }
        let mut finalized = (*ns).clone();
        if let Some(spec) = finalized.spec.as_mut() {
            spec.finalizers = Some(finalizers.into_iter().filter(|f| f != FINALIZER).collect());
        }
        let api: Api<Namespace> = Api::all(self.client.clone());
        match api
            .replace_subresource("finalize", name, &PostParams::default(), &finalized)
            .await
        {
            Ok(_) => Ok(Action::Done),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(Action::Done),
            Err(e) => Err(e.into()),
        }
    }

    async fn set_conditions(
        &self,
        ns: &Namespace,
        remaining: &[String],
        failures: &[String],
    ) -> Result<(), ControllerError> {
        let old = ns
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let make = |type_: &str, active: bool, reason_true: &str, message: String| {
            let (status, reason) = if active {
                ("True", reason_true)
            } else {
                ("False", "ContentDeleted")
            };
            let previous = old.iter().find(|c| c.type_ == type_);
            let transition = previous
                .filter(|c| c.status == status)
                .and_then(|c| c.last_transition_time.clone())
                .unwrap_or_else(now);
            NamespaceCondition {
                type_: type_.into(),
                status: status.into(),
                reason: Some(reason.into()),
                message: Some(message),
                last_transition_time: Some(transition),
            }
        };
        let conditions = vec![
            make(
                "NamespaceContentRemaining",
                !remaining.is_empty(),
                "SomeResourcesRemain",
                if remaining.is_empty() {
                    "All content successfully removed".into()
                } else {
                    format!("Some resources are remaining: {}", remaining.join(", "))
                },
            ),
            make(
                "NamespaceDeletionContentFailure",
                !failures.is_empty(),
                "ContentDeletionFailed",
                if failures.is_empty() {
                    "All content successfully deleted, may be waiting on finalization".into()
                } else {
                    format!(
                        "Failed to delete all resource types, {} remaining: {}",
                        failures.len(),
                        failures.join("; ")
                    )
                },
            ),
        ];
        let unchanged = conditions.iter().all(|c| {
            old.iter()
                .any(|o| o.type_ == c.type_ && o.status == c.status && o.message == c.message)
        });
        if unchanged {
            return Ok(());
        }
        let api: Api<Namespace> = Api::all(self.client.clone());
        let patch = json!({"status": {"conditions": conditions}});
        let result = api
            .patch_status(
                &ns.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await;
        ignore_not_found(result)?;
        Ok(())
    }
}
