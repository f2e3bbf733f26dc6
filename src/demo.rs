//! `demo`: the simulator, an embedded Kafka (librdkafka's MockCluster) and the bridge in one
//! process. A maintenance close and a Kafka hiccup are injected along the way; at the end the
//! simulator's ledger is compared with what Kafka holds.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use genesys_sim::{ConversationTruth, FrameKind, SimConfig, SimHandle, Simulator};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::{Message, TopicPartitionList};

use crate::config::{Config, Credentials};
use genesys_actors::secret::Secret;

/// Kafka topics the demo routes to.
const TOPICS: [&str; 6] = [
    "genesys.queue-conversations",
    "genesys.user-conversations",
    "genesys.queue-observations",
    "genesys.bridge.status",
    "genesys.deadletter",
    LIFECYCLE_TOPIC,
];

/// When the demo silenced the simulator's sockets (epoch ms): conversations that ended later were
/// not streamed to the bridge.
static QUIESCED_MS: AtomicI64 = AtomicI64::new(0);

/// The demo's `[lifecycle] topic`.
const LIFECYCLE_TOPIC: &str = "genesys.conversations.lifecycle";

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// How long to stream before the summary (e.g. 20s, 2m).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// A real Kafka (`host:port,…`) instead of the embedded one; the demo's topics must exist.
    #[arg(long)]
    brokers: Option<String>,
    /// Where /metrics, /status, /livez and /readyz are served.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// Simulated conversations arriving per second.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    #[arg(long, default_value_t = 5)]
    queues: usize,
    #[arg(long, default_value_t = 20)]
    agents: usize,
    /// Spool directory (default: a fresh temporary directory).
    #[arg(long)]
    spool_dir: Option<PathBuf>,
    /// Skip the injected faults.
    #[arg(long)]
    no_faults: bool,
}

pub fn demo(args: DemoArgs) -> ExitCode {
    crate::logging::init(
        crate::config::LogFormat::Text,
        "warn,genesys_kafka_bridge=info",
    );
    match run_demo(args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("demo failed: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let sim = Arc::new(Simulator::start(SimConfig {
        queues: args.queues,
        agents: args.agents,
        rate_per_sec: args.rate,
        heartbeat_interval: Duration::from_secs(5),
        socket_closing_grace: Duration::from_secs(3),
        branching: genesys_sim::Branching {
            ivr_only: 0.1,
            abandon: 0.05,
            stale_snapshot: 0.02,
            ..Default::default()
        },
        ..SimConfig::default()
    })?);
    let mock = match &args.brokers {
        Some(_) => None,
        None => {
            let cluster = MockCluster::new(3)?;
            for topic in TOPICS {
                cluster.create_topic(topic, 3, 1)?;
            }
            Some(Rc::new(cluster))
        }
    };
    let brokers = match (&args.brokers, &mock) {
        (Some(brokers), _) => brokers.clone(),
        (None, Some(cluster)) => cluster.bootstrap_servers(),
        (None, None) => unreachable!("a mock exists when no brokers are given"),
    };
    let temp = tempfile::TempDir::new()?;
    let spool_dir = args
        .spool_dir
        .clone()
        .unwrap_or_else(|| temp.path().join("spool"));
    let config = demo_config(&sim, &brokers, &spool_dir, args.http)?;
    let settings = config.bridge_settings(Credentials {
        client_id: "sim-client".into(),
        client_secret: Secret::new("sim-secret"),
    })?;
    println!(
        "genesys-kafka-bridge demo: simulator at {}, Kafka at {}",
        sim.base_url(),
        if mock.is_some() {
            "embedded MockCluster"
        } else {
            brokers.as_str()
        }
    );

    let started = Instant::now();
    let driver_sim = sim.clone();
    let driver_mock = mock.clone();
    let duration = args.duration;
    let faults = !args.no_faults;
    let code = crate::run::run_bridge(
        &config,
        settings,
        Some(Box::new(move |running: crate::run::Running| {
            println!(
                "  metrics: http://{0}/metrics  status: http://{0}/status  (Ctrl-C stops early)",
                running.http_addr
            );
            actix_rt::spawn(drive(running, driver_sim, driver_mock, duration, faults));
        })),
    );
    let elapsed = started.elapsed();
    let stopped_ms = match QUIESCED_MS.load(Ordering::Relaxed) {
        0 => chrono::Utc::now().timestamp_millis(),
        at => at,
    };
    eprintln!();
    summary(&sim, &brokers, elapsed, stopped_ms)?;
    drop(mock);
    Ok(code)
}

