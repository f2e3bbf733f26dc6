#!/usr/bin/env python3
"""Checks deploy/: the Helm chart, the plain manifests and what they hand the bridge.

Run by .ci/deploy-check.sh (which prepares the venv, the bridge binary, yamllint and hadolint) from
the repository root, with the venv's python:

    python deploy/scripts/check_deploy.py --bridge target/debug/genesys-kafka-bridge

Offline: helm-python-sdk (Helm's Go SDK) lints and renders, kubernetes-validate holds the
Kubernetes schemas, and the bridge's own `check-config` judges every rendered bridge.toml.
Prints one line per check; exits 1 if any failed.

Files under the mount of kafka.existingSecret (CA, client certificate and key, SASL password read
through properties_from_files) do not exist here, and `check-config` loads them: for that check
only, the mount path in bridge.toml is pointed at a temporary directory holding what the property
names call for (a CA, a client certificate and key signed by it, generated with the `openssl` CLI;
dummy secrets). See SecretMountFixture.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import helm_python
import kubernetes_validate
import yaml

KUBE_VERSION = "1.30.0"
CHART = Path("deploy/helm/genesys-kafka-bridge")
K8S = Path("deploy/k8s")
MONITORING = Path("deploy/monitoring")
RELEASE = "bridge"
NAMESPACE = "genesys"
# prometheus-operator CRDs: kubernetes-validate has no schema for them (it would only warn).
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
# Files in deploy/k8s that are not Kubernetes API objects.
NOT_API_OBJECTS = {"kustomization.yaml"}
EXIT_CONFIG = 64
# The dummy secret of every fixture file that is not TLS material (SASL password, key passphrase).
# Written with a trailing newline, as `kubectl create secret --from-file` often stores it: the bridge
# strips it.
FIXTURE_SECRET = "not-a-real-secret"


class Checks:
    def __init__(self) -> None:
        self.passed = 0
        self.failed: list[str] = []

    def ok(self, what: str) -> None:
        self.passed += 1
        print(f"  ok    {what}")

    def fail(self, what: str, detail: str = "") -> None:
        self.failed.append(what)
        print(f"  FAIL  {what}")
        for line in detail.strip().splitlines():
            print(f"        {line}")

    def expect(self, condition: bool, what: str, detail: str = "") -> bool:
        if condition:
            self.ok(what)
        else:
            self.fail(what, detail)
        return condition


def load_values(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def docs_of(manifests: dict[str, str]) -> list[dict]:
    docs = []
    for name, text in sorted(manifests.items()):
        if name.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc["__source"] = name
                docs.append(doc)
    return docs


def strip(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k != "__source"}


def kind_of(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


def validate_objects(checks: Checks, docs: list[dict], label: str) -> None:
    for doc in docs:
        what = f"{label}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if doc.get("kind") in CRD_KINDS:
            checks.expect(
                doc.get("apiVersion") == "monitoring.coreos.com/v1",
                f"{what} (CRD: apiVersion only, no schema)",
            )
            continue
        try:
            kubernetes_validate.validate(strip(doc), KUBE_VERSION, strict=True)
            checks.ok(f"{what} valid for Kubernetes {KUBE_VERSION} (strict)")
        except Exception as error:  # ValidationError, SchemaNotFoundError
            checks.fail(f"{what} valid for Kubernetes {KUBE_VERSION}", str(error)[:2000])


def bridge_toml(docs: list[dict]) -> tuple[str, str] | None:
    """The bridge.toml of a render: (where, text), from the ConfigMap or the config Secret."""
    for doc in docs:
        name = doc.get("metadata", {}).get("name", "")
        if not name.endswith("-config"):
            continue
        if doc.get("kind") == "ConfigMap" and "bridge.toml" in doc.get("data", {}):
            return f"ConfigMap/{name}", doc["data"]["bridge.toml"]
        if doc.get("kind") == "Secret" and "bridge.toml" in doc.get("stringData", {}):
            return f"Secret/{name}", doc["stringData"]["bridge.toml"]
    return None


def run_check_config(bridge: Path, text: str, mount: tuple[str, Path] | None = None) -> subprocess.CompletedProcess:
    """check-config of `text`; `mount` (path in the pod, local directory) redirects the files of the
    mounted kafka.existingSecret to the local directory."""
    if mount:
        text = text.replace(json.dumps(mount[0] + "/")[:-1], json.dumps(f"{mount[1]}/")[:-1])
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as handle:
        handle.write(text)
        path = handle.name
    try:
        return subprocess.run(
            [str(bridge), "check-config", "--config", path],
            capture_output=True, text=True, timeout=60,
        )
    finally:
        Path(path).unlink(missing_ok=True)


class SecretMountFixture:
    """Stands in for the mounted kafka.existingSecret when check-config runs here.

    For each file a rendered bridge.toml names under the mount (a librdkafka property's value, or a
    properties_from_files entry), it writes what the property calls for: ssl.ca.location a CA
    certificate, ssl.certificate.location a client certificate signed by it, ssl.key.location the
    client key (encrypted with ssl.key.password when that is set, so that check-config proves the
    passphrase read from its file fits), anything else FIXTURE_SECRET and a newline. The TLS
    material is generated once per run with the openssl CLI (EC P-256, valid one day) and never
    leaves the temporary directory.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.material: dict[str, bytes] = {}
        self.count = 0

    def _openssl(self, *args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=self.root, timeout=60)

    def _tls(self, passphrase: str | None) -> dict[str, bytes]:
        """CA, client certificate and client key (PEM; the key encrypted with `passphrase`, if any)."""
        if not self.material:
            if shutil.which("openssl") is None:
                raise RuntimeError("the openssl CLI is needed to generate TLS fixtures for check-config")
            ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
            self._openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt",
                          "-days", "1", "-subj", "/CN=deploy-check test CA")
            self._openssl("req", "-new", *ec, "-keyout", "client.key", "-out", "client.csr",
                          "-subj", "/CN=genesys-kafka-bridge")
            self._openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                          "-CAcreateserial", "-days", "1", "-out", "client.crt")
            self.material = {name: (self.root / name).read_bytes() for name in ("ca.crt", "client.crt", "client.key")}
        key = self.material["client.key"]
        if passphrase is not None:
            self._openssl("pkey", "-in", "client.key", "-out", "client-encrypted.key", "-aes256",
                          "-passout", f"pass:{passphrase}")
            key = (self.root / "client-encrypted.key").read_bytes()
        return {"ssl.ca.location": self.material["ca.crt"], "ssl.certificate.location": self.material["client.crt"],
                "ssl.key.location": key}

    def directory_for(self, config: dict, mount_path: str) -> tuple[Path, list[str]]:
        """A directory with the files `config` names under `mount_path`, and their names."""
        self.count += 1
        directory = self.root / f"mount-{self.count}"
        directory.mkdir()
        kafka = config.get("kafka", {})
        properties = kafka.get("properties", {})
        from_files = kafka.get("properties_from_files", {})
        prefix = mount_path.rstrip("/") + "/"
        named = [(name, value) for name, value in properties.items() if str(value).startswith(prefix)]
        named += [(name, value) for name, value in from_files.items() if value.startswith(prefix)]
        if "ssl.key.password" in from_files:
            passphrase = FIXTURE_SECRET
        else:
            passphrase = properties.get("ssl.key.password")
        written = []
        for name, value in named:
            relative = value[len(prefix):]
            if name in ("ssl.ca.location", "ssl.certificate.location", "ssl.key.location"):
                content = self._tls(passphrase)[name]
            else:
                content = (FIXTURE_SECRET + "\n").encode()
            target = directory / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
            written.append(relative)
        return directory, sorted(written)


