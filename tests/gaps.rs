//! Gap records that are never wrong: every interval without a live socket reported once, across
//! actor restarts, process restarts and crashes, and no connect or rollover storm.

mod support;

use std::time::Duration;

use genesys_sim::{ChannelEvent, SimConfig, Target};
use support::*;

const EXTRA: &str = LEG_TEST_EXTRA;

fn sim_config() -> SimConfig {
    leg_test_sim()
}

/// `config` with a spool of 128 KiB that fills in seconds when Kafka stalls, and `policy`.
fn small_spool(config: &str, policy: &str) -> String {
    config.replace(
        "max_bytes = 67108864",
        &format!("max_bytes = 131072\nwhen_full = \"{policy}\""),
    )
}

/// Every missing event lies inside a gap record (±`slack_ms`).
fn assert_missing_inside_gaps(
    reconciled: &Reconciled,
    gaps: &[(u64, i64, i64, String)],
    slack_ms: i64,
) {
    for entry in &reconciled.missing {
        assert!(
            gaps.iter().any(|(_, start, end, _)| {
                entry.published_at_ms >= start - slack_ms && entry.published_at_ms <= end + slack_ms
            }),
            "event published at {} ({}) is missing and in no gap record: {gaps:?}",
            entry.published_at,
            entry.topic
        );
    }
}

#[test]
fn a_socket_actor_panic_leaves_a_gap_record_that_covers_what_it_missed() {
    let s = Scenario::start(sim_config(), 3, EXTRA);
    wait_legs_streaming(&s.bridge, 1, 2, Duration::from_secs(20));
    let topics = conversation_topics(&s.sim);
    let from = next_published_seq(&s.sim);
    wait_for_traffic(&s.sim, &topics, 20);
    assert_eq!(s.bridge.post("/debug/panic/socket-0"), Some(202));
    wait_until(
        "the actor restart's gap record",
        Duration::from_secs(30),
        || {
            gap_records(&s.kafka)
                .iter()
                .any(|(_, _, _, reason)| reason == "actor_restart")
        },
    );
    wait_legs_streaming(&s.bridge, 1, 2, Duration::from_secs(20));
    wait_for_traffic(&s.sim, &topics, 20);
    finish_traffic(&s.sim, &s.kafka, from, &topics, Duration::from_secs(60));
    let reconciled = reconcile(&s.sim, &s.kafka, from, &topics);
    let gaps = gap_records(&s.kafka);
    eprintln!(
        "{} published, {} missing; gaps {gaps:?}",
        reconciled.expected,
        reconciled.missing.len()
    );
    assert_eq!(gaps.len(), 1, "one restart, one gap");
    assert_missing_inside_gaps(&reconciled, &gaps, 500);
    assert_eq!(reconciled.duplicated, 0);
}

#[test]
fn a_server_that_accepts_and_closes_gets_a_bounded_number_of_connects() {
    let extra = format!("{EXTRA}max_connects_per_minute = 6\n");
    let s = Scenario::start(sim_config(), 1, &extra);
    wait_legs_streaming(&s.bridge, 1, 2, Duration::from_secs(20));
    let log_from = s.sim.channel_log().last().map(|e| e.seq + 1).unwrap_or(0);
    s.sim
        .faults()
        .accept_then_close(Target::All, Some(Duration::from_secs(30)));
    assert_eq!(s.sim.faults().drop_socket(Target::All).len(), 2);
    wait_until("connects are throttled", Duration::from_secs(60), || {
        s.bridge.metric("genesys_bridge_connects_throttled_total") >= 1.0
    });
    wait_legs_streaming(&s.bridge, 1, 2, Duration::from_secs(90));
    let attaches: Vec<i64> = s
        .sim
        .channel_log_since(log_from)
        .iter()
        .filter(|e| matches!(e.event, ChannelEvent::SocketAttached { .. }))
        .map(|e| e.at_ms)
        .collect();
    // In any minute, at most 6 connects per leg (the two reconnects that ended the storm
    // included).
    let most_in_a_minute = attaches
        .iter()
        .map(|t| {
            attaches
                .iter()
                .filter(|u| **u >= *t && **u < t + 60_000)
                .count()
        })
        .max()
        .unwrap_or(0);
    eprintln!(
        "{} upgrades during and after the storm, at most {most_in_a_minute} in a minute",
        attaches.len()
    );
    assert!(
        most_in_a_minute <= 12,
        "{most_in_a_minute} connects in a minute"
    );
    wait_until("the outage's gap record", Duration::from_secs(20), || {
        !gap_records(&s.kafka).is_empty()
    });
    std::thread::sleep(Duration::from_secs(2));
    let gaps = gap_records(&s.kafka);
    assert_eq!(gaps.len(), 1, "one outage, one gap record: {gaps:?}");
}

