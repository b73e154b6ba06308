//! Log lines in the guide's shape, one JSON object per line on stderr:
//! `{"timestamp","level","component":"worker","message","fields":{..},"trace_id","tenant_id",
//! "run_id","flow_id","step_id"}`, valid against `platform-logging.schema.json`.
//!
//! The correlation ids are lifted to the top level from the event or, failing that, from
//! its nearest enclosing span; every other field of the event and its spans goes under
//! `fields`. Values are redacted when they are recorded (spans included), so nothing
//! sensitive is ever held, let alone written: see [`redact_value`] and [`scrub`].
//! `--log-format text` writes the same content as one readable line for local runs.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::future::Future;
use std::io::Write as _;
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use smallvec::SmallVec;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::filter::{Directive, EnvFilter, LevelFilter, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

use super::trace::Traces;

/// What every redacted value is written as.
pub const REDACTED: &str = "[REDACTED]";

/// Field names whose values are never written (also as a suffix: `db_password`, `x-api-key`,
/// `accessToken`). The platform schema's `pii_filtering` list plus what the worker handles.
pub const SENSITIVE_KEYS: [&str; 14] = [
    "password",
    "api_key",
    "apikey",
    "secret",
    "token",
    "access_token",
    "refresh_token",
    "authorization",
    "cookie",
    "credit_card",
    "ssn",
    "email",
    "phone",
    "comment",
];

/// Correlation ids: written at the top level, never under `fields`.
const CORRELATION: [&str; 5] = ["trace_id", "tenant_id", "run_id", "flow_id", "step_id"];

/// Whether two field names are the same. Names are the `&'static str`s of callsites, and
/// most comparisons of a line are between different ones: told apart by length and first
/// byte, or found the same by address, without a call to `memcmp` (5.8 % of a log line's
/// CPU, `examples/log_line_cost.rs` under perf).
fn same_name(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && (std::ptr::eq(a.as_ptr(), b.as_ptr())
            || (a.as_bytes().first() == b.as_bytes().first() && a == b))
}

fn is_correlation(name: &str) -> bool {
    CORRELATION.iter().any(|c| same_name(c, name))
}

/// Dependencies that are chatty below WARN; quieted unless `RUST_LOG` names them.
const NOISY: [&str; 12] = [
    "async_nats",
    "h2",
    "hyper",
    "hyper_util",
    "hyper_rustls",
    "rustls",
    "tokio_rustls",
    "tower",
    "opentelemetry",
    "opentelemetry_sdk",
    "opentelemetry_otlp",
    "opentelemetry_http",
];

/// Most log lines queued for the background writer; past it lines are dropped and counted
/// ([`dropped_lines`]), never waited for. At ~300 B a line this bounds the queue to ~5 MiB.
pub const QUEUE_LINES: usize = 16_384;

/// How often the background writer wakes to write out what is queued. A thread that logs
/// never wakes it: a wake-up per line (a futex call and a context switch) cost more than
/// the line itself; polling writes the lines of a whole period in one system call.
const WRITE_EVERY: std::time::Duration = std::time::Duration::from_millis(5);

static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Log lines dropped because the background writer's queue was full (stderr slower than the
/// worker logs): `worker_log_lines_dropped_total`.
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// The log layer's writer: hands each line to the background writer's bounded queue,
/// dropping (and counting) it when the queue is full. Never blocks, never makes a system
/// call.
#[derive(Debug, Clone)]
pub struct QueueWriter {
    tx: std::sync::mpsc::SyncSender<Vec<u8>>,
}

impl std::io::Write for &QueueWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Err(std::sync::mpsc::TrySendError::Full(_)) = self.tx.try_send(buf.to_vec()) {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for QueueWriter {
    type Writer = &'a QueueWriter;
    fn make_writer(&'a self) -> &'a QueueWriter {
        self
    }
}

/// Keeps the background log writer running; dropping it writes out what is queued and
/// stops the writer. Hold it until the process ends.
#[must_use = "dropping the guard stops the log writer"]
#[derive(Debug)]
pub struct LogGuard {
    writer: Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some((stop, handle)) = self.writer.take() {
            stop.store(true, Ordering::Release);
            handle.thread().unpark();
            let _ = handle.join();
        }
    }
}

/// The background writer: every [`WRITE_EVERY`] (or when told to stop), everything queued
/// goes into one buffered write.
fn write_out<O: std::io::Write>(rx: std::sync::mpsc::Receiver<Vec<u8>>, out: O, stop: &AtomicBool) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    loop {
        let stopping = stop.load(Ordering::Acquire);
        while let Ok(line) = rx.try_recv() {
            let _ = out.write_all(&line);
        }
        let _ = out.flush();
        if stopping {
            return;
        }
        std::thread::park_timeout(WRITE_EVERY);
    }
}

/// Installs the global subscriber: the log layer on stderr (filtered by `RUST_LOG`, default
/// `info`) and, when [`Traces`] exports, the OpenTelemetry layer. Idempotent: a second call
/// (or a subscriber set by someone else) leaves the first in place.
///
/// Lines are formatted on the thread that logs and written by one background thread, in
/// batches: a thread that logs never makes a system call for a log line, never wakes the
/// writer and never waits for stderr. The queue is bounded ([`QUEUE_LINES`]); when it is
/// full the line is dropped and counted.
pub fn init(format: LogFormat, traces: &Traces) -> LogGuard {
    init_to(format, traces, std::io::stderr())
}

/// [`init`] with the lines going to `out` instead of stderr (tests that measure the hot
/// path with its log line on, without filling their output).
pub fn init_to<O>(format: LogFormat, traces: &Traces, out: O) -> LogGuard
where
    O: std::io::Write + Send + 'static,
{
    let spec = std::env::var("RUST_LOG").unwrap_or_default();
    let (filter, rejected) = env_filter(&spec);
    let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_LINES);
    // The same filter as a `Targets` where it has only target/level directives (the usual
    // case): `EnvFilter` takes a lock on every span enter and exit, in case a directive
    // names a span, which no such spec does (issue 12: 1.6 % of the worker's CPU per task).
    let (by_target, by_env) = match targets_filter(&spec) {
        Some(targets) => (Some(targets), None),
        None => (None, Some(filter)),
    };
    let writer = QueueWriter { tx };
    let step_sink = by_target.as_ref().map(|f| StepSink {
        format,
        writer: writer.clone(),
        info: f.would_enable(STEP_TARGET, &Level::INFO),
        warn: f.would_enable(STEP_TARGET, &Level::WARN),
        error: f.would_enable(STEP_TARGET, &Level::ERROR),
    });
    let logs_by_target = by_target.map(|f| LogLayer::new(format, writer.clone()).with_filter(f));
    let logs_by_env = by_env.map(|f| LogLayer::new(format, writer).with_filter(f));
    let installed = tracing_subscriber::registry()
        .with(logs_by_target)
        .with(logs_by_env)
        .with(traces.layer())
        .try_init()
        .is_ok();
    if !installed {
        return LogGuard { writer: None };
    }
    if let Some(sink) = step_sink {
        let _ = STEP_SINK.set(sink);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handle = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || write_out(rx, out, &flag));
    let guard = LogGuard {
        writer: handle.ok().map(|h| (stop, h)),
    };
    for r in rejected {
        tracing::warn!(directive = %r, "RUST_LOG directive ignored");
    }
    if let Some(problem) = traces.problem() {
        tracing::warn!(error = %problem, "trace export disabled");
    }
    guard
}

/// [`env_filter`]'s filter as a [`Targets`] when every directive of `spec` is a level or a
/// `target=level` (no span or field filters); `None` otherwise. Unparseable directives are
/// left out, as [`env_filter`] leaves them.
pub fn targets_filter(spec: &str) -> Option<Targets> {
    let valid: Vec<&str> = spec
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty() && d.parse::<Directive>().is_ok())
        .collect();
    if valid.iter().any(|d| d.contains(['[', '{'])) {
        return None;
    }
    let bare = valid
        .iter()
        .rev()
        .find_map(|d| d.parse::<LevelFilter>().ok());
    // As `EnvFilter` reads it: with no directive at all, `info`; with directives but no
    // bare level, nothing beyond what they name.
    let default = match (bare, valid.is_empty()) {
        (Some(level), _) => level,
        (None, true) => LevelFilter::INFO,
        (None, false) => LevelFilter::OFF,
    };
    let mut targets = Targets::new().with_default(default);
    if bare.unwrap_or(LevelFilter::INFO) > LevelFilter::WARN {
        for dep in NOISY.iter().filter(|d| !spec.contains(*d)) {
            targets = targets.with_target(*dep, LevelFilter::WARN);
        }
    }
    for d in valid.iter().filter(|d| d.parse::<LevelFilter>().is_err()) {
        let (target, level) = match d.split_once('=') {
            Some((t, l)) => (t, l.parse::<LevelFilter>().ok()?),
            // A bare target: everything from it (as `EnvFilter` reads it).
            None => (*d, LevelFilter::TRACE),
        };
        targets = targets.with_target(target, level);
    }
    Some(targets)
}

/// The filter for `spec` (`RUST_LOG` syntax; default `info`), with [`NOISY`] dependencies
/// held at WARN unless `spec` names them or sets a quieter global level; and the directives
/// it could not parse (reported as a log line rather than as bare text on stderr).
pub fn env_filter(spec: &str) -> (EnvFilter, Vec<String>) {
    let (valid, rejected): (Vec<&str>, Vec<&str>) = spec
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .partition(|d| d.parse::<Directive>().is_ok());
    let global = valid
        .iter()
        .rev()
        .find_map(|d| d.parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::INFO);
    let mut filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .parse_lossy(valid.join(","));
    if global > LevelFilter::WARN {
        for dep in NOISY.iter().filter(|d| !spec.contains(*d)) {
            if let Ok(d) = format!("{dep}=warn").parse() {
                filter = filter.add_directive(d);
            }
        }
    }
    let rejected = rejected
        .into_iter()
        .map(|d| {
            format!(
                "{d}: {}",
                d.parse::<Directive>()
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_default()
            )
        })
        .collect();
    (filter, rejected)
}