fn demo_config(
    sim: &SimHandle,
    brokers: &str,
    spool: &std::path::Path,
    http: SocketAddr,
) -> anyhow::Result<Config> {
    let text = format!(
        r#"
[genesys]
api_url = "{api}"
login_url = "{api}"

[topics]
templates = [
  {{ template = "v2.routing.queues.{{id}}.conversations" }},
  {{ template = "v2.users.{{id}}.conversations" }},
  {{ template = "v2.analytics.queues.{{id}}.observations" }},
]

[kafka]
default_topic = "genesys.queue-conversations"
status_topic = "genesys.bridge.status"
dead_letter_topic = "genesys.deadletter"
routes = [
  {{ pattern = "v2.users.*.conversations", topic = "genesys.user-conversations" }},
  {{ pattern = "v2.analytics.queues.*.observations", topic = "genesys.queue-observations" }},
]
[kafka.properties]
"bootstrap.servers" = "{brokers}"

[spool]
dir = "{spool}"
max_bytes = 268435456
segment_bytes = 8388608
fsync_interval = "200ms"

[socket]
ping_interval = "2s"
pong_timeout = "1s"
dead_after = "8s"

[http]
listen = "{http}"

[supervisor]
shutdown_deadline = "10s"

[lifecycle]
enabled = true
topic = "{lifecycle_topic}"
checkpoint_interval = "1s"
remember_ended = "1h"
reconcile_interval = "10s"
reconcile_settle = "2s"
reconcile_quiet_after = "30s"
"#,
        api = sim.base_url(),
        spool = spool.display(),
        lifecycle_topic = LIFECYCLE_TOPIC,
    );
    Ok(Config::parse(&text, std::path::Path::new("<demo>"))?)
}

async fn drive(
    running: crate::run::Running,
    sim: Arc<SimHandle>,
    mock: Option<Rc<MockCluster<'static, DefaultProducerContext>>>,
    duration: Duration,
    faults: bool,
) {
    let started = Instant::now();
    let mut closing_done = !faults;
    let mut hiccup_done = !faults;
    let stop = tokio::time::sleep(duration);
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = &mut ctrl_c => break,
            _ = tick.tick() => {}
        }
        let at = started.elapsed();
        if !closing_done && at >= duration / 3 {
            closing_done = true;
            let channels = sim.faults().socket_closing(genesys_sim::Target::All, None);
            eprintln!(
                "\n>> injected: Genesys maintenance (socket_closing) on {} channel(s)",
                channels.len()
            );
        }
        if !hiccup_done && at >= duration / 2 {
            hiccup_done = true;
            if let Some(mock) = &mock {
                for broker in 1..=3 {
                    let _ = mock.broker_round_trip_time(broker, Duration::from_secs(2));
                }
                eprintln!("\n>> injected: Kafka slowdown (2 s round trips for 4 s)");
                let mock = mock.clone();
                actix_rt::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(4)).await;
                    for broker in 1..=3 {
                        let _ = mock.broker_round_trip_time(broker, Duration::ZERO);
                    }
                    eprintln!("\n>> Kafka back to normal");
                });
            }
        }
        status_line(&running, at);
    }
    // Quiesce: no new frames, then give the sockets a moment to read what is in flight.
    QUIESCED_MS.store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
    sim.faults().silence(genesys_sim::Target::All, None);
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.shutdown(Duration::from_secs(10)).await;
    actix::System::current().stop_with_code(0);
}

fn status_line(running: &crate::run::Running, at: Duration) {
    let snapshot = running.health.snapshot();
    let metrics = &running.metrics;
    let received: u64 = metrics.events_appended.get();
    let produced = metrics.events_produced.get();
    let reconnects: u64 = snapshot
        .shards
        .iter()
        .map(|s| s.connects.saturating_sub(1))
        .sum();
    let rollovers: u64 = snapshot.shards.iter().map(|s| s.rollovers).sum();
    let rate = received as f64 / at.as_secs_f64().max(1.0);
    eprint!(
        "\r[{:>4}s] spooled {:>7} ({:>6.0}/s)  produced {:>7}  spool {:>6} unacked  reconnects {}  rollovers {}  gaps {}   ",
        at.as_secs(),
        received,
        rate,
        produced,
        snapshot.spool.records,
        reconnects,
        rollovers,
        metrics.gaps.get(),
    );
}

