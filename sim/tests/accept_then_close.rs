//! The `accept_then_close` fault: upgrades are accepted (101), then closed at once with a close
//! frame and nothing else; the channel stays alive and subscribed.

mod common;

use std::time::{Duration, Instant};

use awc::http::StatusCode;
use common::*;
use genesys_sim::{ChannelEvent, DetachCause, FrameKind, MissReason, SimConfig, SimHandle};
use serde_json::json;

/// Connects (the upgrade must be accepted) and expects a close frame (1000) as the very first
/// frame, then the end of the connection.
async fn accepted_then_closed(uri: &str) {
    let mut socket = Socket::connect(uri).await;
    assert_eq!(
        socket.next().await,
        Seen::Close(Some((1000, "accept_then_close".to_owned()))),
        "a close frame before anything else"
    );
    assert_eq!(
        socket.next().await,
        Seen::Abnormal,
        "then the connection ends"
    );
}

/// (attach conn ids, accept_then_close detach conn ids) of a channel, from the channel log.
fn attaches(sim: &SimHandle, channel: &str) -> (Vec<u64>, Vec<u64>) {
    let (mut attached, mut closed) = (Vec::new(), Vec::new());
    for e in sim.channel_log() {
        if e.channel_id != channel {
            continue;
        }
        match e.event {
            ChannelEvent::SocketAttached { conn_id } => attached.push(conn_id),
            ChannelEvent::SocketDetached {
                conn_id,
                cause: DetachCause::AcceptThenClose,
            } => closed.push(conn_id),
            _ => {}
        }
    }
    (attached, closed)
}

#[actix_rt::test]
async fn upgrades_are_closed_at_once_until_cleared() {
    let sim = start(SimConfig {
        rate_per_sec: 20.0,
        ..fast_config()
    });
    let base = sim.base_url();
    let api = Api::login(&base).await;
    let topics = queue_topics(&sim);
    let (a, uri_a) = api.channel().await;
    let (streaming, uri_streaming) = api.channel().await;
    api.subscribe_ok(&a, &topics).await;
    api.subscribe_ok(&streaming, &topics).await;
    let mut connected = Socket::connect(&uri_streaming).await;
    connected.next_json_where(is_heartbeat).await;

    let resp = post_fault(
        &base,
        json!({"fault": "accept_then_close", "target": "all"}),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
    assert_eq!(resp.body["channels"], json!([a, streaming]));
    let fault_at_ms = chrono::Utc::now().timestamp_millis();

    // Repeatedly: accepted, then closed before anything else.
    for _ in 0..3 {
        accepted_then_closed(&uri_a).await;
    }
    // A socket connected before the fault is not touched.
    connected.next_json_where(is_heartbeat).await;
    connected
        .next_json_where(|v| v["topicName"] != "channel.metadata")
        .await;
    // Channels created during the fault get it too (a reconnect storm creates new ones).
    let (b, uri_b) = api.channel().await;
    api.subscribe_ok(&b, &topics).await;
    for _ in 0..2 {
        accepted_then_closed(&uri_b).await;
    }

    // Alive and subscribed, without a socket: events meanwhile are missed (no socket).
    let info = sim.channels().into_iter().find(|c| c.id == a).unwrap();
    assert!(info.alive && !info.connected);
    assert_eq!(info.topics, topics);
    assert_eq!(info.connections, 3);
    until("events missed during the fault", || {
        sim.missed_count(|e| {
            e.channel_id == a && e.reason == MissReason::NoSocket && e.at_ms >= fault_at_ms
        }) >= 3
    })
    .await;
    assert_eq!(
        sim.ledger_count(|e| e.channel_id == a || e.channel_id == b),
        0
    );
    // Every accepted upgrade is logged as attach + detach (accept_then_close), with times.
    let (attached, closed) = attaches(&sim, &a);
    assert_eq!(attached.len(), 3);
    assert_eq!(attached, closed);
    let attach_times: Vec<i64> = sim
        .channel_log()
        .into_iter()
        .filter(|e| e.channel_id == a && matches!(e.event, ChannelEvent::SocketAttached { .. }))
        .map(|e| e.at_ms)
        .collect();
    assert!(attach_times.windows(2).all(|w| w[0] <= w[1]));
    assert!(attach_times[0] >= fault_at_ms);
    assert_eq!(attaches(&sim, &b).0.len(), 2);

    // Cleared: both stream normally.
    assert_eq!(
        sim.faults().clear_accept_then_close("all"),
        vec![a.clone(), streaming.clone(), b.clone()]
    );
    for uri in [&uri_a, &uri_b] {
        let mut socket = Socket::connect(uri).await;
        socket.next_json_where(is_heartbeat).await;
        socket
            .next_json_where(|v| v["topicName"] != "channel.metadata")
            .await;
    }
    let (attached, closed) = attaches(&sim, &a);
    assert_eq!((attached.len(), closed.len()), (4, 3));
    assert!(sim.ledger_count(|e| e.channel_id == a && e.kind == FrameKind::Event) > 0);
    // New channels are no longer affected either.
    let (_c, uri_c) = api.channel().await;
    Socket::connect(&uri_c)
        .await
        .next_json_where(is_heartbeat)
        .await;
}

#[actix_rt::test]
async fn timed_on_one_channel() {
    let sim = start(fast_config());
    let base = sim.base_url();
    let api = Api::login(&base).await;
    let (a, uri_a) = api.channel().await;
    let (_other, uri_other) = api.channel().await;
    let set_at = Instant::now();
    assert_eq!(
        sim.faults()
            .accept_then_close(&a, Some(Duration::from_millis(600))),
        vec![a.clone()]
    );
    accepted_then_closed(&uri_a).await;
    // Other channels are not affected.
    Socket::connect(&uri_other)
        .await
        .next_json_where(is_heartbeat)
        .await;
    // Ends by itself.
    eventually("accept_then_close ends after its duration", || {
        let uri = uri_a.clone();
        async move {
            let mut socket = Socket::connect(&uri).await;
            match socket.next().await {
                Seen::Close(Some((1000, reason))) if reason == "accept_then_close" => false,
                Seen::Text(t) => {
                    assert!(t.contains("WebSocket Heartbeat"), "{t}");
                    true
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
    assert!(set_at.elapsed() >= Duration::from_millis(600));

    // Over HTTP, with a duration, then cleared for one channel; unknown channels are a 404.
    let resp = post_fault(
        &base,
        json!({"fault": "accept_then_close", "target": a, "duration_ms": 60_000}),
    )
    .await;
    assert_eq!(resp.body["channels"], json!([a]));
    accepted_then_closed(&uri_a).await;
    let resp = post_fault(
        &base,
        json!({"fault": "clear_accept_then_close", "target": a}),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK);
    Socket::connect(&uri_a)
        .await
        .next_json_where(is_heartbeat)
        .await;
    for fault in ["accept_then_close", "clear_accept_then_close"] {
        let resp = post_fault(&base, json!({"fault": fault, "target": "streaming-0-nope"})).await;
        assert_eq!(resp.status, StatusCode::NOT_FOUND, "{fault}");
    }
    // Dead channels still answer 404 before any upgrade.
    sim.faults().accept_then_close("all", None);
    sim.faults().expire_channel(&a);
    assert_eq!(
        Socket::try_connect(&uri_a).await.err(),
        Some(Some(StatusCode::NOT_FOUND))
    );
}
