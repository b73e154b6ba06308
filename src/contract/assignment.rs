//! `ExecAssignment`: parsed in place by simd-json, read through borrowed views, validated
//! into the contract's codes. Nothing here copies the job; blocks decode it from `job`.

use std::borrow::Cow;
use std::time::Duration;

use simd_json::prelude::*;
use simd_json::BorrowedValue;

use super::codes::ErrorCode;
use super::error::TaskError;
use super::fields::{id_string, Fields};

/// Longest `assignment_id` the worker answers (CONTRACT.md).
pub const MAX_ASSIGNMENT_ID_LEN: usize = 128;
/// Deepest JSON nesting parsed; deeper payloads are refused before parsing.
pub const MAX_JSON_DEPTH: usize = 64;

/// The NATS headers the Router may set on an assignment.
#[derive(Debug, Default, Clone)]
pub struct AssignmentHeaders {
    pub tenant_id: Option<String>,
    pub version: Option<String>,
    pub trace_id: Option<String>,
    pub traceparent: Option<String>,
}

/// Why a payload could not even be answered (DLQ with the raw payload only).
#[derive(Debug, Clone)]
pub struct Unanswerable {
    pub error: TaskError,
    /// Set when the payload was a JSON object (the DLQ then carries it as `assignment`).
    pub parsed_object: bool,
}

/// Worker-side retry settings (`retry_config` or the Router's `options.retry`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub multiplier: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            multiplier: 2.0,
        }
    }
}

impl RetryPolicy {
    /// Delay before attempt `next` (2 for the first retry): 100, 200, 400 ms … capped.
    pub fn backoff(&self, next: u32) -> Duration {
        let exp = next.saturating_sub(2).min(30) as i32;
        let ms = self.initial_backoff.as_millis() as f64 * self.multiplier.powi(exp);
        Duration::from_millis(ms.min(self.max_backoff.as_millis() as f64) as u64)
    }
}

/// The envelope of one assignment, borrowing from the parsed message.
#[derive(Debug)]
pub struct Assignment<'a> {
    pub assignment_id: &'a str,
    pub request_id: Option<String>,
    pub tenant_id: Option<Cow<'a, str>>,
    pub trace_id: Option<Cow<'a, str>>,
    pub run_id: Option<&'a str>,
    pub flow_id: Option<&'a str>,
    pub step_id: Option<&'a str>,
    pub provider_id: Option<&'a str>,
    /// `job.type` as sent (aliases are resolved by the block registry).
    pub job_type: Option<&'a str>,
    pub job: Option<Fields<'a, 'a>>,
    pub deadline: Duration,
    pub retry: RetryPolicy,
    pub priority: i64,
}

/// Settings that shape parsing.
#[derive(Debug, Clone, Copy)]
pub struct ParseLimits {
    pub default_timeout: Duration,
    pub max_timeout: Duration,
}

/// Refuses JSON nested deeper than `max` without building anything (no recursion).
pub fn check_depth(raw: &[u8], max: usize) -> Result<(), TaskError> {
    let (mut depth, mut in_str, mut esc) = (0usize, false, false);
    for &b in raw {
        if in_str {
            match (esc, b) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return Err(TaskError::new(
                        ErrorCode::InvalidInput,
                        format!("JSON nested deeper than {max} levels"),
                    ));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// The top-level `"tenant_id"` string of a raw assignment, found without parsing: a scan
/// that stops at the key (the Router writes it near the front). Used to pick a fair-queue
/// lane before the pipeline parses the payload; escapes are left as written (a lane key,
/// not the tenant the pipeline validates). `None` when absent, not a string, or not UTF-8.
pub fn peek_tenant_id(raw: &[u8]) -> Option<&str> {
    const KEY: &[u8] = b"tenant_id";
    let mut i = raw.iter().take_while(|b| b.is_ascii_whitespace()).count();
    if raw.get(i) != Some(&b'{') {
        return None;
    }
    let mut depth = 0usize;
    // At depth 1 a string is a key when it follows `{` or `,`.
    let mut key_next = false;
    while i < raw.len() {
        match raw[i] {
            b'"' => {
                let start = i + 1;
                let end = string_end(raw, start)?;
                let is_key = depth == 1 && key_next;
                key_next = false;
                i = end + 1;
                if is_key && &raw[start..end] == KEY {
                    i += raw[i..]
                        .iter()
                        .take_while(|b| b.is_ascii_whitespace())
                        .count();
                    if raw.get(i) != Some(&b':') {
                        return None;
                    }
                    i += 1;
                    i += raw[i..]
                        .iter()
                        .take_while(|b| b.is_ascii_whitespace())
                        .count();
                    if raw.get(i) != Some(&b'"') {
                        return None;
                    }
                    let end = string_end(raw, i + 1)?;
                    return std::str::from_utf8(&raw[i + 1..end]).ok();
                }
                continue;
            }
            b'{' => {
                depth += 1;
                key_next = depth == 1;
            }
            b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return None;
                }
            }
            b',' => key_next = depth == 1,
            _ => {}
        }
        i += 1;
    }
    None
}

/// Index of the `"` closing the string that starts at `from`.
fn string_end(raw: &[u8], from: usize) -> Option<usize> {
    let mut esc = false;
    for (k, &b) in raw.get(from..)?.iter().enumerate() {
        match (esc, b) {
            (true, _) => esc = false,
            (false, b'\\') => esc = true,
            (false, b'"') => return Some(from + k),
            _ => {}
        }
    }
    None
}

/// Parses `buf` in place. Errors are unanswerable: no `assignment_id` can be trusted.
pub fn parse_value(buf: &mut [u8]) -> Result<BorrowedValue<'_>, Unanswerable> {
    check_depth(buf, MAX_JSON_DEPTH).map_err(|error| Unanswerable {
        error,
        parsed_object: false,
    })?;
    parse_with_thread_buffers(buf).map_err(|e| Unanswerable {
        error: TaskError::new(
            ErrorCode::InvalidFormat,
            format!("assignment is not valid JSON: {e}"),
        ),
        parsed_object: false,
    })
}

