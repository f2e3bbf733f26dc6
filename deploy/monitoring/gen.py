#!/usr/bin/env python3
"""Writes the bridge's Grafana dashboard and its plain Prometheus rule file.

    .venv/bin/python deploy/monitoring/gen.py            # rewrite both
    .venv/bin/python deploy/monitoring/gen.py --check    # exit 1 if either is stale

- deploy/helm/genesys-kafka-bridge/dashboards/genesys-kafka-bridge.json: the dashboard, from the
  panel list below (the chart ships it as a ConfigMap for the Grafana sidecar; import it by hand
  elsewhere). Every query selects `job=~"$job", instance=~"$instance"`.
- deploy/monitoring/prometheus-rules.yaml: the chart's PrometheusRule (templates/_alerts.tpl)
  rendered with the default values, as a rule file for a Prometheus without the operator
  (`rule_files:`). The chart is the source; this file is checked to be its rendering.

Needs the deploy-check venv (helm-python-sdk, PyYAML): `bash .ci/deploy-check.sh` creates it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy/helm/genesys-kafka-bridge"
DASHBOARD = CHART / "dashboards/genesys-kafka-bridge.json"
RULES = ROOT / "deploy/monitoring/prometheus-rules.yaml"
UID = "genesys-kafka-bridge"

S = '{job=~"$job", instance=~"$instance"}'


def sel(extra: str = "") -> str:
    """The dashboard's selector, with extra matchers."""
    return S if not extra else S[:-1] + ", " + extra + "}"


def m(name: str, extra: str = "") -> str:
    return f"genesys_bridge_{name}{sel(extra)}"


def rate(name: str, by: str = "", extra: str = "") -> str:
    inner = f"rate({m(name, extra)}[$__rate_interval])"
    return f"sum by ({by}) ({inner})" if by else f"sum({inner})"


def increase(name: str, window: str = "$__range", by: str = "") -> str:
    inner = f"increase({m(name)}[{window}])"
    return f"sum by ({by}) ({inner})" if by else f"sum({inner})"


