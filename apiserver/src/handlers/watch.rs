//! Watches: the cache's history from the requested revision, then live events, bookmarks
//! and a timeout, streamed as JSON lines (or Table rows).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use rkube_api::registry::ResourceInfo;
use tokio::sync::{broadcast, mpsc};

use super::read::{cache_error, filter_for};
use super::{Request, CACHE_WAIT};
use crate::cache::{Broadcast, CacheError, CachedObject, EventType, Filter, WatchItem};
use crate::error::ApiResult;
use crate::render::{self, Format};
use crate::ApiState;

pub(super) async fn watch(state: Arc<ApiState>, req: Request) -> ApiResult<Response> {
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
