//! `GET /`: the status page an on-call engineer opens from an incident. Server-rendered HTML,
//! no build step; a few lines of vanilla JS (allowed by a per-response CSP nonce) re-fetch the
//! page and swap its `<main>`, so it stays live without a reload. Readable on a phone.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::http::ApiError;
use crate::web::api::WebState;
use crate::web::control::{StatusView, TrackedAlert};

#[derive(Debug, Default, Deserialize)]
pub struct PageQuery {
    /// A bearer token for browsers, which cannot send the header from a link.
    token: Option<String>,
    /// Seconds between refreshes (2..=300, default 10).
    refresh: Option<u64>,
}

/// Escapes text for HTML element content and quoted attributes.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn age(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let s = (now - t).num_seconds().max(0);
    match s {
        0..60 => format!("{s} s ago"),
        60..3600 => format!("{} min ago", s / 60),
        3600..86400 => format!("{} h {} min ago", s / 3600, (s % 3600) / 60),
        _ => format!("{} days ago", s / 86400),
    }
}

fn session_words(s: &str) -> &'static str {
    match s {
        "logged_in" => "logged in",
        "login_failed" => "login failed",
        _ => "not logged in",
    }
}

fn pd_words(a: &TrackedAlert) -> String {
    match &a.pagerduty {
        None => "waiting to be sent".to_owned(),
        Some(p) => {
            let mut s = match p.outcome.as_str() {
                "accepted" => format!("{} accepted", p.last_action),
                "rejected" => format!("{} rejected by PagerDuty", p.last_action),
                "retrying" => format!("{} retrying (attempt {})", p.last_action, p.attempts),
                o => format!("{} {o}", p.last_action),
            };
            if let Some(e) = &p.last_error {
                s.push_str(": ");
                s.push_str(e);
            }
            s
        }
    }
}

const STYLE: &str = "body{font-family:system-ui,-apple-system,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}\
main{max-width:960px;margin:0 auto;padding:12px}h1{font-size:1.3rem;margin:8px 0}h2{font-size:1.05rem;margin:18px 0 6px}\
.banner{background:#b3261e;color:#fff;padding:10px 12px;border-radius:6px;margin:8px 0;font-weight:600}\
.card{background:#fff;border-radius:6px;padding:10px 12px;margin:6px 0;box-shadow:0 1px 2px rgba(0,0,0,.08)}\
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:6px}\
.k{color:#5b6472;font-size:.8rem}.v{font-size:1.05rem;font-weight:600}\
ul{list-style:none;padding:0;margin:0}li.alert{border-left:6px solid #888}\
.sev{display:inline-block;padding:1px 8px;border-radius:10px;font-size:.8rem;font-weight:700;color:#fff;background:#888}\
.sev.sev-critical{background:#b3261e}li.sev-critical{border-left-color:#b3261e}\
.sev.sev-warning{background:#b26a00}li.sev-warning{border-left-color:#e09000}\
.sev.sev-unknown{background:#5b6472}.sev.sev-disabled{background:#8a8f98}\
.muted{color:#5b6472;font-size:.85rem}a{color:#0b57d0;word-break:break-all}\
.ok{color:#1e7b34}.bad{color:#b3261e}";

const SCRIPT: &str = "(function(){var m=document.getElementById('main');if(!m)return;\
m.setAttribute('data-live','on');\
var s=parseInt(m.getAttribute('data-refresh'),10)||10;\
function tick(){fetch(location.href,{cache:'no-store',credentials:'same-origin'})\
.then(function(r){return r.text();}).then(function(t){var d=new DOMParser().parseFromString(t,'text/html');\
var n=d.getElementById('main');if(n){m.innerHTML=n.innerHTML;}})\
.catch(function(){}).then(function(){setTimeout(tick,s*1000);});}\
setTimeout(tick,s*1000);})();";

