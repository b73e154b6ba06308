//! `ExecAssignment`: parsed in place by simd-json, read through borrowed views, validated
//! into the contract's codes. Nothing here copies the job; blocks decode it from `job`.

use std::borrow::Cow;
use std::time::Duration;

use simd_json::prelude::*;
use simd_json::BorrowedValue;

use super::codes::ErrorCode;
use super::error::TaskError;
use super::fields::{id_string, Fields};
use super::wire::Ids;

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
    /// The payload as it came, when parsing changed the buffer before it failed (values
    /// nested past the limit cut, [`cut_deep_values`]): the DLQ's copy is this one.
    pub sent: Option<Vec<u8>>,
    /// The parser refused a number: one it cannot represent may be to blame, and the
    /// payload is worth parsing again with such numbers cut
    /// ([`cut_unrepresentable_numbers`]).
    pub bad_number: bool,
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
    /// `job.type` as sent (aliases are resolved by the block registry), cut to its first
    /// [`MAX_JOB_TYPE_LEN`] bytes ([`echoed_job_type`]).
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

/// Refuses JSON nested deeper than `max_depth` before anything is built from it (what is
/// built would be dropped and written by recursion): [`more_brackets_than`], and only
/// beyond that the exact walk. The pipeline cuts such values instead
/// ([`cut_deep_values`]); this is the check alone, for `examples/parse_check_cost.rs`.
pub fn check_before_parse(raw: &[u8], max_depth: usize) -> Result<(), TaskError> {
    if more_brackets_than(raw, max_depth) {
        check_depth(raw, max_depth)?;
    }
    Ok(())
}

/// Whether `raw` has more than `max` opening brackets: `memchr` counts them a vector at a
/// time, and no more of them than the limit means no deeper nesting, so the exact walk
/// (3 ns a byte here, `examples/parse_check_cost.rs`) runs only past it.
fn more_brackets_than(raw: &[u8], max: usize) -> bool {
    memchr::memchr2_iter(b'{', b'[', raw).nth(max).is_some()
}

/// What a value nested past the limit reads as once cut: as much of this as its own bytes
/// hold, in a string of the same length.
const CUT_MARK: &[u8] = b"(nested too deep)";

