{{/*
The bridge's alert rules, as a YAML list (prometheusrule.yaml filters, labels and renders it).
Each alert has a runbook section of the same name in the chart README; `.ci/deploy-check.sh`
checks that, unit-tests every alert with `promtool test rules`, and checks that
deploy/monitoring/prometheus-rules.yaml is this list rendered with the default values.
$s: the matchers of every selector; $b: them in braces (empty when none); $c: them followed by a
comma, for selectors with matchers of their own.
*/}}
{{- define "gkb.alerts" -}}
{{- $t := .Values.metrics.prometheusRule.thresholds -}}
{{- $s := .Values.metrics.prometheusRule.selector -}}
{{- $b := ternary (printf "{%s}" $s) "" (ne $s "") -}}
{{- $c := ternary (printf "%s," $s) "" (ne $s "") -}}
- alert: GenesysBridgeGapRecorded
  # The second half: a process whose first scrape already counts a gap (the gap of its own
  # restart, recorded before Prometheus first saw the new instance) has no increase() to show.
  expr: >-
    (increase(genesys_bridge_gaps_total{{ $b }}[5m]) > 0)
    or (genesys_bridge_gaps_total{{ $b }} > 0 unless genesys_bridge_gaps_total{{ $b }} offset 5m)
  labels:
    severity: warning
  annotations:
    summary: Events were lost on {{`{{ $labels.instance }}`}} (a gap was recorded)
    description: >-
      A shard had no live socket for a while ({{`{{ $value | printf "%.0f" }}`}} gap records in
      5 minutes). Genesys does not keep notifications, so what it sent in that interval is lost;
      each gap is a record on the status topic saying from when to when (and backfilled when
      backfill is on).
- alert: GenesysBridgeNoEvents
  expr: >-
    (increase(genesys_bridge_events_spooled_total{{ $b }}[{{ $t.noEventsFor }}]) == 0)
    and (genesys_bridge_ready{{ $b }} == 1)
    and (time() - genesys_bridge_start_time_seconds{{ $b }} > {{ include "gkb.alertSeconds" $t.noEventsFor }})
  labels:
    severity: warning
  annotations:
    summary: No events from Genesys for {{ $t.noEventsFor }} on {{`{{ $labels.instance }}`}}
    description: >-
      The bridge is ready (a token, every shard streaming) yet appended no event for
      {{ $t.noEventsFor }}. Either the org is quiet, or the subscriptions deliver nothing
      (topics refused or removed, a queue deleted).
- alert: GenesysBridgeSpoolFilling
  expr: >-
    genesys_bridge_spool_bytes{{ $b }}
    / (genesys_bridge_spool_capacity_bytes{{ $b }} > 0) > {{ $t.spoolFillRatio }}
  for: {{ $t.spoolFillFor }}
  labels:
    severity: warning
  annotations:
    summary: The spool of {{`{{ $labels.instance }}`}} is {{`{{ $value | humanizePercentage }}`}} full
    description: >-
      Records wait in the spool faster than Kafka acknowledges them. At its cap the bridge stops
      reading (spool.when_full = block: a gap is recorded) or drops new events (drop-newest).
- alert: GenesysBridgeKafkaBacklog
  expr: genesys_bridge_spool_oldest_unacked_age_seconds{{ $b }} > {{ $t.oldestRecordSeconds }}
  for: 1m
  labels:
    severity: warning
  annotations:
    summary: Kafka has not taken records of {{`{{ $labels.instance }}`}} for {{`{{ $value | humanizeDuration }}`}}
    description: >-
      The oldest record in the spool is older than {{ $t.oldestRecordSeconds }} s: Kafka is down,
      unreachable, refusing the producer, or slower than the event rate. Nothing is lost while
      the spool has room.
- alert: GenesysBridgeProducerFailing
  expr: genesys_bridge_kafka_producer_failing{{ $b }} == 1
  for: {{ $t.producerFailingFor }}
  labels:
    severity: critical
  annotations:
    summary: Kafka refuses the producer of {{`{{ $labels.instance }}`}}
    description: >-
      The Kafka client reports fatal errors (authentication, authorization, a fenced or invalid
      producer). Records stay in the spool until it is fixed; the spool fills.
- alert: GenesysBridgeDeliveryFailing
  expr: >-
    (sum without (reason) (rate(genesys_bridge_events_failed_total{ {{- $c -}} reason!~"spool_io|status_dropped|queue_full"}[5m])) > 0)
    unless (rate(genesys_bridge_events_produced_total{{ $b }}[5m]) > 0)
  for: {{ $t.deliveryFailingFor }}
  labels:
    severity: warning
  annotations:
    summary: Kafka deliveries of {{`{{ $labels.instance }}`}} fail and none succeed
    description: >-
      {{`{{ $value | printf "%.2f" }}`}} delivery failures a second and no acknowledgement for
      {{ $t.deliveryFailingFor }}. The records are retried from the spool.
- alert: GenesysBridgeTokenExpiring
  expr: genesys_bridge_token_expiry_seconds{{ $b }} < {{ $t.tokenExpirySeconds }}
  for: 1m
  labels:
    severity: critical
  annotations:
    summary: The Genesys access token of {{`{{ $labels.instance }}`}} expires in {{`{{ $value | humanizeDuration }}`}}
    description: >-
      The bridge refreshes its token well before expiry; this close to it (or with no token at
      all: 0), the refreshes have failed. When it expires, the sockets close and events are lost.
