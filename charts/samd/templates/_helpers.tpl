{{- define "samd.labels" -}}
app.kubernetes.io/part-of: samd
app.kubernetes.io/instance: {{ .Release.Name }}
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

{{/* The Secret holding the webhook's serving certificate (tls.crt, tls.key, ca.crt). */}}
{{- define "samd.webhookSecret" -}}
{{- if eq .Values.webhook.certificate.source "secret" -}}
{{ required "webhook.certificate.secretName is required when webhook.certificate.source is secret: name a kubernetes.io/tls Secret in the release namespace" .Values.webhook.certificate.secretName }}
{{- else -}}
{{ printf "%s-webhook-tls" .Release.Name }}
{{- end -}}
{{- end -}}

{{/*
Pod settings shared by the operator and the webhook, from their values (`component`):
image pull secrets, placement, priority and the pod security context.
*/}}
{{- define "samd.podSettings" -}}
{{- $values := .component -}}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.nodeSelector }}
nodeSelector: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.tolerations }}
tolerations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.affinity }}
affinity: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.topologySpreadConstraints }}
topologySpreadConstraints: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
securityContext: {{- toYaml $values.podSecurityContext | nindent 2 }}
{{- end -}}

{{/* SAMD_EVENT_SINKS: the sinks as JSON, without their Secrets (the keys come in by index). */}}
{{- define "samd.eventSinks" -}}
{{- $sinks := list -}}
{{- range .Values.events.sinks -}}
{{- $sinks = append $sinks (dict "name" .name "url" .url "types" (.types | default list) "allowInternal" (.allowInternal | default false) "allowHttp" (.allowHttp | default false)) -}}
{{- end -}}
{{- toJson $sinks -}}
{{- end -}}

{{- define "samd.scraperLabels" -}}
{{- $pairs := list -}}
{{- range $key, $value := .Values.monitoring.scraper.podLabels -}}
{{- $pairs = append $pairs (printf "%s=%s" $key $value) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}

{{- /* SAMD_CERT_ISSUER: KIND[.GROUP]/NAME of certificates.issuerRef; empty: the operator's own CA. */ -}}
{{- define "samd.certificateIssuer" -}}
{{- with .Values.certificates.issuerRef -}}
{{- if .name -}}
{{- .kind -}}{{- if ne .group "cert-manager.io" -}}.{{ .group }}{{- end -}}/{{ .name -}}
{{- end -}}
{{- end -}}
{{- end -}}
