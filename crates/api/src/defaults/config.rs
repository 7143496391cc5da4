//! Secrets: the `Opaque` type, and `stringData` merged into `data`. (ConfigMaps have no
//! defaults.)

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
        data.insert(k, json!(base64_encode(text.as_bytes())));
    }
}

/// Standard padded base64, as Go encodes `[]byte` in JSON.
pub fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}
