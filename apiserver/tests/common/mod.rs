//! The real router and handlers over a temporary embedded store, driven with `oneshot`
//! requests (no socket).

// Each test file uses its own part of this module.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use rkube_apiserver::{app, bootstrap, open_store, state, ApiState, Config, StorageConfig};
use serde_json::Value;
use tower::ServiceExt;

pub struct Harness {
    pub state: Arc<ApiState>,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::watch::Sender<bool>,
}

impl Harness {
    /// The default configuration.
    pub async fn new() -> Harness {
        Harness::with_config(|_| {}).await
    }

    /// The default configuration as `configure` changes it.
    pub async fn with_config(configure: impl FnOnce(&mut Config)) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::new(StorageConfig::Embedded {
            data_dir: dir.path().to_path_buf(),
        });
        configure(&mut config);
        let store = open_store(&config.storage).await.unwrap();
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let state = state(&config, store, stop_rx).unwrap();
        bootstrap(&state).await;
        state
            .cache
            .wait_for(None, Duration::from_secs(5))
            .await
            .unwrap();
        Harness {
            state,
            _dir: dir,
            _stop: stop,
        }
    }

    pub fn router(&self) -> Router {
        app(self.state.clone())
    }

    /// The response as it comes, for a body that streams (a watch).
    pub async fn request(
        &self,
        method: &str,
        uri: &str,
        content_type: &str,
        body: impl Into<Body>,
    ) -> Response<Body> {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", content_type)
            .body(body.into())
            .unwrap();
        self.router().oneshot(req).await.unwrap()
    }

    /// The status and the body as JSON (a string if it is not JSON).
    pub async fn send(
        &self,
        method: &str,
        uri: &str,
        content_type: &str,
        body: impl Into<Body>,
    ) -> (StatusCode, Value) {
        let resp = self.request(method, uri, content_type, body).await;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, value)
    }

    pub async fn json(&self, method: &str, uri: &str, body: &Value) -> (StatusCode, Value) {
        self.send(method, uri, "application/json", body.to_string())
            .await
    }

    pub async fn get(&self, uri: &str) -> (StatusCode, Value) {
        self.send("GET", uri, "application/json", Body::empty())
            .await
    }
}
