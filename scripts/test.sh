#!/usr/bin/env bash
# Runs every test of the workspace. The end-to-end tests start their own Kafka broker (tansu, a
# Kafka-compatible broker in Rust) on loopback ports; it is built from crates.io when missing
# (~15 minutes once; the binary is cached in ~/.cargo/bin).
set -euo pipefail
cd "$(dirname "$0")/.."

TANSU_VERSION=0.6.0
if ! command -v tansu >/dev/null 2>&1 || ! tansu --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
  echo "installing tansu $TANSU_VERSION (Kafka-compatible broker for the end-to-end tests)…"
  cargo install tansu --version "$TANSU_VERSION" --features dynostore,libsql --locked
fi
export TANSU_BIN="${TANSU_BIN:-$(command -v tansu)}"

# tests/monitoring.rs runs a real Prometheus against the bridge; .ci/deploy-check.sh uses promtool.
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  echo "installing Debian's prometheus package (Prometheus server and promtool, for the monitoring tests)…"
  sudo=""
  [[ "$(id -u)" == 0 ]] || sudo="sudo"
  $sudo apt-get install -y --no-install-recommends prometheus >/dev/null \
    || { $sudo apt-get update >/dev/null && $sudo apt-get install -y --no-install-recommends prometheus >/dev/null; }
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi
# The end-to-end tests inject faults into the bridge (`POST /debug/*`): a cargo feature that
# release builds leave off.
exec cargo nextest run --workspace --features genesys-kafka-bridge/fault-injection --no-fail-fast "$@"
