{{/*
Names, labels and the few decisions shared by several templates.
*/}}

{{- define "sni-exporter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Full name: RELEASE-CHART, or RELEASE when the release name already contains the
chart name.  Truncated to 63 characters (DNS label limit); the StatefulSet's pod
names append "-N", which Kubernetes allows beyond 63 for the pod name itself.
*/}}
{{- define "sni-exporter.fullname" -}}
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

{{- define "sni-exporter.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride -}}
{{- end -}}

{{- define "sni-exporter.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels: never change them between versions, selectors are immutable. */}}
{{- define "sni-exporter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sni-exporter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "sni-exporter.labels" -}}
helm.sh/chart: {{ include "sni-exporter.chart" . }}
{{ include "sni-exporter.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sni-exporter
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "sni-exporter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "sni-exporter.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* registry/repository:tag or registry/repository@digest, from an image block. */}}
{{- define "sni-exporter.imageRef" -}}
{{- $image := .image -}}
{{- $ref := printf "%s/%s" $image.registry $image.repository | trimPrefix "/" -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $ref $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $ref (toString (default .defaultTag $image.tag)) -}}
{{- end -}}
{{- end -}}

{{- define "sni-exporter.configMapName" -}}
{{- default (include "sni-exporter.fullname" .) .Values.existingConfigMap -}}
{{- end -}}

{{/* True ("true") when the targets are split between several pods. */}}
{{- define "sni-exporter.sharded" -}}
{{- if gt (int .Values.shards) 1 }}true{{ end -}}
{{- end -}}

{{/*
Refuse combinations that would deploy something other than what was asked for.
Included once, from the workload template.
*/}}
{{- define "sni-exporter.validate" -}}
{{- if and .Values.serviceMonitor.enabled .Values.podMonitor.enabled -}}
{{- fail "serviceMonitor.enabled and podMonitor.enabled are both true: every pod would be scraped twice; enable one of them" -}}
{{- end -}}
{{- if and (include "sni-exporter.sharded" .) (ne (int .Values.replicas) 1) -}}
{{- fail (printf "replicas is %d but shards is %d: with shards > 1 each shard is one pod; set replicas to 1" (int .Values.replicas) (int .Values.shards)) -}}
{{- end -}}
{{- if and (include "sni-exporter.sharded" .) (semverCompare "<1.28.0-0" .Capabilities.KubeVersion.Version) -}}
{{- fail (printf "shards > 1 needs Kubernetes >= 1.28 (the apps.kubernetes.io/pod-index label gives each pod its shard), this cluster is %s" .Capabilities.KubeVersion.Version) -}}
{{- end -}}
{{- if and (not .Values.existingConfigMap) (not (kindIs "map" .Values.config)) -}}
{{- fail "config must be a mapping (the contents of targets.yaml) unless existingConfigMap is set" -}}
{{- end -}}
{{- end -}}

{{/*
The pod template shared by the Deployment and the StatefulSet.
*/}}
{{- define "sni-exporter.podTemplate" -}}
{{- $sharded := include "sni-exporter.sharded" . -}}
metadata:
  labels:
    {{- include "sni-exporter.labels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- $annotations := deepCopy (.Values.podAnnotations | default dict) }}
  {{- if and (not .Values.configReloader.enabled) (not .Values.existingConfigMap) }}
  {{- /* Without the reload sidecar, a config change rolls the pods instead. */}}
  {{- $_ := set $annotations "checksum/config" (include (print $.Template.BasePath "/configmap.yaml") . | sha256sum) }}
  {{- end }}
  {{- with $annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  serviceAccountName: {{ include "sni-exporter.serviceAccountName" . }}
  automountServiceAccountToken: {{ .Values.automountServiceAccountToken }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  {{- with .Values.podSecurityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: sni-exporter
      image: {{ include "sni-exporter.imageRef" (dict "image" .Values.image "defaultTag" .Chart.AppVersion) | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args:
        - serve
        - --config.file=/etc/sni-exporter/targets.yaml
        - --web.listen-address=:{{ .Values.port }}
        - --web.telemetry-path={{ .Values.telemetryPath }}
        - --log.level={{ .Values.logLevel }}
        - --log.format={{ .Values.logFormat }}
        {{- with .Values.probeConcurrency }}
        - --probe.concurrency={{ . }}
        {{- end }}
        {{- if $sharded }}
        {{- /* Kubernetes expands $(SHARD_INDEX) from the env below: no shell needed. */}}
        - --shard=$(SHARD_INDEX)/{{ int .Values.shards }}
        {{- end }}
        {{- with .Values.extraArgs }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- if or $sharded .Values.extraEnv }}
      env:
        {{- if $sharded }}
        # The StatefulSet controller labels each pod with its ordinal (Kubernetes >= 1.28).
        - name: SHARD_INDEX
          valueFrom:
            fieldRef:
              fieldPath: metadata.labels['apps.kubernetes.io/pod-index']
        {{- end }}
        {{- with .Values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- end }}
      ports:
        - name: metrics
          containerPort: {{ .Values.port }}
          protocol: TCP
      {{- with .Values.livenessProbe }}
      livenessProbe:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.readinessProbe }}
      readinessProbe:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.securityContext }}
      securityContext:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.resources }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      volumeMounts:
        # A directory mount, not subPath: only then does the kubelet update the
        # file in place when the ConfigMap changes.
        - name: config
          mountPath: /etc/sni-exporter
          readOnly: true
        - name: tmp
          mountPath: /tmp
        {{- with .Values.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    {{- if .Values.configReloader.enabled }}
    - name: config-reloader
      image: {{ include "sni-exporter.imageRef" (dict "image" .Values.configReloader.image "defaultTag" "latest") | quote }}
      imagePullPolicy: {{ .Values.configReloader.image.pullPolicy }}
      args:
        - --volume-dir=/etc/sni-exporter
        - --webhook-url=http://127.0.0.1:{{ .Values.port }}/-/reload
        - --webhook-method=POST
        {{- with .Values.configReloader.extraArgs }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with .Values.securityContext }}
      securityContext:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.configReloader.resources }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      volumeMounts:
        - name: config
          mountPath: /etc/sni-exporter
          readOnly: true
    {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ include "sni-exporter.configMapName" . }}
        items:
          - key: {{ .Values.configMapKey }}
            path: targets.yaml
    - name: tmp
      emptyDir:
        sizeLimit: 16Mi
    {{- with .Values.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- range .Values.topologySpreadConstraints }}
    {{- $constraint := . }}
    {{- if not (hasKey . "labelSelector") }}
    {{- $constraint = merge (dict "labelSelector" (dict "matchLabels" (include "sni-exporter.selectorLabels" $ | fromYaml))) . }}
    {{- end }}
    - {{- toYaml $constraint | nindent 6 }}
    {{- end }}
  {{- end }}
{{- end -}}
