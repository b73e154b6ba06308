//! The load driver: publishes assignments (flat out within a window, or at a fixed rate),
//! and matches acks / results back to them by `assignment_id`.

use std::borrow::Cow;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Result};
use async_nats::{Client, Subject};
use futures::{FutureExt as _, StreamExt as _};
use indicatif::ProgressBar;
use serde::Deserialize;

use crate::null_worker::{extract_assignment_id, Subjects};
use crate::procs::{self, ChildGuard};
use crate::scenario::{BlockType, PayloadBuilder, Scenario};
use crate::stats::{new_histogram, CpuDelta, RunOutcome, Sample};

/// How much load, and for how long.
#[derive(Debug, Clone)]
pub(crate) struct LoadSpec {
    pub(crate) scenario: Scenario,
    /// Most assignments in flight (sent, no result yet).
    pub(crate) window: usize,
    /// Offered rate in tasks/s; None = flat out (as fast as the window allows).
    pub(crate) rate: Option<f64>,
    pub(crate) duration: Option<Duration>,
    pub(crate) count: Option<u64>,
    /// After the last publish, how long to wait for outstanding results.
    pub(crate) drain_timeout: Duration,
    /// Soak: take a sample this often.
    pub(crate) sample_every: Option<Duration>,
}

/// Processes whose CPU (and, for the worker, RSS) is read around a run.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Observed {
    pub(crate) worker_pid: Option<u32>,
    pub(crate) broker_pid: Option<u32>,
}

#[derive(Deserialize)]
struct Reply<'a> {
    #[serde(borrow, default)]
    assignment_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    status: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    job: Option<ReplyJob<'a>>,
}

#[derive(Deserialize)]
struct ReplyJob<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<Cow<'a, str>>,
}

/// What the bench reads from an ack or a result.
#[derive(Debug)]
pub(crate) struct ReplyFields<'a> {
    pub(crate) id: Cow<'a, str>,
    pub(crate) status: Cow<'a, str>,
    pub(crate) job_type: Option<Cow<'a, str>>,
}

/// `assignment_id`, `status` and `job.type` of an ack or result; falls back to a byte
/// search for the id when the body is not the expected shape.
pub(crate) fn parse_reply(payload: &[u8]) -> Option<ReplyFields<'_>> {
    match serde_json::from_slice::<Reply<'_>>(payload) {
        Ok(r) => Some(ReplyFields {
            id: r.assignment_id?,
            status: r.status.unwrap_or(Cow::Borrowed("missing-status")),
            job_type: r.job.and_then(|j| j.kind),
        }),
        Err(_) => {
            let id = std::str::from_utf8(extract_assignment_id(payload)?).ok()?;
            Some(ReplyFields {
                id: Cow::Borrowed(id),
                status: Cow::Borrowed("unparseable"),
                job_type: None,
            })
        }
    }
}

/// A short tag that makes assignment ids unique per run (and per bench process).
pub(crate) fn unique_tag(counter: u64) -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    format!("{:x}{:x}{counter:x}", ms % 0xffff_ffff, std::process::id())
}

/// The seq of an id of this run (`<prefix><seq>`).
pub(crate) fn seq_of(id: &str, prefix: &str) -> Option<u64> {
    id.strip_prefix(prefix)?.parse().ok()
}

const EMPTY: u64 = u64::MAX;

#[derive(Clone, Copy)]
struct Slot {
    seq: u64,
    sent_ns: u64,
    block: u8,
    acked: bool,
    done: bool,
}

const EMPTY_SLOT: Slot = Slot {
    seq: EMPTY,
    sent_ns: 0,
    block: 0,
    acked: false,
    done: false,
};

struct Tracker {
    start: Instant,
    prefix: String,
    ring: Vec<Slot>,
    mask: u64,
    inflight: usize,
    out: RunOutcome,
    last_result_ns: u64,
    check_type: bool,
    interval_hist: Option<hdrhistogram::Histogram<u64>>,
}

