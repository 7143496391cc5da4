//! Writes: create, update and patch, all through one compare-and-swap loop ([`write_loop`])
//! and [`commit`], which also removes an object whose deletion can complete.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use rkube_api::registry::ResourceInfo;
use rkube_api::ApiError;
use rkube_patch::PatchType;
use rkube_store::StoreError;
use serde_json::{json, Value};

use super::body::{decode_body, patch_error, patch_type};
use super::read::{read_current, respond_object};
use super::{Request, MAX_WRITE_ATTEMPTS};
use crate::error::{store_error, ApiResult};
use crate::objects;
use crate::query::parse_resource_version;
use crate::strategy::{self, UpdateScope};
use crate::ApiState;

pub(super) async fn create(state: Arc<ApiState>, req: Request) -> ApiResult<Response> {
    let obj = decode_body(&req.body, req.content_type())?;
    let created = create_object(&state, &req, obj).await?;
    Ok(respond_object(&req, StatusCode::CREATED, &created))
}

pub(super) async fn create_object(
    state: &ApiState,
    req: &Request,
    mut obj: Value,
) -> ApiResult<Value> {
    let resource = req.target.resource;
    let namespace = req
        .target
        .namespace
        .as_deref()
        .filter(|_| resource.namespaced);
    objects::check_schema(resource, &mut obj, req.params.strict_fields())?;
    strategy::prepare_create(resource, namespace, &mut obj)?;
    if let Some(ns) = namespace {
        strategy::namespace::check_accepts_content(state, ns).await?;
    }
    (strategy::for_resource(resource).assign_on_create)(state, resource, &mut obj)?;
    let name = objects::name_of(&obj).unwrap_or("").to_string();
    if req.params.dry_run() {
        objects::check_storable(&obj)?;
        return Ok(obj);
    }
    let key = resource.key(namespace, &name);
    let bytes = objects::encode_for_storage(&mut obj)?;
    let kv = state
        .store
        .create(&key, Bytes::from(bytes))
        .await
        .map_err(|e| store_error(resource, &name, e))?;
    objects::set_resource_version(&mut obj, kv.mod_revision);
    Ok(obj)
}

/// Whether an object that is being deleted may now be removed from storage.
pub(super) fn ready_for_removal(resource: &ResourceInfo, obj: &Value) -> bool {
    if !objects::is_terminating(obj) || objects::has_finalizers(obj) {
        return false;
    }
    if (strategy::for_resource(resource).held_after_deletion)(obj) {
        return false;
    }
    // A pod in graceful termination stays until its kubelet deletes it with grace 0.
    obj["metadata"]["deletionGracePeriodSeconds"]
        .as_i64()
        .unwrap_or(0)
        == 0
}

/// Read-modify-write with compare-and-swap, retried on conflicts unless the client pinned
/// a resourceVersion. `mutate` gets the current object and returns the desired one (already
/// prepared and validated). Returns the stored result.
pub(super) async fn write_loop(
    state: &ApiState,
    req: &Request,
    expected: Option<i64>,
    mut mutate: impl FnMut(&Value) -> Result<Value, ApiError>,
) -> ApiResult<Value> {
    let resource = req.target.resource;
    let name = req.name().to_string();
    for _ in 0..MAX_WRITE_ATTEMPTS {
        let (kv, old) = read_current(state, req).await?;
        if let Some(exp) = expected {
            if exp != kv.mod_revision {
                return Err(ApiError::conflict(resource, &name).into());
            }
        }
        let new = mutate(&old)?;
        if let Some(body_rv) = parse_resource_version(new["metadata"]["resourceVersion"].as_str())?
        {
            if body_rv != kv.mod_revision {
                return Err(ApiError::conflict(resource, &name).into());
            }
        }
        if objects::same_content(&old, &new) {
            return Ok(old);
        }
        if req.params.dry_run() {
            objects::check_storable(&new)?;
            return Ok(new);
        }
        match commit(state, req, kv.mod_revision, new, None, WriteKind::Update).await? {
            Committed::Stored(stored) => return Ok(stored),
            Committed::Conflict if expected.is_none() => continue,
            Committed::Conflict => break,
        }
    }
    Err(ApiError::conflict(resource, &name).into())
}

