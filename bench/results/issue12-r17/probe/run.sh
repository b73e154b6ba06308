#!/bin/bash
# Issue 12, seventeenth round: a black-box probe of one worker binary with hostile and odd
# assignments (cases.py), through the raw NATS protocol (nats.py), on its own
# nats-server -js (port 15222) with a tenant file and a SQLite database. Work files in
# /tmp/probe; what each assignment got back (ack, result, DLQ: status, code, message) in
# /tmp/probe/out-MODE.txt.
# usage: run.sh jetstream|core WORKER
MODE=$1; W=$2; D=$(cd "$(dirname "$0")" && pwd); P=/tmp/probe; PORT=15222
rm -rf $P/js $P/fs $P/sql; mkdir -p $P/js $P/fs/t1/d $P/sql
echo hello > $P/fs/t1/d/hello.txt
python3 - <<'PY'
import sqlite3; c = sqlite3.connect("/tmp/probe/sql/db.sqlite"); c.execute("create table users(id text, name text, email text)"); c.execute("insert into users values('123','John','john@example.com')"); c.commit()
PY
nats-server -js -p $PORT -sd $P/js > $P/nats.log 2>&1 & NP=$!
sleep 0.5
$W --consumer $MODE --nats-url nats://127.0.0.1:$PORT --prometheus-endpoint 127.0.0.1:19090 --health-endpoint off --fs-root $P/fs --sql-root $P/sql > $P/worker-$MODE.log 2>&1 & WP=$!
sleep 1.5
python3 $D/cases.py $PORT 4 > $P/out-$MODE.txt 2>&1
kill $WP; wait $WP; echo "worker rc=$?"; kill $NP; wait $NP 2>/dev/null
