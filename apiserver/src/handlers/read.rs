//! Reads: one object from storage; lists from the watch cache (or from storage at an exact
//! revision or a continue token's revision), as JSON or as a Table.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Response;
use rkube_api::registry::ResourceInfo;
use rkube_api::selectors::{FieldSelector, LabelSelector};
use rkube_api::ApiError;
use rkube_store::KeyValue;
use serde_json::Value;

use super::{Request, CACHE_WAIT};
use crate::cache::{CacheError, CachedObject, Filter};
use crate::error::{store_error, store_error_any, ApiResult, ErrorResponse};
use crate::objects;
use crate::render::{self, Format};
use crate::ApiState;

pub(super) fn filter_for(req: &Request) -> Result<Filter, ApiError> {
    let labels = LabelSelector::parse(req.params.label_selector.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("unable to parse labelSelector: {e}")))?;
    let fields = FieldSelector::parse(req.params.field_selector.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    fields
        .check_supported(req.target.resource.kind)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(Filter {
        resource: req.target.resource,
        namespace: req.target.namespace.clone(),
        labels,
        fields,
    })
}

pub(super) fn cache_error(e: CacheError) -> ErrorResponse {
    match e {
        CacheError::TooOld { requested, oldest } => {
            ApiError::gone(format!("too old resource version: {requested} ({oldest})")).into()
        }
        CacheError::TooNew { requested, current } => ApiError::timeout(format!(
            "Too large resource version: {requested}, current: {current}"
        ))
        .into(),
        CacheError::NotReady => {
            ApiError::service_unavailable("the API server is starting: watch cache not ready")
                .into()
        }
    }
}

/// Decodes and filters a storage listing (used for exact-revision and paginated reads).
fn decode_listing(
    resource: &'static ResourceInfo,
    kvs: Vec<KeyValue>,
    filter: &Filter,
) -> Vec<Arc<CachedObject>> {
    kvs.into_iter()
        .filter_map(|kv| {
            let o = CachedObject::from_stored(resource, kv.key, kv.value, kv.mod_revision).ok()?;
            filter.matches(&o).then(|| Arc::new(o))
        })
        .collect()
}

fn list_prefix(req: &Request) -> String {
    match &req.target.namespace {
        Some(ns) if req.target.resource.namespaced => req.target.resource.namespace_prefix(ns),
        _ => req.target.resource.key_prefix(),
    }
}

/// Continue tokens: `<revision>/<last key>`, hex-encoded so they survive any client.
fn encode_continue(revision: i64, last_key: &str) -> String {
    format!("{revision}/{last_key}")
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn decode_continue(token: &str) -> Result<(i64, String), ApiError> {
    let bad = || ApiError::bad_request("continue key is not valid: invalid continue token");
    if !token.len().is_multiple_of(2) {
        return Err(bad());
    }
    let bytes: Result<Vec<u8>, _> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2).unwrap_or("zz"), 16))
        .collect();
    let text = String::from_utf8(bytes.map_err(|_| bad())?).map_err(|_| bad())?;
    let (rev, key) = text.split_once('/').ok_or_else(bad)?;
    Ok((rev.parse().map_err(|_| bad())?, key.to_string()))
}

