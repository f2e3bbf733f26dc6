//! Two legs per shard: a single socket fault loses nothing, both at once leave exactly one gap,
//! and the channel budget holds through rollovers and token refreshes. The ground truth is the
//! simulator's published log: every event the model published, subscribed or not.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use genesys_sim::{SimConfig, Target};
use support::*;

const EXTRA: &str = LEG_TEST_EXTRA;

fn sim_config() -> SimConfig {
    leg_test_sim()
}

fn connected_channels(sim: &genesys_sim::SimHandle) -> Vec<String> {
    let mut ids: Vec<String> = sim
        .channels()
        .into_iter()
        .filter(|c| c.connected)
        .map(|c| c.id)
        .collect();
    ids.sort();
    ids
}

fn report(what: &str, reconciled: &Reconciled) {
    eprintln!(
        "{what}: {} events published on the subscribed topics, {} missing, {} duplicated",
        reconciled.expected,
        reconciled.missing.len(),
        reconciled.duplicated
    );
    for entry in reconciled.missing.iter().take(20) {
        eprintln!(
            "missing: seq {} at {} on {}",
            entry.seq, entry.published_at, entry.topic
        );
    }
}

/// Drops one leg's socket (the legs in turn) every five seconds, `rounds` times, each time
/// waiting until both legs stream again.
fn drop_a_leg_every_5s(s: &Scenario, rounds: usize) {
    for round in 0..rounds {
        let connected = connected_channels(&s.sim);
        assert_eq!(connected.len(), 2, "two legs, two sockets");
        let victim = &connected[round % 2];
        assert_eq!(s.sim.faults().drop_socket(Target::from(victim)).len(), 1);
        wait_legs_streaming(&s.bridge, 1, 2, Duration::from_secs(10));
        // The schedule of the fault: one drop every five seconds.
        std::thread::sleep(Duration::from_secs(5));
    }
}

#[test]
fn one_leg_dropped_every_5s_for_a_minute_loses_nothing_and_records_no_gap() {
    let s = Scenario::start(sim_config(), 3, EXTRA);
    wait_legs_streaming(&s.bridge, 1, 2, Duration::from_secs(20));
    let topics = conversation_topics(&s.sim);
    let from = next_published_seq(&s.sim);
    drop_a_leg_every_5s(&s, 12);
    finish_traffic(&s.sim, &s.kafka, from, &topics, Duration::from_secs(60));
    let reconciled = reconcile(&s.sim, &s.kafka, from, &topics);
    report("one leg dropped every 5 s", &reconciled);
    assert!(reconciled.expected > 100, "traffic flowed");
    assert!(reconciled.missing.is_empty(), "events lost");
    assert_duplicates_only_late(&s.bridge, &reconciled);
    assert!(gap_records(&s.kafka).is_empty(), "one leg down is no gap");
    assert!(
        s.bridge
            .metric("genesys_bridge_leg_losses_total{reason=\"closed\"}")
            >= 12.0
    );
    assert_eq!(
        s.bridge.status()["shards"][0]["merge_keying"],
        "correlation_id",
        "the simulator gives both channels one CorrelationId: the keying stays"
    );
    assert!(
        s.bridge
            .metric("genesys_bridge_duplicates_suppressed_total")
            > 100.0
    );
}

/// #12: the merge must not depend on Genesys giving both channels one `CorrelationId` for an
/// event (undocumented). Keyed by it, a merge delivers every event once per leg when they do
/// not (1,671 duplicates of 1,973 events here); the merge learns that they disagree and keys by
/// topic and body.
#[test]
fn channels_with_their_own_correlation_ids_get_each_event_once_through_leg_drops() {
    let config = SimConfig {
        correlation_per_channel: true,
        ..sim_config()
    };
    let s = Scenario::start(config, 3, EXTRA);
    wait_legs_streaming(&s.bridge, 1, 2, Duration::from_secs(20));
    let topics = conversation_topics(&s.sim);
    let from = next_published_seq(&s.sim);
    drop_a_leg_every_5s(&s, 4);
    finish_traffic(&s.sim, &s.kafka, from, &topics, Duration::from_secs(60));
    let reconciled = reconcile_without_correlation_ids(&s.sim, &s.kafka, from, &topics);
    report(
        "own CorrelationIds per channel, a leg dropped every 5 s",
        &reconciled,
    );
    assert!(reconciled.expected > 50, "traffic flowed");
    assert!(reconciled.missing.is_empty(), "events lost");
    // The merge starts keyed by CorrelationId: until the learner's verdict (16 pairs, the last
    // of them merged) the copies were delivered twice.
    let late = s.bridge.metric("genesys_bridge_duplicates_late_total");
    assert!(
        reconciled.duplicated as f64 <= late + 15.0,
        "{} duplicated, {late} late copies",
        reconciled.duplicated
    );
    assert!(
        s.bridge
            .metric("genesys_bridge_duplicates_suppressed_total")
            > 50.0,
        "the copies were merged"
    );
    assert_eq!(
        s.bridge.status()["shards"][0]["merge_keying"],
        "topic_and_body"
    );
}

