use chrono::{Duration, TimeZone};
use serde_json::json;

use super::*;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap()
}

fn ago(seconds: i64) -> String {
    (now() - Duration::seconds(seconds)).to_rfc3339()
}

/// The printer of a kind, by name (the API server looks them up through its strategies).
fn printer(kind: &str) -> &'static Printer {
    match kind {
        "Pod" => &POD,
        "Deployment" => &DEPLOYMENT,
        "ReplicaSet" => &REPLICA_SET,
        "DaemonSet" => &DAEMON_SET,
        "StatefulSet" => &STATEFUL_SET,
        "Job" => &JOB,
        "Service" => &SERVICE,
        "Endpoints" => &ENDPOINTS,
        "EndpointSlice" => &ENDPOINT_SLICE,
        "Node" => &NODE,
        "Namespace" => &NAMESPACE,
        "Event" => &EVENT,
        "ConfigMap" => &CONFIG_MAP,
        "Secret" => &SECRET,
        "ServiceAccount" => &SERVICE_ACCOUNT,
        "Lease" => &LEASE,
        "PodDisruptionBudget" => &POD_DISRUPTION_BUDGET,
        _ => &DEFAULT,
    }
}

fn columns(kind: &str) -> Vec<Value> {
    printer(kind).columns()
}

fn cells(kind: &str, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    printer(kind).cells(obj, now)
}

fn names(kind: &str) -> Vec<String> {
    columns(kind)
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

fn wide(kind: &str) -> Vec<String> {
    columns(kind)
        .iter()
        .filter(|c| c["priority"] == 1)
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn human_duration_matches_upstream() {
    let cases = [
        (-5, "<invalid>"),
        (-1, "0s"),
        (0, "0s"),
        (5, "5s"),
        (119, "119s"),
        (120, "2m"),
        (200, "3m20s"),
        (599, "9m59s"),
        (600, "10m"),
        (179 * 60, "179m"),
        (3 * 3600, "3h"),
        (3 * 3600 + 25 * 60, "3h25m"),
        (8 * 3600, "8h"),
        (47 * 3600, "47h"),
        (48 * 3600, "2d"),
        (51 * 3600, "2d3h"),
        (8 * 86400, "8d"),
        (729 * 86400, "729d"),
        (730 * 86400, "2y"),
        (800 * 86400, "2y70d"),
        (9 * 365 * 86400, "9y"),
    ];
    for (secs, want) in cases {
        assert_eq!(human_duration(Duration::seconds(secs)), want, "{secs}s");
    }
}

#[test]
fn age_is_unknown_without_timestamp() {
    let obj = json!({"metadata": {"name": "x"}});
    assert_eq!(cells("ConfigMap", &obj, now())[2], "<unknown>");
    assert_eq!(since(&json!(ago(200)), now()), "3m20s");
}

#[test]
fn every_printer_has_a_name_column_with_name_format_and_matching_cells() {
    for kind in [
        "Pod",
        "Deployment",
        "ReplicaSet",
        "DaemonSet",
        "StatefulSet",
        "Job",
        "Service",
        "Endpoints",
        "EndpointSlice",
        "Node",
        "Namespace",
        "Event",
        "ConfigMap",
        "Secret",
        "ServiceAccount",
        "Lease",
        "PodDisruptionBudget",
        "Unknown",
    ] {
        let cols = columns(kind);
        let name_col = cols.iter().find(|c| c["name"] == "Name").unwrap();
        assert_eq!(name_col["format"], "name", "{kind}");
        assert!(cols
            .iter()
            .filter(|c| c["name"] != "Name")
            .all(|c| c["format"] == ""));
        let obj = json!({"metadata": {"name": "x", "creationTimestamp": ago(10)}});
        assert_eq!(cells(kind, &obj, now()).len(), cols.len(), "{kind}");
    }
}

fn running_pod() -> Value {
    json!({
        "metadata": {"name": "web", "creationTimestamp": ago(300)},
        "spec": {"nodeName": "n1", "containers": [{"name": "a"}, {"name": "b"}]},
        "status": {
            "phase": "Running",
            "podIPs": [{"ip": "10.0.0.7"}],
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 0, "state": {"running": {}}},
                {"name": "b", "ready": true, "restartCount": 3, "state": {"running": {}},
                 "lastState": {"terminated": {"exitCode": 1, "finishedAt": ago(120)}}}
            ]
        }
    })
}

