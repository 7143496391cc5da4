//! `metav1.Status` errors, with the reasons, codes and message shapes upstream uses, so that
//! kubectl and client libraries print and classify them exactly as they do against Kubernetes.

use serde_json::{json, Value};

use crate::registry::ResourceInfo;

/// One cause of an Invalid (or other) error: `details.causes[]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusCause {
    /// Upstream's machine-readable reason, e.g. `FieldValueRequired`, `FieldValueInvalid`.
    pub reason: String,
    pub message: String,
    /// JSON path of the field, e.g. `spec.containers[0].name`.
    pub field: String,
}

impl StatusCause {
    pub fn new(
        reason: impl Into<String>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        StatusCause {
            reason: reason.into(),
            message: message.into(),
            field: field.into(),
        }
    }

    /// `Required value` for `field`.
    pub fn required(field: impl Into<String>) -> Self {
        StatusCause::new("FieldValueRequired", field, "Required value")
    }

    /// `Invalid value: <value>: <detail>` for `field`.
    pub fn invalid(field: impl Into<String>, value: &Value, detail: impl AsRef<str>) -> Self {
        StatusCause::new(
            "FieldValueInvalid",
            field,
            format!("Invalid value: {}: {}", value, detail.as_ref()),
        )
    }

    /// `Duplicate value: <value>` for `field`.
    pub fn duplicate(field: impl Into<String>, value: &Value) -> Self {
        StatusCause::new(
            "FieldValueDuplicate",
            field,
            format!("Duplicate value: {}", value),
        )
    }

    /// `Unsupported value: <value>: supported values: "a", "b"` for `field`.
    pub fn not_supported(field: impl Into<String>, value: &Value, supported: &[&str]) -> Self {
        let list: Vec<String> = supported.iter().map(|s| format!("\"{s}\"")).collect();
        StatusCause::new(
            "FieldValueNotSupported",
            field,
            format!(
                "Unsupported value: {}: supported values: {}",
                value,
                list.join(", ")
            ),
        )
    }

    /// `Forbidden: <detail>` for `field`.
    pub fn forbidden(field: impl Into<String>, detail: impl AsRef<str>) -> Self {
        StatusCause::new(
            "FieldValueForbidden",
            field,
            format!("Forbidden: {}", detail.as_ref()),
        )
    }

    fn to_json(&self) -> Value {
        json!({"reason": self.reason, "message": self.message, "field": self.field})
    }

    /// `spec.containers[0].name: Required value`, as upstream joins causes in messages.
    pub fn describe(&self) -> String {
        if self.field.is_empty() {
            self.message.clone()
        } else {
            format!("{}: {}", self.field, self.message)
        }
    }
}

/// An API error as a `metav1.Status`. The HTTP status code is `code`.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: u16,
    /// Upstream `StatusReason`: NotFound, AlreadyExists, Conflict, Invalid, BadRequest, ...
    pub reason: &'static str,
    pub message: String,
    /// `details.name`, `details.group`, `details.kind`.
    /// Boxed: errors travel through many `Result`s and should stay small.
    pub details: Option<Box<StatusDetails>>,
}

