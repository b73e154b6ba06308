//! `http.request` against real local servers: plain HTTP/1.1 and HTTPS (HTTP/1.1 and
//! HTTP/2 by ALPN) served by hyper on ephemeral ports of 127.0.0.1, with a throw-away CA
//! made by rcgen, plus raw TCP servers that never answer or reset (the test kit's
//! `echo_server` and `tls`). Every test is bounded by [`bounded`].

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use beamline_testkit::echo_server::{closed_port, start_resetting, start_server, start_silent};
use beamline_testkit::tls::TestPki;
use beamline_worker::blocks::http::{HttpBlock, USER_AGENT};
use beamline_worker::blocks::{Block, ExecCtx, Output};
use beamline_worker::config::{Cli, Config};
use beamline_worker::contract::{ErrorCode, Fields, TaskError};
use bytes::Bytes;
use http::Version;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const ASSIGNMENT_ID: &str = "asg-0001";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Fails the test instead of hanging it.
async fn bounded<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .expect("test ran past 30 s")
}

// ---------------------------------------------------------------------------------------
// The block
// ---------------------------------------------------------------------------------------

fn config() -> Config {
    let mut c = Config::resolve(Cli::default()).expect("default config");
    c.sandbox = false;
    c.http_ca_file = None;
    c.http_max_response_bytes = 1 << 20;
    c.http_allow_hosts = Vec::new();
    c
}

fn block(config: &Config) -> HttpBlock {
    HttpBlock::new(config).expect("block builds")
}

/// A config trusting `pki`'s CA through `http_ca_file` (the file lives as long as `dir`).
fn tls_config(pki: &TestPki, dir: &tempfile::TempDir) -> Config {
    let path = dir.path().join("ca.pem");
    std::fs::write(&path, &pki.ca_pem).expect("write CA");
    let mut c = config();
    c.http_ca_file = Some(path);
    c
}

fn ctx(cancel: &CancellationToken) -> ExecCtx<'_> {
    ExecCtx {
        tenant: "tenant-a",
        assignment_id: ASSIGNMENT_ID,
        trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736"),
        traceparent: Some(TRACEPARENT),
        deadline: Instant::now() + Duration::from_secs(20),
        attempt: 1,
        cancel,
        redelivered: false,
    }
}

/// `decode` only (the job as the Router sends it).
fn decode(block: &HttpBlock, job: &Value) -> Result<(), TaskError> {
    let mut buf = job.to_string().into_bytes();
    let value = simd_json::to_borrowed_value(&mut buf).expect("valid JSON");
    let cancel = CancellationToken::new();
    block
        .decode(Fields::new(&value, "job"), &ctx(&cancel))
        .map(|_| ())
}

/// `decode`, then one `attempt`.
async fn run(block: &HttpBlock, job: &Value) -> Result<Output, TaskError> {
    let mut buf = job.to_string().into_bytes();
    let value = simd_json::to_borrowed_value(&mut buf).expect("valid JSON");
    let cancel = CancellationToken::new();
    let ctx = ctx(&cancel);
    let job = block.decode(Fields::new(&value, "job"), &ctx)?;
    block.attempt(&job, &ctx).await
}

fn echo(out: &Output) -> Value {
    let result = out.result.to_value();
    let body = result["body"].as_str().expect("text body");
    serde_json::from_str(body).expect("echo is JSON")
}

fn expect_err(r: Result<Output, TaskError>) -> TaskError {
    match r {
        Ok(out) => panic!("expected an error, got {:?}", out.result),
        Err(e) => e,
    }
}

