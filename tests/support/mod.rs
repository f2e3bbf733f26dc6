//! Test support: a real Kafka broker (tansu) per test, the real bridge binary as a process, the
//! simulator in-process, and waiting on conditions instead of sleeping.
#![allow(dead_code, unused_imports)]

pub mod kafka;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use kafka::{consume_all, KafkaRecord, Tansu};

/// A free loopback port (bound, read, released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Polls `condition` until it holds or `timeout` passes; panics with `what` on timeout.
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for: {what}");
}

/// The bridge binary, running.
pub struct Bridge {
    child: Option<Child>,
    pub http: String,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    logs: Arc<Mutex<Vec<String>>>,
}

pub const BIN: &str = env!("CARGO_BIN_EXE_genesys-kafka-bridge");

impl Bridge {
    /// Starts `run --config` with `config` (TOML; `{http}` and `{spool}` are filled in) and the
    /// simulator's default credentials unless `env` overrides them.
    pub fn start(dir: &Path, config: &str, env: &[(&str, &str)]) -> Bridge {
        let port = free_port();
        let http = format!("127.0.0.1:{port}");
        let spool = dir.join("spool");
        let text = config
            .replace("{http}", &http)
            .replace("{spool}", &spool.display().to_string());
        let config_path = dir.join("bridge.toml");
        std::fs::write(&config_path, text).unwrap();
        let mut bridge = Bridge {
            child: None,
            http,
            dir: dir.to_path_buf(),
            config_path,
            logs: Arc::new(Mutex::new(Vec::new())),
        };
        bridge.spawn(env);
        bridge
    }

    fn spawn(&mut self, env: &[(&str, &str)]) {
        let mut command = Command::new(BIN);
        command
            .args(["run", "--config"])
            .arg(&self.config_path)
            .env("GENESYS_CLIENT_ID", "sim-client")
            .env("GENESYS_CLIENT_SECRET", "sim-secret")
            .env("RUST_LOG", "info,genesys_actors=debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        die_with_parent(&mut command);
        let mut child = command.spawn().expect("bridge binary starts");
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let logs = self.logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    logs.lock().unwrap().push(line);
                }
            });
        }
        self.child = Some(child);
    }

    /// Starts the same bridge again (same config, same spool).
    pub fn restart(&mut self, env: &[(&str, &str)]) {
        self.kill();
        self.spawn(env);
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let url = format!("http://{}{path}", self.http);
        match ureq::get(&url).timeout(Duration::from_secs(10)).call() {
            Ok(response) => Some((
                response.status(),
                response.into_string().unwrap_or_default(),
            )),
            Err(ureq::Error::Status(code, response)) => {
                Some((code, response.into_string().unwrap_or_default()))
            }
            Err(_) => None,
        }
    }

    pub fn post(&self, path: &str) -> Option<u16> {
        let url = format!("http://{}{path}", self.http);
        match ureq::post(&url).timeout(Duration::from_secs(10)).call() {
            Ok(response) => Some(response.status()),
            Err(ureq::Error::Status(code, _)) => Some(code),
            Err(_) => None,
        }
    }

    pub fn status(&self) -> serde_json::Value {
        let (_, body) = self.get("/status").expect("/status answers");
        serde_json::from_str(&body).expect("/status is JSON")
    }

    /// The value of a Prometheus sample (`name{labels}` as printed), 0 if absent.
    pub fn metric(&self, sample: &str) -> f64 {
        let Some((_, body)) = self.get("/metrics") else {
            return 0.0;
        };
        body.lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.rsplit_once(' '))
            .filter(|(name, _)| *name == sample)
            .filter_map(|(_, value)| value.parse::<f64>().ok())
            .sum()
    }

    pub fn wait_ready(&self, timeout: Duration) {
        wait_until("bridge /readyz 200", timeout, || {
            matches!(self.get("/readyz"), Some((200, _)))
        });
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends a signal by name (TERM, KILL, STOP, CONT).
    pub fn signal(&self, name: &str) {
        signal(self.pid(), name);
    }

    /// Waits for the process to exit; its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("bridge did not exit within {timeout:?}");
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = self.logs();
            let path = std::env::temp_dir().join(format!(
                "genesys-bridge-test-{}-{}.log",
                std::process::id(),
                self.http.replace(':', "-")
            ));
            let _ = std::fs::write(&path, logs.join("\n"));
            eprintln!("---- bridge logs (all of them in {}) ----", path.display());
            for line in logs.iter().rev().take(40).rev() {
                eprintln!("{line}");
            }
        }
        self.kill();
    }
}

/// A child process killed by the test runner's timeout must not outlive it: the kernel
/// SIGKILLs the child when the test process dies.
pub fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and only changes this child's own death signal.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{name} {pid}");
}

