//! Pod spec validation (pods and the pod templates of workloads) and pod update rules.

use std::collections::{BTreeMap, HashSet};

use serde_json::{json, Map, Value};

use super::causes::{child, index, invalid_raw, key, not_found, required_detail};
use super::meta::validate_labels;
use super::names;
use crate::quantity::{self, Quantity};
use crate::status::StatusCause;

/// Who owns the pod spec, which decides the allowed restart policies and pod-only checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecOwner {
    /// A Pod object itself.
    Pod,
    /// The template of a Deployment, ReplicaSet, StatefulSet or DaemonSet (restartPolicy Always).
    Workload,
    /// The template of a Job (restartPolicy OnFailure or Never).
    Job,
}

const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];
const RESTART_POLICIES: &[&str] = &["Always", "OnFailure", "Never"];
const DNS_POLICIES: &[&str] = &["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"];
const PULL_POLICIES: &[&str] = &["Always", "IfNotPresent", "Never"];
const TERMINATION_MESSAGE_POLICIES: &[&str] = &["File", "FallbackToLogsOnError"];

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn items(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// A Pod's own rules: its spec.
pub fn validate_pod(obj: &Value, errs: &mut Vec<StatusCause>) {
    errs.extend(validate_pod_spec(&obj["spec"], "spec", SpecOwner::Pod));
}

/// What an update of a Pod may change.
pub fn validate_pod_update(new: &Value, old: &Value, errs: &mut Vec<StatusCause>) {
    errs.extend(validate_pod_spec_update(new, old));
}

/// Validates a pod spec at `path` (`spec` or `spec.template.spec`).
pub fn validate_pod_spec(spec: &Value, path: &str, owner: SpecOwner) -> Vec<StatusCause> {
    let mut errs = Vec::new();
    let volumes = validate_volumes(&spec["volumes"], &child(path, "volumes"), &mut errs);

    let containers = items(&spec["containers"]);
    if containers.is_empty() {
        errs.push(StatusCause::required(child(path, "containers")));
    }
    let mut container_names = HashSet::new();
    let mut host_ports = HashSet::new();
    for (field, list) in [
        ("initContainers", items(&spec["initContainers"])),
        ("containers", containers),
    ] {
        for (i, c) in list.iter().enumerate() {
            let cpath = index(&child(path, field), i);
            validate_container(c, &cpath, owner, &volumes, &mut container_names, &mut errs);
            if let Some(policy) = c.get("restartPolicy").filter(|v| !v.is_null()) {
                let rp_path = child(&cpath, "restartPolicy");
                if field == "containers" {
                    errs.push(StatusCause::forbidden(
                        rp_path,
                        "may not be set for non-init containers",
                    ));
                } else if policy.as_str() != Some("Always") {
                    errs.push(StatusCause::not_supported(rp_path, policy, &["Always"]));
                }
            }
            for (j, port) in items(&c["ports"]).iter().enumerate() {
                let hp = port["hostPort"].as_i64().unwrap_or(0);
                if hp != 0 {
                    let proto = port["protocol"].as_str().unwrap_or("TCP");
                    let id = format!("{hp}/{proto}");
                    if !host_ports.insert(id.clone()) {
                        errs.push(StatusCause::duplicate(
                            child(&index(&child(&cpath, "ports"), j), "hostPort"),
                            &json!(id),
                        ));
                    }
                }
            }
        }
    }

    let restart = &spec["restartPolicy"];
    match owner {
        SpecOwner::Job => {
            let rp = str_of(restart);
            if rp.is_empty() {
                errs.push(required_detail(
                    child(path, "restartPolicy"),
                    "valid values: \"OnFailure\", \"Never\"",
                ));
            } else if rp != "OnFailure" && rp != "Never" {
                errs.push(StatusCause::not_supported(
                    child(path, "restartPolicy"),
                    restart,
                    &["OnFailure", "Never"],
                ));
            }
        }
        SpecOwner::Pod | SpecOwner::Workload => {
            let rp = str_of(restart);
            if rp.is_empty() {
                errs.push(StatusCause::required(child(path, "restartPolicy")));
            } else if !RESTART_POLICIES.contains(&rp) {
                errs.push(StatusCause::not_supported(
                    child(path, "restartPolicy"),
                    restart,
                    RESTART_POLICIES,
                ));
            } else if owner == SpecOwner::Workload && rp != "Always" {
                errs.push(StatusCause::not_supported(
                    child(path, "restartPolicy"),
                    restart,
                    &["Always"],
                ));
            }
        }
    }

    if let Some(dns) = spec.get("dnsPolicy").and_then(Value::as_str) {
        if !DNS_POLICIES.contains(&dns) {
            errs.push(StatusCause::not_supported(
                child(path, "dnsPolicy"),
                &spec["dnsPolicy"],
                DNS_POLICIES,
            ));
        }
    }
    if let Some(ads) = spec.get("activeDeadlineSeconds").filter(|v| !v.is_null()) {
        let n = ads.as_i64().unwrap_or(0);
        if !(1..=i64::from(i32::MAX)).contains(&n) {
            errs.push(StatusCause::invalid(
                child(path, "activeDeadlineSeconds"),
                ads,
                "must be between 1 and 2147483647, inclusive",
            ));
        }
    }
    if let Some(sa) = spec.get("serviceAccountName").and_then(Value::as_str) {
        if !sa.is_empty() {
            for msg in names::dns1123_subdomain_errors(sa) {
                errs.push(StatusCause::invalid(
                    child(path, "serviceAccountName"),
                    &spec["serviceAccountName"],
                    msg,
                ));
            }
        }
    }
    for field in ["hostname", "subdomain"] {
        if let Some(v) = spec.get(field).and_then(Value::as_str) {
            if !v.is_empty() {
                for msg in names::dns1123_label_errors(v) {
                    errs.push(StatusCause::invalid(child(path, field), &spec[field], msg));
                }
            }
        }
    }
    if let Some(ns) = spec.get("nodeSelector").and_then(Value::as_object) {
        validate_labels(ns, &child(path, "nodeSelector"), &mut errs);
    }
    validate_tolerations(&spec["tolerations"], &child(path, "tolerations"), &mut errs);
    errs
}

fn validate_tolerations(tolerations: &Value, path: &str, errs: &mut Vec<StatusCause>) {
    for (i, t) in items(tolerations).iter().enumerate() {
        let tpath = index(path, i);
        let key = str_of(&t["key"]);
        if !key.is_empty() {
            for msg in names::qualified_name_errors(key) {
                errs.push(StatusCause::invalid(child(&tpath, "key"), &t["key"], msg));
            }
        }
        let operator = str_of(&t["operator"]);
        if key.is_empty() && operator != "Exists" {
            errs.push(StatusCause::invalid(
                child(&tpath, "operator"),
                &json!(operator),
                "operator must be Exists when `key` is empty, which means \"match all values and all keys\"",
            ));
        }
        match operator {
            "" | "Equal" => {
                let value = str_of(&t["value"]);
                for msg in names::label_value_errors(value) {
                    errs.push(StatusCause::invalid(
                        child(&tpath, "value"),
                        &t["value"],
                        msg,
                    ));
                }
            }
            "Exists" => {
                if !str_of(&t["value"]).is_empty() {
                    errs.push(StatusCause::invalid(
                        child(&tpath, "operator"),
                        &t["value"],
                        "value must be empty when `operator` is 'Exists'",
                    ));
                }
            }
            _ => errs.push(StatusCause::not_supported(
                child(&tpath, "operator"),
                &t["operator"],
                &["Equal", "Exists"],
            )),
        }
        let effect = str_of(&t["effect"]);
        if !t["tolerationSeconds"].is_null() && effect != "NoExecute" {
            errs.push(StatusCause::invalid(
                child(&tpath, "effect"),
                &json!(effect),
                "effect must be 'NoExecute' when `tolerationSeconds` is set",
            ));
        }
        if !effect.is_empty() && !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect)
        {
            errs.push(StatusCause::not_supported(
                child(&tpath, "effect"),
                &t["effect"],
                &["NoSchedule", "PreferNoSchedule", "NoExecute"],
            ));
        }
    }
}

