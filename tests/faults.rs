//! Faults on either side: a silent Genesys socket, a stalled Kafka, bad config, bad credentials,
//! malformed frames.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use genesys_sim::{FrameKind, MalformedKind, SimConfig, Simulator, Target};
use support::*;

const FAST: &str = r#"
[topics]
templates = [{ template = "v2.routing.queues.{id}.conversations" }]
[socket]
ping_interval = "250ms"
dead_after = "1500ms"
backoff = { min = "200ms", max = "2s", jitter = 0.0 }
"#;

fn live_connected(sim: &genesys_sim::SimHandle) -> Vec<String> {
    sim.channels()
        .into_iter()
        .filter(|c| c.alive && c.connected)
        .map(|c| c.id)
        .collect()
}

#[test]
fn a_silent_socket_is_replaced_within_dead_after_plus_one_backoff_step() {
    let Scenario {
        bridge,
        sim,
        kafka,
        dir: _dir,
    } = Scenario::start(
        SimConfig {
            rate_per_sec: 4.0,
            heartbeat_interval: Duration::from_secs(30),
            ..SimConfig::default()
        },
        1,
        // One leg: the socket is the shard's only one, and the watchdog's verdict is the point.
        &FAST.replace("[socket]", "[socket]\nredundancy = 1"),
    );
    let before = live_connected(&sim);
    assert_eq!(before.len(), 1);
    let silenced_at = Instant::now();
    sim.faults().silence(Target::All, None);
    // dead_after (1.5 s) + the first backoff step (0.2 s), plus room for a loaded machine.
    wait_until(
        "a new socket on a new channel",
        Duration::from_millis(1700 + 3000),
        || {
            let now = live_connected(&sim);
            now.len() == 1 && now != before
        },
    );
    eprintln!("replaced after {:?}", silenced_at.elapsed());
    assert!(bridge.metric("genesys_bridge_reconnects_total{reason=\"dead_socket\"}") >= 1.0);
    bridge.wait_ready(Duration::from_secs(10));
    wait_until(
        "the gap record is on the status topic",
        Duration::from_secs(20),
        || {
            consume_all(&kafka.brokers(), &["status"])
                .iter()
                .any(|r| r.value.contains("\"gap\"") && r.value.contains("dead_socket"))
        },
    );
}

#[test]
fn a_stalled_kafka_does_not_delay_socket_reading() {
    let Scenario {
        bridge,
        sim,
        kafka,
        dir: _dir,
    } = Scenario::start(
        SimConfig {
            rate_per_sec: 6.0,
            heartbeat_interval: Duration::from_secs(1),
            ..SimConfig::default()
        },
        1,
        FAST,
    );
    wait_until("events reach Kafka", Duration::from_secs(30), || {
        bridge.metric("genesys_bridge_events_produced_total") > 20.0
    });
    // Freeze the broker: TCP stays open, nothing is acknowledged.
    signal(kafka.pid(), "STOP");
    let pongs_before = sim.ledger_count(|e| e.kind == FrameKind::Pong);
    let produced_frozen = bridge.metric("genesys_bridge_events_produced_total");
    // Six dead_after periods' worth of pings answered while Kafka cannot take anything.
    wait_until(
        "pongs keep flowing while Kafka is frozen",
        Duration::from_secs(30),
        || sim.ledger_count(|e| e.kind == FrameKind::Pong) >= pongs_before + 36,
    );
    let spooled_meanwhile = bridge.status()["spool"]["records"].as_u64().unwrap();
    let produced_during = bridge.metric("genesys_bridge_events_produced_total");
    signal(kafka.pid(), "CONT");
    assert!(spooled_meanwhile > 0, "events waited in the spool");
    assert!(
        produced_during <= produced_frozen + 1.0,
        "Kafka was really frozen"
    );
    assert_eq!(
        bridge.metric("genesys_bridge_reconnects_total{reason=\"dead_socket\"}"),
        0.0,
        "the socket was never declared dead"
    );
    assert_eq!(
        sim.channels().iter().filter(|c| c.connections > 1).count(),
        0
    );
    // Everything spooled meanwhile is delivered once Kafka is back.
    sim.faults().silence(Target::All, None);
    let sent = sim.ledger_count(|e| e.kind == FrameKind::Event);
    wait_until(
        "everything delivered after the stall",
        Duration::from_secs(60),
        || consume_all(&kafka.brokers(), &["queue-conversations"]).len() >= sent,
    );
}

