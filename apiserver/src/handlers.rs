//! Resource requests: dispatch by verb, and the read and write paths.
//!
//! Reads of collections and watches come from the watch cache; reads of one object and all
//! writes go to storage, writes guarded by compare-and-swap on the modification revision.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use rkube_api::registry::{self, ResourceInfo, Subresource};
use rkube_api::selectors::{FieldSelector, LabelSelector};
use rkube_api::ApiError;
use rkube_patch::PatchType;
use rkube_store::{KeyValue, StoreError};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use crate::cache::{Broadcast, CacheError, CachedObject, EventType, Filter, WatchItem};
use crate::error::{store_error, store_error_any, ApiResult, ErrorResponse};
use crate::objects::{self, UpdateScope};
use crate::path::Target;
use crate::query::{parse_resource_version, Params};
use crate::render::{self, Format};
use crate::ApiState;

/// Upstream's request body limit.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;
/// How long a read waits for the watch cache to reach a requested revision.
const CACHE_WAIT: Duration = Duration::from_secs(3);
/// Optimistic-concurrency retries for writes without a client-given resourceVersion.
const MAX_WRITE_ATTEMPTS: usize = 16;

pub struct Request {
    pub method: Method,
    pub target: Target,
    pub params: Params,
    /// The query string as sent (forwarded verbatim to kubelets).
    pub raw_query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The client's side of an HTTP upgrade (exec/attach over WebSocket).
    pub upgrade: Option<hyper::upgrade::OnUpgrade>,
}

impl Request {
    fn key(&self) -> String {
        self.target
            .resource
            .key(self.target.namespace.as_deref(), self.name())
    }

    fn name(&self) -> &str {
        self.target.name.as_deref().unwrap_or("")
    }

    fn content_type(&self) -> &str {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
    }
}

pub async fn dispatch(state: Arc<ApiState>, req: Request) -> ApiResult<Response> {
    let r = req.target.resource;
    if r.namespaced && req.target.namespace.is_none() && req.method != Method::GET {
        return Err(ApiError::method_not_allowed(format!(
            "{} is namespaced: use /namespaces/<namespace>/{} for {}",
            r.plural, r.plural, req.method
        ))
        .into());
    }
    match (
        &req.method,
        req.target.name.is_some(),
        req.target.subresource,
    ) {
        (&Method::GET, false, None) if req.params.is_watch() => watch(state, req).await,
        (&Method::GET, false, None) => list(state, req).await,
        (&Method::GET, true, None) | (&Method::GET, true, Some(Subresource::Status)) => {
            get(state, req).await
        }
        (&Method::POST, false, None) => create(state, req).await,
        (&Method::PUT, true, None) => update(state, req, UpdateScope::Main).await,
        (&Method::PUT, true, Some(Subresource::Status)) => {
            update(state, req, UpdateScope::Status).await
        }
        (&Method::PATCH, true, None) => patch(state, req, UpdateScope::Main).await,
        (&Method::PATCH, true, Some(Subresource::Status)) => {
            patch(state, req, UpdateScope::Status).await
        }
        (&Method::DELETE, true, None) => delete(state, req).await,
        (&Method::DELETE, false, None) => delete_collection(state, req).await,
        (&Method::GET, true, Some(Subresource::Scale)) => scale_get(state, req).await,
        (&Method::PUT, true, Some(Subresource::Scale))
        | (&Method::PATCH, true, Some(Subresource::Scale)) => scale_write(state, req).await,
        (&Method::POST, true, Some(Subresource::Binding)) => bind(state, req).await,
        (&Method::POST, true, Some(Subresource::Eviction)) => evict(state, req).await,
        (&Method::PUT, true, Some(Subresource::Finalize)) => {
            update(state, req, UpdateScope::Internal).await
        }
        (
            _,
            true,
            Some(
                sub @ (Subresource::Log
                | Subresource::Exec
                | Subresource::Attach
                | Subresource::PortForward),
            ),
        ) => crate::proxy::to_kubelet(state, req, sub).await,
        _ => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({} {})",
            req.method,
            r.qualified_name()
        ))
        .into()),
    }
}

