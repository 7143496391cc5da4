//! What the benchmark binaries share: latency statistics, readings from `/proc`, child
//! processes, and the component binaries started with their flags.
//!
//! A benchmark reaches a component only as a user would: it starts the release binary as a
//! process and talks HTTP to it. It links no component's crate, so what it measures is the
//! shipped binary, and ARCHITECTURE.md's dependency rules hold for it too.

pub mod components;
pub mod process;
pub mod procfs;
pub mod stats;

pub use rkube_testkit::free_port;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::Value;

/// Creates pods `make_pod(0..count)` in `namespace` through the API, `concurrency` in
/// flight; the wall time.
pub async fn create_pods<F>(
    client: &kube::Client,
    namespace: &str,
    count: usize,
    concurrency: usize,
    make_pod: F,
) -> anyhow::Result<Duration>
where
    F: Fn(usize) -> anyhow::Result<Pod> + Send + Sync + 'static,
{
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let make_pod = Arc::new(make_pod);
    let batch = stats::run_concurrent(count, concurrency, move |i| {
        let (api, make_pod) = (api.clone(), make_pod.clone());
        async move {
            let pod = make_pod(i)?;
            let started = Instant::now();
            api.create(&PostParams::default(), &pod)
                .await
                .with_context(|| format!("creating pod {:?}", pod.metadata.name))?;
            Ok(started.elapsed())
        }
    })
    .await?;
    Ok(batch.wall)
}

/// A kube-rs client for a plain-HTTP API server URL.
pub fn kube_client(url: &str) -> anyhow::Result<kube::Client> {
    Ok(kube::Client::try_from(kube::Config::new(url.parse()?))?)
}

/// GET `url` and decode the JSON body; any non-2xx status is an error with the body.
pub async fn get_json(client: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    let response = client.get(url).send().await?;
    let status = response.status();
    let text = response.text().await?;
    if !status.is_success() {
        bail!("GET {url}: {status} {text}");
    }
    Ok(serde_json::from_str(&text)?)
}

/// POST `body` as JSON to `url` and decode the answer; any non-2xx status is an error.
pub async fn post_json(client: &reqwest::Client, url: &str, body: &Value) -> anyhow::Result<Value> {
    let response = client.post(url).json(body).send().await?;
    let status = response.status();
    let text = response.text().await?;
    if !status.is_success() {
        bail!("POST {url}: {status} {text}");
    }
    Ok(serde_json::from_str(&text)?)
}

/// Creates namespace `name` on the API server at `base`.
pub async fn create_namespace(
    client: &reqwest::Client,
    base: &str,
    name: &str,
) -> anyhow::Result<()> {
    let body =
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
    post_json(client, &format!("{base}/api/v1/namespaces"), &body).await?;
    Ok(())
}

/// The load average and CPU count, for a benchmark's first line: figures from a loaded
/// machine are not comparable with those from an idle one.
pub fn machine_summary() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!("{cpus} CPUs, load average {}", load.join(" "))
}
