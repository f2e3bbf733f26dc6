//! Channel lifecycle: maintenance closes, channel expiry, token expiry and token revocation,
//! many times in one run, cost zero events and deliver none twice.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use genesys_sim::{FrameKind, SimConfig, Simulator, Target};
use support::*;

/// Keys added to the `[genesys]` table of the test config.
const GENESYS: &str = "token_refresh_margin = \"3s\"\ntoken_min_refresh_interval = \"500ms\"";

const EXTRA: &str = r#"
[topics]
templates = [
  { template = "v2.routing.queues.{id}.conversations" },
  { template = "v2.users.{id}.conversations" },
]
[socket]
ping_interval = "300ms"
dead_after = "2s"
rollover_margin = "2500ms"
rollover_timeout = "5s"
backoff = { min = "100ms", max = "1s", jitter = 0.2 }
# These tests close, expire and revoke channels many times a minute on purpose.
max_connects_per_minute = 600
min_rollover_interval = "500ms"
"#;

fn rollovers(bridge: &Bridge, trigger: &str) -> f64 {
    bridge.metric(&format!(
        "genesys_bridge_rollovers_total{{reason=\"{trigger}\"}}"
    ))
}

#[test]
fn planned_closes_and_expiries_lose_nothing_and_duplicate_nothing() {
    let kafka = Tansu::start();
    kafka.create_topics(&TEST_TOPICS, 3);
    let sim = Simulator::start(SimConfig {
        rate_per_sec: 6.0,
        heartbeat_interval: Duration::from_secs(1),
        token_lifetime: Duration::from_secs(9),
        channel_lifetime: Duration::from_secs(7),
        socket_closing_grace: Duration::from_millis(1500),
        ..SimConfig::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // One leg: each closing, expiry and revocation hits the shard's only socket, and its
    // rollover must cost nothing (two legs through the same: tests/legs.rs).
    let config = test_config(
        &sim.base_url(),
        &kafka.brokers(),
        &EXTRA.replace("[socket]", "[socket]\nredundancy = 1"),
    )
    .replace(
        "request_timeout = \"5s\"",
        &format!("request_timeout = \"5s\"\n{GENESYS}"),
    );
    let bridge = Bridge::start(dir.path(), &config, &[]);
    bridge.wait_ready(Duration::from_secs(30));

    // Watch the simulator: the bridge never holds more sockets than shards + one rollover.
    let most_sockets = AtomicUsize::new(0);
    let done = AtomicBool::new(false);
    let mut closings = 0;
    let mut revocations = 0usize;
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                let connected = sim.channels().iter().filter(|c| c.connected).count();
                most_sockets.fetch_max(connected, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        // Stops the watcher even when an assertion below fails.
        let _stop_watcher = StopOnDrop(&done);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(15) {
            let closing = sim.faults().socket_closing(Target::All, None);
            assert!(!closing.is_empty());
            closings += 1;
            // The announced channels are left (the server closes them after the grace) and
            // another one streams.
            wait_until(
                "moved off the closing channel",
                Duration::from_secs(15),
                || {
                    let channels = sim.channels();
                    channels
                        .iter()
                        .any(|c| c.connected && !closing.contains(&c.id))
                        && channels
                            .iter()
                            .all(|c| !(c.connected && closing.contains(&c.id)))
                },
            );
            if closings % 2 == 0 {
                let gaps_before = bridge.metric("genesys_bridge_gaps_total");
                assert!(sim.faults().revoke_client_tokens("sim-client") >= 1);
                revocations += 1;
                wait_until(
                    "recovered from a revoked token",
                    Duration::from_secs(20),
                    || bridge.metric("genesys_bridge_gaps_total") > gaps_before,
                );
            }
            bridge.wait_ready(Duration::from_secs(20));
        }
        // Then leave the channels alone: they expire (7 s) and their tokens (9 s) run out.
        wait_until(
            "rollovers before channel and token expiry",
            Duration::from_secs(40),
            || {
                rollovers(&bridge, "channel_expiry") >= 2.0
                    && rollovers(&bridge, "token_refresh") >= 2.0
            },
        );
        eprintln!("{closings} socket_closing, {revocations} revocations");
    });
    assert!(rollovers(&bridge, "socket_closing") >= 5.0);
    let gaps = gap_records(&kafka);
    eprintln!("gaps: {gaps:?}");
    assert_eq!(
        bridge.metric("genesys_bridge_gaps_total") as usize,
        revocations,
        "only revocations (the channel dies with no warning) leave gaps"
    );
    assert!(
        rollovers(&bridge, "channel_expiry") >= 1.0,
        "channels of 7 s rolled over"
    );
    assert!(
        rollovers(&bridge, "token_refresh") >= 1.0,
        "tokens of 9 s rolled over"
    );
    assert!(
        most_sockets.load(Ordering::Relaxed) <= 2,
        "at most one shard plus one rollover connected, saw {}",
        most_sockets.load(Ordering::Relaxed)
    );

    // Traffic stops (no new conversations, the running ones end) before the ledger is judged:
    // silencing the sockets instead raced the bridge replacing them, whose new sockets took
    // events after the wait below had passed (seen once in CI: 29 "missing" from the last
    // half second).
    stop_traffic(&sim);
    let topics = ["user-conversations", "queue-conversations"];
    let unique_sent = || {
        sim.ledger()
            .into_iter()
            .filter(|e| e.kind == FrameKind::Event)
            .map(|e| e.frame.to_string())
            .collect::<std::collections::HashSet<_>>()
            .len()
    };
    // Read the ledger again once Kafka caught up: a frame handed over as the silence began
    // enters the ledger just after it.
    // Not a panic on timeout: the checks below say which events are missing.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while consume_all(&kafka.brokers(), &topics).len() < unique_sent()
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(500));
    }
    let sent: Vec<_> = sim
        .ledger()
        .into_iter()
        .filter(|e| e.kind == FrameKind::Event)
        .collect();
    let mut unique: HashMap<&str, usize> = HashMap::new();
    for entry in &sent {
        *unique.entry(&entry.frame).or_default() += 1;
    }
    let overlapping = sent.len() - unique.len();
    eprintln!(
        "{} events sent, {} of them on two channels at once",
        sent.len(),
        overlapping
    );
    let landed = consume_all(&kafka.brokers(), &topics);
    let mut in_kafka: HashMap<&str, usize> = HashMap::new();
    for record in &landed {
        *in_kafka.entry(record.value.as_str()).or_default() += 1;
    }
    let missing = unique.keys().filter(|f| !in_kafka.contains_key(*f)).count();
    for entry in sent.iter().filter(|e| !in_kafka.contains_key(&*e.frame)) {
        eprintln!(
            "missing: seq {} on channel {} at {} ({})",
            entry.seq, entry.channel_id, entry.sent_at, entry.topic
        );
    }
    let duplicated = in_kafka.values().filter(|n| **n > 1).count();
    assert_eq!(missing, 0, "events lost");
    assert_eq!(duplicated, 0, "events duplicated");
    assert_eq!(landed.len(), unique.len());
    assert!(bridge.metric("genesys_bridge_duplicates_suppressed_total") >= overlapping as f64);
}

