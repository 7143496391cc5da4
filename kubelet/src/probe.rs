//! One run of a container probe (exec, httpGet, tcpSocket), with upstream's semantics and
//! failure messages, so events and statuses read like upstream's.
//!
//! The caller owns the schedule (initialDelaySeconds, periodSeconds, thresholds); this
//! module only answers "did it pass this time". Named ports must be resolved by the
//! caller ([`resolve_port`] does it from the container spec); numeric strings are accepted
//! as upstream does.
//!
//! Deliberately absent: HTTPS (reqwest is built without TLS here; such probes fail with a
//! clear message), gRPC probes (answer [`ProbeResult::Unknown`]), and upstream's rule of not
//! following redirects to other hosts (reqwest follows up to 10 redirects anywhere).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use k8s_openapi::api::core::v1::{Container, ExecAction, HTTPGetAction, Probe, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rkube_cri::{ContainerRuntime, ExecConfig, ExecIo};
use tokio::sync::mpsc;

/// What upstream sends as User-Agent (`kube-probe/<major>.<minor>`).
const USER_AGENT: &str = "kube-probe/1.32";
/// Upstream keeps at most this much of an exec probe's output for the message.
const MAX_OUTPUT: usize = 10 * 1024;

/// Where to probe.
#[derive(Clone)]
pub struct ProbeTarget {
    /// Default host of httpGet and tcpSocket probes.
    pub pod_ip: Option<String>,
    /// Where exec probes run.
    pub container_id: String,
    pub runtime: Arc<dyn ContainerRuntime>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeResult {
    Success,
    /// The probe ran and failed, or could not run; the message is upstream's wording.
    Failure(String),
    /// Nothing to decide: no handler, a gRPC probe, or no pod IP yet for a network probe.
    Unknown,
}

/// Runs `probe` once against `target`, within the probe's timeoutSeconds (default 1 s).
pub async fn run(probe: &Probe, target: &ProbeTarget) -> ProbeResult {
    let timeout = Duration::from_secs(
        probe
            .timeout_seconds
            .filter(|s| *s > 0)
            .map_or(1, i64::from)
            .unsigned_abs(),
    );
    if let Some(exec) = &probe.exec {
        run_exec(exec, target, timeout).await
    } else if let Some(http) = &probe.http_get {
        run_http(http, target, timeout).await
    } else if let Some(tcp) = &probe.tcp_socket {
        run_tcp(tcp, target, timeout).await
    } else {
        if probe.grpc.is_some() {
            tracing::warn!(container = %target.container_id, "gRPC probes are not supported");
        }
        ProbeResult::Unknown
    }
}

/// The port number `port` names in `container` (a number, a numeric string, or the name of
/// one of its ports).
pub fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    let number = match port {
        IntOrString::Int(number) => *number,
        IntOrString::String(name) => match name.parse::<i32>() {
            Ok(number) => number,
            Err(_) => container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.container_port)
                .ok_or_else(|| format!("port {name} not found"))?,
        },
    };
    u16::try_from(number)
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("invalid port number: {number}"))
}

fn port_number(port: &IntOrString) -> Result<u16, String> {
    resolve_port(port, &Container::default())
}

async fn run_exec(exec: &ExecAction, target: &ProbeTarget, timeout: Duration) -> ProbeResult {
    let command = exec.command.clone().unwrap_or_default();
    if command.is_empty() {
        return ProbeResult::Failure("exec probe has no command".into());
    }
    let (stdout_sender, stdout_receiver) = mpsc::channel::<Bytes>(8);
    let (stderr_sender, stderr_receiver) = mpsc::channel::<Bytes>(8);
    let io = ExecIo {
        stdin: None,
        stdout: stdout_sender,
        stderr: Some(stderr_sender),
        resize: None,
    };
    let config = ExecConfig {
        command: command.clone(),
        ..ExecConfig::default()
    };
    let run = async {
        let (exit, output) = tokio::join!(
            target.runtime.exec(&target.container_id, config, io),
            collect_output(stdout_receiver, stderr_receiver)
        );
        (exit, output)
    };
    match tokio::time::timeout(timeout, run).await {
        Err(_) => ProbeResult::Failure(format!("command {:?} timed out", command.join(" "))),
        Ok((Ok(0), _)) => ProbeResult::Success,
        Ok((Ok(_), output)) => ProbeResult::Failure(output),
        Ok((Err(err), _)) => ProbeResult::Failure(err.to_string()),
    }
}

