//! REST request accounting: every call to `/oauth/*` and `/api/*` (never `/sim/*`), counted per
//! endpoint group and per `METHOD template status`, plus a bounded log with timestamps, so a
//! test can check how a client spaced its calls (for example that it waited `Retry-After`).
//!
//! A middleware outside the REST fault layer records each call once it is answered, so calls
//! answered by an injected 429/500 (or delayed) are counted like any other.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage as _};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::rest_faults::RestFaultKind;
use crate::state::Sim;

/// Which part of the API a REST call belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EndpointGroup {
    /// `POST /oauth/token` (any call under `/oauth/`).
    OauthToken,
    /// `POST /api/v2/notifications/channels`.
    ChannelCreate,
    /// Any verb on `/api/v2/notifications/channels/{id}/subscriptions`.
    Subscriptions,
    /// `GET /api/v2/routing/queues` and `GET /api/v2/users`.
    Directory,
    /// `POST /api/v2/analytics/conversations/details/query`.
    Analytics,
    /// Everything else under `/api/` (channel list, `HEAD` channel, available topics, unknown
    /// paths).
    Other,
}

impl EndpointGroup {
    fn of(method: &str, template: &str) -> Self {
        match template {
            t if t.starts_with("/oauth/") => EndpointGroup::OauthToken,
            "/api/v2/notifications/channels" if method == "POST" => EndpointGroup::ChannelCreate,
            "/api/v2/notifications/channels/{id}/subscriptions" => EndpointGroup::Subscriptions,
            "/api/v2/routing/queues" | "/api/v2/users" => EndpointGroup::Directory,
            "/api/v2/analytics/conversations/details/query" => EndpointGroup::Analytics,
            _ => EndpointGroup::Other,
        }
    }
}

/// One answered REST call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RestRequest {
    /// Position in the log, increasing by one per call (gaps mean trimmed history).
    pub seq: u64,
    /// When the request arrived.
    pub at: DateTime<Utc>,
    /// `at` in epoch milliseconds.
    pub at_ms: i64,
    /// `POST`, `GET`, …
    pub method: String,
    /// The route template (`/api/v2/notifications/channels/{id}/subscriptions`), or the raw
    /// path when no route matched.
    pub path: String,
    pub group: EndpointGroup,
    /// Status code of the answer.
    pub status: u16,
    /// The answer's `Retry-After` header (seconds), if any.
    pub retry_after_s: Option<u64>,
    /// The injected REST fault that shaped the answer, if any.
    pub fault: Option<RestFaultKind>,
    /// Time from arrival to answer, in milliseconds.
    pub latency_ms: u64,
}

/// Calls of one endpoint group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupCounts {
    pub total: u64,
    /// Status code → calls.
    pub by_status: BTreeMap<u16, u64>,
}

/// REST calls answered so far; see [`crate::SimHandle::rest_requests`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RestRequestStats {
    /// Every call counted (never trimmed).
    pub total: u64,
    /// Per endpoint group (never trimmed).
    pub by_group: BTreeMap<EndpointGroup, GroupCounts>,
    /// `"METHOD /route/template STATUS"` (e.g. `"POST /api/v2/notifications/channels 429"`) →
    /// calls (never trimmed).
    pub by_endpoint: BTreeMap<String, u64>,
    /// The most recent calls in the order they were answered (bounded by `ledger_capacity`).
    pub requests: Vec<RestRequest>,
}

impl RestRequestStats {
    /// Calls of a group, whatever their status.
    pub fn group_total(&self, group: EndpointGroup) -> u64 {
        self.by_group.get(&group).map_or(0, |g| g.total)
    }

    /// Calls of a group answered with `status`.
    pub fn group_status(&self, group: EndpointGroup, status: u16) -> u64 {
        self.by_group
            .get(&group)
            .and_then(|g| g.by_status.get(&status))
            .copied()
            .unwrap_or(0)
    }

    /// Calls of `method` on the route `template` answered with `status`.
    pub fn endpoint(&self, method: &str, template: &str, status: u16) -> u64 {
        let key = endpoint_key(method, template, status);
        self.by_endpoint.get(&key).copied().unwrap_or(0)
    }
}

fn endpoint_key(method: &str, template: &str, status: u16) -> String {
    format!("{method} {template} {status}")
}

/// The counters and the bounded log.
pub(crate) struct RequestLog {
    stats: RestRequestStats,
    log: VecDeque<RestRequest>,
    capacity: Option<usize>,
}

