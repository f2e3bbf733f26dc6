//! KafkaProducerActor: reads the spool in order and produces each record to Kafka.
//!
//! librdkafka (idempotent, `acks=all`) does the retrying and batching; the delivery callback
//! (`delivery.rs`) acks the spool, whose committed position moves only over acknowledged
//! records. Failed deliveries come back to the send loop (`pump.rs`): transient ones are
//! produced again in order per key (`retry.rs`), per-record ones go to the dead-letter
//! destination (`dead_letter.rs` for the file), and a fatal one (fenced, refused credentials or
//! ACLs) makes the actor build a fresh producer after a capped backoff, from the committed
//! position, while the sockets keep spooling. What a spool entry becomes in Kafka is
//! `record.rs`; which error means what is `errors.rs` alone.

pub mod dead_letter;
mod delivery;
pub mod errors;
mod events;
mod pump;
mod record;
mod retry;
pub mod routing;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::Notify;

use crate::backoff::ExponentialBackoff;
use crate::health::Health;
use crate::messages::{AreYouAlive, Flush, InjectFault};
use crate::metrics::Metrics;
use crate::spool::Spool;
use dead_letter::DeadLetterLimits;
use routing::Router;

/// Exit code when Kafka kept refusing the producer (fatal errors: credentials, ACLs) for
/// `exit_after_failing_for`, or while the spool was full (EX_UNAVAILABLE).
pub const EXIT_KAFKA_FAILING: i32 = 69;

/// Whether a librdkafka property's value is a secret (never logged or printed).
pub fn is_secret_property(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "token",
        "key.pem",
        "certificate.pem",
        "jaas",
        "oauthbearer.config",
    ]
    .iter()
    .any(|marker| key.contains(marker))
}

/// How records reach Kafka.
#[derive(Clone)]
pub struct KafkaSettings {
    /// librdkafka properties (`bootstrap.servers`, SASL/TLS, tuning). The bridge sets
    /// `enable.idempotence=true`, `acks=all` and `message.timeout.ms=0` unless given here.
    pub properties: BTreeMap<String, String>,
    pub router: Router,
    /// Gap and lifecycle records.
    pub status_topic: String,
    /// Conversations recovered by backfill (unset: the status topic).
    pub backfill_topic: Option<String>,
    /// Kafka topic of the conversation lifecycle records.
    pub lifecycle_topic: String,
    /// Records Kafka refused for good; `None` writes them to `dead_letter_file` only.
    pub dead_letter_topic: Option<String>,
    /// Last resort for dead letters (JSON lines).
    pub dead_letter_file: PathBuf,
    /// Records handed to librdkafka and not yet acknowledged, at most.
    pub max_in_flight: usize,
    /// Their value bytes, at most (librdkafka holds a copy of each); a single larger record
    /// still goes, alone.
    pub max_in_flight_bytes: usize,
    /// Pacing of records produced again after a failed delivery, and of dead-letter file
    /// writes that failed.
    pub retry_backoff: ExponentialBackoff,
    /// Failed deliveries of one record (counted only while Kafka takes other records) after
    /// which it is dead-lettered; 0: never.
    pub max_delivery_attempts: u32,
    /// Delay before a fresh producer after a fatal error, growing while they repeat.
    pub restart_backoff: ExponentialBackoff,
    /// Exit (code 69) when fatal errors went on this long; `None`: never for that reason.
    pub exit_after_failing_for: Option<Duration>,
    pub dead_letter_limits: DeadLetterLimits,
    pub allow_fault_injection: bool,
}

/// Secret properties (SASL passwords, private keys) are shown redacted.
impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let properties: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(key, value)| {
                let shown = if is_secret_property(key) {
                    "<redacted>"
                } else {
                    value.as_str()
                };
                (key.as_str(), shown)
            })
            .collect();
        f.debug_struct("KafkaSettings")
            .field("properties", &properties)
            .field("router", &self.router)
            .field("status_topic", &self.status_topic)
            .field("backfill_topic", &self.backfill_topic)
            .field("lifecycle_topic", &self.lifecycle_topic)
            .field("dead_letter_topic", &self.dead_letter_topic)
            .field("dead_letter_file", &self.dead_letter_file)
            .field("max_in_flight", &self.max_in_flight)
            .field("max_in_flight_bytes", &self.max_in_flight_bytes)
            .field("retry_backoff", &self.retry_backoff)
            .field("max_delivery_attempts", &self.max_delivery_attempts)
            .field("restart_backoff", &self.restart_backoff)
            .field("exit_after_failing_for", &self.exit_after_failing_for)
            .field("dead_letter_limits", &self.dead_letter_limits)
            .field("allow_fault_injection", &self.allow_fault_injection)
            .finish()
    }
}