/// Largest input parsed with the thread's reused buffers; a larger one gets buffers of its
/// own, so that one big assignment does not pin its size on the thread.
const REUSED_BUFFERS_UP_TO: usize = 256 << 10;

thread_local! {
    /// simd-json's working buffers (input copy, structural indexes, strings, stack), kept
    /// per thread: made fresh they were five allocations per assignment (issue 12).
    static BUFFERS: std::cell::RefCell<simd_json::Buffers> =
        std::cell::RefCell::new(simd_json::Buffers::new(4096));
}

fn parse_with_thread_buffers(buf: &mut [u8]) -> simd_json::Result<BorrowedValue<'_>> {
    if buf.len() > REUSED_BUFFERS_UP_TO {
        return simd_json::to_borrowed_value(buf);
    }
    BUFFERS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffers) => simd_json::to_borrowed_value_with_buffers(buf, &mut buffers),
        Err(_) => simd_json::to_borrowed_value(buf),
    })
}

fn header_trace_id(h: &AssignmentHeaders) -> Option<String> {
    if let Some(t) = h.trace_id.as_deref().filter(|t| !t.is_empty()) {
        return Some(t.to_owned());
    }
    // W3C traceparent: version-traceid-parentid-flags
    let tp = h.traceparent.as_deref()?;
    let mut parts = tp.split('-');
    let _version = parts.next()?;
    let trace = parts.next()?;
    (trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit())).then(|| trace.to_owned())
}

impl<'a> Assignment<'a> {
    /// Reads the envelope. `Err` only when the assignment cannot be answered at all
    /// (not an object, or no usable `assignment_id`); every other problem is left for
    /// [`Assignment::validate`] so that the answer can echo the ids.
    pub fn read(
        value: &'a BorrowedValue<'a>,
        headers: &AssignmentHeaders,
        limits: ParseLimits,
    ) -> Result<(Assignment<'a>, Option<TaskError>), Unanswerable> {
        if !value.is_object() {
            return Err(Unanswerable {
                error: TaskError::new(ErrorCode::InvalidFormat, "assignment is not a JSON object"),
                parsed_object: false,
            });
        }
        let top = Fields::new(value, "");
        let assignment_id = assignment_id_of(&top)?;

        // Ids are read leniently (an id of the wrong type is ignored for echoing, and
        // reported by validate()).
        let str_of = |f: &Fields<'a, 'a>, k: &str| f.get(k).and_then(|v| v.as_str());
        let correlation = top.get("correlation").filter(|v| v.is_object());
        let corr = correlation.map(|c| Fields::new(c, "correlation"));
        let from_either = |k: &str| {
            str_of(&top, k)
                .or_else(|| corr.as_ref().and_then(|c| str_of(c, k)))
                .filter(|s| !s.is_empty())
        };
        let executor = top
            .get("executor")
            .filter(|v| v.is_object())
            .map(|e| Fields::new(e, "executor"));
        let job = top
            .get("job")
            .filter(|v| v.is_object())
            .map(|j| Fields::new(j, "job"));

        let mut a = Assignment {
            assignment_id,
            request_id: top.get("request_id").and_then(id_string),
            tenant_id: str_of(&top, "tenant_id")
                .filter(|s| !s.is_empty())
                .map(Cow::Borrowed)
                .or_else(|| {
                    headers
                        .tenant_id
                        .clone()
                        .filter(|s| !s.is_empty())
                        .map(Cow::Owned)
                }),
            trace_id: from_either("trace_id")
                .map(Cow::Borrowed)
                .or_else(|| header_trace_id(headers).map(Cow::Owned)),
            run_id: from_either("run_id"),
            flow_id: from_either("flow_id"),
            step_id: from_either("step_id"),
            provider_id: executor.and_then(|e| str_of(&e, "provider_id")),
            job_type: job.and_then(|j| str_of(&j, "type")),
            job,
            deadline: limits.default_timeout,
            retry: RetryPolicy::default(),
            priority: 0,
        };
        let problem = a.validate(&top, headers, limits).err();
        Ok((a, problem))
    }

