{{/* Names, labels and the values every workload derives from its model type's entry. */}}

{{- define "aiaas.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "aiaas.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: aiaas
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "service|trainer" "model" name) */}}
{{- define "aiaas.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- with .model }}
aiaas.io/model: {{ . }}
{{- end }}
{{- end -}}

{{/* Name of a model type's service workload (and its Service): <fullname>-<model>. */}}
{{- define "aiaas.serviceName" -}}
{{- printf "%s-%s" (include "aiaas.fullname" .root) .name -}}
{{- end -}}

{{/* A model type's entry merged over serviceDefaults, as YAML: (dict "root" $ "name" name) | fromYaml */}}
{{- define "aiaas.model" -}}
{{- $entry := index .root.Values.models .name | default dict -}}
{{- $m := mergeOverwrite (deepCopy .root.Values.serviceDefaults) (deepCopy $entry) -}}
{{- if not (has $m.delivery (list "at-least-once" "exactly-once")) -}}
{{- fail (printf "models.%s.delivery must be at-least-once or exactly-once, not %v" .name $m.delivery) -}}
{{- end -}}
{{- $_ := set $m "partitions" (int ($m.partitions | default .root.Values.kafka.partitions)) -}}
{{- $_ := set $m "prefix" (printf "AIAAS_%s_" (.name | upper | replace "-" "_")) -}}
{{- $_ := set $m "group" (index $m.settings "group_id" | default (printf "%s.%s" .root.Values.kafka.topicPrefix .name)) -}}
{{- $_ := set $m "statefulSet" (eq $m.delivery "exactly-once") -}}
{{- $a := $m.autoscaling -}}
{{- $drain := $a.targetDrainSeconds | default .root.Values.keda.targetDrainSeconds -}}
{{- $_ := set $a "lagThreshold" (int ($a.lagThreshold | default (mulf $a.throughputPerReplica $drain | ceil))) -}}
{{- if gt (int $a.maxReplicas) (int $m.partitions) -}}
{{- fail (printf "models.%s.autoscaling.maxReplicas (%v) is above its partitions (%v): replicas beyond the partitions of its topics sit idle" .name $a.maxReplicas $m.partitions) -}}
{{- end -}}
{{- if lt (int $m.terminationGraceMarginSeconds) 1 -}}
{{- fail (printf "models.%s.terminationGraceMarginSeconds must be at least 1: the pod must outlive its drain" .name) -}}
{{- end -}}
{{- if gt (int $a.minReplicas) (int $a.maxReplicas) -}}
{{- fail (printf "models.%s.autoscaling.minReplicas is above maxReplicas" .name) -}}
{{- end -}}
{{- range $key := list "delivery" "graceful_timeout_s" "metrics_port" "metrics_host" "instance_id" "execution_provider" -}}
{{- if hasKey $m.settings $key -}}
{{- fail (printf "models.%s.settings.%s: the chart sets it; use the chart's own value (docs/deploy.md)" $.name $key) -}}
{{- end -}}
{{- end -}}
{{- toYaml $m -}}
{{- end -}}

{{/* One env entry per field of a settings map: (dict "prefix" "AIAAS_X_" "settings" map) */}}
{{- define "aiaas.settingsEnv" -}}
{{- range $key, $value := .settings }}
- name: {{ printf "%s%s" $.prefix ($key | upper) }}
  {{- if or (kindIs "slice" $value) (kindIs "map" $value) }}
  value: {{ toJson $value | quote }}
  {{- else if and (kindIs "float64" $value) (eq $value (floor $value)) }}
  value: {{ $value | int64 | toString | quote }}
  {{- else }}
  value: {{ $value | toString | quote }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* The Secret with the SASL user of a workload: (dict "root" $ "secret" its own existingSecret or "") */}}
{{- define "aiaas.kafkaSecretName" -}}
{{- .secret | default .root.Values.kafka.sasl.existingSecret | default (printf "%s-kafka" (include "aiaas.fullname" .root)) -}}
{{- end -}}

{{- define "aiaas.securityProtocol" -}}
{{- $k := .Values.kafka -}}
{{- if and $k.sasl.enabled $k.tls.enabled -}}SASL_SSL
{{- else if $k.sasl.enabled -}}SASL_PLAINTEXT
{{- else if $k.tls.enabled -}}SSL
{{- else -}}PLAINTEXT
{{- end -}}
{{- end -}}

{{- define "aiaas.image" -}}
{{- $img := mergeOverwrite (deepCopy .root.Values.image) (ternary .root.Values.gpu.image dict .gpu) -}}
{{- printf "%s:%s" $img.repository ($img.tag | default .root.Chart.AppVersion) -}}
{{- end -}}

{{/* What every aiaas container shares: Kafka settings (ConfigMap, Secret), AIAAS_HOME, tracing:
(dict "root" $ "secret" the workload's own SASL Secret or "") */}}
{{- define "aiaas.commonEnv" -}}
envFrom:
  - configMapRef:
      name: {{ include "aiaas.fullname" .root }}-env
{{- if .root.Values.kafka.sasl.enabled }}
env:
  - name: AIAAS_KAFKA_SASL_USERNAME
    valueFrom: {secretKeyRef: {name: {{ include "aiaas.kafkaSecretName" . }}, key: username}}
  - name: AIAAS_KAFKA_SASL_PASSWORD
    valueFrom: {secretKeyRef: {name: {{ include "aiaas.kafkaSecretName" . }}, key: password}}
{{- else }}
env:
{{- end }}
  - name: HOME
    value: /tmp
{{- end -}}

{{- define "aiaas.volumeMounts" -}}
- name: home
  mountPath: {{ .Values.registry.mountPath }}
# Each process announces its endpoint in <AIAAS_HOME>/metrics/targets/ for a host's own Prometheus and `aiaas top`.
# In Kubernetes, Prometheus finds pods through the API (annotations or the ServiceMonitor), and a pod that is
# killed cannot remove its file: on the shared volume they would pile up. So they stay in the pod.
- name: metrics-targets
  mountPath: {{ .Values.registry.mountPath }}/metrics
{{- if .Values.kafka.tls.caSecret }}
- name: kafka-ca
  mountPath: /etc/aiaas/kafka-ca
  readOnly: true
{{- end }}
{{- end -}}

{{- define "aiaas.volumes" -}}
- name: home
  persistentVolumeClaim:
    claimName: {{ .Values.registry.persistence.existingClaim | default (printf "%s-home" (include "aiaas.fullname" .)) }}
- name: metrics-targets
  emptyDir: {}
{{- if .Values.kafka.tls.caSecret }}
- name: kafka-ca
  secret:
    secretName: {{ .Values.kafka.tls.caSecret }}
{{- end }}
{{- end -}}

{{/* GPU scheduling of a pod: (dict "root" $ "gpu" bool "nodeSelector" map "tolerations" list "affinity" map) */}}
{{- define "aiaas.scheduling" -}}
{{- $selector := .nodeSelector | default dict -}}
{{- $tolerations := .tolerations | default list -}}
{{- if .gpu -}}
{{- $selector = mergeOverwrite (deepCopy .root.Values.gpu.nodeSelector) $selector -}}
{{- $tolerations = concat .root.Values.gpu.tolerations $tolerations -}}
{{- end -}}
{{- with $selector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Container resources, with one nvidia.com/gpu when the workload runs on a GPU: (dict "resources" r "gpu" b) */}}
{{- define "aiaas.resources" -}}
{{- $r := deepCopy (.resources | default dict) -}}
{{- if .gpu -}}
{{- $_ := set $r "limits" (merge (dict "nvidia.com/gpu" 1) ($r.limits | default dict)) -}}
{{- end -}}
{{- toYaml $r -}}
{{- end -}}

{{- define "aiaas.podAnnotations" -}}
{{- if .root.Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .root.Values.metrics.port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- with .extra }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "aiaas.probes" -}}
# Until the model is loaded /healthz may be slow to come: the startup probe gives it 5 minutes.
startupProbe:
  httpGet: {path: /healthz, port: metrics}
  periodSeconds: 5
  failureThreshold: 60
livenessProbe:
  httpGet: {path: /healthz, port: metrics}
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /readyz, port: metrics}
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 3
{{- end -}}
