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
    let config = test_config(&sim.base_url(), &kafka.brokers(), EXTRA).replace(
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
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
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

    sim.faults().silence(Target::All, None);
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
    let topics = ["user-conversations", "queue-conversations"];
    wait_until(
        "every sent event is in Kafka",
        Duration::from_secs(60),
        || consume_all(&kafka.brokers(), &topics).len() >= unique.len(),
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
