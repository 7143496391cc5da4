//! Field paths and the causes every check reports, worded as upstream's `field.Error`s.

use serde_json::Value;

use crate::status::StatusCause;

pub(crate) fn child(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

pub(crate) fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

pub(crate) fn key(path: &str, k: &str) -> String {
    format!("{path}[{k}]")
}

/// `Invalid value: <rendered>: <detail>` where the value is already rendered Go-style.
pub(crate) fn invalid_raw(field: String, rendered: &str, detail: &str) -> StatusCause {
    StatusCause::new(
        "FieldValueInvalid",
        field,
        format!("Invalid value: {rendered}: {detail}"),
    )
}

/// `Required value: <detail>`.
pub(crate) fn required_detail(field: String, detail: &str) -> StatusCause {
    StatusCause::new(
        "FieldValueRequired",
        field,
        format!("Required value: {detail}"),
    )
}

/// `Not found: <value>`.
pub(crate) fn not_found(field: String, value: &Value) -> StatusCause {
    StatusCause::new("FieldValueNotFound", field, format!("Not found: {value}"))
}

/// `Too long: may not be more than <max> bytes`.
pub(crate) fn too_long(field: String, max: usize) -> StatusCause {
    StatusCause::new(
        "FieldValueTooLong",
        field,
        format!("Too long: may not be more than {max} bytes"),
    )
}

/// `Invalid value: <rendered>: field is immutable`.
pub(crate) fn immutable(field: &str, rendered: &str) -> StatusCause {
    invalid_raw(field.to_string(), rendered, "field is immutable")
}
