#!/usr/bin/env python3
"""Drives rkube with the official Kubernetes Python client.

Usage: client_check.py KUBECONFIG

Lists, creates, watches and patches pods and deployments (including the scale
subresource) and exits non-zero with a message naming the first mismatch.
"""

import sys
import threading

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

NAMESPACE = "py-client"
IMAGE = "rkube.local/busybox:latest"


class Mismatch(Exception):
    pass


def check(condition, message):
    if not condition:
        raise Mismatch(message)


def expect_equal(actual, expected, what):
    check(actual == expected, f"{what}: expected {expected!r}, got {actual!r}")


def step(name):
    print(f"--- {name}", flush=True)


def pod_body(name, labels):
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1PodSpec(
            containers=[
                client.V1Container(name="main", image=IMAGE, command=["sleep", "3600"]),
                client.V1Container(name="side", image=IMAGE),
            ]
        ),
    )


def deployment_body(name, replicas):
    labels = {"app": name}
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(containers=[client.V1Container(name="app", image=IMAGE)]),
            ),
        ),
    )


def check_discovery():
    # These three request `/version/`, `/api/` and `/apis/`, with a trailing slash.
    step("discovery: version, core and group versions")
    version = client.VersionApi().get_code()
    expect_equal(version.major, "1", "server major version")
    core_versions = client.CoreApi().get_api_versions()
    check("v1" in core_versions.versions, f"core versions lack v1: {core_versions.versions}")
    groups = {g.name for g in client.ApisApi().get_api_versions().groups}
    check("apps" in groups, f"API groups lack apps: {sorted(groups)}")


def check_namespaces(core):
    step("namespaces: list and create")
    names = {ns.metadata.name for ns in core.list_namespace().items}
    check("default" in names, f"namespace list lacks 'default': {sorted(names)}")
    created = core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
    expect_equal(created.metadata.name, NAMESPACE, "created namespace name")
    expect_equal(
        (created.metadata.labels or {}).get("kubernetes.io/metadata.name"),
        NAMESPACE,
        "namespace name label",
    )
    selected = core.list_namespace(label_selector=f"kubernetes.io/metadata.name={NAMESPACE}")
    expect_equal([ns.metadata.name for ns in selected.items], [NAMESPACE], "namespaces selected by name label")


def check_pods(core):
    step("pods: create, list, get")
    empty = core.list_namespaced_pod(NAMESPACE)
    expect_equal(empty.items, [], "pods in a new namespace")
    created = core.create_namespaced_pod(NAMESPACE, pod_body("alpha", {"app": "py", "tier": "front"}))
    expect_equal(created.metadata.name, "alpha", "created pod name")
    check(created.metadata.uid, "created pod has no uid")
    check(created.metadata.resource_version, "created pod has no resourceVersion")
    expect_equal(created.status.phase, "Pending", "new pod phase")
    core.create_namespaced_pod(NAMESPACE, pod_body("beta", {"app": "py", "tier": "back"}))

    listed = core.list_namespaced_pod(NAMESPACE)
    expect_equal(sorted(p.metadata.name for p in listed.items), ["alpha", "beta"], "listed pods")
    front = core.list_namespaced_pod(NAMESPACE, label_selector="tier=front")
    expect_equal([p.metadata.name for p in front.items], ["alpha"], "pods with tier=front")
    across = core.list_pod_for_all_namespaces(label_selector="app=py")
    expect_equal(len(across.items), 2, "pods with app=py in all namespaces")

    fetched = core.read_namespaced_pod("alpha", NAMESPACE)
    expect_equal(fetched.metadata.uid, created.metadata.uid, "uid of fetched pod")

    try:
        core.read_namespaced_pod("nope", NAMESPACE)
        raise Mismatch("reading a missing pod succeeded")
    except ApiException as e:
        expect_equal(e.status, 404, "status reading a missing pod")

    step("pods: patch")
    # The Python client sends a dict body as strategic merge patch: containers merge by name.
    patched = core.patch_namespaced_pod(
        "alpha",
        NAMESPACE,
        {"metadata": {"labels": {"patched": "yes"}}, "spec": {"containers": [{"name": "main", "image": "rkube.local/busybox:v2"}]}},
    )
    expect_equal(patched.metadata.labels.get("patched"), "yes", "patched label")
    expect_equal(patched.metadata.labels.get("app"), "py", "label kept by patch")
    expect_equal([c.name for c in patched.spec.containers], ["main", "side"], "containers after strategic patch")
    expect_equal(patched.spec.containers[0].image, "rkube.local/busybox:v2", "patched image")
    expect_equal(patched.spec.containers[0].command, ["sleep", "3600"], "command kept by patch")


