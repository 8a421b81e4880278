//! Walking a OneView collection: explicit `count`, `nextPageUri` until `total`, the envelope
//! quirks (page URIs `null` or `""`, a next page equal to the current one), URL-encoded filters,
//! and the split between a malformed alert (skipped and counted) and a malformed page (the
//! walk fails). A `nextPageUri` is followed only when it stays on the appliance (relative, or
//! absolute with the scheme, host and port of `oneview.url`): the next request would carry
//! the session token, so a link elsewhere fails the walk with an error naming it.
//!
//! The walk is generic over the member type ([`Member`]): alerts for the poller, tasks
//! ([`crate::oneview::tasks`]) for the change events; both collections share the envelope.

use std::collections::HashSet;
use std::marker::PhantomData;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::client::OneViewClient;
use super::error::{OneViewError, snippet};
use super::metrics::{Endpoint, OneViewMetrics};
use crate::model::Alert;

/// A resource type whose collection [`Walker`] can read.
pub trait Member: serde::de::DeserializeOwned {
    /// The collection's path, `/rest/alerts`.
    const COLLECTION: &'static str;
    /// The endpoint label of its requests (metrics, errors).
    const ENDPOINT: Endpoint;
    /// What one page is, in error messages: "an alert collection page".
    const PAGE: &'static str;
    /// Its `uri`; a member without one is malformed.
    fn member_uri(&self) -> &str;
    /// Counts a malformed member in the appliance's metrics.
    fn count_malformed(metrics: &OneViewMetrics) {
        let _ = metrics;
    }
}

impl Member for Alert {
    const COLLECTION: &'static str = "/rest/alerts";
    const ENDPOINT: Endpoint = Endpoint::Alerts;
    const PAGE: &'static str = "an alert collection page";
    fn member_uri(&self) -> &str {
        &self.uri
    }
    fn count_malformed(metrics: &OneViewMetrics) {
        metrics.alerts_malformed.inc();
    }
}

/// Pages a walk may take before it is considered runaway (500 alerts a page: 5 million).
const MAX_PAGES: usize = 10_000;

/// A collection query (named for its first use, `/rest/alerts`; tasks use it too).
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
        self.path_in(Alert::COLLECTION, start)
    }

    /// [`AlertQuery::path`] of another collection (`/rest/tasks`).
    pub fn path_in(&self, collection: &str, start: u64) -> String {
        let mut p = format!("{collection}?start={start}&count={}", self.page_size);
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
struct RawPage<'a> {
    /// Kept raw so that one malformed member is skipped alone; each is then decoded straight
    /// into an [`Alert`] (going through `serde_json::Value` cost most of a storm's CPU).
    #[serde(borrow)]
    members: Vec<&'a RawValue>,
    #[serde(default)]
    total: Option<u64>,
    #[serde(default)]
    next_page_uri: Option<String>,
    #[serde(default)]
    uri: Option<String>,
}

/// One collection page, decoded.
#[derive(Debug)]
pub struct Page<M = Alert> {
    /// Members that decoded (alerts, tasks) with a uri.
    pub alerts: Vec<M>,
    /// Members that are not: `(index, uri if any, why)`.
    pub malformed: Vec<(usize, Option<String>, String)>,
    /// Members received, malformed ones included.
    pub received: usize,
    pub total: Option<u64>,
    pub next_page_uri: Option<String>,
    pub uri: Option<String>,
}

impl<M> Default for Page<M> {
    fn default() -> Self {
        Self {
            alerts: Vec::new(),
            malformed: Vec::new(),
            received: 0,
            total: None,
            next_page_uri: None,
            uri: None,
        }
    }
}

/// Decodes one page of an alert collection. An envelope that is not one (garbage, HTML, no
/// `members`) is an error; a member that is not an alert is only counted as malformed, so one
/// bad alert never hides the others.
pub fn parse_page(body: &[u8]) -> Result<Page, serde_json::Error> {
    decode_page(body, None)
}

/// `skip(uri, modified)`: true for a member not worth decoding.
pub type Skip<'a> = &'a (dyn Fn(&str, Option<&str>) -> bool + Sync);

/// The two fields an incremental poll looks at before it decodes a whole alert.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow, default)]
    uri: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    modified: Option<std::borrow::Cow<'a, str>>,
}

/// [`parse_page`], leaving out the members for which `skip(uri, modified)` is true without
/// decoding them (an incremental poll sees every alert of its overlap window again).
pub fn parse_page_skipping(body: &[u8], skip: Skip<'_>) -> Result<Page, serde_json::Error> {
    decode_page(body, Some(skip))
}