#[test]
fn unplanned_losses_leave_gap_records_that_cover_exactly_what_was_missed() {
    let kafka = Tansu::start();
    kafka.create_topics(&TEST_TOPICS, 3);
    let sim = Simulator::start(SimConfig {
        rate_per_sec: 8.0,
        heartbeat_interval: Duration::from_secs(1),
        ..SimConfig::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(&sim.base_url(), &kafka.brokers(), EXTRA)
        .replace("dead_after = \"2s\"", "dead_after = \"1500ms\"");
    let bridge = Bridge::start(dir.path(), &config, &[]);
    bridge.wait_ready(Duration::from_secs(30));
    // Both legs' sockets dropped without a close frame: the bridge reconnects to its channels.
    let dropped = sim.faults().drop_socket(Target::All);
    assert_eq!(dropped.len(), 2);
    wait_until("a gap record for the drop", Duration::from_secs(20), || {
        !gap_records(&kafka).is_empty()
    });
    bridge.wait_ready(Duration::from_secs(20));
    // A socket that goes silent: replaced after dead_after by a new channel.
    sim.faults().silence(Target::All, None);
    wait_until(
        "a gap record for the silence",
        Duration::from_secs(20),
        || gap_records(&kafka).iter().any(|g| g.3 == "dead_socket"),
    );
    bridge.wait_ready(Duration::from_secs(20));
    // Let events flow on the new channel, then quiesce.
    let sent_so_far = sim.ledger_count(|e| e.kind == FrameKind::Event);
    wait_until("events on the new channel", Duration::from_secs(20), || {
        sim.ledger_count(|e| e.kind == FrameKind::Event) > sent_so_far + 20
    });
    sim.set_rate(0.0);
    let quiesced_at = chrono::Utc::now().timestamp_millis();
    for channel in sim.channels().into_iter().filter(|c| c.connected) {
        sim.faults().silence(Target::Channel(channel.id), None);
    }

    let gaps = gap_records(&kafka);
    assert_eq!(gaps.len(), 2, "one gap per unplanned loss: {gaps:?}");
    let delivered: std::collections::HashSet<String> = sim
        .ledger()
        .into_iter()
        .filter(|e| e.kind == FrameKind::Event)
        .map(|e| e.frame.to_string())
        .collect();
    // Truly lost: published for a subscription of ours, handed to no socket of ours (before the
    // test itself silenced everything).
    // Events published in the last half second before the test silenced every socket may
    // still have been queued for the live sockets when the silence began: those are the
    // test's own doing, not a loss of the bridge.
    let lost: Vec<_> = sim
        .missed()
        .into_iter()
        .filter(|m| m.at_ms < quiesced_at - 500 && !delivered.contains(&*m.frame))
        .collect();
    assert!(!lost.is_empty(), "the faults made Genesys miss events");
    // The publish time of a frame queued just before the loss can precede the receive time of
    // the last frame read by a few milliseconds.
    let slack_ms = 250;
    for missed in &lost {
        assert!(
            gaps.iter()
                .any(|(_, start, end, _)| missed.at_ms >= start - slack_ms && missed.at_ms <= *end),
            "missed event at {} ({:?}) outside every gap {gaps:?}",
            missed.at,
            missed.reason
        );
    }
    // Nothing outside the gaps is missing from Kafka.
    let topics = ["user-conversations", "queue-conversations"];
    wait_until(
        "every delivered event is in Kafka",
        Duration::from_secs(60),
        || {
            let landed = consume_all(&kafka.brokers(), &topics);
            let values: std::collections::HashSet<&str> =
                landed.iter().map(|r| r.value.as_str()).collect();
            delivered.iter().all(|f| values.contains(f.as_str()))
        },
    );
    eprintln!(
        "{} events lost inside {} gaps, none outside",
        lost.len(),
        gaps.len()
    );
}

#[test]
fn rate_limited_rest_calls_wait_as_told_then_recover() {
    let Scenario {
        bridge,
        sim,
        kafka: _kafka,
        dir: _dir,
    } = Scenario::start(
        SimConfig {
            rate_per_sec: 2.0,
            heartbeat_interval: Duration::from_secs(1),
            ..SimConfig::default()
        },
        1,
        // One leg: the spacing of one shard's channel requests is the point.
        &EXTRA.replace("[socket]", "[socket]\nredundancy = 1"),
    );
    let storm = Duration::from_secs(20);
    let retry_after = 2;
    sim.faults().rest(genesys_sim::RestFault {
        kind: genesys_sim::RestFaultKind::TooManyRequests,
        count: None,
        duration_ms: Some(storm.as_millis() as u64),
        scope: genesys_sim::RestScope::Api,
        retry_after_s: retry_after,
        delay_ms: 0,
    });
    let storm_started = Instant::now();
    // The channel dies: a new one needs REST calls, which are refused for the storm's length.
    sim.faults().expire_channel(Target::All);
    wait_until(
        "the bridge is back after the storm",
        Duration::from_secs(60),
        || storm_started.elapsed() > storm && matches!(bridge.get("/readyz"), Some((200, _))),
    );
    let stats = sim.rest_requests();
    let refused: Vec<_> = stats.requests.iter().filter(|r| r.status == 429).collect();
    assert!(!refused.is_empty());
    for pair in refused.windows(2) {
        let waited = pair[1].at_ms - pair[0].at_ms;
        assert!(
            waited >= retry_after as i64 * 1000 - 100,
            "Retry-After {retry_after} s not honoured: {waited} ms between {} and {}",
            pair[0].path,
            pair[1].path
        );
    }
    let bound = storm.as_secs() / retry_after + 2;
    assert!(
        refused.len() as u64 <= bound,
        "{} refused requests during a {storm:?} storm (bound {bound})",
        refused.len()
    );
    eprintln!("{} requests refused with 429, bound {bound}", refused.len());
}

#[test]
fn hundreds_of_rollovers_never_hold_more_sockets_than_shards_plus_rollovers() {
    let kafka = Tansu::start();
    kafka.create_topics(&TEST_TOPICS, 1);
    let sim = Simulator::start(SimConfig {
        rate_per_sec: 2.0,
        heartbeat_interval: Duration::from_secs(1),
        socket_closing_grace: Duration::from_millis(300),
        ..SimConfig::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(&sim.base_url(), &kafka.brokers(), EXTRA)
        .replace("[topics]\n", "[topics]\nper_channel = 5\n");
    let bridge = Bridge::start(dir.path(), &config, &[]);
    bridge.wait_ready(Duration::from_secs(30));
    let shards = bridge.status()["shards"].as_array().unwrap().len();
    assert_eq!(shards, 5, "25 topics over channels of 5");
    let most = AtomicUsize::new(0);
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                let connected = sim.channels().iter().filter(|c| c.connected).count();
                most.fetch_max(connected, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        let _stop = StopOnDrop(&done);
        for _ in 0..40 {
            let before = rollovers(&bridge, "socket_closing") + rollovers(&bridge, "early_close");
            let closing = sim.faults().socket_closing(Target::All, None);
            assert_eq!(closing.len(), 2 * shards, "two legs per shard");
            // A leg whose old socket the server closed before the new one's first frame
            // counts as `early_close`.
            let moved = || rollovers(&bridge, "socket_closing") + rollovers(&bridge, "early_close");
            wait_until("every leg rolled over", Duration::from_secs(20), || {
                moved() >= before + 2.0 * shards as f64
            });
        }
    });
    let total = rollovers(&bridge, "socket_closing");
    assert!(total >= 200.0, "{total} rollovers");
    let most = most.load(Ordering::Relaxed);
    // Both legs announced closing at once: each may roll over make-before-break, within the
    // channel budget of 20.
    assert!(
        most <= 4 * shards && most <= 20,
        "{most} sockets connected at once for {shards} shards"
    );
    assert_eq!(sim.evictions_of_live_channels("sim-client"), 0);
    let evicted_while_ours = sim
        .channels()
        .into_iter()
        .filter(|c| matches!(c.death, Some(genesys_sim::ChannelDeath::Evicted)))
        .count();
    eprintln!(
        "{total} rollovers, at most {most} sockets, {evicted_while_ours} idle channels evicted"
    );
    bridge.wait_ready(Duration::from_secs(20));
}

/// Sets the flag when dropped, even when an assertion fails.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[test]
fn no_longer_subscribed_moves_the_shard_to_a_new_subscribed_channel() {
    let Scenario {
        bridge,
        sim,
        kafka: _kafka,
        dir: _dir,
    } = Scenario::start(
        SimConfig {
            rate_per_sec: 4.0,
            heartbeat_interval: Duration::from_secs(1),
            ..SimConfig::default()
        },
        1,
        EXTRA,
    );
    let old = sim.faults().no_longer_subscribed(Target::All);
    assert_eq!(old.len(), 2, "both legs");
    wait_until(
        "streaming on a new, subscribed channel",
        Duration::from_secs(20),
        || {
            sim.channels()
                .iter()
                .any(|c| c.connected && !old.contains(&c.id) && !c.topics.is_empty())
        },
    );
    let produced = bridge.metric("genesys_bridge_events_produced_total");
    wait_until("events flow again", Duration::from_secs(20), || {
        bridge.metric("genesys_bridge_events_produced_total") > produced + 5.0
    });
    assert!(
        sim.channels()
            .iter()
            .all(|c| !(c.connected && old.contains(&c.id))),
        "the unsubscribed channel is not used again"
    );
}
