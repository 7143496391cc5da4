//! Query parameters of resource requests. Unknown parameters are ignored, as upstream does
//! (kubectl sends `timeout=32s`, kube-rs sends `?&limit=500`).

use rkube_api::ApiError;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Params {
    pub watch: Option<String>,
    pub label_selector: Option<String>,
    pub field_selector: Option<String>,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
    pub timeout_seconds: Option<String>,
    pub allow_watch_bookmarks: Option<String>,
    pub send_initial_events: Option<String>,
    pub limit: Option<String>,
    #[serde(rename = "continue")]
    pub continue_token: Option<String>,
    pub dry_run: Option<String>,
    pub field_validation: Option<String>,
    pub propagation_policy: Option<String>,
    pub grace_period_seconds: Option<String>,
    pub include_object: Option<String>,
    // pods/log and pods/exec parameters are forwarded to the kubelet untouched.
}

fn truthy(v: &Option<String>) -> bool {
    matches!(v.as_deref(), Some("true") | Some("1"))
}

fn parse_number<T: std::str::FromStr>(
    name: &str,
    v: &Option<String>,
) -> Result<Option<T>, ApiError> {
    match v.as_deref() {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("invalid value for {name}: {s:?}"))),
    }
}

impl Params {
    pub fn from_query(query: Option<&str>) -> Result<Params, ApiError> {
        let q = query.unwrap_or("");
        serde_urlencoded_from_str(q)
    }

    pub fn is_watch(&self) -> bool {
        truthy(&self.watch)
    }

    pub fn allow_bookmarks(&self) -> bool {
        truthy(&self.allow_watch_bookmarks)
    }

    pub fn send_initial_events(&self) -> bool {
        truthy(&self.send_initial_events)
    }

    pub fn dry_run(&self) -> bool {
        self.dry_run.as_deref() == Some("All")
    }

    /// `fieldValidation=Strict`: unknown fields are errors (otherwise they are dropped
    /// silently by clients that re-read the object, and kept by us).
    pub fn strict_fields(&self) -> bool {
        self.field_validation.as_deref() == Some("Strict")
    }

    pub fn timeout_seconds(&self) -> Result<Option<u64>, ApiError> {
        parse_number("timeoutSeconds", &self.timeout_seconds)
    }

    pub fn limit(&self) -> Result<Option<usize>, ApiError> {
        Ok(parse_number::<i64>("limit", &self.limit)?
            .filter(|l| *l > 0)
            .map(|l| l as usize))
    }

    pub fn grace_period_seconds(&self) -> Result<Option<i64>, ApiError> {
        parse_number("gracePeriodSeconds", &self.grace_period_seconds)
    }

    /// The requested resourceVersion as a revision; `None` when unset or empty.
    pub fn resource_version(&self) -> Result<Option<i64>, ApiError> {
        parse_resource_version(self.resource_version.as_deref())
    }
}

pub fn parse_resource_version(rv: Option<&str>) -> Result<Option<i64>, ApiError> {
    match rv {
        None | Some("") => Ok(None),
        Some(s) => match s.parse::<i64>() {
            Ok(n) if n >= 0 => Ok(Some(n)),
            _ => Err(ApiError::bad_request(format!(
                "invalid resource version: {s:?}"
            ))),
        },
    }
}

fn serde_urlencoded_from_str(q: &str) -> Result<Params, ApiError> {
    // axum re-exports serde_urlencoded's behaviour through its Query extractor; use it directly
    // on the raw query so empty segments (`?&limit=500`) are tolerated.
    let cleaned: String = q
        .split('&')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("&");
    let uri: axum::http::Uri = format!("/?{cleaned}")
        .parse()
        .map_err(|_| ApiError::bad_request("malformed query string"))?;
    axum::extract::Query::<Params>::try_from_uri(&uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::bad_request(format!("malformed query string: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerates_empty_segments_and_unknown_params() {
        let p = Params::from_query(Some("&limit=500&timeout=32s&watch=true")).unwrap();
        assert_eq!(p.limit().unwrap(), Some(500));
        assert!(p.is_watch());
        let p = Params::from_query(Some("labelSelector=app%3Dweb%2Ctier%21%3Ddb")).unwrap();
        assert_eq!(p.label_selector.as_deref(), Some("app=web,tier!=db"));
    }

    #[test]
    fn rejects_bad_numbers() {
        let p = Params::from_query(Some("resourceVersion=abc")).unwrap();
        assert!(p.resource_version().is_err());
        let p = Params::from_query(Some("timeoutSeconds=-x")).unwrap();
        assert!(p.timeout_seconds().is_err());
    }
}
