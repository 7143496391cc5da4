use serde_json::{json, Value};

use super::*;
use crate::kinds;
use crate::registry::{find_kind, ResourceInfo};
use crate::status::StatusCause;

/// What the API server checks on create, by the rules of the resource's kind.
fn validate_create(resource: &ResourceInfo, obj: &Value) -> Vec<StatusCause> {
    let rules = kinds::find(resource.kind).unwrap();
    rules.validate_create(resource, obj)
}

/// What the API server checks on update, by the rules of the resource's kind.
fn validate_update(resource: &ResourceInfo, new: &Value, old: &Value) -> Vec<StatusCause> {
    let rules = kinds::find(resource.kind).unwrap();
    rules.validate_update(resource, new, old)
}

fn info(kind: &str) -> &'static ResourceInfo {
    crate::registry::REGISTRY
        .iter()
        .find(|r| r.kind == kind)
        .unwrap()
}

/// What the server does on create: default, then validate.
fn create(kind: &str, obj: &Value) -> Vec<StatusCause> {
    let mut obj = obj.clone();
    kinds::find(kind).unwrap().apply_defaults(&mut obj);
    validate_create(info(kind), &obj)
}

fn messages(errs: &[StatusCause]) -> Vec<String> {
    errs.iter().map(StatusCause::describe).collect()
}

fn has(errs: &[StatusCause], needle: &str) -> bool {
    errs.iter().any(|e| e.describe().contains(needle))
}

fn pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
        "spec": {
            "restartPolicy": "Always",
            "dnsPolicy": "ClusterFirst",
            "containers": [{
                "name": "c", "image": "nginx",
                "imagePullPolicy": "IfNotPresent",
                "terminationMessagePolicy": "File",
                "ports": [{"containerPort": 80, "protocol": "TCP"}]
            }]
        }
    })
}

fn deployment() -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": pod()["spec"].clone()
            }
        }
    })
}

#[test]
fn valid_pod_passes() {
    let errs = validate_create(info("Pod"), &pod());
    assert!(errs.is_empty(), "{:?}", messages(&errs));
}

#[test]
fn bad_name_uses_upstream_message() {
    let mut p = pod();
    p["metadata"]["name"] = json!("Foo");
    let errs = validate_create(info("Pod"), &p);
    assert_eq!(
        messages(&errs),
        vec!["metadata.name: Invalid value: \"Foo\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"]
    );
    assert_eq!(errs[0].reason, "FieldValueInvalid");
    assert_eq!(errs[0].field, "metadata.name");
}

#[test]
fn name_rules_per_kind() {
    let ns = json!({"metadata": {"name": "a.b"}});
    assert!(has(
        &validate_create(info("Namespace"), &ns),
        "must not contain dots"
    ));
    let svc = json!({"metadata": {"name": "1svc", "namespace": "d"}, "spec": {"ports": [{"port": 80, "protocol": "TCP"}]}});
    assert!(has(
        &validate_create(info("Service"), &svc),
        "a DNS-1035 label"
    ));
    let missing = json!({"metadata": {"namespace": "d"}, "data": {}});
    assert_eq!(
        messages(&validate_create(info("ConfigMap"), &missing)),
        vec!["metadata.name: Required value: name or generateName is required"]
    );
    let forbidden_ns = json!({"metadata": {"name": "n1", "namespace": "x"}});
    assert!(has(
        &validate_create(info("Node"), &forbidden_ns),
        "metadata.namespace: Forbidden: not allowed on this type"
    ));
}

#[test]
fn labels_and_annotations() {
    let mut p = pod();
    p["metadata"]["labels"] = json!({"bad key": "v", "ok": "-bad"});
    p["metadata"]["annotations"] = json!({"big": "x".repeat(TOTAL_ANNOTATION_SIZE_LIMIT)});
    let errs = validate_create(info("Pod"), &p);
    assert!(has(
        &errs,
        "metadata.labels: Invalid value: \"bad key\": name part must consist of"
    ));
    assert!(has(
        &errs,
        "metadata.labels: Invalid value: \"-bad\": a valid label must be an empty string"
    ));
    assert!(has(
        &errs,
        "metadata.annotations: Too long: may not be more than 262144 bytes"
    ));
}

