{{/*
bridge.toml, rendered from the values. Strings go through toJson (a JSON string is a valid TOML
basic string), integers through int64 (YAML numbers arrive as floats), durations are strings.
spool.dir and http.listen come from the pod layout, not from free-form values. socket.redundancy is
rendered only when set (null: the bridge derives it from topics.channel_budget).
*/}}
{{- define "gkb.config" -}}
{{- $g := .Values.genesys -}}
{{- $t := .Values.topics -}}
{{- $k := .Values.kafka -}}
{{- $sp := .Values.spool -}}
{{- $so := .Values.socket -}}
{{- $su := .Values.supervisor -}}
{{- $bf := .Values.backfill -}}
{{- $lc := .Values.lifecycle -}}
# genesys-kafka-bridge configuration, rendered by the Helm chart {{ include "gkb.chart" . }}.
# Every key: config/bridge.example.toml. Credentials come from GENESYS_CLIENT_ID_FILE and
# GENESYS_CLIENT_SECRET_FILE (a mounted Secret), never from this file. Kafka secrets mapped with
# kafka.propertiesFromSecret are read from the mounted kafka.existingSecret (properties_from_files).

[genesys]
{{- if and $g.apiUrl $g.loginUrl }}
api_url = {{ toJson $g.apiUrl }}
login_url = {{ toJson $g.loginUrl }}
{{- else }}
region = {{ toJson $g.region }}
{{- end }}
request_timeout = {{ toJson $g.requestTimeout }}
token_refresh_margin = {{ toJson $g.tokenRefreshMargin }}
token_min_refresh_interval = {{ toJson $g.tokenMinRefreshInterval }}

[topics]
explicit = {{ toJson $t.explicit }}
templates = [
{{- range $t.templates }}
  { template = {{ toJson .template }}{{ with .name }}, name = {{ toJson . }}{{ end }}{{ with .divisions }}, divisions = {{ toJson . }}{{ end }} },
{{- end }}
]
per_channel = {{ $t.perChannel | int64 }}
channel_budget = {{ $t.channelBudget | int64 }}
refresh_interval = {{ toJson $t.refreshInterval }}

[kafka]
default_topic = {{ toJson $k.defaultTopic }}
status_topic = {{ toJson $k.statusTopic }}
{{- with $k.deadLetterTopic }}
dead_letter_topic = {{ toJson . }}
{{- end }}
{{- with $k.deadLetterFile }}
dead_letter_file = {{ toJson . }}
{{- end }}
max_in_flight = {{ $k.maxInFlight | int64 }}
max_in_flight_bytes = {{ $k.maxInFlightBytes | int64 }}
max_delivery_attempts = {{ $k.maxDeliveryAttempts | int64 }}
exit_after_failing_for = {{ toJson $k.exitAfterFailingFor }}
dead_letter_file_max_bytes = {{ $k.deadLetterFileMaxBytes | int64 }}
dead_letter_file_keep = {{ $k.deadLetterFileKeep | int64 }}
{{- with $k.propertiesFromSecret }}
properties_from_files = { {{ include "gkb.propertiesFromFiles" $ }} }
{{- end }}
routes = [
{{- range $k.routes }}
  { pattern = {{ toJson .pattern }}, topic = {{ toJson .topic }} },
{{- end }}
]

[kafka.properties]
"bootstrap.servers" = {{ toJson $k.bootstrapServers }}
{{- range $name, $value := $k.properties }}
{{ toJson $name }} = {{ include "gkb.propertyValue" $value }}
{{- end }}

[spool]
dir = {{ include "gkb.spoolDir" . | toJson }}
segment_bytes = {{ $sp.segmentBytes | int64 }}
max_bytes = {{ include "gkb.spoolMaxBytes" . }}
fsync_interval = {{ toJson $sp.fsyncInterval }}
fsync_every_records = {{ $sp.fsyncEveryRecords | int64 }}
when_full = {{ toJson $sp.whenFull }}

[socket]
{{- if not (kindIs "invalid" $so.redundancy) }}
redundancy = {{ $so.redundancy | int64 }}
{{- end }}
ping_interval = {{ toJson $so.pingInterval }}
pong_timeout = {{ toJson $so.pongTimeout }}
dead_after = {{ toJson $so.deadAfter }}
rollover_margin = {{ toJson $so.rolloverMargin }}
rollover_timeout = {{ toJson $so.rolloverTimeout }}
min_rollover_interval = {{ toJson $so.minRolloverInterval }}
stable_after = {{ toJson $so.stableAfter }}
max_connects_per_minute = {{ $so.maxConnectsPerMinute | int64 }}
max_frame_bytes = {{ $so.maxFrameBytes | int64 }}
dedup_capacity = {{ $so.dedupCapacity | int64 }}
dedup_window = {{ toJson $so.dedupWindow }}

[socket.backoff]
min = {{ toJson $so.backoff.min }}
max = {{ toJson $so.backoff.max }}
jitter = {{ include "gkb.float" $so.backoff.jitter }}

[http]
listen = {{ printf "%s:%d" (ternary (printf "[%s]" .Values.http.listenAddress) .Values.http.listenAddress (contains ":" .Values.http.listenAddress)) (.Values.http.port | int64) | toJson }}
liveness_deadline = {{ toJson .Values.http.livenessDeadline }}

[log]
format = {{ toJson .Values.log.format }}
level = {{ toJson .Values.log.level }}

[supervisor]
crash_threshold = {{ $su.crashThreshold | int64 }}
crash_window = {{ toJson $su.crashWindow }}
shutdown_deadline = {{ toJson $su.shutdownDeadline }}

[supervisor.restart_backoff]
min = {{ toJson $su.restartBackoff.min }}
max = {{ toJson $su.restartBackoff.max }}
jitter = {{ include "gkb.float" $su.restartBackoff.jitter }}

[backfill]
enabled = {{ $bf.enabled }}
topic = {{ toJson $bf.topic }}
settle_delay = {{ toJson $bf.settleDelay }}
margin = {{ toJson $bf.margin }}
max_interval = {{ toJson $bf.maxInterval }}
page_size = {{ $bf.pageSize | int64 }}
requests_per_minute = {{ $bf.requestsPerMinute | int64 }}
max_attempts = {{ $bf.maxAttempts | int64 }}

[lifecycle]
enabled = {{ $lc.enabled }}
topic = {{ toJson $lc.topic }}
wrapup = {{ $lc.wrapup }}
include_addresses = {{ $lc.includeAddresses }}
checkpoint_interval = {{ toJson $lc.checkpointInterval }}
remember_ended = {{ toJson $lc.rememberEnded }}
max_open = {{ toJson $lc.maxOpen }}
reconcile = {{ $lc.reconcile }}
reconcile_interval = {{ toJson $lc.reconcileInterval }}
reconcile_settle = {{ toJson $lc.reconcileSettle }}
reconcile_quiet_after = {{ toJson $lc.reconcileQuietAfter }}
{{- end -}}

{{/*
The entries of properties_from_files (a TOML inline table, without braces): each property of
kafka.propertiesFromSecret points at its key's file in the mounted kafka.existingSecret.
*/}}
{{- define "gkb.propertiesFromFiles" -}}
{{- $dir := trimSuffix "/" .Values.kafka.secretMountPath -}}
{{- $entries := list -}}
{{- range $name, $key := .Values.kafka.propertiesFromSecret -}}
{{- $entries = append $entries (printf "%s = %s" (toJson $name) (printf "%s/%s" $dir $key | toJson)) -}}
{{- end -}}
{{- join ", " $entries -}}
{{- end -}}
