{{/*
Names, labels and the pieces every workload shares.
*/}}

{{- define "adclick.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "adclick.fullname" -}}
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

{{- define "adclick.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Resource names of the components. */}}
{{- define "adclick.coordinator.fullname" -}}{{ include "adclick.fullname" . }}-coordinator{{- end -}}
{{- define "adclick.node.fullname" -}}{{ include "adclick.fullname" . }}-node{{- end -}}
{{- define "adclick.writer.fullname" -}}{{ include "adclick.fullname" . }}-writer{{- end -}}
{{- define "adclick.query.fullname" -}}{{ include "adclick.fullname" . }}-query{{- end -}}

{{- define "adclick.selectorLabels" -}}
app.kubernetes.io/name: {{ include "adclick.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "adclick.labels" -}}
helm.sh/chart: {{ include "adclick.chart" . }}
{{ include "adclick.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: adclick
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: (dict "ctx" $ "component" "node"). */}}
{{- define "adclick.componentSelectorLabels" -}}
{{ include "adclick.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "adclick.componentLabels" -}}
{{ include "adclick.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "adclick.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "adclick.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The image reference; never "latest" (the schema refuses it too). */}}
{{- define "adclick.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag | toString -}}
{{- if eq $tag "latest" -}}
{{- fail "image.tag must not be \"latest\": pin a version (default: the chart's appVersion)" -}}
{{- end -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* <service>.<namespace>.svc[.<clusterDomain>] with a literal namespace. */}}
{{- define "adclick.svcDomain" -}}
{{- if .Values.clusterDomain -}}
{{- printf "%s.svc.%s" .Release.Namespace .Values.clusterDomain -}}
{{- else -}}
{{- printf "%s.svc" .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/* The same with the pod's namespace from the downward API ($(POD_NAMESPACE)). */}}
{{- define "adclick.podSvcDomain" -}}
{{- if .Values.clusterDomain -}}
{{- printf "$(POD_NAMESPACE).svc.%s" .Values.clusterDomain -}}
{{- else -}}
$(POD_NAMESPACE).svc
{{- end -}}
{{- end -}}

{{- define "adclick.coordinatorAddress" -}}
{{- printf "%s.%s:%d" (include "adclick.coordinator.fullname" .) (include "adclick.svcDomain" .) (int .Values.coordinator.grpcPort) -}}
{{- end -}}

{{- define "adclick.listen" -}}
{{- printf "%s:%d" .ctx.Values.listenHost (int .port) -}}
{{- end -}}

{{- define "adclick.configPath" -}}/etc/adclick/adclick.toml{{- end -}}

{{- define "adclick.isSqlite" -}}
{{- if and (not .Values.database.existingSecret) (hasPrefix "sqlite:" .Values.database.url) -}}true{{- end -}}
{{- end -}}

{{- define "adclick.snapshotsClaim" -}}
{{- default (printf "%s-snapshots" (include "adclick.fullname" .)) .Values.snapshots.pvc.existingClaim -}}
{{- end -}}

{{- define "adclick.databaseClaim" -}}
{{- default (printf "%s-db" (include "adclick.fullname" .)) .Values.database.persistence.existingClaim -}}
{{- end -}}

{{- define "adclick.s3SecretName" -}}
{{- default (printf "%s-s3" (include "adclick.fullname" .)) .Values.snapshots.s3.existingSecret -}}
{{- end -}}

{{- define "adclick.s3Credentials" -}}
{{- if and (eq .Values.snapshots.type "url") (or .Values.snapshots.s3.existingSecret .Values.snapshots.s3.accessKeyId) -}}true{{- end -}}
{{- end -}}

{{- define "adclick.adminTokenSecretName" -}}
{{- default (printf "%s-admin-token" (include "adclick.fullname" .)) .Values.adminToken.existingSecret -}}
{{- end -}}

{{/*
adclick.toml as a TOML document. Each section is emitted by
"adclick.tomlTable" from a map: scalars and arrays of scalars as key = JSON
(a JSON string, number, boolean or array of them is valid TOML, and toJson
prints whole numbers without exponent, which plain printing does not for
values Helm holds as float64, e.g. 1e+06), arrays of maps as [[section.key]]
tables (slices.filters).
*/}}
{{- define "adclick.tomlTable" -}}
{{- $name := index . 0 -}}
{{- $table := index . 1 -}}
[{{ $name }}]
{{- range $k := keys $table | sortAlpha }}
{{- $v := index $table $k }}
{{- if not (or (kindIs "map" $v) (and (kindIs "slice" $v) (gt (len $v) 0) (kindIs "map" (first $v)))) }}
{{ $k }} = {{ $v | toJson }}
{{- end }}
{{- end }}
{{- range $k := keys $table | sortAlpha }}
{{- $v := index $table $k }}
{{- if and (kindIs "map" $v) (gt (len $v) 0) }}

[{{ $name }}.{{ $k }}]
{{- range $ik := keys $v | sortAlpha }}
{{ $ik }} = {{ index $v $ik | toJson }}
{{- end }}
{{- end }}
{{- end }}
{{- range $k := keys $table | sortAlpha }}
{{- $v := index $table $k }}
{{- if and (kindIs "slice" $v) (gt (len $v) 0) (kindIs "map" (first $v)) }}
{{- range $item := $v }}

[[{{ $name }}.{{ $k }}]]
{{- range $ik := keys $item | sortAlpha }}
{{ $ik }} = {{ index $item $ik | toJson }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The whole configuration: values.config plus the keys the chart owns. */}}
{{- define "adclick.toml" -}}
{{- $v := .Values -}}
{{- $cfg := deepCopy ($v.config | default dict) -}}
{{- $bootstrap := required "kafka.bootstrap is required: set it to your Kafka bootstrap servers, host:port[,host:port] (e.g. --set kafka.bootstrap=kafka.kafka.svc:9092)" $v.kafka.bootstrap -}}
{{- $job := $cfg.job | default dict -}}
{{- $keyGroups := int (default 4096 $job.key_groups) -}}
{{- if gt (int $v.aggregate.replicas) $keyGroups -}}
{{- fail (printf "aggregate.replicas (%d) must not exceed config.job.key_groups (%d)" (int $v.aggregate.replicas) $keyGroups) -}}
{{- end -}}
{{- $drainMs := int (default 30000 ($cfg.cluster | default dict).drain_timeout_ms) -}}
{{- if ge $drainMs (mul (int $v.nodes.terminationGracePeriodSeconds) 1000 | int) -}}
{{- fail (printf "nodes.terminationGracePeriodSeconds (%ds) must be longer than cluster.drain_timeout_ms (%dms, default 30000), or Kubernetes kills a draining node before its actors moved" (int $v.nodes.terminationGracePeriodSeconds) $drainMs) -}}
{{- end -}}
{{- $ckptMs := int (default 60000 ($cfg.checkpoint | default dict).timeout_ms) -}}
{{- if ge $ckptMs (mul (int $v.coordinator.terminationGracePeriodSeconds) 1000 | int) -}}
{{- fail (printf "coordinator.terminationGracePeriodSeconds (%ds) must be longer than checkpoint.timeout_ms (%dms, default 60000), or Kubernetes kills the coordinator during its final checkpoint" (int $v.coordinator.terminationGracePeriodSeconds) $ckptMs) -}}
{{- end -}}
{{- $_ := set $cfg "kafka" (merge (dict "bootstrap" $bootstrap) ($cfg.kafka | default dict)) -}}
{{- $_ := set $cfg "cluster" (merge (dict "coordinator" (include "adclick.coordinatorAddress" .) "nodes" (int $v.nodes.replicas)) ($cfg.cluster | default dict)) -}}
{{- $_ := set $cfg "aggregate" (dict "replicas" (int $v.aggregate.replicas)) -}}
{{- $store := $v.snapshots.mountPath -}}
{{- if eq $v.snapshots.type "url" -}}
{{- $store = required "snapshots.url is required when snapshots.type is url (e.g. s3://bucket/adclick)" $v.snapshots.url -}}
{{- end -}}
{{- $_ := set $cfg "checkpoint" (merge (dict "store" $store) ($cfg.checkpoint | default dict)) -}}
{{- $db := $cfg.database | default dict -}}
{{- if not $v.database.existingSecret -}}
{{- $db = merge (dict "url" (required "database.url is required (postgres://... or sqlite:///path), or database.existingSecret" $v.database.url)) $db -}}
{{- end -}}
{{- if include "adclick.isSqlite" . -}}
{{- $path := $v.database.url | trimPrefix "sqlite://" | trimPrefix "sqlite:" -}}
{{- if not (hasPrefix (printf "%s/" $v.database.persistence.mountPath) $path) -}}
{{- fail (printf "database.url %s: the SQLite file must be under database.persistence.mountPath (%s), the only writable place shared by the writer and the query service" $v.database.url $v.database.persistence.mountPath) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $cfg "database" $db -}}
{{- $_ := set $cfg "writer" (merge (dict "ops_addr" (include "adclick.listen" (dict "ctx" . "port" $v.writer.opsPort))) ($cfg.writer | default dict)) -}}
{{- $_ := set $cfg "query" (merge (dict "listen" (include "adclick.listen" (dict "ctx" . "port" $v.query.port))) ($cfg.query | default dict)) -}}
# adclick.toml rendered by the adclick Helm chart; keys: core/src/config.rs.
{{- range $section := list "kafka" "cluster" "job" "aggregate" "slices" "checkpoint" "database" "writer" "query" }}
{{- $t := index $cfg $section }}
{{- if $t }}

{{ include "adclick.tomlTable" (list $section $t) }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Pod annotations shared by every workload: config checksum, scraping. */}}
{{- define "adclick.podAnnotations" -}}
checksum/config: {{ include (print .ctx.Template.BasePath "/configmap.yaml") .ctx | sha256sum }}
{{- if and .ctx.Values.metrics.podAnnotations (not .ctx.Values.metrics.serviceMonitor.enabled) }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | int | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- with .ctx.Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Environment every adclick container gets. */}}
{{- define "adclick.commonEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
{{- if .Values.database.existingSecret }}
- name: ADCLICK_DATABASE__URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.existingSecret }}
      key: {{ .Values.database.existingSecretKey }}
{{- end }}
{{- with .Values.grpcTls.existingSecret }}
# [grpc_tls]: the certificates of the grpcTls Secret (mounted below).
- name: ADCLICK_GRPC_TLS__CA_FILE
  value: /etc/adclick-grpc-tls/ca.crt
- name: ADCLICK_GRPC_TLS__CERT_FILE
  value: /etc/adclick-grpc-tls/tls.crt
- name: ADCLICK_GRPC_TLS__KEY_FILE
  value: /etc/adclick-grpc-tls/tls.key
- name: ADCLICK_GRPC_TLS__REQUIRE_CLIENT_CERT
  value: {{ $.Values.grpcTls.requireClientCert | quote }}
{{- with $.Values.grpcTls.serverName }}
- name: ADCLICK_GRPC_TLS__SERVER_NAME
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* S3 credentials of the snapshot store (coordinator and nodes). */}}
{{- define "adclick.s3Env" -}}
{{- if eq .Values.snapshots.type "url" }}
{{- if include "adclick.s3Credentials" . }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ include "adclick.s3SecretName" . }}
      key: {{ .Values.snapshots.s3.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "adclick.s3SecretName" . }}
      key: {{ .Values.snapshots.s3.secretAccessKeyKey }}
{{- end }}
{{- with .Values.snapshots.s3.region }}
- name: AWS_REGION
  value: {{ . | quote }}
{{- end }}
{{- with .Values.snapshots.s3.endpoint }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- if .Values.snapshots.s3.allowHttp }}
- name: AWS_ALLOW_HTTP
  value: "true"
{{- end }}
{{- end }}
{{- end -}}

{{- define "adclick.adminTokenEnv" -}}
{{- if or .Values.adminToken.value .Values.adminToken.existingSecret }}
- name: ADCLICK_ADMIN_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "adclick.adminTokenSecretName" . }}
      key: {{ if .Values.adminToken.existingSecret }}{{ .Values.adminToken.existingSecretKey }}{{ else }}token{{ end }}
{{- end }}
{{- end -}}

{{/* HTTP probes on a named port: (dict "ctx" $ "port" "ops"). */}}
{{- define "adclick.probes" -}}
{{- $p := .ctx.Values.probes -}}
startupProbe:
  httpGet:
    path: /healthz
    port: {{ .port }}
  periodSeconds: {{ $p.startup.periodSeconds }}
  timeoutSeconds: {{ $p.startup.timeoutSeconds }}
  failureThreshold: {{ $p.startup.failureThreshold }}
livenessProbe:
  httpGet:
    path: /healthz
    port: {{ .port }}
  periodSeconds: {{ $p.liveness.periodSeconds }}
  timeoutSeconds: {{ $p.liveness.timeoutSeconds }}
  failureThreshold: {{ $p.liveness.failureThreshold }}
readinessProbe:
  httpGet:
    path: /readyz
    port: {{ .port }}
  periodSeconds: {{ $p.readiness.periodSeconds }}
  timeoutSeconds: {{ $p.readiness.timeoutSeconds }}
  failureThreshold: {{ $p.readiness.failureThreshold }}
{{- end -}}

{{/* Pod anti-affinity of a component: (dict "ctx" $ "component" "node" "mode" "soft"). */}}
{{- define "adclick.podAntiAffinity" -}}
{{- if eq .mode "hard" -}}
podAntiAffinity:
  requiredDuringSchedulingIgnoredDuringExecution:
    - labelSelector:
        matchLabels:
          {{- include "adclick.componentSelectorLabels" . | nindent 10 }}
      topologyKey: {{ .ctx.Values.antiAffinityTopologyKey }}
{{- else if eq .mode "soft" -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        labelSelector:
          matchLabels:
            {{- include "adclick.componentSelectorLabels" . | nindent 12 }}
        topologyKey: {{ .ctx.Values.antiAffinityTopologyKey }}
{{- end -}}
{{- end -}}

{{/* Volumes every adclick pod mounts: the config and a writable /tmp. */}}
{{- define "adclick.commonVolumes" -}}
- name: config
  configMap:
    name: {{ include "adclick.fullname" . }}-config
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- with .Values.grpcTls.existingSecret }}
- name: grpc-tls
  secret:
    secretName: {{ . }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{- define "adclick.commonVolumeMounts" -}}
- name: config
  mountPath: /etc/adclick
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if .Values.grpcTls.existingSecret }}
- name: grpc-tls
  mountPath: /etc/adclick-grpc-tls
  readOnly: true
{{- end }}
{{- end -}}

{{/* Pod-level settings shared by every workload. */}}
{{- define "adclick.podSpecCommon" -}}
serviceAccountName: {{ include "adclick.serviceAccountName" . }}
automountServiceAccountToken: false
# Service links would put <SERVICE>_PORT variables into the environment; the
# processes need none of them.
enableServiceLinks: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}
