//! Request bodies: objects as JSON, YAML or protobuf, and patches.

use rkube_api::ApiError;
use rkube_patch::PatchType;
use serde_json::Value;

use super::Request;
use crate::objects;

/// Decodes a request body as JSON or YAML into a JSON object.
pub fn decode_body(body: &[u8], content_type: &str) -> Result<Value, ApiError> {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    let value: Value = match essence {
        "" | "application/json" | "*/*" => serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("couldn't get version/kind; json parse error: {e}")))?,
        "application/yaml" | "application/x-yaml" | "text/yaml" => rkube_patch::from_yaml_slice(body)
            .map_err(|e| ApiError::bad_request(format!("couldn't get version/kind; yaml parse error: {e}")))?,
        // client-go's typed clients (kubectl create namespace/configmap/deployment...) send
        // protobuf; the kinds they send are translated to the equivalent JSON.
        rkube_proto::CONTENT_TYPE => rkube_proto::decode(body).map_err(|e| match e {
            rkube_proto::ProtoError::MissingMagic
            | rkube_proto::ProtoError::Malformed(_)
            | rkube_proto::ProtoError::MissingKind
            | rkube_proto::ProtoError::WireType { .. }
            | rkube_proto::ProtoError::InvalidValue { .. }
            | rkube_proto::ProtoError::TooDeep(_) => ApiError::bad_request(format!("couldn't decode protobuf body: {e}")),
            other => ApiError::unsupported_media_type(other.to_string()),
        })?,
        other => {
            return Err(ApiError::unsupported_media_type(format!(
                "the body of the request was in an unknown format ({other}) - accepted media types include: application/json, application/yaml"
            )))
        }
    };
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    objects::check_depth(&value)?;
    Ok(value)
}

pub(super) fn patch_type(req: &Request) -> Result<PatchType, ApiError> {
    PatchType::from_content_type(req.content_type()).ok_or_else(|| {
        ApiError::unsupported_media_type(format!(
            "the body of the request was in an unknown format ({}) - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json",
            req.content_type()
        ))
    })
}

pub(super) fn patch_error(e: rkube_patch::PatchError) -> ApiError {
    use rkube_patch::PatchError;
    match e {
        PatchError::Decode(msg) => ApiError::bad_request(msg),
        e @ PatchError::TooManyOperations(_) => {
            ApiError::too_large(format!("Request entity too large: {e}"))
        }
        e @ (PatchError::Apply(_) | PatchError::CopyTooLarge { .. } | PatchError::TooDeep) => {
            ApiError::new(422, "Invalid", e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_must_be_objects_and_media_types_known() {
        assert_eq!(
            decode_body(b"[1]", "application/json").unwrap_err().code,
            400
        );
        assert_eq!(decode_body(b"{", "application/json").unwrap_err().code, 400);
        assert_eq!(
            decode_body(b"{}", "application/vnd.kubernetes.protobuf")
                .unwrap_err()
                .code,
            400
        );
        assert_eq!(
            decode_body(b"{}", "application/cbor").unwrap_err().code,
            415
        );
        assert!(decode_body(b"a: 1", "application/yaml").is_ok());
    }
}
