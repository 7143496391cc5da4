//! Health endpoints with upstream's meaning: `/healthz` and `/livez` answer `ok` while the
//! process serves requests at all (a failing liveness probe restarts it); `/readyz` answers
//! `ok` only once the component can do its work (e.g. its caches are synced), else 503 with
//! the reason.

use std::future::Future;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

/// A component's readiness check: `Err(reason)` while not ready.
pub type ReadyCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// A router serving `/healthz`, `/livez` and `/readyz`; a component adds its own routes
/// (the controller manager's `/leader`, the kubelet's logs and exec) with any state.
pub fn router<S>(ready: ReadyCheck) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/livez", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || async move {
                match ready() {
                    Ok(()) => (StatusCode::OK, "ok".to_string()),
                    Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason),
                }
            }),
        )
}

/// For components that are ready as soon as they serve.
pub fn always_ready() -> ReadyCheck {
    Arc::new(|| Ok(()))
}

/// Serves `router` on `listener` until `shutdown` completes, then lets requests in flight
/// finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    async fn get(router: &Router, path: &str) -> (StatusCode, String) {
        let response = router
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn readyz_follows_the_check_while_healthz_and_livez_stay_ok() {
        let synced = Arc::new(AtomicBool::new(false));
        let check = synced.clone();
        let router = router(Arc::new(move || {
            if check.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("caches not synced".to_string())
            }
        }));
        assert_eq!(
            get(&router, "/readyz").await,
            (StatusCode::SERVICE_UNAVAILABLE, "caches not synced".into())
        );
        assert_eq!(
            get(&router, "/healthz").await,
            (StatusCode::OK, "ok".into())
        );
        assert_eq!(get(&router, "/livez").await, (StatusCode::OK, "ok".into()));
        synced.store(true, Ordering::SeqCst);
        assert_eq!(get(&router, "/readyz").await, (StatusCode::OK, "ok".into()));
    }

    #[tokio::test]
    async fn serve_stops_when_shutdown_completes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(serve(listener, router(always_ready()), async move {
            let _ = stopped.await;
        }));
        stop.send(()).unwrap();
        served.await.unwrap().unwrap();
    }
}
