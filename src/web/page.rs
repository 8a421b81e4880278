//! `GET /`: the status page an on-call engineer opens from an incident. Server-rendered HTML,
//! no build step; a few lines of vanilla JS (allowed by a per-response CSP nonce) re-fetch the
//! page and swap its `<main>`, so it stays live without a reload. Readable on a phone.
//!
//! From the top: banners (poller or OneView down), the estate summary (open alerts by
//! severity and by appliance), the last 24 hours as an inline SVG drawn here (pages up,
//! resolves down, one row per appliance, from [`crate::web::history`]; no script, and no
//! `style` attributes, which the CSP would refuse), the appliances, delivery, and every open
//! alert with its age, its PagerDuty incident link and its markers. Everything that comes from
//! OneView, PagerDuty or the configuration goes through [`esc`]; a link is only made of an
//! `http`/`https` URL.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::http::ApiError;
use crate::web::api::WebState;
use crate::web::control::{StatusView, TrackedAlert, http_url};
use crate::web::history::HistoryView;

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

/// How long an alert has been open, from its OneView `created` stamp: "open for 3 h 12 min".
/// `None` when the stamp is not RFC 3339.
pub fn open_for(created: &str, now: DateTime<Utc>) -> Option<String> {
    let t = DateTime::parse_from_rfc3339(created).ok()?;
    let s = (now - t.with_timezone(&Utc)).num_seconds().max(0);
    let (d, h, m) = (s / 86400, (s % 86400) / 3600, (s % 3600) / 60);
    Some(match s {
        0..60 => "open for under a minute".to_owned(),
        60..3600 => format!("open for {m} min"),
        3600..86400 if m == 0 => format!("open for {h} h"),
        3600..86400 => format!("open for {h} h {m} min"),
        _ if h == 0 => format!("open for {d} d"),
        _ => format!("open for {d} d {h} h"),
    })
}

