//! The Kafka side under long outages, fatal errors, a dead-letter file that cannot be written
//! and large frames (#14): the real binary, the simulator, tansu or librdkafka's MockCluster.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use genesys_sim::{MalformedKind, SimHandle, Target};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use support::*;

/// One socket per shard: the order frames of a Genesys topic reach the spool is the order the
/// simulator sent them, so the order in Kafka can be judged against the ledger.
const EXTRA: &str = r#"
[topics]
templates = [
  { template = "v2.routing.queues.{id}.conversations" },
  { template = "v2.users.{id}.conversations" },
]
[socket]
redundancy = 1
ping_interval = "300ms"
dead_after = "2s"
"#;

fn sim(rate: f64) -> SimHandle {
    sim_at(rate)
}

fn with_property(config: &str, property: &str) -> String {
    let config = config.replace(
        "\"linger.ms\" = \"5\"",
        &format!("\"linger.ms\" = \"5\"\n{property}"),
    );
    assert!(config.contains(property));
    config
}

/// Alive and not a zombie.
fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(") ")?.1.chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches(" kB").trim().parse().ok())
        .expect("VmHWM in /proc/pid/status")
}

/// The bridge streaming 12 conversations a second into librdkafka's MockCluster (one broker,
/// the test topics with 3 partitions) with `message.timeout.ms` set.
fn streaming_on_a_mock_cluster(
    message_timeout_ms: u32,
) -> (
    MockCluster<'static, DefaultProducerContext>,
    SimHandle,
    Bridge,
    tempfile::TempDir,
) {
    let mock: MockCluster<'static, DefaultProducerContext> = MockCluster::new(1).unwrap();
    for topic in TEST_TOPICS {
        mock.create_topic(topic, 3, 1).unwrap();
    }
    let sim = sim(12.0);
    let dir = tempfile::tempdir().unwrap();
    let config = with_property(
        &test_config(&sim.base_url(), &mock.bootstrap_servers(), EXTRA),
        &format!("\"message.timeout.ms\" = \"{message_timeout_ms}\""),
    );
    let bridge = Bridge::start(dir.path(), &config, &[]);
    bridge.wait_ready(Duration::from_secs(30));
    wait_until("streaming into Kafka", Duration::from_secs(30), || {
        bridge.metric("genesys_bridge_events_produced_total") > 50.0
    });
    (mock, sim, bridge, dir)
}

/// #14 defect 2: with `message.timeout.ms` set, records time out during an outage and are
/// produced again. Before, one retry went out per loop with pauses doubling to 5 s (a backlog
/// of hundreds took far longer than the wait below) and newer records of a key overtook the
/// retried ones. Now each key's records reach Kafka in the order they arrived, none missing.
///
/// The broker is librdkafka's MockCluster (taken down and brought back): after timeouts the
/// idempotent producer bumps its epoch (KIP-360), which tansu answers with UNKNOWN errors.
#[test]
fn per_key_order_holds_across_an_outage_with_message_timeout_set() {
    let (mock, sim, bridge, _dir) = streaming_on_a_mock_cluster(2000);
    let brokers = mock.bootstrap_servers();
    mock.broker_down(1).unwrap();
    let down_at = Instant::now();
    wait_until(
        "records time out during the outage",
        Duration::from_secs(60),
        || {
            down_at.elapsed() >= Duration::from_secs(15)
                && bridge.metric("genesys_bridge_events_failed_total{reason=\"messagetimedout\"}")
                    >= 20.0
        },
    );
    assert!(bridge.metric("genesys_bridge_kafka_retries_waiting") > 0.0);
    let produced = bridge.metric("genesys_bridge_events_produced_total");
    mock.broker_up(1).unwrap();
    wait_until("traffic after the outage", Duration::from_secs(30), || {
        bridge.metric("genesys_bridge_events_produced_total") > produced + 100.0
    });
    sim.faults().silence(Target::All, None);
    assert_per_key_order(
        &bridge,
        &sim,
        &brokers,
        "outage with message.timeout.ms=2000",
    );
}

