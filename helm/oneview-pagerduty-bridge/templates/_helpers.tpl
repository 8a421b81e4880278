{{/* Chart name, truncated to the 63 characters a label allows. */}}
{{- define "bridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Prefix of every resource name. */}}
{{- define "bridge.fullname" -}}
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

{{- define "bridge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Standard labels on every object. */}}
{{- define "bridge.labels" -}}
helm.sh/chart: {{ include "bridge.chart" . }}
{{ include "bridge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: oneview-pagerduty-bridge
{{- end }}

{{- define "bridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of one role: include "bridge.componentLabels" (list . "poller") */}}
{{- define "bridge.componentLabels" -}}
{{ include "bridge.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "bridge.componentSelectorLabels" -}}
{{ include "bridge.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "bridge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "bridge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "bridge.secretName" -}}
{{- default (include "bridge.fullname" .) .Values.secrets.name }}
{{- end }}

{{- define "bridge.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Grace period of a role: explicit, or shutdown + drain + 10s. */}}
{{- define "bridge.gracePeriod" -}}
{{- $ctx := index . 0 }}
{{- $explicit := int (index . 1) }}
{{- $min := add (int $ctx.Values.server.shutdownTimeoutSeconds) (int $ctx.Values.server.drainDelaySeconds) 5 }}
{{- if eq $explicit 0 }}
{{- add $min 5 }}
{{- else if lt $explicit $min }}
{{- fail (printf "terminationGracePeriodSeconds %d must exceed server.shutdownTimeoutSeconds + server.drainDelaySeconds + 5 (%d) or in-flight deliveries are killed" $explicit $min) }}
{{- else }}
{{- $explicit }}
{{- end }}
{{- end }}

{{/* Path of a secret file, by key of .Values.secrets.keys / .files; empty when that secret is
not used (an empty key or file). */}}
{{- define "bridge.secretFile" -}}
{{- $ctx := index . 0 }}
{{- $which := index . 1 }}
{{- if eq $ctx.Values.secrets.mode "files" }}
{{- index $ctx.Values.secrets.files $which | default "" }}
{{- else if (index $ctx.Values.secrets.keys $which) }}
{{- printf "%s/%s" $ctx.Values.secrets.mountPath (index $ctx.Values.secrets.keys $which) }}
{{- end }}
{{- end }}

{{/* `\nkey = "<path>"` for a secret file, or nothing when that secret is not used.
Usage: include "bridge.secretFileLine" (list . "apiTokens" "api_tokens_file") */}}
{{- define "bridge.secretFileLine" -}}
{{- $path := include "bridge.secretFile" (list (index . 0) (index . 1)) }}
{{- if $path }}
{{ index . 2 }} = {{ $path | toJson }}
{{- end }}
{{- end }}

{{/* "true" when the state is in PostgreSQL (several pollers, one leading), else "". */}}
{{- define "bridge.postgres" -}}
{{- if eq ((.Values.config.state | default dict).backend | default "file") "postgres" }}true{{ end }}
{{- end }}

{{/* The Secret keys a web replica mounts: the poller token, API tokens, webhook secrets, and
with the postgres backend the state database URL (to find the leader in the lease row). */}}
{{- define "bridge.webSecretKeys" -}}
{{- $k := .Values.secrets.keys }}
{{- $which := list "pollerToken" "apiTokens" "webhookSecrets" }}
{{- if include "bridge.postgres" . }}
{{- $which = append $which "stateUrl" }}
{{- end }}
{{- range $which }}
{{- with index $k . }}
- key: {{ . }}
  path: {{ . }}
{{- end }}
{{- end }}
{{- end }}

{{/* The poller's internal API, as web replicas reach it (web.poller_url). */}}
{{- define "bridge.pollerUrl" -}}
{{- printf "http://%s-poller:%d" (include "bridge.fullname" .) (int .Values.server.port) }}
{{- end }}

{{/*
One TOML table from a map: scalars and lists as `key = <json>` (JSON strings, numbers, booleans
and arrays are valid TOML), empty strings and empty maps left out (the bridge's default
applies), nested maps as sub-tables.
Usage: include "bridge.tomlTable" (list "pagerduty" $map ["\nextra = 1"])
*/}}
{{- define "bridge.tomlTable" -}}
{{- $name := index . 0 }}
{{- $m := index . 1 -}}
[{{ $name }}]
{{- range $k, $v := $m }}
{{- if kindIs "map" $v }}
{{- else if and (kindIs "string" $v) (eq $v "") }}
{{- else }}
{{ $k }} = {{ toJson $v }}
{{- end }}
{{- end }}
{{- if gt (len .) 2 }}
{{- /* Chart-managed keys of this table, before any sub-table starts. */}}
{{- index . 2 }}
{{- end }}
{{- range $k, $v := $m }}
{{- if and (kindIs "map" $v) (gt (len $v) 0) }}

{{ include "bridge.tomlTable" (list (printf "%s.%s" $name $k) $v) }}
{{- end }}
{{- end }}
{{- end }}

{{/* [server], [web], [sync] and [log], in both roles' TOML; the secret files differ by role:
web replicas hold the API tokens, both hold the poller token.
Usage: include "bridge.tomlCommon" (list . "web") */}}
{{- define "bridge.tomlCommon" -}}
{{- $ctx := index . 0 }}
{{- $role := index . 1 }}
{{- $v := $ctx.Values }}
{{- $server := printf "\nlisten = %s\nshutdown_timeout = %s\ndrain_delay = %s" (printf "0.0.0.0:%d" (int $v.server.port) | toJson) (printf "%ds" (int $v.server.shutdownTimeoutSeconds) | toJson) (printf "%ds" (int $v.server.drainDelaySeconds) | toJson) }}
{{- if eq $role "web" }}
{{- $server = printf "%s%s" $server (include "bridge.secretFileLine" (list $ctx "apiTokens" "api_tokens_file")) }}
{{- end }}
{{- $web := "" }}
{{- /* With postgres a web replica finds the leader in the lease row: no fixed poller_url. */}}
{{- if and (eq $role "web") (not (include "bridge.postgres" $ctx)) }}
{{- $web = printf "\npoller_url = %s" (include "bridge.pollerUrl" $ctx | toJson) }}
{{- end }}
{{- $web = printf "%s%s" $web (include "bridge.secretFileLine" (list $ctx "pollerToken" "poller_token_file")) -}}
{{ include "bridge.tomlTable" (list "server" ($v.config.server | default dict) $server) }}

{{ include "bridge.tomlTable" (list "web" ($v.config.web | default dict) $web) }}

{{ include "bridge.tomlTable" (list "sync" ($v.config.sync | default dict)) }}

{{ include "bridge.tomlTable" (list "log" $v.config.log) }}
{{- end }}

{{/* The web replicas' TOML: no OneView or PagerDuty credentials, only the webhook secrets. */}}
{{- define "bridge.webToml" -}}
{{- $wh := include "bridge.secretFileLine" (list . "webhookSecrets" "webhook_secrets_file") }}
{{- if $wh -}}
{{ include "bridge.tomlTable" (list "pagerduty" dict $wh) }}

{{ end -}}
{{- if include "bridge.postgres" . -}}
{{ include "bridge.tomlTable" (list "state" (omit .Values.config.state "retention") (include "bridge.stateDbLines" .)) }}

{{ end -}}
{{ include "bridge.tomlCommon" (list . "web") }}
{{- end }}

{{/* `\nurl_file = ...` and, with stateCA, `\nca_file = ...` of [state] (backend postgres, both roles). */}}
{{- define "bridge.stateDbLines" -}}
{{- include "bridge.secretFileLine" (list . "stateUrl" "url_file") }}
{{- if or .Values.stateCA.configMap .Values.stateCA.secret }}
ca_file = {{ printf "/etc/oneview-pagerduty-bridge/state-ca/%s" .Values.stateCA.key | toJson }}
{{- end }}
{{- end }}

{{/* The volume of the state database's CA (stateCA), when set. */}}
{{- define "bridge.stateCAVolume" -}}
{{- if .Values.stateCA.secret }}
- name: state-ca
  secret:
    secretName: {{ .Values.stateCA.secret }}
    defaultMode: 0444
    items:
      - key: {{ .Values.stateCA.key }}
        path: {{ .Values.stateCA.key }}
{{- else if .Values.stateCA.configMap }}
- name: state-ca
  configMap:
    name: {{ .Values.stateCA.configMap }}
    items:
      - key: {{ .Values.stateCA.key }}
        path: {{ .Values.stateCA.key }}
{{- end }}
{{- end }}

{{/* podAntiAffinity over nodes for one role: include "bridge.podAntiAffinity" (list . "web" "soft") */}}
{{- define "bridge.podAntiAffinity" -}}
{{- $ctx := index . 0 }}
{{- $role := index . 1 }}
{{- if eq (index . 2) "hard" }}
requiredDuringSchedulingIgnoredDuringExecution:
  - topologyKey: kubernetes.io/hostname
    labelSelector:
      matchLabels:
        {{- include "bridge.componentSelectorLabels" (list $ctx $role) | nindent 8 }}
{{- else }}
preferredDuringSchedulingIgnoredDuringExecution:
  - weight: 100
    podAffinityTerm:
      topologyKey: kubernetes.io/hostname
      labelSelector:
        matchLabels:
          {{- include "bridge.componentSelectorLabels" (list $ctx $role) | nindent 10 }}
{{- end }}
{{- end }}

{{/* Pod-level checkov annotations shared by both Deployments. */}}
{{- define "bridge.checkovSkips" -}}
checkov.io/skip1: CKV_K8S_43=The digest is a value (image.digest); the default tag follows appVersion so a chart release pins the image
checkov.io/skip2: CKV_K8S_15=pullPolicy IfNotPresent is deliberate with immutable version tags or digests; Always adds a registry round trip per pod start
{{- end }}

{{/* Pod annotations: config checksum (roll on change) + shared and role annotations.
Usage: include "bridge.podAnnotations" (list . .Values.poller.podAnnotations) */}}
{{- define "bridge.podAnnotations" -}}
{{- $ctx := index . 0 -}}
checksum/config: {{ include (print $ctx.Template.BasePath "/configmap.yaml") $ctx | sha256sum }}
{{- with merge (deepCopy (index . 1)) $ctx.Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Whether a role's pods mount the ServiceAccount token: include "bridge.automount" (list . "web") */}}
{{- define "bridge.automount" -}}
{{- $ctx := index . 0 -}}
{{- $own := (index $ctx.Values (index . 1)).automountServiceAccountToken -}}
{{- if kindIs "bool" $own -}}
{{- $own -}}
{{- else -}}
{{- $ctx.Values.serviceAccount.automountToken -}}
{{- end -}}
{{- end }}

{{/* The bridge container of one role: include "bridge.container" (list . "poller" $extraEnv $resources) */}}
{{- define "bridge.container" -}}
{{- $ctx := index . 0 }}
{{- $role := index . 1 }}
- name: bridge
  image: {{ include "bridge.image" $ctx }}
  imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
  args: ["run", "--role", "{{ $role }}", "--config", "/etc/oneview-pagerduty-bridge/{{ $role }}.toml"]
  ports:
    - name: http
      containerPort: {{ $ctx.Values.server.port }}
      protocol: TCP
  {{- $env := list }}
  {{- if and (eq $role "poller") (include "bridge.postgres" $ctx) }}
  {{- /* The lease row names a real pod (standbys show it) and where the web replicas reach it:
  the pod IP, since a Service would also select the standbys, which are ready too. */}}
  {{- $env = list
    (dict "name" "BRIDGE_LEASE__HOLDER" "valueFrom" (dict "fieldRef" (dict "fieldPath" "metadata.name")))
    (dict "name" "POD_IP" "valueFrom" (dict "fieldRef" (dict "fieldPath" "status.podIP")))
    (dict "name" "BRIDGE_LEASE__ADVERTISE_URL" "value" (printf "http://$(POD_IP):%d" (int $ctx.Values.server.port))) }}
  {{- end }}
  {{- $env = concat $env (index . 2 | default list) }}
  {{- with $env }}
  env:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  startupProbe:
    httpGet:
      path: /health
      port: http
    periodSeconds: {{ $ctx.Values.probes.startup.periodSeconds }}
    failureThreshold: {{ $ctx.Values.probes.startup.failureThreshold }}
    timeoutSeconds: {{ $ctx.Values.probes.startup.timeoutSeconds }}
  livenessProbe:
    httpGet:
      path: /health
      port: http
    periodSeconds: {{ $ctx.Values.probes.liveness.periodSeconds }}
    failureThreshold: {{ $ctx.Values.probes.liveness.failureThreshold }}
    timeoutSeconds: {{ $ctx.Values.probes.liveness.timeoutSeconds }}
  readinessProbe:
    httpGet:
      path: /ready
      port: http
    periodSeconds: {{ $ctx.Values.probes.readiness.periodSeconds }}
    failureThreshold: {{ $ctx.Values.probes.readiness.failureThreshold }}
    timeoutSeconds: {{ $ctx.Values.probes.readiness.timeoutSeconds }}
  resources:
    {{- toYaml (index . 3) | nindent 4 }}
  securityContext:
    {{- toYaml $ctx.Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: config
      mountPath: /etc/oneview-pagerduty-bridge
      readOnly: true
    - name: tmp
      mountPath: /tmp
    {{- if and (include "bridge.postgres" $ctx) (or $ctx.Values.stateCA.configMap $ctx.Values.stateCA.secret) }}
    - name: state-ca
      mountPath: /etc/oneview-pagerduty-bridge/state-ca
      readOnly: true
    {{- end }}
    {{- if eq $role "poller" }}
    {{- if not (include "bridge.postgres" $ctx) }}
    - name: state
      mountPath: {{ $ctx.Values.poller.persistence.mountPath }}
    {{- end }}
    {{- if ne $ctx.Values.secrets.mode "files" }}
    - name: secrets
      mountPath: {{ $ctx.Values.secrets.mountPath }}
      readOnly: true
    {{- end }}
    {{- if $ctx.Values.oneviewCA.configMap }}
    - name: oneview-ca
      mountPath: /etc/oneview-pagerduty-bridge/ca
      readOnly: true
    {{- end }}
    {{- if include "bridge.scmbRendered" $ctx }}
    {{- include "bridge.scmbVolumeMounts" $ctx | nindent 4 }}
    {{- end }}
    {{- else if ne $ctx.Values.secrets.mode "files" }}
    - name: secrets
      mountPath: {{ $ctx.Values.secrets.mountPath }}
      readOnly: true
    {{- end }}
{{- end }}

{{/* Egress to the cluster DNS (NetworkPolicy rule). */}}
{{- define "bridge.npDNS" -}}
- to:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: {{ .namespace }}
      podSelector:
        matchLabels:
          {{- toYaml .podLabels | nindent 10 }}
  ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- end }}

{{/* Egress to the state database (NetworkPolicy rule), like the OneView egress: CIDRs on a port,
plus peers for an in-cluster database. */}}
{{- define "bridge.npDatabase" -}}
- to:
    {{- range .databaseCIDRs }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
    {{- with .databasePeers }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - port: {{ .databasePort }}
      protocol: TCP
{{- end }}

{{/* "true" when the poller's TOML gets a [scmb] table (and the poller the SCMB PEM volumes):
the bus is on by default, or an appliance has scmb settings of its own. Off everywhere, nothing
is rendered, so the TOML is what it was before the chart knew SCMB. */}}
{{- define "bridge.scmbRendered" -}}
{{- $on := (.Values.scmb | default dict).enabled }}
{{- range .Values.config.appliances }}
{{- if .scmb }}{{ $on = true }}{{ end }}
{{- end }}
{{- if $on }}true{{ end }}
{{- end }}

{{/* The TCP ports of every appliance whose message bus is on, as a JSON list: an appliance's
own scmb.enabled / port win over the top-level scmb; the single [oneview] appliance has the
top-level ones. The poller's NetworkPolicy opens them towards networkPolicy.oneviewCIDRs. */}}
{{- define "bridge.scmbPorts" -}}
{{- $g := .Values.scmb | default dict }}
{{- $ports := list }}
{{- if .Values.config.appliances }}
{{- range .Values.config.appliances }}
{{- $s := .scmb | default dict }}
{{- $on := $g.enabled }}
{{- if hasKey $s "enabled" }}{{ $on = $s.enabled }}{{ end }}
{{- if $on }}
{{- $ports = append $ports (int (hasKey $s "port" | ternary $s.port $g.port)) }}
{{- end }}
{{- end }}
{{- else if $g.enabled }}
{{- $ports = append $ports (int $g.port) }}
{{- end }}
{{- $ports | uniq | toJson }}
{{- end }}

{{/* "true" when some appliance with its bus on takes the [scmb] default of a PEM file
("cert": the client keypair, "ca": the CA), i.e. names none of its own; the single [oneview]
appliance always does. [scmb] names the default file only then: a Secret holding only
per-appliance keys has no tls.crt, and the bridge refuses a *_file that is not there.
Usage: include "bridge.scmbDefaultUsed" (list . "cert") */}}
{{- define "bridge.scmbDefaultUsed" -}}
{{- $ctx := index . 0 }}
{{- $what := index . 1 }}
{{- $g := $ctx.Values.scmb | default dict }}
{{- $used := not $ctx.Values.config.appliances }}
{{- range $ctx.Values.config.appliances }}
{{- $s := .scmb | default dict }}
{{- $on := hasKey $s "enabled" | ternary $s.enabled $g.enabled }}
{{- $own := eq $what "cert" | ternary (or $s.certKey $s.client_cert_file) (or $s.caKey $s.ca_file) }}
{{- if and $on (not $own) }}{{ $used = true }}{{ end }}
{{- end }}
{{- if $used }}true{{ end }}
{{- end }}

{{/* Where the SCMB PEM files are mounted in the poller: the client keypair Secret and the CA. */}}
{{- define "bridge.scmbClientDir" -}}/etc/oneview-pagerduty-bridge/scmb-client{{- end }}
{{- define "bridge.scmbCADir" -}}/etc/oneview-pagerduty-bridge/scmb-ca{{- end }}

{{/* The default key of the SCMB CA (caSecret.key or caConfigMap.key), or "" when the CA is
read over REST. */}}
{{- define "bridge.scmbCAKey" -}}
{{- $s := .Values.scmb | default dict }}
{{- with $s.caSecret }}{{ if .name }}{{ .key }}{{ end }}{{ end }}
{{- with $s.caConfigMap }}{{ if .name }}{{ .key }}{{ end }}{{ end }}
{{- end }}

{{/* The poller's [scmb]: the top-level scmb values under the bridge's key names, plus the
mounted PEM paths. */}}
{{- define "bridge.scmbToml" -}}
{{- $s := .Values.scmb | default dict }}
{{- $m := dict }}
{{- range $from, $to := dict "enabled" "enabled" "port" "port" "pollInterval" "poll_interval" "prefetch" "prefetch" }}
{{- if not (kindIs "invalid" (index $s $from)) }}
{{- $_ := set $m $to (index $s $from) }}
{{- end }}
{{- end }}
{{- $extra := "" }}
{{- $cs := $s.clientCertSecret | default dict }}
{{- if and $cs.name (include "bridge.scmbDefaultUsed" (list . "cert")) }}
{{- $dir := include "bridge.scmbClientDir" . }}
{{- $extra = printf "\nclient_cert_file = %s\nclient_key_file = %s" (printf "%s/%s" $dir $cs.certKey | toJson) (printf "%s/%s" $dir $cs.keyKey | toJson) }}
{{- end }}
{{- with and (include "bridge.scmbDefaultUsed" (list . "ca")) (include "bridge.scmbCAKey" .) }}
{{- $extra = printf "%s\nca_file = %s" $extra (printf "%s/%s" (include "bridge.scmbCADir" $) . | toJson) }}
{{- end }}
{{- include "bridge.tomlTable" (list "scmb" $m $extra) }}
{{- end }}

{{/* One appliance's [appliances.scmb], after its other keys: include "bridge.applianceScmbToml" (list $ $i $a) */}}
{{- define "bridge.applianceScmbToml" -}}
{{- $ctx := index . 0 }}
{{- $i := index . 1 }}
{{- $a := index . 2 }}
{{- $s := $a.scmb }}
{{- $g := $ctx.Values.scmb | default dict }}
{{- $where := printf "config.appliances[%d].scmb (appliance %s)" (int $i) ($a.name | default "?") }}
{{- if and $s.certKey (not ($g.clientCertSecret | default dict).name) }}
{{- fail (printf "%s: certKey %s is a key of scmb.clientCertSecret, but scmb.clientCertSecret.name is empty; set it to the Secret holding this appliance's client certificate and key, or give client_cert_file and client_key_file paths instead" $where ($s.certKey | quote)) }}
{{- end }}
{{- if and $s.caKey (not (include "bridge.scmbCAKey" $ctx)) }}
{{- fail (printf "%s: caKey %s is a key of scmb.caSecret or scmb.caConfigMap, but both names are empty; set one of them to the Secret or ConfigMap holding this appliance's CA, or give a ca_file path instead" $where ($s.caKey | quote)) }}
{{- end }}

[appliances.scmb]
{{- range $k, $v := omit $s "certKey" "keyKey" "caKey" }}
{{ $k }} = {{ toJson $v }}
{{- end }}
{{- if $s.certKey }}
client_cert_file = {{ printf "%s/%s" (include "bridge.scmbClientDir" $ctx) $s.certKey | toJson }}
client_key_file = {{ printf "%s/%s" (include "bridge.scmbClientDir" $ctx) $s.keyKey | toJson }}
{{- end }}
{{- if $s.caKey }}
ca_file = {{ printf "%s/%s" (include "bridge.scmbCADir" $ctx) $s.caKey | toJson }}
{{- end }}
{{- end }}

{{/* The poller's SCMB PEM volumes (bridge.scmbRendered only): the client keypair Secret and the
CA Secret or ConfigMap, each whole, since appliances may name their own keys in them. */}}
{{- define "bridge.scmbVolumes" -}}
{{- $s := .Values.scmb | default dict }}
{{- with ($s.clientCertSecret | default dict).name }}
- name: scmb-client
  secret:
    secretName: {{ . }}
    defaultMode: 0440
{{- end }}
{{- with ($s.caSecret | default dict).name }}
- name: scmb-ca
  secret:
    secretName: {{ . }}
    defaultMode: 0444
{{- end }}
{{- with ($s.caConfigMap | default dict).name }}
- name: scmb-ca
  configMap:
    name: {{ . }}
{{- end }}
{{- end }}

{{- define "bridge.scmbVolumeMounts" -}}
{{- $s := .Values.scmb | default dict }}
{{- if ($s.clientCertSecret | default dict).name }}
- name: scmb-client
  mountPath: {{ include "bridge.scmbClientDir" . }}
  readOnly: true
{{- end }}
{{- if include "bridge.scmbCAKey" . }}
- name: scmb-ca
  mountPath: {{ include "bridge.scmbCADir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{/* The poller's TOML: every configured section plus the chart-managed secret and CA paths. */}}
{{- define "bridge.pollerToml" -}}
{{- $ov := omit .Values.config.oneview "password" "password_file" "ca_file" -}}
{{- $pd := omit .Values.config.pagerduty "routing_key" "routing_key_file" -}}
{{- $ovExtra := printf "\npassword_file = %s" (include "bridge.secretFile" (list . "oneviewPassword") | toJson) -}}
{{- if .Values.oneviewCA.configMap -}}
{{- $ovExtra = printf "%s\nca_file = %s" $ovExtra (printf "/etc/oneview-pagerduty-bridge/ca/%s" .Values.oneviewCA.key | toJson) -}}
{{- end -}}
{{- $pdExtra := printf "\nrouting_key_file = %s" (include "bridge.secretFile" (list . "pagerdutyRoutingKey") | toJson) -}}
{{- if .Values.config.appliances -}}
{{- range $i, $a := .Values.config.appliances }}
{{- if $i }}

{{ end -}}
[[appliances]]
{{- range $k, $v := omit $a "passwordSecretKey" "remoteRef" "caKey" "password" "password_file" "scmb" }}
{{- if not (and (kindIs "string" $v) (eq $v "")) }}
{{ $k }} = {{ toJson $v }}
{{- end }}
{{- end }}
{{- if $a.password_file }}
password_file = {{ $a.password_file | toJson }}
{{- else }}
password_file = {{ printf "%s/%s" $.Values.secrets.mountPath ($a.passwordSecretKey | default $.Values.secrets.keys.oneviewPassword) | toJson }}
{{- end }}
{{- if and $.Values.oneviewCA.configMap (not $a.ca_file) }}
ca_file = {{ printf "/etc/oneview-pagerduty-bridge/ca/%s" ($a.caKey | default $.Values.oneviewCA.key) | toJson }}
{{- end }}
{{- if $a.scmb }}
{{- include "bridge.applianceScmbToml" (list $ $i $a) }}
{{- end }}
{{- end }}
{{- else -}}
{{ include "bridge.tomlTable" (list "oneview" $ov $ovExtra) }}
{{- end }}

{{ include "bridge.tomlTable" (list "pagerduty" $pd $pdExtra) }}
{{- range $i, $r := .Values.config.routes }}

[[pagerduty.routes]]
{{- range $k, $v := omit $r "routingKeySecretKey" "remoteRef" }}
{{- if not (and (kindIs "string" $v) (eq $v "")) }}
{{ $k }} = {{ toJson $v }}
{{- end }}
{{- end }}
{{- if $r.routingKeySecretKey }}
routing_key_file = {{ printf "%s/%s" $.Values.secrets.mountPath $r.routingKeySecretKey | toJson }}
{{- end }}
{{- end }}

{{ include "bridge.tomlTable" (list "poller" .Values.config.poller) }}
{{- if include "bridge.scmbRendered" . }}

{{ include "bridge.scmbToml" . }}
{{- end }}

{{ include "bridge.tomlTable" (list "dedup" .Values.config.dedup) }}

{{ include "bridge.tomlTable" (list "flap" (.Values.config.flap | default dict)) }}
{{- /* backend "file" is what state.path implies: left out, so the file's TOML is unchanged. */}}
{{ if include "bridge.postgres" . }}
{{ include "bridge.tomlTable" (list "state" .Values.config.state (include "bridge.stateDbLines" .)) }}

{{ include "bridge.tomlTable" (list "lease" (.Values.config.lease | default dict)) }}
{{- else }}
{{ include "bridge.tomlTable" (list "state" (omit (.Values.config.state | default dict) "backend") (printf "\npath = %s" (printf "%s/state.redb" .Values.poller.persistence.mountPath | toJson))) }}
{{- end }}

{{ include "bridge.tomlCommon" (list . "poller") }}
{{- end }}