/// A GET of `path` on a fresh plain-HTTP server with the default config: its error.
async fn get_error(path: &str) -> TaskError {
    let server = start_server(None).await;
    let b = block(&config());
    expect_err(
        run(
            &b,
            &json!({"type": "http.request", "url": server.http(path)}),
        )
        .await,
    )
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn get_sends_idempotency_key_traceparent_and_user_agent() {
    bounded(async {
        let server = start_server(None).await;
        let b = block(&config());
        let out = run(
            &b,
            &json!({"type": "http.request", "url": server.http("/echo?q=1")}),
        )
        .await
        .expect("200");
        assert_eq!(out.result.to_value()["status_code"], 200);
        let e = echo(&out);
        assert_eq!(e["method"], "GET");
        assert_eq!(e["version"], "HTTP/1.1");
        let seen = server.seen();
        assert_eq!(seen.len(), 1);
        let h = &seen[0].headers;
        assert_eq!(h["idempotency-key"], ASSIGNMENT_ID);
        assert_eq!(h["traceparent"], TRACEPARENT);
        assert_eq!(h["user-agent"], USER_AGENT);
        assert!(h.get("content-length").is_none(), "GET without body: {h:?}");
        // Repeated response fields are combined; names are Title-Case.
        assert_eq!(out.result.to_value()["headers"]["X-Multi"], "a, b");
        assert!(out.result.to_value()["latency_ms"].is_u64());
    })
    .await;
}

#[tokio::test]
async fn post_sends_body_and_headers_and_keeps_the_jobs_own_ids() {
    bounded(async {
        let server = start_server(None).await;
        let b = block(&config());
        let job = json!({
            "type": "http.request",
            "method": "POST",
            "url": server.http("/echo"),
            "headers": {
                "Content-Type": "application/json",
                "X-Custom": "yes",
                "Idempotency-Key": "caller-key",
                "traceparent": "00-11111111111111111111111111111111-2222222222222222-01",
                "User-Agent": "caller/1",
                "Authorization": "Bearer secret"
            },
            "body": "{\"key\":\"value\"}",
            "timeout_ms": 5000
        });
        let out = run(&b, &job).await.expect("200");
        let e = echo(&out);
        assert_eq!(e["method"], "POST");
        assert_eq!(e["body"], "{\"key\":\"value\"}");
        let seen = server.seen();
        let s = &seen[0];
        assert_eq!(s.method, "POST");
        assert_eq!(s.body, Bytes::from_static(b"{\"key\":\"value\"}"));
        assert_eq!(s.headers["content-length"], "15");
        assert_eq!(s.headers["content-type"], "application/json");
        assert_eq!(s.headers["x-custom"], "yes");
        assert_eq!(s.headers["authorization"], "Bearer secret");
        assert_eq!(s.headers["idempotency-key"], "caller-key");
        assert_eq!(s.headers.get_all("idempotency-key").iter().count(), 1);
        assert_eq!(
            s.headers["traceparent"],
            "00-11111111111111111111111111111111-2222222222222222-01"
        );
        assert_eq!(s.headers["user-agent"], "caller/1");
    })
    .await;
}

#[tokio::test]
async fn headers_may_be_a_json_string() {
    bounded(async {
        let server = start_server(None).await;
        let b = block(&config());
        let job = json!({
            "type": "http.request",
            "method": "put",
            "url": server.http("/echo"),
            "headers": "{\"X-From-String\": \"1\", \"Accept\": \"text/plain\"}"
        });
        run(&b, &job).await.expect("200");
        let seen = server.seen();
        assert_eq!(seen[0].method, "PUT");
        assert_eq!(seen[0].headers["x-from-string"], "1");
        assert_eq!(seen[0].headers["accept"], "text/plain");
        assert_eq!(seen[0].headers["content-length"], "0", "PUT without body");
    })
    .await;
}

#[tokio::test]
async fn golden_result_shape() {
    bounded(async {
        let server = start_server(None).await;
        let b = block(&config());
        let out = run(
            &b,
            &json!({"type": "http.request", "url": server.http("/golden")}),
        )
        .await
        .expect("200");
        let r = out.result.to_value();
        assert_eq!(r["status_code"], 200);
        assert_eq!(r["body"], "{\"result\":\"success\"}");
        assert_eq!(r["headers"]["Content-Type"], "application/json");
        assert!(r["latency_ms"].is_u64(), "{r}");
        let keys: Vec<&String> = r.as_object().expect("object").keys().collect();
        assert_eq!(keys.len(), 4, "{r}");
        assert_eq!(out.cost, 0.0);
    })
    .await;
}

#[tokio::test]
async fn binary_bodies_come_back_as_base64() {
    bounded(async {
        let server = start_server(None).await;
        let b = block(&config());
        let out = run(
            &b,
            &json!({"type": "http.request", "url": server.http("/binary")}),
        )
        .await
        .expect("200");
        assert_eq!(out.result.to_value()["body_base64"], "//4AgA==");
        assert!(
            out.result.to_value().get("body").is_none(),
            "{:?}",
            out.result
        );
    })
    .await;
}

#[tokio::test]
async fn https_with_the_ca_file_and_http2_by_alpn() {
    bounded(async {
        let pki = TestPki::new("beamline test CA");
        let dir = tempfile::tempdir().expect("tempdir");
        let server = start_server(Some(Arc::clone(&pki.server))).await;
        let b = block(&tls_config(&pki, &dir));
        for _ in 0..3 {
            let out = run(&b, &json!({"type": "http.request", "method": "POST", "url": server.https("/echo"), "body": "hi"}))
                .await
                .expect("200 over TLS");
            assert_eq!(echo(&out)["version"], "HTTP/2.0");
            assert_eq!(echo(&out)["body"], "hi");
        }
        let seen = server.seen();
        assert!(seen.iter().all(|s| s.version == Version::HTTP_2), "{seen:?}");
        assert_eq!(seen[0].headers["idempotency-key"], ASSIGNMENT_ID);
        assert_eq!(seen[0].headers["traceparent"], TRACEPARENT);
        assert_eq!(server.accepted(), 1, "one multiplexed HTTP/2 connection");

        // The certificate names `localhost` too.
        let port = server.addr.port();
        let out = run(&b, &json!({"type": "http.request", "url": format!("https://localhost:{port}/golden")}))
            .await
            .expect("200 by name");
        assert_eq!(out.result.to_value()["headers"]["Content-Type"], "application/json");
    })
    .await;
}

#[tokio::test]
async fn https_without_the_ca_is_a_tls_error_not_retried() {
    bounded(async {
        let pki = TestPki::new("beamline test CA");
        let server = start_server(Some(Arc::clone(&pki.server))).await;
        let b = block(&config());
        let err = expect_err(
            run(
                &b,
                &json!({"type": "http.request", "url": server.https("/echo")}),
            )
            .await,
        );
        assert_eq!(err.code, ErrorCode::NetworkError, "{err}");
        assert!(!err.retryable, "{err}");
        assert!(err.message.contains("TLS"), "{err}");
        assert_eq!(err.error_type(), "connection_error");
        assert!(server.seen().is_empty());
    })
    .await;
}

#[test]
fn ca_file_problems_fail_the_build() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = config();
    c.http_ca_file = Some(dir.path().join("missing.pem"));
    let err = HttpBlock::new(&c).expect_err("missing file");
    assert!(err.to_string().contains("missing.pem"), "{err}");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").expect("write");
    c.http_ca_file = Some(empty);
    let err = HttpBlock::new(&c).expect_err("no certificate");
    assert!(err.to_string().contains("no PEM certificate"), "{err}");
}

