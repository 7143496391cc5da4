//! Services: a ClusterIP and node ports assigned on create (`crate::admission`) and kept
//! across updates; Endpoints and EndpointSlices.

use rkube_api::registry::ResourceInfo;
use rkube_api::{kinds, ApiError, StatusCause};
use serde_json::{json, Value};

use super::Strategy;

pub static SERVICE: Strategy = Strategy {
    rules: &kinds::SERVICE,
    assign_on_create: crate::admission::allocate_service,
    keep_assigned_on_update: keep_assigned,
    ..Strategy::DEFAULT
};

pub static ENDPOINTS: Strategy = Strategy {
    rules: &kinds::ENDPOINTS,
    ..Strategy::DEFAULT
};

pub static ENDPOINT_SLICE: Strategy = Strategy {
    rules: &kinds::ENDPOINT_SLICE,
    ..Strategy::DEFAULT
};

/// Keeps server-assigned Service fields when an update omits them (a PUT built from a
/// manifest has no clusterIP), and refuses to change them.
fn keep_assigned(resource: &ResourceInfo, old: &Value, new: &mut Value) -> Result<(), ApiError> {
    for field in ["clusterIP", "clusterIPs"] {
        let old_v = &old["spec"][field];
        let new_v = &new["spec"][field];
        if new_v.is_null() || new_v == &json!("") {
            if !old_v.is_null() {
                new["spec"][field] = old_v.clone();
            }
        } else if !old_v.is_null() && new_v != old_v {
            let name = old["metadata"]["name"].as_str().unwrap_or("");
            return Err(ApiError::invalid(
                resource,
                name,
                vec![StatusCause::invalid(
                    format!("spec.{field}"),
                    new_v,
                    "field is immutable",
                )],
            ));
        }
    }
    // Node ports the update leaves out stay as they were.
    if let (Some(old_ports), Some(new_ports)) = (
        old["spec"]["ports"].as_array(),
        new["spec"]["ports"].as_array_mut(),
    ) {
        for p in new_ports.iter_mut() {
            if p["nodePort"].is_null() {
                if let Some(o) = old_ports
                    .iter()
                    .find(|o| o["port"] == p["port"] && o["protocol"] == p["protocol"])
                {
                    if !o["nodePort"].is_null() {
                        p["nodePort"] = o["nodePort"].clone();
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rkube_api::registry::find;

    #[test]
    fn updates_keep_the_allocated_cluster_ip() {
        let svc = find("", "v1", "services").unwrap();
        let old = json!({"metadata": {"name": "s"}, "spec": {"clusterIP": "10.96.0.5", "clusterIPs": ["10.96.0.5"], "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30001}]}});
        let mut new = json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80, "protocol": "TCP"}]}});
        keep_assigned(svc, &old, &mut new).unwrap();
        assert_eq!(new["spec"]["clusterIP"], "10.96.0.5");
        assert_eq!(new["spec"]["ports"][0]["nodePort"], 30001);
        let mut changed = json!({"metadata": {"name": "s"}, "spec": {"clusterIP": "10.96.0.6"}});
        assert_eq!(
            keep_assigned(svc, &old, &mut changed).unwrap_err().code,
            422
        );
    }
}
