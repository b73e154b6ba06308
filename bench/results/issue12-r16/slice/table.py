#!/usr/bin/env python3
"""Per call: worker, plain-loop and null-echo result p99 (medians of the call's repeats),
worker ÷ plain p99, worker CPU µs/task. usage: table.py JSON..."""
import json, sys
print(f"{'report':<26}{'wrk p99':>8}{'plain p99':>10}{'null p99':>9}{'÷plain':>7}{'wrk p50':>8}{'wrk µs':>7}{'t/s':>8}")
for f in sys.argv[1:]:
    m = json.load(open(f))["measurements"][0]
    p = lambda t, q: m[t]["per_type"][-1]["result"][q]
    print(f"{f.rsplit('/', 1)[-1][:-5]:<26}{p('worker', 'p99_ms'):>8.2f}{p('plain', 'p99_ms'):>10.2f}"
          f"{p('null', 'p99_ms'):>9.2f}{p('worker', 'p99_ms') / p('plain', 'p99_ms'):>7.2f}"
          f"{p('worker', 'p50_ms'):>8.2f}{m['worker']['cpu']['worker_s_per_task'] * 1e6:>7.1f}"
          f"{m['worker']['tasks_per_s']:>8.0f}")
