//! A minimal OCI distribution (registry v2) client for pulls: manifests and blobs, with
//! anonymous access, bearer tokens when the registry asks for them (`WWW-Authenticate:
//! Bearer realm=...`), and basic auth from image pull secrets.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::prelude::{Engine as _, BASE64_STANDARD};
use bytes::Bytes;
use reqwest::header::{HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::StatusCode;

use super::oci;
use super::reference::Reference;
use crate::{RegistryAuth, Result, RuntimeError};

/// Manifests and configs are small; a bigger one is a broken or hostile registry.
const MAX_MANIFEST_BYTES: usize = 8 << 20;

#[derive(Clone)]
pub struct RegistryClient {
    http: reqwest::Client,
}

impl RegistryClient {
    pub fn new() -> Result<RegistryClient> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(15))
            .user_agent(concat!("rkube/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| RuntimeError::Other(format!("building HTTP client: {e}")))?;
        Ok(RegistryClient { http })
    }

    /// A session for one repository; it remembers the token it obtained.
    pub fn session(&self, reference: &Reference, auth: Option<&RegistryAuth>) -> Session {
        let scheme = if reference.is_loopback() {
            "http"
        } else {
            "https"
        };
        Session {
            http: self.http.clone(),
            base: format!(
                "{scheme}://{}/v2/{}",
                reference.registry_host(),
                reference.path
            ),
            image: reference.to_string(),
            repository_path: reference.path.clone(),
            basic: auth.cloned(),
            authorization: None,
        }
    }
}

pub struct Session {
    http: reqwest::Client,
    base: String,
    image: String,
    repository_path: String,
    basic: Option<RegistryAuth>,
    authorization: Option<String>,
}

/// A fetched manifest document.
pub struct FetchedManifest {
    pub data: Bytes,
    pub media_type: String,
    pub digest: String,
}

impl Session {
    fn pull_error(&self, reason: impl Into<String>) -> RuntimeError {
        RuntimeError::Pull {
            image: self.image.clone(),
            reason: reason.into(),
        }
    }

    async fn send(&self, url: &str, accept: Option<&str>) -> Result<reqwest::Response> {
        let mut request = self.http.get(url);
        if let Some(accept) = accept {
            request = request.header(ACCEPT, accept);
        }
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization);
        }
        request
            .send()
            .await
            .map_err(|e| self.pull_error(format!("GET {url}: {}", error_chain(&e))))
    }

    /// GET with one retry after answering the registry's authentication challenge.
    async fn get(&mut self, url: &str, accept: Option<&str>) -> Result<reqwest::Response> {
        let response = self.send(url, accept).await?;
        if response.status() != StatusCode::UNAUTHORIZED || self.authorization.is_some() {
            return self.check(url, response).await;
        }
        self.authenticate(response.headers()).await?;
        let response = self.send(url, accept).await?;
        self.check(url, response).await
    }

    async fn check(&self, url: &str, response: reqwest::Response) -> Result<reqwest::Response> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        let detail: String = body.chars().take(300).collect();
        let reason = match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                format!("unauthorized: {url}: {status} {detail}")
            }
            StatusCode::NOT_FOUND => format!("not found: {url}: {detail}"),
            _ => format!("{url}: {status} {detail}"),
        };
        Err(self.pull_error(reason))
    }

    async fn authenticate(&mut self, headers: &HeaderMap) -> Result<()> {
        let challenge = headers
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let (scheme, params) = parse_challenge(&challenge);
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => {
                let Some(auth) = &self.basic else {
                    return Err(self.pull_error("unauthorized: the registry requires credentials"));
                };
                self.authorization = Some(basic_header(auth));
                Ok(())
            }
            "bearer" => {
                let realm = params
                    .get("realm")
                    .ok_or_else(|| self.pull_error("bearer challenge without realm"))?;
                let mut query: Vec<(&str, String)> = Vec::new();
                if let Some(service) = params.get("service") {
                    query.push(("service", service.clone()));
                }
                let scope = params
                    .get("scope")
                    .cloned()
                    .unwrap_or_else(|| format!("repository:{}:pull", self.repository_path));
                query.push(("scope", scope));
                let mut request = self.http.get(realm).query(&query);
                if let Some(auth) = &self.basic {
                    request = request.basic_auth(&auth.username, Some(&auth.password));
                }
                let response = request.send().await.map_err(|e| {
                    self.pull_error(format!("token request to {realm}: {}", error_chain(&e)))
                })?;
                if !response.status().is_success() {
                    return Err(self.pull_error(format!(
                        "unauthorized: token request to {realm}: {}",
                        response.status()
                    )));
                }
                let token: serde_json::Value = response
                    .json()
                    .await
                    .map_err(|e| self.pull_error(format!("token response: {e}")))?;
                let token = token
                    .get("token")
                    .or_else(|| token.get("access_token"))
                    .and_then(|t| t.as_str())
                    .ok_or_else(|| self.pull_error("token response without a token"))?;
                self.authorization = Some(format!("Bearer {token}"));
                Ok(())
            }
            _ => Err(self.pull_error(format!(
                "unauthorized: unsupported authentication challenge {challenge:?}"
            ))),
        }
    }

    /// Fetches a manifest (or index) by tag or digest, verifying the digest when known.
    pub async fn manifest(&mut self, reference: &str) -> Result<FetchedManifest> {
        let url = format!("{}/manifests/{reference}", self.base);
        let response = self.get(&url, Some(oci::MANIFEST_ACCEPT)).await?;
        let media_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or_default().trim().to_string())
            .unwrap_or_default();
        let data = self.read_limited(response).await?;
        let digest = oci::sha256_digest(&data);
        if reference.starts_with("sha256:") && reference != digest {
            return Err(self.pull_error(format!(
                "manifest digest mismatch: asked for {reference}, got {digest}"
            )));
        }
        Ok(FetchedManifest {
            data,
            media_type,
            digest,
        })
    }

    /// A small blob (an image config), verified against its digest.
    pub async fn blob_bytes(&mut self, digest: &str) -> Result<Bytes> {
        let response = self.blob(digest).await?;
        let data = self.read_limited(response).await?;
        if oci::sha256_digest(&data) != digest {
            return Err(self.pull_error(format!("blob {digest} does not match its digest")));
        }
        Ok(data)
    }

    /// A blob as a streaming response (layers); the content store verifies the digest.
    pub async fn blob(&mut self, digest: &str) -> Result<reqwest::Response> {
        oci::validate_digest(digest)?;
        let url = format!("{}/blobs/{digest}", self.base);
        self.get(&url, None).await
    }

    async fn read_limited(&self, response: reqwest::Response) -> Result<Bytes> {
        if response
            .content_length()
            .is_some_and(|len| len as usize > MAX_MANIFEST_BYTES)
        {
            return Err(self.pull_error("document too large"));
        }
        let data = response
            .bytes()
            .await
            .map_err(|e| self.pull_error(format!("reading response: {}", error_chain(&e))))?;
        if data.len() > MAX_MANIFEST_BYTES {
            return Err(self.pull_error("document too large"));
        }
        Ok(data)
    }
}

fn basic_header(auth: &RegistryAuth) -> String {
    let raw = format!("{}:{}", auth.username, auth.password);
    format!("Basic {}", BASE64_STANDARD.encode(raw))
}

/// Splits `Bearer realm="x",service="y"` into the scheme and its parameters.
fn parse_challenge(header: &str) -> (String, BTreeMap<String, String>) {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = BTreeMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        params.insert(key, value.to_string());
        rest = remaining.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
    }
    (scheme.to_string(), params)
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenge() {
        let (scheme, params) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(scheme, "Bearer");
        assert_eq!(params["realm"], "https://auth.example/token");
        assert_eq!(params["service"], "registry.example");
        assert_eq!(params["scope"], "repository:library/busybox:pull");
        let (scheme, params) = parse_challenge(r#"Basic realm="basic-realm""#);
        assert_eq!(scheme, "Basic");
        assert_eq!(params["realm"], "basic-realm");
    }
}
