#!/usr/bin/env python3
"""sched_setattr(tid, SCHED_OTHER, sched_runtime=NS) on the threads of PID whose name
starts with PREFIX: asks EEVDF for a custom slice. usage: set_slice.py PID PREFIX NS"""
import ctypes, os, struct, sys
pid, prefix, ns = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
libc = ctypes.CDLL(None, use_errno=True)
SYS_sched_setattr, SYS_sched_getattr = 314, 315
for tid in os.listdir(f"/proc/{pid}/task"):
    name = open(f"/proc/{pid}/task/{tid}/comm").read().strip()
    if not name.startswith(prefix):
        continue
    # size, policy, flags, nice, priority, runtime, deadline, period, util_min, util_max
    attr = struct.pack("IIQiIQQQII", 56, 0, 0, 0, 0, ns, 0, 0, 0, 0)
    buf = ctypes.create_string_buffer(attr, 56)
    r = libc.syscall(SYS_sched_setattr, int(tid), buf, 0)
    err = ctypes.get_errno()
    out = ctypes.create_string_buffer(56)
    libc.syscall(SYS_sched_getattr, int(tid), out, 56, 0)
    got = struct.unpack("IIQiIQQQII", out.raw)
    print(f"{tid} {name}: set -> {r} errno {err}; runtime now {got[5]} ns")
