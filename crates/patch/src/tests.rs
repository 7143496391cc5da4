//! Patches as kubectl and client libraries send them, against realistic objects.

use serde_json::{json, Value};

use crate::{apply_patch, PatchError, PatchType};

fn smp(kind: &str, original: &Value, patch: Value) -> Value {
    apply_patch(
        PatchType::StrategicMerge,
        original,
        patch.to_string().as_bytes(),
        kind,
    )
    .unwrap()
}

fn smp_err(kind: &str, original: &Value, patch: Value) -> PatchError {
    apply_patch(
        PatchType::StrategicMerge,
        original,
        patch.to_string().as_bytes(),
        kind,
    )
    .unwrap_err()
}

fn deployment() -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "web",
            "namespace": "default",
            "labels": {"app": "web", "tier": "frontend"},
            "finalizers": ["example.com/a"],
        },
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}
            },
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "image": "nginx:1.25",
                            "ports": [{"containerPort": 80, "protocol": "TCP"}],
                            "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}]
                        },
                        {"name": "sidecar", "image": "busybox", "args": ["sleep", "1d"]}
                    ],
                    "volumes": [{"name": "data", "emptyDir": {}}],
                    "tolerations": [{"key": "a", "operator": "Exists"}]
                }
            }
        },
        "status": {
            "conditions": [
                {"type": "Available", "status": "True"},
                {"type": "Progressing", "status": "True"}
            ]
        }
    })
}

fn containers(obj: &Value) -> &Vec<Value> {
    obj["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
}

fn names(items: &Value, key: &str) -> Vec<Value> {
    items
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i[key].clone())
        .collect()
}

#[test]
fn kubectl_apply_changes_one_image_with_set_element_order() {
    let patch = json!({"spec": {"template": {"spec": {
        "$setElementOrder/containers": [{"name": "app"}, {"name": "sidecar"}],
        "containers": [{"image": "nginx:1.26", "name": "app"}]
    }}}});
    let out = smp("Deployment", &deployment(), patch);
    let cs = containers(&out);
    assert_eq!(cs.len(), 2);
    assert_eq!(cs[0]["name"], "app");
    assert_eq!(cs[0]["image"], "nginx:1.26");
    // Untouched fields of the merged item survive.
    assert_eq!(cs[0]["env"][1]["name"], "B");
    assert_eq!(cs[1]["image"], "busybox");
    assert_eq!(out["spec"]["replicas"], 2);
}

#[test]
fn set_element_order_keeps_server_only_items_in_place() {
    let original = json!({"spec": {"containers": [
        {"name": "a"}, {"name": "server-only"}, {"name": "b"}
    ]}});
    let patch = json!({"spec": {
        "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}, {"name": "c"}],
        "containers": [{"name": "c", "image": "new"}]
    }});
    let out = smp("Pod", &original, patch);
    assert_eq!(
        names(&out["spec"]["containers"], "name"),
        vec![json!("a"), json!("server-only"), json!("b"), json!("c")]
    );
}

#[test]
fn set_element_order_puts_new_items_where_the_order_says() {
    let original = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
    let patch = json!({"spec": {
        "$setElementOrder/containers": [{"name": "new"}, {"name": "b"}, {"name": "a"}],
        "containers": [{"name": "new"}]
    }});
    let out = smp("Pod", &original, patch);
    assert_eq!(
        names(&out["spec"]["containers"], "name"),
        vec![json!("new"), json!("b"), json!("a")]
    );
}

#[test]
fn set_element_order_alone_reorders_an_untouched_list() {
    let original = json!({"metadata": {"finalizers": ["x", "y", "z"]}});
    let patch = json!({"metadata": {"$setElementOrder/finalizers": ["z", "y", "x"]}});
    let out = smp("ConfigMap", &original, patch);
    assert_eq!(out["metadata"]["finalizers"], json!(["z", "y", "x"]));
}

#[test]
fn kubectl_apply_removes_an_env_var() {
    let patch = json!({"spec": {"template": {"spec": {
        "$setElementOrder/containers": [{"name": "app"}, {"name": "sidecar"}],
        "containers": [{
            "$setElementOrder/env": [{"name": "A"}],
            "env": [{"$patch": "delete", "name": "B"}],
            "name": "app"
        }]
    }}}});
    let out = smp("Deployment", &deployment(), patch);
    assert_eq!(
        containers(&out)[0]["env"],
        json!([{"name": "A", "value": "1"}])
    );
}

