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

/// The parts of an image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageReference<'a> {
    /// `[domain/]path`, as written (not normalised to `docker.io/library/...`).
    pub name: &'a str,
    pub tag: Option<&'a str>,
    pub digest: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageReferenceError {
    #[error("invalid reference format")]
    Format,
    #[error("invalid reference format: repository name must be lowercase")]
    Uppercase,
    #[error("repository name must not be more than 255 characters")]
    NameTooLong,
    #[error("invalid repository name ({0}), cannot specify 64-byte hexadecimal strings")]
    HexIdentifier(String),
    #[error("invalid checksum digest length")]
    DigestLength,
}

static REFERENCE: LazyLock<Regex> = LazyLock::new(|| {
    let domain_component = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";
    let host = format!(r"(?:{domain_component}(?:\.{domain_component})*|\[[a-fA-F0-9:]+\])");
    let domain = format!(r"{host}(?::[0-9]+)?");
    let path_component = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*";
    let tag = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}";
    let digest = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}";
    let pattern = format!(
        r"^((?:{domain}/)?{path_component}(?:/{path_component})*)(?::({tag}))?(?:@({digest}))?$"
    );
    #[allow(clippy::expect_used)]
    Regex::new(&pattern).expect("the reference grammar is a valid regex")
});

/// Parses a reference as upstream's `ParseNormalizedNamed` accepts it.
pub fn parse_image_reference(image: &str) -> Result<ImageReference<'_>, ImageReferenceError> {
    if image.len() == 64
        && image
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(ImageReferenceError::HexIdentifier(image.to_string()));
    }
    let Some(captures) = REFERENCE.captures(image) else {
        let without_digest = image.split('@').next().unwrap_or(image);
        let path = without_digest
            .split_once('/')
            .map_or(without_digest, |(_, p)| p);
        if path.chars().any(|c| c.is_ascii_uppercase()) && !path.contains(':') {
            return Err(ImageReferenceError::Uppercase);
        }
        return Err(ImageReferenceError::Format);
    };
    let part = |i| captures.get(i).map(|m| m.as_str());
    let name = part(1).ok_or(ImageReferenceError::Format)?;
    if name.len() > 255 {
        return Err(ImageReferenceError::NameTooLong);
    }
    let digest = part(3);
    if let Some((algorithm, hex)) = digest.and_then(|d| d.split_once(':')) {
        let wanted = match algorithm {
            "sha256" => Some(64),
            "sha384" => Some(96),
            "sha512" => Some(128),
            _ => None,
        };
        if wanted.is_some_and(|len| hex.len() != len) {
            return Err(ImageReferenceError::DigestLength);
        }
    }
    Ok(ImageReference {
        name,
        tag: part(2),
        digest,
    })
}

/// Upstream's `SetDefaults_Container`: `Always` when the tag is `latest`, or when there is
/// neither tag nor digest (the tag then defaults to `latest`); `IfNotPresent` otherwise,
/// including references that do not parse. `image:latest@sha256:...` names its tag, so
/// it is `Always`, whatever the digest.
pub fn default_pull_policy(image: &str) -> PullPolicy {
    match parse_image_reference(image) {
        Ok(ImageReference {
            tag: Some("latest"),
            ..
        })
        | Ok(ImageReference {
            tag: None,
            digest: None,
            ..
        }) => PullPolicy::Always,
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

    #[test]
    fn references_split_into_name_tag_and_digest() {
        let image = format!("localhost:5000/a/b:v2@{DIGEST}");
        let r = parse_image_reference(&image).unwrap();
        assert_eq!(r.name, "localhost:5000/a/b");
        assert_eq!(r.tag, Some("v2"));
        assert_eq!(r.digest, Some(DIGEST));
        assert_eq!(
            parse_image_reference("x/Upper"),
            Err(ImageReferenceError::Uppercase)
        );
        assert_eq!(
            parse_image_reference("app@sha256:0123456789abcdef0123456789abcdef"),
            Err(ImageReferenceError::DigestLength)
        );
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
