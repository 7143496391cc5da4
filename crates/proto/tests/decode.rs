//! Decoding real kubectl 1.32 bodies and hand-built messages.
//!
//! `fixtures/*.pb` are request bodies captured from `kubectl create ...` against a recording HTTP
//! server; `fixtures/*.json` are what the same kubectl prints for the same command with
//! `--dry-run=client -o json`. The only intended difference is that a zero `creationTimestamp`
//! (JSON `null`) is left out of the decoded object.

mod common;

use common::{envelope, Msg};
use proptest::prelude::*;
use rkube_proto::{decode, ProtoError};
use serde_json::{json, Value};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn strip_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

fn assert_matches_kubectl_json(name: &str) -> Value {
    let decoded = decode(&fixture(&format!("{name}.pb"))).unwrap();
    let mut expected: Value = serde_json::from_slice(&fixture(&format!("{name}.json"))).unwrap();
    strip_nulls(&mut expected);
    assert_eq!(decoded, expected, "{name}");
    decoded
}

#[test]
fn namespace_matches_kubectl_json() {
    let ns = assert_matches_kubectl_json("namespace");
    assert_eq!(ns["metadata"], json!({"name": "demo"}));
    assert_eq!(ns["spec"], json!({}));
}

#[test]
fn deployment_matches_kubectl_json() {
    let d = assert_matches_kubectl_json("deployment");
    assert_eq!(d["apiVersion"], "apps/v1");
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["ports"],
        json!([{"containerPort": 8080}])
    );
    let d2 = assert_matches_kubectl_json("deployment_command");
    assert_eq!(
        d2["spec"]["template"]["spec"]["containers"][0]["command"],
        json!(["sleep", "10"])
    );
}

#[test]
fn configmap_with_binary_data_matches_kubectl_json() {
    let cm = assert_matches_kubectl_json("configmap");
    assert_eq!(cm["data"], json!({"a": "b"}));
    assert_eq!(cm["binaryData"], json!({"bin": "AAH/"}));
}

#[test]
fn secret_matches_kubectl_json() {
    let secret = assert_matches_kubectl_json("secret");
    assert_eq!(secret["data"], json!({"a": "Yg=="}));
    assert_eq!(secret["type"], "Opaque");
}

#[test]
fn services_match_kubectl_json() {
    let svc = assert_matches_kubectl_json("service_clusterip");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080);
    let np = assert_matches_kubectl_json("service_nodeport");
    assert_eq!(np["spec"]["ports"][0]["targetPort"], "http");
    assert_eq!(np["spec"]["ports"][0]["nodePort"], 30080);
}

#[test]
fn batch_and_policy_kinds_match_kubectl_json() {
    let job = assert_matches_kubectl_json("job");
    assert_eq!(job["spec"]["template"]["spec"]["restartPolicy"], "Never");
    let cron = assert_matches_kubectl_json("cronjob");
    assert_eq!(cron["spec"]["schedule"], "*/1 * * * *");
    let pdb = assert_matches_kubectl_json("pdb");
    assert_eq!(pdb["spec"]["minAvailable"], "50%");
    assert_matches_kubectl_json("serviceaccount");
}

#[test]
fn drain_delete_options_body() {
    // `kubectl drain --disable-eviction` deletes pods with an empty protobuf DeleteOptions.
    let options = decode(&fixture("deleteoptions.pb")).unwrap();
    assert_eq!(
        options,
        json!({"apiVersion": "v1", "kind": "DeleteOptions"})
    );
}

fn metadata(name: &str) -> Msg {
    Msg::new()
        .str(1, name)
        .str(2, "") // gogo writes empty non-pointer strings
        .str(3, "ns")
        .int(7, 0)
        .msg(8, Msg::new()) // zero creationTimestamp
        .entry(11, "app", b"web")
        .entry(12, "note", b"x")
        .msg(
            13,
            Msg::new()
                .str(1, "ReplicaSet")
                .str(3, "rs")
                .str(4, "u1")
                .str(5, "apps/v1")
                .bool(6, true),
        )
        .str(14, "example.com/f")
}

