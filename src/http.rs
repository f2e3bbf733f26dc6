//! Health, metrics and status over HTTP, for Kubernetes probes, Prometheus and people.

use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use actix_web::{web, App, HttpResponse, HttpServer};
use chrono::Utc;
use genesys_actors::health::Health;
#[cfg(feature = "fault-injection")]
use genesys_actors::messages::InjectFault;
use genesys_actors::metrics::Metrics;
#[cfg(feature = "fault-injection")]
use genesys_actors::supervisor::FaultActor;
use genesys_actors::supervisor::{CheckLive, Supervisor};
use serde_json::json;

#[derive(Clone)]
pub struct HttpState {
    pub health: Health,
    pub metrics: Arc<Metrics>,
    pub supervisor: Addr<Supervisor>,
    pub liveness_deadline: Duration,
    /// `[debug] fault_injection` (read only in builds with the `fault-injection` feature).
    #[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
    pub fault_injection: bool,
}

/// `/livez`: 200 while the supervisor and every actor answer in time. Never fails because
/// Genesys or Kafka is down, so that Kubernetes does not restart a pod into a reconnect storm.
async fn livez(state: web::Data<HttpState>) -> HttpResponse {
    let deadline = state.liveness_deadline;
    let asked = state.supervisor.send(CheckLive { deadline });
    match tokio::time::timeout(deadline * 2, asked).await {
        Ok(Ok(Ok(()))) => HttpResponse::Ok().json(json!({"live": true})),
        Ok(Ok(Err(unresponsive))) => HttpResponse::ServiceUnavailable()
            .json(json!({"live": false, "unresponsive": unresponsive})),
        _ => HttpResponse::ServiceUnavailable()
            .json(json!({"live": false, "unresponsive": ["supervisor"]})),
    }
}

/// `/readyz`: 200 once a token is held, every shard streams and the spool has room.
async fn readyz(state: web::Data<HttpState>) -> HttpResponse {
    match state.health.snapshot().not_ready_reason(Utc::now()) {
        None => HttpResponse::Ok().json(json!({"ready": true})),
        Some(reason) => {
            HttpResponse::ServiceUnavailable().json(json!({"ready": false, "reason": reason}))
        }
    }
}

/// `/metrics`: OpenMetrics for a client that accepts it (Prometheus does), else the Prometheus
/// text format 0.0.4 (`curl`, `promtool check metrics`).
async fn metrics(state: web::Data<HttpState>, request: actix_web::HttpRequest) -> HttpResponse {
    let snapshot = state.health.snapshot();
    let now = Utc::now();
    let ready = snapshot.not_ready_reason(now).is_none();
    state.metrics.ready.set(i64::from(ready));
    for shard in &snapshot.shards {
        let streaming = shard.phase == genesys_actors::health::ShardPhase::Streaming;
        state
            .metrics
            .shard_streaming
            .get_or_create(&Metrics::shard(shard.shard))
            .set(i64::from(streaming));
    }
    if let Some(expiry) = snapshot.token.expires_at {
        let left = (expiry - now).num_milliseconds() as f64 / 1000.0;
        state.metrics.token_seconds_to_expiry.set(left);
    }
    let rejected: usize = snapshot
        .shards
        .iter()
        .map(|s| s.rejected_topics.len())
        .sum();
    state.metrics.topics_rejected.set(rejected as i64);
    for shard in &snapshot.shards {
        if let Some(created) = shard.channel_created_at {
            let age = (now - created).num_milliseconds().max(0) as f64 / 1000.0;
            state
                .metrics
                .channel_age
                .get_or_create(&Metrics::shard(shard.shard))
                .set(age);
        }
    }
    if accepts_openmetrics(&request) {
        HttpResponse::Ok()
            .insert_header((actix_web::http::header::VARY, "Accept"))
            .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
            .body(state.metrics.encode())
    } else {
        HttpResponse::Ok()
            .insert_header((actix_web::http::header::VARY, "Accept"))
            .content_type("text/plain; version=0.0.4; charset=utf-8")
            .body(state.metrics.encode_prometheus_text())
    }
}

/// Whether the request's `Accept` (parsed by actix-web) prefers OpenMetrics: named with a quality
/// above 0 and not below that of `text/plain` (or of `text/*`, `*/*` standing in for it).
fn accepts_openmetrics(request: &actix_web::HttpRequest) -> bool {
    use actix_web::http::header::Header as _;
    actix_web::http::header::Accept::parse(request).is_ok_and(|accept| prefers_openmetrics(&accept))
}

