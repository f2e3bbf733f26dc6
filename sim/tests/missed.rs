//! The missed log: every event published to a live, subscribed channel is either in the ledger
//! (handed to its socket) or in the missed log, exactly once, with the byte-identical frame.

mod common;

use std::collections::{HashMap, HashSet};

use awc::http::StatusCode;
use common::*;
use genesys_sim::{FrameKind, MissReason, MissedEntry, SimConfig, SimHandle};
use serde_json::Value;

fn misses(sim: &SimHandle, channel: &str, reason: MissReason) -> usize {
    sim.missed_count(|e| e.channel_id == channel && e.reason == reason)
}

fn events_sent(sim: &SimHandle, channel: &str) -> usize {
    sim.ledger_count(|e| e.channel_id == channel && e.kind == FrameKind::Event)
}

/// CorrelationId → frame of the events handed to `channel`'s sockets.
fn ledgered(sim: &SimHandle, channel: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for e in sim.sent_events() {
        if e.channel_id == channel {
            let id = e.correlation_id.as_deref().unwrap().to_owned();
            assert!(out.insert(id, e.frame.to_string()).is_none(), "sent twice");
        }
    }
    out
}

/// CorrelationId → entry of the events `channel` missed.
fn missed_by(sim: &SimHandle, channel: &str) -> HashMap<String, MissedEntry> {
    let mut out = HashMap::new();
    for e in sim.missed() {
        if e.channel_id == channel {
            let id = e.correlation_id.as_deref().unwrap().to_owned();
            assert!(out.insert(id, e).is_none(), "missed twice");
        }
    }
    out
}

/// Sent or missed: every event `channel` was due, CorrelationId → frame.
fn accounted(sim: &SimHandle, channel: &str) -> HashMap<String, String> {
    let sent = ledgered(sim, channel);
    let missed = missed_by(sim, channel);
    for id in missed.keys() {
        assert!(!sent.contains_key(id), "{id} both sent and missed");
    }
    let mut all = sent;
    all.extend(missed.into_iter().map(|(id, e)| (id, e.frame.to_string())));
    all
}

/// Waits until `channel` accounts for exactly the events the never-connected `reference`
/// channel (same subscriptions) missed, with identical frames.
async fn assert_accounts_like(sim: &SimHandle, channel: &str, reference: &str) {
    let due = accounted(sim, reference);
    until(
        "every reference event is sent or missed on the channel",
        || {
            let mine = accounted(sim, channel);
            due.keys().all(|id| mine.contains_key(id))
        },
    )
    .await;
    let mine = accounted(sim, channel);
    until("nothing on the channel that the reference lacks", || {
        let due = accounted(sim, reference);
        mine.keys().all(|id| due.contains_key(id))
    })
    .await;
    let due = accounted(sim, reference);
    for (id, frame) in &mine {
        assert_eq!(frame, &due[id], "byte-identical frame for {id}");
    }
}