- alert: GenesysBridgeActorRestarting
  expr: increase(genesys_bridge_actor_restarts_total{{ $b }}[{{ $t.actorRestartsWindow }}]) >= {{ $t.actorRestarts }}
  labels:
    severity: warning
  annotations:
    summary: The {{`{{ $labels.actor }}`}} actor of {{`{{ $labels.instance }}`}} restarted {{`{{ $value | printf "%.0f" }}`}} times in {{ $t.actorRestartsWindow }}
    description: >-
      The supervisor restarts an actor that panicked or stopped answering. One restart heals;
      repeated ones mean a fault the restart does not clear.
- alert: GenesysBridgeDeadLetters
  expr: increase(genesys_bridge_dead_letters_total{ {{- $c -}} reason!="file_failed"}[10m]) > 0
  labels:
    severity: warning
  annotations:
    summary: Records of {{`{{ $labels.instance }}`}} went to the dead-letter {{`{{ $labels.reason }}`}}
    description: >-
      Kafka refused records for good (too large, a topic refused or not allowed), or frames were
      malformed; they are kept on the dead-letter topic or in the dead-letter file, not in their
      topic.
- alert: GenesysBridgeDeadLetterFileFailing
  expr: increase(genesys_bridge_dead_letters_total{ {{- $c -}} reason="file_failed"}[10m]) > 0
  labels:
    severity: critical
  annotations:
    summary: The dead-letter file of {{`{{ $labels.instance }}`}} could not take records
    description: >-
      Records that Kafka refused could not be written to the dead-letter file either (full or
      unwritable volume). Those records are lost.
- alert: GenesysBridgeShardNotStreaming
  expr: genesys_bridge_shard_streaming{{ $b }} == 0
  for: {{ $t.shardDownFor }}
  labels:
    severity: critical
  annotations:
    summary: Shard {{`{{ $labels.shard }}`}} of {{`{{ $labels.instance }}`}} has no streaming socket
    description: >-
      No socket of the shard has streamed for {{ $t.shardDownFor }}: its topics' events are lost
      meanwhile (a gap record says from when to when).
- alert: GenesysBridgeLegDown
  # Only while the shard streams on another leg: a shard with no leg up is
  # GenesysBridgeShardNotStreaming.
  expr: (genesys_bridge_leg_up{{ $b }} == 0) and ignoring (leg) (genesys_bridge_shard_streaming{{ $b }} == 1)
  for: {{ $t.legDownFor }}
  labels:
    severity: warning
  annotations:
    summary: Leg {{`{{ $labels.leg }}`}} of shard {{`{{ $labels.shard }}`}} on {{`{{ $labels.instance }}`}} is down
    description: >-
      The shard streams on its other leg without redundancy: the next socket fault of that leg
      loses the events of its detection window.
- alert: GenesysBridgeNotReady
  expr: genesys_bridge_ready{{ $b }} == 0
  for: {{ $t.notReadyFor }}
  labels:
    severity: critical
  annotations:
    summary: The bridge {{`{{ $labels.instance }}`}} has not been ready for {{ $t.notReadyFor }}
    description: >-
      /readyz has answered 503 for {{ $t.notReadyFor }}: no access token, a shard not streaming,
      the topics not expanded, the spool full, the disk reserve in use, or Kafka refusing the
      producer for good. Its body (and /status) says which.
- alert: GenesysBridgeRestarting
  expr: changes(genesys_bridge_start_time_seconds{{ $b }}[{{ $t.processRestartsWindow }}]) >= {{ $t.processRestarts }}
  labels:
    severity: warning
  annotations:
    summary: The bridge process of {{`{{ $labels.instance }}`}} restarted {{`{{ $value | printf "%.0f" }}`}} times in {{ $t.processRestartsWindow }}
    description: >-
      The process exits and is started again (a crash loop of an actor, exit 70; the spool
      locked or unreadable, exit 73; the Kafka producer refused for good, exit 69; an OOM kill).
      Each restart of a lone replica is a gap.
- alert: GenesysBridgeLifecycleCheckpointFailing
  expr: increase(genesys_bridge_lifecycle_checkpoint_failures_total{{ $b }}[10m]) > 0
  labels:
    severity: warning
  annotations:
    summary: The lifecycle checkpoint of {{`{{ $labels.instance }}`}} cannot be written
    description: >-
      conversations.json failed to be written; the spool keeps every record after the last
      checkpoint, so it grows until a write succeeds.
- alert: GenesysBridgeReconciliationFailing
  expr: >-
    (increase(genesys_bridge_reconciliation_failures_total{{ $b }}[{{ $t.reconciliationFailingFor }}]) > 0)
    and (increase(genesys_bridge_reconciliation_runs_total{{ $b }}[{{ $t.reconciliationFailingFor }}]) == 0)
    and (time() - genesys_bridge_start_time_seconds{{ $b }} > {{ include "gkb.alertSeconds" $t.reconciliationFailingFor }})
  labels:
    severity: warning
  annotations:
    summary: Lifecycle reconciliation of {{`{{ $labels.instance }}`}} fails
    description: >-
      Reconciliation runs fail (an analytics request failed) and none completed in
      {{ $t.reconciliationFailingFor }}: conversations whose end the stream did not see stay open.
{{- end -}}

{{/* A Prometheus duration (s, m, h, d) as seconds. */}}
{{- define "gkb.alertSeconds" -}}
{{- $d := toString . -}}
{{- $n := trimSuffix "s" (trimSuffix "m" (trimSuffix "h" (trimSuffix "d" $d))) | int -}}
{{- if hasSuffix "d" $d }}{{ mul $n 86400 }}
{{- else if hasSuffix "h" $d }}{{ mul $n 3600 }}
{{- else if hasSuffix "m" $d }}{{ mul $n 60 }}
{{- else }}{{ $n }}{{ end -}}
{{- end -}}
