//! Image references, parsed and normalised by rkube-api's one parser (distribution's
//! grammar, docker's normalisation): `busybox` is `docker.io/library/busybox:latest`,
//! `localhost:5000/app` is `localhost:5000/app:latest`. This module only adapts its
//! errors to [`RuntimeError`].

use rkube_api::semantics::images::ImageReferenceError;
pub use rkube_api::semantics::images::{
    ImageReference as Reference, DOCKER_HUB_API_HOST as DOCKER_HUB_REGISTRY,
    DOCKER_HUB_DOMAIN as DEFAULT_DOMAIN,
};

use crate::{Result, RuntimeError};

impl From<ImageReferenceError> for RuntimeError {
    fn from(error: ImageReferenceError) -> RuntimeError {
        RuntimeError::InvalidImage(error.to_string())
    }
}

/// The normalised form of `reference` (`busybox` -> `docker.io/library/busybox:latest`).
pub fn normalize(reference: &str) -> Result<String> {
    Ok(Reference::parse(reference)?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn normalises_like_docker() {
        let cases = [
            ("busybox", "docker.io/library/busybox:latest".to_string()),
            ("busybox:1.36", "docker.io/library/busybox:1.36".into()),
            ("library/busybox", "docker.io/library/busybox:latest".into()),
            ("user/app:v1", "docker.io/user/app:v1".into()),
            (
                "docker.io/busybox",
                "docker.io/library/busybox:latest".into(),
            ),
            ("quay.io/org/app", "quay.io/org/app:latest".into()),
            ("localhost/app", "localhost/app:latest".into()),
            ("localhost:5000/app:1", "localhost:5000/app:1".into()),
            (
                "127.0.0.1:5000/a/b/c:tag",
                "127.0.0.1:5000/a/b/c:tag".into(),
            ),
            (
                &format!("busybox@sha256:{HEX}"),
                format!("docker.io/library/busybox@sha256:{HEX}"),
            ),
            (
                &format!("busybox:1@sha256:{HEX}"),
                format!("docker.io/library/busybox:1@sha256:{HEX}"),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn rejects_bad_references_as_invalid_images() {
        for input in [
            "",
            "Busybox",
            "busybox:",
            "busybox@sha256:",
            "a//b",
            "x:bad tag",
        ] {
            assert!(
                matches!(normalize(input), Err(RuntimeError::InvalidImage(_))),
                "{input:?} should be rejected"
            );
        }
    }

    /// Regression: rkube-cri had its own parser, which disagreed with distribution's (and
    /// with the API server's pull-policy defaulting) on all of these: it kept
    /// `index.docker.io` as a separate registry, read `UPPER/case` as a Docker Hub
    /// repository, trimmed spaces, and took any tag, path separator or hex digest.
    #[test]
    fn agrees_with_distribution_where_the_old_parser_did_not() {
        let table: Vec<(String, Option<String>)> = vec![
            ("UPPER/case".into(), Some("UPPER/case:latest".into())),
            (
                "index.docker.io/busybox".into(),
                Some("docker.io/library/busybox:latest".into()),
            ),
            (
                "index.docker.io/u/app".into(),
                Some("docker.io/u/app:latest".into()),
            ),
            ("x@sha256:abc".into(), None),
            (format!("x@sha256:{}", &HEX[..32]), None),
            (format!("x@md5:{}", &HEX[..32]), None),
            (format!("x@sha256:{}", HEX.to_uppercase()), None),
            ("x:.tag".into(), None),
            ("my-_app".into(), None),
            ("-app".into(), None),
            (" busybox".into(), None),
            (HEX.into(), None),
            ("a".repeat(240), None),
        ];
        let mut wrong = Vec::new();
        for (input, want) in &table {
            let got = normalize(input).ok();
            if &got != want {
                wrong.push(format!("{input:?}: got {got:?}, want {want:?}"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn registry_host_and_scheme() {
        let hub = Reference::parse("busybox").unwrap();
        assert_eq!(hub.registry_host(), DOCKER_HUB_REGISTRY);
        assert_eq!(hub.domain, DEFAULT_DOMAIN);
        assert!(!hub.is_loopback());
        let local = Reference::parse("127.0.0.1:5000/busybox:t").unwrap();
        assert_eq!(local.registry_host(), "127.0.0.1:5000");
        assert!(local.is_loopback());
        assert_eq!(local.manifest_reference(), "t");
        assert!(Reference::parse("localhost:5000/x").unwrap().is_loopback());
        assert!(Reference::parse("[::1]:5000/x").unwrap().is_loopback());
    }
}
