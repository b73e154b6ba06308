#!/usr/bin/env python3
"""Medians per configuration of the ninth round's reports (run.sh): worker tasks/s, worker
and broker CPU µs per task, result p50/p99, each also as a ratio to the same run's null
echo and plain loop. Usage: summarize.py DIR (the run's $O, or bench/results/issue12-r9)."""
import glob, json, os, statistics, sys

d = sys.argv[1]
rows = {}
# run.sh's $O (one directory per run) or this directory (one <run>.json per run)
reports = [(os.path.basename(os.path.dirname(r)), r)
           for r in glob.glob(os.path.join(d, "*", "report-*.json"))]
reports += [(os.path.basename(r)[:-5], r) for r in glob.glob(os.path.join(d, "*.json"))]
for name, rep in sorted(reports):
    conf = name.rsplit("-r", 1)[0]
    m = json.load(open(rep))["measurements"][0]
    def fig(t):
        a = m[t]["per_type"][-1]
        return (m[t]["tasks_per_s"], m[t]["cpu"]["worker_s_per_task"] * 1e6,
                m[t]["cpu"]["broker_s_per_task"] * 1e6, a["result"]["p50_ms"], a["result"]["p99_ms"])
    w, n = fig("worker"), fig("null")
    p = fig("plain") if m.get("plain") else (float("nan"),) * 5
    rows.setdefault(conf, []).append((w, n, p))

med = lambda xs: statistics.median(xs)
print(f"{'config':<16}{'n':>2}{'tasks/s':>10}{'÷null':>7}{'÷plain':>7}{'wrk µs':>8}{'plain µs':>9}"
      f"{'brk µs':>8}{'p50 ms':>8}{'p99 ms':>8}{'null p99':>9}")
for conf in sorted(rows, key=lambda c: (c.split("-")[1], c)):
    r = rows[conf]
    tps = med([x[0][0] for x in r])
    print(f"{conf:<16}{len(r):>2}{tps:>10.0f}{med([x[0][0]/x[1][0] for x in r]):>7.2f}"
          f"{med([x[0][0]/x[2][0] for x in r]):>7.2f}{med([x[0][1] for x in r]):>8.1f}"
          f"{med([x[2][1] for x in r]):>9.1f}{med([x[0][2] for x in r]):>8.1f}"
          f"{med([x[0][3] for x in r]):>8.3f}{med([x[0][4] for x in r]):>8.3f}{med([x[1][4] for x in r]):>9.3f}")
