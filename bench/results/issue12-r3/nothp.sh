#!/bin/sh
# A --worker-bin wrapper: the worker ($WORKER) with MIMALLOC_ALLOW_THP=0 in its environment
# (the target-5 experiment in run.sh, before the worker turned THP off by itself).
MIMALLOC_ALLOW_THP=0 exec "${WORKER:?worker binary}" "$@"
