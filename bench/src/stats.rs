//! Latency summaries, medians over repeats, worker/null ratios, the CP3-LC gate and the
//! soak flatness verdict. Everything here is pure (no I/O) and unit-tested.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::scenario::BlockType;

/// CP3-LC throughput floor, tasks per second.
pub(crate) const GATE_MIN_TASKS_PER_S: f64 = 500.0;
/// Soak: RSS is "flat" when max(last third) <= FLAT_FACTOR * max(first third) after warm-up.
pub(crate) const FLAT_FACTOR: f64 = 1.1;

/// Latency histogram in microseconds, 1 µs .. 120 s, 3 significant digits.
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("constant histogram bounds are valid")
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub(crate) struct LatencySummary {
    pub(crate) count: u64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) max_ms: f64,
    pub(crate) mean_ms: f64,
}

pub(crate) fn summarize(h: &Histogram<u64>) -> LatencySummary {
    if h.is_empty() {
        return LatencySummary::default();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    LatencySummary {
        count: h.len(),
        p50_ms: ms(h.value_at_quantile(0.50)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
        mean_ms: h.mean() / 1000.0,
    }
}

/// Median of a list (mean of the two middle values for an even count); NaN when empty.
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn median_opt(values: &[Option<f64>]) -> Option<f64> {
    let v: Vec<f64> = values.iter().flatten().copied().collect();
    (!v.is_empty()).then(|| median(&v))
}

fn median_summary(s: &[&LatencySummary]) -> LatencySummary {
    let m = |f: fn(&LatencySummary) -> f64| median(&s.iter().map(|x| f(x)).collect::<Vec<_>>());
    LatencySummary {
        count: s.iter().map(|x| x.count).sum(),
        p50_ms: m(|x| x.p50_ms),
        p99_ms: m(|x| x.p99_ms),
        p999_ms: m(|x| x.p999_ms),
        max_ms: m(|x| x.max_ms),
        mean_ms: m(|x| x.mean_ms),
    }
}

/// What one measured run of one target (null or worker) recorded for one block type.
#[derive(Debug, Clone)]
pub(crate) struct TypeOutcome {
    pub(crate) ack: Histogram<u64>,
    pub(crate) result: Histogram<u64>,
    pub(crate) completed: u64,
    /// Non-success result statuses (error / timeout / cancelled / other) and their counts.
    pub(crate) bad_statuses: BTreeMap<String, u64>,
    pub(crate) rejected_acks: u64,
    /// Results whose `job.type` differs from the type sent (real worker only).
    pub(crate) type_mismatch: u64,
}

impl Default for TypeOutcome {
    fn default() -> Self {
        TypeOutcome {
            ack: new_histogram(),
            result: new_histogram(),
            completed: 0,
            bad_statuses: BTreeMap::new(),
            rejected_acks: 0,
            type_mismatch: 0,
        }
    }
}

impl TypeOutcome {
    pub(crate) fn errors(&self) -> u64 {
        self.bad_statuses.values().sum()
    }
}

/// CPU seconds used during a measured run (after minus before).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CpuDelta {
    pub(crate) worker_s: Option<f64>,
    pub(crate) broker_s: Option<f64>,
    pub(crate) bench_s: Option<f64>,
}

/// One periodic soak sample.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Sample {
    pub(crate) t_s: f64,
    pub(crate) rss_kib: Option<u64>,
    pub(crate) tasks_per_s: f64,
    pub(crate) result_p99_ms: f64,
    pub(crate) worker_cpu_pct: Option<f64>,
}

/// Everything one measured run of one target recorded.
#[derive(Debug, Clone, Default)]
pub(crate) struct RunOutcome {
    pub(crate) types: [TypeOutcome; 5],
    pub(crate) sent: u64,
    pub(crate) completed: u64,
    /// Sent but no result before the drain timeout (or evicted from the tracking ring).
    pub(crate) lost: u64,
    /// Results for unknown / already-finished ids (duplicates, late arrivals).
    pub(crate) late_or_duplicate: u64,
    /// First publish to last result, seconds.
    pub(crate) elapsed_s: f64,
    pub(crate) cpu: CpuDelta,
    pub(crate) samples: Vec<Sample>,
    /// Each result's (intended send time since the run's start, latency), both in µs, in
    /// the order the results came; only when `BEAMLINE_BENCH_TIMELINE` names a directory
    /// to write them to (a diagnostic: where in time the slow results fall).
    pub(crate) timeline: Option<Vec<(u64, u64)>>,
}