impl Tracker {
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn on_publish(&mut self, seq: u64, sent_ns: u64, block: BlockType) {
        let slot = &mut self.ring[(seq & self.mask) as usize];
        if slot.seq != EMPTY && !slot.done {
            // Evicted without a result: it is far too old to still count.
            self.out.lost += 1;
            self.inflight -= 1;
        }
        *slot = Slot {
            seq,
            sent_ns,
            block: block as u8,
            acked: false,
            done: false,
        };
        self.inflight += 1;
        self.out.sent += 1;
    }

    fn on_ack(&mut self, payload: &[u8], now_ns: u64) {
        let Some(ReplyFields { id, status, .. }) = parse_reply(payload) else {
            return;
        };
        let Some(seq) = seq_of(&id, &self.prefix) else {
            return;
        };
        let slot = &mut self.ring[(seq & self.mask) as usize];
        if slot.seq != seq || slot.acked {
            return;
        }
        slot.acked = true;
        let t = &mut self.out.types[slot.block as usize];
        t.ack
            .saturating_record((now_ns.saturating_sub(slot.sent_ns) / 1000).max(1));
        if status != "accepted" {
            t.rejected_acks += 1;
        }
    }

    fn on_result(&mut self, payload: &[u8], now_ns: u64) {
        let Some(ReplyFields {
            id,
            status,
            job_type,
        }) = parse_reply(payload)
        else {
            return;
        };
        let Some(seq) = seq_of(&id, &self.prefix) else {
            return;
        };
        let slot = &mut self.ring[(seq & self.mask) as usize];
        if slot.seq != seq || slot.done {
            self.out.late_or_duplicate += 1;
            return;
        }
        slot.done = true;
        self.inflight -= 1;
        self.last_result_ns = now_ns;
        self.out.completed += 1;
        let block = BlockType::ALL[slot.block as usize];
        let lat_us = (now_ns.saturating_sub(slot.sent_ns) / 1000).max(1);
        let t = &mut self.out.types[slot.block as usize];
        t.result.saturating_record(lat_us);
        t.completed += 1;
        if status != "success" {
            *t.bad_statuses.entry(status.into_owned()).or_insert(0) += 1;
        }
        if self.check_type && job_type.as_deref().is_some_and(|j| j != block.job_type()) {
            t.type_mismatch += 1;
        }
        if let Some(h) = &mut self.interval_hist {
            h.saturating_record(lat_us);
        }
        if let Some(t) = &mut self.out.timeline {
            t.push((slot.sent_ns / 1000, lat_us));
        }
    }
}

/// Names a directory: each measured run writes its results' send times and latencies
/// there as CSV (`RunOutcome::timeline`, `main.rs`).
pub(crate) const TIMELINE_ENV: &str = "BEAMLINE_BENCH_TIMELINE";

