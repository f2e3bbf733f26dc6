//! The conversation model: snapshot and detail-event shapes, the life of a conversation,
//! queue observations, determinism for a seed, rate control and runtime queues.

mod common;

use std::collections::HashMap;

use common::*;
use genesys_sim::{FrameKind, SimConfig, SimHandle};
use serde_json::{json, Value};

const DETAIL_SUFFIXES: [&str; 8] = [
    "customer.start",
    "customer.end",
    "acd.start",
    "acd.end",
    "user.start",
    "user.end",
    "acw",
    "wrapup",
];

/// Conversation ids in start order, from the analytics query.
async fn conversation_ids(_sim: &SimHandle, api: &Api) -> Vec<String> {
    let interval = format!(
        "{}/{}",
        (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339(),
        (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339()
    );
    let resp = api
        .call(
            "POST",
            "/api/v2/analytics/conversations/details/query",
            Some(json!({"interval": interval, "paging": {"pageSize": 100, "pageNumber": 1}})),
        )
        .await;
    resp.body["conversations"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| c["conversationId"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Event frames of one conversation on one channel: (topic, correlation id, body).
fn frames_of(sim: &SimHandle, channel: &str, conversation: &str) -> Vec<(String, String, Value)> {
    sim.sent_events()
        .into_iter()
        .filter(|e| e.channel_id == channel)
        .filter_map(|e| {
            let v: Value = serde_json::from_str(&e.frame).unwrap();
            let body = v["eventBody"].clone();
            let about = body["id"]
                .as_str()
                .or(body["conversationId"].as_str())
                .unwrap_or("")
                .to_owned();
            (about == conversation).then(|| {
                (
                    e.topic.clone(),
                    e.correlation_id.as_deref().unwrap().to_owned(),
                    body,
                )
            })
        })
        .collect()
}

fn is_finished(body: &Value) -> bool {
    body["participants"]
        .as_array()
        .is_some_and(|ps| ps.iter().all(|p| p["endTime"].is_string()))
}

/// Starts a sim with `seed`, subscribes one channel to `topics(sim)`, then starts traffic.
async fn run(
    seed: u64,
    topics: impl Fn(&SimHandle) -> Vec<String>,
) -> (SimHandle, Api, String, Socket) {
    let sim = start(SimConfig {
        seed,
        queues: 3,
        agents: 4,
        ..fast_config()
    });
    let api = Api::login(&sim.base_url()).await;
    let (id, uri) = api.channel().await;
    api.subscribe_ok(&id, &topics(&sim)).await;
    let socket = Socket::connect(&uri).await;
    until("socket attached", || sim.channels()[0].connected).await;
    sim.set_rate(8.0);
    (sim, api, id, socket)
}

#[actix_rt::test]
async fn deterministic_for_a_seed_with_full_detail_events() {
    // First run: learn the first conversation's id.
    let (a, api_a, chan_a, _sa) = run(42, queue_topics).await;
    until("five conversations", || a.conversations_started() >= 5).await;
    let ids_a = conversation_ids(&a, &api_a).await;
    let first = ids_a[0].clone();

    // Second run, same seed: subscribe to that conversation's detail topics before it starts.
    let first_ref = first.clone();
    let (b, api_b, chan_b, _sb) = run(42, move |sim| {
        let mut t = queue_topics(sim);
        for s in DETAIL_SUFFIXES {
            t.push(format!("v2.detail.events.conversation.{first_ref}.{s}"));
        }
        t
    })
    .await;
    until(
        "the first conversation finished in run B, wrap-up included",
        || {
            let frames = frames_of(&b, &chan_b, &first);
            frames.iter().any(|(t, _, _)| t.ends_with(".wrapup"))
                && frames.iter().any(|(_, _, body)| is_finished(body))
        },
    )
    .await;
    until("and in run A", || {
        frames_of(&a, &chan_a, &first).iter().any(|(_, _, body)| {
            is_finished(body)
                && body["participants"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["wrapup"].is_object())
        })
    })
    .await;
    until("B has five conversations", || {
        b.conversations_started() >= 5
    })
    .await;
    let ids_b = conversation_ids(&b, &api_b).await;
    assert_eq!(
        ids_a[..5],
        ids_b[..5],
        "same conversation ids in the same order"
    );

    // Same snapshots with the same correlation ids, in the same order (timestamps aside).
    let strip = |(topic, corr, body): &(String, String, Value)| {
        let participants: Vec<Value> = body["participants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                json!([
                    p["id"],
                    p["purpose"],
                    p["calls"][0]["state"],
                    p["userId"],
                    p["queueId"]
                ])
            })
            .collect();
        (topic.clone(), corr.clone(), participants)
    };
    let snaps_a: Vec<_> = frames_of(&a, &chan_a, &first)
        .iter()
        .filter(|(t, _, _)| t.starts_with("v2.routing.queues."))
        .map(strip)
        .collect();
    let snaps_b: Vec<_> = frames_of(&b, &chan_b, &first)
        .iter()
        .filter(|(t, _, _)| t.starts_with("v2.routing.queues."))
        .map(strip)
        .collect();
    let n = snaps_a.len().min(snaps_b.len());
    assert!(n >= 5, "a conversation has several snapshots");
    assert_eq!(snaps_a[..n], snaps_b[..n]);

    // Detail events of the first conversation, in a plausible order and shape.
    let details: Vec<(String, Value)> = frames_of(&b, &chan_b, &first)
        .into_iter()
        .filter(|(t, _, _)| t.starts_with("v2.detail.events."))
        .map(|(t, _, body)| (t.rsplit_once(&first).unwrap().1[1..].to_owned(), body))
        .collect();
    let order: Vec<&str> = details.iter().map(|(s, _)| s.as_str()).collect();
    let pos = |s: &str| {
        order
            .iter()
            .position(|x| *x == s)
            .unwrap_or_else(|| panic!("{s} missing in {order:?}"))
    };
    assert_eq!(order[0], "customer.start");
    assert!(pos("acd.start") < pos("user.start"));
    assert!(pos("user.start") < pos("acd.end"));
    assert!(pos("acd.end") < pos("customer.end"));
    assert!(pos("customer.end") < pos("acw"));
    for (suffix, body) in &details {
        assert!(body["eventTime"].is_i64(), "{suffix}: eventTime epoch ms");
        assert_eq!(body["conversationId"], first.as_str());
        for field in ["participantId", "sessionId", "direction"] {
            assert!(body[field].is_string(), "{suffix}: {field}");
        }
        assert_eq!(body["mediaType"], "VOICE");
        if suffix.starts_with("acd.") {
            assert!(body["queueId"].is_string(), "{suffix}");
        }
        if suffix.starts_with("user.") || suffix == "acw" {
            assert!(body["userId"].is_string(), "{suffix}");
        }
        if suffix.ends_with(".end") && suffix != "acd.end" {
            assert!(body["disconnectType"].is_string(), "{suffix}");
        }
    }
    let (_, acw) = details.iter().find(|(s, _)| s == "acw").unwrap();
    assert!(acw["wrapupCode"].is_string());

    // A different seed gives different ids.
    let other = start(SimConfig {
        seed: 43,
        ..fast_config()
    });
    assert_ne!(other.queue_ids(), a.queue_ids());
    assert_eq!(b.queue_ids(), a.queue_ids());
    assert_eq!(b.user_ids(), a.user_ids());
    assert_eq!(b.org_id(), a.org_id());
}

#[actix_rt::test]
async fn snapshots_on_queue_and_user_topics() {
    let (sim, _api, chan, mut socket) = run(5, |sim| {
        let mut t = queue_topics(sim);
        t.extend(
            sim.user_ids()
                .iter()
                .map(|u| format!("v2.users.{u}.conversations")),
        );
        t
    })
    .await;
    let (_, v) = socket
        .next_json_where(|v| {
            v["topicName"].as_str().unwrap().starts_with("v2.users.")
                && is_finished(&v["eventBody"])
        })
        .await;
    let body = &v["eventBody"];
    assert_eq!(body["recordingState"], "none");
    let participants = body["participants"].as_array().unwrap();
    let purposes: Vec<&str> = participants
        .iter()
        .map(|p| p["purpose"].as_str().unwrap())
        .collect();
    assert!(
        purposes.contains(&"customer") && purposes.contains(&"acd") && purposes.contains(&"agent")
    );
    for p in participants {
        assert!(p["id"].is_string());
        assert!(p["endTime"].is_string());
        let call = &p["calls"][0];
        assert_eq!(call["state"], "disconnected");
        assert!(call["id"].is_string());
        assert_eq!(call["direction"], "inbound");
        assert!(call["disconnectType"].is_string());
        if p["purpose"] == "agent" {
            assert!(p["userId"].is_string() && p["queueId"].is_string());
        }
    }
    let customer = &participants[0];
    assert!(customer["connectedTime"].is_string());
    assert!(customer["queueId"].is_string());
    // The user topic carries the same conversation as the queue topic, with other ids.
    let conv = body["id"].as_str().unwrap().to_owned();
    let frames = frames_of(&sim, &chan, &conv);
    assert!(frames
        .iter()
        .any(|(t, _, _)| t.starts_with("v2.routing.queues.")));
    assert!(frames.iter().any(|(t, _, _)| t.starts_with("v2.users.")));
    let mut correlation_ids: Vec<_> = frames.iter().map(|(_, c, _)| c.clone()).collect();
    correlation_ids.sort();
    correlation_ids.dedup();
    assert_eq!(correlation_ids.len(), frames.len(), "unique per event");
}

#[actix_rt::test]
async fn observations_at_most_once_per_second_per_queue() {
    let (sim, _api, chan, mut socket) = run(9, |sim| {
        sim.queue_ids()
            .iter()
            .map(|q| format!("v2.analytics.queues.{q}.observations"))
            .collect()
    })
    .await;
    let (_, v) = socket
        .next_json_where(|v| v["topicName"].as_str().unwrap().ends_with(".observations"))
        .await;
    let body = &v["eventBody"];
    assert!(body["group"]["queueId"].is_string());
    assert_eq!(body["group"]["mediaType"], "voice");
    let metrics = body["data"][0]["metrics"].as_array().unwrap();
    assert!(body["data"][0]["interval"].as_str().unwrap().contains('/'));
    assert!(metrics
        .iter()
        .any(|m| m["metric"] == "oWaiting" && m["stats"]["count"].is_u64()));
    until("several observations per queue", || {
        sim.sent_events()
            .iter()
            .filter(|e| e.channel_id == chan)
            .count()
            >= 9
    })
    .await;
    let mut last: HashMap<String, i64> = HashMap::new();
    for e in sim.sent_events() {
        if let Some(prev) = last.insert(e.topic.clone(), e.sent_at_ms) {
            assert!(
                e.sent_at_ms - prev >= 900,
                "{}: two observations {} ms apart",
                e.topic,
                e.sent_at_ms - prev
            );
        }
    }
}

#[actix_rt::test]
async fn rate_zero_pauses_and_added_queues_get_traffic() {
    let (sim, _api, chan, mut socket) = run(11, queue_topics).await;
    socket
        .next_json_where(|v| v["topicName"] != "channel.metadata")
        .await;
    sim.set_rate(0.0);
    // In-flight conversations finish, then no event at all (talk time is at most 1.8 s).
    until("traffic stopped: no event for 2.5 s", || {
        let last = sim.sent_events().last().map_or(0, |e| e.sent_at_ms);
        chrono::Utc::now().timestamp_millis() - last > 2500
    })
    .await;
    let ids = conversation_ids(&sim, &Api::login(&sim.base_url()).await).await;
    assert_eq!(ids.len(), sim.conversations_started());
    let started = sim.conversations_started();

    let added = sim.add_queue("Added at runtime");
    let topic = format!("v2.routing.queues.{added}.conversations");
    let api = Api::login(&sim.base_url()).await;
    let (id2, uri2) = api.channel().await;
    api.subscribe_ok(&id2, std::slice::from_ref(&topic)).await;
    let mut s2 = Socket::connect(&uri2).await;
    sim.set_rate(40.0);
    let (_, v) = s2
        .next_json_where(|v| v["topicName"] == topic.as_str())
        .await;
    assert!(v["eventBody"]["participants"][0]["queueId"] == added.as_str());
    assert!(sim.conversations_started() > started);
    assert!(sim
        .ledger()
        .iter()
        .all(|e| e.kind != FrameKind::Event || e.channel_id == chan || e.topic == topic));
}

/// Snapshot frames of the published log, by conversation: (topic, body).
fn published_snapshots(sim: &SimHandle) -> HashMap<String, Vec<(String, Value)>> {
    let mut by_conv: HashMap<String, Vec<(String, Value)>> = HashMap::new();
    for e in sim.published() {
        if !(e.topic.starts_with("v2.routing.queues.") || e.topic.starts_with("v2.users.")) {
            continue;
        }
        if !e.topic.ends_with(".conversations") {
            continue;
        }
        let v: Value = serde_json::from_str(&e.frame).unwrap();
        let body = v["eventBody"].clone();
        let id = body["id"].as_str().unwrap().to_owned();
        by_conv.entry(id).or_default().push((e.topic.clone(), body));
    }
    by_conv
}

fn latest_end_ms(body: &Value) -> Option<i64> {
    body["participants"]
        .as_array()?
        .iter()
        .map(|p| {
            chrono::DateTime::parse_from_rfc3339(p["endTime"].as_str()?)
                .ok()
                .map(|t| t.timestamp_millis())
        })
        .collect::<Option<Vec<i64>>>()?
        .into_iter()
        .max()
}

#[actix_rt::test]
async fn ivr_only_abandons_stale_snapshots_engaged_topics_and_the_ground_truth() {
    let sim = start(SimConfig {
        queues: 3,
        agents: 12,
        engaged_topics_only: true,
        branching: genesys_sim::Branching {
            ivr_only: 0.25,
            abandon: 0.25,
            stale_snapshot: 0.2,
            transfer: 0.3,
            ..Default::default()
        },
        ..fast_config()
    });
    sim.set_rate(10.0);
    until("40 conversations", || sim.conversations_started() >= 40).await;
    sim.set_rate(0.0);
    until("every conversation ended", || {
        sim.conversations().iter().all(|c| c.end_ms.is_some())
    })
    .await;
    let truth = sim.conversations();
    let snapshots = published_snapshots(&sim);
    let ivr_only: Vec<_> = truth.iter().filter(|c| c.ivr_only).collect();
    assert!(!ivr_only.is_empty(), "some conversations end in the IVR");
    for c in &truth {
        let seen = snapshots.get(&c.id);
        if c.ivr_only {
            assert!(seen.is_none(), "{}: IVR-only, yet on {seen:?}", c.id);
            continue;
        }
        let seen = seen.unwrap_or_else(|| panic!("{}: never on a topic", c.id));
        // The model's start is the customer's connect, in every snapshot.
        let first = &seen[0].1;
        let start = first["participants"][0]["connectedTime"].as_str().unwrap();
        assert_eq!(
            chrono::DateTime::parse_from_rfc3339(start)
                .unwrap()
                .timestamp_millis(),
            c.start_ms
        );
        // The end is published (on the topic of whoever left last), with the model's end.
        let end = seen.iter().filter_map(|(_, b)| latest_end_ms(b)).max();
        assert_eq!(end, c.end_ms, "{}", c.id);
    }
    // Abandons in queue: an acd.end with acdOutcome ABANDONED and no agent ever alerted.
    let abandoned = sim
        .published()
        .into_iter()
        .filter(|e| e.topic.ends_with(".acd.end"))
        .filter(|e| e.frame.contains("\"ABANDONED\""))
        .count();
    assert!(abandoned > 0, "some customers abandon in queue");
    // Stale snapshots: a body published again after a newer one on the same topic.
    let stale = snapshots
        .values()
        .flat_map(|frames| {
            frames.iter().enumerate().filter(move |(i, (topic, body))| {
                frames[..*i].iter().any(|(t, b)| t == topic && b == body)
            })
        })
        .count();
    assert!(stale > 0, "some snapshots arrive out of order");
    // Engaged topics only: a queue topic carries a snapshot only while an ACD or agent
    // participant of that queue is on the call, or has just left with this change; once the
    // conversation is over, the wrap-up snapshots go to the agents' user topics alone, so each
    // queue topic sees at most one distinct snapshot with every participant ended.
    let mut over_on_queue_topics = 0;
    for frames in snapshots.values() {
        let mut finished: HashMap<&str, Vec<&Value>> = HashMap::new();
        for (topic, body) in frames {
            let Some(queue) = topic
                .strip_prefix("v2.routing.queues.")
                .and_then(|t| t.strip_suffix(".conversations"))
            else {
                continue;
            };
            let latest = latest_end_ms(body);
            let parts = body["participants"].as_array().unwrap();
            let engaged = parts
                .iter()
                .filter(|p| p["purpose"] == "acd" || p["purpose"] == "agent")
                .filter(|p| p["queueId"] == queue)
                .any(|p| match p["endTime"].as_str() {
                    None => true,
                    Some(end) => {
                        let end = chrono::DateTime::parse_from_rfc3339(end)
                            .unwrap()
                            .timestamp_millis();
                        parts
                            .iter()
                            .filter_map(|q| q["endTime"].as_str())
                            .map(|e| {
                                chrono::DateTime::parse_from_rfc3339(e)
                                    .unwrap()
                                    .timestamp_millis()
                            })
                            .max()
                            == Some(end)
                    }
                });
            assert!(engaged, "{topic}: {body}");
            if latest.is_some() {
                let bodies = finished.entry(topic.as_str()).or_default();
                if !bodies.contains(&body) {
                    bodies.push(body);
                }
            }
        }
        for (topic, bodies) in finished {
            assert_eq!(bodies.len(), 1, "{topic}: {bodies:?}");
            over_on_queue_topics += 1;
        }
    }
    assert!(over_on_queue_topics > 0);

    // Ground truth over HTTP, and the details-by-id lookup.
    let (status, listed) = get_json(&format!("{}/sim/conversations", sim.base_url())).await;
    assert_eq!(status, 200);
    assert_eq!(listed.as_array().unwrap().len(), truth.len());
    assert_eq!(listed[0]["startMs"], truth[0].start_ms);
    let api = Api::login(&sim.base_url()).await;
    let ids = format!("{},{},unknown-id", truth[0].id, truth[1].id);
    let resp = api
        .get(&format!("/api/v2/analytics/conversations/details?id={ids}"))
        .await;
    assert_eq!(resp.status, 200);
    let found: Vec<&str> = resp.body["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["conversationId"].as_str().unwrap())
        .collect();
    assert_eq!(found, [truth[0].id.as_str(), truth[1].id.as_str()]);
    assert!(resp.body["conversations"][0]["conversationEnd"].is_string());
    let resp = api.get("/api/v2/analytics/conversations/details").await;
    assert_eq!(resp.status, 400, "ids are required");
}
