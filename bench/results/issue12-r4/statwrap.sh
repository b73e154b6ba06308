#!/bin/bash
# A --worker-bin wrapper for beamline-bench: starts the worker ($WORKER) with the bench's
# arguments, waits until it is busy (over 0.2 s of CPU in 0.5 s), then counts its system
# calls for 3 s with perf stat (-p, all threads) into $STAT_OUT. Needs root (tracepoints).
# The third round's wrapper with the events of a put (puts in the window = fsetxattr: the
# bench's puts all carry a content type).
#   WORKER=... STAT_OUT=... beamline-bench --worker-bin bench/results/issue12-r4/statwrap.sh \
#       --scenario fs-put --duration 6 --repeat 1 --no-plain
${WORKER:?worker binary} "$@" &
PID=$!
# The bench stops this wrapper, not the worker under it: pass the signal on.
trap 'kill $PID 2>/dev/null' TERM INT EXIT
(
  prev=0
  while kill -0 $PID 2>/dev/null; do
    t=$(awk '{print $14+$15}' /proc/$PID/stat)
    if [ $((t - prev)) -ge 20 ] && [ $prev -gt 0 ]; then break; fi
    prev=$t; sleep 0.5
  done
  sleep 0.5
  perf stat -e 'raw_syscalls:sys_enter,task-clock,syscalls:sys_enter_openat,syscalls:sys_enter_openat2,syscalls:sys_enter_close,syscalls:sys_enter_statx,syscalls:sys_enter_newfstat,syscalls:sys_enter_fcntl,syscalls:sys_enter_pwrite64,syscalls:sys_enter_ftruncate,syscalls:sys_enter_fsetxattr,syscalls:sys_enter_fremovexattr,syscalls:sys_enter_renameat,syscalls:sys_enter_renameat2,syscalls:sys_enter_unlinkat,syscalls:sys_enter_io_uring_enter,syscalls:sys_enter_futex' -p $PID -o ${STAT_OUT:?output file} -- sleep 3
) &
wait $PID
