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
  # unused-token policy: a fresh look for consumers before flagging, suspending or revoking;
  # delivery PerPod: watch and get, to revoke a deleted pod's tokens (controllers.podledger)
  verbs: ["get", "list", "watch"]
- apiGroups: ["batch"]
  resources: ["cronjobs"]
  verbs: ["list"]
{{- end -}}

{{/* Refuse values that would render but not work (the schema cannot compare two values). */}}
{{- define "ato.validateValues" -}}
{{- $le := .Values.leaderElection -}}
{{- if not (gt (float64 $le.leaseDuration) (float64 $le.renewDeadline)) -}}
{{- fail "leaderElection.leaseDuration must exceed leaderElection.renewDeadline (a leader must give up before a standby may take its Lease)" -}}
{{- end -}}
{{- if not (gt (float64 $le.renewDeadline) (mulf $le.retryPeriod 1.2)) -}}
{{- fail "leaderElection.renewDeadline must exceed 1.2 * leaderElection.retryPeriod (room for a retry before the deadline)" -}}
{{- end -}}
{{- $pdb := .Values.podDisruptionBudget -}}
{{- if and $pdb.enabled (gt (int .Values.replicaCount) 1) (not (kindIs "string" $pdb.minAvailable)) -}}
{{- if ge (int $pdb.minAvailable) (int .Values.replicaCount) -}}
{{- fail "podDisruptionBudget.minAvailable must be below replicaCount, or no drain could ever evict an operator pod" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The Lease names of every shard: agenttoken-shard-0 .. agenttoken-shard-<shards-1>. */}}
{{- define "ato.leaseNames" -}}
{{- range $i := until (int .Values.sharding.shards) }}
- agenttoken-shard-{{ $i }}
{{- end }}
{{- end -}}