fn prefers_openmetrics(accept: &actix_web::http::header::Accept) -> bool {
    use actix_web::http::header::Quality;
    let best = |wanted: fn(&str, &str) -> bool| {
        accept
            .iter()
            .filter(|item| wanted(item.item.type_().as_str(), item.item.subtype().as_str()))
            .map(|item| item.quality)
            .max()
    };
    let openmetrics = best(|t, s| t == "application" && s == "openmetrics-text");
    let text = best(|t, s| (t == "text" && (s == "plain" || s == "*")) || (t == "*" && s == "*"));
    openmetrics.is_some_and(|q| q > Quality::ZERO && q >= text.unwrap_or(Quality::ZERO))
}

async fn status(state: web::Data<HttpState>) -> HttpResponse {
    let mut snapshot = state.health.snapshot();
    snapshot.kafka.produced = state.metrics.events_produced.get();
    // Dead letters by destination; "lost" counts failures of the dead-letter file itself.
    snapshot.kafka.dead_lettered = ["topic", "file"]
        .iter()
        .map(|destination| {
            state
                .metrics
                .dead_letters
                .get_or_create(&Metrics::reason(destination))
                .get()
        })
        .sum();
    snapshot.kafka.in_flight = state.metrics.in_flight.get().max(0) as u64;
    HttpResponse::Ok().json(snapshot)
}

/// Test hooks (built with the `fault-injection` feature, and `[debug] fault_injection = true`
/// only): `POST /debug/panic/{actor}`,
/// `POST /debug/hang/{actor}?seconds=N`, `POST /debug/refuse-status/socket-N?count=N` (the next
/// N status records of that shard find the spool full), `POST
/// /debug/refuse-topic-updates/socket-N?count=N` (the next N topic updates to that shard are
/// refused as by a full mailbox).
#[cfg(feature = "fault-injection")]
async fn inject_fault(
    state: web::Data<HttpState>,
    path: web::Path<(String, String)>,
    query: web::Query<std::collections::HashMap<String, String>>,
) -> HttpResponse {
    if !state.fault_injection {
        return HttpResponse::NotFound().finish();
    }
    let (kind, actor) = path.into_inner();
    let fault = match kind.as_str() {
        "panic" => InjectFault::Panic,
        "hang" => {
            let seconds = query
                .get("seconds")
                .and_then(|s| s.parse().ok())
                .unwrap_or(30);
            InjectFault::Hang(Duration::from_secs(seconds))
        }
        "refuse-status" => {
            let count = query.get("count").and_then(|s| s.parse().ok()).unwrap_or(1);
            InjectFault::RefuseStatus(count)
        }
        "refuse-topic-updates" => {
            let count = query.get("count").and_then(|s| s.parse().ok()).unwrap_or(1);
            InjectFault::RefuseTopicUpdates(count)
        }
        _ => return HttpResponse::NotFound().finish(),
    };
    match state
        .supervisor
        .send(FaultActor { name: actor, fault })
        .await
    {
        Ok(true) => HttpResponse::Accepted().finish(),
        _ => HttpResponse::BadRequest().body("unknown actor or not running"),
    }
}

/// The HTTP server, bound (not yet running), and the address it is bound to.
pub fn server(
    state: HttpState,
    listen: std::net::SocketAddr,
) -> std::io::Result<(actix_web::dev::Server, std::net::SocketAddr)> {
    let data = web::Data::new(state);
    let server = HttpServer::new(move || {
        let app = App::new()
            .app_data(data.clone())
            .route("/livez", web::get().to(livez))
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(metrics))
            .route("/status", web::get().to(status));
        #[cfg(feature = "fault-injection")]
        let app = app.route("/debug/{kind}/{actor}", web::post().to(inject_fault));
        app
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .bind(listen)?;
    let bound = server.addrs().first().copied().unwrap_or(listen);
    Ok((server.run(), bound))
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::{Accept, Header as _};

    fn prefers_openmetrics(accept: &str) -> bool {
        let request = actix_web::test::TestRequest::default()
            .insert_header((actix_web::http::header::ACCEPT, accept))
            .to_http_request();
        Accept::parse(&request).is_ok_and(|accept| super::prefers_openmetrics(&accept))
    }

    #[test]
    fn openmetrics_only_when_preferred() {
        // Prometheus 2.x.
        assert!(prefers_openmetrics(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        ));
        assert!(prefers_openmetrics("application/openmetrics-text"));
        assert!(!prefers_openmetrics(""));
        assert!(!prefers_openmetrics("*/*"));
        assert!(!prefers_openmetrics("text/plain;version=0.0.4"));
        assert!(!prefers_openmetrics(
            "application/openmetrics-text;q=0.1, text/plain"
        ));
        assert!(!prefers_openmetrics("application/openmetrics-text;q=0"));
        assert!(prefers_openmetrics(
            "text/plain;q=0.2, application/openmetrics-text;q=0.9"
        ));
    }
}