#[test]
fn pod_spec_problems_are_all_reported() {
    let mut p = pod();
    p["spec"]["restartPolicy"] = json!("Sometimes");
    p["spec"]["volumes"] = json!([
        {"name": "v", "emptyDir": {}},
        {"name": "v", "emptyDir": {}, "hostPath": {"path": "/x"}},
        {"name": "none"}
    ]);
    p["spec"]["initContainers"] = json!([{"name": "c", "image": "busybox"}]);
    p["spec"]["containers"][0]["ports"] = json!([
        {"containerPort": 70000, "protocol": "TCP", "name": "http"},
        {"containerPort": 81, "protocol": "XTP", "name": "http", "hostPort": 70000}
    ]);
    p["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "missing", "mountPath": "/m"}]);
    p["spec"]["containers"][0]["env"] = json!([{"name": "A=B", "value": "x"}]);
    p["spec"]["containers"][0]["image"] = json!("");
    let errs = validate_create(info("Pod"), &p);
    let want = [
        "spec.restartPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\"",
        "spec.volumes[1].name: Duplicate value: \"v\"",
        "spec.volumes[1].hostPath: Forbidden: may not specify more than 1 volume type",
        "spec.volumes[2]: Required value: must specify a volume type",
        "spec.containers[0].name: Duplicate value: \"c\"",
        "spec.containers[0].image: Required value",
        "spec.containers[0].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
        "spec.containers[0].ports[1].name: Duplicate value: \"http\"",
        "spec.containers[0].ports[1].hostPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
        "spec.containers[0].ports[1].protocol: Unsupported value: \"XTP\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
        "spec.containers[0].volumeMounts[0].name: Not found: \"missing\"",
        "spec.containers[0].env[0].name: Invalid value: \"A=B\": a valid environment variable name must consist only of printable ASCII characters other than '='",
    ];
    let got = messages(&errs);
    for w in want {
        assert!(got.iter().any(|g| g == w), "missing {w}\n got {got:#?}");
    }
}

#[test]
fn empty_containers_required() {
    let mut p = pod();
    p["spec"]["containers"] = json!([]);
    assert!(has(
        &validate_create(info("Pod"), &p),
        "spec.containers: Required value"
    ));
}

#[test]
fn resources_requests_must_not_exceed_limits() {
    let mut p = pod();
    p["spec"]["containers"][0]["resources"] = json!({
        "requests": {"cpu": "2", "memory": "1Gi"},
        "limits": {"cpu": "1500m", "memory": "1073741824"}
    });
    let errs = validate_create(info("Pod"), &p);
    assert_eq!(
        messages(&errs),
        vec!["spec.containers[0].resources.requests[cpu]: Invalid value: \"2\": must be less than or equal to cpu limit of 1500m"]
    );
    p["spec"]["containers"][0]["resources"] = json!({"limits": {"cpu": "lots"}});
    assert!(has(
        &validate_create(info("Pod"), &p),
        "quantities must match the regular expression"
    ));
}

#[test]
fn pod_update_only_allows_images() {
    let old = pod();
    let mut new = pod();
    new["spec"]["containers"][0]["image"] = json!("nginx:2");
    new["metadata"]["labels"]["extra"] = json!("x");
    assert!(validate_update(info("Pod"), &new, &old).is_empty());
    new["spec"]["containers"][0]["ports"][0]["containerPort"] = json!(8080);
    new["spec"]["tolerations"] = json!([{"key": "k", "operator": "Exists"}]);
    let errs = validate_update(info("Pod"), &new, &old);
    assert_eq!(errs.len(), 1, "{:?}", messages(&errs));
    assert_eq!(errs[0].field, "spec");
    assert_eq!(errs[0].reason, "FieldValueForbidden");
    assert!(errs[0].message.starts_with(
        "Forbidden: pod updates may not change fields other than `spec.containers[*].image`"
    ));
    assert!(errs[0]
        .message
        .contains("spec.containers[0].ports[0].containerPort: 80 -> 8080"));
    assert!(!errs[0].message.contains("spec.tolerations: null"));
}

#[test]
fn deployment_selector_must_match_template() {
    let d = deployment();
    assert!(
        validate_create(info("Deployment"), &d).is_empty(),
        "{:?}",
        messages(&validate_create(info("Deployment"), &d))
    );
    let mut bad = deployment();
    bad["spec"]["template"]["metadata"]["labels"] = json!({"app": "other"});
    bad["spec"]["replicas"] = json!(-1);
    bad["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
    bad["spec"]["strategy"]["rollingUpdate"] = json!({"maxSurge": 0, "maxUnavailable": "0%"});
    let got = messages(&validate_create(info("Deployment"), &bad));
    for w in [
        "spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"other\"}: `selector` does not match template `labels`",
        "spec.replicas: Invalid value: -1: must be greater than or equal to 0",
        "spec.template.spec.restartPolicy: Unsupported value: \"Never\": supported values: \"Always\"",
        "spec.strategy.rollingUpdate.maxUnavailable: Invalid value: 0%: may not be 0 when `maxSurge` is 0",
    ] {
        assert!(got.iter().any(|g| g == w), "missing {w}\n got {got:#?}");
    }
    let mut none = deployment();
    none["spec"].as_object_mut().unwrap().remove("selector");
    assert!(has(
        &validate_create(info("Deployment"), &none),
        "spec.selector: Required value"
    ));
    let mut empty = deployment();
    empty["spec"]["selector"] = json!({});
    assert!(has(
        &validate_create(info("Deployment"), &empty),
        "empty selector is invalid for deployment"
    ));
}

#[test]
fn workload_selector_is_immutable() {
    let old = deployment();
    let mut new = deployment();
    new["spec"]["selector"] = json!({"matchLabels": {"app": "web", "v": "2"}});
    new["spec"]["template"]["metadata"]["labels"] = json!({"app": "web", "v": "2"});
    let errs = validate_update(info("Deployment"), &new, &old);
    assert_eq!(
        messages(&errs),
        vec!["spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string{\"app\":\"web\", \"v\":\"2\"}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: field is immutable"]
    );
}

#[test]
fn job_restart_policy_and_counts() {
    let mut job = json!({
        "metadata": {"name": "j", "namespace": "default"},
        "spec": {
            "parallelism": -1,
            "template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}
        }
    });
    let got = messages(&create("Job", &job));
    assert!(got.contains(&"spec.template.spec.restartPolicy: Required value: valid values: \"OnFailure\", \"Never\"".to_string()), "{got:?}");
    assert!(got.contains(
        &"spec.parallelism: Invalid value: -1: must be greater than or equal to 0".to_string()
    ));
    job["spec"]["parallelism"] = json!(1);
    job["spec"]["template"]["spec"]["restartPolicy"] = json!("Always");
    let got = messages(&create("Job", &job));
    assert_eq!(got, vec!["spec.template.spec.restartPolicy: Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\""]);
    job["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
    assert!(create("Job", &job).is_empty());
}

fn service() -> Value {
    json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "type": "ClusterIP", "clusterIP": "10.96.0.10", "sessionAffinity": "None",
            "selector": {"app": "web"},
            "ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}]
        }
    })
}