    fn validate(
        &mut self,
        top: &Fields<'a, 'a>,
        headers: &AssignmentHeaders,
        limits: ParseLimits,
    ) -> Result<(), TaskError> {
        self.validate_envelope(top, headers)?;
        let job = match top.get("job") {
            None => return Err(TaskError::missing("job")),
            Some(v) if v.is_object() => Fields::new(v, "job"),
            Some(_) => return Err(TaskError::format("job", "an object")),
        };
        match job.opt_str("type")? {
            None | Some("") => return Err(TaskError::missing("job.type")),
            Some(_) => {}
        }
        self.read_options(top, &job, limits)
    }

    /// The envelope around the job: id length, version (body, else header), ids, tenant,
    /// executor.
    fn validate_envelope(
        &self,
        top: &Fields<'a, 'a>,
        headers: &AssignmentHeaders,
    ) -> Result<(), TaskError> {
        if self.assignment_id.chars().count() > MAX_ASSIGNMENT_ID_LEN {
            return Err(TaskError::invalid(
                "assignment_id",
                format!("longer than {MAX_ASSIGNMENT_ID_LEN} characters"),
            ));
        }
        check_version(top, headers)?;
        if let Some(v) = top.get("request_id") {
            if id_string(v).is_none() {
                return Err(TaskError::format("request_id", "a string"));
            }
        }
        for key in ["trace_id", "run_id", "flow_id", "step_id"] {
            top.opt_str(key)?;
        }
        if self.tenant_id.is_none() {
            // Present but of the wrong type is a format error, absent (or empty) is missing.
            top.opt_str("tenant_id")?;
            return Err(TaskError::missing("tenant_id"));
        }
        if let Some(t) = self.tenant_id.as_deref() {
            validate_tenant(t)?;
        }
        if let Some(exec) = top.opt_object("executor")? {
            exec.opt_str("provider_id")?;
        }
        Ok(())
    }

    /// Deadline, retry policy and priority, from the job and `options` (or the original
    /// worker's top-level names).
    fn read_options(
        &mut self,
        top: &Fields<'a, 'a>,
        job: &Fields<'a, 'a>,
        limits: ParseLimits,
    ) -> Result<(), TaskError> {
        let options = top.opt_object("options")?;
        let timeout_ms = match job.opt_u64("timeout_ms")? {
            Some(ms) => Some(ms),
            None => match options {
                Some(o) => o.opt_u64("deadline_ms")?,
                None => None,
            },
        };
        if let Some(ms) = timeout_ms {
            if ms == 0 {
                return Err(TaskError::invalid("job.timeout_ms", "must be at least 1"));
            }
            self.deadline = Duration::from_millis(ms).min(limits.max_timeout);
        }
        self.deadline = self.deadline.min(limits.max_timeout);

        if let Some(rc) = top.opt_object("retry_config")? {
            self.retry = read_retry(&rc, "max_attempts", "initial_backoff_ms")?;
        } else if let Some(r) = options
            .map(|o| o.opt_object("retry"))
            .transpose()?
            .flatten()
        {
            self.retry = read_retry(&r, "max_attempts", "backoff_ms")?;
        }

        let priority = match options {
            Some(o) if o.has("priority") => o.opt_f64("priority")?,
            _ => top.opt_f64("priority")?,
        };
        self.priority = priority.unwrap_or(0.0) as i64;
        Ok(())
    }
}

/// `assignment_id`, without which nothing can be answered.
fn assignment_id_of<'a>(top: &Fields<'a, 'a>) -> Result<&'a str, Unanswerable> {
    let problem = match top.get("assignment_id").map(|v| v.as_str()) {
        Some(Some(s)) if !s.is_empty() => return Ok(s),
        None | Some(Some(_)) => TaskError::missing("assignment_id"),
        Some(None) => TaskError::format("assignment_id", "a string"),
    };
    Err(Unanswerable {
        error: problem,
        parsed_object: true,
    })
}