/// Rewrites, in place, every array or object that opens deeper than `max` as a string of
/// the same length (`"(nested too deep)"`, or as much of it as fits, padded with spaces),
/// and returns the 1001 that the assignment gets for the first one (`Some(None)` when
/// every cut is in a member the worker ignores, [`only_in_ignored_members`]; `None` when
/// nothing was cut): the payload is then
/// parsed with no recursion past the limit and answered, refused, with its ids echoed, as
/// the contract asks of JSON that has an `assignment_id` (issue 12, nineteenth round;
/// before, such a payload went to the DLQ alone). No recursion here either: the walk
/// counts brackets outside strings, byte by byte (the caller runs it only past
/// [`more_brackets_than`]). The value cut is not checked for JSON grammar: the assignment
/// is refused either way. `Err` (1003) when a value to cut never closes: not JSON.
pub fn cut_deep_values(buf: &mut [u8], max: usize) -> Result<Option<Option<TaskError>>, TaskError> {
    let (mut first, mut depth, mut at) = (None, 0usize, 0usize);
    let mut cuts = Vec::new();
    while let Some(&b) = buf.get(at) {
        match b {
            b'"' => match string_end(buf, at + 1) {
                Some(end) => at = end,
                None => break, // not JSON: the parser says so
            },
            b'{' | b'[' if depth == max => {
                let end = value_end(buf, at).ok_or_else(|| {
                    TaskError::new(
                        ErrorCode::InvalidFormat,
                        format!(
                            "assignment is not valid JSON: a value nested deeper than {max} \
                             levels never closes (character {at})"
                        ),
                    )
                })?;
                fill_as_string(&mut buf[at..=end], CUT_MARK);
                cuts.push(at);
                first.get_or_insert_with(|| {
                    TaskError::new(
                        ErrorCode::InvalidInput,
                        format!("JSON nested deeper than {max} levels"),
                    )
                });
                at = end;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        at += 1;
    }
    Ok(first.map(|error| (!only_in_ignored_members(buf, &cuts)).then_some(error)))
}

/// Overwrites `region` (two bytes at least) with a JSON string of the same length: as much
/// of `mark` as fits, then spaces.
fn fill_as_string(region: &mut [u8], mark: &[u8]) {
    let last = region.len().saturating_sub(1);
    for (k, byte) in region.iter_mut().enumerate() {
        *byte = match k {
            0 => b'"',
            k if k == last => b'"',
            k => mark.get(k - 1).copied().unwrap_or(b' '),
        };
    }
}

/// What a number the worker cannot read reads as once cut: as much of this as its own
/// bytes hold, in a string of the same length.
const NUMBER_MARK: &[u8] = b"(number out of range)";

/// Rewrites, in place, every number that simd-json cannot represent (an integer beyond
/// 64 bits, `18446744073709551616`; a number beyond `f64`'s range, `1e400`) as a string of
/// the same length, and returns the 1001 that the assignment gets for the first one. Such
/// numbers are JSON all the same: the parser refused them ("InvalidNumber"), and the
/// assignment went to the DLQ alone, unanswered, even for a number in a field the worker
/// ignores (issue 12, nineteenth round). Now it is parsed again, answered and refused,
/// its ids echoed (a number cut to a string could otherwise be read as another value),
/// unless every such number is in a member the worker ignores (`Some(None)`: then it runs
/// as sent, [`only_in_ignored_members`]). `None` when there is no such number: the
/// parser's refusal stands. The rare path: run only after the parser refused a number,
/// walking every byte once.
pub fn cut_unrepresentable_numbers(buf: &mut [u8]) -> Option<Option<TaskError>> {
    let mut first = None;
    let mut at = 0usize;
    let mut cuts = Vec::new();
    while let Some(&b) = buf.get(at) {
        match b {
            b'"' => match string_end(buf, at + 1) {
                Some(end) => at = end + 1,
                None => break, // not JSON: the parser says so
            },
            b'-' | b'0'..=b'9' => {
                let len = buf[at..]
                    .iter()
                    .take_while(|b| matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                    .count();
                let token = &mut buf[at..at + len];
                if len >= 2 && !representable(token) {
                    first.get_or_insert_with(|| {
                        let shown = String::from_utf8_lossy(&token[..len.min(24)]).into_owned();
                        TaskError::new(
                            ErrorCode::InvalidInput,
                            format!(
                                "a number out of the range the worker reads (character {at}): \
                                 {shown}{}",
                                if len > 24 { "…" } else { "" }
                            ),
                        )
                    });
                    fill_as_string(token, NUMBER_MARK);
                    cuts.push(at);
                }
                at += len;
            }
            _ => at += 1,
        }
    }
    let error = first?;
    Some((!only_in_ignored_members(buf, &cuts)).then_some(error))
}

/// Whether simd-json reads the number `token`: an integer within `i64` (negative) or
/// `u64`, any other number finite as an `f64`. A token that is not a number at all counts
/// as readable: the parser refuses it, and rightly.
fn representable(token: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(token) else {
        return true;
    };
    let digits = text.strip_prefix('-').unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return if text.starts_with('-') {
            text.parse::<i64>().is_ok()
        } else {
            text.parse::<u64>().is_ok()
        };
    }
    text.parse::<f64>().map_or(true, f64::is_finite)
}

/// Index of the bracket closing the array or object that opens at `from`, brackets inside
/// strings not counted (either kind closes either kind: the value is cut, not read).
fn value_end(raw: &[u8], from: usize) -> Option<usize> {
    let (mut depth, mut at) = (0usize, from);
    while let Some(&b) = raw.get(at) {
        match b {
            b'"' => at = string_end(raw, at + 1)?,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(at);
                }
            }
            _ => {}
        }
        at += 1;
    }
    None
}

/// Rewrites, in place, every surrogate escape that is not half of a pair (`\ud800` with no
/// `\udc00`–`\udfff` escape right after it, or a low one alone) as `\ufffd`, the same six
/// bytes, and returns the 1003 that the assignment gets for the first one (none when each
/// is in a member the worker ignores, [`only_in_ignored_members`]). simd-json would
/// decode a lone high surrogate as U+0000 instead of refusing it
/// (simd-lite/simd-json#481, 0.15 to at least 0.18), so an id would be echoed changed and
/// a path, query parameter or body used changed; a lone low one it refuses, which would
/// make valid JSON grammar unanswerable. The escapes are walked from the first backslash,
/// each one skipped whole, so an escaped backslash is never taken for an escape's start.
pub fn mend_lone_surrogates(buf: &mut [u8]) -> Option<TaskError> {
    if !may_hold_a_surrogate_escape(buf) {
        return None;
    }
    let mut first = None;
    let mut from = 0;
    let mut mended = Vec::new();
    while let Some(at) = buf
        .get(from..)
        .and_then(|rest| memchr::memchr(b'\\', rest))
        .map(|k| from + k)
    {
        let half = |at: usize| match buf.get(at..at + 2) {
            Some(b"\\u") => buf.get(at + 2..at + 6).and_then(surrogate_half),
            _ => None,
        };
        from = match half(at) {
            Some(true) if half(at + 6) == Some(false) => at + 12,
            Some(_) => {
                first.get_or_insert_with(|| lone_surrogate(buf, at));
                if let Some(digits) = buf.get_mut(at + 2..at + 6) {
                    digits.copy_from_slice(b"fffd");
                }
                mended.push(at);
                at + 6
            }
            None if buf.get(at + 1) == Some(&b'u') => at + 6,
            None => at + 2,
        };
    }
    first.filter(|_| !only_in_ignored_members(buf, &mended))
}