pub(super) async fn list(state: Arc<ApiState>, req: Request) -> ApiResult<Response> {
    let filter = filter_for(&req)?;
    let resource = req.target.resource;
    let limit = req.params.limit()?;
    let (items, revision, after_key) = if let Some(token) = req
        .params
        .continue_token
        .as_deref()
        .filter(|t| !t.is_empty())
    {
        // Later pages read storage at the first page's revision: a consistent snapshot, or
        // 410 once that revision is compacted, as upstream.
        let (rev, last_key) = decode_continue(token)?;
        let listing = state
            .store
            .list(&list_prefix(&req), Some(rev))
            .await
            .map_err(store_error_any)?;
        let items = decode_listing(resource, listing.kvs, &filter);
        (items, rev, Some(last_key))
    } else {
        let requested = req.params.resource_version()?;
        let exact = req.params.resource_version_match.as_deref() == Some("Exact");
        match requested {
            Some(rv) if exact && rv > 0 => {
                let listing = state
                    .store
                    .list(&list_prefix(&req), Some(rv))
                    .await
                    .map_err(store_error_any)?;
                (
                    decode_listing(resource, listing.kvs, &filter),
                    listing.revision,
                    None,
                )
            }
            Some(0) => {
                state
                    .cache
                    .wait_for(None, CACHE_WAIT)
                    .await
                    .map_err(cache_error)?;
                let (items, rev) = state.cache.list(&filter).map_err(cache_error)?;
                (items, rev, None)
            }
            Some(rv) => {
                state
                    .cache
                    .wait_for(Some(rv), CACHE_WAIT)
                    .await
                    .map_err(cache_error)?;
                let (items, rev) = state.cache.list(&filter).map_err(cache_error)?;
                (items, rev, None)
            }
            None => {
                // A consistent read: serve from the cache once it has caught up with storage.
                let current = state
                    .store
                    .current_revision()
                    .await
                    .map_err(store_error_any)?;
                match state.cache.wait_for(Some(current), CACHE_WAIT).await {
                    Ok(_) => {
                        let (items, rev) = state.cache.list(&filter).map_err(cache_error)?;
                        (items, rev, None)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "watch cache behind storage; listing from storage");
                        let listing = state
                            .store
                            .list(&list_prefix(&req), None)
                            .await
                            .map_err(store_error_any)?;
                        (
                            decode_listing(resource, listing.kvs, &filter),
                            listing.revision,
                            None,
                        )
                    }
                }
            }
        }
    };
    let items: Vec<Arc<CachedObject>> = match &after_key {
        Some(k) => items
            .into_iter()
            .filter(|o| o.key.as_str() > k.as_str())
            .collect(),
        None => items,
    };
    let (page, continue_token, remaining) = match limit {
        Some(limit) if items.len() > limit => {
            let last = &items[limit - 1].key;
            let token = encode_continue(revision, last);
            let remaining = items.len() - limit;
            (items[..limit].to_vec(), Some(token), Some(remaining))
        }
        _ => (items, None, None),
    };
    match render::negotiate(&req.headers) {
        Format::Json => Ok(render::json_bytes(
            StatusCode::OK,
            render::list_body(
                resource,
                &page,
                revision,
                continue_token.as_deref(),
                remaining,
            ),
        )),
        Format::Table => {
            let values: Vec<Value> = page.iter().filter_map(|o| o.value().ok()).collect();
            let t = render::table(
                resource,
                &values,
                Some(revision),
                continue_token.as_deref(),
                req.params.include_object.as_deref(),
            );
            Ok(render::json_value(StatusCode::OK, &t))
        }
    }
}

pub(super) async fn read_current(state: &ApiState, req: &Request) -> ApiResult<(KeyValue, Value)> {
    let resource = req.target.resource;
    let kv = state
        .store
        .get(&req.key())
        .await
        .map_err(|e| store_error(resource, req.name(), e))?
        .ok_or_else(|| ApiError::not_found(resource, req.name()))?;
    let obj = objects::decode_stored(&kv.value, kv.mod_revision)
        .map_err(|e| ApiError::internal(format!("stored object {} is corrupt: {e}", kv.key)))?;
    Ok((kv, obj))
}

pub(super) fn respond_object(req: &Request, status: StatusCode, obj: &Value) -> Response {
    match render::negotiate(&req.headers) {
        Format::Table => {
            let rv = obj["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|s| s.parse().ok());
            render::json_value(
                status,
                &render::table(
                    req.target.resource,
                    std::slice::from_ref(obj),
                    rv,
                    None,
                    req.params.include_object.as_deref(),
                ),
            )
        }
        Format::Json => render::json_value(status, obj),
    }
}

pub(super) async fn get(state: Arc<ApiState>, req: Request) -> ApiResult<Response> {
    let (_, obj) = read_current(&state, &req).await?;
    Ok(respond_object(&req, StatusCode::OK, &obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip_and_reject_garbage() {
        let t = encode_continue(42, "/registry/pods/default/web-1");
        assert_eq!(
            decode_continue(&t).unwrap(),
            (42, "/registry/pods/default/web-1".to_string())
        );
        assert!(decode_continue("zz").is_err());
        assert!(decode_continue("abc").is_err());
        assert!(decode_continue("").is_err());
    }
}
