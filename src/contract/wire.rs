//! What the worker publishes: `ExecAssignmentAck`, `ExecResult`, `DeadLetter`,
//! `ApprovalRequest` — field names and order as in the guide and the golden
//! examples, plus the deployed Router's extra fields (CONTRACT.md, Compatibility).

use std::cell::RefCell;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Serialize, Serializer};

use super::codes::{AckStatus, Status};
use super::error::TaskError;
use super::fastjson::{Object, Out};

pub const VERSION: &str = "1";

/// `error` object of a result or rejected ack.
#[derive(Debug, Serialize)]
pub struct ErrorObject<'a> {
    pub code: u16,
    pub message: &'a str,
    pub retryable: bool,
}

impl<'a> From<&'a TaskError> for ErrorObject<'a> {
    fn from(e: &'a TaskError) -> Self {
        ErrorObject {
            code: e.code.code(),
            message: &e.message,
            retryable: e.retryable,
        }
    }
}

/// A result object (`ExecResult.result`): a `Value` the block built, or the object as
/// JSON text the block wrote itself with [`super::fastjson::Object`] (`fs.get`: a file's
/// base64 encoded straight into it, no `Value` and no second pass over the content).
#[derive(Debug, Clone, PartialEq)]
pub enum ResultBody {
    Value(serde_json::Value),
    /// One JSON object (UTF-8), as serde_json would write it; the writer vouches for it.
    Json(Vec<u8>),
}

impl ResultBody {
    /// Borrowed, for an [`Outcome`] or an [`ExecResult`].
    pub fn view(&self) -> ResultRef<'_> {
        match self {
            ResultBody::Value(v) => ResultRef::Value(v),
            ResultBody::Json(t) => ResultRef::Json(t),
        }
    }

    /// The result as a `Value`, owned ([`ResultBody::to_value`]).
    pub fn into_value(self) -> serde_json::Value {
        match self {
            ResultBody::Value(v) => v,
            json => json.to_value().into_owned(),
        }
    }

    /// The result as a `Value` (written JSON parsed; `Null` if it were not JSON).
    pub fn to_value(&self) -> std::borrow::Cow<'_, serde_json::Value> {
        match self {
            ResultBody::Value(v) => std::borrow::Cow::Borrowed(v),
            ResultBody::Json(t) => {
                std::borrow::Cow::Owned(serde_json::from_slice(t).unwrap_or_default())
            }
        }
    }
}

/// A borrowed [`ResultBody`].
#[derive(Debug, Clone, Copy)]
pub enum ResultRef<'a> {
    Value(&'a serde_json::Value),
    Json(&'a [u8]),
}

/// Ids every message echoes.
#[derive(Debug, Default, Clone, Copy)]
pub struct Ids<'a> {
    pub assignment_id: Option<&'a str>,
    pub request_id: Option<&'a str>,
    pub tenant_id: Option<&'a str>,
    pub trace_id: Option<&'a str>,
    pub run_id: Option<&'a str>,
    pub flow_id: Option<&'a str>,
    pub step_id: Option<&'a str>,
    pub provider_id: Option<&'a str>,
}

impl Ids<'_> {
    /// The Router accepts run/flow/step at top level only all together.
    fn all_three(&self) -> bool {
        self.run_id.is_some() && self.flow_id.is_some() && self.step_id.is_some()
    }
}

#[derive(Debug, Serialize)]
pub struct Ack<'a> {
    pub version: &'static str,
    pub assignment_id: &'a str,
    pub status: &'static str,
    pub message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<&'a str>,
    pub acknowledged_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorObject<'a>>,
}

