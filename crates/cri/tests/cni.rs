//! The CNI pod network against the real plugins in /usr/lib/cni, as root. Every test
//! uses its own bridge, CIDR, iptables chain, network name and temp dirs, and a guard
//! removes what the test made even when it fails. Traffic goes only to addresses in the
//! namespaces and bridge the test created.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use nix::mount::MntFlags;
use nix::sched::CloneFlags;
use rkube_cri::cni::{CniConfig, CniNetwork};
use rkube_cri::fake_network::Ipv4Cidr;
use rkube_cri::{PodNetwork, RuntimeError};

/// Names and addresses unique to one test in one run.
fn unique_suffix() -> u32 {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    (std::process::id() ^ nanos).wrapping_mul(2_654_435_761)
        ^ COUNTER.fetch_add(1, Ordering::Relaxed).wrapping_mul(40_503)
}

/// Everything one test creates on the machine; dropping it removes all of it.
struct TestNetwork {
    config: CniConfig,
    pod_uids: Vec<String>,
    // Dropped after `drop` ran, i.e. after the namespace dir is unmounted.
    _dir: tempfile::TempDir,
}

impl TestNetwork {
    /// `cidr_for(n)` picks the pod CIDR from a per-test random byte.
    fn new(cidr_for: impl Fn(u8) -> String) -> Self {
        let suffix = unique_suffix();
        let dir = tempfile::tempdir().unwrap();
        let mut config = CniConfig::new(cidr_for((suffix >> 24) as u8), dir.path().join("state"));
        config.bridge_name = format!("rkt{:06x}", suffix & 0xff_ffff);
        config.network_name = format!("rkt-{suffix:08x}");
        config.forward_chain = format!("RKT-{suffix:08x}");
        config.netns_dir = dir.path().join("netns");
        Self {
            config,
            pod_uids: Vec::new(),
            _dir: dir,
        }
    }

    fn network(&self) -> CniNetwork {
        CniNetwork::new(self.config.clone()).unwrap()
    }

    fn pod_uid(&mut self, name: &str) -> String {
        let uid = format!("{}-{name}", self.config.network_name);
        self.pod_uids.push(uid.clone());
        uid
    }

    fn cidr(&self) -> Ipv4Cidr {
        Ipv4Cidr::parse(&self.config.pod_cidr).unwrap()
    }

    fn iptables_lines(&self, chain: &str) -> Vec<String> {
        let output = Command::new("iptables")
            .args(["-w", "-t", "filter", "-S", chain])
            .output()
            .unwrap();
        assert!(output.status.success(), "iptables -S {chain} failed");
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        // Tear the pods down through the plugins so their veths, NAT chains and address
        // reservations go too; on a thread of its own because the test's runtime may
        // still be current here.
        let config = self.config.clone();
        let uids = self.pod_uids.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let network = CniNetwork::new(config).unwrap();
            runtime.block_on(async {
                for uid in &uids {
                    let _ = network.teardown(uid).await;
                }
            });
        })
        .join();
        for uid in &self.pod_uids {
            let path = self.config.netns_dir.join(format!("rkube-{uid}"));
            let _ = nix::mount::umount2(&path, MntFlags::MNT_DETACH);
        }
        let _ = nix::mount::umount2(&self.config.netns_dir, MntFlags::MNT_DETACH);
        let _ = Command::new("ip")
            .args(["link", "del", &self.config.bridge_name])
            .output();
        let chain = self.config.forward_chain.as_str();
        let iptables = |args: &[&str]| {
            Command::new("iptables")
                .args(["-w", "-t", "filter"])
                .args(args)
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        };
        while iptables(&["-D", "FORWARD", "-j", chain]) {}
        iptables(&["-F", chain]);
        iptables(&["-X", chain]);
    }
}

/// Runs `job` on a thread that joined the network namespace at `netns`.
fn in_netns<T: Send + 'static>(netns: &Path, job: impl FnOnce() -> T + Send + 'static) -> T {
    let namespace = File::open(netns).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(&namespace, CloneFlags::CLONE_NEWNET).unwrap();
        job()
    })
    .join()
    .unwrap()
}

/// A one-connection server inside `netns` that answers a line with `reply`.
fn serve_once(netns: &Path, reply: &'static str) -> (u16, std::thread::JoinHandle<String>) {
    // The socket belongs to the namespace it was created in, whichever thread uses it.
    let listener = in_netns(netns, || TcpListener::bind("0.0.0.0:0").unwrap());
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut request = [0u8; 5];
        stream.read_exact(&mut request).unwrap();
        stream.write_all(reply.as_bytes()).unwrap();
        String::from_utf8_lossy(&request).into_owned()
    });
    (port, server)
}