/// A bridge config against `sim` and `brokers`, with short timings for tests.
pub fn test_config(api: &str, brokers: &str, extra: &str) -> String {
    format!(
        r#"
[genesys]
api_url = "{api}"
login_url = "{api}"
request_timeout = "5s"

[kafka]
default_topic = "events"
status_topic = "status"
dead_letter_topic = "deadletter"
routes = [
  {{ pattern = "v2.users.*.conversations", topic = "user-conversations" }},
  {{ pattern = "v2.routing.queues.*.conversations", topic = "queue-conversations" }},
]
[kafka.properties]
"bootstrap.servers" = "{brokers}"
"linger.ms" = "5"

[spool]
dir = "{{spool}}"
segment_bytes = 1048576
max_bytes = 67108864
fsync_interval = "50ms"

[http]
listen = "{{http}}"

[log]
format = "json"

[debug]
fault_injection = true

{extra}
"#
    )
}

/// A broker with the test topics, the simulator, and the bridge streaming from one into the
/// other (ready). Fields drop bridge first.
pub struct Scenario {
    pub bridge: Bridge,
    pub sim: genesys_sim::SimHandle,
    pub kafka: Tansu,
    pub dir: tempfile::TempDir,
}

impl Scenario {
    /// `extra` is appended to [`test_config`].
    pub fn start(sim: genesys_sim::SimConfig, partitions: u32, extra: &str) -> Scenario {
        let kafka = Tansu::start();
        kafka.create_topics(&TEST_TOPICS, partitions);
        let sim = genesys_sim::Simulator::start(sim).expect("simulator starts");
        let dir = tempfile::tempdir().unwrap();
        let config = test_config(&sim.base_url(), &kafka.brokers(), extra);
        let bridge = Bridge::start(dir.path(), &config, &[]);
        bridge.wait_ready(Duration::from_secs(30));
        Scenario {
            bridge,
            sim,
            kafka,
            dir,
        }
    }
}

/// The Kafka topics [`test_config`] routes to.
pub const TEST_TOPICS: [&str; 5] = [
    "events",
    "status",
    "deadletter",
    "user-conversations",
    "queue-conversations",
];

/// The topics the test configs' templates subscribe: every queue's and user's conversations.
pub fn conversation_topics(sim: &genesys_sim::SimHandle) -> std::collections::HashSet<String> {
    sim.queue_ids()
        .iter()
        .map(|id| format!("v2.routing.queues.{id}.conversations"))
        .chain(
            sim.user_ids()
                .iter()
                .map(|id| format!("v2.users.{id}.conversations")),
        )
        .collect()
}

/// The Kafka topics the conversation topics are routed to by [`test_config`].
pub const CONVERSATION_KAFKA_TOPICS: [&str; 2] = ["user-conversations", "queue-conversations"];

/// The published log (ground truth, independent of subscriptions) against Kafka.
pub struct Reconciled {
    /// Events published on the subscribed topics since the start seq.
    pub expected: usize,
    /// Of those, not in Kafka.
    pub missing: Vec<genesys_sim::PublishedEntry>,
    /// Of those, in Kafka.
    pub landed: Vec<genesys_sim::PublishedEntry>,
    /// Records in Kafka beyond what was published (a frame more often than it was published).
    pub duplicated: usize,
}

/// Compares every event published on `topics` with seq ≥ `from_seq` with what Kafka holds.
pub fn reconcile(
    sim: &genesys_sim::SimHandle,
    kafka: &Tansu,
    from_seq: u64,
    topics: &std::collections::HashSet<String>,
) -> Reconciled {
    reconcile_by(sim, kafka, from_seq, topics, |frame| frame.to_string())
}

/// [`reconcile`] with frames compared without their `metadata.CorrelationId`: for a simulator
/// that gives every channel its own (`correlation_per_channel`).
pub fn reconcile_without_correlation_ids(
    sim: &genesys_sim::SimHandle,
    kafka: &Tansu,
    from_seq: u64,
    topics: &std::collections::HashSet<String>,
) -> Reconciled {
    reconcile_by(sim, kafka, from_seq, topics, |frame| {
        let mut value: serde_json::Value = serde_json::from_str(frame).expect("a JSON frame");
        if let Some(metadata) = value.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            metadata.remove("CorrelationId");
        }
        value.to_string()
    })
}