#[derive(Clone, Debug, Default)]
pub struct StatusDetails {
    pub name: String,
    pub group: String,
    pub kind: String,
    pub causes: Vec<StatusCause>,
    pub retry_after_seconds: Option<u32>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, resource: &ResourceInfo, name: &str) -> Self {
        self.details = Some(Box::new(StatusDetails {
            name: name.to_string(),
            group: resource.group.to_string(),
            kind: resource.plural.to_string(),
            ..Default::default()
        }));
        self
    }

    /// `pods "x" not found`
    pub fn not_found(resource: &ResourceInfo, name: &str) -> Self {
        ApiError::new(
            404,
            "NotFound",
            format!("{} \"{}\" not found", resource.qualified_name(), name),
        )
        .with_details(resource, name)
    }

    /// `pods "x" already exists`
    pub fn already_exists(resource: &ResourceInfo, name: &str) -> Self {
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{} \"{}\" already exists", resource.qualified_name(), name),
        )
        .with_details(resource, name)
    }

    /// The optimistic-concurrency conflict message kubectl and controllers recognise.
    pub fn conflict(resource: &ResourceInfo, name: &str) -> Self {
        ApiError::conflict_because(
            resource,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// `Operation cannot be fulfilled on pods "x": <why>`
    pub fn conflict_because(resource: &ResourceInfo, name: &str, why: &str) -> Self {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{}\": {}",
                resource.qualified_name(),
                name,
                why
            ),
        )
        .with_details(resource, name)
    }

    /// 422 with every cause listed: `Deployment.apps "x" is invalid: [a: Required value, b: ...]`.
    pub fn invalid(resource: &ResourceInfo, name: &str, causes: Vec<StatusCause>) -> Self {
        let kind = if resource.group.is_empty() {
            resource.kind.to_string()
        } else {
            format!("{}.{}", resource.kind, resource.group)
        };
        let described: Vec<String> = causes.iter().map(StatusCause::describe).collect();
        let joined = if described.len() == 1 {
            described[0].clone()
        } else {
            format!("[{}]", described.join(", "))
        };
        ApiError {
            code: 422,
            reason: "Invalid",
            message: format!("{} \"{}\" is invalid: {}", kind, name, joined),
            details: Some(Box::new(StatusDetails {
                name: name.to_string(),
                group: resource.group.to_string(),
                kind: resource.kind.to_string(),
                causes,
                retry_after_seconds: None,
            })),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(400, "BadRequest", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::new(403, "Forbidden", message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        ApiError::new(405, "MethodNotAllowed", message)
    }

    pub fn gone(message: impl Into<String>) -> Self {
        ApiError::new(410, "Expired", message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        ApiError::new(413, "RequestEntityTooLarge", message)
    }

    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        ApiError::new(415, "UnsupportedMediaType", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(500, "InternalError", message)
    }

    pub fn service_unavailable(message: impl Into<String>) -> Self {
        ApiError::new(503, "ServiceUnavailable", message)
    }

    pub fn timeout(message: impl Into<String>) -> Self {
        ApiError::new(504, "Timeout", message)
    }

    /// A plain 404 for a URL that names no resource.
    pub fn path_not_found() -> Self {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    /// The `metav1.Status` object.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            let mut details = json!({"name": d.name, "kind": d.kind});
            if !d.group.is_empty() {
                details["group"] = json!(d.group);
            }
            if !d.causes.is_empty() {
                details["causes"] =
                    Value::Array(d.causes.iter().map(StatusCause::to_json).collect());
            }
            if let Some(s) = d.retry_after_seconds {
                details["retryAfterSeconds"] = json!(s);
            }
            status["details"] = details;
        }
        status
    }
}

/// A `Success` Status (returned, for instance, by some deletes).
pub fn success_status() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::find;

    #[test]
    fn messages_match_upstream() {
        let deploy = find("apps", "v1", "deployments").unwrap();
        let e = ApiError::conflict(deploy, "web");
        assert_eq!(e.message, "Operation cannot be fulfilled on deployments.apps \"web\": the object has been modified; please apply your changes to the latest version and try again");
        let pods = find("", "v1", "pods").unwrap();
        assert_eq!(
            ApiError::not_found(pods, "x").message,
            "pods \"x\" not found"
        );
        let inv = ApiError::invalid(
            pods,
            "p",
            vec![
                StatusCause::required("spec.containers"),
                StatusCause::invalid("metadata.name", &json!("A"), "bad"),
            ],
        );
        assert_eq!(inv.message, "Pod \"p\" is invalid: [spec.containers: Required value, metadata.name: Invalid value: \"A\": bad]");
        let s = inv.to_status();
        assert_eq!(s["code"], 422);
        assert_eq!(s["details"]["causes"].as_array().unwrap().len(), 2);
    }
}
