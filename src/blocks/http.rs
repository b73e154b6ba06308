//! `http.request` block: one HTTP(S) request per attempt, through a pooled keep-alive
//! client (HTTP/1.1, and HTTP/2 where TLS ALPN offers it) that lives with the block, one
//! per CPU thread.
//!
//! Job fields: `method` (default `GET`; any valid token), `url` (required; `http`/`https`
//! only), `headers` (an object of strings, or a JSON string holding one; at most
//! [`MAX_HEADERS`], more is 2004), `body` (a string), `timeout_ms` (per attempt, bounded
//! by what is left of the job's deadline).
//!
//! Result: `{"status_code", "body" | "body_base64", "headers": {"Content-Type": ...},
//! "latency_ms"}`. A 4xx/5xx answer is a `3003` error that still carries that result.
//!
//! **Redirects are not followed.** A 3xx response is returned as it came (status,
//! `Location` header, body) as a success. Following a redirect would need the SSRF policy
//! re-applied to every hop and the job's headers (`Authorization`, …) re-judged for a
//! new origin; the caller that wants a redirect followed sees the `Location` and can ask
//! again.
//!
//! Where a request may go is decided by [`crate::policy::ssrf`]: the URL's host is
//! checked when the job is decoded (allow-list, IP literals), and every DNS answer is
//! checked by the connector's resolver before it is connected to.

use std::error::Error as StdError;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use simd_json::prelude::*;
use simd_json::BorrowedValue;

use crate::config::Config;
use crate::contract::{ErrorCode, Fields, TaskError};
use crate::policy::ssrf::{PolicyDenied, ResolveError, SsrfPolicy, SsrfResolver};

use super::{Block, BuildContext, BuildError, DecodeSettings, ExecCtx, Output};

/// `User-Agent` sent unless the job sets one.
pub const USER_AGENT: &str = concat!("beamline_worker/", env!("CARGO_PKG_VERSION"));

/// Longest a TCP connect may take (the attempt's own budget may cut it shorter).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an unused pooled connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Fewest idle connections kept per host (per CPU thread); see [`max_idle_per_host`].
const POOL_MIN_IDLE_PER_HOST: usize = 32;

/// Idle connections kept per host by one CPU thread's client: as many as it may have
/// requests in flight (`--max-in-flight`), so a steady load to one upstream reuses its
/// connections instead of closing all but a few after each burst and connecting again
/// (with 32 kept, connect/close churn was a quarter of the worker's CPU on the
/// `http.request` bench). It never holds more sockets than the load already opened at
/// once: hyper connects per concurrent request, and the idle timeout closes what rests.
fn max_idle_per_host(config: &Config) -> usize {
    config.max_in_flight.max(POOL_MIN_IDLE_PER_HOST)
}

/// Headers one job may set; more is 2004. Upstreams refuse far fewer (hyper's server
/// takes 100), and `http::HeaderMap` panics past 24 576 names, which a 300 KB job reaches.
pub const MAX_HEADERS: usize = 256;

/// Header values that never appear in logs or `Debug` output.
const SECRET_HEADERS: [&str; 4] = [
    "authorization",
    "cookie",
    "proxy-authorization",
    "x-api-key",
];

type Connector = HttpsConnector<HttpConnector<SsrfResolver>>;

/// The `http.request` block: a pooled client plus the SSRF policy.
pub struct HttpBlock {
    client: Client<Connector, Full<Bytes>>,
    policy: Arc<SsrfPolicy>,
    max_response_bytes: usize,
    sandbox: bool,
}

impl fmt::Debug for HttpBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpBlock")
            .field("policy", &self.policy)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("sandbox", &self.sandbox)
            .finish_non_exhaustive()
    }
}

impl HttpBlock {
    /// Builds the client: web PKI roots plus `config.http_ca_file` (PEM) when given.
    /// Needs no runtime; connections are made on the runtime that runs the attempts.
    pub fn new(config: &Config) -> Result<HttpBlock, BuildError> {
        let policy = Arc::new(SsrfPolicy::from_config(config));
        let tls = tls_config(config.http_ca_file.as_deref())?;

        let mut http = HttpConnector::new_with_resolver(SsrfResolver::new(Arc::clone(&policy)));
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_keepalive(Some(Duration::from_secs(60)));

        let https = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);

        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(max_idle_per_host(config))
            .build(https);

