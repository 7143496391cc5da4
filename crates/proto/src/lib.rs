//! Turns Kubernetes protobuf request bodies (`Content-Type: application/vnd.kubernetes.protobuf`)
//! into the JSON object the same request would have carried as `application/json`.
//!
//! kubectl's typed clients (`create namespace|configmap|secret|deployment|service|job|cronjob|
//! serviceaccount|pdb`, and the `DeleteOptions` body of `drain --disable-eviction`) send protobuf.
//! rkube stores and speaks JSON only, so the API server calls [`decode`] on such bodies.
//!
//! Layout:
//! - `wire`: a bounds-checked protobuf wire-format reader (varint, 64-bit, length-delimited,
//!   32-bit; groups and malformed input are errors).
//! - `schema`: field-number tables restated from upstream's `generated.proto` files, for the
//!   kinds listed by [`supported_kinds`].
//! - `decode`: walks a message with its table and builds a `serde_json::Value`.
//!
//! Invariants:
//! - No input panics; nesting is capped at [`MAX_DEPTH`].
//! - Nothing is dropped silently: a field number missing from a known message's table, or a real
//!   upstream field rkube chose not to translate (affinity, topology spread constraints, probes'
//!   lifecycle hooks, status conditions...), fails with [`ProtoError::UnknownField`] or
//!   [`ProtoError::UnsupportedField`]. Refusing a request is better than storing less than the
//!   client asked for.
//! - Output follows Kubernetes JSON: camelCase names, `omitempty` scalars left out when zero
//!   (gogo-protobuf writes non-pointer fields even when zero), pointer fields kept when present,
//!   present sub-messages rendered even when empty (`"status": {}`), a zero `Time` left out,
//!   `IntOrString` as a bare number or string, `Quantity` as a string, bytes as base64.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod decode;
mod schema;
mod wire;

pub use decode::MAX_DEPTH;
use serde_json::{Map, Value};
use wire::{Reader, WireValue};

/// The four bytes that start every Kubernetes protobuf body.
pub const MAGIC: &[u8; 4] = b"k8s\0";

/// The media type kubectl uses for protobuf bodies.
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// Why a protobuf body could not be turned into JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// The body does not begin with `k8s\0`.
    #[error("body does not start with the Kubernetes protobuf magic \"k8s\\0\"")]
    MissingMagic,
    /// The bytes are not valid protobuf (truncated, bad varint, group or invalid wire type).
    #[error("malformed protobuf: {0}")]
    Malformed(String),
    /// The `runtime.Unknown` envelope names no kind.
    #[error("protobuf envelope has no kind in typeMeta")]
    MissingKind,
    /// rkube has no schema for this kind.
    #[error("kind {0:?} is not supported in protobuf; send it as JSON")]
    UnsupportedKind(String),
    /// The kind is known, but not under this apiVersion (field numbers may differ).
    #[error(
        "{kind} is not supported in protobuf under apiVersion {api_version:?}; send it as JSON"
    )]
    UnsupportedApiVersion {
        /// The envelope's apiVersion.
        api_version: String,
        /// The envelope's kind.
        kind: String,
    },
    /// The envelope declares a content encoding (compression) or an inner content type rkube
    /// does not read.
    #[error("unsupported protobuf envelope encoding {0:?}")]
    UnsupportedEncoding(String),
    /// A known message carries a field number that is not in rkube's table.
    #[error("{message} has no field number {field} in rkube's protobuf schema")]
    UnknownField {
        /// Upstream message name, e.g. `core.v1.PodSpec`.
        message: &'static str,
        /// The field number found on the wire.
        field: u32,
    },
    /// A real upstream field that rkube deliberately does not translate.
    #[error("{message}.{field} is not supported in protobuf; send the object as JSON")]
    UnsupportedField {
        /// Upstream message name.
        message: &'static str,
        /// JSON name of the field.
        field: &'static str,
    },
    /// A field arrived with a wire type its schema does not allow.
    #[error("{message} field {field}: expected {expected} wire type, got {got}")]
    WireType {
        /// Upstream message name.
        message: &'static str,
        /// Field number.
        field: u32,
        /// Wire type the schema requires.
        expected: &'static str,
        /// Wire type found.
        got: &'static str,
    },
    /// A field's payload is well-formed protobuf but not a valid value (bad UTF-8, bad time...).
    #[error("{message} field {field}: {reason}")]
    InvalidValue {
        /// Upstream message name.
        message: &'static str,
        /// Field number.
        field: u32,
        /// What is wrong with it.
        reason: String,
    },
    /// Messages nest deeper than [`MAX_DEPTH`].
    #[error("protobuf messages nest deeper than {0} levels")]
    TooDeep(usize),
}