#[test]
fn one_leg_silent_for_good_is_replaced_within_ping_and_pong_timeout_and_loses_nothing() {
    let s = Scenario::start(sim_config(), 3, EXTRA);
    wait_legs_streaming(&s.bridge, 1, 2, Duration::from_secs(20));
    let topics = conversation_topics(&s.sim);
    let from = next_published_seq(&s.sim);
    wait_for_traffic(&s.sim, &topics, 20);
    let connected = connected_channels(&s.sim);
    let silenced = connected[0].clone();
    assert_eq!(
        s.sim.faults().silence(Target::from(&silenced), None).len(),
        1
    );
    let started = Instant::now();
    // ping_interval (100 ms) + pong_timeout (1 s), and more than a second for a loaded machine.
    wait_until(
        "the silent leg is found dead",
        Duration::from_secs(3),
        || {
            s.bridge
                .metric("genesys_bridge_leg_losses_total{reason=\"pong_timeout\"}")
                >= 1.0
        },
    );
    eprintln!("silent leg found dead after {:?}", started.elapsed());
    wait_until(
        "the silent leg is replaced",
        Duration::from_secs(10),
        || {
            let connected = connected_channels(&s.sim);
            connected.len() == 2 && !connected.contains(&silenced)
        },
    );
    wait_legs_streaming(&s.bridge, 1, 2, Duration::from_secs(10));
    wait_for_traffic(&s.sim, &topics, 20);
    finish_traffic(&s.sim, &s.kafka, from, &topics, Duration::from_secs(60));
    let reconciled = reconcile(&s.sim, &s.kafka, from, &topics);
    report("one leg silent", &reconciled);
    assert!(reconciled.missing.is_empty(), "events lost");
    assert_duplicates_only_late(&s.bridge, &reconciled);
    assert!(gap_records(&s.kafka).is_empty(), "one leg down is no gap");
}

#[test]
fn both_legs_dropped_at_once_leave_one_gap_holding_exactly_the_missing_events() {
    let s = Scenario::start(sim_config(), 3, EXTRA);
    wait_legs_streaming(&s.bridge, 1, 2, Duration::from_secs(20));
    let topics = conversation_topics(&s.sim);
    let from = next_published_seq(&s.sim);
    wait_for_traffic(&s.sim, &topics, 20);
    // Reconnects fail for a while, so that the shard is really without a socket.
    s.sim
        .faults()
        .accept_then_close(Target::All, Some(Duration::from_millis(1500)));
    assert_eq!(s.sim.faults().drop_socket(Target::All).len(), 2);
    wait_until("a gap record", Duration::from_secs(20), || {
        !gap_records(&s.kafka).is_empty()
    });
    wait_legs_streaming(&s.bridge, 1, 2, Duration::from_secs(20));
    wait_for_traffic(&s.sim, &topics, 20);
    finish_traffic(&s.sim, &s.kafka, from, &topics, Duration::from_secs(60));
    let reconciled = reconcile(&s.sim, &s.kafka, from, &topics);
    report("both legs dropped", &reconciled);
    let gaps = gap_records(&s.kafka);
    eprintln!("gaps: {gaps:?}");
    assert_eq!(gaps.len(), 1, "one gap for one incident");
    let (_, start, end, _) = gaps[0].clone();
    assert!(end - start >= 1000, "the gap spans the refused reconnects");
    assert!(
        !reconciled.missing.is_empty(),
        "events were published meanwhile"
    );
    let slack = 500;
    for entry in &reconciled.missing {
        assert!(
            entry.published_at_ms >= start - slack && entry.published_at_ms <= end + slack,
            "event at {} missing outside the gap {start}..{end}",
            entry.published_at_ms
        );
    }
    // Everything published well inside the gap is missing: nothing covered the shard.
    let inside = s.sim.published_count(|e| {
        topics.contains(&e.topic)
            && e.published_at_ms > start + slack
            && e.published_at_ms < end - slack
    });
    let missing_inside = reconciled
        .missing
        .iter()
        .filter(|e| e.published_at_ms > start + slack && e.published_at_ms < end - slack)
        .count();
    assert_eq!(missing_inside, inside);
    assert_duplicates_only_late(&s.bridge, &reconciled);
}

