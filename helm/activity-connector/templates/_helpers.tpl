{{- define "activity-connector.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "activity-connector.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "activity-connector.selectorLabels" -}}
app.kubernetes.io/name: {{ include "activity-connector.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "activity-connector.labels" -}}
{{ include "activity-connector.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "activity-connector.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "activity-connector.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The connector's configuration: the user's, with what the chart owns set. */}}
{{- define "activity-connector.config" -}}
{{- $config := deepCopy .Values.config -}}
{{- $_ := set $config "metrics" (dict "listen" (printf "0.0.0.0:%d" (int .Values.metrics.port))) -}}
{{- $_ := set $config "shutdown_timeout" (printf "%ds" (int .Values.shutdownTimeoutSeconds)) -}}
{{- if .Values.staticMembership -}}
{{- $kafka := deepCopy (default dict $config.kafka) -}}
{{- $_ := set $kafka "group.instance.id" "${POD_NAME}" -}}
{{- $_ := set $config "kafka" $kafka -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}