#[test]
fn service_ports() {
    assert!(validate_create(info("Service"), &service()).is_empty());
    let mut s = service();
    s["spec"]["ports"] = json!([
        {"port": 80, "protocol": "TCP", "targetPort": 80},
        {"name": "b", "port": 0, "protocol": "TCP", "targetPort": "Bad_Name", "nodePort": 31000}
    ]);
    s["spec"]["type"] = json!("Weird");
    let got = messages(&validate_create(info("Service"), &s));
    for w in [
        "spec.type: Unsupported value: \"Weird\": supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\"",
        "spec.ports[0].name: Required value",
        "spec.ports[1].port: Invalid value: 0: must be between 1 and 65535, inclusive",
    ] {
        assert!(got.iter().any(|g| g == w), "missing {w}\n got {got:#?}");
    }
    let mut np = service();
    np["spec"]["type"] = json!("NodePort");
    np["spec"]["ports"][0]["nodePort"] = json!(80);
    assert!(has(&validate_create(info("Service"), &np), "spec.ports[0].nodePort: Invalid value: 80: provided port is not in the valid range. The range of valid ports is 30000-32767"));
    let mut cip = service();
    cip["spec"]["ports"][0]["nodePort"] = json!(30001);
    assert!(has(
        &validate_create(info("Service"), &cip),
        "may not be used when `type` is 'ClusterIP'"
    ));
    let headless =
        json!({"metadata": {"name": "h", "namespace": "d"}, "spec": {"clusterIP": "None"}});
    assert!(validate_create(info("Service"), &headless).is_empty());
    let no_ports = json!({"metadata": {"name": "h", "namespace": "d"}, "spec": {}});
    assert!(has(
        &validate_create(info("Service"), &no_ports),
        "spec.ports: Required value"
    ));
}