impl RunOutcome {
    /// Histograms of all types merged (ack, result).
    pub(crate) fn merged(&self) -> (Histogram<u64>, Histogram<u64>) {
        let mut ack = new_histogram();
        let mut res = new_histogram();
        for t in &self.types {
            let _ = ack.add(&t.ack);
            let _ = res.add(&t.result);
        }
        (ack, res)
    }
}

/// Figures for one block type (or "all") of one target.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Figures {
    pub(crate) block_type: String,
    pub(crate) completed: u64,
    pub(crate) tasks_per_s: f64,
    pub(crate) errors: u64,
    pub(crate) rejected_acks: u64,
    pub(crate) type_mismatch: u64,
    pub(crate) ack: LatencySummary,
    pub(crate) result: LatencySummary,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub(crate) struct CpuFigures {
    /// CPU seconds of the worker (or null-echo) process per completed task.
    pub(crate) worker_s_per_task: Option<f64>,
    /// CPU seconds of nats-server per completed task (None when attached without --broker-pid).
    pub(crate) broker_s_per_task: Option<f64>,
    /// CPU seconds of the bench process (driver + HTTP upstream) per completed task.
    pub(crate) bench_s_per_task: Option<f64>,
}

/// One target (null or worker) of one measurement, medians over its repeats.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TargetReport {
    pub(crate) target: String,
    pub(crate) repeats: usize,
    pub(crate) sent: u64,
    pub(crate) completed: u64,
    pub(crate) lost: u64,
    pub(crate) late_or_duplicate: u64,
    pub(crate) elapsed_s: f64,
    pub(crate) tasks_per_s: f64,
    /// tasks/s of each repeat, in run order.
    pub(crate) repeat_tasks_per_s: Vec<f64>,
    pub(crate) per_type: Vec<Figures>,
    pub(crate) cpu: CpuFigures,
    pub(crate) bad_statuses: BTreeMap<String, u64>,
}

impl TargetReport {
    pub(crate) fn figures(&self, block_type: &str) -> Option<&Figures> {
        self.per_type.iter().find(|f| f.block_type == block_type)
    }
    pub(crate) fn errors(&self) -> u64 {
        self.bad_statuses.values().sum()
    }
}

#[allow(clippy::too_many_arguments)]
fn figures_of(
    block_type: &str,
    completed: u64,
    errors: u64,
    rejected: u64,
    mismatch: u64,
    ack: &Histogram<u64>,
    res: &Histogram<u64>,
    elapsed_s: f64,
) -> Figures {
    Figures {
        block_type: block_type.to_string(),
        completed,
        tasks_per_s: if elapsed_s > 0.0 {
            completed as f64 / elapsed_s
        } else {
            0.0
        },
        errors,
        rejected_acks: rejected,
        type_mismatch: mismatch,
        ack: summarize(ack),
        result: summarize(res),
    }
}

/// Per-type and "all" figures of one run; types that saw no task are left out.
pub(crate) fn run_figures(o: &RunOutcome) -> Vec<Figures> {
    let mut out = Vec::new();
    for b in BlockType::ALL {
        let t = &o.types[b.index()];
        if t.completed == 0 && t.ack.is_empty() {
            continue;
        }
        out.push(figures_of(
            b.job_type(),
            t.completed,
            t.errors(),
            t.rejected_acks,
            t.type_mismatch,
            &t.ack,
            &t.result,
            o.elapsed_s,
        ));
    }
    let (ack, res) = o.merged();
    let sum = |f: fn(&TypeOutcome) -> u64| o.types.iter().map(f).sum::<u64>();
    out.push(figures_of(
        "all",
        o.completed,
        sum(TypeOutcome::errors),
        sum(|t| t.rejected_acks),
        sum(|t| t.type_mismatch),
        &ack,
        &res,
        o.elapsed_s,
    ));
    out
}

fn per_task(cpu_s: Option<f64>, completed: u64) -> Option<f64> {
    cpu_s
        .filter(|_| completed > 0)
        .map(|s| s / completed as f64)
}