        Ok(HttpBlock {
            client,
            policy,
            max_response_bytes: config.http_max_response_bytes,
            sandbox: config.sandbox,
        })
    }
}

fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, BuildError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let shown = path.display();
        let pem = std::fs::read(path)
            .map_err(BuildError::of(format!("cannot read HTTP CA file {shown}")))?;
        let mut added = 0usize;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(BuildError::of(format!("HTTP CA file {shown}")))?;
            roots.add(cert).map_err(BuildError::of(format!(
                "HTTP CA file {shown}: bad certificate"
            )))?;
            added += 1;
        }
        if added == 0 {
            let none = "holds no PEM certificate";
            return Err(BuildError::of(format!("HTTP CA file {shown}"))(none));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(BuildError::of("TLS setup"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// An `http.request` job, validated.
pub struct HttpJob {
    pub method: Method,
    /// Absolute, scheme `http` or `https` (lower case), host checked by the policy.
    pub uri: Uri,
    /// The job's own headers (without `Content-Length` / `Transfer-Encoding`, which the
    /// block sets from the body).
    pub headers: HeaderMap,
    pub body: Option<Bytes>,
    /// `timeout_ms`: the most one attempt may take.
    pub timeout: Option<Duration>,
}

impl fmt::Debug for HttpJob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(name, value)| {
                let shown = if is_secret(name) {
                    "[REDACTED]"
                } else {
                    value.to_str().unwrap_or("[non-text]")
                };
                (name.as_str(), shown)
            })
            .collect();
        f.debug_struct("HttpJob")
            .field("method", &self.method)
            .field("host", &self.uri.authority().map(|a| a.as_str()))
            .field("headers", &headers)
            .field("body_bytes", &self.body.as_ref().map(Bytes::len))
            .field("timeout", &self.timeout)
            .finish()
    }
}

fn is_secret(name: &HeaderName) -> bool {
    SECRET_HEADERS.contains(&name.as_str())
}

impl HttpJob {
    /// `host[:port]` as the URL gives it (for messages; never the path or query, which
    /// may hold secrets).
    pub fn host(&self) -> &str {
        self.uri.authority().map_or("", |a| a.as_str())
    }
}

/// Reads and validates an `http.request` job: what [`Block::decode`] does, without the
/// client. `policy` judges the URL's host; `assignment_id` must be sendable as the
/// `Idempotency-Key` header unless the job sets that header itself.
pub fn decode_job(
    job: Fields<'_, '_>,
    policy: &SsrfPolicy,
    assignment_id: &str,
) -> Result<HttpJob, TaskError> {
    let method = parse_method(job.opt_str("method")?)?;
    let uri = parse_url(job.req_nonempty("url")?)?;
    let host = uri.host().unwrap_or_default();
    policy.check_host(host).map_err(denied)?;
    let headers = match job.get("headers") {
        None => HeaderMap::new(),
        Some(v) => parse_headers(v)?,
    };
    let body = job
        .opt_str("body")?
        .map(|b| Bytes::copy_from_slice(b.as_bytes()));
    let timeout = match job.opt_u64("timeout_ms")? {
        Some(0) => return Err(TaskError::invalid("job.timeout_ms", "must be at least 1")),
        Some(ms) => Some(Duration::from_millis(ms)),
        None => None,
    };
    if !headers.contains_key(IDEMPOTENCY_KEY) && HeaderValue::from_str(assignment_id).is_err() {
        return Err(TaskError::invalid(
            "assignment_id",
            "cannot be sent as an Idempotency-Key header (control characters)",
        ));
    }
    Ok(HttpJob {
        method,
        uri,
        headers,
        body,
        timeout,
    })
}

impl Block for HttpBlock {
    type Job<'a> = HttpJob;
    const SENDS_TRACEPARENT: bool = true;

    fn build(ctx: &BuildContext) -> Result<Self, BuildError> {
        HttpBlock::new(ctx.config)
    }

