"""Per-100 000-task segments of a sample.sh log: worker CPU µs per task and RSS
(`segments.py SAMPLES [SVG]`; with SVG, also a small chart of both).

Input lines: unix_s tasks_total cpu_ticks(1/100 s) rss_kb. For each 100 000 tasks finished,
the CPU the worker spent over the samples that span them, per task, and the RSS at the end.
"""
import sys

rows = []
for line in open(sys.argv[1]):
    parts = line.split()
    if len(parts) == 4 and all(parts):
        t, n, cpu, rss = float(parts[0]), float(parts[1]), float(parts[2]), int(parts[3])
        rows.append((t, n, cpu, rss))
# Only samples taken while the worker's tasks counter moved (the worker's own run).
start = next((i for i in range(1, len(rows)) if rows[i][1] > rows[i - 1][1]), None)
if start is None:
    sys.exit("no tasks counted")
rows = rows[start - 1 :]
print("segment  tasks_from  tasks_to  cpu_us_per_task  rss_mb_at_end")
SEGMENTS = []
seg, base = 0, rows[0]
for row in rows[1:]:
    if row[1] - base[1] >= 100_000:
        seg += 1
        per = (row[2] - base[2]) * 10_000.0 / (row[1] - base[1])
        print(f"{seg:7d}  {int(base[1]):10d}  {int(row[1]):8d}  {per:15.1f}  {row[3] / 1024:13.1f}")
        SEGMENTS.append((per, row[3] / 1024))
        base = row


def svg(path, segs):
    """A small line chart: CPU µs per task (left scale) and RSS MB (right scale) per
    100 000-task segment."""
    w, h, pad = 640, 300, 50
    n = len(segs)
    if n < 2:
        return
    cpu = [s[0] for s in segs]
    rss = [s[1] for s in segs]
    top_cpu = max(cpu) * 1.2
    top_rss = max(rss) * 1.2

    def pts(vals, top):
        return " ".join(
            f"{pad + i * (w - 2 * pad) / (n - 1):.1f},{h - pad - v / top * (h - 2 * pad):.1f}"
            for i, v in enumerate(vals)
        )

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="black"/>',
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="black"/>',
        f'<polyline fill="none" stroke="steelblue" stroke-width="2" points="{pts(cpu, top_cpu)}"/>',
        f'<polyline fill="none" stroke="darkorange" stroke-width="2" points="{pts(rss, top_rss)}"/>',
        f'<text x="{pad}" y="{pad - 20}">worker CPU µs per task (blue, 0–{top_cpu:.0f}) and RSS MB (orange, 0–{top_rss:.0f}),</text>',
        f'<text x="{pad}" y="{pad - 6}">per 100 000 fs.get tasks, one process, 1 000 000 tasks</text>',
        f'<text x="{w / 2 - 40}" y="{h - 15}">segment 1 … {n}</text>',
        "</svg>",
    ]
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


if len(sys.argv) > 2:
    svg(sys.argv[2], SEGMENTS)