/// Medians over repeats: rates, latencies and CPU/task are medians; counts are sums.
pub(crate) fn aggregate(target: &str, runs: &[RunOutcome]) -> TargetReport {
    let figs: Vec<Vec<Figures>> = runs.iter().map(run_figures).collect();
    let mut names: Vec<String> = Vec::new();
    for f in figs.iter().flatten() {
        if !names.contains(&f.block_type) {
            names.push(f.block_type.clone());
        }
    }
    // Keep "all" last.
    names.sort_by_key(|n| n == "all");
    let per_type = names
        .iter()
        .map(|name| {
            let cells: Vec<&Figures> = figs
                .iter()
                .flatten()
                .filter(|f| &f.block_type == name)
                .collect();
            Figures {
                block_type: name.clone(),
                completed: cells.iter().map(|c| c.completed).sum(),
                tasks_per_s: median(&cells.iter().map(|c| c.tasks_per_s).collect::<Vec<_>>()),
                errors: cells.iter().map(|c| c.errors).sum(),
                rejected_acks: cells.iter().map(|c| c.rejected_acks).sum(),
                type_mismatch: cells.iter().map(|c| c.type_mismatch).sum(),
                ack: median_summary(&cells.iter().map(|c| &c.ack).collect::<Vec<_>>()),
                result: median_summary(&cells.iter().map(|c| &c.result).collect::<Vec<_>>()),
            }
        })
        .collect();
    let mut bad_statuses = BTreeMap::new();
    for r in runs {
        for t in &r.types {
            for (k, v) in &t.bad_statuses {
                *bad_statuses.entry(k.clone()).or_insert(0) += v;
            }
        }
    }
    let repeat_tasks_per_s: Vec<f64> = runs
        .iter()
        .map(|r| {
            if r.elapsed_s > 0.0 {
                r.completed as f64 / r.elapsed_s
            } else {
                0.0
            }
        })
        .collect();
    TargetReport {
        target: target.to_string(),
        repeats: runs.len(),
        sent: runs.iter().map(|r| r.sent).sum(),
        completed: runs.iter().map(|r| r.completed).sum(),
        lost: runs.iter().map(|r| r.lost).sum(),
        late_or_duplicate: runs.iter().map(|r| r.late_or_duplicate).sum(),
        elapsed_s: median(&runs.iter().map(|r| r.elapsed_s).collect::<Vec<_>>()),
        tasks_per_s: median(&repeat_tasks_per_s),
        repeat_tasks_per_s,
        per_type,
        cpu: CpuFigures {
            worker_s_per_task: median_opt(
                &runs
                    .iter()
                    .map(|r| per_task(r.cpu.worker_s, r.completed))
                    .collect::<Vec<_>>(),
            ),
            broker_s_per_task: median_opt(
                &runs
                    .iter()
                    .map(|r| per_task(r.cpu.broker_s, r.completed))
                    .collect::<Vec<_>>(),
            ),
            bench_s_per_task: median_opt(
                &runs
                    .iter()
                    .map(|r| per_task(r.cpu.bench_s, r.completed))
                    .collect::<Vec<_>>(),
            ),
        },
        bad_statuses,
    }
}

/// worker ÷ null for every figure of one block type. tasks/s < 1 means the worker reaches
/// that fraction of the ceiling; latency and CPU > 1 mean "that many times the null's".
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Ratios {
    pub(crate) block_type: String,
    pub(crate) tasks_per_s: Option<f64>,
    pub(crate) ack_p50: Option<f64>,
    pub(crate) ack_p99: Option<f64>,
    pub(crate) ack_p999: Option<f64>,
    pub(crate) result_p50: Option<f64>,
    pub(crate) result_p99: Option<f64>,
    pub(crate) result_p999: Option<f64>,
    pub(crate) worker_cpu_per_task: Option<f64>,
    pub(crate) broker_cpu_per_task: Option<f64>,
}

pub(crate) fn ratio(worker: f64, null: f64) -> Option<f64> {
    (null > 0.0 && worker.is_finite() && null.is_finite()).then(|| worker / null)
}

fn ratio_opt(w: Option<f64>, n: Option<f64>) -> Option<f64> {
    ratio(w?, n?)
}

