//! librdkafka's delivery callback: acknowledges delivered records in the spool and hands every
//! failure to the send loop, which decides (retry, dead letter, stop).

use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::ClientContext;
use tokio::sync::{mpsc, Notify};

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
    pub(super) wake: Arc<DeliveryWake>,
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
                let now_ms = chrono::Utc::now().timestamp_millis();
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
        self.wake.delivered();
    }
}

/// Wakes the send loop: on a delivery only while the loop waits for one (room in flight, a
/// key's records in flight), and on a stop. A delivery the loop does not wait for costs an
/// atomic add, not a cross-thread wake-up and a spool read that finds nothing (profile of
/// issue #16: one such wake per record).
#[derive(Debug, Default)]
pub(super) struct DeliveryWake {
    notify: Notify,
    /// The loop waits for a delivery.
    armed: AtomicBool,
    /// Deliveries so far (successes and failures).
    deliveries: AtomicU64,
}

impl DeliveryWake {
    /// A record's delivery report arrived (after its in-flight counts were lowered).
    pub(super) fn delivered(&self) {
        self.deliveries.fetch_add(1, Ordering::SeqCst);
        if self.armed.load(Ordering::SeqCst) && self.armed.swap(false, Ordering::SeqCst) {
            self.notify.notify_one();
        }
    }

    /// Deliveries so far: read before the loop decides to wait, for
    /// [`DeliveryWake::delivery_after`].
    pub(super) fn seen(&self) -> u64 {
        self.deliveries.load(Ordering::SeqCst)
    }

    /// Resolves on the first delivery after `seen` was read (at once if there was one
    /// already), or on [`DeliveryWake::stop`].
    pub(super) async fn delivery_after(&self, seen: u64) {
        let mut notified = pin!(self.notify.notified());
        notified.as_mut().enable();
        self.armed.store(true, Ordering::SeqCst);
        // A delivery either counted before this read (seen here) or saw `armed` (notifies).
        if self.deliveries.load(Ordering::SeqCst) != seen {
            self.armed.store(false, Ordering::SeqCst);
            return;
        }
        notified.await;
    }

    /// Resolves on [`DeliveryWake::stop`] only (deliveries do not wake this waiter).
    pub(super) async fn stopped(&self) {
        self.notify.notified().await;
    }

    /// Wakes the loop whatever it waits for.
    pub(super) fn stop(&self) {
        self.notify.notify_one();
    }
}

impl DeliveryContext {
    pub(super) fn ack(&self, seq: u64) {
        if let Err(error) = self.spool.ack(seq) {
            tracing::error!(seq, error = %error, "spool ack failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    use super::*;

    fn poll_once(future: std::pin::Pin<&mut impl Future<Output = ()>>) -> Poll<()> {
        future.poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn deliveries_nobody_waits_for_store_no_wake_up() {
        let wake = DeliveryWake::default();
        let seen = wake.seen();
        for _ in 0..1000 {
            wake.delivered();
        }
        // Before the fix every delivery notified: a waiter for new records (`stopped`) found
        // a stored permit and the loop went round once more per record.
        let mut stopped = pin!(wake.stopped());
        assert_eq!(poll_once(stopped.as_mut()), Poll::Pending);
        assert_ne!(wake.seen(), seen);
    }

    #[test]
    fn a_delivery_before_the_wait_resolves_it_at_once() {
        let wake = DeliveryWake::default();
        let seen = wake.seen();
        wake.delivered();
        let mut waiting = pin!(wake.delivery_after(seen));
        assert_eq!(poll_once(waiting.as_mut()), Poll::Ready(()));
        assert!(!wake.armed.load(Ordering::SeqCst));
    }

    #[test]
    fn a_delivery_during_the_wait_wakes_it_once() {
        let wake = DeliveryWake::default();
        let seen = wake.seen();
        let mut waiting = pin!(wake.delivery_after(seen));
        assert_eq!(poll_once(waiting.as_mut()), Poll::Pending);
        wake.delivered();
        assert_eq!(poll_once(waiting.as_mut()), Poll::Ready(()));
        // Disarmed by the delivery that woke it: the next ones notify nobody.
        wake.delivered();
        let mut stopped = pin!(wake.stopped());
        assert_eq!(poll_once(stopped.as_mut()), Poll::Pending);
    }

    #[test]
    fn stop_wakes_either_waiter() {
        let wake = DeliveryWake::default();
        let mut waiting = pin!(wake.delivery_after(wake.seen()));
        assert_eq!(poll_once(waiting.as_mut()), Poll::Pending);
        wake.stop();
        assert_eq!(poll_once(waiting.as_mut()), Poll::Ready(()));
        let mut stopped = pin!(wake.stopped());
        assert_eq!(poll_once(stopped.as_mut()), Poll::Pending);
        wake.stop();
        assert_eq!(poll_once(stopped.as_mut()), Poll::Ready(()));
    }
}