/// stdout and stderr together as they arrive (like CombinedOutput), capped.
async fn collect_output(
    mut stdout: mpsc::Receiver<Bytes>,
    mut stderr: mpsc::Receiver<Bytes>,
) -> String {
    let mut output = Vec::new();
    let (mut stdout_open, mut stderr_open) = (true, true);
    while stdout_open || stderr_open {
        let chunk = tokio::select! {
            // Arrival order across two pipes is a race anyway; prefer stdout when both wait.
            biased;
            chunk = stdout.recv(), if stdout_open => chunk.or_else(|| { stdout_open = false; None }),
            chunk = stderr.recv(), if stderr_open => chunk.or_else(|| { stderr_open = false; None }),
        };
        if let Some(chunk) = chunk {
            let room = MAX_OUTPUT.saturating_sub(output.len());
            output.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
    }
    String::from_utf8_lossy(&output).into_owned()
}

/// `host:port`, bracketing IPv6 addresses (Go's net.JoinHostPort).
fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn probe_host(explicit: Option<&str>, target: &ProbeTarget) -> Option<String> {
    explicit
        .filter(|h| !h.is_empty())
        .map(str::to_string)
        .or_else(|| target.pod_ip.clone())
}

async fn run_http(http: &HTTPGetAction, target: &ProbeTarget, timeout: Duration) -> ProbeResult {
    let port = match port_number(&http.port) {
        Ok(port) => port,
        Err(message) => return ProbeResult::Failure(message),
    };
    let Some(host) = probe_host(http.host.as_deref(), target) else {
        return ProbeResult::Unknown;
    };
    let scheme = http
        .scheme
        .as_deref()
        .unwrap_or("HTTP")
        .to_ascii_lowercase();
    let path = http.path.as_deref().unwrap_or("");
    let separator = if path.is_empty() || path.starts_with('/') {
        ""
    } else {
        "/"
    };
    let url = format!(
        "{scheme}://{}{separator}{path}",
        join_host_port(&host, port)
    );
    if scheme != "http" {
        return ProbeResult::Failure(format!(
            "Get {url:?}: HTTPS probes are not supported by this kubelet"
        ));
    }
    let client = match reqwest::Client::builder()
        .no_proxy()
        // Upstream disables keep-alive for probes: every probe is a fresh connection.
        .pool_max_idle_per_host(0)
        .timeout(timeout)
        .build()
    {
        Ok(client) => client,
        Err(err) => return ProbeResult::Failure(format!("Get {url:?}: {err}")),
    };
    let mut request = client
        .get(&url)
        .header("User-Agent", USER_AGENT)
        .header("Accept", "*/*");
    for header in http.http_headers.iter().flatten() {
        // A header given by the probe replaces the default of the same name.
        request = request.header(header.name.as_str(), header.value.as_str());
    }
    let request = match request.build() {
        Ok(mut request) => {
            dedupe_overridden_defaults(request.headers_mut());
            request
        }
        Err(err) => return ProbeResult::Failure(format!("Get {url:?}: {err}")),
    };
    match client.execute(request).await {
        Ok(response) => {
            let code = response.status().as_u16();
            if (200..400).contains(&code) {
                ProbeResult::Success
            } else {
                ProbeResult::Failure(format!("HTTP probe failed with statuscode: {code}"))
            }
        }
        Err(err) => ProbeResult::Failure(format!(
            "Get {url:?}: {}",
            describe_http_error(&err, &host, port)
        )),
    }
}

/// `.header()` appends; when the probe sets User-Agent or Accept itself, keep its value only.
fn dedupe_overridden_defaults(headers: &mut reqwest::header::HeaderMap) {
    for name in [reqwest::header::USER_AGENT, reqwest::header::ACCEPT] {
        let values: Vec<_> = headers.get_all(&name).iter().cloned().collect();
        if values.len() > 1 {
            headers.remove(&name);
            for value in values.into_iter().skip(1) {
                headers.append(&name, value);
            }
        }
    }
}

/// Go's wording for the common failures, which operators grep for.
fn describe_http_error(err: &reqwest::Error, host: &str, port: u16) -> String {
    if err.is_timeout() {
        return "context deadline exceeded (Client.Timeout exceeded while awaiting headers)".into();
    }
    if err.is_connect() {
        if let Some(io) = find_io_error(err) {
            return format!(
                "dial tcp {}: {}",
                join_host_port(host, port),
                describe_dial_error(io)
            );
        }
    }
    let mut message = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        message = format!("{message}: {cause}");
        source = cause.source();
    }
    message
}

fn find_io_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(error) = current {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        current = error.source();
    }
    None
}

fn describe_dial_error(err: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match err.kind() {
        ErrorKind::ConnectionRefused => "connect: connection refused".into(),
        ErrorKind::HostUnreachable => "connect: no route to host".into(),
        ErrorKind::NetworkUnreachable => "connect: network is unreachable".into(),
        ErrorKind::TimedOut => "i/o timeout".into(),
        _ => format!("connect: {err}"),
    }
}

async fn run_tcp(tcp: &TCPSocketAction, target: &ProbeTarget, timeout: Duration) -> ProbeResult {
    let port = match port_number(&tcp.port) {
        Ok(port) => port,
        Err(message) => return ProbeResult::Failure(message),
    };
    let Some(host) = probe_host(tcp.host.as_deref(), target) else {
        return ProbeResult::Unknown;
    };
    let address = join_host_port(&host, port);
    match tokio::time::timeout(
        timeout,
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    {
        Ok(Ok(_connection)) => ProbeResult::Success,
        Ok(Err(err)) => {
            ProbeResult::Failure(format!("dial tcp {address}: {}", describe_dial_error(&err)))
        }
        Err(_) => ProbeResult::Failure(format!("dial tcp {address}: i/o timeout")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ContainerPort;

    #[test]
    fn ports_resolve_by_number_numeric_string_and_name() {
        let container = Container {
            ports: Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                ..Default::default()
            }]),
            ..Default::default()
        };
        assert_eq!(resolve_port(&IntOrString::Int(80), &container), Ok(80));
        assert_eq!(
            resolve_port(&IntOrString::String("81".into()), &container),
            Ok(81)
        );
        assert_eq!(
            resolve_port(&IntOrString::String("http".into()), &container),
            Ok(8080)
        );
        assert_eq!(
            resolve_port(&IntOrString::String("grpc".into()), &container),
            Err("port grpc not found".into())
        );
        assert!(resolve_port(&IntOrString::Int(70000), &container).is_err());
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        assert_eq!(join_host_port("fd00::1", 80), "[fd00::1]:80");
        assert_eq!(join_host_port("10.0.0.1", 80), "10.0.0.1:80");
    }
}
