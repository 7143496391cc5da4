//! Deletes: marking (deletionTimestamp, grace period, propagation finalizers) and removal
//! once nothing holds the object, for one object or a filtered collection.

use std::sync::Arc;

use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use rkube_api::ApiError;
use serde_json::{json, Value};

use super::body::decode_body;
use super::read::{cache_error, filter_for, read_current};
use super::write::{commit, ready_for_removal, Committed, WriteKind};
use super::{Request, CACHE_WAIT, MAX_WRITE_ATTEMPTS};
use crate::error::{store_error_any, ApiResult, ErrorResponse};
use crate::objects;
use crate::path::Target;
use crate::query::Params;
use crate::render;
use crate::strategy;
use crate::ApiState;

#[derive(Debug, Default)]
pub(super) struct DeleteOptions {
    propagation_policy: Option<String>,
    grace_period_seconds: Option<i64>,
    precondition_uid: Option<String>,
    precondition_resource_version: Option<String>,
}

pub(super) fn delete_options(
    req: &Request,
    body: Option<&Value>,
) -> Result<DeleteOptions, ApiError> {
    let decoded;
    let body = match body {
        Some(b) => Some(b),
        None if req.body.iter().any(|b| !b.is_ascii_whitespace()) => {
            decoded = decode_body(&req.body, req.content_type())?;
            Some(&decoded)
        }
        None => None,
    };
    let from_body = |f: &str| body.and_then(|b| b.get(f)).filter(|v| !v.is_null());
    let policy = from_body("propagationPolicy")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| req.params.propagation_policy.clone());
    if let Some(p) = &policy {
        if !matches!(p.as_str(), "Orphan" | "Background" | "Foreground") {
            return Err(ApiError::new(
                422,
                "Invalid",
                format!("DeleteOptions.meta.k8s.io \"\" is invalid: propagationPolicy: Unsupported value: \"{p}\": supported values: \"Foreground\", \"Background\", \"Orphan\""),
            ));
        }
    }
    let grace = match from_body("gracePeriodSeconds") {
        Some(v) => Some(
            v.as_i64()
                .ok_or_else(|| ApiError::bad_request("gracePeriodSeconds must be an integer"))?,
        ),
        None => req.params.grace_period_seconds()?,
    };
    let preconditions = from_body("preconditions");
    Ok(DeleteOptions {
        propagation_policy: policy,
        grace_period_seconds: grace,
        precondition_uid: preconditions
            .and_then(|p| p["uid"].as_str())
            .map(str::to_string),
        precondition_resource_version: preconditions
            .and_then(|p| p["resourceVersion"].as_str())
            .map(str::to_string),
    })
}