/// Without `skip` (full syncs) no member is read twice.
fn decode_page<M: Member>(
    body: &[u8],
    skip: Option<Skip<'_>>,
) -> Result<Page<M>, serde_json::Error> {
    let raw: RawPage = serde_json::from_slice(body)?;
    let mut page = Page {
        received: raw.members.len(),
        total: raw.total,
        next_page_uri: raw.next_page_uri,
        uri: raw.uri,
        ..Page::default()
    };
    page.alerts.reserve(raw.members.len());
    for (i, m) in raw.members.into_iter().enumerate() {
        if let Some(skip) = skip
            && let Ok(Head {
                uri: Some(uri),
                modified,
            }) = serde_json::from_str::<Head>(m.get())
            && skip(&uri, modified.as_deref())
        {
            continue;
        }
        match serde_json::from_str::<M>(m.get()) {
            Ok(a) if !a.member_uri().is_empty() => page.alerts.push(a),
            Ok(_) => page
                .malformed
                .push((i, None, "a member without a uri".to_owned())),
            Err(e) => page.malformed.push((i, member_uri(m), e.to_string())),
        }
    }
    Ok(page)
}

/// The `uri` of a member that is not a valid alert, when it has one (for the log line).
fn member_uri(m: &RawValue) -> Option<String> {
    #[derive(Deserialize)]
    struct UriOnly {
        uri: Option<serde_json::Value>,
    }
    serde_json::from_str::<UriOnly>(m.get())
        .ok()
        .and_then(|u| u.uri)
        .and_then(|u| u.as_str().map(str::to_owned))
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

/// Reads the pages of `query` one at a time, so that a caller can act on each page and let it
/// go: a storm of 100,000 new alerts never sits in memory as a whole.
pub struct Walker<'a, M: Member = Alert> {
    client: &'a OneViewClient,
    query: &'a AlertQuery,
    metrics: &'a OneViewMetrics,
    path: String,
    visited: HashSet<String>,
    first_total: Option<u64>,
    last_total: Option<u64>,
    done: bool,
    /// Members received, malformed ones included.
    pub members: usize,
    pub malformed: usize,
    pub pages: usize,
    /// A lower bound of the appliance's clock when the first page was evaluated (its `Date`
    /// header minus the round trip), unix millis.
    pub appliance_clock_floor_ms: Option<i64>,
    member: PhantomData<fn() -> M>,
}

impl<'a> Walker<'a, Alert> {
    /// A walk of `/rest/alerts`.
    pub fn new(
        client: &'a OneViewClient,
        query: &'a AlertQuery,
        metrics: &'a OneViewMetrics,
    ) -> Self {
        Self::of(client, query, metrics)
    }
}

impl<'a, M: Member> Walker<'a, M> {
    /// A walk of `M`'s collection.
    pub fn of(
        client: &'a OneViewClient,
        query: &'a AlertQuery,
        metrics: &'a OneViewMetrics,
    ) -> Self {
        let path = query.path_in(M::COLLECTION, 0);
        let mut visited = HashSet::new();
        visited.insert(path.clone());
        Self {
            client,
            query,
            metrics,
            path,
            visited,
            first_total: None,
            last_total: None,
            done: false,
            members: 0,
            malformed: 0,
            pages: 0,
            appliance_clock_floor_ms: None,
            member: PhantomData,
        }
    }

    /// The valid members of the next page; `None` once the walk is over.
    pub async fn next_page(&mut self) -> Result<Option<Vec<M>>, OneViewError> {
        self.next(None).await
    }

    /// [`Walker::next_page`] without the members for which `skip(uri, modified)` is true
    /// (they still count as received).
    pub async fn next_page_skipping(
        &mut self,
        skip: Skip<'_>,
    ) -> Result<Option<Vec<M>>, OneViewError> {
        self.next(Some(skip)).await
    }

    async fn next(&mut self, skip: Option<Skip<'_>>) -> Result<Option<Vec<M>>, OneViewError> {
        if self.done {
            return Ok(None);
        }
        let reply = self
            .client
            .get_collection_page(M::ENDPOINT, &self.path)
            .await?;
        let page = decode_page::<M>(&reply.body, skip).map_err(|e| {
            self.client.scrub(OneViewError::BadResponse {
                endpoint: M::ENDPOINT.as_str(),
                url: reply.url.clone(),
                detail: format!("not {}: {e}; {}", M::PAGE, snippet(&reply.body)),
            })
        })?;
        drop(reply.body);
        if self.pages == 0 {
            self.appliance_clock_floor_ms = reply
                .date_ms
                .map(|d| d - i64::try_from(reply.elapsed.as_millis()).unwrap_or(i64::MAX / 2) - 1);
            self.first_total = page.total;
        }
        self.pages += 1;
        self.last_total = page.total;
        let received = page.received;
        self.members += received;
        for (i, uri, why) in &page.malformed {
            self.malformed += 1;
            M::count_malformed(self.metrics);
            tracing::warn!(page = %reply.url, index = i, member_uri = uri.as_deref().unwrap_or(""), error = %why, "skipping a malformed collection member");
        }
        self.done = self.advance(received, &page, &reply.url)?;
        Ok(Some(page.alerts))
    }