/// Checks `volumes` and returns their names (for volumeMount references).
fn validate_volumes(volumes: &Value, path: &str, errs: &mut Vec<StatusCause>) -> HashSet<String> {
    let mut seen = HashSet::new();
    for (i, vol) in items(volumes).iter().enumerate() {
        let vpath = index(path, i);
        let name = str_of(&vol["name"]);
        if name.is_empty() {
            errs.push(StatusCause::required(child(&vpath, "name")));
        } else {
            for msg in names::dns1123_label_errors(name) {
                errs.push(StatusCause::invalid(
                    child(&vpath, "name"),
                    &vol["name"],
                    msg,
                ));
            }
            if !seen.insert(name.to_string()) {
                errs.push(StatusCause::duplicate(child(&vpath, "name"), &vol["name"]));
            }
        }
        let sources: Vec<&String> = vol
            .as_object()
            .map(|o| {
                o.iter()
                    .filter(|(k, v)| k.as_str() != "name" && !v.is_null())
                    .map(|(k, _)| k)
                    .collect()
            })
            .unwrap_or_default();
        match sources.as_slice() {
            [] => errs.push(required_detail(vpath.clone(), "must specify a volume type")),
            [_] => {}
            [_, rest @ ..] => {
                for extra in rest {
                    errs.push(StatusCause::forbidden(
                        child(&vpath, extra),
                        "may not specify more than 1 volume type",
                    ));
                }
            }
        }
    }
    seen
}