/// Decodes a Kubernetes protobuf body (`k8s\0` + `runtime.Unknown`) into the equivalent JSON
/// object, with `apiVersion` and `kind` taken from the envelope.
///
/// Fails on unknown kinds, on unknown or unsupported fields of known kinds (see the crate
/// documentation) and on malformed input; it never panics.
pub fn decode(body: &[u8]) -> Result<Value, ProtoError> {
    let envelope = body.strip_prefix(MAGIC).ok_or(ProtoError::MissingMagic)?;
    let unknown = Envelope::parse(envelope)?;
    if !unknown.content_encoding.is_empty() {
        return Err(ProtoError::UnsupportedEncoding(unknown.content_encoding));
    }
    if unknown.kind.is_empty() {
        return Err(ProtoError::MissingKind);
    }
    let mut object = Map::new();
    object.insert(
        "apiVersion".into(),
        Value::String(unknown.api_version.clone()),
    );
    object.insert("kind".into(), Value::String(unknown.kind.clone()));

    let fields = match unknown.content_type.as_str() {
        "" | CONTENT_TYPE => {
            let message = schema::top_level(&unknown.api_version, &unknown.kind)
                .ok_or_else(|| unsupported(&unknown))?;
            decode::decode_message(message, unknown.raw)?
        }
        // The envelope may wrap a JSON document; honour it rather than refuse it.
        "application/json" => match serde_json::from_slice(unknown.raw) {
            Ok(Value::Object(map)) => map,
            _ => {
                return Err(ProtoError::Malformed(
                    "envelope's JSON payload is not an object".into(),
                ))
            }
        },
        other => return Err(ProtoError::UnsupportedEncoding(other.to_string())),
    };
    for (key, value) in fields {
        // The envelope is authoritative for the type; a JSON payload cannot contradict it.
        if key != "apiVersion" && key != "kind" {
            object.insert(key, value);
        }
    }
    Ok(Value::Object(object))
}

/// `(apiVersion, kind)` pairs [`decode`] translates; an apiVersion of `"*"` means any.
pub fn supported_kinds() -> Vec<(&'static str, &'static str)> {
    schema::supported_kinds()
}

fn unsupported(unknown: &Envelope<'_>) -> ProtoError {
    if supported_kinds()
        .iter()
        .any(|(_, kind)| *kind == unknown.kind)
    {
        ProtoError::UnsupportedApiVersion {
            api_version: unknown.api_version.clone(),
            kind: unknown.kind.clone(),
        }
    } else {
        ProtoError::UnsupportedKind(unknown.kind.clone())
    }
}

/// `runtime.Unknown`: typeMeta = 1 {apiVersion = 1, kind = 2}, raw = 2, contentEncoding = 3,
/// contentType = 4.
struct Envelope<'a> {
    api_version: String,
    kind: String,
    raw: &'a [u8],
    content_encoding: String,
    content_type: String,
}

impl<'a> Envelope<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Self, ProtoError> {
        let mut envelope = Envelope {
            api_version: String::new(),
            kind: String::new(),
            raw: &[],
            content_encoding: String::new(),
            content_type: String::new(),
        };
        let mut reader = Reader::new(bytes);
        while let Some((number, value)) = reader.next_field()? {
            let payload = envelope_bytes(number, value)?;
            match number {
                1 => {
                    let type_meta = decode::decode_message(&schema::TYPE_META, payload)?;
                    envelope.api_version = string_of(&type_meta, "apiVersion");
                    envelope.kind = string_of(&type_meta, "kind");
                }
                2 => envelope.raw = payload,
                3 => envelope.content_encoding = envelope_string(number, payload)?,
                4 => envelope.content_type = envelope_string(number, payload)?,
                field => {
                    return Err(ProtoError::UnknownField {
                        message: "runtime.Unknown",
                        field,
                    })
                }
            }
        }
        Ok(envelope)
    }
}

fn envelope_bytes(number: u32, value: WireValue<'_>) -> Result<&[u8], ProtoError> {
    match value {
        WireValue::Len(bytes) => Ok(bytes),
        other => Err(ProtoError::WireType {
            message: "runtime.Unknown",
            field: number,
            expected: "length-delimited",
            got: other.type_name(),
        }),
    }
}

fn envelope_string(number: u32, bytes: &[u8]) -> Result<String, ProtoError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| ProtoError::InvalidValue {
        message: "runtime.Unknown",
        field: number,
        reason: "string is not valid UTF-8".into(),
    })
}

fn string_of(map: &Map<String, Value>, key: &str) -> String {
    map.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}