#[test]
fn service_cluster_ip_is_immutable() {
    let old = service();
    let mut new = service();
    new["spec"]["clusterIP"] = json!("10.96.0.11");
    assert_eq!(
        messages(&validate_update(info("Service"), &new, &old)),
        vec![
            "spec.clusterIPs[0]: Invalid value: []string{\"10.96.0.11\"}: may not change once set"
        ]
    );
    new["spec"]["clusterIP"] = json!("");
    assert!(validate_update(info("Service"), &new, &old).is_empty());
}

#[test]
fn configmap_and_secret_keys() {
    let cm = json!({"metadata": {"name": "c", "namespace": "d"}, "data": {"ok.key": "1", "bad key": "2"}});
    assert_eq!(
        messages(&validate_create(info("ConfigMap"), &cm)),
        vec!["data[bad key]: Invalid value: \"bad key\": a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"]
    );
    let tls = json!({"metadata": {"name": "s", "namespace": "d"}, "type": "kubernetes.io/tls", "data": {"tls.crt": "eA=="}});
    assert_eq!(
        messages(&validate_create(info("Secret"), &tls)),
        vec!["data[tls.key]: Required value"]
    );
    let old = json!({"metadata": {"name": "s", "namespace": "d"}, "type": "Opaque"});
    let new = json!({"metadata": {"name": "s", "namespace": "d"}, "type": "Other"});
    assert!(has(
        &validate_update(info("Secret"), &new, &old),
        "type: Invalid value: \"Other\": field is immutable"
    ));
    let frozen =
        json!({"metadata": {"name": "c", "namespace": "d"}, "immutable": true, "data": {"a": "1"}});
    let changed =
        json!({"metadata": {"name": "c", "namespace": "d"}, "immutable": true, "data": {"a": "2"}});
    assert!(has(
        &validate_update(info("ConfigMap"), &changed, &frozen),
        "data: Forbidden: field is immutable when `immutable` is set"
    ));
}