/// Waits until every event sent is in Kafka; asserts each key's events landed in the order the
/// simulator sent them (first copies), and that no outage counted towards the attempt bound.
fn assert_per_key_order(bridge: &Bridge, sim: &SimHandle, brokers: &str, what: &str) {
    let landed = wait_all_delivered(sim, brokers, Duration::from_secs(120));
    // The ledger's order of each frame, and Kafka's order per Genesys topic and key (the
    // frames of one Genesys topic all came over one socket).
    let order: HashMap<String, usize> = sent_events(sim)
        .into_iter()
        .enumerate()
        .map(|(i, frame)| (frame, i))
        .collect();
    let mut by_key: HashMap<(String, String), Vec<usize>> = HashMap::new();
    let mut seen = HashSet::new();
    for record in &landed {
        if !seen.insert(record.value.clone()) {
            continue; // a duplicate: its first copy is what counts
        }
        let Some(&position) = order.get(&record.value) else {
            continue;
        };
        let topic = record
            .header("genesys-topic")
            .unwrap_or_default()
            .to_string();
        let key = record.key.clone().unwrap_or_default();
        by_key.entry((topic, key)).or_default().push(position);
    }
    let mut out_of_order = Vec::new();
    for (key, positions) in &by_key {
        if positions.windows(2).any(|pair| pair[0] > pair[1]) {
            out_of_order.push((key.clone(), positions.clone()));
        }
    }
    let several = by_key.values().filter(|p| p.len() > 1).count();
    assert!(several > 10, "keys with several events: {several}");
    assert!(
        out_of_order.is_empty(),
        "{} keys whose events reached Kafka out of order: {out_of_order:?}",
        out_of_order.len()
    );
    assert_eq!(
        bridge.metric("genesys_bridge_dead_letters_total{reason=\"file\"}"),
        0.0,
        "an outage never counts towards the attempt bound"
    );
    eprintln!(
        "{what}: {} timed out, {} purges, {} keys in order, {} duplicates",
        bridge.metric("genesys_bridge_events_failed_total{reason=\"messagetimedout\"}"),
        bridge.metric("genesys_bridge_kafka_producer_purges_total"),
        by_key.len(),
        landed.len() - seen.len()
    );
}

/// #14 defect 2, the partial case: a broker slower than `message.timeout.ms` for a while, then
/// fast again. Records in flight time out while the ones produced after it recovered go
/// through at once, so a retry that goes out on its own overtakes nothing only if newer records
/// of its key wait behind it. Before, they did not: on the producer before the rewrite (4d60465)
/// 93 keys had events out of order in Kafka.
#[test]
fn per_key_order_holds_when_a_slow_broker_times_records_out_and_recovers() {
    let (mock, sim, bridge, _dir) = streaming_on_a_mock_cluster(1500);
    let brokers = mock.bootstrap_servers();
    for round in 0..3 {
        mock.broker_round_trip_time(1, Duration::from_millis(2500))
            .unwrap();
        let timed_out =
            bridge.metric("genesys_bridge_events_failed_total{reason=\"messagetimedout\"}");
        wait_until(
            &format!("records time out (round {round})"),
            Duration::from_secs(30),
            || {
                bridge.metric("genesys_bridge_events_failed_total{reason=\"messagetimedout\"}")
                    >= timed_out + 10.0
            },
        );
        mock.broker_round_trip_time(1, Duration::ZERO).unwrap();
        let produced = bridge.metric("genesys_bridge_events_produced_total");
        wait_until(
            &format!("traffic after the slow spell (round {round})"),
            Duration::from_secs(30),
            || bridge.metric("genesys_bridge_events_produced_total") > produced + 50.0,
        );
    }
    sim.faults().silence(Target::All, None);
    assert_per_key_order(&bridge, &sim, &brokers, "slow broker, 3 rounds");
}

