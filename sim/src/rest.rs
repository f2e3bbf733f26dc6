//! The REST control plane: notification channels and subscriptions, queues and users.

use std::collections::HashMap;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{authenticate, Caller};
use crate::config::{PERM_QUEUE_VIEW, PERM_USER_VIEW};
use crate::directory::page;
use crate::errors::{api_error, bad_request, missing_permissions, not_found};
use crate::state::Sim;
use crate::topics::{self, Topic, TopicError};

type Query = web::Query<HashMap<String, String>>;

macro_rules! caller {
    ($sim:expr, $req:expr) => {
        match authenticate(&$sim, &$req) {
            Ok(c) => c,
            Err(resp) => return resp,
        }
    };
}

/// `POST /api/v2/notifications/channels`.
pub(crate) async fn create_channel(sim: web::Data<Sim>, req: HttpRequest) -> HttpResponse {
    let caller = caller!(sim, req);
    let mut reg = sim.channels.lock().expect("channels lock");
    let (id, evicted) = reg.create(
        &caller.client.client_id,
        &caller.token,
        sim.cfg.channel_lifetime,
        sim.cfg.max_channels_per_client,
    );
    if let Some(evicted) = evicted {
        tracing::info!(
            client = %caller.client.client_id,
            evicted = %crate::channels::short(&evicted),
            "channel limit reached: evicted a channel"
        );
    }
    let channel = reg.get(&id).expect("just created");
    HttpResponse::Ok().json(channel.entity(&sim.ws_base_url))
}

/// `GET /api/v2/notifications/channels?includechannels=token|oauthclient`.
///
/// As the SDK documents for `oauthclient`: "Channel Ids for other access tokens will not be
/// shown, but will be presented to show their existence": such entries carry only `expires`.
pub(crate) async fn list_channels(sim: web::Data<Sim>, req: HttpRequest, q: Query) -> HttpResponse {
    let caller = caller!(sim, req);
    let by_client = match q.get("includechannels").map(String::as_str) {
        None | Some("token") => false,
        Some("oauthclient") => true,
        Some(other) => {
            return bad_request(format!(
                "includechannels must be token or oauthclient, got {other}"
            ))
        }
    };
    let reg = sim.channels.lock().expect("channels lock");
    let entities: Vec<Value> = reg
        .list(|c| c.client_id == caller.client.client_id && (by_client || c.token == caller.token))
        .iter()
        .map(|c| {
            let entity = c.entity(&sim.ws_base_url);
            if c.token == caller.token {
                entity
            } else {
                json!({ "expires": entity["expires"] })
            }
        })
        .collect();
    HttpResponse::Ok().json(json!({ "entities": entities }))
}

fn owns(sim: &Sim, caller: &Caller, id: &str) -> bool {
    let reg = sim.channels.lock().expect("channels lock");
    reg.get(id)
        .is_some_and(|c| c.client_id == caller.client.client_id)
}

/// `HEAD /api/v2/notifications/channels/{id}`: 200 if the channel exists, else 404.
pub(crate) async fn head_channel(
    sim: web::Data<Sim>,
    req: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    let caller = caller!(sim, req);
    if owns(&sim, &caller, &path) {
        HttpResponse::Ok().finish()
    } else {
        HttpResponse::NotFound().finish()
    }
}

#[derive(Deserialize)]
struct TopicRef {
    id: String,
}

/// Outcome of checking requested topics against templates, the directory and permissions.
struct Evaluation {
    permitted: Vec<String>,
    rejected: Vec<Value>,
    missing: Vec<String>,
}