/// Renders the page body (`<main>`) from a status view, or from the reason there is none.
pub fn render_main(view: Result<&StatusView, &str>, refresh: u64) -> String {
    let now = Utc::now();
    let mut h = format!("<main id=\"main\" data-refresh=\"{refresh}\">");
    h.push_str("<h1>OneView &rarr; PagerDuty bridge</h1>");
    let v = match view {
        Ok(v) => v,
        Err(why) => {
            h.push_str(&format!(
                "<div class=\"banner\" id=\"poller-down\" role=\"alert\">The bridge's poller cannot be reached, so nothing below is live: {}</div></main>",
                esc(why)
            ));
            return h;
        }
    };
    let mut first_down = true;
    for a in &v.appliances {
        let interval = if a.poll_interval_seconds > 0 {
            a.poll_interval_seconds
        } else {
            v.poll_interval_seconds.max(1)
        };
        let stale = a
            .last_successful_poll
            .is_none_or(|t| (now - t).num_seconds() > (3 * interval) as i64 + 5);
        let down = a.last_error.is_some() || a.session == "login_failed" || (a.cycles > 0 && stale);
        if down {
            // One id for scripts and tests (the first failing appliance), a class for all.
            let id = if first_down {
                " id=\"oneview-down\""
            } else {
                ""
            };
            first_down = false;
            let last = a
                .last_successful_poll
                .map(|t| format!(" Last successful poll {}.", age(t, now)))
                .unwrap_or_else(|| " No poll has succeeded yet.".to_owned());
            h.push_str(&format!(
                "<div class=\"banner oneview-down\"{id} data-appliance=\"{}\" role=\"alert\">OneView {} is not answering: {}.{} Alerts raised meanwhile are paged once it answers again.</div>",
                esc(&a.name),
                esc(&a.name),
                esc(a.last_error.as_deref().unwrap_or("no successful poll recently")),
                last
            ));
        }
    }
    h.push_str("<h2>Appliances</h2>");
    for a in &v.appliances {
        let last = a
            .last_successful_poll
            .map(|t| {
                format!(
                    "{} <span class=\"muted\">({})</span>",
                    age(t, now),
                    t.format("%Y-%m-%d %H:%M:%S UTC")
                )
            })
            .unwrap_or_else(|| "never".to_owned());
        let cls = if a.session == "logged_in" {
            "ok"
        } else {
            "bad"
        };
        let error = a
            .last_error
            .as_deref()
            .map(|e| format!("<div class=\"bad last-error\">Last error: {}</div>", esc(e)))
            .unwrap_or_default();
        let bus = a
            .bus
            .as_ref()
            .map(|b| {
                let (cls, words) = match b.state.as_str() {
                    "connected" => ("ok", "connected, real time"),
                    "down" => ("bad", "down, polling covers it"),
                    _ => ("muted", "connecting"),
                };
                format!(
                    "<div><div class=\"k\">Message bus (SCMB)</div><div class=\"v {cls} bus\" data-bus=\"{}\">{words} <span class=\"muted\">(changed {})</span></div></div>",
                    esc(&b.state),
                    age(b.since, now)
                )
            })
            .unwrap_or_default();
        let bus_error = a
            .bus
            .as_ref()
            .and_then(|b| b.reason.as_deref())
            .map(|e| format!("<div class=\"bad bus-error\">Message bus: {}</div>", esc(e)))
            .unwrap_or_default();
        h.push_str(&format!(
            "<div class=\"card appliance\" data-appliance=\"{}\"><div class=\"v\"><a href=\"{}\">{}</a></div><div class=\"grid\">\
<div><div class=\"k\">Session</div><div class=\"v {cls}\">{}</div></div>\
<div><div class=\"k\">Last successful poll</div><div class=\"v\">{last}</div></div>\
<div><div class=\"k\">Open alerts on appliance</div><div class=\"v\">{}</div></div>\
<div><div class=\"k\">API version</div><div class=\"v\">{}</div></div>{bus}</div>{error}{bus_error}</div>",
            esc(&a.name),
            esc(&a.ui_url),
            esc(&a.name),
            session_words(&a.session),
            a.open_alerts,
            a.api_version.map(|x| x.to_string()).unwrap_or_else(|| "-".to_owned()),
        ));
    }
    h.push_str(&format!(
        "<h2>PagerDuty delivery</h2><div class=\"card grid\" id=\"delivery\">\
<div><div class=\"k\">Queue depth</div><div class=\"v\" id=\"queue-depth\">{}</div></div>\
<div><div class=\"k\">Sending now</div><div class=\"v\">{}</div></div>\
<div><div class=\"k\">Oldest waiting</div><div class=\"v\">{:.0} s</div></div>\
<div><div class=\"k\">Dead letters</div><div class=\"v\" id=\"dead-letter-count\">{}</div></div></div>",
        v.queue_depth, v.in_flight, v.oldest_queued_age_seconds, v.dead_letters_total
    ));
    h.push_str(&format!(
        "<h2>Open alerts (<span id=\"alert-count\">{}</span>)</h2><ul id=\"alerts\">",
        v.alerts.len()
    ));
    if v.alerts.is_empty() {
        h.push_str("<li class=\"card muted\" id=\"no-alerts\">No open alerts. All quiet.</li>");
    }
    for a in &v.alerts {
        let sev = a.severity.to_ascii_lowercase();
        let sev_cls: String = sev.chars().filter(char::is_ascii_alphanumeric).collect();
        h.push_str(&format!(
            "<li class=\"card alert sev-{sev_cls}\" data-key=\"{}\"><span class=\"sev sev-{sev_cls}\">{}</span> \
<strong class=\"desc\">{}</strong><div class=\"muted\"><span class=\"appliance\">{}</span> &middot; {}{} &middot; raised {}</div>\
<div>PagerDuty: <span class=\"pd\">{}</span>{}</div><div><a href=\"{}\" rel=\"noopener\">Open in OneView</a></div></li>",
            esc(&a.dedup_key),
            esc(&a.severity),
            esc(a.description.as_deref().unwrap_or("(no description)")),
            esc(&a.appliance),
            esc(a.resource_name.as_deref().unwrap_or("")),
            if a.resource_name.is_some() { " &middot; " } else { "" }.to_owned() + &esc(&a.uri),
            esc(a.created.as_deref().unwrap_or("?")),
            esc(&pd_words(a)),
            a.route
                .as_deref()
                .map(|r| format!(" <span class=\"muted\">(route {})</span>", esc(r)))
                .unwrap_or_default(),
            esc(&a.oneview_link),
        ));
    }
    h.push_str("</ul>");
    if !v.dead_letters.is_empty() {
        h.push_str("<h2>Dead letters (PagerDuty refused these)</h2><ul id=\"dead-letters\">");
        for d in &v.dead_letters {
            h.push_str(&format!(
                "<li class=\"card\"><strong>{}</strong> {} <span class=\"muted\">HTTP {} &middot; {}</span><div>{}</div></li>",
                esc(&d.dedup_key),
                esc(&d.action),
                d.status,
                age(d.time, now),
                esc(&format!("{} {}", d.message.as_deref().unwrap_or(""), d.errors.join("; ")))
            ));
        }
        h.push_str("</ul>");
    }
    h.push_str("<h2>Recent errors</h2><ul id=\"errors\">");
    if v.recent_errors.is_empty() {
        h.push_str("<li class=\"card muted\">None.</li>");
    }
    for e in &v.recent_errors {
        h.push_str(&format!(
            "<li class=\"card\"><span class=\"muted\">{}</span> {}</li>",
            age(e.time, now),
            esc(&e.message)
        ));
    }
    h.push_str(&format!(
        "</ul><p class=\"muted\">Updated {} &middot; refreshes every {refresh} s</p></main>",
        v.generated.format("%Y-%m-%d %H:%M:%S UTC")
    ));
    h
}

pub async fn page(
    State(s): State<WebState>,
    headers: HeaderMap,
    Query(q): Query<PageQuery>,
) -> Result<Response, ApiError> {
    let mut auth = headers.clone();
    if let Some(t) = q.token.as_deref().filter(|t| !t.is_empty())
        && let Ok(v) = HeaderValue::from_str(&format!("Bearer {t}"))
    {
        auth.insert(header::AUTHORIZATION, v);
    }
    s.check_read(&auth)?;
    let refresh = q.refresh.unwrap_or(10).clamp(1, 300);
    let view = s.control.status().await;
    let main = match &view {
        Ok(v) => render_main(Ok(v), refresh),
        Err(e) => render_main(Err(&e.to_string()), refresh),
    };
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>OneView &rarr; PagerDuty bridge</title><style nonce=\"{nonce}\">{STYLE}</style></head>\
<body>{main}<script nonce=\"{nonce}\">{SCRIPT}</script></body></html>"
    );
    let csp = format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; connect-src 'self'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    );
    let mut resp = (StatusCode::OK, html).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_unreachable_poller() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        let m = render_main(Err("poller <down>"), 10);
        assert!(m.contains("id=\"poller-down\""));
        assert!(m.contains("poller &lt;down&gt;"));
    }
}