#[test]
fn statefulset_and_daemonset() {
    let mut sts = deployment();
    let spec = sts["spec"].as_object_mut().unwrap();
    spec.remove("strategy");
    spec.insert("podManagementPolicy".into(), json!("OrderedReady"));
    spec.insert(
        "updateStrategy".into(),
        json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
    );
    spec.insert("serviceName".into(), json!("web"));
    assert!(
        validate_create(info("StatefulSet"), &sts).is_empty(),
        "{:?}",
        messages(&validate_create(info("StatefulSet"), &sts))
    );
    let mut changed = sts.clone();
    changed["spec"]["serviceName"] = json!("other");
    assert!(has(
        &validate_update(info("StatefulSet"), &changed, &sts),
        "spec: Forbidden: updates to statefulset spec for fields other than"
    ));
    let mut scaled = sts.clone();
    scaled["spec"]["replicas"] = json!(3);
    assert!(validate_update(info("StatefulSet"), &scaled, &sts).is_empty());

    let mut ds = deployment();
    let spec = ds["spec"].as_object_mut().unwrap();
    spec.remove("strategy");
    spec.remove("replicas");
    spec.insert(
        "updateStrategy".into(),
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 0}}),
    );
    assert_eq!(
        messages(&validate_create(info("DaemonSet"), &ds)),
        vec!["spec.updateStrategy.rollingUpdate.maxUnavailable: Required value: cannot be 0 when maxSurge is 0"]
    );
    ds["spec"]["updateStrategy"]["rollingUpdate"] = json!({"maxUnavailable": 1, "maxSurge": "10%"});
    ds["spec"]["template"]["spec"]["activeDeadlineSeconds"] = json!(5);
    assert_eq!(
        messages(&validate_create(info("DaemonSet"), &ds)),
        vec![
            "spec.template.spec.activeDeadlineSeconds: Forbidden: activeDeadlineSeconds in DaemonSet is not Supported",
            "spec.updateStrategy.rollingUpdate.maxSurge: Invalid value: 10%: may not be set when maxUnavailable is non-zero",
        ]
    );
}

#[test]
fn registry_kinds_without_rules_only_check_meta() {
    let lease = json!({"metadata": {"name": "l", "namespace": "kube-node-lease"}, "spec": {"holderIdentity": "n1"}});
    assert!(validate_create(find_kind("coordination.k8s.io", "Lease").unwrap(), &lease).is_empty());
}