fn evaluate(sim: &Sim, caller: &Caller, requested: &[String]) -> Result<Evaluation, HttpResponse> {
    let dir = sim.directory.read().expect("directory lock");
    let mut eval = Evaluation {
        permitted: Vec::new(),
        rejected: Vec::new(),
        missing: Vec::new(),
    };
    let reject = |id: &str, reason: String, missing: Vec<String>| json!({ "id": id, "state": "Rejected", "rejectionReason": reason, "missingPermissions": missing });
    for id in requested {
        let topic = match topics::parse(id) {
            Ok(t) => t,
            Err(TopicError::Reserved) => {
                return Err(bad_request(format!(
                    "Topic {id} cannot be subscribed to: channel.metadata and v2.system.* are delivered without subscription"
                )))
            }
            Err(TopicError::Unknown(reason)) => {
                eval.rejected.push(reject(id, reason, vec![]));
                continue;
            }
        };
        let unknown_entity = match &topic {
            Topic::QueueConversations { queue_id } | Topic::QueueObservations { queue_id } => {
                (!dir.has_queue(queue_id)).then(|| format!("Queue {queue_id} was not found"))
            }
            Topic::UserConversations { user_id } => {
                (!dir.has_user(user_id)).then(|| format!("User {user_id} was not found"))
            }
            Topic::Detail { .. } => None,
        };
        if let Some(reason) = unknown_entity {
            eval.rejected.push(reject(id, reason, vec![]));
            continue;
        }
        let missing = caller.missing(topics::required_permissions(&topic));
        if !missing.is_empty() {
            for m in &missing {
                if !eval.missing.contains(m) {
                    eval.missing.push(m.clone());
                }
            }
            eval.rejected
                .push(reject(id, "Missing permissions".to_owned(), missing));
            continue;
        }
        if !eval.permitted.contains(id) {
            eval.permitted.push(id.clone());
        }
    }
    Ok(eval)
}