/// Runs one measured load and returns what it saw. `check_type`: count results whose
/// `job.type` differs from the type sent (off for the null-echo worker, which says "null").
#[allow(clippy::too_many_arguments)]
pub(crate) async fn drive(
    client: &Client,
    subjects: &Subjects,
    payloads: &PayloadBuilder,
    spec: &LoadSpec,
    tag: &str,
    observed: Observed,
    check_type: bool,
    progress: &ProgressBar,
) -> Result<RunOutcome> {
    if spec.duration.is_none() && spec.count.is_none() {
        bail!("a run needs --duration or --count");
    }
    let window = spec.window.max(1);
    let mut acks = client
        .subscribe(subjects.ack.clone())
        .await
        .map_err(|e| anyhow!("subscribe ack: {e}"))?;
    let mut results = client
        .subscribe(subjects.result.clone())
        .await
        .map_err(|e| anyhow!("subscribe result: {e}"))?;
    client.flush().await.map_err(|e| anyhow!("flush: {e}"))?;
    let assign: Subject = Subject::from(subjects.assign.as_str());
    let ring_len = (window * 64).max(1 << 16).next_power_of_two();

    let cpu_before = (
        observed.worker_pid.and_then(procs::cpu_seconds),
        observed.broker_pid.and_then(procs::cpu_seconds),
        procs::self_cpu_seconds(),
    );
    let start = Instant::now();
    let mut tr = Tracker {
        start,
        prefix: format!("b{tag}-"),
        ring: vec![EMPTY_SLOT; ring_len],
        mask: ring_len as u64 - 1,
        inflight: 0,
        out: RunOutcome::default(),
        last_result_ns: 0,
        check_type,
        interval_hist: spec.sample_every.map(|_| new_histogram()),
    };
    if std::env::var_os(TIMELINE_ENV).is_some() {
        tr.out.timeline = Some(Vec::with_capacity(1 << 20));
    }
    let publish_until = spec.duration.map(|d| start + d);
    let mut publishing = true;
    let mut drain_deadline = start;
    let mut next_seq: u64 = 0;
    let tick_every = Duration::from_millis(100);
    let mut next_tick = start + tick_every;
    let mut next_sample = spec
        .sample_every
        .map(|e| (start + e, start, 0u64, cpu_before.0));
    let mut id = String::with_capacity(48);
    let sleep = tokio::time::sleep_until(next_tick.into());
    tokio::pin!(sleep);

    loop {
        let now = Instant::now();
        if publishing
            && (spec.count.is_some_and(|c| next_seq >= c)
                || publish_until.is_some_and(|u| now >= u))
        {
            publishing = false;
            drain_deadline = now + spec.drain_timeout;
        }
        if !publishing && (tr.inflight == 0 || now >= drain_deadline) {
            break;
        }
        let mut wake = next_tick;
        if publishing {
            let mut budget = window.saturating_sub(tr.inflight).min(256) as u64;
            if let Some(c) = spec.count {
                budget = budget.min(c.saturating_sub(next_seq));
            }
            if let Some(rate) = spec.rate {
                let due = ((now - start).as_secs_f64() * rate).floor() as u64 + 1;
                budget = budget.min(due.saturating_sub(next_seq));
            }
            for _ in 0..budget {
                let seq = next_seq;
                next_seq += 1;
                let block = spec.scenario.block_for(seq);
                id.clear();
                id.push_str(&tr.prefix);
                id.push_str(itoa(seq).as_str());
                let body = payloads.assignment(&id, seq, block);
                // Rate mode measures from the intended send time, so a worker (or bench)
                // that falls behind shows up as latency (no coordinated omission).
                let sent_ns = match spec.rate {
                    Some(rate) => (seq as f64 / rate * 1e9) as u64,
                    None => tr.now_ns(),
                };
                tr.on_publish(seq, sent_ns, block);
                client
                    .publish(assign.clone(), body)
                    .await
                    .map_err(|e| anyhow!("publish: {e}"))?;
            }
            if let (Some(rate), true) = (spec.rate, tr.inflight < window) {
                let due_at = start + Duration::from_secs_f64(next_seq as f64 / rate);
                wake = wake.min(due_at);
            }
            if let Some(u) = publish_until {
                wake = wake.min(u);
            }
        } else {
            wake = wake.min(drain_deadline);
        }
        sleep.as_mut().reset(wake.into());
        tokio::select! {
            biased;
            m = acks.next() => {
                let Some(m) = m else { bail!("ack subscription closed") };
                let now_ns = tr.now_ns();
                tr.on_ack(&m.payload, now_ns);
            }
            m = results.next() => {
                let Some(m) = m else { bail!("result subscription closed") };
                let now_ns = tr.now_ns();
                tr.on_result(&m.payload, now_ns);
            }
            _ = &mut sleep => {}
        }
        // Drain what is already buffered, alternating ack / result so neither kind waits
        // behind a backlog of the other (their receive time is their timestamp).
        for _ in 0..512 {
            let mut any = false;
            if let Some(Some(m)) = acks.next().now_or_never() {
                let n = tr.now_ns();
                tr.on_ack(&m.payload, n);
                any = true;
            }
            if let Some(Some(m)) = results.next().now_or_never() {
                let n = tr.now_ns();
                tr.on_result(&m.payload, n);
                any = true;
            }
            if !any {
                break;
            }
        }
        let now = Instant::now();
        if now >= next_tick {
            next_tick = now + tick_every;
            let el = (now - start).as_secs_f64();
            match (spec.count, spec.duration) {
                (Some(_), _) => progress.set_position(tr.out.completed),
                (None, _) => progress.set_position((el * 10.0) as u64),
            }
            progress.set_message(format!(
                "{} done, {:.0}/s, {} in flight",
                tr.out.completed,
                tr.out.completed as f64 / el.max(1e-3),
                tr.inflight
            ));
            if let Some((at, last_t, last_done, last_cpu)) = next_sample {
                if now >= at {
                    let dt = (now - last_t).as_secs_f64();
                    let cpu = observed.worker_pid.and_then(procs::cpu_seconds);
                    let h = tr.interval_hist.as_mut();
                    let p99 = h
                        .as_ref()
                        .map(|h| h.value_at_quantile(0.99) as f64 / 1000.0)
                        .unwrap_or(0.0);
                    if let Some(h) = h {
                        h.reset();
                    }
                    tr.out.samples.push(Sample {
                        t_s: el,
                        rss_kib: observed.worker_pid.and_then(procs::rss_kib),
                        tasks_per_s: (tr.out.completed - last_done) as f64 / dt.max(1e-3),
                        result_p99_ms: p99,
                        worker_cpu_pct: match (cpu, last_cpu) {
                            (Some(a), Some(b)) => Some((a - b) / dt.max(1e-3) * 100.0),
                            _ => None,
                        },
                    });
                    let every = spec.sample_every.unwrap_or(tick_every);
                    next_sample = Some((at + every, now, tr.out.completed, cpu));
                }
            }
        }
    }

    let end_ns = tr.now_ns();
    tr.out.lost += tr.ring.iter().filter(|s| s.seq != EMPTY && !s.done).count() as u64;
    let last = if tr.last_result_ns > 0 {
        tr.last_result_ns
    } else {
        end_ns
    };
    tr.out.elapsed_s = last as f64 / 1e9;
    tr.out.cpu = CpuDelta {
        worker_s: delta(
            cpu_before.0,
            observed.worker_pid.and_then(procs::cpu_seconds),
        ),
        broker_s: delta(
            cpu_before.1,
            observed.broker_pid.and_then(procs::cpu_seconds),
        ),
        bench_s: delta(cpu_before.2, procs::self_cpu_seconds()),
    };
    drop(acks);
    drop(results);
    Ok(tr.out)
}