#[test]
fn pod_row() {
    assert_eq!(
        names("Pod"),
        [
            "Name",
            "Ready",
            "Status",
            "Restarts",
            "Age",
            "IP",
            "Node",
            "Nominated Node",
            "Readiness Gates"
        ]
    );
    assert_eq!(
        wide("Pod"),
        ["IP", "Node", "Nominated Node", "Readiness Gates"]
    );
    let row = cells("Pod", &running_pod(), now());
    assert_eq!(
        row,
        vec![
            json!("web"),
            json!("2/2"),
            json!("Running"),
            json!("3 (2m ago)"),
            json!("5m"),
            json!("10.0.0.7"),
            json!("n1"),
            json!("<none>"),
            json!("<none>")
        ]
    );
}

#[test]
fn pod_status_reasons() {
    let pending = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}, "status": {"phase": "Pending"}});
    let row = cells("Pod", &pending, now());
    assert_eq!(row[1], "0/1");
    assert_eq!(row[2], "Pending");
    assert_eq!(row[3], "0");
    assert_eq!(row[5], "<none>");

    let mut creating = pending.clone();
    creating["status"]["containerStatuses"] = json!([{"name": "a", "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}}]);
    assert_eq!(cells("Pod", &creating, now())[2], "ContainerCreating");

    let mut crash = running_pod();
    crash["status"]["containerStatuses"][1]["state"] =
        json!({"waiting": {"reason": "CrashLoopBackOff"}});
    crash["status"]["containerStatuses"][1]["ready"] = json!(false);
    let row = cells("Pod", &crash, now());
    assert_eq!(row[1], "1/2");
    assert_eq!(row[2], "CrashLoopBackOff");

    let done = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}, "status": {"phase": "Succeeded",
        "containerStatuses": [{"name": "a", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}});
    assert_eq!(cells("Pod", &done, now())[2], "Completed");

    let mut exit = done.clone();
    exit["status"]["containerStatuses"][0]["state"] = json!({"terminated": {"exitCode": 2}});
    assert_eq!(cells("Pod", &exit, now())[2], "ExitCode:2");

    let mut deleting = running_pod();
    deleting["metadata"]["deletionTimestamp"] = json!(ago(1));
    assert_eq!(cells("Pod", &deleting, now())[2], "Terminating");
    let mut deleted_done = done.clone();
    deleted_done["metadata"]["deletionTimestamp"] = json!(ago(1));
    assert_eq!(cells("Pod", &deleted_done, now())[2], "Completed");

    let init = json!({"metadata": {"name": "p"},
    "spec": {"initContainers": [{"name": "i1"}, {"name": "i2"}], "containers": [{"name": "a"}]},
    "status": {"phase": "Pending", "initContainerStatuses": [
        {"name": "i1", "restartCount": 0, "state": {"terminated": {"exitCode": 0}}},
        {"name": "i2", "restartCount": 0, "state": {"running": {}}}
    ]}});
    assert_eq!(cells("Pod", &init, now())[2], "Init:1/2");
    let mut init_crash = init.clone();
    init_crash["status"]["initContainerStatuses"][1]["state"] =
        json!({"waiting": {"reason": "CrashLoopBackOff"}});
    assert_eq!(cells("Pod", &init_crash, now())[2], "Init:CrashLoopBackOff");

    let mut gated = pending.clone();
    gated["status"]["conditions"] =
        json!([{"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}]);
    assert_eq!(cells("Pod", &gated, now())[2], "SchedulingGated");

    let mut gates = running_pod();
    gates["spec"]["readinessGates"] = json!([{"conditionType": "Ready"}, {"conditionType": "x/y"}]);
    assert_eq!(cells("Pod", &gates, now())[8], "1/2");
}

#[test]
fn sidecar_init_containers_count_towards_ready() {
    let pod = json!({"metadata": {"name": "p"},
        "spec": {"initContainers": [{"name": "side", "restartPolicy": "Always"}], "containers": [{"name": "a"}]},
        "status": {"phase": "Running",
            "conditions": [{"type": "Initialized", "status": "True"}],
            "initContainerStatuses": [{"name": "side", "ready": true, "started": true, "restartCount": 1, "state": {"running": {}}}],
            "containerStatuses": [{"name": "a", "ready": true, "restartCount": 0, "state": {"running": {}}}]}});
    let row = cells("Pod", &pod, now());
    assert_eq!(row[1], "2/2");
    assert_eq!(row[2], "Running");
    assert_eq!(row[3], "1");
}

#[test]
fn deployment_and_replicaset_rows() {
    assert_eq!(
        names("Deployment"),
        [
            "Name",
            "Ready",
            "Up-to-date",
            "Available",
            "Age",
            "Containers",
            "Images",
            "Selector"
        ]
    );
    let d = json!({
        "metadata": {"name": "web", "creationTimestamp": ago(51 * 3600)},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web", "tier": "fe"}},
            "template": {"spec": {"containers": [{"name": "nginx", "image": "nginx:1"}, {"name": "side", "image": "busybox"}]}}},
        "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}
    });
    assert_eq!(
        cells("Deployment", &d, now()),
        vec![
            json!("web"),
            json!("2/3"),
            json!(3),
            json!(2),
            json!("2d3h"),
            json!("nginx,side"),
            json!("nginx:1,busybox"),
            json!("app=web,tier=fe")
        ]
    );
    assert_eq!(
        names("ReplicaSet"),
        [
            "Name",
            "Desired",
            "Current",
            "Ready",
            "Age",
            "Containers",
            "Images",
            "Selector"
        ]
    );
    let rs = json!({"metadata": {"name": "web-1"}, "spec": {"replicas": 2,
        "selector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["b", "a"]}]}},
        "status": {"replicas": 2}});
    let row = cells("ReplicaSet", &rs, now());
    assert_eq!(row[1..4], [json!(2), json!(2), json!(0)]);
    assert_eq!(row[7], "app in (a,b)");
}

#[test]
fn daemonset_and_statefulset_rows() {
    let ds = json!({"metadata": {"name": "agent"}, "spec": {"selector": {"matchLabels": {"a": "b"}},
        "template": {"spec": {"nodeSelector": {"kubernetes.io/os": "linux"}, "containers": [{"name": "c", "image": "i"}]}}},
        "status": {"desiredNumberScheduled": 3, "currentNumberScheduled": 3, "numberReady": 2, "updatedNumberScheduled": 3, "numberAvailable": 2}});
    let row = cells("DaemonSet", &ds, now());
    assert_eq!(
        row[1..7],
        [
            json!(3),
            json!(3),
            json!(2),
            json!(3),
            json!(2),
            json!("kubernetes.io/os=linux")
        ]
    );
    assert_eq!(
        names("StatefulSet"),
        ["Name", "Ready", "Age", "Containers", "Images"]
    );
    let sts = json!({"metadata": {"name": "db"}, "spec": {"replicas": 3}, "status": {"readyReplicas": 1}});
    assert_eq!(cells("StatefulSet", &sts, now())[1], "1/3");
}

#[test]
fn job_rows() {
    assert_eq!(
        names("Job"),
        [
            "Name",
            "Status",
            "Completions",
            "Duration",
            "Age",
            "Containers",
            "Images",
            "Selector"
        ]
    );
    let done = json!({"metadata": {"name": "j", "creationTimestamp": ago(600)},
        "spec": {"completions": 1, "parallelism": 1},
        "status": {"succeeded": 1, "startTime": ago(600), "completionTime": ago(590),
            "conditions": [{"type": "Complete", "status": "True"}]}});
    let row = cells("Job", &done, now());
    assert_eq!(
        row[1..5],
        [json!("Complete"), json!("1/1"), json!("10s"), json!("10m")]
    );
    let running = json!({"metadata": {"name": "j"}, "spec": {"parallelism": 3}, "status": {"startTime": ago(30)}});
    let row = cells("Job", &running, now());
    assert_eq!(
        row[1..4],
        [json!("Running"), json!("0/1 of 3"), json!("30s")]
    );
    let suspended = json!({"metadata": {"name": "j"}, "spec": {"completions": 2}, "status": {"conditions": [{"type": "Suspended", "status": "True"}]}});
    let row = cells("Job", &suspended, now());
    assert_eq!(row[1..4], [json!("Suspended"), json!("0/2"), json!("")]);
}

#[test]
fn service_rows() {
    assert_eq!(
        names("Service"),
        [
            "Name",
            "Type",
            "Cluster-IP",
            "External-IP",
            "Port(s)",
            "Age",
            "Selector"
        ]
    );
    let svc = json!({"metadata": {"name": "web"}, "spec": {"type": "NodePort", "clusterIPs": ["10.96.0.5"],
        "ports": [{"port": 80, "protocol": "TCP"}, {"port": 443, "nodePort": 30001, "protocol": "TCP"}],
        "selector": {"app": "web"}}});
    let row = cells("Service", &svc, now());
    assert_eq!(
        row[1..5],
        [
            json!("NodePort"),
            json!("10.96.0.5"),
            json!("<none>"),
            json!("80/TCP,443:30001/TCP")
        ]
    );
    assert_eq!(row[6], "app=web");
    let lb = json!({"metadata": {"name": "lb"}, "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.6"}});
    let row = cells("Service", &lb, now());
    assert_eq!(
        row[2..5],
        [json!("10.96.0.6"), json!("<pending>"), json!("<none>")]
    );
    assert_eq!(row[6], "<none>");
    let ext = json!({"metadata": {"name": "e"}, "spec": {"type": "ExternalName", "externalName": "example.com"}});
    assert_eq!(
        cells("Service", &ext, now())[2..4],
        [json!("<none>"), json!("example.com")]
    );
}

#[test]
fn endpoints_rows() {
    let ep = json!({"metadata": {"name": "web"}, "subsets": [{
        "addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}, {"ip": "10.0.0.3"}, {"ip": "10.0.0.4"}],
        "ports": [{"port": 80}]}]});
    assert_eq!(
        cells("Endpoints", &ep, now())[1],
        "10.0.0.1:80,10.0.0.2:80,10.0.0.3:80 + 1 more..."
    );
    assert_eq!(
        cells("Endpoints", &json!({"metadata": {"name": "x"}}), now())[1],
        "<none>"
    );
    let slice = json!({"metadata": {"name": "web-abc"}, "addressType": "IPv4", "ports": [{"port": 80}],
        "endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2"]}]});
    assert_eq!(
        cells("EndpointSlice", &slice, now())[1..4],
        [json!("IPv4"), json!("80"), json!("10.0.0.1,10.0.0.2")]
    );
    assert_eq!(cells("EndpointSlice", &json!({}), now())[2], "<unset>");
}