fn permitted_entity(id: &str, channel: &str) -> Value {
    json!({
        "id": id,
        "selfUri": format!("/api/v2/notifications/channels/{channel}/subscriptions"),
        "state": "Permitted",
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Replace,
    Add,
}

async fn subscribe(
    sim: web::Data<Sim>,
    req: HttpRequest,
    path: web::Path<String>,
    q: Query,
    body: web::Bytes,
    mode: Mode,
) -> HttpResponse {
    let caller = caller!(sim, req);
    let channel_id = path.into_inner();
    if !owns(&sim, &caller, &channel_id) {
        return not_found("channel");
    }
    let requested: Vec<TopicRef> = match serde_json::from_slice(&body) {
        Ok(t) => t,
        Err(e) => return bad_request(format!("Body must be a list of {{\"id\": topic}}: {e}")),
    };
    let max = sim.cfg.max_topics_per_channel;
    if requested.len() > max {
        return bad_request(format!(
            "A channel can subscribe to at most {max} topics; {} were requested",
            requested.len()
        ));
    }
    let requested: Vec<String> = requested.into_iter().map(|t| t.id).collect();
    if let Some(topic) = sim.refused_topic(&requested) {
        return api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "service.unavailable",
            format!("Subscriptions including {topic} are refused (simulator fault)"),
        );
    }
    let eval = match evaluate(&sim, &caller, &requested) {
        Ok(e) => e,
        Err(resp) => return resp,
    };
    let ignore_errors = q
        .get("ignoreErrors")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if !ignore_errors && !eval.rejected.is_empty() {
        if !eval.missing.is_empty() {
            return missing_permissions(&eval.missing);
        }
        let ids: Vec<&str> = eval
            .rejected
            .iter()
            .filter_map(|r| r["id"].as_str())
            .collect();
        return bad_request(format!("Invalid topics: {}", ids.join(", ")));
    }
    let mut reg = sim.channels.lock().expect("channels lock");
    let Some(channel) = reg.get(&channel_id) else {
        return not_found("channel");
    };
    let topics = match mode {
        Mode::Replace => eval.permitted,
        Mode::Add => {
            let mut all = channel.topics().to_vec();
            for t in eval.permitted {
                if !all.contains(&t) {
                    all.push(t);
                }
            }
            all
        }
    };
    if topics.len() > max {
        return bad_request(format!(
            "A channel can subscribe to at most {max} topics; this request would make {}",
            topics.len()
        ));
    }
    let mut entities: Vec<Value> = topics
        .iter()
        .map(|t| permitted_entity(t, &channel_id))
        .collect();
    entities.extend(eval.rejected);
    reg.set_topics(&channel_id, topics);
    HttpResponse::Ok().json(json!({ "entities": entities }))
}

/// `PUT …/subscriptions[?ignoreErrors=true]`: replace the topic list.
pub(crate) async fn put_subscriptions(
    sim: web::Data<Sim>,
    req: HttpRequest,
    path: web::Path<String>,
    q: Query,
    body: web::Bytes,
) -> HttpResponse {
    subscribe(sim, req, path, q, body, Mode::Replace).await
}

/// `POST …/subscriptions[?ignoreErrors=true]`: add topics.
pub(crate) async fn post_subscriptions(
    sim: web::Data<Sim>,
    req: HttpRequest,
    path: web::Path<String>,
    q: Query,
    body: web::Bytes,
) -> HttpResponse {
    subscribe(sim, req, path, q, body, Mode::Add).await
}

/// `GET …/subscriptions`.
pub(crate) async fn get_subscriptions(
    sim: web::Data<Sim>,
    req: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    let caller = caller!(sim, req);
    if !owns(&sim, &caller, &path) {
        return not_found("channel");
    }
    let reg = sim.channels.lock().expect("channels lock");
    let entities: Vec<Value> = reg
        .get(&path)
        .map(|c| {
            c.topics()
                .iter()
                .map(|t| permitted_entity(t, &path))
                .collect()
        })
        .unwrap_or_default();
    HttpResponse::Ok().json(json!({ "entities": entities }))
}

/// `DELETE …/subscriptions`: remove all topics (204).
pub(crate) async fn delete_subscriptions(
    sim: web::Data<Sim>,
    req: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    let caller = caller!(sim, req);
    if !owns(&sim, &caller, &path) {
        return not_found("channel");
    }
    sim.channels
        .lock()
        .expect("channels lock")
        .set_topics(&path, Vec::new());
    HttpResponse::NoContent().finish()
}

/// `GET /api/v2/notifications/availabletopics`.
pub(crate) async fn available_topics(sim: web::Data<Sim>, req: HttpRequest) -> HttpResponse {
    let _caller = caller!(sim, req);
    HttpResponse::Ok().json(topics::catalogue())
}

/// Largest `pageSize` of the queue and user lists.
const MAX_LIST_PAGE: usize = 500;

fn paging(q: &Query) -> Result<(usize, usize), HttpResponse> {
    let parse = |key: &str, default: usize| -> Result<usize, HttpResponse> {
        match q.get(key) {
            None => Ok(default),
            Some(v) => v
                .parse::<usize>()
                .map_err(|_| bad_request(format!("{key} must be a positive integer"))),
        }
    };
    let size = parse("pageSize", 25)?;
    let number = parse("pageNumber", 1)?;
    if size == 0 || size > MAX_LIST_PAGE || number == 0 {
        return Err(api_error(
            StatusCode::BAD_REQUEST,
            "bad.request",
            format!("pageSize must be 1..={MAX_LIST_PAGE} and pageNumber >= 1"),
        ));
    }
    Ok((size, number))
}

/// `GET /api/v2/routing/queues?pageSize=&pageNumber=` (needs `routing:queue:view`).
pub(crate) async fn list_queues(sim: web::Data<Sim>, req: HttpRequest, q: Query) -> HttpResponse {
    let caller = caller!(sim, req);
    let missing = caller.missing(&[PERM_QUEUE_VIEW]);
    if !missing.is_empty() {
        return missing_permissions(&missing);
    }
    let (size, number) = match paging(&q) {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    let dir = sim.directory.read().expect("directory lock");
    HttpResponse::Ok().json(page(
        &dir.listed_queues(),
        size,
        number,
        "/api/v2/routing/queues",
    ))
}

/// `GET /api/v2/users?pageSize=&pageNumber=` (needs `directory:user:view`).
pub(crate) async fn list_users(sim: web::Data<Sim>, req: HttpRequest, q: Query) -> HttpResponse {
    let caller = caller!(sim, req);
    let missing = caller.missing(&[PERM_USER_VIEW]);
    if !missing.is_empty() {
        return missing_permissions(&missing);
    }
    let (size, number) = match paging(&q) {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    let dir = sim.directory.read().expect("directory lock");
    HttpResponse::Ok().json(page(&dir.users, size, number, "/api/v2/users"))
}