def check_pod_watch(core):
    step("pods: watch")
    rv = core.list_namespaced_pod(NAMESPACE).metadata.resource_version
    events = []
    errors = []

    def consume():
        w = watch.Watch()
        try:
            for event in w.stream(
                core.list_namespaced_pod, NAMESPACE, resource_version=rv, timeout_seconds=30
            ):
                events.append((event["type"], event["object"].metadata.name, event["object"].metadata.labels))
                if event["type"] == "DELETED":
                    w.stop()
        except Exception as e:  # reported by the main thread
            errors.append(e)

    watcher = threading.Thread(target=consume)
    # The watch resumes from the list's resourceVersion, so it sees every event below
    # however late its connection is established.
    watcher.start()
    core.create_namespaced_pod(NAMESPACE, pod_body("gamma", {"app": "py"}))
    core.patch_namespaced_pod("gamma", NAMESPACE, {"metadata": {"labels": {"watched": "true"}}})
    core.delete_namespaced_pod("gamma", NAMESPACE)
    watcher.join(timeout=60)
    check(not watcher.is_alive(), f"watch did not see the delete; events so far: {events}")
    check(not errors, f"watch failed: {errors}")
    expect_equal([(t, n) for t, n, _ in events], [("ADDED", "gamma"), ("MODIFIED", "gamma"), ("DELETED", "gamma")], "watch events")
    expect_equal(events[1][2].get("watched"), "true", "label in MODIFIED event")

    step("pods: watch without resourceVersion starts with the existing objects")
    w = watch.Watch()
    initial = []
    for event in w.stream(core.list_namespaced_pod, NAMESPACE, timeout_seconds=5):
        initial.append((event["type"], event["object"].metadata.name))
        if len(initial) == 2:
            w.stop()
    expect_equal(sorted(initial), [("ADDED", "alpha"), ("ADDED", "beta")], "initial watch events")


def check_deployments(apps):
    step("deployments: create, list, get")
    created = apps.create_namespaced_deployment(NAMESPACE, deployment_body("web", 2))
    expect_equal(created.metadata.generation, 1, "generation of a new deployment")
    expect_equal(created.spec.replicas, 2, "replicas of a new deployment")
    expect_equal(created.spec.strategy.type, "RollingUpdate", "defaulted strategy")
    listed = apps.list_namespaced_deployment(NAMESPACE)
    expect_equal([d.metadata.name for d in listed.items], ["web"], "listed deployments")
    everywhere = apps.list_deployment_for_all_namespaces()
    check(any(d.metadata.name == "web" for d in everywhere.items), "deployment missing from all-namespaces list")

    step("deployments: patch")
    patched = apps.patch_namespaced_deployment(
        "web",
        NAMESPACE,
        {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "rkube.local/busybox:v2"}]}}}},
    )
    containers = patched.spec.template.spec.containers
    expect_equal([(c.name, c.image) for c in containers], [("app", "rkube.local/busybox:v2")], "containers after patch")
    expect_equal(patched.metadata.generation, 2, "generation after a spec patch")

    step("deployments: scale subresource")
    scale = apps.read_namespaced_deployment_scale("web", NAMESPACE)
    expect_equal(scale.spec.replicas, 2, "scale before patch")
    scaled = apps.patch_namespaced_deployment_scale("web", NAMESPACE, {"spec": {"replicas": 5}})
    expect_equal(scaled.spec.replicas, 5, "scale returned by patch")
    expect_equal(scaled.kind, "Scale", "kind returned by the scale subresource")
    expect_equal(apps.read_namespaced_deployment("web", NAMESPACE).spec.replicas, 5, "deployment replicas after scale")

    step("deployments: watch")
    w = watch.Watch()
    seen = []
    for event in w.stream(apps.list_namespaced_deployment, NAMESPACE, timeout_seconds=5):
        seen.append((event["type"], event["object"].metadata.name, event["object"].spec.replicas))
        w.stop()
    expect_equal(seen, [("ADDED", "web", 5)], "deployment watch")

    step("deployments: delete")
    apps.delete_namespaced_deployment("web", NAMESPACE)
    expect_equal(apps.list_namespaced_deployment(NAMESPACE).items, [], "deployments after delete")


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    config.load_kube_config(config_file=sys.argv[1])
    core = client.CoreV1Api()
    apps = client.AppsV1Api()
    try:
        check_discovery()
        check_namespaces(core)
        check_pods(core)
        check_pod_watch(core)
        check_deployments(apps)
    except Mismatch as e:
        print(f"MISMATCH: {e}", file=sys.stderr)
        return 1
    except ApiException as e:
        print(f"UNEXPECTED API ERROR: {e.status} {e.reason}\n{e.body}", file=sys.stderr)
        return 1
    print("python client checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
