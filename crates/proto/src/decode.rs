//! Schema-driven translation of one protobuf message into a JSON object.

use crate::schema::{Field, Message, Ty};
use crate::wire::{packed_varints, Reader, WireValue};
use crate::ProtoError;
use base64::prelude::{Engine as _, BASE64_STANDARD};
use serde_json::{Map, Value};

/// Deepest message nesting accepted. The schema has no cycles, so real objects stay far below
/// this (a Deployment's deepest path is about ten levels); the cap guards the recursion anyway.
pub const MAX_DEPTH: usize = 32;

/// The proto representation of Go's zero `time.Time` (0001-01-01T00:00:00Z), which
/// `metav1.Time` serialises as JSON `null`.
const GO_ZERO_TIME_SECONDS: i64 = -62_135_596_800;

/// Decodes `bytes` as `message` into a fresh JSON object.
pub(crate) fn decode_message(
    message: &'static Message,
    bytes: &[u8],
) -> Result<Map<String, Value>, ProtoError> {
    let mut out = Map::new();
    decode_into(message, bytes, 1, &mut out)?;
    Ok(out)
}

fn decode_into(
    message: &'static Message,
    bytes: &[u8],
    depth: usize,
    out: &mut Map<String, Value>,
) -> Result<(), ProtoError> {
    if depth > MAX_DEPTH {
        return Err(ProtoError::TooDeep(MAX_DEPTH));
    }
    let mut reader = Reader::new(bytes);
    while let Some((number, value)) = reader.next_field()? {
        let field = message.field(number).ok_or(ProtoError::UnknownField {
            message: message.name,
            field: number,
        })?;
        decode_field(message, field, value, depth, out)?;
    }
    Ok(())
}

fn decode_field(
    message: &'static Message,
    field: &Field,
    value: WireValue<'_>,
    depth: usize,
    out: &mut Map<String, Value>,
) -> Result<(), ProtoError> {
    let ctx = Ctx { message, field };
    match field.ty {
        Ty::Unsupported => Err(ProtoError::UnsupportedField {
            message: message.name,
            field: field.json,
        }),
        Ty::Inline(inner) => decode_into(inner, ctx.bytes(value)?, depth + 1, out),
        Ty::Message(inner) if !field.repeated => {
            // Proto merges repeated occurrences of a singular message, so decode into the
            // existing object. Presence alone emits `{}`, as Go's JSON does for an empty struct.
            let slot = out
                .entry(field.json)
                .or_insert_with(|| Value::Object(Map::new()));
            match slot {
                Value::Object(map) => decode_into(inner, ctx.bytes(value)?, depth + 1, map),
                _ => Err(ctx.invalid("field set twice with different shapes")),
            }
        }
        Ty::StringMap | Ty::BytesMap | Ty::QuantityMap => {
            let (key, entry_value) = decode_map_entry(&ctx, ctx.bytes(value)?, depth + 1)?;
            let slot = out
                .entry(field.json)
                .or_insert_with(|| Value::Object(Map::new()));
            match slot {
                Value::Object(map) => {
                    map.insert(key, entry_value);
                    Ok(())
                }
                _ => Err(ctx.invalid("field set twice with different shapes")),
            }
        }
        _ if field.repeated => {
            let items = decode_repeated(&ctx, value, depth)?;
            if items.is_empty() {
                return Ok(());
            }
            let slot = out
                .entry(field.json)
                .or_insert_with(|| Value::Array(Vec::new()));
            match slot {
                Value::Array(array) => {
                    array.extend(items);
                    Ok(())
                }
                _ => Err(ctx.invalid("field set twice with different shapes")),
            }
        }
        _ => {
            match decode_singular(&ctx, value, depth)? {
                Some(json) if field.keep_zero || !is_zero(&json) => {
                    out.insert(field.json.to_string(), json);
                }
                // Last occurrence wins in proto, so a later zero clears an earlier value.
                _ => {
                    out.remove(field.json);
                }
            }
            Ok(())
        }
    }
}