fn container() -> Msg {
    Msg::new()
        .str(1, "app")
        .str(2, "busybox")
        .str(3, "sh")
        .str(4, "-c")
        .str(4, "sleep 1")
        .str(5, "/work")
        .msg(
            6,
            Msg::new().str(1, "http").int(2, 0).int(3, 80).str(4, "TCP"),
        )
        .msg(7, Msg::new().str(1, "A").str(2, "B"))
        .msg(
            7,
            Msg::new().str(1, "FROM_CM").msg(
                3,
                Msg::new().msg(
                    3,
                    Msg::new()
                        .msg(1, Msg::new().str(1, "cfg"))
                        .str(2, "k")
                        .bool(3, false),
                ),
            ),
        )
        .msg(
            7,
            Msg::new().str(1, "POD").msg(
                3,
                Msg::new().msg(1, Msg::new().str(1, "v1").str(2, "metadata.name")),
            ),
        )
        .msg(
            8,
            Msg::new()
                .quantity_entry(1, "cpu", "500m")
                .quantity_entry(2, "memory", "64Mi"),
        )
        .msg(9, Msg::new().str(1, "data").bool(2, true).str(3, "/data"))
        .msg(
            10,
            Msg::new()
                .msg(
                    1,
                    Msg::new().msg(
                        2,
                        Msg::new()
                            .str(1, "/healthz")
                            .msg(2, Msg::new().int(1, 1).str(3, "http")),
                    ),
                )
                .int(2, 5),
        )
        .msg(
            11,
            Msg::new().msg(
                1,
                Msg::new().msg(3, Msg::new().msg(1, Msg::new().int(1, 0).int(2, 8080))),
            ),
        )
        .str(14, "IfNotPresent")
        .msg(
            15,
            Msg::new()
                .bool(2, false)
                .int(4, 1000)
                .msg(1, Msg::new().str(2, "ALL")),
        )
        .bool(16, true)
        .bool(17, false)
        .bool(18, true)
}

fn pod_spec() -> Msg {
    Msg::new()
        .msg(
            1,
            Msg::new().str(1, "data").msg(
                2,
                Msg::new().msg(2, Msg::new().str(1, "").msg(2, Msg::new().str(1, "1Gi"))),
            ),
        )
        .msg(
            1,
            Msg::new().str(1, "cfg").msg(
                2,
                Msg::new().msg(19, Msg::new().msg(1, Msg::new().str(1, "cm")).int(3, 420)),
            ),
        )
        .msg(
            1,
            Msg::new().str(1, "sec").msg(
                2,
                Msg::new().msg(
                    6,
                    Msg::new()
                        .str(1, "s")
                        .msg(2, Msg::new().str(1, "k").str(2, "p")),
                ),
            ),
        )
        .msg(
            1,
            Msg::new().str(1, "host").msg(
                2,
                Msg::new().msg(1, Msg::new().str(1, "/var/log").str(2, "Directory")),
            ),
        )
        .msg(2, container())
        .msg(20, Msg::new().str(1, "init").str(2, "busybox"))
        .str(3, "Always")
        .int(4, 0) // pointer field: an explicit zero survives
        .str(6, "ClusterFirst")
        .entry(7, "disk", b"ssd")
        .str(8, "runner")
        .str(10, "node-1")
        .bool(11, true)
        .msg(
            22,
            Msg::new()
                .str(1, "k")
                .str(2, "Exists")
                .str(4, "NoSchedule")
                .int(5, 30),
        )
        .msg(
            14,
            Msg::new()
                .int(2, 1000)
                .raw(&Msg::new().int(4, 1).int(4, 2).into_bytes()),
        )
}

