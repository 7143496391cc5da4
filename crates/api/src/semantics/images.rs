//! Image references (`[domain/]path[:tag][@digest]`, the distribution grammar) and the
//! `imagePullPolicy` upstream defaults from them.

use std::fmt;
use std::sync::LazyLock;

use regex::Regex;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }

    pub fn parse(text: &str) -> Option<PullPolicy> {
        Some(match text {
            "Always" => PullPolicy::Always,
            "IfNotPresent" => PullPolicy::IfNotPresent,
            "Never" => PullPolicy::Never,
            _ => return None,
        })
    }
}

impl fmt::Display for PullPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Docker Hub's domain in a normalised reference.
pub const DOCKER_HUB_DOMAIN: &str = "docker.io";
/// Docker Hub's older name; docker rewrites it to [`DOCKER_HUB_DOMAIN`].
pub const LEGACY_DOCKER_HUB_DOMAIN: &str = "index.docker.io";
/// Where Docker Hub's registry API is actually served.
pub const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";
/// Docker Hub's one-component names (`busybox`) live under this namespace.
const OFFICIAL_REPOSITORY_PREFIX: &str = "library/";
/// A reference with neither tag nor digest names this tag.
pub const DEFAULT_TAG: &str = "latest";
/// distribution's `NameTotalLengthMax`, counted on the normalised `domain/path`.
const NAME_TOTAL_LENGTH_MAX: usize = 255;

/// An image reference normalised the way docker and containerd do: `busybox` is
/// `docker.io/library/busybox:latest`, `index.docker.io/x/y` is `docker.io/x/y:latest`,
/// `localhost:5000/app` is `localhost:5000/app:latest`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageReference {
    /// Registry host and optional port, e.g. `docker.io`, `127.0.0.1:5000`, `[::1]:5000`.
    /// Empty only when the first component was taken for a registry but is not a valid
    /// host name (`my_registry.example/app`): distribution then keeps the whole name as
    /// the path, and so do we, so that defaulting agrees with upstream's.
    pub domain: String,
    /// Repository path inside the registry, e.g. `library/busybox`.
    pub path: String,
    /// The tag; [`DEFAULT_TAG`] when the reference names neither tag nor digest, as
    /// upstream's `ParseImageName` and containerd's normalisation fill it in.
    pub tag: Option<String>,
    /// `algorithm:hex` when pinned by digest.
    pub digest: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("couldn't parse image name {reference:?}: {reason}")]
pub struct ImageReferenceError {
    pub reference: String,
    pub reason: InvalidImageReference,
}

/// Why a reference does not parse; the messages are distribution's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidImageReference {
    #[error("invalid reference format")]
    Format,
    #[error("invalid reference format: repository name ({0}) must be lowercase")]
    Uppercase(String),
    #[error("repository name must not be more than 255 characters")]
    NameTooLong,
    #[error("cannot specify 64-byte hexadecimal strings")]
    HexIdentifier,
    #[error("unsupported digest algorithm")]
    DigestAlgorithm,
    #[error("invalid checksum digest length")]
    DigestLength,
    #[error("invalid checksum digest format")]
    DigestFormat,
}

/// distribution's reference grammar with the domain made its own capture; the name is
/// group 1, domain 2, path 3, tag 4, digest 5.
static REFERENCE: LazyLock<Regex> = LazyLock::new(|| {
    let domain_component = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";
    let host = format!(r"(?:{domain_component}(?:\.{domain_component})*|\[[a-fA-F0-9:]+\])");
    let domain = format!(r"{host}(?::[0-9]+)?");
    let path_component = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*";
    // Go's `\w` is ASCII-only; Rust's is Unicode, so the classes are spelled out.
    let tag = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}";
    let digest = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}";
    let pattern = format!(
        r"^((?:({domain})/)?({path_component}(?:/{path_component})*))(?::({tag}))?(?:@({digest}))?$"
    );
    #[allow(clippy::expect_used)]
    Regex::new(&pattern).expect("the reference grammar is a valid regex")
});

