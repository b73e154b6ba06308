#!/usr/bin/env bash
# CI deployment checks (.ci/run): builds the Debian package with `cargo deb`, installs it
# with dpkg -i, verifies the installed unit with systemd-analyze, and runs the installed
# binary: `plan` on this host and on a fixture, then a short real start against a test
# nats-server that must answer /_health 200 and drain on SIGTERM. Prints each step's time.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
t0=$(date +%s)
step() { echo "== deploy: $1 (+$(($(date +%s) - t0)) s)"; }

step "tools"
if ! command -v systemd-analyze >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq systemd >/dev/null
fi
# cargo-deb: installed once per machine (a cached ~/.cargo/bin keeps it).
command -v cargo-deb >/dev/null 2>&1 || cargo install cargo-deb --locked --quiet

step "cargo deb --profile deb"
# (Not `tee /dev/stderr`: with stderr redirected to a file, that reopens and truncates it.)
built=$(cargo deb -p beamline_worker --profile deb 2>&1) || { echo "$built" >&2; exit 1; }
echo "$built"
deb=$(echo "$built" | grep -E '\.deb$' | tail -1)
[ -f "$deb" ] || { echo "no .deb built" >&2; exit 1; }
dpkg-deb --contents "$deb"

step "dpkg -i $deb"
$SUDO dpkg -i "$deb"
for f in /usr/bin/beamline_worker /lib/systemd/system/beamline-worker.service \
  /etc/beamline-worker/worker.env /usr/share/beamline-worker/grafana/grafana-dashboard.json \
  /usr/share/beamline-worker/prometheus/prometheus-alerts.yml \
  /usr/share/beamline-worker/tuning/host-16c-1gpu.toml; do
  [ -e "$f" ] || { echo "missing after install: $f" >&2; exit 1; }
done

step "systemd-analyze verify"
out=$(systemd-analyze verify /lib/systemd/system/beamline-worker.service 2>&1) || true
echo "$out"
# Only complaints about this unit count (a container without systemd as PID 1 reports
# unrelated units too).
if echo "$out" | grep -q 'beamline-worker.service'; then
  echo "systemd-analyze found problems in the unit" >&2
  exit 1
fi

step "installed binary: plan"
/usr/bin/beamline_worker plan
plan=$(/usr/bin/beamline_worker plan \
  --profile /usr/share/beamline-worker/tuning/host-16c-1gpu.toml \
  --sysfs-root tests/fixtures/sysfs/host-16c-1gpu)
echo "$plan" | grep -q 'warnings: none' || { echo "$plan"; echo "plan warned" >&2; exit 1; }

step "installed binary: short real start against a test NATS"
work=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null ||
  echo $((20000 + RANDOM % 20000)); }
np=$(free_port); hp=$(free_port); mp=$(free_port)
nats=$(command -v nats-server || echo /usr/sbin/nats-server)
"$nats" -js -a 127.0.0.1 -p "$np" -sd "$work/js" >"$work/nats.log" 2>&1 &
npid=$!
set -a; . /etc/beamline-worker/worker.env; set +a
/usr/bin/beamline_worker --nats-url "nats://127.0.0.1:$np" --fs-root "$work/fs" --sql-root "$work/sql" \
  --prometheus-endpoint "127.0.0.1:$mp" --health-endpoint "127.0.0.1:$hp" \
  --cpu-pool-size 1 --io-pool-size 1 >"$work/worker.log" 2>&1 &
wpid=$!
health() { exec 3<>"/dev/tcp/127.0.0.1/$hp" && printf 'GET /_health HTTP/1.0\r\n\r\n' >&3 && head -1 <&3; exec 3<&- 3>&-; }
ok=""
for _ in $(seq 1 150); do
  if line=$(health 2>/dev/null) && echo "$line" | grep -q ' 200'; then ok=1; break; fi
  sleep 0.2
done
if [ -z "$ok" ]; then cat "$work/worker.log"; kill "$wpid" "$npid" || true; exit 1; fi
echo "/_health: $line"
kill -TERM "$wpid"
wait "$wpid" || { echo "worker exited non-zero after SIGTERM" >&2; cat "$work/worker.log"; kill "$npid"; exit 1; }
grep -q '"worker stopped"\|worker stopped' "$work/worker.log"
kill "$npid"; wait "$npid" 2>/dev/null || true
rm -rf "$work"
step "done"
