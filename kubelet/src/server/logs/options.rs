//! The `/containerLogs` query: parsing and validating it as upstream's PodLogOptions
//! does. Separate from the streaming because it is pure and answers 400s before any file
//! is opened.

use chrono::{DateTime, Utc};

use crate::server::{query_flag, query_value, RequestError};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LogOptions {
    pub follow: bool,
    pub tail_lines: Option<usize>,
    pub since: Option<DateTime<Utc>>,
    pub timestamps: bool,
    pub previous: bool,
    pub limit_bytes: Option<u64>,
}

impl LogOptions {
    /// Parses the query like upstream's PodLogOptions validation.
    pub(crate) fn parse(
        query: &[(String, String)],
        now: DateTime<Utc>,
    ) -> Result<Self, RequestError> {
        let number = |key: &str| -> Result<Option<i64>, RequestError> {
            match query_value(query, key) {
                None | Some("") => Ok(None),
                Some(raw) => raw.parse::<i64>().map(Some).map_err(|_| {
                    RequestError::BadRequest(format!(
                        "invalid value {raw:?} for query parameter {key}"
                    ))
                }),
            }
        };
        let tail_lines = match number("tailLines")? {
            Some(n) if n < 0 => {
                return Err(RequestError::BadRequest(
                    "tailLines: Invalid value: must be greater than or equal to 0".into(),
                ))
            }
            other => other.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        };
        let limit_bytes = match number("limitBytes")? {
            Some(n) if n < 1 => {
                return Err(RequestError::BadRequest(
                    "limitBytes: Invalid value: must be greater than 0".into(),
                ))
            }
            other => other.map(|n| n.unsigned_abs()),
        };
        let since_seconds = match number("sinceSeconds")? {
            Some(n) if n < 1 => {
                return Err(RequestError::BadRequest(
                    "sinceSeconds: Invalid value: must be greater than 0".into(),
                ))
            }
            other => other,
        };
        let since_time = match query_value(query, "sinceTime") {
            None | Some("") => None,
            Some(raw) => Some(
                DateTime::parse_from_rfc3339(raw)
                    .map_err(|_| {
                        RequestError::BadRequest(format!(
                            "invalid value {raw:?} for query parameter sinceTime"
                        ))
                    })?
                    .with_timezone(&Utc),
            ),
        };
        let since = match (since_seconds, since_time) {
            (Some(_), Some(_)) => {
                return Err(RequestError::BadRequest(
                    "at most one of `sinceTime` or `sinceSeconds` may be specified".into(),
                ))
            }
            (Some(seconds), None) => Some(since_seconds_ago(now, seconds)?),
            (None, time) => time,
        };
        Ok(LogOptions {
            follow: query_flag(query, "follow"),
            tail_lines,
            since,
            timestamps: query_flag(query, "timestamps"),
            previous: query_flag(query, "previous"),
            limit_bytes,
        })
    }
}

/// `now - seconds`, or a 400 when that is before the earliest time a timestamp can name
/// (year 1, Go's zero time), rather than an arithmetic overflow.
fn since_seconds_ago(now: DateTime<Utc>, seconds: i64) -> Result<DateTime<Utc>, RequestError> {
    let earliest = DateTime::<Utc>::from_naive_utc_and_offset(
        chrono::NaiveDate::from_ymd_opt(1, 1, 1)
            .and_then(|day| day.and_hms_opt(0, 0, 0))
            .unwrap_or(chrono::NaiveDateTime::MIN),
        Utc,
    );
    let max = (now - earliest).num_seconds();
    chrono::Duration::try_seconds(seconds)
        .and_then(|ago| now.checked_sub_signed(ago))
        .filter(|since| *since >= earliest)
        .ok_or_else(|| {
            RequestError::BadRequest(format!(
                "sinceSeconds: Invalid value: {seconds}: must be less than or equal to {max} \
                 (the seconds since 0001-01-01T00:00:00Z)"
            ))
        })
}
