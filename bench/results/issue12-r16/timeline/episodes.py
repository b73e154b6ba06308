#!/usr/bin/env python3
"""Where in time the slow results of a run fall, from the bench's timelines
(BEAMLINE_BENCH_TIMELINE; sent_us,latency_us per result): per file, p99, the results over
2 ms, and the episodes they come in (slow results whose send times lie within 3 ms of
each other), with the median gap between episode starts. Usage: episodes.py CSV..."""
import collections, csv, sys

for f in sys.argv[1:]:
    rows = sorted((int(a), int(b)) for a, b in list(csv.reader(open(f)))[1:])
    lat = sorted(b for _, b in rows)
    p99 = lat[int(len(lat) * 0.99)]
    slow = collections.Counter(a // 1000 for a, b in rows if b > 2000)
    eps, cur = [], None
    for ms in sorted(slow):
        if cur and ms - cur[1] <= 3:
            cur[1], cur[2] = ms, cur[2] + slow[ms]
        else:
            if cur:
                eps.append(cur)
            cur = [ms, ms, slow[ms]]
    if cur:
        eps.append(cur)
    gaps = sorted(b[0] - a[0] for a, b in zip(eps, eps[1:]))
    mean_len = sum(e[1] - e[0] + 1 for e in eps) / max(1, len(eps))
    print(f"{f.rsplit('/', 1)[-1]:32} n={len(rows)} p99={p99} µs  over 2 ms: {sum(slow.values())}"
          f"  episodes: {len(eps)}, {mean_len:.1f} ms long on average, median gap"
          f" {gaps[len(gaps) // 2] if gaps else 0} ms")
    print("    first (start ms, end ms, results over 2 ms):", [tuple(e) for e in eps[:10]])
