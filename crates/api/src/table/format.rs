//! Cell formatting shared by the printers, as upstream's printers format them, and the
//! cells of the kinds whose rows take more than a few lines.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Map, Value};

use crate::selectors::LabelSelector;

pub(super) fn at<'a>(obj: &'a Value, path: &[&str]) -> &'a Value {
    let mut cur = obj;
    for p in path {
        cur = &cur[*p];
    }
    cur
}

pub(super) fn str_at<'a>(obj: &'a Value, path: &[&str]) -> &'a str {
    at(obj, path).as_str().unwrap_or("")
}

pub(super) fn int_at(obj: &Value, path: &[&str]) -> i64 {
    at(obj, path).as_i64().unwrap_or(0)
}

pub(super) fn items(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

pub(super) fn map_len(v: &Value) -> usize {
    v.as_object().map_or(0, Map::len)
}

pub(super) fn parse_time(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// Upstream's `duration.HumanDuration`: `5s`, `3m20s`, `2d3h`, `4y` and so on.
pub fn human_duration(d: Duration) -> String {
    let seconds = d.num_seconds();
    if seconds < -1 {
        return "<invalid>".to_string();
    } else if seconds < 0 {
        return "0s".to_string();
    } else if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = d.num_minutes();
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    } else if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = d.num_hours();
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    } else if hours < 48 {
        return format!("{hours}h");
    } else if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{}h", hours / 24, h)
        };
    } else if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    } else if hours < 24 * 365 * 8 {
        let days = (hours / 24) % 365;
        return if days == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{}d", hours / 24 / 365, days)
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// Upstream's `translateTimestampSince`: `<unknown>` for a missing timestamp.
pub fn since(timestamp: &Value, now: DateTime<Utc>) -> String {
    match parse_time(timestamp) {
        Some(t) => human_duration(now - t),
        None => "<unknown>".to_string(),
    }
}

pub(super) fn age(obj: &Value, now: DateTime<Utc>) -> String {
    since(&obj["metadata"]["creationTimestamp"], now)
}

/// Container names and images of a pod spec, comma-joined.
pub(super) fn container_cells(spec: &Value) -> (String, String) {
    let containers = items(&spec["containers"]);
    let names: Vec<&str> = containers.iter().map(|c| str_at(c, &["name"])).collect();
    let images: Vec<&str> = containers.iter().map(|c| str_at(c, &["image"])).collect();
    (names.join(","), images.join(","))
}

pub(super) fn selector_text(selector: &Value) -> String {
    if selector.is_null() {
        return String::new();
    }
    match LabelSelector::from_json(selector) {
        Ok(s) => s.to_string(),
        Err(_) => "<error>".to_string(),
    }
}

/// Upstream's `labels.FormatLabels`: sorted `k=v` pairs, `<none>` when empty.
pub(super) fn format_labels(labels: Option<&Map<String, Value>>) -> String {
    let Some(labels) = labels.filter(|l| !l.is_empty()) else {
        return "<none>".to_string();
    };
    let mut pairs: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    pairs.sort();
    pairs.join(",")
}

pub(super) fn has_condition(obj: &Value, kind: &str) -> bool {
    items(&obj["status"]["conditions"])
        .iter()
        .any(|c| str_at(c, &["type"]) == kind && str_at(c, &["status"]) == "True")
}

pub(super) fn name_cell(obj: &Value) -> Value {
    json!(str_at(obj, &["metadata", "name"]))
}

pub(super) fn age_cell(obj: &Value, now: DateTime<Utc>) -> Value {
    json!(age(obj, now))
}

// ---- jobs ----------------------------------------------------------------------------------

pub(super) fn job_cells(job: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let spec = &job["spec"];
    let succeeded = int_at(job, &["status", "succeeded"]);
    let completions = if let Some(c) = spec["completions"].as_i64() {
        format!("{succeeded}/{c}")
    } else {
        let parallelism = spec["parallelism"].as_i64().unwrap_or(0);
        if parallelism > 1 {
            format!("{succeeded}/1 of {parallelism}")
        } else {
            format!("{succeeded}/1")
        }
    };
    let start = parse_time(&job["status"]["startTime"]);
    let end = parse_time(&job["status"]["completionTime"]);
    let duration = match (start, end) {
        (None, _) => String::new(),
        (Some(s), None) => human_duration(now - s),
        (Some(s), Some(e)) => human_duration(e - s),
    };
    let status = if has_condition(job, "Complete") {
        "Complete"
    } else if has_condition(job, "Failed") {
        "Failed"
    } else if !job["metadata"]["deletionTimestamp"].is_null() {
        "Terminating"
    } else if has_condition(job, "Suspended") {
        "Suspended"
    } else if has_condition(job, "FailureTarget") {
        "FailureTarget"
    } else if has_condition(job, "SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else {
        "Running"
    };
    let (containers, images) = container_cells(&spec["template"]["spec"]);
    vec![
        json!(str_at(job, &["metadata", "name"])),
        json!(status),
        json!(completions),
        json!(duration),
        json!(age(job, now)),
        json!(containers),
        json!(images),
        json!(selector_text(&spec["selector"])),
    ]
}

// ---- services and endpoints ----------------------------------------------------------------

pub(super) fn service_cells(svc: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let spec = &svc["spec"];
    let svc_type = str_at(spec, &["type"]);
    let cluster_ip = items(&spec["clusterIPs"])
        .first()
        .and_then(Value::as_str)
        .or_else(|| spec["clusterIP"].as_str())
        .filter(|ip| !ip.is_empty())
        .unwrap_or("<none>");
    let external_ips: Vec<&str> = items(&spec["externalIPs"])
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let external = match svc_type {
        "ClusterIP" | "NodePort" => {
            if external_ips.is_empty() {
                "<none>".to_string()
            } else {
                external_ips.join(",")
            }
        }
        "LoadBalancer" => {
            let mut all: Vec<&str> = items(&svc["status"]["loadBalancer"]["ingress"])
                .iter()
                .filter_map(|i| {
                    i["ip"]
                        .as_str()
                        .filter(|s| !s.is_empty())
                        .or_else(|| i["hostname"].as_str().filter(|s| !s.is_empty()))
                })
                .collect();
            all.extend(external_ips);
            if all.is_empty() {
                "<pending>".to_string()
            } else {
                all.join(",")
            }
        }
        "ExternalName" => str_at(spec, &["externalName"]).to_string(),
        _ => "<unknown>".to_string(),
    };
    let ports: Vec<String> = items(&spec["ports"])
        .iter()
        .map(|p| {
            let port = p["port"].as_i64().unwrap_or(0);
            let proto = str_at(p, &["protocol"]);
            match p["nodePort"].as_i64().filter(|n| *n > 0) {
                Some(np) => format!("{port}:{np}/{proto}"),
                None => format!("{port}/{proto}"),
            }
        })
        .collect();
    let ports = if ports.is_empty() {
        "<none>".to_string()
    } else {
        ports.join(",")
    };
    vec![
        json!(str_at(svc, &["metadata", "name"])),
        json!(svc_type),
        json!(cluster_ip),
        json!(external),
        json!(ports),
        json!(age(svc, now)),
        json!(format_labels(spec["selector"].as_object())),
    ]
}

pub(super) fn join_host_port(ip: &str, port: i64) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// `10.0.0.1:80,10.0.0.2:80 + 3 more...`, `<none>` without subsets.
pub(super) fn format_endpoints(ep: &Value) -> String {
    let subsets = items(&ep["subsets"]);
    if subsets.is_empty() {
        return "<none>".to_string();
    }
    const MAX: usize = 3;
    let mut list = Vec::new();
    let mut count = 0;
    let mut more = false;
    for ss in subsets {
        let addresses = items(&ss["addresses"]);
        let ports = items(&ss["ports"]);
        if ports.is_empty() {
            count += addresses.len();
            for a in addresses {
                if list.len() == MAX {
                    more = true;
                    break;
                }
                list.push(str_at(a, &["ip"]).to_string());
            }
            continue;
        }
        for port in ports {
            count += addresses.len();
            for a in addresses {
                if list.len() == MAX {
                    more = true;
                    break;
                }
                list.push(join_host_port(
                    str_at(a, &["ip"]),
                    port["port"].as_i64().unwrap_or(0),
                ));
            }
        }
    }
    let joined = list.join(",");
    if more {
        format!("{joined} + {} more...", count - MAX)
    } else {
        joined
    }
}

pub(super) fn list_with_more(list: Vec<String>, more: bool, count: usize) -> String {
    let joined = list.join(",");
    if more {
        format!("{joined} + {} more...", count - 3)
    } else if joined.is_empty() {
        "<unset>".to_string()
    } else {
        joined
    }
}

pub(super) fn format_slice_ports(slice: &Value) -> String {
    let mut list = Vec::new();
    let mut more = false;
    let ports = items(&slice["ports"]);
    for p in ports {
        if list.len() < 3 {
            let text = match (p["port"].as_i64(), p["name"].as_str()) {
                (Some(n), _) => n.to_string(),
                (None, Some(name)) => name.to_string(),
                (None, None) => "*".to_string(),
            };
            list.push(text);
        } else {
            more = true;
        }
    }
    list_with_more(list, more, ports.len())
}

pub(super) fn format_slice_endpoints(slice: &Value) -> String {
    let mut list = Vec::new();
    let mut more = false;
    let mut count = 0;
    for ep in items(&slice["endpoints"]) {
        for a in items(&ep["addresses"]) {
            if list.len() < 3 {
                list.push(a.as_str().unwrap_or("").to_string());
            } else {
                more = true;
            }
            count += 1;
        }
    }
    list_with_more(list, more, count)
}

// ---- nodes and events -------------------------------------------------------------------

pub(super) fn node_cells(node: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let mut status: Vec<String> = Vec::new();
    // Upstream keeps the last condition of each type.
    if let Some(ready) = items(&node["status"]["conditions"])
        .iter()
        .rev()
        .find(|c| str_at(c, &["type"]) == "Ready")
    {
        status.push(if str_at(ready, &["status"]) == "True" {
            "Ready".to_string()
        } else {
            "NotReady".to_string()
        });
    }
    if status.is_empty() {
        status.push("Unknown".to_string());
    }
    if node["spec"]["unschedulable"].as_bool() == Some(true) {
        status.push("SchedulingDisabled".to_string());
    }

    let mut roles = BTreeSet::new();
    if let Some(labels) = node["metadata"]["labels"].as_object() {
        for (k, v) in labels {
            if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
                if !role.is_empty() {
                    roles.insert(role.to_string());
                }
            } else if k == "kubernetes.io/role" {
                if let Some(role) = v.as_str().filter(|r| !r.is_empty()) {
                    roles.insert(role.to_string());
                }
            }
        }
    }
    let roles = if roles.is_empty() {
        "<none>".to_string()
    } else {
        roles.into_iter().collect::<Vec<_>>().join(",")
    };

    let address = |kind: &str| {
        items(&node["status"]["addresses"])
            .iter()
            .find(|a| str_at(a, &["type"]) == kind)
            .map(|a| str_at(a, &["address"]).to_string())
            .unwrap_or_else(|| "<none>".to_string())
    };
    let info = |f: &str| {
        let v = str_at(node, &["status", "nodeInfo", f]);
        if v.is_empty() {
            "<unknown>".to_string()
        } else {
            v.to_string()
        }
    };
    vec![
        json!(str_at(node, &["metadata", "name"])),
        json!(status.join(",")),
        json!(roles),
        json!(age(node, now)),
        json!(str_at(node, &["status", "nodeInfo", "kubeletVersion"])),
        json!(address("InternalIP")),
        json!(address("ExternalIP")),
        json!(info("osImage")),
        json!(info("kernelVersion")),
        json!(info("containerRuntimeVersion")),
    ]
}

