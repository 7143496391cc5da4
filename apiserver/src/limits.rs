//! Server-wide request limits, applied before any handler runs, as upstream's filter chain
//! applies them:
//! - requests in flight (`--max-requests-inflight`, `--max-mutating-requests-inflight`):
//!   past the cap a request is refused at once with 429 and `Retry-After: 1`, so that an
//!   overloaded server sheds load instead of queueing without bound;
//! - a deadline for ordinary requests (`--request-timeout`, shortened per request by the
//!   `timeout` query parameter kubectl sends): past it the client gets 504;
//! - a default lifetime for watches (`--min-request-timeout`): a watch without
//!   `timeoutSeconds` ends after a random time in [min, 2*min), so that clients reconnect
//!   (and rebalance) at different moments.
//!
//! Long-running requests (watches and the logs/exec/attach/portforward proxies) take no
//! in-flight slot and have no request deadline, as upstream. Health probes take no slot
//! either: an overloaded server must still answer its liveness checks.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::future::BoxFuture;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use rand::Rng;
use rkube_api::registry::Subresource;
use rkube_api::status::StatusDetails;
use rkube_api::ApiError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ErrorResponse;
use crate::path::{self, Route};
use crate::query::Params;

/// The limits, with upstream's defaults.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Non-mutating requests in flight at once; 0 means no limit (upstream: 400).
    pub max_requests_inflight: usize,
    /// Mutating requests in flight at once; 0 means no limit (upstream: 200).
    pub max_mutating_requests_inflight: usize,
    /// Deadline of a non-long-running request; zero means none (upstream: 1 minute).
    pub request_timeout: Duration,
    /// A watch without `timeoutSeconds` lasts a random time in [this, twice this)
    /// (upstream: 1800 s). Whole seconds: `timeoutSeconds` is what carries it.
    pub min_request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_requests_inflight: 400,
            max_mutating_requests_inflight: 200,
            request_timeout: Duration::from_secs(60),
            min_request_timeout: Duration::from_secs(1800),
        }
    }
}

/// The shared state of the limits: one per server, shared by every router built over it
/// (so that the caps hold across connections).
#[derive(Clone)]
pub struct Limiter {
    inner: Arc<LimiterState>,
}

struct LimiterState {
    reads: Option<Arc<Semaphore>>,
    writes: Option<Arc<Semaphore>>,
    request_timeout: Duration,
    min_watch_seconds: u64,
}

impl Limiter {
    pub fn new(limits: &Limits) -> Limiter {
        let cap = |n: usize| (n > 0).then(|| Arc::new(Semaphore::new(n)));
        Limiter {
            inner: Arc::new(LimiterState {
                reads: cap(limits.max_requests_inflight),
                writes: cap(limits.max_mutating_requests_inflight),
                // Zero disables the deadline; a year is as good as none and keeps the
                // arithmetic simple.
                request_timeout: if limits.request_timeout.is_zero() {
                    Duration::from_secs(365 * 24 * 3600)
                } else {
                    limits.request_timeout
                },
                min_watch_seconds: limits.min_request_timeout.as_secs().max(1),
            }),
        }
    }

    pub fn layer(&self) -> LimitLayer {
        LimitLayer {
            limiter: self.clone(),
        }
    }
}

/// What a request is, as far as the limits are concerned.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    /// A watch served by the resource handlers.
    Watch {
        timeout_given: bool,
    },
    /// logs/exec/attach/portforward: streams of unbounded length.
    Proxy,
    /// Liveness and readiness checks.
    Probe,
    Read,
    Mutating,
}

fn classify(method: &Method, uri: &Uri) -> Kind {
    let path = uri.path();
    let is_probe = ["/healthz", "/livez", "/readyz"].iter().any(|p| {
        path.strip_prefix(p)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    });
    if is_probe {
        return Kind::Probe;
    }
    if let Ok(Route::Resource(target)) = path::parse(path) {
        if target
            .subresource
            .is_some_and(Subresource::is_kubelet_stream)
        {
            return Kind::Proxy;
        }
        // The same test the dispatcher uses to serve a watch; a query it cannot parse is
        // refused by the handler, which is not long-running.
        if *method == Method::GET && target.name.is_none() && target.subresource.is_none() {
            if let Ok(params) = Params::from_query(uri.query()) {
                if params.is_watch() {
                    // An unparsable value counts as given: the handler refuses it.
                    let timeout_given = match params.timeout_seconds() {
                        Ok(seconds) => seconds.is_some_and(|s| s > 0),
                        Err(_) => true,
                    };
                    return Kind::Watch { timeout_given };
                }
            }
        }
    }
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        Kind::Read
    } else {
        Kind::Mutating
    }
}