fn exchange(ip: &str, port: u16) -> String {
    let addr = SocketAddr::new(ip.parse().unwrap(), port);
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .unwrap_or_else(|err| panic!("connecting to {addr}: {err}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(b"ping\n").unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    reply
}

#[tokio::test]
async fn pods_get_distinct_addresses_reach_each_other_and_survive_a_restart() {
    let mut test = TestNetwork::new(|n| format!("10.250.{n}.0/24"));
    let (uid_a, uid_b, uid_c) = (test.pod_uid("a"), test.pod_uid("b"), test.pod_uid("c"));
    let cidr = test.cidr();
    let network = test.network();

    let a = network.setup(&uid_a, "default", "a").await.unwrap();
    let b = network.setup(&uid_b, "default", "b").await.unwrap();
    assert_ne!(a.ip, b.ip);
    assert_ne!(a.netns_path, b.netns_path);
    for pod in [&a, &b] {
        let ip: Ipv4Addr = pod.ip.parse().unwrap();
        assert!(cidr.contains(ip), "{ip} outside {cidr}");
        assert_ne!(ip, network.gateway());
        assert!(pod.netns_path.starts_with(&test.config.netns_dir));
        assert!(pod.netns_path.exists());
    }

    // Setup again changes nothing.
    assert_eq!(network.setup(&uid_a, "default", "a").await.unwrap(), a);

    // Pod to pod across the bridge (through the FORWARD chain), and host to pod.
    let (port_b, server_b) = serve_once(&b.netns_path, "from-b");
    let b_ip = b.ip.clone();
    let reply = in_netns(&a.netns_path, move || exchange(&b_ip, port_b));
    assert_eq!(reply, "from-b");
    assert_eq!(server_b.join().unwrap(), "ping\n");

    let (port_a, server_a) = serve_once(&a.netns_path, "from-a");
    assert_eq!(exchange(&a.ip, port_a), "from-a");
    assert_eq!(server_a.join().unwrap(), "ping\n");

    // The loopback plugin brought `lo` up inside the pod.
    let (port_lo, server_lo) = serve_once(&a.netns_path, "from-lo");
    let reply = in_netns(&a.netns_path, move || exchange("127.0.0.1", port_lo));
    assert_eq!(reply, "from-lo");
    server_lo.join().unwrap();

    // A new instance on the same state dir (a kubelet restart) knows the pods.
    drop(network);
    let restarted = test.network();
    assert_eq!(restarted.status(&uid_a).await.unwrap(), Some(a.clone()));
    assert_eq!(restarted.status(&uid_b).await.unwrap(), Some(b.clone()));
    assert_eq!(restarted.status(&uid_c).await.unwrap(), None);
    assert_eq!(restarted.setup(&uid_b, "default", "b").await.unwrap(), b);

    // A pod set up by the new instance installs the forwarding rules again, idempotently.
    let c = restarted.setup(&uid_c, "default", "c").await.unwrap();
    assert!(c.ip != a.ip && c.ip != b.ip);
    let chain = test.config.forward_chain.clone();
    let jumps = test
        .iptables_lines("FORWARD")
        .into_iter()
        .filter(|line| line.ends_with(&format!("-j {chain}")))
        .count();
    assert_eq!(jumps, 1);
    let accepts: Vec<String> = test
        .iptables_lines(&chain)
        .into_iter()
        .filter(|line| line.starts_with("-A "))
        .collect();
    assert_eq!(accepts.len(), 2, "{accepts:?}");
    assert!(accepts.iter().all(|line| line.contains(&cidr.to_string())));

    // Teardown removes the namespace and the state, and is idempotent.
    restarted.teardown(&uid_a).await.unwrap();
    assert!(!a.netns_path.exists());
    assert_eq!(restarted.status(&uid_a).await.unwrap(), None);
    restarted.teardown(&uid_a).await.unwrap();
    let host_local_reservation = test
        .config
        .state_dir
        .join("ipam")
        .join(&test.config.network_name)
        .join(&a.ip);
    assert!(
        !host_local_reservation.exists(),
        "address {} still reserved",
        a.ip
    );

    // The other pods are untouched.
    assert_eq!(restarted.status(&uid_b).await.unwrap(), Some(b.clone()));
    let (port_c, server_c) = serve_once(&c.netns_path, "from-c");
    let c_ip = c.ip.clone();
    assert_eq!(
        in_netns(&b.netns_path, move || exchange(&c_ip, port_c)),
        "from-c"
    );
    server_c.join().unwrap();

    restarted.teardown(&uid_b).await.unwrap();
    restarted.teardown(&uid_c).await.unwrap();
    assert!(!b.netns_path.exists() && !c.netns_path.exists());
}

#[tokio::test]
async fn a_freed_address_is_reused_and_exhaustion_reports_the_plugin_error() {
    // A /30 leaves exactly one pod address next to the gateway.
    let mut test = TestNetwork::new(|n| format!("10.251.{n}.4/30"));
    let (uid_x, uid_y) = (test.pod_uid("x"), test.pod_uid("y"));
    let network = test.network();

    let x = network.setup(&uid_x, "default", "x").await.unwrap();
    assert_eq!(
        x.ip.parse::<Ipv4Addr>().unwrap(),
        test.cidr().nth(2).unwrap()
    );

    let err = network.setup(&uid_y, "default", "y").await.unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, RuntimeError::Unavailable(_)), "{err:?}");
    assert!(
        message.contains("no IP addresses available"),
        "plugin message missing: {message}"
    );
    // The failed setup left nothing behind.
    assert_eq!(network.status(&uid_y).await.unwrap(), None);
    assert!(!network.netns_path(&uid_y).exists());
    assert!(!test.config.state_dir.join(format!("{uid_y}.json")).exists());

    network.teardown(&uid_x).await.unwrap();
    let y = network.setup(&uid_y, "default", "y").await.unwrap();
    assert_eq!(y.ip, x.ip);

    // A namespace lost behind our back (a reboot empties /var/run): the pod is no longer
    // reported, and setting it up again first releases its old address (the only one).
    nix::mount::umount2(&y.netns_path, MntFlags::MNT_DETACH).unwrap();
    std::fs::remove_file(&y.netns_path).unwrap();
    assert_eq!(network.status(&uid_y).await.unwrap(), None);
    let again = network.setup(&uid_y, "default", "y").await.unwrap();
    assert_eq!(again, y);
    assert!(again.netns_path.exists());
    network.teardown(&uid_y).await.unwrap();
}

