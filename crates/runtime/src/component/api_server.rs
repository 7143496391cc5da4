//! How a component reaches the API server: upstream's `--master` and `--kubeconfig` flags,
//! else what kube-rs infers (`$KUBECONFIG`, `~/.kube/config`, then the in-cluster service
//! account).

use std::fmt;
use std::path::PathBuf;

use kube::config::{InferConfigError, KubeConfigOptions, Kubeconfig, KubeconfigError};

/// The API server flags every component takes; flatten them into its flags with
/// `#[command(flatten)]`.
#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct ApiServerArgs {
    /// The API server's URL, e.g. http://127.0.0.1:6443 (no credentials are sent); overrides
    /// --kubeconfig.
    #[arg(long, value_name = "URL")]
    pub master: Option<String>,
    /// A kubeconfig file (its current context). Without this and --master: $KUBECONFIG,
    /// ~/.kube/config, then the in-cluster service account.
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
}

impl ApiServerArgs {
    /// Which source the flags select; `--master` wins over `--kubeconfig`.
    pub fn target(&self) -> ApiServerTarget {
        match (&self.master, &self.kubeconfig) {
            (Some(url), _) => ApiServerTarget::Url(url.clone()),
            (None, Some(path)) => ApiServerTarget::Kubeconfig(path.clone()),
            (None, None) => ApiServerTarget::Infer,
        }
    }
}

/// Where a component's API server is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiServerTarget {
    /// A URL such as `http://127.0.0.1:6443`, used without credentials (`--master`).
    Url(String),
    /// A kubeconfig file, its current context (`--kubeconfig`).
    Kubeconfig(PathBuf),
    /// `$KUBECONFIG`, `~/.kube/config`, or in-cluster, as `kube::Config::infer` decides.
    Infer,
}

impl fmt::Display for ApiServerTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiServerTarget::Url(url) => write!(f, "--master {url}"),
            ApiServerTarget::Kubeconfig(path) => write!(f, "--kubeconfig {}", path.display()),
            ApiServerTarget::Infer => f.write_str("the inferred API server"),
        }
    }
}

/// Why no client could be built. Each message names the flag at fault and the cause, so
/// a binary can print it as it is.
#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    /// `--master` does not parse as a URI.
    #[error("--master {url:?} is not a URL: {error}")]
    InvalidMaster {
        url: String,
        error: http::uri::InvalidUri,
    },
    /// `--master` lacks the scheme or the host (e.g. `127.0.0.1:6443`).
    #[error("--master {url:?} needs a scheme and a host, e.g. http://127.0.0.1:6443")]
    IncompleteMaster { url: String },
    /// The `--kubeconfig` file could not be read or its current context used.
    #[error("--kubeconfig {}: {error}", path.display())]
    Kubeconfig {
        path: PathBuf,
        error: KubeconfigError,
    },
    /// Neither flag was given and nothing could be inferred.
    #[error(
        "no --master or --kubeconfig given, and no API server could be inferred from \
         $KUBECONFIG, ~/.kube/config or an in-cluster service account: {0}"
    )]
    Infer(InferConfigError),
    /// The configuration was found but kube-rs cannot build a client from it (e.g. an
    /// https URL: no TLS stack is compiled in).
    #[error("building the API client for {target}: {error}")]
    Client {
        target: ApiServerTarget,
        error: kube::Error,
    },
}

impl ApiServerTarget {
    /// The kube-rs configuration this target stands for.
    pub async fn config(&self) -> Result<kube::Config, ApiServerError> {
        match self {
            ApiServerTarget::Url(url) => {
                let uri: http::Uri =
                    url.parse().map_err(|error| ApiServerError::InvalidMaster {
                        url: url.clone(),
                        error,
                    })?;
                // `127.0.0.1:6443` parses (as an authority alone) but fails only at the
                // first request, with a message that no longer mentions the flag.
                if uri.scheme().is_none() || uri.host().is_none() {
                    return Err(ApiServerError::IncompleteMaster { url: url.clone() });
                }
                Ok(kube::Config::new(uri))
            }
            ApiServerTarget::Kubeconfig(path) => {
                let kubeconfig_error = |error| ApiServerError::Kubeconfig {
                    path: path.clone(),
                    error,
                };
                let kubeconfig = Kubeconfig::read_from(path).map_err(kubeconfig_error)?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                    .await
                    .map_err(kubeconfig_error)
            }
            ApiServerTarget::Infer => kube::Config::infer().await.map_err(ApiServerError::Infer),
        }
    }

    /// A client for this target.
    pub async fn client(&self) -> Result<kube::Client, ApiServerError> {
        let config = self.config().await?;
        kube::Client::try_from(config).map_err(|error| ApiServerError::Client {
            target: self.clone(),
            error,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Flags {
        #[command(flatten)]
        api: ApiServerArgs,
    }

    fn target(args: &[&str]) -> ApiServerTarget {
        Flags::try_parse_from(std::iter::once("component").chain(args.iter().copied()))
            .unwrap()
            .api
            .target()
    }

    #[test]
    fn master_wins_over_kubeconfig_and_nothing_means_infer() {
        assert_eq!(
            target(&["--master", "http://127.0.0.1:6443", "--kubeconfig", "k"]),
            ApiServerTarget::Url("http://127.0.0.1:6443".into())
        );
        assert_eq!(
            target(&["--kubeconfig=/etc/k"]),
            ApiServerTarget::Kubeconfig("/etc/k".into())
        );
        assert_eq!(target(&[]), ApiServerTarget::Infer);
    }

    async fn client_error(target: ApiServerTarget) -> ApiServerError {
        match target.client().await {
            Ok(_) => panic!("{target} should not give a client"),
            Err(error) => error,
        }
    }

    #[tokio::test]
    async fn a_master_url_builds_a_client_for_that_url() {
        let target = ApiServerTarget::Url("http://127.0.0.1:6443".into());
        let config = target.config().await.unwrap();
        assert_eq!(config.cluster_url, "http://127.0.0.1:6443/");
        target.client().await.unwrap();
    }

    #[tokio::test]
    async fn a_master_without_scheme_names_the_flag() {
        let error = client_error(ApiServerTarget::Url("127.0.0.1:6443".into())).await;
        assert!(
            matches!(error, ApiServerError::IncompleteMaster { .. }),
            "{error:?}"
        );
        assert!(error.to_string().starts_with("--master \"127.0.0.1:6443\""));

        let error = client_error(ApiServerTarget::Url("http://[::1".into())).await;
        assert!(
            matches!(error, ApiServerError::InvalidMaster { .. }),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn a_missing_kubeconfig_names_the_flag_and_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent");
        let error = client_error(ApiServerTarget::Kubeconfig(path.clone())).await;
        let message = error.to_string();
        assert!(
            message.starts_with(&format!("--kubeconfig {}:", path.display())),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_kubeconfig_file_selects_its_current_context() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\ncurrent-context: b\n\
             clusters:\n\
             - {name: a, cluster: {server: 'http://127.0.0.1:1'}}\n\
             - {name: b, cluster: {server: 'http://127.0.0.1:2'}}\n\
             contexts:\n\
             - {name: a, context: {cluster: a, user: u}}\n\
             - {name: b, context: {cluster: b, user: u}}\n\
             users:\n- {name: u, user: {}}\n",
        )
        .unwrap();
        let config = ApiServerTarget::Kubeconfig(path).config().await.unwrap();
        assert_eq!(config.cluster_url, "http://127.0.0.1:2/");
    }
}