impl<'a> Ack<'a> {
    pub fn new(
        ids: &Ids<'a>,
        assignment_id: &'a str,
        status: AckStatus,
        message: &'a str,
        error: Option<&'a TaskError>,
        now_ms: u64,
    ) -> Self {
        Ack {
            version: VERSION,
            assignment_id,
            status: status.as_str(),
            message,
            request_id: ids.request_id,
            trace_id: ids.trace_id,
            tenant_id: ids.tenant_id,
            acknowledged_at: now_ms,
            error: error.map(ErrorObject::from),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct JobRef<'a> {
    #[serde(rename = "type")]
    pub kind: &'a str,
}

#[derive(Debug, Serialize, Default)]
pub struct Metadata<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_id: Option<&'a str>,
    pub worker_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub sandbox: bool,
}

/// `ExecResult`. Optional parts are absent when the assignment could not supply them.
#[derive(Debug, Serialize)]
pub struct ExecResult<'a> {
    pub version: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assignment_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<&'a str>,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<JobRef<'a>>,
    /// Written by [`super::fastjson`]: the same bytes, a faster string escaper.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "fast_result"
    )]
    pub result: Option<ResultRef<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorObject<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_message: Option<&'a str>,
    pub attempts: u32,
    pub latency_ms: u64,
    #[serde(serialize_with = "number")]
    pub cost: f64,
    pub metadata: Metadata<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flow_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_id: Option<&'a str>,
    pub timestamp: u64,
    pub completed_at: u64,
}

/// What the block (or its failure) produced, ready to be written as a result.
#[derive(Debug)]
pub struct Outcome<'a> {
    pub status: Status,
    pub result: Option<ResultRef<'a>>,
    pub error: Option<&'a TaskError>,
    pub attempts: u32,
    pub latency_ms: u64,
    pub cost: f64,
    pub device: Option<&'a str>,
}

/// Per-worker facts every result carries.
#[derive(Debug, Clone, Copy)]
pub struct WorkerFacts<'a> {
    pub worker_id: &'a str,
    pub sandbox: bool,
}

impl<'a> ExecResult<'a> {
    pub fn new(
        ids: &Ids<'a>,
        block_type: Option<&'a str>,
        outcome: &Outcome<'a>,
        worker: WorkerFacts<'a>,
        now_ms: u64,
    ) -> Self {
        let top = ids.all_three();
        let err = outcome.error;
        // The Router's validator reads `provider_id` and `job.type` on every result: an
        // answered assignment that named neither (no `executor`, no usable `job.type`) gets
        // empty strings. Only the DLQ entry of an unanswerable payload leaves them out.
        let answered = ids.assignment_id.map(|_| "");
        ExecResult {
            version: VERSION,
            assignment_id: ids.assignment_id,
            request_id: ids.request_id,
            status: outcome.status.as_str(),
            provider_id: ids.provider_id.or(answered),
            job: block_type.or(answered).map(|kind| JobRef { kind }),
            result: outcome.result,
            error: err.map(ErrorObject::from),
            error_code: err.map(|e| e.code.name()),
            error_type: err.map(TaskError::error_type),
            error_message: err.map(|e| e.message.as_str()),
            attempts: outcome.attempts,
            latency_ms: outcome.latency_ms,
            cost: outcome.cost,
            metadata: Metadata {
                block_type,
                provider_id: ids.provider_id,
                worker_id: worker.worker_id,
                run_id: if top { None } else { ids.run_id },
                device: outcome.device,
                sandbox: worker.sandbox,
            },
            trace_id: ids.trace_id,
            tenant_id: ids.tenant_id,
            run_id: ids.run_id.filter(|_| top),
            flow_id: ids.flow_id.filter(|_| top),
            step_id: ids.step_id.filter(|_| top),
            timestamp: now_ms,
            completed_at: now_ms,
        }
    }
}

/// Where the DLQ entry's copy of the original message goes.
#[derive(Debug, Serialize)]
pub enum Original<'a> {
    #[serde(rename = "assignment")]
    Assignment(&'a serde_json::value::RawValue),
    /// The assignment with its large members left out, to fit `max_payload`
    /// (`contract::dead_letter`; [`Truncated`] names what was left out).
    #[serde(rename = "assignment")]
    Shortened(serde_json::Value),
    #[serde(rename = "payload")]
    Text(&'a str),
    #[serde(rename = "payload_base64")]
    Base64(String),
}

/// `DeadLetter`: the error result plus why it was dead-lettered and the original message.
#[derive(Debug, Serialize)]
pub struct DeadLetter<'a> {
    #[serde(flatten)]
    pub result: ExecResult<'a>,
    pub dlq_reason: &'static str,
    pub worker_id: &'a str,
    pub failed_at: u64,
    /// `None` only when not even a shortened copy fits (`truncated` says so).
    #[serde(flatten)]
    pub original: Option<Original<'a>>,
    /// Present when the copy of the original was shortened to fit NATS `max_payload`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncated: Option<Truncated>,
}