fn decode_repeated(
    ctx: &Ctx,
    value: WireValue<'_>,
    depth: usize,
) -> Result<Vec<Value>, ProtoError> {
    match (ctx.field.ty, value) {
        (Ty::Int32 | Ty::Int64 | Ty::Bool, WireValue::Len(bytes)) => packed_varints(bytes)?
            .into_iter()
            .map(|raw| scalar_from_varint(ctx, raw))
            .collect(),
        (Ty::Message(inner), _) => {
            let mut map = Map::new();
            decode_into(inner, ctx.bytes(value)?, depth + 1, &mut map)?;
            Ok(vec![Value::Object(map)])
        }
        _ => Ok(decode_singular(ctx, value, depth)?.into_iter().collect()),
    }
}

/// A scalar or special-cased well-known message. `None` means "absent in JSON" (the zero time).
fn decode_singular(
    ctx: &Ctx,
    value: WireValue<'_>,
    depth: usize,
) -> Result<Option<Value>, ProtoError> {
    let json = match ctx.field.ty {
        Ty::String => Value::String(ctx.utf8(ctx.bytes(value)?)?),
        Ty::Int32 | Ty::Int64 | Ty::Bool => scalar_from_varint(ctx, ctx.varint(value)?)?,
        Ty::IntOrString => decode_int_or_string(ctx, ctx.bytes(value)?, depth + 1)?,
        Ty::Quantity => Value::String(decode_quantity(ctx, ctx.bytes(value)?, depth + 1)?),
        Ty::Time => return decode_time(ctx, ctx.bytes(value)?, depth + 1),
        Ty::Message(_)
        | Ty::Inline(_)
        | Ty::StringMap
        | Ty::BytesMap
        | Ty::QuantityMap
        | Ty::Unsupported => return Err(ctx.invalid("schema error: not a scalar type")),
    };
    Ok(Some(json))
}

fn scalar_from_varint(ctx: &Ctx, raw: u64) -> Result<Value, ProtoError> {
    Ok(match ctx.field.ty {
        // Proto sign-extends negative int32 values to ten bytes; truncation recovers them.
        Ty::Int32 => Value::from(raw as i32),
        Ty::Int64 => Value::from(raw as i64),
        Ty::Bool => Value::Bool(raw != 0),
        _ => return Err(ctx.invalid("schema error: not a varint type")),
    })
}

fn decode_map_entry(ctx: &Ctx, bytes: &[u8], depth: usize) -> Result<(String, Value), ProtoError> {
    if depth > MAX_DEPTH {
        return Err(ProtoError::TooDeep(MAX_DEPTH));
    }
    let mut key = String::new();
    let mut entry_value = match ctx.field.ty {
        Ty::QuantityMap => Value::String("0".into()),
        _ => Value::String(String::new()),
    };
    let mut reader = Reader::new(bytes);
    while let Some((number, value)) = reader.next_field()? {
        match number {
            1 => key = ctx.utf8(ctx.bytes(value)?)?,
            2 => {
                let payload = ctx.bytes(value)?;
                entry_value = Value::String(match ctx.field.ty {
                    // Go's `encoding/json` writes `[]byte` as standard padded base64.
                    Ty::BytesMap => BASE64_STANDARD.encode(payload),
                    Ty::QuantityMap => decode_quantity(ctx, payload, depth + 1)?,
                    _ => ctx.utf8(payload)?,
                });
            }
            other => return Err(ctx.invalid(&format!("map entry has unknown field {other}"))),
        }
    }
    Ok((key, entry_value))
}

/// `intstr.IntOrString`: `type` = 1 (0 int, 1 string), `intVal` = 2, `strVal` = 3.
fn decode_int_or_string(ctx: &Ctx, bytes: &[u8], depth: usize) -> Result<Value, ProtoError> {
    if depth > MAX_DEPTH {
        return Err(ProtoError::TooDeep(MAX_DEPTH));
    }
    let (mut kind, mut int_val, mut str_val) = (0u64, 0i32, String::new());
    let mut reader = Reader::new(bytes);
    while let Some((number, value)) = reader.next_field()? {
        match number {
            1 => kind = ctx.varint(value)?,
            2 => int_val = ctx.varint(value)? as i32,
            3 => str_val = ctx.utf8(ctx.bytes(value)?)?,
            other => return Err(ctx.invalid(&format!("IntOrString has unknown field {other}"))),
        }
    }
    match kind {
        0 => Ok(Value::from(int_val)),
        1 => Ok(Value::String(str_val)),
        other => Err(ctx.invalid(&format!("IntOrString has unknown type {other}"))),
    }
}