/// Upstream's validateProbe: no negative timings or thresholds (the kubelet would tick
/// every 0 s or never), a positive probe-level grace period, and liveness and startup
/// probes succeed on one success.
fn validate_probe(probe: &Value, path: &str, single_success: bool, errs: &mut Vec<StatusCause>) {
    if !probe.is_object() {
        return;
    }
    for field in [
        "initialDelaySeconds",
        "timeoutSeconds",
        "periodSeconds",
        "successThreshold",
        "failureThreshold",
    ] {
        if probe[field].as_i64().is_some_and(|n| n < 0) {
            errs.push(StatusCause::invalid(
                child(path, field),
                &probe[field],
                "must be greater than or equal to 0",
            ));
        }
    }
    if single_success && probe["successThreshold"].as_i64().is_some_and(|n| n != 1) {
        errs.push(StatusCause::invalid(
            child(path, "successThreshold"),
            &probe["successThreshold"],
            "must be 1",
        ));
    }
    if probe["terminationGracePeriodSeconds"]
        .as_i64()
        .is_some_and(|n| n <= 0)
    {
        errs.push(StatusCause::invalid(
            child(path, "terminationGracePeriodSeconds"),
            &probe["terminationGracePeriodSeconds"],
            "must be greater than 0",
        ));
    }
}

