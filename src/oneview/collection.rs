//! Walking a OneView collection: explicit `count`, `nextPageUri` until `total`, the envelope
//! quirks (page URIs `null` or `""`, a next page equal to the current one), URL-encoded filters,
//! and the split between a malformed alert (skipped and counted) and a malformed page (the
//! walk fails).

use std::collections::HashSet;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;

use super::client::OneViewClient;
use super::error::{OneViewError, snippet};
use super::metrics::OneViewMetrics;
use crate::model::Alert;

/// Pages a walk may take before it is considered runaway (500 alerts a page: 5 million).
const MAX_PAGES: usize = 10_000;

/// A `/rest/alerts` query.
#[derive(Debug, Clone, Default)]
pub struct AlertQuery {
    /// Filter expressions without the surrounding double quotes, ANDed by the appliance.
    pub filters: Vec<String>,
    pub sort: Option<String>,
    pub page_size: u32,
}

impl AlertQuery {
    /// The path and query of one page, filters encoded like OneView's own clients do
    /// (`filter=%22alertState%3D%27Active%27%22`).
    pub fn path(&self, start: u64) -> String {
        let mut p = format!("/rest/alerts?start={start}&count={}", self.page_size);
        for f in &self.filters {
            p.push_str("&filter=");
            p.push_str(&encode(&format!("\"{f}\"")));
        }
        if let Some(s) = &self.sort {
            p.push_str("&sort=");
            p.push_str(&encode(s));
        }
        p
    }
}

