{{- define "ato.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ato.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "ato.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "ato.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ato.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ato.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ato.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "ato.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: agent-token-operator
{{- end -}}

{{- define "ato.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ato.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "ato.issuerUrl" -}}
{{- default (printf "https://%s.%s.svc/issuers/builtin" (include "ato.fullname" .) .Release.Namespace) .Values.operator.issuerUrl -}}
{{- end -}}

{{/* Rules the operator needs wherever it serves AgentTokens (a ClusterRole or one Role per namespace). */}}
{{- define "ato.servingRules" -}}
- apiGroups: ["agenttoken.dev"]
  resources: ["agenttokens"]
  # patch: only its own finalizer, agenttoken.dev/revoke-on-delete
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["agenttoken.dev"]
  resources: ["agenttokens/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: [""]
  resources: ["secrets"]
  # the token Secrets it creates and owns (watched by label only); webhook issuer credentials (get)
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["agenttoken.dev"]
  resources: ["tokenissuers"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["agenttoken.dev"]
  resources: ["tokenissuers/status"]
  verbs: ["get", "patch"]
- apiGroups: [""]
  resources: ["serviceaccounts/token"]
  # the `kubernetes` issuer: TokenRequest for the ServiceAccount an issuer names
  verbs: ["create"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets", "daemonsets"]
  # patch: the one pod-template annotation agenttoken.dev/revision.<name>
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: [""]
  resources: ["configmaps"]
  # spec.verify.caBundleRef of kind ConfigMap: the CA bundle for the connectivity check
  verbs: ["get"]
- apiGroups: [""]
  resources: ["pods"]
  # unused-token policy: a fresh look for consumers before flagging, suspending or revoking
  verbs: ["list"]
- apiGroups: ["batch"]
  resources: ["cronjobs"]
  verbs: ["list"]
{{- end -}}