fn validate_container(
    c: &Value,
    path: &str,
    owner: SpecOwner,
    volumes: &HashSet<String>,
    container_names: &mut HashSet<String>,
    errs: &mut Vec<StatusCause>,
) {
    let name = str_of(&c["name"]);
    if name.is_empty() {
        errs.push(StatusCause::required(child(path, "name")));
    } else {
        for msg in names::dns1123_label_errors(name) {
            errs.push(StatusCause::invalid(child(path, "name"), &c["name"], msg));
        }
        if !container_names.insert(name.to_string()) {
            errs.push(StatusCause::duplicate(child(path, "name"), &c["name"]));
        }
    }

    let image = str_of(&c["image"]);
    if image.is_empty() {
        errs.push(StatusCause::required(child(path, "image")));
    } else if owner == SpecOwner::Pod {
        // Templates keep tolerating padded images (some tools use " " as a placeholder).
        if image.trim() != image {
            errs.push(StatusCause::invalid(
                child(path, "image"),
                &c["image"],
                "must not have leading or trailing whitespace",
            ));
        }
    }

    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        validate_probe(
            &c[probe],
            &child(path, probe),
            probe != "readinessProbe",
            errs,
        );
    }

    let mut port_names = HashSet::new();
    for (i, port) in items(&c["ports"]).iter().enumerate() {
        let ppath = index(&child(path, "ports"), i);
        if let Some(pname) = port
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        {
            let msgs = names::port_name_errors(pname);
            if !msgs.is_empty() {
                for msg in msgs {
                    errs.push(StatusCause::invalid(
                        child(&ppath, "name"),
                        &port["name"],
                        msg,
                    ));
                }
            } else if !port_names.insert(pname.to_string()) {
                errs.push(StatusCause::duplicate(child(&ppath, "name"), &port["name"]));
            }
        }
        let cp = port["containerPort"].as_i64().unwrap_or(0);
        if cp == 0 {
            errs.push(StatusCause::required(child(&ppath, "containerPort")));
        } else if !(1..=65535).contains(&cp) {
            errs.push(StatusCause::invalid(
                child(&ppath, "containerPort"),
                &port["containerPort"],
                "must be between 1 and 65535, inclusive",
            ));
        }
        let hp = port["hostPort"].as_i64().unwrap_or(0);
        if hp != 0 && !(1..=65535).contains(&hp) {
            errs.push(StatusCause::invalid(
                child(&ppath, "hostPort"),
                &port["hostPort"],
                "must be between 1 and 65535, inclusive",
            ));
        }
        let proto = str_of(&port["protocol"]);
        if proto.is_empty() {
            errs.push(StatusCause::required(child(&ppath, "protocol")));
        } else if !PROTOCOLS.contains(&proto) {
            errs.push(StatusCause::not_supported(
                child(&ppath, "protocol"),
                &port["protocol"],
                PROTOCOLS,
            ));
        }
    }

    for (i, env) in items(&c["env"]).iter().enumerate() {
        let epath = index(&child(path, "env"), i);
        let ename = str_of(&env["name"]);
        if ename.is_empty() {
            errs.push(StatusCause::required(child(&epath, "name")));
        } else {
            for msg in names::env_var_name_errors(ename) {
                errs.push(StatusCause::invalid(
                    child(&epath, "name"),
                    &env["name"],
                    msg,
                ));
            }
        }
        let has_value = env["value"].as_str().is_some_and(|v| !v.is_empty());
        if has_value && env.get("valueFrom").is_some_and(|v| !v.is_null()) {
            errs.push(StatusCause::invalid(
                child(&epath, "valueFrom"),
                &json!(""),
                "may not be specified when `value` is not empty",
            ));
        }
    }

    let mut mount_paths = HashSet::new();
    for (i, m) in items(&c["volumeMounts"]).iter().enumerate() {
        let mpath = index(&child(path, "volumeMounts"), i);
        let mname = str_of(&m["name"]);
        if mname.is_empty() {
            errs.push(StatusCause::required(child(&mpath, "name")));
        } else if !volumes.contains(mname) {
            errs.push(not_found(child(&mpath, "name"), &m["name"]));
        }
        let mount_path = str_of(&m["mountPath"]);
        if mount_path.is_empty() {
            errs.push(StatusCause::required(child(&mpath, "mountPath")));
        } else if !mount_paths.insert(mount_path.to_string()) {
            errs.push(StatusCause::invalid(
                child(&mpath, "mountPath"),
                &m["mountPath"],
                "must be unique",
            ));
        }
    }

    // Both are defaulted before validation, so empty means a client cleared them.
    for (field, supported) in [
        ("terminationMessagePolicy", TERMINATION_MESSAGE_POLICIES),
        ("imagePullPolicy", PULL_POLICIES),
    ] {
        let value = str_of(&c[field]);
        if value.is_empty() {
            errs.push(StatusCause::required(child(path, field)));
        } else if !supported.contains(&value) {
            errs.push(StatusCause::not_supported(
                child(path, field),
                &c[field],
                supported,
            ));
        }
    }

    validate_resources(&c["resources"], &child(path, "resources"), errs);
}

fn parse_resource_list(
    list: &Value,
    path: &str,
    errs: &mut Vec<StatusCause>,
) -> BTreeMap<String, (Quantity, String)> {
    let mut out = BTreeMap::new();
    let Some(map) = list.as_object() else {
        return out;
    };
    for (name, raw) in map {
        let text = match raw {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => other.to_string(),
        };
        let qpath = key(path, name);
        match quantity::from_json(raw) {
            Ok(q) if q.is_negative() => errs.push(invalid_raw(
                qpath,
                &format!("{text:?}"),
                "must be greater than or equal to 0",
            )),
            Ok(q) => {
                out.insert(name.clone(), (q, text));
            }
            Err(e) => errs.push(invalid_raw(qpath, &format!("{text:?}"), &e.to_string())),
        }
    }
    out
}

