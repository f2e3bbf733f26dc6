//! The channel log: creation, death (evictions with whether a socket was attached), socket
//! attach/detach, and the per-client high-water mark of live channels.

mod common;

use awc::http::StatusCode;
use common::*;
use genesys_sim::{ChannelDeath, ChannelEvent, ChannelLogEntry, DetachCause, SimHandle};

const CLIENT: &str = "sim-client";

fn entries_of(sim: &SimHandle, channel: &str) -> Vec<ChannelLogEntry> {
    sim.channel_log()
        .into_iter()
        .filter(|e| e.channel_id == channel)
        .collect()
}

fn deaths(sim: &SimHandle) -> Vec<(String, ChannelDeath, bool)> {
    sim.channel_log()
        .into_iter()
        .filter_map(|e| match e.event {
            ChannelEvent::Died { reason, had_socket } => Some((e.channel_id, reason, had_socket)),
            _ => None,
        })
        .collect()
}

async fn connect_attached(sim: &SimHandle, id: &str, uri: &str) -> Socket {
    let socket = Socket::connect(uri).await;
    until("socket attached", || {
        sim.channels().iter().any(|c| c.id == id && c.connected)
    })
    .await;
    socket
}

#[actix_rt::test]
async fn evictions_and_the_high_water_mark_of_21_channels() {
    let sim = start(fast_config());
    let api = Api::login(&sim.base_url()).await;
    let before_ms = chrono::Utc::now().timestamp_millis();
    let mut created = Vec::new();
    for _ in 0..20 {
        created.push(api.channel().await);
    }
    assert_eq!(sim.max_live_channels(CLIENT), 20);
    // Sockets on the three oldest channels.
    let mut sockets = Vec::new();
    for (id, uri) in &created[..3] {
        sockets.push(connect_attached(&sim, id, uri).await);
    }
    // The 21st evicts the oldest idle channel (the fourth), which had no socket.
    let (c21, uri21) = api.channel().await;
    assert_eq!(
        deaths(&sim),
        vec![(created[3].0.clone(), ChannelDeath::Evicted, false)]
    );
    assert_eq!(
        sim.max_live_channels(CLIENT),
        20,
        "never more than 20 at once"
    );
    assert_eq!(sim.evictions_of_live_channels(CLIENT), 0);

    let log = sim.channel_log();
    for w in log.windows(2) {
        assert_eq!(w[1].seq, w[0].seq + 1);
        assert!(w[1].at_ms >= w[0].at_ms);
    }
    let creations: Vec<&ChannelLogEntry> = log
        .iter()
        .filter(|e| matches!(e.event, ChannelEvent::Created { .. }))
        .collect();
    assert_eq!(creations.len(), 21);
    let mut ids: Vec<String> = created.iter().map(|(id, _)| id.clone()).collect();
    ids.push(c21.clone());
    for (entry, id) in creations.iter().zip(&ids) {
        assert_eq!(&entry.channel_id, id);
        assert_eq!(entry.client_id, CLIENT);
        assert!(entry.at_ms >= before_ms);
        let ChannelEvent::Created {
            token,
            expires,
            expires_ms,
        } = &entry.event
        else {
            unreachable!()
        };
        assert_eq!(token, &api.token);
        assert!(*expires_ms > entry.at_ms);
        assert_eq!(expires.timestamp_millis(), *expires_ms);
    }
    // The eviction is logged before the creation that caused it.
    let died_at = log
        .iter()
        .position(|e| matches!(e.event, ChannelEvent::Died { .. }))
        .unwrap();
    assert_eq!(log[died_at + 1].channel_id, c21);
    for (id, _) in &created[..3] {
        let mine = entries_of(&sim, id);
        assert!(matches!(mine[1].event, ChannelEvent::SocketAttached { .. }));
    }

    // Every live channel gets a socket: the 22nd evicts the oldest one, whose socket was
    // attached; its close frame follows.
    for (id, uri) in created[4..].iter().chain([&(c21.clone(), uri21)]) {
        sockets.push(connect_attached(&sim, id, uri).await);
    }
    assert_eq!(sim.channels().iter().filter(|c| c.connected).count(), 20);
    let (c22, _) = api.channel().await;
    let oldest = &created[0].0;
    assert_eq!(
        deaths(&sim)[1],
        (oldest.clone(), ChannelDeath::Evicted, true)
    );
    assert_eq!(sim.evictions_of_live_channels(CLIENT), 1);
    assert_eq!(sim.evictions_of_live_channels("someone-else"), 0);
    assert_eq!(sim.max_live_channels(CLIENT), 20);
    assert_eq!(sim.max_live_channels("someone-else"), 0);
    match sockets[0].end().await {
        Seen::Close(Some((1000, reason))) => assert_eq!(reason, "channel evicted"),
        other => panic!("evicted socket should get a close frame, got {other:?}"),
    }
    let mine = entries_of(&sim, oldest);
    let events: Vec<&ChannelEvent> = mine.iter().map(|e| &e.event).collect();
    let ChannelEvent::SocketAttached { conn_id } = *events[1] else {
        panic!("{events:?}")
    };
    assert_eq!(
        events[2..],
        [
            &ChannelEvent::Died {
                reason: ChannelDeath::Evicted,
                had_socket: true
            },
            &ChannelEvent::SocketDetached {
                conn_id,
                cause: DetachCause::ChannelDied
            },
        ]
    );
    assert_eq!(entries_of(&sim, &c22).len(), 1);

    // Over HTTP.
    let base = sim.base_url();
    let (status, body) = get_json(&format!("{base}/sim/channel-log?client={CLIENT}")).await;
    assert_eq!(status, StatusCode::OK);
    let all = body.as_array().unwrap();
    assert_eq!(all.len(), sim.channel_log().len());
    let died: Vec<_> = all.iter().filter(|e| e["event"] == "died").collect();
    assert_eq!(died.len(), 2);
    assert_eq!(died[0]["channelId"], created[3].0.as_str());
    assert_eq!(died[0]["reason"], "evicted");
    assert_eq!(died[0]["hadSocket"], false);
    assert_eq!(died[0]["clientId"], CLIENT);
    assert_eq!(died[1]["hadSocket"], true);
    assert!(died[1]["atMs"].is_i64() && died[1]["seq"].is_u64());
    let created_json = all.iter().find(|e| e["event"] == "created").unwrap();
    assert_eq!(created_json["token"], api.token.as_str());
    assert!(created_json["expiresMs"].is_i64() && created_json["expires"].is_string());
    let mut resp = http()
        .get(format!(
            "{base}/sim/channel-log?channel={oldest}&format=jsonl"
        ))
        .send()
        .await
        .unwrap();
    let bytes = resp.body().await.unwrap();
    let text = std::str::from_utf8(&bytes).unwrap();
    let kinds: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].to_string())
        .collect();
    assert_eq!(
        kinds,
        [
            "\"created\"",
            "\"socket_attached\"",
            "\"died\"",
            "\"socket_detached\""
        ]
    );
    let (_, body) = get_json(&format!("{base}/sim/channel-log?since=1000000")).await;
    assert_eq!(body.as_array().unwrap().len(), 0);
}