/// `"truncated"` of a DLQ entry whose copy of the original was shortened to fit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Truncated {
    /// The original message's size, bytes (as received; decoded for `payload_base64`).
    pub original_bytes: usize,
    /// For `payload` / `payload_base64`: how many bytes of its start are kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept_bytes: Option<usize>,
    /// For `assignment`: the members left out, as dotted paths (`job.content`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dropped: Vec<String>,
}

/// Why something went to the DLQ.
pub mod dlq_reason {
    pub const UNPARSEABLE: &str = "unparseable";
    pub const INVALID_ASSIGNMENT: &str = "invalid_assignment";
    pub const NON_RETRYABLE: &str = "non_retryable";
    pub const RETRIES_EXHAUSTED: &str = "retries_exhausted";
    pub const OVERLOADED: &str = "overloaded";
    pub const QUOTA_EXCEEDED: &str = "quota_exceeded";
}

#[derive(Debug, Serialize)]
pub struct ApprovalRequest<'a> {
    pub assignment_id: &'a str,
    pub tenant_id: &'a str,
    pub prompt: &'a str,
    pub approvers: &'a [&'a str],
    pub expires_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<&'a str>,
}

fn fast_result<S: Serializer>(v: &Option<ResultRef<'_>>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(ResultRef::Value(v)) => super::fastjson::FastJson(v).serialize(s),
        Some(ResultRef::Json(text)) => match std::str::from_utf8(text) {
            Ok(text) => super::fastjson::raw(s, text),
            Err(_) => s.serialize_none(), // not what `ResultBody::Json` promises
        },
        None => s.serialize_none(),
    }
}

fn number<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if whole(*v) {
        s.serialize_i64(*v as i64)
    } else {
        s.serialize_f64(*v)
    }
}

/// Whether `cost` is written as an integer.
fn whole(v: f64) -> bool {
    v.fract() == 0.0 && v.abs() < 9.0e15
}

/// A message the hot path writes directly ([`encode_json`]): the same bytes as its serde
/// derive gives (property tests below), without serde's per-field machinery and
/// byte-by-byte escaping, and with the result value written straight into the message
/// instead of through a raw value (issue 12, seventh round). The derive stays the
/// definition the DLQ entry (`#[serde(flatten)]`) and the tests use.
pub trait WriteJson {
    fn write_json<O: Out>(&self, out: &mut O);
}

impl ErrorObject<'_> {
    fn write_into<O: Out>(&self, o: &mut Object<'_, O>) {
        o.u64("code", u64::from(self.code));
        o.str("message", self.message);
        o.bool("retryable", self.retryable);
    }
}

impl WriteJson for Ack<'_> {
    fn write_json<O: Out>(&self, out: &mut O) {
        let mut o = Object::new(out);
        o.str("version", self.version);
        o.str("assignment_id", self.assignment_id);
        o.str("status", self.status);
        o.str("message", self.message);
        o.opt_str("request_id", self.request_id);
        o.opt_str("trace_id", self.trace_id);
        o.opt_str("tenant_id", self.tenant_id);
        o.u64("acknowledged_at", self.acknowledged_at);
        if let Some(e) = &self.error {
            o.object("error", |o| e.write_into(o));
        }
        o.end();
    }
}