/// #14 defect 4: a dead-letter file that cannot be written acknowledged (lost) the record.
/// Now the record stays in the spool, also across a SIGKILL, and lands in the file once the
/// path works.
#[test]
fn a_dead_letter_file_that_cannot_be_written_keeps_the_record_until_it_can() {
    let kafka = Tansu::start();
    kafka.create_topics(&TEST_TOPICS, 1);
    let sim = sim(4.0);
    let dir = tempfile::tempdir().unwrap();
    // A regular file where the dead-letter file's directory should be: every open fails
    // (ENOTDIR), for root too.
    let blocked = dir.path().join("blocked");
    std::fs::write(&blocked, b"not a directory").unwrap();
    let dead_letters = blocked.join("dead.jsonl");
    let config = test_config(&sim.base_url(), &kafka.brokers(), EXTRA)
        .replace("dead_letter_topic = \"deadletter\"\n", "")
        .replace(
            "status_topic = \"status\"\n",
            &format!(
                "status_topic = \"status\"\ndead_letter_file = \"{}\"\n",
                dead_letters.display()
            ),
        );
    assert!(!config.contains("dead_letter_topic"));
    let mut bridge = Bridge::start(dir.path(), &config, &[]);
    bridge.wait_ready(Duration::from_secs(30));
    wait_until("streaming into Kafka", Duration::from_secs(30), || {
        bridge.metric("genesys_bridge_events_produced_total") > 10.0
    });
    sim.faults()
        .malformed(Target::All, MalformedKind::InvalidJson, None);
    wait_until(
        "the dead-letter file write fails",
        Duration::from_secs(30),
        || bridge.metric("genesys_bridge_dead_letters_total{reason=\"file_failed\"}") >= 1.0,
    );
    let produced = bridge.metric("genesys_bridge_events_produced_total");
    wait_until("the stream goes on", Duration::from_secs(30), || {
        bridge.metric("genesys_bridge_events_produced_total") > produced + 10.0
    });
    assert!(
        bridge.status()["spool"]["records"].as_u64().unwrap() > 10,
        "the committed position waits at the dead letter: {}",
        bridge.status()["spool"]
    );
    // A crash while the file still fails: the record is still in the spool after it.
    bridge.kill();
    bridge.restart(&[]);
    bridge.wait_ready(Duration::from_secs(30));
    wait_until(
        "the restarted bridge fails to write it too",
        Duration::from_secs(30),
        || bridge.metric("genesys_bridge_dead_letters_total{reason=\"file_failed\"}") >= 1.0,
    );
    std::fs::remove_file(&blocked).unwrap();
    std::fs::create_dir(&blocked).unwrap();
    wait_until(
        "the dead letter is in the file",
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(&dead_letters)
                .map(|text| text.lines().any(|l| l.contains("malformed frame")))
                .unwrap_or(false)
        },
    );
    wait_until(
        "the committed position moves past it",
        Duration::from_secs(30),
        || bridge.status()["spool"]["records"].as_u64().unwrap() < 10,
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&dead_letters)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "it holds customer data");
}

