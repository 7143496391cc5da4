//! A [`PodNetwork`] without side effects: addresses come from a counter over the pod
//! CIDR, namespaces are only paths. For unit tests and simulated nodes.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::{PodNetwork, PodNetworkStatus, Result, RuntimeError};

/// An IPv4 network such as `10.244.1.0/24`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Cidr {
    /// The network address (host bits cleared).
    pub network: Ipv4Addr,
    pub prefix_len: u8,
}

impl Ipv4Cidr {
    pub fn parse(text: &str) -> Result<Self> {
        let invalid = || RuntimeError::Other(format!("invalid IPv4 CIDR {text:?}"));
        let (addr, prefix) = text.trim().split_once('/').ok_or_else(invalid)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| invalid())?;
        let prefix_len: u8 = prefix.parse().map_err(|_| invalid())?;
        if prefix_len > 32 {
            return Err(invalid());
        }
        let network = Ipv4Addr::from(u32::from(addr) & Self::mask(prefix_len));
        Ok(Self {
            network,
            prefix_len,
        })
    }

    fn mask(prefix_len: u8) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(prefix_len))
            .unwrap_or(0)
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & Self::mask(self.prefix_len) == u32::from(self.network)
    }

    /// The number of addresses in the network, including network and broadcast.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix_len))
    }

    /// The `offset`-th address of the network (0 is the network address).
    pub fn nth(&self, offset: u64) -> Option<Ipv4Addr> {
        (offset < self.size()).then(|| Ipv4Addr::from(u32::from(self.network) + offset as u32))
    }
}

impl std::fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

pub struct FakeNetwork {
    cidr: Ipv4Cidr,
    state: Mutex<FakeState>,
}

#[derive(Default)]
struct FakeState {
    pods: HashMap<String, PodNetworkStatus>,
    /// Offset of the next address to try; advancing round-robin like host-local keeps
    /// a just-freed address from being handed out again at once.
    next_offset: u64,
}

impl FakeNetwork {
    /// Hands out addresses of `pod_cidr`, skipping the network address, the gateway
    /// (`.1`, as the CNI bridge would take it) and the broadcast address.
    pub fn new(pod_cidr: &str) -> Result<Self> {
        let cidr = Ipv4Cidr::parse(pod_cidr)?;
        if cidr.size() < 4 {
            return Err(RuntimeError::Other(format!(
                "pod CIDR {cidr} has no room for pod addresses"
            )));
        }
        Ok(Self {
            cidr,
            state: Mutex::new(FakeState::default()),
        })
    }

    /// How many pods currently hold an address.
    pub fn allocated(&self) -> usize {
        self.state.lock().pods.len()
    }
}

#[async_trait]
impl PodNetwork for FakeNetwork {
    async fn setup(
        &self,
        pod_uid: &str,
        _namespace: &str,
        _name: &str,
    ) -> Result<PodNetworkStatus> {
        let mut state = self.state.lock();
        if let Some(existing) = state.pods.get(pod_uid) {
            return Ok(existing.clone());
        }
        let first = 2;
        let usable = self.cidr.size() - 3;
        for _ in 0..usable {
            let offset = first + state.next_offset % usable;
            state.next_offset = (state.next_offset + 1) % usable;
            let Some(ip) = self.cidr.nth(offset) else {
                continue;
            };
            let ip = ip.to_string();
            if state.pods.values().any(|pod| pod.ip == ip) {
                continue;
            }
            let status = PodNetworkStatus {
                netns_path: PathBuf::from(format!("/var/run/netns/fake-{pod_uid}")),
                ip,
            };
            state.pods.insert(pod_uid.to_string(), status.clone());
            return Ok(status);
        }
        Err(RuntimeError::Unavailable(format!(
            "no IP addresses available in {}",
            self.cidr
        )))
    }

    async fn status(&self, pod_uid: &str) -> Result<Option<PodNetworkStatus>> {
        Ok(self.state.lock().pods.get(pod_uid).cloned())
    }

    async fn teardown(&self, pod_uid: &str) -> Result<()> {
        self.state.lock().pods.remove(pod_uid);
        Ok(())
    }

    async fn list(&self) -> Result<Vec<String>> {
        let mut uids: Vec<String> = self.state.lock().pods.keys().cloned().collect();
        uids.sort();
        Ok(uids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing_clears_host_bits_and_rejects_garbage() {
        let cidr = Ipv4Cidr::parse("10.244.1.7/24").unwrap();
        assert_eq!(cidr.to_string(), "10.244.1.0/24");
        assert!(cidr.contains("10.244.1.255".parse().unwrap()));
        assert!(!cidr.contains("10.244.2.1".parse().unwrap()));
        assert_eq!(cidr.size(), 256);
        assert_eq!(Ipv4Cidr::parse("0.0.0.0/0").unwrap().size(), 1 << 32);
        for bad in ["10.0.0.0", "10.0.0.0/33", "x/8", "10.0.0/8", ""] {
            assert!(Ipv4Cidr::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[tokio::test]
    async fn pods_get_distinct_addresses_inside_the_cidr() {
        let network = FakeNetwork::new("10.244.3.0/24").unwrap();
        let cidr = Ipv4Cidr::parse("10.244.3.0/24").unwrap();
        let a = network.setup("a", "default", "a").await.unwrap();
        let b = network.setup("b", "default", "b").await.unwrap();
        assert_ne!(a.ip, b.ip);
        assert_ne!(a.netns_path, b.netns_path);
        for status in [&a, &b] {
            let ip: Ipv4Addr = status.ip.parse().unwrap();
            assert!(cidr.contains(ip));
            assert_ne!(ip, cidr.nth(0).unwrap(), "network address handed out");
            assert_ne!(ip, cidr.nth(1).unwrap(), "gateway handed out");
        }
        assert_eq!(network.setup("a", "default", "a").await.unwrap(), a);
        assert_eq!(network.status("a").await.unwrap(), Some(a));
        assert_eq!(network.allocated(), 2);
        assert_eq!(network.list().await.unwrap(), ["a", "b"]);
    }

    #[tokio::test]
    async fn teardown_frees_the_address_and_exhaustion_is_an_error() {
        // A /29 has 8 addresses: network, gateway, broadcast and 5 for pods.
        let network = FakeNetwork::new("10.244.4.0/29").unwrap();
        let mut ips = Vec::new();
        for i in 0..5 {
            ips.push(network.setup(&format!("p{i}"), "ns", "p").await.unwrap().ip);
        }
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), 5);
        assert!(network.setup("extra", "ns", "p").await.is_err());

        let freed = network.status("p2").await.unwrap().unwrap().ip;
        network.teardown("p2").await.unwrap();
        network.teardown("p2").await.unwrap();
        assert_eq!(network.status("p2").await.unwrap(), None);
        assert_eq!(network.setup("extra", "ns", "p").await.unwrap().ip, freed);
    }

    #[test]
    fn a_cidr_without_room_is_rejected() {
        assert!(FakeNetwork::new("10.0.0.0/31").is_err());
        assert!(FakeNetwork::new("10.0.0.0/30").is_ok());
    }
}
