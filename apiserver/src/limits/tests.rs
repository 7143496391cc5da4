use super::*;
use axum::routing::{get, post};
use axum::Router;
use http_body_util::BodyExt;
use tower::ServiceExt;

#[test]
fn go_durations() {
    let s = 1_000_000_000i128;
    assert_eq!(parse_go_duration("1m0s"), Ok(60 * s));
    assert_eq!(parse_go_duration("32s"), Ok(32 * s));
    assert_eq!(parse_go_duration("1.5h"), Ok(5400 * s));
    assert_eq!(parse_go_duration("300ms"), Ok(300_000_000));
    assert_eq!(parse_go_duration("1h2m3.5s"), Ok(3723 * s + s / 2));
    assert_eq!(parse_go_duration("-2s"), Ok(-2 * s));
    assert_eq!(parse_go_duration(".5s"), Ok(s / 2));
    assert_eq!(parse_go_duration("0"), Ok(0));
    assert_eq!(
        parse_go_duration("abc"),
        Err("time: invalid duration \"abc\"".to_string())
    );
    assert_eq!(
        parse_go_duration("1"),
        Err("time: missing unit in duration \"1\"".to_string())
    );
    assert_eq!(
        parse_go_duration("1x"),
        Err("time: unknown unit \"x\" in duration \"1x\"".to_string())
    );
    assert!(parse_go_duration("").is_err());
    assert!(parse_go_duration("99999999999999999999h").is_err());
    assert!(parse_go_duration("3000000h").is_err());
    assert!(parse_duration_flag("-1s").is_err());
    assert_eq!(parse_duration_flag("1m0s"), Ok(Duration::from_secs(60)));
}

#[test]
fn classifies_like_upstream() {
    let kind = |m: Method, u: &str| classify(&m, &u.parse().unwrap());
    assert_eq!(
        kind(Method::GET, "/api/v1/namespaces/default/pods?watch=true"),
        Kind::Watch {
            timeout_given: false
        }
    );
    assert_eq!(
        kind(Method::GET, "/api/v1/pods?watch=1&timeoutSeconds=5"),
        Kind::Watch {
            timeout_given: true
        }
    );
    assert_eq!(
        kind(Method::GET, "/api/v1/pods?watch=true&timeoutSeconds=0"),
        Kind::Watch {
            timeout_given: false
        }
    );
    assert_eq!(
        kind(Method::GET, "/api/v1/namespaces/default/pods/p/log"),
        Kind::Proxy
    );
    assert_eq!(
        kind(Method::POST, "/api/v1/namespaces/default/pods/p/exec"),
        Kind::Proxy
    );
    assert_eq!(kind(Method::GET, "/readyz"), Kind::Probe);
    assert_eq!(kind(Method::GET, "/api/v1/pods"), Kind::Read);
    assert_eq!(
        kind(Method::GET, "/api/v1/namespaces/default/pods/p?watch=true"),
        Kind::Read
    );
    assert_eq!(
        kind(Method::DELETE, "/api/v1/namespaces/default/pods/p"),
        Kind::Mutating
    );
}

#[test]
fn watch_timeout_replaces_empty_or_zero() {
    let uri: Uri = "/api/v1/pods?watch=true&timeoutSeconds=0&&labelSelector=a%3Db"
        .parse()
        .unwrap();
    assert_eq!(
        with_timeout_seconds(&uri, 7).unwrap().to_string(),
        "/api/v1/pods?watch=true&labelSelector=a%3Db&timeoutSeconds=7"
    );
}

#[test]
fn timeout_parameter_shortens_but_never_extends() {
    let server = Duration::from_secs(60);
    let deadline = |u: &str| request_deadline(&u.parse().unwrap(), server);
    assert_eq!(deadline("/api/v1/pods").unwrap(), server);
    assert_eq!(
        deadline("/api/v1/pods?timeout=32s").unwrap(),
        Duration::from_secs(32)
    );
    assert_eq!(deadline("/api/v1/pods?timeout=2h").unwrap(), server);
    assert_eq!(deadline("/api/v1/pods?timeout=0s").unwrap(), server);
    let err = deadline("/api/v1/pods?timeout=soon").unwrap_err();
    assert_eq!(err.code, 400);
    assert_eq!(
        err.message,
        "invalid timeout specified in the request URL - time: invalid duration \"soon\""
    );
}

/// Holds handlers busy: each reports that it started, then waits for a release.
#[derive(Clone)]
struct Gate {
    entered: Arc<Semaphore>,
    release: Arc<Semaphore>,
}

