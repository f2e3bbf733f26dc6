//! The published log: every event the model (and the burst fault) published, subscribed or not;
//! for a subscribed, connected channel each one of its topics is in the ledger byte-identical.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use awc::http::StatusCode;
use common::*;
use genesys_sim::{FrameKind, MalformedKind, PublishSource, PublishedEntry, SimConfig, SimHandle};
use serde_json::Value;

/// CorrelationId → frame of the events handed to `channel`'s sockets.
fn ledgered(sim: &SimHandle, channel: &str) -> HashMap<String, String> {
    sim.sent_events()
        .into_iter()
        .filter(|e| e.channel_id == channel)
        .map(|e| (e.correlation_id.unwrap().to_string(), e.frame.to_string()))
        .collect()
}

fn assert_gapless(entries: &[PublishedEntry]) {
    for w in entries.windows(2) {
        assert_eq!(w[1].seq, w[0].seq + 1, "seq increases by one");
        assert!(w[1].published_at_ms >= w[0].published_at_ms);
    }
}

#[actix_rt::test]
async fn published_log_is_independent_of_subscriptions_and_matches_the_ledger() {
    let sim = start(SimConfig {
        agents: 10,
        ..fast_config() // rate 0: nothing is published until set_rate
    });
    let test_start_ms = chrono::Utc::now().timestamp_millis();
    let api = Api::login(&sim.base_url()).await;
    let q0 = sim.queue_ids()[0].clone();
    let mine = [
        format!("v2.routing.queues.{q0}.conversations"),
        format!("v2.routing.queues.{q0}.calls"),
    ];
    let (id, uri) = api.channel().await;
    api.subscribe_ok(&id, &mine).await;
    let mut socket = Socket::connect(&uri).await;

    // Heartbeats, pongs and malformed frames are sent (ledgered) but not published events.
    socket.next_json_where(is_heartbeat).await;
    socket.send_text(r#"{"message":"ping"}"#).await;
    socket.next_json_where(is_pong).await;
    assert_eq!(
        sim.faults()
            .malformed(&id, MalformedKind::UnknownTopic, None),
        vec![id.clone()]
    );
    socket
        .next_json_where(|v| v["topicName"] != "channel.metadata")
        .await;
    assert!(sim.ledger_count(|e| e.kind == FrameKind::Malformed) == 1);
    assert!(sim.published().is_empty(), "{:?}", sim.published());
    let (seen, _reader) = spawn_reader(socket);

    sim.set_rate(20.0);
    until("events of the subscribed topics and of others", || {
        sim.published_count(|e| mine.contains(&e.topic)) >= 10
            && sim.published_count(|e| e.topic.starts_with("v2.detail.events.")) >= 10
            && sim.published_count(|e| e.topic.starts_with("v2.users.")) >= 5
            && sim.published_count(|e| e.topic.ends_with(".observations")) >= 2
    })
    .await;
    until(
        "every published event of the channel's topics is in its ledger",
        || {
            let sent = ledgered(&sim, &id);
            sim.published()
                .iter()
                .filter(|e| mine.contains(&e.topic))
                .all(|e| sent.contains_key(&*e.correlation_id))
        },
    )
    .await;

    let published = sim.published();
    let sent = ledgered(&sim, &id);
    assert_gapless(&published);
    assert_eq!(published[0].seq, 0);
    let by_corr: HashMap<&str, &PublishedEntry> =
        published.iter().map(|e| (&*e.correlation_id, e)).collect();
    assert_eq!(
        by_corr.len(),
        published.len(),
        "one correlation id per entry"
    );
    for e in &published {
        assert_eq!(e.source, PublishSource::Model);
        assert!(e.channel_id.is_none());
        let v: Value = serde_json::from_str(&e.frame).expect("frame is JSON");
        assert_eq!(v["topicName"], e.topic.as_str());
        assert_eq!(v["metadata"]["CorrelationId"], &*e.correlation_id);
        assert!(e.published_at_ms >= test_start_ms);
        if mine.contains(&e.topic) {
            assert_eq!(
                sent[&*e.correlation_id], *e.frame,
                "byte-identical frame in the ledger"
            );
        }
    }
    // Everything the channel was sent was published, with the same text, and nothing else.
    for (corr, frame) in &sent {
        let e = by_corr
            .get(corr.as_str())
            .expect("sent event was published");
        assert_eq!(*frame, *e.frame);
        assert!(mine.contains(&e.topic));
    }
    assert!(
        published
            .iter()
            .filter(|e| !mine.contains(&e.topic))
            .count()
            > 20,
        "unsubscribed topics are published too"
    );
    assert_eq!(sim.missed_count(|e| e.channel_id == id), 0);
    until("the client read every sent event", || {
        let seen = seen.borrow();
        sent.values().all(|f| seen.contains(f))
    })
    .await;

    // Library views and HTTP.
    let mark = published[published.len() / 2].seq;
    let since = sim.published_since(mark);
    assert_eq!(since[0].seq, mark);
    assert_eq!(
        sim.published_count(|e| e.seq >= mark && e.seq < published.len() as u64),
        published.len() - mark as usize
    );
    let (status, body) = get_json(&format!("{}/sim/published?since={mark}", sim.base_url())).await;
    assert_eq!(status, StatusCode::OK);
    let entries = body.as_array().unwrap();
    assert!(entries.len() >= published.len() - mark as usize);
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e["seq"], mark + i as u64);
        if let Some(lib) = published.get(mark as usize + i) {
            assert_eq!(e["frame"], &*lib.frame);
            assert_eq!(e["topic"], lib.topic.as_str());
            assert_eq!(e["correlationId"], &*lib.correlation_id);
            assert_eq!(e["publishedAtMs"], lib.published_at_ms);
            assert_eq!(e["source"], "model");
        }
    }
    let topic = &mine[0];
    let (_, body) = get_json(&format!(
        "{}/sim/published?topic={topic}&format=json",
        sim.base_url()
    ))
    .await;
    let entries = body.as_array().unwrap();
    assert!(!entries.is_empty() && entries.iter().all(|e| e["topic"] == topic.as_str()));
    let (status, _) = get_json(&format!("{}/sim/published?since=x", sim.base_url())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, info) = get_json(&format!("{}/sim/info", sim.base_url())).await;
    assert!(info["publishedTotal"].as_u64().unwrap() >= published.len() as u64);
}