# Rows of panels: (title, [panel]); a panel is (kind, title, unit, [(expr, legend)], description).
ROWS = [
    ("Overview", [
        ("stat", "Ready", "bool_yes_no", [(f"min({m('ready')})", "")],
         "1 while /readyz answers 200: a token, every shard streaming, room in the spool."),
        ("stat", "Events in", "ops", [(rate("events_spooled_total"), "")],
         "Events appended to the spool per second."),
        ("stat", "Events out", "ops", [(rate("events_produced_total"), "")],
         "Records Kafka acknowledged per second."),
        ("stat", "Gaps in range", "short", [(increase("gaps_total"), "")],
         "Gap records: periods a shard had no live socket (events lost, told on the status topic)."),
        ("stat", "Gap seconds in range", "s", [(increase("gap_duration_seconds_total"), "")],
         "Total duration of the gaps."),
        ("stat", "Oldest unacknowledged record", "s", [(f"max({m('spool_oldest_unacked_age_seconds')})", "")],
         "Age of the oldest record in the spool that Kafka has not acknowledged."),
        ("stat", "Token expires in", "s", [(f"min({m('token_expiry_seconds')})", "")],
         "Time until the access token expires; refreshed before it does."),
        ("stat", "Version", "none", [(f"count by (version) ({m('build_info')})", "{{version}}")],
         "Bridge versions running (build_info)."),
    ]),
    ("Events and delivery", [
        ("timeseries", "Events in and out", "ops", [
            (rate("events_spooled_total"), "spooled"),
            (rate("events_produced_total"), "acknowledged by Kafka"),
            (rate("frames_malformed_total"), "malformed frames"),
        ], "Events appended to the spool, records acknowledged by Kafka, malformed frames."),
        ("timeseries", "Frames by kind", "ops", [(rate("frames_received_total", "kind"), "{{kind}}")],
         "WebSocket frames received: events, heartbeats, pongs, socket_closing."),
        ("timeseries", "Delivery latency", "s", [
            (f"histogram_quantile(0.5, sum by (le) (rate({m('delivery_latency_seconds_bucket')}[$__rate_interval])))", "p50"),
            (f"histogram_quantile(0.99, sum by (le) (rate({m('delivery_latency_seconds_bucket')}[$__rate_interval])))", "p99"),
        ], "Time from receiving a frame to Kafka's acknowledgement."),
        ("timeseries", "Duplicates", "ops", [
            (rate("duplicates_suppressed_total"), "suppressed (other leg or overlap first)"),
            (rate("duplicates_late_total"), "delivered again (late twin)"),
        ], "Copies of events that a second socket of the shard brought."),
    ]),
    ("Spool", [
        ("timeseries", "Spool bytes and capacity", "bytes", [
            (f"sum({m('spool_bytes')})", "on disk"),
            (f"sum({m('spool_capacity_bytes')})", "capacity for events"),
        ], "Bytes in the spool and its cap for events (max_bytes less the gap-record headroom)."),
        ("timeseries", "Records not yet acknowledged", "short", [(f"sum({m('spool_records')})", "records")],
         "Records in the spool that Kafka has not acknowledged."),
        ("timeseries", "Oldest record age", "s", [(f"max({m('spool_oldest_unacked_age_seconds')})", "oldest")],
         "Grows while Kafka does not take records."),
        ("timeseries", "Spool pressure", "short", [
            (rate("spool_dropped_total"), "dropped/s (drop-newest)"),
            (f"max({m('spool_disk_reserve_in_use')})", "disk reserve in use"),
            (f"max({m('spool_fsync_max_seconds')})", "longest fsync (s)"),
        ], "Drops when full (drop-newest), the full-disk reserve, the longest fsync."),
    ]),
    ("Kafka", [
        ("timeseries", "In flight", "short", [
            (f"sum({m('kafka_in_flight')})", "records"),
            (f"sum({m('kafka_retries_waiting')})", "waiting to be produced again"),
        ], "Records handed to the Kafka client and not yet acknowledged; records waiting for a retry."),
        ("timeseries", "Delivery failures by reason", "ops", [(rate("events_failed_total", "reason"), "{{reason}}")],
         "Kafka delivery failures (retried or dead-lettered)."),
        ("timeseries", "Dead letters by destination", "short", [(increase("dead_letters_total", "$__rate_interval", "reason"), "{{reason}}")],
         "Records sent to the dead-letter topic or file; file_failed: lost."),
        ("timeseries", "Producer health", "short", [
            (f"max({m('kafka_producer_failing')})", "failing (fatal errors)"),
            (increase("kafka_producer_purges_total", "$__rate_interval"), "purges"),
            (increase("kafka_producer_restarts_total", "$__rate_interval"), "producer restarts"),
        ], "1 while Kafka refuses the producer; queue purges and fresh producers."),
    ]),
    ("Genesys sockets", [
        ("timeseries", "Shards streaming", "short", [(f"max by (shard) ({m('shard_streaming')})", "shard {{shard}}")],
         "1 while a shard has a streaming socket."),
        ("timeseries", "Legs up", "short", [(f"max by (shard, leg) ({m('leg_up')})", "shard {{shard}} leg {{leg}}")],
         "1 while a leg (one of a shard's redundant channels) delivers frames."),
        ("timeseries", "Heartbeat age", "s", [(f"max by (shard) ({m('heartbeat_age_seconds')})", "shard {{shard}}")],
         "Time since the last frame per shard."),
        ("timeseries", "Channel age", "s", [(f"max by (shard) ({m('channel_age_seconds')})", "shard {{shard}}")],
         "Age of each shard's channel (channels live 24 h; rolled over before)."),
        ("timeseries", "Reconnects by reason", "short", [(increase("reconnects_total", "$__rate_interval", "reason"), "{{reason}}")],
         "Socket reconnects."),
        ("timeseries", "Rollovers by trigger", "short", [(increase("rollovers_total", "$__rate_interval", "reason"), "{{reason}}")],
         "Make-before-break channel rollovers."),
        ("timeseries", "Leg losses and throttled connects", "short", [
            (increase("leg_losses_total", "$__rate_interval", "reason"), "lost: {{reason}}"),
            (increase("connects_throttled_total", "$__rate_interval"), "connects throttled"),
        ], "Unplanned socket losses by reason; connects delayed by the per-leg bound."),
        ("timeseries", "Channels and topics", "short", [
            (f"sum({m('channels_held')})", "channels held"),
            (f"sum({m('topics_subscribed')})", "topics subscribed"),
            (f"sum({m('topics_rejected')})", "topics refused"),
        ], "Channels held (budget 20 per OAuth client), topics subscribed and refused."),
    ]),
    ("Token and REST", [
        ("timeseries", "Token expiry", "s", [(f"min({m('token_expiry_seconds')})", "seconds left")],
         "Time until the access token expires."),
        ("timeseries", "Token requests by outcome", "short", [(increase("token_refreshes_total", "$__rate_interval", "reason"), "{{reason}}")],
         "Access token requests: ok, or the error class."),
        ("timeseries", "REST errors by class", "short", [(increase("rest_errors_total", "$__rate_interval", "reason"), "{{reason}}")],
         "Failed Genesys REST calls."),
    ]),
    ("Supervision", [
        ("timeseries", "Actor restarts", "short", [(increase("actor_restarts_total", "$__rate_interval", "actor"), "{{actor}}")],
         "Restarts by the supervisor, by actor."),
        ("timeseries", "Mailbox rejections", "short", [(increase("mailbox_rejections_total", "$__rate_interval", "actor"), "{{actor}}")],
         "Messages refused by a full mailbox, by receiving actor."),
    ]),
    ("Gaps and backfill", [
        ("timeseries", "Gaps", "short", [
            (increase("gaps_total", "$__rate_interval"), "gap records"),
            (increase("gap_duration_seconds_total", "$__rate_interval"), "gap seconds"),
        ], "Gap records and their total duration."),
        ("timeseries", "Backfill", "short", [
            (increase("backfill_gaps_total", "$__rate_interval"), "gaps filled"),
            (increase("backfill_conversations_total", "$__rate_interval"), "conversations recovered"),
            (increase("backfill_requests_total", "$__rate_interval"), "requests"),
            (increase("backfill_failures_total", "$__rate_interval"), "failed requests"),
        ], "Gaps filled from the analytics API."),
    ]),
    ("Conversation lifecycle", [
        ("timeseries", "Conversations", "short", [
            (f"sum({m('conversations_open')})", "open"),
            (f"sum({m('conversations_known')})", "known (open and remembered ended)"),
            (f"sum({m('reconciliation_watched')})", "watched by reconciliation"),
        ], "Conversations the lifecycle stream knows."),
        ("timeseries", "Lifecycle records", "ops", [(rate("lifecycle_records_total", "kind, source"), "{{kind}} ({{source}})")],
         "conversation.started/ended/wrapup records written, by source."),
        ("timeseries", "Reconciliation", "short", [
            (increase("reconciliation_runs_total", "$__rate_interval"), "runs"),
            (increase("reconciliation_requests_total", "$__rate_interval"), "requests"),
            (increase("reconciliation_failures_total", "$__rate_interval"), "failed requests"),
            (increase("reconciliation_findings_total", "$__rate_interval", "kind"), "found {{kind}}"),
            (increase("conversations_abandoned_total", "$__rate_interval"), "abandoned (max_open)"),
        ], "Analytics reconciliation of ends the stream did not see."),
        ("timeseries", "Lifecycle checkpoint", "s", [
            (f"max({m('lifecycle_checkpoint_age_seconds')})", "age"),
            (increase("lifecycle_checkpoint_failures_total", "$__rate_interval"), "failed writes"),
        ], "Age of conversations.json and failed writes of it."),
    ]),
]

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def panel(pid: int, kind: str, title: str, unit: str, targets, description: str, x: int, y: int, w: int, h: int) -> dict:
    out = {
        "id": pid,
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"h": h, "w": w, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
        "targets": [
            {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend or "__auto",
             "refId": chr(ord("A") + i)}
            for i, (expr, legend) in enumerate(targets)
        ],
    }
    if kind == "stat":
        out["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                          "orientation": "auto", "colorMode": "value", "graphMode": "area",
                          "justifyMode": "auto", "textMode": "auto", "wideLayout": True,
                          "showPercentChange": False, "percentChangeColorMode": "standard"}
    else:
        out["options"] = {"legend": {"calcs": [], "displayMode": "list", "placement": "bottom", "showLegend": True},
                          "tooltip": {"mode": "multi", "sort": "none"}}
    return out