#[test]
fn adding_a_port_merges_by_container_port() {
    let patch = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "app", "ports": [{"containerPort": 443, "name": "https"}]}
    ]}}}});
    let out = smp("Deployment", &deployment(), patch);
    assert_eq!(
        names(&containers(&out)[0]["ports"], "containerPort"),
        vec![json!(80), json!(443)]
    );
    // The same patch against an unknown kind replaces the containers list.
    let out = apply_patch(
        PatchType::StrategicMerge,
        &deployment(),
        json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "ports": []}]}}}})
            .to_string()
            .as_bytes(),
        "Widget",
    )
    .unwrap();
    assert_eq!(containers(&out), &vec![json!({"name": "app", "ports": []})]);
}

#[test]
fn null_deletes_a_label() {
    let patch = json!({"metadata": {"labels": {"tier": null, "new": "yes"}}});
    let out = smp("Deployment", &deployment(), patch);
    assert_eq!(
        out["metadata"]["labels"],
        json!({"app": "web", "new": "yes"})
    );
}

#[test]
fn finalizers_merge_as_a_set_and_delete_from_primitive_list() {
    let added = smp(
        "Deployment",
        &deployment(),
        json!({"metadata": {"finalizers": ["example.com/b", "example.com/a"]}}),
    );
    assert_eq!(
        added["metadata"]["finalizers"],
        json!(["example.com/a", "example.com/b"])
    );
    let removed = smp(
        "Deployment",
        &added,
        json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["example.com/a"]}}),
    );
    assert_eq!(removed["metadata"]["finalizers"], json!(["example.com/b"]));
}

#[test]
fn untagged_primitive_list_is_replaced() {
    let patch = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "sidecar", "args": ["sleep", "2d"]}
    ]}}}});
    let out = smp("Deployment", &deployment(), patch);
    assert_eq!(containers(&out)[1]["args"], json!(["sleep", "2d"]));
}

#[test]
fn tolerations_have_no_merge_key_and_are_replaced() {
    let patch = json!({"spec": {"template": {"spec": {
        "tolerations": [{"key": "b", "operator": "Exists"}]
    }}}});
    let out = smp("Deployment", &deployment(), patch);
    assert_eq!(
        out["spec"]["template"]["spec"]["tolerations"],
        json!([{"key": "b", "operator": "Exists"}])
    );
}

#[test]
fn patch_replace_on_a_map_and_on_a_list() {
    let out = smp(
        "Deployment",
        &deployment(),
        json!({"spec": {"template": {"metadata": {"labels": {"$patch": "replace", "v": "2"}}}}}),
    );
    assert_eq!(
        out["spec"]["template"]["metadata"]["labels"],
        json!({"v": "2"})
    );

    let out = smp(
        "Deployment",
        &deployment(),
        json!({"spec": {"template": {"spec": {"containers": [
            {"$patch": "replace"},
            {"name": "only", "image": "alpine"}
        ]}}}}),
    );
    assert_eq!(
        containers(&out),
        &vec![json!({"name": "only", "image": "alpine"})]
    );
}

#[test]
fn patch_delete_on_a_map_empties_it() {
    let out = smp(
        "Deployment",
        &deployment(),
        json!({"spec": {"strategy": {"$patch": "delete"}}}),
    );
    assert_eq!(out["spec"]["strategy"], json!({}));
}

#[test]
fn retain_keys_switches_deployment_strategy_to_recreate() {
    let patch = json!({"spec": {"strategy": {
        "$retainKeys": ["type"],
        "type": "Recreate"
    }}});
    let out = smp("Deployment", &deployment(), patch);
    assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
}

#[test]
fn retain_keys_on_a_volume_switches_its_source() {
    let patch = json!({"spec": {"template": {"spec": {"volumes": [{
        "$retainKeys": ["configMap", "name"],
        "name": "data",
        "configMap": {"name": "cfg"}
    }]}}}});
    let out = smp("Deployment", &deployment(), patch);
    assert_eq!(
        out["spec"]["template"]["spec"]["volumes"],
        json!([{"name": "data", "configMap": {"name": "cfg"}}])
    );
}

