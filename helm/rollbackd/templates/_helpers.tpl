{{/*
Names and labels shared by every template.
*/}}

{{- define "rollbackd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name: RELEASE-rollbackd, or RELEASE when it already contains the chart name.
*/}}
{{- define "rollbackd.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "rollbackd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "rollbackd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rollbackd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "rollbackd.labels" -}}
helm.sh/chart: {{ include "rollbackd.chart" . }}
{{ include "rollbackd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: controller
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "rollbackd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "rollbackd.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "rollbackd.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "rollbackd.leaseName" -}}
{{- default (include "rollbackd.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/*
Whether the daemon keeps the operators' switches (freeze, dry-run, holds, ...) in a ConfigMap
(config.safety.switches, as rollbackd decides it): kubernetes, or auto without a PostgreSQL store
while leader election runs (each replica's SQLite file is its own). "true" or "false".
*/}}
{{- define "rollbackd.switchesInKubernetes" -}}
{{- $config := .Values.config | default dict }}
{{- $mode := dig "safety" "switches" "auto" $config | toString }}
{{- $url := dig "store" "url" "" $config | toString }}
{{- $postgres := or .Values.credentials.database.existingSecret (hasPrefix "postgres" $url) (contains "=" $url) }}
{{- if eq $mode "kubernetes" }}true
{{- else if and (eq $mode "auto") (not $postgres) .Values.leaderElection.enabled }}true
{{- else }}false
{{- end }}
{{- end }}

{{/*
The ConfigMap of the switches: config.safety.switches_configmap, else <lease name>-switches (the
daemon's default, in the release namespace where the Lease is).
*/}}
{{- define "rollbackd.switchesConfigMap" -}}
{{- $config := .Values.config | default dict }}
{{- dig "safety" "switches_configmap" "" $config | default (printf "%s-switches" (include "rollbackd.leaseName" .)) }}
{{- end }}

{{/*
The daemon's HTTP port: config.http.port (the container port, probes and Service target).
*/}}
{{- define "rollbackd.httpPort" -}}
{{- $http := .Values.config.http | default dict }}
{{- if hasKey $http "port" }}{{ $http.port | int }}{{ else }}8080{{ end }}
{{- end }}

{{/*
Where the configuration file is mounted, and its name in the ConfigMap.
*/}}
{{- define "rollbackd.configDir" -}}/etc/rollbackd{{- end }}
{{- define "rollbackd.configFile" -}}rollbackd.yaml{{- end }}
{{- define "rollbackd.dataDir" -}}/var/lib/rollbackd{{- end }}
{{- define "rollbackd.secretsDir" -}}/var/run/secrets/rollbackd{{- end }}

{{/*
The configuration file: config, with each webhook of config.events.webhooks that has a
credentials.webhooks entry of the same name (and no secret of its own) pointed at the mounted
signing secret (secret_file).
*/}}
{{- define "rollbackd.config" -}}
{{- $config := deepCopy (.Values.config | default dict) }}
{{- $secretsDir := include "rollbackd.secretsDir" . }}
{{- $events := get $config "events" | default dict }}
{{- $hooks := get $events "webhooks" | default list }}
{{- range $credential := .Values.credentials.webhooks }}
{{- $found := false }}
{{- range $hook := $hooks }}
{{- if eq (toString $hook.name) $credential.name }}
{{- $found = true }}
{{- if not (or $hook.secret_env $hook.secret_file) }}
{{- $_ := set $hook "secret_file" (printf "%s/webhooks/%s/%s" $secretsDir $credential.name $credential.key) }}
{{- end }}
{{- end }}
{{- end }}
{{- if not $found }}
{{- fail (printf "credentials.webhooks: there is no webhook named %q in config.events.webhooks to give its secret to" $credential.name) }}
{{- end }}
{{- end }}
{{- $gitops := get $config "gitops" | default dict }}
{{- if and (hasKey $gitops "mode") (ne (toString $gitops.mode) .Values.gitops.mode) }}
{{- fail (printf "config.gitops.mode is %q but gitops.mode is %q: set gitops.mode only (the chart grants the rights that mode needs and writes it into the configuration)" (toString $gitops.mode) .Values.gitops.mode) }}
{{- end }}
{{- $_ := set $gitops "mode" .Values.gitops.mode }}
{{- $_ = set $config "gitops" $gitops }}
{{- toYaml $config }}
{{- end }}

{{/*
The rules a rollback needs in a watched namespace, and no more: read Deployments and roll them
back (undo, scale), read ReplicaSets (revision history), switch Services (blue-green) and
Ingresses (canary weight), read EndpointSlices (availability), and report through Events.
*/}}
{{- define "rollbackd.targetRules" -}}
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "patch"]
- apiGroups: ["apps"]
  resources: ["deployments/scale"]
  verbs: ["patch"]
- apiGroups: ["apps"]
  resources: ["replicasets"]
  verbs: ["list"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "patch"]
{{- if has "ingress-nginx" .Values.rbac.routers }}
- apiGroups: ["networking.k8s.io"]
  resources: ["ingresses"]
  verbs: ["get", "patch"]
{{- end }}
{{- if has "gateway-api" .Values.rbac.routers }}
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes", "grpcroutes"]
  verbs: ["get", "patch"]
{{- end }}
{{- if has "istio" .Values.rbac.routers }}
- apiGroups: ["networking.istio.io"]
  resources: ["virtualservices"]
  verbs: ["get", "patch"]
{{- end }}
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["list"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- if .Values.rbac.configMaps }}
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}
{{- if .Values.rbac.argoRollouts }}
- apiGroups: ["argoproj.io"]
  resources: ["rollouts"]
  verbs: ["get"]
- apiGroups: ["argoproj.io"]
  resources: ["rollouts/status"]
  verbs: ["patch"]
{{- end }}
{{- end }}

{{/*
Opt-in by annotation (config.discovery): whether it is on, the namespaces whose Deployments may opt
in, and whether every namespace is watched.
*/}}
{{- define "rollbackd.discovery" -}}
{{- $discovery := dig "discovery" dict (.Values.config | default dict) }}
{{- dict "enabled" ($discovery.enabled | default false) "namespaces" ($discovery.namespaces | default list) "all" ($discovery.all_namespaces | default false) | toJson }}
{{- end }}

{{/*
The GitOps mode the chart grants rights for: gitops.mode, or a stronger one a target asks for
(suspend needs more than refuse, refuse more than ignore).
*/}}
{{- define "rollbackd.gitopsMode" -}}
{{- $mode := .Values.gitops.mode }}
{{- range .Values.config.targets | default list }}
{{- if eq (toString .gitops) "suspend" }}
{{- $mode = "suspend" }}
{{- else if and (eq (toString .gitops) "refuse") (eq $mode "ignore") }}
{{- $mode = "refuse" }}
{{- end }}
{{- end }}
{{- $mode }}
{{- end }}

{{/*
Checks of combinations the schema cannot express; a failed one stops the install with a reason.
*/}}
{{- define "rollbackd.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicaCount > 1 needs leaderElection.enabled: without a Lease every replica would roll back on its own" }}
{{- end }}
{{- if and .Values.leaderElection.enabled (gt (mulf .Values.leaderElection.renewPeriodS 3) (float64 .Values.leaderElection.leaseDurationS)) }}
{{- fail "leaderElection.renewPeriodS must be at most leaderElection.leaseDurationS / 3: a leader needs two renewal attempts before its Lease lapses" }}
{{- end }}
{{- if and .Values.persistence.enabled (gt (int .Values.replicaCount) 1) }}
{{- fail "persistence.enabled keeps one SQLite file, which replicas cannot share: use replicaCount 1, or credentials.database (PostgreSQL) without persistence" }}
{{- end }}
{{- $dataDir := dig "store" "data_dir" (include "rollbackd.dataDir" .) (.Values.config | default dict) }}
{{- if ne $dataDir (include "rollbackd.dataDir" .) }}
{{- fail (printf "config.store.data_dir must be %s, the writable volume of the pod (the root filesystem is read-only), not %q" (include "rollbackd.dataDir" .) $dataDir) }}
{{- end }}
{{- $port := include "rollbackd.httpPort" . | int }}
{{- if or (lt $port 1) (gt $port 65535) }}
{{- fail "config.http.port must be a fixed port between 1 and 65535 in a pod (0 would pick a random one that no probe or Service could find)" }}
{{- end }}
{{- $prom := .Values.credentials.prometheus }}
{{- $authorizations := list }}
{{- if $prom.bearerToken.existingSecret }}{{ $authorizations = append $authorizations "bearerToken" }}{{ end }}
{{- if $prom.serviceAccountToken }}{{ $authorizations = append $authorizations "serviceAccountToken" }}{{ end }}
{{- if $prom.basicAuth.existingSecret }}{{ $authorizations = append $authorizations "basicAuth" }}{{ end }}
{{- if gt (len $authorizations) 1 }}
{{- fail (printf "credentials.prometheus: %s all set the Authorization header; keep one" (join ", " $authorizations)) }}
{{- end }}
{{- if $prom.tls.existingSecret }}
{{- $url := dig "prometheus" "url" "" (.Values.config | default dict) }}
{{- if not (hasPrefix "https://" $url) }}
{{- fail (printf "credentials.prometheus.tls applies to an https:// URL, and config.prometheus.url is %q: write it with https://" $url) }}
{{- end }}
{{- if ne (empty $prom.tls.certKey) (empty $prom.tls.keyKey) }}
{{- fail "credentials.prometheus.tls: give certKey and keyKey together (a client certificate and its key), or neither" }}
{{- end }}
{{- end }}
{{- if and .Values.rbac.create (not .Values.rbac.configMaps) }}
{{- range .Values.config.targets | default list }}
{{- if eq (.strategy | default "") "config" }}
{{- fail (printf "config.targets: %s/%s has strategy config, but rbac.configMaps is false: rollbackd could not keep the versions of its ConfigMaps or restore them (set rbac.configMaps: true)" (.namespace | default "default") (.name | default "?")) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and .Values.rbac.create (not .Values.rbac.argoRollouts) }}
{{- range .Values.config.targets | default list }}
{{- if eq (.strategy | default "") "argo-rollout" }}
{{- fail (printf "config.targets: %s/%s has strategy argo-rollout, but rbac.argoRollouts is false: rollbackd could not read or abort its Rollout (set rbac.argoRollouts: true)" (.namespace | default "default") (.name | default "?")) }}
{{- end }}
{{- end }}
{{- end }}
{{- $discovery := include "rollbackd.discovery" . | fromJson }}
{{- if and .Values.rbac.create $discovery.enabled (not .Values.rbac.clusterWide) }}
{{- if $discovery.all }}
{{- fail "config.discovery.all_namespaces watches every namespace, but rbac.clusterWide is false: rollbackd could not roll back what it finds outside rbac.namespaces (set rbac.clusterWide, or list config.discovery.namespaces)" }}
{{- end }}
{{- range $namespace := $discovery.namespaces }}
{{- if not (has $namespace $.Values.rbac.namespaces) }}
{{- fail (printf "config.discovery.namespaces: %q is not in rbac.namespaces: rollbackd could not roll back the releases that opt in there (add it to rbac.namespaces, or set rbac.clusterWide)" $namespace) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and .Values.rbac.create (not .Values.rbac.clusterWide) }}
{{- range .Values.config.targets | default list }}
{{- $namespace := .namespace | default "default" }}
{{- if not (has $namespace $.Values.rbac.namespaces) }}
{{- fail (printf "config.targets: %s/%s is in namespace %q, which is not in rbac.namespaces: rollbackd could not roll it back (add it, or set rbac.clusterWide)" $namespace (.name | default "?") $namespace) }}
{{- end }}
{{- end }}
{{- end }}
{{- if .Values.rbac.create }}
{{- range .Values.config.targets | default list }}
{{- $router := dig "router" "kind" "" . | default (ternary "ingress-nginx" "" (hasKey . "ingress")) }}
{{- if and $router (not (has $router $.Values.rbac.routers)) }}
{{- fail (printf "config.targets: %s/%s routes its canary with %s, which is not in rbac.routers: rollbackd could not abort it (add %s to rbac.routers)" (.namespace | default "default") (.name | default "?") $router $router) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
