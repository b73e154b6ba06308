//! Terminal table, JSON report and SVG plots.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{anyhow, Context as _, Result};
use hdrhistogram::Histogram;
use plotters::prelude::*;
use serde::Serialize;

use crate::stats::{Figures, Flatness, GateReport, PairReport, Ratios, Sample, TargetReport};

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Meta {
    pub(crate) tool: String,
    pub(crate) started_unix_s: u64,
    pub(crate) host: String,
    pub(crate) cpus: usize,
    /// `model name` of `/proc/cpuinfo`: absolute figures from different CPU models (an
    /// Intel and an AMD guest of the same size differed by 2–2.7×) compare only as ratios.
    pub(crate) cpu_model: String,
    /// `/proc/sys/kernel/osrelease`.
    pub(crate) kernel: String,
    pub(crate) args: Vec<String>,
    pub(crate) nats_url: String,
    pub(crate) nats_server: String,
    pub(crate) worker_bin: String,
    pub(crate) worker_found: bool,
    pub(crate) worker_health: Vec<String>,
    pub(crate) repeats: usize,
    pub(crate) http_upstream_requests: u64,
    pub(crate) notes: Vec<String>,
}

/// The CPU model named in a `/proc/cpuinfo` text (its first `model name`), or "unknown".
pub(crate) fn cpu_model(cpuinfo: &str) -> String {
    cpuinfo
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim() == "model name")
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