#[test]
fn service_ports_merge_by_port() {
    let service = json!({"kind": "Service", "spec": {"ports": [
        {"port": 80, "targetPort": 8080, "protocol": "TCP"}
    ]}});
    let out = smp(
        "Service",
        &service,
        json!({"spec": {"ports": [{"port": 80, "targetPort": 9090}, {"port": 443}]}}),
    );
    assert_eq!(
        out["spec"]["ports"],
        json!([
            {"port": 80, "targetPort": 9090, "protocol": "TCP"},
            {"port": 443}
        ])
    );
}

#[test]
fn owner_references_merge_by_uid() {
    let original = json!({"metadata": {"ownerReferences": [
        {"uid": "1", "kind": "ReplicaSet", "name": "a"}
    ]}});
    let out = smp(
        "Pod",
        &original,
        json!({"metadata": {"ownerReferences": [
            {"uid": "1", "controller": true},
            {"uid": "2", "kind": "Node", "name": "n"}
        ]}}),
    );
    assert_eq!(
        names(&out["metadata"]["ownerReferences"], "uid"),
        vec![json!("1"), json!("2")]
    );
    assert_eq!(out["metadata"]["ownerReferences"][0]["name"], "a");
    assert_eq!(out["metadata"]["ownerReferences"][0]["controller"], true);
}

#[test]
fn status_conditions_merge_by_type() {
    let out = smp(
        "Deployment",
        &deployment(),
        json!({"status": {"conditions": [{"type": "Progressing", "status": "False"}]}}),
    );
    assert_eq!(
        out["status"]["conditions"],
        json!([
            {"type": "Available", "status": "True"},
            {"type": "Progressing", "status": "False"}
        ])
    );
}

#[test]
fn pod_volume_mounts_merge_by_mount_path_and_volumes_by_name() {
    let pod = json!({"spec": {
        "containers": [{"name": "c", "volumeMounts": [{"name": "v", "mountPath": "/a"}]}],
        "volumes": [{"name": "v", "emptyDir": {}}]
    }});
    let out = smp(
        "Pod",
        &pod,
        json!({"spec": {
            "containers": [{"name": "c", "volumeMounts": [
                {"name": "w", "mountPath": "/b"},
                {"mountPath": "/a", "readOnly": true}
            ]}],
            "volumes": [{"name": "w", "emptyDir": {}}]
        }}),
    );
    assert_eq!(
        out["spec"]["containers"][0]["volumeMounts"],
        json!([
            {"name": "v", "mountPath": "/a", "readOnly": true},
            {"name": "w", "mountPath": "/b"}
        ])
    );
    assert_eq!(
        names(&out["spec"]["volumes"], "name"),
        vec![json!("v"), json!("w")]
    );
}

#[test]
fn cronjob_pod_template_is_found() {
    let cronjob = json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {
        "containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]
    }}}}}});
    let out = smp(
        "CronJob",
        &cronjob,
        json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {
            "containers": [{"name": "b", "image": "z"}]
        }}}}}}),
    );
    let cs = &out["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"];
    assert_eq!(
        cs,
        &json!([{"name": "a", "image": "x"}, {"name": "b", "image": "z"}])
    );
}

#[test]
fn python_client_scales_with_strategic_merge() {
    let scale = json!({"kind": "Scale", "spec": {"replicas": 1}, "status": {"replicas": 1}});
    let out = smp("Scale", &scale, json!({"spec": {"replicas": 5}}));
    assert_eq!(out["spec"]["replicas"], 5);
    assert_eq!(out["status"]["replicas"], 1);
}

#[test]
fn new_nested_values_lose_nulls_and_directives() {
    let out = smp(
        "Deployment",
        &json!({"metadata": {"name": "x"}}),
        json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "a"}],
            "containers": [{"name": "a", "image": null, "env": [{"name": "E", "value": "v"}]}]
        }}}}),
    );
    assert_eq!(
        out["spec"],
        json!({"template": {"spec": {"containers": [
            {"name": "a", "env": [{"name": "E", "value": "v"}]}
        ]}}})
    );
}