def dashboard() -> dict:
    panels = []
    pid = 1
    y = 0
    for title, row in ROWS:
        panels.append({"id": pid, "type": "row", "title": title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid += 1
        y += 1
        stats = all(p[0] == "stat" for p in row)
        w, h = (3, 4) if stats else (8, 8)
        x = 0
        for kind, ptitle, unit, targets, description in row:
            if x + w > 24:
                x = 0
                y += h
            panels.append(panel(pid, kind, ptitle, unit, targets, description, x, y, w, h))
            pid += 1
            x += w
        y += h
    variables = [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
         "hide": 0, "refresh": 1, "options": [], "regex": "", "skipUrlSync": False},
        {"name": "job", "label": "Job", "type": "query", "datasource": DATASOURCE,
         "query": {"query": "label_values(genesys_bridge_build_info, job)", "refId": "job"},
         "hide": 0, "includeAll": True, "multi": True, "allValue": ".*",
         "refresh": 2, "options": [], "regex": "", "sort": 1, "skipUrlSync": False},
        {"name": "instance", "label": "Instance", "type": "query", "datasource": DATASOURCE,
         "query": {"query": 'label_values(genesys_bridge_build_info{job=~"$job"}, instance)', "refId": "instance"},
         "hide": 0, "includeAll": True, "multi": True, "allValue": ".*",
         "refresh": 2, "options": [], "regex": "", "sort": 1, "skipUrlSync": False},
    ]
    return {
        "uid": UID,
        "title": "Genesys Kafka bridge",
        "description": "genesys-kafka-bridge: Genesys Cloud notifications into Kafka (deploy/monitoring/gen.py writes this file).",
        "tags": ["genesys", "kafka"],
        "editable": True,
        "graphTooltip": 1,
        "timezone": "browser",
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "links": [],
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
            "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts",
            "type": "dashboard"}]},
        "templating": {"list": variables},
        "panels": panels,
    }


