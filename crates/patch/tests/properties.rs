//! Properties of `apply_patch` over generated objects and patches. The first group covers
//! what the cargo-fuzz target in `fuzz/` does, so the guarantee holds on stable too.

use proptest::prelude::*;
use rkube_patch::{apply_patch, PatchType};
use serde_json::{Map, Value};

const ALL_TYPES: [PatchType; 4] = [
    PatchType::Json,
    PatchType::Merge,
    PatchType::StrategicMerge,
    PatchType::Apply,
];

fn kind() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "Pod",
        "Deployment",
        "Service",
        "Node",
        "CronJob",
        "Widget",
        "",
    ])
}

/// Keys that reach the schema's merge lists and the directives, plus random noise.
fn any_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "spec", "template", "metadata", "containers", "name", "image", "env", "ports",
            "containerPort", "finalizers", "labels", "status", "conditions", "type", "volumes",
            "$patch", "$retainKeys", "$setElementOrder/containers", "$setElementOrder/finalizers",
            "$deleteFromPrimitiveList/finalizers", "$setElementOrder/env",
        ])
        .prop_map(str::to_string),
        1 => "[a-z$/]{0,4}",
    ]
}

/// Keys that are never directives, for comparing strategic and plain merge.
fn plain_key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "spec",
            "template",
            "metadata",
            "containers",
            "name",
            "env",
            "finalizers",
            "labels",
        ])
        .prop_map(str::to_string),
        "[a-z]{1,3}",
    ]
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-3i64..300).prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop::sample::select(vec!["delete", "replace", "merge", "a", "name", "", "x"])
            .prop_map(Value::from),
    ]
}

fn any_json() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(6, 96, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(any_key(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn any_object() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(any_key(), any_json(), 0..6)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

/// Objects made only of maps and scalars, without directive keys.
fn maps_and_scalars() -> impl Strategy<Value = Map<String, Value>> {
    let value = scalar().prop_recursive(6, 64, 5, |inner| {
        prop::collection::btree_map(plain_key(), inner, 0..5)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    });
    prop::collection::btree_map(plain_key(), value, 0..6).prop_map(|m| m.into_iter().collect())
}

fn json_pointer() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec![
            "spec", "metadata", "a", "0", "1", "-", "~1", "~0", "", "x~",
        ]),
        0..4,
    )
    .prop_map(|segments| segments.iter().map(|s| format!("/{s}")).collect::<String>())
}

fn json_patch_ops() -> impl Strategy<Value = Value> {
    let op = (
        prop::sample::select(vec!["add", "remove", "replace", "move", "copy", "test", "nope"]),
        json_pointer(),
        json_pointer(),
        any_json(),
    )
        .prop_map(|(op, path, from, value)| {
            serde_json::json!({"op": op, "path": path, "from": from, "value": value})
        });
    prop::collection::vec(op, 0..5).prop_map(Value::Array)
}

fn assert_object_or_error(result: Result<Value, rkube_patch::PatchError>) {
    if let Ok(value) = result {
        assert!(value.is_object(), "Ok result must be an object: {value}");
    }
}

proptest! {
    #[test]
    fn arbitrary_json_patches_never_panic(
        original in any_object(),
        patch in any_json(),
        kind in kind(),
    ) {
        let body = patch.to_string();
        for patch_type in ALL_TYPES {
            assert_object_or_error(apply_patch(patch_type, &original, body.as_bytes(), kind));
        }
        assert_object_or_error(apply_patch(PatchType::Apply, &Value::Null, body.as_bytes(), kind));
    }

    #[test]
    fn arbitrary_json_patch_operations_never_panic(
        original in any_object(),
        ops in json_patch_ops(),
    ) {
        let body = ops.to_string();
        assert_object_or_error(apply_patch(PatchType::Json, &original, body.as_bytes(), "Pod"));
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        original in any_object(),
        bytes in prop::collection::vec(any::<u8>(), 0..200),
        kind in kind(),
    ) {
        for patch_type in ALL_TYPES {
            assert_object_or_error(apply_patch(patch_type, &original, &bytes, kind));
        }
    }

    #[test]
    fn strategic_merge_of_maps_and_scalars_equals_merge_patch(
        original in any_object(),
        patch in maps_and_scalars(),
        kind in kind(),
    ) {
        let body = Value::Object(patch).to_string();
        let strategic =
            apply_patch(PatchType::StrategicMerge, &original, body.as_bytes(), kind).unwrap();
        let merge = apply_patch(PatchType::Merge, &original, body.as_bytes(), kind).unwrap();
        prop_assert_eq!(strategic, merge);
    }

    #[test]
    fn empty_patch_is_identity(original in any_object(), kind in kind()) {
        for patch_type in [PatchType::Merge, PatchType::StrategicMerge, PatchType::Apply] {
            let out = apply_patch(patch_type, &original, b"{}", kind).unwrap();
            prop_assert_eq!(&out, &original, "{:?}", patch_type);
        }
        let out = apply_patch(PatchType::Json, &original, b"[]", kind).unwrap();
        prop_assert_eq!(&out, &original);
    }
}
