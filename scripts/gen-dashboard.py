#!/usr/bin/env python3
"""Generates the Grafana dashboard (helm/oneview-pagerduty-bridge/files/dashboard.json, copied to
deploy/grafana/ by scripts/helm-render.py). Edit here, run it, commit both; deploy-checks fails on drift."""
import json
pid=[0]
def nid():
    pid[0]+=1; return pid[0]
DS={"type":"prometheus","uid":"${datasource}"}
J='job=~"$job", instance=~"$instance"'
# The OneView series carry the appliance (one poller watches several).
JA=J+', appliance=~"$appliance"'
def ts(title, targets, x, y, w=8, h=8, unit="short", desc=""):
    return {"id":nid(),"type":"timeseries","title":title,"description":desc,"datasource":DS,
      "gridPos":{"x":x,"y":y,"w":w,"h":h},
      "fieldConfig":{"defaults":{"unit":unit,"custom":{"drawStyle":"line","lineWidth":1,"fillOpacity":10}},"overrides":[]},
      "options":{"legend":{"displayMode":"list","placement":"bottom","showLegend":True},"tooltip":{"mode":"multi","sort":"desc"}},
      "targets":[{"refId":chr(65+i),"datasource":DS,"expr":e,"legendFormat":l} for i,(e,l) in enumerate(targets)]}
def stat(title, expr, x, y, w=4, h=4, unit="short", thresholds=None, desc=""):
    steps=thresholds or [{"color":"green","value":None}]
    return {"id":nid(),"type":"stat","title":title,"description":desc,"datasource":DS,"gridPos":{"x":x,"y":y,"w":w,"h":h},
      "fieldConfig":{"defaults":{"unit":unit,"thresholds":{"mode":"absolute","steps":steps}},"overrides":[]},
      "options":{"reduceOptions":{"calcs":["lastNotNull"],"fields":"","values":False},"colorMode":"value","graphMode":"area"},
      "targets":[{"refId":"A","datasource":DS,"expr":expr}]}
def row(title,y): return {"id":nid(),"type":"row","title":title,"collapsed":False,"gridPos":{"x":0,"y":y,"w":24,"h":1},"panels":[]}
red=lambda v:[{"color":"green","value":None},{"color":"red","value":v}]
amber=lambda a,r:[{"color":"green","value":None},{"color":"orange","value":a},{"color":"red","value":r}]
p=[]
y=0
p.append(row("Overview",y)); y+=1
p+= [stat("Seconds since last successful poll (worst appliance)",f'time() - min(bridge_oneview_last_successful_poll_timestamp_seconds{{{JA}}})',0,y,unit="s",thresholds=amber(60,90)),
     stat("Open OneView alerts",f'sum(bridge_oneview_open_alerts{{{JA}}})',4,y),
     stat("Delivery queue depth",f'sum(bridge_pagerduty_queue_depth{{{J}}})',8,y,thresholds=amber(100,1000)),
     stat("Oldest queued event",f'max(bridge_pagerduty_queue_oldest_age_seconds{{{J}}})',12,y,unit="s",thresholds=amber(60,300)),
     stat("Dead letters",f'sum(bridge_pagerduty_dead_letters{{{J}}})',16,y,thresholds=red(1)),
     stat("OneView session age",f'max(bridge_oneview_session_age_seconds{{{JA}}})',20,y,unit="s")]
y+=4
# Leadership of pollers sharing a postgres state database (issue 15); empty with the file backend.
HA="Pollers with state.backend postgres only (poller.replicas); empty with the file backend."
p.append(row("Leadership (postgres state, several pollers)",y)); y+=1
p+= [ts("Leader by pod (exactly one line at 1)",[(f'max by (instance) (bridge_leader{{{J}}})',"{{instance}}")],0,y,w=6,desc=HA+" Two at 1 for minutes: OneViewBridgeMultipleLeaders; none: OneViewBridgeNoLeader."),
     ts("Lease epoch and takeovers",[(f'max(bridge_leader_epoch{{{J}}})',"epoch"),(f'sum by (instance) (increase(bridge_leader_takeovers_total{{{J}}}[$__rate_interval]))',"takeovers {{instance}}")],6,y,w=6,desc=HA+" The epoch grows by one per takeover; a rolling update of N pollers costs up to N."),
     ts("State database reachable, by pod",[(f'min by (instance) (bridge_state_database_up{{{J}}})',"{{instance}}")],12,y,w=6,desc=HA+" 0: the last lease acquire or renewal did not reach PostgreSQL."),
     ts("Lease renew failures and seconds since renewal",[(f'sum by (instance) (increase(bridge_leader_lease_renew_failures_total{{{J}}}[$__rate_interval]))',"renew failures {{instance}}"),(f'max by (instance) (bridge_leader_seconds_since_renewal{{{J}}})',"since renewal (s) {{instance}}")],18,y,w=6,desc=HA+" Seconds since renewal near lease.ttl: the leader is about to give the lease up.")]
