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
        other => ErrorResponse(ApiError::internal(other.to_string())),
    }
}