#[test]
fn node_rows() {
    assert_eq!(
        wide("Node"),
        [
            "Internal-IP",
            "External-IP",
            "OS-Image",
            "Kernel-Version",
            "Container-Runtime"
        ]
    );
    let node = json!({"metadata": {"name": "n1", "labels": {"node-role.kubernetes.io/control-plane": "", "kubernetes.io/role": "worker"}},
        "spec": {"unschedulable": true},
        "status": {"conditions": [{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": "True"}],
            "addresses": [{"type": "InternalIP", "address": "192.168.1.2"}],
            "nodeInfo": {"kubeletVersion": "v1.32.0", "osImage": "Debian", "containerRuntimeVersion": "containerd://1.7"}}});
    let row = cells("Node", &node, now());
    assert_eq!(row[1], "Ready,SchedulingDisabled");
    assert_eq!(row[2], "control-plane,worker");
    assert_eq!(
        row[4..],
        [
            json!("v1.32.0"),
            json!("192.168.1.2"),
            json!("<none>"),
            json!("Debian"),
            json!("<unknown>"),
            json!("containerd://1.7")
        ]
    );
    let not_ready = json!({"metadata": {"name": "n2"}, "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}});
    let row = cells("Node", &not_ready, now());
    assert_eq!(row[1..3], [json!("NotReady"), json!("<none>")]);
    assert_eq!(
        cells("Node", &json!({"metadata": {"name": "n3"}}), now())[1],
        "Unknown"
    );
}

#[test]
fn event_rows() {
    assert_eq!(
        names("Event"),
        [
            "Last Seen",
            "Type",
            "Reason",
            "Object",
            "Subobject",
            "Source",
            "Message",
            "First Seen",
            "Count",
            "Name"
        ]
    );
    let ev = json!({"metadata": {"name": "web.17a"}, "type": "Normal", "reason": "Pulled",
        "involvedObject": {"kind": "Pod", "name": "web", "fieldPath": "spec.containers{c}"},
        "source": {"component": "kubelet", "host": "n1"}, "message": " pulled \n",
        "firstTimestamp": ago(600), "lastTimestamp": ago(60), "count": 4});
    assert_eq!(
        cells("Event", &ev, now()),
        vec![
            json!("60s"),
            json!("Normal"),
            json!("Pulled"),
            json!("pod/web"),
            json!("spec.containers{c}"),
            json!("kubelet, n1"),
            json!("pulled"),
            json!("10m"),
            json!(4),
            json!("web.17a")
        ]
    );
    let new_api = json!({"metadata": {"name": "e"}, "eventTime": ago(5), "reportingComponent": "sched",
        "involvedObject": {"kind": "Node"}});
    let row = cells("Event", &new_api, now());
    assert_eq!(row[0], "5s");
    assert_eq!(row[3], "node");
    assert_eq!(row[5], "sched");
    assert_eq!(row[8], 1);
}

#[test]
fn simple_rows() {
    let ns = json!({"metadata": {"name": "default"}, "status": {"phase": "Active"}});
    assert_eq!(cells("Namespace", &ns, now())[1], "Active");
    let cm = json!({"metadata": {"name": "c"}, "data": {"a": "1", "b": "2"}, "binaryData": {"c": "AA=="}});
    assert_eq!(cells("ConfigMap", &cm, now())[1], 3);
    let secret = json!({"metadata": {"name": "s"}, "type": "Opaque", "data": {"a": "MQ=="}});
    assert_eq!(
        cells("Secret", &secret, now())[1..3],
        [json!("Opaque"), json!(1)]
    );
    let sa = json!({"metadata": {"name": "default"}, "secrets": [{"name": "t"}]});
    assert_eq!(cells("ServiceAccount", &sa, now())[1], 1);
    let lease = json!({"metadata": {"name": "n1"}, "spec": {"holderIdentity": "n1"}});
    assert_eq!(cells("Lease", &lease, now())[1], "n1");
    let pdb = json!({"metadata": {"name": "p"}, "spec": {"minAvailable": "50%"}, "status": {"disruptionsAllowed": 1}});
    assert_eq!(
        cells("PodDisruptionBudget", &pdb, now())[1..4],
        [json!("50%"), json!("N/A"), json!(1)]
    );
}