pub(super) fn first_non_empty<'a>(a: &'a str, b: &'a str) -> &'a str {
    if a.is_empty() {
        b
    } else {
        a
    }
}

pub(super) fn event_cells(ev: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let first_seen = if ev["firstTimestamp"].is_null() {
        since(&ev["eventTime"], now)
    } else {
        since(&ev["firstTimestamp"], now)
    };
    let mut last_seen = if ev["lastTimestamp"].is_null() {
        first_seen.clone()
    } else {
        since(&ev["lastTimestamp"], now)
    };
    let mut count = ev["count"].as_i64().unwrap_or(0);
    if ev["series"].is_object() {
        last_seen = since(&ev["series"]["lastObservedTime"], now);
        count = ev["series"]["count"].as_i64().unwrap_or(0);
    } else if count == 0 {
        // Events from the events.k8s.io API carry no count when they happened once.
        count = 1;
    }
    let io = &ev["involvedObject"];
    let kind = str_at(io, &["kind"]).to_lowercase();
    let object_name = str_at(io, &["name"]);
    let target = if object_name.is_empty() {
        kind
    } else {
        format!("{kind}/{object_name}")
    };
    let component = first_non_empty(
        str_at(ev, &["source", "component"]),
        str_at(ev, &["reportingComponent"]),
    );
    let instance = first_non_empty(
        str_at(ev, &["source", "host"]),
        str_at(ev, &["reportingInstance"]),
    );
    let source = if instance.is_empty() {
        component.to_string()
    } else {
        format!("{component}, {instance}")
    };
    vec![
        json!(last_seen),
        json!(str_at(ev, &["type"])),
        json!(str_at(ev, &["reason"])),
        json!(target),
        json!(str_at(io, &["fieldPath"])),
        json!(source),
        json!(str_at(ev, &["message"]).trim()),
        json!(first_seen),
        json!(count),
        json!(str_at(ev, &["metadata", "name"])),
    ]
}
