#!/usr/bin/env python3
"""Where a flat-out core fs.get worker spends its CPU, from `perf script -F comm,ip,sym`
of a `perf record --call-graph dwarf` of the worker alone (see run-profile.sh).

Prints: samples per thread; system calls by the user-space function that made them (and
its nearest worker caller); the worker's parts, inclusive (a sample counts for every part
on its stack); the top leaf symbols. Shares are of all the worker's samples."""
import collections
import re
import sys

PARTS = [  # (name, a substring of a frame on the stack)
    ("task (cputime::Metered: everything a task does)", "cputime::Metered"),
    ("fs block", "blocks::fs"),
    ("log lines (tracing Event::dispatch)", "Event::dispatch"),
    ("async-nats connection handler", "ConnectionHandler"),
    ("dedupe store", "dedupe::"),
    ("tracing spans (new, enter/exit, drop)", "tracing::span::"),
    ("assignment parse", "assignment::"),
    ("base64 (fs.get content)", "base64"),
    ("publish", "publish::Publisher"),
    ("core intake loop", "consume_core"),
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
            by = next((f[:70] for f in frames[i + 1:i + 8] if "beamline" in f), "")
            sysc[(made, by)] += 1
        stack = " ".join(frames)
        for name, key in PARTS:
            if key in stack:
                parts[name] += 1
    pct = lambda n: f"{100 * n / total:5.1f}%"
    print(f"samples: {total}; by thread: {dict(threads.most_common())}")
    print("\nsystem calls (the libc function, the worker function that made it):")
    for (made, by), n in sysc.most_common(14):
        print(f"  {pct(n)}  {made:<28} {by}")
    print(f"  {pct(sum(sysc.values()))}  all system calls")
    print("\nthe worker's parts, inclusive:")
    for name, n in parts.most_common():
        print(f"  {pct(n)}  {name}")
    print("\ntop leaf symbols:")
    for s, n in leaf.most_common(20):
        print(f"  {pct(n)}  {s}")


if __name__ == "__main__":
    main(sys.argv[1])