#[test]
fn pod_with_the_fields_kubectl_run_can_set() {
    let pod = Msg::new().msg(1, metadata("p")).msg(2, pod_spec()).msg(
        3,
        Msg::new()
            .str(1, "Pending")
            .msg(7, Msg::new().int(1, 1_704_067_200)),
    );
    let decoded = decode(&envelope("v1", "Pod", pod)).unwrap();
    let expected = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "p",
            "namespace": "ns",
            "labels": {"app": "web"},
            "annotations": {"note": "x"},
            "ownerReferences": [{"kind": "ReplicaSet", "name": "rs", "uid": "u1", "apiVersion": "apps/v1", "controller": true}],
            "finalizers": ["example.com/f"]
        },
        "spec": {
            "volumes": [
                {"name": "data", "emptyDir": {"sizeLimit": "1Gi"}},
                {"name": "cfg", "configMap": {"name": "cm", "defaultMode": 420}},
                {"name": "sec", "secret": {"secretName": "s", "items": [{"key": "k", "path": "p"}]}},
                {"name": "host", "hostPath": {"path": "/var/log", "type": "Directory"}}
            ],
            "containers": [{
                "name": "app",
                "image": "busybox",
                "command": ["sh"],
                "args": ["-c", "sleep 1"],
                "workingDir": "/work",
                "ports": [{"name": "http", "containerPort": 80, "protocol": "TCP"}],
                "env": [
                    {"name": "A", "value": "B"},
                    {"name": "FROM_CM", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k", "optional": false}}},
                    {"name": "POD", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}
                ],
                "resources": {"limits": {"cpu": "500m"}, "requests": {"memory": "64Mi"}},
                "volumeMounts": [{"name": "data", "readOnly": true, "mountPath": "/data"}],
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "initialDelaySeconds": 5},
                "readinessProbe": {"tcpSocket": {"port": 8080}},
                "imagePullPolicy": "IfNotPresent",
                "securityContext": {"capabilities": {"drop": ["ALL"]}, "privileged": false, "runAsUser": 1000},
                "stdin": true,
                "tty": true
            }],
            "initContainers": [{"name": "init", "image": "busybox"}],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 0,
            "dnsPolicy": "ClusterFirst",
            "nodeSelector": {"disk": "ssd"},
            "serviceAccountName": "runner",
            "nodeName": "node-1",
            "hostNetwork": true,
            "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 30}],
            "securityContext": {"runAsUser": 1000, "supplementalGroups": [1, 2]}
        },
        "status": {"phase": "Pending", "startTime": "2024-01-01T00:00:00Z"}
    });
    assert_eq!(decoded, expected);
}

#[test]
fn deployment_strategy_and_selector_expressions() {
    let spec = Msg::new()
        .int(1, 0) // replicas: 0 is meaningful
        .msg(
            2,
            Msg::new().entry(1, "app", b"x").msg(
                2,
                Msg::new()
                    .str(1, "tier")
                    .str(2, "In")
                    .str(3, "a")
                    .str(3, "b"),
            ),
        )
        .msg(
            3,
            Msg::new()
                .msg(1, Msg::new())
                .msg(2, Msg::new().msg(2, Msg::new().str(1, "c").str(2, "i"))),
        )
        .msg(
            4,
            Msg::new().str(1, "RollingUpdate").msg(
                2,
                Msg::new()
                    .msg(1, Msg::new().int(1, 1).str(3, "25%"))
                    .msg(2, Msg::new().int(1, 0).int(2, 1)),
            ),
        )
        .int(6, 10);
    let decoded = decode(&envelope(
        "apps/v1",
        "Deployment",
        Msg::new().msg(1, Msg::new().str(1, "d")).msg(2, spec),
    ))
    .unwrap();
    assert_eq!(
        decoded["spec"],
        json!({
            "replicas": 0,
            "selector": {
                "matchLabels": {"app": "x"},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]
            },
            "template": {"metadata": {}, "spec": {"containers": [{"name": "c", "image": "i"}]}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": 1}},
            "revisionHistoryLimit": 10
        })
    );
}

