{{/* Names and labels. */}}
{{- define "genie.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "genie.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "genie.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "genie.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: include "genie.selector" (list . "gateway") */}}
{{- define "genie.selector" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "genie.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "genie.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "genie.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "genie.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "genie.clusterSecretName" -}}
{{- default (printf "%s-cluster" (include "genie.fullname" .)) .Values.clusterSecret.existingSecret -}}
{{- end -}}

{{- define "genie.scheme" -}}
{{- if .Values.tls.enabled -}}https{{- else -}}http{{- end -}}
{{- end -}}

{{/* Flags every role shares: cluster secret, TLS, config. */}}
{{- define "genie.commonArgs" -}}
- --cluster-secret-file
- /etc/genie/cluster/{{ .Values.clusterSecret.key }}
{{- if .Values.tls.enabled }}
- --tls-cert-file
- /etc/genie/tls/tls.crt
- --tls-key-file
- /etc/genie/tls/tls.key
- --tls-ca-file
- /etc/genie/tls/ca.crt
{{- end }}
{{- if .Values.config }}
- --config
- /etc/genie/config/genie.toml
{{- end }}
{{- end -}}

{{/* Environment every role shares. */}}
{{- define "genie.commonEnv" -}}
- name: GENIE_CACHE_DIR
  value: /models
{{- if .Values.model.path }}
- name: GENIE_MODEL
  value: {{ .Values.model.path | quote }}
{{- end }}
{{- end -}}

{{/* Mounts every role shares. */}}
{{- define "genie.commonMounts" -}}
- name: models
  mountPath: /models
- name: tmp
  mountPath: /tmp
- name: cluster-secret
  mountPath: /etc/genie/cluster
  readOnly: true
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: /etc/genie/tls
  readOnly: true
{{- end }}
{{- if .Values.config }}
- name: config
  mountPath: /etc/genie/config
  readOnly: true
{{- end }}
{{- end -}}

{{/* Volumes every role shares. */}}
{{- define "genie.commonVolumes" -}}
- name: models
{{- if .Values.model.cache.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ .Values.model.cache.existingClaim }}
{{- else }}
  emptyDir:
    sizeLimit: {{ .Values.model.cache.sizeLimit }}
{{- end }}
- name: tmp
  emptyDir:
    sizeLimit: 256Mi
- name: cluster-secret
  secret:
    secretName: {{ include "genie.clusterSecretName" . }}
    defaultMode: 0400
    items:
      - key: {{ .Values.clusterSecret.key }}
        path: {{ .Values.clusterSecret.key }}
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ required "tls.secretName is required with tls.enabled" .Values.tls.secretName }}
    defaultMode: 0400
{{- end }}
{{- if .Values.config }}
- name: config
  configMap:
    name: {{ include "genie.fullname" . }}-config
{{- end }}
{{- end -}}

{{/* The init container that fetches the model into the cache volume. */}}
{{- define "genie.fetchModel" -}}
{{- if .Values.model.fetch }}
initContainers:
  - name: fetch-model
    image: {{ include "genie.image" . }}
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    args: [model, fetch]
    env:
      {{- include "genie.commonEnv" . | nindent 6 }}
      - name: HOME
        value: /tmp
    securityContext:
      {{- toYaml .Values.securityContext | nindent 6 }}
    volumeMounts:
      - name: models
        mountPath: /models
      - name: tmp
        mountPath: /tmp
{{- end }}
{{- end -}}

{{/* Startup, readiness and liveness probes on /health of port `http`. */}}
{{- define "genie.probes" -}}
startupProbe:
  httpGet: {path: /health, port: http, scheme: {{ include "genie.scheme" . | upper }}}
  {{- toYaml .Values.probes.startup | nindent 2 }}
readinessProbe:
  httpGet: {path: /health, port: http, scheme: {{ include "genie.scheme" . | upper }}}
  {{- toYaml .Values.probes.readiness | nindent 2 }}
livenessProbe:
  httpGet: {path: /health, port: http, scheme: {{ include "genie.scheme" . | upper }}}
  {{- toYaml .Values.probes.liveness | nindent 2 }}
{{- end -}}