y+=8
p.append(row("Appliances",y)); y+=1
p+= [ts("Seconds since last successful poll, by appliance",[(f'time() - max by (appliance) (bridge_oneview_last_successful_poll_timestamp_seconds{{{JA}}})',"{{appliance}}")],0,y,w=12,unit="s",desc="An appliance that stops answering climbs here alone; the others stay flat."),
     ts("Open alerts by appliance",[(f'sum by (appliance) (bridge_oneview_open_alerts{{{JA}}})',"{{appliance}}")],12,y,w=12)]
y+=8
# The message bus (SCMB, issue 16): bridge_scmb_* exist only for appliances with scmb.enabled.
BUS="Only appliances whose message bus is on (scmb.enabled) have series."
p.append(row("Message bus (SCMB)",y)); y+=1
p+= [ts("Bus connected, by appliance",[(f'max by (appliance) (bridge_scmb_connected{{{JA}}})',"{{appliance}}")],0,y,w=6,desc=BUS+" 1: alert changes are pushed; 0: down, polled at poller.interval meanwhile (OneViewBridgeScmbDown after 15 minutes; /ready warning scmb:<appliance> says why)."),
     ts("Bus messages by appliance and outcome",[(f'sum by (appliance, outcome) (rate(bridge_scmb_messages_total{{{JA}}}[$__rate_interval]))',"{{appliance}} {{outcome}}")],6,y,w=6,unit="ops",desc=BUS+" delivered: handed to the change path and acked; malformed: not an alert change, acked and skipped; stale: an older or repeated version, skipped."),
     ts("Detection latency p50/p99 (appliance clock to queueing)",[(f'histogram_quantile({q}, sum by (le, appliance) (rate(bridge_scmb_detection_latency_seconds_bucket{{{JA}}}[$__rate_interval])))',f"p{int(q*100)} {{{{appliance}}}}") for q in (0.5,0.99)],12,y,w=6,unit="s",desc=BUS+" From the message's timestamp (the appliance's clock) to its handover. Near 0 (a negative latency counts as 0) or pinned at 60 s (the top bucket): the clocks of appliance and node disagree, see the runbook's SCMB certificates section."),
     ts("Bus reconnects and seconds since the last message",[(f'sum by (appliance) (increase(bridge_scmb_reconnects_total{{{JA}}}[$__rate_interval]))',"reconnects {{appliance}}"),(f'max by (appliance) (bridge_scmb_seconds_since_last_message{{{JA}}})',"since last message (s) {{appliance}}")],18,y,w=6,desc=BUS+" A quiet appliance sends nothing for hours, so a long silence alone is no fault; reconnects every few minutes are (each is followed by a REST resync).")]
y+=8
p.append(row("Alert flow",y)); y+=1
p+= [ts("OneView polls by appliance and outcome",[(f'sum by (appliance, outcome) (rate(bridge_oneview_polls_total{{{JA}}}[$__rate_interval]))',"{{appliance}} {{outcome}}")],0,y,unit="ops"),
     ts("Alerts seen in last poll / open alerts",[(f'sum(bridge_oneview_alerts_in_last_poll{{{JA}}})',"in last poll"),(f'sum(bridge_oneview_open_alerts{{{JA}}})',"open"),(f'sum(rate(bridge_oneview_alerts_malformed_total{{{JA}}}[$__rate_interval]))',"malformed/s")],8,y),
     ts("PagerDuty events by action and outcome",[(f'sum by (action, outcome) (rate(bridge_pagerduty_events_total{{{J}}}[$__rate_interval]))',"{{action}} {{outcome}}")],16,y,unit="ops")]