/// `version` must be "1": the body's, else the NATS header's.
fn check_version(top: &Fields<'_, '_>, headers: &AssignmentHeaders) -> Result<(), TaskError> {
    match top.opt_str("version")? {
        Some("1") => Ok(()),
        Some(v) => Err(TaskError::invalid(
            "version",
            format!("unsupported version {v:?}, expected \"1\""),
        )),
        None => match headers.version.as_deref() {
            Some("1") => Ok(()),
            Some(v) => Err(TaskError::invalid(
                "version",
                format!("unsupported version {v:?} (NATS header), expected \"1\""),
            )),
            None => Err(TaskError::missing("version")),
        },
    }
}

fn read_retry(r: &Fields<'_, '_>, attempts: &str, backoff: &str) -> Result<RetryPolicy, TaskError> {
    let mut p = RetryPolicy::default();
    if let Some(n) = r.opt_u64(attempts)? {
        if !(1..=20).contains(&n) {
            return Err(TaskError::invalid(
                "retry_config.max_attempts",
                "must be between 1 and 20",
            ));
        }
        p.max_attempts = n as u32;
    }
    if let Some(ms) = r.opt_u64(backoff)? {
        p.initial_backoff = Duration::from_millis(ms.min(600_000));
    }
    if let Some(ms) = r.opt_u64("max_backoff_ms")? {
        p.max_backoff = Duration::from_millis(ms.min(600_000));
    }
    if let Some(m) = r.opt_f64("multiplier")? {
        if !(1.0..=10.0).contains(&m) {
            return Err(TaskError::invalid(
                "retry_config.multiplier",
                "must be between 1 and 10",
            ));
        }
        p.multiplier = m;
    }
    p.max_backoff = p.max_backoff.max(p.initial_backoff);
    Ok(p)
}

