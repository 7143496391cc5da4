//! ClusterIP and NodePort allocation for Services (the Service strategy calls it on create).
//! Allocations are checked against every Service in the watch cache plus the ones this
//! process handed out in the last minute (which the cache may not show yet).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::Rng;
use rkube_api::registry::{self, ResourceInfo};
use rkube_api::{ApiError, StatusCause};
use serde_json::{json, Value};

use crate::ApiState;

const RECENT: Duration = Duration::from_secs(60);

/// An IPv4 CIDR such as 10.96.0.0/12.
#[derive(Clone, Copy, Debug)]
pub struct Ipv4Range {
    base: u32,
    size: u32,
}

impl std::str::FromStr for Ipv4Range {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (ip, bits) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a CIDR"))?;
        let ip: Ipv4Addr = ip.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let bits: u32 = bits.parse().map_err(|e| format!("{s:?}: {e}"))?;
        if !(8..=30).contains(&bits) {
            return Err(format!("{s:?}: prefix length must be between 8 and 30"));
        }
        let size = 1u32 << (32 - bits);
        Ok(Ipv4Range {
            base: u32::from(ip) & !(size - 1),
            size,
        })
    }
}

impl Ipv4Range {
    fn offset_of(&self, ip: &str) -> Option<u32> {
        let ip: Ipv4Addr = ip.parse().ok()?;
        let n = u32::from(ip);
        (n >= self.base && n < self.base + self.size).then(|| n - self.base)
    }
}

pub struct ServiceAllocator {
    range: Ipv4Range,
    recent_ips: Mutex<HashMap<u32, Instant>>,
    recent_ports: Mutex<HashMap<u16, Instant>>,
}

impl ServiceAllocator {
    pub fn new(range: Ipv4Range) -> Self {
        ServiceAllocator {
            range,
            recent_ips: Mutex::new(HashMap::new()),
            recent_ports: Mutex::new(HashMap::new()),
        }
    }
}

fn services_resource() -> Option<&'static ResourceInfo> {
    registry::find("", "v1", "services")
}

/// Assigns a new Service its ClusterIP (unless headless or ExternalName) and, for the
/// NodePort and LoadBalancer types, its node ports.
pub fn allocate_service(
    state: &ApiState,
    resource: &ResourceInfo,
    obj: &mut Value,
) -> Result<(), ApiError> {
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    let svc_type = obj["spec"]["type"]
        .as_str()
        .unwrap_or("ClusterIP")
        .to_string();
    let existing = services_resource()
        .map(|r| state.cache.all(r))
        .unwrap_or_default();
    let existing: Vec<Value> = existing.iter().filter_map(|o| o.value().ok()).collect();
    if svc_type != "ExternalName" {
        let requested = obj["spec"]["clusterIP"].as_str().unwrap_or("").to_string();
        if requested != "None" {
            let alloc = &state.services;
            let mut recent = alloc.recent_ips.lock();
            recent.retain(|_, at| at.elapsed() < RECENT);
            let mut used: std::collections::HashSet<u32> = recent.keys().copied().collect();
            used.extend(
                existing
                    .iter()
                    .filter_map(|s| s["spec"]["clusterIP"].as_str())
                    .filter_map(|ip| alloc.range.offset_of(ip)),
            );
            let offset = if requested.is_empty() {
                // Offset 0 is the network address and 1 is upstream's `kubernetes` Service.
                let usable = alloc.range.size.saturating_sub(3);
                if (used.len() as u32) >= usable {
                    return Err(ApiError::internal(
                        "failed to allocate a serviceIP: range is full",
                    ));
                }
                let mut rng = rand::thread_rng();
                loop {
                    let candidate = rng.gen_range(2..alloc.range.size - 1);
                    if !used.contains(&candidate) {
                        break candidate;
                    }
                }
            } else {
                let Some(offset) = alloc.range.offset_of(&requested) else {
                    return Err(ApiError::invalid(
                        resource,
                        &name,
                        vec![StatusCause::invalid(
                            "spec.clusterIPs",
                            &json!([requested]),
                            "failed to allocate IP: the provided IP is not in the valid range",
                        )],
                    ));
                };
                if used.contains(&offset) {
                    return Err(ApiError::invalid(
                        resource,
                        &name,
                        vec![StatusCause::invalid(
                            "spec.clusterIPs",
                            &json!([requested]),
                            "failed to allocate IP: provided IP is already allocated",
                        )],
                    ));
                }
                offset
            };
            recent.insert(offset, Instant::now());
            let ip = Ipv4Addr::from(alloc.range.base + offset).to_string();
            obj["spec"]["clusterIP"] = json!(ip);
            obj["spec"]["clusterIPs"] = json!([ip]);
        } else {
            obj["spec"]["clusterIPs"] = json!(["None"]);
        }
        obj["spec"]["ipFamilies"] = json!(["IPv4"]);
    }
    if svc_type == "NodePort" || svc_type == "LoadBalancer" {
        allocate_node_ports(state, resource, &name, obj, &existing)?;
    }
    Ok(())
}

fn allocate_node_ports(
    state: &ApiState,
    resource: &ResourceInfo,
    name: &str,
    obj: &mut Value,
    existing: &[Value],
) -> Result<(), ApiError> {
    let mut recent = state.services.recent_ports.lock();
    recent.retain(|_, at| at.elapsed() < RECENT);
    let mut used: std::collections::HashSet<u16> = recent.keys().copied().collect();
    for s in existing {
        for p in s["spec"]["ports"].as_array().into_iter().flatten() {
            if let Some(n) = p["nodePort"].as_u64() {
                used.insert(n as u16);
            }
        }
    }
    let Some(ports) = obj["spec"]["ports"].as_array_mut() else {
        return Ok(());
    };
    let (lo, hi) = rkube_api::validation::NODE_PORT_RANGE;
    for (i, p) in ports.iter_mut().enumerate() {
        let port = match p["nodePort"].as_u64() {
            Some(n) => {
                let n = n as u16;
                if used.contains(&n) {
                    return Err(ApiError::invalid(
                        resource,
                        name,
                        vec![StatusCause::invalid(
                            format!("spec.ports[{i}].nodePort"),
                            &json!(n),
                            "provided port is already allocated",
                        )],
                    ));
                }
                n
            }
            None => {
                if used.len() >= usize::from(hi - lo + 1) {
                    return Err(ApiError::internal(
                        "failed to allocate a nodePort: range is full",
                    ));
                }
                let mut rng = rand::thread_rng();
                loop {
                    let c = rng.gen_range(lo..=hi);
                    if !used.contains(&c) {
                        break c;
                    }
                }
            }
        };
        used.insert(port);
        recent.insert(port, Instant::now());
        p["nodePort"] = json!(port);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_service_ranges() {
        let r: Ipv4Range = "10.96.0.0/12".parse().unwrap();
        assert_eq!(r.size, 1 << 20);
        assert_eq!(r.offset_of("10.96.0.10"), Some(10));
        assert_eq!(r.offset_of("10.112.0.1"), None);
        assert!("10.96.0.0".parse::<Ipv4Range>().is_err());
        assert!("10.96.0.0/31".parse::<Ipv4Range>().is_err());
    }
}
