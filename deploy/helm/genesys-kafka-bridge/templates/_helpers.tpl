{{/*
Names, labels and derived values shared by the templates.
*/}}

{{- define "gkb.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "gkb.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "gkb.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "gkb.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gkb.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "gkb.labels" -}}
helm.sh/chart: {{ include "gkb.chart" . }}
{{ include "gkb.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: bridge
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "gkb.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "gkb.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "gkb.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the Genesys OAuth client credentials. */}}
{{- define "gkb.genesysSecretName" -}}
{{- default (printf "%s-genesys" (include "gkb.fullname" .)) .Values.genesys.existingSecret -}}
{{- end -}}

{{/* The ConfigMap or Secret holding bridge.toml. */}}
{{- define "gkb.configName" -}}
{{- default (printf "%s-config" (include "gkb.fullname" .)) .Values.config.existingSecret -}}
{{- end -}}

{{- define "gkb.configKey" -}}
{{- if .Values.config.existingSecret -}}{{ .Values.config.existingSecretKey }}{{- else -}}bridge.toml{{- end -}}
{{- end -}}

{{/* Fixed paths inside the container. */}}
{{- define "gkb.configDir" -}}/etc/genesys-kafka-bridge/config{{- end -}}
{{- define "gkb.credentialsDir" -}}/etc/genesys-kafka-bridge/genesys{{- end -}}
{{- define "gkb.dataDir" -}}/var/lib/genesys-kafka-bridge{{- end -}}
{{- define "gkb.spoolDir" -}}{{ include "gkb.dataDir" . }}/spool{{- end -}}

{{/*
Whole seconds (rounded up) of a duration such as "20s", "1m30s" or "1500ms".
The schema restricts durations to this form. Call with the string.
*/}}
{{- define "gkb.durationSeconds" -}}
{{- $ms := 0 -}}
{{- range (regexFindAll "[0-9]+(ms|s|m|h|d)" . -1) -}}
{{- $n := regexFind "^[0-9]+" . | int64 -}}
{{- $unit := regexReplaceAll "^[0-9]+" . "" -}}
{{- $factor := get (dict "ms" 1 "s" 1000 "m" 60000 "h" 3600000 "d" 86400000) $unit | int64 -}}
{{- $ms = add $ms (mul $n $factor) -}}
{{- end -}}
{{- div (add $ms 999) 1000 -}}
{{- end -}}

{{/*
Bytes of a Kubernetes quantity such as "1Gi", "512Mi" or "2G" (the schema restricts sizes to
this form). Call with the string.
*/}}
{{- define "gkb.quantityBytes" -}}
{{- $n := regexFind "^[0-9]+" . | int64 -}}
{{- $suffix := regexReplaceAll "^[0-9]+" . "" -}}
{{- $factors := dict "" 1 "k" 1000 "K" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 -}}
{{- mul $n (get $factors $suffix | int64) -}}
{{- end -}}

{{/* Bytes of the spool volume: the PVC size or the emptyDir sizeLimit. */}}
{{- define "gkb.spoolVolumeBytes" -}}
{{- if .Values.persistence.enabled -}}
{{- include "gkb.quantityBytes" .Values.persistence.size -}}
{{- else -}}
{{- include "gkb.quantityBytes" .Values.spool.emptyDir.sizeLimit -}}
{{- end -}}
{{- end -}}

{{/* spool.max_bytes: the value given, or 80% of the volume. */}}
{{- define "gkb.spoolMaxBytes" -}}
{{- $volume := include "gkb.spoolVolumeBytes" . | int64 -}}
{{- if gt (.Values.spool.maxBytes | int64) 0 -}}
{{- .Values.spool.maxBytes | int64 -}}
{{- else -}}
{{- div (mul $volume 80) 100 -}}
{{- end -}}
{{- end -}}

{{/* The Deployment's strategy type. */}}
{{- define "gkb.strategyType" -}}
{{- if .Values.updateStrategy.type -}}
{{- .Values.updateStrategy.type -}}
{{- else if .Values.persistence.enabled -}}
Recreate
{{- else -}}
RollingUpdate
{{- end -}}
{{- end -}}

{{/* terminationGracePeriodSeconds: given, or the shutdown deadline + 10 s. */}}
{{- define "gkb.terminationGracePeriodSeconds" -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds -}}
{{- add (include "gkb.durationSeconds" .Values.supervisor.shutdownDeadline | int64) 10 -}}
{{- else -}}
{{- .Values.terminationGracePeriodSeconds | int64 -}}
{{- end -}}
{{- end -}}

{{/* A librdkafka property value as a TOML string (the bridge takes every property as a string). */}}
{{- define "gkb.propertyValue" -}}
{{- if kindIs "string" . -}}
{{- toJson . -}}
{{- else if kindIs "bool" . -}}
{{- toString . | toJson -}}
{{- else -}}
{{- . | int64 | toString | toJson -}}
{{- end -}}
{{- end -}}

{{/* A YAML number as a TOML float (jitter). */}}
{{- define "gkb.float" -}}
{{- $s := toString (float64 .) -}}
{{- if regexMatch "^[0-9]+$" $s -}}{{ $s }}.0{{- else -}}{{ $s }}{{- end -}}
{{- end -}}

{{/* An IntOrString value (50% stays a string, 1 an integer). */}}
{{- define "gkb.intOrString" -}}
{{- if kindIs "string" . -}}{{ quote . }}{{- else -}}{{ . | int64 }}{{- end -}}
{{- end -}}

{{/* The timing fields of a probe value (its "enabled" flag stays out). */}}
{{- define "gkb.probeTiming" -}}
initialDelaySeconds: {{ .initialDelaySeconds | int64 }}
periodSeconds: {{ .periodSeconds | int64 }}
timeoutSeconds: {{ .timeoutSeconds | int64 }}
failureThreshold: {{ .failureThreshold | int64 }}
successThreshold: {{ .successThreshold | int64 }}
{{- end -}}
