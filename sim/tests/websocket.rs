//! The streaming WebSocket: upgrade, heartbeat, ping/pong, one socket per channel, fan-out of
//! byte-identical frames, socket_closing, channel and token death.

mod common;

use std::time::Duration;

use awc::http::StatusCode;
use common::*;
use genesys_sim::{ChannelDeath, FrameKind, SimConfig};
use serde_json::Value;

#[actix_rt::test]
async fn heartbeat_ping_pong_and_protocol_ping() {
    let sim = start(fast_config());
    let api = Api::login(&sim.base_url()).await;
    let (id, uri) = api.channel().await;
    assert!(uri.starts_with(&sim.ws_base_url()), "{uri}");
    assert_eq!(uri, format!("{}/channels/{id}", sim.ws_base_url()));
    assert_ne!(
        sim.base_url(),
        sim.ws_base_url().replace("ws://", "http://")
    );
    let mut socket = Socket::connect(&uri).await;

    let (text, _) = socket.next_json_where(is_heartbeat).await;
    assert_eq!(
        text,
        r#"{"topicName":"channel.metadata","eventBody":{"message":"WebSocket Heartbeat"}}"#
    );

    socket.send_text(r#"{"message":"ping"}"#).await;
    let (text, _) = socket.next_json_where(is_pong).await;
    assert_eq!(
        text,
        r#"{"topicName":"channel.metadata","eventBody":{"message":"pong"}}"#
    );

    socket.send_ping(b"are-you-there").await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match socket.next().await {
            Seen::Pong(payload) => {
                assert_eq!(payload, b"are-you-there");
                break;
            }
            Seen::Text(_) => assert!(std::time::Instant::now() < deadline),
            other => panic!("unexpected {other:?}"),
        }
    }

    until("heartbeat and pong in the ledger", || {
        let ledger = sim.ledger();
        ledger
            .iter()
            .any(|e| e.kind == FrameKind::Heartbeat && e.channel_id == id)
            && ledger
                .iter()
                .any(|e| e.kind == FrameKind::Pong && e.channel_id == id)
    })
    .await;
    let info = sim.channels().into_iter().find(|c| c.id == id).unwrap();
    assert!(info.connected && info.alive);
}

#[actix_rt::test]
async fn upgrade_refused_for_unknown_channel() {
    let sim = start(fast_config());
    let status = Socket::try_connect(&format!("{}/channels/streaming-0-nope", sim.ws_base_url()))
        .await
        .err();
    assert_eq!(status, Some(Some(StatusCode::NOT_FOUND)));
}

#[actix_rt::test]
async fn second_connection_drops_the_first() {
    let sim = start(fast_config());
    let api = Api::login(&sim.base_url()).await;
    let (id, uri) = api.channel().await;
    let mut first = Socket::connect(&uri).await;
    let mut second = Socket::connect(&uri).await;
    match first.end().await {
        Seen::Close(Some((1000, reason))) => assert!(reason.contains("superseded"), "{reason}"),
        other => panic!("first socket should be closed, got {other:?}"),
    }
    second.next_json_where(is_heartbeat).await;
    let info = sim.channels().into_iter().find(|c| c.id == id).unwrap();
    assert!(info.connected);
    assert_eq!(info.connections, 2);
}

