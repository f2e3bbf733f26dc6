#!/usr/bin/env bash
# Checks genesys-sim against the official Genesys JavaScript SDK.
#
# Usage: bash sim/sdk-check/run.sh [path/to/genesys-sim]
#   default binary: target/debug/genesys-sim (built with `cargo build -p genesys-sim` if absent)
# Starts the simulator on free loopback ports, runs `npm ci` (if node_modules is missing) and
# `node check.js`, stops the simulator, and exits non-zero on any mismatch.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

if [[ $# -ge 1 ]]; then
  bin="$1"
  [[ -x "$bin" ]] || { echo "sdk-check: $bin is not an executable" >&2; exit 2; }
else
  bin="$root/target/debug/genesys-sim"
  if [[ ! -x "$bin" ]]; then
    (cd "$root" && cargo build -p genesys-sim)
  fi
fi

work="$(mktemp -d)"
sim_pid=""
cleanup() {
  if [[ -n "$sim_pid" ]] && kill -0 "$sim_pid" 2>/dev/null; then
    kill "$sim_pid" 2>/dev/null || true
    wait "$sim_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

"$bin" --listen 127.0.0.1:0 --ws-listen 127.0.0.1:0 \
  --queues 30 --agents 40 --rate 20/s --seed 7 --heartbeat-interval 1s \
  >"$work/stdout" 2>"$work/stderr" &
sim_pid=$!

# The simulator prints one JSON line with its URLs on stdout once it serves.
base_url=""
for _ in $(seq 1 300); do
  if [[ -s "$work/stdout" ]]; then
    base_url="$(sed -n 's/.*"baseUrl":"\([^"]*\)".*/\1/p' "$work/stdout" | head -n1)"
    [[ -n "$base_url" ]] && break
  fi
  if ! kill -0 "$sim_pid" 2>/dev/null; then
    echo "sdk-check: genesys-sim exited early:" >&2
    cat "$work/stderr" >&2
    exit 1
  fi
  sleep 0.1
done
if [[ -z "$base_url" ]]; then
  echo "sdk-check: genesys-sim did not report its URL in time" >&2
  cat "$work/stderr" >&2
  exit 1
fi
echo "sdk-check: genesys-sim at $base_url"

cd "$here"
if [[ ! -d node_modules ]]; then
  npm ci --no-audit --no-fund
fi
status=0
SIM_BASE_URL="$base_url" node check.js || status=$?
if [[ $status -ne 0 ]]; then
  echo "sdk-check: simulator log:" >&2
  tail -n 50 "$work/stderr" >&2
fi
exit $status