/// How long the budget soaks run (the issue asks for 6 minutes; `LEGS_SOAK_SECS` shortens it).
fn soak() -> Duration {
    let secs = std::env::var("LEGS_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(360);
    Duration::from_secs(secs)
}

/// Samples the connected sockets and the bridge's channels-held gauge while `body` runs.
fn watching<T>(
    sim: &genesys_sim::SimHandle,
    bridge: &Bridge,
    body: impl FnOnce() -> T,
) -> (T, usize, usize) {
    let most_sockets = AtomicUsize::new(0);
    let most_held = AtomicUsize::new(0);
    let done = AtomicBool::new(false);
    let result = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                let connected = sim.channels().iter().filter(|c| c.connected).count();
                most_sockets.fetch_max(connected, Ordering::Relaxed);
                let held = bridge.metric("genesys_bridge_channels_held") as usize;
                most_held.fetch_max(held, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let _stop = StopOnDrop(&done);
        body()
    });
    (
        result,
        most_sockets.load(Ordering::Relaxed),
        most_held.load(Ordering::Relaxed),
    )
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

const SOAK_GENESYS: &str = "token_refresh_margin = \"30s\"\ntoken_min_refresh_interval = \"1s\"";

fn soak_config(sim: &genesys_sim::SimHandle, kafka: &Tansu, per_channel: usize) -> String {
    test_config(
        &sim.base_url(),
        &kafka.brokers(),
        &EXTRA.replace(
            "[socket]",
            &format!("per_channel = {per_channel}\n[socket]"),
        ),
    )
    .replace(
        "request_timeout = \"5s\"",
        &format!("request_timeout = \"5s\"\n{SOAK_GENESYS}"),
    )
}

#[test]
fn ten_shards_on_two_legs_through_token_and_channel_expiry_never_evict_a_live_channel() {
    let kafka = Tansu::start();
    kafka.create_topics(&TEST_TOPICS, 3);
    let sim = genesys_sim::Simulator::start(SimConfig {
        rate_per_sec: 1.0,
        queues: 10,
        agents: 20,
        heartbeat_interval: Duration::from_secs(1),
        token_lifetime: Duration::from_secs(120),
        channel_lifetime: Duration::from_secs(180),
        socket_closing_grace: Duration::from_secs(5),
        ..SimConfig::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // 30 topics of 3 per channel: 10 shards, 2 legs each, 20 channels: the whole budget.
    let bridge = Bridge::start(dir.path(), &soak_config(&sim, &kafka, 3), &[]);
    bridge.wait_ready(Duration::from_secs(60));
    wait_legs_streaming(&bridge, 10, 2, Duration::from_secs(60));
    let topics = conversation_topics(&sim);
    let from = next_published_seq(&sim);
    let ((), most_sockets, most_held) = watching(&sim, &bridge, || {
        let started = Instant::now();
        let mut round = 0usize;
        while started.elapsed() < soak() {
            std::thread::sleep(Duration::from_secs(20));
            let connected = connected_channels(&sim);
            if !connected.is_empty() {
                let victim = &connected[round * 7 % connected.len()];
                sim.faults().socket_closing(Target::from(victim), None);
            }
            round += 1;
        }
    });
    finish_traffic(&sim, &kafka, from, &topics, Duration::from_secs(120));
    let reconciled = reconcile(&sim, &kafka, from, &topics);
    report("10 shards x 2 legs", &reconciled);
    eprintln!(
        "rollovers: token {} expiry {} socket_closing {}; most sockets {most_sockets}, most channels held {most_held}, most live channels {}",
        bridge.metric("genesys_bridge_rollovers_total{reason=\"token_refresh\"}"),
        bridge.metric("genesys_bridge_rollovers_total{reason=\"channel_expiry\"}"),
        bridge.metric("genesys_bridge_rollovers_total{reason=\"socket_closing\"}"),
        sim.max_live_channels("sim-client"),
    );
    assert_eq!(sim.evictions_of_live_channels("sim-client"), 0);
    assert!(most_sockets <= 20, "{most_sockets} sockets");
    assert!(most_held <= 20, "{most_held} channels held");
    assert!(bridge.metric("genesys_bridge_rollovers_total{reason=\"token_refresh\"}") >= 20.0);
    assert!(reconciled.missing.is_empty(), "events lost");
    assert_duplicates_only_late(&bridge, &reconciled);
    assert!(gap_records(&kafka).is_empty(), "no gap");
}

#[test]
fn nineteen_shards_on_one_leg_roll_over_through_the_one_free_slot() {
    let kafka = Tansu::start();
    kafka.create_topics(&TEST_TOPICS, 3);
    let sim = genesys_sim::Simulator::start(SimConfig {
        rate_per_sec: 1.0,
        queues: 18,
        agents: 20,
        heartbeat_interval: Duration::from_secs(1),
        token_lifetime: Duration::from_secs(120),
        ..SimConfig::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // 38 topics of 2 per channel: 19 shards; two legs would need 38 channels, so one leg each.
    let bridge = Bridge::start(dir.path(), &soak_config(&sim, &kafka, 2), &[]);
    bridge.wait_ready(Duration::from_secs(60));
    wait_legs_streaming(&bridge, 19, 1, Duration::from_secs(60));
    assert!(
        bridge
            .logs()
            .iter()
            .any(|l| l.contains("too many channels for two legs")),
        "one leg is announced with a warning"
    );
    let topics = conversation_topics(&sim);
    let from = next_published_seq(&sim);
    let ((), most_sockets, most_held) = watching(&sim, &bridge, || {
        let started = Instant::now();
        while started.elapsed() < soak() {
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    finish_traffic(&sim, &kafka, from, &topics, Duration::from_secs(120));
    let reconciled = reconcile(&sim, &kafka, from, &topics);
    report("19 shards x 1 leg", &reconciled);
    eprintln!(
        "token rollovers {}; most sockets {most_sockets}, most channels held {most_held}",
        bridge.metric("genesys_bridge_rollovers_total{reason=\"token_refresh\"}")
    );
    assert_eq!(sim.evictions_of_live_channels("sim-client"), 0);
    assert!(most_sockets <= 20, "{most_sockets} sockets");
    assert!(most_held <= 20, "{most_held} channels held");
    assert!(bridge.metric("genesys_bridge_rollovers_total{reason=\"token_refresh\"}") >= 19.0);
    assert!(gap_records(&kafka).is_empty(), "no gap");
    assert!(reconciled.missing.is_empty(), "events lost");
    assert_duplicates_only_late(&bridge, &reconciled);
}

#[test]
fn a_topic_set_that_does_not_fit_is_refused_at_start() {
    let kafka = Tansu::start();
    kafka.create_topics(&TEST_TOPICS, 1);
    let sim = genesys_sim::Simulator::start(SimConfig {
        rate_per_sec: 1.0,
        queues: 20,
        agents: 20,
        ..SimConfig::default()
    })
    .unwrap();
    // 40 topics of 2 per channel: 20 shards; one leg each leaves no slot for rollovers.
    let dir = tempfile::tempdir().unwrap();
    let mut bridge = Bridge::start(dir.path(), &soak_config(&sim, &kafka, 2), &[]);
    assert_eq!(bridge.wait_exit(Duration::from_secs(60)), Some(78));
    assert!(bridge
        .logs()
        .iter()
        .any(|l| l.contains("at most 19 shards")));
    // Two legs asked for explicitly, with 14 shards: refused too.
    let dir = tempfile::tempdir().unwrap();
    let config = soak_config(&sim, &kafka, 3).replace("[socket]", "[socket]\nredundancy = 2");
    let mut bridge = Bridge::start(dir.path(), &config, &[]);
    assert_eq!(bridge.wait_exit(Duration::from_secs(60)), Some(78));
    assert!(bridge
        .logs()
        .iter()
        .any(|l| l.contains("at most 10 shards")));
}

#[test]
fn a_quiet_org_keeps_its_sockets_every_ping_is_answered() {
    let s = Scenario::start(
        SimConfig {
            rate_per_sec: 0.0,
            heartbeat_interval: Duration::from_secs(30),
            ..SimConfig::default()
        },
        1,
        EXTRA,
    );
    wait_legs_streaming(&s.bridge, 1, 2, Duration::from_secs(20));
    // Nothing but pongs keeps the sockets alive: one ping a second per leg, 1 s to answer.
    wait_until("pongs on both legs", Duration::from_secs(30), || {
        s.bridge
            .metric("genesys_bridge_frames_received_total{kind=\"pong\"}")
            >= 16.0
    });
    assert_eq!(
        s.bridge
            .metric("genesys_bridge_leg_losses_total{reason=\"pong_timeout\"}"),
        0.0,
        "a healthy quiet socket is never declared dead"
    );
    assert!(gap_records(&s.kafka).is_empty());
}

/// #13 defect 9: a token refreshed while a leg is between channels (its next channel being made
/// with the token about to expire) still gets that leg onto the new token before the old one
/// expires: no socket dies with the old token.
#[test]
fn a_token_refreshed_while_a_leg_is_between_channels_moves_that_leg_too() {
    use genesys_sim::{ChannelDeath, ChannelEvent, RestFault, RestFaultKind, RestScope};
    let kafka = Tansu::start();
    kafka.create_topics(&TEST_TOPICS, 1);
    let sim = genesys_sim::Simulator::start(SimConfig {
        token_lifetime: Duration::from_secs(24),
        ..sim_config()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Each token is refreshed 14 s before it expires: 10 s after it was issued.
    let config = test_config(&sim.base_url(), &kafka.brokers(), EXTRA).replace(
        "request_timeout = \"5s\"",
        "request_timeout = \"5s\"\ntoken_refresh_margin = \"14s\"\ntoken_min_refresh_interval = \"1s\"",
    );
    let bridge = Bridge::start(dir.path(), &config, &[]);
    bridge.wait_ready(Duration::from_secs(30));
    wait_legs_streaming(&bridge, 1, 2, Duration::from_secs(20));
    let expires: chrono::DateTime<chrono::Utc> = bridge.status()["token"]["expires_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let log_from = sim.channel_log().last().map(|e| e.seq + 1).unwrap_or(0);
    // The fault's schedule: 1.5 s before the refresh, channel creation and subscription start
    // answering 2.5 s late (for 8 s), and one leg's channel announces its end, so that leg is
    // between channels, on a request made with the old token, when the token is refreshed.
    let refresh_at = expires - chrono::Duration::seconds(14);
    let until_fault = (refresh_at - chrono::Duration::milliseconds(1500) - chrono::Utc::now())
        .to_std()
        .unwrap_or_default();
    std::thread::sleep(until_fault);
    let tokens_before = sim.tokens_issued();
    sim.faults().rest(RestFault {
        kind: RestFaultKind::Delay,
        count: None,
        duration_ms: Some(8000),
        scope: RestScope::Api,
        retry_after_s: 1,
        delay_ms: 2500,
    });
    let victim = connected_channels(&sim)[0].clone();
    assert_eq!(
        sim.faults()
            .socket_closing(Target::from(&victim), None)
            .len(),
        1
    );
    wait_until("the token refreshed", Duration::from_secs(20), || {
        sim.tokens_issued() > tokens_before
    });
    wait_until("the first token expired", Duration::from_secs(30), || {
        chrono::Utc::now() > expires + chrono::Duration::seconds(2)
    });
    let died_with_the_token: Vec<_> = sim
        .channel_log_since(log_from)
        .into_iter()
        .filter(|e| {
            matches!(
                e.event,
                ChannelEvent::Died {
                    reason: ChannelDeath::TokenExpired,
                    had_socket: true
                }
            )
        })
        .collect();
    assert!(
        died_with_the_token.is_empty(),
        "sockets died with the old token: {died_with_the_token:?}"
    );
    wait_legs_streaming(&bridge, 1, 2, Duration::from_secs(20));
    assert_eq!(
        bridge.metric("genesys_bridge_leg_losses_total{reason=\"closed\"}"),
        0.0
    );
    assert!(gap_records(&kafka).is_empty());
}