#[test]
fn short_lived_channels_get_about_one_channel_per_rollover() {
    let sim = SimConfig {
        channel_lifetime: Duration::from_secs(20),
        ..sim_config()
    };
    // The default rollover_margin (10 minutes) is longer than the channels live, and the
    // default floor between rollovers applies.
    let extra = EXTRA
        .replace("rollover_margin = \"2500ms\"\n", "")
        .replace("min_rollover_interval = \"500ms\"\n", "");
    assert!(!extra.contains("rollover_margin") && !extra.contains("min_rollover"));
    let s = Scenario::start(sim, 1, &extra);
    wait_legs_streaming(&s.bridge, 1, 2, Duration::from_secs(20));
    let log_from = s.sim.channel_log().last().map(|e| e.seq + 1).unwrap_or(0);
    wait_until("rollovers before expiry", Duration::from_secs(60), || {
        s.bridge
            .metric("genesys_bridge_rollovers_total{reason=\"channel_expiry\"}")
            >= 4.0
    });
    std::thread::sleep(Duration::from_secs(10));
    let created = s
        .sim
        .channel_log_since(log_from)
        .iter()
        .filter(|e| matches!(e.event, ChannelEvent::Created { .. }))
        .count();
    let rollovers = s
        .bridge
        .metric("genesys_bridge_rollovers_total{reason=\"channel_expiry\"}");
    eprintln!("{created} channels created for {rollovers} expiry rollovers");
    assert!(
        created as f64 <= rollovers + 2.0,
        "{created} channels for {rollovers} rollovers"
    );
    assert!(gap_records(&s.kafka).is_empty());
}

/// Genesys topic → shard, as the `shard` header of the records in Kafka says.
fn shard_of_topics(kafka: &Tansu) -> std::collections::HashMap<String, u64> {
    consume_all(&kafka.brokers(), &CONVERSATION_KAFKA_TOPICS)
        .iter()
        .filter_map(|r| {
            Some((
                r.header("genesys-topic")?.to_string(),
                r.header("shard")?.parse().ok()?,
            ))
        })
        .collect()
}

/// Every missing event lies inside a gap record of its own shard (±`slack_ms`).
fn assert_missing_inside_own_gaps(
    reconciled: &Reconciled,
    gaps: &[(u64, i64, i64, String)],
    shards: &std::collections::HashMap<String, u64>,
    slack_ms: i64,
) {
    for entry in &reconciled.missing {
        let shard = shards.get(&entry.topic).copied();
        assert!(
            gaps.iter().any(|(gap_shard, start, end, _)| {
                shard.is_none_or(|s| s == *gap_shard)
                    && entry.published_at_ms >= start - slack_ms
                    && entry.published_at_ms <= end + slack_ms
            }),
            "event published at {} on {} (shard {shard:?}) is missing and in no gap record of its shard: {gaps:?}",
            entry.published_at,
            entry.topic
        );
    }
}

/// 25 topics of 13 per channel: shard 0 (the 5 queues and 8 users), shard 1 (12 users).
const TWO_SHARDS: &str = "per_channel = 13\n[socket]";

/// Kafka stalls until both shards of [`TWO_SHARDS`] drop events (`drop-newest`, on disk); the
/// bridge is SIGKILLed while dropping, Kafka comes back, the bridge starts again and reports a
/// drop record for each shard.
fn crash_while_both_shards_drop(bridge: &mut Bridge, kafka: &Tansu, dir: &std::path::Path) {
    signal(kafka.pid(), "STOP");
    let state_file = dir.join("spool/shard-state.json");
    wait_until(
        "both shards dropping, on disk",
        Duration::from_secs(120),
        || {
            std::fs::read_to_string(&state_file).is_ok_and(|text| {
                let state: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                ["0", "1"]
                    .iter()
                    .all(|shard| state[shard]["drop_span"]["count"].as_u64() >= Some(3))
            })
        },
    );
    bridge.kill();
    signal(kafka.pid(), "CONT");
    bridge.restart(&[]);
    bridge.wait_ready(Duration::from_secs(60));
    wait_until(
        "a drop record for each shard",
        Duration::from_secs(90),
        || {
            let gaps = gap_records(kafka);
            [0, 1].iter().all(|shard| {
                gaps.iter()
                    .any(|(s, _, _, reason)| s == shard && reason == "spool_full_dropped")
            })
        },
    );
}

