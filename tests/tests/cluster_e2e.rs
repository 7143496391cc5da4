//! Issue 4's "Done when" (and issue 3's scenarios again, on real containers): the real
//! `rkube-apiserver`, `rkube-scheduler`, `rkube-controller-manager` and `rkubelet` binaries
//! as separate processes, the kubelet on a private containerd with CNI, driven by the real
//! kubectl. Needs root, containerd, runc, the CNI plugins and iptables, and the binaries
//! built first (`cargo build --workspace --bins`).
//!
//! Each test starts its own cluster ([`NodeCluster`]), so tests share nothing and may run
//! in parallel; scenarios that fit one cluster are grouped to keep the wall time down.

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use rkube_e2e::cluster::{condition_true, http_get, NodeCluster, IMAGE, IMAGE_V2};
use rkube_testkit::{
    poll_for, poll_until, try_poll, wait_for, wait_for_value, TimedOut, POLL_INTERVAL,
};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

const WAIT: Duration = Duration::from_secs(120);

async fn start() -> NodeCluster {
    NodeCluster::start().await.expect("starting the cluster")
}

/// The `web` Deployment: busybox httpd answering with its pod name on 8080, ready when
/// it serves, stopping at once on SIGTERM (sh as PID 1 only dies from signals it traps).
fn web_deployment(replicas: u32, image: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: web}}
  strategy:
    rollingUpdate: {{maxSurge: 1, maxUnavailable: 0}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      terminationGracePeriodSeconds: 20
      containers:
      - name: httpd
        image: {image}
        imagePullPolicy: Never
        command:
        - sh
        - -c
        - |
          trap 'echo "stopping $POD_NAME"; exit 0' TERM
          mkdir -p /www && echo "hello from $POD_NAME" > /www/index.html
          echo "serving $POD_NAME"
          httpd -f -vv -p 8080 -h /www &
          wait
        env:
        - name: POD_NAME
          valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
        ports:
        - containerPort: 8080
        readinessProbe:
          httpGet: {{path: /index.html, port: 8080}}
          periodSeconds: 1
"#
    )
}

