//! The one spelling of a component's listen flags: `--bind-address IP` and `--port N`, as
//! upstream's components have them (kube-apiserver, kube-scheduler and
//! kube-controller-manager call the port `--secure-port` because they serve TLS; rkube
//! serves plain HTTP). Each component keeps its upstream default port.

use std::fmt;
use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};

use tokio::net::TcpListener;

/// A component's defaults for [`ListenArgs`], given as a marker type so that they show in
/// `--help`.
pub trait ListenDefaults {
    /// The default `--bind-address`: loopback unless the component must be reachable from
    /// other machines (the kubelet: the API server proxies logs and exec to it).
    const BIND_ADDRESS: &'static str;
    /// The default `--port`.
    const PORT: u16;
}

/// `--bind-address` and `--port`; flatten into a component's flags with
/// `#[command(flatten)]`.
#[derive(clap::Args)]
pub struct ListenArgs<D: ListenDefaults> {
    /// The address to serve on (0.0.0.0 or :: for every interface).
    #[arg(long, value_name = "IP", default_value = D::BIND_ADDRESS)]
    pub bind_address: IpAddr,
    /// The port to serve on (0 picks a free one; the address bound is logged).
    #[arg(long, value_name = "PORT", default_value_t = D::PORT)]
    pub port: u16,
    #[arg(skip)]
    defaults: PhantomData<D>,
}

// By hand: derived impls would require the marker type itself to be Clone and Debug.
impl<D: ListenDefaults> Clone for ListenArgs<D> {
    fn clone(&self) -> Self {
        ListenArgs {
            bind_address: self.bind_address,
            port: self.port,
            defaults: PhantomData,
        }
    }
}

impl<D: ListenDefaults> fmt::Debug for ListenArgs<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenArgs")
            .field("bind_address", &self.bind_address)
            .field("port", &self.port)
            .finish()
    }
}

/// The listener could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("binding {addr} (--bind-address, --port): {error}")]
pub struct ListenError {
    pub addr: SocketAddr,
    pub error: std::io::Error,
}

impl<D: ListenDefaults> ListenArgs<D> {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind_address, self.port)
    }

    /// Binds the address and logs what was bound (the port, when `--port 0`).
    pub async fn bind(&self) -> Result<TcpListener, ListenError> {
        let addr = self.addr();
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|error| ListenError { addr, error })?;
        let bound = listener.local_addr().unwrap_or(addr);
        tracing::info!(addr = %bound, "listening");
        Ok(listener)
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    struct Component;
    impl ListenDefaults for Component {
        const BIND_ADDRESS: &'static str = "127.0.0.1";
        const PORT: u16 = 10259;
    }

    #[derive(Parser, Debug)]
    struct Flags {
        #[command(flatten)]
        listen: ListenArgs<Component>,
    }

    fn parse(args: &[&str]) -> SocketAddr {
        Flags::try_parse_from(std::iter::once("component").chain(args.iter().copied()))
            .unwrap()
            .listen
            .addr()
    }

    #[test]
    fn defaults_come_from_the_component() {
        assert_eq!(parse(&[]), "127.0.0.1:10259".parse().unwrap());
        let help = Flags::command().render_long_help().to_string();
        assert!(help.contains("[default: 10259]"), "{help}");
        assert!(help.contains("[default: 127.0.0.1]"), "{help}");
    }

    #[test]
    fn both_flags_override_and_ipv6_works() {
        assert_eq!(
            parse(&["--bind-address", "::1", "--port=0"]),
            "[::1]:0".parse().unwrap()
        );
        assert_eq!(
            parse(&["--bind-address=0.0.0.0"]),
            "0.0.0.0:10259".parse().unwrap()
        );
    }

    #[test]
    fn a_host_port_pair_is_refused() {
        let error =
            Flags::try_parse_from(["component", "--bind-address", "127.0.0.1:10259"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation);
    }

    #[tokio::test]
    async fn port_zero_binds_a_free_port() {
        let listener = Flags::try_parse_from(["component", "--port", "0"])
            .unwrap()
            .listen
            .bind()
            .await
            .unwrap();
        assert_ne!(listener.local_addr().unwrap().port(), 0);
    }

    #[tokio::test]
    async fn a_taken_port_names_the_address_and_the_flags() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = taken.local_addr().unwrap().port().to_string();
        let error = Flags::try_parse_from(["component", "--port", &port])
            .unwrap()
            .listen
            .bind()
            .await
            .unwrap_err();
        assert!(
            error.to_string().starts_with(&format!(
                "binding 127.0.0.1:{port} (--bind-address, --port): "
            )),
            "{error}"
        );
    }
}
