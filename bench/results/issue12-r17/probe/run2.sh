#!/bin/bash
# Issue 12, seventeenth round: one probe script (ssrf.py: URLs that name a denied address
# in other spellings, and a redirect to one; esc.py: JSON escapes of surrogates) against a
# worker binary in core mode on its own nats-server (port 15222); prints what came back.
# usage: run2.sh WORKER ssrf|esc
W=$1; D=$(cd "$(dirname "$0")" && pwd); P=/tmp/probe; PORT=15222
rm -rf $P/js; mkdir -p $P/js $P/fs $P/sql
nats-server -js -p $PORT -sd $P/js > $P/nats.log 2>&1 & NP=$!
sleep 0.5
$W --consumer core --nats-url nats://127.0.0.1:$PORT --prometheus-endpoint 127.0.0.1:19090 --health-endpoint off --fs-root $P/fs --sql-root $P/sql > $P/worker-$2.log 2>&1 & WP=$!
sleep 1.5
python3 $D/$2.py $PORT
kill $WP; wait $WP; echo "worker rc=$?"; kill $NP; wait $NP 2>/dev/null
