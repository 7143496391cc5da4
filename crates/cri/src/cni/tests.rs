use serde_json::json;

use super::*;

fn cidr() -> Ipv4Cidr {
    Ipv4Cidr::parse("10.244.1.0/24").unwrap()
}

#[test]
fn the_pod_address_is_the_sandbox_one_inside_the_cidr() {
    let result = json!({
        "cniVersion": "1.0.0",
        "interfaces": [
            { "name": "rkube0", "mac": "aa" },
            { "name": "veth1", "mac": "bb" },
            { "name": "eth0", "mac": "cc", "sandbox": "/var/run/netns/x" }
        ],
        "ips": [
            { "address": "192.168.0.5/24", "interface": 2 },
            { "address": "10.244.1.9/24", "interface": 0 },
            { "address": "10.244.1.7/24", "gateway": "10.244.1.1", "interface": 2 }
        ]
    });
    assert_eq!(
        pod_ipv4(&result, &cidr()),
        Some("10.244.1.7".parse().unwrap())
    );
    let without_interfaces = json!({ "ips": [{ "address": "10.244.1.4/24" }] });
    assert_eq!(
        pod_ipv4(&without_interfaces, &cidr()),
        Some("10.244.1.4".parse().unwrap())
    );
    assert_eq!(pod_ipv4(&json!({ "ips": [] }), &cidr()), None);
    assert_eq!(pod_ipv4(&json!({}), &cidr()), None);
}

#[test]
fn plugin_config_carries_name_version_and_previous_result() {
    let network = CniNetwork::new(CniConfig::new("10.244.1.0/24", "/tmp/x")).unwrap();
    let list = network.network_config();
    let kinds: Vec<&str> = plugins(&list).map(plugin_type).collect();
    assert_eq!(kinds, ["bridge", "loopback"]);
    let bridge = plugins(&list).next().unwrap();
    let prev = json!({ "ips": [] });
    let conf = plugin_conf(&list, bridge, Some(&prev));
    assert_eq!(conf["cniVersion"], "1.0.0");
    assert_eq!(conf["name"], "rkube");
    assert_eq!(conf["prevResult"], prev);
    assert_eq!(conf["bridge"], "rkube0");
    assert_eq!(conf["ipam"]["ranges"][0][0]["subnet"], "10.244.1.0/24");
    assert_eq!(conf["ipam"]["dataDir"], "/tmp/x/ipam");
    assert!(plugin_conf(&list, bridge, None).get("prevResult").is_none());
}

#[test]
fn bad_configuration_and_pod_uids_are_rejected() {
    assert!(CniNetwork::new(CniConfig::new("10.244.1.0", "/tmp/x")).is_err());
    let mut long_bridge = CniConfig::new("10.244.1.0/24", "/tmp/x");
    long_bridge.bridge_name = "a-very-long-bridge-name".into();
    assert!(CniNetwork::new(long_bridge).is_err());
    for bad in ["", "../etc", "a/b", ".hidden", "a b"] {
        assert!(check_pod_uid(bad).is_err(), "{bad:?} accepted");
    }
    assert!(check_pod_uid("0f6c2a3e-1b2c-4d5e-8f90-123456789abc").is_ok());
}