fn name(object: &Value) -> String {
    object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn terminating(pod: &Value) -> bool {
    pod["metadata"]["deletionTimestamp"].is_string()
}

fn ready_running(pod: &Value) -> bool {
    pod["status"]["phase"] == "Running" && condition_true(pod, "Ready") && !terminating(pod)
}

/// The IDs of a pod's containers, without the `containerd://` prefix.
fn container_ids(pod: &Value) -> Vec<String> {
    pod["status"]["containerStatuses"]
        .as_array()
        .map(|statuses| {
            statuses
                .iter()
                .filter_map(|s| s["containerID"].as_str())
                .map(|id| id.trim_start_matches("containerd://").to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn restart_count(pod: &Value) -> i64 {
    pod["status"]["containerStatuses"][0]["restartCount"]
        .as_i64()
        .unwrap_or(0)
}

/// Waits until exactly `count` pods of `selector` exist and all are Running and Ready.
async fn wait_ready_pods(cluster: &NodeCluster, selector: &str, count: usize) -> Vec<Value> {
    cluster
        .wait(
            &format!("{count} ready pods of {selector}"),
            WAIT,
            |c| async move {
                let pods = c.pods(selector).await;
                (pods.len() == count && pods.iter().all(ready_running)).then_some(pods)
            },
        )
        .await
}

/// Each pod answers HTTP on its own IP with its own name.
async fn assert_pods_serve(cluster: &NodeCluster, pods: &[Value]) {
    let prefix = cluster.pod_cidr().trim_end_matches("0/24");
    for pod in pods {
        let ip = pod["status"]["podIP"].as_str().expect("podIP set");
        assert!(
            ip.starts_with(prefix),
            "pod IP {ip} outside {}",
            cluster.pod_cidr()
        );
        let response = http_get(&format!("{ip}:8080"), "/index.html")
            .await
            .unwrap_or_else(|e| panic!("GET http://{ip}:8080/index.html: {e}"));
        assert!(
            response.starts_with("HTTP/1.") && response.contains(" 200 "),
            "{response}"
        );
        assert!(
            response.contains(&format!("hello from {}", name(pod))),
            "{response}"
        );
    }
}

async fn kubectl_exit_code(cluster: &NodeCluster, args: &[&str]) -> (Option<i32>, String) {
    let output = cluster.kubectl(args).await;
    (
        output.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// Running containerd tasks (container IDs).
fn running_tasks(cluster: &NodeCluster) -> HashSet<String> {
    cluster
        .runtime_tasks()
        .expect("listing containerd tasks")
        .into_iter()
        .filter(|(_, _, status)| status == "RUNNING")
        .map(|(id, _, _)| id)
        .collect()
}

/// Scenarios 1, 2, 5 and 10: a Deployment of busybox httpd pods serves on pod IPs; logs
/// (and -f) and exec (exit codes) work; a deleted pod is stopped and replaced; scaling,
/// a rolling update that never drops below the wanted ready count, rollout undo, and
/// deleting the Deployment with everything it owns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_serves_logs_exec_replaces_scales_rolls_out_and_deletes() {
    let mut cluster = start().await;

    // 1. Deployment of 3: Running, Ready, pod IPs, each answers from the host.
    cluster.apply(&web_deployment(3, IMAGE)).await;
    cluster
        .kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=120s"])
        .await;
    let pods = wait_ready_pods(&cluster, "app=web", 3).await;
    assert_pods_serve(&cluster, &pods).await;
    let ips: HashSet<&str> = pods
        .iter()
        .filter_map(|p| p["status"]["podIP"].as_str())
        .collect();
    assert_eq!(ips.len(), 3, "pod IPs must differ: {ips:?}");

    // 2. logs, logs -f, exec.
    let pod = name(&pods[0]);
    let logs = cluster.kubectl_ok(&["logs", &pod]).await;
    assert!(logs.contains(&format!("serving {pod}")), "{logs}");
    let mut follow = cluster
        .kubectl_command(&["logs", "-f", &pod])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawning kubectl logs -f");
    let mut lines = BufReader::new(follow.stdout.take().expect("piped stdout")).lines();
    let first = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("kubectl logs -f printed nothing")
        .expect("reading kubectl logs -f");
    assert_eq!(first.as_deref(), Some(format!("serving {pod}").as_str()));
    // Still streaming: a request logged by httpd -v arrives on the open stream.
    let ip = pods[0]["status"]["podIP"].as_str().unwrap().to_string();
    let lines = tokio::sync::Mutex::new(lines);
    let request_logged = || async {
        http_get(&format!("{ip}:8080"), "/followed").await.unwrap();
        let mut lines = lines.lock().await;
        match tokio::time::timeout(Duration::from_secs(2), lines.next_line()).await {
            Ok(Ok(Some(line))) if line.contains("url:/followed") => Ok(Some(())),
            Ok(Ok(Some(_))) | Err(_) => Ok(None),
            Ok(other) => Err(format!("kubectl logs -f ended: {other:?}")),
        }
    };
    let followed = try_poll(POLL_INTERVAL, WAIT, request_logged, || {
        "the followed log never showed the request".to_string()
    })
    .await;
    if let Err(failure) = followed {
        panic!("{failure}");
    }
    assert!(
        follow.try_wait().unwrap().is_none(),
        "kubectl logs -f exited"
    );
    follow.kill().await.unwrap();

    let (code, output) =
        kubectl_exit_code(&cluster, &["exec", &pod, "--", "sh", "-c", "exit 3"]).await;
    assert_eq!(code, Some(3), "{output}");
    let page = cluster
        .kubectl_ok(&["exec", &pod, "--", "cat", "/www/index.html"])
        .await;
    assert_eq!(page, format!("hello from {pod}\n"));
    let (code, output) = kubectl_exit_code(
        &cluster,
        &[
            "exec",
            &pod,
            "-c",
            "httpd",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("out") && output.contains("err"), "{output}");

    // 5. Deleting a pod stops its container (SIGTERM is trapped, so well within the
    // grace period) and the ReplicaSet replaces it.
    let victim = pods[1].clone();
    let victim_name = name(&victim);
    let victim_containers = container_ids(&victim);
    assert_eq!(victim_containers.len(), 1, "{:#}", victim["status"]);
    assert!(running_tasks(&cluster).contains(&victim_containers[0]));
    cluster
        .kubectl_ok(&["delete", "pod", &victim_name, "--timeout=60s"])
        .await;
    assert!(cluster.pod(&victim_name).await.is_none());
    cluster
        .wait("the deleted pod's container to be removed", WAIT, |c| {
            let id = victim_containers[0].clone();
            async move {
                let containers = c.runtime_containers().expect("listing containers");
                (!containers.contains(&id)).then_some(())
            }
        })
        .await;
    let pods = wait_ready_pods(&cluster, "app=web", 3).await;
    assert!(
        pods.iter().all(|p| name(p) != victim_name),
        "the deleted pod came back"
    );
    assert_pods_serve(&cluster, &pods).await;

    // 10. Scale to 5 and back to 2.
    cluster
        .kubectl_ok(&["scale", "deployment/web", "--replicas=5"])
        .await;
    cluster
        .kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=120s"])
        .await;
    let pods = wait_ready_pods(&cluster, "app=web", 5).await;
    assert_pods_serve(&cluster, &pods).await;
    cluster
        .kubectl_ok(&["scale", "deployment/web", "--replicas=2"])
        .await;
    let pods = wait_ready_pods(&cluster, "app=web", 2).await;
    let kept: HashSet<String> = pods.iter().flat_map(container_ids).collect();
    cluster
        .wait("only the 2 remaining pods' containers to run", WAIT, |c| {
            let kept = kept.clone();
            async move { (running_tasks(c) == kept).then_some(()) }
        })
        .await;

    // Rolling update to the second tag: `rollout status` succeeds and no observed state
    // has fewer than replicas - maxUnavailable = 2 ready pods.
    cluster
        .kubectl_ok(&[
            "set",
            "image",
            "deployment/web",
            &format!("httpd={IMAGE_V2}"),
        ])
        .await;
    let mut rollout = cluster
        .kubectl_command(&["rollout", "status", "deployment/web", "--timeout=120s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawning kubectl rollout status");
    // Every look during the rollout must find at least two ready pods.
    let observations = std::cell::Cell::new(0);
    let rollout_done = || {
        // Looked at before the pods, so the future borrows nothing of the child.
        let exited = rollout.try_wait().unwrap();
        let (cluster, observations) = (&cluster, &observations);
        async move {
            let pods = cluster.pods("app=web").await;
            let ready = pods.iter().filter(|p| ready_running(p)).count();
            assert!(
                ready >= 2,
                "only {ready} ready pods during the rolling update: {:#?}",
                pods.iter()
                    .map(|p| (name(p), p["status"]["conditions"].clone()))
                    .collect::<Vec<_>>()
            );
            observations.set(observations.get() + 1);
            exited
        }
    };
    let status = wait_for_value("kubectl rollout status to exit", WAIT, rollout_done).await;
    let observations = observations.get();
    let output = rollout.wait_with_output().await.unwrap();
    assert!(
        status.success(),
        "rollout status failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(observations > 1);
    let pods = wait_ready_pods(&cluster, "app=web", 2).await;
    for pod in &pods {
        assert_eq!(pod["spec"]["containers"][0]["image"], IMAGE_V2);
        assert!(
            pod["status"]["containerStatuses"][0]["image"]
                .as_str()
                .is_some_and(|i| i.contains("e2e-v2")),
            "{:#}",
            pod["status"]
        );
    }
    assert_pods_serve(&cluster, &pods).await;

    // rollout undo brings the first template back.
    cluster
        .kubectl_ok(&["rollout", "undo", "deployment/web"])
        .await;
    cluster
        .kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=120s"])
        .await;
    let pods = wait_ready_pods(&cluster, "app=web", 2).await;
    for pod in &pods {
        assert_eq!(pod["spec"]["containers"][0]["image"], IMAGE);
    }
    let template_image = cluster
        .kubectl_ok(&[
            "get",
            "deployment/web",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ])
        .await;
    assert_eq!(template_image, IMAGE);
    let replica_sets = cluster
        .get_json("/apis/apps/v1/namespaces/default/replicasets?labelSelector=app=web")
        .await
        .unwrap();
    assert_eq!(
        replica_sets["items"].as_array().map(Vec::len),
        Some(2),
        "one ReplicaSet per template"
    );

    // Deleting the Deployment removes its ReplicaSets, pods and containers.
    cluster
        .kubectl_ok(&["delete", "deployment", "web", "--timeout=60s"])
        .await;
    cluster
        .wait(
            "the ReplicaSets and pods to be deleted",
            WAIT,
            |c| async move {
                let replica_sets = c
                    .get_json("/apis/apps/v1/namespaces/default/replicasets?labelSelector=app=web")
                    .await?;
                let none_left = replica_sets["items"].as_array().is_some_and(Vec::is_empty);
                (none_left && c.pods("app=web").await.is_empty()).then_some(())
            },
        )
        .await;
    let all_removed = poll_until(WAIT, || async {
        cluster.runtime_containers().unwrap().is_empty()
    })
    .await;
    if all_removed.is_err() {
        let details: Vec<String> = cluster
            .runtime_containers()
            .unwrap()
            .iter()
            .map(|id| cluster.ctr(&["containers", "info", id]).unwrap_or_default())
            .collect();
        panic!(
            "containers left after deleting the Deployment: {}\ntasks: {:?}",
            details.join("\n"),
            cluster.runtime_tasks()
        );
    }
    cluster.check_components().unwrap();
}

/// The durations in the CrashLoopBackOff messages ("back-off 2s restarting ...").
fn backoff_seconds(message: &str) -> Option<u64> {
    let text = message.strip_prefix("back-off ")?.split(' ').next()?;
    let (minutes, seconds) = match text.split_once('m') {
        Some((m, s)) => (m.parse::<u64>().ok()?, s),
        None => (0, text),
    };
    let seconds = seconds.strip_suffix('s')?;
    // Sub-second delays ("500ms") count as 0.
    let seconds = if seconds.ends_with('m') {
        0
    } else {
        seconds.parse().ok()?
    };
    Some(minutes * 60 + seconds)
}

/// The IPs an Endpoints object lists under `field` (`addresses` or `notReadyAddresses`).
fn endpoint_ips(endpoints: &Value, field: &str) -> Vec<String> {
    endpoints["subsets"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s[field].as_array().into_iter().flatten())
        .filter_map(|a| a["ip"].as_str().map(str::to_string))
        .collect()
}

/// Scenarios 3 and 4: crash loops with growing backoff shown as CrashLoopBackOff; a failing
/// liveness probe restarts the container; a failing readiness probe takes the pod out of
/// Ready (and out of the Service's ready endpoints) without restarting it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loops_back_off_and_probes_restart_and_unready_pods() {
    let cluster = start().await;
    cluster
        .apply(&format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: crasher}}
spec:
  containers:
  - name: app
    image: {IMAGE}
    imagePullPolicy: Never
    command: [sh, -c, "echo crashing; exit 2"]
---
apiVersion: v1
kind: Pod
metadata: {{name: liveness}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: {IMAGE}
    imagePullPolicy: Never
    command: [sh, -c, "touch /tmp/healthy; sleep 3; rm /tmp/healthy; exec sleep 3600"]
    livenessProbe:
      exec: {{command: [cat, /tmp/healthy]}}
      initialDelaySeconds: 1
      periodSeconds: 1
      failureThreshold: 2
---
apiVersion: v1
kind: Pod
metadata:
  name: readiness
  labels: {{app: readiness}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: {IMAGE}
    imagePullPolicy: Never
    command: [sh, -c, "touch /tmp/ready; exec sleep 3600"]
    readinessProbe:
      exec: {{command: [cat, /tmp/ready]}}
      periodSeconds: 1
      failureThreshold: 1
---
apiVersion: v1
kind: Service
metadata: {{name: readiness}}
spec:
  selector: {{app: readiness}}
  ports:
  - port: 80
"#
        ))
        .await;

    // 3. Crash loop: restarts with growing back-off, CrashLoopBackOff in `get pods`.
    // Each look notes the back-off delay shown and whether `get pods` shows the loop.
    let delays = std::cell::RefCell::new(BTreeSet::new());
    let kubectl_shows_crash_loop = std::cell::Cell::new(false);
    let crash_looping = || async {
        let pod = cluster.pod("crasher").await.expect("crasher exists");
        let status = &pod["status"]["containerStatuses"][0];
        if status["state"]["waiting"]["reason"] == "CrashLoopBackOff" {
            delays.borrow_mut().extend(
                status["state"]["waiting"]["message"]
                    .as_str()
                    .and_then(backoff_seconds),
            );
            if !kubectl_shows_crash_loop.get() {
                let table = cluster.kubectl_ok(&["get", "pods", "crasher"]).await;
                kubectl_shows_crash_loop.set(table.contains("CrashLoopBackOff"));
            }
        }
        let looped = delays.borrow().len() >= 2
            && kubectl_shows_crash_loop.get()
            && restart_count(&pod) >= 2;
        looped.then_some(pod)
    };
    let crasher = poll_for(WAIT, crash_looping).await;
    let delays = delays.into_inner();
    let crasher = crasher.unwrap_or_else(|_| {
        panic!(
            "no crash loop with growing back-off: delays {delays:?}, kubectl showed it: {}",
            kubectl_shows_crash_loop.get()
        )
    });
    let last = &crasher["status"]["containerStatuses"][0]["lastState"]["terminated"];
    assert_eq!(last["exitCode"], 2, "{last:#}");
    assert_eq!(last["reason"], "Error", "{last:#}");
    assert!(
        delays.iter().next() < delays.iter().next_back(),
        "{delays:?}"
    );
    let describe = cluster.kubectl_ok(&["describe", "pod", "crasher"]).await;
    assert!(describe.contains("BackOff"), "{describe}");

    // 4a. Liveness: the container is killed and restarted.
    let liveness = cluster
        .wait_pod("liveness", "a liveness restart", |p| restart_count(p) >= 1)
        .await;
    let status = &liveness["status"]["containerStatuses"][0];
    assert!(status["lastState"]["terminated"].is_object(), "{status:#}");
    let describe = cluster.kubectl_ok(&["describe", "pod", "liveness"]).await;
    assert!(
        describe.contains("Unhealthy") && describe.contains("Liveness probe failed"),
        "{describe}"
    );

    // 4b. Readiness: Ready, then not Ready once the probe fails, with no restart.
    let ready = cluster.wait_pod("readiness", "Ready", ready_running).await;
    let ip = ready["status"]["podIP"].as_str().unwrap().to_string();
    let endpoints_path = "/api/v1/namespaces/default/endpoints/readiness";
    cluster
        .wait("the Endpoints to list the ready pod", WAIT, |c| {
            let ip = ip.clone();
            async move {
                let endpoints = c.get_json(endpoints_path).await?;
                endpoint_ips(&endpoints, "addresses")
                    .contains(&ip)
                    .then_some(())
            }
        })
        .await;
    cluster
        .kubectl_ok(&["exec", "readiness", "--", "rm", "/tmp/ready"])
        .await;
    let unready = cluster
        .wait_pod("readiness", "not Ready", |p| {
            p["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "False")
            })
        })
        .await;
    assert_eq!(unready["status"]["phase"], "Running");
    assert_eq!(restart_count(&unready), 0);
    assert_eq!(unready["status"]["containerStatuses"][0]["ready"], false);
    assert!(unready["status"]["containerStatuses"][0]["state"]["running"].is_object());
    cluster
        .wait("the pod to move to the not-ready endpoints", WAIT, |c| {
            let ip = ip.clone();
            async move {
                let endpoints = c.get_json(endpoints_path).await?;
                (!endpoint_ips(&endpoints, "addresses").contains(&ip)
                    && endpoint_ips(&endpoints, "notReadyAddresses").contains(&ip))
                .then_some(())
            }
        })
        .await;
    // And back.
    cluster
        .kubectl_ok(&["exec", "readiness", "--", "touch", "/tmp/ready"])
        .await;
    let ready = cluster
        .wait_pod("readiness", "Ready again", ready_running)
        .await;
    assert_eq!(restart_count(&ready), 0);
}

/// Scenarios 6 and 7: a ConfigMap volume shows its data and Secret env is set; restarting
/// the kubelet leaves the running containers alone (same IDs and processes, no restarts)
/// and the statuses stay correct.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_volumes_secret_env_and_kubelet_restart_keeps_containers() {
    let mut cluster = start().await;
    cluster
        .apply(&format!(
            r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: site}}
data:
  index.html: "hello from a configmap"
  greeting: hi
---
apiVersion: v1
kind: Secret
metadata: {{name: creds}}
stringData:
  password: hunter2
  user: admin
---
apiVersion: v1
kind: Pod
metadata: {{name: web}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: httpd
    image: {IMAGE}
    imagePullPolicy: Never
    command: [httpd, -f, -vv, -p, "8080", -h, /www]
    volumeMounts:
    - {{name: site, mountPath: /www}}
    readinessProbe:
      httpGet: {{path: /index.html, port: 8080}}
      periodSeconds: 1
  - name: env
    image: {IMAGE}
    imagePullPolicy: Never
    command: [sh, -c, "exec sleep 3600"]
    env:
    - name: PASSWORD
      valueFrom: {{secretKeyRef: {{name: creds, key: password}}}}
    envFrom:
    - prefix: CREDS_
      secretRef: {{name: creds}}
  volumes:
  - name: site
    configMap: {{name: site}}
"#
        ))
        .await;
    let pod = cluster
        .wait_pod("web", "Running and Ready", ready_running)
        .await;

    // 7. ConfigMap volume and Secret env.
    let page = cluster
        .kubectl_ok(&["exec", "web", "-c", "httpd", "--", "cat", "/www/index.html"])
        .await;
    assert_eq!(page, "hello from a configmap");
    let greeting = cluster
        .kubectl_ok(&["exec", "web", "-c", "httpd", "--", "cat", "/www/greeting"])
        .await;
    assert_eq!(greeting, "hi");
    let env = cluster
        .kubectl_ok(&["exec", "web", "-c", "env", "--", "env"])
        .await;
    for line in [
        "PASSWORD=hunter2",
        "CREDS_password=hunter2",
        "CREDS_user=admin",
    ] {
        assert!(
            env.lines().any(|l| l == line),
            "{line} missing from:\n{env}"
        );
    }
    let ip = pod["status"]["podIP"].as_str().unwrap().to_string();
    let response = http_get(&format!("{ip}:8080"), "/index.html")
        .await
        .unwrap();
    assert!(response.ends_with("hello from a configmap"), "{response}");

    // 6. Restart the kubelet.
    let ids_before = container_ids(&pod);
    assert_eq!(ids_before.len(), 2, "{:#}", pod["status"]);
    let tasks_before: HashSet<(String, u32)> = cluster
        .runtime_tasks()
        .unwrap()
        .into_iter()
        .map(|(id, pid, _)| (id, pid))
        .collect();
    let old_pid = cluster.kubelet_pid();
    cluster
        .restart_kubelet()
        .await
        .expect("restarting the kubelet");
    assert_ne!(cluster.kubelet_pid(), old_pid);
    let probes_at_restart = probes_logged(&cluster).await;

    // A pod created after the restart runs, so the new kubelet has synced its pods.
    cluster
        .apply(&format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: after-restart}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: {IMAGE}
    imagePullPolicy: Never
    command: [sleep, "3600"]
"#
        ))
        .await;
    cluster
        .wait_pod("after-restart", "Running", |p| {
            p["status"]["phase"] == "Running"
        })
        .await;
    // The new kubelet has taken the old pod over once it probes it; three of its readiness
    // probes later (httpd -vv logs each request), the pod must still be as it was.
    wait_for(
        "three readiness probes from the new kubelet",
        WAIT,
        || async { probes_logged(&cluster).await >= probes_at_restart + 3 },
    )
    .await;
    let pod = cluster
        .wait_pod("web", "Running and Ready", ready_running)
        .await;
    assert_eq!(container_ids(&pod), ids_before, "{:#}", pod["status"]);
    for status in pod["status"]["containerStatuses"].as_array().unwrap() {
        assert_eq!(status["restartCount"], 0, "{status:#}");
        assert_eq!(status["ready"], true, "{status:#}");
        assert!(status["state"]["running"].is_object(), "{status:#}");
    }
    let tasks_after: HashSet<(String, u32)> = cluster
        .runtime_tasks()
        .unwrap()
        .into_iter()
        .map(|(id, pid, _)| (id, pid))
        .collect();
    assert!(
        tasks_before.is_subset(&tasks_after),
        "containers changed: before {tasks_before:?}, after {tasks_after:?}"
    );
    let response = http_get(&format!("{ip}:8080"), "/index.html")
        .await
        .unwrap();
    assert!(response.ends_with("hello from a configmap"), "{response}");
    // Logs and exec go through the new kubelet process.
    let env = cluster
        .kubectl_ok(&["exec", "web", "-c", "env", "--", "env"])
        .await;
    assert!(env.contains("PASSWORD=hunter2"), "{env}");
    cluster.check_components().unwrap();
}

/// Scenarios 8 and 9: a memory limit kills a process that exceeds it (OOMKilled); bad
/// specs give clear statuses and events and the kubelet keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_kills_and_bad_specs_give_clear_statuses() {
    let mut cluster = start().await;
    cluster
        .apply(&format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: oom}}
spec:
  restartPolicy: Never
  containers:
  - name: hog
    image: {IMAGE}
    imagePullPolicy: Never
    # dd's buffer is one 128 MiB allocation, filled by reading /dev/zero.
    command: [dd, if=/dev/zero, of=/dev/null, bs=128M, count=1]
    resources:
      limits: {{memory: 32Mi}}
---
apiVersion: v1
kind: Pod
metadata: {{name: never-pulled}}
spec:
  containers:
  - name: app
    image: busybox:not-imported
    imagePullPolicy: Never
---
apiVersion: v1
kind: Pod
metadata: {{name: missing-config}}
spec:
  containers:
  - name: app
    image: {IMAGE}
    imagePullPolicy: Never
    command: [sleep, "3600"]
    volumeMounts:
    - {{name: config, mountPath: /config}}
  volumes:
  - name: config
    configMap: {{name: does-not-exist}}
---
apiVersion: v1
kind: Pod
metadata: {{name: bad-command}}
spec:
  containers:
  - name: app
    image: {IMAGE}
    imagePullPolicy: Never
    command: [/no/such/binary]
"#
        ))
        .await;

    // 8. OOM.
    let oom = cluster
        .wait_pod("oom", "terminated", |p| {
            p["status"]["containerStatuses"][0]["state"]["terminated"].is_object()
        })
        .await;
    let terminated = &oom["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(terminated["reason"], "OOMKilled", "{:#}", oom["status"]);
    assert_eq!(terminated["exitCode"], 137, "{terminated:#}");
    assert_eq!(oom["status"]["phase"], "Failed");

    // 9a. Missing image with pull policy Never.
    let pod = cluster
        .wait_pod("never-pulled", "ErrImageNeverPull", |p| {
            p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ErrImageNeverPull"
        })
        .await;
    let message = pod["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("busybox:not-imported"), "{message}");
    assert_eq!(pod["status"]["phase"], "Pending");
    let describe = wait_describe(&cluster, "never-pulled", "ErrImageNeverPull").await;
    assert!(describe.contains("busybox:not-imported"), "{describe}");

    // 9b. A volume from a ConfigMap that does not exist.
    let pod = cluster
        .wait_pod("missing-config", "a waiting container", |p| {
            p["status"]["phase"] == "Pending"
        })
        .await;
    assert!(
        pod["status"]["containerStatuses"][0]["state"]["running"].is_null(),
        "{:#}",
        pod["status"]
    );
    let describe = wait_describe(&cluster, "missing-config", "does-not-exist").await;
    assert!(describe.contains("FailedMount"), "{describe}");

    // A volume mount naming no volume is refused by the API server with the field.
    let output = cluster
        .kubectl_command(&["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let output = feed_and_wait(
        output,
        &format!(
            r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "unknown-volume"}},
               "spec": {{"containers": [{{"name": "app", "image": "{IMAGE}", "imagePullPolicy": "Never",
                 "volumeMounts": [{{"name": "nowhere", "mountPath": "/x"}}]}}]}}}}"#
        ),
    )
    .await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("volumeMounts[0].name") && stderr.contains("nowhere"),
        "{stderr}"
    );

    // 9c. A command that does not exist.
    let pod = cluster
        .wait_pod("bad-command", "a start failure", |p| {
            p["status"]["containerStatuses"][0]
                .to_string()
                .contains("/no/such/binary")
        })
        .await;
    let status = &pod["status"]["containerStatuses"][0];
    assert!(status["state"]["running"].is_null(), "{status:#}");
    assert_eq!(status["ready"], false);
    wait_describe(&cluster, "bad-command", "/no/such/binary").await;

    // The kubelet is still alive and running new pods.
    cluster.check_components().unwrap();
    cluster
        .apply(&format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: fine}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: {IMAGE}
    imagePullPolicy: Never
    command: [sleep, "3600"]