pub(crate) fn ratios(worker: &TargetReport, null: &TargetReport) -> Vec<Ratios> {
    worker
        .per_type
        .iter()
        .filter_map(|w| {
            let n = null.figure_for(&w.block_type)?;
            let all = w.block_type == "all";
            Some(Ratios {
                block_type: w.block_type.clone(),
                tasks_per_s: ratio(w.tasks_per_s, n.tasks_per_s),
                ack_p50: ratio(w.ack.p50_ms, n.ack.p50_ms),
                ack_p99: ratio(w.ack.p99_ms, n.ack.p99_ms),
                ack_p999: ratio(w.ack.p999_ms, n.ack.p999_ms),
                result_p50: ratio(w.result.p50_ms, n.result.p50_ms),
                result_p99: ratio(w.result.p99_ms, n.result.p99_ms),
                result_p999: ratio(w.result.p999_ms, n.result.p999_ms),
                worker_cpu_per_task: all
                    .then(|| ratio_opt(worker.cpu.worker_s_per_task, null.cpu.worker_s_per_task))
                    .flatten(),
                broker_cpu_per_task: all
                    .then(|| ratio_opt(worker.cpu.broker_s_per_task, null.cpu.broker_s_per_task))
                    .flatten(),
            })
        })
        .collect()
}

impl TargetReport {
    fn figure_for(&self, block_type: &str) -> Option<&Figures> {
        self.figures(block_type)
    }
}

/// One measurement: the same load against the null-echo worker and the real worker.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PairReport {
    pub(crate) mode: String,
    /// "run", "throughput" / "latency" (gate plan), "soak".
    pub(crate) phase: String,
    pub(crate) scenario: String,
    pub(crate) window: usize,
    /// Offered rate (tasks/s); None = flat out, bounded by the window.
    pub(crate) rate: Option<f64>,
    pub(crate) duration_s: Option<f64>,
    pub(crate) count: Option<u64>,
    pub(crate) null: TargetReport,
    pub(crate) worker: Option<TargetReport>,
    pub(crate) ratios: Vec<Ratios>,
    /// The plain-loop worker (core mode), when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) plain: Option<TargetReport>,
    /// Worker ÷ plain loop.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) plain_ratios: Vec<Ratios>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct GateCheck {
    pub(crate) mode: String,
    pub(crate) check: String,
    pub(crate) value: f64,
    pub(crate) limit: f64,
    pub(crate) pass: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct GateReport {
    pub(crate) pass: bool,
    pub(crate) checks: Vec<GateCheck>,
    pub(crate) notes: Vec<String>,
}

