#!/usr/bin/env python3
"""Where a worker spends its CPU under the sql scenario, from `perf script -F comm,ip,sym`
(prof.sh). Like ../issue12-r10/profile.py, with the parts of a sql.query task: a sample
counts for every part on its stack; shares are of all the worker's samples."""
import collections
import re
import sys

PARTS = [
    ("task (cputime::Metered)", "cputime::Metered"),
    ("sql block (SqlBlock)", "blocks::sql::"),
    ("  the name's lookup (locate_first_beneath)", "locate_first_beneath"),
    ("  the connection cache (SqlBlock::connection)", "SqlBlock::connection"),
    ("  the query (SqlBlock::query)", "SqlBlock::query"),
    ("    sqlite3_step", "sqlite3_step"),
    ("    prepare_cached", "prepare_cached"),
    ("    serde_json values", "serde_json::"),
    ("    the watch (arm, progress handler)", "Watch::"),
    ("sql decode (SqlBlock decode)", "SqlBlock as beamline_worker::blocks::Block>::decode"),
    ("result encode", "encode"),
    ("log lines (tracing Event::dispatch)", "Event::dispatch"),
    ("async-nats connection handler", "ConnectionHandler"),
    ("dedupe store", "dedupe::"),
    ("assignment parse", "assignment::"),
    ("malloc/free (mi_)", " mi_"),
]


def samples(path):
    for block in open(path, errors="replace").read().split("\n\n"):
        lines = [l.strip() for l in block.strip().split("\n") if l.strip()]
        if len(lines) < 2:
            continue
        frames = [re.sub(r"\+0x[0-9a-f]+", "", l.split(" ", 1)[1] if " " in l else l)
                  for l in lines[1:]]
        yield lines[0].split()[0], frames


def main(path):
    total = 0
    threads, sysc, parts, leaf = (collections.Counter() for _ in range(4))
    for comm, frames in samples(path):
        total += 1
        threads[comm] += 1
        leaf[frames[0][:90]] += 1
        if "do_syscall_64" in frames:
            i = frames.index("do_syscall_64") + 1
            while i < len(frames) and ("entry_SYSCALL" in frames[i] or frames[i].startswith("[")):
                i += 1
            made = frames[i][:40] if i < len(frames) else "?"
            by = next((f[:70] for f in frames[i + 1:i + 10] if "beamline" in f or "sqlite" in f), "")
            sysc[(made, by)] += 1
        stack = " " + " ".join(frames)
        for name, key in PARTS:
            if key in stack:
                parts[name] += 1
    pct = lambda n: f"{100 * n / total:5.1f}%"
    print(f"samples: {total}; by thread: {dict(threads.most_common())}")
    print("\nsystem calls (the libc function, the function that made it):")
    for (made, by), n in sysc.most_common(16):
        print(f"  {pct(n)}  {made:<28} {by}")
    print(f"  {pct(sum(sysc.values()))}  all system calls")
    print("\nparts, inclusive:")
    for name, key in PARTS:
        print(f"  {pct(parts[name])}  {name}")
    print("\ntop leaf symbols:")
    for s, n in leaf.most_common(25):
        print(f"  {pct(n)}  {s}")


if __name__ == "__main__":
    main(sys.argv[1])