#[test]
fn bad_config_exits_64_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let valid = test_config("http://127.0.0.1:1", "127.0.0.1:9", FAST)
        .replace("{http}", "127.0.0.1:0")
        .replace("{spool}", &dir.path().join("spool").display().to_string());
    let text = valid.replace("dead_after = \"1500ms\"", "dead_after = \"100ms\"");
    std::fs::write(&path, text).unwrap();
    for command in ["run", "check-config"] {
        let output = Command::new(BIN)
            .args([command, "--config"])
            .arg(&path)
            .env("GENESYS_CLIENT_ID", "x")
            .env("GENESYS_CLIENT_SECRET", "y")
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(64), "{command}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("socket.dead_after"), "{command}: {stderr}");
    }
    let output = Command::new(BIN)
        .args(["run", "--config"])
        .arg(dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("missing.toml"));
    let ok = dir.path().join("ok.toml");
    std::fs::write(&ok, &valid).unwrap();
    let output = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&ok)
        .env_remove("GENESYS_CLIENT_ID")
        .env_remove("GENESYS_CLIENT_SECRET")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64), "credentials are required");
    assert!(String::from_utf8_lossy(&output.stderr).contains("GENESYS_CLIENT_ID"));
}

#[test]
fn bad_credentials_keep_the_process_live_but_not_ready_and_never_log_the_secret() {
    let sim = Simulator::start(SimConfig::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret = "wrong-secret-6f1e";
    let bridge = Bridge::start(
        dir.path(),
        &test_config(&sim.base_url(), "127.0.0.1:9", FAST),
        &[("GENESYS_CLIENT_SECRET", secret)],
    );
    wait_until(
        "the 401 is reported",
        Duration::from_secs(20),
        || matches!(bridge.get("/readyz"), Some((503, body)) if body.contains("401")),
    );
    assert_eq!(bridge.get("/livez").map(|r| r.0), Some(200));
    assert!(bridge.metric("genesys_bridge_token_refreshes_total{reason=\"unauthorized\"}") >= 1.0);
    let logs = bridge.logs().join("\n");
    assert!(logs.contains("check the client id and secret"), "{logs}");
    assert!(!logs.contains(secret), "the secret reached the logs");
}

#[test]
fn malformed_frames_are_dead_lettered_and_streaming_goes_on() {
    let Scenario {
        bridge,
        sim,
        kafka,
        dir: _dir,
    } = Scenario::start(
        SimConfig {
            rate_per_sec: 4.0,
            ..SimConfig::default()
        },
        1,
        FAST,
    );
    for kind in [
        MalformedKind::InvalidJson,
        MalformedKind::Binary,
        MalformedKind::MissingFields,
    ] {
        assert_eq!(
            sim.faults().malformed(Target::All, kind, None).len(),
            2,
            "both legs get it"
        );
    }
    wait_until(
        "three malformed frames counted",
        Duration::from_secs(20),
        || bridge.metric("genesys_bridge_frames_malformed_total") >= 3.0,
    );
    wait_until(
        "three dead letters in Kafka",
        Duration::from_secs(20),
        || consume_all(&kafka.brokers(), &["deadletter"]).len() >= 3,
    );
    let dead = consume_all(&kafka.brokers(), &["deadletter"]);
    assert!(dead.iter().all(|r| r
        .header("dead-letter-reason")
        .is_some_and(|h| h.contains("malformed"))));
    assert!(bridge.status()["kafka"]["dead_lettered"].as_u64().unwrap() >= 3);
    let produced = bridge.metric("genesys_bridge_events_produced_total");
    wait_until("streaming goes on", Duration::from_secs(20), || {
        bridge.metric("genesys_bridge_events_produced_total") > produced + 5.0
    });
    // Both legs brought each frame: a byte-identical copy is dead-lettered once (the simulator
    // builds some broken frames per socket, which are then different frames).
    let dead = consume_all(&kafka.brokers(), &["deadletter"]);
    let distinct: std::collections::HashSet<&str> = dead.iter().map(|r| r.value.as_str()).collect();
    assert_eq!(
        dead.len(),
        distinct.len(),
        "no identical frame dead-lettered twice"
    );
    assert_eq!(bridge.get("/readyz").map(|r| r.0), Some(200));
}
