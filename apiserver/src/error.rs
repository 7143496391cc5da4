//! Turning errors into `metav1.Status` responses.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rkube_api::registry::ResourceInfo;
use rkube_api::ApiError;
use rkube_store::StoreError;

/// An [`ApiError`] on its way to the client. Internal errors are logged here, once.
#[derive(Debug)]
pub struct ErrorResponse(pub ApiError);

impl From<ApiError> for ErrorResponse {
    fn from(e: ApiError) -> Self {
        ErrorResponse(e)
    }
}

impl IntoResponse for ErrorResponse {
    fn into_response(self) -> Response {
        let err = self.0;
        if err.code >= 500 {
            tracing::error!(code = err.code, reason = err.reason, "{}", err.message);
        }
        let body = err.to_status().to_string();
        let status = StatusCode::from_u16(err.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, body).into_response();
        resp.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp
    }
}

pub type ApiResult<T> = Result<T, ErrorResponse>;

/// Wraps `router` so that a handler that panics costs its request one 500 Status (upstream's
/// words; the panic itself goes to the log) instead of the connection, and the server keeps
/// serving. Panics in spawned tasks (watch streams) are outside its reach: they end their
/// own stream only.
pub fn catch_panics(router: axum::Router) -> axum::Router {
    router.layer(tower_http::catch_panic::CatchPanicLayer::custom(
        panic_response,
    ))
}

fn panic_response(payload: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_string());
    tracing::error!(panic = %detail, "request handler panicked");
    ErrorResponse(ApiError::internal(
        "This request caused apiserver to panic. Look in the logs for details.",
    ))
    .into_response()
}

/// Maps a storage error for one object to the upstream Status.
pub fn store_error(resource: &ResourceInfo, name: &str, err: StoreError) -> ErrorResponse {
    let api = match err {
        StoreError::AlreadyExists { .. } => ApiError::already_exists(resource, name),
        StoreError::NotFound { .. } => ApiError::not_found(resource, name),
        StoreError::Conflict { .. } => ApiError::conflict(resource, name),
        StoreError::Compacted { requested, compacted } => ApiError::gone(format!(
            "The resourceVersion for the provided list is too old (requested {requested}, oldest available {compacted})."
        )),
        StoreError::FutureRevision { requested, current } => ApiError::timeout(format!(
            "Too large resource version: {requested}, current: {current}"
        )),
        StoreError::Unavailable(msg) => ApiError::service_unavailable(format!("storage unavailable: {msg}")),
        StoreError::TooLarge { limit, .. } => {
            ApiError::too_large(format!("Request entity too large: limit is {limit}"))
        }
        other => ApiError::internal(other.to_string()),
    };
    ErrorResponse(api)
}

/// Storage errors where no single object is concerned (lists, watches).
pub fn store_error_any(err: StoreError) -> ErrorResponse {
    match err {
        StoreError::Compacted { .. } => ErrorResponse(ApiError::gone(
            "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
        )),
        StoreError::Unavailable(msg) => ErrorResponse(ApiError::service_unavailable(format!(
            "storage unavailable: {msg}"
        ))),
        // A continue token or an exact list naming a revision storage has not reached.
        StoreError::FutureRevision { requested, current } => ErrorResponse(ApiError::timeout(
            format!("Too large resource version: {requested}, current: {current}"),
        )),
        other => ErrorResponse(ApiError::internal(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use axum::routing::get;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn explode() -> &'static str {
        panic!("a handler bug")
    }

    #[tokio::test]
    async fn a_panicking_handler_costs_one_500_status_and_the_router_keeps_serving() {
        let router = catch_panics(
            axum::Router::new()
                .route("/boom", get(explode))
                .route("/fine", get(|| async { "ok" })),
        );
        let resp = router
            .clone()
            .oneshot(Request::get("/boom").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(resp.headers()["content-type"], "application/json");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status["kind"], "Status");
        assert_eq!(status["reason"], "InternalError");
        assert_eq!(status["code"], 500);
        let resp = router
            .oneshot(Request::get("/fine").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
}