#[tokio::test]
async fn keep_alive_reuses_one_connection() {
    bounded(async {
        let server = start_server(None).await;
        let b = block(&config());
        for i in 0..5 {
            let out = run(
                &b,
                &json!({"type": "http.request", "url": server.http(&format!("/echo/{i}"))}),
            )
            .await
            .expect("200");
            assert_eq!(echo(&out)["path"], format!("/echo/{i}"));
        }
        let paths: Vec<String> = server.seen().into_iter().map(|s| s.path).collect();
        assert_eq!(
            paths,
            ["/echo/0", "/echo/1", "/echo/2", "/echo/3", "/echo/4"]
        );
        assert_eq!(
            server.accepted(),
            1,
            "5 sequential requests, one connection"
        );
    })
    .await;
}

/// A burst of concurrent requests opens a connection per request in flight; the next burst
/// of the same size reuses them all (the idle pool keeps as many per host as the thread may
/// have in flight, not a fixed few that leave the rest to connect again).
#[tokio::test]
async fn a_second_burst_reuses_the_first_bursts_connections() {
    bounded(async {
        let server = start_server(None).await;
        let b = block(&config());
        let job = json!({"type": "http.request", "url": server.http("/echo/burst")});
        let burst = || futures::future::join_all((0..100).map(|_| run(&b, &job)));
        for out in burst().await {
            out.expect("200");
        }
        let first = server.accepted();
        assert!(
            first > 32,
            "the burst ran concurrently: {first} connections"
        );
        for out in burst().await {
            out.expect("200");
        }
        assert_eq!(
            server.accepted(),
            first,
            "no new connection for the second burst"
        );
    })
    .await;
}