fn delta(before: Option<f64>, after: Option<f64>) -> Option<f64> {
    Some(after? - before?)
}

/// Decimal formatting without the fmt machinery.
fn itoa(mut v: u64) -> Itoa {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    Itoa { buf, start: i }
}

struct Itoa {
    buf: [u8; 20],
    start: usize,
}

impl Itoa {
    fn as_str(&self) -> &str {
        // Only ASCII digits were written.
        std::str::from_utf8(&self.buf[self.start..]).unwrap_or("0")
    }
}

/// Waits until a probe assignment (`fs.get`) round-trips through the worker listening on
/// `subjects`, re-publishing a probe every 250 ms. Fails early if the child exits.
pub(crate) async fn wait_ready(
    client: &Client,
    subjects: &Subjects,
    payloads: &PayloadBuilder,
    tag: &str,
    timeout: Duration,
    child: &mut ChildGuard,
) -> Result<Duration> {
    let start = Instant::now();
    let mut results = client
        .subscribe(subjects.result.clone())
        .await
        .map_err(|e| anyhow!("subscribe: {e}"))?;
    client.flush().await.map_err(|e| anyhow!("flush: {e}"))?;
    let prefix = format!("ready-{tag}-");
    let mut n = 0u64;
    loop {
        if let Some(st) = child.exited() {
            bail!(
                "{} exited before it was ready ({st}):\n{}",
                child.name(),
                child.log_tail(3000)
            );
        }
        if start.elapsed() > timeout {
            bail!(
                "{} not ready after {:?} (no result for a probe on {}):\n{}",
                child.name(),
                timeout,
                subjects.assign,
                child.log_tail(3000)
            );
        }
        let id = format!("{prefix}{n}");
        n += 1;
        client
            .publish(
                Subject::from(subjects.assign.as_str()),
                payloads.assignment(&id, 0, BlockType::FsGet),
            )
            .await
            .map_err(|e| anyhow!("publish probe: {e}"))?;
        let until = tokio::time::Instant::now() + Duration::from_millis(250);
        loop {
            match tokio::time::timeout_at(until, results.next()).await {
                Ok(Some(m)) => {
                    if let Some(r) = parse_reply(&m.payload) {
                        if r.id.starts_with(&prefix) {
                            return Ok(start.elapsed());
                        }
                    }
                }
                Ok(None) => bail!("result subscription closed"),
                Err(_) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_worker_and_null_replies() {
        let r = parse_reply(
            br#"{"assignment_id":"bx-3","status":"error","job":{"type":"sql.query"},"result":{"status":"nested"},"error":{"code":2002}}"#,
        )
        .expect("parsed");
        assert_eq!(
            (r.id.as_ref(), r.status.as_ref(), r.job_type.as_deref()),
            ("bx-3", "error", Some("sql.query"))
        );
        let r = parse_reply(br#"{"status":"accepted","assignment_id":"bx-4"}"#).expect("parsed");
        assert_eq!(
            (r.id.as_ref(), r.status.as_ref(), r.job_type),
            ("bx-4", "accepted", None)
        );
        // Not the expected shape: id by byte search, status marked.
        let r = parse_reply(br#"{"assignment_id":"bx-5","job":"weird"}"#).expect("fallback");
        assert_eq!((r.id.as_ref(), r.status.as_ref()), ("bx-5", "unparseable"));
        assert!(parse_reply(b"{}").is_none());
    }

    #[test]
    fn ids_round_trip() {
        assert_eq!(itoa(0).as_str(), "0");
        assert_eq!(itoa(u64::MAX).as_str(), u64::MAX.to_string());
        assert_eq!(seq_of("babc-17", "babc-"), Some(17));
        assert_eq!(seq_of("bother-17", "babc-"), None);
        assert_ne!(unique_tag(1), unique_tag(2));
    }

    #[test]
    fn tracker_matches_results_counts_duplicates_and_evictions() {
        let mut tr = Tracker {
            start: Instant::now(),
            prefix: "bt-".into(),
            ring: vec![EMPTY_SLOT; 4],
            mask: 3,
            inflight: 0,
            out: RunOutcome {
                timeline: Some(Vec::new()),
                ..RunOutcome::default()
            },
            last_result_ns: 0,
            check_type: true,
            interval_hist: None,
        };
        tr.on_publish(0, 0, BlockType::Sql);
        tr.on_publish(1, 0, BlockType::Http);
        tr.on_ack(
            br#"{"assignment_id":"bt-0","status":"accepted"}"#,
            1_000_000,
        );
        tr.on_result(
            br#"{"assignment_id":"bt-0","status":"success","job":{"type":"sql.query"}}"#,
            2_000_000,
        );
        tr.on_result(
            br#"{"assignment_id":"bt-0","status":"success","job":{"type":"sql.query"}}"#,
            2_000_000,
        );
        tr.on_result(
            br#"{"assignment_id":"bt-1","status":"timeout","job":{"type":"fs.get"}}"#,
            3_000_000,
        );
        assert_eq!(tr.out.completed, 2);
        assert_eq!(tr.out.late_or_duplicate, 1);
        assert_eq!(tr.inflight, 0);
        let sql = &tr.out.types[BlockType::Sql.index()];
        assert_eq!(sql.ack.len(), 1);
        assert!((sql.result.value_at_quantile(0.5) as i64 - 2000).abs() <= 2);
        let http = &tr.out.types[BlockType::Http.index()];
        assert_eq!(http.bad_statuses.get("timeout"), Some(&1));
        assert_eq!(http.type_mismatch, 1);
        // Each matched result once in the timeline: (sent µs, latency µs).
        assert_eq!(
            tr.out.timeline.as_deref(),
            Some(&[(0, 2000), (0, 3000)][..])
        );
        // seq 2 unanswered, then seq 6 reuses its slot: counted lost.
        tr.on_publish(2, 0, BlockType::FsGet);
        tr.on_publish(6, 0, BlockType::FsGet);
        assert_eq!(tr.out.lost, 1);
        assert_eq!(tr.inflight, 1);
    }
}