def kafka_secret_mount(docs: list[dict]) -> str | None:
    """Where the pod mounts kafka.existingSecret, if it does."""
    for deployment in kind_of(docs, "Deployment"):
        for mount in deployment["spec"]["template"]["spec"]["containers"][0].get("volumeMounts", []):
            if mount["name"] == "kafka-secret":
                return mount["mountPath"]
    return None


def check_bridge_config(checks: Checks, bridge: Path, docs: list[dict], label: str,
                        fixture: SecretMountFixture | None = None) -> dict | None:
    found = bridge_toml(docs)
    if not checks.expect(found is not None, f"{label}: renders bridge.toml"):
        return None
    where, text = found
    try:
        parsed = tomllib.loads(text)
        checks.ok(f"{label}: {where} bridge.toml is valid TOML")
    except tomllib.TOMLDecodeError as error:
        checks.fail(f"{label}: {where} bridge.toml is valid TOML", f"{error}\n{text}")
        return None
    mount_path = kafka_secret_mount(docs)
    mount = None
    note = ""
    if mount_path and fixture:
        try:
            directory, files = fixture.directory_for(parsed, mount_path)
        except (RuntimeError, subprocess.CalledProcessError) as error:
            detail = getattr(error, "stderr", b"") or b""
            checks.fail(f"{label}: fixture files for the kafka.existingSecret mount", f"{error}\n{detail.decode(errors='replace')}")
            return parsed
        if files:
            mount = (mount_path, directory)
            note = f" ({mount_path}/ -> fixture: {', '.join(files)})"
    result = run_check_config(bridge, text, mount)
    checks.expect(
        result.returncode == 0,
        f"{label}: `genesys-kafka-bridge check-config` accepts {where} bridge.toml{note}",
        f"exit {result.returncode}\n{result.stderr}",
    )
    return parsed