#[tokio::test]
async fn not_found_is_an_http_error_not_retried_with_the_response_attached() {
    bounded(async {
        let err = get_error("/status/404").await;
        assert_eq!(err.code, ErrorCode::HttpError);
        assert!(!err.retryable);
        assert_eq!(err.message, "upstream answered 404 Not Found");
        let r = err.result.expect("response attached");
        assert_eq!(r["status_code"], 404);
        assert_eq!(r["body"], "status 404");
    })
    .await;
}

#[tokio::test]
async fn server_errors_are_retryable_5xx() {
    bounded(async {
        let err = get_error("/status/503").await;
        assert_eq!(err.code, ErrorCode::HttpError);
        assert!(err.retryable);
        assert_eq!(err.error_type(), "5xx");
        assert_eq!(err.message, "upstream answered 503 Service Unavailable");
        assert_eq!(err.retry_after, None);
        assert_eq!(err.result.expect("response attached")["status_code"], 503);
    })
    .await;
}

#[tokio::test]
async fn too_many_requests_is_retryable_after_retry_after() {
    bounded(async {
        let err = get_error("/status/429").await;
        assert_eq!(err.code, ErrorCode::HttpError);
        assert!(err.retryable);
        assert_eq!(err.retry_after, Some(Duration::from_secs(2)));
        let r = err.result.expect("response attached");
        assert_eq!(r["headers"]["Retry-After"], "2");
    })
    .await;
}

