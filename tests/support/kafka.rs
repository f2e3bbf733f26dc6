//! A real Kafka-compatible broker (tansu) per test, and reading back what landed.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{Message, TopicPartitionList};

/// A tansu broker with SQLite storage in its own directory; survives `restart`.
pub struct Tansu {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

fn tansu_bin() -> PathBuf {
    if let Ok(path) = std::env::var("TANSU_BIN") {
        return PathBuf::from(path);
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let cached = PathBuf::from(home).join(".cargo/bin/tansu");
    if cached.exists() {
        return cached;
    }
    panic!("the end-to-end tests need the tansu broker: run `bash scripts/test.sh`, which installs it (or `cargo install tansu --version 0.6.0 --features dynostore,libsql`)");
}

impl Tansu {
    pub fn start() -> Tansu {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        let mut broker = Tansu {
            port: super::free_port(),
            dir,
            child: None,
        };
        broker.spawn();
        broker
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        // The port was free when picked; if another process took it meanwhile, tansu exits
        // and a new port is tried.
        for _attempt in 0..5 {
            let url = format!("tcp://127.0.0.1:{}", self.port);
            let log = std::fs::File::create(self.dir.path().join("broker.log")).unwrap();
            let mut command = Command::new(tansu_bin());
            command
                .args([
                    "broker",
                    "--listener-url",
                    &url,
                    "--advertised-listener-url",
                    &url,
                ])
                .args(["--storage-engine", "sqlite://data/tansu.db"])
                .current_dir(self.dir.path())
                .stdout(Stdio::from(log.try_clone().unwrap()))
                .stderr(Stdio::from(log));
            super::die_with_parent(&mut command);
            let mut child = command.spawn().expect("tansu starts");
            let address = format!("127.0.0.1:{}", self.port);
            let mut exited = false;
            super::wait_until("tansu listens (or exits)", Duration::from_secs(20), || {
                exited = child.try_wait().ok().flatten().is_some();
                exited || std::net::TcpStream::connect(&address).is_ok()
            });
            if !exited {
                self.child = Some(child);
                return;
            }
            self.port = super::free_port();
        }
        panic!(
            "tansu did not start; see {}",
            self.dir.path().join("broker.log").display()
        );
    }

    pub fn create_topics(&self, topics: &[&str], partitions: u32) {
        for topic in topics {
            // A broker that just started listening may not take requests yet: retry briefly.
            super::wait_until(
                &format!("topic {topic} created"),
                Duration::from_secs(20),
                || {
                    let output = Command::new(tansu_bin())
                        .args(["topic", "create", topic])
                        .args(["--partitions", &partitions.to_string()])
                        .args(["--broker", &format!("tcp://127.0.0.1:{}", self.port)])
                        .output()
                        .expect("tansu topic create runs");
                    let said = format!(
                        "{}{}",
                        String::from_utf8_lossy(&output.stdout),
                        String::from_utf8_lossy(&output.stderr)
                    )
                    .to_lowercase();
                    output.status.success() || said.contains("already exists")
                },
            );
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One record as it landed in Kafka.
#[derive(Debug, Clone)]
pub struct KafkaRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub value: String,
    pub headers: Vec<(String, String)>,
}

impl KafkaRecord {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Every record currently in `topics`, read from the beginning, in partition order.
pub fn consume_all(brokers: &str, topics: &[&str]) -> Vec<KafkaRecord> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "bridge-tests")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    let mut expected = 0i64;
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata");
        for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition.id(), Duration::from_secs(10))
                .expect("watermarks");
            expected += high - low;
            if high > low {
                assignment
                    .add_partition_offset(topic, partition.id(), rdkafka::Offset::Offset(low))
                    .unwrap();
            }
        }
    }
    let mut records = Vec::new();
    if expected == 0 {
        return records;
    }
    consumer.assign(&assignment).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(180);
    while (records.len() as i64) < expected && Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.expect("consume");
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        records.push(KafkaRecord {
            topic: message.topic().to_string(),
            partition: message.partition(),
            offset: message.offset(),
            key: message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            value: String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned(),
            headers,
        });
    }
    assert_eq!(
        records.len() as i64,
        expected,
        "read every record the watermarks promised"
    );
    records
}
