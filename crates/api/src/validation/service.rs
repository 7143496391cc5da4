//! Services: type, cluster IP, ports and node ports, policies; the cluster IP is kept
//! across updates.

use std::collections::HashSet;
use std::net::IpAddr;

use serde_json::{json, Value};

use super::causes::{child, index, invalid_raw};
use super::meta::validate_labels;
use super::{gofmt, names};
use crate::status::StatusCause;

/// The default `--service-node-port-range`.
pub const NODE_PORT_RANGE: (u16, u16) = (30000, 32767);

const SERVICE_TYPES: &[&str] = &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];

pub fn validate_service(obj: &Value, errs: &mut Vec<StatusCause>) {
    let spec = &obj["spec"];
    let svc_type = spec["type"].as_str().unwrap_or("ClusterIP");
    if !SERVICE_TYPES.contains(&svc_type) {
        errs.push(StatusCause::not_supported(
            "spec.type",
            &spec["type"],
            SERVICE_TYPES,
        ));
    }
    let cluster_ip = spec["clusterIP"].as_str().unwrap_or("");
    let headless = cluster_ip == "None";
    let ports = spec["ports"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if ports.is_empty() && !headless && svc_type != "ExternalName" {
        errs.push(StatusCause::required("spec.ports"));
    }
    if svc_type == "ExternalName" {
        let external = spec["externalName"].as_str().unwrap_or("");
        if external.is_empty() {
            errs.push(StatusCause::required("spec.externalName"));
        } else {
            for msg in names::dns1123_subdomain_errors(external.trim_end_matches('.')) {
                errs.push(StatusCause::invalid(
                    "spec.externalName",
                    &spec["externalName"],
                    msg,
                ));
            }
        }
    } else if !cluster_ip.is_empty() && !headless && cluster_ip.parse::<IpAddr>().is_err() {
        errs.push(StatusCause::invalid(
            "spec.clusterIP",
            &spec["clusterIP"],
            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
        ));
    }

    let require_name = ports.len() > 1;
    let mut port_names = HashSet::new();
    let mut port_keys = HashSet::new();
    for (i, port) in ports.iter().enumerate() {
        let ppath = index("spec.ports", i);
        let name = port["name"].as_str().unwrap_or("");
        if require_name && name.is_empty() {
            errs.push(StatusCause::required(child(&ppath, "name")));
        } else if !name.is_empty() {
            for msg in names::dns1123_label_errors(name) {
                errs.push(StatusCause::invalid(
                    child(&ppath, "name"),
                    &port["name"],
                    msg,
                ));
            }
            if !port_names.insert(name.to_string()) {
                errs.push(StatusCause::duplicate(child(&ppath, "name"), &port["name"]));
            }
        }
        let number = port["port"].as_i64().unwrap_or(0);
        if !(1..=65535).contains(&number) {
            errs.push(StatusCause::invalid(
                child(&ppath, "port"),
                &json!(number),
                "must be between 1 and 65535, inclusive",
            ));
        }
        let proto = port["protocol"].as_str().unwrap_or("");
        if proto.is_empty() {
            errs.push(StatusCause::required(child(&ppath, "protocol")));
        } else if !["SCTP", "TCP", "UDP"].contains(&proto) {
            errs.push(StatusCause::not_supported(
                child(&ppath, "protocol"),
                &port["protocol"],
                &["SCTP", "TCP", "UDP"],
            ));
        } else if !port_keys.insert((number, proto.to_string())) {
            errs.push(StatusCause::duplicate(
                ppath.clone(),
                &json!({"port": number, "protocol": proto}),
            ));
        }
        match &port["targetPort"] {
            Value::Number(n) if !(1..=65535).contains(&n.as_i64().unwrap_or(0)) => {
                errs.push(StatusCause::invalid(
                    child(&ppath, "targetPort"),
                    &port["targetPort"],
                    "must be between 1 and 65535, inclusive",
                ));
            }
            Value::String(s) => {
                for msg in names::port_name_errors(s) {
                    errs.push(StatusCause::invalid(
                        child(&ppath, "targetPort"),
                        &port["targetPort"],
                        msg,
                    ));
                }
            }
            _ => {}
        }
        if let Some(node_port) = port["nodePort"].as_i64().filter(|n| *n != 0) {
            let np_path = child(&ppath, "nodePort");
            if svc_type == "ClusterIP" || svc_type == "ExternalName" {
                errs.push(StatusCause::forbidden(
                    np_path,
                    format!("may not be used when `type` is '{svc_type}'"),
                ));
            } else if !(i64::from(NODE_PORT_RANGE.0)..=i64::from(NODE_PORT_RANGE.1))
                .contains(&node_port)
            {
                errs.push(StatusCause::invalid(
                    np_path,
                    &json!(node_port),
                    format!(
                        "provided port is not in the valid range. The range of valid ports is {}-{}",
                        NODE_PORT_RANGE.0, NODE_PORT_RANGE.1
                    ),
                ));
            }
        }
    }

    if let Some(sel) = spec["selector"].as_object() {
        validate_labels(sel, "spec.selector", errs);
    }
    if let Some(aff) = spec["sessionAffinity"].as_str() {
        if aff != "ClientIP" && aff != "None" {
            errs.push(StatusCause::not_supported(
                "spec.sessionAffinity",
                &spec["sessionAffinity"],
                &["ClientIP", "None"],
            ));
        }
    }
    if let Some(policy) = spec["ipFamilyPolicy"].as_str() {
        const POLICIES: &[&str] = &["PreferDualStack", "RequireDualStack", "SingleStack"];
        if !POLICIES.contains(&policy) {
            errs.push(StatusCause::not_supported(
                "spec.ipFamilyPolicy",
                &spec["ipFamilyPolicy"],
                POLICIES,
            ));
        }
    }
    for field in ["internalTrafficPolicy", "externalTrafficPolicy"] {
        if let Some(policy) = spec[field].as_str() {
            if policy != "Cluster" && policy != "Local" {
                errs.push(StatusCause::not_supported(
                    format!("spec.{field}"),
                    &spec[field],
                    &["Cluster", "Local"],
                ));
            }
        }
    }
}

pub fn validate_service_update(new: &Value, old: &Value, errs: &mut Vec<StatusCause>) {
    let (ns, os) = (&new["spec"], &old["spec"]);
    let old_ip = os["clusterIP"].as_str().unwrap_or("");
    let new_ip = ns["clusterIP"].as_str().unwrap_or("");
    // Moving to ExternalName releases the IP; an empty new value means "keep the old one".
    if ns["type"].as_str() != Some("ExternalName")
        && !old_ip.is_empty()
        && !new_ip.is_empty()
        && old_ip != new_ip
    {
        let ips: Vec<String> = match ns["clusterIPs"].as_array() {
            Some(list) if !list.is_empty() => list
                .iter()
                .map(|v| v.as_str().unwrap_or("").to_string())
                .collect(),
            _ => vec![new_ip.to_string()],
        };
        errs.push(invalid_raw(
            "spec.clusterIPs[0]".to_string(),
            &gofmt::string_slice(&ips),
            "may not change once set",
        ));
    }
}