#[test]
fn dropped_events_are_reported_per_shard_even_across_a_crash() {
    let kafka = Tansu::start();
    kafka.create_topics(&TEST_TOPICS, 1);
    let sim = genesys_sim::Simulator::start(SimConfig {
        rate_per_sec: 10.0,
        ..sim_config()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(
        &sim.base_url(),
        &kafka.brokers(),
        &EXTRA.replace("[socket]", TWO_SHARDS),
    )
    .replace("segment_bytes = 1048576", "segment_bytes = 16384");
    let config = small_spool(&config, "drop-newest");
    let mut bridge = Bridge::start(dir.path(), &config, &[]);
    bridge.wait_ready(Duration::from_secs(30));
    wait_legs_streaming(&bridge, 2, 2, Duration::from_secs(30));
    let topics = conversation_topics(&sim);
    let from = next_published_seq(&sim);
    // Kafka stalls: the spool fills and drops newest events, of both shards.
    crash_while_both_shards_drop(&mut bridge, &kafka, dir.path());
    finish_traffic(&sim, &kafka, from, &topics, Duration::from_secs(90));
    let reconciled = reconcile(&sim, &kafka, from, &topics);
    let gaps = gap_records(&kafka);
    eprintln!(
        "{} published, {} missing; gaps {gaps:?}",
        reconciled.expected,
        reconciled.missing.len()
    );
    assert!(!reconciled.missing.is_empty(), "events were dropped");
    assert_missing_inside_own_gaps(&reconciled, &gaps, &shard_of_topics(&kafka), 500);
}

#[test]
fn two_crashes_in_a_row_with_a_shard_absent_between_keep_its_gap() {
    let kafka = Tansu::start();
    kafka.create_topics(&TEST_TOPICS, 1);
    let sim = genesys_sim::Simulator::start(sim_config()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // 25 topics of 5 per channel: shard 0 holds the 5 queues, shards 1 to 4 the users.
    let two_shards = test_config(
        &sim.base_url(),
        &kafka.brokers(),
        &EXTRA.replace("[socket]", "per_channel = 5\n[socket]"),
    );
    let mut bridge = Bridge::start(dir.path(), &two_shards, &[]);
    bridge.wait_ready(Duration::from_secs(30));
    wait_legs_streaming(&bridge, 5, 2, Duration::from_secs(30));
    let topics = conversation_topics(&sim);
    let from = next_published_seq(&sim);
    wait_for_traffic(&sim, &topics, 20);
    // Crash 1. The next run streams shard 0 only (the user templates are gone from its
    // config): shards 1 to 4 get nothing in that run.
    let first_crash = chrono::Utc::now().timestamp_millis();
    let one_shard = two_shards.replace("  { template = \"v2.users.{id}.conversations\" },\n", "");
    assert_ne!(one_shard, two_shards);
    std::fs::write(
        &bridge.config_path,
        one_shard
            .replace("{http}", &bridge.http)
            .replace("{spool}", &dir.path().join("spool").display().to_string()),
    )
    .unwrap();
    bridge.restart(&[]);
    bridge.wait_ready(Duration::from_secs(30));
    wait_legs_streaming(&bridge, 1, 2, Duration::from_secs(30));
    wait_for_traffic(&sim, &topics, 20);
    // Crash 2, then the whole topic set again.
    let second_crash = chrono::Utc::now().timestamp_millis();
    std::fs::write(
        &bridge.config_path,
        two_shards
            .replace("{http}", &bridge.http)
            .replace("{spool}", &dir.path().join("spool").display().to_string()),
    )
    .unwrap();
    bridge.restart(&[]);
    bridge.wait_ready(Duration::from_secs(30));
    wait_legs_streaming(&bridge, 5, 2, Duration::from_secs(30));
    wait_until(
        "each absent shard's gap since the first crash",
        Duration::from_secs(30),
        || {
            let gaps = gap_records(&kafka);
            (1..=4).all(|shard| {
                gaps.iter().any(|(s, start, end, _)| {
                    *s == shard && *start < first_crash && *end > second_crash
                })
            })
        },
    );
    wait_for_traffic(&sim, &topics, 20);
    finish_traffic(&sim, &kafka, from, &topics, Duration::from_secs(60));
    let reconciled = reconcile(&sim, &kafka, from, &topics);
    let gaps = gap_records(&kafka);
    eprintln!(
        "{} published, {} missing; gaps {gaps:?}",
        reconciled.expected,
        reconciled.missing.len()
    );
    assert!(!reconciled.missing.is_empty());
    assert_missing_inside_own_gaps(&reconciled, &gaps, &shard_of_topics(&kafka), 500);
    // Duplicates are allowed here: a SIGKILL re-sends what Kafka took but the spool had not yet
    // recorded as acknowledged (at least once).
}

#[test]
fn a_paused_shard_stays_paused_through_topic_changes_until_the_spool_has_room() {
    let kafka = Tansu::start();
    kafka.create_topics(&TEST_TOPICS, 1);
    let sim = genesys_sim::Simulator::start(SimConfig {
        rate_per_sec: 10.0,
        ..sim_config()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(
        &sim.base_url(),
        &kafka.brokers(),
        &EXTRA.replace("[socket]", "refresh_interval = \"300ms\"\n[socket]"),
    )
    .replace("segment_bytes = 1048576", "segment_bytes = 16384");
    let config = small_spool(&config, "block");
    let bridge = Bridge::start(dir.path(), &config, &[]);
    bridge.wait_ready(Duration::from_secs(30));
    wait_legs_streaming(&bridge, 1, 2, Duration::from_secs(30));
    signal(kafka.pid(), "STOP");
    wait_until("the shard pauses", Duration::from_secs(120), || {
        bridge.status()["shards"][0]["phase"] == "paused"
    });
    // A new queue while paused: the topic update (and every retry timer) must not reconnect.
    let added = sim.add_queue("Opened while the spool is full");
    let topic = format!("v2.routing.queues.{added}.conversations");
    let until = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < until {
        let connected: Vec<_> = sim.channels().into_iter().filter(|c| c.connected).collect();
        assert!(
            connected.is_empty(),
            "a paused shard reconnected: {} socket(s)",
            connected.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    signal(kafka.pid(), "CONT");
    wait_until(
        "streaming again, on the new topic set",
        Duration::from_secs(120),
        || {
            sim.channels()
                .iter()
                .filter(|c| c.connected && c.topics.contains(&topic))
                .count()
                == 2
        },
    );
    wait_until("the pause's gap record", Duration::from_secs(30), || {
        gap_records(&kafka)
            .iter()
            .any(|(_, _, _, reason)| reason == "spool_full")
    });
}

/// Defect 5: a status record the spool cannot take (its gap headroom used up) is not dropped
/// with a log line: it waits in the shard's durable state, survives a SIGKILL, and lands once
/// the spool takes it, exactly once.
#[test]
fn a_status_record_the_spool_refuses_waits_on_disk_and_lands_after_a_crash() {
    let mut s = Scenario::start(sim_config(), 1, EXTRA);
    wait_legs_streaming(&s.bridge, 1, 2, Duration::from_secs(20));
    // Every status record of shard 0 from now on finds the spool full.
    assert_eq!(
        s.bridge.post("/debug/refuse-status/socket-0?count=1000000"),
        Some(202)
    );
    // Both legs at once: an outage of the shard, and its gap record, refused.
    assert_eq!(s.sim.faults().drop_socket(Target::All).len(), 2);
    let state_file = s.dir.path().join("spool/shard-state.json");
    let pending_gap = || -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(&state_file).ok()?;
        let state: serde_json::Value = serde_json::from_str(&text).ok()?;
        state["0"]["pending_status"]
            .as_array()?
            .iter()
            .find(|r| r["type"] == "gap")
            .cloned()
    };
    wait_until(
        "the refused gap record waiting on disk",
        Duration::from_secs(30),
        || pending_gap().is_some(),
    );
    let waiting = pending_gap().unwrap();
    wait_legs_streaming(&s.bridge, 1, 2, Duration::from_secs(20));
    assert!(
        gap_records(&s.kafka).is_empty(),
        "the refused record is not in Kafka yet"
    );
    let mode = std::fs::metadata(&state_file).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o077,
        0,
        "shard state is not readable by others"
    );
    // The process dies with the record still waiting; the next run writes it first.
    s.bridge.restart(&[]);
    s.bridge.wait_ready(Duration::from_secs(30));
    wait_until(
        "the waiting gap record in Kafka",
        Duration::from_secs(30),
        || {
            consume_all(&s.kafka.brokers(), &["status"])
                .iter()
                .filter_map(|r| serde_json::from_str::<serde_json::Value>(&r.value).ok())
                .any(|v| v["type"] == "gap" && v["gap_start"] == waiting["gap_start"])
        },
    );
    wait_until("nothing left waiting", Duration::from_secs(10), || {
        pending_gap().is_none()
    });
    let same: Vec<_> = consume_all(&s.kafka.brokers(), &["status"])
        .iter()
        .filter_map(|r| serde_json::from_str::<serde_json::Value>(&r.value).ok())
        .filter(|v| v["type"] == "gap" && v["gap_start"] == waiting["gap_start"])
        .collect();
    assert_eq!(same.len(), 1, "written once: {same:?}");
    assert_eq!(same[0], waiting, "written as it waited");
}

/// Connected channels of each shard (two shards of [`TWO_SHARDS`]: shard 0 holds the queues).
fn connected_by_shard(sim: &genesys_sim::SimHandle) -> [Vec<genesys_sim::ChannelInfo>; 2] {
    let mut out: [Vec<genesys_sim::ChannelInfo>; 2] = [Vec::new(), Vec::new()];
    for channel in sim.channels().into_iter().filter(|c| c.connected) {
        let queues = channel
            .topics
            .iter()
            .any(|t| t.starts_with("v2.routing.queues."));
        out[if queues { 0 } else { 1 }].push(channel);
    }
    out
}

fn channel_log_end(sim: &genesys_sim::SimHandle) -> u64 {
    sim.channel_log().last().map(|e| e.seq + 1).unwrap_or(0)
}

/// The long run of issue #13, every fault in one run: one leg dropped, one silent for good, a
/// socket actor panic, two SIGKILLs in a row with one shard's subscriptions refused between,
/// `drop-newest` with a full spool across a restart, an accept-then-close storm, and 20-second
/// channels all along. Then: every published event missing from Kafka lies inside a gap record
/// of its shard, no gap record covers time in which its shard delivered, the storm's connects
/// stay within `max_connects_per_minute`, and a quiet stretch gets about one channel per
/// rollover.
#[test]
fn one_long_run_with_every_fault_reports_exactly_what_was_lost() {
    const SLACK_MS: i64 = 500;
    let kafka = Tansu::start();
    kafka.create_topics(&TEST_TOPICS, 1);
    let sim = genesys_sim::Simulator::start(SimConfig {
        channel_lifetime: Duration::from_secs(20),
        ..sim_config()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Two shards on two legs; the default rollover margin (10 minutes, longer than a channel
    // lives) and the default floor between rollovers; six connects a minute per leg.
    let extra = EXTRA
        .replace("[socket]", TWO_SHARDS)
        .replace("rollover_margin = \"2500ms\"\n", "")
        .replace("min_rollover_interval = \"500ms\"\n", "")
        + "max_connects_per_minute = 6\n";
    // A spool of 1 MiB for events (plus the 64 KiB kept for gap records) that drops newest:
    // big enough for the run's traffic while Kafka is up, full in seconds when it stalls.
    let config = test_config(&sim.base_url(), &kafka.brokers(), &extra)
        .replace("segment_bytes = 1048576", "segment_bytes = 65536")
        .replace(
            "max_bytes = 67108864",
            "max_bytes = 1114112\nwhen_full = \"drop-newest\"",
        );
    let mut bridge = Bridge::start(dir.path(), &config, &[]);
    bridge.wait_ready(Duration::from_secs(30));
    wait_legs_streaming(&bridge, 2, 2, Duration::from_secs(30));
    let topics = conversation_topics(&sim);
    let from = next_published_seq(&sim);
    wait_for_traffic(&sim, &topics, 20);

    eprintln!("1. one leg of each shard dropped, four times");
    for round in 0..4 {
        // (A leg may be between channels in a rollover: then its shard has one socket, and
        // dropping it is an outage of the shard, which its gap record must then report.)
        for shard in connected_by_shard(&sim).iter().filter(|s| !s.is_empty()) {
            let victim = &shard[round % shard.len()].id;
            sim.faults().drop_socket(Target::from(victim));
        }
        wait_legs_streaming(&bridge, 2, 2, Duration::from_secs(20));
        wait_for_traffic(&sim, &topics, 10);
    }

    eprintln!("2. one leg of shard 0 silent for good");
    wait_until("shard 0 has a socket", Duration::from_secs(10), || {
        !connected_by_shard(&sim)[0].is_empty()
    });
    let silent = connected_by_shard(&sim)[0][0].id.clone();
    assert_eq!(sim.faults().silence(Target::from(&silent), None).len(), 1);
    wait_until("the silent leg replaced", Duration::from_secs(30), || {
        connected_by_shard(&sim)[0]
            .iter()
            .all(|c| c.id != silent || !c.connected)
    });
    wait_legs_streaming(&bridge, 2, 2, Duration::from_secs(30));
    wait_for_traffic(&sim, &topics, 10);

    eprintln!("3. shard 1's socket actor panics");
    assert_eq!(bridge.post("/debug/panic/socket-1"), Some(202));
    wait_until(
        "the actor restart's gap record",
        Duration::from_secs(30),
        || {
            gap_records(&kafka)
                .iter()
                .any(|(s, _, _, r)| *s == 1 && r == "actor_restart")
        },
    );
    wait_legs_streaming(&bridge, 2, 2, Duration::from_secs(30));
    wait_for_traffic(&sim, &topics, 10);

    eprintln!("4. SIGKILL twice, shard 1's subscriptions refused in between");
    wait_until("shard 1 has a socket", Duration::from_secs(10), || {
        !connected_by_shard(&sim)[1].is_empty()
    });
    let shard1_topics: Vec<String> = connected_by_shard(&sim)[1][0].topics.clone();
    assert!(!shard1_topics.is_empty());
    let first_kill = chrono::Utc::now().timestamp_millis();
    bridge.kill();
    sim.faults().refuse_subscriptions(&shard1_topics, None);
    bridge.restart(&[]);
    let refused = || {
        sim.rest_requests()
            .by_endpoint
            .iter()
            .filter(|(k, _)| k.contains("/subscriptions") && k.ends_with(" 503"))
            .map(|(_, n)| *n)
            .sum::<u64>()
    };
    let legs_streaming = |status: &serde_json::Value, shard: usize| {
        status["shards"][shard]["legs"]
            .as_array()
            .map_or(0, |legs| {
                legs.iter().filter(|l| l["phase"] == "streaming").count()
            })
    };
    wait_until(
        "this run's shard 0 streaming, shard 1 refused",
        Duration::from_secs(60),
        || {
            let Some((200, body)) = bridge.get("/status") else {
                return false; // not listening yet
            };
            let status: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            legs_streaming(&status, 0) == 2 && legs_streaming(&status, 1) == 0 && refused() >= 4
        },
    );
    wait_for_traffic(&sim, &topics, 100);
    assert_eq!(legs_streaming(&bridge.status(), 1), 0, "shard 1 stays out");
    assert!(connected_by_shard(&sim)[1].is_empty(), "shard 1 stays out");
    let shard1_absent_until = chrono::Utc::now().timestamp_millis();
    bridge.kill();
    sim.faults().clear_refuse_subscriptions();
    bridge.restart(&[]);
    bridge.wait_ready(Duration::from_secs(60));
    wait_legs_streaming(&bridge, 2, 2, Duration::from_secs(30));
    wait_for_traffic(&sim, &topics, 10);

    wait_until(
        "shard 1's gap record spanning both crashes",
        Duration::from_secs(30),
        || {
            gap_records(&kafka).iter().any(|(s, start, end, _)| {
                *s == 1 && *start < first_kill && *end > shard1_absent_until
            })
        },
    );

    eprintln!("5. drop-newest with a full spool, across a restart");
    crash_while_both_shards_drop(&mut bridge, &kafka, dir.path());
    wait_legs_streaming(&bridge, 2, 2, Duration::from_secs(30));
    wait_for_traffic(&sim, &topics, 10);

    eprintln!("6. an accept-then-close storm of 30 s on every socket");
    let storm_from = channel_log_end(&sim);
    let storm_start = chrono::Utc::now().timestamp_millis();
    // Drops happened while Kafka stalled and while the backlog drained, not since; each shard's
    // episode is a record or two (a span closes after a second without drops), not a flood.
    let drops: Vec<_> = gap_records(&kafka)
        .into_iter()
        .filter(|(_, _, _, r)| r == "spool_full_dropped")
        .collect();
    assert!(
        drops.iter().all(|(_, start, _, _)| *start < storm_start),
        "drops after the spool drained: {drops:?}"
    );
    for shard in [0, 1] {
        let records = drops.iter().filter(|(s, ..)| *s == shard).count();
        assert!(
            (1..=3).contains(&records),
            "shard {shard}: {records} drop records: {drops:?}"
        );
    }
    sim.faults()
        .accept_then_close(Target::All, Some(Duration::from_secs(30)));
    assert!(!sim.faults().drop_socket(Target::All).is_empty());
    wait_until("connects throttled", Duration::from_secs(60), || {
        bridge.metric("genesys_bridge_connects_throttled_total") >= 1.0
    });
    wait_legs_streaming(&bridge, 2, 2, Duration::from_secs(120));
    let storm_end = storm_start + 30_000;
    let storm_connects = sim
        .channel_log_since(storm_from)
        .iter()
        .filter(|e| matches!(e.event, ChannelEvent::SocketAttached { .. }) && e.at_ms < storm_end)
        .count();
    eprintln!("{storm_connects} connects during the 30 s storm (4 legs, 6 a minute each)");
    assert!(
        (4..=24).contains(&storm_connects),
        "{storm_connects} connects in the storm"
    );
    wait_for_traffic(&sim, &topics, 10);

    eprintln!("7. a quiet stretch of 20-second channels");
    let quiet_from = channel_log_end(&sim);
    let expiry = "genesys_bridge_rollovers_total{reason=\"channel_expiry\"}";
    let rollovers_before = bridge.metric(expiry);
    wait_until("eight expiry rollovers", Duration::from_secs(90), || {
        bridge.metric(expiry) >= rollovers_before + 8.0
    });
    let rollovers = bridge.metric(expiry) - rollovers_before;
    let created = sim
        .channel_log_since(quiet_from)
        .iter()
        .filter(|e| matches!(e.event, ChannelEvent::Created { .. }))
        .count();
    eprintln!("{created} channels created for {rollovers} expiry rollovers");
    assert!(
        created as f64 <= rollovers + 2.0,
        "{created} channels for {rollovers} rollovers"
    );

    finish_traffic(&sim, &kafka, from, &topics, Duration::from_secs(90));
    let reconciled = reconcile(&sim, &kafka, from, &topics);
    let gaps = gap_records(&kafka);
    let shards = shard_of_topics(&kafka);
    eprintln!(
        "{} published, {} missing, {} duplicated; {} gap records: {gaps:?}",
        reconciled.expected,
        reconciled.missing.len(),
        reconciled.duplicated,
        gaps.len()
    );
    assert!(!reconciled.missing.is_empty(), "the faults cost events");
    assert_missing_inside_own_gaps(&reconciled, &gaps, &shards, SLACK_MS);
    // No gap record (other than a drop span, which says what was dropped, not that nothing
    // came) covers time in which its shard delivered events.
    for (shard, start, end, reason) in &gaps {
        if reason == "spool_full_dropped" {
            continue;
        }
        let delivered: Vec<_> = reconciled
            .landed
            .iter()
            .filter(|e| {
                shards.get(&e.topic) == Some(shard)
                    && e.published_at_ms > start + SLACK_MS
                    && e.published_at_ms < end - SLACK_MS
            })
            .collect();
        assert!(
            delivered.is_empty(),
            "gap ({shard}, {start}, {end}, {reason}) covers {} delivered events, first at {}",
            delivered.len(),
            delivered[0].published_at
        );
    }
    assert_eq!(sim.evictions_of_live_channels("sim-client"), 0);
    assert!(sim.max_live_channels("sim-client") <= 20);
}