impl WriteJson for ExecResult<'_> {
    fn write_json<O: Out>(&self, out: &mut O) {
        let mut o = Object::new(out);
        o.str("version", self.version);
        o.opt_str("assignment_id", self.assignment_id);
        o.opt_str("request_id", self.request_id);
        o.str("status", self.status);
        o.opt_str("provider_id", self.provider_id);
        if let Some(job) = &self.job {
            o.object("job", |o| o.str("type", job.kind));
        }
        match self.result {
            Some(ResultRef::Value(v)) => o.value("result", v),
            Some(ResultRef::Json(text)) => o.json("result", text),
            None => {}
        }
        if let Some(e) = &self.error {
            o.object("error", |o| e.write_into(o));
        }
        o.opt_str("error_code", self.error_code);
        o.opt_str("error_type", self.error_type);
        o.opt_str("error_message", self.error_message);
        o.u64("attempts", u64::from(self.attempts));
        o.u64("latency_ms", self.latency_ms);
        if whole(self.cost) {
            o.i64("cost", self.cost as i64);
        } else {
            o.f64("cost", self.cost);
        }
        let m = &self.metadata;
        o.object("metadata", |o| {
            o.opt_str("block_type", m.block_type);
            o.opt_str("provider_id", m.provider_id);
            o.str("worker_id", m.worker_id);
            o.opt_str("run_id", m.run_id);
            o.opt_str("device", m.device);
            if m.sandbox {
                o.bool("sandbox", true);
            }
        });
        o.opt_str("trace_id", self.trace_id);
        o.opt_str("tenant_id", self.tenant_id);
        o.opt_str("run_id", self.run_id);
        o.opt_str("flow_id", self.flow_id);
        o.opt_str("step_id", self.step_id);
        o.u64("timestamp", self.timestamp);
        o.u64("completed_at", self.completed_at);
        o.end();
    }
}

thread_local! {
    // One growing buffer per thread: a message is written into its spare capacity and
    // split off, so steady-state encoding reuses the same allocation.
    static ENCODE_BUF: RefCell<BytesMut> = RefCell::new(BytesMut::with_capacity(64 * 1024));
}

/// Serialises `v` as JSON into the thread's reusable buffer.
pub fn encode<T: Serialize>(v: &T) -> Bytes {
    ENCODE_BUF.with(|cell| {
        let mut buf = cell.borrow_mut();
        if buf.capacity() < 4096 {
            buf.reserve(64 * 1024);
        }
        let mut w = (&mut *buf).writer();
        if serde_json::to_writer(&mut w, v).is_err() {
            // Serialising our own wire structs cannot fail; keep the buffer clean anyway.
            buf.clear();
            return Bytes::from_static(b"{}");
        }
        buf.split().freeze()
    })
}