impl RequestLog {
    pub fn new(capacity: Option<usize>) -> Self {
        RequestLog {
            stats: RestRequestStats::default(),
            log: VecDeque::new(),
            capacity,
        }
    }

    fn record(&mut self, mut call: RestRequest) {
        call.seq = self.stats.total;
        self.stats.total += 1;
        let group = self.stats.by_group.entry(call.group).or_default();
        group.total += 1;
        *group.by_status.entry(call.status).or_default() += 1;
        let key = endpoint_key(&call.method, &call.path, call.status);
        *self.stats.by_endpoint.entry(key).or_default() += 1;
        self.log.push_back(call);
        if let Some(cap) = self.capacity {
            while self.log.len() > cap {
                self.log.pop_front();
            }
        }
    }

    /// The counters, with the logged calls of `seq >= since`.
    pub fn snapshot(&self, since: u64) -> RestRequestStats {
        let start = self.log.partition_point(|r| r.seq < since);
        RestRequestStats {
            requests: self.log.range(start..).cloned().collect(),
            ..self.stats.clone()
        }
    }

    pub fn total(&self) -> u64 {
        self.stats.total
    }
}

/// Marks a request answered (or delayed) by an injected REST fault.
#[derive(Clone, Copy)]
pub(crate) struct InjectedFault(pub RestFaultKind);

/// Middleware (outside the REST fault layer) recording every `/oauth/*` and `/api/*` call.
pub(crate) async fn request_log_layer(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let sim = req.app_data::<web::Data<Sim>>().cloned();
    let Some(sim) = sim.filter(|_| !req.path().starts_with("/sim/")) else {
        return next.call(req).await.map(|r| r.map_into_boxed_body());
    };
    let at = Utc::now();
    let started = Instant::now();
    let method = req.method().to_string();
    let raw_path = req.path().to_owned();
    let result = next.call(req).await;
    let (status, retry_after_s, fault, template) = match &result {
        Ok(resp) => (
            resp.status().as_u16(),
            resp.headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok()),
            resp.request()
                .extensions()
                .get::<InjectedFault>()
                .map(|f| f.0),
            resp.request().match_pattern(),
        ),
        Err(e) => (
            e.as_response_error().status_code().as_u16(),
            None,
            None,
            None,
        ),
    };
    let path = template.unwrap_or(raw_path);
    let call = RestRequest {
        seq: 0,
        at,
        at_ms: at.timestamp_millis(),
        group: EndpointGroup::of(&method, &path),
        method,
        path,
        status,
        retry_after_s,
        fault,
        latency_ms: started.elapsed().as_millis() as u64,
    };
    sim.requests.lock().expect("requests lock").record(call);
    result.map(|r| r.map_into_boxed_body())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(method: &str, path: &str, status: u16) -> RestRequest {
        RestRequest {
            seq: 0,
            at: Utc::now(),
            at_ms: 0,
            method: method.to_owned(),
            path: path.to_owned(),
            group: EndpointGroup::of(method, path),
            status,
            retry_after_s: None,
            fault: None,
            latency_ms: 0,
        }
    }

    #[test]
    fn counts_by_group_and_endpoint_and_trims_the_log() {
        let mut log = RequestLog::new(Some(2));
        log.record(call("POST", "/oauth/token", 200));
        log.record(call("POST", "/api/v2/notifications/channels", 429));
        log.record(call("POST", "/api/v2/notifications/channels", 200));
        log.record(call("GET", "/api/v2/notifications/channels", 200));
        let stats = log.snapshot(0);
        assert_eq!(stats.total, 4);
        assert_eq!(stats.group_total(EndpointGroup::ChannelCreate), 2);
        assert_eq!(stats.group_status(EndpointGroup::ChannelCreate, 429), 1);
        assert_eq!(stats.group_total(EndpointGroup::Other), 1);
        assert_eq!(
            stats.endpoint("POST", "/api/v2/notifications/channels", 429),
            1
        );
        assert_eq!(stats.requests.len(), 2);
        assert_eq!(stats.requests[0].seq, 2);
        assert_eq!(log.snapshot(3).requests.len(), 1);
        let json = serde_json::to_value(&stats).unwrap();
        assert_eq!(json["byGroup"]["channel_create"]["byStatus"]["429"], 1);
        assert_eq!(
            json["byEndpoint"]["POST /api/v2/notifications/channels 429"],
            1
        );
    }
}
