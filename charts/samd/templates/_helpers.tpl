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

{{/* SAMD_EVENT_SINKS: the sinks as JSON, without their Secrets (the keys come in by index). */}}
{{- define "samd.eventSinks" -}}
{{- $sinks := list -}}
{{- range .Values.events.sinks -}}
{{- $sinks = append $sinks (dict "name" .name "url" .url "types" (.types | default list) "allowInternal" (.allowInternal | default false) "allowHttp" (.allowHttp | default false)) -}}
{{- end -}}
{{- toJson $sinks -}}
{{- end -}}