impl Gate {
    fn new() -> Gate {
        Gate {
            entered: Arc::new(Semaphore::new(0)),
            release: Arc::new(Semaphore::new(0)),
        }
    }

    async fn pass(&self) {
        self.entered.add_permits(1);
        if let Ok(p) = self.release.acquire().await {
            p.forget();
        }
    }

    async fn wait_entered(&self, n: u32) {
        self.entered.acquire_many(n).await.unwrap().forget();
    }
}

/// A router whose pod list and create handlers wait at `gate`.
fn held_router(gate: &Gate, limits: &Limits) -> Router {
    let (list_gate, create_gate) = (gate.clone(), gate.clone());
    Router::new()
        .route(
            "/api/v1/namespaces/default/pods",
            get(move || async move {
                list_gate.pass().await;
                "listed"
            })
            .post(move || async move {
                create_gate.pass().await;
                "created"
            }),
        )
        .route(
            "/api/v1/namespaces/default/configmaps",
            post(|| async { "ok" }),
        )
        .route("/readyz", get(|| async { "ok" }))
        .layer(Limiter::new(limits).layer())
}

async fn send(router: &Router, method: Method, uri: &str) -> Response {
    router
        .clone()
        .oneshot(
            axum::http::Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap()
}

async fn send_owned(router: Router, method: Method, uri: &'static str) -> u16 {
    let resp = send(&router, method, uri).await;
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    status
}

async fn body_json(resp: Response) -> serde_json::Value {
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

const PODS: &str = "/api/v1/namespaces/default/pods";
const CONFIGMAPS: &str = "/api/v1/namespaces/default/configmaps";

#[tokio::test]
async fn past_the_cap_answers_429_then_recovers() {
    let gate = Gate::new();
    let limits = Limits {
        max_requests_inflight: 2,
        max_mutating_requests_inflight: 1,
        ..Limits::default()
    };
    let router = held_router(&gate, &limits);
    let held: Vec<_> = [Method::GET, Method::GET, Method::POST]
        .into_iter()
        .map(|m| tokio::spawn(send_owned(router.clone(), m, PODS)))
        .collect();
    gate.wait_entered(3).await;

    let refused = send(&router, Method::GET, PODS).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "1");
    let status = body_json(refused).await;
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["code"], 429);
    assert_eq!(status["reason"], "TooManyRequests");
    assert_eq!(
        status["message"],
        "Too many requests, please try again later."
    );
    assert_eq!(status["details"]["retryAfterSeconds"], 1);
    // Writes have their own cap, and it is full too.
    assert_eq!(send(&router, Method::POST, CONFIGMAPS).await.status(), 429);
    // Probes are never refused.
    assert_eq!(send(&router, Method::GET, "/readyz").await.status(), 200);
    // Watches are long-running and take no slot.
    let watch = tokio::spawn(send_owned(
        router.clone(),
        Method::GET,
        "/api/v1/namespaces/default/pods?watch=true",
    ));
    gate.wait_entered(1).await;
    gate.release.add_permits(4);
    assert_eq!(watch.await.unwrap(), 200);

    for h in held {
        assert_eq!(h.await.unwrap(), 200);
    }
    // Every slot came back.
    gate.release.add_permits(2);
    let lists = [
        tokio::spawn(send_owned(router.clone(), Method::GET, PODS)),
        tokio::spawn(send_owned(router.clone(), Method::GET, PODS)),
    ];
    for l in lists {
        assert_eq!(l.await.unwrap(), 200);
    }
    assert_eq!(send(&router, Method::POST, CONFIGMAPS).await.status(), 200);
}

#[tokio::test]
async fn a_slow_request_gets_504_and_keeps_its_slot_until_it_ends() {
    let gate = Gate::new();
    let limits = Limits {
        max_mutating_requests_inflight: 1,
        request_timeout: Duration::from_millis(50),
        ..Limits::default()
    };
    let router = held_router(&gate, &limits);
    let resp = send(&router, Method::POST, PODS).await;
    assert_eq!(resp.status(), 504);
    let status = body_json(resp).await;
    assert_eq!(status["reason"], "Timeout");
    assert_eq!(
        status["message"],
        "Timeout: request did not complete within requested timeout - context deadline exceeded"
    );
    gate.wait_entered(1).await;
    // The timed-out handler still runs, so it still counts.
    assert_eq!(send(&router, Method::POST, CONFIGMAPS).await.status(), 429);
    gate.release.add_permits(1);
    let mut status = send(&router, Method::POST, CONFIGMAPS).await.status();
    while status == 429 {
        tokio::task::yield_now().await;
        status = send(&router, Method::POST, CONFIGMAPS).await.status();
    }
    assert_eq!(status, 200);
}
