#!/usr/bin/env bash
# Smoke run of the benchmark harness (bench/, issue #8) so that it cannot rot: every leg (the
# bridge, the Node.js baseline, the raw librdkafka producer) on a tiny workload, plus one fault
# run, with the harness's consistency checks (e.g. the bridge must not lose an event). About 45 s
# once the tools are there. Exits non-zero if a leg fails to run or a check fails. Writes its
# report to a temp file, never bench/RESULTS.md (that is the full profile's:
# `python3 bench/run.py --profile full`).
#
# Binaries: BRIDGE_BIN and SIM_BIN (default: the debug builds in target/debug, built if missing;
# BENCH_BUILD=1 rebuilds them). The tansu broker: TANSU_BIN or ~/.cargo/bin/tansu (installed like
# scripts/test.sh does when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n==> bench-smoke: %s\n' "$*"; }

TANSU_VERSION=0.6.0
if [[ -z "${TANSU_BIN:-}" ]]; then
  if [[ -x "$HOME/.cargo/bin/tansu" ]]; then
    TANSU_BIN="$HOME/.cargo/bin/tansu"
  elif command -v tansu >/dev/null 2>&1; then
    TANSU_BIN="$(command -v tansu)"
  else
    step "installing tansu $TANSU_VERSION (as scripts/test.sh does)"
    cargo install tansu --version "$TANSU_VERSION" --features dynostore,libsql --locked
    TANSU_BIN="$HOME/.cargo/bin/tansu"
  fi
fi
export TANSU_BIN

command -v node >/dev/null 2>&1 || { echo "bench-smoke: node (v18+) is needed for the baseline" >&2; exit 1; }

if ! bench/.venv/bin/python -c 'import confluent_kafka' >/dev/null 2>&1; then
  step "python venv bench/.venv (bench/requirements.txt)"
  python3 -m venv bench/.venv
  bench/.venv/bin/pip install --quiet --disable-pip-version-check -r bench/requirements.txt
fi

if [[ ! -d bench/baseline-node/node_modules/kafkajs || ! -d bench/baseline-node/node_modules/ws ]]; then
  step "npm ci (bench/baseline-node, pinned by package-lock.json)"
  (cd bench/baseline-node && npm ci --no-audit --no-fund --loglevel=error)
fi

export BRIDGE_BIN="${BRIDGE_BIN:-$PWD/target/debug/genesys-kafka-bridge}"
export SIM_BIN="${SIM_BIN:-$PWD/target/debug/genesys-sim}"
if [[ ! -x "$SIM_BIN" || "${BENCH_BUILD:-}" == 1 ]]; then
  step "cargo build -p genesys-sim"
  cargo build -p genesys-sim
fi
if [[ ! -x "$BRIDGE_BIN" || "${BENCH_BUILD:-}" == 1 ]]; then
  step "cargo build --bin genesys-kafka-bridge -p genesys-kafka-bridge"
  cargo build --bin genesys-kafka-bridge -p genesys-kafka-bridge
fi

report="$(mktemp --suffix=.md)"
step "python3 bench/run.py --profile smoke --results $report"
timeout 300 bench/.venv/bin/python bench/run.py --profile smoke --results "$report"
