//! The real kubectl (/usr/bin/kubectl, 1.32) against rkube, on both storage backends.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use rkube_e2e::{on_both_backends, workspace_root, TestCluster};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

on_both_backends!(
    apply_is_idempotent_and_patches_changes,
    get_output_formats_selectors_and_all_namespaces,
    get_watch_shows_a_change,
    label_and_scale,
    delete_waits_until_gone,
    create_namespace_and_configmap,
    run_pod,
    errors_for_missing_objects_and_bad_manifests,
    apply_server_side,
    force_delete_pod,
    api_resources_lists_core_and_apps,
);

const WEB_IMAGE: &str = "rkube.local/busybox:latest";

fn web_yaml() -> String {
    let path = workspace_root().join("examples/web.yaml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn write_manifest(cluster: &TestCluster, name: &str, content: &str) -> PathBuf {
    let path = cluster.temp_path().join(name);
    std::fs::write(&path, content).unwrap();
    path
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

async fn get_json(cluster: &TestCluster, args: &[&str]) -> Value {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    let out = cluster.kubectl_ok(&all).await;
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("kubectl get output is not JSON ({e}): {out}"))
}

async fn apply_web(cluster: &TestCluster) -> String {
    let path = write_manifest(cluster, "web.yaml", &web_yaml());
    cluster
        .kubectl_ok(&["apply", "-f", path.to_str().unwrap()])
        .await
}

/// Creates a ConfigMap with `kubectl apply` (JSON on the wire).
async fn apply_config_map(cluster: &TestCluster, namespace: &str, name: &str) {
    let manifest = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {namespace}\ndata:\n  k: v\n"
    );
    let path = write_manifest(cluster, &format!("cm-{namespace}-{name}.yaml"), &manifest);
    let out = cluster
        .kubectl_ok(&["apply", "-f", path.to_str().unwrap()])
        .await;
    assert_lines(&out, &[&format!("configmap/{name} created")]);
}

fn assert_lines(output: &str, expected: &[&str]) {
    for line in expected {
        assert!(
            output.lines().any(|l| l.trim() == *line),
            "expected line {line:?} in:\n{output}"
        );
    }
}