/// Percent-encodes a query value; spaces become `%20` rather than `+`.
pub fn encode(v: &str) -> String {
    // byte_serialize writes a literal '+' as %2B, so every '+' left in its output is a space.
    url::form_urlencoded::byte_serialize(v.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// A OneView timestamp with millisecond precision, `2024-05-01T10:00:00.123Z`.
pub fn format_timestamp(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parses a OneView timestamp into unix milliseconds.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|d| d.timestamp_millis())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPage {
    members: Vec<serde_json::Value>,
    #[serde(default)]
    total: Option<u64>,
    #[serde(default)]
    next_page_uri: Option<String>,
    #[serde(default)]
    uri: Option<String>,
}

/// One collection page, decoded.
#[derive(Debug, Default)]
pub struct Page {
    /// Members that are alerts with a uri.
    pub alerts: Vec<Alert>,
    /// Members that are not: `(index, uri if any, why)`.
    pub malformed: Vec<(usize, Option<String>, String)>,
    /// Members received, malformed ones included.
    pub received: usize,
    pub total: Option<u64>,
    pub next_page_uri: Option<String>,
    pub uri: Option<String>,
}

/// Decodes one page of an alert collection. An envelope that is not one (garbage, HTML, no
/// `members`) is an error; a member that is not an alert is only counted as malformed, so one
/// bad alert never hides the others.
pub fn parse_page(body: &[u8]) -> Result<Page, serde_json::Error> {
    let raw: RawPage = serde_json::from_slice(body)?;
    let mut page = Page {
        received: raw.members.len(),
        total: raw.total,
        next_page_uri: raw.next_page_uri,
        uri: raw.uri,
        ..Page::default()
    };
    for (i, m) in raw.members.into_iter().enumerate() {
        let uri = m.get("uri").and_then(|u| u.as_str()).map(str::to_owned);
        match serde_json::from_value::<Alert>(m) {
            Ok(a) if !a.uri.is_empty() => page.alerts.push(a),
            Ok(_) => page
                .malformed
                .push((i, None, "an alert without a uri".to_owned())),
            Err(e) => page.malformed.push((i, uri, e.to_string())),
        }
    }
    Ok(page)
}

/// The result of a walk.
#[derive(Debug, Default)]
pub struct Walk {
    pub alerts: Vec<Alert>,
    /// Members received, malformed ones included.
    pub members: usize,
    pub malformed: usize,
    pub pages: usize,
    /// A lower bound of the appliance's clock when the first page was evaluated (its `Date`
    /// header minus the round trip), unix millis.
    pub appliance_clock_floor_ms: Option<i64>,
    /// The collection changed while it was walked (`total` moved, or fewer members than
    /// `total` arrived): offset paging may have skipped members.
    pub shifted: bool,
}

/// Fetches every page of `query`.
pub async fn fetch_all(
    client: &OneViewClient,
    query: &AlertQuery,
    metrics: &OneViewMetrics,
) -> Result<Walk, OneViewError> {
    let mut walk = Walk::default();
    let mut path = query.path(0);
    let mut visited: HashSet<String> = HashSet::new();
    visited.insert(path.clone());
    let mut first_total: Option<u64> = None;
    let mut last_total: Option<u64>;
    loop {
        let reply = client.get_page(&path).await?;
        let page = parse_page(&reply.body).map_err(|e| OneViewError::BadResponse {
            endpoint: "alerts",
            url: reply.url.clone(),
            detail: format!(
                "not an alert collection page: {e}; {}",
                snippet(&reply.body)
            ),
        })?;
        if walk.pages == 0 {
            walk.appliance_clock_floor_ms = reply
                .date_ms
                .map(|d| d - i64::try_from(reply.elapsed.as_millis()).unwrap_or(i64::MAX / 2) - 1);
        }
        walk.pages += 1;
        if walk.pages == 1 {
            first_total = page.total;
        }
        last_total = page.total;
        let received = page.received;
        walk.members += received;
        walk.alerts.extend(page.alerts);
        for (i, uri, why) in &page.malformed {
            walk.malformed += 1;
            metrics.alerts_malformed.inc();
            tracing::warn!(page = %reply.url, index = i, alert_uri = uri.as_deref().unwrap_or(""), error = %why, "skipping a malformed alert");
        }
        if received == 0 {
            break;
        }
        if page.total.is_some_and(|t| walk.members as u64 >= t) {
            break;
        }
        let next = page.next_page_uri.filter(|n| !n.is_empty());
        match next {
            Some(n) => {
                let current = page.uri.as_deref().unwrap_or(&path);
                if n == current || n == path || !visited.insert(n.clone()) {
                    tracing::debug!(page = %reply.url, "nextPageUri repeats a page; the walk ends here");
                    break;
                }
                path = n;
            }
            None => match page.total {
                // No next page although `total` is not reached: continue by offset once more;
                // an empty page ends it.
                Some(t) if (walk.members as u64) < t => {
                    let p = query.path(walk.members as u64);
                    if !visited.insert(p.clone()) {
                        break;
                    }
                    path = p;
                }
                _ => break,
            },
        }
        if walk.pages >= MAX_PAGES {
            return Err(OneViewError::BadResponse {
                endpoint: "alerts",
                url: reply.url,
                detail: format!("paging did not end after {MAX_PAGES} pages"),
            });
        }
    }
    walk.shifted =
        first_total != last_total || last_total.is_some_and(|t| (walk.members as u64) < t);
    Ok(walk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_encoding_matches_oneview_clients() {
        let q = AlertQuery {
            filters: vec!["alertState='Active'".into()],
            sort: None,
            page_size: 100,
        };
        assert_eq!(
            q.path(0),
            "/rest/alerts?start=0&count=100&filter=%22alertState%3D%27Active%27%22"
        );
        assert_eq!(encode("a b+c"), "a%20b%2Bc");
    }

    #[test]
    fn real_envelopes_with_null_and_empty_page_uris_parse() {
        for raw in [
            include_str!(
                "../../tests/fixtures/oneview/collection_envelope_null_pageuris__ruby-sdk_ethernet_networks_members.json"
            ),
            include_str!(
                "../../tests/fixtures/oneview/collection_envelope_empty_string_pageuris__redfish-toolkit_ApplianceHealthStatus.json"
            ),
        ] {
            let p: RawPage = serde_json::from_str(raw).unwrap();
            assert!(!p.members.is_empty());
            assert_eq!(p.total, Some(p.members.len() as u64));
            assert!(p.next_page_uri.filter(|n| !n.is_empty()).is_none());
            assert!(p.uri.is_some());
        }
    }

    #[test]
    fn timestamps_round_trip_with_millis() {
        let ms = parse_timestamp("2018-02-12T20:12:03.207Z").unwrap();
        assert_eq!(format_timestamp(ms), "2018-02-12T20:12:03.207Z");
    }
}
