//! An httpbin-like hyper server (HTTP/1.1 and HTTP/2, over TLS when given a config, e.g.
//! [`crate::tls::TestPki`]'s) on a free port of 127.0.0.1 that records what it received,
//! and raw TCP endpoints that never answer, reset, or are closed: the `http.request`
//! block's counterparts (tests/http_block.rs).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Aborts the server task when the test ends.
#[derive(Debug)]
pub struct Task(JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the server received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Debug)]
pub struct Server {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    _task: Task,
}

impl Server {
    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    /// `http://<addr><path>`.
    pub fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `https://<addr><path>`.
    pub fn https(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

/// Routes: `/echo` (default) echoes the request as JSON; `/golden` is the guide's example;
/// `/status/N` answers N (`429` with `Retry-After: 2`, `302` with a `Location`);
/// `/stream/N` streams N bytes without a length; `/sized/N` sends N bytes with one;
/// `/binary` is not UTF-8.
async fn handle(
    req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    let record = Seen {
        method: parts.method.to_string(),
        path: path.clone(),
        version: parts.version,
        headers: parts.headers.clone(),
        body: body.clone(),
    };
    seen.lock().expect("lock").push(record);

    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let response = match segments.as_slice() {
        ["golden"] => Response::builder()
            .header("content-type", "application/json")
            .body(full(r#"{"result":"success"}"#)),
        ["status", code] => {
            let code: u16 = code.parse().expect("status code");
            let mut b = Response::builder().status(code);
            if code == 429 {
                b = b.header("retry-after", "2");
            }
            if code == 302 {
                b = b.header("location", "http://169.254.169.254/latest/meta-data/");
            }
            b.body(full(format!("status {code}")))
        }
        ["stream", n] => {
            let n: usize = n.parse().expect("size");
            let chunks: Vec<Result<Frame<Bytes>, Infallible>> = (0..n.div_ceil(512))
                .map(|i| Ok(Frame::data(Bytes::from(vec![b'x'; 512.min(n - i * 512)]))))
                .collect();
            Response::builder().body(StreamBody::new(futures::stream::iter(chunks)).boxed())
        }
        ["sized", n] => {
            let n: usize = n.parse().expect("size");
            Response::builder().body(full(vec![b'y'; n]))
        }
        ["binary"] => Response::builder()
            .header("content-type", "application/octet-stream")
            .body(full(vec![0xff, 0xfe, 0x00, 0x80])),
        _ => {
            let headers: serde_json::Map<String, Value> = parts
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        Value::from(v.to_str().unwrap_or("?")),
                    )
                })
                .collect();
            let echo = json!({
                "method": parts.method.as_str(),
                "path": path,
                "version": format!("{:?}", parts.version),
                "headers": headers,
                "body": String::from_utf8_lossy(&body),
            });
            Response::builder()
                .header("content-type", "application/json")
                .header("x-multi", "a")
                .header("x-multi", "b")
                .body(full(echo.to_string()))
        }
    };
    Ok(response.expect("response"))
}

/// A hyper server (HTTP/1.1 and HTTP/2) on 127.0.0.1, over TLS when `tls` is given.
pub async fn start_server(tls: Option<Arc<rustls::ServerConfig>>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (count, log) = (Arc::clone(&accepted), Arc::clone(&seen));
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            let log = Arc::clone(&log);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| handle(req, Arc::clone(&log)));
                let builder = auto::Builder::new(TokioExecutor::new());
                match acceptor {
                    Some(acceptor) => {
                        let Ok(stream) = acceptor.accept(stream).await else {
                            return;
                        };
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                    None => {
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
            });
        }
    });
    Server {
        addr,
        accepted,
        seen,
        _task: Task(task),
    }
}

/// Accepts connections and never answers; counts them.
pub async fn start_silent() -> (SocketAddr, Arc<AtomicUsize>, Task) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    (addr, accepted, Task(task))
}

/// Reads the request, then resets the connection (RST, not FIN).
pub async fn start_resetting() -> (SocketAddr, Task) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            let _ = stream.set_zero_linger();
            drop(stream);
        }
    });
    (addr, Task(task))
}

/// A port nothing listens on.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr")
}