// ---------------------------------------------------------------------------------------
// Reads

fn filter_for(req: &Request) -> Result<Filter, ApiError> {
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

fn cache_error(e: CacheError) -> ErrorResponse {
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

async fn list(state: Arc<ApiState>, req: Request) -> ApiResult<Response> {
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

async fn read_current(state: &ApiState, req: &Request) -> ApiResult<(KeyValue, Value)> {
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

fn respond_object(req: &Request, status: StatusCode, obj: &Value) -> Response {
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

async fn get(state: Arc<ApiState>, req: Request) -> ApiResult<Response> {
    let (_, obj) = read_current(&state, &req).await?;
    Ok(respond_object(&req, StatusCode::OK, &obj))
}

async fn watch(state: Arc<ApiState>, req: Request) -> ApiResult<Response> {
    let filter = filter_for(&req)?;
    let resource = req.target.resource;
    let after = match req.params.resource_version()? {
        None | Some(0) => None,
        Some(rv) => Some(rv),
    };
    let send_initial_events = req.params.send_initial_events();
    let allow_bookmarks = req.params.allow_bookmarks();
    let format = render::negotiate(&req.headers);
    // Upstream picks a random timeout between the minimum request timeout and twice it, so
    // that clients do not all reconnect at once.
    let timeout = match req.params.timeout_seconds()? {
        Some(s) => Duration::from_secs(s),
        None => Duration::from_secs(1800 + rand::random::<u64>() % 1800),
    };
    let waited = state.cache.wait_for(after, CACHE_WAIT).await;
    let started = waited.and_then(|_| state.cache.watch(&filter, after));
    let (items, start_revision, rx) = match started {
        Ok(s) => s,
        Err(e @ (CacheError::TooOld { .. } | CacheError::TooNew { .. })) => {
            // Clients (kube-rs in particular) relist only on the event form of 410.
            let status = cache_error(e).0.to_status();
            return Ok(render::json_bytes(
                StatusCode::OK,
                render::error_event(&status),
            ));
        }
        Err(e) => return Err(cache_error(e)),
    };
    let (tx, chunks) = mpsc::channel::<Result<Bytes, std::convert::Infallible>>(64);
    let shutdown = state.shutdown.clone();
    let cache = state.cache.clone();
    tokio::spawn(async move {
        let encode = |kind: EventType, obj: &CachedObject| match format {
            Format::Json => Some(render::watch_event(kind, obj)),
            Format::Table => render::watch_event_table(kind, resource, obj),
        };
        let mut last_sent = start_revision;
        for item in items {
            let line = match &item {
                WatchItem::Existing(obj) => encode(EventType::Added, obj),
                WatchItem::Event(ev) => filter.classify(ev).and_then(|(t, o)| encode(t, o)),
            };
            if let Some(line) = line {
                if tx.send(Ok(line)).await.is_err() {
                    return;
                }
            }
        }
        if send_initial_events
            && allow_bookmarks
            && tx
                .send(Ok(render::bookmark(resource, start_revision, true)))
                .await
                .is_err()
        {
            return;
        }
        stream_live(
            rx,
            tx,
            &filter,
            encode,
            timeout,
            shutdown,
            allow_bookmarks,
            &cache,
            resource,
            &mut last_sent,
        )
        .await;
    });
    let mut resp =
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(chunks)).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// Upstream sends a bookmark about once a minute to watchers that allow them.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(60);

#[allow(clippy::too_many_arguments)]
async fn stream_live(
    mut rx: broadcast::Receiver<Broadcast>,
    tx: mpsc::Sender<Result<Bytes, std::convert::Infallible>>,
    filter: &Filter,
    encode: impl Fn(EventType, &CachedObject) -> Option<Bytes>,
    timeout: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    allow_bookmarks: bool,
    cache: &crate::cache::WatchCache,
    resource: &'static ResourceInfo,
    last_sent: &mut i64,
) {
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut bookmarks = tokio::time::interval_at(
        tokio::time::Instant::now() + BOOKMARK_INTERVAL,
        BOOKMARK_INTERVAL,
    );
    loop {
        tokio::select! {
            _ = &mut deadline => return,
            _ = crate::stopped(&mut shutdown) => return,
            _ = tx.closed() => return,
            _ = bookmarks.tick(), if allow_bookmarks => {
                // Never past a change still queued for this watcher (see bookmark_revision).
                let rev = cache.bookmark_revision(&rx).unwrap_or(*last_sent).max(*last_sent);
                *last_sent = rev;
                if tx.send(Ok(render::bookmark(resource, rev, false))).await.is_err() {
                    return;
                }
            }
            msg = rx.recv() => match msg {
                Ok(Broadcast::Event(ev)) => {
                    if let Some((kind, obj)) = filter.classify(&ev) {
                        if let Some(line) = encode(kind, obj) {
                            *last_sent = ev.revision;
                            if tx.send(Ok(line)).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                Ok(Broadcast::Reset) | Err(broadcast::error::RecvError::Closed) => return,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    // The client resumes from the last resourceVersion it saw; the history
                    // (or a 410) takes it from there.
                    tracing::warn!(skipped = n, "watcher too slow; closing its stream");
                    return;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Writes

/// Decodes a request body as JSON or YAML into a JSON object.
pub fn decode_body(body: &[u8], content_type: &str) -> Result<Value, ApiError> {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    let value: Value = match essence {
        "" | "application/json" | "*/*" => serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}")))?,
        "application/yaml" | "application/x-yaml" | "text/yaml" => rkube_patch::from_yaml_slice(body)
            .map_err(|e| ApiError::bad_request(format!("couldn't get version/kind; yaml parse error: {e}")))?,
        // client-go's typed clients (kubectl create namespace/configmap/deployment...) send
        // protobuf; the kinds they send are translated to the equivalent JSON.
        rkube_proto::CONTENT_TYPE => rkube_proto::decode(body).map_err(|e| match e {
            rkube_proto::ProtoError::MissingMagic
            | rkube_proto::ProtoError::Malformed(_)
            | rkube_proto::ProtoError::MissingKind
            | rkube_proto::ProtoError::WireType { .. }
            | rkube_proto::ProtoError::InvalidValue { .. }
            | rkube_proto::ProtoError::TooDeep(_) => ApiError::bad_request(format!("couldn't decode protobuf body: {e}")),
            other => ApiError::unsupported_media_type(other.to_string()),
        })?,
        other => {
            return Err(ApiError::unsupported_media_type(format!(
                "the body of the request was in an unknown format ({other}) - accepted media types include: application/json, application/yaml"
            )))
        }
    };
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    objects::check_depth(&value)?;
    Ok(value)
}

/// Namespaced writes need a live namespace.
async fn check_namespace(state: &ApiState, namespace: &str) -> ApiResult<()> {
    let ns_resource = registry::find("", "v1", "namespaces")
        .ok_or_else(|| ApiError::internal("namespaces not registered"))?;
    let key = ns_resource.key(None, namespace);
    let terminating = match state.cache.get(ns_resource, &key) {
        // Deleting a namespace sets its phase to Terminating together with the
        // deletionTimestamp; the selectable fields hold the phase, no JSON parse needed.
        Some(cached) => cached
            .fields
            .iter()
            .any(|(f, v)| *f == "status.phase" && v == "Terminating"),
        // Not in the cache yet (created a moment ago?): ask storage, which is authoritative.
        None => match state
            .store
            .get(&key)
            .await
            .map_err(|e| store_error(ns_resource, namespace, e))?
        {
            Some(kv) => serde_json::from_slice::<Value>(&kv.value)
                .map(|v| objects::is_terminating(&v))
                .unwrap_or(false),
            None => return Err(ApiError::not_found(ns_resource, namespace).into()),
        },
    };
    if terminating {
        return Err(ApiError::forbidden(format!(
            "unable to create new content in namespace {namespace} because it is being terminated"
        ))
        .into());
    }
    Ok(())
}

async fn create(state: Arc<ApiState>, req: Request) -> ApiResult<Response> {
    let obj = decode_body(&req.body, req.content_type())?;
    let created = create_object(&state, &req, obj).await?;
    Ok(respond_object(&req, StatusCode::CREATED, &created))
}

async fn create_object(state: &ApiState, req: &Request, mut obj: Value) -> ApiResult<Value> {
    let resource = req.target.resource;
    let namespace = req
        .target
        .namespace
        .as_deref()
        .filter(|_| resource.namespaced);
    objects::check_schema(resource, &mut obj, req.params.strict_fields())?;
    objects::prepare_create(resource, namespace, &mut obj)?;
    if let Some(ns) = namespace {
        check_namespace(state, ns).await?;
    }
    crate::admission::on_create(state, resource, &mut obj)?;
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
fn ready_for_removal(resource: &ResourceInfo, obj: &Value) -> bool {
    if !objects::is_terminating(obj) || objects::has_finalizers(obj) {
        return false;
    }
    if resource.kind == "Namespace"
        && obj["spec"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty())
    {
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
async fn write_loop(
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

enum Committed {
    /// Written (or removed); the object as the client should see it.
    Stored(Value),
    /// Someone else wrote first: the caller re-reads and tries again, or reports 409.
    Conflict,
}

/// Writes `new` over the version at `base_revision` (compare-and-swap), or, when `new` may
/// now leave storage (terminating, no finalizers, no grace period left), removes the
/// object and returns `removed_as` (default: `new`) stamped with the deletion revision.
/// What a [`commit`] stores, for the size limit it is held to.
#[derive(Clone, Copy)]
enum WriteKind {
    Update,
    /// A delete's marks (deletionTimestamp, finalizers) on an object that stays for now.
    DeletionMark,
}

async fn commit(
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

async fn update(state: Arc<ApiState>, req: Request, scope: UpdateScope) -> ApiResult<Response> {
    let resource = req.target.resource;
    let body = decode_body(&req.body, req.content_type())?;
    let expected = parse_resource_version(body["metadata"]["resourceVersion"].as_str())?;
    let updated = write_loop(&state, &req, expected, |old| {
        let mut new = body.clone();
        // Typed first, also for finalize: the fields taken below must have their types.
        objects::check_schema(resource, &mut new, req.params.strict_fields())?;
        if scope == UpdateScope::Internal {
            // namespaces/<n>/finalize: only spec.finalizers may change.
            let mut next = old.clone();
            next["spec"]["finalizers"] = new["spec"]["finalizers"].take();
            return Ok(next);
        }
        objects::prepare_update(resource, old, &mut new, scope)?;
        crate::admission::on_update(resource, old, &mut new)?;
        Ok(new)
    })
    .await?;
    Ok(respond_object(&req, StatusCode::OK, &updated))
}

fn patch_type(req: &Request) -> Result<PatchType, ApiError> {
    PatchType::from_content_type(req.content_type()).ok_or_else(|| {
        ApiError::unsupported_media_type(format!(
            "the body of the request was in an unknown format ({}) - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json",
            req.content_type()
        ))
    })
}

fn patch_error(e: rkube_patch::PatchError) -> ApiError {
    use rkube_patch::PatchError;
    match e {
        PatchError::Decode(msg) => ApiError::bad_request(msg),
        e @ PatchError::TooManyOperations(_) => {
            ApiError::too_large(format!("Request entity too large: {e}"))
        }
        e @ (PatchError::Apply(_) | PatchError::CopyTooLarge { .. } | PatchError::TooDeep) => {
            ApiError::new(422, "Invalid", e.to_string())
        }
    }
}

async fn patch(state: Arc<ApiState>, req: Request, scope: UpdateScope) -> ApiResult<Response> {
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
        objects::prepare_update(resource, old, &mut new, scope)?;
        crate::admission::on_update(resource, old, &mut new)?;
        Ok(new)
    })
    .await?;
    Ok(respond_object(&req, StatusCode::OK, &updated))
}

// ---------------------------------------------------------------------------------------
// Deletes

#[derive(Debug, Default)]
struct DeleteOptions {
    propagation_policy: Option<String>,
    grace_period_seconds: Option<i64>,
    precondition_uid: Option<String>,
    precondition_resource_version: Option<String>,
}

fn delete_options(req: &Request, body: Option<&Value>) -> Result<DeleteOptions, ApiError> {
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

/// The grace period a pod deletion gets: immediate for pods that never ran anywhere or
/// have finished, as upstream.
fn pod_grace_period(pod: &Value, requested: Option<i64>) -> i64 {
    let unscheduled = pod["spec"]["nodeName"].as_str().is_none_or(str::is_empty);
    let finished = matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded") | Some("Failed")
    );
    if unscheduled || finished {
        return 0;
    }
    requested
        .or_else(|| pod["spec"]["terminationGracePeriodSeconds"].as_i64())
        .unwrap_or(30)
        .max(0)
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

async fn delete(state: Arc<ApiState>, req: Request) -> ApiResult<Response> {
    let opts = delete_options(&req, None)?;
    let deleted = delete_object(&state, &req, &opts).await?;
    Ok(render::json_value(StatusCode::OK, &deleted))
}

async fn delete_object(state: &ApiState, req: &Request, opts: &DeleteOptions) -> ApiResult<Value> {
    let resource = req.target.resource;
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
        let grace = if resource.kind == "Pod" {
            pod_grace_period(&old, opts.grace_period_seconds)
        } else {
            0
        };
        let already = objects::is_terminating(&old);
        let current_grace = old["metadata"]["deletionGracePeriodSeconds"].as_i64();
        if !already || current_grace.is_some_and(|g| grace < g) {
            let meta = objects::meta_mut(&mut marked);
            meta.insert(
                "deletionTimestamp".into(),
                json!(deletion_timestamp(chrono::Utc::now(), grace)),
            );
            if resource.kind == "Pod" || !already {
                meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
            }
        }
        if resource.kind == "Namespace" {
            marked["status"]["phase"] = json!("Terminating");
        }
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

async fn delete_collection(state: Arc<ApiState>, req: Request) -> ApiResult<Response> {
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

// ---------------------------------------------------------------------------------------
// Subresources: scale, binding, eviction

fn selector_string(selector: &Value) -> String {
    let mut parts: Vec<String> = selector["matchLabels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    if let Some(exprs) = selector["matchExpressions"].as_array() {
        for e in exprs {
            let key = e["key"].as_str().unwrap_or("");
            let values: Vec<&str> = e["values"]
                .as_array()
                .map(|v| v.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            match e["operator"].as_str() {
                Some("In") => parts.push(format!("{key} in ({})", values.join(","))),
                Some("NotIn") => parts.push(format!("{key} notin ({})", values.join(","))),
                Some("Exists") => parts.push(key.to_string()),
                Some("DoesNotExist") => parts.push(format!("!{key}")),
                _ => {}
            }
        }
    }
    parts.join(",")
}

fn scale_of(obj: &Value) -> Value {
    let meta = &obj["metadata"];
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"],
            "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(0)},
        "status": {
            "replicas": obj["status"]["replicas"].as_i64().unwrap_or(0),
            "selector": selector_string(&obj["spec"]["selector"]),
        },
    })
}

async fn scale_get(state: Arc<ApiState>, req: Request) -> ApiResult<Response> {
    let (_, obj) = read_current(&state, &req).await?;
    Ok(render::json_value(StatusCode::OK, &scale_of(&obj)))
}

async fn scale_write(state: Arc<ApiState>, req: Request) -> ApiResult<Response> {
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
        let current = scale_of(old);
        let desired = match (&put_body, ptype) {
            (Some(b), _) => b.clone(),
            (None, Some(t)) => {
                rkube_patch::apply_patch(t, &current, &req.body, "Scale").map_err(patch_error)?
            }
            (None, None) => current.clone(),
        };
        let replicas = desired["spec"]["replicas"].as_i64().unwrap_or(0);
        if replicas < 0
            || !(desired["spec"]["replicas"].is_i64() || desired["spec"]["replicas"].is_null())
        {
            return Err(ApiError::invalid(
                resource,
                req.name(),
                vec![rkube_api::StatusCause::invalid(
                    "spec.replicas",
                    &desired["spec"]["replicas"],
                    "must be greater than or equal to 0",
                )],
            ));
        }
        let mut new = old.clone();
        new["spec"]["replicas"] = json!(replicas);
        objects::prepare_update(resource, old, &mut new, UpdateScope::Main)?;
        Ok(new)
    })
    .await?;
    Ok(render::json_value(StatusCode::OK, &scale_of(&updated)))
}

async fn bind(state: Arc<ApiState>, req: Request) -> ApiResult<Response> {
    let resource = req.target.resource;
    let binding = decode_body(&req.body, req.content_type())?;
    let node = binding["target"]["name"].as_str().unwrap_or("").to_string();
    if node.is_empty() {
        return Err(ApiError::invalid(
            resource,
            req.name(),
            vec![rkube_api::StatusCause::required("target.name")],
        )
        .into());
    }
    let name = req.name().to_string();
    write_loop(&state, &req, None, |old| {
        if objects::is_terminating(old) {
            return Err(ApiError::conflict_because(resource, &name, "pod is being deleted, cannot be assigned to a host"));
        }
        match old["spec"]["nodeName"].as_str() {
            Some(existing) if !existing.is_empty() => {
                return Err(ApiError::conflict_because(
                    resource,
                    &name,
                    &format!("pod {name} is already assigned to node \"{existing}\""),
                ))
            }
            _ => {}
        }
        let mut new = old.clone();
        new["spec"]["nodeName"] = json!(node);
        let conditions = new["status"]["conditions"].as_array().cloned().unwrap_or_default();
        let mut conditions: Vec<Value> = conditions.into_iter().filter(|c| c["type"] != "PodScheduled").collect();
        conditions.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": objects::now_rfc3339()}));
        new["status"]["conditions"] = json!(conditions);
        Ok(new)
    })
    .await?;
    Ok(render::json_value(
        StatusCode::CREATED,
        &rkube_api::status::success_status(),
    ))
}

async fn evict(state: Arc<ApiState>, req: Request) -> ApiResult<Response> {
    let eviction = decode_body(&req.body, req.content_type())?;
    let opts = delete_options(&req, Some(&eviction["deleteOptions"]))?;
    delete_object(&state, &req, &opts).await?;
    Ok(render::json_value(
        StatusCode::CREATED,
        &rkube_api::status::success_status(),
    ))
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

    #[test]
    fn selector_strings_match_kubectl_form() {
        let s = selector_string(
            &json!({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]}),
        );
        assert_eq!(s, "app=web,tier in (a,b)");
    }

    #[test]
    fn pods_that_never_ran_are_deleted_at_once() {
        assert_eq!(pod_grace_period(&json!({"spec": {}}), Some(30)), 0);
        assert_eq!(
            pod_grace_period(
                &json!({"spec": {"nodeName": "n", "terminationGracePeriodSeconds": 5}}),
                None
            ),
            5
        );
        assert_eq!(
            pod_grace_period(
                &json!({"spec": {"nodeName": "n"}, "status": {"phase": "Failed"}}),
                Some(9)
            ),
            0
        );
        assert_eq!(
            pod_grace_period(&json!({"spec": {"nodeName": "n"}}), Some(0)),
            0
        );
    }

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

    #[test]
    fn bodies_must_be_objects_and_media_types_known() {
        assert_eq!(
            decode_body(b"[1]", "application/json").unwrap_err().code,
            400
        );
        assert_eq!(decode_body(b"{", "application/json").unwrap_err().code, 400);
        assert_eq!(
            decode_body(b"{}", "application/vnd.kubernetes.protobuf")
                .unwrap_err()
                .code,
            400
        );
        assert_eq!(
            decode_body(b"{}", "application/cbor").unwrap_err().code,
            415
        );
        assert!(decode_body(b"a: 1", "application/yaml").is_ok());
    }
}
