#!/usr/bin/env python3
"""Per round, old vs new worker CPU µs per task (the pairs run.sh interleaved), and how many
rounds new was lower. Usage: pairs.py DIR PREFIX (e.g. `pairs.py . ab`, `pairs.py . flat`)."""
import glob, json, os, sys

d, prefix = sys.argv[1], sys.argv[2]


def wrk(path):
    m = json.load(open(path))["measurements"][0]
    return m["worker"]["cpu"]["worker_s_per_task"] * 1e6


def name(c, r):
    return f"{c}-{prefix}-r{r}" if prefix in ("flat", "20000") else f"{prefix}-{c}-r{r}"


lower = n = 0
for r in range(1, 21):
    o, w = (os.path.join(d, name(c, r) + ".json") for c in ("old", "new"))
    if not (os.path.exists(o) and os.path.exists(w)):
        continue
    a, b = wrk(o), wrk(w)
    n += 1
    lower += b < a
    print(f"r{r:<3} old {a:6.1f}  new {b:6.1f}")
print(f"new lower in {lower} of {n}")
