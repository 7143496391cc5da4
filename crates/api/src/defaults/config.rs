//! Secrets: the `Opaque` type, and `stringData` merged into `data`. (ConfigMaps have no
//! defaults.)

use base64::prelude::{Engine as _, BASE64_STANDARD};
use serde_json::{json, Map, Value};

use super::{child_object, set_if_absent};

pub fn default_secret(obj: &mut Value) {
    if let Some(o) = obj.as_object_mut() {
        set_if_absent(o, "type", json!("Opaque"));
        merge_string_data(o);
    }
}

/// Upstream's Secret conversion: `stringData` is write-only, merged into `data` (base64)
/// with its values winning, and never stored.
fn merge_string_data(secret: &mut Map<String, Value>) {
    let Some(Value::Object(string_data)) = secret.remove("stringData") else {
        return;
    };
    let data = child_object(secret, "data");
    for (k, v) in string_data {
        let text = v.as_str().unwrap_or("");
        data.insert(k, json!(BASE64_STANDARD.encode(text)));
    }
}