impl KafkaSettings {
    /// Settings for unit tests: no properties, topics `events` and `status`.
    #[cfg(test)]
    pub(crate) fn for_tests() -> Self {
        Self {
            properties: BTreeMap::new(),
            router: Router::new(&[], "events"),
            status_topic: "status".into(),
            backfill_topic: None,
            lifecycle_topic: "lifecycle".into(),
            dead_letter_topic: None,
            dead_letter_file: PathBuf::from("/tmp/dead"),
            max_in_flight: 10,
            max_in_flight_bytes: 1 << 20,
            retry_backoff: ExponentialBackoff::default(),
            max_delivery_attempts: 10,
            restart_backoff: ExponentialBackoff::default(),
            exit_after_failing_for: None,
            dead_letter_limits: DeadLetterLimits::default(),
            allow_fault_injection: false,
        }
    }

    /// Whether librdkafka gives records up after a time (`message.timeout.ms`, alias
    /// `delivery.timeout.ms`, set to anything but 0; the bridge's default is 0).
    pub fn records_time_out(&self) -> bool {
        let config = self.client_config();
        ["message.timeout.ms", "delivery.timeout.ms"]
            .iter()
            .filter_map(|key| config.get(key))
            .any(|value| value.trim() != "0")
    }

    /// The effective librdkafka configuration.
    pub fn client_config(&self) -> rdkafka::ClientConfig {
        let mut config = rdkafka::ClientConfig::new();
        config.set("enable.idempotence", "true");
        config.set("acks", "all");
        // Records wait in the spool, not in a timer: a long outage must not turn into loss.
        config.set("message.timeout.ms", "0");
        config.set("client.id", "genesys-kafka-bridge");
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }
}

pub struct KafkaProducerActor {
    settings: Arc<KafkaSettings>,
    spool: Spool,
    health: Health,
    metrics: Arc<Metrics>,
    run: Arc<ProducerRun>,
}

/// The producer now running, and the stop signal for the loop that replaces it.
#[derive(Default)]
struct ProducerRun {
    current: Mutex<Option<Arc<pump::Pump>>>,
    stopping: AtomicBool,
    stopped: Notify,
}

impl ProducerRun {
    fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.stopped.notify_waiters();
        let current = self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        if let Some(pump) = current {
            pump.stop();
        }
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    fn set_current(&self, pump: Option<Arc<pump::Pump>>) {
        *self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = pump;
    }
}

impl KafkaProducerActor {
    pub fn new(
        settings: Arc<KafkaSettings>,
        spool: Spool,
        health: Health,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            settings,
            spool,
            health,
            metrics,
            run: Arc::default(),
        }
    }
}