/// #14 defect 6: up to `max_in_flight` (10,000) copied records were in flight; with 1 MiB
/// frames during an outage librdkafka held hundreds of MiB. Now in-flight bytes are bounded
/// too, peak RSS stays far below what was spooled, and everything lands afterwards.
#[test]
fn one_mib_frames_during_an_outage_keep_memory_under_the_in_flight_bound() {
    const FRAMES: usize = 150;
    const FRAME_BYTES: usize = 1 << 20;
    let mut kafka = Tansu::start();
    kafka.create_topics(&TEST_TOPICS, 3);
    let sim = sim(2.0);
    let dir = tempfile::tempdir().unwrap();
    let config = with_property(
        &test_config(&sim.base_url(), &kafka.brokers(), EXTRA),
        "\"message.max.bytes\" = \"4194304\"",
    )
    .replace("max_bytes = 67108864", "max_bytes = 1073741824")
    .replace(
        "status_topic = \"status\"\n",
        "status_topic = \"status\"\nmax_in_flight_bytes = 8388608\n",
    );
    assert!(config.contains("max_in_flight_bytes = 8388608"));
    let bridge = Bridge::start(dir.path(), &config, &[]);
    bridge.wait_ready(Duration::from_secs(30));
    wait_until("streaming into Kafka", Duration::from_secs(30), || {
        bridge.metric("genesys_bridge_events_produced_total") > 5.0
    });
    let before_kib = peak_rss_kib(bridge.pid());
    kafka.stop();
    let spooled = bridge.metric("genesys_bridge_events_spooled_total");
    let mut sent = 0;
    for _ in 0..FRAMES {
        sent += sim
            .faults()
            .malformed(Target::All, MalformedKind::Oversized, Some(FRAME_BYTES))
            .len();
    }
    wait_until(
        "the large frames are in the spool",
        Duration::from_secs(120),
        || bridge.metric("genesys_bridge_events_spooled_total") >= spooled + sent as f64,
    );
    wait_until(
        "the producer holds what the bound allows",
        Duration::from_secs(30),
        || bridge.metric("genesys_bridge_kafka_in_flight_bytes") >= 7.0 * FRAME_BYTES as f64,
    );
    let in_flight_bytes = bridge.metric("genesys_bridge_kafka_in_flight_bytes");
    let peak_kib = peak_rss_kib(bridge.pid());
    let spooled_mib = (sent * FRAME_BYTES) >> 20;
    eprintln!(
        "{sent} frames of 1 MiB ({spooled_mib} MiB) during an outage: in flight {:.1} MiB, peak RSS {} MiB (before the outage {} MiB)",
        in_flight_bytes / 1048576.0,
        peak_kib / 1024,
        before_kib / 1024
    );
    assert!(
        in_flight_bytes <= (8 << 20) as f64 + FRAME_BYTES as f64 * 1.1,
        "in flight {in_flight_bytes} bytes"
    );
    assert!(
        peak_kib < before_kib + 80 * 1024,
        "peak RSS {peak_kib} KiB, {before_kib} KiB before {spooled_mib} MiB were spooled"
    );
    kafka.restart();
    sim.faults().silence(Target::All, None);
    wait_all_delivered(&sim, &kafka.brokers(), Duration::from_secs(180));
}

/// #14 defect 5: a fatal producer error that repeats (here InitProducerId refused with
/// CLUSTER_AUTHORIZATION_FAILED, as with a missing idempotent-write ACL) made the process exit
/// 70 within seconds and stopped Genesys ingestion too. Now, for two minutes of it: the
/// process is alive, the sockets stream into the spool, `/readyz` and the metrics say Kafka
/// refuses the producer; once Kafka accepts it, everything is delivered.
#[test]
fn a_fatal_producer_error_for_two_minutes_keeps_the_bridge_alive_and_loses_nothing() {
    // MockCluster keeps about 5 MB per partition: a low rate and three partitions keep all of
    // it.
    let mock: MockCluster<'static, DefaultProducerContext> = MockCluster::new(1).unwrap();
    for topic in TEST_TOPICS {
        mock.create_topic(topic, 3, 1).unwrap();
    }
    let refused = [RDKafkaRespErr::RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED; 10_000];
    mock.request_errors(RDKafkaApiKey::InitProducerId, &refused);
    let brokers = mock.bootstrap_servers();
    let sim = sim(1.0);
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(&sim.base_url(), &brokers, EXTRA).replace(
        "status_topic = \"status\"\n",
        "status_topic = \"status\"\nrestart_backoff = { min = \"500ms\", max = \"5s\", jitter = 0.2 }\nexit_after_failing_for = \"10m\"\n",
    );
    let bridge = Bridge::start(dir.path(), &config, &[]);
    wait_until(
        "Kafka refuses the producer",
        Duration::from_secs(60),
        || bridge.metric("genesys_bridge_kafka_producer_restarts_total") >= 2.0,
    );
    let failing_at = Instant::now();
    let spooled = bridge.metric("genesys_bridge_events_spooled_total");
    let mut checks = 0;
    while failing_at.elapsed() < Duration::from_secs(120) {
        assert!(is_running(bridge.pid()), "the process is alive");
        assert_eq!(bridge.get("/livez").map(|r| r.0), Some(200));
        let (code, body) = bridge.get("/readyz").expect("readyz answers");
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("refuses the producer"), "{body}");
        assert_eq!(bridge.metric("genesys_bridge_kafka_producer_failing"), 1.0);
        checks += 1;
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(checks > 60);
    let restarts = bridge.metric("genesys_bridge_kafka_producer_restarts_total");
    assert!(
        restarts >= 10.0,
        "a fresh producer after each failure: {restarts}"
    );
    assert!(
        bridge.metric("genesys_bridge_events_spooled_total") > spooled + 50.0,
        "the sockets kept streaming into the spool"
    );
    assert_eq!(bridge.metric("genesys_bridge_events_produced_total"), 0.0);
    assert!(bridge.status()["kafka"]["fatal_error"]
        .as_str()
        .is_some_and(|e| e.to_lowercase().contains("authoriz")));

    mock.clear_request_errors(RDKafkaApiKey::InitProducerId);
    wait_until("ready again", Duration::from_secs(60), || {
        bridge.get("/readyz").is_some_and(|(code, _)| code == 200)
    });
    assert_eq!(bridge.metric("genesys_bridge_kafka_producer_failing"), 0.0);
    sim.faults().silence(Target::All, None);
    wait_all_delivered(&sim, &brokers, Duration::from_secs(120));
    eprintln!(
        "fatal producer error for 2 min: {restarts} fresh producers, then everything delivered"
    );
}