"#
        ))
        .await;
    cluster
        .wait_pod("fine", "Running", |p| p["status"]["phase"] == "Running")
        .await;
    let out = cluster
        .kubectl_ok(&["exec", "fine", "--", "echo", "still serving"])
        .await;
    assert_eq!(out, "still serving\n");
    cluster.check_components().unwrap();
}

/// The readiness probes (GET /index.html) the `web` pod's httpd has logged.
async fn probes_logged(cluster: &NodeCluster) -> usize {
    cluster
        .kubectl_ok(&["logs", "web", "-c", "httpd"])
        .await
        .lines()
        .filter(|line| line.contains("url:/index.html"))
        .count()
}

/// Polls `kubectl describe pod` until its output mentions `needle` (events arrive
/// asynchronously) and returns it.
async fn wait_describe(cluster: &NodeCluster, pod: &str, needle: &str) -> String {
    let mentioned = poll_for(WAIT, || async {
        let describe = cluster.kubectl_ok(&["describe", "pod", pod]).await;
        describe.contains(needle).then_some(describe)
    })
    .await;
    match mentioned {
        Ok(describe) => describe,
        Err(TimedOut) => panic!(
            "kubectl describe pod {pod} never mentioned {needle:?}:\n{}",
            cluster.kubectl_ok(&["describe", "pod", pod]).await
        ),
    }
}