fn reconcile_by(
    sim: &genesys_sim::SimHandle,
    kafka: &Tansu,
    from_seq: u64,
    topics: &std::collections::HashSet<String>,
    key: impl Fn(&str) -> String,
) -> Reconciled {
    use std::collections::HashMap;
    let published = sim.published();
    let keys: Vec<String> = published.iter().map(|e| key(&e.frame)).collect();
    let mut published_all: HashMap<&str, usize> = HashMap::new();
    for (entry, k) in published.iter().zip(&keys) {
        if topics.contains(&entry.topic) {
            *published_all.entry(k.as_str()).or_default() += 1;
        }
    }
    let records = consume_all(&kafka.brokers(), &CONVERSATION_KAFKA_TOPICS);
    let record_keys: Vec<String> = records.iter().map(|r| key(&r.value)).collect();
    let mut in_kafka: HashMap<&str, usize> = HashMap::new();
    for k in &record_keys {
        *in_kafka.entry(k.as_str()).or_default() += 1;
    }
    let since: Vec<(&genesys_sim::PublishedEntry, &str)> = published
        .iter()
        .zip(&keys)
        .filter(|(e, _)| e.seq >= from_seq && topics.contains(&e.topic))
        .map(|(e, k)| (e, k.as_str()))
        .collect();
    // The n-th copy of a frame published n times is missing if Kafka has fewer.
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (entry, k) in published.iter().zip(&keys) {
        if entry.seq < from_seq && topics.contains(&entry.topic) {
            *seen.entry(k.as_str()).or_default() += 1;
        }
    }
    let mut missing = Vec::new();
    let mut landed = Vec::new();
    for (entry, k) in &since {
        let nth = seen.entry(k).or_default();
        *nth += 1;
        if in_kafka.get(k).copied().unwrap_or(0) < *nth {
            missing.push((*entry).clone());
        } else {
            landed.push((*entry).clone());
        }
    }
    let duplicated = in_kafka
        .iter()
        .map(|(k, n)| n.saturating_sub(published_all.get(k).copied().unwrap_or(0)))
        .sum();
    Reconciled {
        expected: since.len(),
        missing,
        landed,
        duplicated,
    }
}

