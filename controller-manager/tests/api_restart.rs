//! The controller manager keeps working across an API server restart: its watches, lease
//! and controllers pick up again once the server is back on the same address and data.

mod common;

use common::{deployment, wait_for, Env, TIMEOUT};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::json;

async fn deployment_status_is(api: &Api<Deployment>, name: &str, replicas: i32) -> bool {
    let Ok(d) = api.get(name).await else {
        return false;
    };
    let s = d.status.unwrap_or_default();
    s.observed_generation == d.metadata.generation
        && s.replicas == Some(replicas)
        && s.updated_replicas == Some(replicas)
        && s.ready_replicas == Some(replicas)
        && s.available_replicas == Some(replicas)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keeps_reconciling_across_an_api_server_restart() {
    let mut env = Env::start().await;
    let cm = env.start_cm("cm-a").await;
    let deployments: Api<Deployment> = Api::default_namespaced(env.client.clone());
    deployments
        .create(
            &PostParams::default(),
            &serde_json::from_value(deployment("web", 2, "nginx:1")).unwrap(),
        )
        .await
        .unwrap();
    wait_for("2/2 ready before the restart", TIMEOUT, || {
        deployment_status_is(&deployments, "web", 2)
    })
    .await;

    env.restart_api_server().await;

    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 4}})),
        )
        .await
        .unwrap();
    wait_for("4/4 ready after the restart", TIMEOUT, || {
        deployment_status_is(&deployments, "web", 4)
    })
    .await;
    cm.stop().await;
}