/// Whether `\ud` or `\uD` occurs anywhere. Thirty-two places at a time with no branch
/// among them, so that the compiler can make them vector compares, and an escape-dense
/// text costs what a plain one does.
fn may_hold_a_surrogate_escape(raw: &[u8]) -> bool {
    const CHUNK: usize = 32;
    let starts = raw.len().saturating_sub(2);
    let at = |from: usize| raw.get(from..from + starts).unwrap_or_default();
    let (first, second, third) = (at(0), at(1), at(2));
    let hit = |a: u8, b: u8, c: u8| {
        u8::from(a == b'\\') & u8::from(b == b'u') & u8::from(c | 0x20 == b'd')
    };
    let mut chunks = first
        .chunks_exact(CHUNK)
        .zip(second.chunks_exact(CHUNK))
        .zip(third.chunks_exact(CHUNK));
    if chunks.any(|((a, b), c)| {
        a.iter()
            .zip(b)
            .zip(c)
            .fold(0u8, |seen, ((&a, &b), &c)| seen | hit(a, b, c))
            != 0
    }) {
        return true;
    }
    let tail = starts - starts % CHUNK;
    (tail..starts).any(|i| hit(first[i], second[i], third[i]) != 0)
}

/// Refuses JSON nested deeper than `max` (no recursion), walking every byte: what
/// [`check_before_parse`] does only when `memchr` counts more opening brackets than `max`.
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

/// The 1003 for a lone surrogate escape at `at`, out of line: the rare end of a check that
/// every assignment goes through.
#[cold]
#[inline(never)]
fn lone_surrogate(buf: &[u8], at: usize) -> TaskError {
    let escape = String::from_utf8_lossy(buf.get(at + 2..at + 6).unwrap_or_default());
    TaskError::new(
        ErrorCode::InvalidFormat,
        format!(
            "a string holds the surrogate escape `\\u{escape}` (character {at}) without \
             its other half: not Unicode text (read as U+FFFD)"
        ),
    )
}

/// For the four hex digits of a `\u` escape: `Some(true)` for a high surrogate
/// (D800–DBFF), `Some(false)` for a low one (DC00–DFFF), `None` otherwise.
fn surrogate_half(hex: &[u8]) -> Option<bool> {
    let digits = std::str::from_utf8(hex).ok()?;
    if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    match u16::from_str_radix(digits, 16).ok()? {
        0xD800..=0xDBFF => Some(true),
        0xDC00..=0xDFFF => Some(false),
        _ => None,
    }
}

/// The top-level `"tenant_id"` string of a raw assignment, found without parsing: a scan
/// that stops at the key (the Router writes it near the front). Used to pick a fair-queue
/// lane before the pipeline parses the payload; escapes are left as written (a lane key,
/// not the tenant the pipeline validates). `None` when absent, not a string, or not UTF-8.
pub fn peek_tenant_id(raw: &[u8]) -> Option<&str> {
    peek_top_level_str(raw, b"tenant_id")
}

/// The top-level `"assignment_id"` string of a raw assignment, as [`peek_tenant_id`] finds
/// its tenant: to find a queued assignment that a cancel names.
pub fn peek_assignment_id(raw: &[u8]) -> Option<&str> {
    peek_top_level_str(raw, b"assignment_id")
}