#[test]
fn eviction_and_delete_options() {
    let options = Msg::new()
        .int(1, 0)
        .msg(2, Msg::new().str(1, "uid-1"))
        .str(4, "Foreground")
        .str(5, "All");
    let body = envelope(
        "policy/v1",
        "Eviction",
        Msg::new()
            .msg(1, Msg::new().str(1, "p").str(3, "default"))
            .msg(2, options),
    );
    assert_eq!(
        decode(&body).unwrap(),
        json!({
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": "p", "namespace": "default"},
            "deleteOptions": {
                "gracePeriodSeconds": 0,
                "preconditions": {"uid": "uid-1"},
                "propagationPolicy": "Foreground",
                "dryRun": ["All"]
            }
        })
    );
    let delete = envelope("apps/v1", "DeleteOptions", Msg::new().bool(3, true));
    assert_eq!(
        decode(&delete).unwrap(),
        json!({"apiVersion": "apps/v1", "kind": "DeleteOptions", "orphanDependents": true})
    );
}

#[test]
fn configmap_immutable_and_namespace_finalizers() {
    let cm = envelope(
        "v1",
        "ConfigMap",
        Msg::new().msg(1, Msg::new().str(1, "c")).bool(4, false),
    );
    assert_eq!(decode(&cm).unwrap()["immutable"], false);
    let ns = envelope(
        "v1",
        "Namespace",
        Msg::new().msg(2, Msg::new().str(1, "kubernetes")),
    );
    assert_eq!(
        decode(&ns).unwrap()["spec"],
        json!({"finalizers": ["kubernetes"]})
    );
}

#[test]
fn scalars_keep_sign_and_last_value_wins() {
    // Negative int32 arrives sign-extended to ten bytes.
    let spec = Msg::new().int(1, -1).int(5, 3).int(5, 0);
    let decoded = decode(&envelope("apps/v1", "Deployment", Msg::new().msg(2, spec))).unwrap();
    assert_eq!(decoded["spec"], json!({"replicas": -1}));
}

#[test]
fn times_render_as_rfc3339_and_zero_is_omitted() {
    let meta = Msg::new()
        .msg(8, Msg::new().int(1, 1_704_067_200).int(2, 500))
        .msg(9, Msg::new());
    let decoded = decode(&envelope("v1", "Namespace", Msg::new().msg(1, meta))).unwrap();
    assert_eq!(
        decoded["metadata"],
        json!({"creationTimestamp": "2024-01-01T00:00:00Z"})
    );
    let go_zero = Msg::new().msg(8, Msg::new().int(1, -62_135_596_800));
    let decoded = decode(&envelope("v1", "Namespace", Msg::new().msg(1, go_zero))).unwrap();
    assert_eq!(decoded["metadata"], json!({}));
    let bad_nanos = Msg::new().msg(8, Msg::new().int(1, 1).int(2, 1_000_000_000));
    assert!(matches!(
        decode(&envelope("v1", "Namespace", Msg::new().msg(1, bad_nanos))),
        Err(ProtoError::InvalidValue {
            message: "meta.v1.ObjectMeta",
            field: 8,
            ..
        })
    ));
}

#[test]
fn unknown_field_numbers_are_refused_with_message_and_number() {
    let spec = Msg::new().str(99, "surprise");
    let err = decode(&envelope("v1", "Pod", Msg::new().msg(2, spec))).unwrap_err();
    assert_eq!(
        err,
        ProtoError::UnknownField {
            message: "core.v1.PodSpec",
            field: 99
        }
    );
    assert!(err.to_string().contains("core.v1.PodSpec"), "{err}");
    assert!(err.to_string().contains("99"), "{err}");
}

#[test]
fn unsupported_upstream_fields_are_refused_by_name() {
    let spec = Msg::new().msg(18, Msg::new());
    let err = decode(&envelope("v1", "Pod", Msg::new().msg(2, spec))).unwrap_err();
    assert_eq!(
        err,
        ProtoError::UnsupportedField {
            message: "core.v1.PodSpec",
            field: "affinity"
        }
    );
}

#[test]
fn unknown_kinds_and_versions() {
    let err = decode(&envelope(
        "rbac.authorization.k8s.io/v1",
        "Role",
        Msg::new(),
    ))
    .unwrap_err();
    assert_eq!(err, ProtoError::UnsupportedKind("Role".into()));
    let err = decode(&envelope("apps/v1beta2", "Deployment", Msg::new())).unwrap_err();
    assert!(
        matches!(err, ProtoError::UnsupportedApiVersion { .. }),
        "{err:?}"
    );
    let no_kind = [
        b"k8s\0".as_slice(),
        &Msg::new().msg(2, Msg::new()).into_bytes(),
    ]
    .concat();
    assert_eq!(decode(&no_kind).unwrap_err(), ProtoError::MissingKind);
}