/// Runs producers until stopped: a producer that fails fatally is replaced by a fresh one
/// after a capped backoff (the sockets keep spooling meanwhile). Returns an exit code when
/// failing went on too long or the spool filled up while it did.
async fn run_producers(
    settings: Arc<KafkaSettings>,
    spool: Spool,
    health: Health,
    metrics: Arc<Metrics>,
    run: Arc<ProducerRun>,
) -> Option<i32> {
    let mut failures: u32 = 0;
    let mut failing_since: Option<Instant> = None;
    loop {
        if run.is_stopping() {
            return None;
        }
        let started_ms = chrono::Utc::now().timestamp_millis();
        let outcome = match pump::Pump::new(
            settings.clone(),
            spool.clone(),
            health.clone(),
            metrics.clone(),
        ) {
            Ok(pump) => {
                let pump = Arc::new(pump);
                run.set_current(Some(pump.clone()));
                if run.is_stopping() {
                    pump.stop();
                }
                let outcome = pump.run().await;
                run.set_current(None);
                outcome
            }
            Err(error) => Err(format!("cannot create the Kafka producer: {error}")),
        };
        let Err(error) = outcome else {
            return None; // stopped
        };
        if health.last_ack_ms() > started_ms {
            // That producer delivered before it failed: a new episode.
            failures = 0;
            failing_since = None;
        }
        let since = *failing_since.get_or_insert_with(Instant::now);
        let delay = settings.restart_backoff.delay(failures);
        failures = failures.saturating_add(1);
        metrics.producer_restarts.inc();
        metrics.producer_failing.set(1);
        let spool_full = {
            let mut snapshot = health.lock();
            snapshot.kafka.failing_since = Some(
                chrono::Utc::now()
                    - chrono::Duration::from_std(since.elapsed()).unwrap_or_default(),
            );
            snapshot.kafka.fatal_error = Some(error.clone());
            snapshot.kafka.producer_restarts += 1;
            snapshot.kafka.last_error = Some(error.clone());
            snapshot.kafka.last_error_at = Some(chrono::Utc::now());
            snapshot.spool.full
        };
        let failing_for = since.elapsed();
        if settings
            .exit_after_failing_for
            .is_some_and(|limit| failing_for >= limit)
            || spool_full
        {
            tracing::error!(
                error = %error,
                failing_for_s = failing_for.as_secs(),
                spool_full,
                "Kafka keeps refusing the producer; exiting so that the orchestrator restarts the process"
            );
            return Some(EXIT_KAFKA_FAILING);
        }
        tracing::error!(
            error = %error,
            restart_in_ms = delay.as_millis() as u64,
            failing_for_s = failing_for.as_secs(),
            "Kafka producer failed; the sockets keep spooling, a fresh producer follows"
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = run.stopped.notified() => {}
        }
    }
}

impl Actor for KafkaProducerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(16);
        let run = run_producers(
            self.settings.clone(),
            self.spool.clone(),
            self.health.clone(),
            self.metrics.clone(),
            self.run.clone(),
        );
        run.into_actor(self)
            .map(|exit, _actor, ctx| {
                if let Some(code) = exit {
                    System::current().stop_with_code(code);
                }
                ctx.stop();
            })
            .spawn(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.run.stop();
    }
}

impl Handler<Flush> for KafkaProducerActor {
    type Result = ResponseFuture<bool>;

    /// Waits until the spool holds nothing unacknowledged, or the deadline passes.
    fn handle(&mut self, msg: Flush, _: &mut Self::Context) -> Self::Result {
        let spool = self.spool.clone();
        Box::pin(async move {
            loop {
                if spool.stats().records_unacked == 0 {
                    return true;
                }
                if Instant::now() >= msg.deadline {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    }
}

impl Handler<AreYouAlive> for KafkaProducerActor {
    type Result = ();
    fn handle(&mut self, _: AreYouAlive, _: &mut Self::Context) {}
}

impl Handler<InjectFault> for KafkaProducerActor {
    type Result = ();
    fn handle(&mut self, fault: InjectFault, _: &mut Self::Context) {
        fault.apply(self.settings.allow_fault_injection, "KafkaProducerActor");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_a_secret_property() {
        let settings = KafkaSettings {
            properties: BTreeMap::from([
                ("bootstrap.servers".to_string(), "broker:9092".to_string()),
                ("sasl.password".to_string(), "hunter2".to_string()),
                ("ssl.key.pem".to_string(), "-----BEGIN KEY-----".to_string()),
                (
                    "sasl.oauthbearer.config".to_string(),
                    "clientSecret=s3cr3t".to_string(),
                ),
            ]),
            ..KafkaSettings::for_tests()
        };
        let shown = format!("{settings:?}");
        for secret in ["hunter2", "BEGIN KEY", "s3cr3t"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("broker:9092"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn records_time_out_only_when_a_timeout_is_set() {
        let with = |key: &str, value: &str| KafkaSettings {
            properties: BTreeMap::from([(key.to_string(), value.to_string())]),
            ..KafkaSettings::for_tests()
        };
        assert!(
            !KafkaSettings::for_tests().records_time_out(),
            "the default is 0"
        );
        assert!(with("message.timeout.ms", "2000").records_time_out());
        assert!(with("delivery.timeout.ms", "30000").records_time_out());
        assert!(!with("message.timeout.ms", "0").records_time_out());
    }
}
