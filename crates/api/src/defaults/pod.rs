//! Pods: `SetDefaults_PodSpec` and what lies below it (containers, probes, volumes), shared
//! with every workload's template, and what only a Pod object gets (requests from limits,
//! priority, a Pending status with its QoS class).

use serde_json::{json, Map, Value};

use super::{child_object, object_at, set_if_absent};
use crate::semantics::images::default_pull_policy;
use crate::semantics::qos::qos_class_of_json_spec;

/// A Pod object.
pub fn default_pod(obj: &mut Value) {
    {
        let spec = object_at(obj, "spec");
        for field in ["initContainers", "containers"] {
            if let Some(list) = spec.get_mut(field).and_then(Value::as_array_mut) {
                for c in list {
                    default_requests_from_limits(c);
                }
            }
        }
        default_pod_spec(spec, true);
        set_if_absent(spec, "enableServiceLinks", json!(true));
        // The Priority admission plugin's values when no priority class applies.
        set_if_absent(spec, "priority", json!(0));
        set_if_absent(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
    }
    // The pod create strategy starts every pod Pending with its QoS class.
    let qos = qos_class_of_json_spec(&obj["spec"]).as_str();
    let status = object_at(obj, "status");
    set_if_absent(status, "phase", json!("Pending"));
    set_if_absent(status, "qosClass", json!(qos));
}

fn default_probe(probe: Option<&mut Value>) {
    let Some(probe) = probe.and_then(Value::as_object_mut) else {
        return;
    };
    // Upstream's SetDefaults_Probe treats 0 like unset: a probe every 0 seconds means the
    // default, not a busy loop.
    for (field, default) in [
        ("timeoutSeconds", 1),
        ("periodSeconds", 10),
        ("successThreshold", 1),
        ("failureThreshold", 3),
    ] {
        if probe.get(field).and_then(Value::as_i64) == Some(0) {
            probe.remove(field);
        }
        set_if_absent(probe, field, json!(default));
    }
    if let Some(http) = probe.get_mut("httpGet").and_then(Value::as_object_mut) {
        set_if_absent(http, "path", json!("/"));
        set_if_absent(http, "scheme", json!("HTTP"));
    }
}

fn default_container(c: &mut Value, host_network: bool) {
    let Some(c) = c.as_object_mut() else {
        return;
    };
    if c.get("imagePullPolicy").is_none_or(Value::is_null) {
        let image = c.get("image").and_then(Value::as_str).unwrap_or("");
        c.insert(
            "imagePullPolicy".into(),
            json!(default_pull_policy(image).as_str()),
        );
    }
    set_if_absent(c, "terminationMessagePath", json!("/dev/termination-log"));
    set_if_absent(c, "terminationMessagePolicy", json!("File"));
    set_if_absent(c, "resources", json!({}));
    if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
        for port in ports {
            if let Some(p) = port.as_object_mut() {
                set_if_absent(p, "protocol", json!("TCP"));
                // With the host's network the container port is the host port.
                if host_network {
                    if let Some(cp) = p.get("containerPort").cloned() {
                        set_if_absent(p, "hostPort", cp);
                    }
                }
            }
        }
    }
    if let Some(env) = c.get_mut("env").and_then(Value::as_array_mut) {
        for var in env {
            if let Some(field_ref) = var
                .get_mut("valueFrom")
                .and_then(|v| v.get_mut("fieldRef"))
                .and_then(Value::as_object_mut)
            {
                set_if_absent(field_ref, "apiVersion", json!("v1"));
            }
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        default_probe(c.get_mut(probe));
    }
}

fn default_volume(v: &mut Value) {
    let Some(v) = v.as_object_mut() else {
        return;
    };
    let has_source = v.iter().any(|(k, val)| k != "name" && !val.is_null());
    if !has_source {
        v.insert("emptyDir".into(), json!({}));
    }
    for source in ["secret", "configMap", "projected", "downwardAPI"] {
        if let Some(s) = v.get_mut(source).and_then(Value::as_object_mut) {
            // 0644
            set_if_absent(s, "defaultMode", json!(420));
        }
    }
}

/// Whose template a pod spec is: a Job's leaves `restartPolicy` to the client.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum TemplateOwner {
    Workload,
    Job,
}

/// `SetDefaults_PodSpec` and the container/volume defaults below it.
fn default_pod_spec(spec: &mut Map<String, Value>, restart_policy: bool) {
    set_if_absent(spec, "dnsPolicy", json!("ClusterFirst"));
    if restart_policy {
        set_if_absent(spec, "restartPolicy", json!("Always"));
    }
    set_if_absent(spec, "securityContext", json!({}));
    set_if_absent(spec, "terminationGracePeriodSeconds", json!(30));
    set_if_absent(spec, "schedulerName", json!("default-scheduler"));
    let host_network = spec
        .get("hostNetwork")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    for field in ["initContainers", "containers"] {
        if let Some(list) = spec.get_mut(field).and_then(Value::as_array_mut) {
            for c in list {
                default_container(c, host_network);
            }
        }
    }
    if let Some(volumes) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
        for v in volumes {
            default_volume(v);
        }
    }
}

/// The pod spec of a workload's `spec.template`.
pub(crate) fn default_template(spec: &mut Map<String, Value>, owner: TemplateOwner) {
    let template = child_object(spec, "template");
    let pod_spec = child_object(template, "spec");
    default_pod_spec(pod_spec, owner == TemplateOwner::Workload);
}

/// Requests default to limits for each resource only limited (Pods only, not templates).
fn default_requests_from_limits(c: &mut Value) {
    let Some(resources) = c.get_mut("resources").and_then(Value::as_object_mut) else {
        return;
    };
    let Some(limits) = resources.get("limits").and_then(Value::as_object).cloned() else {
        return;
    };
    let requests = child_object(resources, "requests");
    for (name, q) in limits {
        requests.entry(name).or_insert(q);
    }
}