impl ImageReference {
    /// Parses `reference` as distribution's `ParseNormalizedNamed` does (the parser
    /// Kubernetes and containerd use), then fills in the default tag.
    pub fn parse(reference: &str) -> Result<ImageReference, ImageReferenceError> {
        let invalid = |reason| ImageReferenceError {
            reference: reference.to_string(),
            reason,
        };
        if reference.len() == 64
            && reference
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(invalid(InvalidImageReference::HexIdentifier));
        }
        let (domain, remainder) = split_docker_domain(reference);
        let repository = remainder.split(':').next().unwrap_or_default();
        if repository.chars().any(char::is_uppercase) {
            return Err(invalid(InvalidImageReference::Uppercase(
                repository.to_string(),
            )));
        }
        let normalised = format!("{domain}/{remainder}");
        let captures = REFERENCE
            .captures(&normalised)
            .ok_or_else(|| invalid(InvalidImageReference::Format))?;
        let part = |i| captures.get(i).map(|m| m.as_str().to_string());
        if captures.get(1).map_or(0, |m| m.len()) > NAME_TOTAL_LENGTH_MAX {
            return Err(invalid(InvalidImageReference::NameTooLong));
        }
        let digest = part(5);
        if let Some(digest) = &digest {
            validate_digest(digest).map_err(invalid)?;
        }
        let tag = part(4);
        Ok(ImageReference {
            domain: part(2).unwrap_or_default(),
            path: part(3).unwrap_or_default(),
            tag: match (&tag, &digest) {
                (None, None) => Some(DEFAULT_TAG.to_string()),
                _ => tag,
            },
            digest,
        })
    }

    /// `domain/path`, without tag or digest.
    pub fn repository(&self) -> String {
        if self.domain.is_empty() {
            self.path.clone()
        } else {
            format!("{}/{}", self.domain, self.path)
        }
    }

    /// What a registry's manifest endpoint is asked for: the digest when pinned, else the tag.
    pub fn manifest_reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or(DEFAULT_TAG)
    }

    /// The host serving the registry API: Docker Hub's API host for `docker.io`, else the domain.
    pub fn registry_host(&self) -> &str {
        if self.domain == DOCKER_HUB_DOMAIN {
            DOCKER_HUB_API_HOST
        } else {
            &self.domain
        }
    }

    /// The domain without its port (and without brackets for IPv6).
    pub fn host(&self) -> &str {
        match self.domain.strip_prefix('[') {
            Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
            None => self.domain.split(':').next().unwrap_or_default(),
        }
    }

    /// Whether the registry is this machine (`localhost` or a loopback address).
    pub fn is_loopback(&self) -> bool {
        let host = self.host();
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

impl fmt::Display for ImageReference {
    /// The normalised name, as containerd stores it: `docker.io/library/busybox:latest`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.repository())?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for ImageReference {
    type Err = ImageReferenceError;

    fn from_str(reference: &str) -> Result<ImageReference, ImageReferenceError> {
        ImageReference::parse(reference)
    }
}

/// Docker's rule for the registry of a reference: the first `/`-separated component is a
/// registry when it is `localhost`, contains `.` or `:`, or has an upper-case letter
/// (repository names are lower case); otherwise the reference is Docker Hub's, where
/// one-component names are official images under `library/`.
fn split_docker_domain(reference: &str) -> (&str, String) {
    let (domain, remainder) = match reference.split_once('/') {
        None => (DOCKER_HUB_DOMAIN, reference),
        Some((first, rest)) if first == LEGACY_DOCKER_HUB_DOMAIN => (DOCKER_HUB_DOMAIN, rest),
        Some((first, rest))
            if first == "localhost"
                || first.contains(['.', ':'])
                || first.chars().any(char::is_uppercase) =>
        {
            (first, rest)
        }
        Some(_) => (DOCKER_HUB_DOMAIN, reference),
    };
    if domain == DOCKER_HUB_DOMAIN && !remainder.contains('/') {
        (domain, format!("{OFFICIAL_REPOSITORY_PREFIX}{remainder}"))
    } else {
        (domain, remainder.to_string())
    }
}

/// go-digest's checks beyond the grammar: a known algorithm, its exact length, lower-case hex.
fn validate_digest(digest: &str) -> Result<(), InvalidImageReference> {
    let (algorithm, hex) = digest
        .split_once(':')
        .ok_or(InvalidImageReference::Format)?;
    let length = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err(InvalidImageReference::DigestAlgorithm),
    };
    if hex.len() != length {
        return Err(InvalidImageReference::DigestLength);
    }
    if !hex
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(InvalidImageReference::DigestFormat);
    }
    Ok(())
}

