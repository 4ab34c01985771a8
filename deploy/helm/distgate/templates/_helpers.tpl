{{/* The distgate image. */}}
{{- define "distgate.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/*
The pod securityContext distgate's pods run with: non-root, RuntimeDefault seccomp,
and UID/GID 65532 unless on OpenShift.
*/}}
{{- define "distgate.podSecurityContext" -}}
{{- if not .Values.openshift }}
runAsGroup: 65532
{{- end }}
runAsNonRoot: true
{{- if not .Values.openshift }}
runAsUser: 65532
{{- end }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
distgate as a native sidecar (Kubernetes 1.29+), to put under an app pod's
initContainers:
  initContainers:
    {{- include "distgate.sidecar" . | nindent 4 }}
with "distgate.volumes" under its volumes and "distgate.config" (or this chart)
providing the ConfigMap. The app container sets ERL_AFLAGS="-start_epmd false".
*/}}
{{- define "distgate.sidecar" -}}
- args:
  - --config
  - /etc/distgate/distgate.toml
  - --log-format
  - json
  image: {{ include "distgate.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  livenessProbe:
    httpGet:
      path: /livez
      port: admin
    periodSeconds: 10
  name: distgate
  ports:
  - containerPort: 4369
    name: epmd
  - containerPort: 43691
    name: dist
  - containerPort: 9369
    name: admin
  readinessProbe:
    httpGet:
      path: /readyz
      port: admin
    periodSeconds: 5
  resources:
    {{- toYaml .Values.sidecar.resources | nindent 4 }}
  restartPolicy: Always
  securityContext:
    allowPrivilegeEscalation: false
    capabilities:
      drop:
      - ALL
    readOnlyRootFilesystem: true
    runAsNonRoot: true
  startupProbe:
    failureThreshold: 30
    httpGet:
      path: /readyz
      port: admin
    periodSeconds: 1
  volumeMounts:
  - mountPath: /etc/distgate
    name: distgate-config
    readOnly: true
{{- end -}}

{{/* The sidecar's volume, for the app pod's volumes. */}}
{{- define "distgate.volumes" -}}
- configMap:
    name: distgate-sidecar
  name: distgate-config
{{- end -}}

{{/* The sidecar's ConfigMap distgate-sidecar. */}}
{{- define "distgate.config" -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: distgate-sidecar
  labels:
    app.kubernetes.io/managed-by: {{ .Release.Service }}
    app.kubernetes.io/part-of: distgate
data:
  distgate.toml: |
    {{- .Values.sidecar.config | default (.Files.Get "files/sidecar.toml") | nindent 4 }}
{{- end -}}
