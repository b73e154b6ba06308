#!/usr/bin/env bash
# Issue 12, thirteenth round: how much of a 2 s window each worker thread ran and waited on a
# run queue (/proc/PID/task/TID/schedstat: ns on a CPU, ns runnable but waiting), sampled
# 10.5 s into an 8 s fs.get bench run (the null echo's run comes first), and the host's idle
# and iowait over the same window (/proc/stat; the worker's IO thread waiting in
# io_uring_enter counts as iowait). Usage: schedstat.sh [--rate R] [bench/worker args...];
# worker /tmp/bw-base, bench /tmp/beamline-bench.
set -euo pipefail
( /tmp/beamline-bench --worker-bin /tmp/bw-base "$@" --scenario fs-get --duration 8 --no-plain \
    --out /tmp/ssrun > /tmp/ssrun.txt 2>&1 & )
sleep 10.5
pid=$(pgrep -f "^/tmp/bw-base")
snap() { for t in /proc/"$pid"/task/*; do echo "$(cat "$t"/comm) $(cat "$t"/schedstat)"; done; }
snap > /tmp/ss1; head -1 /proc/stat > /tmp/st1; sleep 2; snap > /tmp/ss2; head -1 /proc/stat > /tmp/st2
echo "# schedstat.sh $*"
paste /tmp/ss1 /tmp/ss2 | awk '{r=($6-$2)/1e6; w=($7-$3)/1e6; if (r+w>5) printf "%-10s ran %7.1f ms (%4.1f%%), waited %7.1f ms (%4.1f%%), %d slices\n",$1,r,r/20,w,w/20,$8-$4}'
paste /tmp/st1 /tmp/st2 | awk '{printf "host idle %.2f CPUs, iowait %.2f CPUs (over the 2 s)\n", ($16-$5)/200, ($17-$6)/200}'
while pgrep -f "^/tmp/bw-base" > /dev/null; do sleep 0.5; done
grep -E '^core run.*worker' /tmp/ssrun.txt
rm -rf /tmp/ssrun/*/logs