#[actix_rt::test]
async fn detach_causes() {
    let sim = start(fast_config());
    let api = Api::login(&sim.base_url()).await;
    let (id, uri) = api.channel().await;
    let cause_of_last_detach = |sim: &SimHandle| {
        entries_of(sim, &id)
            .into_iter()
            .rev()
            .find_map(|e| match e.event {
                ChannelEvent::SocketDetached { cause, .. } => Some(cause),
                _ => None,
            })
    };
    // The client goes away.
    let socket = connect_attached(&sim, &id, &uri).await;
    drop(socket);
    until("detached", || {
        cause_of_last_detach(&sim) == Some(DetachCause::ConnectionEnded)
    })
    .await;
    // drop_socket.
    let _socket = connect_attached(&sim, &id, &uri).await;
    assert_eq!(sim.faults().drop_socket(&id), vec![id.clone()]);
    assert_eq!(cause_of_last_detach(&sim), Some(DetachCause::Dropped));
    // A second connection supersedes the first.
    let _first = connect_attached(&sim, &id, &uri).await;
    let _second = Socket::connect(&uri).await;
    until("superseded", || {
        cause_of_last_detach(&sim) == Some(DetachCause::Superseded)
    })
    .await;
    // Channel death while connected.
    assert_eq!(sim.faults().expire_channel(&id), vec![id.clone()]);
    assert_eq!(cause_of_last_detach(&sim), Some(DetachCause::ChannelDied));
    let log = entries_of(&sim, &id);
    let attaches = log
        .iter()
        .filter(|e| matches!(e.event, ChannelEvent::SocketAttached { .. }))
        .count();
    let detaches = log
        .iter()
        .filter(|e| matches!(e.event, ChannelEvent::SocketDetached { .. }))
        .count();
    assert_eq!((attaches, detaches), (4, 4));
    assert!(log.iter().any(|e| e.event
        == ChannelEvent::Died {
            reason: ChannelDeath::Expired,
            had_socket: true
        }));
    let info = sim.channels().into_iter().find(|c| c.id == id).unwrap();
    assert_eq!(info.connections, 4);
}
