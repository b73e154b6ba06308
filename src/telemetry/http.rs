//! `GET /metrics` and `GET /_health` on `--prometheus-endpoint`, and `/_health` alone on
//! `--health-endpoint` (the original worker's port 9091).

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
                serde_json::json!({"ok": i.ok, "detail": i.detail}),
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
    Ok(match (req.method(), path, &metrics) {
        (&Method::GET, "/_health", _) => {
            let (status, body) = health_response(&*probe);
            respond(status, "application/json", body)
        }
        (&Method::GET, "/metrics", Some(m)) => {
            probe.sample();
            respond(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                m.render(),
            )
        }
        (_, "/_health" | "/metrics", _) => respond(
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