/// CP3-LC: in every mode, the "throughput" phase (mix, flat out) must reach >= 500
/// tasks/s, and in the "latency" phase (mix at the gate rate) every block type's result
/// p99 must be within its limit (HTTP 500 ms, FS 200 ms, SQL 300 ms). Both phases must
/// have no error results and no lost tasks (otherwise the figures don't measure the blocks).
pub(crate) fn evaluate_gate(pairs: &[PairReport]) -> GateReport {
    let mut checks = Vec::new();
    let mut notes = Vec::new();
    let mut modes: Vec<&str> = pairs.iter().map(|p| p.mode.as_str()).collect();
    modes.dedup();
    for mode in modes {
        let mut saw_tp = false;
        let mut saw_lat = false;
        for p in pairs.iter().filter(|p| p.mode == mode) {
            let Some(w) = &p.worker else {
                notes.push(format!("{mode}/{}: no worker figures", p.phase));
                continue;
            };
            match p.phase.as_str() {
                "throughput" => {
                    saw_tp = true;
                    checks.push(GateCheck {
                        mode: mode.to_string(),
                        check: format!("{} tasks/s (flat out)", p.scenario),
                        value: w.tasks_per_s,
                        limit: GATE_MIN_TASKS_PER_S,
                        pass: w.tasks_per_s >= GATE_MIN_TASKS_PER_S,
                    });
                }
                "latency" => {
                    saw_lat = true;
                    for b in BlockType::MIX {
                        if let (Some(f), Some(limit)) =
                            (w.figures(b.job_type()), b.gate_p99_limit_ms())
                        {
                            checks.push(GateCheck {
                                mode: mode.to_string(),
                                check: format!(
                                    "{} result p99 ms @ {} /s",
                                    b.job_type(),
                                    p.rate.unwrap_or(0.0)
                                ),
                                value: f.result.p99_ms,
                                limit,
                                pass: f.result.p99_ms <= limit && f.result.count > 0,
                            });
                        }
                    }
                }
                _ => continue,
            }
            let bad = (w.errors() + w.lost) as f64;
            checks.push(GateCheck {
                mode: mode.to_string(),
                check: format!("{} error results + lost tasks", p.phase),
                value: bad,
                limit: 0.0,
                pass: bad == 0.0,
            });
        }
        if !saw_tp {
            notes.push(format!("{mode}: no throughput figures"));
        }
        if !saw_lat {
            notes.push(format!("{mode}: no latency figures"));
        }
    }
    if pairs.is_empty() {
        notes.push("nothing was measured".to_string());
    }
    let pass = notes.is_empty() && !checks.is_empty() && checks.iter().all(|c| c.pass);
    GateReport {
        pass,
        checks,
        notes,
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Flatness {
    /// "flat", "growing" or "inconclusive" (fewer than 3 RSS samples after warm-up).
    pub(crate) verdict: String,
    pub(crate) warmup_s: f64,
    pub(crate) samples_after_warmup: usize,
    pub(crate) first_third_max_kib: Option<u64>,
    pub(crate) last_third_max_kib: Option<u64>,
    pub(crate) growth: Option<f64>,
    pub(crate) limit: f64,
}

/// RSS is flat when, over the samples taken after `warmup_s`, the maximum of the last third
/// is at most `FLAT_FACTOR` × the maximum of the first third.
pub(crate) fn rss_flatness(samples: &[Sample], warmup_s: f64) -> Flatness {
    let rss: Vec<u64> = samples
        .iter()
        .filter(|s| s.t_s >= warmup_s)
        .filter_map(|s| s.rss_kib)
        .collect();
    let n = rss.len();
    let mut f = Flatness {
        verdict: "inconclusive".to_string(),
        warmup_s,
        samples_after_warmup: n,
        first_third_max_kib: None,
        last_third_max_kib: None,
        growth: None,
        limit: FLAT_FACTOR,
    };
    if n < 3 {
        return f;
    }
    let third = n / 3;
    let first = rss[..third].iter().copied().max();
    let last = rss[n - third..].iter().copied().max();
    f.first_third_max_kib = first;
    f.last_third_max_kib = last;
    if let (Some(a), Some(b)) = (first, last) {
        let g = if a > 0 {
            b as f64 / a as f64
        } else {
            f64::INFINITY
        };
        f.growth = Some(g);
        f.verdict = if g <= FLAT_FACTOR { "flat" } else { "growing" }.to_string();
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome_with(latencies_us: &[u64], block: BlockType, elapsed_s: f64) -> RunOutcome {
        let mut o = RunOutcome {
            elapsed_s,
            ..Default::default()
        };
        for &l in latencies_us {
            let t = &mut o.types[block.index()];
            t.result.record(l).expect("record");
            t.ack.record(l / 2 + 1).expect("record");
            t.completed += 1;
            o.completed += 1;
            o.sent += 1;
        }
        o
    }

    #[test]
    fn percentiles_of_a_uniform_distribution() {
        let mut h = new_histogram();
        for v in 1..=10_000u64 {
            h.record(v).expect("record");
        }
        let s = summarize(&h);
        assert_eq!(s.count, 10_000);
        // 3 significant digits: within 0.1 %.
        assert!((s.p50_ms - 5.0).abs() < 0.01, "{s:?}");
        assert!((s.p99_ms - 9.9).abs() < 0.01, "{s:?}");
        assert!((s.p999_ms - 9.99).abs() < 0.01, "{s:?}");
        assert!((s.max_ms - 10.0).abs() < 0.01, "{s:?}");
        assert_eq!(summarize(&new_histogram()), LatencySummary::default());
    }

    #[test]
    fn median_handles_odd_even_and_nan() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[f64::NAN, 5.0]), 5.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn aggregate_takes_medians_and_sums_counts() {
        let runs = vec![
            outcome_with(&[1000; 100], BlockType::Sql, 1.0),
            outcome_with(&[3000; 300], BlockType::Sql, 1.0),
            outcome_with(&[2000; 200], BlockType::Sql, 1.0),
        ];
        let r = aggregate("worker", &runs);
        assert_eq!(r.completed, 600);
        assert_eq!(r.tasks_per_s, 200.0);
        assert_eq!(r.repeat_tasks_per_s, vec![100.0, 300.0, 200.0]);
        let sql = r.figures("sql.query").expect("sql row");
        assert!((sql.result.p50_ms - 2.0).abs() < 0.01);
        assert_eq!(sql.result.count, 600);
        assert_eq!(
            r.per_type.last().map(|f| f.block_type.as_str()),
            Some("all")
        );
    }

    #[test]
    fn ratios_divide_worker_by_null() {
        let null = aggregate("null", &[outcome_with(&[500; 1000], BlockType::FsGet, 1.0)]);
        let worker = aggregate(
            "worker",
            &[outcome_with(&[2000; 250], BlockType::FsGet, 1.0)],
        );
        let r = ratios(&worker, &null);
        let fs = r.iter().find(|r| r.block_type == "fs.get").expect("fs row");
        assert_eq!(fs.tasks_per_s, Some(0.25));
        assert!((fs.result_p50.expect("ratio") - 4.0).abs() < 0.01);
        assert_eq!(ratio(1.0, 0.0), None);
    }

    fn pair(phase: &str, rate: Option<f64>, worker: TargetReport) -> PairReport {
        PairReport {
            plain: None,
            plain_ratios: Vec::new(),
            mode: "core".into(),
            phase: phase.into(),
            scenario: "mix".into(),
            window: 512,
            rate,
            duration_s: Some(10.0),
            count: None,
            null: worker.clone(),
            worker: Some(worker),
            ratios: vec![],
        }
    }

    #[test]
    fn gate_passes_and_fails_on_the_right_figures() {
        let fast = aggregate(
            "worker",
            &[outcome_with(&[1000; 800], BlockType::FsGet, 1.0)],
        );
        let slow_fs = aggregate(
            "worker",
            &[outcome_with(&[250_000; 100], BlockType::FsGet, 1.0)],
        );
        let ok = evaluate_gate(&[
            pair("throughput", None, fast.clone()),
            pair("latency", Some(500.0), fast.clone()),
        ]);
        assert!(ok.pass, "{ok:?}");
        // p99 of 250 ms for fs.get breaks the 200 ms limit.
        let bad = evaluate_gate(&[
            pair("throughput", None, fast.clone()),
            pair("latency", Some(500.0), slow_fs.clone()),
        ]);
        assert!(!bad.pass);
        assert!(bad
            .checks
            .iter()
            .any(|c| !c.pass && c.check.starts_with("fs.get result p99")));
        // 100 tasks/s is under 500.
        let bad_tp = evaluate_gate(&[
            pair("throughput", None, slow_fs),
            pair("latency", Some(500.0), fast.clone()),
        ]);
        assert!(!bad_tp.pass);
        // An error result fails the gate too.
        let mut with_err = fast.clone();
        with_err.bad_statuses.insert("error".into(), 1);
        assert!(
            !evaluate_gate(&[
                pair("throughput", None, fast.clone()),
                pair("latency", Some(500.0), with_err)
            ])
            .pass
        );
        // Missing worker or missing phase: not a pass.
        let mut no_worker = pair("throughput", None, fast.clone());
        no_worker.worker = None;
        assert!(!evaluate_gate(&[no_worker, pair("latency", Some(500.0), fast.clone())]).pass);
        assert!(!evaluate_gate(&[pair("throughput", None, fast)]).pass);
        assert!(!evaluate_gate(&[]).pass);
    }

    fn samples(rss: &[u64]) -> Vec<Sample> {
        rss.iter()
            .enumerate()
            .map(|(i, &r)| Sample {
                t_s: i as f64 * 5.0,
                rss_kib: Some(r),
                tasks_per_s: 500.0,
                result_p99_ms: 1.0,
                worker_cpu_pct: None,
            })
            .collect()
    }

    #[test]
    fn flatness_after_warmup() {
        // Warm-up growth (first 2 samples, t < 10 s) is ignored.
        let flat = rss_flatness(&samples(&[10, 50, 100, 104, 101, 103, 108, 105, 109]), 10.0);
        assert_eq!(flat.verdict, "flat", "{flat:?}");
        assert_eq!(flat.first_third_max_kib, Some(104));
        assert_eq!(flat.last_third_max_kib, Some(109));
        let growing = rss_flatness(&samples(&[100, 100, 100, 110, 120, 130, 140]), 0.0);
        assert_eq!(growing.verdict, "growing");
        assert_eq!(
            rss_flatness(&samples(&[1, 2, 3]), 10.0).verdict,
            "inconclusive"
        );
    }
}
