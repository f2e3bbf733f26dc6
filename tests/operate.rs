//! Operating the bridge: health endpoints in the states that matter, graceful shutdown, logs
//! without secrets, and the one-command demo.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use genesys_sim::{FrameKind, RestFault, RestFaultKind, RestScope, SimConfig, Simulator, Target};
use support::*;

const EXTRA: &str = r#"
[topics]
templates = [{ template = "v2.routing.queues.{id}.conversations" }]
[socket]
ping_interval = "300ms"
dead_after = "2s"
backoff = { min = "100ms", max = "1s", jitter = 0.0 }
"#;

/// The test config with a short liveness deadline.
fn config(api: &str, brokers: &str, extra: &str) -> String {
    test_config(api, brokers, extra).replace("[http]\n", "[http]\nliveness_deadline = \"1s\"\n")
}

fn code(response: Option<(u16, String)>) -> u16 {
    response.map_or(0, |(code, _)| code)
}

#[test]
fn health_endpoints_in_the_states_that_matter() {
    let mut kafka = Tansu::start();
    kafka.create_topics(&TEST_TOPICS, 1);
    let sim = Simulator::start(SimConfig {
        rate_per_sec: 4.0,
        heartbeat_interval: Duration::from_secs(1),
        ..SimConfig::default()
    })
    .unwrap();
    // Starting: the token endpoint answers slowly, so the bridge holds no token yet.
    sim.faults().rest(RestFault {
        kind: RestFaultKind::Delay,
        count: Some(1),
        duration_ms: None,
        scope: RestScope::Oauth,
        retry_after_s: 1,
        delay_ms: 3000,
    });
    let dir = tempfile::tempdir().unwrap();
    let config = config(&sim.base_url(), &kafka.brokers(), EXTRA);
    let bridge = Bridge::start(dir.path(), &config, &[]);
    wait_until(
        "HTTP answers while starting",
        Duration::from_secs(10),
        || bridge.get("/livez").is_some(),
    );
    assert_eq!(code(bridge.get("/livez")), 200, "live while starting");
    let (status, body) = bridge.get("/readyz").unwrap();
    assert_eq!(status, 503);
    assert!(body.contains("no access token"), "{body}");

    // Streaming.
    bridge.wait_ready(Duration::from_secs(30));
    wait_until("events produced", Duration::from_secs(30), || {
        bridge.metric("genesys_bridge_events_produced_total") > 5.0
    });
    let names = [
        "genesys_bridge_frames_received_total{kind=\"event\"}",
        "genesys_bridge_events_produced_total",
        "genesys_bridge_spool_bytes",
        "genesys_bridge_spool_records",
        "genesys_bridge_spool_oldest_unacked_age_seconds",
        "genesys_bridge_delivery_latency_seconds_bucket",
        "genesys_bridge_heartbeat_age_seconds{shard=\"0\"}",
        "genesys_bridge_channel_age_seconds{shard=\"0\"}",
        "genesys_bridge_token_expiry_seconds",
        "genesys_bridge_topics_subscribed",
        "genesys_bridge_ready 1",
        "genesys_bridge_shard_streaming{shard=\"0\"} 1",
        "genesys_bridge_spool_capacity_bytes",
        "genesys_bridge_actor_restarts_total{actor=\"socket\"} 0",
        "genesys_bridge_build_info{version=",
    ];
    let mut lacking = Vec::new();
    wait_until(
        "/metrics shows every family",
        Duration::from_secs(10),
        || {
            let (_, metrics) = bridge.get("/metrics").unwrap();
            lacking = names.iter().filter(|n| !metrics.contains(*n)).collect();
            lacking.is_empty()
        },
    );
    // Prometheus text 0.0.4 by default (curl, promtool); OpenMetrics when asked for.
    let url = format!("http://{}/metrics", bridge.http);
    let plain = ureq::get(&url).call().unwrap();
    assert!(plain.content_type().starts_with("text/plain"));
    let plain = plain.into_string().unwrap();
    assert!(plain.contains("# TYPE genesys_bridge_events_produced_total counter"));
    assert!(!plain.contains("# EOF"));
    let open = ureq::get(&url)
        .set(
            "Accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .call()
        .unwrap();
    assert_eq!(open.content_type(), "application/openmetrics-text");
    let open = open.into_string().unwrap();
    assert!(open.contains("# TYPE genesys_bridge_events_produced counter"));
    assert!(open.ends_with("# EOF\n"));

    let status = bridge.status();
    assert_eq!(status["shards"][0]["phase"], "streaming");
    assert_eq!(status["shards"][0]["topic_count"], 5);
    assert!(status["shards"][0]["last_frame_at"].is_string());
    assert!(status["token"]["expires_at"].is_string());
    assert!(status["kafka"]["produced"].as_u64().unwrap() > 5);
    let channel = status["shards"][0]["channel"].as_str().unwrap();
    assert!(
        channel.len() < 10,
        "only a shortened channel id in /status: {channel}"
    );

    // Kafka down: still live, still ready (the spool holds events).
    kafka.stop();
    wait_until("events wait in the spool", Duration::from_secs(30), || {
        bridge.status()["spool"]["records"].as_u64().unwrap_or(0) > 5
    });
    assert_eq!(code(bridge.get("/livez")), 200, "live with Kafka down");
    assert_eq!(code(bridge.get("/readyz")), 200, "ready with Kafka down");
    assert!(bridge.status()["kafka"]["last_error"].is_string());
    kafka.restart();

    // An actor hung: not live, and /livez says which.
    assert_eq!(bridge.post("/debug/hang/heartbeat?seconds=5"), Some(202));
    wait_until(
        "not live with a hung actor",
        Duration::from_secs(10),
        || matches!(bridge.get("/livez"), Some((503, body)) if body.contains("heartbeat")),
    );
    wait_until("live again after the hang", Duration::from_secs(20), || {
        code(bridge.get("/livez")) == 200
    });

    // Genesys unreachable: live but not ready.
    sim.stop();
    wait_until("not ready without Genesys", Duration::from_secs(30), || {
        code(bridge.get("/readyz")) == 503
    });
    assert_eq!(code(bridge.get("/livez")), 200, "live without Genesys");
    assert_eq!(bridge.metric("genesys_bridge_ready"), 0.0);
}

#[test]
fn sigterm_during_a_kafka_stall_exits_within_the_deadline_and_loses_nothing() {
    let kafka = Tansu::start();
    kafka.create_topics(&TEST_TOPICS, 1);
    let sim = Simulator::start(SimConfig {
        rate_per_sec: 6.0,
        heartbeat_interval: Duration::from_secs(1),
        ..SimConfig::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("{EXTRA}\n[supervisor]\nshutdown_deadline = \"3s\"\n");
    let mut bridge = Bridge::start(
        dir.path(),
        &config(&sim.base_url(), &kafka.brokers(), &extra),
        &[],
    );
    bridge.wait_ready(Duration::from_secs(30));
    signal(kafka.pid(), "STOP");
    let before = sim.ledger_count(|e| e.kind == FrameKind::Event);
    wait_until("events pile up", Duration::from_secs(60), || {
        sim.ledger_count(|e| e.kind == FrameKind::Event) > before + 50
    });
    stop_traffic_and_wait_spooled(&sim, &bridge);
    let asked = Instant::now();
    bridge.signal("TERM");
    let exit = bridge.wait_exit(Duration::from_secs(30));
    let took = asked.elapsed();
    assert_eq!(exit, Some(0), "clean exit");
    assert!(
        took < Duration::from_secs(3) + Duration::from_secs(2),
        "took {took:?}"
    );
    assert!(bridge
        .logs()
        .iter()
        .any(|l| l.contains("unflushed records stay in the spool")));
    signal(kafka.pid(), "CONT");
    bridge.restart(&[]);
    let sent: std::collections::HashSet<String> = sim
        .ledger()
        .into_iter()
        .filter(|e| e.kind == FrameKind::Event)
        .map(|e| e.frame.to_string())
        .collect();
    wait_until(
        "everything delivered after the restart",
        Duration::from_secs(60),
        || {
            let landed = consume_all(&kafka.brokers(), &["queue-conversations"]);
            let values: std::collections::HashSet<&str> =
                landed.iter().map(|r| r.value.as_str()).collect();
            sent.iter().all(|f| values.contains(f.as_str()))
        },
    );
}

#[test]
fn logs_hold_no_secret_token_or_connect_uri() {
    let kafka = Tansu::start();
    kafka.create_topics(&TEST_TOPICS, 1);
    let sim = Simulator::start(SimConfig {
        rate_per_sec: 4.0,
        token_lifetime: Duration::from_secs(4),
        heartbeat_interval: Duration::from_secs(1),
        ..SimConfig::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config(&sim.base_url(), &kafka.brokers(), EXTRA)
        .replace(
            "request_timeout = \"5s\"",
            "request_timeout = \"5s\"\ntoken_refresh_margin = \"1s\"",
        )
        .replace("info,genesys_actors=debug", "debug");
    let bridge = Bridge::start(dir.path(), &config, &[("RUST_LOG", "debug")]);
    bridge.wait_ready(Duration::from_secs(30));
    sim.faults().socket_closing(Target::All, None);
    sim.faults().drop_socket(Target::All);
    wait_until(
        "a few token refreshes and rollovers",
        Duration::from_secs(30),
        || sim.tokens_issued() >= 3 && sim.channels().len() >= 3,
    );
    let logs = bridge.logs().join("\n");
    assert!(!logs.contains("sim-secret"), "client secret logged");
    for channel in sim.channels() {
        assert!(
            !logs.contains(&channel.id),
            "full channel id {} logged",
            channel.id
        );
    }
    assert!(
        !logs.contains(&format!("{}/channels/", sim.ws_base_url())),
        "connectUri logged"
    );
    assert!(
        !logs.to_lowercase().contains("bearer "),
        "a bearer token logged"
    );
    assert!(!logs.contains("access_token"), "a token response logged");
}

#[test]
fn the_demo_runs_without_external_services_and_its_summary_matches_kafka() {
    let output = Command::new(BIN)
        .args(["demo", "--duration", "8s", "--http", "127.0.0.1:0"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let number = |label: &str| -> usize {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {label:?} in {stdout}"))
    };
    let sent = number("events sent by the simulator");
    let in_kafka = number("records in genesys.queue-conversations")
        + number("records in genesys.user-conversations")
        + number("records in genesys.queue-observations");
    assert!(sent > 50, "{stdout}");
    assert_eq!(number("events missing from Kafka"), 0, "{stdout}");
    assert_eq!(number("duplicate records in Kafka"), 0, "{stdout}");
    assert_eq!(in_kafka, sent, "{stdout}");
    assert!(
        stdout.contains("injected") || String::from_utf8_lossy(&output.stderr).contains("injected")
    );
}
