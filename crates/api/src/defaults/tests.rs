use serde_json::{json, Value};

use super::*;
use crate::kinds::{self, KindRules};

fn defaulted(rules: &KindRules, mut obj: Value) -> Value {
    rules.apply_defaults(&mut obj);
    obj
}

#[test]
fn pod_defaults() {
    let pod = defaulted(
        &kinds::POD,
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
        &kinds::POD,
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
        &kinds::POD,
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
        &kinds::DEPLOYMENT,
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
        &kinds::DEPLOYMENT,
        json!({"spec": {"strategy": {"type": "Recreate"}}}),
    );
    assert!(recreate["spec"]["strategy"].get("rollingUpdate").is_none());
}

#[test]
fn other_workloads() {
    let rs = defaulted(&kinds::REPLICA_SET, json!({"spec": {}}));
    assert_eq!(rs["spec"]["replicas"], 1);
    let ds = defaulted(&kinds::DAEMON_SET, json!({"spec": {}}));
    assert_eq!(
        ds["spec"]["updateStrategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}})
    );
    assert_eq!(ds["spec"]["revisionHistoryLimit"], 10);
    let sts = defaulted(&kinds::STATEFUL_SET, json!({"spec": {}}));
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
        &kinds::JOB,
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
    let parallel = defaulted(&kinds::JOB, json!({"spec": {"parallelism": 3}}));
    assert!(parallel["spec"].get("completions").is_none());
}

#[test]
fn job_selector_is_generated_from_uid() {
    let job = defaulted(
        &kinds::JOB,
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
    assert_eq!(defaulted(&kinds::JOB, job.clone()), job);

    let labelled = defaulted(
        &kinds::JOB,
        json!({"metadata": {"name": "pi", "uid": "u-1"}, "spec": {"template": {"metadata": {"labels": {"app": "pi"}}}}}),
    );
    assert_eq!(labelled["metadata"]["labels"], json!({"app": "pi"}));
    let manual = defaulted(
        &kinds::JOB,
        json!({"metadata": {"name": "pi", "uid": "u-1"}, "spec": {"manualSelector": true}}),
    );
    assert!(manual["spec"].get("selector").is_none());
}

#[test]
fn service_defaults() {
    let svc = defaulted(
        &kinds::SERVICE,
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
    let np = defaulted(&kinds::SERVICE, json!({"spec": {"type": "NodePort"}}));
    assert_eq!(np["spec"]["externalTrafficPolicy"], "Cluster");
    let ext = defaulted(
        &kinds::SERVICE,
        json!({"spec": {"type": "ExternalName", "externalName": "x.com"}}),
    );
    assert!(ext["spec"].get("ipFamilyPolicy").is_none());
}

#[test]
fn secret_namespace_node() {
    assert_eq!(defaulted(&kinds::SECRET, json!({}))["type"], "Opaque");
    let merged = defaulted(
        &kinds::SECRET,
        json!({"data": {"a": "eA==", "b": "eA=="}, "stringData": {"b": "hello", "c": "hi!"}}),
    );
    assert_eq!(
        merged,
        json!({"type": "Opaque", "data": {"a": "eA==", "b": "aGVsbG8=", "c": "aGkh"}})
    );
    assert_eq!(
        defaulted(&kinds::SECRET, json!({"type": "kubernetes.io/tls"}))["type"],
        "kubernetes.io/tls"
    );
    let ns = defaulted(&kinds::NAMESPACE, json!({"metadata": {"name": "x"}}));
    assert_eq!(ns["spec"]["finalizers"], json!(["kubernetes"]));
    assert_eq!(ns["status"]["phase"], "Active");
    assert_eq!(ns["metadata"]["labels"][NAMESPACE_NAME_LABEL], "x");
    let relabeled = defaulted(
        &kinds::NAMESPACE,
        json!({"metadata": {"name": "x", "labels": {NAMESPACE_NAME_LABEL: "y", "team": "a"}}}),
    );
    assert_eq!(
        relabeled["metadata"]["labels"],
        json!({NAMESPACE_NAME_LABEL: "x", "team": "a"})
    );
    let node = defaulted(&kinds::NODE, json!({"status": {"capacity": {"cpu": "2"}}}));
    assert_eq!(node["status"]["allocatable"], json!({"cpu": "2"}));
    let cm = defaulted(&kinds::CONFIG_MAP, json!({"data": {}}));
    assert_eq!(cm, json!({"data": {}}));
}
