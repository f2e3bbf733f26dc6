//! `/sim/*`: the simulator's own control surface (ledger, missed log, published log, channel
//! log, REST request counts, channels, rate, queues, info), used by tests and scripts driving the binary. Faults live in
//! `faults.rs` (`POST /sim/faults`).

use std::collections::HashMap;
use std::fmt::Write as _;

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};

use crate::channel_log::ChannelLogEntry;
use crate::errors::bad_request;
use crate::ledger::{FrameKind, LedgerEntry};
use crate::missed::{MissReason, MissedEntry};
use crate::published::{PublishSource, PublishedEntry};
use crate::state::Sim;

fn parse_kind(s: &str) -> Option<FrameKind> {
    Some(match s {
        "event" => FrameKind::Event,
        "heartbeat" => FrameKind::Heartbeat,
        "pong" => FrameKind::Pong,
        "system" => FrameKind::System,
        "malformed" => FrameKind::Malformed,
        _ => return None,
    })
}

fn since(q: &HashMap<String, String>) -> Result<u64, HttpResponse> {
    match q.get("since").map(|s| s.parse::<u64>()) {
        None => Ok(0),
        Some(Ok(n)) => Ok(n),
        Some(Err(_)) => Err(bad_request("since must be a sequence number")),
    }
}

/// A JSON array, or JSON lines with `format=jsonl`.
fn entries_response<T: Serialize>(q: &HashMap<String, String>, entries: &[T]) -> HttpResponse {
    match q.get("format").map(String::as_str) {
        None | Some("json") => HttpResponse::Ok().json(entries),
        Some("jsonl") => {
            let mut out = String::new();
            for e in entries {
                let line = serde_json::to_string(e).expect("entry serialises");
                let _ = writeln!(out, "{line}");
            }
            HttpResponse::Ok()
                .content_type("application/x-ndjson")
                .body(out)
        }
        Some(other) => bad_request(format!("format must be json or jsonl, got {other}")),
    }
}

/// `GET /sim/ledger?format=json|jsonl&since=<seq>&kind=<kind>&channel=<id>`.
pub(crate) async fn ledger(
    sim: web::Data<Sim>,
    q: web::Query<HashMap<String, String>>,
) -> HttpResponse {
    let since = match since(&q) {
        Ok(n) => n,
        Err(resp) => return resp,
    };
    let kind = match q.get("kind") {
        None => None,
        Some(k) => match parse_kind(k) {
            Some(kind) => Some(kind),
            None => return bad_request(format!("unknown kind {k}")),
        },
    };
    let channel = q.get("channel").cloned();
    let entries: Vec<LedgerEntry> = sim.ledger.snapshot(since, |e| {
        kind.is_none_or(|k| e.kind == k) && channel.as_ref().is_none_or(|c| *c == e.channel_id)
    });
    entries_response(&q, &entries)
}

/// `GET /sim/missed?format=json|jsonl&since=<seq>&channel=<id>&reason=<reason>`.
pub(crate) async fn missed(
    sim: web::Data<Sim>,
    q: web::Query<HashMap<String, String>>,
) -> HttpResponse {
    let since = match since(&q) {
        Ok(n) => n,
        Err(resp) => return resp,
    };
    let reason = match q.get("reason") {
        None => None,
        Some(r) => match parse_reason(r) {
            Some(reason) => Some(reason),
            None => return bad_request(format!("unknown reason {r}")),
        },
    };
    let channel = q.get("channel").cloned();
    let entries: Vec<MissedEntry> = sim.missed.snapshot(since, |e| {
        reason.is_none_or(|r| e.reason == r) && channel.as_ref().is_none_or(|c| *c == e.channel_id)
    });
    entries_response(&q, &entries)
}

fn parse_reason(s: &str) -> Option<MissReason> {
    Some(match s {
        "no_socket" => MissReason::NoSocket,
        "silenced" => MissReason::Silenced,
        "socket_dropped" => MissReason::SocketDropped,
        "too_slow" => MissReason::TooSlow,
        _ => return None,
    })
}

/// `GET /sim/published?format=json|jsonl&since=<seq>&topic=<topic>&source=model|burst`.
pub(crate) async fn published(
    sim: web::Data<Sim>,
    q: web::Query<HashMap<String, String>>,
) -> HttpResponse {
    let since = match since(&q) {
        Ok(n) => n,
        Err(resp) => return resp,
    };
    let source = match q.get("source").map(String::as_str) {
        None => None,
        Some("model") => Some(PublishSource::Model),
        Some("burst") => Some(PublishSource::Burst),
        Some(other) => return bad_request(format!("source must be model or burst, got {other}")),
    };
    let topic = q.get("topic").cloned();
    let entries: Vec<PublishedEntry> = sim.published.snapshot(since, |e| {
        source.is_none_or(|s| e.source == s) && topic.as_ref().is_none_or(|t| *t == e.topic)
    });
    entries_response(&q, &entries)
}