async fn apply_is_idempotent_and_patches_changes(cluster: &TestCluster) {
    let first = apply_web(cluster).await;
    assert_lines(
        &first,
        &[
            "namespace/demo created",
            "configmap/web-config created",
            "deployment.apps/web created",
            "service/web created",
        ],
    );

    let second = apply_web(cluster).await;
    assert_lines(
        &second,
        &[
            "namespace/demo unchanged",
            "configmap/web-config unchanged",
            "deployment.apps/web unchanged",
            "service/web unchanged",
        ],
    );

    let before = get_json(cluster, &["deployment", "web", "-n", "demo"]).await;
    let changed = web_yaml().replace(WEB_IMAGE, "rkube.local/busybox:v2");
    let path = write_manifest(cluster, "web-v2.yaml", &changed);
    let third = cluster
        .kubectl_ok(&["apply", "-f", path.to_str().unwrap()])
        .await;
    assert_lines(
        &third,
        &[
            "namespace/demo unchanged",
            "configmap/web-config unchanged",
            "deployment.apps/web configured",
            "service/web unchanged",
        ],
    );

    let after = get_json(cluster, &["deployment", "web", "-n", "demo"]).await;
    let container = &after["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "rkube.local/busybox:v2");
    // The strategic merge patch touched only the image: the rest of the container survives.
    assert_eq!(container["name"], "httpd");
    assert_eq!(container["command"][0], "httpd");
    assert_eq!(container["ports"][0]["containerPort"], 8080);
    assert_eq!(
        after["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(after["metadata"]["uid"], before["metadata"]["uid"]);
    assert_ne!(
        after["metadata"]["resourceVersion"],
        before["metadata"]["resourceVersion"]
    );
    let last_applied = after["metadata"]["annotations"]
        ["kubectl.kubernetes.io/last-applied-configuration"]
        .as_str()
        .expect("last-applied-configuration annotation");
    assert!(
        last_applied.contains("rkube.local/busybox:v2"),
        "{last_applied}"
    );
}

async fn get_output_formats_selectors_and_all_namespaces(cluster: &TestCluster) {
    apply_web(cluster).await;

    let wide = cluster
        .kubectl_ok(&["get", "deployments", "-n", "demo", "-o", "wide"])
        .await;
    let mut lines = wide.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "AGE",
            "CONTAINERS",
            "IMAGES",
            "SELECTOR"
        ],
        "{wide}"
    );
    let row: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(row.first(), Some(&"web"), "{wide}");
    assert!(
        row.contains(&"httpd") && row.contains(&WEB_IMAGE) && row.contains(&"app=web"),
        "{wide}"
    );

    let yaml = cluster
        .kubectl_ok(&["get", "configmap", "web-config", "-n", "demo", "-o", "yaml"])
        .await;
    let parsed: Value = serde_yaml_ng::from_str(&yaml).unwrap();
    assert_eq!(parsed["kind"], "ConfigMap");
    assert_eq!(parsed["metadata"]["name"], "web-config");
    assert_eq!(parsed["metadata"]["namespace"], "demo");
    assert_eq!(parsed["data"]["index.html"], "<h1>hello from rkube</h1>");

    let deployment = get_json(cluster, &["deployment", "web", "-n", "demo"]).await;
    assert_eq!(deployment["apiVersion"], "apps/v1");
    assert_eq!(deployment["kind"], "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 3);
    assert_eq!(deployment["spec"]["selector"]["matchLabels"]["app"], "web");
    assert!(deployment["metadata"]["uid"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    assert!(deployment["metadata"]["resourceVersion"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    assert!(deployment["metadata"]["creationTimestamp"]
        .as_str()
        .is_some());

    let service = get_json(cluster, &["service", "web", "-n", "demo"]).await;
    assert!(
        service["spec"]["clusterIP"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("10.")),
        "{service}"
    );

    for (name, tier) in [("front", "frontend"), ("back", "backend"), ("plain", "")] {
        let mut args = vec!["run", name, "--image=rkube.local/busybox:latest"];
        let labels = format!("--labels=tier={tier}");
        if !tier.is_empty() {
            args.push(&labels);
        }
        cluster.kubectl_ok(&args).await;
    }
    let names = |out: String| {
        let mut v: Vec<String> = out.lines().map(str::to_string).collect();
        v.sort();
        v
    };
    assert_eq!(
        names(
            cluster
                .kubectl_ok(&["get", "pods", "-l", "tier=frontend", "-o", "name"])
                .await
        ),
        ["pod/front"]
    );
    assert_eq!(
        names(
            cluster
                .kubectl_ok(&[
                    "get",
                    "pods",
                    "-l",
                    "tier in (frontend,backend)",
                    "-o",
                    "name"
                ])
                .await
        ),
        ["pod/back", "pod/front"]
    );
    assert_eq!(
        names(
            cluster
                .kubectl_ok(&["get", "pods", "-l", "tier!=frontend", "-o", "name"])
                .await
        ),
        ["pod/back", "pod/plain"]
    );
    assert_eq!(
        names(
            cluster
                .kubectl_ok(&["get", "pods", "-l", "!tier", "-o", "name"])
                .await
        ),
        ["pod/plain"]
    );

    let pods_wide = cluster.kubectl_ok(&["get", "pods", "-o", "wide"]).await;
    let header: Vec<&str> = pods_wide
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        &header[..5],
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        "{pods_wide}"
    );
    assert!(
        header.contains(&"IP") && header.contains(&"NODE"),
        "{pods_wide}"
    );

    apply_config_map(cluster, "default", "in-default").await;
    let all = cluster.kubectl_ok(&["get", "configmaps", "-A"]).await;
    let rows: Vec<Vec<&str>> = all
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0][..2], ["NAMESPACE", "NAME"], "{all}");
    assert!(
        rows.iter().any(|r| r[..2] == ["demo", "web-config"]),
        "{all}"
    );
    assert!(
        rows.iter().any(|r| r[..2] == ["default", "in-default"]),
        "{all}"
    );
}

async fn get_watch_shows_a_change(cluster: &TestCluster) {
    apply_config_map(cluster, "default", "before-watch").await;
    let mut child = cluster
        .kubectl_command(&["get", "configmaps", "-w", "-o", "name"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().expect("kubectl get -w is running");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    // Waiting for the initial list first means the watch is established before the change.
    let listed = tokio::time::timeout(
        Duration::from_secs(60),
        read_until("configmap/before-watch", &mut seen, &mut lines),
    )
    .await;
    assert!(
        matches!(listed, Ok(true)),
        "kubectl get -w printed {seen:?}"
    );
    apply_config_map(cluster, "default", "during-watch").await;
    let watched = tokio::time::timeout(
        Duration::from_secs(60),
        read_until("configmap/during-watch", &mut seen, &mut lines),
    )
    .await;
    assert!(
        matches!(watched, Ok(true)),
        "kubectl get -w printed {seen:?}"
    );
    // kubectl get -w never exits by itself.
    child
        .start_kill()
        .unwrap_or_else(|e| panic!("killing kubectl (pid {pid}): {e}"));
    let status = child.wait().await.unwrap();
    assert!(!status.success());
}

/// Reads lines into `seen` until one contains `wanted`; false if the output ends first.
async fn read_until<R: tokio::io::AsyncBufRead + Unpin>(
    wanted: &str,
    seen: &mut Vec<String>,
    lines: &mut tokio::io::Lines<R>,
) -> bool {
    while let Some(line) = lines.next_line().await.unwrap() {
        let found = line.contains(wanted);
        seen.push(line);
        if found {
            return true;
        }
    }
    false
}

async fn label_and_scale(cluster: &TestCluster) {
    apply_web(cluster).await;
    let out = cluster
        .kubectl_ok(&["label", "deployment", "web", "-n", "demo", "tier=frontend"])
        .await;
    assert_lines(&out, &["deployment.apps/web labeled"]);
    let deployment = get_json(cluster, &["deployment", "web", "-n", "demo"]).await;
    assert_eq!(deployment["metadata"]["labels"]["tier"], "frontend");
    assert_eq!(deployment["metadata"]["labels"]["app"], "web");
    let selected = cluster
        .kubectl_ok(&[
            "get",
            "deployments",
            "-A",
            "-l",
            "tier=frontend",
            "-o",
            "name",
        ])
        .await;
    assert_eq!(selected.trim(), "deployment.apps/web");

    let generation = deployment["metadata"]["generation"].as_i64().unwrap();
    let out = cluster
        .kubectl_ok(&["scale", "deployment", "web", "-n", "demo", "--replicas=5"])
        .await;
    assert_lines(&out, &["deployment.apps/web scaled"]);
    let scaled = get_json(cluster, &["deployment", "web", "-n", "demo"]).await;
    assert_eq!(scaled["spec"]["replicas"], 5);
    assert!(
        scaled["metadata"]["generation"].as_i64().unwrap() > generation,
        "{scaled}"
    );
}

async fn delete_waits_until_gone(cluster: &TestCluster) {
    apply_web(cluster).await;
    let out = cluster
        .kubectl_ok(&["delete", "configmap", "web-config", "-n", "demo"])
        .await;
    assert_lines(&out, &["configmap \"web-config\" deleted"]);
    let get = cluster
        .kubectl(&["get", "configmap", "web-config", "-n", "demo"])
        .await;
    assert!(!get.status.success());
    assert!(
        stderr(&get).contains(r#"Error from server (NotFound): configmaps "web-config" not found"#),
        "{}",
        stderr(&get)
    );

    let out = cluster
        .kubectl_ok(&["delete", "deployment", "web", "-n", "demo", "--wait=true"])
        .await;
    assert_lines(&out, &["deployment.apps \"web\" deleted"]);
    let get = cluster
        .kubectl(&["get", "deployment", "web", "-n", "demo"])
        .await;
    assert!(
        stderr(&get).contains(r#"Error from server (NotFound): deployments.apps "web" not found"#),
        "{}",
        stderr(&get)
    );
    // The other objects from the file are untouched.
    let service = get_json(cluster, &["service", "web", "-n", "demo"]).await;
    assert_eq!(service["metadata"]["name"], "web");
}

/// kubectl's typed clients (`create namespace`, `create configmap`, ...) send protobuf.
async fn create_namespace_and_configmap(cluster: &TestCluster) {
    let out = cluster.kubectl_ok(&["create", "namespace", "team-a"]).await;
    assert_lines(&out, &["namespace/team-a created"]);
    let namespace = get_json(cluster, &["namespace", "team-a"]).await;
    assert_eq!(namespace["status"]["phase"], "Active");
    // The API server labels every namespace with its name, so selectors can pick it.
    let out = cluster
        .kubectl_ok(&[
            "get",
            "ns",
            "-l",
            "kubernetes.io/metadata.name=team-a",
            "-o",
            "name",
        ])
        .await;
    assert_lines(&out, &["namespace/team-a"]);

    let out = cluster
        .kubectl_ok(&[
            "create",
            "configmap",
            "settings",
            "-n",
            "team-a",
            "--from-literal=color=blue",
        ])
        .await;
    assert_lines(&out, &["configmap/settings created"]);
    let config_map = get_json(cluster, &["configmap", "settings", "-n", "team-a"]).await;
    assert_eq!(config_map["data"]["color"], "blue");
}

async fn run_pod(cluster: &TestCluster) {
    let manifest = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team-a\n";
    let path = write_manifest(cluster, "team-a.yaml", manifest);
    cluster
        .kubectl_ok(&["apply", "-f", path.to_str().unwrap()])
        .await;

    let out = cluster
        .kubectl_ok(&[
            "run",
            "shell",
            "-n",
            "team-a",
            "--image=rkube.local/busybox:latest",
            "--",
            "sleep",
            "3600",
        ])
        .await;
    assert_lines(&out, &["pod/shell created"]);
    let pod = get_json(cluster, &["pod", "shell", "-n", "team-a"]).await;
    assert_eq!(pod["metadata"]["labels"]["run"], "shell");
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["name"], "shell");
    assert_eq!(container["image"], "rkube.local/busybox:latest");
    assert_eq!(container["args"], serde_json::json!(["sleep", "3600"]));
    // Defaulted by the server, as upstream does.
    assert_eq!(pod["spec"]["restartPolicy"], "Always");
    assert_eq!(pod["status"]["phase"], "Pending");

    let table = cluster.kubectl_ok(&["get", "pods", "-n", "team-a"]).await;
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(row[..4], ["shell", "0/1", "Pending", "0"], "{table}");
}

async fn errors_for_missing_objects_and_bad_manifests(cluster: &TestCluster) {
    let missing = cluster.kubectl(&["get", "pod", "nope"]).await;
    assert!(!missing.status.success());
    assert_eq!(
        stderr(&missing).trim(),
        r#"Error from server (NotFound): pods "nope" not found"#
    );

    let no_containers = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: broken
spec:
  replicas: 1
  selector:
    matchLabels:
      app: broken
  template:
    metadata:
      labels:
        app: broken
    spec:
      containers: []
";
    let path = write_manifest(cluster, "broken.yaml", no_containers);
    let invalid = cluster
        .kubectl(&["apply", "-f", path.to_str().unwrap()])
        .await;
    assert!(!invalid.status.success(), "{}", stdout(&invalid));
    let err = stderr(&invalid);
    assert!(
        err.contains(r#"The Deployment "broken" is invalid"#),
        "{err}"
    );
    assert!(
        err.contains("spec.template.spec.containers: Required value"),
        "{err}"
    );
    let get = cluster.kubectl(&["get", "deployment", "broken"]).await;
    assert!(stderr(&get).contains("(NotFound)"), "{}", stderr(&get));

    let path = write_manifest(
        cluster,
        "garbage.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: [x\n",
    );
    let garbage = cluster
        .kubectl(&["apply", "-f", path.to_str().unwrap()])
        .await;
    assert!(!garbage.status.success());
    assert!(
        stderr(&garbage).starts_with("error:"),
        "{}",
        stderr(&garbage)
    );
    assert!(stderr(&garbage).contains("yaml"), "{}", stderr(&garbage));
}

async fn apply_server_side(cluster: &TestCluster) {
    let manifest = "apiVersion: v1
kind: ConfigMap
metadata:
  name: ssa
  labels:
    owner: e2e
data:
  color: blue
";
    let path = write_manifest(cluster, "ssa.yaml", manifest);
    let out = cluster
        .kubectl_ok(&["apply", "--server-side", "-f", path.to_str().unwrap()])
        .await;
    assert_lines(&out, &["configmap/ssa serverside-applied"]);
    let created = get_json(cluster, &["configmap", "ssa"]).await;
    assert_eq!(created["data"]["color"], "blue");

    let path = write_manifest(cluster, "ssa.yaml", &manifest.replace("blue", "green"));
    let out = cluster
        .kubectl_ok(&["apply", "--server-side", "-f", path.to_str().unwrap()])
        .await;
    assert_lines(&out, &["configmap/ssa serverside-applied"]);
    let updated = get_json(cluster, &["configmap", "ssa"]).await;
    assert_eq!(updated["data"]["color"], "green");
    assert_eq!(updated["metadata"]["labels"]["owner"], "e2e");
    assert_eq!(updated["metadata"]["uid"], created["metadata"]["uid"]);
}

async fn force_delete_pod(cluster: &TestCluster) {
    cluster
        .kubectl_ok(&["run", "doomed", "--image=rkube.local/busybox:latest"])
        .await;
    let out = cluster
        .kubectl(&["delete", "pod", "doomed", "--grace-period=0", "--force"])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_lines(&stdout(&out), &["pod \"doomed\" force deleted"]);
    let get = cluster.kubectl(&["get", "pod", "doomed"]).await;
    assert_eq!(
        stderr(&get).trim(),
        r#"Error from server (NotFound): pods "doomed" not found"#
    );
}

async fn api_resources_lists_core_and_apps(cluster: &TestCluster) {
    let out = cluster.kubectl(&["api-resources"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out), "", "api-resources reported problems");
    let rows: Vec<Vec<String>> = stdout(&out)
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect();
    let find = |name: &str| {
        rows.iter()
            .find(|r| r.first().map(String::as_str) == Some(name))
            .unwrap_or_else(|| panic!("{name} not in api-resources:\n{}", stdout(&out)))
    };
    // NAME SHORTNAMES APIVERSION NAMESPACED KIND
    assert_eq!(find("pods")[1..], ["po", "v1", "true", "Pod"]);
    assert_eq!(
        find("deployments")[1..],
        ["deploy", "apps/v1", "true", "Deployment"]
    );
    assert_eq!(find("namespaces")[1..], ["ns", "v1", "false", "Namespace"]);
}