    /// Picks the next page; `true` when this one was the last.
    fn advance(
        &mut self,
        received: usize,
        page: &Page<M>,
        url: &str,
    ) -> Result<bool, OneViewError> {
        if received == 0 {
            return Ok(true);
        }
        if page.total.is_some_and(|t| self.members as u64 >= t) {
            return Ok(true);
        }
        match page.next_page_uri.as_deref().filter(|n| !n.is_empty()) {
            Some(n) => {
                self.client
                    .resolve(n, &format!("the nextPageUri of {url}"))?;
                let current = page.uri.as_deref().unwrap_or(&self.path);
                if n == current || n == self.path || !self.visited.insert(n.to_owned()) {
                    tracing::debug!(page = %url, "nextPageUri repeats a page; the walk ends here");
                    return Ok(true);
                }
                self.path = n.to_owned();
            }
            None => match page.total {
                // No next page although `total` is not reached: continue by offset once more;
                // an empty page ends it.
                Some(t) if (self.members as u64) < t => {
                    let p = self.query.path_in(M::COLLECTION, self.members as u64);
                    if !self.visited.insert(p.clone()) {
                        return Ok(true);
                    }
                    self.path = p;
                }
                _ => return Ok(true),
            },
        }
        if self.pages >= MAX_PAGES {
            return Err(OneViewError::BadResponse {
                endpoint: M::ENDPOINT.as_str(),
                url: url.to_owned(),
                detail: format!("paging did not end after {MAX_PAGES} pages"),
            });
        }
        Ok(false)
    }

    /// The collection changed while it was walked (`total` moved, or fewer members than
    /// `total` arrived): offset paging may have skipped members. Meaningful once the walk ended.
    pub fn shifted(&self) -> bool {
        self.first_total != self.last_total
            || self.last_total.is_some_and(|t| (self.members as u64) < t)
    }
}

/// Fetches every page of `query` into one [`Walk`].
pub async fn fetch_all(
    client: &OneViewClient,
    query: &AlertQuery,
    metrics: &OneViewMetrics,
) -> Result<Walk, OneViewError> {
    let mut w = Walker::new(client, query, metrics);
    let mut alerts = Vec::new();
    while let Some(page) = w.next_page().await? {
        alerts.extend(page);
    }
    Ok(Walk {
        alerts,
        members: w.members,
        malformed: w.malformed,
        pages: w.pages,
        appliance_clock_floor_ms: w.appliance_clock_floor_ms,
        shifted: w.shifted(),
    })
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
    fn skipped_members_are_counted_but_not_decoded() {
        let body = br#"{"members":[
            {"uri":"/rest/alerts/1","modified":"2024-05-01T10:00:00.000Z","severity":"Critical","alertState":"Active"},
            {"uri":"/rest/alerts/2","modified":"2024-05-01T10:00:01.000Z","severity":"Warning","alertState":"Active"},
            {"uri":"/rest/alerts/3","severity":{"not":"a string"}},
            42
        ],"total":4}"#;
        let p = parse_page_skipping(body, &|uri, m| {
            uri == "/rest/alerts/1" && m == Some("2024-05-01T10:00:00.000Z")
        })
        .unwrap();
        assert_eq!(p.received, 4);
        assert_eq!(p.alerts.len(), 1);
        assert_eq!(p.alerts[0].uri, "/rest/alerts/2");
        let bad: Vec<_> = p
            .malformed
            .iter()
            .map(|(i, u, _)| (*i, u.clone()))
            .collect();
        assert_eq!(bad, vec![(2, Some("/rest/alerts/3".to_owned())), (3, None)]);
        assert_eq!(parse_page(body).unwrap().alerts.len(), 2);
    }

    #[test]
    fn timestamps_round_trip_with_millis() {
        let ms = parse_timestamp("2018-02-12T20:12:03.207Z").unwrap();
        assert_eq!(format_timestamp(ms), "2018-02-12T20:12:03.207Z");
    }
}