y+=8
p.append(row("Delivery",y)); y+=1
p+= [ts("Delivery latency (p50/p90/p99)",[(f'histogram_quantile({q}, sum by (le, action) (rate(bridge_pagerduty_delivery_duration_seconds_bucket{{{J}}}[$__rate_interval])))',f"p{int(q*100)} {{{{action}}}}") for q in (0.5,0.9,0.99)],0,y,unit="s"),
     ts("Queue depth and oldest age",[(f'sum(bridge_pagerduty_queue_depth{{{J}}})',"depth"),(f'max(bridge_pagerduty_queue_oldest_age_seconds{{{J}}})',"oldest age (s)")],8,y),
     ts("Rate-limit waits, cancellations, dedup cache",[(f'sum(rate(bridge_pagerduty_rate_limit_waits_total{{{J}}}[$__rate_interval]))',"rate-limit waits/s"),(f'sum(rate(bridge_pagerduty_cancelled_total{{{J}}}[$__rate_interval]))',"cancelled/s"),(f'sum(bridge_pagerduty_dedup_cache_entries{{{J}}})',"dedup cache entries")],16,y)]
y+=8
p.append(row("Errors",y)); y+=1
p+= [ts("PagerDuty HTTP responses by code",[(f'sum by (code) (rate(bridge_pagerduty_http_responses_total{{{J}}}[$__rate_interval]))',"{{code}}")],0,y,unit="reqps"),
     ts("OneView requests by endpoint and status class",[(f'sum by (endpoint, status_class) (rate(bridge_oneview_request_duration_seconds_count{{{JA}}}[$__rate_interval]))',"{{endpoint}} {{status_class}}")],8,y,unit="reqps"),
     ts("OneView request latency p99 by appliance",[(f'histogram_quantile(0.99, sum by (le, appliance) (rate(bridge_oneview_request_duration_seconds_bucket{{{JA}}}[$__rate_interval])))',"{{appliance}}")],16,y,unit="s")]
y+=8
p.append(row("OneView session",y)); y+=1
p+= [ts("Logins by appliance and outcome",[(f'sum by (appliance, outcome) (increase(bridge_oneview_logins_total{{{JA}}}[$__rate_interval]))',"{{appliance}} {{outcome}}")],0,y),
     ts("Session age by appliance",[(f'max by (appliance) (bridge_oneview_session_age_seconds{{{JA}}})',"{{appliance}}")],8,y,unit="s"),
     ts("Poll duration p90 by appliance and kind",[(f'histogram_quantile(0.9, sum by (le, appliance, kind) (rate(bridge_oneview_poll_duration_seconds_bucket{{{JA}}}[$__rate_interval])))',"{{appliance}} {{kind}}")],16,y,unit="s")]
y+=8
p.append(row("Web: golden signals",y)); y+=1
p+= [ts("Traffic: requests by route",[(f'sum by (route) (rate(bridge_http_requests_total{{{J}}}[$__rate_interval]))',"{{route}}")],0,y,w=6,unit="reqps"),
     ts("Latency p50/p99",[(f'histogram_quantile({q}, sum by (le, route) (rate(bridge_http_request_duration_seconds_bucket{{{J}}}[$__rate_interval])))',f"p{int(q*100)} {{{{route}}}}") for q in (0.5,0.99)],6,y,w=6,unit="s"),
     ts("Errors: 5xx ratio",[(f'sum(rate(bridge_http_requests_total{{{J}, status_class="5xx"}}[$__rate_interval])) / clamp_min(sum(rate(bridge_http_requests_total{{{J}}}[$__rate_interval])), 1e-9)',"5xx ratio")],12,y,w=6,unit="percentunit"),
     ts("Saturation: CPU, memory, fds",[(f'sum by (instance) (rate(process_cpu_seconds_total{{{J}}}[$__rate_interval]))',"cpu {{instance}}"),(f'max by (instance) (process_resident_memory_bytes{{{J}}}) / 1048576',"RSS MiB {{instance}}"),(f'max by (instance) (process_open_fds{{{J}}})',"fds {{instance}}")],18,y,w=6)]
