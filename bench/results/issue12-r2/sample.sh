#!/bin/bash
# Worker wrapper for beamline-bench --worker-bin: runs $WORKER with the bench's arguments and
# every 0.5 s appends "unix_s tasks_total cpu_ticks rss_kb" to $SAMPLES: the worker's
# worker_tasks_total (summed over labels, from its /metrics), its user+system CPU time in
# clock ticks (/proc/PID/stat) and its VmRSS. Used for the 1 M-task flatness run
# (target 3); see run.sh.
set -u
: "${WORKER:?worker binary}" "${SAMPLES:?output file}"
prom=""
prev=""
for a in "$@"; do
    [ "$prev" = "--prometheus-endpoint" ] && prom=$a
    prev=$a
done
"$WORKER" "$@" &
pid=$!
(
    while kill -0 "$pid" 2>/dev/null; do
        tasks=$(curl -s "http://$prom/metrics" | awk '/^worker_tasks_total/ {s += $2} END {print s + 0}')
        cpu=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null)
        rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null)
        echo "$(date +%s.%N) $tasks $cpu $rss" >>"$SAMPLES"
        sleep 0.5
    done
) &
trap 'kill -TERM "$pid"; wait "$pid"' TERM INT
wait "$pid"
wait "$pid"
