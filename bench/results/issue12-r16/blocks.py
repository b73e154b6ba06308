#!/usr/bin/env python3
"""Target 6 per run: worker and plain-loop CPU µs per task and their ratio, tasks/s of
both, for each scenario of each report given (run-blocks.sh, run-put-ab.sh).
Usage: blocks.py REPORT.json..."""
import json, sys

print(f"{'report':<22}{'scenario':<10}{'wrk µs':>8}{'plain µs':>9}{'ratio':>7}"
      f"{'wrk t/s':>9}{'plain t/s':>10}{'wrk brk':>8}{'pl brk':>8}")
for rep in sys.argv[1:]:
    for m in json.load(open(rep))["measurements"]:
        w, p = m["worker"], m.get("plain")
        if not p:
            continue
        wc, pc = w["cpu"]["worker_s_per_task"] * 1e6, p["cpu"]["worker_s_per_task"] * 1e6
        print(f"{rep.rsplit('/', 1)[-1][:-5]:<22}{m['scenario']:<10}{wc:>8.1f}{pc:>9.1f}"
              f"{wc / pc:>7.2f}{w['tasks_per_s']:>9.0f}{p['tasks_per_s']:>10.0f}"
              f"{w['cpu']['broker_s_per_task'] * 1e6:>8.1f}{p['cpu']['broker_s_per_task'] * 1e6:>8.1f}")