/// Upstream's answer past the in-flight cap.
fn too_many_requests() -> Response {
    let err = ApiError {
        code: 429,
        reason: "TooManyRequests",
        message: "Too many requests, please try again later.".to_string(),
        details: Some(Box::new(StatusDetails {
            retry_after_seconds: Some(1),
            ..StatusDetails::default()
        })),
    };
    let mut resp = ErrorResponse(err).into_response();
    resp.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        HeaderValue::from_static("1"),
    );
    resp
}

fn timed_out() -> Response {
    ErrorResponse(ApiError::timeout(
        "Timeout: request did not complete within requested timeout - context deadline exceeded",
    ))
    .into_response()
}

/// The deadline of an ordinary request: the server's, or the client's `timeout` parameter
/// when that is shorter. A malformed `timeout` is refused, as upstream does.
fn request_deadline(uri: &Uri, server: Duration) -> Result<Duration, ApiError> {
    #[derive(serde::Deserialize)]
    struct TimeoutParam {
        timeout: Option<String>,
    }
    // A query that does not parse is the handler's to refuse; here it just has no timeout.
    let Some(value) = axum::extract::Query::<TimeoutParam>::try_from_uri(uri)
        .ok()
        .and_then(|q| q.0.timeout)
        .filter(|v| !v.is_empty())
    else {
        return Ok(server);
    };
    let nanos = parse_go_duration(&value).map_err(|e| {
        ApiError::bad_request(format!(
            "invalid timeout specified in the request URL - {e}"
        ))
    })?;
    if nanos > 0 && nanos < server.as_nanos() as i128 {
        Ok(Duration::from_nanos(nanos as u64))
    } else {
        Ok(server)
    }
}

/// The watch's URI with `timeoutSeconds` set (replacing an empty or zero one), so that the
/// watch handler, which honours `timeoutSeconds`, closes it at the chosen moment.
fn with_timeout_seconds(uri: &Uri, seconds: u64) -> Option<Uri> {
    let param = format!("timeoutSeconds={seconds}");
    let mut segments: Vec<&str> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|s| !s.is_empty() && s.split('=').next() != Some("timeoutSeconds"))
        .collect();
    segments.push(&param);
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(
        format!("{}?{}", uri.path(), segments.join("&"))
            .parse()
            .ok()?,
    );
    Uri::from_parts(parts).ok()
}

#[derive(Clone)]
pub struct LimitLayer {
    limiter: Limiter,
}

impl<S> tower::Layer<S> for LimitLayer {
    type Service = LimitService<S>;

    fn layer(&self, inner: S) -> LimitService<S> {
        LimitService {
            inner,
            limiter: self.limiter.clone(),
        }
    }
}

#[derive(Clone)]
pub struct LimitService<S> {
    inner: S,
    limiter: Limiter,
}