/// `GET /sim/channel-log?format=json|jsonl&since=<seq>&client=<id>&channel=<id>`.
pub(crate) async fn channel_log(
    sim: web::Data<Sim>,
    q: web::Query<HashMap<String, String>>,
) -> HttpResponse {
    let since = match since(&q) {
        Ok(n) => n,
        Err(resp) => return resp,
    };
    let client = q.get("client").cloned();
    let channel = q.get("channel").cloned();
    let entries: Vec<ChannelLogEntry> = {
        let reg = sim.channels.lock().expect("channels lock");
        reg.log.snapshot(since, |e| {
            client.as_ref().is_none_or(|c| *c == e.client_id)
                && channel.as_ref().is_none_or(|c| *c == e.channel_id)
        })
    };
    entries_response(&q, &entries)
}

/// `GET /sim/requests?since=<seq>`: REST call counters, and the logged calls from `since`.
pub(crate) async fn requests(
    sim: web::Data<Sim>,
    q: web::Query<HashMap<String, String>>,
) -> HttpResponse {
    let since = match since(&q) {
        Ok(n) => n,
        Err(resp) => return resp,
    };
    let stats = sim.requests.lock().expect("requests lock").snapshot(since);
    HttpResponse::Ok().json(stats)
}

/// `GET /sim/channels`: every channel, live and dead.
pub(crate) async fn channels(sim: web::Data<Sim>) -> HttpResponse {
    let infos = sim.channels.lock().expect("channels lock").infos();
    HttpResponse::Ok().json(infos)
}

#[derive(Deserialize)]
pub(crate) struct RateBody {
    rate: f64,
}

/// `POST /sim/rate {"rate": 5.0}`: conversations per second (0 pauses arrivals).
pub(crate) async fn set_rate(sim: web::Data<Sim>, body: web::Json<RateBody>) -> HttpResponse {
    if !(body.rate.is_finite() && body.rate >= 0.0) {
        return bad_request("rate must be a finite number >= 0");
    }
    let _ = sim
        .engine_tx
        .send(crate::engine::EngineCmd::SetRate(body.rate));
    HttpResponse::Ok().json(serde_json::json!({ "rate": body.rate }))
}

#[derive(Deserialize)]
pub(crate) struct QueueBody {
    name: String,
}

/// `POST /sim/queues {"name": "..."}`: adds a queue at runtime, answers its id.
pub(crate) async fn add_queue(sim: web::Data<Sim>, body: web::Json<QueueBody>) -> HttpResponse {
    let id = sim
        .directory
        .write()
        .expect("directory lock")
        .add_queue(&body.name);
    HttpResponse::Ok().json(serde_json::json!({ "id": id, "name": body.name }))
}

/// `GET /sim/info`: URLs, org id, counters.
pub(crate) async fn info(sim: web::Data<Sim>) -> HttpResponse {
    let (queues, users) = {
        let dir = sim.directory.read().expect("directory lock");
        (dir.queues.len(), dir.users.len())
    };
    let tokens_issued = sim.auth.lock().expect("auth lock").issued;
    let conversations = sim.history.lock().expect("history lock").len();
    let channel_log_total = sim.channels.lock().expect("channels lock").log.total();
    HttpResponse::Ok().json(serde_json::json!({
        "orgId": sim.org_id,
        "baseUrl": sim.base_url,
        "wsBaseUrl": sim.ws_base_url,
        "queues": queues,
        "users": users,
        "tokensIssued": tokens_issued,
        "conversations": conversations,
        "ledgerTotal": sim.ledger.total(),
        "missedTotal": sim.missed.total(),
        "publishedTotal": sim.published.total(),
        "channelLogTotal": channel_log_total,
        "restRequests": sim.requests.lock().expect("requests lock").total(),
    }))
}

/// `GET /sim/conversations`: the model's truth of every conversation kept, in start order
/// (`[{"id","startMs","endMs","ivrOnly"}]`).
pub(crate) async fn conversations(sim: web::Data<Sim>) -> HttpResponse {
    let truth = sim.history.lock().expect("history lock").truth();
    HttpResponse::Ok().json(truth)
}