async fn feed_and_wait(mut child: tokio::process::Child, input: &str) -> std::process::Output {
    use tokio::io::AsyncWriteExt;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    child.wait_with_output().await.unwrap()
}

/// `kubectl exec -i` and `kubectl exec -it` through the API server's proxy to the kubelet
/// and containerd: stdin reaches the process, a tty is a real pseudo-terminal in the
/// container, and the exit code comes back through kubectl. `kubectl run -i` and
/// `kubectl attach -i` reach the stdin of a container's main process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_and_attach_with_stdin_and_tty() {
    let cluster = start().await;
    cluster
        .apply(&format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: shell}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: {IMAGE}
    imagePullPolicy: Never
    command: [sleep, "3600"]
"#
        ))
        .await;
    cluster
        .wait_pod("shell", "Running", |p| p["status"]["phase"] == "Running")
        .await;

    let cat = cluster
        .kubectl_command(&["exec", "-i", "shell", "--", "cat"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let output = feed_and_wait(cat, "hello\n").await;
    assert!(
        output.status.success(),
        "{output:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "hello\n");

    let (code, screen) = kubectl_in_pty(
        &cluster,
        &["exec", "-it", "shell", "--", "sh", "-c", "tty; exit 4"],
    )
    .await;
    assert!(screen.contains("/dev/pts/"), "{screen}");
    assert_eq!(code, Some(4), "{screen}");

    // `kubectl run -i`: stdin and stdinOnce; what is typed reaches the main process, and
    // the end of kubectl's stdin is the end of the container's.
    let run = cluster
        .kubectl_command(&[
            "run",
            "reader",
            "-i",
            "--restart=Never",
            &format!("--image={IMAGE}"),
            "--image-pull-policy=Never",
            "--",
            "sh",
            "-c",
            "while read line; do echo \"got $line\"; done; echo done",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let output = tokio::time::timeout(WAIT, feed_and_wait(run, "one\ntwo\n"))
        .await
        .expect("kubectl run -i did not finish");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{output:?}: {stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("got one\ngot two\n"), "{stdout}");
    cluster
        .wait_pod("reader", "Succeeded", |p| {
            p["status"]["phase"] == "Succeeded"
        })
        .await;
    let logs = cluster.kubectl_ok(&["logs", "reader"]).await;
    assert_eq!(logs, "got one\ngot two\ndone\n");

    // `kubectl attach -i` to a container with stdin but not stdinOnce: each session's
    // input arrives, and ending one leaves stdin open for the next.
    cluster
        .apply(&format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: echoer}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: {IMAGE}
    imagePullPolicy: Never
    stdin: true
    command: [sh, -c, 'while read line; do echo "echo $line"; done; echo closed; sleep 3600']
"#
        ))
        .await;
    cluster
        .wait_pod("echoer", "Running", |p| p["status"]["phase"] == "Running")
        .await;
    for word in ["first", "second"] {
        let mut attach = cluster
            .kubectl_command(&["attach", "-i", "echoer"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = attach.stdin.take().unwrap();
        let mut lines = BufReader::new(attach.stdout.take().unwrap()).lines();
        // Sent until it is echoed: kubectl attaches some time after it starts reading.
        let io = tokio::sync::Mutex::new((&mut stdin, &mut lines));
        let echoed = || async {
            use tokio::io::AsyncWriteExt;
            let mut io = io.lock().await;
            let (stdin, lines) = &mut *io;
            stdin
                .write_all(format!("{word}\n").as_bytes())
                .await
                .unwrap();
            while let Ok(line) =
                tokio::time::timeout(Duration::from_secs(1), lines.next_line()).await
            {
                match line.unwrap() {
                    Some(line) if line == format!("echo {word}") => return true,
                    Some(_) => {}
                    None => panic!("kubectl attach ended before echoing {word}"),
                }
            }
            false
        };
        wait_for(&format!("{word} to be echoed"), WAIT, echoed).await;
        drop(stdin);
        attach.kill().await.unwrap();
    }
    let logs = cluster.kubectl_ok(&["logs", "echoer"]).await;
    assert!(!logs.contains("closed"), "{logs}");
}

/// Runs kubectl under a pseudo-terminal (util-linux `script`), as a person typing it
/// would; returns kubectl's exit code and everything the terminal showed.
async fn kubectl_in_pty(cluster: &NodeCluster, args: &[&str]) -> (Option<i32>, String) {
    let quote = |arg: &str| format!("'{}'", arg.replace('\'', r"'\''"));
    let kubectl = rkube_e2e::kubectl_binary();
    let kubeconfig = format!("--kubeconfig={}", cluster.kubeconfig_path().display());
    let line: Vec<String> = [kubectl.to_string_lossy().as_ref(), kubeconfig.as_str()]
        .into_iter()
        .chain(args.iter().copied())
        .map(quote)
        .collect();
    let mut child = tokio::process::Command::new("script")
        .args(["-qec", &line.join(" "), "/dev/null"])
        .env_remove("KUBECONFIG")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawning script (util-linux)");
    // Held open until kubectl is done: an early EOF would end the session from our side.
    let stdin = child.stdin.take();
    let output = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("kubectl under a pty did not finish")
        .unwrap();
    drop(stdin);
    (
        output.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// `kubectl port-forward` runs as a child until it prints its "Forwarding from" line.
struct PortForward {
    child: tokio::process::Child,
    stderr: tokio::task::JoinHandle<String>,
    local_port: u16,
}

impl PortForward {
    /// `kubectl port-forward <target> <free local port>:<remote>`; `websockets: false`
    /// makes kubectl skip the WebSocket tunnel and speak plain SPDY.
    async fn start(cluster: &NodeCluster, target: &str, remote: &str, websockets: bool) -> Self {
        let local_port = rkube_e2e::free_port().expect("a free port");
        let mapping = format!("{local_port}:{remote}");
        // -v=4 logs which dialer kubectl ends up with.
        let mut command = cluster.kubectl_command(&["port-forward", "-v=4", target, &mapping]);
        command
            .env(
                "KUBECTL_PORT_FORWARD_WEBSOCKETS",
                if websockets { "true" } else { "false" },
            )
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("spawning kubectl port-forward");
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let stderr = tokio::spawn(async move {
            let mut all = String::new();
            while let Ok(Some(line)) = stderr.next_line().await {
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        let ready = format!("Forwarding from 127.0.0.1:{local_port} -> ");
        let waited = tokio::time::timeout(WAIT, async {
            while let Ok(Some(line)) = stdout.next_line().await {
                if line.starts_with(&ready) {
                    return true;
                }
            }
            false
        })
        .await;
        let forward = PortForward {
            child,
            stderr,
            local_port,
        };
        if waited != Ok(true) {
            let output = forward.stop().await;
            panic!("kubectl port-forward {target} {mapping} did not start: {output}");
        }
        // Keep draining stdout ("Handling connection for ...") so kubectl never blocks.
        tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
        forward
    }

    async fn get(&self, path: &str) -> String {
        let address = format!("127.0.0.1:{}", self.local_port);
        http_get(&address, path)
            .await
            .unwrap_or_else(|e| panic!("GET http://{address}{path}: {e}"))
    }

    /// Kills kubectl (by its PID, through its handle) and returns its stderr.
    async fn stop(mut self) -> String {
        let _ = self.child.kill().await;
        self.stderr.await.unwrap_or_default()
    }
}

/// `kubectl port-forward` to a pod and to a Service (kubectl resolves the Service to a pod
/// and its named target port), through the API server's proxy to the kubelet, which
/// connects inside the pod's network namespace: over kubectl's default SPDY-in-WebSocket
/// tunnel and over plain SPDY. Several connections share one forward; a closed port is
/// reported back to kubectl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_to_a_pod_and_a_service() {
    let cluster = start().await;
    cluster
        .apply(&format!(
            r#"
apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {{app: web}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: httpd
    image: {IMAGE}
    imagePullPolicy: Never
    command:
    - sh
    - -c
    - mkdir -p /www && echo "forwarded to $POD_NAME" > /www/index.html && dd if=/dev/zero of=/www/big bs=1024 count=4096 && exec httpd -f -p 80 -h /www
    env:
    - name: POD_NAME
      valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
    ports:
    - {{name: http, containerPort: 80}}
    readinessProbe:
      httpGet: {{path: /index.html, port: 80}}
      periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports:
  - {{port: 8080, targetPort: http}}
"#
        ))
        .await;
    cluster.wait_pod("web", "Ready", ready_running).await;

    for (target, remote, websockets) in [
        ("pod/web", "80", true),
        ("pod/web", "80", false),
        ("svc/web", "8080", true),
    ] {
        let forward = PortForward::start(&cluster, target, remote, websockets).await;
        for _ in 0..3 {
            let response = forward.get("/index.html").await;
            assert!(
                response.starts_with("HTTP/1.") && response.contains(" 200 "),
                "{target} (websockets: {websockets}): {response}"
            );
            assert!(
                response.contains("forwarded to web"),
                "{target} (websockets: {websockets}): {response}"
            );
        }
        let missing = forward.get("/missing").await;
        assert!(missing.contains(" 404 "), "{missing}");
        // Many frames each way of the tunnel, in order and complete.
        let started = Instant::now();
        let big = forward.get("/big").await;
        let body = big.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        assert_eq!(
            body.len(),
            4 << 20,
            "{target}: {}",
            &big[..big.len().min(300)]
        );
        assert!(body.bytes().all(|b| b == 0));
        eprintln!(
            "{target} (websockets: {websockets}): 4 MiB in {:?}",
            started.elapsed()
        );
        let log = forward.stop().await;
        // kubectl falls back to plain SPDY silently when the tunnel fails.
        let tunnelled = log.contains("Before WebSocket Upgrade Connection")
            && !log.contains("fallback to secondary dialer");
        assert_eq!(
            tunnelled, websockets,
            "{target} (websockets: {websockets}): {log}"
        );
    }

    // Nothing listens on 81 in the pod: the kubelet's error reaches kubectl, which gives
    // up the forward.
    let mut forward = PortForward::start(&cluster, "pod/web", "81", true).await;
    let address = format!("127.0.0.1:{}", forward.local_port);
    let _ = http_get(&address, "/").await;
    let exited = tokio::time::timeout(WAIT, forward.child.wait()).await;
    let stderr = forward.stop().await;
    assert!(
        exited.is_ok(),
        "kubectl kept forwarding a closed port: {stderr}"
    );
    assert!(
        stderr.contains("error forwarding port 81 to pod default/web")
            && stderr.contains("failed to connect to localhost:81 inside namespace"),
        "{stderr}"
    );
}
