//! Subresources served here: scale (workloads), binding and eviction (pods), finalize
//! (namespaces). log, exec, attach and portforward are proxied to kubelets
//! (`crate::proxy`). The rules are the kind's, in `crate::strategy`; this is the IO.

use std::sync::Arc;

use axum::http::{Method, StatusCode};
use axum::response::Response;

use super::body::{decode_body, patch_error, patch_type};
use super::delete::{delete_object, delete_options};
use super::read::{read_current, respond_object};
use super::write::write_loop;
use super::Request;
use crate::error::ApiResult;
use crate::objects;
use crate::query::parse_resource_version;
use crate::render;
use crate::strategy::{self, namespace, pod, workloads, UpdateScope};
use crate::ApiState;

pub(super) async fn scale_get(state: Arc<ApiState>, req: Request) -> ApiResult<Response> {
    let (_, obj) = read_current(&state, &req).await?;
    Ok(render::json_value(
        StatusCode::OK,
        &workloads::scale_of(&obj),
    ))
}

pub(super) async fn scale_write(state: Arc<ApiState>, req: Request) -> ApiResult<Response> {
    let resource = req.target.resource;
    let is_put = req.method == Method::PUT;
    let ptype = if is_put {
        None
    } else {
        Some(patch_type(&req)?)
    };
    let put_body = if is_put {
        Some(decode_body(&req.body, req.content_type())?)
    } else {
        None
    };
    let expected = match &put_body {
        Some(b) => parse_resource_version(b["metadata"]["resourceVersion"].as_str())?,
        None => None,
    };
    let updated = write_loop(&state, &req, expected, |old| {
        let current = workloads::scale_of(old);
        let desired = match (&put_body, ptype) {
            (Some(b), _) => b.clone(),
            (None, Some(t)) => {
                rkube_patch::apply_patch(t, &current, &req.body, "Scale").map_err(patch_error)?
            }
            (None, None) => current.clone(),
        };
        let mut new = workloads::scaled(resource, req.name(), old, &desired)?;
        strategy::prepare_update(resource, old, &mut new, UpdateScope::Main)?;
        Ok(new)
    })
    .await?;
    Ok(render::json_value(
        StatusCode::OK,
        &workloads::scale_of(&updated),
    ))
}

pub(super) async fn bind(state: Arc<ApiState>, req: Request) -> ApiResult<Response> {
    let resource = req.target.resource;
    let binding = decode_body(&req.body, req.content_type())?;
    let node = pod::binding_target(resource, req.name(), &binding)?;
    write_loop(&state, &req, None, |old| {
        pod::bind(resource, req.name(), old, &node)
    })
    .await?;
    Ok(render::json_value(
        StatusCode::CREATED,
        &rkube_api::status::success_status(),
    ))
}

pub(super) async fn evict(state: Arc<ApiState>, req: Request) -> ApiResult<Response> {
    let eviction = decode_body(&req.body, req.content_type())?;
    let opts = delete_options(&req, Some(&eviction["deleteOptions"]))?;
    delete_object(&state, &req, &opts).await?;
    Ok(render::json_value(
        StatusCode::CREATED,
        &rkube_api::status::success_status(),
    ))
}

/// `PUT namespaces/<name>/finalize`: the namespace controller empties `spec.finalizers`.
pub(super) async fn finalize(state: Arc<ApiState>, req: Request) -> ApiResult<Response> {
    let resource = req.target.resource;
    let body = decode_body(&req.body, req.content_type())?;
    let expected = parse_resource_version(body["metadata"]["resourceVersion"].as_str())?;
    let updated = write_loop(&state, &req, expected, |old| {
        let mut new = body.clone();
        // Typed first: the fields taken from it must have their types.
        objects::check_schema(resource, &mut new, req.params.strict_fields())?;
        Ok(namespace::finalize(old, new))
    })
    .await?;
    Ok(respond_object(&req, StatusCode::OK, &updated))
}
