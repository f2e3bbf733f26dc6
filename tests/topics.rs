//! Topic sets: expanded from the org, split into channels of at most 1,000 topics, refused when
//! they would need more channels than allowed.

mod support;

use std::time::Duration;

use genesys_sim::{SimConfig, Simulator};
use support::*;

#[test]
fn twenty_five_hundred_queue_topics_stream_over_three_channels() {
    let kafka = Tansu::start();
    kafka.create_topics(&TEST_TOPICS, 1);
    let sim = Simulator::start(SimConfig {
        queues: 2500,
        agents: 10,
        rate_per_sec: 2.0,
        ..SimConfig::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let extra = r#"
[topics]
templates = [{ template = "v2.routing.queues.{id}.conversations" }]
"#;
    let bridge = Bridge::start(
        dir.path(),
        &test_config(&sim.base_url(), &kafka.brokers(), extra),
        &[],
    );
    bridge.wait_ready(Duration::from_secs(60));
    wait_legs_streaming(&bridge, 3, 2, Duration::from_secs(60));
    let live: Vec<_> = sim
        .channels()
        .into_iter()
        .filter(|c| c.alive && c.connected)
        .collect();
    let mut sizes: Vec<usize> = live.iter().map(|c| c.topics.len()).collect();
    sizes.sort_unstable();
    // Three shards, two legs each.
    assert_eq!(sizes, vec![500, 500, 1000, 1000, 1000, 1000]);
    let status = bridge.status();
    assert_eq!(status["shards"].as_array().unwrap().len(), 3);
    assert_eq!(bridge.metric("genesys_bridge_topics_subscribed"), 2500.0);
}

#[test]
fn a_topic_set_needing_21_channels_fails_at_startup() {
    let sim = Simulator::start(SimConfig {
        queues: 2001,
        agents: 5,
        rate_per_sec: 0.0,
        ..SimConfig::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let extra = r#"
[topics]
per_channel = 100
templates = [{ template = "v2.routing.queues.{id}.conversations" }]
"#;
    let mut bridge = Bridge::start(
        dir.path(),
        &test_config(&sim.base_url(), "127.0.0.1:9", extra),
        &[],
    );
    let code = bridge.wait_exit(Duration::from_secs(60));
    assert_eq!(code, Some(78), "EX_CONFIG for an unstreamable topic set");
    let logs = bridge.logs().join("\n");
    assert!(logs.contains("21 shards"), "{logs}");
    assert!(logs.contains("at most 19 shards fit"), "{logs}");
    assert!(
        sim.channels().is_empty(),
        "no channel was created for a topic set that cannot be streamed"
    );
}

/// Three queues, a queue-topic template re-expanded every 300 ms, the bridge ready.
fn re_expanding() -> Scenario {
    Scenario::start(
        SimConfig {
            queues: 3,
            agents: 5,
            rate_per_sec: 0.0,
            ..SimConfig::default()
        },
        1,
        r#"
[topics]
refresh_interval = "300ms"
templates = [{ template = "v2.routing.queues.{id}.conversations" }]
"#,
    )
}

/// Adds a queue to the directory and waits until a live channel is subscribed to it.
fn add_queue_and_wait_for_its_subscription(sim: &genesys_sim::SimHandle) {
    let added = sim.add_queue("Brand new queue");
    let topic = format!("v2.routing.queues.{added}.conversations");
    wait_until(
        "a live channel subscribed to the new queue",
        Duration::from_secs(30),
        || {
            sim.channels()
                .iter()
                .any(|c| c.alive && c.connected && c.topics.contains(&topic))
        },
    );
}

#[test]
fn new_queues_are_picked_up_by_re_expansion() {
    let scenario = re_expanding();
    let (bridge, sim) = (&scenario.bridge, &scenario.sim);
    add_queue_and_wait_for_its_subscription(sim);
    bridge.wait_ready(Duration::from_secs(30));
    let live = sim
        .channels()
        .into_iter()
        .filter(|c| c.alive && c.connected)
        .count();
    assert_eq!(live, 2, "the rollover closed the old sockets: one per leg");
}

/// #13 defect 9: a topic update refused by the shard's full mailbox was never sent again, so
/// the shard kept its old topics. Here the supervisor refuses the next three updates to shard
/// 0 as a full mailbox would (the test hook sits where that error is handled); the update
/// still arrives on a later watch tick.
#[test]
fn a_topic_update_refused_by_a_full_mailbox_is_sent_again() {
    let scenario = re_expanding();
    let (bridge, sim) = (&scenario.bridge, &scenario.sim);
    assert_eq!(
        bridge.post("/debug/refuse-topic-updates/socket-0?count=3"),
        Some(202)
    );
    let rejected_before =
        bridge.metric("genesys_bridge_mailbox_rejections_total{actor=\"socket\"}");
    add_queue_and_wait_for_its_subscription(sim);
    let rejected = bridge.metric("genesys_bridge_mailbox_rejections_total{actor=\"socket\"}")
        - rejected_before;
    assert_eq!(
        rejected, 3.0,
        "three refusals, then the update went through"
    );
    assert!(bridge
        .logs()
        .iter()
        .any(|l| l.contains("topic update refused as by a full mailbox")));
    bridge.wait_ready(Duration::from_secs(30));
}

#[test]
fn rejected_topics_are_reported_and_the_rest_keep_streaming() {
    let kafka = Tansu::start();
    kafka.create_topics(&TEST_TOPICS, 1);
    let permissions = genesys_sim::ALL_PERMISSIONS
        .iter()
        .filter(|p| **p != genesys_sim::PERM_QUEUE_OBSERVATION)
        .map(|p| p.to_string())
        .collect();
    let sim = Simulator::start(SimConfig {
        rate_per_sec: 4.0,
        clients: vec![genesys_sim::SimClient {
            client_id: "sim-client".into(),
            client_secret: "sim-secret".into(),
            permissions,
        }],
        ..SimConfig::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let extra = r#"
[topics]
templates = [
  { template = "v2.routing.queues.{id}.conversations" },
  { template = "v2.analytics.queues.{id}.observations" },
]
"#;
    let bridge = Bridge::start(
        dir.path(),
        &test_config(&sim.base_url(), &kafka.brokers(), extra),
        &[],
    );
    bridge.wait_ready(Duration::from_secs(30));
    let status = bridge.status();
    let rejected = status["shards"][0]["rejected_topics"].as_array().unwrap();
    assert_eq!(rejected.len(), 5, "{rejected:?}");
    for topic in rejected {
        assert!(topic["id"].as_str().unwrap().ends_with(".observations"));
        assert_eq!(
            topic["missingPermissions"][0],
            genesys_sim::PERM_QUEUE_OBSERVATION,
            "{topic}"
        );
    }
    wait_until(
        "the rejected topics are counted",
        Duration::from_secs(10),
        || bridge.metric("genesys_bridge_topics_rejected") == 5.0,
    );
    assert!(bridge
        .logs()
        .iter()
        .any(|l| l.contains("Genesys rejected a topic")
            && l.contains(genesys_sim::PERM_QUEUE_OBSERVATION)));
    wait_until(
        "conversations keep streaming",
        Duration::from_secs(30),
        || bridge.metric("genesys_bridge_events_produced_total") > 10.0,
    );
}

/// A topic set that shrinks to fewer shards (a queue deleted, found by the periodic refresh)
/// stops the trailing shard it empties: its actor ends, its sockets close and its channel slots
/// are given back; the other shard keeps its topics and sockets.
#[test]
fn a_shrinking_topic_set_stops_the_trailing_shard_and_frees_its_channels() {
    // Six queue topics of five per channel: two shards (five and one), two legs each.
    let extra = r#"
[topics]
templates = [{ template = "v2.routing.queues.{id}.conversations" }]
per_channel = 5
refresh_interval = "300ms"
"#;
    let sim = SimConfig {
        queues: 6,
        agents: 4,
        rate_per_sec: 2.0,
        ..SimConfig::default()
    };
    // Bound whole: `..` would drop the broker and the directory at once.
    let scenario = Scenario::start(sim, 1, extra);
    let (bridge, sim) = (&scenario.bridge, &scenario.sim);
    wait_legs_streaming(bridge, 2, 2, Duration::from_secs(60));
    assert_eq!(bridge.metric("genesys_bridge_channels_held"), 4.0);
    // Topics are placed in order: the last queue topic is the trailing shard's only one.
    let gone = sim.queue_ids().into_iter().max().unwrap();
    assert!(sim.delist_queue(&gone));
    let gone_topic = format!("v2.routing.queues.{gone}.conversations");
    wait_legs_streaming(bridge, 1, 2, Duration::from_secs(60));
    wait_until(
        "two sockets left, on the five remaining topics",
        Duration::from_secs(30),
        || {
            let connected: Vec<_> = sim.channels().into_iter().filter(|c| c.connected).collect();
            connected.len() == 2
                && connected
                    .iter()
                    .all(|c| c.topics.len() == 5 && !c.topics.contains(&gone_topic))
        },
    );
    wait_until(
        "the trailing shard's slots given back",
        Duration::from_secs(30),
        || bridge.metric("genesys_bridge_channels_held") == 2.0,
    );
    assert_eq!(bridge.metric("genesys_bridge_topics_subscribed"), 5.0);
    assert_eq!(bridge.status()["shards"].as_array().unwrap().len(), 1);
    // The stopped shard's series are gone, or its last values (legs down, not streaming) would
    // stay and fire GenesysBridgeLegDown / GenesysBridgeShardNotStreaming until a restart.
    wait_until(
        "no series of the stopped shard in /metrics",
        Duration::from_secs(10),
        || {
            let (_, metrics) = bridge.get("/metrics").unwrap();
            !metrics.contains("shard=\"1\"")
        },
    );
    assert_eq!(
        bridge.metric("genesys_bridge_shard_streaming{shard=\"0\"}"),
        1.0
    );
}