/// `now + grace_seconds` (at least `now`) as an RFC 3339 timestamp. Grace periods are any
/// int64, as upstream; one reaching past the last second a four-digit year can name gets
/// that second instead of overflowing (the object then waits for its finalizers or kubelet).
fn deletion_timestamp(now: chrono::DateTime<chrono::Utc>, grace_seconds: i64) -> String {
    let latest = chrono::NaiveDate::from_ymd_opt(9999, 12, 31)
        .and_then(|d| d.and_hms_opt(23, 59, 59))
        .map(|t| t.and_utc());
    let at = chrono::TimeDelta::try_seconds(grace_seconds.max(0))
        .and_then(|d| now.checked_add_signed(d))
        .filter(|at| latest.is_none_or(|l| *at <= l))
        .or(latest)
        .unwrap_or(now);
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub(super) async fn delete(state: Arc<ApiState>, req: Request) -> ApiResult<Response> {
    let opts = delete_options(&req, None)?;
    let deleted = delete_object(&state, &req, &opts).await?;
    Ok(render::json_value(StatusCode::OK, &deleted))
}

pub(super) async fn delete_object(
    state: &ApiState,
    req: &Request,
    opts: &DeleteOptions,
) -> ApiResult<Value> {
    let resource = req.target.resource;
    let strategy = strategy::for_resource(resource);
    let name = req.name().to_string();
    for _ in 0..MAX_WRITE_ATTEMPTS {
        let (kv, old) = read_current(state, req).await?;
        if let Some(uid) = &opts.precondition_uid {
            let actual = old["metadata"]["uid"].as_str().unwrap_or("");
            if uid != actual {
                return Err(ApiError::conflict_because(
                    resource,
                    &name,
                    &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}"),
                )
                .into());
            }
        }
        if let Some(rv) = &opts.precondition_resource_version {
            if *rv != kv.mod_revision.to_string() {
                return Err(ApiError::conflict_because(
                    resource,
                    &name,
                    &format!("Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}", kv.mod_revision),
                )
                .into());
            }
        }
        let mut marked = old.clone();
        let meta = objects::meta_mut(&mut marked);
        let finalizer = match opts.propagation_policy.as_deref() {
            Some("Orphan") => Some("orphan"),
            Some("Foreground") => Some("foregroundDeletion"),
            _ => None,
        };
        if let Some(f) = finalizer {
            let list = meta.entry("finalizers").or_insert_with(|| json!([]));
            if let Some(arr) = list.as_array_mut() {
                if !arr.iter().any(|x| x == f) {
                    arr.push(json!(f));
                }
            }
        }
        // Only kinds deleted gracefully (pods) get a grace period; the rest go at once.
        let graceful = strategy
            .grace_period
            .map(|grace_period| grace_period(&old, opts.grace_period_seconds));
        let grace = graceful.unwrap_or(0);
        let already = objects::is_terminating(&old);
        let current_grace = old["metadata"]["deletionGracePeriodSeconds"].as_i64();
        if !already || current_grace.is_some_and(|g| grace < g) {
            let meta = objects::meta_mut(&mut marked);
            meta.insert(
                "deletionTimestamp".into(),
                json!(deletion_timestamp(chrono::Utc::now(), grace)),
            );
            if graceful.is_some() || !already {
                meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
            }
        }
        (strategy.mark_terminating)(&mut marked);
        if req.params.dry_run() {
            return Ok(marked);
        }
        // A delete that can complete now removes the object and answers with its last
        // stored state; one that must wait (finalizers, grace) stores the marked object.
        let removable = ready_for_removal(resource, &marked);
        if !removable && objects::same_content(&old, &marked) {
            return Ok(old);
        }
        let removed_as = removable.then_some(old);
        match commit(
            state,
            req,
            kv.mod_revision,
            marked,
            removed_as,
            WriteKind::DeletionMark,
        )
        .await?
        {
            Committed::Stored(stored) => return Ok(stored),
            Committed::Conflict => continue,
        }
    }
    Err(ApiError::conflict(resource, &name).into())
}

pub(super) async fn delete_collection(state: Arc<ApiState>, req: Request) -> ApiResult<Response> {
    let filter = filter_for(&req)?;
    let opts = delete_options(&req, None)?;
    let resource = req.target.resource;
    let current = state
        .store
        .current_revision()
        .await
        .map_err(store_error_any)?;
    state
        .cache
        .wait_for(Some(current), CACHE_WAIT)
        .await
        .map_err(cache_error)?;
    let (items, revision) = state.cache.list(&filter).map_err(cache_error)?;
    let mut deleted = Vec::with_capacity(items.len());
    for item in items {
        let one = Request {
            method: Method::DELETE,
            target: Target {
                resource,
                namespace: (!item.namespace.is_empty()).then(|| item.namespace.clone()),
                name: Some(item.name.clone()),
                subresource: None,
            },
            params: Params {
                dry_run: req.params.dry_run.clone(),
                ..Params::default()
            },
            raw_query: None,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            upgrade: None,
        };
        match delete_object(&state, &one, &opts).await {
            Ok(v) => deleted.push(v),
            // Someone else deleted it first: the collection is still being emptied.
            Err(ErrorResponse(e)) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    let body = json!({
        "kind": resource.list_kind(),
        "apiVersion": resource.api_version(),
        "metadata": {"resourceVersion": revision.to_string()},
        "items": deleted,
    });
    Ok(render::json_value(StatusCode::OK, &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deletion_timestamps_saturate_instead_of_overflowing() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .to_utc();
        assert_eq!(deletion_timestamp(now, 30), "2026-01-02T03:04:35Z");
        assert_eq!(deletion_timestamp(now, 0), "2026-01-02T03:04:05Z");
        for huge in [i64::MAX, i64::MAX / 1000, 400_000_000_000, 1 << 40] {
            assert_eq!(deletion_timestamp(now, huge), "9999-12-31T23:59:59Z");
        }
        assert_eq!(deletion_timestamp(now, i64::MIN), "2026-01-02T03:04:05Z");
    }
}