/// Letters and digits of `s`, lowercase: safe in a class name.
fn class_word(s: &str) -> String {
    s.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// The estate at a glance: open alerts by severity, and by appliance (every configured one,
/// also those with none open).
fn summary(v: &StatusView) -> String {
    let mut by_sev: Vec<(String, usize)> = Vec::new();
    // (appliance, critical, warning, other)
    let mut by_app: Vec<(String, usize, usize, usize)> = v
        .appliances
        .iter()
        .map(|a| (a.name.clone(), 0, 0, 0))
        .collect();
    for a in &v.alerts {
        match by_sev.iter_mut().find(|(s, _)| *s == a.severity) {
            Some((_, n)) => *n += 1,
            None => by_sev.push((a.severity.clone(), 1)),
        }
        let i = match by_app.iter().position(|(n, ..)| *n == a.appliance) {
            Some(i) => i,
            None => {
                by_app.push((a.appliance.clone(), 0, 0, 0));
                by_app.len() - 1
            }
        };
        let row = &mut by_app[i];
        match a.severity.as_str() {
            "Critical" => row.1 += 1,
            "Warning" => row.2 += 1,
            _ => row.3 += 1,
        }
    }
    by_sev.sort_by_key(|(s, _)| (crate::web::control::severity_rank(s), s.clone()));
    by_app.sort_by_key(|r| (std::cmp::Reverse(r.1 + r.2 + r.3), r.0.clone()));
    let mut h = String::from(
        "<h2 id=\"summary-h\">Estate</h2><div class=\"card\" id=\"summary\" aria-labelledby=\"summary-h\"><div class=\"chips\">",
    );
    if by_sev.is_empty() {
        h.push_str("<span class=\"ok\">No open alerts.</span>");
    }
    for (s, n) in &by_sev {
        h.push_str(&format!(
            "<span class=\"sev sev-{}\" data-severity=\"{}\">{} <b>{n}</b></span> ",
            class_word(s),
            esc(s),
            esc(s)
        ));
    }
    // "Other" only when there is any: four narrow columns fit a phone, five hardly.
    let other = by_app.iter().any(|r| r.3 > 0);
    h.push_str(&format!(
        "</div><table class=\"summary\"><caption class=\"k\">Open alerts by appliance</caption><thead><tr><th scope=\"col\">Appliance</th><th scope=\"col\">Critical</th><th scope=\"col\">Warning</th>{}<th scope=\"col\">Open</th></tr></thead><tbody>",
        if other { "<th scope=\"col\">Other</th>" } else { "" }
    ));
    for (name, c, w, o) in &by_app {
        let total = c + w + o;
        h.push_str(&format!(
            "<tr data-appliance=\"{}\"><th scope=\"row\">{}</th><td{}>{c}</td><td>{w}</td>{}<td class=\"total\">{total}</td></tr>",
            esc(name),
            esc(name),
            if *c > 0 { " class=\"bad\"" } else { "" },
            if other { format!("<td>{o}</td>") } else { String::new() },
        ));
    }
    h.push_str("</tbody></table></div>");
    h
}

/// The picture's geometry, in viewBox units: it scales with the page's width.
const SVG_W: i64 = 600;
const PLOT_X: i64 = 12;
const STEP: i64 = 6;
const ROW_H: i64 = 72;
/// Name baseline, then the pages lane above the baseline and the resolves lane below it.
const NAME_Y: i64 = 18;
const BASE_Y: i64 = 46;
const LANE: i64 = 20;
const AXIS_H: i64 = 26;

/// Bar height in a lane for `n` of at most `max`; one event is still visible.
fn bar(n: u32, max: u32) -> i64 {
    if n == 0 || max == 0 {
        return 0;
    }
    ((i64::from(n) * LANE + i64::from(max) - 1) / i64::from(max)).clamp(2, LANE)
}

/// The last 24 hours as inline SVG: one row per appliance, pages as red bars up from the
/// baseline, resolves as green bars down, a bucket per 15 minutes, UTC hours on the axis. Each
/// row's two series are `<g class="series pages|resolves">`; the numbers are also in a
/// visually hidden table for screen readers.
pub fn history_svg(hv: &HistoryView) -> String {
    // A day, whatever a remote poller sent.
    let n = hv.buckets().min(crate::web::history::BUCKETS);
    let bucket = i64::try_from(hv.bucket_seconds.max(1)).unwrap_or(900);
    let span = |i: usize| {
        let from = hv.start + chrono::Duration::seconds(bucket * i as i64);
        let to = from + chrono::Duration::seconds(bucket);
        format!("{}\u{2013}{} UTC", from.format("%H:%M"), to.format("%H:%M"))
    };
    let max = hv
        .appliances
        .iter()
        .flat_map(|a| a.pages[..n].iter().chain(a.resolves[..n].iter()))
        .copied()
        .max()
        .unwrap_or(0);
    let sum = |v: &[u32]| v.iter().map(|&c| u64::from(c)).sum::<u64>();
    let totals: Vec<(u64, u64)> = hv
        .appliances
        .iter()
        .map(|a| (sum(&a.pages[..n]), sum(&a.resolves[..n])))
        .collect();
    let rows = i64::try_from(hv.appliances.len()).unwrap_or(0);
    let height = rows * ROW_H + AXIS_H;
    let plot_w = STEP * i64::try_from(n).unwrap_or(0);
    let end = hv.start + chrono::Duration::seconds(bucket * n as i64);
    let desc = {
        let mut d = format!(
            "Pages and resolves PagerDuty accepted, per appliance, in {}-minute buckets from {} to {}. ",
            bucket / 60,
            hv.start.format("%Y-%m-%d %H:%M UTC"),
            end.format("%Y-%m-%d %H:%M UTC")
        );
        for (a, (p, r)) in hv.appliances.iter().zip(&totals) {
            d.push_str(&format!("{}: {p} pages, {r} resolves. ", a.appliance));
        }
        esc(d.trim_end())
    };
    let mut h = format!(
        "<svg class=\"history\" id=\"history-svg\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {SVG_W} {height}\" role=\"img\" aria-labelledby=\"history-title history-desc\" data-series=\"{}\">\
<title id=\"history-title\">Pages and resolves, last 24 hours</title><desc id=\"history-desc\">{desc}</desc>",
        hv.appliances.len() * 2
    );
    // Vertical lines and labels at the UTC hours divisible by 6 inside the window.
    let mut axis = String::new();
    let first_tick = (hv.start.timestamp().div_euclid(6 * 3600) + 1) * 6 * 3600;
    let mut t = first_tick;
    let mut last_tick = None;
    while t < end.timestamp() {
        last_tick = Some(t);
        let x = PLOT_X + (t - hv.start.timestamp()) * STEP / bucket;
        let label = chrono::DateTime::<Utc>::from_timestamp(t, 0)
            .map(|d| d.format("%H:%M").to_string())
            .unwrap_or_default();
        h.push_str(&format!(
            "<line class=\"grid\" x1=\"{x}\" y1=\"0\" x2=\"{x}\" y2=\"{}\"/>",
            rows * ROW_H
        ));
        axis.push_str(&format!(
            "<text class=\"tick\" x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{label}</text>",
            rows * ROW_H + 18
        ));
        t += 6 * 3600;
    }
    // "now" at the right end, unless an hour label is close enough to collide with it.
    if last_tick.is_none_or(|t| end.timestamp() - t > 3 * 3600) {
        axis.push_str(&format!(
            "<text class=\"tick now\" x=\"{}\" y=\"{}\" text-anchor=\"end\">now</text>",
            PLOT_X + plot_w,
            rows * ROW_H + 18
        ));
    }
    for (row, (a, (p, r))) in hv.appliances.iter().zip(&totals).enumerate() {
        let y = i64::try_from(row).unwrap_or(0) * ROW_H;
        let name = esc(&a.appliance);
        // SVG text does not wrap: a long name is cut (the bars' titles and the table have it).
        let shown = esc(&crate::pagerduty::event::truncate_chars(&a.appliance, 32));
        h.push_str(&format!(
            "<g class=\"row\" data-appliance=\"{name}\"><text class=\"name\" x=\"{PLOT_X}\" y=\"{}\">{shown} <tspan class=\"counts\">{p} pages, {r} resolves</tspan></text>\
<line class=\"base\" x1=\"{PLOT_X}\" y1=\"{}\" x2=\"{}\" y2=\"{}\"/>",
            y + NAME_Y,
            y + BASE_Y,
            PLOT_X + plot_w,
            y + BASE_Y
        ));
        for (cls, series, up, word) in [
            ("pages", &a.pages, true, "pages"),
            ("resolves", &a.resolves, false, "resolves"),
        ] {
            h.push_str(&format!(
                "<g class=\"series {cls}\" data-appliance=\"{name}\" data-total=\"{}\">",
                if up { p } else { r }
            ));
            for (i, &c) in series[..n].iter().enumerate() {
                let bh = bar(c, max);
                if bh == 0 {
                    continue;
                }
                let x = PLOT_X + STEP * i as i64;
                let top = if up { y + BASE_Y - bh } else { y + BASE_Y };
                h.push_str(&format!(
                    "<rect x=\"{x}\" y=\"{top}\" width=\"{}\" height=\"{bh}\"><title>{name}, {}: {c} {word}</title></rect>",
                    STEP - 1,
                    span(i)
                ));
            }
            h.push_str("</g>");
        }
        h.push_str("</g>");
    }
    h.push_str(&axis);
    h.push_str("</svg>");
    // The numbers, for screen readers: every bucket with something in it, and the totals.
    h.push_str(
        "<div class=\"sr-only\"><table id=\"history-table\"><caption>Pages and resolves per 15 minutes, last 24 hours (UTC)</caption><thead><tr><th scope=\"col\">Appliance</th><th scope=\"col\">Time (UTC)</th><th scope=\"col\">Pages</th><th scope=\"col\">Resolves</th></tr></thead><tbody>",
    );
    for (a, (p, r)) in hv.appliances.iter().zip(&totals) {
        let name = esc(&a.appliance);
        for i in 0..n {
            let (pc, rc) = (a.pages[i], a.resolves[i]);
            if pc > 0 || rc > 0 {
                h.push_str(&format!(
                    "<tr><th scope=\"row\">{name}</th><td>{}</td><td>{pc}</td><td>{rc}</td></tr>",
                    span(i)
                ));
            }
        }
        h.push_str(&format!(
            "<tr><th scope=\"row\">{name}</th><td>all 24 hours</td><td>{p}</td><td>{r}</td></tr>"
        ));
    }
    // A table is as wide as its content whatever its own width: the wrapper clips it.
    h.push_str("</tbody></table></div>");
    h
}

/// The "Last 24 hours" section: legend, picture, and what the scale means.
fn history_section(hv: Option<&HistoryView>) -> String {
    let mut h =
        String::from("<h2 id=\"history-h\">Last 24 hours</h2><div class=\"card\" id=\"history\">");
    match hv {
        Some(hv) if !hv.appliances.is_empty() && hv.buckets() > 0 => {
            let quiet = hv
                .appliances
                .iter()
                .all(|a| a.pages.iter().chain(&a.resolves).all(|&c| c == 0));
            h.push_str(
                "<div class=\"muted legend\" aria-hidden=\"true\"><span class=\"key key-pages\"></span> pages (incidents opened) <span class=\"key key-resolves\"></span> resolves &middot; 15-minute buckets, times in UTC</div>",
            );
            h.push_str(&history_svg(hv));
            if quiet {
                h.push_str("<div class=\"muted\" id=\"history-quiet\">Nothing paged or resolved in the last 24 hours.</div>");
            }
        }
        _ => h.push_str("<div class=\"muted\">No history yet (the poller keeps it in memory since its start).</div>"),
    }
    h.push_str("</div>");
    h
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
.card{background:#fff;border-radius:6px;padding:10px 12px;margin:6px 0;box-shadow:0 1px 2px rgba(0,0,0,.08);overflow-wrap:anywhere}\
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:6px}\
.k{color:#5b6472;font-size:.8rem}.v{font-size:1.05rem;font-weight:600}\
ul{list-style:none;padding:0;margin:0}li.alert{border-left:6px solid #888}\
.sev{display:inline-block;padding:1px 8px;border-radius:10px;font-size:.8rem;font-weight:700;color:#fff;background:#888}\
.sev.sev-critical{background:#b3261e}li.sev-critical{border-left-color:#b3261e}\
.sev.sev-warning{background:#b26a00}li.sev-warning{border-left-color:#e09000}\
.sev.sev-unknown{background:#5b6472}.sev.sev-disabled{background:#8a8f98}\
.muted{color:#5b6472;font-size:.85rem}a{color:#0b57d0;word-break:break-all}\
.ok{color:#1e7b34}.bad{color:#b3261e}\
.chips{display:flex;flex-wrap:wrap;gap:6px;margin-bottom:6px}\
table.summary{width:100%;table-layout:fixed;border-collapse:collapse;font-size:.9rem}\
table.summary th,table.summary td{text-align:right;padding:3px 4px;border-bottom:1px solid #e3e6ea;overflow-wrap:anywhere}\
table.summary th[scope=row],table.summary thead th:first-child{text-align:left;width:40%}\
table.summary thead th{font-size:.8rem;overflow-wrap:normal}\
svg.history{display:block;width:100%;height:auto;max-width:640px}\
svg.history text{font-size:13px;fill:#1d2330}svg.history .counts,svg.history .tick{fill:#5b6472}\
svg.history .pages rect{fill:#b3261e}svg.history .resolves rect{fill:#1e7b34}\
svg.history line.base{stroke:#8a8f98;stroke-width:1}svg.history line.grid{stroke:#e3e6ea;stroke-width:1}\
@media (max-width:520px){svg.history text{font-size:21px}}\
.key{display:inline-block;width:10px;height:10px;border-radius:2px;vertical-align:middle}\
.key-pages{background:#b3261e}.key-resolves{background:#1e7b34}\
.marker{display:inline-block;padding:0 6px;border-radius:8px;font-size:.75rem;background:#e3e6ea;color:#1d2330}\
.marker-flapping{background:#fde7c8;color:#5c3200}\
.sr-only{position:absolute;width:1px;height:1px;padding:0;margin:-1px;overflow:hidden;clip:rect(0,0,0,0);white-space:nowrap;border:0}";

/// Re-fetches the page and swaps `<main>`. Only `<main>` is parsed: the new page's `<style>`
/// carries its own response's nonce, and parsing it (even in a DOMParser document) is a CSP
/// violation of this page, one per refresh.
const SCRIPT: &str = "(function(){var m=document.getElementById('main');if(!m)return;\
m.setAttribute('data-live','on');\
var s=parseInt(m.getAttribute('data-refresh'),10)||10;\
function tick(){fetch(location.href,{cache:'no-store',credentials:'same-origin'})\
.then(function(r){return r.text();}).then(function(t){var a=t.indexOf('<main'),b=t.lastIndexOf('</main>');if(a<0||b<a)return;\
var d=new DOMParser().parseFromString(t.slice(a,b+7),'text/html');\
var n=d.getElementById('main');if(n){m.innerHTML=n.innerHTML;}})\
.catch(function(){}).then(function(){setTimeout(tick,s*1000);});}\
setTimeout(tick,s*1000);})();";

/// Renders the page body (`<main>`) from a status view, or from the reason there is none.
/// Active and upcoming silences (maintenance windows); nothing when there are none.
fn silences_section(v: &StatusView, now: DateTime<Utc>) -> String {
    use crate::pipeline::silence::SilenceState;
    if v.silences.is_empty() {
        return String::new();
    }
    let mut h = format!(
        "<h2>Silences (<span id=\"silence-count\">{}</span>)</h2><ul id=\"silences\">",
        v.silences.len()
    );
    for s in &v.silences {
        let x = &s.silence;
        // Judged again here: the view may be a few seconds old, or from another process.
        let (state, when) = if x.state(now) == SilenceState::Pending {
            (
                "upcoming",
                format!("starts {}", x.starts_at.format("%Y-%m-%d %H:%M UTC")),
            )
        } else {
            (
                "active",
                format!(
                    "until {} ({})",
                    x.ends_at.format("%Y-%m-%d %H:%M UTC"),
                    age_until(x.ends_at, now)
                ),
            )
        };
        let matchers = x
            .matchers
            .iter()
            .map(|(k, v)| format!("<code>{}={}</code>", esc(k), esc(v)))
            .collect::<Vec<_>>()
            .join(" ");
        h.push_str(&format!(
            "<li class=\"card silence silence-{state}\" data-silence=\"{}\"><span class=\"marker marker-silenced\">{state}</span> \
<strong>{}</strong><div class=\"muted\">{} &middot; by {} &middot; {}</div><div class=\"muted\">id {}</div></li>",
            esc(&x.id),
            esc(&x.comment),
            esc(&when),
            esc(&x.created_by),
            matchers,
            esc(&x.id),
        ));
    }
    h.push_str("</ul>");
    h
}

/// "2 h 5 min left" for an end in the future.
fn age_until(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let mins = (t - now).num_minutes().max(0);
    match (mins / 60, mins % 60) {
        (0, m) => format!("{m} min left"),
        (h, 0) => format!("{h} h left"),
        (h, m) => format!("{h} h {m} min left"),
    }
}

pub fn render_main(view: Result<&StatusView, &str>, refresh: u64) -> String {
    render_main_at(view, refresh, Utc::now())
}

/// [`render_main`] as of `now` (ages are relative to it).
pub fn render_main_at(view: Result<&StatusView, &str>, refresh: u64, now: DateTime<Utc>) -> String {
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
    h.push_str(&summary(v));
    h.push_str(&history_section(v.history.as_ref()));
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
    h.push_str(&silences_section(v, now));
    h.push_str(&format!(
        "<h2>Open alerts (<span id=\"alert-count\">{}</span>)</h2><ul id=\"alerts\">",
        v.alerts.len()
    ));
    if v.alerts.is_empty() {
        h.push_str("<li class=\"card muted\" id=\"no-alerts\">No open alerts. All quiet.</li>");
    }
    for a in &v.alerts {
        let sev_cls = class_word(&a.severity);
        let created = a.created.as_deref().unwrap_or("?");
        let age = match open_for(created, now) {
            Some(words) => format!(
                "<span class=\"age\" title=\"raised {}\">{words}</span>",
                esc(created)
            ),
            None => format!("raised {}", esc(created)),
        };
        let markers: String = a
            .markers
            .iter()
            .map(|m| {
                format!(
                    " <span class=\"marker marker-{}\" data-marker=\"{}\"{}>{}</span>",
                    class_word(&m.kind),
                    esc(&m.kind),
                    m.detail
                        .as_deref()
                        .map(|d| format!(" title=\"{}\"", esc(d)))
                        .unwrap_or_default(),
                    esc(&m.kind)
                )
            })
            .collect();
        // Re-checked here: the view may come from another process (role `web`).
        let incident = a
            .incident_url
            .as_deref()
            .and_then(http_url)
            .map(|u| {
                format!(
                    " &middot; <a class=\"incident\" href=\"{}\" rel=\"noopener noreferrer\">PagerDuty incident</a>",
                    esc(&u)
                )
            })
            .unwrap_or_default();
        h.push_str(&format!(
            "<li class=\"card alert sev-{sev_cls}\" data-key=\"{}\"><span class=\"sev sev-{sev_cls}\">{}</span>{markers} \
<strong class=\"desc\">{}</strong><div class=\"muted\"><span class=\"appliance\">{}</span> &middot; {}{} &middot; {age}</div>\
<div>PagerDuty: <span class=\"pd\">{}</span>{}</div><div><a href=\"{}\" rel=\"noopener\">Open in OneView</a>{incident}</div></li>",
            esc(&a.dedup_key),
            esc(&a.severity),
            esc(a.description.as_deref().unwrap_or("(no description)")),
            esc(&a.appliance),
            esc(a.resource_name.as_deref().unwrap_or("")),
            if a.resource_name.is_some() { " &middot; " } else { "" }.to_owned() + &esc(&a.uri),
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
<title>OneView &rarr; PagerDuty bridge</title><link rel=\"icon\" href=\"/favicon.svg\" type=\"image/svg+xml\"><style nonce=\"{nonce}\">{STYLE}</style></head>\
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

/// The page's icon (bars in the picture's colours). Served without a token: without one the
/// browser asks for `/favicon.ico`, whose 404 is a console error on every visit.
const FAVICON: &str = "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 16 16\">\
<rect width=\"16\" height=\"16\" rx=\"3\" fill=\"#1d2330\"/><rect x=\"3\" y=\"4\" width=\"3\" height=\"6\" fill=\"#e0493e\"/>\
<rect x=\"7\" y=\"2\" width=\"3\" height=\"8\" fill=\"#e0493e\"/><rect x=\"11\" y=\"10\" width=\"3\" height=\"4\" fill=\"#3fae5a\"/></svg>";

pub async fn favicon() -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        FAVICON,
    )
        .into_response()
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

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn ages_in_words() {
        let now = at("2026-03-01T12:00:00Z");
        let age = |c: &str| open_for(c, now);
        assert_eq!(
            age("2026-03-01T08:48:00.000Z").as_deref(),
            Some("open for 3 h 12 min")
        );
        assert_eq!(age("2026-03-01T09:00:00Z").as_deref(), Some("open for 3 h"));
        assert_eq!(
            age("2026-03-01T11:59:30Z").as_deref(),
            Some("open for under a minute")
        );
        assert_eq!(
            age("2026-03-01T11:13:10+00:00").as_deref(),
            Some("open for 46 min")
        );
        assert_eq!(
            age("2026-02-27T07:00:00Z").as_deref(),
            Some("open for 2 d 5 h")
        );
        assert_eq!(age("2026-02-27T12:00:00Z").as_deref(), Some("open for 2 d"));
        // A stamp ahead of this clock (appliance clock skew) is not a negative age.
        assert_eq!(
            age("2026-03-01T12:05:00Z").as_deref(),
            Some("open for under a minute")
        );
        assert_eq!(age("yesterday"), None);
    }

    fn alert(appliance: &str, severity: &str, description: &str) -> TrackedAlert {
        TrackedAlert {
            dedup_key: format!("oneview:{appliance}:/rest/alerts/1"),
            appliance: appliance.to_owned(),
            uri: "/rest/alerts/1".to_owned(),
            severity: severity.to_owned(),
            state: "Active".to_owned(),
            description: Some(description.to_owned()),
            resource_name: None,
            oneview_link: "https://ov/#/activity/r/rest/alerts/1".to_owned(),
            created: Some("2026-03-01T08:48:00Z".to_owned()),
            modified: None,
            route: None,
            pagerduty: None,
            incident_url: None,
            markers: Vec::new(),
            silenced_by: None,
            flapping: false,
        }
    }

    fn view(alerts: Vec<TrackedAlert>, history: Option<HistoryView>) -> StatusView {
        let appliance = |name: &str| crate::web::control::ApplianceView {
            name: name.to_owned(),
            ui_url: format!("https://{name}"),
            session: "logged_in".to_owned(),
            api_version: Some(2400),
            last_successful_poll: Some(at("2026-03-01T11:59:58Z")),
            last_error: None,
            open_alerts: 0,
            cycles: 3,
            poll_interval_seconds: 30,
            bus: None,
        };
        StatusView {
            appliances: vec![appliance("dc1"), appliance("dc<2>")],
            poll_interval_seconds: 30,
            queue_depth: 0,
            in_flight: 0,
            oldest_queued_age_seconds: 0.0,
            dead_letters_total: 0,
            dead_letters: Vec::new(),
            recent_errors: Vec::new(),
            alerts,
            generated: at("2026-03-01T12:00:00Z"),
            history,
            silences: Vec::new(),
        }
    }

    #[test]
    fn alerts_show_age_incident_link_and_hostile_text_inert() {
        let now = at("2026-03-01T12:00:00Z");
        let mut a = alert(
            "dc1",
            "Critical",
            "<script>alert(\"x\")</script> it's 'bad'",
        );
        a.incident_url =
            Some("https://acme.pagerduty.com/incidents/Q1\"onmouseover=\"x".to_owned());
        let mut b = alert("dc<2>", "Warning", "fan");
        b.incident_url = Some("javascript:alert(1)".to_owned());
        let mut c = alert("dc1", "Warning", "psu");
        c.incident_url = Some("data:text/html,<script>x</script>".to_owned());
        c.markers.push(crate::web::control::AlertMarker {
            kind: "fl<a>pping".to_owned(),
            detail: Some("\"><script>".to_owned()),
        });
        let m = render_main_at(
            Ok(&view(vec![a.clone(), b.clone(), c.clone()], None)),
            10,
            now,
        );
        assert!(!m.contains("<script"), "{m}");
        assert!(
            m.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; it&#39;s &#39;bad&#39;")
        );
        assert_eq!(m.matches("open for 3 h 12 min").count(), 3);
        // The https URL is a link (its quote percent-encoded by the URL parser, so the
        // attribute cannot be left); the others are no link at all.
        assert_eq!(m.matches("class=\"incident\"").count(), 1, "{m}");
        assert!(m.contains(
            "<a class=\"incident\" href=\"https://acme.pagerduty.com/incidents/Q1%22onmouseover=%22x\" rel=\"noopener noreferrer\">"
        ));
        assert!(!m.contains("javascript:") && !m.contains("data:text"));
        assert!(m.contains("<span class=\"marker marker-flapping\" data-marker=\"fl&lt;a&gt;pping\" title=\"&quot;&gt;&lt;script&gt;\">"));
        // The estate summary: by severity, and by appliance (also the escaped name).
        assert!(m.contains("data-severity=\"Critical\">Critical <b>1</b>"));
        assert!(m.contains("data-severity=\"Warning\">Warning <b>2</b>"));
        assert!(m.contains("<tr data-appliance=\"dc1\"><th scope=\"row\">dc1</th><td class=\"bad\">1</td><td>1</td><td class=\"total\">2</td></tr>"));
        assert!(m.contains("<tr data-appliance=\"dc&lt;2&gt;\"><th scope=\"row\">dc&lt;2&gt;</th><td>0</td><td>1</td><td class=\"total\">1</td></tr>"));
        assert!(!m.contains(">Other<"), "no column of zeros");
        // A severity outside Critical and Warning gets its chip and the Other column.
        let odd = alert("dc<2>", "Unknown", "sensor");
        let m = render_main_at(Ok(&view(vec![a, b, c, odd], None)), 10, now);
        assert!(m.contains("data-severity=\"Unknown\">Unknown <b>1</b>"));
        assert!(m.contains("<tr data-appliance=\"dc&lt;2&gt;\"><th scope=\"row\">dc&lt;2&gt;</th><td>0</td><td>1</td><td>1</td><td class=\"total\">2</td></tr>"));
    }

    #[test]
    fn the_picture_has_two_series_per_appliance_and_the_numbers_as_text() {
        use crate::web::history::{History, Tally};
        let h = History::new(["dc1", "dc<2>\"&'"].map(std::sync::Arc::<str>::from));
        let t = at("2026-03-01T10:07:00Z");
        for _ in 0..3 {
            h.record("dc1", Tally::Page, t);
        }
        h.record("dc1", Tally::Resolve, at("2026-03-01T11:40:00Z"));
        h.record("dc<2>\"&'", Tally::Page, at("2026-02-28T23:59:00Z"));
        let hv = h.view(at("2026-03-01T12:00:00Z"));
        let svg = history_svg(&hv);
        assert_eq!(svg.matches("<g class=\"series ").count(), 4);
        assert_eq!(svg.matches("<g class=\"series pages\"").count(), 2);
        assert!(svg.contains("data-series=\"4\""));
        assert_eq!(
            svg.matches("<rect ").count(),
            3,
            "one bar per non-empty bucket"
        );
        assert!(svg.contains("<title>dc1, 10:00\u{2013}10:15 UTC: 3 pages</title>"));
        assert!(svg.contains(
            "dc&lt;2&gt;&quot;&amp;&#39; <tspan class=\"counts\">1 pages, 0 resolves</tspan>"
        ));
        assert!(!svg.contains("dc<2>"), "names escaped everywhere");
        assert!(
            svg.contains("<title id=\"history-title\">")
                && svg.contains("<desc id=\"history-desc\">")
        );
        assert!(svg.contains("dc1: 3 pages, 1 resolves."));
        // UTC axis: the window 12:15 yesterday .. 12:15 today has ticks at 18, 00, 06, 12.
        for l in [">18:00<", ">00:00<", ">06:00<", ">12:00<"] {
            assert!(svg.contains(l), "{l}");
        }
        assert_eq!(svg.matches("class=\"tick\"").count(), 4);
        assert!(!svg.contains(">now<"), "12:00 is right beside it");
        assert!(history_svg(&h.view(at("2026-03-01T09:20:00Z"))).contains(">now</text>"));
        // A long name is cut in the row's label, whole in the bars' titles and the table.
        let long = "synergy-frame-7.datacentre-west.example.com";
        let lh = History::new([std::sync::Arc::<str>::from(long)]);
        lh.record(long, Tally::Page, t);
        let ls = history_svg(&lh.view(at("2026-03-01T12:00:00Z")));
        assert!(
            ls.contains(">synergy-frame-7.datacentre-west\u{2026} <tspan"),
            "{ls}"
        );
        assert!(ls.contains(&format!("<title>{long}, 10:00")));
        assert!(ls.contains(&format!(
            "<tr><th scope=\"row\">{long}</th><td>all 24 hours"
        )));
        // The hidden table: three non-empty buckets and two total rows.
        let table = &svg[svg.find("<table").unwrap()..];
        assert_eq!(table.matches("<tr><th scope=\"row\">").count(), 5);
        assert!(table.contains("<td>10:00\u{2013}10:15 UTC</td><td>3</td><td>0</td>"));
        assert!(
            !svg.contains(" style="),
            "no style attributes: the CSP refuses them"
        );
        // The page carries it, and says so when the poller sends none.
        let now = at("2026-03-01T12:00:00Z");
        assert!(
            render_main_at(Ok(&view(Vec::new(), Some(hv))), 10, now).contains("id=\"history-svg\"")
        );
        let m = render_main_at(Ok(&view(Vec::new(), None)), 10, now);
        assert!(!m.contains("<svg") && m.contains("No history yet"));
    }
}
