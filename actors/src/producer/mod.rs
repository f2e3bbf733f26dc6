//! KafkaProducerActor: reads the spool in order and produces each record to Kafka.
//!
//! librdkafka (idempotent, `acks=all`) does the retrying and batching; the delivery callback acks
//! the spool, whose committed position moves only over acknowledged records. Failed deliveries
//! come back to the pump: transient ones are produced again, per-record ones go to the
//! dead-letter destination, fatal ones stop the actor so that the supervisor makes a fresh
//! producer that resumes from the committed position.

pub mod errors;
mod pump;
pub mod routing;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::health::Health;
use crate::messages::{AreYouAlive, Flush, InjectFault};
use crate::metrics::Metrics;
use crate::spool::Spool;
use routing::Router;

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
    /// Records Kafka refused for good; `None` writes them to `dead_letter_file` only.
    pub dead_letter_topic: Option<String>,
    /// Last resort for dead letters (JSON lines).
    pub dead_letter_file: PathBuf,
    /// Records handed to librdkafka and not yet acknowledged, at most.
    pub max_in_flight: usize,
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
            .field("dead_letter_topic", &self.dead_letter_topic)
            .field("dead_letter_file", &self.dead_letter_file)
            .field("max_in_flight", &self.max_in_flight)
            .field("allow_fault_injection", &self.allow_fault_injection)
            .finish()
    }
}

impl KafkaSettings {
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
    pump: Option<Arc<pump::Pump>>,
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
            pump: None,
        }
    }
}

impl Actor for KafkaProducerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(16);
        let pump = match pump::Pump::new(
            self.settings.clone(),
            self.spool.clone(),
            self.health.clone(),
            self.metrics.clone(),
        ) {
            Ok(pump) => Arc::new(pump),
            Err(error) => {
                tracing::error!(error = %error, "cannot create the Kafka producer");
                self.health.lock().kafka.last_error = Some(error.to_string());
                ctx.stop();
                return;
            }
        };
        self.pump = Some(pump.clone());
        async move { pump.run().await }
            .into_actor(self)
            .map(|outcome, actor, ctx| {
                if let Err(error) = outcome {
                    tracing::error!(error = %error, "Kafka producer failed; restarting it");
                    actor.health.lock().kafka.last_error = Some(error);
                }
                ctx.stop();
            })
            .spawn(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if let Some(pump) = self.pump.take() {
            pump.stop();
        }
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
            router: Router::new(&[], "events"),
            status_topic: "status".into(),
            backfill_topic: None,
            dead_letter_topic: None,
            dead_letter_file: PathBuf::from("/tmp/dead"),
            max_in_flight: 10,
            allow_fault_injection: false,
        };
        let shown = format!("{settings:?}");
        for secret in ["hunter2", "BEGIN KEY", "s3cr3t"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("broker:9092"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }
}
