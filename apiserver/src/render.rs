//! Response bodies: objects, lists, Tables and watch events, built from cached JSON bytes
//! where possible so that large lists and many watchers cost copies, not re-encoding.

use std::sync::Arc;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use chrono::Utc;
use rkube_api::registry::ResourceInfo;
use serde_json::{json, Value};

use crate::cache::{CachedObject, EventType};

/// What the client asked for in `Accept`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    /// `application/json;as=Table;v=v1;g=meta.k8s.io` (kubectl get).
    Table,
}

pub fn negotiate(headers: &HeaderMap) -> Format {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // kubectl lists Table first and plain JSON as fallback; the first acceptable entry wins.
    for entry in accept.split(',') {
        let params: Vec<&str> = entry.split(';').map(str::trim).collect();
        let media = params.first().copied().unwrap_or("");
        if media != "application/json" && media != "*/*" && media != "application/*" {
            continue;
        }
        let as_table = params.contains(&"as=Table");
        let meta_v1 = params.iter().any(|p| *p == "v=v1" || *p == "v=v1beta1");
        if as_table && meta_v1 {
            return Format::Table;
        }
        if !params.iter().any(|p| p.starts_with("as=")) {
            return Format::Json;
        }
    }
    Format::Json
}

pub fn json_bytes(status: StatusCode, body: impl Into<Bytes>) -> Response {
    let mut resp = (status, body.into()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

pub fn json_value(status: StatusCode, body: &Value) -> Response {
    json_bytes(status, body.to_string())
}

/// `{"kind":"PodList","apiVersion":"v1","metadata":{...},"items":[...]}` by concatenation.
pub fn list_body(
    resource: &ResourceInfo,
    items: &[Arc<CachedObject>],
    revision: i64,
    continue_token: Option<&str>,
    remaining: Option<usize>,
) -> Bytes {
    let mut meta = json!({"resourceVersion": revision.to_string()});
    if let Some(token) = continue_token {
        meta["continue"] = json!(token);
        if let Some(r) = remaining {
            meta["remainingItemCount"] = json!(r);
        }
    }
    let total: usize = items.iter().map(|i| i.json_len_hint() + 1).sum();
    let mut out = BytesMut::with_capacity(total + 256);
    out.put_slice(
        format!(
            "{{\"kind\":\"{}\",\"apiVersion\":\"{}\",\"metadata\":{},\"items\":[",
            resource.list_kind(),
            resource.api_version(),
            meta
        )
        .as_bytes(),
    );
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        item.write_json(&mut out);
    }
    out.put_slice(b"]}");
    out.freeze()
}

fn partial_metadata(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj["metadata"],
    })
}

/// A Table for the given objects. `include_object`: "None", "Metadata" (default) or "Object".
pub fn table(
    resource: &ResourceInfo,
    objects: &[Value],
    revision: Option<i64>,
    continue_token: Option<&str>,
    include_object: Option<&str>,
) -> Value {
    let now = Utc::now();
    let printer = crate::strategy::for_resource(resource).rules.printer;
    let rows: Vec<Value> = objects
        .iter()
        .map(|obj| {
            let mut row = json!({"cells": printer.cells(obj, now)});
            match include_object.unwrap_or("Metadata") {
                "None" => {}
                "Object" => row["object"] = obj.clone(),
                _ => row["object"] = partial_metadata(obj),
            }
            row
        })
        .collect();
    let mut meta = json!({});
    if let Some(rv) = revision {
        meta["resourceVersion"] = json!(rv.to_string());
    }
    if let Some(token) = continue_token {
        meta["continue"] = json!(token);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": printer.columns(),
        "rows": rows,
    })
}

/// One watch event line: `{"type":"ADDED","object":{...}}\n`.
pub fn watch_event(kind: EventType, object: &CachedObject) -> Bytes {
    watch_event_raw(kind, |out| object.write_json(out), object.json_len_hint())
}

fn watch_event_raw(
    kind: EventType,
    write_object: impl FnOnce(&mut BytesMut),
    size_hint: usize,
) -> Bytes {
    let mut out = BytesMut::with_capacity(size_hint + 32);
    out.put_slice(b"{\"type\":\"");
    out.put_slice(kind.as_str().as_bytes());
    out.put_slice(b"\",\"object\":");
    write_object(&mut out);
    out.put_slice(b"}\n");
    out.freeze()
}

/// A watch event whose object is a one-row Table (`kubectl get -w`).
pub fn watch_event_table(
    kind: EventType,
    resource: &ResourceInfo,
    obj: &CachedObject,
) -> Option<Bytes> {
    let value = obj.value().ok()?;
    let t = table(resource, &[value], Some(obj.revision), None, None);
    let table_json = t.to_string();
    Some(watch_event_raw(
        kind,
        |out| out.put_slice(table_json.as_bytes()),
        table_json.len(),
    ))
}

pub fn bookmark(resource: &ResourceInfo, revision: i64, initial_events_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": revision.to_string()});
    if initial_events_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    let obj =
        json!({"kind": resource.kind, "apiVersion": resource.api_version(), "metadata": meta});
    let line = json!({"type": "BOOKMARK", "object": obj});
    Bytes::from(format!("{line}\n"))
}

pub fn error_event(status: &Value) -> Bytes {
    Bytes::from(format!("{}\n", json!({"type": "ERROR", "object": status})))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(accept: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(accept).unwrap());
        h
    }

    #[test]
    fn kubectl_get_asks_for_a_table() {
        assert_eq!(
            negotiate(&headers("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json")),
            Format::Table
        );
        assert_eq!(negotiate(&headers("application/json, */*")), Format::Json);
        assert_eq!(negotiate(&HeaderMap::new()), Format::Json);
        assert_eq!(
            negotiate(&headers(
                "application/vnd.kubernetes.protobuf, application/json"
            )),
            Format::Json
        );
    }

    #[test]
    fn list_body_is_valid_json_with_items_never_null() {
        let pods = rkube_api::registry::find("", "v1", "pods").unwrap();
        let body = list_body(pods, &[], 7, None, None);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["kind"], "PodList");
        assert_eq!(v["items"], json!([]));
        assert_eq!(v["metadata"]["resourceVersion"], "7");
    }
}