/// This machine: its CPU model and kernel release, read once per bench run.
pub(crate) fn this_host() -> (String, String) {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    (
        cpu_model(&read("/proc/cpuinfo")),
        read("/proc/sys/kernel/osrelease").trim().to_string(),
    )
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct SoakReport {
    pub(crate) mode: String,
    pub(crate) minutes: f64,
    pub(crate) rate: f64,
    pub(crate) sample_every_s: f64,
    pub(crate) samples: Vec<Sample>,
    pub(crate) rss_flatness: Flatness,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub(crate) meta: Meta,
    pub(crate) measurements: Vec<PairReport>,
    pub(crate) gate: Option<GateReport>,
    pub(crate) soak: Vec<SoakReport>,
}

pub(crate) fn write_json(path: &Path, report: &Report) -> Result<()> {
    let s = serde_json::to_string_pretty(report)?;
    std::fs::write(path, s).with_context(|| format!("write {}", path.display()))
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn us_per_task(s: Option<f64>) -> String {
    s.map(|s| format!("{:.1}", s * 1e6))
        .unwrap_or_else(|| "-".into())
}

fn x(r: Option<f64>) -> String {
    r.map(|r| format!("{r:.2}x")).unwrap_or_else(|| "-".into())
}

const HEADER: [&str; 16] = [
    "mode",
    "phase",
    "scenario",
    "type",
    "target",
    "tasks/s",
    "ack p50",
    "ack p99",
    "ack p99.9",
    "res p50",
    "res p99",
    "res p99.9",
    "wrk µs/t",
    "brk µs/t",
    "errors",
    "lost",
];

fn figure_row(p: &PairReport, t: &TargetReport, f: &Figures, with_cpu: bool) -> Vec<String> {
    vec![
        p.mode.clone(),
        p.phase.clone(),
        p.scenario.clone(),
        f.block_type.clone(),
        t.target.clone(),
        format!("{:.0}", f.tasks_per_s),
        ms(f.ack.p50_ms),
        ms(f.ack.p99_ms),
        ms(f.ack.p999_ms),
        ms(f.result.p50_ms),
        ms(f.result.p99_ms),
        ms(f.result.p999_ms),
        if with_cpu {
            us_per_task(t.cpu.worker_s_per_task)
        } else {
            String::new()
        },
        if with_cpu {
            us_per_task(t.cpu.broker_s_per_task)
        } else {
            String::new()
        },
        f.errors.to_string(),
        if with_cpu {
            t.lost.to_string()
        } else {
            String::new()
        },
    ]
}

fn ratio_row(r: &Ratios, label: &str) -> Vec<String> {
    let mut v = vec![String::new(); 4];
    v.push(label.into());
    v.extend([
        x(r.tasks_per_s),
        x(r.ack_p50),
        x(r.ack_p99),
        x(r.ack_p999),
        x(r.result_p50),
        x(r.result_p99),
        x(r.result_p999),
        x(r.worker_cpu_per_task),
        x(r.broker_cpu_per_task),
        String::new(),
        String::new(),
    ]);
    v
}

/// The terminal table: per measurement and block type, a null row, a worker row and a
/// worker ÷ null ratio row (and, where the plain loop ran, its row and worker ÷ plain). Latencies in ms; CPU in µs per task (on the "all" row).
pub(crate) fn table(pairs: &[PairReport]) -> String {
    let mut rows: Vec<Vec<String>> = vec![HEADER.iter().map(|s| s.to_string()).collect()];
    for p in pairs {
        let types: Vec<&str> = {
            let base = p.worker.as_ref().unwrap_or(&p.null);
            let named: Vec<&str> = base
                .per_type
                .iter()
                .map(|f| f.block_type.as_str())
                .filter(|t| *t != "all")
                .collect();
            if named.len() > 1 {
                base.per_type
                    .iter()
                    .map(|f| f.block_type.as_str())
                    .collect()
            } else {
                named
            }
        };
        let single = types.len() == 1;
        for ty in types {
            let with_cpu = single || ty == "all";
            if let Some(f) = p.null.figures(ty) {
                rows.push(figure_row(p, &p.null, f, with_cpu));
            }
            if let Some(t) = &p.plain {
                if let Some(f) = t.figures(ty) {
                    rows.push(figure_row(p, t, f, with_cpu));
                }
            }
            if let Some(w) = &p.worker {
                if let Some(f) = w.figures(ty) {
                    rows.push(figure_row(p, w, f, with_cpu));
                }
                let key = if single { "all" } else { ty };
                if let Some(r) = p.ratios.iter().find(|r| r.block_type == key) {
                    let mut r = r.clone();
                    if single {
                        // The single type's latencies, with the run-level CPU ratios.
                        if let Some(tr) = p.ratios.iter().find(|r| r.block_type == ty) {
                            r = Ratios {
                                worker_cpu_per_task: r.worker_cpu_per_task,
                                broker_cpu_per_task: r.broker_cpu_per_task,
                                ..tr.clone()
                            };
                        }
                    }
                    rows.push(ratio_row(&r, "ratio"));
                }
                if let Some(r) = p.plain_ratios.iter().find(|r| r.block_type == key) {
                    let mut r = r.clone();
                    if single {
                        if let Some(tr) = p.plain_ratios.iter().find(|r| r.block_type == ty) {
                            r = Ratios {
                                worker_cpu_per_task: r.worker_cpu_per_task,
                                broker_cpu_per_task: r.broker_cpu_per_task,
                                ..tr.clone()
                            };
                        }
                    }
                    rows.push(ratio_row(&r, "÷plain"));
                }
            }
        }
    }
    let widths: Vec<usize> = (0..HEADER.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, r) in rows.iter().enumerate() {
        for (c, cell) in r.iter().enumerate() {
            let pad = widths[c] - cell.chars().count();
            if c < 5 {
                let _ = write!(out, "{cell}{} ", " ".repeat(pad));
            } else {
                let _ = write!(out, "{}{cell} ", " ".repeat(pad));
            }
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
        if i == 0 {
            let total: usize = widths.iter().sum::<usize>() + widths.len() - 1;
            out.push_str(&"-".repeat(total));
            out.push('\n');
        }
    }
    out
}

pub(crate) fn gate_text(g: &GateReport) -> String {
    let mut out = format!("CP3-LC gate: {}\n", if g.pass { "PASS" } else { "FAIL" });
    for c in &g.checks {
        let _ = writeln!(
            out,
            "  [{}] {:<10} {:<40} {:>10.2}  (limit {})",
            if c.pass { "ok" } else { "MISS" },
            c.mode,
            c.check,
            c.value,
            c.limit
        );
    }
    for n in &g.notes {
        let _ = writeln!(out, "  note: {n}");
    }
    out
}

/// One line of a latency panel: points are (x = -log10(1-q), y = ms).
#[derive(Debug, Clone)]
pub(crate) struct Series {
    pub(crate) label: String,
    pub(crate) is_null: bool,
    pub(crate) points: Vec<(f64, f64)>,
}

#[derive(Debug, Clone)]
pub(crate) struct PlotPanel {
    pub(crate) title: String,
    pub(crate) series: Vec<Series>,
}

type Extract = fn(&Sample) -> Option<f64>;

/// Latency-by-percentile curve: x in "nines" (0 = p0, 1 = p90, 2 = p99, 3 = p99.9).
pub(crate) fn percentile_curve(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return vec![];
    }
    let max_nines = 3.0_f64.min((h.len() as f64).log10());
    let steps = 60;
    (0..=steps)
        .map(|i| {
            let x = max_nines * i as f64 / steps as f64;
            let q = 1.0 - 10f64.powf(-x);
            (x, (h.value_at_quantile(q) as f64 / 1000.0).max(0.001))
        })
        .collect()
}

fn nines_label(x: &f64) -> String {
    let q = (1.0 - 10f64.powf(-*x)) * 100.0;
    if q < 99.0 {
        format!("p{q:.0}")
    } else {
        format!("p{q:.1}")
    }
}

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plot: {e:?}")
}

pub(crate) fn latency_svg(path: &Path, panels: &[PlotPanel]) -> Result<()> {
    if panels.is_empty() {
        return Ok(());
    }
    let cols = panels.len().min(2);
    let rows = panels.len().div_ceil(cols);
    let root = SVGBackend::new(path, (720 * cols as u32, 420 * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let areas = root.split_evenly((rows, cols));
    for (area, panel) in areas.iter().zip(panels) {
        let ys = panel
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1));
        let (lo, hi) = ys.fold((f64::MAX, 0.0f64), |(lo, hi), y| (lo.min(y), hi.max(y)));
        let (lo, hi) = if hi <= 0.0 {
            (0.001, 1.0)
        } else {
            (lo.max(0.001) / 1.5, hi * 1.5)
        };
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d(0f64..3f64, (lo..hi).log_scale())
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("publish -> result (ms)")
            .x_labels(7)
            .x_label_formatter(&nines_label)
            .draw()
            .map_err(plot_err)?;
        for (i, s) in panel.series.iter().enumerate() {
            let color = Palette99::pick(i / 2).to_rgba();
            let style = if s.is_null {
                ShapeStyle::from(color.mix(0.45)).stroke_width(1)
            } else {
                ShapeStyle::from(color).stroke_width(2)
            };
            chart
                .draw_series(LineSeries::new(s.points.iter().copied(), style))
                .map_err(plot_err)?
                .label(s.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;
    }
    root.present().map_err(plot_err)?;
    Ok(())
}

/// Soak plot: worker RSS, throughput and per-interval result p99 over time.
pub(crate) fn soak_svg(path: &Path, title: &str, samples: &[Sample], warmup_s: f64) -> Result<()> {
    if samples.is_empty() {
        return Ok(());
    }
    let root = SVGBackend::new(path, (900, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let areas = root.split_evenly((3, 1));
    let t_max = samples.iter().map(|s| s.t_s).fold(1.0f64, f64::max);
    let panels: [(&str, Extract); 3] = [
        ("worker RSS (MiB)", |s| s.rss_kib.map(|k| k as f64 / 1024.0)),
        ("results / s", |s| Some(s.tasks_per_s)),
        ("result p99 in interval (ms)", |s| Some(s.result_p99_ms)),
    ];
    for (i, (area, (label, f))) in areas.iter().zip(panels.iter()).enumerate() {
        let pts: Vec<(f64, f64)> = samples
            .iter()
            .filter_map(|s| Some((s.t_s, f(s)?)))
            .collect();
        let y_max = pts.iter().map(|p| p.1).fold(0.0f64, f64::max).max(1e-3) * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(
                if i == 0 {
                    title.to_string()
                } else {
                    String::new()
                },
                ("sans-serif", 16),
            )
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..t_max, 0f64..y_max)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc(*label)
            .draw()
            .map_err(plot_err)?;
        chart
            .draw_series(LineSeries::new(pts, ShapeStyle::from(BLUE).stroke_width(2)))
            .map_err(plot_err)?;
        if warmup_s > 0.0 && warmup_s < t_max {
            chart
                .draw_series(LineSeries::new(
                    vec![(warmup_s, 0.0), (warmup_s, y_max)],
                    ShapeStyle::from(RED.mix(0.5)),
                ))
                .map_err(plot_err)?;
        }
    }
    root.present().map_err(plot_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{aggregate, new_histogram, RunOutcome};

    #[test]
    fn the_cpu_model_is_the_first_model_name_of_cpuinfo() {
        let amd = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n\n\
                   processor\t: 1\nmodel name\t: AMD EPYC\n";
        assert_eq!(cpu_model(amd), "AMD EPYC");
        let intel = "model name\t: Intel(R) Xeon(R) Platinum 8488C\nflags\t\t: fpu: x\n";
        assert_eq!(cpu_model(intel), "Intel(R) Xeon(R) Platinum 8488C");
        // arm64 names no model; an empty one is no name either.
        assert_eq!(cpu_model("processor\t: 0\nCPU part\t: 0xd0c\n"), "unknown");
        assert_eq!(cpu_model("model name\t:\n"), "unknown");
        assert_eq!(cpu_model(""), "unknown");
    }

    #[test]
    fn table_has_null_worker_and_ratio_rows() {
        let mut o = RunOutcome {
            elapsed_s: 1.0,
            ..Default::default()
        };
        for _ in 0..10 {
            o.types[0].result.record(1000).expect("rec");
            o.types[0].completed += 1;
            o.completed += 1;
        }
        let null = aggregate("null", &[o.clone()]);
        let plain = aggregate("plain", &[o.clone()]);
        let worker = aggregate("worker", &[o]);
        let mut pair = PairReport {
            mode: "core".into(),
            phase: "run".into(),
            scenario: "fs-get".into(),
            window: 512,
            rate: None,
            duration_s: Some(1.0),
            count: None,
            ratios: crate::stats::ratios(&worker, &null),
            null,
            worker: Some(worker),
            plain: None,
            plain_ratios: Vec::new(),
        };
        let t = table(std::slice::from_ref(&pair));
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 5, "{t}");
        assert!(
            lines[2].contains("null") && lines[3].contains("worker") && lines[4].contains("1.00x"),
            "{t}"
        );
        // With the plain loop: its row after the null echo's, worker ÷ plain after the ratio.
        pair.plain_ratios = crate::stats::ratios(pair.worker.as_ref().expect("worker"), &plain);
        pair.plain = Some(plain);
        let t = table(&[pair]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 7, "{t}");
        assert!(
            lines[3].contains("plain")
                && lines[4].contains("worker")
                && lines[6].contains("÷plain")
                && lines[6].contains("1.00x"),
            "{t}"
        );
    }

    #[test]
    fn svgs_render_without_fonts() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut h = new_histogram();
        for v in 1..5000u64 {
            h.record(v).expect("rec");
        }
        let panel = PlotPanel {
            title: "core run fs-get".into(),
            series: vec![
                Series {
                    label: "worker fs.get".into(),
                    is_null: false,
                    points: percentile_curve(&h),
                },
                Series {
                    label: "null fs.get".into(),
                    is_null: true,
                    points: percentile_curve(&h),
                },
            ],
        };
        let p = dir.path().join("lat.svg");
        latency_svg(&p, &[panel]).expect("latency svg");
        let svg = std::fs::read_to_string(&p).expect("read");
        assert!(svg.contains("<svg") && svg.contains("worker fs.get"));
        let samples: Vec<Sample> = (0..10)
            .map(|i| Sample {
                t_s: i as f64,
                rss_kib: Some(1000 + i),
                tasks_per_s: 500.0,
                result_p99_ms: 2.0,
                worker_cpu_pct: Some(10.0),
            })
            .collect();
        let p2 = dir.path().join("soak.svg");
        soak_svg(&p2, "soak", &samples, 2.0).expect("soak svg");
        assert!(std::fs::read_to_string(&p2).expect("read").contains("<svg"));
    }
}