#[test]
fn missing_merge_key_is_an_apply_error() {
    let err = smp_err(
        "Deployment",
        &deployment(),
        json!({"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}}),
    );
    assert!(
        matches!(err, PatchError::Apply(ref m) if m.contains("merge key")),
        "{err}"
    );
}

#[test]
fn unknown_patch_directive_is_an_apply_error() {
    let err = smp_err("Pod", &json!({}), json!({"spec": {"$patch": "explode"}}));
    assert!(matches!(err, PatchError::Apply(_)), "{err}");
    let err = smp_err("Pod", &json!({}), json!({"spec": {"$retainKeys": "name"}}));
    assert!(matches!(err, PatchError::Apply(_)), "{err}");
}

#[test]
fn undecodable_bodies_are_decode_errors() {
    for patch_type in [
        PatchType::Json,
        PatchType::Merge,
        PatchType::StrategicMerge,
        PatchType::Apply,
    ] {
        let err = apply_patch(patch_type, &json!({}), b"{\"a\": [", "Pod").unwrap_err();
        assert!(
            matches!(err, PatchError::Decode(_)),
            "{patch_type:?}: {err}"
        );
        assert!(err.to_string().starts_with("error decoding patch:"));
    }
    let err = apply_patch(PatchType::StrategicMerge, &json!({}), b"[1]", "Pod").unwrap_err();
    assert!(matches!(err, PatchError::Decode(_)), "{err}");
    let err = apply_patch(PatchType::Json, &json!({}), b"{}", "Pod").unwrap_err();
    assert!(matches!(err, PatchError::Decode(_)), "{err}");
}

#[test]
fn json_patch_failures_are_apply_errors() {
    let original = json!({"metadata": {"name": "a"}});
    let failing_test = br#"[{"op": "test", "path": "/metadata/name", "value": "b"}]"#;
    let err = apply_patch(PatchType::Json, &original, failing_test, "Pod").unwrap_err();
    assert!(matches!(err, PatchError::Apply(_)), "{err}");
    let bad_path = br#"[{"op": "remove", "path": "/spec/nothing"}]"#;
    let err = apply_patch(PatchType::Json, &original, bad_path, "Pod").unwrap_err();
    assert!(matches!(err, PatchError::Apply(_)), "{err}");

    let ok = br#"[{"op": "test", "path": "/metadata/name", "value": "a"},
                  {"op": "add", "path": "/metadata/labels", "value": {"x": "y"}}]"#;
    let out = apply_patch(PatchType::Json, &original, ok, "Pod").unwrap();
    assert_eq!(out["metadata"]["labels"]["x"], "y");
}

#[test]
fn results_that_are_not_objects_are_rejected() {
    let original = json!({"a": 1});
    let err = apply_patch(PatchType::Merge, &original, b"[1, 2]", "Pod").unwrap_err();
    assert!(matches!(err, PatchError::Apply(_)), "{err}");
    let err = apply_patch(PatchType::Merge, &original, b"null", "Pod").unwrap_err();
    assert!(matches!(err, PatchError::Apply(_)), "{err}");
    let replace_root = br#"[{"op": "replace", "path": "", "value": 7}]"#;
    let err = apply_patch(PatchType::Json, &original, replace_root, "Pod").unwrap_err();
    assert!(matches!(err, PatchError::Apply(_)), "{err}");
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    // Deep enough to pass serde_json's own limit of 128 but exceed ours.
    let depth = 127;
    let body = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
    let err = apply_patch(
        PatchType::StrategicMerge,
        &json!({}),
        body.as_bytes(),
        "Pod",
    )
    .unwrap_err();
    assert!(
        matches!(err, PatchError::Apply(ref m) if m.contains("deeper")),
        "{err}"
    );

    let lists = format!("{{\"a\":{}1{}}}", "[".repeat(2000), "]".repeat(2000));
    for patch_type in [
        PatchType::Json,
        PatchType::Merge,
        PatchType::StrategicMerge,
        PatchType::Apply,
    ] {
        let err = apply_patch(patch_type, &json!({}), lists.as_bytes(), "Pod").unwrap_err();
        assert!(
            matches!(err, PatchError::Decode(_)),
            "{patch_type:?}: {err}"
        );
    }
}

#[test]
fn merge_patch_follows_rfc_7396() {
    let out = apply_patch(
        PatchType::Merge,
        &deployment(),
        br#"{"spec": {"replicas": 4, "template": {"spec": {"containers": [{"name": "x"}]}}}}"#,
        "Deployment",
    )
    .unwrap();
    assert_eq!(out["spec"]["replicas"], 4);
    // Merge patch replaces lists even for built-in kinds.
    assert_eq!(containers(&out), &vec![json!({"name": "x"})]);
}

#[test]
fn apply_creates_from_yaml_when_missing() {
    let body = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cfg\n  creationTimestamp: null\ndata:\n  k: v\n";
    let out = apply_patch(PatchType::Apply, &Value::Null, body, "ConfigMap").unwrap();
    assert_eq!(
        out,
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"k": "v"}})
    );
}

