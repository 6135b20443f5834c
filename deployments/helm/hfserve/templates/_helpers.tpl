{{/* The chart name, overridable. */}}
{{- define "hfserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's resource name; short enough for the "-redis" suffix. */}}
{{- define "hfserve.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 57 | trimSuffix "-" }}
{{- else if contains (include "hfserve.name" .) .Release.Name }}
{{- .Release.Name | trunc 57 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "hfserve.name" .) | trunc 57 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "hfserve.tag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/* Selector labels; pass (dict "ctx" $ "component" "server"). */}}
{{- define "hfserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hfserve.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "hfserve.labels" -}}
{{ include "hfserve.selectorLabels" . }}
app.kubernetes.io/version: {{ include "hfserve.tag" .ctx | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
{{- end }}

{{/* The ConfigMap data: user settings, then the values the chart owns. */}}
{{- define "hfserve.configData" -}}
{{- $data := dict }}
{{- range $k, $v := .Values.config }}
{{- $_ := set $data $k (toString $v) }}
{{- end }}
{{- $_ := set $data "HFSERVE_HOST" "0.0.0.0" }}
{{- $_ := set $data "HFSERVE_PORT" "8000" }}
{{- $_ := set $data "HFSERVE_KEYS_FILE" "/etc/hfserve/keys/keys.json" }}
{{- if .Values.redis.enabled }}
{{- $_ := set $data "HFSERVE_REDIS_URL" (printf "redis://%s-redis:6379/0" (include "hfserve.fullname" .)) }}
{{- end }}
{{- toYaml $data }}
{{- end }}

{{- define "hfserve.keysSecret" -}}
{{- default (printf "%s-keys" (include "hfserve.fullname" .)) .Values.keys.existingSecret }}
{{- end }}