/// `resource.Quantity`: its canonical string in field 1.
fn decode_quantity(ctx: &Ctx, bytes: &[u8], depth: usize) -> Result<String, ProtoError> {
    if depth > MAX_DEPTH {
        return Err(ProtoError::TooDeep(MAX_DEPTH));
    }
    let mut text = String::new();
    let mut reader = Reader::new(bytes);
    while let Some((number, value)) = reader.next_field()? {
        match number {
            1 => text = ctx.utf8(ctx.bytes(value)?)?,
            other => return Err(ctx.invalid(&format!("Quantity has unknown field {other}"))),
        }
    }
    Ok(text)
}

/// `meta/v1.Time`: `seconds` = 1, `nanos` = 2, rendered to the second as Go does. An empty
/// message is Go's zero time, which JSON renders as `null`; it is left out instead.
fn decode_time(ctx: &Ctx, bytes: &[u8], depth: usize) -> Result<Option<Value>, ProtoError> {
    if depth > MAX_DEPTH {
        return Err(ProtoError::TooDeep(MAX_DEPTH));
    }
    let (mut seconds, mut nanos, mut any_field) = (0i64, 0i64, false);
    let mut reader = Reader::new(bytes);
    while let Some((number, value)) = reader.next_field()? {
        any_field = true;
        match number {
            1 => seconds = ctx.varint(value)? as i64,
            2 => nanos = i64::from(ctx.varint(value)? as i32),
            other => return Err(ctx.invalid(&format!("Time has unknown field {other}"))),
        }
    }
    if !any_field || (seconds == GO_ZERO_TIME_SECONDS && nanos == 0) {
        return Ok(None);
    }
    let nanos = u32::try_from(nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)
        .ok_or_else(|| ctx.invalid("nanos out of range"))?;
    let instant = chrono::DateTime::from_timestamp(seconds, nanos)
        .ok_or_else(|| ctx.invalid("timestamp out of range"))?;
    Ok(Some(Value::String(
        instant.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )))
}

fn is_zero(value: &Value) -> bool {
    match value {
        Value::String(text) => text.is_empty(),
        Value::Bool(flag) => !flag,
        Value::Number(number) => number.as_f64() == Some(0.0),
        Value::Null => true,
        Value::Array(_) | Value::Object(_) => false,
    }
}

/// The field being decoded, for error messages.
struct Ctx<'s> {
    message: &'static Message,
    field: &'s Field,
}

impl Ctx<'_> {
    fn bytes<'a>(&self, value: WireValue<'a>) -> Result<&'a [u8], ProtoError> {
        match value {
            WireValue::Len(bytes) => Ok(bytes),
            other => Err(self.wire_type("length-delimited", other)),
        }
    }

    fn varint(&self, value: WireValue<'_>) -> Result<u64, ProtoError> {
        match value {
            WireValue::Varint(raw) => Ok(raw),
            other => Err(self.wire_type("varint", other)),
        }
    }

    fn utf8(&self, bytes: &[u8]) -> Result<String, ProtoError> {
        String::from_utf8(bytes.to_vec()).map_err(|_| self.invalid("string is not valid UTF-8"))
    }

    fn wire_type(&self, expected: &'static str, got: WireValue<'_>) -> ProtoError {
        ProtoError::WireType {
            message: self.message.name,
            field: self.field.number,
            expected,
            got: got.type_name(),
        }
    }

    fn invalid(&self, reason: &str) -> ProtoError {
        ProtoError::InvalidValue {
            message: self.message.name,
            field: self.field.number,
            reason: reason.to_string(),
        }
    }
}