#[test]
fn apply_merges_json_body_into_existing_object() {
    let body = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"template": {"spec": {"containers": [{"name": "sidecar", "image": "busybox:2"}]}}}});
    let out = apply_patch(
        PatchType::Apply,
        &deployment(),
        body.to_string().as_bytes(),
        "Deployment",
    )
    .unwrap();
    let cs = containers(&out);
    assert_eq!(cs.len(), 2, "apply merges containers by name");
    assert_eq!(cs[1]["image"], "busybox:2");
    assert_eq!(out["metadata"]["namespace"], "default");

    let err = apply_patch(PatchType::Apply, &Value::Null, b"- a\n- b\n", "Pod").unwrap_err();
    assert!(matches!(err, PatchError::Decode(_)), "{err}");
}

#[test]
fn content_types_map_to_patch_types() {
    assert_eq!(
        PatchType::from_content_type("application/strategic-merge-patch+json; charset=utf-8"),
        Some(PatchType::StrategicMerge)
    );
    assert_eq!(
        PatchType::from_content_type("application/apply-patch+yaml"),
        Some(PatchType::Apply)
    );
    assert_eq!(PatchType::from_content_type("application/json"), None);
}

/// `{"a":{"a":...1...}}` nested `levels` deep (the outer object is level 1).
fn nested_objects(levels: usize) -> String {
    format!("{}1{}", "{\"a\":".repeat(levels), "}".repeat(levels))
}

#[test]
fn every_patch_type_keeps_results_within_the_depth_limit() {
    use crate::{exceeds_depth, MAX_DEPTH};
    let original = json!({"metadata": {"name": "x"}});
    for levels in [
        100,
        MAX_DEPTH,
        MAX_DEPTH + 1,
        127,
        128,
        129,
        10_000,
        1_000_000,
    ] {
        let nested = nested_objects(levels);
        let bodies = [
            (PatchType::Merge, nested.clone()),
            (PatchType::StrategicMerge, nested.clone()),
            (PatchType::Apply, nested.clone()),
            // Apply bodies are YAML, which decodes one level deeper than JSON.
            (
                PatchType::Apply,
                format!(
                    "{{a: {}1{}}}",
                    "[".repeat(levels - 1),
                    "]".repeat(levels - 1)
                ),
            ),
            (
                PatchType::Json,
                format!(
                    r#"[{{"op": "add", "path": "/spec", "value": {}}}]"#,
                    nested_objects(levels - 1)
                ),
            ),
        ];
        for (patch_type, body) in bodies {
            match apply_patch(patch_type, &original, body.as_bytes(), "Pod") {
                Ok(result) => {
                    assert!(levels <= MAX_DEPTH, "{patch_type:?} at {levels}");
                    assert!(!exceeds_depth(&result, MAX_DEPTH));
                    // What is accepted can be encoded and decoded again.
                    let bytes = serde_json::to_vec(&result).unwrap();
                    serde_json::from_slice::<Value>(&bytes).unwrap();
                }
                Err(e) => assert!(levels > MAX_DEPTH, "{patch_type:?} at {levels}: {e}"),
            }
        }
    }
}

#[test]
fn json_patch_operations_are_capped_at_upstreams_limit() {
    use crate::MAX_JSON_PATCH_OPERATIONS;
    let op = r#"{"op": "test", "path": "/a", "value": 1}"#;
    let ops = |n: usize| format!("[{}]", vec![op; n].join(","));
    let original = json!({"a": 1});
    assert!(apply_patch(
        PatchType::Json,
        &original,
        ops(MAX_JSON_PATCH_OPERATIONS).as_bytes(),
        "Pod"
    )
    .is_ok());
    let err = apply_patch(
        PatchType::Json,
        &original,
        ops(MAX_JSON_PATCH_OPERATIONS + 1).as_bytes(),
        "Pod",
    )
    .unwrap_err();
    assert!(
        matches!(err, PatchError::TooManyOperations(10_001)),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "The allowed maximum operations in a JSON patch is 10000, got 10001"
    );
}