/// Writes `v` directly into the thread's reusable buffer ([`WriteJson`]).
pub fn encode_json<T: WriteJson>(v: &T) -> Bytes {
    ENCODE_BUF.with(|cell| {
        let mut buf = cell.borrow_mut();
        if buf.capacity() < 4096 {
            buf.reserve(64 * 1024);
        }
        v.write_json(&mut *buf);
        buf.split().freeze()
    })
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// ISO-8601 UTC with microseconds, as the health body and logs use.
pub fn iso_now() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::codes::ErrorCode;
    use proptest::prelude::*;

    fn golden(name: &str) -> serde_json::Value {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).expect("fixture");
        serde_json::from_str(&text).expect("fixture is JSON")
    }

    fn ids() -> Ids<'static> {
        Ids {
            assignment_id: Some("7f1c2e9a-3b4d-4e5f-8a6b-0c1d2e3f4a5b"),
            request_id: Some("0a9b8c7d-6e5f-4a3b-9c2d-1e0f9a8b7c6d"),
            tenant_id: Some("acme"),
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736"),
            provider_id: Some("openai:gpt-4o"),
            ..Ids::default()
        }
    }

    const WORKER: WorkerFacts<'static> = WorkerFacts {
        worker_id: "worker-1",
        sandbox: false,
    };

    #[test]
    fn success_result_matches_the_golden_example() {
        let body = serde_json::json!({"status_code": 200, "body": "{\"output\":\"processed\"}",
            "headers": {"Content-Type": "application/json"}});
        let outcome = Outcome {
            status: Status::Success,
            result: Some(ResultRef::Value(&body)),
            error: None,
            attempts: 1,
            latency_ms: 150,
            cost: 0.0,
            device: None,
        };
        let r = ExecResult::new(
            &ids(),
            Some("http.request"),
            &outcome,
            WORKER,
            1640995200150,
        );
        let got: serde_json::Value = serde_json::from_slice(&encode_json(&r)).expect("json");
        assert_eq!(got, golden("result-success.json"));
    }

    #[test]
    fn error_result_matches_the_golden_example() {
        let body = serde_json::json!({"status_code": 503, "body": "{\"error\":\"busy\"}",
            "headers": {"Content-Type": "application/json"}});
        let err = TaskError::retryable(
            ErrorCode::HttpError,
            "upstream answered 503 Service Unavailable after 2 attempts",
        )
        .with_type("5xx");
        let outcome = Outcome {
            status: Status::Error,
            result: Some(ResultRef::Value(&body)),
            error: Some(&err),
            attempts: 2,
            latency_ms: 612,
            cost: 0.0,
            device: None,
        };
        let r = ExecResult::new(
            &ids(),
            Some("http.request"),
            &outcome,
            WORKER,
            1640995200762,
        );
        let got: serde_json::Value = serde_json::from_slice(&encode_json(&r)).expect("json");
        assert_eq!(got, golden("result-error.json"));
    }

    #[test]
    fn provider_and_job_type_are_on_every_answered_result() {
        let outcome = Outcome {
            status: Status::Success,
            result: None,
            error: None,
            attempts: 1,
            latency_ms: 1,
            cost: 0.0,
            device: None,
        };
        let bare = Ids {
            assignment_id: Some("a-1"),
            tenant_id: Some("acme"),
            ..Ids::default()
        };
        let v: serde_json::Value = serde_json::from_slice(&encode_json(&ExecResult::new(
            &bare, None, &outcome, WORKER, 1,
        )))
        .expect("json");
        assert_eq!(
            (&v["provider_id"], &v["job"]),
            (&"".into(), &serde_json::json!({"type": ""}))
        );
        // Named in metadata only when the assignment named them.
        assert!(
            v["metadata"].get("provider_id").is_none() && v["metadata"].get("block_type").is_none()
        );
        // The DLQ entry of an unanswerable payload supplies neither.
        let v: serde_json::Value = serde_json::from_slice(&encode_json(&ExecResult::new(
            &Ids::default(),
            None,
            &outcome,
            WORKER,
            1,
        )))
        .expect("json");
        assert!(
            v.get("provider_id").is_none() && v.get("job").is_none(),
            "{v}"
        );
    }

    #[test]
    fn run_id_goes_top_level_only_with_flow_and_step() {
        let outcome = Outcome {
            status: Status::Success,
            result: None,
            error: None,
            attempts: 1,
            latency_ms: 1,
            cost: 0.5,
            device: None,
        };
        let mut i = ids();
        i.run_id = Some("run-1");
        let v: serde_json::Value = serde_json::from_slice(&encode_json(&ExecResult::new(
            &i, None, &outcome, WORKER, 1,
        )))
        .expect("json");
        assert!(v.get("run_id").is_none());
        assert_eq!(v["metadata"]["run_id"], "run-1");
        assert_eq!(v["cost"], 0.5);
        i.flow_id = Some("flow-1");
        i.step_id = Some("step-1");
        let v: serde_json::Value = serde_json::from_slice(&encode_json(&ExecResult::new(
            &i, None, &outcome, WORKER, 1,
        )))
        .expect("json");
        assert_eq!(
            (&v["run_id"], &v["flow_id"], &v["step_id"]),
            (&"run-1".into(), &"flow-1".into(), &"step-1".into())
        );
        assert!(v["metadata"].get("run_id").is_none());
    }

    fn direct<T: WriteJson>(v: &T) -> Vec<u8> {
        let mut out = Vec::new();
        v.write_json(&mut out);
        out
    }

    fn arb_text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[a-z0-9:-]{0,24}".prop_map(String::from),
            Just("quote \" back \\ nl \n ctl \u{1} é".to_owned()),
        ]
    }

    fn arb_ids() -> impl Strategy<Value = [Option<String>; 8]> {
        proptest::array::uniform8(proptest::option::of(arb_text()))
    }

    fn ids_of(t: &[Option<String>; 8]) -> Ids<'_> {
        Ids {
            assignment_id: t[0].as_deref(),
            request_id: t[1].as_deref(),
            tenant_id: t[2].as_deref(),
            trace_id: t[3].as_deref(),
            run_id: t[4].as_deref(),
            flow_id: t[5].as_deref(),
            step_id: t[6].as_deref(),
            provider_id: t[7].as_deref(),
        }
    }

    fn arb_error() -> impl Strategy<Value = Option<TaskError>> {
        let kinds = prop_oneof![Just(None), Just(Some("5xx")), Just(Some("timeout"))];
        proptest::option::of(
            (arb_text(), any::<bool>(), 0..ErrorCode::ALL.len(), kinds).prop_map(
                |(message, retryable, code, kind)| {
                    let code = ErrorCode::ALL[code];
                    let e = if retryable {
                        TaskError::retryable(code, message)
                    } else {
                        TaskError::new(code, message)
                    };
                    match kind {
                        Some(k) => e.with_type(k),
                        None => e,
                    }
                },
            ),
        )
    }

    fn arb_cost() -> impl Strategy<Value = f64> {
        prop_oneof![
            Just(0.0),
            Just(-0.0),
            Just(9.0e15),
            Just(f64::NAN),
            Just(f64::INFINITY),
            (0u32..1000).prop_map(f64::from),
            any::<f64>(),
        ]
    }

    proptest! {
        #[test]
        fn an_ack_is_written_as_its_serde_derive_writes_it(
            t in arb_ids(),
            message in arb_text(),
            error in arb_error(),
            now in any::<u64>(),
        ) {
            let ids = ids_of(&t);
            let status = if error.is_some() { AckStatus::Rejected } else { AckStatus::Accepted };
            let id = ids.assignment_id.unwrap_or_default();
            let ack = Ack::new(&ids, id, status, &message, error.as_ref(), now);
            prop_assert_eq!(direct(&ack), serde_json::to_vec(&ack).expect("json"));
            prop_assert_eq!(&encode_json(&ack)[..], &encode(&ack)[..]);
        }

        #[test]
        fn a_result_is_written_as_its_serde_derive_writes_it(
            t in arb_ids(),
            block_type in proptest::option::of(arb_text()),
            content in proptest::option::of(arb_text()),
            error in arb_error(),
            (attempts, latency_ms, now) in (any::<u32>(), any::<u64>(), any::<u64>()),
            cost in arb_cost(),
            device in proptest::option::of(arb_text()),
            sandbox in any::<bool>(),
        ) {
            let ids = ids_of(&t);
            let result = content.map(|c| serde_json::json!({"content": c, "size": attempts,
                "n": [-1, 2.5, null, true], "nested": {"k": latency_ms}}));
            // A block's own JSON text (`ResultBody::Json`) half of the time.
            let text = result.as_ref().filter(|_| sandbox).map(|v| serde_json::to_vec(v).expect("json"));
            let outcome = Outcome {
                status: if error.is_some() { Status::Error } else { Status::Success },
                result: match &text {
                    Some(t) => Some(ResultRef::Json(t)),
                    None => result.as_ref().map(ResultRef::Value),
                },
                error: error.as_ref(),
                attempts,
                latency_ms,
                cost,
                device: device.as_deref(),
            };
            let worker = WorkerFacts { worker_id: "worker \"1\"", sandbox };
            let r = ExecResult::new(&ids, block_type.as_deref(), &outcome, worker, now);
            prop_assert_eq!(direct(&r), serde_json::to_vec(&r).expect("json"));
            if let (Some(t), Some(v)) = (&text, &result) {
                // Written text and a built value give the same message.
                let built = Outcome { result: Some(ResultRef::Value(v)), ..outcome };
                let r2 = ExecResult::new(&ids, block_type.as_deref(), &built, worker, now);
                prop_assert_eq!(direct(&r2), direct(&r));
                let body = ResultBody::Json(t.clone());
                prop_assert_eq!(&*body.to_value(), v);
            }
        }
    }
}
