//! Image pull policy and registry credentials from imagePullSecrets.

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use k8s_openapi::api::core::v1::{Container, Secret};
use rkube_api::semantics::images::{
    canonical_registry_domain, effective_pull_policy, ImageReference,
};
use rkube_cri::RegistryAuth;

/// The effective pull policy: the container's, else upstream's default (the same
/// function the API server defaults with).
pub fn pull_policy(container: &Container) -> String {
    effective_pull_policy(
        container.image.as_deref().unwrap_or(""),
        container.image_pull_policy.as_deref(),
    )
    .as_str()
    .to_string()
}

/// The registry an image's credentials are keyed by: its domain as docker normalises it,
/// with Docker Hub's names folded into one. `None` when the reference does not parse (the
/// pull then fails on its own).
pub fn registry_domain(image: &str) -> Option<String> {
    let reference = ImageReference::parse(image).ok()?;
    Some(canonical_registry_domain(&reference.domain).to_string())
}

/// The registry a dockercfg key names: a host, optionally with scheme and path
/// (`https://index.docker.io/v1/`), normalised like [`registry_domain`].
fn registry_key_domain(key: &str) -> &str {
    let without_scheme = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = without_scheme.split('/').next().unwrap_or(without_scheme);
    canonical_registry_domain(host)
}

/// dockercfg `auth` fields are standard base64; padding is optional in the wild.
fn base64_decode(input: &str) -> Option<Vec<u8>> {
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    LENIENT.decode(input.trim()).ok()
}

