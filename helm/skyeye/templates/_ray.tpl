{{/* Pieces of the RayService (rayservice.yaml). */}}

{{- define "skyeye.serveStage" -}}
num_cpus: {{ .numCpus }}
num_gpus: {{ .numGpus }}
min_replicas: {{ .minReplicas }}
max_replicas: {{ .maxReplicas }}
target_ongoing_requests: {{ .targetOngoingRequests }}
max_batch_size: {{ .maxBatchSize }}
batch_wait_timeout_s: {{ .batchWaitTimeoutS }}
{{- /* Serve's own defaults where unset; 0 is a valid delay, hence hasKey */}}
{{- if hasKey . "upscaleDelayS" }}
upscale_delay_s: {{ .upscaleDelayS }}
{{- end }}
{{- if hasKey . "downscaleDelayS" }}
downscale_delay_s: {{ .downscaleDelayS }}
{{- end }}
{{- if hasKey . "lookBackPeriodS" }}
look_back_period_s: {{ .lookBackPeriodS }}
{{- end }}
{{- end -}}

{{- define "skyeye.rayVolumes" -}}
- name: tmp
  emptyDir: {}
# Ray's object store lives in shared memory
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.ray.shmSize }}
{{- if eq .Values.model.source "pvc" }}
- name: model
  persistentVolumeClaim:
    claimName: {{ required "model.pvc.claimName is required with model.source=pvc" .Values.model.pvc.claimName }}
    readOnly: true
{{- else if eq .Values.model.source "objectStore" }}
- name: model
  emptyDir:
    sizeLimit: {{ .Values.model.objectStore.sizeLimit }}
{{- end }}
{{- with .Values.postgres.caSecret }}
- name: postgres-ca
  secret:
    secretName: {{ . }}
{{- end }}
{{- end -}}

{{- define "skyeye.rayMounts" -}}
- name: tmp
  mountPath: /tmp
- name: dshm
  mountPath: /dev/shm
{{- if eq .Values.model.source "pvc" }}
- name: model
  mountPath: {{ printf "%s/%s" .Values.model.mountPath .Values.model.name }}
  {{- with .Values.model.pvc.subPath }}
  subPath: {{ . }}
  {{- end }}
  readOnly: true
{{- else if eq .Values.model.source "objectStore" }}
- name: model
  mountPath: {{ .Values.model.mountPath }}
{{- end }}
{{- if .Values.postgres.caSecret }}
- name: postgres-ca
  mountPath: /etc/skyeye/postgres-ca
  readOnly: true
{{- end }}
{{- end -}}

{{- /* the model copied from the object store before Ray starts (model.source=objectStore) */ -}}
{{- define "skyeye.modelInit" -}}
initContainers:
  - name: fetch-model
    image: {{ include "skyeye.image" .Values.images.mc }}
    imagePullPolicy: {{ .Values.images.mc.pullPolicy }}
    command: ["/bin/sh", "-ec"]
    args:
      - >-
        mc alias set src "{{ ternary "https" "http" .Values.s3.secure }}://$SKYEYE_S3_ENDPOINT"
        "$SKYEYE_S3_ACCESS_KEY" "$SKYEYE_S3_SECRET_KEY" &&
        mc mirror --overwrite "src/{{ required "model.objectStore.path is required with model.source=objectStore" .Values.model.objectStore.path | trimSuffix "/" }}/"
        "{{ .Values.model.mountPath }}/{{ .Values.model.name }}/"
    env:
      - name: MC_CONFIG_DIR
        value: /tmp/.mc
    envFrom:
      {{- include "skyeye.envFrom" . | nindent 6 }}
    resources:
      requests: {cpu: 500m, memory: 256Mi}
      limits: {memory: 1Gi}
    securityContext:
      {{- toYaml .Values.ray.securityContext | nindent 6 }}
    volumeMounts:
      - name: tmp
        mountPath: /tmp
      - name: model
        mountPath: {{ .Values.model.mountPath }}
{{- end -}}

{{- define "skyeye.rayPodCommon" -}}
serviceAccountName: {{ include "skyeye.serviceAccountName" . }}
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  runAsNonRoot: true
  fsGroup: {{ .Values.ray.securityContext.runAsGroup }}
  seccompProfile:
    type: RuntimeDefault
{{- end -}}

{{- define "skyeye.rayEnv" -}}
env:
  - name: OTEL_SERVICE_NAME
    value: skyeye-inference
  # Ray's and torch's caches under the writable /tmp
  - name: XDG_CACHE_HOME
    value: /tmp/.cache
envFrom:
  {{- include "skyeye.envFrom" . | nindent 2 }}
image: {{ include "skyeye.image" .Values.images.ray }}
imagePullPolicy: {{ .Values.images.ray.pullPolicy }}
securityContext:
  {{- toYaml .Values.ray.securityContext | nindent 2 }}
volumeMounts:
  {{- include "skyeye.rayMounts" . | nindent 2 }}
{{- end -}}