#[actix_rt::test]
async fn burst_frames_are_published_and_the_log_is_bounded() {
    let sim = start(SimConfig {
        ledger_capacity: Some(50),
        // No heartbeat in the ledger: it then holds exactly the last 50 burst frames.
        heartbeat_interval: Duration::from_secs(3600),
        ..fast_config()
    });
    let api = Api::login(&sim.base_url()).await;
    let topics = queue_topics(&sim);
    let (id, uri) = api.channel().await;
    api.subscribe_ok(&id, &topics[..1]).await;
    let (_seen, _reader) = spawn_reader(Socket::connect(&uri).await);
    until("socket attached", || {
        sim.channels().iter().any(|c| c.id == id && c.connected)
    })
    .await;
    assert_eq!(sim.faults().burst(&id, 200, None), vec![id.clone()]);
    until("every burst frame sent", || {
        sim.ledger().last().is_some_and(|e| {
            e.correlation_id
                .as_deref()
                .is_some_and(|c| c.ends_with("-0000000000c7"))
        })
    })
    .await;
    // Bounded: the last 50 of the 200 published frames remain, seq keeps counting.
    let published = sim.published();
    assert_eq!(published.len(), 50);
    assert_eq!(published[0].seq, 150);
    assert_eq!(published[49].seq, 199);
    assert_gapless(&published);
    assert_eq!(sim.published_since(0).len(), 50);
    let ledger = sim.ledger();
    assert_eq!(ledger.len(), 50);
    for (p, l) in published.iter().zip(&ledger) {
        assert_eq!(p.source, PublishSource::Burst);
        assert_eq!(p.channel_id.as_deref(), Some(id.as_str()));
        assert_eq!(p.topic, topics[0]);
        assert_eq!(*p.frame, *l.frame, "byte-identical to the ledger");
        assert_eq!(Some(&p.correlation_id), l.correlation_id.as_ref());
    }
    let (_, body) = get_json(&format!("{}/sim/published?source=burst", sim.base_url())).await;
    assert_eq!(body.as_array().unwrap().len(), 50);
    assert_eq!(body[0]["channelId"], id.as_str());
    let (_, body) = get_json(&format!("{}/sim/published?source=model", sim.base_url())).await;
    assert_eq!(body.as_array().unwrap().len(), 0);
}
