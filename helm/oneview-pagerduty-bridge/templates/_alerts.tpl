{{/*
The bridge's alerting rules, as the `groups:` of a Prometheus rule file. Rendered into the
PrometheusRule and, by scripts/helm-render, into deploy/prometheus/bridge-rules.yaml, which
promtool checks and unit-tests (deploy/prometheus/bridge-rules.test.yaml).
Targets are matched by job: the Services are <fullname>-poller and <fullname>-web, which is
what a ServiceMonitor names the job.
*/}}
{{- define "bridge.alertGroups" -}}
{{- $fn := include "bridge.fullname" . }}
{{- $poller := printf "job=\"%s-poller\"" $fn }}
{{- $web := printf "job=\"%s-web\"" $fn }}
{{- $any := printf "job=~\"%s-(poller|web)\"" $fn }}
{{- $rb := .Values.metrics.prometheusRule.runbookBaseUrl }}
{{- $extra := .Values.metrics.prometheusRule.additionalLabels }}
{{- $interval := int .Values.metrics.prometheusRule.pollIntervalSeconds }}
groups:
  - name: oneview-pagerduty-bridge
    rules:
      - alert: OneViewBridgeDown
        expr: up{ {{- $any -}} } == 0 or absent(up{ {{- $poller -}} })
        for: 5m
        labels:
          severity: critical
          {{- with $extra }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: "OneView-PagerDuty bridge target {{ "{{ $labels.job }}" }} is down"
          description: "Prometheus cannot scrape {{ "{{ $labels.instance }}" }} (or no poller target exists) for 5 minutes. While the poller is down, OneView alerts do not page."
          runbook_url: {{ printf "%s#oneviewbridgedown" $rb }}
      - alert: OneViewBridgeNotReady
        expr: max by (namespace, pod) (kube_pod_container_status_ready{namespace="{{ .Release.Namespace }}", pod=~"{{ $fn }}-(poller|web)-.*", container="bridge"}) == 0
        for: 10m
        labels:
          severity: warning
          {{- with $extra }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: "Bridge pod {{ "{{ $labels.pod }}" }} has not been ready for 10 minutes"
          description: "/ready answers 503; its JSON body lists the unmet conditions (OneView login, PagerDuty, state)."
          runbook_url: {{ printf "%s#oneviewbridgenotready" $rb }}
      - alert: OneViewBridgeNoSuccessfulPoll
        expr: (time() - bridge_oneview_last_successful_poll_timestamp_seconds{ {{- $poller -}} } > {{ mul 3 $interval }}) and on (job, instance) (time() - process_start_time_seconds{ {{- $poller -}} } > {{ mul 3 $interval }})
        for: 1m
        labels:
          severity: critical
          {{- with $extra }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: "OneView appliance {{ "{{ $labels.appliance }}" }} not polled for 3 intervals on {{ "{{ $labels.instance }}" }}"
          description: "The last successful poll of {{ "{{ $labels.appliance }}" }} was {{ "{{ $value | humanizeDuration }}" }} ago (unreachable, refusing the login, or answering garbage). New alerts of that appliance are not paged; the other appliances are polled as usual."
          runbook_url: {{ printf "%s#oneviewbridgenosuccessfulpoll" $rb }}
      - alert: OneViewBridgeLoginFailures
        expr: sum without (outcome) (increase(bridge_oneview_logins_total{ {{- $poller -}} , outcome=~"auth_failed|error"}[15m])) > 0
        for: 5m
        labels:
          severity: warning
          {{- with $extra }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: "OneView logins to {{ "{{ $labels.appliance }}" }} are failing on {{ "{{ $labels.instance }}" }}"
          description: "{{ "{{ $value | humanize }}" }} failed OneView logins in 15 minutes (auth_failed: wrong credentials or directory; error: network or TLS)."
          runbook_url: {{ printf "%s#oneviewbridgeloginfailures" $rb }}
      # The message bus (SCMB). bridge_scmb_* series exist only for appliances whose bus is on,
      # so 0 means "on and down". A standby poller (postgres backend, bridge_leader 0) does not
      # consume; polling covers a down bus, hence warning only.
      - alert: OneViewBridgeScmbDown
        expr: (bridge_scmb_connected{ {{- $poller -}} } == 0) unless on (job, instance) (bridge_leader{ {{- $poller -}} } == 0)
        for: 15m
        labels:
          severity: warning
          {{- with $extra }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: "Message bus (SCMB) of OneView appliance {{ "{{ $labels.appliance }}" }} down for 15 minutes on {{ "{{ $labels.instance }}" }}"
          description: "No SCMB connection to {{ "{{ $labels.appliance }}" }} for 15m; polled every poller.interval meanwhile. /ready warning scmb:{{ "{{ $labels.appliance }}" }} says why. Certificates: {{ printf "%s#message-bus-scmb-certificates" $rb }}"
          runbook_url: {{ printf "%s#oneviewbridgescmbdown" $rb }}
      - alert: OneViewBridgePagerDutyRejections
        expr: sum without (code) (increase(bridge_pagerduty_http_responses_total{ {{- $poller -}} , code="400"}[15m])) > 0
        labels:
          severity: critical
          {{- with $extra }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: "PagerDuty rejected events from {{ "{{ $labels.instance }}" }} (HTTP 400)"
          description: "{{ "{{ $value | humanize }}" }} events were rejected in 15 minutes and will not be retried: those alerts did not page."
          runbook_url: {{ printf "%s#oneviewbridgepagerdutyrejections" $rb }}
      - alert: OneViewBridgeDeliveryQueueStale
        expr: bridge_pagerduty_queue_oldest_age_seconds{ {{- $poller -}} } > 300
        for: 2m
        labels:
          severity: critical
          {{- with $extra }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: "Oldest PagerDuty event has waited {{ "{{ $value | humanizeDuration }}" }} on {{ "{{ $labels.instance }}" }}"
          description: "Events are queued for more than 5 minutes: PagerDuty is unreachable, rate limiting, or the sender is stuck. Pages are late."
          runbook_url: {{ printf "%s#oneviewbridgedeliveryqueuestale" $rb }}
      - alert: OneViewBridgeDeadLetters
        expr: bridge_pagerduty_dead_letters{ {{- $poller -}} } > 0
        for: 1m
        labels:
          severity: critical
          {{- with $extra }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: "{{ "{{ $value }}" }} PagerDuty events gave up on {{ "{{ $labels.instance }}" }}"
          description: "Events that exhausted their retries are parked as dead letters: those alerts did not page."
          runbook_url: {{ printf "%s#oneviewbridgedeadletters" $rb }}
      - alert: OneViewBridgePagerDutyRateLimited
        expr: (sum without (code) (rate(bridge_pagerduty_http_responses_total{ {{- $poller -}} , code="429"}[10m])) / sum without (code) (rate(bridge_pagerduty_http_responses_total{ {{- $poller -}} }[10m]))) > 0.1
        for: 10m
        labels:
          severity: warning
          {{- with $extra }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: "More than 10% of PagerDuty requests are rate limited (429) on {{ "{{ $labels.instance }}" }}"
          description: "{{ "{{ $value | humanizePercentage }}" }} of Events API responses are 429: an alert storm or pagerduty.rate_limit_per_minute is set above PagerDuty's limit. Deliveries are delayed."
          runbook_url: {{ printf "%s#oneviewbridgepagerdutyratelimited" $rb }}
      # Web role and durable state: these metrics come with issues 5 (bridge_state_*) and 6
      # (bridge_web_*); until a bridge exports them the rules stay silent. Failure outcomes
      # assumed: "mismatch"/"no_secrets" (signature.rs labels) and "error".
      - alert: OneViewBridgeWebhookSignatureFailures
        expr: sum by (job, outcome) (increase(bridge_web_webhook_verifications_total{ {{- $web -}} , outcome=~"mismatch|no_secrets"}[15m])) > 0
        for: 15m
        labels:
          severity: warning
          {{- with $extra }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: "PagerDuty webhooks fail signature verification ({{ "{{ $labels.outcome }}" }}) on {{ "{{ $labels.job }}" }}"
          description: "{{ "{{ $value | humanize }}" }} webhook deliveries in 15 minutes were refused ({{ "{{ $labels.outcome }}" }}): acknowledges and resolves in PagerDuty are not written back to OneView. The webhook secret in the bridge and the PagerDuty subscription likely differ."
          runbook_url: {{ printf "%s#oneviewbridgewebhooksignaturefailures" $rb }}
      - alert: OneViewBridgeWritebackFailures
        expr: sum by (job) (increase(bridge_web_writebacks_total{ {{- $any -}} , outcome=~"failed|unavailable"}[15m])) > 0
        for: 15m
        labels:
          severity: warning
          {{- with $extra }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: "Write-backs to OneView fail on {{ "{{ $labels.job }}" }}"
          description: "{{ "{{ $value | humanize }}" }} PagerDuty incident changes in 15 minutes could not be written back to OneView (poller unreachable, or OneView refused the note or clear)."
          runbook_url: {{ printf "%s#oneviewbridgewritebackfailures" $rb }}
      - alert: OneViewBridgeStateWriteErrors
        expr: sum without (outcome) (increase(bridge_state_writes_total{ {{- $poller -}} , outcome="error"}[10m])) > 0
        for: 5m
        labels:
          severity: critical
          {{- with $extra }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: "The poller cannot write its state file on {{ "{{ $labels.instance }}" }}"
          description: "{{ "{{ $value | humanize }}" }} state writes failed in 10 minutes (volume full, read-only or lost): deliveries stop being durable and a restart may lose resolves."
          runbook_url: {{ printf "%s#oneviewbridgestatewriteerrors" $rb }}
      - alert: OneViewBridgeOutboxStuck
        expr: min_over_time(bridge_state_outbox_entries{ {{- $poller -}} }[15m]) > 0
        for: 5m
        labels:
          severity: warning
          {{- with $extra }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: "{{ "{{ $value }}" }} events have waited in the outbox for 15 minutes on {{ "{{ $labels.instance }}" }}"
          description: "The durable outbox has not been empty for 20 minutes: PagerDuty does not accept the events (down, rate limiting, rejected key) and pages are late."
          runbook_url: {{ printf "%s#oneviewbridgeoutboxstuck" $rb }}
      # Leadership of pollers sharing a postgres state database (poller.replicas, issue 15). The
      # bridge_leader* series exist only with that backend, so these rules stay silent on a
      # file-backed poller; no poller target at all is OneViewBridgeDown's.
      - alert: OneViewBridgeNoLeader
        expr: sum by (namespace, job) (bridge_leader{ {{- $poller -}} }) == 0
        for: 1m
        labels:
          severity: critical
          {{- with $extra }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: "No poller of {{ "{{ $labels.job }}" }} holds the leadership lease"
          description: "Every poller has stood by for a minute (a handover takes lease.ttl at most): nothing polls OneView or pages. Usually the state database is unreachable, so no poller can take the lease."
          runbook_url: {{ printf "%s#oneviewbridgenoleader" $rb }}
      - alert: OneViewBridgeStateDatabaseDown
        expr: bridge_state_database_up{ {{- $poller -}} } == 0
        for: 1m
        labels:
          severity: critical
          {{- with $extra }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: "Poller {{ "{{ $labels.instance }}" }} cannot reach its state database"
          description: "The last lease acquire or renewal of {{ "{{ $labels.instance }}" }} did not reach PostgreSQL for a minute. A leader that cannot renew stops sending when its lease could expire: if every poller shows this, nothing pages."
          runbook_url: {{ printf "%s#oneviewbridgestatedatabasedown" $rb }}
      - alert: OneViewBridgeLeaseRenewFailures
        expr: increase(bridge_leader_lease_renew_failures_total{ {{- $poller -}} }[10m]) > 2
        labels:
          severity: warning
          {{- with $extra }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: "Lease renewals fail on {{ "{{ $labels.instance }}" }}"
          description: "{{ "{{ $value | humanize }}" }} lease renewals failed in 10 minutes (database slow or flapping). A leader that misses renewals for lease.ttl gives up the lease and a standby takes over: pages pause for the handover."
          runbook_url: {{ printf "%s#oneviewbridgeleaserenewfailures" $rb }}
      - alert: OneViewBridgeMultipleLeaders
        expr: sum by (namespace, job) (bridge_leader{ {{- $poller -}} }) > 1
        for: 2m
        labels:
          severity: critical
          {{- with $extra }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: "{{ "{{ $value }}" }} pollers of {{ "{{ $labels.job }}" }} claim the leadership"
          description: "More than one poller reports bridge_leader 1 for 2 minutes. One lease row has one holder, so they use different databases or lease names (a state URL changed mid-rollout, a restored copy): each side polls and pages, so incidents may be opened twice."
          runbook_url: {{ printf "%s#oneviewbridgemultipleleaders" $rb }}
{{- end }}
