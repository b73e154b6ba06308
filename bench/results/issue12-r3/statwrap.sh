#!/bin/bash
# A --worker-bin wrapper for beamline-bench: starts the worker ($WORKER) with the bench's
# arguments, waits until it is busy (over 0.2 s of CPU in 0.5 s), then counts its system
# calls for 3 s with perf stat (-p, all threads) into $STAT_OUT. Needs root (tracepoints).
#   WORKER=... STAT_OUT=... beamline-bench --worker-bin bench/results/issue12-r3/statwrap.sh \
#       --scenario sql --duration 6 --repeat 1 --no-plain
${WORKER:?worker binary} "$@" &
PID=$!
(
  prev=0
  while kill -0 $PID 2>/dev/null; do
    t=$(awk '{print $14+$15}' /proc/$PID/stat)
    if [ $((t - prev)) -ge 20 ] && [ $prev -gt 0 ]; then break; fi
    prev=$t; sleep 0.5
  done
  sleep 0.5
  perf stat -e 'raw_syscalls:sys_enter,task-clock,syscalls:sys_enter_openat,syscalls:sys_enter_openat2,syscalls:sys_enter_close,syscalls:sys_enter_statx,syscalls:sys_enter_newfstatat,syscalls:sys_enter_fcntl,syscalls:sys_enter_pread64,syscalls:sys_enter_futex,syscalls:sys_enter_recvfrom,syscalls:sys_enter_writev,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_connect,syscalls:sys_enter_socket' -p $PID -o ${STAT_OUT:?output file} -- sleep 3
) &
wait $PID
