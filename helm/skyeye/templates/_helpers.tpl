{{/* Names, labels and the pieces every pod shares. */}}

{{- define "skyeye.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "skyeye.fullname" -}}
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

{{- define "skyeye.selectorLabels" -}}
app.kubernetes.io/name: {{ include "skyeye.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "skyeye.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "skyeye.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: skyeye-stream
{{- end -}}

{{- define "skyeye.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "skyeye.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "skyeye.secretName" -}}
{{- default (include "skyeye.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "skyeye.image" -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}

{{/* The RayService's name; KubeRay names its head Service "<name>-head-svc". */}}
{{- define "skyeye.rayServiceName" -}}
{{- printf "%s-ray" (include "skyeye.fullname" .) | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{/* The database URL made from the parts, sslmode and CA included. */}}
{{- define "skyeye.databaseUrl" -}}
{{- $pg := .Values.postgres -}}
{{- if $pg.url -}}
{{- $pg.url -}}
{{- else -}}
{{- $query := printf "sslmode=%s" $pg.sslmode -}}
{{- if $pg.caSecret -}}
{{- $query = printf "%s&sslrootcert=/etc/skyeye/postgres-ca/%s" $query $pg.caKey -}}
{{- end -}}
{{- printf "postgresql+psycopg2://%s:%s@%s:%v/%s?%s" (urlquery $pg.username) (urlquery $pg.password) $pg.host $pg.port $pg.database $query -}}
{{- end -}}
{{- end -}}

{{/* Settings and credentials, as every SkyEye container takes them. */}}
{{- define "skyeye.envFrom" -}}
- configMapRef:
    name: {{ include "skyeye.fullname" . }}
- secretRef:
    name: {{ include "skyeye.secretName" . }}
{{- end -}}

{{/* Writable scratch (SKYEYE_HOME, caches, Ray's session folder) under a read-only root. */}}
{{- define "skyeye.tmpVolume" -}}
- name: tmp
  emptyDir: {}
{{- with .Values.kafka.tls.caSecret }}
- name: kafka-ca
  secret:
    secretName: {{ . }}
{{- end }}
{{- with .Values.postgres.caSecret }}
- name: postgres-ca
  secret:
    secretName: {{ . }}
{{- end }}
{{- end -}}

{{- define "skyeye.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.kafka.tls.caSecret }}
- name: kafka-ca
  mountPath: /etc/skyeye/kafka-ca
  readOnly: true
{{- end }}
{{- if .Values.postgres.caSecret }}
- name: postgres-ca
  mountPath: /etc/skyeye/postgres-ca
  readOnly: true
{{- end }}
{{- end -}}

{{/* Scheduling of one service: nodeSelector, tolerations, affinity. */}}
{{- define "skyeye.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Pod-level settings of every CPU pod. */}}
{{- define "skyeye.podSpecCommon" -}}
serviceAccountName: {{ include "skyeye.serviceAccountName" . }}
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}