    fn decode_with<'a>(
        job: Fields<'a, 'a>,
        settings: &DecodeSettings,
        assignment_id: &str,
    ) -> Result<HttpJob, TaskError> {
        decode_job(job, &settings.ssrf, assignment_id)
    }

    fn decode<'a>(&self, job: Fields<'a, 'a>, ctx: &ExecCtx<'_>) -> Result<HttpJob, TaskError> {
        decode_job(job, &self.policy, ctx.assignment_id)
    }

    async fn attempt(&self, job: &Self::Job<'_>, ctx: &ExecCtx<'_>) -> Result<Output, TaskError> {
        if self.sandbox {
            return Ok(Output::new(sandbox_result()));
        }
        let host = job.host();
        let budget = job
            .timeout
            .map_or(ctx.remaining(), |t| t.min(ctx.remaining()));
        if budget.is_zero() {
            return Err(timed_out(host, budget));
        }
        let request = build_request(job, ctx);
        let started = Instant::now();
        let exchange = self.exchange(request, job.method == Method::HEAD, host);
        let (status, headers, body) = tokio::time::timeout(budget, exchange)
            .await
            .map_err(|_elapsed| timed_out(host, budget))??;
        let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        tracing::debug!(
            method = %job.method,
            host,
            status = status.as_u16(),
            latency_ms,
            "http.request answered"
        );
        let result = response_json(status, &headers, &body, latency_ms);
        if !(status.is_client_error() || status.is_server_error()) {
            return Ok(Output::new(result));
        }
        Err(http_error(status, &headers, result))
    }
}

impl HttpBlock {
    /// Sends the request and reads the whole response, its body capped.
    async fn exchange(
        &self,
        request: Request<Full<Bytes>>,
        head: bool,
        host: &str,
    ) -> Result<(StatusCode, HeaderMap, Bytes), TaskError> {
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| client_error(&e, host))?;
        let (parts, mut body) = response.into_parts();
        let cap = self.max_response_bytes;
        let too_large = || {
            TaskError::new(
                ErrorCode::QuotaExceeded,
                format!("response larger than {cap} bytes"),
            )
        };
        // A HEAD, 204 or 304 answer has no body, whatever its Content-Length says.
        let bodiless = head
            || parts.status == StatusCode::NO_CONTENT
            || parts.status == StatusCode::NOT_MODIFIED;
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|_| !bodiless);
        if declared.is_some_and(|n| n > cap as u64) {
            return Err(too_large());
        }
        let mut buf = BytesMut::with_capacity(declared.map_or(0, |n| n as usize));
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| body_error(&e, host))?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > cap {
                    return Err(too_large());
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok((parts.status, parts.headers, buf.freeze()))
    }
}

const IDEMPOTENCY_KEY: &str = "idempotency-key";
const TRACEPARENT: &str = "traceparent";

fn parse_method(method: Option<&str>) -> Result<Method, TaskError> {
    let Some(m) = method else {
        return Ok(Method::GET);
    };
    // `post` means POST; an unknown token keeps its case (methods are case-sensitive).
    let upper = m.to_ascii_uppercase();
    let standard = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::CONNECT,
    ];
    if let Some(std) = standard.into_iter().find(|s| s.as_str() == upper) {
        if std == Method::CONNECT {
            return Err(TaskError::invalid("job.method", "CONNECT is not supported"));
        }
        return Ok(std);
    }
    Method::from_bytes(m.as_bytes())
        .map_err(|_| TaskError::invalid("job.method", format!("{m:?} is not a valid HTTP method")))
}

fn parse_url(url: &str) -> Result<Uri, TaskError> {
    const FIELD: &str = "job.url";
    let uri: Uri = url
        .parse()
        .map_err(|e| TaskError::invalid(FIELD, format!("not a valid URL ({e})")))?;
    let scheme = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") => Scheme::HTTP,
        Some(s) if s.eq_ignore_ascii_case("https") => Scheme::HTTPS,
        Some(other) => {
            return Err(TaskError::invalid(
                FIELD,
                format!("scheme `{other}` is not supported (http or https only)"),
            ))
        }
        None => {
            return Err(TaskError::invalid(
                FIELD,
                "must be an absolute http:// or https:// URL",
            ))
        }
    };
    let Some(authority) = uri.authority().filter(|a| !a.host().is_empty()) else {
        return Err(TaskError::invalid(FIELD, "has no host"));
    };
    if authority.as_str().contains('@') {
        return Err(TaskError::invalid(
            FIELD,
            "credentials in the URL are not supported (send an Authorization header)",
        ));
    }
    // `Uri` takes any digits as a port; one past 65535 would fail at connect, retried.
    let port = authority.as_str()[authority.host().len()..].trim_start_matches(':');
    if !port.is_empty() && authority.port_u16().is_none() {
        return Err(TaskError::invalid(
            FIELD,
            format!("port `{port}` is not a TCP port (0-65535)"),
        ));
    }
    let path = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::builder()
        .scheme(scheme)
        .authority(authority.clone())
        .path_and_query(path)
        .build()
        .map_err(|e| TaskError::invalid(FIELD, format!("not a valid URL ({e})")))
}