/// A delivery Kafka refuses for good (here: the broker answers a produce request with
/// TOPIC_AUTHORIZATION_FAILED) goes to the dead-letter topic with the topic it was routed to,
/// taken from the failed message, and the stream goes on.
#[test]
fn a_delivery_kafka_refuses_for_good_is_dead_lettered_with_its_routed_topic() {
    let mock: MockCluster<'static, DefaultProducerContext> = MockCluster::new(1).unwrap();
    for topic in TEST_TOPICS {
        mock.create_topic(topic, 3, 1).unwrap();
    }
    let brokers = mock.bootstrap_servers();
    let sim = sim(12.0);
    let dir = tempfile::tempdir().unwrap();
    let bridge = Bridge::start(
        dir.path(),
        &test_config(&sim.base_url(), &brokers, EXTRA),
        &[],
    );
    bridge.wait_ready(Duration::from_secs(30));
    wait_until("streaming into Kafka", Duration::from_secs(30), || {
        bridge.metric("genesys_bridge_events_produced_total") > 20.0
    });
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
    );
    wait_until(
        "the refused records are on the dead-letter topic",
        Duration::from_secs(30),
        || {
            consume_all(&brokers, &["deadletter"]).iter().any(|r| {
                r.header("dead-letter-reason")
                    .is_some_and(|reason| reason.to_lowercase().contains("authoriz"))
                    && r.header("routed-topic").is_some_and(|topic| {
                        [
                            "events",
                            "user-conversations",
                            "queue-conversations",
                            "status",
                        ]
                        .contains(&topic)
                    })
            })
        },
    );
    let produced = bridge.metric("genesys_bridge_events_produced_total");
    wait_until("the stream goes on", Duration::from_secs(30), || {
        bridge.metric("genesys_bridge_events_produced_total") > produced + 20.0
    });
    // Every event the simulator sent is in Kafka: on its topic or, refused, as a dead letter.
    sim.faults().silence(Target::All, None);
    let sent: HashSet<String> = sim
        .ledger()
        .into_iter()
        .filter(|e| e.kind == genesys_sim::FrameKind::Event)
        .map(|e| e.frame.to_string())
        .collect();
    wait_until("every event is in Kafka", Duration::from_secs(60), || {
        let landed: HashSet<String> = consume_all(
            &brokers,
            &[
                "events",
                "user-conversations",
                "queue-conversations",
                "deadletter",
            ],
        )
        .into_iter()
        .map(|r| r.value)
        .collect();
        sent.iter().all(|frame| landed.contains(frame))
    });
}
