//! Defaulting of built-in kinds, applied on create and update before validation.
//!
//! Values are upstream's `SetDefaults_*` functions (plus the few fields upstream's create
//! strategies and default admission plugins fill in, marked as such), so `kubectl get -o yaml`
//! shows what it shows against Kubernetes. Only absent fields are filled; nothing the client
//! sent is changed.

use serde_json::{json, Map, Value};

use crate::registry::ResourceInfo;
use crate::semantics::images::default_pull_policy;
use crate::semantics::qos::qos_class_of_json_spec;

/// The label upstream's API server sets on every namespace, valued with its name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Fills in upstream defaults (e.g. `spec.replicas: 1`, container
/// `imagePullPolicy`, `terminationMessagePath`, service `type: ClusterIP`).
pub fn apply_defaults(resource: &ResourceInfo, obj: &mut Value) {
    apply_kind_defaults(resource.kind, obj);
}

/// Defaults by kind name (what [`apply_defaults`] does for the resource's kind).
pub fn apply_kind_defaults(kind: &str, obj: &mut Value) {
    if !obj.is_object() {
        return;
    }
    match kind {
        "Pod" => default_pod(obj),
        "Deployment" => default_deployment(obj),
        "ReplicaSet" => {
            let spec = object_at(obj, "spec");
            set_if_absent(spec, "replicas", json!(1));
            default_template(spec, TemplateOwner::Workload);
        }
        "DaemonSet" => default_daemonset(obj),
        "StatefulSet" => default_statefulset(obj),
        "Job" => default_job(obj),
        "Service" => default_service(obj),
        "Secret" => {
            if let Some(o) = obj.as_object_mut() {
                set_if_absent(o, "type", json!("Opaque"));
                merge_string_data(o);
            }
        }
        "Namespace" => {
            // The namespace strategy forces this label on every create and update, so
            // selectors (NetworkPolicy, admission rules, `kubectl get ns -l`) can pick
            // namespaces by name; users cannot change or remove it.
            if let Some(name) = obj["metadata"]["name"].as_str().map(str::to_string) {
                let metadata = object_at(obj, "metadata");
                child_object(metadata, "labels").insert(NAMESPACE_NAME_LABEL.into(), json!(name));
            }
            // The finalizer comes from the namespace create strategy, the phase from
            // SetDefaults_NamespaceStatus.
            let spec = object_at(obj, "spec");
            set_if_absent(spec, "finalizers", json!(["kubernetes"]));
            let status = object_at(obj, "status");
            set_if_absent(status, "phase", json!("Active"));
        }
        "Node" => {
            let status = object_at(obj, "status");
            if let Some(capacity) = status.get("capacity").cloned() {
                set_if_absent(status, "allocatable", capacity);
            }
        }
        "Endpoints" => {
            if let Some(subsets) = obj.get_mut("subsets").and_then(Value::as_array_mut) {
                for subset in subsets {
                    default_port_protocols(subset.get_mut("ports"));
                }
            }
        }
        "EndpointSlice" => default_port_protocols(obj.get_mut("ports")),
        _ => {}
    }
}

/// Upstream's Secret conversion: `stringData` is write-only, merged into `data` (base64)
/// with its values winning, and never stored.
fn merge_string_data(secret: &mut Map<String, Value>) {
    let Some(Value::Object(string_data)) = secret.remove("stringData") else {
        return;
    };
    let data = child_object(secret, "data");
    for (k, v) in string_data {
        let text = v.as_str().unwrap_or("");
        data.insert(k, json!(base64_encode(text.as_bytes())));
    }
}

/// Standard padded base64, as Go encodes `[]byte` in JSON.
pub fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The object at `obj[field]`, created as `{}` when absent or not an object.
fn object_at<'a>(obj: &'a mut Value, field: &str) -> &'a mut Map<String, Value> {
    let map = ensure_object(obj);
    let entry = map.entry(field.to_string()).or_insert_with(|| json!({}));
    ensure_object(entry)
}

fn ensure_object(v: &mut Value) -> &mut Map<String, Value> {
    if !v.is_object() {
        *v = json!({});
    }
    match v {
        Value::Object(m) => m,
        _ => unreachable!("replaced by an object just above"),
    }
}

