//! Fault injection over the library API and `POST /sim/faults`.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use awc::http::StatusCode;
use common::*;
use genesys_sim::{
    FrameKind, MalformedKind, MissReason, RestFault, RestFaultKind, RestScope, SimConfig,
};
use serde_json::{json, Value};

#[actix_rt::test]
async fn drop_socket_closes_without_close_frame_and_channel_survives() {
    let sim = start(SimConfig {
        rate_per_sec: 20.0,
        ..fast_config()
    });
    let api = Api::login(&sim.base_url()).await;
    let (id, uri) = api.channel().await;
    api.subscribe_ok(&id, &queue_topics(&sim)).await;
    let mut socket = Socket::connect(&uri).await;
    socket.next_json_where(is_heartbeat).await;
    assert_eq!(sim.faults().drop_socket(&id), vec![id.clone()]);
    assert_eq!(socket.end().await, Seen::Abnormal);
    until("socket detached", || {
        sim.channels().iter().any(|c| c.id == id && !c.connected)
    })
    .await;
    let gap_start = chrono::Utc::now();
    let started = sim.conversations_started();
    until("conversations while nobody listens", || {
        sim.conversations_started() >= started + 3
    })
    .await;
    let gap_end = chrono::Utc::now();
    // Still alive: the same channel takes a new socket, and events flow again.
    let mut again = Socket::connect(&uri).await;
    again
        .next_json_where(|v| v["topicName"] != "channel.metadata")
        .await;
    let in_gap = sim
        .ledger()
        .into_iter()
        .filter(|e| e.channel_id == id && e.sent_at > gap_start && e.sent_at < gap_end)
        .count();
    assert_eq!(
        in_gap, 0,
        "nothing is sent (nor recorded) while no socket is open"
    );
}

#[actix_rt::test]
async fn silence_sends_nothing_until_resume() {
    let sim = start(SimConfig {
        rate_per_sec: 20.0,
        ..fast_config()
    });
    let api = Api::login(&sim.base_url()).await;
    let (id, uri) = api.channel().await;
    api.subscribe_ok(&id, &queue_topics(&sim)).await;
    let mut socket = Socket::connect(&uri).await;
    socket.next_json_where(is_heartbeat).await;
    assert_eq!(sim.faults().silence(&id, None), vec![id.clone()]);
    // Frames already queued may still arrive; once the silence holds, nothing more does.
    while socket
        .next_within(Duration::from_millis(300))
        .await
        .is_some()
    {}
    let ledger_before = sim.ledger_count(|e| e.channel_id == id);
    let started = sim.conversations_started();
    socket.send_text(r#"{"message":"ping"}"#).await;
    socket.send_ping(b"x").await;
    assert_eq!(
        socket.next_within(Duration::from_millis(900)).await,
        None,
        "no heartbeat, pong or event while silent (heartbeat every 200 ms)"
    );
    assert!(sim.conversations_started() > started, "traffic went on");
    assert_eq!(sim.ledger_count(|e| e.channel_id == id), ledger_before);
    assert!(sim.channels().iter().any(|c| c.id == id && c.connected));

    assert_eq!(sim.faults().resume(&id), vec![id.clone()]);
    socket.next_json_where(is_heartbeat).await;
    socket.send_text(r#"{"message":"ping"}"#).await;
    socket.next_json_where(is_pong).await;

    // A timed silence over HTTP ends by itself.
    let resp = post_fault(
        &sim.base_url(),
        json!({"fault": "silence", "target": id, "duration_ms": 500}),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.body["channels"][0], id.as_str());
    let silenced_at = Instant::now();
    while socket
        .next_within(Duration::from_millis(100))
        .await
        .is_some()
    {
        if silenced_at.elapsed() > Duration::from_millis(400) {
            break;
        }
    }
    socket.next_json_where(is_heartbeat).await;
    assert!(silenced_at.elapsed() >= Duration::from_millis(450));
}

/// Reads `socket` into `frames` until `cond` holds.
async fn read_until(
    socket: &mut Socket,
    frames: &mut Vec<Seen>,
    cond: impl Fn() -> bool,
    what: &str,
) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        if let Some(frame) = socket.next_within(Duration::from_millis(20)).await {
            frames.push(frame);
        }
    }
}

