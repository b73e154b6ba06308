#!/usr/bin/env python3
"""Issue 12, thirteenth round: leaf symbols of two threads of a system-wide profile.
Recorded with: beamline-bench --worker-bin /tmp/bw-base --worker-arg=--cpu-pool-size=1
--scenario fs-get --duration 8 (null echo, plain loop, worker, one after the other) while
`perf record -a -F 997 -o /tmp/sysw.data -- sleep 75` ran; then
`perf script -i /tmp/sysw.data -F tid,ip,sym,dso > /tmp/sysw.ps`.
Usage: syswide.py /tmp/sysw.ps TID... (the plain loop's thread and the worker's cpu-0)."""
import collections
import re
import sys

by = collections.defaultdict(collections.Counter)
for line in open(sys.argv[1], errors="replace"):
    p = line.split(None, 2)
    if len(p) < 3:
        continue
    m = re.match(r"(.*?)\s+\((.*)\)\s*$", p[2])
    sym, dso = (m.group(1), m.group(2)) if m else (p[2].strip(), "?")
    sym = re.sub(r"\+0x[0-9a-f]+$", "", sym)
    by[p[0]][("k" if "kernel" in dso else "u", sym[:90])] += 1
for tid in sys.argv[2:]:
    c = by[tid]
    tot = sum(c.values())
    k = sum(v for (d, _), v in c.items() if d == "k")
    print(f"== thread {tid}: {tot} samples, kernel {100 * k / tot:.1f}%")
    for (d, s), v in c.most_common(25):
        print(f"  {100 * v / tot:5.1f}% {d} {s}")