y+=8
# Web role and durable state: these metrics come with issues 5 (bridge_state_*) and 6 (bridge_web_*).
NEW="Exported by bridges with the web role and durable state (issues 5 and 6); empty before."
p.append(row("Web API: webhooks, write-backs, rate limits; durable state",y)); y+=1
p+= [ts("PagerDuty webhook verifications by outcome",[(f'sum by (outcome) (rate(bridge_web_webhook_verifications_total{{{J}}}[$__rate_interval]))',"{{outcome}}")],0,y,w=6,unit="reqps",desc=NEW+" mismatch / no_secrets: the webhook secret differs from the PagerDuty subscription's."),
     ts("Write-backs to OneView by outcome",[(f'sum by (outcome) (rate(bridge_web_writebacks_total{{{J}}}[$__rate_interval]))',"{{outcome}}")],6,y,w=6,unit="ops",desc=NEW),
     ts("Rate-limited API requests (429) by route",[(f'sum by (route) (rate(bridge_web_rate_limited_total{{{J}}}[$__rate_interval]))',"{{route}}")],12,y,w=6,unit="reqps",desc=NEW+" Per client IP: set server.trusted_proxies behind an ingress."),
     ts("State writes by outcome and outbox entries",[(f'sum by (outcome) (rate(bridge_state_writes_total{{{J}}}[$__rate_interval]))',"writes {{outcome}}"),(f'sum(bridge_state_outbox_entries{{{J}}})',"outbox entries")],18,y,w=6,desc=NEW)]
y+=8
p.append(row("Build",y)); y+=1
p.append({"id":nid(),"type":"table","title":"Running versions","datasource":DS,"gridPos":{"x":0,"y":y,"w":24,"h":5},
  "targets":[{"refId":"A","datasource":DS,"expr":f'max by (job, instance, version, role) (bridge_build_info{{{J}}})',"format":"table","instant":True}],
  "options":{"showHeader":True},"fieldConfig":{"defaults":{},"overrides":[]}})
dash={"uid":"oneview-pagerduty-bridge","title":"OneView PagerDuty Bridge","tags":["oneview","pagerduty","bridge"],
 "timezone":"browser","schemaVersion":39,"version":1,"editable":True,"refresh":"30s","time":{"from":"now-6h","to":"now"},
 "graphTooltip":1,
 "templating":{"list":[
  {"name":"datasource","type":"datasource","query":"prometheus","label":"Data source","current":{},"hide":0},
  {"name":"job","type":"query","datasource":DS,"label":"Job","query":{"query":"label_values(bridge_build_info, job)","refId":"job"},"definition":"label_values(bridge_build_info, job)","refresh":2,"includeAll":True,"multi":True,"allValue":".*","current":{"text":"All","value":"$__all"}},
  {"name":"instance","type":"query","datasource":DS,"label":"Instance","query":{"query":"label_values(bridge_build_info{job=~\"$job\"}, instance)","refId":"instance"},"definition":"label_values(bridge_build_info{job=~\"$job\"}, instance)","refresh":2,"includeAll":True,"multi":True,"allValue":".*","current":{"text":"All","value":"$__all"}},
  {"name":"appliance","type":"query","datasource":DS,"label":"Appliance","query":{"query":"label_values(bridge_oneview_open_alerts{job=~\"$job\"}, appliance)","refId":"appliance"},"definition":"label_values(bridge_oneview_open_alerts{job=~\"$job\"}, appliance)","refresh":2,"includeAll":True,"multi":True,"allValue":".*","current":{"text":"All","value":"$__all"}}]},
 "annotations":{"list":[]},
 "links":[{"title":"Runbook","type":"link","url":"https://github.com/example/oneview-pagerduty-bridge/blob/main/docs/RUNBOOK.md","targetBlank":True}],
 "panels":p}
s=json.dumps(dash,indent=2)+"\n"
import sys
out = __import__('pathlib').Path(__file__).resolve().parent.parent / 'helm/oneview-pagerduty-bridge/files/dashboard.json'
if len(sys.argv) == 3 and sys.argv[1] == '--out':
    out = sys.argv[2]
open(out, 'w').write(s)