def rendered_rules() -> str:
    import helm_python
    import yaml

    chart = helm_python.Chart.load(str(CHART))
    values = {"genesys": {"existingSecret": "genesys-oauth"}, "metrics": {"prometheusRule": {"enabled": True}}}
    manifests = chart.render(values, name="bridge", namespace="genesys")
    docs = [d for name, text in manifests.items() if not name.endswith("NOTES.txt")
            for d in yaml.safe_load_all(text) if d]
    rules = [d for d in docs if d.get("kind") == "PrometheusRule"]
    if len(rules) != 1:
        raise SystemExit(f"gen.py: expected one PrometheusRule in the render, got {len(rules)}")
    header = ("# The alerts of genesys-kafka-bridge for a Prometheus without the operator (rule_files:).\n"
              "# Generated by deploy/monitoring/gen.py from the Helm chart's templates/_alerts.tpl with the\n"
              "# default thresholds; do not edit. Runbooks: deploy/helm/genesys-kafka-bridge/README.md.\n")
    return header + yaml.safe_dump(rules[0]["spec"], sort_keys=False, width=100)


def main() -> int:
    check = "--check" in sys.argv[1:]
    wanted = {
        DASHBOARD: json.dumps(dashboard(), indent=2) + "\n",
        RULES: rendered_rules(),
    }
    stale = []
    for path, text in wanted.items():
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        if check:
            stale.append(path.relative_to(ROOT))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"gen.py: wrote {path.relative_to(ROOT)}")
    if stale:
        print(f"gen.py: stale: {', '.join(map(str, stale))}: run .venv/bin/python deploy/monitoring/gen.py", file=sys.stderr)
        return 1
    if check:
        print("gen.py: the dashboard and deploy/monitoring/prometheus-rules.yaml are current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