/// Docker Hub under any of its names (`docker.io`, `index.docker.io`,
/// `registry-1.docker.io`) as `docker.io`; other registries unchanged. Credentials are
/// keyed by whichever name their author used, so both sides of a match go through this.
pub fn canonical_registry_domain(domain: &str) -> &str {
    match domain {
        LEGACY_DOCKER_HUB_DOMAIN | DOCKER_HUB_API_HOST => DOCKER_HUB_DOMAIN,
        other => other,
    }
}

/// Upstream's `SetDefaults_Container`: `Always` when the tag is `latest`, which it is when
/// there is neither tag nor digest; `IfNotPresent` otherwise,
/// including references that do not parse. `image:latest@sha256:...` names its tag, so
/// it is `Always`, whatever the digest.
pub fn default_pull_policy(image: &str) -> PullPolicy {
    match ImageReference::parse(image) {
        Ok(reference) if reference.tag.as_deref() == Some(DEFAULT_TAG) => PullPolicy::Always,
        _ => PullPolicy::IfNotPresent,
    }
}

/// A container's effective pull policy: its own when set (not empty), else the default.
pub fn effective_pull_policy(image: &str, policy: Option<&str>) -> PullPolicy {
    policy
        .filter(|p| !p.is_empty())
        .and_then(PullPolicy::parse)
        .unwrap_or_else(|| default_pull_policy(image))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:e9e5fca4d7f25a8b2bbd7f1c2ef8e4e9fd6e0a1bd04b7a9d3b4d5b2e0e6c1a7f";
    const HEX: &str = "e9e5fca4d7f25a8b2bbd7f1c2ef8e4e9fd6e0a1bd04b7a9d3b4d5b2e0e6c1a7f";

    /// Upstream's `TestSetDefaultContainerPullPolicy` and `TestParseImageName` references.
    #[test]
    fn pull_policy_defaults_follow_upstream() {
        let table = [
            ("nginx", PullPolicy::Always),
            ("nginx:latest", PullPolicy::Always),
            ("nginx:1.25", PullPolicy::IfNotPresent),
            ("library/nginx", PullPolicy::Always),
            ("docker.io/library/nginx:latest", PullPolicy::Always),
            ("localhost:5000/app", PullPolicy::Always),
            ("localhost:5000/app:v1", PullPolicy::IfNotPresent),
            (
                "registry.example.com:5000/team/app:latest",
                PullPolicy::Always,
            ),
            ("[::1]:5000/app:1", PullPolicy::IfNotPresent),
            ("app:1.0-beta_2", PullPolicy::IfNotPresent),
            // A digest without a tag: the tag is not defaulted.
            (&format!("app@{DIGEST}"), PullPolicy::IfNotPresent),
            (&format!("app:1.0@{DIGEST}"), PullPolicy::IfNotPresent),
            // The tag is still `latest` when a digest pins it.
            (&format!("app:latest@{DIGEST}"), PullPolicy::Always),
            (
                &format!("localhost:5000/app:latest@{DIGEST}"),
                PullPolicy::Always,
            ),
            // An upper-case first component is a registry, so this parses.
            ("UPPER/case", PullPolicy::Always),
            // References that do not parse get IfNotPresent (their tag reads as empty).
            ("", PullPolicy::IfNotPresent),
            ("Nginx", PullPolicy::IfNotPresent),
            ("nginx:", PullPolicy::IfNotPresent),
            ("app@sha256:abcd", PullPolicy::IfNotPresent),
            (&"a".repeat(64), PullPolicy::IfNotPresent),
        ];
        for (image, want) in table {
            assert_eq!(default_pull_policy(image), want, "{image:?}");
        }
    }

    /// Regression: the digest was checked only for its length, and the 255-character
    /// limit was applied to the name as written, so these were `Always` while upstream,
    /// whose parser rejects them, defaults them to `IfNotPresent`.
    #[test]
    fn references_upstream_rejects_are_if_not_present() {
        let table = [
            format!("app:latest@sha256:{}", HEX.to_uppercase()),
            format!("app:latest@md5:{}", &HEX[..32]),
            // docker.io/library/ + 240 characters is over 255.
            "a".repeat(240),
        ];
        for image in table {
            assert_eq!(
                default_pull_policy(&image),
                PullPolicy::IfNotPresent,
                "{image:?}"
            );
        }
    }

    /// distribution's `ParseNormalizedNamed` (plus the default tag) on the references the
    /// two former parsers disagreed about; `Err` holds the reason.
    #[test]
    fn normalises_like_distribution() {
        use InvalidImageReference as Invalid;
        let table: Vec<(String, Result<String, Invalid>)> = vec![
            (
                "busybox".into(),
                Ok("docker.io/library/busybox:latest".into()),
            ),
            (
                "busybox:1.36".into(),
                Ok("docker.io/library/busybox:1.36".into()),
            ),
            (
                "library/busybox".into(),
                Ok("docker.io/library/busybox:latest".into()),
            ),
            ("user/app:v1".into(), Ok("docker.io/user/app:v1".into())),
            (
                "docker.io/busybox".into(),
                Ok("docker.io/library/busybox:latest".into()),
            ),
            (
                "index.docker.io/busybox".into(),
                Ok("docker.io/library/busybox:latest".into()),
            ),
            (
                "index.docker.io/u/app".into(),
                Ok("docker.io/u/app:latest".into()),
            ),
            (
                "registry-1.docker.io/u/app".into(),
                Ok("registry-1.docker.io/u/app:latest".into()),
            ),
            (
                "quay.io/org/app".into(),
                Ok("quay.io/org/app:latest".into()),
            ),
            (
                "localhost".into(),
                Ok("docker.io/library/localhost:latest".into()),
            ),
            ("localhost/app".into(), Ok("localhost/app:latest".into())),
            (
                "localhost:5000/app".into(),
                Ok("localhost:5000/app:latest".into()),
            ),
            ("host:5000/x:y".into(), Ok("host:5000/x:y".into())),
            (
                "127.0.0.1:5000/a/b/c:tag".into(),
                Ok("127.0.0.1:5000/a/b/c:tag".into()),
            ),
            ("[::1]:5000/x".into(), Ok("[::1]:5000/x:latest".into())),
            ("[fe80::1]/x".into(), Ok("[fe80::1]/x:latest".into())),
            ("UPPER/case".into(), Ok("UPPER/case:latest".into())),
            (
                "a__b/c-d--e.f_g:T.1-x".into(),
                Ok("docker.io/a__b/c-d--e.f_g:T.1-x".into()),
            ),
            (
                format!("a/b:tag@{DIGEST}"),
                Ok(format!("docker.io/a/b:tag@{DIGEST}")),
            ),
            (
                format!("busybox@{DIGEST}"),
                Ok(format!("docker.io/library/busybox@{DIGEST}")),
            ),
            (
                format!("x@sha512:{HEX}{HEX}"),
                Ok(format!("docker.io/library/x@sha512:{HEX}{HEX}")),
            ),
            // Taken for a registry, but not a valid host: distribution keeps it as path.
            (
                "my_registry.example/app".into(),
                Ok("my_registry.example/app:latest".into()),
            ),
            ("".into(), Err(Invalid::Format)),
            ("x:".into(), Err(Invalid::Format)),
            ("x:.tag".into(), Err(Invalid::Format)),
            (format!("x:{}", "t".repeat(129)), Err(Invalid::Format)),
            ("x@sha256:abc".into(), Err(Invalid::Format)),
            (
                format!("x@sha256:{}", &HEX[..32]),
                Err(Invalid::DigestLength),
            ),
            (
                format!("x@md5:{}", &HEX[..32]),
                Err(Invalid::DigestAlgorithm),
            ),
            (
                format!("x@sha256:{}", HEX.to_uppercase()),
                Err(Invalid::DigestFormat),
            ),
            (
                "Busybox".into(),
                Err(Invalid::Uppercase("library/Busybox".into())),
            ),
            ("UPPER/Case".into(), Err(Invalid::Uppercase("Case".into()))),
            ("a//b".into(), Err(Invalid::Format)),
            ("my-_app".into(), Err(Invalid::Format)),
            ("-app".into(), Err(Invalid::Format)),
            (" busybox".into(), Err(Invalid::Format)),
            ("x:bad tag".into(), Err(Invalid::Format)),
            ("[::1]/x:y:z".into(), Err(Invalid::Format)),
            (HEX.into(), Err(Invalid::HexIdentifier)),
            ("a".repeat(240), Err(Invalid::NameTooLong)),
        ];
        let mut wrong = Vec::new();
        for (input, want) in &table {
            let got = ImageReference::parse(input)
                .map(|r| r.to_string())
                .map_err(|e| e.reason);
            if &got != want {
                wrong.push(format!("{input:?}: got {got:?}, want {want:?}"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn references_split_into_domain_path_tag_and_digest() {
        let r = ImageReference::parse(&format!("localhost:5000/a/b:v2@{DIGEST}")).unwrap();
        assert_eq!(r.domain, "localhost:5000");
        assert_eq!(r.path, "a/b");
        assert_eq!(r.tag.as_deref(), Some("v2"));
        assert_eq!(r.digest.as_deref(), Some(DIGEST));
        assert_eq!(r.manifest_reference(), DIGEST);
        assert_eq!(r.repository(), "localhost:5000/a/b");
        let error = ImageReference::parse("x/Upper").unwrap_err();
        assert_eq!(error.reference, "x/Upper");
        assert!(error.to_string().contains("must be lowercase"), "{error}");
    }

    #[test]
    fn registry_hosts_and_loopback() {
        let hub = ImageReference::parse("busybox").unwrap();
        assert_eq!(hub.registry_host(), DOCKER_HUB_API_HOST);
        assert!(!hub.is_loopback());
        assert_eq!(hub.manifest_reference(), "latest");
        let local = ImageReference::parse("127.0.0.1:5000/busybox:t").unwrap();
        assert_eq!(local.registry_host(), "127.0.0.1:5000");
        assert_eq!(local.host(), "127.0.0.1");
        assert!(local.is_loopback());
        assert_eq!(local.manifest_reference(), "t");
        let v6 = ImageReference::parse("[::1]:5000/x").unwrap();
        assert_eq!(v6.host(), "::1");
        assert!(v6.is_loopback());
        assert!(ImageReference::parse("localhost:5000/x")
            .unwrap()
            .is_loopback());
        assert!(!ImageReference::parse("[fe80::1]/x").unwrap().is_loopback());
        for hub in ["docker.io", "index.docker.io", "registry-1.docker.io"] {
            assert_eq!(canonical_registry_domain(hub), DOCKER_HUB_DOMAIN);
        }
        assert_eq!(canonical_registry_domain("quay.io"), "quay.io");
    }

    #[test]
    fn a_set_policy_wins() {
        assert_eq!(
            effective_pull_policy("nginx", Some("Never")),
            PullPolicy::Never
        );
        assert_eq!(effective_pull_policy("nginx", Some("")), PullPolicy::Always);
        assert_eq!(
            effective_pull_policy("nginx:1", None),
            PullPolicy::IfNotPresent
        );
    }
}