/// `headers` as an object of strings, or a JSON string encoding one.
fn parse_headers(value: &BorrowedValue<'_>) -> Result<HeaderMap, TaskError> {
    const FIELD: &str = "job.headers";
    const EXPECTED: &str = "an object of string values (or a JSON string of one)";
    let too_many = |n: usize| {
        TaskError::new(
            ErrorCode::QuotaExceeded,
            format!("field `{FIELD}` has {n} headers; at most {MAX_HEADERS} per job"),
        )
    };
    let mut map = HeaderMap::new();
    if let Some(object) = value.as_object() {
        if object.len() > MAX_HEADERS {
            return Err(too_many(object.len()));
        }
        for (name, v) in object.iter() {
            let v = v
                .as_str()
                .ok_or_else(|| TaskError::format(&format!("{FIELD}.{name}"), "a string"))?;
            add_header(&mut map, name, v)?;
        }
    } else if let Some(text) = value.as_str() {
        if text.trim().is_empty() {
            return Ok(map);
        }
        let parsed: serde_json::Value =
            serde_json::from_str(text).map_err(|_| TaskError::format(FIELD, EXPECTED))?;
        let object = parsed
            .as_object()
            .ok_or_else(|| TaskError::format(FIELD, EXPECTED))?;
        if object.len() > MAX_HEADERS {
            return Err(too_many(object.len()));
        }
        for (name, v) in object {
            let v = v
                .as_str()
                .ok_or_else(|| TaskError::format(&format!("{FIELD}.{name}"), "a string"))?;
            add_header(&mut map, name, v)?;
        }
    } else {
        return Err(TaskError::format(FIELD, EXPECTED));
    }
    // The body decides the framing.
    map.remove(header::CONTENT_LENGTH);
    map.remove(header::TRANSFER_ENCODING);
    Ok(map)
}

fn add_header(map: &mut HeaderMap, name: &str, value: &str) -> Result<(), TaskError> {
    let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
        TaskError::invalid(
            "job.headers",
            format!("{name:?} is not a valid header name"),
        )
    })?;
    let value = HeaderValue::from_str(value).map_err(|_| {
        TaskError::invalid(
            "job.headers",
            format!("the value of {name:?} is not a valid header value"),
        )
    })?;
    map.append(header, value);
    Ok(())
}

fn denied(d: PolicyDenied) -> TaskError {
    TaskError::new(ErrorCode::PermissionDenied, d.to_string())
}

/// The request of one attempt: the job's headers plus the ones the worker adds.
fn build_request(job: &HttpJob, ctx: &ExecCtx<'_>) -> Request<Full<Bytes>> {
    let mut headers = job.headers.clone();
    if !headers.contains_key(IDEMPOTENCY_KEY) {
        if let Ok(v) = HeaderValue::from_str(ctx.assignment_id) {
            headers.insert(IDEMPOTENCY_KEY, v);
        }
    }
    if !headers.contains_key(TRACEPARENT) {
        if let Some(v) = ctx.traceparent.and_then(|t| HeaderValue::from_str(t).ok()) {
            headers.insert(TRACEPARENT, v);
        }
    }
    if !headers.contains_key(header::USER_AGENT) {
        headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
    }
    let body = job.body.clone().unwrap_or_default();
    let expects_body = matches!(job.method, Method::POST | Method::PUT | Method::PATCH);
    if job.body.is_some() || expects_body {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = job.method.clone();
    *request.uri_mut() = job.uri.clone();
    *request.headers_mut() = headers;
    request
}

fn sandbox_result() -> serde_json::Value {
    serde_json::json!({
        "status_code": 200,
        "body": "{\"sandbox\":true}",
        "headers": {"Content-Type": "application/json"},
        "latency_ms": 0,
    })
}

/// `content-type` → `Content-Type` (hyper keeps no original case).
pub fn title_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        if upper {
            out.push(c.to_ascii_uppercase());
        } else {
            out.push(c.to_ascii_lowercase());
        }
        upper = c == '-';
    }
    out
}

