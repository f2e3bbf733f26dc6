//! The supervisor restarts an actor that panics, counts it, and ends a crash loop by exiting.

mod support;

use std::time::Duration;

use genesys_sim::{FrameKind, SimConfig, Simulator};
use support::*;

const EXTRA: &str = r#"
[topics]
templates = [{ template = "v2.routing.queues.{id}.conversations" }]
[socket]
ping_interval = "300ms"
dead_after = "2s"
[supervisor]
crash_threshold = 3
crash_window = "1m"
restart_backoff = { min = "50ms", max = "1s", jitter = 0.0 }
"#;

#[test]
fn each_actor_is_restarted_after_a_panic_and_the_stream_goes_on() {
    let Scenario {
        bridge,
        sim,
        kafka: _kafka,
        dir: _dir,
    } = Scenario::start(
        SimConfig {
            rate_per_sec: 6.0,
            heartbeat_interval: Duration::from_secs(1),
            ..SimConfig::default()
        },
        1,
        EXTRA,
    );
    for actor in ["socket-0", "heartbeat", "token", "producer"] {
        let produced_before = bridge.metric("genesys_bridge_events_produced_total");
        assert_eq!(
            bridge.post(&format!("/debug/panic/{actor}")),
            Some(202),
            "{actor}"
        );
        let label = actor.trim_end_matches("-0");
        let sample = format!("genesys_bridge_actor_restarts_total{{actor=\"{label}\"}}");
        wait_until(
            &format!("{actor} restarted"),
            Duration::from_secs(20),
            || bridge.metric(&sample) >= 1.0,
        );
        assert_eq!(bridge.status()["restarts"][label], 1, "{actor}");
        wait_until(
            &format!("events flow after {actor} restart"),
            Duration::from_secs(30),
            || bridge.metric("genesys_bridge_events_produced_total") > produced_before + 5.0,
        );
        bridge.wait_ready(Duration::from_secs(30));
        assert_eq!(bridge.get("/livez").map(|r| r.0), Some(200));
    }
    assert!(bridge
        .logs()
        .iter()
        .any(|line| line.contains("injected panic in KafkaProducerActor")));
    assert!(sim.ledger_count(|e| e.kind == FrameKind::Event) > 0);
}

#[test]
fn a_crash_looping_actor_makes_the_process_exit_non_zero() {
    let sim = Simulator::start(SimConfig::default()).unwrap();
    let kafka = Tansu::start();
    kafka.create_topics(&TEST_TOPICS, 1);
    let dir = tempfile::tempdir().unwrap();
    let mut bridge = Bridge::start(
        dir.path(),
        &test_config(&sim.base_url(), &kafka.brokers(), EXTRA),
        &[],
    );
    bridge.wait_ready(Duration::from_secs(30));
    for round in 1..=3 {
        wait_until("heartbeat actor running", Duration::from_secs(10), || {
            bridge.post("/debug/panic/heartbeat") == Some(202)
        });
        let sample = "genesys_bridge_actor_restarts_total{actor=\"heartbeat\"}";
        if round < 3 {
            wait_until("restarted", Duration::from_secs(10), || {
                bridge.metric(sample) >= round as f64
            });
        }
    }
    assert_eq!(bridge.wait_exit(Duration::from_secs(20)), Some(70));
    assert!(bridge.logs().iter().any(|l| l.contains("crash-looping")));
}