/// Stops new conversations, waits until the model published nothing for a while (running
/// conversations end), then until Kafka holds at least as many conversation records as were
/// published since `from_seq` (or `timeout`). Returns the seq after the last published event.
pub fn finish_traffic(
    sim: &genesys_sim::SimHandle,
    kafka: &Tansu,
    from_seq: u64,
    topics: &std::collections::HashSet<String>,
    timeout: Duration,
) {
    stop_traffic(sim);
    let expected = sim.published_count(|e| e.seq >= from_seq && topics.contains(&e.topic));
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if consume_all(&kafka.brokers(), &CONVERSATION_KAFKA_TOPICS).len() >= expected {
            return;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// The seq the next published event gets.
pub fn next_published_seq(sim: &genesys_sim::SimHandle) -> u64 {
    sim.published().last().map(|e| e.seq + 1).unwrap_or(0)
}

/// Gap records on the status topic: (shard, start ms, end ms, reason).
pub fn gap_records(kafka: &Tansu) -> Vec<(u64, i64, i64, String)> {
    consume_all(&kafka.brokers(), &["status"])
        .iter()
        .filter_map(|r| serde_json::from_str::<serde_json::Value>(&r.value).ok())
        .filter(|v| v["type"] == "gap")
        .map(|v| {
            let ms = |key: &str| {
                v[key]
                    .as_str()
                    .unwrap()
                    .parse::<chrono::DateTime<chrono::Utc>>()
                    .unwrap()
                    .timestamp_millis()
            };
            (
                v["shard"].as_u64().unwrap(),
                ms("gap_start"),
                ms("gap_end"),
                v["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Waits until every shard of the bridge has `legs` legs streaming.
pub fn wait_legs_streaming(bridge: &Bridge, shards: usize, legs: usize, timeout: Duration) {
    wait_until(
        &format!("{shards} shard(s) with {legs} leg(s) streaming"),
        timeout,
        || {
            let status = bridge.status();
            let Some(all) = status["shards"].as_array() else {
                return false;
            };
            all.len() == shards
                && all.iter().all(|shard| {
                    shard["legs"].as_array().is_some_and(|l| {
                        l.len() == legs && l.iter().all(|leg| leg["phase"] == "streaming")
                    })
                })
        },
    );
}

/// `[topics]` and `[socket]` of the legs and gap tests: queue and user conversation topics, fast
/// pings and timeouts. A gap after a socket the bridge stopped reading (a crash included) starts
/// at its last answered ping, as saved (every 200 ms) in the shard state: the ping interval plus
/// that bound how far a gap record reaches into delivered time, and the tests allow 0.5 s.
pub const LEG_TEST_EXTRA: &str = r#"
[topics]
templates = [
  { template = "v2.routing.queues.{id}.conversations" },
  { template = "v2.users.{id}.conversations" },
]
[socket]
ping_interval = "100ms"
pong_timeout = "1s"
dead_after = "6s"
rollover_margin = "2500ms"
rollover_timeout = "5s"
min_rollover_interval = "500ms"
stable_after = "2s"
backoff = { min = "100ms", max = "1s", jitter = 0.2 }
"#;

/// The simulator of the legs and gap tests: 8 conversations a second, a heartbeat a second.
pub fn leg_test_sim() -> genesys_sim::SimConfig {
    genesys_sim::SimConfig {
        rate_per_sec: 8.0,
        heartbeat_interval: Duration::from_secs(1),
        ..genesys_sim::SimConfig::default()
    }
}

/// Waits until the model published `events` more events on `topics` (traffic flows on the
/// sockets as they are now), instead of sleeping for it.
pub fn wait_for_traffic(
    sim: &genesys_sim::SimHandle,
    topics: &std::collections::HashSet<String>,
    events: usize,
) {
    let start = next_published_seq(sim);
    wait_until(
        &format!("{events} more events published"),
        Duration::from_secs(30),
        || sim.published_count(|e| e.seq >= start && topics.contains(&e.topic)) >= events,
    );
}

/// A simulator at `rate` conversations per second with a heartbeat every second.
pub fn sim_at(rate: f64) -> genesys_sim::SimHandle {
    genesys_sim::Simulator::start(genesys_sim::SimConfig {
        rate_per_sec: rate,
        heartbeat_interval: Duration::from_secs(1),
        ..genesys_sim::SimConfig::default()
    })
    .unwrap()
}

/// Every distinct event frame the simulator sent, in the order it sent them.
pub fn sent_events(sim: &genesys_sim::SimHandle) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    sim.ledger()
        .into_iter()
        .filter(|e| e.kind == genesys_sim::FrameKind::Event)
        .map(|e| e.frame.to_string())
        .filter(|frame| seen.insert(frame.clone()))
        .collect()
}

/// Stops the simulator's traffic (no new conversations; the running ones end) and waits until it
/// has published nothing for 3 s. Silencing the sockets instead races the bridge: once
/// `dead_after` passes it replaces them with new channels, which take new events.
pub fn stop_traffic(sim: &genesys_sim::SimHandle) {
    sim.set_rate(0.0);
    let mut last = usize::MAX;
    let mut quiet_since = Instant::now();
    wait_until("the model is quiet", Duration::from_secs(60), || {
        let now = sim.published_count(|_| true);
        if now != last {
            last = now;
            quiet_since = Instant::now();
        }
        quiet_since.elapsed() > Duration::from_secs(3)
    });
}

/// Stops the traffic and waits until the bridge has spooled every distinct event the simulator
/// sent (each leg's channel gets its own copy: the ledger counts each event once per leg).
pub fn stop_traffic_and_wait_spooled(sim: &genesys_sim::SimHandle, bridge: &Bridge) {
    stop_traffic(sim);
    let sent = sent_events(sim).len() as f64;
    wait_until(
        "the bridge spooled every sent event",
        Duration::from_secs(30),
        || bridge.metric("genesys_bridge_events_spooled_total") >= sent,
    );
}

/// Waits until every event the simulator sent is in the conversation topics; what they hold.
pub fn wait_all_delivered(
    sim: &genesys_sim::SimHandle,
    brokers: &str,
    within: Duration,
) -> Vec<KafkaRecord> {
    let sent = sent_events(sim);
    let mut landed = Vec::new();
    wait_until("every sent event is in Kafka", within, || {
        landed = consume_all(brokers, &CONVERSATION_KAFKA_TOPICS);
        let values: std::collections::HashSet<&str> =
            landed.iter().map(|r| r.value.as_str()).collect();
        sent.iter().all(|f| values.contains(f.as_str()))
    });
    landed
}

/// Duplicates in Kafka only where the delivery guarantee allows them and the bridge says so: a
/// copy that reached the merge after its window or capacity had dropped its twin, counted in
/// `genesys_bridge_duplicates_late_total`. (No producer retry can duplicate here: the bridge
/// was not restarted and these tests do not fail deliveries.)
pub fn assert_duplicates_only_late(bridge: &Bridge, reconciled: &Reconciled) {
    let late = bridge.metric("genesys_bridge_duplicates_late_total");
    assert!(
        reconciled.duplicated as f64 <= late,
        "events duplicated: {} in Kafka, {late} counted as late copies by the merge",
        reconciled.duplicated
    );
    if reconciled.duplicated > 0 {
        eprintln!(
            "{} late copies delivered again (counted by the merge)",
            reconciled.duplicated
        );
    }
}