#[test]
fn doubling_copies_stop_at_the_copy_budget() {
    // Each copy of the document's list into itself doubles it: 35 of them would need
    // 2^35 times the list.
    let original = json!({"spec": {"args": ["0123456789abcdef0123456789abcdef"]}});
    let doubling: Vec<Value> = (0..35)
        .map(|_| json!({"op": "copy", "from": "/spec/args", "path": "/spec/args/-"}))
        .collect();
    let err = apply_patch(
        PatchType::Json,
        &original,
        Value::Array(doubling).to_string().as_bytes(),
        "Pod",
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            PatchError::CopyTooLarge {
                limit: 3_145_728,
                ..
            }
        ),
        "{err}"
    );
    assert!(err
        .to_string()
        .starts_with("Unable to complete the copy, the accumulated size increase of copy is "));

    // Copying a map into itself nests it one level deeper each time.
    let nesting: Vec<Value> = (0..200)
        .map(|_| json!({"op": "copy", "from": "/spec", "path": "/spec/inner"}))
        .collect();
    let err = apply_patch(
        PatchType::Json,
        &original,
        Value::Array(nesting).to_string().as_bytes(),
        "Pod",
    )
    .unwrap_err();
    assert!(matches!(err, PatchError::TooDeep), "{err}");

    // Ordinary copies still work.
    let ok = br#"[{"op": "copy", "from": "/spec/args/0", "path": "/spec/first"}]"#;
    let out = apply_patch(PatchType::Json, &original, ok, "Pod").unwrap();
    assert_eq!(out["spec"]["first"], original["spec"]["args"][0]);
}

#[test]
fn moves_and_adds_cannot_build_a_document_deeper_than_the_limit() {
    use crate::MAX_DEPTH;
    // A chain 100 deep, then a second chain moved under its own end.
    let chain = nested_objects(100);
    let patch = format!(
        r#"[{{"op": "add", "path": "/x", "value": {chain}}},
            {{"op": "add", "path": "/y", "value": {chain}}},
            {{"op": "move", "from": "/y", "path": "/x{}"}}]"#,
        "/a".repeat(50)
    );
    let err = apply_patch(PatchType::Json, &json!({}), patch.as_bytes(), "Pod").unwrap_err();
    assert!(matches!(err, PatchError::TooDeep), "{err}");
    // The same move a few levels down is fine.
    let patch = format!(
        r#"[{{"op": "add", "path": "/x", "value": {{"a": {{}}}}}},
            {{"op": "add", "path": "/y", "value": {}}},
            {{"op": "move", "from": "/y", "path": "/x/a/b"}}]"#,
        nested_objects(MAX_DEPTH - 4)
    );
    let out = apply_patch(PatchType::Json, &json!({}), patch.as_bytes(), "Pod").unwrap();
    assert!(out["x"]["a"]["b"]["a"].is_object());
    // Appending to a list counts the list's depth.
    let patch = format!(
        r#"[{{"op": "add", "path": "/l", "value": [[]]}},
            {{"op": "add", "path": "/l/0/-", "value": {}}}]"#,
        nested_objects(MAX_DEPTH - 2)
    );
    let err = apply_patch(PatchType::Json, &json!({}), patch.as_bytes(), "Pod").unwrap_err();
    assert!(matches!(err, PatchError::TooDeep), "{err}");
}

#[test]
fn deeply_nested_yaml_is_refused_before_the_quadratic_parser_runs() {
    use crate::{check_yaml_nesting, from_yaml_slice};
    // 1.5 million levels in a 3 MiB body: hours of libyaml time without the pre-scan.
    let deep = format!("{{a: {}1{}}}", "[".repeat(1_500_000), "]".repeat(1_500_000));
    let err = from_yaml_slice(deep.as_bytes()).unwrap_err();
    assert!(err.contains("recursion limit exceeded"), "{err}");
    // Brackets in quoted scalars and comments are text; real nesting still decodes.
    let quoted = format!(
        "a: '{}'\nb: \"{}\\\"\" # {}\nc: [[1], {{d: [2]}}]\ne: it's a[0]\n",
        "[".repeat(500),
        "{".repeat(500),
        "[".repeat(500)
    );
    let value = from_yaml_slice(quoted.as_bytes()).unwrap();
    assert_eq!(value["c"], json!([[1], {"d": [2]}]));
    assert_eq!(value["e"], "it's a[0]");
    assert!(
        check_yaml_nesting(format!("{}{}", "[".repeat(128), "]".repeat(128)).as_bytes()).is_ok()
    );
    assert!(
        check_yaml_nesting(format!("{}{}", "[".repeat(129), "]".repeat(129)).as_bytes()).is_err()
    );
}
