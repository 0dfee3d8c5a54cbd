{{/* Chart name. */}}
{{- define "berth.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Prefix of every object's name. */}}
{{- define "berth.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "berth.labels" -}}
{{ include "berth.baseLabels" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels on every object but the instance (which the selector labels carry). */}}
{{- define "berth.baseLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: berth
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Selector labels of one component: (dict "ctx" $ "component" "operator").
`app.kubernetes.io/name` is `berth-<component>`: the operator finds the speakers by
`app.kubernetes.io/name=berth-bgp-server` (its --speaker-selector, narrowed to this release).
*/}}
{{- define "berth.selectorLabels" -}}
app.kubernetes.io/name: berth-{{ .component }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- end -}}

{{- define "berth.componentLabels" -}}
{{ include "berth.baseLabels" .ctx }}
{{ include "berth.selectorLabels" . }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The one image of all binaries. */}}
{{- define "berth.image" -}}
{{- $repo := .Values.image.repository -}}
{{- if .Values.image.registry -}}
{{- $repo = printf "%s/%s" .Values.image.registry .Values.image.repository -}}
{{- end -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $repo .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* host:port for a listener: IPv6 addresses in brackets. (dict "ctx" $ "host" "$(POD_IP)" "port" 1) */}}
{{- define "berth.hostPort" -}}
{{- if eq .ctx.Values.ipFamily "IPv6" -}}
[{{ .host }}]:{{ .port }}
{{- else -}}
{{ .host }}:{{ .port }}
{{- end -}}
{{- end -}}

{{/* The wildcard address for metrics listeners of the chosen family. */}}
{{- define "berth.anyAddress" -}}
{{- if eq .Values.ipFamily "IPv6" -}}::{{- else -}}0.0.0.0{{- end -}}
{{- end -}}

{{/* Secret names of the mTLS material. */}}
{{- define "berth.serverTlsSecret" -}}
{{- if eq .Values.tls.mode "existing" -}}
{{- required "tls.existing.serverSecret is required with tls.mode=existing" .Values.tls.existing.serverSecret -}}
{{- else -}}
{{- include "berth.fullname" . }}-bgp-server-tls
{{- end -}}
{{- end -}}

{{- define "berth.clientTlsSecret" -}}
{{- if eq .Values.tls.mode "existing" -}}
{{- required "tls.existing.clientSecret is required with tls.mode=existing" .Values.tls.existing.clientSecret -}}
{{- else -}}
{{- include "berth.fullname" . }}-operator-tls
{{- end -}}
{{- end -}}

{{- define "berth.gossipSecret" -}}
{{- default (printf "%s-gossip" (include "berth.fullname" .)) .Values.agent.gossip.existingSecret -}}
{{- end -}}

{{/*
Whether the agents gossip. Only with seeds: an agent that knows no seed stays alone and would
claim every Layer2 IP it is a candidate for. When the agent learns its seeds from Node
objects, this becomes `.Values.agent.gossip.enabled` alone.
*/}}
{{- define "berth.gossipOn" -}}
{{- if .Values.agent.gossip.enabled -}}true{{- end -}}
{{- end -}}

{{- define "berth.validate" -}}
{{- if not (has .Values.ipFamily (list "IPv4" "IPv6")) -}}
{{- fail (printf "ipFamily must be IPv4 or IPv6, not %q" .Values.ipFamily) -}}
{{- end -}}
{{- if not (has .Values.tls.mode (list "generate" "existing" "certManager")) -}}
{{- fail (printf "tls.mode must be generate, existing or certManager, not %q" .Values.tls.mode) -}}
{{- end -}}
{{- if not (has .Values.bgpServer.state.type (list "hostPath" "pvc" "emptyDir")) -}}
{{- fail (printf "bgpServer.state.type must be hostPath, pvc or emptyDir, not %q" .Values.bgpServer.state.type) -}}
{{- end -}}
{{- if not (has .Values.logFormat (list "text" "json")) -}}
{{- fail (printf "logFormat must be text or json, not %q" .Values.logFormat) -}}
{{- end -}}
{{- end -}}
