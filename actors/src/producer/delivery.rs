//! librdkafka's delivery callback: acknowledges delivered records in the spool and hands every
//! failure to the send loop, which decides (retry, dead letter, stop). It runs on the send
//! loop's thread, inside its polls of librdkafka's queue (`events.rs`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::ClientContext;
use tokio::sync::mpsc;

use super::retry::{Attempts, Stripes};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::spool::Spool;

/// The dead-letter topic's copy of a record: why it is one, and where it was routed.
#[derive(Debug, Clone)]
pub(super) struct DeadLetterCopy {
    pub(super) reason: String,
    pub(super) routed_topic: String,
}

/// What travels with a record through librdkafka.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) seq: u64,
    pub(super) received_at_ms: i64,
    /// When it was handed to librdkafka (epoch ms).
    pub(super) sent_at_ms: i64,
    pub(super) dead_letter: Option<DeadLetterCopy>,
    /// Records with the same order key stay in spool order.
    pub(super) order_key: Option<u64>,
    pub(super) stripe: Option<u16>,
    /// Value bytes (librdkafka holds a copy until the delivery report).
    pub(super) bytes: usize,
    pub(super) attempts: Attempts,
}

/// A delivery that failed and needs a decision.
pub(super) struct Failed {
    pub(super) pending: Pending,
    pub(super) error: KafkaError,
    /// Where it was routed (for a dead letter): the failed message's topic, copied only on a
    /// failure rather than carried with every record.
    pub(super) routed_topic: String,
}

pub(super) struct DeliveryContext {
    pub(super) spool: Spool,
    pub(super) metrics: Arc<Metrics>,
    pub(super) health: Health,
    pub(super) in_flight: Arc<AtomicUsize>,
    pub(super) in_flight_bytes: Arc<AtomicUsize>,
    pub(super) stripes: Arc<Stripes>,
    pub(super) failures: mpsc::UnboundedSender<Failed>,
}

impl ClientContext for DeliveryContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, reason, "Kafka client error");
        let mut health = self.health.lock();
        health.kafka.last_error = Some(format!("{error}: {reason}"));
        health.kafka.last_error_at = Some(chrono::Utc::now());
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<Pending>;

    fn delivery(&self, result: &DeliveryResult<'_>, pending: Self::DeliveryOpaque) {
        let (bytes, stripe) = (pending.bytes, pending.stripe);
        match result {
            Ok(_) => {
                let now_ms = epoch_ms();
                if pending.dead_letter.is_some() {
                    self.metrics
                        .dead_letters
                        .get_or_create(&Metrics::reason("topic"))
                        .inc();
                } else {
                    self.metrics.events_produced.inc();
                    let latency = (now_ms - pending.received_at_ms).max(0) as f64 / 1000.0;
                    self.metrics.delivery_latency.observe(latency);
                }
                self.health.record_ack(now_ms);
                self.ack(pending.seq);
            }
            Err((error, message)) => {
                // Reported before the counts drop: the send loop reads the stripes first, then
                // the failures (see retry.rs).
                let _ = self.failures.send(Failed {
                    error: error.clone(),
                    pending: *pending,
                    routed_topic: message.topic().to_string(),
                });
            }
        }
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.in_flight_bytes.fetch_sub(bytes, Ordering::AcqRel);
        if let Some(stripe) = stripe {
            self.stripes.resolved(stripe);
        }
    }
}

/// Now, in ms since the epoch, without chrono's calendar arithmetic (once per record; 0.7 % of
/// the bridge's CPU in issue #16's burst profile).
fn epoch_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        })
}

impl DeliveryContext {
    pub(super) fn ack(&self, seq: u64) {
        if let Err(error) = self.spool.ack(seq) {
            tracing::error!(seq, error = %error, "spool ack failed");
        }
    }
}