def pod_invariants(checks: Checks, docs: list[dict], values: dict, label: str) -> None:
    """What every render must keep, whatever the values."""
    deployments = kind_of(docs, "Deployment")
    if not checks.expect(len(deployments) == 1, f"{label}: exactly one Deployment"):
        return
    deployment = deployments[0]
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    problems = []
    if spec.get("replicas") != 1:
        problems.append(f"replicas {spec.get('replicas')}")
    strategy = spec["strategy"]
    persistent = values.get("persistence", {}).get("enabled", False)
    if persistent and strategy["type"] != "Recreate":
        problems.append("persistence without Recreate")
    if strategy["type"] == "RollingUpdate" and strategy.get("rollingUpdate") != {"maxSurge": 1, "maxUnavailable": 0}:
        problems.append(f"rollingUpdate {strategy.get('rollingUpdate')}")
    sc = container.get("securityContext", {})
    for key, wanted in (("readOnlyRootFilesystem", True), ("allowPrivilegeEscalation", False), ("runAsNonRoot", True)):
        if sc.get(key) != wanted:
            problems.append(f"securityContext.{key} is {sc.get(key)}")
    if sc.get("capabilities", {}).get("drop") != ["ALL"]:
        problems.append("capabilities not dropped")
    if pod.get("securityContext", {}).get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append("no RuntimeDefault seccomp profile")
    if pod.get("automountServiceAccountToken") is not False:
        problems.append("service account token mounted")
    if "memory" not in container.get("resources", {}).get("limits", {}):
        problems.append("no memory limit")
    probes = {name: container.get(name, {}).get("httpGet", {}).get("path") for name in ("startupProbe", "livenessProbe", "readinessProbe")}
    if probes != {"startupProbe": "/livez", "livenessProbe": "/livez", "readinessProbe": "/readyz"}:
        problems.append(f"probes {probes}")
    mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
    if "/var/lib/genesys-kafka-bridge" not in mounts:
        problems.append("spool volume not mounted")
    checks.expect(not problems, f"{label}: pod invariants (1 replica, strategy, locked down, probes, spool)", "; ".join(problems))

    # The grace period must outlast the bridge's shutdown deadline (read from the rendered config).
    found = bridge_toml(docs)
    if found:
        deadline = tomllib.loads(found[1])["supervisor"]["shutdown_deadline"]
        seconds = duration_seconds(deadline)
        grace = pod["terminationGracePeriodSeconds"]
        checks.expect(grace > seconds, f"{label}: terminationGracePeriodSeconds {grace} > shutdown_deadline {deadline}")

    # Every ConfigMap/Secret/PVC the pod uses is rendered, or is one the values name as existing.
    existing = {
        values.get("genesys", {}).get("existingSecret"),
        values.get("kafka", {}).get("existingSecret"),
        values.get("config", {}).get("existingSecret"),
        values.get("persistence", {}).get("existingClaim"),
    } - {None, ""}
    rendered = {(d["kind"], d["metadata"]["name"]) for d in docs}
    missing = []
    for volume in pod.get("volumes", []):
        if "configMap" in volume and ("ConfigMap", volume["configMap"]["name"]) not in rendered:
            missing.append(volume["configMap"]["name"])
        if "secret" in volume:
            name = volume["secret"]["secretName"]
            if ("Secret", name) not in rendered and name not in existing:
                missing.append(name)
        if "persistentVolumeClaim" in volume:
            name = volume["persistentVolumeClaim"]["claimName"]
            if ("PersistentVolumeClaim", name) not in rendered and name not in existing:
                missing.append(name)
    checks.expect(not missing, f"{label}: every volume source is rendered or named as existing", ", ".join(missing))


