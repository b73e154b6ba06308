#!/usr/bin/env python3
"""Issue 12, thirteenth round: two perf profiles of the worker (prof.sh), per 1000 tasks:
usage cmp.py A A_TASKS_PER_S B B_TASKS_PER_S (the bench tasks/s of each run, 5 s each).
Prints total samples per 1000 tasks and the leaf and inclusive symbols that grew most."""
import collections, re, sys
sys.path.insert(0, "/work/main/bench/results/issue12-r10")
from profile import samples
def load(name, rate):
    leaf = collections.Counter(); incl = collections.Counter(); n = 0
    for comm, frames in samples(f"/tmp/cmp/{name}.ps"):
        n += 1
        leaf[frames[0][:80]] += 1
        for f in set(fr[:80] for fr in frames):
            incl[f] += 1
    k = 1000.0 / (rate * 5)  # samples per 1000 tasks
    return n * k, {s: c * k for s, c in leaf.items()}, {s: c * k for s, c in incl.items()}
a = load(sys.argv[1], float(sys.argv[2])); b = load(sys.argv[3], float(sys.argv[4]))
print(f"total samples per 1000 tasks: {a[0]:.1f} vs {b[0]:.1f}")
for title, i in (("leaf", 1), ("inclusive", 2)):
    print(f"\n{title}: biggest growth {sys.argv[1]} -> {sys.argv[3]} (samples per 1000 tasks)")
    keys = set(a[i]) | set(b[i])
    d = sorted(keys, key=lambda s: b[i].get(s, 0) - a[i].get(s, 0), reverse=True)
    for s in d[:35]:
        print(f"  {a[i].get(s,0):6.2f} {b[i].get(s,0):6.2f} {b[i].get(s,0)-a[i].get(s,0):+6.2f}  {s}")