#[actix_rt::test]
async fn silence_of_one_channel_without_duration() {
    let sim = start(SimConfig {
        rate_per_sec: 20.0,
        ..fast_config()
    });
    let base = sim.base_url();
    let api = Api::login(&base).await;
    let topics = queue_topics(&sim);
    let (a, uri_a) = api.channel().await;
    let (b, uri_b) = api.channel().await;
    api.subscribe_ok(&a, &topics).await;
    api.subscribe_ok(&b, &topics).await;
    let mut silent = Socket::connect(&uri_a).await;
    silent.next_json_where(is_heartbeat).await;
    let (_seen_b, reader_b) = spawn_reader(Socket::connect(&uri_b).await);
    let ledgered = |channel: &str, kind: FrameKind, after: u64| {
        sim.ledger_count(|e| e.channel_id == channel && e.kind == kind && e.seq >= after)
    };
    until("b streams", || ledgered(&b, FrameKind::Event, 0) > 0).await;
    // Both connected from here on (before, events could be missed for want of a socket).
    let missed_mark = sim.missed().last().map_or(0, |e| e.seq + 1);

    let resp = post_fault(&base, json!({"fault": "silence", "target": a})).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.body["channels"], json!([a]));
    let mark = sim.ledger().last().map_or(0, |e| e.seq + 1);
    let a_before = sim.ledger_count(|e| e.channel_id == a);
    silent.send_text(r#"{"message":"ping"}"#).await;
    silent.send_ping(b"x").await;

    // Read `a` while `b` goes on: phase 1 lets frames already on their way arrive (at most the
    // one being sent when the silence began); phase 2 must bring nothing at all.
    let mut on_a = Vec::new();
    read_until(
        &mut silent,
        &mut on_a,
        || {
            ledgered(&b, FrameKind::Heartbeat, mark) >= 3
                && ledgered(&b, FrameKind::Event, mark) >= 3
                && sim.missed_count(|e| e.channel_id == a && e.reason == MissReason::Silenced) >= 3
        },
        "b streams while a is silent",
    )
    .await;
    let a_phase1 = sim.ledger_count(|e| e.channel_id == a);
    assert!(a_phase1 <= a_before + 1, "nothing sent on a once silenced");
    assert!(
        on_a.iter()
            .all(|f| matches!(f, Seen::Text(t) if !t.contains("pong"))),
        "no pong, no close: {on_a:?}"
    );
    let mark2 = sim.ledger().last().map_or(0, |e| e.seq + 1);
    let mut phase2 = Vec::new();
    read_until(
        &mut silent,
        &mut phase2,
        || ledgered(&b, FrameKind::Heartbeat, mark2) >= 2,
        "two more heartbeats on b",
    )
    .await;
    assert_eq!(phase2, vec![], "a silent socket sends nothing at all");
    assert_eq!(sim.ledger_count(|e| e.channel_id == a), a_phase1);
    assert_eq!(ledgered(&a, FrameKind::Pong, 0), 0);
    // TCP stays open: still connected, no close frame, no end.
    assert!(sim.channels().iter().any(|c| c.id == a && c.connected));
    assert!(!reader_b.is_finished());

    // What a missed while silent, b received, byte-identical; b missed nothing.
    let missed: Vec<_> = sim
        .missed_since(missed_mark)
        .into_iter()
        .filter(|e| e.channel_id == a)
        .collect();
    assert!(missed.len() >= 3);
    assert!(missed.iter().all(|e| e.reason == MissReason::Silenced));
    until("b got every event a missed", || {
        let b_sent: HashSet<String> = sim
            .sent_events()
            .into_iter()
            .filter(|e| e.channel_id == b)
            .map(|e| e.frame.to_string())
            .collect();
        missed.iter().all(|m| b_sent.contains(&*m.frame))
    })
    .await;
    assert_eq!(
        sim.missed_count(|e| e.channel_id == b && e.seq >= missed_mark),
        0
    );

    // Resumed: heartbeats, pongs and events again.
    assert_eq!(sim.faults().resume(&a), vec![a.clone()]);
    silent.next_json_where(is_heartbeat).await;
    silent.send_text(r#"{"message":"ping"}"#).await;
    silent.next_json_where(is_pong).await;
    silent
        .next_json_where(|v| v["topicName"] != "channel.metadata")
        .await;
}

#[actix_rt::test]
async fn rest_faults_429_500_and_delay() {
    let sim = start(fast_config());
    let api = Api::login(&sim.base_url()).await;
    let mut too_many = RestFault::next_calls(RestFaultKind::TooManyRequests, 2);
    too_many.retry_after_s = 7;
    sim.faults().rest(too_many);
    for _ in 0..2 {
        let resp = api.get("/api/v2/users").await;
        assert_eq!(resp.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers.get("retry-after").unwrap(), "7");
        assert_eq!(resp.body["status"], 429);
        assert_eq!(resp.body["code"], "too.many.requests");
    }
    assert_eq!(api.get("/api/v2/users").await.status, StatusCode::OK);

    // 500 for a duration, over HTTP, only on the API (not on /oauth/token).
    let resp = post_fault(
        &sim.base_url(),
        json!({"fault": "rest", "kind": "server_error", "duration_ms": 400, "scope": "api"}),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK);
    let failing_since = Instant::now();
    assert_eq!(
        api.get("/api/v2/users").await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        api.get("/api/v2/routing/queues").await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let login = token_request(&sim.base_url(), "sim-client", "sim-secret").await;
    assert_eq!(login.status, StatusCode::OK);
    let api_ref = &api;
    eventually("500s stop after the duration", || async move {
        api_ref.get("/api/v2/users").await.status == StatusCode::OK
    })
    .await;
    assert!(failing_since.elapsed() >= Duration::from_millis(350));

    // Slow answers, on the login only.
    let mut slow = RestFault::next_calls(RestFaultKind::Delay, 1);
    slow.delay_ms = 500;
    slow.scope = RestScope::Oauth;
    sim.faults().rest(slow);
    let t = Instant::now();
    assert_eq!(api.get("/api/v2/users").await.status, StatusCode::OK);
    assert!(t.elapsed() < Duration::from_millis(450));
    let t = Instant::now();
    let login = token_request(&sim.base_url(), "sim-client", "sim-secret").await;
    assert_eq!(login.status, StatusCode::OK);
    assert!(t.elapsed() >= Duration::from_millis(500));

    // clear_rest removes pending faults; /sim/* is never affected.
    sim.faults()
        .rest(RestFault::next_calls(RestFaultKind::ServerError, 100));
    let info = http()
        .get(format!("{}/sim/info", sim.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(info.status(), StatusCode::OK);
    sim.faults().clear_rest();
    assert_eq!(api.get("/api/v2/users").await.status, StatusCode::OK);
}

#[actix_rt::test]
async fn malformed_frames_of_every_kind() {
    let sim = start(fast_config());
    let api = Api::login(&sim.base_url()).await;
    let (id, uri) = api.channel().await;
    let topic = queue_topics(&sim)[0].clone();
    api.subscribe_ok(&id, std::slice::from_ref(&topic)).await;
    let mut socket = Socket::connect(&uri).await;
    socket.next_json_where(is_heartbeat).await;
    let kinds = [
        MalformedKind::InvalidJson,
        MalformedKind::Binary,
        MalformedKind::Oversized,
        MalformedKind::UnknownTopic,
        MalformedKind::MissingFields,
    ];
    for kind in kinds {
        let affected = sim.faults().malformed(&id, kind, Some(300_000));
        assert_eq!(affected, vec![id.clone()]);
        let seen = loop {
            match socket.next().await {
                Seen::Text(t) if t.contains("WebSocket Heartbeat") => continue,
                other => break other,
            }
        };
        match (kind, seen) {
            (MalformedKind::InvalidJson, Seen::Text(t)) => {
                assert!(serde_json::from_str::<Value>(&t).is_err(), "{t}")
            }
            (MalformedKind::Binary, Seen::Binary(b)) => assert!(!b.is_empty()),
            (MalformedKind::Oversized, Seen::Text(t)) => {
                assert_eq!(t.len(), 300_000);
                let v: Value = serde_json::from_str(&t).unwrap();
                assert_eq!(v["topicName"], topic.as_str());
            }
            (MalformedKind::UnknownTopic, Seen::Text(t)) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                assert_eq!(v["topicName"], "v2.sim.unknown.topic");
            }
            (MalformedKind::MissingFields, Seen::Text(t)) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                assert!(v.get("topicName").is_none() && v.get("eventBody").is_none());
            }
            (kind, seen) => panic!("{kind:?}: unexpected {seen:?}"),
        }
    }
    let malformed: Vec<_> = sim
        .ledger()
        .into_iter()
        .filter(|e| e.kind == FrameKind::Malformed)
        .collect();
    assert_eq!(malformed.len(), 5);
    assert!(malformed[1].binary.is_some());
    assert!(
        sim.sent_events().is_empty(),
        "malformed frames are not events"
    );
    // The socket still works after them.
    socket.send_text(r#"{"message":"ping"}"#).await;
    socket.next_json_where(is_pong).await;
}

#[actix_rt::test]
async fn burst_pushes_exactly_n_unique_events() {
    let sim = start(fast_config());
    let api = Api::login(&sim.base_url()).await;
    let (id, uri) = api.channel().await;
    let topic = queue_topics(&sim)[1].clone();
    api.subscribe_ok(&id, std::slice::from_ref(&topic)).await;
    let mut socket = Socket::connect(&uri).await;
    let resp = post_fault(
        &sim.base_url(),
        json!({"fault": "burst", "target": id, "count": 5000}),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
    let mut received = Vec::new();
    while received.len() < 5000 {
        let (_, v) = socket
            .next_json_where(|v| v["topicName"] != "channel.metadata")
            .await;
        assert_eq!(v["topicName"], topic.as_str());
        assert!(v["eventBody"]["id"].is_string());
        received.push(v["metadata"]["CorrelationId"].as_str().unwrap().to_owned());
    }
    let unique: HashSet<_> = received.iter().collect();
    assert_eq!(unique.len(), 5000);
    let events = sim.sent_events();
    assert_eq!(events.len(), 5000);
    let ledger_ids: Vec<_> = events
        .iter()
        .map(|e| e.correlation_id.as_deref().unwrap().to_owned())
        .collect();
    assert_eq!(ledger_ids, received, "ledger order is the order received");
}

/// A fan-out burst goes, byte for byte, to every live channel subscribed to the topic (as
/// Genesys fans an event out), and to no channel that is not subscribed to it.
#[actix_rt::test]
async fn fan_out_burst_sends_the_same_frames_to_every_subscribed_channel() {
    let sim = start(fast_config());
    let api = Api::login(&sim.base_url()).await;
    let topics = queue_topics(&sim);
    let (a, uri_a) = api.channel().await;
    let (b, uri_b) = api.channel().await;
    let (c, uri_c) = api.channel().await;
    api.subscribe_ok(&a, std::slice::from_ref(&topics[1])).await;
    api.subscribe_ok(&b, std::slice::from_ref(&topics[1])).await;
    api.subscribe_ok(&c, std::slice::from_ref(&topics[2])).await;
    let mut sockets = [
        Socket::connect(&uri_a).await,
        Socket::connect(&uri_b).await,
        Socket::connect(&uri_c).await,
    ];
    let resp = post_fault(
        &sim.base_url(),
        json!({"fault": "burst", "target": a, "count": 300, "fan_out": true}),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
    let mut got: Vec<Vec<String>> = Vec::new();
    for socket in &mut sockets[..2] {
        let mut frames = Vec::new();
        while frames.len() < 300 {
            let (text, _) = socket
                .next_json_where(|v| v["topicName"] == topics[1].as_str())
                .await;
            frames.push(text);
        }
        got.push(frames);
    }
    assert_eq!(
        got[0], got[1],
        "both subscribed channels get the same frames, in order"
    );
    assert_eq!(got[0].iter().collect::<HashSet<_>>().len(), 300);
    let ledger = sim.sent_events();
    assert_eq!(ledger.iter().filter(|e| e.channel_id == a).count(), 300);
    assert_eq!(ledger.iter().filter(|e| e.channel_id == b).count(), 300);
    assert!(
        ledger.iter().all(|e| e.channel_id != c),
        "a channel not subscribed to the topic gets none of it"
    );
    // The next fan-out burst is a different burst (new ids), and a plain one is per socket.
    let resp = post_fault(
        &sim.base_url(),
        json!({"fault": "burst", "target": b, "count": 10, "fan_out": true}),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
    let (text, _) = sockets[0]
        .next_json_where(|v| v["topicName"] == topics[1].as_str())
        .await;
    assert!(!got[0].contains(&text));
    drop(sockets);
}

/// `refuse_subscriptions`: a request naming one of the topics gets 503, others go through, and
/// clearing it lets the same request through.
#[actix_rt::test]
async fn refused_subscriptions_answer_503_for_the_named_topics_only() {
    let sim = start(fast_config());
    let api = Api::login(&sim.base_url()).await;
    let topics = queue_topics(&sim);
    let (a, _) = api.channel().await;
    let resp = post_fault(
        &sim.base_url(),
        json!({"fault": "refuse_subscriptions", "topics": [topics[1]]}),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
    let both = [topics[0].clone(), topics[1].clone()];
    let resp = api.subscribe(&a, &both, "?ignoreErrors=true").await;
    assert_eq!(
        resp.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        resp.body
    );
    api.subscribe_ok(&a, std::slice::from_ref(&topics[0])).await;
    let resp = post_fault(
        &sim.base_url(),
        json!({"fault": "clear_refuse_subscriptions"}),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
    api.subscribe_ok(&a, &both).await;
    // With a duration it ends by itself.
    sim.faults()
        .refuse_subscriptions(&both[1..], Some(Duration::from_millis(200)));
    let resp = api.subscribe(&a, &both, "").await;
    assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE);
    eventually("the refusal to end", || async {
        api.subscribe(&a, &both, "").await.status == StatusCode::OK
    })
    .await;
}

#[actix_rt::test]
async fn fault_endpoint_targets_and_errors() {
    let sim = start(fast_config());
    let api = Api::login(&sim.base_url()).await;
    let (a, uri_a) = api.channel().await;
    let (b, _uri_b) = api.channel().await;
    let mut socket = Socket::connect(&uri_a).await;

    let resp = post_fault(
        &sim.base_url(),
        json!({"fault": "drop_socket", "target": "streaming-0-unknown"}),
    )
    .await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
    let resp = post_fault(&sim.base_url(), json!({"fault": "no_such_fault"})).await;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST);
    // `b` has no socket: socket faults do not touch it.
    let resp = post_fault(
        &sim.base_url(),
        json!({"fault": "drop_socket", "target": b}),
    )
    .await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);

    let resp = post_fault(
        &sim.base_url(),
        json!({"fault": "expire_channel", "target": a}),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.body["channels"], json!([a]));
    assert!(matches!(socket.end().await, Seen::Close(Some((1000, _)))));

    let resp = post_fault(&sim.base_url(), json!({"fault": "expire_tokens"})).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.body["tokens"], 1);
    assert_eq!(resp.body["channels"], json!([b]));
    assert_eq!(
        api.get("/api/v2/users").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert!(sim.channels().iter().all(|c| !c.alive));
}

#[actix_rt::test]
async fn faults_on_all_channels() {
    let sim = start(fast_config());
    let api = Api::login(&sim.base_url()).await;
    let mut sockets = Vec::new();
    for _ in 0..3 {
        let (_, uri) = api.channel().await;
        sockets.push(Socket::connect(&uri).await);
    }
    until("three sockets attached", || {
        sim.channels().iter().filter(|c| c.connected).count() == 3
    })
    .await;
    let closing = sim
        .faults()
        .socket_closing("all", Some(Duration::from_millis(100)));
    assert_eq!(closing.len(), 3);
    for socket in &mut sockets {
        socket
            .next_json_where(|v| v["topicName"] == "v2.system.socket_closing")
            .await;
        assert!(matches!(socket.end().await, Seen::Close(_)));
    }
    until("all channels dead", || {
        sim.channels().iter().all(|c| !c.alive)
    })
    .await;
    // Expiring all tokens revokes nothing twice and makes login necessary again.
    assert_eq!(sim.faults().expire_all_tokens(), 1);
    assert_eq!(sim.faults().expire_all_tokens(), 0);
    assert_eq!(
        api.call("POST", "/api/v2/notifications/channels", None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
}

#[actix_rt::test]
async fn no_longer_subscribed_sends_system_frame_clears_topics_and_closes() {
    let sim = start(SimConfig {
        rate_per_sec: 20.0,
        ..fast_config()
    });
    let api = Api::login(&sim.base_url()).await;
    let topics = queue_topics(&sim);
    let (id, uri) = api.channel().await;
    let (reference, _) = api.channel().await;
    api.subscribe_ok(&id, &topics).await;
    api.subscribe_ok(&reference, &topics).await;
    let mut socket = Socket::connect(&uri).await;
    socket
        .next_json_where(|v| v["topicName"] != "channel.metadata")
        .await;
    let resp = post_fault(
        &sim.base_url(),
        json!({"fault": "no_longer_subscribed", "target": id}),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
    assert_eq!(resp.body["channels"], json!([id]));
    let topic = format!("v2.system.no_longer_subscribed.{id}");
    let (text, v) = socket
        .next_json_where(|v| {
            v["topicName"]
                .as_str()
                .is_some_and(|t| t.starts_with("v2.system."))
        })
        .await;
    assert_eq!(v["topicName"], topic.as_str());
    let body = &v["eventBody"];
    assert_eq!(body["channelId"], id.as_str());
    assert_eq!(body["systemTopicType"], "no_longer_subscribed");
    assert_eq!(body["organizationId"], sim.org_id().as_str());
    assert_eq!(body["oauthClientId"], "sim-client");
    assert_eq!(body["correlationId"], v["metadata"]["CorrelationId"]);
    assert!(body["message"].is_string() && body["reason"].is_string());
    assert_eq!(
        socket.end().await,
        Seen::Close(Some((1000, "no longer subscribed".to_owned())))
    );
    let system: Vec<_> = sim
        .ledger()
        .into_iter()
        .filter(|e| e.channel_id == id && e.kind == FrameKind::System)
        .collect();
    assert_eq!(system.len(), 1);
    assert_eq!(system[0].topic, topic);
    assert_eq!(&*system[0].frame, text.as_str());

    // The channel lives on, without subscriptions: nothing more is due to it.
    let listed = api
        .get(&format!(
            "/api/v2/notifications/channels/{id}/subscriptions"
        ))
        .await;
    assert_eq!(listed.body["entities"], json!([]));
    let info = sim.channels().into_iter().find(|c| c.id == id).unwrap();
    assert!(info.alive && !info.connected && info.topics.is_empty());
    let sent = sim.ledger_count(|e| e.channel_id == id && e.kind == FrameKind::Event);
    let missed = sim.missed_count(|e| e.channel_id == id);
    let of_reference = sim.missed_count(|e| e.channel_id == reference);
    until("more events published", || {
        sim.missed_count(|e| e.channel_id == reference) >= of_reference + 5
    })
    .await;
    assert_eq!(
        sim.ledger_count(|e| e.channel_id == id && e.kind == FrameKind::Event),
        sent
    );
    assert_eq!(sim.missed_count(|e| e.channel_id == id), missed);
    let mut again = Socket::connect(&uri).await;
    again.next_json_where(is_heartbeat).await;

    // A socket fault: a channel without a socket is not affected (404 over HTTP).
    assert!(sim.faults().no_longer_subscribed(&reference).is_empty());
    let resp = post_fault(
        &sim.base_url(),
        json!({"fault": "no_longer_subscribed", "target": reference}),
    )
    .await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
    assert_eq!(sim.faults().no_longer_subscribed("all"), vec![id.clone()]);
}