#[tokio::test]
async fn redirects_are_returned_not_followed() {
    bounded(async {
        let server = start_server(None).await;
        let b = block(&config());
        let out = run(
            &b,
            &json!({"type": "http.request", "url": server.http("/status/302")}),
        )
        .await
        .expect("3xx is a success");
        assert_eq!(out.result.to_value()["status_code"], 302);
        assert_eq!(
            out.result.to_value()["headers"]["Location"],
            "http://169.254.169.254/latest/meta-data/"
        );
        assert_eq!(server.seen().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn connection_refused_is_a_retryable_network_error() {
    bounded(async {
        let addr = closed_port().await;
        let b = block(&config());
        let err = expect_err(
            run(
                &b,
                &json!({"type": "http.request", "url": format!("http://{addr}/")}),
            )
            .await,
        );
        assert_eq!(err.code, ErrorCode::NetworkError, "{err}");
        assert!(err.retryable);
        assert_eq!(err.error_type(), "connection_error");
        assert!(err.message.contains("refused"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn silent_server_times_out_within_the_attempt_budget() {
    bounded(async {
        let (addr, accepted, _task) = start_silent().await;
        let b = block(&config());
        let started = Instant::now();
        let err = expect_err(
            run(&b, &json!({"type": "http.request", "url": format!("http://{addr}/"), "timeout_ms": 300})).await,
        );
        let took = started.elapsed();
        assert_eq!(err.code, ErrorCode::ConnectionTimeout, "{err}");
        assert!(err.retryable);
        assert_eq!(err.error_type(), "timeout");
        assert!(took >= Duration::from_millis(290), "{took:?}");
        assert!(took < Duration::from_millis(1000), "{took:?}");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    })
    .await;
}

#[tokio::test]
async fn the_job_deadline_bounds_the_attempt_too() {
    bounded(async {
        let (addr, _accepted, _task) = start_silent().await;
        let b = block(&config());
        let mut buf = json!({"type": "http.request", "url": format!("http://{addr}/")})
            .to_string()
            .into_bytes();
        let value = simd_json::to_borrowed_value(&mut buf).expect("json");
        let cancel = CancellationToken::new();
        let mut ctx = ctx(&cancel);
        ctx.deadline = Instant::now() + Duration::from_millis(200);
        let job = b.decode(Fields::new(&value, "job"), &ctx).expect("valid");
        let started = Instant::now();
        let err = expect_err(b.attempt(&job, &ctx).await);
        assert_eq!(err.code, ErrorCode::ConnectionTimeout, "{err}");
        assert!(started.elapsed() < Duration::from_millis(800));
    })
    .await;
}

#[tokio::test]
async fn reset_connection_is_a_retryable_network_error() {
    bounded(async {
        let (addr, _task) = start_resetting().await;
        let b = block(&config());
        let err = expect_err(
            run(
                &b,
                &json!({"type": "http.request", "url": format!("http://{addr}/")}),
            )
            .await,
        );
        assert_eq!(err.code, ErrorCode::NetworkError, "{err}");
        assert!(err.retryable);
        assert_eq!(err.error_type(), "connection_error");
    })
    .await;
}

#[tokio::test]
async fn responses_over_the_cap_are_quota_errors() {
    bounded(async {
        let server = start_server(None).await;
        let mut c = config();
        c.http_max_response_bytes = 1000;
        let b = block(&c);
        for path in ["/stream/5000", "/sized/5000", "/stream/1001"] {
            let err = expect_err(
                run(
                    &b,
                    &json!({"type": "http.request", "url": server.http(path)}),
                )
                .await,
            );
            assert_eq!(err.code, ErrorCode::QuotaExceeded, "{path}: {err}");
            assert!(!err.retryable);
            assert_eq!(err.message, "response larger than 1000 bytes");
        }
        // HEAD: the Content-Length of the body not sent is no reason to refuse.
        let out = run(
            &b,
            &json!({"type": "http.request", "method": "HEAD", "url": server.http("/sized/5000")}),
        )
        .await
        .expect("HEAD has no body");
        assert_eq!(out.result.to_value()["headers"]["Content-Length"], "5000");
        assert_eq!(out.result.to_value()["body"], "");
        for path in ["/stream/1000", "/sized/1000"] {
            let out = run(
                &b,
                &json!({"type": "http.request", "url": server.http(path)}),
            )
            .await
            .expect("exactly at the cap");
            assert_eq!(
                out.result.to_value()["body"].as_str().expect("text").len(),
                1000
            );
        }
    })
    .await;
}

#[tokio::test]
async fn metadata_address_is_denied_before_any_connection() {
    bounded(async {
        let b = block(&config());
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            "http://[::ffff:169.254.169.254]/",
            "https://[fe80::1]:8443/",
            "http://0.0.0.0/",
            // RFC 6874 zones: read as a DNS name before, a 3001 retried three times.
            "http://[fe80::1%25eth0]/",
            "http://[2001:db8::1%25eth0]:8080/",
        ] {
            let err = decode(&b, &json!({"type": "http.request", "url": url})).expect_err(url);
            assert_eq!(err.code, ErrorCode::PermissionDenied, "{url}: {err}");
            assert!(!err.retryable);
        }
        let err = decode(
            &b,
            &json!({"type": "http.request", "url": "http://169.254.169.254/"}),
        )
        .expect_err("denied");
        assert!(err.message.contains("169.254.169.254"), "{err}");
        assert!(err.message.contains("169.254.0.0/16"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn metadata_address_spelled_as_a_number_is_denied_after_resolution() {
    bounded(async {
        // 2852039166 == 169.254.169.254: not an IP literal to the URL parser, but the
        // system resolver turns it into that address.
        let b = block(&config());
        let err = expect_err(
            run(
                &b,
                &json!({"type": "http.request", "url": "http://2852039166/"}),
            )
            .await,
        );
        assert_eq!(err.code, ErrorCode::PermissionDenied, "{err}");
    })
    .await;
}

#[tokio::test]
async fn name_resolving_into_a_denied_range_is_denied() {
    bounded(async {
        let server = start_server(None).await;
        let mut c = config();
        c.http_deny_cidrs = vec![
            "127.0.0.0/8".parse().expect("cidr"),
            "::1/128".parse().expect("cidr"),
        ];
        let b = block(&c);
        let port = server.addr.port();
        let err = expect_err(
            run(
                &b,
                &json!({"type": "http.request", "url": format!("http://localhost:{port}/echo")}),
            )
            .await,
        );
        assert_eq!(err.code, ErrorCode::PermissionDenied, "{err}");
        assert!(!err.retryable);
        assert!(err.message.contains("localhost"), "{err}");
        assert!(
            err.message.contains("127.0.0.0/8") || err.message.contains("::1/128"),
            "{err}"
        );
        let err = decode(
            &b,
            &json!({"type": "http.request", "url": server.http("/echo")}),
        )
        .expect_err("literal");
        assert_eq!(err.code, ErrorCode::PermissionDenied, "{err}");
        assert_eq!(server.accepted(), 0);
    })
    .await;
}

#[tokio::test]
async fn allow_list_admits_only_listed_hosts() {
    bounded(async {
        let server = start_server(None).await;
        let mut c = config();
        c.http_allow_hosts = vec!["localhost".to_owned()];
        let b = block(&c);
        let port = server.addr.port();
        run(
            &b,
            &json!({"type": "http.request", "url": format!("http://LOCALHOST:{port}/echo")}),
        )
        .await
        .expect("listed host");
        let err = decode(
            &b,
            &json!({"type": "http.request", "url": server.http("/echo")}),
        )
        .expect_err("not listed");
        assert_eq!(err.code, ErrorCode::PermissionDenied, "{err}");
        assert!(err.message.contains("127.0.0.1"), "{err}");
        assert_eq!(server.seen().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn bad_input_gets_the_right_codes() {
    let b = block(&config());
    let cases = [
        (
            json!({"type": "http.request"}),
            ErrorCode::MissingRequiredField,
            "job.url",
        ),
        (
            json!({"url": ""}),
            ErrorCode::MissingRequiredField,
            "job.url",
        ),
        (json!({"url": 42}), ErrorCode::InvalidFormat, "job.url"),
        (
            json!({"url": "ftp://example.com/x"}),
            ErrorCode::InvalidInput,
            "job.url",
        ),
        (
            json!({"url": "not a url"}),
            ErrorCode::InvalidInput,
            "job.url",
        ),
        (
            json!({"url": "/relative/path"}),
            ErrorCode::InvalidInput,
            "job.url",
        ),
        (
            json!({"url": "http://example.com/", "method": 5}),
            ErrorCode::InvalidFormat,
            "job.method",
        ),
        (
            json!({"url": "http://example.com/", "method": "GE T"}),
            ErrorCode::InvalidInput,
            "job.method",
        ),
        (
            json!({"url": "http://example.com/", "method": ""}),
            ErrorCode::InvalidInput,
            "job.method",
        ),
        (
            json!({"url": "http://example.com/", "headers": 5}),
            ErrorCode::InvalidFormat,
            "job.headers",
        ),
        (
            json!({"url": "http://example.com/", "headers": ["a"]}),
            ErrorCode::InvalidFormat,
            "job.headers",
        ),
        (
            json!({"url": "http://example.com/", "headers": {"X-N": 1}}),
            ErrorCode::InvalidFormat,
            "job.headers.X-N",
        ),
        (
            json!({"url": "http://example.com/", "headers": "not json"}),
            ErrorCode::InvalidFormat,
            "job.headers",
        ),
        (
            json!({"url": "http://example.com/", "headers": "[1, 2]"}),
            ErrorCode::InvalidFormat,
            "job.headers",
        ),
        (
            json!({"url": "http://example.com/", "headers": "{\"X\": true}"}),
            ErrorCode::InvalidFormat,
            "job.headers.X",
        ),
        (
            json!({"url": "http://example.com/", "headers": {"bad name": "v"}}),
            ErrorCode::InvalidInput,
            "job.headers",
        ),
        (
            json!({"url": "http://example.com/", "headers": {"X": "a\nb"}}),
            ErrorCode::InvalidInput,
            "job.headers",
        ),
        (
            json!({"url": "http://example.com/", "body": {"k": 1}}),
            ErrorCode::InvalidFormat,
            "job.body",
        ),
        (
            json!({"url": "http://example.com/", "timeout_ms": "5"}),
            ErrorCode::InvalidFormat,
            "job.timeout_ms",
        ),
        (
            json!({"url": "http://example.com/", "timeout_ms": -1}),
            ErrorCode::InvalidInput,
            "job.timeout_ms",
        ),
        (
            json!({"url": "http://example.com/", "timeout_ms": 0}),
            ErrorCode::InvalidInput,
            "job.timeout_ms",
        ),
    ];
    for (job, code, field) in cases {
        let err = decode(&b, &job).expect_err(&job.to_string());
        assert_eq!(err.code, code, "{job}: {err}");
        assert!(err.message.contains(field), "{job}: {err}");
        assert!(!err.retryable);
    }
    decode(
        &b,
        &json!({"url": "http://example.com/", "method": "PURGE", "headers": {}, "body": ""}),
    )
    .expect("valid");
    decode(
        &b,
        &json!({"url": "http://example.com/", "headers": null, "timeout_ms": 5000.0}),
    )
    .expect("valid");
}

#[tokio::test]
async fn sandbox_mode_answers_without_any_connection() {
    bounded(async {
        let server = start_server(None).await;
        let mut c = config();
        c.sandbox = true;
        let b = block(&c);
        let out = run(&b, &json!({"type": "http.request", "method": "POST", "url": server.http("/echo"), "body": "x"}))
            .await
            .expect("sandbox answer");
        assert_eq!(
            out.result.into_value(),
            json!({"status_code": 200, "body": "{\"sandbox\":true}", "headers": {"Content-Type": "application/json"}, "latency_ms": 0})
        );
        // Policy and validation still apply.
        let err = decode(&b, &json!({"url": "http://169.254.169.254/"})).expect_err("denied");
        assert_eq!(err.code, ErrorCode::PermissionDenied);
        let err = decode(&b, &json!({"url": "gopher://x/"})).expect_err("bad scheme");
        assert_eq!(err.code, ErrorCode::InvalidInput);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(server.accepted(), 0);
    })
    .await;
}

#[tokio::test]
async fn dropping_a_cancelled_attempt_leaves_the_block_usable() {
    bounded(async {
        let (silent, _accepted, _task) = start_silent().await;
        let server = start_server(None).await;
        let b = block(&config());
        let mut buf = json!({"url": format!("http://{silent}/")}).to_string().into_bytes();
        let value = simd_json::to_borrowed_value(&mut buf).expect("json");
        let cancel = CancellationToken::new();
        let ctx = ctx(&cancel);
        let job = b.decode(Fields::new(&value, "job"), &ctx).expect("valid");
        let canceller = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            canceller.cancel();
        });
        let started = Instant::now();
        tokio::select! {
            r = b.attempt(&job, &ctx) => panic!("silent server answered: {:?}", r.map(|o| o.result)),
            () = cancel.cancelled() => {}
        }
        assert!(started.elapsed() < Duration::from_secs(2));
        run(&b, &json!({"url": server.http("/echo")})).await.expect("still works");
    })
    .await;
}

#[test]
fn block_builds_outside_a_runtime() {
    let b = HttpBlock::new(&config()).expect("builds");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(bounded(async {
        let server = start_server(None).await;
        run(&b, &json!({"url": server.http("/golden")}))
            .await
            .expect("200");
    }));
}
