//! Image references normalised the way docker does: `busybox` is
//! `docker.io/library/busybox:latest`, `localhost:5000/app` is `localhost:5000/app:latest`.

use std::fmt;

use crate::{Result, RuntimeError};

pub const DEFAULT_DOMAIN: &str = "docker.io";
/// Where `docker.io` images are actually served from.
pub const DOCKER_HUB_REGISTRY: &str = "registry-1.docker.io";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// Registry host (and port), e.g. `docker.io` or `127.0.0.1:5000`.
    pub domain: String,
    /// Repository path inside the registry, e.g. `library/busybox`.
    pub path: String,
    pub tag: Option<String>,
    /// `sha256:<hex>` when pinned by digest.
    pub digest: Option<String>,
}

impl Reference {
    pub fn parse(input: &str) -> Result<Reference> {
        let invalid = |why: &str| RuntimeError::InvalidImage(format!("reference {input:?}: {why}"));
        let input = input.trim();
        if input.is_empty() {
            return Err(invalid("empty"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, digest)) => {
                let valid = digest.split_once(':').is_some_and(|(algo, hex)| {
                    !algo.is_empty()
                        && !hex.is_empty()
                        && hex.chars().all(|c| c.is_ascii_hexdigit())
                });
                if !valid {
                    return Err(invalid("bad digest"));
                }
                (rest, Some(digest.to_string()))
            }
            None => (input, None),
        };
        // A tag is a ':' after the last '/', so a registry port is not mistaken for one.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let split = last_slash + i;
                (&rest[..split], Some(rest[split + 1..].to_string()))
            }
            None => (rest, None),
        };
        if let Some(tag) = &tag {
            let valid = !tag.is_empty()
                && tag.len() <= 128
                && tag
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            if !valid {
                return Err(invalid("bad tag"));
            }
        }
        let (domain, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => (DEFAULT_DOMAIN.to_string(), name.to_string()),
        };
        let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        let path_valid = !path.is_empty()
            && path.split('/').all(|part| {
                !part.is_empty()
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
            });
        if !path_valid {
            return Err(invalid(
                "repository names must be lowercase letters, digits and . _ - separated by /",
            ));
        }
        let tag = match (tag, &digest) {
            (None, None) => Some("latest".to_string()),
            (tag, _) => tag,
        };
        Ok(Reference {
            domain,
            path,
            tag,
            digest,
        })
    }

    /// `domain/path` without tag or digest.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// What to ask the registry's manifest endpoint for: the digest if pinned, else the tag.
    pub fn manifest_reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// The host serving the registry API.
    pub fn registry_host(&self) -> &str {
        if self.domain == DEFAULT_DOMAIN {
            DOCKER_HUB_REGISTRY
        } else {
            &self.domain
        }
    }

    /// Loopback registries are spoken to over plain HTTP; everything else over HTTPS.
    pub fn is_loopback(&self) -> bool {
        let host = match self.domain.strip_prefix('[') {
            Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
            None => self.domain.split(':').next().unwrap_or_default(),
        };
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// The normalised form of `reference` (`busybox` -> `docker.io/library/busybox:latest`).
pub fn normalize(reference: &str) -> Result<String> {
    Reference::parse(reference).map(|r| r.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_docker() {
        let cases = [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("library/busybox", "docker.io/library/busybox:latest"),
            ("user/app:v1", "docker.io/user/app:v1"),
            ("docker.io/busybox", "docker.io/library/busybox:latest"),
            ("quay.io/org/app", "quay.io/org/app:latest"),
            ("localhost/app", "localhost/app:latest"),
            ("localhost:5000/app:1", "localhost:5000/app:1"),
            ("127.0.0.1:5000/a/b/c:tag", "127.0.0.1:5000/a/b/c:tag"),
            (
                "busybox@sha256:abcdef0123",
                "docker.io/library/busybox@sha256:abcdef0123",
            ),
            (
                "busybox:1@sha256:abcdef0123",
                "docker.io/library/busybox:1@sha256:abcdef0123",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn rejects_bad_references() {
        for input in [
            "",
            "Busybox",
            "busybox:",
            "busybox@sha256:",
            "a//b",
            "x:bad tag",
        ] {
            assert!(normalize(input).is_err(), "{input:?} should be rejected");
        }
    }

    #[test]
    fn registry_host_and_scheme() {
        let hub = Reference::parse("busybox").unwrap();
        assert_eq!(hub.registry_host(), DOCKER_HUB_REGISTRY);
        assert!(!hub.is_loopback());
        let local = Reference::parse("127.0.0.1:5000/busybox:t").unwrap();
        assert_eq!(local.registry_host(), "127.0.0.1:5000");
        assert!(local.is_loopback());
        assert_eq!(local.manifest_reference(), "t");
        assert!(Reference::parse("localhost:5000/x").unwrap().is_loopback());
        assert!(Reference::parse("[::1]:5000/x").unwrap().is_loopback());
    }
}
