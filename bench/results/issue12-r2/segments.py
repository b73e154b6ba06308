"""Per-100 000-task segments of a sample.sh log: worker CPU µs per task and RSS.

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
seg, base = 0, rows[0]
for row in rows[1:]:
    if row[1] - base[1] >= 100_000:
        seg += 1
        per = (row[2] - base[2]) * 10_000.0 / (row[1] - base[1])
        print(f"{seg:7d}  {int(base[1]):10d}  {int(row[1]):8d}  {per:15.1f}  {row[3] / 1024:13.1f}")
        base = row
