//! Feeds arbitrary bytes to every patch type. The first byte picks the patch type and the
//! kind; the rest is the body. The invariant checked: no panic, and `Ok` is always an object.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rkube_patch::{apply_patch, PatchType};
use serde_json::json;

const TYPES: [PatchType; 4] = [
    PatchType::Json,
    PatchType::Merge,
    PatchType::StrategicMerge,
    PatchType::Apply,
];
const KINDS: [&str; 4] = ["Pod", "Deployment", "Service", "Widget"];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let patch_type = TYPES[usize::from(selector) % TYPES.len()];
    let kind = KINDS[usize::from(selector / 4) % KINDS.len()];
    let original = json!({
        "metadata": {"name": "x", "labels": {"a": "b"}, "finalizers": ["f"]},
        "spec": {
            "containers": [{"name": "c", "image": "i", "env": [{"name": "E", "value": "v"}]}],
            "template": {"spec": {"containers": [{"name": "c", "ports": [{"containerPort": 80}]}]}}
        }
    });
    for original in [original, serde_json::Value::Null] {
        if let Ok(result) = apply_patch(patch_type, &original, body, kind) {
            assert!(result.is_object());
        }
    }
});