impl<S> tower::Service<Request> for LimitService<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        // The clone that was driven to readiness serves this request (tower's convention).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limits = self.limiter.inner.clone();
        let kind = classify(req.method(), req.uri());
        match kind {
            Kind::Proxy => return Box::pin(inner.call(req)),
            Kind::Watch { timeout_given } => {
                if !timeout_given {
                    let min = limits.min_watch_seconds;
                    let seconds = min + rand::thread_rng().gen_range(0..min);
                    if let Some(uri) = with_timeout_seconds(req.uri(), seconds) {
                        *req.uri_mut() = uri;
                    }
                }
                return Box::pin(inner.call(req));
            }
            Kind::Probe | Kind::Read | Kind::Mutating => {}
        }
        let semaphore = match kind {
            Kind::Read => limits.reads.clone(),
            Kind::Mutating => limits.writes.clone(),
            _ => None,
        };
        let permit = match semaphore.map(Semaphore::try_acquire_owned) {
            None => None,
            Some(Ok(p)) => Some(p),
            Some(Err(_)) => {
                tracing::debug!(method = %req.method(), uri = %req.uri(), "too many requests in flight");
                return Box::pin(async { Ok(too_many_requests()) });
            }
        };
        let deadline = match request_deadline(req.uri(), limits.request_timeout) {
            Ok(d) => d,
            Err(e) => return Box::pin(async move { Ok(ErrorResponse(e).into_response()) }),
        };
        // The handler runs as its own task: past the deadline the client gets its 504 while
        // the handler finishes undisturbed (a write is never cut off half-way) and keeps
        // its in-flight slot until then, as upstream's timeout filter does.
        let handler = tokio::spawn(async move {
            let resp = match inner.call(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            (resp, permit)
        });
        Box::pin(async move {
            match tokio::time::timeout(deadline, handler).await {
                Ok(Ok((resp, permit))) => Ok(hold_until_sent(resp, permit)),
                // A panic keeps unwinding as if the handler had run inline, so whatever
                // catches panics around the router sees it.
                Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Ok(Err(_)) => Ok(ErrorResponse(ApiError::service_unavailable(
                    "the API server is shutting down",
                ))
                .into_response()),
                Err(_) => Ok(timed_out()),
            }
        })
    }
}

/// Keeps the in-flight slot until the response body has been sent: a large list going to a
/// slow client still occupies the server.
fn hold_until_sent(resp: Response, permit: Option<OwnedSemaphorePermit>) -> Response {
    match permit {
        None => resp,
        Some(permit) => resp.map(|body| {
            Body::new(PermitBody {
                body,
                _permit: permit,
            })
        }),
    }
}

struct PermitBody {
    body: Body,
    _permit: OwnedSemaphorePermit,
}

impl HttpBody for PermitBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Parses a Go duration (`1m0s`, `32s`, `1.5h`, `300ms`), the form of upstream's
/// `--request-timeout` and of the `timeout` query parameter, into signed nanoseconds.
/// Errors read as Go's (`time: invalid duration "x"`).
pub fn parse_go_duration(text: &str) -> Result<i128, String> {
    let invalid = || format!("time: invalid duration {text:?}");
    let (negative, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, after) = rest.split_at(int_len);
        let (frac_part, after) = match after.strip_prefix('.') {
            Some(f) => {
                let n = f.bytes().take_while(u8::is_ascii_digit).count();
                f.split_at(n)
            }
            None => ("", after),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(invalid());
        }
        let unit_len = after
            .char_indices()
            .find(|(_, c)| *c == '.' || c.is_ascii_digit())
            .map_or(after.len(), |(i, _)| i);
        let (unit, after) = after.split_at(unit_len);
        let scale: i128 = match unit {
            "" => return Err(format!("time: missing unit in duration {text:?}")),
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            other => return Err(format!("time: unknown unit {other:?} in duration {text:?}")),
        };
        let whole: i128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| invalid())?
        };
        let mut fraction: i128 = 0;
        let mut divisor: i128 = 1;
        // Digits past nanosecond precision change nothing; stop before they overflow.
        for d in frac_part.bytes().take(18) {
            fraction = fraction * 10 + i128::from(d - b'0');
            divisor *= 10;
        }
        total = whole
            .checked_mul(scale)
            .and_then(|w| w.checked_add(fraction * scale / divisor))
            .and_then(|v| total.checked_add(v))
            .filter(|t| *t <= i128::from(i64::MAX))
            .ok_or_else(invalid)?;
        rest = after;
    }
    Ok(if negative { -total } else { total })
}

/// `--request-timeout` as a flag value: a non-negative Go duration.
pub fn parse_duration_flag(text: &str) -> Result<Duration, String> {
    let nanos = parse_go_duration(text)?;
    u64::try_from(nanos)
        .map(Duration::from_nanos)
        .map_err(|_| format!("must not be negative: {text}"))
}

#[cfg(test)]
mod tests;