// ---------------------------------------------------------------------------------------
// Redaction

/// Whether values under `key` are never written: one of [`SENSITIVE_KEYS`], compared
/// ignoring case and treating `-` as `_`, alone or as the last word of the key.
pub fn is_sensitive_key(key: &str) -> bool {
    let k = key.as_bytes();
    SENSITIVE_KEYS.iter().any(|name| {
        let n = name.as_bytes();
        if k.len() < n.len() {
            return false;
        }
        let at = k.len() - n.len();
        if !eq_key(&k[at..], n) {
            return false;
        }
        // `x_api_key`, `x-api-key`, `db.password`; or camelCase: `accessToken`.
        at == 0
            || !k[at - 1].is_ascii_alphanumeric()
            || (k[at].is_ascii_uppercase() && k[at - 1].is_ascii_lowercase())
    })
}

/// [`is_sensitive_key`] for a field name of a callsite: names are `&'static str` of a
/// fixed set of callsites, so the answer is remembered per thread by the name's address
/// ([`SeenNames`]; a log line and its span record some twenty fields per assignment; a
/// hash map lookup per field cost more than it saved).
fn sensitive_field(name: &'static str) -> bool {
    thread_local! {
        static SEEN: RefCell<SeenNames> = const { RefCell::new(SeenNames::new()) };
    }
    SEEN.with(|seen| {
        let Ok(mut seen) = seen.try_borrow_mut() else {
            return is_sensitive_key(name);
        };
        if let Some(known) = seen.get(name) {
            return known;
        }
        let known = is_sensitive_key(name);
        seen.put(name, known);
        known
    })
}

/// A small open-addressed table of field names (by address and length) and whether each
/// is sensitive. The names of one callsite lie side by side in the binary, a few bytes
/// apart: the address is spread over the slots by Fibonacci hashing, and a taken slot
/// sends a name on to the next ones. (Issue 12, fourteenth round: the slot was the address
/// shifted right by 3 bits, so names within 8 bytes of each other shared one and pushed
/// each other out on every line: `is_sensitive_key` was 6.7 % of a log line's CPU in
/// `examples/log_line_cost.rs`.)
struct SeenNames {
    slots: [(usize, usize, bool); SeenNames::SLOTS],
}

impl SeenNames {
    const SLOTS: usize = 128;
    /// How many slots a name may go on to before it takes its first one over.
    const PROBES: usize = 8;

    const fn new() -> SeenNames {
        SeenNames {
            slots: [(0, 0, false); SeenNames::SLOTS],
        }
    }

    fn home(name: &str) -> usize {
        const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
        let mixed = (name.as_ptr() as u64 ^ (name.len() as u64) << 1).wrapping_mul(GOLDEN);
        (mixed >> (u64::BITS - SeenNames::SLOTS.trailing_zeros())) as usize
    }

    /// The slots `name` may be in, its home first.
    fn window(name: &str) -> impl Iterator<Item = usize> {
        let home = SeenNames::home(name);
        (0..SeenNames::PROBES).map(move |i| (home + i) % SeenNames::SLOTS)
    }

    fn holds(slot: &(usize, usize, bool), name: &str) -> bool {
        slot.0 == name.as_ptr() as usize && slot.1 == name.len()
    }

    fn get(&self, name: &str) -> Option<bool> {
        SeenNames::window(name)
            .map(|i| &self.slots[i])
            .find(|slot| SeenNames::holds(slot, name))
            .map(|slot| slot.2)
    }

    /// Remembers `name` in the first free slot of its window; with none free, in its home.
    fn put(&mut self, name: &str, sensitive: bool) {
        let at = SeenNames::window(name)
            .find(|&i| self.slots[i].0 == 0)
            .unwrap_or_else(|| SeenNames::home(name));
        self.slots[at] = (name.as_ptr() as usize, name.len(), sensitive);
    }
}

fn eq_key(a: &[u8], b: &[u8]) -> bool {
    let norm = |c: u8| {
        if c == b'-' {
            b'_'
        } else {
            c.to_ascii_lowercase()
        }
    };
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| norm(*x) == norm(*y))
}

/// What may be written for `value` recorded under `key`: [`REDACTED`] for a sensitive key,
/// else the value with any credential inside it masked (see [`scrub`]).
pub fn redact_value(key: &str, value: &str) -> String {
    if is_sensitive_key(key) {
        REDACTED.to_owned()
    } else {
        scrub(value).into_owned()
    }
}

/// Masks credentials inside free text: `Bearer <token>` / `Basic <credentials>`, the
/// password of a URL's userinfo (`postgres://u:pw@h` → `postgres://u:[REDACTED]@h`), and
/// `key=value` / `"key": "value"` pairs whose key is sensitive (connection strings, JSON
/// and Debug dumps). Borrows when there is nothing to mask.
pub fn scrub(text: &str) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(text);
    // Every pattern needs a separator: `Bearer <t>` a blank, a URL `://`, a pair `=` or
    // `:`. Ids and names have none, and are most of what is logged: one scan, no search.
    if !has_separator(text.as_bytes()) {
        return out;
    }
    for pass in [
        auth_schemes as fn(&str) -> Vec<(usize, usize)>,
        url_passwords,
        sensitive_pairs,
    ] {
        let spans = pass(&out);
        if !spans.is_empty() {
            out = Cow::Owned(replace(&out, &spans));
        }
    }
    out
}

/// Whether `b` holds a blank, a tab, `:` or `=`: what every pattern [`scrub`] masks
/// needs. Eight bytes at a time (the zero-byte test on a word, as in [`needs_look`]).
fn has_separator(b: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let mut chunks = b.chunks_exact(8);
    for chunk in &mut chunks {
        let Ok(bytes) = <[u8; 8]>::try_from(chunk) else {
            continue;
        };
        let w = u64::from_le_bytes(bytes);
        let hit = zero_byte(w ^ (ONES * u64::from(b' ')))
            | zero_byte(w ^ (ONES * u64::from(b'\t')))
            | zero_byte(w ^ (ONES * u64::from(b':')))
            | zero_byte(w ^ (ONES * u64::from(b'=')));
        if hit != 0 {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|c| matches!(c, b' ' | b'\t' | b':' | b'='))
}

/// [`scrub`], remembering per thread the last few texts with a separator that held
/// nothing to mask: the same message comes with every line of a callsite ("Step execution
/// completed" has blanks, so each line searched it for credentials again: 11 % of a log
/// line's CPU, `examples/log_line_cost.rs` under perf). [`scrub`] is a function of the
/// text alone, so a text equal to one found clean is clean.
fn scrub_remembered(text: &str) -> Cow<'_, str> {
    const KEEP: usize = 4;
    const LONGEST: usize = 128;
    thread_local! {
        static CLEAN: RefCell<([String; KEEP], usize)> = RefCell::new(Default::default());
    }
    if !has_separator(text.as_bytes()) {
        return Cow::Borrowed(text);
    }
    if text.len() > LONGEST {
        return scrub(text);
    }
    let known = CLEAN.with(|c| {
        c.try_borrow()
            .is_ok_and(|c| c.0.iter().any(|t| !t.is_empty() && t == text))
    });
    if known {
        return Cow::Borrowed(text);
    }
    let out = scrub(text);
    if matches!(out, Cow::Borrowed(_)) {
        CLEAN.with(|c| {
            if let Ok(mut c) = c.try_borrow_mut() {
                let at = c.1;
                c.0[at].clear();
                c.0[at].push_str(text);
                c.1 = (at + 1) % KEEP;
            }
        });
    }
    out
}

/// Replaces each (start, end) byte range (sorted, disjoint) with [`REDACTED`].
fn replace(text: &str, spans: &[(usize, usize)]) -> String {
    let mut s = String::with_capacity(text.len() + spans.len() * REDACTED.len());
    let mut at = 0;
    for &(a, b) in spans {
        s.push_str(&text[at..a]);
        s.push_str(REDACTED);
        at = b;
    }
    s.push_str(&text[at..]);
    s
}

fn find_ci(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    (from..=hay.len() - needle.len()).find(|&i| eq_key(&hay[i..i + needle.len()], needle))
}

fn is_token_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"-._~+/=".contains(&c)
}

fn already_redacted(b: &[u8], at: usize) -> bool {
    b[at..].starts_with(REDACTED.as_bytes())
}

/// `Bearer abc.def` → the token's range.
fn auth_schemes(text: &str) -> Vec<(usize, usize)> {
    let b = text.as_bytes();
    let mut spans = Vec::new();
    for scheme in [&b"bearer"[..], b"basic"] {
        let mut from = 0;
        while let Some(i) = find_ci(b, scheme, from) {
            from = i + scheme.len();
            if i > 0 && b[i - 1].is_ascii_alphanumeric() {
                continue;
            }
            let mut j = from;
            while j < b.len() && (b[j] == b' ' || b[j] == b'\t') {
                j += 1;
            }
            if j == from || already_redacted(b, j) {
                continue;
            }
            let start = j;
            while j < b.len() && is_token_byte(b[j]) {
                j += 1;
            }
            if j > start {
                spans.push((start, j));
                from = j;
            }
        }
    }
    normalize(spans)
}

