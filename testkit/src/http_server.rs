//! HTTP/1.1 upstreams for the `http.request` block's tests and the bench, on free ports of
//! 127.0.0.1, stopped when dropped:
//! - [`Scripted`]: answers each request with the next scripted (status, body, headers),
//!   optionally after a delay (a slow dependency), and records every request;
//! - [`Responder`]: answers every request 200 with a fixed JSON body as fast as it can,
//!   pipelining-safe (the bench's upstream).
//!
//! tests/http_block.rs keeps its own hyper server (HTTP/1.1, HTTP/2 and TLS with a test CA):
//! its routes are what that file tests.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// One scripted answer: status, body, extra headers.
type Answer = (u16, String, Vec<(String, String)>);

/// A scripted HTTP/1.1 keep-alive upstream: answers each request with the next (status,
/// body, extra headers) after `delay`, repeating the last; records every request's head
/// and body. Its tasks live as long as the test's runtime.
#[derive(Debug, Clone)]
pub struct Scripted {
    pub port: u16,
    script: Arc<Mutex<VecDeque<Answer>>>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Scripted {
    /// Answers as scripted, at once.
    #[allow(clippy::type_complexity)]
    pub async fn start(script: Vec<(u16, &str, Vec<(&str, &str)>)>) -> Scripted {
        Scripted::start_delayed(script, Duration::ZERO).await
    }

    /// `200 {}` to every request, each after `delay`: a slow dependency that holds a worker
    /// slot for that long per task.
    pub async fn slow(delay: Duration) -> Scripted {
        Scripted::start_delayed(vec![(200, "{}", vec![])], delay).await
    }

    /// Answers as scripted, each after `delay`.
    #[allow(clippy::type_complexity)]
    pub async fn start_delayed(
        script: Vec<(u16, &str, Vec<(&str, &str)>)>,
        delay: Duration,
    ) -> Scripted {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let up = Scripted {
            port: l.local_addr().expect("addr").port(),
            script: Arc::new(Mutex::new(
                script
                    .into_iter()
                    .map(|(s, b, h)| {
                        (
                            s,
                            b.to_owned(),
                            h.into_iter()
                                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                                .collect(),
                        )
                    })
                    .collect(),
            )),
            requests: Arc::default(),
        };
        let u = up.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(u.clone().serve(s, delay));
            }
        });
        up
    }

    async fn serve(self, s: TcpStream, delay: Duration) {
        let (r, mut w) = s.into_split();
        let mut r = BufReader::new(r);
        loop {
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                if line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            let mut body = vec![0; len];
            let _ = r.read_exact(&mut body).await;
            self.requests
                .lock()
                .expect("lock")
                .push(format!("{head}\r\n{}", String::from_utf8_lossy(&body)));
            let (status, body, headers) = {
                let mut s = self.script.lock().expect("lock");
                if s.len() > 1 {
                    s.pop_front()
                } else {
                    s.front().cloned()
                }
            }
            .unwrap_or((200, String::new(), vec![]));
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let mut resp = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            );
            for (k, v) in headers {
                resp.push_str(&format!("{k}: {v}\r\n"));
            }
            resp.push_str("\r\n");
            resp.push_str(&body);
            if w.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
        }
    }

    /// `http://127.0.0.1:<port>/process`.
    pub fn url(&self) -> String {
        self.url_for("/process")
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url_for(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Every request so far: its head, an empty line, its body.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("lock").clone()
    }
}

/// What [`Responder`] answers every request with.
pub const RESPONSE_BODY: &[u8] = br#"{"ok":true,"from":"beamline-bench"}"#;
const MAX_HEAD: usize = 64 * 1024;

/// The bench's upstream, a tiny HTTP/1.1 keep-alive responder: answers every request `200` with a fixed JSON body.
/// Dropping it stops the listener and every connection task.
#[derive(Debug)]
pub struct Responder {
    pub port: u16,
    /// Requests answered so far.
    pub requests: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Responder {
    /// Starts it on a free port of 127.0.0.1.
    pub async fn start() -> std::io::Result<Responder> {
        start_responder().await
    }
}

async fn start_responder() -> std::io::Result<Responder> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let requests = Arc::new(AtomicU64::new(0));
    let counter = requests.clone();
    let task = tokio::spawn(async move {
        // The JoinSet is dropped (aborting every connection) when this task is aborted.
        let mut conns = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let _ = stream.set_nodelay(true);
                    conns.spawn(serve_conn(stream, counter.clone()));
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    });
    Ok(Responder {
        port,
        requests,
        task,
    })
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    memchr::memmem::find(buf, b"\r\n\r\n").map(|i| i + 4)
}

/// `(content_length, close)` from a request head.
fn parse_head(head: &[u8]) -> (usize, bool) {
    let text = String::from_utf8_lossy(head);
    let mut len = 0;
    let mut close = text.lines().next().is_some_and(|l| l.ends_with("HTTP/1.0"));
    for line in text.lines().skip(1) {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("content-length") {
            len = v.parse().unwrap_or(0);
        } else if k.eq_ignore_ascii_case("connection") {
            close = v.eq_ignore_ascii_case("close");
        }
    }
    (len, close)
}

async fn serve_conn(mut stream: TcpStream, counter: Arc<AtomicU64>) {
    let response = {
        let mut r = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            RESPONSE_BODY.len()
        )
        .into_bytes();
        r.extend_from_slice(RESPONSE_BODY);
        r
    };
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = [0u8; 8192];
    loop {
        // Answer every complete request in the buffer (pipelining-safe).
        let mut out = Vec::new();
        let mut close = false;
        while let Some(end) = find_head_end(&buf) {
            let (body_len, c) = parse_head(&buf[..end]);
            if buf.len() < end + body_len {
                break;
            }
            buf.drain(..end + body_len);
            out.extend_from_slice(&response);
            counter.fetch_add(1, Ordering::Relaxed);
            if c {
                close = true;
                break;
            }
        }
        if !out.is_empty() && stream.write_all(&out).await.is_err() {
            return;
        }
        if close || buf.len() > MAX_HEAD {
            return;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_parsing() {
        assert_eq!(
            parse_head(b"POST /x HTTP/1.1\r\nContent-Length: 12\r\nHost: a\r\n\r\n"),
            (12, false)
        );
        assert_eq!(
            parse_head(b"GET /x HTTP/1.1\r\nconnection: Close\r\n\r\n"),
            (0, true)
        );
        assert_eq!(parse_head(b"GET /x HTTP/1.0\r\n\r\n"), (0, true));
    }

    #[tokio::test]
    async fn upstream_answers_keep_alive_requests() {
        let up = Responder::start().await.expect("start");
        let mut s = TcpStream::connect(("127.0.0.1", up.port))
            .await
            .expect("connect");
        // Two pipelined requests on one connection, the second with a body.
        s.write_all(
            b"GET /x HTTP/1.1\r\nHost: a\r\n\r\nPOST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
        )
        .await
        .expect("write");
        let mut got = Vec::new();
        let mut chunk = [0u8; 1024];
        while memchr::memmem::find_iter(&got, b"HTTP/1.1 200").count() < 2
            || !got.ends_with(RESPONSE_BODY)
        {
            let n = s.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed early");
            got.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(up.requests.load(Ordering::Relaxed), 2);
    }
}