fn response_json(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    latency_ms: u64,
) -> serde_json::Value {
    let mut names = serde_json::Map::new();
    for (name, value) in headers {
        let key = title_case(name.as_str());
        let value = String::from_utf8_lossy(value.as_bytes());
        match names.get_mut(&key) {
            // Repeated fields are combined as RFC 9110 §5.3 allows.
            Some(serde_json::Value::String(prev)) => {
                prev.push_str(", ");
                prev.push_str(&value);
            }
            _ => {
                names.insert(key, serde_json::Value::String(value.into_owned()));
            }
        }
    }
    let mut out = serde_json::Map::new();
    out.insert("status_code".into(), status.as_u16().into());
    match std::str::from_utf8(body) {
        Ok(text) => out.insert("body".into(), text.into()),
        Err(_) => out.insert(
            "body_base64".into(),
            base64::engine::general_purpose::STANDARD
                .encode(body)
                .into(),
        ),
    };
    out.insert("headers".into(), names.into());
    out.insert("latency_ms".into(), latency_ms.into());
    serde_json::Value::Object(out)
}

/// `3003` for a 4xx/5xx answer, the response attached.
fn http_error(status: StatusCode, headers: &HeaderMap, result: serde_json::Value) -> TaskError {
    let message = format!(
        "upstream answered {} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
    .trim_end()
    .to_owned();
    let retryable = status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS;
    let mut err = if retryable {
        TaskError::retryable(ErrorCode::HttpError, message)
            .with_retry_after(retry_after(headers, chrono::Utc::now()))
    } else {
        TaskError::new(ErrorCode::HttpError, message)
    };
    if status.is_server_error() {
        err = err.with_type("5xx");
    }
    err.with_result(result)
}

/// `Retry-After` as delta-seconds or an HTTP-date (a date in the past is no delay).
pub fn retry_after(headers: &HeaderMap, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = parse_http_date(value)?;
    Some((when - now).to_std().unwrap_or(Duration::ZERO))
}

/// IMF-fixdate, and the obsolete RFC 850 and asctime forms recipients must accept.
fn parse_http_date(value: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    if let Ok(d) = chrono::DateTime::parse_from_rfc2822(value) {
        return Some(d.with_timezone(&chrono::Utc));
    }
    ["%A, %d-%b-%y %H:%M:%S GMT", "%a %b %e %H:%M:%S %Y"]
        .iter()
        .find_map(|f| chrono::NaiveDateTime::parse_from_str(value, f).ok())
        .map(|n| n.and_utc())
}

fn timed_out(host: &str, budget: Duration) -> TaskError {
    TaskError::retryable(
        ErrorCode::ConnectionTimeout,
        format!("no answer from `{host}` within {} ms", budget.as_millis()),
    )
    .with_type("timeout")
}

/// Every error of a chain, looking inside `io::Error`s too (their `source()` skips the
/// error they wrap).
fn chain<'e>(err: &'e (dyn StdError + 'static)) -> Vec<&'e (dyn StdError + 'static)> {
    let mut out: Vec<&'e (dyn StdError + 'static)> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        if out.len() >= 16 {
            break;
        }
        out.push(e);
        next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => e.source(),
        };
    }
    out
}