#[tokio::test]
async fn a_missing_plugin_is_a_clear_error_and_leaves_no_namespace() {
    let mut test = TestNetwork::new(|n| format!("10.252.{n}.0/24"));
    test.config.plugin_dir = PathBuf::from("/nonexistent/cni/bin");
    let uid = test.pod_uid("p");
    let network = test.network();

    let err = network.setup(&uid, "default", "p").await.unwrap_err();
    assert!(matches!(err, RuntimeError::Unavailable(_)), "{err:?}");
    assert!(
        err.to_string().contains("/nonexistent/cni/bin/bridge"),
        "{err}"
    );
    assert!(!network.netns_path(&uid).exists());
    assert_eq!(network.status(&uid).await.unwrap(), None);
}

#[tokio::test]
async fn networks_left_by_a_crash_are_listed_and_torn_down_by_the_next_instance() {
    let mut test = TestNetwork::new(|n| format!("10.253.{n}.0/24"));
    let (uid_kept, uid_stale) = (test.pod_uid("kept"), test.pod_uid("stale"));
    let network = test.network();
    assert_eq!(network.list().await.unwrap(), Vec::<String>::new());
    let kept = network.setup(&uid_kept, "default", "kept").await.unwrap();
    let stale = network.setup(&uid_stale, "default", "stale").await.unwrap();

    // A crash mid-setup leaves a state file without a result; it is listed too.
    let uid_half = test.pod_uid("half");
    let mut half_state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(test.config.state_dir.join(format!("{uid_stale}.json"))).unwrap(),
    )
    .unwrap();
    half_state["pod_uid"] = uid_half.clone().into();
    half_state["netns_path"] = network.netns_path(&uid_half).to_string_lossy().into();
    half_state["result"] = serde_json::Value::Null;
    half_state["ip"] = serde_json::Value::Null;
    std::fs::write(
        test.config.state_dir.join(format!("{uid_half}.json")),
        serde_json::to_vec(&half_state).unwrap(),
    )
    .unwrap();
    drop(network);

    let restarted = test.network();
    let mut expected = vec![uid_kept.clone(), uid_stale.clone(), uid_half.clone()];
    expected.sort();
    assert_eq!(restarted.list().await.unwrap(), expected);

    for uid in [&uid_stale, &uid_half] {
        restarted.teardown(uid).await.unwrap();
    }
    assert_eq!(restarted.list().await.unwrap(), vec![uid_kept.clone()]);
    assert!(!stale.netns_path.exists());
    let reservation = test
        .config
        .state_dir
        .join("ipam")
        .join(&test.config.network_name)
        .join(&stale.ip);
    assert!(!reservation.exists(), "address {} still reserved", stale.ip);
    assert_eq!(restarted.status(&uid_kept).await.unwrap(), Some(kept));
    restarted.teardown(&uid_kept).await.unwrap();
}
