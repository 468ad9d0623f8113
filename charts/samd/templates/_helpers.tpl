{{- define "samd.labels" -}}
app.kubernetes.io/part-of: samd
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "samd.image" -}}
{{ printf "%s:%s" .Values.image.repository .Values.image.tag }}
{{- end -}}

{{- define "samd.webhookService" -}}
{{ printf "%s-webhook" .Release.Name }}
{{- end -}}

{{/* The restricted Pod Security Standard, shared by both Deployments. */}}
{{- define "samd.podSecurity" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}
{{- define "samd.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{- define "samd.scraperLabels" -}}
{{- $pairs := list -}}
{{- range $key, $value := .Values.monitoring.scraper.podLabels -}}
{{- $pairs = append $pairs (printf "%s=%s" $key $value) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}