/// `scheme://user:secret@host` → the range of `secret`.
fn url_passwords(text: &str) -> Vec<(usize, usize)> {
    let b = text.as_bytes();
    let mut spans = Vec::new();
    let mut from = 0;
    while let Some(i) = find_ci(b, b"://", from) {
        let start = i + 3;
        from = start;
        let mut j = start;
        let mut colon = None;
        while j < b.len() && !b"/?#@ \t\r\n\"'<>\\".contains(&b[j]) {
            if b[j] == b':' && colon.is_none() {
                colon = Some(j);
            }
            j += 1;
        }
        if let (Some(c), true) = (colon, j < b.len() && b[j] == b'@') {
            if c + 1 < j && !already_redacted(b, c + 1) {
                spans.push((c + 1, j));
            }
            from = j;
        }
    }
    normalize(spans)
}

/// `password=x`, `"api_key": "x"`, `Password = 'x';`, `\"token\":\"x\"` → the value's range.
fn sensitive_pairs(text: &str) -> Vec<(usize, usize)> {
    let b = text.as_bytes();
    if !b.iter().any(|&c| c == b'=' || c == b':') {
        return Vec::new();
    }
    let mut spans = Vec::new();
    for name in SENSITIVE_KEYS {
        let n = name.as_bytes();
        let mut from = 0;
        while let Some(i) = find_ci(b, n, from) {
            from = i + n.len();
            if let Some(range) = pair_value(b, i, n.len()) {
                from = range.1.max(from);
                spans.push(range);
            }
        }
    }
    normalize(spans)
}

/// The value after a key found at `i..i + len`, when it is one (key ends a word, then an
/// optional closing quote, `=` or `:`, an optional opening quote, the value).
fn pair_value(b: &[u8], i: usize, len: usize) -> Option<(usize, usize)> {
    let end_of_key = i + len;
    if end_of_key < b.len() && (b[end_of_key].is_ascii_alphanumeric() || b[end_of_key] == b'_') {
        return None;
    }
    let skip_ws = |mut j: usize| {
        while j < b.len() && (b[j] == b' ' || b[j] == b'\t') {
            j += 1;
        }
        j
    };
    let mut j = end_of_key;
    // Closing quote of the key: `"`, `'` or an escaped `\"`.
    if j < b.len() && b[j] == b'\\' && j + 1 < b.len() && b[j + 1] == b'"' {
        j += 2;
    } else if j < b.len() && (b[j] == b'"' || b[j] == b'\'') {
        j += 1;
    }
    j = skip_ws(j);
    if j >= b.len() || (b[j] != b'=' && b[j] != b':') {
        return None;
    }
    // `scheme://` is a URL, not a pair.
    if b[j] == b':' && b.get(j + 1..j + 3) == Some(b"//") {
        return None;
    }
    j = skip_ws(j + 1);
    // Opening quote of the value, and what closes it.
    let (start, close): (usize, &[u8]) = if b.get(j..j + 2) == Some(b"\\\"") {
        (j + 2, b"\\\"")
    } else if j < b.len() && (b[j] == b'"' || b[j] == b'\'') {
        (j + 1, if b[j] == b'"' { b"\"" } else { b"'" })
    } else {
        (j, b"")
    };
    if start >= b.len() || already_redacted(b, start) {
        return None;
    }
    let end = if close.is_empty() {
        // Unquoted: up to a separator; `Bearer x` keeps its scheme word (the token is
        // masked by the scheme pass).
        let mut k = start;
        while k < b.len() && !b" \t\r\n;,&})]\"'".contains(&b[k]) {
            k += 1;
        }
        let word = &b[start..k];
        if eq_key(word, b"bearer") || eq_key(word, b"basic") {
            return None;
        }
        k
    } else {
        let mut k = start;
        while k < b.len() && !b[k..].starts_with(close) {
            // A backslash escapes the next byte inside a quoted value.
            k += if b[k] == b'\\' && close.len() == 1 {
                2
            } else {
                1
            };
        }
        k.min(b.len())
    };
    if end == start {
        return None;
    }
    let value = &b[start..end];
    if eq_prefix(value, b"bearer ") || eq_prefix(value, b"basic ") {
        // `"authorization": "Bearer x"`: mask the credential, keep the scheme.
        let sp = value.iter().position(|&c| c == b' ').unwrap_or(0) + 1;
        let s = start + sp;
        return (!already_redacted(b, s) && s < end).then_some((s, end));
    }
    Some((start, end))
}

fn eq_prefix(v: &[u8], p: &[u8]) -> bool {
    v.len() >= p.len() && eq_key(&v[..p.len()], p)
}

/// Sorts and merges overlapping ranges; keeps char boundaries (all delimiters are ASCII).
fn normalize(mut spans: Vec<(usize, usize)>) -> Vec<(usize, usize)> {
    spans.sort_unstable();
    let mut out: Vec<(usize, usize)> = Vec::with_capacity(spans.len());
    for (a, b) in spans {
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Recording

/// One recorded value; a string's text is in its [`Recorded::text`].
#[derive(Debug, Clone, PartialEq)]
enum Item {
    Str(Range<usize>),
    I64(i64),
    U64(u64),
    F64(f64),
    Bool(bool),
}

/// A recorded value as it is written, its text borrowed from where it was recorded.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Val<'a> {
    Str(&'a str),
    I64(i64),
    U64(u64),
    F64(f64),
    Bool(bool),
}

impl Val<'_> {
    fn write_json(&self, out: &mut String) {
        match *self {
            Val::Str(s) => json_str(out, s),
            Val::I64(v) => {
                let _ = write!(out, "{v}");
            }
            Val::U64(v) => {
                let _ = write!(out, "{v}");
            }
            Val::F64(v) if v.is_finite() => {
                let _ = write!(out, "{v}");
            }
            Val::F64(v) => json_str(out, &v.to_string()),
            Val::Bool(v) => out.push_str(if v { "true" } else { "false" }),
        }
    }

    fn write_text(&self, out: &mut String) {
        match *self {
            Val::Str(s) if s.is_empty() || s.contains([' ', '"', '=', '\n']) => {
                let _ = write!(out, "{s:?}");
            }
            Val::Str(s) => out.push_str(s),
            Val::I64(v) => {
                let _ = write!(out, "{v}");
            }
            Val::U64(v) => {
                let _ = write!(out, "{v}");
            }
            Val::F64(v) => {
                let _ = write!(out, "{v}");
            }
            Val::Bool(v) => {
                let _ = write!(out, "{v}");
            }
        }
    }

    /// A correlation id as a JSON string (numbers quoted, as [`Val::as_id`] gives them).
    fn write_id_json(&self, out: &mut String) {
        match *self {
            Val::Str(s) => json_str(out, s),
            other => {
                if let Some(id) = other.as_id() {
                    json_str(out, &id);
                }
            }
        }
    }

    /// Whether [`Val::as_id`] gives an id (without making it).
    fn is_id(&self) -> bool {
        match *self {
            Val::Str(s) => !s.is_empty(),
            Val::Bool(_) => false,
            _ => true,
        }
    }

    fn as_id(&self) -> Option<String> {
        let s = match *self {
            Val::Str(s) => s.to_owned(),
            Val::I64(v) => v.to_string(),
            Val::U64(v) => v.to_string(),
            Val::F64(v) => v.to_string(),
            Val::Bool(_) => return None,
        };
        (!s.is_empty()).then_some(s)
    }
}

/// The fields recorded for a span (kept in its extensions) or for an event (the thread's
/// [`EVENT`] scratch, cleared and reused): the text of every string value in one buffer,
/// the fields in the order they came, and an event's message. A span costs two
/// allocations, sized from its field count, instead of one per string and the vector's
/// growth; an event none once its thread has logged a line of its size.
#[derive(Debug, Default)]
struct Recorded {
    text: String,
    items: Vec<(&'static str, Item)>,
    /// The event's message, in `text`.
    message: Option<Range<usize>>,
}

impl Recorded {
    /// Room for `fields` fields of a typical length (ids, names) without growing.
    fn with_capacity(fields: usize) -> Recorded {
        Recorded {
            text: String::with_capacity(40 * fields),
            items: Vec::with_capacity(fields),
            message: None,
        }
    }

    fn clear(&mut self) {
        self.text.clear();
        self.items.clear();
        self.message = None;
    }

    /// The field `key` is now `v` (a span field recorded again keeps its place; its old
    /// text stays unused in the buffer).
    fn set(&mut self, key: &'static str, v: Item) {
        match self.items.iter_mut().find(|(k, _)| same_name(k, key)) {
            Some(slot) => slot.1 = v,
            None => self.items.push((key, v)),
        }
    }

    /// The field `name` is `v`: text scrubbed, anything under a sensitive key
    /// [`REDACTED`] (see [`Recorded::append_text`]).
    fn record(&mut self, name: &'static str, v: Val<'_>) {
        let item = match v {
            Val::Str(t) => Item::Str(self.append_text(name, |out| out.push_str(t))),
            _ if sensitive_field(name) => {
                Item::Str(self.append_text(name, |out| v.write_text(out)))
            }
            Val::I64(x) => Item::I64(x),
            Val::U64(x) => Item::U64(x),
            Val::F64(x) => Item::F64(x),
            Val::Bool(x) => Item::Bool(x),
        };
        self.set(name, item);
    }

    /// Appends the text `write` writes, with any credential in it masked ([`scrub`]); under
    /// a sensitive key [`REDACTED`] whole instead (so the text is not formatted or
    /// scrubbed for nothing). Returns where it is in the buffer.
    fn append_text(&mut self, name: &'static str, write: impl FnOnce(&mut String)) -> Range<usize> {
        let t = &mut self.text;
        let start = t.len();
        if sensitive_field(name) {
            t.push_str(REDACTED);
        } else {
            write(t);
            let masked = match scrub_remembered(&t[start..]) {
                Cow::Owned(m) => Some(m),
                Cow::Borrowed(_) => None,
            };
            if let Some(m) = masked {
                t.truncate(start);
                t.push_str(&m);
            }
        }
        start..t.len()
    }

    fn val(&self, item: &Item) -> Val<'_> {
        match item {
            Item::Str(r) => Val::Str(self.text.get(r.clone()).unwrap_or_default()),
            Item::I64(v) => Val::I64(*v),
            Item::U64(v) => Val::U64(*v),
            Item::F64(v) => Val::F64(*v),
            Item::Bool(v) => Val::Bool(*v),
        }
    }

    fn message(&self) -> Option<&str> {
        self.message.clone().and_then(|r| self.text.get(r))
    }

    /// Drops the text of values recorded over (a span whose fields are recorded again and
    /// again must not grow without bound): the live text copied into a fresh buffer once
    /// the dead text is over 1 KiB and more than the live.
    fn compact(&mut self) {
        let live: usize = self
            .items
            .iter()
            .map(|(_, i)| match i {
                Item::Str(r) => r.len(),
                _ => 0,
            })
            .sum();
        let dead = self.text.len() - live.min(self.text.len());
        if dead <= 1024 || dead <= live {
            return;
        }
        let mut text = String::with_capacity(live);
        for (_, item) in &mut self.items {
            if let Item::Str(r) = item {
                let start = text.len();
                text.push_str(self.text.get(r.clone()).unwrap_or_default());
                *r = start..text.len();
            }
        }
        self.text = text;
    }
}

struct Recorder<'a> {
    rec: &'a mut Recorded,
    /// Whether a `message` field is the event's message (events) or a field (spans).
    takes_message: bool,
}