/// A tenant id becomes a directory name and a key part: it must be one safe path segment.
pub fn validate_tenant(t: &str) -> Result<(), TaskError> {
    let ok = t.len() <= 128
        && t != "."
        && t != ".."
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@' | b':'));
    if ok {
        Ok(())
    } else {
        Err(TaskError::invalid(
            "tenant_id",
            "must be 1..=128 characters of [A-Za-z0-9-_.@:]",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ParseLimits = ParseLimits {
        default_timeout: Duration::from_secs(30),
        max_timeout: Duration::from_secs(3600),
    };

    fn check(json: &str) -> Result<Option<TaskError>, Unanswerable> {
        let mut buf = json.as_bytes().to_vec();
        let v = parse_value(&mut buf)?;
        let r = Assignment::read(&v, &AssignmentHeaders::default(), LIMITS).map(|(_, e)| e);
        r
    }

    #[test]
    fn peek_tenant_id_reads_only_the_top_level_key() {
        let peek = |s: &str| peek_tenant_id(s.as_bytes()).map(str::to_owned);
        let t = |s: &str| Some(s.to_owned());
        assert_eq!(
            peek(r#"{"version":"1","tenant_id":"acme","job":{}}"#),
            t("acme")
        );
        assert_eq!(peek(r#" { "tenant_id" :  "a b" } "#), t("a b"));
        // Nested keys, values that look like the key, and keys inside strings do not count.
        assert_eq!(
            peek(
                r#"{"job":{"tenant_id":"inner"},"x":"tenant_id","y":["tenant_id",{"tenant_id":"z"}],"tenant_id":"outer"}"#
            ),
            t("outer")
        );
        assert_eq!(
            peek(r#"{"note":"\"tenant_id\":\"fake\"","tenant_id":"real"}"#),
            t("real")
        );
        assert_eq!(peek(r#"{"tenant_id":"we\"ird"}"#), t(r#"we\"ird"#));
        for none in [
            r#"{"job":{"tenant_id":"inner"}}"#,
            r#"{"tenant_id":42}"#,
            r#"{"tenant_id":"unterminated"#,
            r#"[{"tenant_id":"in an array"}]"#,
            r#"["tenant_id","x"]"#,
            r#"{"a":1} {"tenant_id":"after the object"}"#,
            "",
            "not json",
        ] {
            assert_eq!(peek(none), None, "{none}");
        }
    }

    fn code(json: &str) -> u16 {
        match check(json) {
            Ok(Some(e)) => e.code.code(),
            Ok(None) => 0,
            Err(u) => 9000 + u.error.code.code() % 1000,
        }
    }

    #[test]
    fn the_routers_golden_assignment_is_valid() {
        let raw = include_str!("../../tests/fixtures/router-assignment.json");
        let mut buf = raw.as_bytes().to_vec();
        let v = parse_value(&mut buf).expect("parses");
        let (a, problem) =
            Assignment::read(&v, &AssignmentHeaders::default(), LIMITS).expect("answerable");
        assert!(problem.is_none(), "{problem:?}");
        assert_eq!(a.assignment_id, "7f1c2e9a-3b4d-4e5f-8a6b-0c1d2e3f4a5b");
        assert_eq!(
            a.trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(a.provider_id, Some("openai:gpt-4o"));
        assert_eq!(a.deadline, Duration::from_millis(5000));
        assert_eq!(a.retry.max_attempts, 2);
        assert_eq!(a.retry.initial_backoff, Duration::from_millis(200));
        assert_eq!(a.priority, 50);
    }

    #[test]
    fn codes_follow_the_contract_table() {
        let ok = r#"{"version":"1","assignment_id":"a","tenant_id":"t","job":{"type":"fs.get"}}"#;
        assert_eq!(code(ok), 0);
        assert_eq!(code("not json"), 9003);
        assert_eq!(code("[1,2]"), 9003);
        assert_eq!(code(r#"{"version":"1"}"#), 9002);
        assert_eq!(code(r#"{"assignment_id":""}"#), 9002);
        assert_eq!(code(r#"{"assignment_id":7}"#), 9003);
        let long = format!(
            r#"{{"version":"1","assignment_id":"{}","tenant_id":"t","job":{{"type":"x"}}}}"#,
            "a".repeat(129)
        );
        assert_eq!(code(&long), 1001);
        assert_eq!(
            code(r#"{"assignment_id":"a","tenant_id":"t","job":{"type":"x"}}"#),
            1002
        );
        assert_eq!(
            code(r#"{"version":"2","assignment_id":"a","tenant_id":"t","job":{"type":"x"}}"#),
            1001
        );
        assert_eq!(
            code(r#"{"version":1,"assignment_id":"a","tenant_id":"t","job":{"type":"x"}}"#),
            1003
        );
        assert_eq!(
            code(r#"{"version":"1","assignment_id":"a","job":{"type":"x"}}"#),
            1002
        );
        assert_eq!(
            code(r#"{"version":"1","assignment_id":"a","tenant_id":5,"job":{"type":"x"}}"#),
            1003
        );
        assert_eq!(
            code(r#"{"version":"1","assignment_id":"a","tenant_id":"../x","job":{"type":"x"}}"#),
            1001
        );
        assert_eq!(
            code(r#"{"version":"1","assignment_id":"a","tenant_id":"t"}"#),
            1002
        );
        assert_eq!(
            code(r#"{"version":"1","assignment_id":"a","tenant_id":"t","job":"x"}"#),
            1003
        );
        assert_eq!(
            code(r#"{"version":"1","assignment_id":"a","tenant_id":"t","job":{}}"#),
            1002
        );
        assert_eq!(
            code(
                r#"{"version":"1","assignment_id":"a","tenant_id":"t","job":{"type":"x","timeout_ms":"5"}}"#
            ),
            1003
        );
        assert_eq!(
            code(
                r#"{"version":"1","assignment_id":"a","tenant_id":"t","job":{"type":"x","timeout_ms":0}}"#
            ),
            1001
        );
        assert_eq!(
            code(
                r#"{"version":"1","assignment_id":"a","tenant_id":"t","job":{"type":"x"},"retry_config":{"max_attempts":0}}"#
            ),
            1001
        );
    }

    #[test]
    fn headers_supply_tenant_version_and_trace() {
        let mut buf = br#"{"assignment_id":"a","job":{"type":"fs.get"}}"#.to_vec();
        let v = parse_value(&mut buf).expect("parses");
        let h = AssignmentHeaders {
            tenant_id: Some("acme".into()),
            version: Some("1".into()),
            trace_id: None,
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        };
        let (a, problem) = Assignment::read(&v, &h, LIMITS).expect("answerable");
        assert!(problem.is_none(), "{problem:?}");
        assert_eq!(a.tenant_id.as_deref(), Some("acme"));
        assert_eq!(
            a.trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(code(&deep), 9001);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let p = RetryPolicy::default();
        assert_eq!(
            [p.backoff(2), p.backoff(3), p.backoff(4)],
            [100, 200, 400].map(Duration::from_millis)
        );
        let capped = RetryPolicy {
            max_backoff: Duration::from_millis(150),
            ..p
        };
        assert_eq!(capped.backoff(4), Duration::from_millis(150));
    }
}
