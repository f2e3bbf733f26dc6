//! The real binary against the simulator and a real Kafka broker (tansu): every event the
//! simulator's ledger says it sent arrives exactly once, with the right key and headers, in
//! per-key order.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use genesys_sim::{FrameKind, SimConfig, Target};
use support::*;

const TEMPLATES: &str = r#"
[topics]
templates = [
  { template = "v2.routing.queues.{id}.conversations" },
  { template = "v2.users.{id}.conversations" },
]
[socket]
ping_interval = "500ms"
dead_after = "3s"
"#;

#[test]
fn every_event_arrives_once_with_key_headers_and_order() {
    let Scenario {
        bridge,
        sim,
        kafka,
        dir: _dir,
    } = Scenario::start(
        SimConfig {
            queues: 5,
            agents: 20,
            rate_per_sec: 8.0,
            heartbeat_interval: Duration::from_secs(1),
            ..SimConfig::default()
        },
        3,
        TEMPLATES,
    );
    wait_until("400 events sent", Duration::from_secs(90), || {
        sim.ledger_count(|e| e.kind == FrameKind::Event) >= 400
    });
    // Quiesce: the simulator sends nothing more; then everything it sent must land. A frame
    // being handed to the socket as the silence began enters the ledger just after it, so the
    // ledger is read again once Kafka caught up with it.
    sim.faults().silence(Target::All, None);
    let topics = ["user-conversations", "queue-conversations", "events"];
    // Both legs' channels get every event: the merged stream is each event once, in the order
    // of its first hand-over.
    let events = || -> Vec<_> {
        let mut seen = std::collections::HashSet::new();
        sim.ledger()
            .into_iter()
            .filter(|e| e.kind == FrameKind::Event)
            .filter(|e| seen.insert(e.frame.clone()))
            .collect()
    };
    wait_until(
        "every sent event is in Kafka",
        Duration::from_secs(60),
        || consume_all(&kafka.brokers(), &topics).len() >= events().len(),
    );
    let sent = events();
    let landed = consume_all(&kafka.brokers(), &topics);

    // Exactly once.
    let mut count: HashMap<&str, usize> = HashMap::new();
    for record in &landed {
        *count.entry(record.value.as_str()).or_default() += 1;
    }
    for entry in &sent {
        assert_eq!(
            count.get(&*entry.frame).copied().unwrap_or(0),
            1,
            "event {} must be in Kafka exactly once",
            entry.correlation_id.as_deref().unwrap_or("?")
        );
    }
    assert_eq!(landed.len(), sent.len(), "nothing extra in Kafka");

    // Routing, key and headers.
    let by_value: HashMap<&str, &KafkaRecord> =
        landed.iter().map(|r| (r.value.as_str(), r)).collect();
    for entry in &sent {
        let record = by_value[&*entry.frame];
        let envelope: serde_json::Value = serde_json::from_str(&entry.frame).unwrap();
        let expected_topic = if entry.topic.starts_with("v2.users.") {
            "user-conversations"
        } else {
            "queue-conversations"
        };
        assert_eq!(record.topic, expected_topic, "{}", entry.topic);
        assert_eq!(
            record.key.as_deref(),
            envelope["eventBody"]["id"].as_str(),
            "key is the conversation id"
        );
        assert_eq!(record.header("genesys-topic"), Some(entry.topic.as_str()));
        assert_eq!(
            record.header("genesys-correlation-id"),
            entry.correlation_id.as_deref()
        );
        let received: i64 = record.header("received-at-ms").unwrap().parse().unwrap();
        let sent_ms = entry.sent_at.timestamp_millis();
        assert!(
            received >= sent_ms - 5 && received < sent_ms + 30_000,
            "receive time {received} vs sent {sent_ms}"
        );
        assert_eq!(record.header("shard"), Some("0"));
    }

    // Per-key order: for one key on one Genesys topic, Kafka's order is the ledger's order.
    let mut ledger_order: BTreeMap<(String, String), Vec<&str>> = BTreeMap::new();
    for entry in &sent {
        let record = by_value[&*entry.frame];
        ledger_order
            .entry((entry.topic.clone(), record.key.clone().unwrap_or_default()))
            .or_default()
            .push(&entry.frame);
    }
    let mut kafka_order: BTreeMap<(String, String), Vec<&str>> = BTreeMap::new();
    for record in &landed {
        kafka_order
            .entry((
                record.header("genesys-topic").unwrap().to_string(),
                record.key.clone().unwrap_or_default(),
            ))
            .or_default()
            .push(&record.value);
    }
    assert_eq!(ledger_order, kafka_order, "per-key order preserved");

    // A lifecycle record on the status topic says the channel was created.
    let status = consume_all(&kafka.brokers(), &["status"]);
    assert!(
        status
            .iter()
            .any(|r| r.value.contains("\"channel_created\"")),
        "status topic has the channel_created record"
    );
    // Observability agrees with Kafka.
    assert_eq!(
        bridge.metric("genesys_bridge_events_produced_total") as usize,
        sent.len() + status.len()
    );

    // The spool kept, beside every event, where its topic, key and CorrelationId are (so the
    // producer did not parse it again): the kind byte of each frame has the index flag.
    let (events_spooled, indexed) = spooled_event_frames(&bridge.dir.join("spool"));
    assert!(
        events_spooled >= sent.len(),
        "{events_spooled} events in the spool"
    );
    assert_eq!(indexed, events_spooled, "every spooled event has its index");
}

/// Event frames in the spool's segment files, and how many of them carry an event index (the
/// frame layout of `actors/src/spool/record.rs`: length prefix, CRC, seq, time, shard, then
/// the kind byte, whose bit 7 flags an index).
fn spooled_event_frames(spool: &std::path::Path) -> (usize, usize) {
    use genesys_actors::spool::{FORMAT_VERSION, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES};
    let (mut events, mut indexed) = (0, 0);
    for entry in std::fs::read_dir(spool).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|ext| ext != "seg") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes[4], FORMAT_VERSION, "{}", path.display());
        let mut at = SEGMENT_HEADER_BYTES;
        while at + RECORD_HEADER_BYTES <= bytes.len() {
            let body_len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            let kind = bytes[at + RECORD_HEADER_BYTES - 1];
            if kind & 0x7f == 0 {
                events += 1;
                indexed += usize::from(kind & 0x80 != 0);
            }
            at += 8 + body_len;
        }
    }
    (events, indexed)
}