fn child_object<'a>(map: &'a mut Map<String, Value>, field: &str) -> &'a mut Map<String, Value> {
    let entry = map.entry(field.to_string()).or_insert_with(|| json!({}));
    ensure_object(entry)
}

fn set_if_absent(map: &mut Map<String, Value>, field: &str, value: Value) {
    match map.get(field) {
        Some(v) if !v.is_null() => {}
        _ => {
            map.insert(field.to_string(), value);
        }
    }
}

fn default_port_protocols(ports: Option<&mut Value>) {
    if let Some(ports) = ports.and_then(Value::as_array_mut) {
        for port in ports {
            if let Some(p) = port.as_object_mut() {
                set_if_absent(p, "protocol", json!("TCP"));
            }
        }
    }
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum TemplateOwner {
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

fn default_template(spec: &mut Map<String, Value>, owner: TemplateOwner) {
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

fn default_pod(obj: &mut Value) {
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

fn default_deployment(obj: &mut Value) {
    let spec = object_at(obj, "spec");
    set_if_absent(spec, "replicas", json!(1));
    let strategy = child_object(spec, "strategy");
    set_if_absent(strategy, "type", json!("RollingUpdate"));
    if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
        let ru = child_object(strategy, "rollingUpdate");
        set_if_absent(ru, "maxUnavailable", json!("25%"));
        set_if_absent(ru, "maxSurge", json!("25%"));
    }
    set_if_absent(spec, "revisionHistoryLimit", json!(10));
    set_if_absent(spec, "progressDeadlineSeconds", json!(600));
    default_template(spec, TemplateOwner::Workload);
}

fn default_daemonset(obj: &mut Value) {
    let spec = object_at(obj, "spec");
    let strategy = child_object(spec, "updateStrategy");
    set_if_absent(strategy, "type", json!("RollingUpdate"));
    if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
        let ru = child_object(strategy, "rollingUpdate");
        set_if_absent(ru, "maxUnavailable", json!(1));
        set_if_absent(ru, "maxSurge", json!(0));
    }
    set_if_absent(spec, "revisionHistoryLimit", json!(10));
    default_template(spec, TemplateOwner::Workload);
}

fn default_statefulset(obj: &mut Value) {
    let spec = object_at(obj, "spec");
    set_if_absent(spec, "podManagementPolicy", json!("OrderedReady"));
    let strategy = child_object(spec, "updateStrategy");
    set_if_absent(strategy, "type", json!("RollingUpdate"));
    if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
        let ru = child_object(strategy, "rollingUpdate");
        set_if_absent(ru, "partition", json!(0));
    }
    set_if_absent(spec, "replicas", json!(1));
    set_if_absent(spec, "revisionHistoryLimit", json!(10));
    let retention = child_object(spec, "persistentVolumeClaimRetentionPolicy");
    set_if_absent(retention, "whenDeleted", json!("Retain"));
    set_if_absent(retention, "whenScaled", json!("Retain"));
    default_template(spec, TemplateOwner::Workload);
}

/// The Job create strategy's generated selector: pods are matched by the Job's uid, and
/// the template carries the job name and uid under both the current and legacy keys.
/// Skipped with `manualSelector: true` or before the server has assigned a uid.
fn generate_job_selector(obj: &mut Value) {
    let uid = obj["metadata"]["uid"].as_str().unwrap_or("").to_string();
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    if uid.is_empty() || obj["spec"]["manualSelector"].as_bool() == Some(true) {
        return;
    }
    let spec = object_at(obj, "spec");
    let template = child_object(spec, "template");
    let labels = child_object(child_object(template, "metadata"), "labels");
    for (label, value) in [
        ("job-name", &name),
        ("batch.kubernetes.io/job-name", &name),
        ("controller-uid", &uid),
        ("batch.kubernetes.io/controller-uid", &uid),
    ] {
        labels.entry(label).or_insert_with(|| json!(value));
    }
    let selector = child_object(spec, "selector");
    child_object(selector, "matchLabels")
        .entry("batch.kubernetes.io/controller-uid")
        .or_insert_with(|| json!(uid));
}

fn default_job(obj: &mut Value) {
    // Upstream defaults (copying the user's template labels) before the strategy adds its own.
    copy_template_labels_to_job(obj);
    generate_job_selector(obj);
    copy_template_labels_to_job(obj);
    {
        let spec = object_at(obj, "spec");
        let unset = |s: &Map<String, Value>, f: &str| s.get(f).is_none_or(Value::is_null);
        // A non-parallel job leaves both unset; then both are 1.
        if unset(spec, "completions") && unset(spec, "parallelism") {
            spec.insert("completions".into(), json!(1));
        }
        set_if_absent(spec, "parallelism", json!(1));
        let backoff = if unset(spec, "backoffLimitPerIndex") {
            6
        } else {
            i64::from(i32::MAX)
        };
        set_if_absent(spec, "backoffLimit", json!(backoff));
        set_if_absent(spec, "completionMode", json!("NonIndexed"));
        set_if_absent(spec, "suspend", json!(false));
        let replacement = if unset(spec, "podFailurePolicy") {
            "TerminatingOrFailed"
        } else {
            "Failed"
        };
        set_if_absent(spec, "podReplacementPolicy", json!(replacement));
        default_template(spec, TemplateOwner::Job);
    }
}

/// The job takes its template's labels when it has none of its own.
fn copy_template_labels_to_job(obj: &mut Value) {
    let template_labels = obj["spec"]["template"]["metadata"]["labels"].clone();
    if template_labels.as_object().is_some_and(|l| !l.is_empty()) {
        let meta = object_at(obj, "metadata");
        if meta
            .get("labels")
            .and_then(Value::as_object)
            .is_none_or(Map::is_empty)
        {
            meta.insert("labels".into(), template_labels);
        }
    }
}

fn default_service(obj: &mut Value) {
    let spec = object_at(obj, "spec");
    set_if_absent(spec, "type", json!("ClusterIP"));
    set_if_absent(spec, "sessionAffinity", json!("None"));
    let svc_type = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    if spec.get("sessionAffinity").and_then(Value::as_str) == Some("ClientIP") {
        let config = child_object(spec, "sessionAffinityConfig");
        let client_ip = child_object(config, "clientIP");
        set_if_absent(client_ip, "timeoutSeconds", json!(10800));
    }
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for port in ports {
            if let Some(p) = port.as_object_mut() {
                set_if_absent(p, "protocol", json!("TCP"));
                let target_unset = match p.get("targetPort") {
                    None | Some(Value::Null) => true,
                    Some(Value::Number(n)) => n.as_i64() == Some(0),
                    Some(Value::String(s)) => s.is_empty(),
                    Some(_) => false,
                };
                if target_unset {
                    if let Some(port_number) = p.get("port").cloned() {
                        p.insert("targetPort".into(), port_number);
                    }
                }
            }
        }
    }
    if svc_type == "NodePort" || svc_type == "LoadBalancer" {
        set_if_absent(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if svc_type == "LoadBalancer" {
        set_if_absent(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    if svc_type != "ExternalName" {
        set_if_absent(spec, "internalTrafficPolicy", json!("Cluster"));
        // The service REST storage records the IP family chosen with the cluster IP.
        set_if_absent(spec, "ipFamilyPolicy", json!("SingleStack"));
        let cluster_ip = spec
            .get("clusterIP")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let family = if cluster_ip.contains(':') {
            "IPv6"
        } else {
            "IPv4"
        };
        set_if_absent(spec, "ipFamilies", json!([family]));
        if !cluster_ip.is_empty() {
            set_if_absent(spec, "clusterIPs", json!([cluster_ip]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaulted(kind: &str, mut obj: Value) -> Value {
        apply_kind_defaults(kind, &mut obj);
        obj
    }

    #[test]
    fn pod_defaults() {
        let pod = defaulted(
            "Pod",
            json!({"metadata": {"name": "p"}, "spec": {
                "containers": [{"name": "c", "image": "nginx:1", "ports": [{"containerPort": 80}],
                    "resources": {"limits": {"cpu": "1", "memory": "1Gi"}},
                    "readinessProbe": {"httpGet": {"port": 80}}}],
                "volumes": [{"name": "v"}, {"name": "s", "secret": {"secretName": "x"}}]
            }}),
        );
        let spec = &pod["spec"];
        assert_eq!(spec["restartPolicy"], "Always");
        assert_eq!(spec["dnsPolicy"], "ClusterFirst");
        assert_eq!(spec["schedulerName"], "default-scheduler");
        assert_eq!(spec["terminationGracePeriodSeconds"], 30);
        assert_eq!(spec["securityContext"], json!({}));
        assert_eq!(spec["enableServiceLinks"], true);
        assert_eq!(spec["preemptionPolicy"], "PreemptLowerPriority");
        let c = &spec["containers"][0];
        assert_eq!(c["imagePullPolicy"], "IfNotPresent");
        assert_eq!(c["terminationMessagePath"], "/dev/termination-log");
        assert_eq!(c["terminationMessagePolicy"], "File");
        assert_eq!(c["ports"][0]["protocol"], "TCP");
        assert_eq!(
            c["resources"]["requests"],
            json!({"cpu": "1", "memory": "1Gi"})
        );
        assert_eq!(c["readinessProbe"]["periodSeconds"], 10);
        let zeroed = defaulted(
            "Pod",
            json!({"spec": {"containers": [{"name": "c", "image": "i",
                "livenessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 0, "timeoutSeconds": 0}}]}}),
        );
        let probe = &zeroed["spec"]["containers"][0]["livenessProbe"];
        assert_eq!(probe["periodSeconds"], 10);
        assert_eq!(probe["timeoutSeconds"], 1);
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/");
        assert_eq!(spec["volumes"][0]["emptyDir"], json!({}));
        assert_eq!(spec["volumes"][1]["secret"]["defaultMode"], 420);
        assert_eq!(pod["status"]["phase"], "Pending");
        assert_eq!(pod["status"]["qosClass"], "Guaranteed");
    }

    #[test]
    fn client_values_are_kept() {
        let pod = defaulted(
            "Pod",
            json!({"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x", "imagePullPolicy": "Never"}]}}),
        );
        assert_eq!(pod["spec"]["restartPolicy"], "Never");
        assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "Never");
        assert_eq!(pod["spec"]["containers"][0]["resources"], json!({}));
        assert_eq!(pod["status"]["qosClass"], "BestEffort");
    }

    #[test]
    fn deployment_defaults() {
        let d = defaulted(
            "Deployment",
            json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "nginx"}]}}}}),
        );
        let spec = &d["spec"];
        assert_eq!(spec["replicas"], 1);
        assert_eq!(
            spec["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
        );
        assert_eq!(spec["revisionHistoryLimit"], 10);
        assert_eq!(spec["progressDeadlineSeconds"], 600);
        let tpl = &spec["template"]["spec"];
        assert_eq!(tpl["restartPolicy"], "Always");
        assert_eq!(tpl["containers"][0]["imagePullPolicy"], "Always");
        assert!(tpl.get("enableServiceLinks").is_none());
        let recreate = defaulted(
            "Deployment",
            json!({"spec": {"strategy": {"type": "Recreate"}}}),
        );
        assert!(recreate["spec"]["strategy"].get("rollingUpdate").is_none());
    }

    #[test]
    fn other_workloads() {
        let rs = defaulted("ReplicaSet", json!({"spec": {}}));
        assert_eq!(rs["spec"]["replicas"], 1);
        let ds = defaulted("DaemonSet", json!({"spec": {}}));
        assert_eq!(
            ds["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}})
        );
        assert_eq!(ds["spec"]["revisionHistoryLimit"], 10);
        let sts = defaulted("StatefulSet", json!({"spec": {}}));
        assert_eq!(sts["spec"]["podManagementPolicy"], "OrderedReady");
        assert_eq!(
            sts["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})
        );
        assert_eq!(
            sts["spec"]["persistentVolumeClaimRetentionPolicy"],
            json!({"whenDeleted": "Retain", "whenScaled": "Retain"})
        );
    }

    #[test]
    fn job_defaults() {
        let job = defaulted(
            "Job",
            json!({"metadata": {"name": "j"}, "spec": {"template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}),
        );
        let spec = &job["spec"];
        assert_eq!(spec["completions"], 1);
        assert_eq!(spec["parallelism"], 1);
        assert_eq!(spec["backoffLimit"], 6);
        assert_eq!(spec["completionMode"], "NonIndexed");
        assert_eq!(spec["suspend"], false);
        assert!(spec["template"]["spec"].get("restartPolicy").is_none());
        assert_eq!(spec["template"]["spec"]["dnsPolicy"], "ClusterFirst");
        assert_eq!(job["metadata"]["labels"], json!({"a": "b"}));
        assert!(spec.get("selector").is_none(), "no uid yet, no selector");
        let parallel = defaulted("Job", json!({"spec": {"parallelism": 3}}));
        assert!(parallel["spec"].get("completions").is_none());
    }

    #[test]
    fn job_selector_is_generated_from_uid() {
        let job = defaulted(
            "Job",
            json!({"metadata": {"name": "pi", "uid": "u-1"}, "spec": {"template": {"spec": {}}}}),
        );
        assert_eq!(
            job["spec"]["selector"],
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": "u-1"}})
        );
        let want_labels = json!({
            "job-name": "pi", "batch.kubernetes.io/job-name": "pi",
            "controller-uid": "u-1", "batch.kubernetes.io/controller-uid": "u-1"
        });
        assert_eq!(job["spec"]["template"]["metadata"]["labels"], want_labels);
        assert_eq!(job["metadata"]["labels"], want_labels);
        // Defaulting again (an update) changes nothing.
        assert_eq!(defaulted("Job", job.clone()), job);

        let labelled = defaulted(
            "Job",
            json!({"metadata": {"name": "pi", "uid": "u-1"}, "spec": {"template": {"metadata": {"labels": {"app": "pi"}}}}}),
        );
        assert_eq!(labelled["metadata"]["labels"], json!({"app": "pi"}));
        let manual = defaulted(
            "Job",
            json!({"metadata": {"name": "pi", "uid": "u-1"}, "spec": {"manualSelector": true}}),
        );
        assert!(manual["spec"].get("selector").is_none());
    }

    #[test]
    fn service_defaults() {
        let svc = defaulted(
            "Service",
            json!({"spec": {"ports": [{"port": 80}, {"port": 443, "targetPort": "https"}]}}),
        );
        let spec = &svc["spec"];
        assert_eq!(spec["type"], "ClusterIP");
        assert_eq!(spec["sessionAffinity"], "None");
        assert_eq!(spec["ports"][0]["protocol"], "TCP");
        assert_eq!(spec["ports"][0]["targetPort"], 80);
        assert_eq!(spec["ports"][1]["targetPort"], "https");
        assert_eq!(spec["ipFamilyPolicy"], "SingleStack");
        assert_eq!(spec["internalTrafficPolicy"], "Cluster");
        assert!(spec.get("externalTrafficPolicy").is_none());
        let np = defaulted("Service", json!({"spec": {"type": "NodePort"}}));
        assert_eq!(np["spec"]["externalTrafficPolicy"], "Cluster");
        let ext = defaulted(
            "Service",
            json!({"spec": {"type": "ExternalName", "externalName": "x.com"}}),
        );
        assert!(ext["spec"].get("ipFamilyPolicy").is_none());
    }

    #[test]
    fn secret_namespace_node() {
        assert_eq!(defaulted("Secret", json!({}))["type"], "Opaque");
        let merged = defaulted(
            "Secret",
            json!({"data": {"a": "eA==", "b": "eA=="}, "stringData": {"b": "hello", "c": "hi!"}}),
        );
        assert_eq!(
            merged,
            json!({"type": "Opaque", "data": {"a": "eA==", "b": "aGVsbG8=", "c": "aGkh"}})
        );
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"ab"), "YWI=");
        assert_eq!(
            defaulted("Secret", json!({"type": "kubernetes.io/tls"}))["type"],
            "kubernetes.io/tls"
        );
        let ns = defaulted("Namespace", json!({"metadata": {"name": "x"}}));
        assert_eq!(ns["spec"]["finalizers"], json!(["kubernetes"]));
        assert_eq!(ns["status"]["phase"], "Active");
        assert_eq!(ns["metadata"]["labels"][NAMESPACE_NAME_LABEL], "x");
        let relabeled = defaulted(
            "Namespace",
            json!({"metadata": {"name": "x", "labels": {NAMESPACE_NAME_LABEL: "y", "team": "a"}}}),
        );
        assert_eq!(
            relabeled["metadata"]["labels"],
            json!({NAMESPACE_NAME_LABEL: "x", "team": "a"})
        );
        let node = defaulted("Node", json!({"status": {"capacity": {"cpu": "2"}}}));
        assert_eq!(node["status"]["allocatable"], json!({"cpu": "2"}));
        let cm = defaulted("ConfigMap", json!({"data": {}}));
        assert_eq!(cm, json!({"data": {}}));
    }
}