fn describe(errors: &[&(dyn StdError + 'static)]) -> String {
    let mut parts: Vec<String> = Vec::new();
    for e in errors {
        let s = e.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ")
}

fn io_kind(errors: &[&(dyn StdError + 'static)]) -> Option<std::io::ErrorKind> {
    errors
        .iter()
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .map(std::io::Error::kind)
        .find(|k| *k != std::io::ErrorKind::Other)
}

/// A failure before a response: policy, DNS, connect, TLS, or the connection failing.
fn client_error(err: &hyper_util::client::legacy::Error, host: &str) -> TaskError {
    let errors = chain(err);
    for e in &errors {
        if let Some(d) = e.downcast_ref::<PolicyDenied>() {
            return denied(d.clone());
        }
    }
    if let Some(tls) = errors
        .iter()
        .find_map(|e| e.downcast_ref::<rustls::Error>())
    {
        return TaskError::new(
            ErrorCode::NetworkError,
            format!("TLS handshake with `{host}` failed: {tls}"),
        )
        .with_type("connection_error");
    }
    for e in &errors {
        if let Some(ResolveError::Lookup { source, .. }) = e.downcast_ref::<ResolveError>() {
            return network(format!("DNS lookup of `{host}` failed: {source}"));
        }
    }
    match io_kind(&errors) {
        Some(std::io::ErrorKind::TimedOut) => TaskError::retryable(
            ErrorCode::ConnectionTimeout,
            format!("connecting to `{host}` timed out"),
        )
        .with_type("timeout"),
        Some(std::io::ErrorKind::ConnectionRefused) => {
            network(format!("connection to `{host}` refused"))
        }
        Some(std::io::ErrorKind::ConnectionReset) => {
            network(format!("connection to `{host}` was reset"))
        }
        _ if err.is_connect() => network(format!(
            "cannot connect to `{host}`: {}",
            describe(&errors[1..])
        )),
        _ => network(format!(
            "request to `{host}` failed: {}",
            describe(&errors[1..])
        )),
    }
}

/// A failure while the body streams in (reset, truncated answer).
fn body_error(err: &hyper::Error, host: &str) -> TaskError {
    network(format!(
        "reading the response from `{host}` failed: {}",
        describe(&chain(err))
    ))
}

fn network(message: String) -> TaskError {
    TaskError::retryable(ErrorCode::NetworkError, message).with_type("connection_error")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_are_title_cased() {
        assert_eq!(title_case("content-type"), "Content-Type");
        assert_eq!(title_case("x-request-id"), "X-Request-Id");
        assert_eq!(title_case("etag"), "Etag");
        assert_eq!(title_case("www-authenticate"), "Www-Authenticate");
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = chrono::DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .expect("date")
            .with_timezone(&chrono::Utc);
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h, now), None);
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(2)));
        h.insert(
            header::RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:30 GMT"),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(30)));
        h.insert(
            header::RETRY_AFTER,
            HeaderValue::from_static("Wednesday, 21-Oct-15 07:29:00 GMT"),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(60)));
        h.insert(
            header::RETRY_AFTER,
            HeaderValue::from_static("Wed Oct 21 07:28:10 2015"),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(10)));
        h.insert(
            header::RETRY_AFTER,
            HeaderValue::from_static("Tue, 20 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::ZERO));
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h, now), None);
    }

    #[test]
    fn urls_are_checked_and_normalised() {
        let uri = parse_url("HTTPS://Example.com").expect("valid");
        assert_eq!(uri.to_string(), "https://Example.com/");
        assert_eq!(
            parse_url("http://h:8080/a?b=c").expect("valid").to_string(),
            "http://h:8080/a?b=c"
        );
        parse_url("http://[::1]:8080/").expect("an IPv6 literal with a port");
        parse_url("http://h:/").expect("an empty port is the scheme's");
        for bad in [
            "ftp://example.com/",
            "/relative",
            "example.com",
            "http://",
            "http://user:pw@example.com/",
            "http://exa mple.com/",
            "http://127.0.0.1:99999/",
            "http://h:65536/",
        ] {
            let err = parse_url(bad).expect_err(bad);
            assert_eq!(err.code, ErrorCode::InvalidInput, "{bad}: {err}");
            assert!(err.message.contains("job.url"), "{err}");
        }
    }

    #[test]
    fn methods_accept_tokens_and_fold_standard_names() {
        assert_eq!(parse_method(None).expect("default"), Method::GET);
        assert_eq!(parse_method(Some("post")).expect("post"), Method::POST);
        assert_eq!(
            parse_method(Some("PURGE")).expect("token").as_str(),
            "PURGE"
        );
        for bad in ["", "GE T", "G\"ET", "CONNECT"] {
            let err = parse_method(Some(bad)).expect_err(bad);
            assert_eq!(err.code, ErrorCode::InvalidInput, "{bad}");
        }
    }

    #[test]
    fn job_debug_redacts_secret_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer s3cret"),
        );
        headers.insert("x-api-key", HeaderValue::from_static("k3y"));
        headers.insert(header::COOKIE, HeaderValue::from_static("sid=c00kie"));
        headers.insert(header::ACCEPT, HeaderValue::from_static("text/plain"));
        let job = HttpJob {
            method: Method::GET,
            uri: Uri::from_static("https://example.com/?token=q"),
            headers,
            body: None,
            timeout: None,
        };
        let shown = format!("{job:?}");
        for secret in ["s3cret", "k3y", "c00kie", "token=q"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("text/plain"), "{shown}");
    }
}