#[actix_rt::test]
async fn every_event_is_sent_or_missed_exactly_once() {
    let sim = start(SimConfig {
        agents: 20,
        ..fast_config()
    });
    let api = Api::login(&sim.base_url()).await;
    let topics = queue_topics(&sim);
    let (a, uri) = api.channel().await;
    let (reference, _) = api.channel().await;
    api.subscribe_ok(&a, &topics).await;
    api.subscribe_ok(&reference, &topics).await;
    sim.set_rate(40.0);

    // Not connected yet.
    until("misses before connecting", || {
        misses(&sim, &a, MissReason::NoSocket) >= 3
    })
    .await;
    // Connected.
    let (seen1, reader1) = spawn_reader(Socket::connect(&uri).await);
    until("events sent", || events_sent(&sim, &a) >= 5).await;
    // Silenced, then resumed.
    assert_eq!(sim.faults().silence(&a, None), vec![a.clone()]);
    until("misses while silenced", || {
        misses(&sim, &a, MissReason::Silenced) >= 3
    })
    .await;
    sim.faults().resume(&a);
    let sent = events_sent(&sim, &a);
    until("events sent after resume", || {
        events_sent(&sim, &a) >= sent + 3
    })
    .await;
    // Dropped: nothing is connected until the client reconnects.
    assert_eq!(sim.faults().drop_socket(&a), vec![a.clone()]);
    let no_socket = misses(&sim, &a, MissReason::NoSocket);
    until("misses after the drop", || {
        misses(&sim, &a, MissReason::NoSocket) >= no_socket + 3
    })
    .await;
    assert_eq!(reader1.await.unwrap(), Seen::Abnormal);
    let (seen2, _reader2) = spawn_reader(Socket::connect(&uri).await);
    let sent = events_sent(&sim, &a);
    until("events sent after reconnecting", || {
        events_sent(&sim, &a) >= sent + 3
    })
    .await;
    sim.set_rate(0.0);

    assert_accounts_like(&sim, &a, &reference).await;
    let missed = missed_by(&sim, &a);
    let reasons: HashSet<MissReason> = missed.values().map(|e| e.reason).collect();
    assert!(reasons.contains(&MissReason::NoSocket) && reasons.contains(&MissReason::Silenced));
    assert!(!reasons.contains(&MissReason::TooSlow), "{reasons:?}");
    assert!(sim
        .missed()
        .iter()
        .filter(|e| e.channel_id == reference)
        .all(|e| e.reason == MissReason::NoSocket));
    for e in missed.values() {
        let v: Value = serde_json::from_str(&e.frame).unwrap();
        assert_eq!(v["topicName"], e.topic.as_str());
        assert!(topics.contains(&e.topic));
        assert_eq!(
            v["metadata"]["CorrelationId"].as_str(),
            e.correlation_id.as_deref()
        );
        assert_eq!(e.at_ms, e.at.timestamp_millis());
    }
    let all = sim.missed();
    assert!(all.windows(2).all(|w| w[0].seq + 1 == w[1].seq));

    // What the client read: exactly ledgered frames, never a missed one.
    let sent = ledgered(&sim, &a);
    let read: Vec<String> = seen1
        .borrow()
        .iter()
        .chain(seen2.borrow().iter())
        .filter(|t| !t.contains(r#""topicName":"channel.metadata""#))
        .cloned()
        .collect();
    assert!(!read.is_empty());
    for text in &read {
        let v: Value = serde_json::from_str(text).unwrap();
        let id = v["metadata"]["CorrelationId"].as_str().unwrap();
        assert_eq!(sent.get(id), Some(text), "read frames are ledgered");
        assert!(!missed.contains_key(id), "a missed frame was read");
    }

    // Over HTTP, with filters.
    let base = sim.base_url();
    let (status, body) = get_json(&format!("{base}/sim/missed?channel={a}")).await;
    assert_eq!(status, StatusCode::OK);
    let entries = body.as_array().unwrap();
    let lib: Vec<MissedEntry> = sim
        .missed()
        .into_iter()
        .filter(|e| e.channel_id == a)
        .collect();
    assert_eq!(
        entries.len(),
        lib.len(),
        "no new misses once accounted: {:#?}",
        &lib[entries.len().min(lib.len())..]
    );
    for (json, e) in entries.iter().zip(&lib) {
        assert_eq!(json["seq"], e.seq);
        assert_eq!(json["channelId"], a.as_str());
        assert_eq!(json["topic"], e.topic.as_str());
        assert_eq!(json["frame"], &*e.frame);
        assert_eq!(json["correlationId"].as_str(), e.correlation_id.as_deref());
        assert_eq!(json["atMs"], e.at_ms);
        assert!(json["at"].is_string());
        let reason = serde_json::to_value(e.reason).unwrap();
        assert_eq!(json["reason"], reason);
    }
    let since = lib[lib.len() / 2].seq;
    let (_, body) = get_json(&format!("{base}/sim/missed?channel={a}&since={since}")).await;
    let tail = body.as_array().unwrap();
    assert_eq!(tail.len(), lib.iter().filter(|e| e.seq >= since).count());
    assert_eq!(tail[0]["seq"], since);
    let (_, body) = get_json(&format!("{base}/sim/missed?reason=silenced")).await;
    let silenced = body.as_array().unwrap();
    assert!(!silenced.is_empty() && silenced.iter().all(|e| e["channelId"] == a.as_str()));
    assert_eq!(
        silenced.len(),
        sim.missed_count(|e| e.reason == MissReason::Silenced)
    );
    // The reference channel still misses the events of conversations in progress.
    let before = sim.missed_count(|e| e.channel_id == reference);
    let mut resp = http()
        .get(format!(
            "{base}/sim/missed?format=jsonl&channel={reference}"
        ))
        .send()
        .await
        .unwrap();
    let text = resp.body().limit(64 << 20).await.unwrap();
    let lines = std::str::from_utf8(&text).unwrap().lines().count();
    assert!(before <= lines && lines <= sim.missed_count(|e| e.channel_id == reference));
    let (status, _) = get_json(&format!("{base}/sim/missed?since=x")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = get_json(&format!("{base}/sim/missed?reason=bored")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[actix_rt::test]
async fn dead_or_unsubscribed_channels_miss_nothing() {
    let sim = start(SimConfig {
        agents: 20,
        ..fast_config()
    });
    let api = Api::login(&sim.base_url()).await;
    let topics = queue_topics(&sim);
    let (one_topic, _) = api.channel().await;
    let (doomed, _) = api.channel().await;
    let (reference, _) = api.channel().await;
    api.subscribe_ok(&one_topic, &topics[..1]).await;
    api.subscribe_ok(&doomed, &topics).await;
    api.subscribe_ok(&reference, &topics).await;
    sim.set_rate(60.0);
    until("the one-topic channel misses events", || {
        sim.missed_count(|e| e.channel_id == one_topic) >= 3
    })
    .await;
    assert!(sim
        .missed()
        .iter()
        .filter(|e| e.channel_id == one_topic)
        .all(|e| e.topic == topics[0] && e.reason == MissReason::NoSocket));

    // Dead and unsubscribed channels are no longer due anything.
    assert_eq!(sim.faults().expire_channel(&doomed), vec![doomed.clone()]);
    let resp = api
        .call(
            "DELETE",
            &format!("/api/v2/notifications/channels/{one_topic}/subscriptions"),
            None,
        )
        .await;
    assert_eq!(resp.status, StatusCode::NO_CONTENT);
    let of_doomed = sim.missed_count(|e| e.channel_id == doomed);
    let of_one = sim.missed_count(|e| e.channel_id == one_topic);
    let of_reference = sim.missed_count(|e| e.channel_id == reference);
    until("plenty of events after", || {
        sim.missed_count(|e| e.channel_id == reference) >= of_reference + 20
    })
    .await;
    assert_eq!(sim.missed_count(|e| e.channel_id == doomed), of_doomed);
    assert_eq!(sim.missed_count(|e| e.channel_id == one_topic), of_one);
}

#[actix_rt::test]
async fn a_too_slow_socket_misses_what_it_could_not_take() {
    let sim = start(SimConfig {
        agents: 60,
        socket_buffer_frames: 10,
        ..fast_config()
    });
    let api = Api::login(&sim.base_url()).await;
    let (a, uri) = api.channel().await;
    let (reference, _) = api.channel().await;
    let mut topics = queue_topics(&sim);
    topics.extend(
        sim.user_ids()
            .iter()
            .map(|u| format!("v2.users.{u}.conversations")),
    );
    api.subscribe_ok(&a, &topics).await;
    api.subscribe_ok(&reference, &topics).await;
    // Connect, then do not read until the simulator gives up on the socket.
    let mut socket = Socket::connect(&uri).await;
    sim.set_rate(300.0);
    until("slow socket dropped", || {
        sim.channels()
            .iter()
            .any(|c| c.id == a && c.connections == 1 && !c.connected)
    })
    .await;
    until("misses after the drop", || {
        misses(&sim, &a, MissReason::NoSocket) >= 3
    })
    .await;
    sim.set_rate(0.0);
    while let Seen::Text(_) = socket.next().await {}
    assert_eq!(misses(&sim, &a, MissReason::TooSlow), 1);
    assert!(
        misses(&sim, &a, MissReason::SocketDropped) >= 10,
        "the full queue was discarded"
    );
    assert_accounts_like(&sim, &a, &reference).await;
}
