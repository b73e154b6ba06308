#!/bin/bash
# usage: pstat-run.sh TAG BIN [bench args...]; counts syscalls of the worker for 3 s once it is busy
tag=$1 bin=$2; shift 2
/tmp/beamline-bench --worker-bin "$bin" --scenario fs-get --duration 5 --no-plain --out /tmp/pst-$tag "$@" > /tmp/pst-$tag.txt 2>&1 &
bp=$!
pid=""
for i in $(seq 1 100); do pid=$(pgrep -n -f "^$bin "); [ -n "$pid" ] && break; sleep 0.1; done
t0=$(awk '{print $14}' /proc/$pid/stat)
for i in $(seq 1 200); do sleep 0.1; t=$(awk '{print $14}' /proc/$pid/stat); [ $((t - t0)) -gt 20 ] && break; done
sleep 0.5
perf stat -e syscalls:sys_enter_writev,syscalls:sys_enter_write,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_recvfrom,syscalls:sys_enter_openat2,context-switches -p $pid -o /tmp/pstat-$tag.txt -- sleep 3
wait $bp
grep "fs.get worker" /tmp/pst-$tag.txt
grep -E "syscalls|context" /tmp/pstat-$tag.txt