/// Credentials for `image` from the pod's pull secrets (`kubernetes.io/dockerconfigjson`
/// or the older `kubernetes.io/dockercfg`), the first matching registry wins.
pub fn auth_for(image: &str, secrets: &[Secret]) -> Option<RegistryAuth> {
    let wanted = registry_domain(image)?;
    for secret in secrets {
        let Some(data) = secret.data.as_ref() else {
            continue;
        };
        let (config, nested) = if let Some(v) = data.get(".dockerconfigjson") {
            (v, true)
        } else if let Some(v) = data.get(".dockercfg") {
            (v, false)
        } else {
            continue;
        };
        let Ok(parsed) = serde_json::from_slice::<serde_json::Value>(&config.0) else {
            continue;
        };
        let auths = if nested { &parsed["auths"] } else { &parsed };
        let Some(auths) = auths.as_object() else {
            continue;
        };
        for (key, entry) in auths {
            if registry_key_domain(key) != wanted {
                continue;
            }
            let username = entry["username"].as_str().unwrap_or("").to_string();
            let password = entry["password"].as_str().unwrap_or("").to_string();
            if !username.is_empty() {
                return Some(RegistryAuth { username, password });
            }
            let decoded = entry["auth"]
                .as_str()
                .and_then(base64_decode)
                .map(|b| String::from_utf8_lossy(&b).into_owned());
            if let Some((username, password)) = decoded.as_deref().and_then(|d| d.split_once(':')) {
                return Some(RegistryAuth {
                    username: username.to_string(),
                    password: password.to_string(),
                });
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use serde_json::json;

    fn container(image: &str, policy: Option<&str>) -> Container {
        Container {
            name: "c".into(),
            image: Some(image.into()),
            image_pull_policy: policy.map(str::to_string),
            ..Container::default()
        }
    }

    #[test]
    fn default_pull_policy_depends_on_tag() {
        assert_eq!(pull_policy(&container("busybox", None)), "Always");
        assert_eq!(pull_policy(&container("busybox:latest", None)), "Always");
        assert_eq!(
            pull_policy(&container("busybox:1.36", None)),
            "IfNotPresent"
        );
        assert_eq!(
            pull_policy(&container("localhost:5000/busybox", None)),
            "Always"
        );
        assert_eq!(
            pull_policy(&container("localhost:5000/busybox:v1", None)),
            "IfNotPresent"
        );
        assert_eq!(pull_policy(&container("busybox", Some("Never"))), "Never");
    }

    /// Regression: the kubelet took any digest to mean IfNotPresent, while the API server's
    /// defaulting (upstream's) keeps `Always` for a reference whose tag is `latest`.
    #[test]
    fn pull_policy_of_latest_pinned_by_digest_agrees_with_the_api_server() {
        let image = format!("busybox:latest@sha256:{}", "0123456789abcdef".repeat(4));
        let mut pod = serde_json::json!({"spec": {"containers": [{"name": "c", "image": image}]}});
        rkube_api::kinds::POD.apply_defaults(&mut pod);
        let defaulted = pod["spec"]["containers"][0]["imagePullPolicy"].as_str();
        assert_eq!(defaulted, Some("Always"));
        assert_eq!(pull_policy(&container(&image, None)), "Always");
        let digest_only = format!("busybox@sha256:{}", "0123456789abcdef".repeat(4));
        assert_eq!(pull_policy(&container(&digest_only, None)), "IfNotPresent");
    }

    #[test]
    fn registry_domains() {
        let domain = |image| registry_domain(image);
        assert_eq!(domain("busybox").as_deref(), Some("docker.io"));
        assert_eq!(domain("library/busybox:1").as_deref(), Some("docker.io"));
        assert_eq!(
            domain("127.0.0.1:5000/x/y:z").as_deref(),
            Some("127.0.0.1:5000")
        );
        assert_eq!(domain("localhost/x").as_deref(), Some("localhost"));
        assert_eq!(domain("Not A Reference"), None);
    }

    #[test]
    fn credentials_come_from_matching_dockerconfigjson() {
        let secret = |config: serde_json::Value| Secret {
            data: Some(
                [(
                    ".dockerconfigjson".to_string(),
                    ByteString(config.to_string().into_bytes()),
                )]
                .into(),
            ),
            ..Secret::default()
        };
        // "alice:s3cret" in base64.
        let secrets = vec![
            secret(json!({"auths": {"other.example:5000": {"username": "x", "password": "y"}}})),
            secret(json!({"auths": {"http://127.0.0.1:5000/v2/": {"auth": "YWxpY2U6czNjcmV0"}}})),
            secret(
                json!({"auths": {"https://index.docker.io/v1/": {"username": "bob", "password": "pw"}}}),
            ),
        ];
        assert_eq!(
            auth_for("127.0.0.1:5000/app:1", &secrets),
            Some(RegistryAuth {
                username: "alice".into(),
                password: "s3cret".into()
            })
        );
        assert_eq!(auth_for("busybox", &secrets).unwrap().username, "bob");
        assert_eq!(auth_for("quay.io/x", &secrets), None);
    }

    /// Regression: an image written with docker's legacy hub domain was matched against
    /// `index.docker.io` while every hub key is normalised to `docker.io`, so its pull
    /// secret was never used.
    #[test]
    fn legacy_hub_domain_gets_hub_credentials() {
        let secret = Secret {
            data: Some(
                [(
                    ".dockerconfigjson".to_string(),
                    ByteString(
                        json!({"auths": {"https://index.docker.io/v1/": {"username": "bob", "password": "pw"}}})
                            .to_string()
                            .into_bytes(),
                    ),
                )]
                .into(),
            ),
            ..Secret::default()
        };
        let secrets = [secret];
        for image in [
            "index.docker.io/library/busybox:1",
            "index.docker.io/busybox",
            "docker.io/busybox",
            "busybox",
        ] {
            assert_eq!(
                auth_for(image, &secrets).map(|a| a.username),
                Some("bob".to_string()),
                "{image}"
            );
        }
    }

    /// Regression: an upper-case first component is a registry host to docker (repository
    /// names are lower case), so its credentials are that host's, not Docker Hub's.
    #[test]
    fn registry_domain_follows_docker_normalisation() {
        let domain = |image| registry_domain(image);
        assert_eq!(
            domain("index.docker.io/library/busybox").as_deref(),
            Some("docker.io")
        );
        assert_eq!(domain("UPPER/case").as_deref(), Some("UPPER"));
        assert_eq!(domain("[::1]:5000/x").as_deref(), Some("[::1]:5000"));
        assert_eq!(domain("localhost").as_deref(), Some("docker.io"));
    }
}