#[test]
fn envelope_variants() {
    assert_eq!(
        decode(b"{\"kind\":\"Pod\"}").unwrap_err(),
        ProtoError::MissingMagic
    );
    assert_eq!(decode(b"k8s").unwrap_err(), ProtoError::MissingMagic);
    let gzip = [
        b"k8s\0".as_slice(),
        &Msg::new()
            .msg(1, Msg::new().str(1, "v1").str(2, "Pod"))
            .str(3, "gzip")
            .into_bytes(),
    ]
    .concat();
    assert_eq!(
        decode(&gzip).unwrap_err(),
        ProtoError::UnsupportedEncoding("gzip".into())
    );
    let json_payload = [
        b"k8s\0".as_slice(),
        &Msg::new()
            .msg(1, Msg::new().str(1, "v1").str(2, "Role"))
            .bytes(2, br#"{"kind":"Other","metadata":{"name":"r"}}"#)
            .str(4, "application/json")
            .into_bytes(),
    ]
    .concat();
    assert_eq!(
        decode(&json_payload).unwrap(),
        json!({"apiVersion": "v1", "kind": "Role", "metadata": {"name": "r"}})
    );
}

#[test]
fn malformed_input_is_an_error() {
    let wrong_wire_type = envelope("v1", "Pod", Msg::new().varint(1, 5));
    assert!(matches!(
        decode(&wrong_wire_type),
        Err(ProtoError::WireType {
            message: "core.v1.Pod",
            field: 1,
            ..
        })
    ));
    let group = envelope("v1", "Pod", Msg::new().raw(&[0x0b, 0x0c]));
    assert!(matches!(decode(&group), Err(ProtoError::Malformed(_))));
    let fixed32 = envelope(
        "v1",
        "Namespace",
        Msg::new().msg(1, Msg::new().fixed32(7, 1)),
    );
    assert!(matches!(
        decode(&fixed32),
        Err(ProtoError::WireType {
            expected: "varint",
            got: "32-bit",
            ..
        })
    ));
    let fixed64 = envelope(
        "v1",
        "Namespace",
        Msg::new().msg(1, Msg::new().fixed64(1, 1)),
    );
    assert!(matches!(decode(&fixed64), Err(ProtoError::WireType { .. })));
    let bad_utf8 = envelope(
        "v1",
        "Namespace",
        Msg::new().msg(1, Msg::new().bytes(1, &[0xff, 0xfe])),
    );
    assert!(matches!(
        decode(&bad_utf8),
        Err(ProtoError::InvalidValue { .. })
    ));
    let bad_int_or_string = Msg::new().msg(1, Msg::new().msg(4, Msg::new().int(1, 7)));
    assert!(decode(&envelope(
        "v1",
        "Service",
        Msg::new().msg(2, bad_int_or_string)
    ))
    .is_err());
    let mut truncated = fixture("deployment.pb");
    truncated.truncate(truncated.len() - 5);
    assert!(matches!(decode(&truncated), Err(ProtoError::Malformed(_))));
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes);
        let mut with_magic = b"k8s\0".to_vec();
        with_magic.extend_from_slice(&bytes);
        let _ = decode(&with_magic);
    }

    #[test]
    fn arbitrary_payloads_of_known_kinds_never_panic(
        kind in prop::sample::select(vec!["Pod", "Deployment", "Service", "Secret", "Job", "CronJob"]),
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let api_version = match kind {
            "Deployment" => "apps/v1",
            "Job" | "CronJob" => "batch/v1",
            _ => "v1",
        };
        let _ = decode(&envelope(api_version, kind, Msg::new().raw(&bytes)));
    }

    #[test]
    fn mutated_real_bodies_never_panic(index in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut body = fixture("deployment.pb");
        let at = index.index(body.len());
        body[at] = byte;
        let _ = decode(&body);
    }
}