#[actix_rt::test]
async fn events_only_on_subscribed_topics_and_identical_across_channels() {
    let sim = start(SimConfig {
        rate_per_sec: 20.0,
        ..fast_config()
    });
    let api = Api::login(&sim.base_url()).await;
    let queues = sim.queue_ids();
    let topic = format!("v2.routing.queues.{}.conversations", queues[0]);
    let (a, uri_a) = api.channel().await;
    let (b, uri_b) = api.channel().await;
    let (c, uri_c) = api.channel().await;
    api.subscribe_ok(&a, std::slice::from_ref(&topic)).await;
    api.subscribe_ok(&b, std::slice::from_ref(&topic)).await;
    let other = format!("v2.routing.queues.{}.conversations", queues[1]);
    api.subscribe_ok(&c, std::slice::from_ref(&other)).await;
    let mut sa = Socket::connect(&uri_a).await;
    let mut sb = Socket::connect(&uri_b).await;
    let mut sc = Socket::connect(&uri_c).await;

    let (text_a, v) = sa
        .next_json_where(|v| v["topicName"] == topic.as_str())
        .await;
    assert_eq!(v["version"], "2");
    assert!(v["metadata"]["CorrelationId"].as_str().unwrap().len() == 36);
    assert!(v["eventBody"]["id"].is_string());
    assert!(v["eventBody"]["participants"].is_array());
    let correlation = v["metadata"]["CorrelationId"].clone();
    let (text_b, _) = sb
        .next_json_where(|v| v["metadata"]["CorrelationId"] == correlation)
        .await;
    assert_eq!(
        text_a, text_b,
        "same event, byte-identical frame on both channels"
    );
    let (_, vc) = sc
        .next_json_where(|v| v["topicName"] != "channel.metadata")
        .await;
    assert_eq!(vc["topicName"], other.as_str());

    until("several events on each channel", || {
        sim.sent_events()
            .iter()
            .filter(|e| e.channel_id == c)
            .count()
            >= 3
    })
    .await;
    let events = sim.sent_events();
    for e in &events {
        let expected = if e.channel_id == c { &other } else { &topic };
        assert_eq!(&e.topic, expected);
        let v: Value = serde_json::from_str(&e.frame).unwrap();
        assert_eq!(v["topicName"], e.topic.as_str());
        assert_eq!(
            v["metadata"]["CorrelationId"].as_str(),
            e.correlation_id.as_deref()
        );
    }
    // Every event sent to `a` was sent to `b` with the very same text.
    let a_frames: Vec<_> = events.iter().filter(|e| e.channel_id == a).collect();
    let b_frames: Vec<_> = events.iter().filter(|e| e.channel_id == b).collect();
    let common = a_frames.len().min(b_frames.len());
    assert!(common > 0);
    for (x, y) in a_frames.iter().zip(&b_frames).take(common) {
        assert_eq!(x.frame, y.frame);
    }
}

#[actix_rt::test]
async fn socket_closing_then_close_and_channel_gone() {
    let sim = start(fast_config());
    let api = Api::login(&sim.base_url()).await;
    let (id, uri) = api.channel().await;
    let mut socket = Socket::connect(&uri).await;
    socket.next_json_where(is_heartbeat).await;
    let started = std::time::Instant::now();
    assert_eq!(sim.faults().socket_closing(&id, None), vec![id.clone()]);
    let (_, v) = socket
        .next_json_where(|v| v["topicName"] == "v2.system.socket_closing")
        .await;
    let body = &v["eventBody"];
    assert_eq!(v["version"], "2");
    assert_eq!(body["channelId"], id.as_str());
    assert_eq!(body["systemTopicType"], "socket_closing");
    assert_eq!(body["organizationId"], sim.org_id().as_str());
    assert_eq!(body["oauthClientId"], "sim-client");
    assert_eq!(body["correlationId"], v["metadata"]["CorrelationId"]);
    for field in ["reason", "message"] {
        assert!(body[field].is_string(), "{field}");
    }
    assert!(body["data"].is_object());
    assert!(matches!(socket.end().await, Seen::Close(Some((1000, _)))));
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "closed after the grace"
    );
    let head = api
        .call(
            "HEAD",
            &format!("/api/v2/notifications/channels/{id}"),
            None,
        )
        .await;
    assert_eq!(head.status, StatusCode::NOT_FOUND);
    assert_eq!(
        Socket::try_connect(&uri).await.err(),
        Some(Some(StatusCode::NOT_FOUND))
    );
    let info = sim.channels().into_iter().find(|c| c.id == id).unwrap();
    assert_eq!(info.death, Some(ChannelDeath::SocketClosing));
    assert!(sim
        .ledger()
        .iter()
        .any(|e| e.kind == FrameKind::System && e.topic == "v2.system.socket_closing"));
}

#[actix_rt::test]
async fn channel_lifetime_closes_the_socket() {
    let sim = start(SimConfig {
        channel_lifetime: Duration::from_millis(600),
        ..fast_config()
    });
    let api = Api::login(&sim.base_url()).await;
    let (id, uri) = api.channel().await;
    let mut socket = Socket::connect(&uri).await;
    match socket.end().await {
        Seen::Close(Some((1000, reason))) => assert_eq!(reason, "channel expired"),
        other => panic!("expected a close frame, got {other:?}"),
    }
    assert_eq!(
        Socket::try_connect(&uri).await.err(),
        Some(Some(StatusCode::NOT_FOUND))
    );
    let list = api.get("/api/v2/notifications/channels").await;
    assert_eq!(list.body["entities"].as_array().unwrap().len(), 0);
    let info = sim.channels().into_iter().find(|c| c.id == id).unwrap();
    assert!(!info.alive);
}