/// The string value of the top-level `key`, escapes left as written.
fn peek_top_level_str<'a>(raw: &'a [u8], key: &[u8]) -> Option<&'a str> {
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
                if is_key && &raw[start..end] == key {
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

/// The top-level members the worker reads (`Assignment::read`). A value mended or cut
/// anywhere else is in a member the contract says to ignore ("Unknown fields are ignored";
/// `decision`, `metadata`), and does not refuse the assignment.
const READ_MEMBERS: [&str; 14] = [
    "version",
    "assignment_id",
    "request_id",
    "tenant_id",
    "trace_id",
    "run_id",
    "flow_id",
    "step_id",
    "correlation",
    "executor",
    "job",
    "options",
    "retry_config",
    "priority",
];

/// Whether every place in `changed` (ascending offsets into `buf`, a JSON object) lies
/// inside the value of a top-level member the worker does not read. A place in a key, at
/// the top level itself, or under a key written with an escape (compared as written, it
/// might read as `job`) counts as read. One walk, strings skipped whole; the rare path.
pub fn only_in_ignored_members(buf: &[u8], changed: &[usize]) -> bool {
    let mut changed = changed.iter().copied().peekable();
    let (mut depth, mut at) = (0usize, 0usize);
    let mut key: Option<&[u8]> = None;
    while changed.peek().is_some() {
        let Some(&b) = buf.get(at) else {
            return false;
        };
        let end = match b {
            b'"' => match string_end(buf, at + 1) {
                Some(end) => end,
                None => return false,
            },
            _ => at,
        };
        let is_key = b == b'"'
            && depth == 1
            && buf[end + 1..]
                .iter()
                .find(|c| !c.is_ascii_whitespace())
                .is_some_and(|&c| c == b':');
        let ignored = depth >= 1
            && !is_key
            && key.is_some_and(|k| {
                !k.contains(&b'\\') && !READ_MEMBERS.iter().any(|m| m.as_bytes() == k)
            });
        while changed.next_if(|&o| o <= end).is_some() {
            if !ignored {
                return false;
            }
        }
        match b {
            b'"' if is_key => key = Some(&buf[at + 1..end]),
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        at = end + 1;
    }
    true
}

/// A payload parsed in place, with what was mended before parsing it.
#[derive(Debug)]
pub struct Parsed<'a> {
    pub value: BorrowedValue<'a>,
    /// The 1001 of a value nested past the limit, cut ([`cut_deep_values`]), else the
    /// 1003 of a lone surrogate escape read as U+FFFD ([`mend_lone_surrogates`]): the
    /// assignment is answered, and refused.
    pub mended: Option<TaskError>,
}

/// Parses `buf` in place. Errors are unanswerable: no `assignment_id` can be trusted (one
/// that held a lone surrogate neither: it could not be echoed as sent).
pub fn parse_value(buf: &mut [u8]) -> Result<Parsed<'_>, Unanswerable> {
    // The rare path keeps the payload as sent, for the DLQ, in case it is not JSON at all.
    let (cut, sent) = if more_brackets_than(buf, MAX_JSON_DEPTH) {
        let sent = buf.to_vec();
        match cut_deep_values(buf, MAX_JSON_DEPTH) {
            Ok(cut) => {
                let changed = cut.is_some();
                (cut.flatten(), changed.then_some(sent))
            }
            Err(error) => {
                return Err(Unanswerable {
                    error,
                    parsed_object: false,
                    sent: Some(sent),
                    bad_number: false,
                })
            }
        }
    } else {
        (None, None)
    };
    let mended = mend_lone_surrogates(buf);
    let value = match parse_with_thread_buffers(buf) {
        Ok(value) => value,
        Err(e) => {
            return Err(Unanswerable {
                error: TaskError::new(
                    ErrorCode::InvalidFormat,
                    format!("assignment is not valid JSON: {e}"),
                ),
                parsed_object: false,
                sent,
                bad_number: matches!(e.error(), simd_json::ErrorType::InvalidNumber),
            })
        }
    };
    if let Some(error) = &mended {
        let id = value.get("assignment_id").and_then(|v| v.as_str());
        if id.is_some_and(|id| id.contains('\u{fffd}')) {
            return Err(Unanswerable {
                error: error.clone(),
                parsed_object: false,
                sent: None,
                bad_number: false,
            });
        }
    }
    Ok(Parsed {
        value,
        mended: cut.or(mended),
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
        parsed: &'a Parsed<'a>,
        headers: &AssignmentHeaders,
        limits: ParseLimits,
    ) -> Result<(Assignment<'a>, Option<TaskError>), Unanswerable> {
        let value = &parsed.value;
        if !value.is_object() {
            return Err(Unanswerable {
                error: TaskError::new(ErrorCode::InvalidFormat, "assignment is not a JSON object"),
                parsed_object: false,
                sent: None,
                bad_number: false,
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
            job_type: job.and_then(|j| str_of(&j, "type")).map(echoed_job_type),
            job,
            deadline: limits.default_timeout,
            retry: RetryPolicy::default(),
            priority: 0,
        };
        let invalid = a.validate(&top, headers, limits).err();
        let problem = parsed.mended.clone().or(invalid);
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
        sent: None,
        bad_number: false,
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

/// The longest `job.type` a result, a log line or a message repeats (bytes); block types
/// are short names, so only an unknown type is ever cut.
pub const MAX_JOB_TYPE_LEN: usize = 128;

/// `job.type` as repeated: its first [`MAX_JOB_TYPE_LEN`] bytes (at a character boundary).
/// A result holds it twice (`job.type`, `metadata.block_type`), so an unknown type of half
/// of `max_payload` made a result the broker refused, and a log line as large.
pub fn echoed_job_type(t: &str) -> &str {
    if t.len() <= MAX_JOB_TYPE_LEN {
        return t;
    }
    let mut end = MAX_JOB_TYPE_LEN;
    while !t.is_char_boundary(end) {
        end -= 1;
    }
    &t[..end]
}

/// What a JSON object without a usable `assignment_id` still says about itself, for its DLQ
/// entry: its string ids (top level, or `correlation` for the trace id), its provider and
/// its `job.type`. Values over 128 bytes are left out: nothing here was validated, and the
/// entry must fit the broker.
pub fn unanswered_ids<'v>(value: &'v BorrowedValue<'v>) -> (Ids<'v>, Option<&'v str>) {
    let short = |v: Option<&'v BorrowedValue<'v>>| {
        v.and_then(|v| v.as_str())
            .filter(|s| !s.is_empty() && s.len() <= 128)
    };
    let at = |obj: &str, key: &str| value.get(obj).and_then(|o| o.get(key));
    let ids = Ids {
        assignment_id: None,
        request_id: short(value.get("request_id")),
        tenant_id: short(value.get("tenant_id")),
        trace_id: short(value.get("trace_id")).or_else(|| short(at("correlation", "trace_id"))),
        run_id: short(value.get("run_id")).or_else(|| short(at("correlation", "run_id"))),
        flow_id: short(value.get("flow_id")).or_else(|| short(at("correlation", "flow_id"))),
        step_id: short(value.get("step_id")).or_else(|| short(at("correlation", "step_id"))),
        provider_id: short(at("executor", "provider_id")),
    };
    (ids, short(at("job", "type")))
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
    fn a_long_job_type_is_repeated_as_its_first_128_bytes() {
        assert_eq!(echoed_job_type("fs.get"), "fs.get");
        let at_limit = "t".repeat(MAX_JOB_TYPE_LEN);
        assert_eq!(echoed_job_type(&at_limit), at_limit);
        // A three-byte character across the limit is left out whole.
        let across = format!("{}€tail", "t".repeat(MAX_JOB_TYPE_LEN - 1));
        assert_eq!(echoed_job_type(&across), "t".repeat(MAX_JOB_TYPE_LEN - 1));
        let json = format!(
            r#"{{"version":"1","assignment_id":"a","tenant_id":"t","job":{{"type":"{}"}}}}"#,
            "q".repeat(5000)
        );
        let mut buf = json.into_bytes();
        let v = parse_value(&mut buf).expect("parses");
        let (a, problem) =
            Assignment::read(&v, &AssignmentHeaders::default(), LIMITS).expect("answerable");
        assert_eq!(a.job_type, Some("q".repeat(MAX_JOB_TYPE_LEN).as_str()));
        assert!(
            problem.is_none(),
            "an unknown type is the registry's to refuse"
        );
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
    fn deep_nesting_is_cut_before_parsing() {
        // Not an object once cut: unanswerable, as any array is.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(code(&deep), 9003);
        // An assignment with a value nested too deep in a member the worker reads is
        // answered and refused (1001); in a member it ignores, the cut value harms nothing.
        for (member, want) in [("correlation", 1001), ("x", 0)] {
            let in_a_field = format!(
                r#"{{"version":"1","assignment_id":"a","tenant_id":"t","{member}":{}{},"job":{{"type":"fs.get"}}}}"#,
                "[{\"k\":".repeat(50_000),
                "}]".repeat(50_000)
            );
            assert_eq!(code(&in_a_field), want, "{member}");
        }
        // A value that never closes is not JSON: unanswerable, the payload kept as sent.
        let open = format!(r#"{{"assignment_id":"a","x":{}"#, "[".repeat(1000));
        let mut buf = open.as_bytes().to_vec();
        let why = parse_value(&mut buf).expect_err("not JSON");
        assert_eq!(why.error.code, ErrorCode::InvalidFormat);
        assert!(
            why.error.message.contains("never closes"),
            "{}",
            why.error.message
        );
        assert_eq!(why.sent.as_deref(), Some(open.as_bytes()));
        // Cut, then found not to be JSON: unanswerable, the payload kept as sent.
        let broken = format!(
            r#"{{"assignment_id":"a","x":{}{},}}"#,
            "[".repeat(70),
            "]".repeat(70)
        );
        let mut buf = broken.as_bytes().to_vec();
        let why = parse_value(&mut buf).expect_err("not JSON");
        assert_eq!(why.error.code, ErrorCode::InvalidFormat);
        assert_eq!(why.sent.as_deref(), Some(broken.as_bytes()));
    }

    #[test]
    fn changes_count_as_ignored_only_inside_members_the_worker_does_not_read() {
        let judge = |raw: &str| {
            let at: Vec<usize> = raw.match_indices('#').map(|(k, _)| k).collect();
            only_in_ignored_members(raw.as_bytes(), &at)
        };
        for raw in [
            r##"{"assignment_id":"a","metadata":{"a":[1,"#"]}}"##,
            r##"{"decision":"#","job":{"type":"fs.get"}}"##,
            r##"{"x" : [{"job":"#"}], "y": "#"}"##,
        ] {
            assert!(judge(raw), "{raw}");
        }
        for raw in [
            r##"{"assignment_id":"a","job":{"a":"#"}}"##,
            r##"{"metadata":"#","options":{"deadline_ms":"#"}}"##,
            r##"{"\u006aob":{"a":"#"}}"##,
            r##"{"#":1}"##,
            r##"["#"]"##,
        ] {
            assert!(!judge(raw), "{raw}");
        }
    }

    #[test]
    fn numbers_the_parser_cannot_represent_are_cut() {
        let raw = r#"{"assignment_id":"a","x":123456789012345678901234567890,"y":[1e400,-9223372036854775809,18446744073709551615,-9223372036854775808,1.5e308,"1e400"],"z":2}"#;
        let why = parse_value(&mut raw.as_bytes().to_vec()).expect_err("refused");
        assert!(why.bad_number, "{:?}", why.error);
        // In a member the worker reads, a cut number refuses the assignment.
        let in_job = raw.replace(r#""x":"#, r#""job":"#);
        let mut buf = in_job.as_bytes().to_vec();
        let error = cut_unrepresentable_numbers(&mut buf)
            .expect("cut")
            .expect("refused");
        assert_eq!(error.code, ErrorCode::InvalidInput);
        assert!(
            error
                .message
                .contains("(character 27): 123456789012345678901234…"),
            "{}",
            error.message
        );
        // In members it ignores, the numbers are cut and nothing is refused.
        let mut buf = raw.as_bytes().to_vec();
        assert_eq!(
            cut_unrepresentable_numbers(&mut buf).map(|e| e.is_none()),
            Some(true)
        );
        assert_eq!(buf.len(), raw.len());
        let parsed = parse_value(&mut buf).expect("parses once cut");
        let v = &parsed.value;
        let x = v.get("x").and_then(|x| x.as_str()).expect("a string");
        assert_eq!(x.len(), 28);
        assert!(x.starts_with("(number out of range)"), "{x}");
        let y = v.get("y").and_then(|y| y.as_array()).expect("y");
        assert_eq!(y[0].as_str(), Some("(nu"));
        assert!(y[1].as_str().is_some_and(|s| s.starts_with("(number")));
        assert_eq!(y[2].as_u64(), Some(u64::MAX));
        assert_eq!(y[3].as_i64(), Some(i64::MIN));
        assert_eq!(y[4].as_f64(), Some(1.5e308));
        assert_eq!(y[5].as_str(), Some("1e400"), "a string is not a number");
        assert_eq!(v.get("z").and_then(|z| z.as_u64()), Some(2));
        // Nothing to cut (a malformed number is the parser's to refuse): left as it was.
        for raw in [
            r#"{"a":[1,-2,3.5e10,"99999999999999999999999",1e-400]}"#,
            r#"{"a":01}"#,
            r#"{"a":1.2.3}"#,
        ] {
            let mut buf = raw.as_bytes().to_vec();
            assert!(cut_unrepresentable_numbers(&mut buf).is_none(), "{raw}");
            assert_eq!(buf, raw.as_bytes());
        }
    }

    #[test]
    fn a_value_cut_for_depth_keeps_its_length_and_the_ids() {
        // Depth 1 is the assignment itself: `x` holds 70 arrays, 64 levels in all are kept.
        // The innermost holds a string with brackets and an escaped quote in it.
        const INNER: &str = r#""]}[{\"""#;
        let kept = MAX_JSON_DEPTH - 1;
        let raw = format!(
            r#"{{"version":"1","assignment_id":"a","request_id":"r","tenant_id":"t","correlation":{}{}{},"job":{{"type":"fs.get"}}}}"#,
            "[".repeat(70),
            INNER,
            "]".repeat(70)
        );
        let mut buf = raw.as_bytes().to_vec();
        let parsed = parse_value(&mut buf).expect("parses once cut");
        let (a, problem) =
            Assignment::read(&parsed, &AssignmentHeaders::default(), LIMITS).expect("answerable");
        let problem = problem.expect("refused");
        assert_eq!(problem.code, ErrorCode::InvalidInput);
        assert_eq!(problem.message, "JSON nested deeper than 64 levels");
        assert_eq!(a.assignment_id, "a");
        assert_eq!(a.request_id.as_deref(), Some("r"));
        assert_eq!(a.tenant_id.as_deref(), Some("t"));
        assert_eq!(a.job_type, Some("fs.get"));
        // The innermost kept array holds the cut value: a string the length of what it
        // replaced, the mark then spaces (the string with brackets inside was cut whole).
        let mut x = parsed.value.get("correlation").expect("correlation");
        for _ in 0..kept - 1 {
            x = x.as_array().and_then(|a| a.first()).expect("kept level");
        }
        let cut = x
            .as_array()
            .and_then(|a| a.first())
            .and_then(|v| v.as_str())
            .expect("a string where the deeper arrays were");
        let replaced = (70 - kept) * 2 + INNER.len();
        assert_eq!(cut.len(), replaced - 2);
        assert!(cut.starts_with("(nested too deep)"), "{cut}");
        assert!(cut["(nested too deep)".len()..].bytes().all(|b| b == b' '));
        // An empty value past the limit is cut as an empty string.
        let raw = format!(
            r#"{{"assignment_id":"a","x":{}[]{}}}"#,
            "[".repeat(kept),
            "]".repeat(kept)
        );
        let mut buf = raw.as_bytes().to_vec();
        assert!(parse_value(&mut buf).is_ok());
        assert!(String::from_utf8_lossy(&buf).contains(r#"[""]"#));
    }

    #[test]
    fn regression_a_lone_high_surrogate_is_refused_not_read_as_nul() {
        let with_request_id = |text: &str| {
            format!(
                r#"{{"version":"1","assignment_id":"a","tenant_id":"t","request_id":"{text}","job":{{"type":"fs.get"}}}}"#
            )
        };
        // Answered and refused, the id echoed with U+FFFD where the lone half was.
        for (lone, read) in [
            (r"\ud800", "\u{fffd}"),
            (r"x\udbffx", "x\u{fffd}x"),
            (r"\ud800\\", "\u{fffd}\\"),
            (r"\ud800\n", "\u{fffd}\n"),
            (r"\ud800\u0041", "\u{fffd}A"),
            (r"\udc00", "\u{fffd}"),
            (r"\udc00\ud800", "\u{fffd}\u{fffd}"),
            (r"\ud83d\ud83d\ude00", "\u{fffd}\u{1f600}"),
        ] {
            let mut buf = with_request_id(lone).into_bytes();
            let parsed = parse_value(&mut buf).expect("answerable");
            let (a, problem) = Assignment::read(&parsed, &AssignmentHeaders::default(), LIMITS)
                .expect("answerable");
            assert_eq!(problem.map(|e| e.code.code()), Some(1003), "{lone}");
            assert_eq!(a.request_id.as_deref(), Some(read), "{lone}");
        }
        // Not JSON text at all (a bad escape), or an id that cannot be echoed as sent.
        assert_eq!(code(&with_request_id(r"\ud800\uzzzz")), 9003);
        let lone_id =
            r#"{"version":"1","assignment_id":"a\ud800","tenant_id":"t","job":{"type":"fs.get"}}"#;
        assert_eq!(code(lone_id), 9003);
        for (escaped, read) in [
            (r"\ud83d\ude00", "\u{1f600}"),
            (r"\uDBFF\uDFFF", "\u{10ffff}"),
            (r"\\ud800", r"\ud800"),
            (r"\\\ud83d\ude00", "\\\u{1f600}"),
            (r"\u0000", "\0"),
            (r"\u00e9\ud800\udc00", "\u{e9}\u{10000}"),
            ("\u{fffd}", "\u{fffd}"),
        ] {
            let mut buf = with_request_id(escaped).into_bytes();
            let parsed = parse_value(&mut buf).expect("parses");
            let (a, problem) = Assignment::read(&parsed, &AssignmentHeaders::default(), LIMITS)
                .expect("answerable");
            assert!(problem.is_none(), "{escaped}: {problem:?}");
            assert_eq!(a.request_id.as_deref(), Some(read), "{escaped}");
        }
    }

    proptest::proptest! {
        #[test]
        fn the_surrogate_escape_search_finds_what_a_plain_scan_finds(
            raw in proptest::collection::vec(proptest::sample::select(b"\\udDx\"".to_vec()), 0..200)
        ) {
            let plain = raw
                .windows(3)
                .any(|w| w[0] == b'\\' && w[1] == b'u' && w[2] | 0x20 == b'd');
            proptest::prop_assert_eq!(may_hold_a_surrogate_escape(&raw), plain);
        }

        #[test]
        fn a_lone_surrogate_anywhere_in_a_string_is_answered_1003(
            before in "[a-z\\\\\"]{0,40}",
            half in 0xD800u16..0xE000,
            after in "[a-z]{0,3}",
        ) {
            // Escaped as JSON text, so that `\` and `"` are escapes of their own.
            let text = |t: &str| t.replace('\\', "\\\\").replace('"', "\\\"");
            // In a member the worker reads; in one it ignores, it harms nothing.
            for (member, want) in [("run_id", 1003), ("note", 0)] {
                let json = format!(
                    r#"{{"version":"1","assignment_id":"a","tenant_id":"t","{member}":"{}\u{half:04x}{}","job":{{"type":"fs.get"}}}}"#,
                    text(&before),
                    text(&after)
                );
                proptest::prop_assert_eq!(code(&json), want, "{}", member);
            }
        }
    }

    #[test]
    fn a_key_given_twice_is_read_as_its_last_copy() {
        // As serde_json's Value and JavaScript's JSON.parse read it, so that the worker
        // and a validator upstream do not see two different tenants in one assignment.
        for padding in [0, 40] {
            let extra: String = (0..padding).map(|i| format!(r#""k{i}":{i},"#)).collect();
            let json = format!(
                r#"{{{extra}"version":"1","assignment_id":"first","tenant_id":"t1","assignment_id":"last","tenant_id":"t2","job":{{"type":"fs.get","type":"fs.put"}}}}"#
            );
            let mut buf = json.into_bytes();
            let v = parse_value(&mut buf).expect("parses");
            let (a, _) =
                Assignment::read(&v, &AssignmentHeaders::default(), LIMITS).expect("answerable");
            assert_eq!(a.assignment_id, "last", "{padding} keys before");
            assert_eq!(a.tenant_id.as_deref(), Some("t2"), "{padding} keys before");
            assert_eq!(a.job_type, Some("fs.put"), "{padding} keys before");
            assert_eq!(v.value.as_object().map(|o| o.len()), Some(padding + 4));
        }
    }

    #[test]
    fn brackets_inside_strings_are_not_nesting() {
        let text = "[{".repeat(MAX_JSON_DEPTH);
        let json = format!(
            r#"{{"version":"1","assignment_id":"a","tenant_id":"t","note":"{text}\"{text}","job":{{"type":"fs.get"}}}}"#
        );
        assert_eq!(code(&json), 0);
        let nested = format!(
            "{}{}",
            "[".repeat(MAX_JSON_DEPTH + 1),
            "]".repeat(MAX_JSON_DEPTH + 1)
        );
        assert_eq!(code(&nested), 9003, "an array, once cut");
        let at_the_limit = format!(
            r#"{{"version":"1","assignment_id":"a","tenant_id":"t","x":{}{},"job":{{"type":"fs.get"}}}}"#,
            "[".repeat(MAX_JSON_DEPTH - 1),
            "]".repeat(MAX_JSON_DEPTH - 1)
        );
        assert_eq!(code(&at_the_limit), 0);
        let side_by_side = format!(
            r#"{{"version":"1","assignment_id":"a","tenant_id":"t","x":[{}[]],"job":{{"type":"fs.get"}}}}"#,
            "[],".repeat(MAX_JSON_DEPTH * 2)
        );
        assert_eq!(code(&side_by_side), 0);
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