/// Reads every record of the demo's topics.
fn consume_all(brokers: &str) -> anyhow::Result<HashMap<String, Vec<Vec<u8>>>> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "genesys-bridge-demo")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    let mut expected = 0i64;
    for topic in TOPICS {
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(5))?;
        for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
            let (low, high) =
                consumer.fetch_watermarks(topic, partition.id(), Duration::from_secs(5))?;
            expected += high - low;
            assignment.add_partition_offset(topic, partition.id(), rdkafka::Offset::Beginning)?;
        }
    }
    consumer.assign(&assignment)?;
    let mut records: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
    let mut got = 0i64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while got < expected && Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let message = message?;
            got += 1;
            records
                .entry(message.topic().to_string())
                .or_default()
                .push(message.payload().unwrap_or_default().to_vec());
        }
    }
    Ok(records)
}

fn summary(
    sim: &SimHandle,
    brokers: &str,
    elapsed: Duration,
    stopped_ms: i64,
) -> anyhow::Result<()> {
    let mut sent: HashMap<String, usize> = HashMap::new();
    for entry in sim
        .ledger()
        .into_iter()
        .filter(|e| e.kind == FrameKind::Event)
    {
        sent.entry(entry.frame.to_string()).or_insert(0);
    }
    let records = consume_all(brokers)?;
    let mut in_kafka: HashMap<String, usize> = HashMap::new();
    let mut per_topic: BTreeMap<String, usize> = BTreeMap::new();
    for (topic, values) in &records {
        per_topic.insert(topic.clone(), values.len());
        if topic == "genesys.bridge.status"
            || topic == "genesys.deadletter"
            || topic == LIFECYCLE_TOPIC
        {
            continue;
        }
        for value in values {
            *in_kafka
                .entry(String::from_utf8_lossy(value).into_owned())
                .or_insert(0) += 1;
        }
    }
    let missing = sent
        .keys()
        .filter(|frame| !in_kafka.contains_key(*frame))
        .count();

    let duplicates: usize = in_kafka.values().map(|n| n.saturating_sub(1)).sum();
    println!("\nSummary after {:.1} s", elapsed.as_secs_f64());
    println!(
        "  {:<40} {:>9}",
        "events sent by the simulator (unique)",
        sent.len()
    );
    for (topic, count) in &per_topic {
        println!("  {:<40} {:>9}", format!("records in {topic}"), count);
    }
    println!("  {:<40} {:>9}", "events missing from Kafka", missing);
    println!("  {:<40} {:>9}", "duplicate records in Kafka", duplicates);
    if missing == 0 {
        println!("  every event the simulator sent is in Kafka.");
    }
    lifecycle_summary(
        sim,
        records.get(LIFECYCLE_TOPIC).map_or(&[][..], |v| &v[..]),
        stopped_ms,
    );
    Ok(())
}

/// The lifecycle topic against the simulator's ground truth (conversations the model ended
/// while the bridge ran): how many got their `conversation.ended`, how many with the model's start
/// and end to the millisecond, and how many of the rest ended in the IVR (no queue or user topic
/// carries those: reconciliation reports them after `reconcile_interval`).
fn lifecycle_summary(sim: &SimHandle, values: &[Vec<u8>], stopped_ms: i64) {
    let ms = |v: &serde_json::Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str()?)
            .ok()
            .map(|t| t.timestamp_millis())
    };
    let mut started: HashMap<String, serde_json::Value> = HashMap::new();
    let mut ended: HashMap<String, serde_json::Value> = HashMap::new();
    for value in values {
        let Ok(record) = serde_json::from_slice::<serde_json::Value>(value) else {
            continue;
        };
        let id = record["conversationId"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        match record["type"].as_str() {
            Some("conversation.started") => started.insert(id, record),
            Some("conversation.ended") => ended.insert(id, record),
            _ => None,
        };
    }
    let truth = sim.conversations();
    let model_ended: Vec<_> = truth
        .iter()
        .filter(|c| c.end_ms.is_some_and(|end| end < stopped_ms))
        .collect();
    let (with_end, without): (Vec<&ConversationTruth>, Vec<&ConversationTruth>) = model_ended
        .iter()
        .copied()
        .partition(|c| ended.contains_key(&c.id));
    let exact = with_end
        .iter()
        .filter(|c| {
            let r = &ended[&c.id];
            ms(&r["startTime"]) == Some(c.start_ms) && ms(&r["endTime"]) == c.end_ms
        })
        .count();
    let ivr_only = without.iter().filter(|c| c.ivr_only).count();
    let row = |what: &str, n: usize| println!("  {what:<40} {n:>9}");
    row("conversation.started records (distinct)", started.len());
    row(
        "conversations the model ended (streamed)",
        model_ended.len(),
    );
    row("  with conversation.ended in Kafka", with_end.len());
    row("  of those, with the model's times", exact);
    row("  not yet, ended in the IVR", ivr_only);
}
