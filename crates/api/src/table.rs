//! `meta.k8s.io/v1` Table columns and cells per kind, matching upstream's printers so that
//! `kubectl get` output looks the same. Kinds without a printer get NAME and AGE.
//!
//! Cells always include the `priority: 1` (wide) columns, as the API server does; kubectl
//! hides them unless `-o wide`.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Map, Value};

use crate::selectors::LabelSelector;

/// Column definitions (`name`, `type`, `format`, `description`, `priority`).
pub fn columns(kind: &str) -> Vec<Value> {
    let specs: &[(&str, &str, u8, &str)] = match kind {
        "Pod" => &[
            ("Name", "string", 0, NAME_DOC),
            ("Ready", "string", 0, "The aggregate readiness state of this pod for accepting traffic."),
            ("Status", "string", 0, "The aggregate status of the containers in this pod."),
            ("Restarts", "string", 0, "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
            ("Age", "string", 0, AGE_DOC),
            ("IP", "string", 1, "podIP address allocated to the pod."),
            ("Node", "string", 1, "The name of the node the pod is scheduled to."),
            ("Nominated Node", "string", 1, "The node the scheduler nominated for the pod when preempting."),
            ("Readiness Gates", "string", 1, "Pod conditions evaluated for pod readiness."),
        ],
        "Deployment" => &[
            ("Name", "string", 0, NAME_DOC),
            ("Ready", "string", 0, "Number of the pod with ready state"),
            ("Up-to-date", "string", 0, "Total number of non-terminated pods targeted by this deployment that have the desired template spec."),
            ("Available", "string", 0, "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment."),
            ("Age", "string", 0, AGE_DOC),
            ("Containers", "string", 1, CONTAINERS_DOC),
            ("Images", "string", 1, IMAGES_DOC),
            ("Selector", "string", 1, SELECTOR_DOC),
        ],
        "ReplicaSet" => &[
            ("Name", "string", 0, NAME_DOC),
            ("Desired", "integer", 0, "Replicas is the number of desired replicas."),
            ("Current", "integer", 0, "Replicas is the most recently observed number of replicas."),
            ("Ready", "integer", 0, "The number of ready replicas for this replica set."),
            ("Age", "string", 0, AGE_DOC),
            ("Containers", "string", 1, CONTAINERS_DOC),
            ("Images", "string", 1, IMAGES_DOC),
            ("Selector", "string", 1, SELECTOR_DOC),
        ],
        "DaemonSet" => &[
            ("Name", "string", 0, NAME_DOC),
            ("Desired", "integer", 0, "The total number of nodes that should be running the daemon pod."),
            ("Current", "integer", 0, "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod."),
            ("Ready", "integer", 0, "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and ready."),
            ("Up-to-date", "integer", 0, "The total number of nodes that are running updated daemon pod"),
            ("Available", "integer", 0, "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available."),
            ("Node Selector", "string", 0, "NodeSelector is a selector which must be true for the pod to fit on a node."),
            ("Age", "string", 0, AGE_DOC),
            ("Containers", "string", 1, CONTAINERS_DOC),
            ("Images", "string", 1, IMAGES_DOC),
            ("Selector", "string", 1, SELECTOR_DOC),
        ],
        "StatefulSet" => &[
            ("Name", "string", 0, NAME_DOC),
            ("Ready", "string", 0, "Number of the pod with ready state"),
            ("Age", "string", 0, AGE_DOC),
            ("Containers", "string", 1, CONTAINERS_DOC),
            ("Images", "string", 1, IMAGES_DOC),
        ],
        "Job" => &[
            ("Name", "string", 0, NAME_DOC),
            ("Status", "string", 0, "Status of the job."),
            ("Completions", "string", 0, "The completion status of the job."),
            ("Duration", "string", 0, "Time required to complete the job."),
            ("Age", "string", 0, AGE_DOC),
            ("Containers", "string", 1, CONTAINERS_DOC),
            ("Images", "string", 1, IMAGES_DOC),
            ("Selector", "string", 1, SELECTOR_DOC),
        ],
        "Service" => &[
            ("Name", "string", 0, NAME_DOC),
            ("Type", "string", 0, "type determines how the Service is exposed."),
            ("Cluster-IP", "string", 0, "clusterIP is the IP address of the service."),
            ("External-IP", "string", 0, "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service."),
            ("Port(s)", "string", 0, "The list of ports that are exposed by this service."),
            ("Age", "string", 0, AGE_DOC),
            ("Selector", "string", 1, "Route service traffic to pods with label keys and values matching this selector."),
        ],
        "Endpoints" => &[
            ("Name", "string", 0, NAME_DOC),
            ("Endpoints", "string", 0, "The set of all endpoints is the union of all subsets."),
            ("Age", "string", 0, AGE_DOC),
        ],
        "EndpointSlice" => &[
            ("Name", "string", 0, NAME_DOC),
            ("AddressType", "string", 0, "The type of address carried by this EndpointSlice."),
            ("Ports", "string", 0, "The network ports exposed by each endpoint in this slice."),
            ("Endpoints", "string", 0, "The list of unique endpoints in this slice."),
            ("Age", "string", 0, AGE_DOC),
        ],
        "Node" => &[
            ("Name", "string", 0, NAME_DOC),
            ("Status", "string", 0, "The status of the node"),
            ("Roles", "string", 0, "The roles of the node"),
            ("Age", "string", 0, AGE_DOC),
            ("Version", "string", 0, "Kubelet Version reported by the node."),
            ("Internal-IP", "string", 1, "List of addresses reachable to the node."),
            ("External-IP", "string", 1, "List of addresses reachable to the node."),
            ("OS-Image", "string", 1, "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy))."),
            ("Kernel-Version", "string", 1, "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64)."),
            ("Container-Runtime", "string", 1, "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2)."),
        ],
        "Namespace" => &[
            ("Name", "string", 0, NAME_DOC),
            ("Status", "string", 0, "The status of the namespace"),
            ("Age", "string", 0, AGE_DOC),
        ],
        "Event" => &[
            ("Last Seen", "string", 0, "The time at which the most recent occurrence of this event was recorded."),
            ("Type", "string", 0, "Type of this event (Normal, Warning), new types could be added in the future"),
            ("Reason", "string", 0, "This should be a short, machine understandable string that gives the reason for the transition into the object's current status."),
            ("Object", "string", 0, "The object that this event is about."),
            ("Subobject", "string", 1, "If referring to a piece of an object instead of an entire object, this string should contain a valid JSON/Go field access statement."),
            ("Source", "string", 1, "The component reporting this event."),
            ("Message", "string", 0, "A human-readable description of the status of this operation."),
            ("First Seen", "string", 1, "The time at which the event was first recorded."),
            ("Count", "string", 1, "The number of times this event has occurred."),
            ("Name", "string", 1, NAME_DOC),
        ],
        "ConfigMap" => &[
            ("Name", "string", 0, NAME_DOC),
            ("Data", "string", 0, "Data contains the configuration data."),
            ("Age", "string", 0, AGE_DOC),
        ],
        "Secret" => &[
            ("Name", "string", 0, NAME_DOC),
            ("Type", "string", 0, "Used to facilitate programmatic handling of secret data."),
            ("Data", "string", 0, "Data contains the secret data."),
            ("Age", "string", 0, AGE_DOC),
        ],
        "ServiceAccount" => &[
            ("Name", "string", 0, NAME_DOC),
            ("Secrets", "string", 0, "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use."),
            ("Age", "string", 0, AGE_DOC),
        ],
        "Lease" => &[
            ("Name", "string", 0, NAME_DOC),
            ("Holder", "string", 0, "holderIdentity contains the identity of the holder of a current lease."),
            ("Age", "string", 0, AGE_DOC),
        ],
        "PodDisruptionBudget" => &[
            ("Name", "string", 0, NAME_DOC),
            ("Min Available", "string", 0, "The minimum number of pods that must be available."),
            ("Max Unavailable", "string", 0, "The maximum number of pods that may be unavailable."),
            ("Allowed Disruptions", "integer", 0, "Calculated number of pods that may be disrupted at this time."),
            ("Age", "string", 0, AGE_DOC),
        ],
        _ => &[("Name", "string", 0, NAME_DOC), ("Age", "string", 0, AGE_DOC)],
    };
    specs
        .iter()
        .map(|(name, ty, priority, description)| {
            let format = if *name == "Name" { "name" } else { "" };
            json!({"name": name, "type": ty, "format": format, "description": description, "priority": priority})
        })
        .collect()
}

// Upstream takes these from the API's own field documentation.
const NAME_DOC: &str = "Name must be unique within a namespace. It is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const AGE_DOC: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";
const CONTAINERS_DOC: &str = "Names of each container in the template.";
const IMAGES_DOC: &str = "Images referenced by each container in the template.";
const SELECTOR_DOC: &str = "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment.";

/// The cells of one row, in column order.
pub fn cells(kind: &str, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let age = || json!(age(obj, now));
    let name = || json!(str_at(obj, &["metadata", "name"]));
    match kind {
        "Pod" => pod_cells(obj, now),
        "Deployment" => {
            let (containers, images) = container_cells(&obj["spec"]["template"]["spec"]);
            vec![
                name(),
                json!(format!(
                    "{}/{}",
                    int_at(obj, &["status", "readyReplicas"]),
                    int_at(obj, &["spec", "replicas"])
                )),
                json!(int_at(obj, &["status", "updatedReplicas"])),
                json!(int_at(obj, &["status", "availableReplicas"])),
                age(),
                json!(containers),
                json!(images),
                json!(selector_text(&obj["spec"]["selector"])),
            ]
        }
        "ReplicaSet" => {
            let (containers, images) = container_cells(&obj["spec"]["template"]["spec"]);
            vec![
                name(),
                json!(int_at(obj, &["spec", "replicas"])),
                json!(int_at(obj, &["status", "replicas"])),
                json!(int_at(obj, &["status", "readyReplicas"])),
                age(),
                json!(containers),
                json!(images),
                json!(selector_text(&obj["spec"]["selector"])),
            ]
        }
        "DaemonSet" => {
            let (containers, images) = container_cells(&obj["spec"]["template"]["spec"]);
            let status = |f: &str| json!(int_at(obj, &["status", f]));
            vec![
                name(),
                status("desiredNumberScheduled"),
                status("currentNumberScheduled"),
                status("numberReady"),
                status("updatedNumberScheduled"),
                status("numberAvailable"),
                json!(format_labels(
                    obj["spec"]["template"]["spec"]["nodeSelector"].as_object()
                )),
                age(),
                json!(containers),
                json!(images),
                json!(selector_text(&obj["spec"]["selector"])),
            ]
        }
        "StatefulSet" => {
            let (containers, images) = container_cells(&obj["spec"]["template"]["spec"]);
            vec![
                name(),
                json!(format!(
                    "{}/{}",
                    int_at(obj, &["status", "readyReplicas"]),
                    int_at(obj, &["spec", "replicas"])
                )),
                age(),
                json!(containers),
                json!(images),
            ]
        }
        "Job" => job_cells(obj, now),
        "Service" => service_cells(obj, now),
        "Endpoints" => vec![name(), json!(format_endpoints(obj)), age()],
        "EndpointSlice" => vec![
            name(),
            json!(str_at(obj, &["addressType"])),
            json!(format_slice_ports(obj)),
            json!(format_slice_endpoints(obj)),
            age(),
        ],
        "Node" => node_cells(obj, now),
        "Namespace" => vec![name(), json!(str_at(obj, &["status", "phase"])), age()],
        "Event" => event_cells(obj, now),
        "ConfigMap" => vec![
            name(),
            json!(map_len(&obj["data"]) + map_len(&obj["binaryData"])),
            age(),
        ],
        "Secret" => vec![
            name(),
            json!(str_at(obj, &["type"])),
            json!(map_len(&obj["data"])),
            age(),
        ],
        "ServiceAccount" => vec![
            name(),
            json!(obj["secrets"].as_array().map_or(0, Vec::len)),
            age(),
        ],
        "Lease" => vec![
            name(),
            json!(str_at(obj, &["spec", "holderIdentity"])),
            age(),
        ],
        "PodDisruptionBudget" => {
            let bound = |f: &str| match &obj["spec"][f] {
                Value::Null => "N/A".to_string(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            vec![
                name(),
                json!(bound("minAvailable")),
                json!(bound("maxUnavailable")),
                json!(int_at(obj, &["status", "disruptionsAllowed"])),
                age(),
            ]
        }
        _ => vec![name(), age()],
    }
}

// ---- helpers -------------------------------------------------------------------------------

fn at<'a>(obj: &'a Value, path: &[&str]) -> &'a Value {
    let mut cur = obj;
    for p in path {
        cur = &cur[*p];
    }
    cur
}

fn str_at<'a>(obj: &'a Value, path: &[&str]) -> &'a str {
    at(obj, path).as_str().unwrap_or("")
}

