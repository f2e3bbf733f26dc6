{{/*
Relations between values that the schema cannot express. Each failure says what to change.
The bridge checks its own config again at start (`check-config`).
*/}}
{{- define "gkb.validate" -}}
{{- $g := .Values.genesys -}}
{{- if not (or $g.existingSecret (and $g.clientId $g.clientSecret)) -}}
{{- fail "genesys: set genesys.existingSecret (recommended), or both genesys.clientId and genesys.clientSecret" -}}
{{- end -}}
{{- if not .Values.config.existingSecret -}}
{{- if or (and $g.apiUrl (not $g.loginUrl)) (and $g.loginUrl (not $g.apiUrl)) -}}
{{- fail "genesys: set both genesys.apiUrl and genesys.loginUrl, or neither (and genesys.region)" -}}
{{- end -}}
{{- if and (not $g.apiUrl) (not $g.region) -}}
{{- fail "genesys: set genesys.region, or genesys.apiUrl and genesys.loginUrl" -}}
{{- end -}}
{{- if hasKey .Values.kafka.properties "bootstrap.servers" -}}
{{- fail "kafka.properties: set the brokers with kafka.bootstrapServers, not kafka.properties.\"bootstrap.servers\"" -}}
{{- end -}}
{{- with .Values.kafka.propertiesFromSecret -}}
{{- if not $.Values.kafka.existingSecret -}}
{{- fail "kafka.propertiesFromSecret reads files of the mounted kafka.existingSecret: set kafka.existingSecret to the Secret holding those keys" -}}
{{- end -}}
{{- if hasKey . "bootstrap.servers" -}}
{{- fail "kafka.propertiesFromSecret: set the brokers with kafka.bootstrapServers, not kafka.propertiesFromSecret.\"bootstrap.servers\"" -}}
{{- end -}}
{{- range $name, $key := . -}}
{{- if hasKey $.Values.kafka.properties $name -}}
{{- fail (printf "kafka property %q is set in both kafka.properties and kafka.propertiesFromSecret (-> %s/%s): the bridge refuses that; keep it in one place (a secret: in kafka.propertiesFromSecret only)" $name (trimSuffix "/" $.Values.kafka.secretMountPath) $key) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and (eq (include "gkb.strategyType" .) "RollingUpdate") (gt (.Values.topics.channelBudget | int64) 10) -}}
{{- fail (printf "topics.channelBudget is %d: a RollingUpdate overlaps two pods on one OAuth client, whose 20-channel limit makes Genesys evict the oldest channels; keep channelBudget at most 10, or use updateStrategy.type=Recreate" (.Values.topics.channelBudget | int64)) -}}
{{- end -}}
{{- $volume := include "gkb.spoolVolumeBytes" . | int64 -}}
{{- $max := include "gkb.spoolMaxBytes" . | int64 -}}
{{- $volumeValue := ternary "persistence.size" "spool.emptyDir.sizeLimit" .Values.persistence.enabled -}}
{{- if gt (mul $max 100) (mul $volume 90) -}}
{{- fail (printf "spool.maxBytes (%d) must stay at or below 90%% of %s (%d bytes): the dead-letter file and segment rounding need the rest, and an emptyDir past its sizeLimit gets the pod evicted" $max $volumeValue $volume) -}}
{{- end -}}
{{- $min := add (mul (.Values.spool.segmentBytes | int64) 2) 65536 -}}
{{- if lt $max $min -}}
{{- fail (printf "spool max_bytes (%d) must be at least 2 * spool.segmentBytes + 64 KiB (%d): enlarge %s or lower spool.segmentBytes" $max $min $volumeValue) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.persistence.enabled (eq (toString .Values.updateStrategy.type) "RollingUpdate") -}}
{{- fail "updateStrategy.type=RollingUpdate with persistence.enabled: the new pod cannot take over the old pod's volume or spool lock while the old pod runs, so the rollout would hang; leave updateStrategy.type empty (Recreate)" -}}
{{- end -}}
{{- $deadline := include "gkb.durationSeconds" .Values.supervisor.shutdownDeadline | int64 -}}
{{- if le (include "gkb.terminationGracePeriodSeconds" . | int64) $deadline -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed supervisor.shutdownDeadline (%ds), or the kubelet kills the bridge while it flushes the spool; leave it null to derive it" (.Values.terminationGracePeriodSeconds | int64) $deadline) -}}
{{- end -}}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.service.enabled) -}}
{{- fail "metrics.serviceMonitor.enabled needs service.enabled (or use metrics.podMonitor)" -}}
{{- end -}}
{{- end -}}
