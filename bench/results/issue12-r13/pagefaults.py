#!/usr/bin/env python3
"""Issue 12, thirteenth round: the share of a profile's samples inside a page fault
(`exc_page_fault` on the stack), by the nearest worker (or allocator) frame.
Usage: pagefaults.py /tmp/cmp/NAME.ps (perf script output of prof.sh)."""
import collections
import sys

sys.path.insert(0, __file__.rsplit("/", 1)[0] + "/../issue12-r10")
from profile import samples  # noqa: E402

tot, pf = 0, collections.Counter()
for comm, frames in samples(sys.argv[1]):
    tot += 1
    if "exc_page_fault" in " ".join(frames):
        who = next((f[:70] for f in frames if "beamline" in f or "mi_" in f), "?")
        pf[who] += 1
print(f"{sys.argv[1]}: {tot} samples, {100 * sum(pf.values()) / tot:.1f}% in page faults")
for k, v in pf.most_common(8):
    print(f"   {100 * v / tot:.2f}% {k}")