fn int_at(obj: &Value, path: &[&str]) -> i64 {
    at(obj, path).as_i64().unwrap_or(0)
}

fn items(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

fn map_len(v: &Value) -> usize {
    v.as_object().map_or(0, Map::len)
}

fn parse_time(v: &Value) -> Option<DateTime<Utc>> {
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

fn age(obj: &Value, now: DateTime<Utc>) -> String {
    since(&obj["metadata"]["creationTimestamp"], now)
}

/// Container names and images of a pod spec, comma-joined.
fn container_cells(spec: &Value) -> (String, String) {
    let containers = items(&spec["containers"]);
    let names: Vec<&str> = containers.iter().map(|c| str_at(c, &["name"])).collect();
    let images: Vec<&str> = containers.iter().map(|c| str_at(c, &["image"])).collect();
    (names.join(","), images.join(","))
}

fn selector_text(selector: &Value) -> String {
    if selector.is_null() {
        return String::new();
    }
    match LabelSelector::from_json(selector) {
        Ok(s) => s.to_string(),
        Err(_) => "<error>".to_string(),
    }
}

/// Upstream's `labels.FormatLabels`: sorted `k=v` pairs, `<none>` when empty.
fn format_labels(labels: Option<&Map<String, Value>>) -> String {
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

fn has_condition(obj: &Value, kind: &str) -> bool {
    items(&obj["status"]["conditions"])
        .iter()
        .any(|c| str_at(c, &["type"]) == kind && str_at(c, &["status"]) == "True")
}

// ---- pods ----------------------------------------------------------------------------------

fn pod_cells(pod: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let spec = &pod["spec"];
    let status = &pod["status"];
    let init_specs = items(&spec["initContainers"]);
    let restartable_init = |name: &str| {
        init_specs
            .iter()
            .any(|c| str_at(c, &["name"]) == name && str_at(c, &["restartPolicy"]) == "Always")
    };
    let mut total = items(&spec["containers"]).len();
    total += init_specs
        .iter()
        .filter(|c| str_at(c, &["restartPolicy"]) == "Always")
        .count();
    let mut ready = 0;
    let mut restarts: i64 = 0;
    let mut restartable_restarts: i64 = 0;
    let mut last_restart: Option<DateTime<Utc>> = None;
    let mut last_restartable_restart: Option<DateTime<Utc>> = None;

    let phase = str_at(status, &["phase"]);
    let mut reason = phase.to_string();
    if let Some(r) = status["reason"].as_str().filter(|r| !r.is_empty()) {
        reason = r.to_string();
    }
    if items(&status["conditions"]).iter().any(|c| {
        str_at(c, &["type"]) == "PodScheduled" && str_at(c, &["reason"]) == "SchedulingGated"
    }) {
        reason = "SchedulingGated".to_string();
    }

    let finished_at = |c: &Value| parse_time(&c["lastState"]["terminated"]["finishedAt"]);
    let mut initializing = false;
    let init_statuses = items(&status["initContainerStatuses"]);
    for (i, c) in init_statuses.iter().enumerate() {
        let count = c["restartCount"].as_i64().unwrap_or(0);
        restarts += count;
        if let Some(t) = finished_at(c) {
            last_restart = last_restart.max(Some(t));
        }
        let cname = str_at(c, &["name"]);
        if restartable_init(cname) {
            restartable_restarts += count;
            if let Some(t) = finished_at(c) {
                last_restartable_restart = last_restartable_restart.max(Some(t));
            }
        }
        let terminated = &c["state"]["terminated"];
        let waiting_reason = str_at(c, &["state", "waiting", "reason"]);
        if terminated.is_object() && terminated["exitCode"].as_i64().unwrap_or(0) == 0 {
            continue;
        }
        if restartable_init(cname) && c["started"].as_bool() == Some(true) {
            if c["ready"].as_bool() == Some(true) {
                ready += 1;
            }
            continue;
        }
        if terminated.is_object() {
            let r = str_at(terminated, &["reason"]);
            reason = if !r.is_empty() {
                format!("Init:{r}")
            } else if terminated["signal"].as_i64().unwrap_or(0) != 0 {
                format!("Init:Signal:{}", terminated["signal"])
            } else {
                format!(
                    "Init:ExitCode:{}",
                    terminated["exitCode"].as_i64().unwrap_or(0)
                )
            };
        } else if !waiting_reason.is_empty() && waiting_reason != "PodInitializing" {
            reason = format!("Init:{waiting_reason}");
        } else {
            reason = format!("Init:{}/{}", i, init_specs.len());
        }
        initializing = true;
        break;
    }

    let initialized = items(&status["conditions"])
        .iter()
        .any(|c| str_at(c, &["type"]) == "Initialized" && str_at(c, &["status"]) == "True");
    if !initializing || initialized {
        restarts = restartable_restarts;
        last_restart = last_restartable_restart;
        let mut has_running = false;
        for c in items(&status["containerStatuses"]).iter().rev() {
            restarts += c["restartCount"].as_i64().unwrap_or(0);
            if let Some(t) = finished_at(c) {
                last_restart = last_restart.max(Some(t));
            }
            let state = &c["state"];
            let waiting_reason = str_at(state, &["waiting", "reason"]);
            let terminated = &state["terminated"];
            if !waiting_reason.is_empty() {
                reason = waiting_reason.to_string();
            } else if terminated.is_object() {
                let r = str_at(terminated, &["reason"]);
                reason = if !r.is_empty() {
                    r.to_string()
                } else if terminated["signal"].as_i64().unwrap_or(0) != 0 {
                    format!("Signal:{}", terminated["signal"])
                } else {
                    format!("ExitCode:{}", terminated["exitCode"].as_i64().unwrap_or(0))
                };
            } else if c["ready"].as_bool() == Some(true) && state["running"].is_object() {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            reason = if has_condition(pod, "Ready") {
                "Running".to_string()
            } else {
                "NotReady".to_string()
            };
        }
    }

    let deleting = !pod["metadata"]["deletionTimestamp"].is_null();
    if deleting && status["reason"].as_str() == Some("NodeLost") {
        reason = "Unknown".to_string();
    } else if deleting && phase != "Succeeded" && phase != "Failed" {
        reason = "Terminating".to_string();
    }

    let restarts_text = match last_restart {
        Some(t) if restarts != 0 => format!("{restarts} ({} ago)", human_duration(now - t)),
        _ => restarts.to_string(),
    };

    let or_none = |s: &str| {
        if s.is_empty() {
            "<none>".to_string()
        } else {
            s.to_string()
        }
    };
    // Upstream reads podIPs only; podIP covers writers that set just the singular field.
    let pod_ip = items(&status["podIPs"])
        .first()
        .map(|ip| str_at(ip, &["ip"]))
        .unwrap_or_else(|| str_at(status, &["podIP"]));
    let gates = items(&spec["readinessGates"]);
    let readiness_gates = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let conditions = items(&status["conditions"]);
        let passing = gates
            .iter()
            .filter(|g| {
                conditions
                    .iter()
                    .find(|c| c["type"] == g["conditionType"])
                    .is_some_and(|c| str_at(c, &["status"]) == "True")
            })
            .count();
        format!("{passing}/{}", gates.len())
    };

    vec![
        json!(str_at(pod, &["metadata", "name"])),
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts_text),
        json!(age(pod, now)),
        json!(or_none(pod_ip)),
        json!(or_none(str_at(spec, &["nodeName"]))),
        json!(or_none(str_at(status, &["nominatedNodeName"]))),
        json!(readiness_gates),
    ]
}

// ---- jobs ----------------------------------------------------------------------------------

fn job_cells(job: &Value, now: DateTime<Utc>) -> Vec<Value> {
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

fn service_cells(svc: &Value, now: DateTime<Utc>) -> Vec<Value> {
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

fn join_host_port(ip: &str, port: i64) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// `10.0.0.1:80,10.0.0.2:80 + 3 more...`, `<none>` without subsets.
fn format_endpoints(ep: &Value) -> String {
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

fn list_with_more(list: Vec<String>, more: bool, count: usize) -> String {
    let joined = list.join(",");
    if more {
        format!("{joined} + {} more...", count - 3)
    } else if joined.is_empty() {
        "<unset>".to_string()
    } else {
        joined
    }
}

fn format_slice_ports(slice: &Value) -> String {
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

fn format_slice_endpoints(slice: &Value) -> String {
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

fn node_cells(node: &Value, now: DateTime<Utc>) -> Vec<Value> {
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

fn first_non_empty<'a>(a: &'a str, b: &'a str) -> &'a str {
    if a.is_empty() {
        b
    } else {
        a
    }
}

fn event_cells(ev: &Value, now: DateTime<Utc>) -> Vec<Value> {
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

#[cfg(test)]
mod tests;