impl Recorder<'_> {
    /// A value that is not text (as an event's message, its text).
    fn put(&mut self, field: &Field, v: Val<'static>) {
        let name = field.name();
        if name.starts_with("log.") {
            return; // tracing-log's own bookkeeping
        }
        if name == "message" && self.takes_message {
            self.text(field, |t| v.write_text(t));
            return;
        }
        self.rec.record(name, v);
    }

    /// Text, written by `write` into the buffer and scrubbed there ([`Recorded::append_text`]).
    fn text(&mut self, field: &Field, write: impl FnOnce(&mut String)) {
        let name = field.name();
        if name.starts_with("log.") {
            return;
        }
        let range = self.rec.append_text(name, write);
        if name == "message" && self.takes_message {
            self.rec.message = Some(range);
        } else {
            self.rec.set(name, Item::Str(range));
        }
    }
}

impl Visit for Recorder<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.text(field, |t| {
            let _ = write!(t, "{value:?}");
        });
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.text(field, |t| t.push_str(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.text(field, |t| {
            let _ = write!(t, "{value}");
        });
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Val::I64(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Val::U64(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Val::F64(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Val::Bool(value));
    }
}

// ---------------------------------------------------------------------------------------
// The layer

/// Writes each event as one line (JSON or text) to `W`; records span fields for them.
#[derive(Debug)]
pub struct LogLayer<W> {
    format: LogFormat,
    writer: W,
}

impl<W> LogLayer<W>
where
    W: for<'a> MakeWriter<'a> + 'static,
{
    /// A layer writing `format` lines to `writer` (stderr in the binary; a buffer in tests).
    pub fn new(format: LogFormat, writer: W) -> LogLayer<W> {
        LogLayer { format, writer }
    }
}

fn level_name(l: &Level) -> &'static str {
    match *l {
        Level::ERROR => "ERROR",
        Level::WARN => "WARN",
        Level::INFO => "INFO",
        // The platform has four levels; TRACE is DEBUG there.
        _ => "DEBUG",
    }
}

fn json_str(out: &mut String, s: &str) {
    out.push('"');
    // Runs of bytes that need no escape are copied whole, found eight bytes at a time
    // ([`needs_look`]); only the rare byte that needs one (and U+2028/U+2029, which start
    // with 0xE2) is looked at alone.
    let b = s.as_bytes();
    let mut run = 0;
    let mut i = 0;
    while i < b.len() {
        if let Some(chunk) = b.get(i..i + 8).and_then(|c| <[u8; 8]>::try_from(c).ok()) {
            if !needs_look(u64::from_le_bytes(chunk)) {
                i += 8;
                continue;
            }
        }
        let c = b[i];
        if c >= 0x20 && c != b'"' && c != b'\\' && c != 0xE2 {
            i += 1;
            continue;
        }
        // `i` is a char boundary: an ASCII byte or a leading byte (0xE2).
        out.push_str(&s[run..i]);
        let mut next = i + 1;
        match c {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0xE2 => {
                // The whole char is written here.
                let ch = s[i..].chars().next().unwrap_or_default();
                if ch == '\u{2028}' || ch == '\u{2029}' {
                    let _ = write!(out, "\\u{:04x}", ch as u32);
                } else {
                    out.push(ch);
                }
                next = i + ch.len_utf8().max(1);
            }
            b => {
                let _ = write!(out, "\\u{:04x}", b);
            }
        }
        run = next;
        i = next;
    }
    out.push_str(&s[run.min(s.len())..]);
    out.push('"');
}

/// Whether any of the eight bytes of `w` may need a look of its own in [`json_str`]: a
/// control byte (< 0x20), `"`, `\` or 0xE2. Never false when one does (the classic
/// zero-byte and less-than tests on a word); a rare true for a clean word only sends its
/// bytes through the byte-by-byte path.
fn needs_look(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
    let quote = zero_byte(w ^ (ONES * u64::from(b'"')));
    let backslash = zero_byte(w ^ (ONES * u64::from(b'\\')));
    let e2 = zero_byte(w ^ (ONES * 0xE2));
    (below_space | quote | backslash | e2) != 0
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` for now. The part up to the seconds is formatted once a
/// second per thread; the microseconds are appended by hand.
fn push_timestamp(out: &mut String) {
    thread_local! {
        static SECOND: std::cell::RefCell<(i64, String)> =
            const { std::cell::RefCell::new((i64::MIN, String::new())) };
    }
    let now = chrono::Utc::now();
    let secs = now.timestamp();
    let micros = now.timestamp_subsec_micros().min(999_999);
    SECOND.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            c.1.clear();
            let _ = write!(c.1, "{}", now.format("%Y-%m-%dT%H:%M:%S"));
            c.0 = secs;
        }
        out.push_str(&c.1);
    });
    out.push('.');
    let mut digits = [b'0'; 6];
    let mut m = micros;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (m % 10) as u8;
        m /= 10;
    }
    out.push_str(std::str::from_utf8(&digits).unwrap_or("000000"));
    out.push('Z');
}

impl<S, W> Layer<S> for LogLayer<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'a> MakeWriter<'a> + 'static,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Recorded::with_capacity(attrs.fields().len());
        attrs.record(&mut Recorder {
            rec: &mut fields,
            takes_message: false,
        });
        span.extensions_mut().insert(fields);
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: Context<'_, S>,
    ) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        if let Some(fields) = ext.get_mut::<Recorded>() {
            values.record(&mut Recorder {
                rec: fields,
                takes_message: false,
            });
            fields.compact();
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.normalized_metadata();
        let meta = meta.as_ref().unwrap_or_else(|| event.metadata());
        let line_for = |own: &mut Recorded| {
            event.record(&mut Recorder {
                rec: own,
                takes_message: true,
            });
            let own = &*own;
            let with_task = |task: Option<&Recorded>| {
                // Span fields root first, then the event's own: the nearest value of a key
                // wins. Borrowed, not cloned: the spans' extensions are held for the line's
                // formatting. Inline room for the usual depth and field count: no
                // allocation. A task's fields held without its span (`TaskFields`) are
                // the outermost.
                let spans: SmallVec<[_; 4]> = ctx
                    .event_scope(event)
                    .map(|scope| scope.from_root().collect())
                    .unwrap_or_default();
                let exts: SmallVec<[_; 4]> = spans.iter().map(|s| s.extensions()).collect();
                let mut all: SmallVec<[(&str, Val<'_>); 24]> = SmallVec::new();
                let mut set =
                    |k: &'static str, v| match all.iter_mut().find(|(n, _)| same_name(n, k)) {
                        Some(slot) => slot.1 = v,
                        None => all.push((k, v)),
                    };
                let recorded = task
                    .into_iter()
                    .chain(exts.iter().filter_map(|e| e.get::<Recorded>()))
                    .chain(std::iter::once(own));
                for f in recorded {
                    for (k, item) in &f.items {
                        set(k, f.val(item));
                    }
                }
                let message = own.message().unwrap_or_else(|| meta.target());
                self.write_line(meta, message, &all);
            };
            let done = TASK.try_with(|t| match t.try_borrow() {
                Ok(t) => with_task(t.as_ref()),
                Err(_) => with_task(None),
            });
            if done.is_err() {
                with_task(None); // the thread is exiting: no task
            }
        };
        // The thread's scratch, unless this line comes from inside the recording of
        // another (a `Debug` impl that logs).
        EVENT.with(|cell| match cell.try_borrow_mut() {
            Ok(mut own) => {
                own.clear();
                line_for(&mut own);
                if own.text.capacity() > 64 * 1024 {
                    *own = Recorded::default();
                }
            }
            Err(_) => line_for(&mut Recorded::default()),
        });
    }
}

impl<W> LogLayer<W>
where
    W: for<'a> MakeWriter<'a> + 'static,
{
    /// Formats the line and hands it to the writer.
    fn write_line(&self, meta: &Metadata<'_>, message: &str, all: &[(&str, Val<'_>)]) {
        let head = Head {
            level: *meta.level(),
            target: meta.target(),
            message,
        };
        with_line(self.format, &head, all, |line| {
            // One write per line, so lines from different threads never interleave.
            let _ = self.writer.make_writer_for(meta).write_all(line);
        });
    }
}

/// What a line says before its fields.
struct Head<'a> {
    level: Level,
    target: &'a str,
    message: &'a str,
}

/// Formats one line (with its newline) into the thread's [`LINE`] buffer and hands it to
/// `write`.
fn with_line(
    format: LogFormat,
    head: &Head<'_>,
    all: &[(&str, Val<'_>)],
    write: impl FnOnce(&[u8]),
) {
    LINE.with(|cell| {
        let Ok(mut line) = cell.try_borrow_mut() else {
            return; // a log line from inside this one's own formatting
        };
        line.clear();
        match format {
            LogFormat::Json => json_line(&mut line, head, all),
            LogFormat::Text => text_line(&mut line, head, all),
        }
        line.push('\n');
        write(line.as_bytes());
        if line.capacity() > 64 * 1024 {
            // One huge line does not keep its buffer for the thread's lifetime.
            *line = String::with_capacity(512);
        }
    });
}

// ---------------------------------------------------------------------------------------
// The per-step line

/// The target of the per-step line: the pipeline's module, as when it logged it itself.
pub const STEP_TARGET: &str = "beamline_worker::runtime::pipeline";

/// The per-step outcome line, "Step execution completed" (INFO) or "Step execution failed"
/// (ERROR for an `error` or `timeout` result, which the guide's troubleshooting finds with
/// `grep "ERROR" worker.log`; WARN for `cancelled`, which someone asked for), logged once
/// for each assignment that runs to a result or is rejected (a
/// duplicate answered from the dedupe store logs its own line instead). Its fields include
/// every field of the pipeline's `worker.assignment.receive` span, in the span's order, so
/// the line is the same with and without that span around it.
#[derive(Debug, Clone, Copy)]
pub struct StepLine<'a> {
    pub success: bool,
    pub tenant_id: Option<&'a str>,
    pub trace_id: Option<&'a str>,
    pub run_id: Option<&'a str>,
    pub block_type: Option<&'a str>,
    pub worker_id: &'a str,
    pub assignment_id: Option<&'a str>,
    pub status: &'a str,
    pub latency_ms: u64,
    pub attempts: u32,
    /// `error_code` and `error_message`: written on a failure that has them.
    pub error: Option<(u16, &'a str)>,
    pub flow_id: Option<&'a str>,
    pub step_id: Option<&'a str>,
}

/// Where [`StepLine::log`] writes directly: set by [`init_to`] when it installed the log
/// layer with a target/level filter.
#[derive(Debug)]
struct StepSink {
    format: LogFormat,
    writer: QueueWriter,
    /// Whether the filter lets the success (INFO), cancelled (WARN) and failure (ERROR)
    /// lines through.
    info: bool,
    warn: bool,
    error: bool,
}

static STEP_SINK: std::sync::OnceLock<StepSink> = std::sync::OnceLock::new();

impl StepLine<'_> {
    /// Logs the line: formatted and queued directly when [`init_to`] installed the log
    /// layer with a target/level filter (the usual `RUST_LOG`); else through `tracing`.
    ///
    /// Directly, the line skips what `tracing` does for an event that this line does not
    /// need: visiting each field through `dyn Visit`, looking up the enclosing spans in
    /// the registry and merging their fields (this line carries all of them itself). The
    /// trace exporter takes no events, so it misses nothing. The bytes are the same
    /// (`telemetry::logs::tests::a_step_line_is_the_same_direct_and_through_tracing`).
    pub fn log(&self) {
        match STEP_SINK.get() {
            Some(sink) => self.write_to(sink),
            None => self.via_tracing(),
        }
    }

    fn message(&self) -> (&'static str, Level) {
        match (self.success, self.status) {
            (true, _) => ("Step execution completed", Level::INFO),
            (false, "cancelled") => ("Step execution failed", Level::WARN),
            (false, _) => ("Step execution failed", Level::ERROR),
        }
    }

    fn write_to(&self, sink: &StepSink) {
        let (message, level) = self.message();
        let enabled = match level {
            Level::INFO => sink.info,
            Level::WARN => sink.warn,
            _ => sink.error,
        };
        if !enabled {
            return;
        }
        let head = Head {
            level,
            target: STEP_TARGET,
            message,
        };
        // The thread's event scratch, unless a line is being recorded on it right now.
        EVENT.with(|cell| match cell.try_borrow_mut() {
            Ok(mut rec) => {
                rec.clear();
                self.write_with(sink, &head, &mut rec);
            }
            Err(_) => self.write_with(sink, &head, &mut Recorded::default()),
        });
    }

    fn write_with(&self, sink: &StepSink, head: &Head<'_>, rec: &mut Recorded) {
        let text = |rec: &mut Recorded, name, v: Option<&str>| {
            if let Some(v) = v {
                rec.record(name, Val::Str(v));
            }
        };
        text(rec, "tenant_id", self.tenant_id);
        text(rec, "trace_id", self.trace_id);
        text(rec, "run_id", self.run_id);
        text(rec, "block_type", self.block_type);
        text(rec, "worker_id", Some(self.worker_id));
        text(rec, "assignment_id", self.assignment_id);
        text(rec, "status", Some(self.status));
        rec.record("latency_ms", Val::U64(self.latency_ms));
        rec.record("attempts", Val::U64(u64::from(self.attempts)));
        if let Some((code, message)) = self.error.filter(|_| !self.success) {
            rec.record("error_code", Val::U64(u64::from(code)));
            text(rec, "error_message", Some(message));
        }
        text(rec, "flow_id", self.flow_id);
        text(rec, "step_id", self.step_id);
        let all: SmallVec<[(&str, Val<'_>); 16]> = rec
            .items
            .iter()
            .map(|(k, item)| (*k, rec.val(item)))
            .collect();
        with_line(sink.format, head, &all, |line| {
            let _ = (&sink.writer).write_all(line);
        });
    }

    /// The same line as an event, for a subscriber [`StepLine::log`] cannot write for
    /// (tests, an `EnvFilter` with span or field directives). Field for field as written
    /// directly, in the same order.
    fn via_tracing(&self) {
        let (code, error_message) = self.error.filter(|_| !self.success).unzip();
        // One field list for the three levels (`tracing`'s macros take the level as a
        // constant); a `None` field is left out of the line, as written directly.
        macro_rules! step_event {
            ($level:expr, $message:literal) => {
                tracing::event!(
                    target: STEP_TARGET,
                    $level,
                    tenant_id = self.tenant_id,
                    trace_id = self.trace_id,
                    run_id = self.run_id,
                    block_type = self.block_type,
                    worker_id = self.worker_id,
                    assignment_id = self.assignment_id,
                    status = self.status,
                    latency_ms = self.latency_ms,
                    attempts = self.attempts,
                    error_code = code,
                    error_message = error_message,
                    flow_id = self.flow_id,
                    step_id = self.step_id,
                    $message
                )
            };
        }
        match self.message().1 {
            Level::INFO => step_event!(Level::INFO, "Step execution completed"),
            Level::WARN => step_event!(Level::WARN, "Step execution failed"),
            _ => step_event!(Level::ERROR, "Step execution failed"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// A task's fields without its span

/// The fields of `worker.assignment.receive`, held by the task instead of a span when lines
/// are written directly ([`init_to`] installed a target/level filter that lets the span
/// through) and no trace exporter wants spans. A line logged while the task is polled
/// ([`InTask`]) carries them as it would carry the span's: as the outermost span's fields,
/// the same bytes
/// (`telemetry::logs::tests::a_line_in_a_task_is_the_same_with_its_fields_or_its_span`).
/// What it saves per task: the registry's span record, and its look-up at every enter and
/// exit, clone and drop (issue 12, fifteenth round).
#[derive(Debug)]
pub struct TaskFields(Recorded);

impl TaskFields {
    /// The receive span's fields in its order (a `None` is not recorded, as `tracing`
    /// records no field for a `None`); `None` when the span is needed instead: the lines
    /// go through `tracing` (a filter with span directives may select on the span), or the
    /// filter turns the span away (then neither it nor these fields are there).
    pub fn receive(fields: [(&'static str, Option<&str>); 6]) -> Option<TaskFields> {
        STEP_SINK
            .get()
            .is_some_and(|sink| sink.info)
            .then(|| TaskFields::record(&fields))
    }

    fn record(fields: &[(&'static str, Option<&str>)]) -> TaskFields {
        let mut rec = Recorded::with_capacity(fields.len());
        for &(name, v) in fields {
            if let Some(v) = v {
                rec.record(name, Val::Str(v));
            }
        }
        TaskFields(rec)
    }

    /// Runs `fut` with these fields on the lines it logs.
    pub fn scope<F: Future>(self, fut: F) -> InTask<F> {
        InTask {
            inner: fut,
            fields: Some(self.0),
        }
    }
}

thread_local! {
    /// The fields of the task being polled on this thread, if it has any ([`InTask`]).
    static TASK: RefCell<Option<Recorded>> = const { RefCell::new(None) };
}

pin_project_lite::pin_project! {
    /// A future whose lines carry its task's fields: they are on the thread while it is
    /// polled (moved in and out, no allocation).
    #[derive(Debug)]
    pub struct InTask<F> {
        #[pin]
        inner: F,
        fields: Option<Recorded>,
    }
}

impl<F: Future> Future for InTask<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<F::Output> {
        let this = self.project();
        // Nested (a task's future inside another's): the inner one's fields for its polls.
        let outer = swap_task(this.fields.take());
        let r = this.inner.poll(cx);
        *this.fields = swap_task(outer);
        r
    }
}

/// Puts `fields` on this thread as the polled task's, and returns what was there.
fn swap_task(fields: Option<Recorded>) -> Option<Recorded> {
    TASK.try_with(|t| match t.try_borrow_mut() {
        Ok(mut t) => std::mem::replace(&mut *t, fields),
        Err(_) => None, // a poll from inside a line's formatting: none
    })
    .ok()
    .flatten()
}

/// Whether a field is a correlation id lifted to the line's top level.
fn is_id((k, v): &(&str, Val<'_>)) -> bool {
    is_correlation(k) && v.is_id()
}

/// One guide-shaped JSON line (without its newline): timestamp, level, component,
/// message, the other fields under `fields`, then the correlation ids at the top level.
fn json_line(line: &mut String, head: &Head<'_>, all: &[(&str, Val<'_>)]) {
    line.push_str("{\"timestamp\":\"");
    push_timestamp(line);
    line.push_str("\",\"level\":\"");
    line.push_str(level_name(&head.level));
    line.push_str("\",\"component\":\"worker\",\"message\":");
    json_str(line, head.message);
    line.push_str(",\"fields\":{");
    let mut first = true;
    for (k, v) in all.iter().filter(|(k, _)| !is_correlation(k)) {
        if !first {
            line.push(',');
        }
        first = false;
        json_str(line, k);
        line.push(':');
        v.write_json(line);
    }
    line.push('}');
    for name in CORRELATION {
        if let Some((k, v)) = all.iter().find(|f| same_name(f.0, name) && is_id(f)) {
            line.push(',');
            json_str(line, k);
            line.push(':');
            v.write_id_json(line);
        }
    }
    line.push('}');
}

/// One `--log-format text` line (without its newline).
fn text_line(line: &mut String, head: &Head<'_>, all: &[(&str, Val<'_>)]) {
    push_timestamp(line);
    let _ = write!(
        line,
        " {:>5} {}: {}",
        level_name(&head.level),
        head.target,
        head.message.replace('\n', "\\n")
    );
    for (k, v) in all.iter().filter(|(k, _)| !is_correlation(k)) {
        let _ = write!(line, " {k}=");
        v.write_text(line);
    }
    for name in CORRELATION {
        if let Some((k, v)) = all.iter().find(|f| same_name(f.0, name) && is_id(f)) {
            let _ = write!(line, " {k}=");
            if let Some(id) = v.as_id() {
                Val::Str(&id).write_text(line);
            }
        }
    }
}

thread_local! {
    /// The line being formatted: one buffer per thread, reused for every line.
    static LINE: std::cell::RefCell<String> = std::cell::RefCell::new(String::with_capacity(512));
    /// The fields of the event being logged: one scratch per thread, reused for every line.
    static EVENT: RefCell<Recorded> = RefCell::new(Recorded::with_capacity(16));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::{Arc, Mutex};

    /// `json_str` as it was before it scanned eight bytes at a time: one byte at a time.
    fn json_str_bytewise(out: &mut String, s: &str) {
        out.push('"');
        let mut run = 0;
        for (i, b) in s.bytes().enumerate() {
            if b >= 0x20 && b != b'"' && b != b'\\' && b != 0xE2 {
                continue;
            }
            out.push_str(&s[run..i]);
            match b {
                b'"' => out.push_str("\\\""),
                b'\\' => out.push_str("\\\\"),
                b'\n' => out.push_str("\\n"),
                b'\r' => out.push_str("\\r"),
                b'\t' => out.push_str("\\t"),
                0xE2 => {
                    let c = s[i..].chars().next().unwrap_or_default();
                    if c == '\u{2028}' || c == '\u{2029}' {
                        let _ = write!(out, "\\u{:04x}", c as u32);
                    } else {
                        out.push(c);
                    }
                    run = i + c.len_utf8();
                    continue;
                }
                b => {
                    let _ = write!(out, "\\u{:04x}", b);
                }
            }
            run = i + 1;
        }
        out.push_str(&s[run.min(s.len())..]);
        out.push('"');
    }

    /// Text with what the escaping and the scrubbing look for, often: control bytes,
    /// quotes, backslashes, U+2028/U+2029 and other chars starting with 0xE2 (U+20AC),
    /// separators, credentials; runs long enough to cross the eight-byte words.
    fn arb_log_text() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            "[a-z0-9_-]{0,12}",
            Just("\"".to_string()),
            Just("\\".to_string()),
            Just("\n".to_string()),
            Just("\u{1}".to_string()),
            Just("\u{2028}".to_string()),
            Just("\u{2029}".to_string()),
            Just("\u{20ac}".to_string()),
            Just(" ".to_string()),
            Just("\t".to_string()),
            Just(":".to_string()),
            Just("=".to_string()),
            Just("password=hunter2 ".to_string()),
            Just("Bearer abc.def ".to_string()),
            Just("postgres://u:pw@h/db".to_string()),
            any::<String>(),
        ];
        proptest::collection::vec(piece, 0..8).prop_map(|v| v.concat())
    }

    proptest! {
        /// The word-at-a-time escaping writes what the byte-at-a-time one wrote, and the
        /// result is a JSON string of the same text.
        #[test]
        fn json_str_writes_what_it_wrote_one_byte_at_a_time(s in arb_log_text()) {
            let (mut fast, mut slow) = (String::new(), String::new());
            json_str(&mut fast, &s);
            json_str_bytewise(&mut slow, &s);
            prop_assert_eq!(&fast, &slow);
            let back: String = serde_json::from_str(&fast).expect("a JSON string");
            prop_assert_eq!(back, s);
        }

        /// The separator test, a word at a time, answers as a scan of every byte does.
        #[test]
        fn has_separator_agrees_with_a_scan(b in proptest::collection::vec(any::<u8>(), 0..40)) {
            let scan = b.iter().any(|c| matches!(c, b' ' | b'\t' | b':' | b'='));
            prop_assert_eq!(has_separator(&b), scan);
        }

        /// Remembering clean texts never changes what is written: over a run of texts
        /// drawn from a few (so they repeat, credentials among them), each comes out as
        /// [`scrub`] alone makes it.
        #[test]
        fn remembered_scrubbing_writes_what_scrub_writes(
            pool in proptest::collection::vec(arb_log_text(), 1..6),
            picks in proptest::collection::vec(any::<prop::sample::Index>(), 1..30),
        ) {
            for pick in picks {
                let t = pick.get(&pool);
                prop_assert_eq!(scrub_remembered(t), scrub(t));
            }
        }

        /// Field names compare as strings do, whatever their addresses.
        #[test]
        fn same_name_is_string_equality(a in "[a-z_]{0,10}", b in "[a-z_]{0,10}") {
            prop_assert_eq!(same_name(&a, &b), a == b);
            prop_assert!(same_name(&a, &a.clone()));
            prop_assert!(same_name(&a, &a));
        }
    }

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    fn capture(format: LogFormat, f: impl FnOnce()) -> Vec<String> {
        let buf = Buf::default();
        let sub = tracing_subscriber::registry().with(LogLayer::new(format, buf.clone()));
        tracing::subscriber::with_default(sub, f);
        let bytes = buf.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        String::from_utf8(bytes)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// A line without its timestamp (the first JSON value, or the text line's first word).
    fn untimed(line: &str) -> String {
        match line.strip_prefix("{\"timestamp\":\"") {
            Some(rest) => rest
                .split_once('"')
                .map(|(_, r)| r.to_owned())
                .unwrap_or_default(),
            None => line
                .split_once(' ')
                .map(|(_, r)| r.to_owned())
                .unwrap_or_default(),
        }
    }

    /// The step line as [`StepLine::log`] writes it directly, through a sink of its own
    /// whose filter lets lines of `at` and above through.
    fn direct(format: LogFormat, line: &StepLine<'_>, at: Level) -> Vec<String> {
        let (tx, rx) = std::sync::mpsc::sync_channel(4);
        let sink = StepSink {
            format,
            writer: QueueWriter { tx },
            info: Level::INFO <= at,
            warn: Level::WARN <= at,
            error: true,
        };
        line.write_to(&sink);
        // Split as `capture` splits what the layer wrote.
        let bytes: Vec<u8> = rx.try_iter().flatten().collect();
        String::from_utf8(bytes)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The step line through `tracing`, alone and inside a span like the pipeline's
    /// `worker.assignment.receive` (whose fields it repeats, in the same order).
    fn through_tracing(format: LogFormat, line: &StepLine<'_>) -> [Vec<String>; 2] {
        let alone = capture(format, || line.via_tracing());
        let in_span = capture(format, || {
            let span = tracing::info_span!(
                "worker.assignment.receive",
                tenant_id = line.tenant_id.unwrap_or(""),
                trace_id = line.trace_id,
                run_id = line.run_id,
                block_type = line.block_type,
                worker_id = line.worker_id,
                assignment_id = line.assignment_id
            );
            let _in = span.enter();
            line.via_tracing();
        });
        [alone, in_span]
    }

    fn arb_id() -> impl Strategy<Value = Option<String>> {
        prop_oneof![
            Just(None),
            Just(Some(String::new())),
            arb_log_text().prop_map(Some)
        ]
    }

    proptest! {
        /// Written directly, the per-step line has the bytes `tracing` and the log layer
        /// give it (but the timestamp), with or without the receive span around it: hostile
        /// text, credentials, missing and empty ids, both formats, both outcomes.
        #[test]
        fn a_step_line_is_the_same_direct_and_through_tracing(
            success in any::<bool>(),
            ids in proptest::collection::vec(arb_id(), 8),
            texts in proptest::collection::vec(arb_log_text(), 3),
            latency_ms in any::<u64>(),
            attempts in any::<u32>(),
            code in proptest::option::of(any::<u16>()),
            json_format in any::<bool>(),
        ) {
            let format = if json_format { LogFormat::Json } else { LogFormat::Text };
            let id = |i: usize| ids[i].as_deref();
            let line = StepLine {
                success,
                tenant_id: id(0),
                trace_id: id(1),
                run_id: id(2),
                block_type: id(3),
                worker_id: &texts[0],
                assignment_id: id(4),
                status: &texts[1],
                latency_ms,
                attempts,
                error: code.map(|c| (c, texts[2].as_str())),
                flow_id: id(5),
                step_id: id(6),
            };
            let written = direct(format, &line, Level::INFO);
            prop_assert_eq!(written.len(), 1);
            for traced in through_tracing(format, &line) {
                prop_assert_eq!(traced.len(), 1);
                prop_assert_eq!(untimed(&written[0]), untimed(&traced[0]));
            }
        }
    }

    /// What a block logs: inside a span of its own that repeats a key of the receive
    /// span's (the nearest value wins), an event with a field and one without.
    fn block_lines(text: &str) {
        let inner = tracing::info_span!("block", run_id = text, step = 3);
        let _in = inner.enter();
        tracing::warn!(detail = text, "ack publish failed");
        tracing::info!("answered");
    }

    /// Runs a future that is ready without waiting.
    fn run_ready<F: std::future::Future>(fut: F) -> F::Output {
        let mut fut = std::pin::pin!(fut);
        let mut cx = TaskContext::from_waker(std::task::Waker::noop());
        loop {
            if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }

    proptest! {
        /// A line logged inside a task that holds the receive span's fields
        /// (`TaskFields`) has the bytes it has inside the span itself (but the timestamp),
        /// and a line after the task has none of them.
        #[test]
        fn a_line_in_a_task_is_the_same_with_its_fields_or_its_span(
            ids in proptest::collection::vec(arb_id(), 6),
            text in arb_log_text(),
            json_format in any::<bool>(),
        ) {
            let format = if json_format { LogFormat::Json } else { LogFormat::Text };
            let id = |i: usize| ids[i].as_deref();
            let in_span = capture(format, || {
                let span = tracing::info_span!(
                    "worker.assignment.receive",
                    tenant_id = id(0),
                    trace_id = id(1),
                    run_id = id(2),
                    block_type = id(3),
                    worker_id = id(4),
                    assignment_id = id(5)
                );
                span.in_scope(|| block_lines(&text));
                block_lines(&text);
            });
            let with_fields = capture(format, || {
                let fields = TaskFields::record(&[
                    ("tenant_id", id(0)),
                    ("trace_id", id(1)),
                    ("run_id", id(2)),
                    ("block_type", id(3)),
                    ("worker_id", id(4)),
                    ("assignment_id", id(5)),
                ]);
                run_ready(fields.scope(async { block_lines(&text) }));
                block_lines(&text);
            });
            prop_assert_eq!(in_span.len(), 4);
            prop_assert_eq!(with_fields.len(), 4);
            for (a, b) in in_span.iter().zip(&with_fields) {
                prop_assert_eq!(untimed(a), untimed(b));
            }
        }
    }

    #[test]
    fn a_task_s_fields_are_on_the_thread_only_while_it_is_polled() {
        let outer = TaskFields::record(&[("assignment_id", Some("outer"))]);
        let inner = TaskFields::record(&[("assignment_id", Some("inner"))]);
        let ids = |v: &[String]| -> Vec<String> {
            v.iter()
                .map(|l| {
                    json(l)["fields"]["assignment_id"]
                        .as_str()
                        .unwrap_or("-")
                        .to_owned()
                })
                .collect()
        };
        let lines = capture(LogFormat::Json, || {
            run_ready(outer.scope(async {
                tracing::info!("a");
                inner.scope(async { tracing::info!("b") }).await;
                tracing::info!("c");
            }));
            tracing::info!("d");
        });
        assert_eq!(ids(&lines), ["outer", "inner", "outer", "-"], "{lines:?}");
    }

    #[test]
    fn a_step_line_the_filter_turns_away_is_not_written() {
        let line = StepLine {
            success: true,
            tenant_id: Some("t"),
            trace_id: None,
            run_id: None,
            block_type: Some("fs.get"),
            worker_id: "w",
            assignment_id: Some("a-1"),
            status: "success",
            latency_ms: 3,
            attempts: 1,
            error: None,
            flow_id: None,
            step_id: None,
        };
        let failed = StepLine {
            success: false,
            status: "error",
            error: Some((2002, "no such file")),
            ..line
        };
        // `RUST_LOG=warn`: the success line is below it, the failure line is not.
        assert!(direct(LogFormat::Json, &line, Level::WARN).is_empty());
        let written = direct(LogFormat::Json, &failed, Level::WARN);
        assert_eq!(written.len(), 1);
        let v = json(&written[0]);
        assert_eq!(v["level"], "ERROR", "what `grep ERROR` finds (the guide)");
        assert_eq!(v["message"], "Step execution failed");
        assert_eq!(v["fields"]["error_code"], 2002);
        assert_eq!(v["fields"]["worker_id"], "w");
        assert_eq!(v["tenant_id"], "t");
        let timeout = StepLine {
            status: "timeout",
            error: Some((5002, "job deadline passed")),
            ..failed
        };
        let v = json(&direct(LogFormat::Json, &timeout, Level::ERROR)[0]);
        assert_eq!(v["level"], "ERROR");
        // A cancel someone asked for is a warning: below `RUST_LOG=error`.
        let cancelled = StepLine {
            status: "cancelled",
            error: Some((5001, "cancelled")),
            ..failed
        };
        assert!(direct(LogFormat::Json, &cancelled, Level::ERROR).is_empty());
        let v = json(&direct(LogFormat::Json, &cancelled, Level::WARN)[0]);
        assert_eq!(v["level"], "WARN");
        let ok = direct(LogFormat::Text, &line, Level::INFO);
        assert_eq!(ok.len(), 1);
        assert!(
            ok[0].contains(" INFO beamline_worker::runtime::pipeline: Step execution completed"),
            "{}",
            ok[0]
        );
    }

    #[test]
    fn remembered_sensitivity_agrees_with_the_list() {
        let names: [&'static str; 8] = [
            "password",
            "assignment_id",
            "x-api-key",
            "tenant_id",
            "accessToken",
            "status",
            "db.password",
            "latency_ms",
        ];
        for _ in 0..3 {
            for k in names {
                assert_eq!(sensitive_field(k), is_sensitive_key(k), "{k}");
            }
        }
    }

    #[test]
    fn names_side_by_side_are_all_remembered() {
        // Field names as a binary lays them out: one after the other, a few bytes apart.
        static PACKED: &str = "assignment_idblock_typestatuslatency_msattemptstenant_idtrace_idrun_idflow_idstep_idworker_iderror_codeerror_messagepasswordidokab";
        let lens = [13, 10, 6, 10, 8, 9, 8, 6, 7, 7, 9, 10, 13, 8, 2, 2, 1, 1];
        let mut names = Vec::new();
        let mut at = 0;
        for len in lens {
            names.push(&PACKED[at..at + len]);
            at += len;
        }
        assert_eq!(at, PACKED.len());
        let mut seen = SeenNames::new();
        for name in &names {
            seen.put(name, is_sensitive_key(name));
        }
        for name in &names {
            assert_eq!(
                seen.get(name),
                Some(is_sensitive_key(name)),
                "{name} forgotten"
            );
        }
        // A name not put is not found, even where it shares a start with one that was.
        assert_eq!(seen.get(&PACKED[0..10]), None);
    }

    fn json(line: &str) -> serde_json::Value {
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    #[test]
    fn the_outcome_line_has_the_guides_shape() {
        let lines = capture(LogFormat::Json, || {
            let span = tracing::info_span!(
                "worker.assignment.receive",
                tenant_id = "tenant-789",
                run_id = "run-def",
                worker_id = "w-1"
            );
            let _e = span.enter();
            tracing::info!(
                assignment_id = "assign-123",
                block_type = "http.request",
                status = "success",
                latency_ms = 150u64,
                trace_id = "trace-abc",
                "Step execution completed"
            );
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        let v = json(&lines[0]);
        let ts = v["timestamp"].as_str().unwrap_or_default();
        assert_eq!(ts.len(), "2025-01-27T12:00:00.123456Z".len(), "{ts}");
        assert!(ts.ends_with('Z') && ts.as_bytes()[19] == b'.', "{ts}");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["component"], "worker");
        assert_eq!(v["message"], "Step execution completed");
        assert_eq!(v["fields"]["assignment_id"], "assign-123");
        assert_eq!(v["fields"]["block_type"], "http.request");
        assert_eq!(v["fields"]["status"], "success");
        assert_eq!(v["fields"]["latency_ms"], 150);
        assert_eq!(v["fields"]["worker_id"], "w-1");
        assert_eq!(v["trace_id"], "trace-abc");
        assert_eq!(v["tenant_id"], "tenant-789");
        assert_eq!(v["run_id"], "run-def");
        assert!(v.get("flow_id").is_none());
        for id in CORRELATION {
            assert!(
                v["fields"].get(id).is_none(),
                "{id} repeated in fields: {v}"
            );
        }
    }

    /// The per-thread scratch an event is recorded into is reused line after line: no
    /// field of one line may show up in the next; the nearest span's value of a key wins
    /// over an outer span's and the event's own over both; a field recorded on a span
    /// later replaces its first value; a `Debug` impl that logs while its field is being
    /// recorded leaves the line whole (tracing itself drops such a nested event).
    #[test]
    fn each_line_has_its_own_fields_and_the_nearest_value_wins() {
        struct Noisy;
        impl fmt::Debug for Noisy {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                tracing::info!(inner = "yes", "from inside");
                f.write_str("noisy")
            }
        }
        let lines = capture(LogFormat::Json, || {
            let outer = tracing::info_span!(
                "o",
                tenant_id = "t-outer",
                zone = "a",
                status = tracing::field::Empty
            );
            let _o = outer.enter();
            let inner = tracing::info_span!("i", zone = "b");
            let _i = inner.enter();
            tracing::info!(only_first = "x", zone = "c", "first");
            tracing::info!(n = 2u64, "second");
            outer.record("status", "late");
            tracing::info!(thing = ?Noisy, "third");
        });
        assert_eq!(lines.len(), 3, "{lines:?}");
        let first = json(&lines[0]);
        assert_eq!(first["message"], "first");
        assert_eq!(first["fields"]["only_first"], "x");
        assert_eq!(first["fields"]["zone"], "c", "the event's own value wins");
        assert_eq!(first["tenant_id"], "t-outer");
        let second = json(&lines[1]);
        assert_eq!(second["message"], "second");
        assert!(second["fields"].get("only_first").is_none(), "{second}");
        assert_eq!(second["fields"]["zone"], "b", "the inner span's value wins");
        assert_eq!(second["fields"]["n"], 2);
        assert!(second["fields"].get("status").is_none(), "{second}");
        let third = json(&lines[2]);
        assert_eq!(third["message"], "third");
        assert_eq!(third["fields"]["thing"], "noisy");
        assert_eq!(third["fields"]["status"], "late");
        assert!(third["fields"].get("inner").is_none(), "{third}");
        assert!(third["fields"].get("n").is_none(), "{third}");
    }

    /// A span field recorded over and over keeps its span's buffer bounded, and the
    /// fields keep their latest values.
    #[test]
    fn a_span_recorded_again_and_again_stays_small() {
        let mut rec = Recorded::with_capacity(2);
        rec.set("n", Item::I64(1));
        for i in 0..1000 {
            let start = rec.text.len();
            rec.text.push_str(&format!("value-{i}"));
            rec.set("s", Item::Str(start..rec.text.len()));
            rec.compact();
        }
        assert!(rec.text.len() < 2100, "{}", rec.text.len());
        assert_eq!(rec.val(&rec.items[1].1), Val::Str("value-999"));
        assert_eq!(rec.val(&rec.items[0].1), Val::I64(1));
    }

    #[test]
    fn trace_becomes_debug_and_empty_ids_are_left_out() {
        let lines = capture(LogFormat::Json, || {
            tracing::trace!(tenant_id = "", n = -3i64, ok = true, x = 1.5f64, "fine");
            tracing::error!(error = %std::io::Error::other("boom\nline"), "failed");
        });
        let v = json(&lines[0]);
        assert_eq!(v["level"], "DEBUG");
        assert!(v.get("tenant_id").is_none(), "{v}");
        assert_eq!(v["fields"]["n"], -3);
        assert_eq!(v["fields"]["ok"], true);
        assert_eq!(v["fields"]["x"], 1.5);
        let e = json(&lines[1]);
        assert_eq!(e["level"], "ERROR");
        assert_eq!(e["fields"]["error"], "boom\nline");
    }

    #[test]
    fn sensitive_keys_are_redacted_also_as_suffixes() {
        for k in [
            "password",
            "PASSWORD",
            "db_password",
            "x_api_key",
            "x-api-key",
            "apiKey",
            "accessToken",
            "refresh_token",
            "Authorization",
            "proxy-authorization",
            "set-cookie",
            "credit_card",
            "ssn",
            "email",
            "phone",
            "comment",
            "client_secret",
            "token",
        ] {
            assert!(is_sensitive_key(k), "{k}");
            assert_eq!(redact_value(k, "v"), REDACTED, "{k}");
        }
        for k in [
            "assignment_id",
            "tokens",
            "passwords_checked",
            "phoneme",
            "trace_id",
            "status",
        ] {
            assert!(!is_sensitive_key(k), "{k}");
        }
        assert_eq!(redact_value("status", "success"), "success");
    }

    #[test]
    fn credentials_inside_text_are_masked() {
        for (input, want) in [
            (
                "Authorization: Bearer s3cr3t-token",
                "Authorization: Bearer [REDACTED]",
            ),
            ("bearer abc.def", "bearer [REDACTED]"),
            (
                "postgres://u:pw@h:5432/db",
                "postgres://u:[REDACTED]@h:5432/db",
            ),
            (
                "see http://user:p4ss@127.0.0.1:9/x and http://h/y",
                "see http://user:[REDACTED]@127.0.0.1:9/x and http://h/y",
            ),
            (
                "host=db user=u password=hunter2 port=5",
                "host=db user=u password=[REDACTED] port=5",
            ),
            (
                "Server=x;Password=hunter2;",
                "Server=x;Password=[REDACTED];",
            ),
            (
                r#"{"api_key": "k-123", "n": 1}"#,
                r#"{"api_key": "[REDACTED]", "n": 1}"#,
            ),
            (r#"{\"token\":\"t-9\"}"#, r#"{\"token\":\"[REDACTED]\"}"#),
            (
                r#"{"Authorization":"Bearer zz"}"#,
                r#"{"Authorization":"Bearer [REDACTED]"}"#,
            ),
            (
                "plain text with a token bucket",
                "plain text with a token bucket",
            ),
            ("http://example.com/a@b", "http://example.com/a@b"),
            ("mailto user@example.com", "mailto user@example.com"),
        ] {
            assert_eq!(scrub(input), want, "{input}");
        }
        // Idempotent.
        let once = scrub("password=x Bearer y http://a:b@c").into_owned();
        assert_eq!(scrub(&once), once);
        assert!(matches!(scrub("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn secrets_never_reach_a_log_line() {
        let lines = capture(LogFormat::Json, || {
            let span = tracing::info_span!("s", password = "hunter2");
            let _e = span.enter();
            tracing::debug!(
                authorization = "Bearer s3cr3t-token", url = "http://u:pa55w0rd@h/", headers = ?[("Authorization", "Bearer s3cr3t-token")],
                "calling http://u:pa55w0rd@h/ with Bearer s3cr3t-token");
        });
        let all = lines.join("\n");
        for secret in ["hunter2", "s3cr3t-token", "pa55w0rd"] {
            assert!(!all.contains(secret), "{secret} leaked: {all}");
        }
        let v = json(&lines[0]);
        assert_eq!(v["fields"]["password"], REDACTED);
        assert_eq!(v["fields"]["authorization"], REDACTED);
        assert_eq!(v["fields"]["url"], "http://u:[REDACTED]@h/");
    }

    #[test]
    fn rust_log_filters_and_quiets_noisy_dependencies() {
        let enabled = |spec: &str, level: Level| {
            let (filter, _) = env_filter(spec);
            let sub = tracing_subscriber::registry().with(filter);
            tracing::subscriber::with_default(sub, || {
                if level == Level::DEBUG {
                    tracing::enabled!(Level::DEBUG)
                } else {
                    tracing::enabled!(Level::INFO)
                }
            })
        };
        assert!(enabled("", Level::INFO));
        assert!(!enabled("", Level::DEBUG));
        assert!(enabled("debug", Level::DEBUG));
        assert!(!enabled("warn", Level::INFO));
        let (_, rejected) = env_filter("info,beamline_worker=bogus");
        assert_eq!(rejected.len(), 1, "{rejected:?}");
        let (f, _) = env_filter("debug");
        let text = f.to_string();
        assert!(
            text.contains("async_nats=warn") && text.contains("debug"),
            "{text}"
        );
        let (f, _) = env_filter("debug,async_nats=trace");
        assert!(
            f.to_string().contains("async_nats=trace")
                && !f.to_string().contains("async_nats=warn")
        );
        let (f, _) = env_filter("error");
        assert!(
            !f.to_string().contains("async_nats"),
            "a quiet global level is not raised: {f}"
        );
    }

    /// The fast filter decides as the `EnvFilter` would, for the specs it takes.
    #[test]
    fn a_targets_filter_agrees_with_the_env_filter() {
        fn decisions<S: tracing::Subscriber + Send + Sync + 'static>(sub: S) -> [bool; 6] {
            tracing::subscriber::with_default(sub, || {
                [
                    tracing::enabled!(target: "beamline_worker::runtime", Level::INFO),
                    tracing::enabled!(target: "beamline_worker::runtime", Level::DEBUG),
                    tracing::enabled!(target: "async_nats", Level::INFO),
                    tracing::enabled!(target: "async_nats::connection", Level::WARN),
                    tracing::enabled!(target: "hyper", Level::DEBUG),
                    tracing::enabled!(target: "other", Level::TRACE),
                ]
            })
        }
        for spec in [
            "",
            "info",
            "debug",
            "warn",
            "error,beamline_worker=debug",
            "debug,async_nats=trace",
            "beamline_worker::runtime=trace,info",
            "async_nats",
            "off",
            "info,bogus=nope",
        ] {
            let targets = targets_filter(spec).expect("plain directives");
            let (env, _) = env_filter(spec);
            assert_eq!(
                decisions(tracing_subscriber::registry().with(targets)),
                decisions(tracing_subscriber::registry().with(env)),
                "{spec:?}"
            );
        }
        assert!(targets_filter("info,[span{x=1}]=debug").is_none());
    }

    #[test]
    fn text_format_is_one_readable_line() {
        let lines = capture(LogFormat::Text, || {
            tracing::info!(
                assignment_id = "a-1",
                tenant_id = "t",
                secret = "x",
                note = "two words",
                "Step execution completed"
            );
        });
        assert_eq!(lines.len(), 1);
        let l = &lines[0];
        assert!(
            l.contains(" INFO ") && l.contains("Step execution completed"),
            "{l}"
        );
        assert!(
            l.contains("assignment_id=a-1") && l.contains("tenant_id=t"),
            "{l}"
        );
        assert!(
            l.contains("secret=[REDACTED]") && l.contains("note=\"two words\""),
            "{l}"
        );
    }
}
