//! The cached form of one stored object.

use bytes::Bytes;
use rkube_api::registry::ResourceInfo;
use rkube_api::selectors::selectable_fields;
use rkube_store::Revision;
use serde_json::{Map, Value};

/// Everything kept per object: the stored JSON (shared with the embedded store's copy, not
/// duplicated) and the few fields selectors need, extracted once. The resourceVersion is
/// spliced into the JSON when it is written out, at an offset found once.
#[derive(Debug)]
pub struct CachedObject {
    pub resource: &'static ResourceInfo,
    pub key: String,
    pub namespace: String,
    pub name: String,
    pub labels: Option<Map<String, Value>>,
    pub fields: Vec<(&'static str, String)>,
    stored: Bytes,
    /// Offset just inside the top-level `"metadata":{`.
    rv_at: usize,
    pub revision: Revision,
}

impl CachedObject {
    /// Builds the cached form of a stored object (JSON without resourceVersion).
    pub fn from_stored(
        resource: &'static ResourceInfo,
        key: String,
        stored: Bytes,
        revision: Revision,
    ) -> Result<CachedObject, serde_json::Error> {
        let obj: Value = serde_json::from_slice(&stored)?;
        let (stored, rv_at) = match metadata_body_offset(&stored) {
            Some(at) => (stored, at),
            None => {
                // No metadata object: store a canonical form that has one.
                let mut canonical = obj.clone();
                if let Some(map) = canonical.as_object_mut() {
                    map.insert("metadata".into(), Value::Object(Map::new()));
                }
                let bytes = Bytes::from(serde_json::to_vec(&canonical)?);
                let at = metadata_body_offset(&bytes).unwrap_or(0);
                (bytes, at)
            }
        };
        let meta = &obj["metadata"];
        Ok(CachedObject {
            resource,
            key,
            namespace: meta["namespace"].as_str().unwrap_or("").to_string(),
            name: meta["name"].as_str().unwrap_or("").to_string(),
            labels: meta["labels"].as_object().cloned(),
            fields: selectable_fields(resource.kind, &obj),
            stored,
            rv_at,
            revision,
        })
    }

    /// The same object stamped with another revision (a deletion's).
    pub fn at_revision(&self, revision: Revision) -> CachedObject {
        CachedObject {
            resource: self.resource,
            key: self.key.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            labels: self.labels.clone(),
            fields: self.fields.clone(),
            stored: self.stored.clone(),
            rv_at: self.rv_at,
            revision,
        }
    }

    /// Upper bound of the JSON length, for buffer sizing.
    pub fn json_len_hint(&self) -> usize {
        self.stored.len() + 40
    }

    /// Appends the object's JSON, with its resourceVersion, to `out`.
    pub fn write_json(&self, out: &mut bytes::BytesMut) {
        use bytes::BufMut;
        let (head, tail) = self.stored.split_at(self.rv_at.min(self.stored.len()));
        out.put_slice(head);
        out.put_slice(b"\"resourceVersion\":\"");
        out.put_slice(self.revision.to_string().as_bytes());
        out.put_u8(b'"');
        if tail.first() != Some(&b'}') {
            out.put_u8(b',');
        }
        out.put_slice(tail);
    }

    pub fn to_json(&self) -> Bytes {
        let mut out = bytes::BytesMut::with_capacity(self.json_len_hint());
        self.write_json(&mut out);
        out.freeze()
    }

    pub fn value(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_slice(&self.to_json())
    }
}

/// Finds the offset just inside the top-level `"metadata":{` of a JSON object, scanning
/// keys at depth one and skipping strings and nested values.
fn metadata_body_offset(json: &[u8]) -> Option<usize> {
    const KEY: &[u8] = b"\"metadata\"";
    let mut depth = 0usize;
    let mut i = 0usize;
    let mut in_string = false;
    while i < json.len() {
        let b = json[i];
        if in_string {
            match b {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => {
                    if depth == 1 && json[i..].starts_with(KEY) {
                        let mut j = i + KEY.len();
                        while j < json.len() && json[j].is_ascii_whitespace() {
                            j += 1;
                        }
                        if json.get(j) == Some(&b':') {
                            j += 1;
                            while j < json.len() && json[j].is_ascii_whitespace() {
                                j += 1;
                            }
                            return (json.get(j) == Some(&b'{')).then_some(j + 1);
                        }
                    }
                    in_string = true;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cached(stored: &str, revision: Revision) -> CachedObject {
        let cm = rkube_api::registry::find("", "v1", "configmaps").unwrap();
        CachedObject::from_stored(
            cm,
            "/registry/configmaps/ns/x".into(),
            Bytes::from(stored.to_string()),
            revision,
        )
        .unwrap()
    }

    #[test]
    fn resource_version_is_spliced_into_the_top_level_metadata() {
        // Keys sorting before "metadata", and strings and nested objects that mention it.
        let stored = r#"{"apiVersion":"v1","data":{"metadata":"{\"metadata\":{}}","k":"v"},"kind":"ConfigMap","metadata":{"name":"x","labels":{"a":"b"}}}"#;
        let v = cached(stored, 42).value().unwrap();
        assert_eq!(v["metadata"]["resourceVersion"], "42");
        assert_eq!(v["metadata"]["name"], "x");
        assert_eq!(v["data"]["metadata"], "{\"metadata\":{}}");
        assert!(v["data"].get("resourceVersion").is_none());
    }

    #[test]
    fn empty_or_missing_metadata_still_yields_valid_json() {
        let v = cached(r#"{"kind":"ConfigMap","metadata":{}}"#, 7)
            .value()
            .unwrap();
        assert_eq!(v["metadata"], json!({"resourceVersion": "7"}));
        let v = cached(r#"{"kind":"ConfigMap"}"#, 8).value().unwrap();
        assert_eq!(v["metadata"], json!({"resourceVersion": "8"}));
        let deleted = cached(r#"{"metadata" : { "name":"x"}}"#, 9)
            .at_revision(12)
            .value()
            .unwrap();
        assert_eq!(deleted["metadata"]["resourceVersion"], "12");
    }
}