def monitoring_checks(checks: Checks, chart, base: dict, renders: dict[str, list[dict]]) -> None:
    """The PrometheusRule and the Grafana dashboard ConfigMap: rendered where asked, equal to the
    files in the repository, thresholds and options reaching every rule; every alert unit-tested
    (firing and quiet) and with a runbook section."""
    print("== Monitoring: PrometheusRule and Grafana dashboard")
    monitoring = renders.get("monitoring-values.yaml", [])
    default = renders.get("default-values.yaml", [])
    rules = kind_of(monitoring, "PrometheusRule")
    dashboards = [d for d in kind_of(monitoring, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    checks.expect(len(rules) == 1 and len(dashboards) == 1, "monitoring: one PrometheusRule and one dashboard ConfigMap rendered")
    checks.expect(not kind_of(default, "PrometheusRule")
                  and not [d for d in kind_of(default, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")],
                  "default: no PrometheusRule, no dashboard ConfigMap")
    shipped = json.loads((CHART / "dashboards/genesys-kafka-bridge.json").read_text())
    if dashboards:
        cm = dashboards[0]
        checks.expect(cm["metadata"]["labels"].get("grafana_dashboard") == "1",
                      "dashboard ConfigMap carries the sidecar label grafana_dashboard: \"1\"", json.dumps(cm["metadata"]["labels"]))
        data = cm.get("data", {}).get("genesys-kafka-bridge.json", "")
        checks.expect(bool(data) and json.loads(data) == shipped, "dashboard ConfigMap holds dashboards/genesys-kafka-bridge.json unchanged")
    plain = yaml.safe_load((MONITORING / "prometheus-rules.yaml").read_text())
    if rules:
        spec = rules[0]["spec"]
        checks.expect(spec == plain, "monitoring (default thresholds): PrometheusRule spec = deploy/monitoring/prometheus-rules.yaml",
                      diff(plain, spec))
    alerts = [r for g in plain["groups"] for r in g["rules"]]
    names = [r["alert"] for r in alerts]
    schema_enum = chart.schema["properties"]["metrics"]["properties"]["prometheusRule"]["properties"]["disabled"]["items"]["enum"]
    checks.expect(sorted(schema_enum) == sorted(names), f"schema's prometheusRule.disabled enum = the {len(names)} alerts",
                  f"only in schema: {sorted(set(schema_enum) - set(names))}; only in the rules: {sorted(set(names) - set(schema_enum))}")

    # Every option reaches the rules.
    override = {"metrics": {"prometheusRule": {
        "enabled": True, "selector": 'namespace="genesys"', "alertLabels": {"team": "contact-centre"},
        "disabled": ["GenesysBridgeNoEvents"], "runbookUrl": "https://git.example.com/README.md#",
        "thresholds": {"spoolFillRatio": 0.5, "spoolFillFor": "7m", "tokenExpirySeconds": 60, "actorRestarts": 5,
                       "actorRestartsWindow": "1h", "oldestRecordSeconds": 900, "legDownFor": "1h"}}}}
    docs = docs_of(chart.render(deep_merge(base, override), name=RELEASE, namespace=NAMESPACE))
    tuned = {r["alert"]: r for g in kind_of(docs, "PrometheusRule")[0]["spec"]["groups"] for r in g["rules"]}
    checks.expect("GenesysBridgeNoEvents" not in tuned and len(tuned) == len(names) - 1, "prometheusRule.disabled drops exactly that alert")
    expect = {"GenesysBridgeSpoolFilling": ("> 0.5", "7m"), "GenesysBridgeTokenExpiring": ("< 60", None),
              "GenesysBridgeActorRestarting": ("[1h]) >= 5", None), "GenesysBridgeKafkaBacklog": ("> 900", None),
              "GenesysBridgeLegDown": ("== 0", "1h")}
    for name, (needle, duration) in expect.items():
        rule = tuned.get(name, {})
        checks.expect(needle in rule.get("expr", "") and (duration is None or rule.get("for") == duration),
                      f"thresholds reach {name}: {needle!r}" + (f", for {duration}" if duration else ""), json.dumps(rule))
    unselected = [(n, m.group(0)) for n, r in tuned.items()
                  for m in re.finditer(r"genesys_bridge_\w+(\{[^}]*\})?", r["expr"])
                  if not (m.group(1) or "").startswith('{namespace="genesys"')]
    checks.expect(not unselected, "prometheusRule.selector is in every selector of every rule", json.dumps(unselected))
    checks.expect(all(r["labels"].get("team") == "contact-centre" and r["labels"].get("severity") for r in tuned.values()),
                  "alertLabels on every alert, beside its severity")
    checks.expect(all(r["annotations"].get("runbook_url") == "https://git.example.com/README.md#" + n.lower()
                      and "Runbook:" not in r["annotations"]["description"] for n, r in tuned.items()),
                  "runbookUrl + the alert's anchor on every alert")

    # Unit tests and runbooks.
    tests = yaml.safe_load((MONITORING / "alerts.test.yaml").read_text())
    cases = [c for t in tests["tests"] for c in t.get("alert_rule_test", [])]
    firing = {c["alertname"] for c in cases if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    checks.expect(set(names) <= firing, "alerts.test.yaml: every alert has a case where it fires", str(sorted(set(names) - firing)))
    # A quiet case: an eval with no alert expected, or a test whose series should not fire (pod-b).
    quiet |= {c["alertname"] for t in tests["tests"] for c in t.get("alert_rule_test", [])
              if any('instance="pod-b"' in s["series"] for s in t["input_series"])}
    checks.expect(set(names) <= quiet, "alerts.test.yaml: every alert has a case where it stays quiet", str(sorted(set(names) - quiet)))
    readme = (CHART / "README.md").read_text()
    missing = [n for n in names if f"### {n}\n" not in readme]
    checks.expect(not missing, "chart README: a runbook section (### <alert>) for every alert", str(missing))


def duration_seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(int(n) * units[u] for n, u in re.findall(r"([0-9]+)(ms|s|m|h|d)", text))


def expect_render_failure(checks: Checks, chart, values: dict, error_type, needle: str, what: str) -> None:
    try:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    except error_type as error:
        message = str(error)
        checks.expect(needle in message, f"refused: {what}", f"error lacks {needle!r}: {message}")
        if needle in message:
            first = next((line for line in message.splitlines() if needle in line), message.splitlines()[0])
            print(f"          -> {first.strip()[:160]}")
        return
    except helm_python.HelmError as error:
        checks.fail(f"refused: {what}", f"wrong error type {type(error).__name__}: {error}")
        return
    checks.fail(f"refused: {what}", "the render succeeded")


def deep_merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bridge", required=True, type=Path, help="the genesys-kafka-bridge binary")
    args = parser.parse_args()
    checks = Checks()
    fixture_root = tempfile.TemporaryDirectory(prefix="deploy-check-mount-")
    fixture = SecretMountFixture(Path(fixture_root.name))
    chart = helm_python.Chart.load(str(CHART))
    scenarios = sorted((CHART / "ci").glob("*-values.yaml"))
    base = load_values(CHART / "ci" / "default-values.yaml")

    print(f"== Chart metadata ({CHART})")
    meta = chart.metadata
    checks.expect(meta.get("apiVersion") == "v2", "Chart.yaml apiVersion v2")
    cargo = tomllib.loads(Path("Cargo.toml").read_text())
    version = cargo["workspace"]["package"]["version"]
    checks.expect(meta.get("appVersion") == version, f"appVersion {meta.get('appVersion')} = Cargo workspace version {version}")
    schema = chart.schema or {}
    checks.expect(schema.get("$schema", "").startswith("http://json-schema.org/draft-07/"), "values.schema.json is draft-07")
    endpoints = Path("actors/src/genesys/endpoints.rs").read_text()
    table = endpoints[endpoints.index("pub const REGIONS"):]
    pairs = re.findall(r'\("([^"]+)",\s*"([^"]+)"\)', table[: table.index("];")])
    wanted = {""} | {k for k, _ in pairs} | {d for _, d in pairs}
    enum = set(schema["properties"]["genesys"]["properties"]["region"]["enum"])
    checks.expect(enum == wanted, f"schema's genesys.region enum = the bridge's {len(pairs)} regions (keys and domains)",
                  f"only in schema: {sorted(enum - wanted)}; only in the bridge: {sorted(wanted - enum)}")

    print(f"== helm lint (strict, Kubernetes v{KUBE_VERSION}), each ci/*-values.yaml")
    for path in scenarios:
        report = helm_python.lint(str(CHART), load_values(path), strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}")
        serious = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
        checks.expect(not serious and not report.get("errors"), f"lint {path.name}",
                      json.dumps(serious or report.get("errors"), indent=1))

    print("== Render each scenario; validate every object; check-config every bridge.toml")
    renders: dict[str, list[dict]] = {}
    for path in scenarios:
        label = path.name
        values = load_values(path)
        try:
            docs = docs_of(chart.render(values, name=RELEASE, namespace=NAMESPACE))
        except helm_python.HelmError as error:
            checks.fail(f"{label}: renders", str(error))
            continue
        renders[label] = docs
        checks.ok(f"{label}: renders {len(docs)} objects ({', '.join(sorted(d['kind'] for d in docs))})")
        validate_objects(checks, docs, label)
        check_bridge_config(checks, args.bridge, docs, label, fixture)
        pod_invariants(checks, docs, values, label)

    print("== Scenario-specific expectations")
    def deployment(label):
        return kind_of(renders.get(label, []), "Deployment")[0]["spec"] if renders.get(label) else {}
    def config(label):
        found = bridge_toml(renders.get(label, []))
        return tomllib.loads(found[1]) if found else {}
    checks.expect(deployment("default-values.yaml").get("strategy", {}).get("type") == "RollingUpdate", "default: RollingUpdate (surge) with the emptyDir spool")
    checks.expect(config("default-values.yaml").get("spool", {}).get("max_bytes") == 1073741824 * 80 // 100, "default: spool.max_bytes derived as 80% of the 1Gi emptyDir")
    checks.expect(deployment("persistence-values.yaml").get("strategy", {}).get("type") == "Recreate", "persistence: Recreate forced")
    checks.expect(len(kind_of(renders.get("persistence-values.yaml", []), "PersistentVolumeClaim")) == 1, "persistence: a PVC is rendered")
    checks.expect(not kind_of(renders.get("existing-claim-values.yaml", []), "PersistentVolumeClaim"), "existing-claim: no PVC rendered")
    checks.expect(config("existing-claim-values.yaml").get("spool", {}).get("max_bytes") == 10 * 1073741824 * 80 // 100, "existing-claim: max_bytes derived from persistence.size")
    checks.expect(deployment("persistence-values.yaml").get("template", {}).get("spec", {}).get("terminationGracePeriodSeconds") == 55, "persistence: grace period derived (45s deadline + 10)")
    checks.expect("api_url" in config("base-urls-values.yaml").get("genesys", {}) and "region" not in config("base-urls-values.yaml").get("genesys", {}), "base-urls: api_url/login_url rendered, no region")
    checks.expect(config("region-domain-values.yaml").get("genesys", {}).get("region") == "mypurecloud.ie", "region-domain: region by domain")
    kinds = {d["kind"] for d in renders.get("monitoring-values.yaml", [])}
    checks.expect({"ServiceMonitor", "PodMonitor", "PodDisruptionBudget"} <= kinds, "monitoring: ServiceMonitor, PodMonitor and PDB rendered")
    default_kinds = {d["kind"] for d in renders.get("default-values.yaml", [])}
    checks.expect(not ({"ServiceMonitor", "PodMonitor", "PodDisruptionBudget"} & default_kinds), "default: no ServiceMonitor, PodMonitor or PDB")
    sasl = renders.get("sasl-tls-values.yaml", [])
    sasl_kafka = config("sasl-tls-values.yaml").get("kafka", {})
    checks.expect(bool(bridge_toml(sasl)) and bridge_toml(sasl)[0].startswith("ConfigMap/")
                  and sasl_kafka.get("properties_from_files") == {"sasl.password": "/etc/genesys-kafka-bridge/kafka/password"}
                  and "sasl.password" not in sasl_kafka.get("properties", {})
                  and sasl_kafka.get("properties", {}).get("security.protocol") == "SASL_SSL",
                  "sasl-tls: SASL_SSL, sasl.password read from the mounted Secret (properties_from_files), bridge.toml a ConfigMap without it",
                  json.dumps(sasl_kafka, indent=1))
    mtls = renders.get("mtls-values.yaml", [])
    mtls_kafka = config("mtls-values.yaml").get("kafka", {})
    checks.expect(bool(bridge_toml(mtls)) and bridge_toml(mtls)[0].startswith("Secret/") and not kind_of(mtls, "ConfigMap")
                  and kafka_secret_mount(mtls) == "/etc/kafka-tls"
                  and mtls_kafka.get("properties_from_files") == {"ssl.key.password": "/etc/kafka-tls/key-passphrase"},
                  "mtls: bridge.toml in a Secret (config.asSecret), key passphrase from the Secret mounted at the custom kafka.secretMountPath",
                  json.dumps(mtls_kafka, indent=1))
    secret_like = re.compile(r"password|secret|\.key\.pem$|sasl\.oauthbearer\.client\.secret")
    plain = {path.name: sorted(k for k in load_values(path).get("kafka", {}).get("properties", {}) if secret_like.search(k))
             for path in scenarios}
    plain = {name: keys for name, keys in plain.items() if keys}
    checks.expect(not plain, "no scenario puts a password or secret in kafka.properties (kafka.propertiesFromSecret instead)", json.dumps(plain))
    default_config = config("default-values.yaml")
    checks.expect(default_config.get("backfill", {}).get("enabled") is False and "properties_from_files" not in default_config.get("kafka", {}),
                  "default: [backfill] rendered with enabled = false; no properties_from_files")
    wanted_backfill = {"enabled": True, "topic": "contact-center.genesys.backfill", "settle_delay": "5m", "margin": "30s",
                       "max_interval": "30m", "page_size": 50, "requests_per_minute": 30, "max_attempts": 5}
    checks.expect(config("backfill-values.yaml").get("backfill") == wanted_backfill,
                  "backfill: every backfill value reaches [backfill] under its TOML key",
                  diff(wanted_backfill, config("backfill-values.yaml").get("backfill", {})))
    checks.expect(default_config.get("lifecycle", {}).get("enabled") is False,
                  "default: [lifecycle] rendered with enabled = false")
    wanted_lifecycle = {"enabled": True, "topic": "contact-center.genesys.lifecycle", "wrapup": False,
                        "include_addresses": True, "checkpoint_interval": "10s", "remember_ended": "4h",
                        "max_open": "24h", "reconcile": True, "reconcile_interval": "10m",
                        "reconcile_settle": "5m", "reconcile_quiet_after": "30m"}
    checks.expect(config("lifecycle-values.yaml").get("lifecycle") == wanted_lifecycle,
                  "lifecycle: every lifecycle value reaches [lifecycle] under its TOML key",
                  diff(wanted_lifecycle, config("lifecycle-values.yaml").get("lifecycle", {})))
    wanted_socket = {"redundancy": 1, "ping_interval": "10s", "pong_timeout": "3s", "dead_after": "40s",
                     "rollover_margin": "20m", "rollover_timeout": "45s", "min_rollover_interval": "10s",
                     "stable_after": "1m", "max_connects_per_minute": 6, "max_frame_bytes": 8388608,
                     "dedup_capacity": 50000, "dedup_window": "1m",
                     "backoff": {"min": "1s", "max": "30s", "jitter": 0.25}}
    checks.expect(config("single-leg-values.yaml").get("socket") == wanted_socket
                  and config("single-leg-values.yaml").get("topics", {}).get("channel_budget") == 2,
                  "single-leg: every socket value reaches [socket] under its TOML key (redundancy = 1, channel_budget = 2)",
                  diff(wanted_socket, config("single-leg-values.yaml").get("socket", {})))
    checks.expect("redundancy" not in default_config.get("socket", {}) and default_config.get("socket", {}).get("ping_interval") == "15s",
                  "default: socket.redundancy unset (not rendered: the bridge derives it), ping_interval 15s")
    sasl_text = bridge_toml(sasl)[1] if bridge_toml(sasl) else ""
    result = run_check_config(args.bridge, sasl_text)
    checks.expect(result.returncode == EXIT_CONFIG and "properties_from_files" in result.stderr,
                  "sasl-tls: without the mounted Secret, check-config refuses the config (the bridge reads properties_from_files at start)",
                  f"exit {result.returncode}: {result.stderr}")
    print(f"          -> {result.stderr.strip()[:160]}")
    existing = renders.get("existing-secret-values.yaml", [])
    checks.expect(not [d for d in existing if d["kind"] == "Secret"], "existing-secret: no chart-created Secret")
    checks.expect(config("existing-secret-values.yaml").get("kafka", {}).get("properties", {}).get("linger.ms") == "20", "existing-secret: integer librdkafka property rendered as a string")

    monitoring_checks(checks, chart, base, renders)

    print("== config.existingSecret: the chart renders no config and mounts the given Secret")
    try:
        docs = docs_of(chart.render(deep_merge(base, {"config": {"existingSecret": "my-bridge-toml", "existingSecretKey": "custom.toml"}}), name=RELEASE, namespace=NAMESPACE))
        pod = kind_of(docs, "Deployment")[0]["spec"]["template"]["spec"]
        config_volume = next(v for v in pod["volumes"] if v["name"] == "config")
        checks.expect(bridge_toml(docs) is None and config_volume.get("secret", {}).get("secretName") == "my-bridge-toml"
                      and pod["containers"][0]["args"][-1].endswith("/custom.toml"),
                      "config.existingSecret: no rendered config, Secret mounted, --config points at its key")
        validate_objects(checks, docs, "config.existingSecret")
    except helm_python.HelmError as error:
        checks.fail("config.existingSecret renders", str(error))

    print("== Schema enforcement: values of the wrong type or unknown keys fail the render")
    schema_cases = [
        ({"metrics": {"prometheusRule": {"disabled": ["GenesysBridgeNoSuchAlert"]}}}, "/metrics/prometheusRule/disabled/0",
         "metrics.prometheusRule.disabled: an alert that does not exist"),
        ({"metrics": {"prometheusRule": {"thresholds": {"noEventsFor": "30 minutes"}}}}, "/metrics/prometheusRule/thresholds/noEventsFor",
         'metrics.prometheusRule.thresholds.noEventsFor: "30 minutes"'),
        ({"metrics": {"prometheusRule": {"thresholds": {"spoolFillRatio": 80}}}}, "/metrics/prometheusRule/thresholds/spoolFillRatio",
         "metrics.prometheusRule.thresholds.spoolFillRatio: 80 (a share, 0-1)"),
        ({"metrics": {"prometheusRule": {"selector": '{namespace="x"}'}}}, "/metrics/prometheusRule/selector",
         "metrics.prometheusRule.selector with braces"),
        ({"livenessProbe": {"periodSeconds": "ten"}}, "/livenessProbe/periodSeconds", 'livenessProbe.periodSeconds: "ten"'),
        ({"service": {"port": "8080"}}, "/service/port", 'service.port: "8080" (a string)'),
        ({"replicaCount": 2}, "replicaCount", "replicaCount (there is no such value: one replica)"),
        ({"socket": {"pingInterval": "30 seconds"}}, "/socket/pingInterval", 'socket.pingInterval: "30 seconds"'),
        ({"genesys": {"region": "us-east-1"}}, "/genesys/region", 'genesys.region: "us-east-1" (not a region)'),
        ({"topics": {"channelBudget": 21}}, "/topics/channelBudget", "topics.channelBudget: 21"),
        ({"topics": {"channelBudget": 1}}, "/topics/channelBudget", "topics.channelBudget: 1 (no free channel for a rollover)"),
        ({"socket": {"redundancy": 3}}, "/socket/redundancy", "socket.redundancy: 3"),
        ({"socket": {"redundancy": "2"}}, "/socket/redundancy", 'socket.redundancy: "2" (a string)'),
        ({"socket": {"maxConnectsPerMinute": 0}}, "/socket/maxConnectsPerMinute", "socket.maxConnectsPerMinute: 0"),
        ({"socket": {"pongTimeout": "0s"}}, "/socket/pongTimeout", 'socket.pongTimeout: "0s"'),
        ({"topics": {"explicit": ["v2.system.socket_closing"]}}, "/topics/explicit/0", "topics.explicit: v2.system.*"),
        ({"spool": {"whenFull": "drop-oldest"}}, "/spool/whenFull", "spool.whenFull: drop-oldest"),
        ({"persistence": {"size": "2GB"}}, "/persistence/size", 'persistence.size: "2GB"'),
        ({"kafka": {"properties": {"linger.ms": 0.5}}}, "/kafka/properties/linger.ms", "kafka.properties value 0.5"),
        ({"readinessProbe": {"enabeld": True}}, "enabeld", "readinessProbe.enabeld (a typo)"),
        ({"backfill": {"pageSize": 101}}, "/backfill/pageSize", "backfill.pageSize: 101"),
        ({"backfill": {"requestsPerMinute": 0}}, "/backfill/requestsPerMinute", "backfill.requestsPerMinute: 0"),
        ({"backfill": {"maxAttempts": 0}}, "/backfill/maxAttempts", "backfill.maxAttempts: 0"),
        ({"backfill": {"maxInterval": "0s"}}, "/backfill/maxInterval", 'backfill.maxInterval: "0s"'),
        ({"lifecycle": {"checkpointInterval": "0s"}}, "/lifecycle/checkpointInterval", 'lifecycle.checkpointInterval: "0s"'),
        ({"lifecycle": {"enable": True}}, "enable", "lifecycle.enable (a typo)"),
        ({"backfill": {"enabled": "yes"}}, "/backfill/enabled", 'backfill.enabled: "yes"'),
        ({"backfill": {"topic": ""}}, "/backfill/topic", 'backfill.topic: ""'),
        ({"kafka": {"existingSecret": "k", "propertiesFromSecret": {"sasl.password": "../password"}}},
         "/kafka/propertiesFromSecret/sasl.password", 'kafka.propertiesFromSecret value "../password" (not a Secret key)'),
    ]
    for override, needle, what in schema_cases:
        expect_render_failure(checks, chart, deep_merge(base, override), helm_python.HelmValuesError, needle, what)

    print("== Template guards: relations between values fail the render with a message")
    guard_cases = [
        ({"genesys": {"clientId": "", "clientSecret": ""}}, "set genesys.existingSecret", "no credentials"),
        ({"genesys": {"apiUrl": "http://sim:8080"}}, "set both genesys.apiUrl and genesys.loginUrl", "apiUrl without loginUrl"),
        ({"persistence": {"enabled": True}, "updateStrategy": {"type": "RollingUpdate"}}, "rollout would hang", "RollingUpdate with persistence"),
        ({"topics": {"channelBudget": 20}}, "keep channelBudget at most 10", "channelBudget 20 with a surge rollout"),
        ({"spool": {"maxBytes": 1073741824}}, "must stay at or below 90%", "spool.maxBytes = the whole 1Gi emptyDir"),
        ({"spool": {"emptyDir": {"sizeLimit": "128Mi"}}}, "at least 2 * spool.segmentBytes", "a volume too small for two segments"),
        ({"terminationGracePeriodSeconds": 20}, "must exceed supervisor.shutdownDeadline", "grace period 20 s = shutdown deadline 20 s"),
        ({"kafka": {"properties": {"bootstrap.servers": "k:9092"}}}, "kafka.bootstrapServers", "bootstrap.servers in kafka.properties"),
        ({"service": {"enabled": False}, "metrics": {"serviceMonitor": {"enabled": True}}}, "needs service.enabled", "ServiceMonitor without a Service"),
        ({"kafka": {"propertiesFromSecret": {"sasl.password": "password"}}}, "set kafka.existingSecret", "kafka.propertiesFromSecret without kafka.existingSecret"),
        ({"kafka": {"existingSecret": "k", "properties": {"sasl.password": "x"}, "propertiesFromSecret": {"sasl.password": "password"}}},
         "set in both kafka.properties and kafka.propertiesFromSecret", "sasl.password in kafka.properties and kafka.propertiesFromSecret"),
        ({"kafka": {"existingSecret": "k", "propertiesFromSecret": {"bootstrap.servers": "brokers"}}},
         "kafka.bootstrapServers, not kafka.propertiesFromSecret", "bootstrap.servers in kafka.propertiesFromSecret"),
    ]
    for override, needle, what in guard_cases:
        expect_render_failure(checks, chart, deep_merge(base, override), helm_python.HelmRenderError, needle, what)

    print("== check-config has teeth: a schema-valid config the bridge refuses")
    docs = docs_of(chart.render(deep_merge(base, {"socket": {"pingInterval": "30s", "deadAfter": "30s"}}), name=RELEASE, namespace=NAMESPACE))
    result = run_check_config(args.bridge, bridge_toml(docs)[1])
    checks.expect(result.returncode == EXIT_CONFIG and "dead_after" in result.stderr,
                  "socket.deadAfter = pingInterval renders, and check-config refuses it (exit 64)",
                  f"exit {result.returncode}: {result.stderr}")
    print(f"          -> {result.stderr.strip()[:160]}")

    print(f"== Plain manifests ({K8S})")
    k8s_docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name in NOT_API_OBJECTS:
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                doc["__source"] = path.name
                k8s_docs.append(doc)
    validate_objects(checks, k8s_docs, str(K8S))
    k8s_config = check_bridge_config(checks, args.bridge, k8s_docs, str(K8S))
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization.get("resources", []))
    present = {p.name for p in K8S.glob("*.yaml")}
    checks.expect(listed <= present, "kustomization.yaml lists only files that exist", str(listed - present))
    pod_invariants(checks, [d for d in k8s_docs if d["__source"] != "pvc.yaml"], {}, str(K8S))

    print("== Plain manifests match the chart's defaults (release genesys-kafka-bridge)")
    reference = docs_of(chart.render({"genesys": {"existingSecret": "genesys-kafka-bridge-genesys"}}, name="genesys-kafka-bridge", namespace=NAMESPACE))
    chart_config = tomllib.loads(bridge_toml(reference)[1])
    checks.expect(k8s_config == chart_config, "k8s/configmap.yaml bridge.toml = the chart's default bridge.toml (parsed)",
                  diff(chart_config, k8s_config))
    for kind, part in (("Deployment", lambda d: d["spec"]), ("Service", lambda d: d["spec"]),
                       ("ServiceAccount", lambda d: d.get("automountServiceAccountToken"))):
        mine = kind_of(k8s_docs, kind)
        theirs = kind_of(reference, kind)
        if not checks.expect(len(mine) == 1 and len(theirs) == 1, f"one {kind} in each"):
            continue
        a, b = copy.deepcopy(part(theirs[0])), copy.deepcopy(part(mine[0]))
        if kind == "Deployment":
            for spec in (a, b):
                spec["template"].pop("metadata", None)
        checks.expect(a == b, f"k8s {kind} spec = the chart's (labels and annotations aside)", diff(a, b))

    fixture_root.cleanup()
    print()
    if checks.failed:
        print(f"deploy-check FAILED: {len(checks.failed)} of {checks.passed + len(checks.failed)} checks failed:")
        for what in checks.failed:
            print(f"  - {what}")
        return 1
    print(f"deploy-check (chart, manifests, configs): all {checks.passed} checks passed")
    return 0


def diff(expected, actual, path="") -> str:
    """The first differences between two JSON-like values, for failure messages."""
    out = []
    if isinstance(expected, dict) and isinstance(actual, dict):
        for key in sorted(set(expected) | set(actual), key=str):
            if key not in actual:
                out.append(f"{path}.{key}: missing in the manifests (chart: {json.dumps(expected[key])[:200]})")
            elif key not in expected:
                out.append(f"{path}.{key}: only in the manifests ({json.dumps(actual[key])[:200]})")
            elif expected[key] != actual[key]:
                out.append(diff(expected[key], actual[key], f"{path}.{key}"))
    elif isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        for index, (e, a) in enumerate(zip(expected, actual)):
            if e != a:
                out.append(diff(e, a, f"{path}[{index}]"))
    else:
        out.append(f"{path}: chart {json.dumps(expected)[:200]} != manifests {json.dumps(actual)[:200]}")
    return "\n".join(line for line in out if line)


if __name__ == "__main__":
    sys.exit(main())