fn validate_resources(res: &Value, path: &str, errs: &mut Vec<StatusCause>) {
    let limits = parse_resource_list(&res["limits"], &child(path, "limits"), errs);
    let requests = parse_resource_list(&res["requests"], &child(path, "requests"), errs);
    for (name, (req, req_text)) in &requests {
        if let Some((limit, limit_text)) = limits.get(name) {
            if req > limit {
                errs.push(invalid_raw(
                    key(&child(path, "requests"), name),
                    &format!("{req_text:?}"),
                    &format!("must be less than or equal to {name} limit of {limit_text}"),
                ));
            }
        }
    }
}

const POD_UPDATE_FORBIDDEN: &str = "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

/// Upstream's pod update rule: only images, activeDeadlineSeconds, added tolerations, removed
/// scheduling gates and a negative grace period fixed to 1 may change.
pub fn validate_pod_spec_update(new: &Value, old: &Value) -> Vec<StatusCause> {
    let mut errs = Vec::new();
    let new_spec = &new["spec"];
    let old_spec = &old["spec"];

    if let (Some(old_ads), Some(new_ads)) = (
        old_spec["activeDeadlineSeconds"].as_i64(),
        new_spec.get("activeDeadlineSeconds"),
    ) {
        match new_ads.as_i64() {
            None => errs.push(invalid_raw(
                "spec.activeDeadlineSeconds".to_string(),
                "null",
                "must not update from a positive integer to nil value",
            )),
            Some(n) if n > old_ads => errs.push(StatusCause::invalid(
                "spec.activeDeadlineSeconds",
                new_ads,
                "must be less than or equal to previous value",
            )),
            _ => {}
        }
    }

    let mut munged = new_spec.clone();
    if let Some(obj) = munged.as_object_mut() {
        for field in ["containers", "initContainers"] {
            let old_list = items(&old_spec[field]);
            if let Some(list) = obj.get_mut(field).and_then(Value::as_array_mut) {
                if list.len() == old_list.len() {
                    for (c, o) in list.iter_mut().zip(old_list) {
                        if let (Some(c), Some(image)) = (c.as_object_mut(), o.get("image")) {
                            c.insert("image".to_string(), image.clone());
                        }
                    }
                }
            }
        }
        copy_field(obj, old_spec, "activeDeadlineSeconds");
        let old_tol = items(&old_spec["tolerations"]);
        if items(&new_spec["tolerations"]).starts_with(old_tol)
            || old_tol
                .iter()
                .all(|t| items(&new_spec["tolerations"]).contains(t))
        {
            copy_field(obj, old_spec, "tolerations");
        }
        let old_gates = items(&old_spec["schedulingGates"]);
        if items(&new_spec["schedulingGates"])
            .iter()
            .all(|g| old_gates.contains(g))
        {
            copy_field(obj, old_spec, "schedulingGates");
        }
        if old_spec["terminationGracePeriodSeconds"]
            .as_i64()
            .is_some_and(|g| g < 0)
            && new_spec["terminationGracePeriodSeconds"].as_i64() == Some(1)
        {
            copy_field(obj, old_spec, "terminationGracePeriodSeconds");
        }
    }
    if munged != *old_spec {
        let mut diff = Vec::new();
        diff_paths("spec", old_spec, &munged, &mut diff);
        let detail = format!("{POD_UPDATE_FORBIDDEN}\n{}", diff.join("\n"));
        errs.push(StatusCause::forbidden("spec", detail));
    }
    errs
}

fn copy_field(obj: &mut Map<String, Value>, from: &Value, field: &str) {
    match from.get(field) {
        Some(v) => {
            obj.insert(field.to_string(), v.clone());
        }
        None => {
            obj.remove(field);
        }
    }
}

/// A short description of where two JSON values differ (upstream prints a cmp.Diff).
fn diff_paths(path: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                diff_paths(
                    &child(path, k),
                    a.get(k.as_str()).unwrap_or(&Value::Null),
                    b.get(k.as_str()).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff_paths(&index(path, i), x, y, out);
            }
        }
        _ if old != new => out.push(format!("  {path}: {old} -> {new}")),
        _ => {}
    }
}