/// The outcome of a [`commit`].
pub(super) enum Committed {
    /// Written (or removed); the object as the client should see it.
    Stored(Value),
    /// Someone else wrote first: the caller re-reads and tries again, or reports 409.
    Conflict,
}

/// What a [`commit`] stores, for the size limit it is held to.
#[derive(Clone, Copy)]
pub(super) enum WriteKind {
    Update,
    /// A delete's marks (deletionTimestamp, finalizers) on an object that stays for now.
    DeletionMark,
}

/// Writes `new` over the version at `base_revision` (compare-and-swap), or, when `new` may
/// now leave storage (terminating, no finalizers, no grace period left), removes the
/// object and returns `removed_as` (default: `new`) stamped with the deletion revision.
pub(super) async fn commit(
    state: &ApiState,
    req: &Request,
    base_revision: i64,
    mut new: Value,
    removed_as: Option<Value>,
    write: WriteKind,
) -> ApiResult<Committed> {
    let resource = req.target.resource;
    let key = req.key();
    if ready_for_removal(resource, &new) {
        return match state.store.delete(&key, Some(base_revision)).await {
            Ok((_, rev)) => {
                let mut gone = removed_as.unwrap_or(new);
                objects::set_resource_version(&mut gone, rev);
                Ok(Committed::Stored(gone))
            }
            Err(StoreError::Conflict { .. }) => Ok(Committed::Conflict),
            Err(e) => Err(store_error(resource, req.name(), e)),
        };
    }
    let bytes = match write {
        WriteKind::Update => objects::encode_for_storage(&mut new)?,
        WriteKind::DeletionMark => objects::encode_marked_for_deletion(&mut new)?,
    };
    match state
        .store
        .update(&key, Bytes::from(bytes), base_revision)
        .await
    {
        Ok(stored) => {
            objects::set_resource_version(&mut new, stored.mod_revision);
            Ok(Committed::Stored(new))
        }
        Err(StoreError::Conflict { .. }) => Ok(Committed::Conflict),
        Err(e) => Err(store_error(resource, req.name(), e)),
    }
}

/// PUT of the object or its status.
pub(super) async fn update(
    state: Arc<ApiState>,
    req: Request,
    scope: UpdateScope,
) -> ApiResult<Response> {
    let resource = req.target.resource;
    let body = decode_body(&req.body, req.content_type())?;
    let expected = parse_resource_version(body["metadata"]["resourceVersion"].as_str())?;
    let updated = write_loop(&state, &req, expected, |old| {
        let mut new = body.clone();
        objects::check_schema(resource, &mut new, req.params.strict_fields())?;
        strategy::prepare_update(resource, old, &mut new, scope)?;
        Ok(new)
    })
    .await?;
    Ok(respond_object(&req, StatusCode::OK, &updated))
}

/// PATCH of the object or its status; a server-side apply of a missing object creates it.
pub(super) async fn patch(
    state: Arc<ApiState>,
    req: Request,
    scope: UpdateScope,
) -> ApiResult<Response> {
    let resource = req.target.resource;
    let ptype = patch_type(&req)?;
    if ptype == PatchType::Apply && scope == UpdateScope::Main {
        // Server-side apply of an object that does not exist yet creates it.
        let exists = state
            .store
            .get(&req.key())
            .await
            .map_err(|e| store_error(resource, req.name(), e))?
            .is_some();
        if !exists {
            let mut obj = rkube_patch::apply_patch(ptype, &Value::Null, &req.body, resource.kind)
                .map_err(patch_error)?;
            if objects::name_of(&obj).is_none() {
                objects::meta_mut(&mut obj).insert("name".into(), json!(req.name()));
            }
            if objects::name_of(&obj) != Some(req.name()) {
                return Err(ApiError::bad_request(
                    "the name of the object does not match the name on the URL",
                )
                .into());
            }
            let created = create_object(&state, &req, obj).await?;
            return Ok(respond_object(&req, StatusCode::CREATED, &created));
        }
    }
    let updated = write_loop(&state, &req, None, |old| {
        let mut new =
            rkube_patch::apply_patch(ptype, old, &req.body, resource.kind).map_err(patch_error)?;
        objects::check_schema(resource, &mut new, req.params.strict_fields())?;
        strategy::prepare_update(resource, old, &mut new, scope)?;
        Ok(new)
    })
    .await?;
    Ok(respond_object(&req, StatusCode::OK, &updated))
}
