//! Events expire `--event-ttl` (upstream's default: 1 h) after their last occurrence.
//!
//! Upstream attaches an etcd lease of that length to every Event write. We have two
//! backends and only one of them has leases, so a sweeper in the API server periodically
//! lists Events from the watch cache and deletes those whose latest timestamp is older
//! than the TTL. Deletes go through the ordinary delete handler, with the listed
//! resourceVersion as precondition: watchers see DELETED, and an Event updated since the
//! listing (a repeat bumped its count) is left for the next sweep to judge.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use rkube_api::registry::{ResourceInfo, REGISTRY};
use rkube_api::selectors::{FieldSelector, LabelSelector};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::cache::Filter;
use crate::handlers::{self, Request};
use crate::path::Target;
use crate::query::Params;
use crate::strategy;
use crate::{stopped, ApiState};

/// Upstream's `--event-ttl` default.
pub const DEFAULT_EVENT_TTL: Duration = Duration::from_secs(3600);
/// How often expired Events are looked for, unless the TTL is shorter (see [`sweep_every`]).
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// How often the sweeper runs: the configured interval, but at least four times per TTL
/// so that a short TTL is honoured closely.
pub fn sweep_every(ttl: Duration, interval: Duration) -> Duration {
    interval.min(ttl / 4).max(Duration::from_millis(10))
}

fn timestamp(value: &Value) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value.as_str()?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The latest moment an Event shows activity, in either API's shape: core/v1
/// `lastTimestamp`, events.k8s.io/v1 `deprecatedLastTimestamp`, `eventTime`,
/// `series.lastObservedTime`, and `metadata.creationTimestamp` (which the server sets).
pub fn last_activity(event: &Value) -> Option<DateTime<Utc>> {
    [
        &event["lastTimestamp"],
        &event["deprecatedLastTimestamp"],
        &event["eventTime"],
        &event["series"]["lastObservedTime"],
        &event["metadata"]["creationTimestamp"],
    ]
    .into_iter()
    .filter_map(timestamp)
    .max()
}

/// Whether `event` had no activity for longer than `ttl` at `now`. An Event with no
/// timestamp at all has never been written by this server (creation stamps one), so it is
/// kept rather than guessed about.
pub fn expired(event: &Value, ttl: Duration, now: DateTime<Utc>) -> bool {
    let Some(last) = last_activity(event) else {
        return false;
    };
    let Ok(ttl) = chrono::Duration::from_std(ttl) else {
        return false;
    };
    last.checked_add_signed(ttl)
        .is_some_and(|deadline| deadline < now)
}

/// The Event resources served, once per storage location (both Event APIs, when both are
/// served, store the same objects).
fn event_resources() -> Vec<&'static ResourceInfo> {
    let mut seen: Vec<String> = Vec::new();
    let mut resources = Vec::new();
    for resource in REGISTRY
        .iter()
        .filter(|r| strategy::for_resource(r).expires_after_event_ttl)
    {
        let location = resource.key(Some("ns"), "name");
        if !seen.contains(&location) {
            seen.push(location);
            resources.push(resource);
        }
    }
    resources
}

/// Deletes every Event that expired at `now`; returns how many were deleted.
pub async fn sweep_once(state: &Arc<ApiState>, ttl: Duration, now: DateTime<Utc>) -> usize {
    let mut deleted = 0;
    for resource in event_resources() {
        let filter = Filter {
            resource,
            namespace: None,
            labels: LabelSelector::default(),
            fields: FieldSelector::default(),
        };
        let items = match state.cache.list(&filter) {
            Ok((items, _)) => items,
            // Not ready yet: the next sweep will see them.
            Err(_) => return deleted,
        };
        for item in items {
            let Ok(event) = item.value() else {
                continue;
            };
            if !expired(&event, ttl, now) {
                continue;
            }
            if delete_unchanged(state, resource, &item.namespace, &item.name, item.revision).await {
                deleted += 1;
            }
        }
    }
    deleted
}

/// Deletes one Event through the delete handler, only if it is still at `revision`.
async fn delete_unchanged(
    state: &Arc<ApiState>,
    resource: &'static ResourceInfo,
    namespace: &str,
    name: &str,
    revision: i64,
) -> bool {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let options = json!({
        "kind": "DeleteOptions",
        "apiVersion": "v1",
        "preconditions": {"resourceVersion": revision.to_string()},
    });
    let request = Request {
        method: Method::DELETE,
        target: Target {
            resource,
            namespace: (!namespace.is_empty()).then(|| namespace.to_string()),
            name: Some(name.to_string()),
            subresource: None,
        },
        params: Params::default(),
        raw_query: None,
        headers,
        body: Bytes::from(options.to_string()),
        upgrade: None,
    };
    match handlers::dispatch(state.clone(), request).await {
        Ok(response) if response.status() == StatusCode::OK => true,
        Ok(response) => {
            tracing::warn!(namespace, name, status = %response.status(), "deleting expired event");
            false
        }
        // Gone already, or updated since it was listed (judged again next time).
        Err(e) if e.0.code == 404 || e.0.code == 409 => false,
        Err(e) => {
            tracing::warn!(namespace, name, error = %e.0.message, "deleting expired event failed");
            false
        }
    }
}

/// Sweeps every [`sweep_every`]`(ttl, interval)` until shutdown. A zero TTL keeps Events
/// forever.
pub async fn sweep_periodically(
    state: Arc<ApiState>,
    ttl: Duration,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    if ttl.is_zero() {
        return;
    }
    let every = sweep_every(ttl, interval);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stopped(&mut shutdown) => return,
        }
        let deleted = sweep_once(&state, ttl, Utc::now()).await;
        if deleted > 0 {
            tracing::info!(deleted, ttl = ?ttl, "deleted expired events");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_lives_from_its_latest_timestamp() {
        let now = DateTime::parse_from_rfc3339("2026-01-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let hour = Duration::from_secs(3600);
        let old = "2026-01-01T10:00:00Z";
        let recent = "2026-01-01T11:30:00Z";
        let stale = json!({"metadata": {"creationTimestamp": old}, "lastTimestamp": old});
        assert!(expired(&stale, hour, now));
        for fresh in [
            json!({"metadata": {"creationTimestamp": old}, "lastTimestamp": recent}),
            json!({"metadata": {"creationTimestamp": old}, "eventTime": "2026-01-01T11:30:00.123456Z"}),
            json!({"metadata": {"creationTimestamp": old}, "series": {"count": 4, "lastObservedTime": "2026-01-01T11:30:00.000001Z"}}),
            json!({"metadata": {"creationTimestamp": old}, "deprecatedLastTimestamp": recent}),
            json!({"metadata": {"creationTimestamp": recent}, "lastTimestamp": old}),
        ] {
            assert!(!expired(&fresh, hour, now), "{fresh}");
        }
        assert!(!expired(&json!({"metadata": {}}), hour, now));
        assert!(!expired(&stale, Duration::MAX, now));
    }

    #[test]
    fn short_ttls_are_swept_more_often() {
        assert_eq!(
            sweep_every(DEFAULT_EVENT_TTL, DEFAULT_SWEEP_INTERVAL),
            DEFAULT_SWEEP_INTERVAL
        );
        assert_eq!(
            sweep_every(Duration::from_secs(20), DEFAULT_SWEEP_INTERVAL),
            Duration::from_secs(5)
        );
    }
}
