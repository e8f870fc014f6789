{{/* Names. */}}
{{- define "kyma.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kyma.fullname" -}}
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

{{- define "kyma.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "kyma.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kyma
{{- end -}}

{{/* Selector labels of one component: include "kyma.selectorLabels" (list . "query-node") */}}
{{- define "kyma.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "kyma.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "kyma.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kyma.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kyma.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The catalog URL: etcd://HOST:PORT[,HOST:PORT]/PREFIX */}}
{{- define "kyma.catalog" -}}
{{- $endpoints := list -}}
{{- if .Values.etcd.bundled -}}
{{- $etcd := printf "%s-etcd" (include "kyma.fullname" .) -}}
{{- range $i := until (int .Values.etcd.replicas) -}}
{{- $endpoints = append $endpoints (printf "%s-%d.%s.%s.svc:2379" $etcd $i $etcd $.Release.Namespace) -}}
{{- end -}}
{{- else -}}
{{- if not .Values.etcd.endpoints -}}
{{- fail "etcd.bundled is false: set etcd.endpoints to the HOST:PORT of each member of your etcd" -}}
{{- end -}}
{{- $endpoints = .Values.etcd.endpoints -}}
{{- end -}}
{{- printf "etcd://%s/%s" (join "," $endpoints) (trimPrefix "/" .Values.etcd.prefix) -}}
{{- end -}}

{{/* Secret names ("" when the feature is off). */}}
{{- define "kyma.authSecretName" -}}
{{- if .Values.auth.existingSecret -}}
{{- .Values.auth.existingSecret -}}
{{- else if .Values.auth.token -}}
{{- printf "%s-auth" (include "kyma.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "kyma.s3SecretName" -}}
{{- $c := .Values.objectStore.credentials -}}
{{- if $c.existingSecret -}}
{{- $c.existingSecret -}}
{{- else if or $c.accessKeyId $c.secretAccessKey -}}
{{- printf "%s-object-store" (include "kyma.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "kyma.connectorSecretName" -}}
{{- default (printf "%s-connector-secrets" (include "kyma.fullname" .)) .Values.connectorSecrets.existingSecret -}}
{{- end -}}

{{- define "kyma.tlsSecretName" -}}
{{- if .Values.tls.enabled -}}
{{- required "tls.enabled is true: set tls.secretName to a kubernetes.io/tls Secret" .Values.tls.secretName -}}
{{- end -}}
{{- end -}}

{{/* A memory quantity in MiB (Ki, Mi, Gi, Ti, k, M, G, T or bytes); -1 when not understood. */}}
{{- define "kyma.mebibytes" -}}
{{- $q := toString . -}}
{{- $units := dict "Ki" (divf 1.0 1024) "Mi" 1.0 "Gi" 1024.0 "Ti" 1048576.0 "k" (divf 1000.0 1048576) "M" (divf 1000000.0 1048576) "G" (divf 1000000000.0 1048576) "T" (divf 1000000000000.0 1048576) -}}
{{- $mib := -1.0 -}}
{{- if regexMatch "^[0-9]+(\\.[0-9]+)?$" $q -}}
{{- $mib = divf (float64 $q) 1048576 -}}
{{- else -}}
{{- range $unit, $factor := $units -}}
{{- if regexMatch (printf "^[0-9]+(\\.[0-9]+)?%s$" $unit) $q -}}
{{- $mib = mulf (float64 (trimSuffix $unit $q)) $factor -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $mib -}}
{{- end -}}

{{/* A TOML file from a dict: one `key = value` line per entry, keys sorted. */}}
{{- define "kyma.toml" -}}
{{- $lines := list -}}
{{- range $key, $value := . -}}
{{- if not (kindIs "invalid" $value) -}}
{{- $lines = append $lines (printf "%s = %s" $key (toJson $value)) -}}
{{- end -}}
{{- end -}}
{{- join "\n" $lines -}}
{{- end -}}

{{/* Settings both processes read. */}}
{{- define "kyma.commonConfig" -}}
{{- $cfg := dict
  "catalog" (include "kyma.catalog" .)
  "store" .Values.objectStore.url
  "http-addr" "0.0.0.0:8080"
  "log-format" .Values.logFormat
  "secrets-dir" "/var/run/secrets/kyma" -}}
{{- if .Values.objectStore.endpoint -}}
{{- $_ := set $cfg "s3-endpoint" .Values.objectStore.endpoint -}}
{{- end -}}
{{- toJson $cfg -}}
{{- end -}}

{{- define "kyma.queryNodeConfig" -}}
{{- $cfg := include "kyma.commonConfig" . | fromJson -}}
{{- $q := .Values.queryNode -}}
{{- $_ := set $cfg "grpc-addr" "0.0.0.0:50051" -}}
{{- $_ = set $cfg "federation-pushdown" $q.federationPushdown -}}
{{- $_ = set $cfg "extent-cache-mb" (int64 $q.extentCacheMb) -}}
{{- $_ = set $cfg "extent-cache-max-object-mb" (int64 $q.extentCacheMaxObjectMb) -}}
{{- $_ = set $cfg "column-cache-mb" (int64 $q.columnCacheMb) -}}
{{- if .Values.tls.enabled -}}
{{- $_ = set $cfg "tls-cert" "/etc/kyma/tls/tls.crt" -}}
{{- $_ = set $cfg "tls-key" "/etc/kyma/tls/tls.key" -}}
{{- end -}}
{{- toJson (mustMergeOverwrite $cfg (deepCopy $q.extraConfig)) -}}
{{- end -}}

{{- define "kyma.cdcWorkerConfig" -}}
{{- $cfg := include "kyma.commonConfig" . | fromJson -}}
{{- $w := .Values.cdcWorker -}}
{{- $_ := set $cfg "lease-ttl-secs" (int64 $w.leaseTtlSecs) -}}
{{- $_ = set $cfg "compact-after-extents" (int64 $w.compactAfterExtents) -}}
{{- $_ = set $cfg "key-index-max-keys" (int64 $w.keyIndexMaxKeys) -}}
{{- toJson (mustMergeOverwrite $cfg (deepCopy $w.extraConfig)) -}}
{{- end -}}

{{- define "kyma.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "kyma.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop:
    - ALL
{{- end -}}

{{/* Pod annotations: Prometheus scraping and a checksum of the config so changes roll the pods. */}}
{{- define "kyma.podAnnotations" -}}
{{- $root := index . 0 -}}
{{- $extra := index . 1 -}}
checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
{{- if $root.Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: "8080"
prometheus.io/path: /metrics
{{- end }}
{{- with $extra }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Environment of every kyma container: object store credentials, region, extra env. */}}
{{- define "kyma.env" -}}
{{- $root := index . 0 -}}
{{- $extra := index . 1 -}}
{{- $s3 := include "kyma.s3SecretName" $root -}}
{{- if $s3 }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ $s3 }}
      key: {{ $root.Values.objectStore.credentials.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $s3 }}
      key: {{ $root.Values.objectStore.credentials.secretAccessKeyKey }}
{{- end }}
{{- with $root.Values.objectStore.region }}
- name: AWS_REGION
  value: {{ . | quote }}
{{- end }}
{{- with $root.Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- with $extra }}
{{ toYaml . }}
{{- end }}
{{- end -}}
