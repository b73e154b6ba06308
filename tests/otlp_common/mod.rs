//! Helpers of tests/observability.rs: a real OTLP/HTTP trace receiver (hyper on 127.0.0.1,
//! `ExportTraceServiceRequest` protobuf decoded with opentelemetry-proto/prost), a checker
//! for the subset of JSON Schema the platform's log schema uses, and a Prometheus text
//! exposition parser.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use prost::Message;
use serde_json::Value;

/// One span as the receiver decoded it.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub attributes: BTreeMap<String, String>,
    pub resource: BTreeMap<String, String>,
}

/// An OTLP/HTTP collector stand-in: `POST /v1/traces` with `application/x-protobuf`.
pub struct OtlpReceiver {
    pub port: u16,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    requests: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

fn text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attrs(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    requests: Arc<Mutex<Vec<String>>>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let ctype = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let line = format!("{} {} {ctype}", req.method(), req.uri().path());
    requests.lock().expect("lock").push(line);
    let reply = |status: StatusCode, body: Vec<u8>| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/x-protobuf"),
        );
        Ok(r)
    };
    if req.method() != hyper::Method::POST
        || req.uri().path() != "/v1/traces"
        || ctype != "application/x-protobuf"
    {
        return reply(StatusCode::NOT_FOUND, Vec::new());
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return reply(StatusCode::BAD_REQUEST, Vec::new()),
    };
    let Ok(export) = ExportTraceServiceRequest::decode(body) else {
        return reply(StatusCode::BAD_REQUEST, Vec::new());
    };
    let mut got = Vec::new();
    for rs in &export.resource_spans {
        let resource = rs
            .resource
            .as_ref()
            .map(|r| attrs(&r.attributes))
            .unwrap_or_default();
        for ss in &rs.scope_spans {
            for s in &ss.spans {
                got.push(ReceivedSpan {
                    name: s.name.clone(),
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: hex(&s.parent_span_id),
                    attributes: attrs(&s.attributes),
                    resource: resource.clone(),
                });
            }
        }
    }
    spans.lock().expect("lock").extend(got);
    reply(
        StatusCode::OK,
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}

impl OtlpReceiver {
    pub async fn start() -> OtlpReceiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (s, r) = (spans.clone(), requests.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (s, r) = (s.clone(), r.clone());
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req| handle(req, s.clone(), r.clone()));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        OtlpReceiver {
            port,
            spans,
            requests,
            task,
        }
    }

    /// What to give the worker as `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().expect("lock").clone()
    }

    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("lock").clone()
    }

    /// Waits until `done` holds for the spans received so far; returns them.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let end = Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < end,
                "spans not received within {timeout:?}; requests: {:?}; spans: {spans:#?}",
                self.requests()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// -----------------------------------------------------------------------------------------
// JSON Schema, the subset the platform's schema uses

/// The platform's log schema: the copy beside this file, checked against shared/spec when
/// that folder is there (the CI clone has it beside the repository).
pub fn log_schema() -> Value {
    let here: Value = serde_json::from_str(include_str!("platform-logging.schema.json"))
        .expect("schema copy is JSON");
    let shared = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/spec/platform-logging.schema.json"
    );
    if let Ok(text) = std::fs::read_to_string(shared) {
        let spec: Value = serde_json::from_str(&text).expect("shared schema is JSON");
        assert_eq!(
            here, spec,
            "tests/otlp_common/platform-logging.schema.json differs from {shared}: copy it again"
        );
    }
    here
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`, RFC 3339.
pub fn is_date_time(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|x| x.iter().all(u8::is_ascii_digit));
    if b.len() < 20
        || !digits(0..4)
        || b[4] != b'-'
        || !digits(5..7)
        || b[7] != b'-'
        || !digits(8..10)
    {
        return false;
    }
    if !(b[10] == b'T' || b[10] == b't')
        || !digits(11..13)
        || b[13] != b':'
        || !digits(14..16)
        || b[16] != b':'
        || !digits(17..19)
    {
        return false;
    }
    let mut i = 19;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    match &s[i..] {
        "Z" | "z" => true,
        off => {
            off.len() == 6 && (off.starts_with('+') || off.starts_with('-')) && &off[3..4] == ":"
        }
    }
}

/// The guide's timestamp: UTC with exactly microseconds, `2025-01-27T12:00:00.123456Z`.
pub fn is_utc_micros(s: &str) -> bool {
    is_date_time(s) && s.len() == 27 && s.as_bytes()[19] == b'.' && s.ends_with('Z')
}

/// Violations of `schema` by `v` (type, required, properties, enum, additionalProperties,
/// format date-time); empty when valid.
pub fn schema_errors(schema: &Value, v: &Value, at: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if let Some(t) = schema.get("type").and_then(Value::as_str) {
        let ok = match t {
            "object" => v.is_object(),
            "string" => v.is_string(),
            "number" => v.is_number(),
            "integer" => v.is_i64() || v.is_u64(),
            "boolean" => v.is_boolean(),
            "array" => v.is_array(),
            "null" => v.is_null(),
            _ => true,
        };
        if !ok {
            errs.push(format!("{at}: expected {t}, got {v}"));
            return errs;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(v) {
            errs.push(format!("{at}: {v} not one of {allowed:?}"));
        }
    }
    if schema.get("format").and_then(Value::as_str) == Some("date-time") {
        if let Some(s) = v.as_str() {
            if !is_date_time(s) {
                errs.push(format!("{at}: {s:?} is not an RFC 3339 date-time"));
            }
        }
    }
    if let Some(obj) = v.as_object() {
        for req in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = req.as_str().unwrap_or_default();
            if !obj.contains_key(name) {
                errs.push(format!("{at}: missing required {name:?}"));
            }
        }
        let props = schema.get("properties").and_then(Value::as_object);
        for (k, val) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(sub) => errs.extend(schema_errors(sub, val, &format!("{at}.{k}"))),
                None => match schema.get("additionalProperties") {
                    Some(Value::Bool(false)) => {
                        errs.push(format!("{at}: unexpected property {k:?}"))
                    }
                    Some(sub @ Value::Object(_)) => {
                        errs.extend(schema_errors(sub, val, &format!("{at}.{k}")))
                    }
                    _ => {}
                },
            }
        }
    }
    errs
}

// -----------------------------------------------------------------------------------------
// Prometheus text exposition

/// One sample: metric name, labels, value.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the samples of a text exposition (comments skipped).
pub fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (head, value) = match line.rfind(' ') {
            Some(i) => (&line[..i], line[i + 1..].trim()),
            None => continue,
        };
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or(f64::NAN),
        };
        let (name, labels) = match head.find('{') {
            None => (head.to_owned(), BTreeMap::new()),
            Some(i) => (
                head[..i].to_owned(),
                parse_labels(head[i + 1..].trim_end_matches('}')),
            ),
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        let key: String = chars
            .by_ref()
            .take_while(|c| *c != '=')
            .collect::<String>()
            .trim_start_matches(',')
            .trim()
            .to_owned();
        if key.is_empty() {
            break;
        }
        if chars.next() != Some('"') {
            break;
        }
        let mut val = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => val.push('\n'),
                    Some(o) => val.push(o),
                    None => break,
                },
                '"' => break,
                c => val.push(c),
            }
        }
        labels.insert(key, val);
    }
    labels
}

/// The samples named `name` whose labels include every pair of `want`.
pub fn find<'a>(samples: &'a [Sample], name: &str, want: &[(&str, &str)]) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && want
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect()
}