#[actix_rt::test]
async fn token_expiry_kills_channels_and_refuses_upgrade_with_401() {
    let sim = start(SimConfig {
        token_lifetime: Duration::from_millis(1500),
        ..fast_config()
    });
    let api = Api::login(&sim.base_url()).await;
    let (id, uri) = api.channel().await;
    let mut socket = Socket::connect(&uri).await;
    match socket.end().await {
        Seen::Close(Some((1000, reason))) => assert_eq!(reason, "token expired"),
        other => panic!("expected a close frame, got {other:?}"),
    }
    assert_eq!(
        Socket::try_connect(&uri).await.err(),
        Some(Some(StatusCode::UNAUTHORIZED))
    );
    let resp = api.get("/api/v2/routing/queues").await;
    assert_eq!(resp.status, StatusCode::UNAUTHORIZED);
    assert_eq!(resp.body["status"], 401);
    let info = sim.channels().into_iter().find(|c| c.id == id).unwrap();
    assert_eq!(info.death, Some(ChannelDeath::TokenExpired));
}

#[actix_rt::test]
async fn token_revocation_sends_system_frame_then_closes() {
    let sim = start(fast_config());
    let api = Api::login(&sim.base_url()).await;
    let other = Api::login(&sim.base_url()).await;
    let (id, uri) = api.channel().await;
    let (other_id, other_uri) = other.channel().await;
    let mut socket = Socket::connect(&uri).await;
    let mut other_socket = Socket::connect(&other_uri).await;
    socket.next_json_where(is_heartbeat).await;
    // Over HTTP, targeting one token.
    let resp = post_fault(
        &sim.base_url(),
        serde_json::json!({"fault": "revoke_token", "token": api.token}),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.body);
    assert_eq!(resp.body["tokens"], 1);
    let (_, v) = socket
        .next_json_where(|v| {
            v["topicName"]
                .as_str()
                .is_some_and(|t| t.starts_with("v2.system.token_revoked"))
        })
        .await;
    assert_eq!(
        v["topicName"],
        format!("v2.system.token_revoked.{id}").as_str()
    );
    assert_eq!(v["eventBody"]["systemTopicType"], "token_revoked");
    assert!(matches!(socket.end().await, Seen::Close(Some((1000, _)))));
    assert_eq!(
        api.get("/api/v2/users").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        Socket::try_connect(&uri).await.err(),
        Some(Some(StatusCode::UNAUTHORIZED))
    );
    // The other token and its channel are untouched.
    other_socket.next_json_where(is_heartbeat).await;
    assert_eq!(other.get("/api/v2/users").await.status, StatusCode::OK);
    assert!(sim.channels().iter().any(|c| c.id == other_id && c.alive));
    // From the library, by client: only the remaining valid token is revoked.
    assert_eq!(sim.faults().revoke_client_tokens("sim-client"), 1);
    other_socket
        .next_json_where(|v| {
            v["topicName"] == format!("v2.system.token_revoked.{other_id}").as_str()
        })
        .await;
    assert!(matches!(
        other_socket.end().await,
        Seen::Close(Some((1000, _)))
    ));
    assert_eq!(
        other.get("/api/v2/users").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert!(!sim.faults().revoke_token(&other.token), "already revoked");
}

#[actix_rt::test]
async fn a_client_that_does_not_read_is_dropped() {
    let sim = start(SimConfig {
        rate_per_sec: 300.0,
        agents: 60,
        socket_buffer_frames: 10,
        ..fast_config()
    });
    let api = Api::login(&sim.base_url()).await;
    let (id, uri) = api.channel().await;
    let mut topics = queue_topics(&sim);
    topics.extend(
        sim.user_ids()
            .iter()
            .map(|u| format!("v2.users.{u}.conversations")),
    );
    api.subscribe_ok(&id, &topics).await;
    // Connect, then do not read: the socket's buffers fill up and the simulator drops it.
    let mut socket = Socket::connect(&uri).await;
    until("slow socket dropped", || {
        sim.channels()
            .iter()
            .any(|c| c.id == id && c.connections == 1 && !c.connected)
    })
    .await;
    let received_before_end = {
        let mut n = 0usize;
        loop {
            match socket.next().await {
                Seen::Text(_) => n += 1,
                Seen::Abnormal => break n,
                other => panic!("expected frames then an abnormal end, got {other:?}"),
            }
        }
    };
    // Everything in the ledger for this socket was delivered before the drop.
    let in_ledger = sim.ledger_count(|e| e.channel_id == id);
    assert_eq!(received_before_end, in_ledger);
    assert!(sim.channels().iter().any(|c| c.id == id && c.alive));
}