#[test]
fn defaulted_minimal_manifests_are_valid() {
    let c = json!([{"name": "c", "image": "nginx"}]);
    let template = json!({"metadata": {"labels": {"app": "x"}}, "spec": {"containers": c}});
    let meta = json!({"name": "x", "namespace": "default"});
    let cases = [
        ("Pod", json!({"metadata": meta, "spec": {"containers": c}})),
        (
            "Deployment",
            json!({"metadata": meta, "spec": {"selector": {"matchLabels": {"app": "x"}}, "template": template}}),
        ),
        (
            "ReplicaSet",
            json!({"metadata": meta, "spec": {"selector": {"matchLabels": {"app": "x"}}, "template": template}}),
        ),
        (
            "DaemonSet",
            json!({"metadata": meta, "spec": {"selector": {"matchLabels": {"app": "x"}}, "template": template}}),
        ),
        (
            "StatefulSet",
            json!({"metadata": meta, "spec": {"serviceName": "x", "selector": {"matchLabels": {"app": "x"}}, "template": template}}),
        ),
        (
            "Job",
            json!({"metadata": {"name": "x", "namespace": "default", "uid": "u1"},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": c}}}}),
        ),
        (
            "Service",
            json!({"metadata": meta, "spec": {"selector": {"app": "x"}, "ports": [{"port": 80}]}}),
        ),
        (
            "Service",
            json!({"metadata": meta, "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}}),
        ),
        ("ConfigMap", json!({"metadata": meta, "data": {"a": "b"}})),
        (
            "Secret",
            json!({"metadata": meta, "stringData": {"a": "b"}}),
        ),
        ("Namespace", json!({"metadata": {"name": "x"}})),
        (
            "Node",
            json!({"metadata": {"name": "node-1"}, "status": {"capacity": {"cpu": "2"}}}),
        ),
    ];
    for (kind, obj) in cases {
        let errs = create(kind, &obj);
        assert!(errs.is_empty(), "{kind}: {:?}", messages(&errs));
    }
}

#[test]
fn template_images_are_required_but_padding_only_matters_for_pods() {
    let mut d = deployment();
    d["spec"]["template"]["spec"]["containers"][0]["image"] = json!(" nginx ");
    assert!(validate_create(info("Deployment"), &d).is_empty());
    d["spec"]["template"]["spec"]["containers"][0]["image"] = json!("");
    assert_eq!(
        messages(&validate_create(info("Deployment"), &d)),
        vec!["spec.template.spec.containers[0].image: Required value"]
    );
    let mut p = pod();
    p["spec"]["containers"][0]["image"] = json!(" nginx");
    assert!(has(
        &validate_create(info("Pod"), &p),
        "must not have leading or trailing whitespace"
    ));
}

#[test]
fn deployment_progress_deadline_and_strategy() {
    let mut d = deployment();
    d["spec"]["progressDeadlineSeconds"] = json!(10);
    d["spec"]["minReadySeconds"] = json!(10);
    assert!(has(
        &validate_create(info("Deployment"), &d),
        "spec.progressDeadlineSeconds: Invalid value: 10: must be greater than minReadySeconds"
    ));
    let mut r = deployment();
    r["spec"]["strategy"] = json!({"type": "Recreate", "rollingUpdate": {"maxSurge": 1}});
    assert_eq!(
        messages(&validate_create(info("Deployment"), &r)),
        vec!["spec.strategy.rollingUpdate: Forbidden: may not be specified when strategy `type` is 'Recreate'"]
    );
    let mut pct = deployment();
    pct["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] = json!("120%");
    assert!(has(
        &validate_create(info("Deployment"), &pct),
        "maxUnavailable: Invalid value: 120%: must not be greater than 100%"
    ));
}

#[test]
fn tolerations_and_container_restart_policies() {
    let mut p = pod();
    p["spec"]["tolerations"] = json!([
        {"operator": "Exists"},
        {"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule"},
        {"operator": "Equal", "value": "v"},
        {"key": "k", "operator": "Exists", "value": "v"},
        {"key": "k", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 5},
        {"key": "k", "operator": "Exists", "effect": "Sometimes"}
    ]);
    p["spec"]["initContainers"] = json!([{"name": "side", "image": "x", "imagePullPolicy": "Always",
        "terminationMessagePolicy": "File", "restartPolicy": "OnFailure"}]);
    p["spec"]["containers"][0]["restartPolicy"] = json!("Always");
    assert_eq!(
        messages(&validate_create(info("Pod"), &p)),
        vec![
            "spec.initContainers[0].restartPolicy: Unsupported value: \"OnFailure\": supported values: \"Always\"",
            "spec.containers[0].restartPolicy: Forbidden: may not be set for non-init containers",
            "spec.tolerations[2].operator: Invalid value: \"Equal\": operator must be Exists when `key` is empty, which means \"match all values and all keys\"",
            "spec.tolerations[3].operator: Invalid value: \"v\": value must be empty when `operator` is 'Exists'",
            "spec.tolerations[4].effect: Invalid value: \"NoSchedule\": effect must be 'NoExecute' when `tolerationSeconds` is set",
            "spec.tolerations[5].effect: Unsupported value: \"Sometimes\": supported values: \"NoSchedule\", \"PreferNoSchedule\", \"NoExecute\"",
        ]
    );
}

#[test]
fn probes_take_no_negative_timings() {
    let mut p = pod();
    p["spec"]["containers"][0]["livenessProbe"] = json!({"exec": {"command": ["true"]},
        "periodSeconds": -1, "initialDelaySeconds": -5, "successThreshold": 2,
        "terminationGracePeriodSeconds": 0});
    p["spec"]["containers"][0]["readinessProbe"] =
        json!({"exec": {"command": ["true"]}, "successThreshold": 3, "failureThreshold": -1});
    let errs = create("Pod", &p);
    for expected in [
        "spec.containers[0].livenessProbe.periodSeconds: Invalid value: -1: must be greater than or equal to 0",
        "spec.containers[0].livenessProbe.initialDelaySeconds: Invalid value: -5: must be greater than or equal to 0",
        "spec.containers[0].livenessProbe.successThreshold: Invalid value: 2: must be 1",
        "spec.containers[0].livenessProbe.terminationGracePeriodSeconds: Invalid value: 0: must be greater than 0",
        "spec.containers[0].readinessProbe.failureThreshold: Invalid value: -1: must be greater than or equal to 0",
    ] {
        assert!(has(&errs, expected), "{expected} not in {:?}", messages(&errs));
    }
    assert!(
        !has(&errs, "readinessProbe.successThreshold"),
        "{:?}",
        messages(&errs)
    );
}
