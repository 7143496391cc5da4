//! Services, Endpoints and EndpointSlices: port protocols, target ports, traffic and IP
//! family policies.

use serde_json::{json, Value};

use super::{child_object, default_port_protocols, object_at, set_if_absent};

pub fn default_service(obj: &mut Value) {
    let spec = object_at(obj, "spec");
    set_if_absent(spec, "type", json!("ClusterIP"));
    set_if_absent(spec, "sessionAffinity", json!("None"));
    let svc_type = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    if spec.get("sessionAffinity").and_then(Value::as_str) == Some("ClientIP") {
        let config = child_object(spec, "sessionAffinityConfig");
        let client_ip = child_object(config, "clientIP");
        set_if_absent(client_ip, "timeoutSeconds", json!(10800));
    }
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for port in ports {
            if let Some(p) = port.as_object_mut() {
                set_if_absent(p, "protocol", json!("TCP"));
                let target_unset = match p.get("targetPort") {
                    None | Some(Value::Null) => true,
                    Some(Value::Number(n)) => n.as_i64() == Some(0),
                    Some(Value::String(s)) => s.is_empty(),
                    Some(_) => false,
                };
                if target_unset {
                    if let Some(port_number) = p.get("port").cloned() {
                        p.insert("targetPort".into(), port_number);
                    }
                }
            }
        }
    }
    if svc_type == "NodePort" || svc_type == "LoadBalancer" {
        set_if_absent(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if svc_type == "LoadBalancer" {
        set_if_absent(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    if svc_type != "ExternalName" {
        set_if_absent(spec, "internalTrafficPolicy", json!("Cluster"));
        // The service REST storage records the IP family chosen with the cluster IP.
        set_if_absent(spec, "ipFamilyPolicy", json!("SingleStack"));
        let cluster_ip = spec
            .get("clusterIP")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let family = if cluster_ip.contains(':') {
            "IPv6"
        } else {
            "IPv4"
        };
        set_if_absent(spec, "ipFamilies", json!([family]));
        if !cluster_ip.is_empty() {
            set_if_absent(spec, "clusterIPs", json!([cluster_ip]));
        }
    }
}

pub fn default_endpoints(obj: &mut Value) {
    if let Some(subsets) = obj.get_mut("subsets").and_then(Value::as_array_mut) {
        for subset in subsets {
            default_port_protocols(subset.get_mut("ports"));
        }
    }
}

pub fn default_endpoint_slice(obj: &mut Value) {
    default_port_protocols(obj.get_mut("ports"));
}
