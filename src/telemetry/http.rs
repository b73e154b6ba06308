//! `GET /metrics` and `GET /_health` on `--prometheus-endpoint`, and `/_health` alone on
//! `--health-endpoint` (the original worker's port 9091). `HEAD` answers like `GET`
//! (same status and headers, `content-length` included) without the body: hyper's
//! HTTP/1 server drops the body of a response to a `HEAD` request itself.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_util::sync::CancellationToken;

use crate::contract::wire::iso_now;

use super::Metrics;

/// One health indicator: its name, whether it is fine, and a word on why not.
#[derive(Debug, Clone)]
pub struct Indicator {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// "No critical error in the recent window": fed a monotonic count of critical errors
/// (block panics), it is unhealthy from the moment the count grows until `window` passes
/// without growth.
#[derive(Debug)]
pub struct RecentErrors {
    window: std::time::Duration,
    /// (count last seen, when it last grew)
    state: std::sync::Mutex<(u64, Option<std::time::Instant>)>,
}

impl RecentErrors {
    pub fn new(window: std::time::Duration) -> Self {
        RecentErrors {
            window,
            state: std::sync::Mutex::new((0, None)),
        }
    }

    /// Whether no critical error happened within the window, given the current count.
    pub fn ok(&self, count: u64) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if count > s.0 {
            *s = (count, Some(std::time::Instant::now()));
        }
        s.1.is_none_or(|at| at.elapsed() > self.window)
    }
}

/// What the endpoints read: indicators and a hook that refreshes the gauges.
pub trait Probe: Send + Sync + 'static {
    fn indicators(&self) -> Vec<Indicator>;
    fn sample(&self);
}

/// The health body: 200 with the guide's body, or 503 naming what fails.
pub fn health_response(probe: &dyn Probe) -> (StatusCode, String) {
    let inds = probe.indicators();
    let failing: Vec<&Indicator> = inds.iter().filter(|i| !i.ok).collect();
    if failing.is_empty() {
        let body = serde_json::json!({"status": "healthy", "timestamp": iso_now()});
        return (StatusCode::OK, body.to_string());
    }
    let checks: serde_json::Map<String, serde_json::Value> = inds
        .iter()
        .map(|i| {
            (
                i.name.to_owned(),
                // The platform schema's shape of a check (`platform-logging.schema.json`,
                // `health_endpoint.response.checks`).
                serde_json::json!({"status": if i.ok { "ok" } else { "fail" }, "message": i.detail}),
            )
        })
        .collect();
    let body = serde_json::json!({
        "status": "unhealthy",
        "timestamp": iso_now(),
        "failing": failing.iter().map(|i| i.name).collect::<Vec<_>>(),
        "reason": failing.iter().map(|i| format!("{}: {}", i.name, i.detail)).collect::<Vec<_>>().join("; "),
        "checks": checks,
    });
    (StatusCode::SERVICE_UNAVAILABLE, body.to_string())
}

fn respond(status: StatusCode, ctype: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(ctype),
    );
    r
}

async fn route(
    req: Request<Incoming>,
    metrics: Option<Arc<Metrics>>,
    probe: Arc<dyn Probe>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path();
    // `curl -I` (the platform's health-check script) sends HEAD.
    let get_or_head = matches!(*req.method(), Method::GET | Method::HEAD);
    Ok(match (get_or_head, path, &metrics) {
        (true, "/_health", _) => {
            let (status, body) = health_response(&*probe);
            respond(status, "application/json", body)
        }
        (true, "/metrics", Some(m)) => {
            probe.sample();
            respond(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                m.render(),
            )
        }
        // Another method on a path served here; `/metrics` on the health-only port
        // (`--health-endpoint`) is not served there: 404.
        (_, "/_health", _) | (_, "/metrics", Some(_)) => respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n".into(),
        ),
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    })
}

/// Binds `addr` (fails at start-up when it cannot) and serves until `stop`.
/// `metrics: None` serves only `/_health`. Returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    metrics: Option<Arc<Metrics>>,
    probe: Arc<dyn Probe>,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = stop.cancelled() => break,
                a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
            };
            let (m, p) = (metrics.clone(), probe.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| route(req, m.clone(), p.clone()));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Vec<Indicator>);

    impl Probe for Fixed {
        fn indicators(&self) -> Vec<Indicator> {
            self.0.clone()
        }
        fn sample(&self) {}
    }

    #[test]
    fn a_critical_error_fails_health_for_the_window_then_recovers() {
        let recent = RecentErrors::new(std::time::Duration::from_millis(50));
        assert!(recent.ok(0));
        assert!(!recent.ok(1), "a new panic makes it unhealthy");
        assert!(!recent.ok(1));
        std::thread::sleep(std::time::Duration::from_millis(80));
        assert!(
            recent.ok(1),
            "healthy again after the window without new errors"
        );
        assert!(!recent.ok(2));
    }

    #[test]
    fn the_health_body_names_each_failing_indicator() {
        let ind = |name, ok| Indicator {
            name,
            ok,
            detail: "why".into(),
        };
        let (status, body) = health_response(&Fixed(vec![
            ind("nats_connection", true),
            ind("critical_errors", true),
        ]));
        assert_eq!(status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(
            v.as_object().map(|o| o.len()),
            Some(2),
            "exactly the guide's body: {v}"
        );
        assert_eq!(v["status"], "healthy");
        let (status, body) = health_response(&Fixed(vec![
            ind("nats_connection", true),
            ind("critical_errors", false),
        ]));
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["failing"], serde_json::json!(["critical_errors"]));
        assert_eq!(
            v["checks"],
            serde_json::json!({
                "nats_connection": {"status": "ok", "message": "why"},
                "critical_errors": {"status": "fail", "message": "why"},
            })
        );
    }
}
