//! `POST /api/v2/analytics/conversations/details/query`, answered from the simulator's own
//! history of conversations.

use std::collections::{HashMap, VecDeque};

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::auth::authenticate;
use crate::config::PERM_CONVERSATION_DETAIL;
use crate::errors::{bad_request, missing_permissions};
use crate::model::Conversation;
use crate::state::Sim;

struct Record {
    start_ms: i64,
    end_ms: Option<i64>,
    ivr_only: bool,
    /// The serialised analytics conversation (kept as text: far smaller than a `Value`).
    body: String,
}

/// Every conversation the model started (kept up to a capacity), in start order.
pub(crate) struct History {
    order: VecDeque<String>,
    records: HashMap<String, Record>,
    capacity: usize,
}

impl History {
    pub fn new(capacity: usize) -> Self {
        History {
            order: VecDeque::new(),
            records: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn upsert(&mut self, conv: &Conversation) {
        let record = Record {
            start_ms: conv.start_ms,
            end_ms: conv.end_ms,
            ivr_only: conv.ivr_only,
            body: conv.analytics_json().to_string(),
        };
        if self.records.insert(conv.id.clone(), record).is_none() {
            self.order.push_back(conv.id.clone());
            while self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.records.remove(&old);
                }
            }
        }
    }

    /// Conversations overlapping `[start, end)`, by `conversationStart`.
    fn overlapping(&self, start_ms: i64, end_ms: i64) -> Vec<&Record> {
        self.order
            .iter()
            .filter_map(|id| self.records.get(id))
            .filter(|r| r.start_ms < end_ms && r.end_ms.is_none_or(|e| e > start_ms))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// The model's truth of every conversation kept, in start order.
    pub fn truth(&self) -> Vec<ConversationTruth> {
        self.order
            .iter()
            .filter_map(|id| {
                self.records.get(id).map(|r| ConversationTruth {
                    id: id.clone(),
                    start_ms: r.start_ms,
                    end_ms: r.end_ms,
                    ivr_only: r.ivr_only,
                })
            })
            .collect()
    }
}

/// What the model knows of one conversation: when it truly started and ended (epoch ms, the
/// times its snapshots and the analytics query carry), for tests to compare a client's view with.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationTruth {
    pub id: String,
    pub start_ms: i64,
    /// `None` while the conversation is still going.
    pub end_ms: Option<i64>,
    /// Ended in the IVR: never on a queue or user topic.
    pub ivr_only: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Paging {
    page_size: Option<usize>,
    page_number: Option<usize>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DetailsQuery {
    interval: String,
    #[serde(default)]
    order: Option<String>,
    #[serde(default)]
    order_by: Option<String>,
    #[serde(default)]
    paging: Option<Paging>,
}

fn parse_interval(interval: &str) -> Option<(i64, i64)> {
    let (a, b) = interval.split_once('/')?;
    let start = DateTime::parse_from_rfc3339(a.trim())
        .ok()?
        .with_timezone(&Utc);
    let end = DateTime::parse_from_rfc3339(b.trim())
        .ok()?
        .with_timezone(&Utc);
    (start < end).then(|| (start.timestamp_millis(), end.timestamp_millis()))
}

/// A token with `analytics:conversationDetail:view`, or the answer refusing the request.
fn may_read_details(sim: &Sim, req: &HttpRequest) -> Result<(), HttpResponse> {
    let caller = authenticate(sim, req)?;
    let missing = caller.missing(&[PERM_CONVERSATION_DETAIL]);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing_permissions(&missing))
    }
}

/// Largest page the details query serves (Genesys: 100).
const MAX_PAGE_SIZE: usize = 100;

pub(crate) async fn details_query(
    sim: web::Data<Sim>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    if let Err(refused) = may_read_details(&sim, &req) {
        return refused;
    }
    let query: DetailsQuery = match serde_json::from_slice(&body) {
        Ok(q) => q,
        Err(e) => return bad_request(format!("Invalid query: {e}")),
    };
    let Some((start_ms, end_ms)) = parse_interval(&query.interval) else {
        return bad_request("interval must be two ISO-8601 instants, start/end, start < end");
    };
    if let Some(order_by) = query.order_by.as_deref() {
        if order_by != "conversationStart" {
            return bad_request(format!(
                "orderBy {order_by} is not supported by the simulator"
            ));
        }
    }
    let descending = match query
        .order
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(other) => return bad_request(format!("order must be asc or desc, got {other}")),
    };
    let page_size = query
        .paging
        .as_ref()
        .and_then(|p| p.page_size)
        .unwrap_or(25);
    let page_number = query
        .paging
        .as_ref()
        .and_then(|p| p.page_number)
        .unwrap_or(1);
    if page_size == 0 || page_size > MAX_PAGE_SIZE || page_number == 0 {
        return bad_request(format!(
            "paging: pageSize must be 1..={MAX_PAGE_SIZE} and pageNumber >= 1"
        ));
    }
    let history = sim.history.lock().expect("history lock");
    let mut matches = history.overlapping(start_ms, end_ms);
    // Start order is insertion order; a stable sort keeps ties deterministic.
    matches.sort_by_key(|r| r.start_ms);
    if descending {
        matches.reverse();
    }
    let total = matches.len();
    let conversations: Vec<&str> = matches
        .iter()
        .skip((page_number - 1).saturating_mul(page_size))
        .take(page_size)
        .map(|r| r.body.as_str())
        .collect();
    // Like Genesys, an empty page has no `conversations` key at all.
    let body = if conversations.is_empty() {
        format!(r#"{{"totalHits":{total}}}"#)
    } else {
        format!(
            r#"{{"conversations":[{}],"totalHits":{total}}}"#,
            conversations.join(",")
        )
    };
    HttpResponse::Ok()
        .content_type("application/json")
        .body(body)
}

/// Largest number of ids `GET /api/v2/analytics/conversations/details` takes (Genesys: 100).
const MAX_IDS: usize = 100;

/// `GET /api/v2/analytics/conversations/details?id=a,b,…` ("Gets multiple conversations by
/// id"): the ones the history knows, as `{"conversations":[…]}`. The ids come comma-separated
/// (as the SDKs send them) or as repeated `id` parameters.
pub(crate) async fn details_by_ids(sim: web::Data<Sim>, req: HttpRequest) -> HttpResponse {
    if let Err(refused) = may_read_details(&sim, &req) {
        return refused;
    }
    let ids: Vec<String> = url::form_urlencoded::parse(req.query_string().as_bytes())
        .filter(|(k, _)| k == "id")
        .flat_map(|(_, v)| {
            v.split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
        })
        .collect();
    if ids.is_empty() || ids.len() > MAX_IDS {
        return bad_request(format!("id: 1..={MAX_IDS} conversation ids are required"));
    }
    let history = sim.history.lock().expect("history lock");
    let found: Vec<&str> = ids
        .iter()
        .filter_map(|id| history.records.get(id))
        .map(|r| r.body.as_str())
        .collect();
    HttpResponse::Ok()
        .content_type("application/json")
        .body(format!(r#"{{"conversations":[{}]}}"#, found.join(",")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_parsing() {
        let (a, b) = parse_interval("2026-11-27T10:00:00.000Z/2026-11-27T10:05:00Z").unwrap();
        assert_eq!(b - a, 300_000);
        assert!(parse_interval("2026-11-27T10:05:00Z/2026-11-27T10:00:00Z").is_none());
        assert!(parse_interval("yesterday").is_none());
    }
}
