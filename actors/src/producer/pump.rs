//! The loop that moves records from the spool into librdkafka, and librdkafka's delivery
//! callback that acknowledges them in the spool.

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use tokio::sync::{mpsc, Notify};

use super::errors::{classify, label, Consequence};
use super::KafkaSettings;
use crate::backfill::{BackfillPayload, BACKFILL};
use crate::genesys::wire::event_meta;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::socket::frames::MALFORMED;
use crate::spool::{RecordKind, Spool, SpoolEntry};

/// What travels with a record through librdkafka.
pub(super) struct Pending {
    seq: u64,
    received_at_ms: i64,
    /// Set when this is the dead-letter copy of a record.
    dead_letter_reason: Option<String>,
    /// Where the record was routed, for the dead-letter copy.
    topic: String,
}

/// A delivery that failed and needs a decision.
struct Failed {
    pending: Pending,
    consequence: Consequence,
    error: String,
    label: String,
}

pub(super) struct DeliveryContext {
    spool: Spool,
    metrics: Arc<Metrics>,
    health: Health,
    in_flight: Arc<AtomicUsize>,
    wake: Arc<Notify>,
    failures: mpsc::UnboundedSender<Failed>,
    dead_letter_file: std::path::PathBuf,
    dead_letter_lock: Mutex<()>,
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
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        match result {
            Ok(_) => {
                let now_ms = chrono::Utc::now().timestamp_millis();
                if pending.dead_letter_reason.is_some() {
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
            Err((error, _message)) => {
                if let Some(reason) = &pending.dead_letter_reason {
                    // The dead-letter topic refused it too: the file is the last resort.
                    let reason = format!("{reason}; dead-letter topic: {error}");
                    if let Some(entry) = self.reread(pending.seq) {
                        self.write_dead_letter_file(&entry, &pending.topic, &reason);
                    }
                    self.ack(pending.seq);
                } else {
                    let _ = self.failures.send(Failed {
                        consequence: classify(error),
                        error: error.to_string(),
                        label: label(error),
                        pending: *pending,
                    });
                }
            }
        }
        self.wake.notify_one();
    }
}

impl DeliveryContext {
    fn ack(&self, seq: u64) {
        if let Err(error) = self.spool.ack(seq) {
            tracing::error!(seq, error = %error, "spool ack failed");
        }
    }

    fn reread(&self, seq: u64) -> Option<SpoolEntry> {
        self.spool
            .read_batch(seq, 1, usize::MAX)
            .ok()
            .and_then(|batch| batch.into_iter().find(|e| e.seq == seq))
    }

    /// Appends one JSON line; a record is only acked once this write succeeded or failed loudly.
    fn write_dead_letter_file(&self, entry: &SpoolEntry, topic: &str, reason: &str) {
        let payload = &entry.record.payload;
        let mut line = serde_json::json!({
            "seq": entry.seq,
            "shard": entry.record.shard,
            "received_at_ms": entry.record.received_at_ms,
            "routed_topic": topic,
            "reason": reason,
        });
        match std::str::from_utf8(payload) {
            Ok(text) => line["payload"] = text.into(),
            Err(_) => {
                line["payload_base64"] = base64::engine::general_purpose::STANDARD
                    .encode(payload)
                    .into()
            }
        }
        let _guard = self.dead_letter_lock.lock();
        let written = crate::private_fs::options()
            .create(true)
            .append(true)
            .open(&self.dead_letter_file)
            .and_then(|mut file| writeln!(file, "{line}").and_then(|_| file.sync_data()));
        match written {
            Ok(()) => {
                self.metrics
                    .dead_letters
                    .get_or_create(&Metrics::reason("file"))
                    .inc();
                tracing::error!(seq = entry.seq, reason, file = %self.dead_letter_file.display(), "record written to the dead-letter file");
            }
            Err(error) => {
                self.metrics
                    .dead_letters
                    .get_or_create(&Metrics::reason("lost"))
                    .inc();
                tracing::error!(seq = entry.seq, reason, error = %error, "dead-letter file write failed: record dropped");
            }
        }
    }
}

pub(super) struct Pump {
    settings: Arc<KafkaSettings>,
    spool: Spool,
    metrics: Arc<Metrics>,
    producer: ThreadedProducer<DeliveryContext>,
    failures: tokio::sync::Mutex<mpsc::UnboundedReceiver<Failed>>,
    in_flight: Arc<AtomicUsize>,
    wake: Arc<Notify>,
    stopped: AtomicBool,
}

/// Whether librdkafka took a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// Taken (or dealt with: dead-lettered, acknowledged).
    Taken,
    /// Not now (librdkafka's queue is full, or a transient produce error): the record stays
    /// where it is and the loop waits, without blocking the thread, before trying it again.
    Busy,
}

impl Pump {
    pub(super) fn new(
        settings: Arc<KafkaSettings>,
        spool: Spool,
        health: Health,
        metrics: Arc<Metrics>,
    ) -> Result<Self, KafkaError> {
        let (sender, receiver) = mpsc::unbounded_channel();
        // One written 0644 by an earlier version holds customer data too.
        crate::private_fs::narrow(&settings.dead_letter_file, crate::private_fs::FILE_MODE);
        let in_flight = Arc::new(AtomicUsize::new(0));
        let wake = Arc::new(Notify::new());
        let context = DeliveryContext {
            spool: spool.clone(),
            metrics: metrics.clone(),
            health,
            in_flight: in_flight.clone(),
            wake: wake.clone(),
            failures: sender,
            dead_letter_file: settings.dead_letter_file.clone(),
            dead_letter_lock: Mutex::new(()),
        };
        let producer = settings.client_config().create_with_context(context)?;
        Ok(Self {
            settings,
            spool,
            metrics,
            producer,
            failures: tokio::sync::Mutex::new(receiver),
            in_flight,
            wake,
            stopped: AtomicBool::new(false),
        })
    }

    pub(super) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Runs until stopped (Ok) or until the producer is unusable (Err).
    pub(super) async fn run(&self) -> Result<(), String> {
        let mut failures = self.failures.lock().await;
        let mut cursor = self.spool.committed_seq() + 1;
        let mut retries: BTreeSet<u64> = BTreeSet::new();
        let mut retry_pause = Duration::ZERO;
        loop {
            if self.stopped.load(Ordering::Acquire) {
                return Ok(());
            }
            if let Some((code, reason)) = self.producer.client().fatal_error() {
                return Err(format!("fatal Kafka error {code:?}: {reason}"));
            }
            while let Ok(failed) = failures.try_recv() {
                self.on_failed(failed, &mut retries)?;
            }
            let in_flight = self.in_flight.load(Ordering::Acquire);
            self.metrics.in_flight.set(in_flight as i64);
            if in_flight >= self.settings.max_in_flight {
                self.wait(&mut failures, &mut retries, None).await?;
                continue;
            }
            if let Some(seq) = retries.pop_first() {
                if !retry_pause.is_zero() {
                    self.pause(retry_pause).await;
                }
                retry_pause =
                    (retry_pause * 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
                if let Some(entry) = self.read_one(seq)? {
                    if self.produce(&entry)? == Sent::Busy {
                        retries.insert(seq);
                        self.wait(&mut failures, &mut retries, None).await?;
                    }
                }
                continue;
            }
            let room = self.settings.max_in_flight - in_flight;
            let batch = self
                .spool
                .read_batch(cursor, room.min(1024), 8 << 20)
                .map_err(|e| format!("spool read failed: {e}"))?;
            let Some(last) = batch.last() else {
                self.wait(&mut failures, &mut retries, Some(cursor)).await?;
                continue;
            };
            cursor = last.seq + 1;
            retry_pause = Duration::ZERO;
            for entry in &batch {
                if self.produce(entry)? == Sent::Busy {
                    // Taken up to here; this one and the rest of the batch are read again
                    // once deliveries made room (the wait is a select, never a thread sleep:
                    // the actor keeps answering, /livez stays up).
                    cursor = entry.seq;
                    self.wait(&mut failures, &mut retries, None).await?;
                    break;
                }
            }
        }
    }

    /// Sleeps without holding up the thread, ending early when the pump is stopped.
    async fn pause(&self, pause: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = self.wake.notified() => {}
        }
    }

    async fn wait(
        &self,
        failures: &mut mpsc::UnboundedReceiver<Failed>,
        retries: &mut BTreeSet<u64>,
        new_records_from: Option<u64>,
    ) -> Result<(), String> {
        let spool = self.spool.clone();
        let appended = async move {
            match new_records_from {
                Some(seq) => spool.wait_for(seq).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            failed = failures.recv() => {
                if let Some(failed) = failed {
                    self.on_failed(failed, retries)?;
                }
            }
            _ = self.wake.notified() => {}
            _ = appended => {}
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        Ok(())
    }

    fn read_one(&self, seq: u64) -> Result<Option<SpoolEntry>, String> {
        let batch = self
            .spool
            .read_batch(seq, 1, usize::MAX)
            .map_err(|e| format!("spool read failed: {e}"))?;
        Ok(batch.into_iter().find(|e| e.seq == seq))
    }

    fn on_failed(&self, failed: Failed, retries: &mut BTreeSet<u64>) -> Result<(), String> {
        self.metrics
            .events_failed
            .get_or_create(&Metrics::reason(&failed.label))
            .inc();
        match failed.consequence {
            Consequence::Retry => {
                tracing::debug!(seq = failed.pending.seq, error = %failed.error, "delivery failed; producing again");
                retries.insert(failed.pending.seq);
                Ok(())
            }
            Consequence::DeadLetter => {
                let Some(entry) = self.read_one(failed.pending.seq)? else {
                    return Ok(());
                };
                if self.dead_letter(&entry, &failed.pending.topic, &failed.error)? == Sent::Busy {
                    retries.insert(failed.pending.seq);
                }
                Ok(())
            }
            Consequence::Fatal => Err(format!("fatal delivery error: {}", failed.error)),
        }
    }

    fn produce(&self, entry: &SpoolEntry) -> Result<Sent, String> {
        let record = &entry.record;
        let received = record.received_at_ms.to_string();
        let shard = record.shard.to_string();
        let (topic, key, headers) = match record.kind {
            RecordKind::Event => match event_meta(&record.payload) {
                Ok(meta) => {
                    let topic = self.settings.router.route(&meta.topic).to_string();
                    let mut headers = OwnedHeaders::new().insert(Header {
                        key: "genesys-topic",
                        value: Some(meta.topic.as_str()),
                    });
                    if let Some(correlation) = &meta.correlation_id {
                        headers = headers.insert(Header {
                            key: "genesys-correlation-id",
                            value: Some(correlation.as_str()),
                        });
                    }
                    (topic, meta.key, headers)
                }
                Err(error) => {
                    return self.dead_letter(
                        entry,
                        "(unrouted)",
                        &format!("malformed frame: {error}"),
                    )
                }
            },
            kind if kind == BACKFILL => {
                let Ok(payload) = serde_json::from_slice::<BackfillPayload<'_>>(&record.payload)
                else {
                    return self.dead_letter(entry, "(backfill)", "unreadable backfill record");
                };
                let topic = self
                    .settings
                    .backfill_topic
                    .clone()
                    .unwrap_or_else(|| self.settings.status_topic.clone());
                let headers = OwnedHeaders::new()
                    .insert(Header {
                        key: "bridge-record",
                        value: Some("backfill"),
                    })
                    .insert(Header {
                        key: "backfill-gap",
                        value: Some(payload.gap.as_str()),
                    });
                let value = payload.conversation.get().as_bytes();
                return self.send_value(
                    entry,
                    &topic,
                    Some(&payload.conversation_id),
                    headers,
                    value,
                );
            }
            kind if kind == MALFORMED => {
                let reason = match std::str::from_utf8(&record.payload) {
                    Ok(_) => "malformed frame: not a notification envelope",
                    Err(_) => "malformed frame: binary, not UTF-8",
                };
                return self.dead_letter(entry, "(unrouted)", reason);
            }
            RecordKind::Gap | RecordKind::Reserved(_) => (
                self.settings.status_topic.clone(),
                Some(format!("shard-{}", record.shard)),
                OwnedHeaders::new().insert(Header {
                    key: "bridge-record",
                    value: Some("status"),
                }),
            ),
        };
        let headers = headers
            .insert(Header {
                key: "received-at-ms",
                value: Some(received.as_str()),
            })
            .insert(Header {
                key: "shard",
                value: Some(shard.as_str()),
            });
        self.send(entry, &topic, key.as_deref(), headers, None)
    }

    fn dead_letter(
        &self,
        entry: &SpoolEntry,
        routed_topic: &str,
        reason: &str,
    ) -> Result<Sent, String> {
        tracing::warn!(
            seq = entry.seq,
            reason,
            "record cannot be delivered; dead-lettering it"
        );
        let Some(topic) = self.settings.dead_letter_topic.clone() else {
            self.producer
                .context()
                .write_dead_letter_file(entry, routed_topic, reason);
            self.producer.context().ack(entry.seq);
            return Ok(Sent::Taken);
        };
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "dead-letter-reason",
                value: Some(reason),
            })
            .insert(Header {
                key: "routed-topic",
                value: Some(routed_topic),
            });
        if reason.to_lowercase().contains("size too large") {
            // The dead-letter topic has the same size limit: the whole frame goes to the
            // dead-letter file, and the topic gets its first KiB with a pointer to the file.
            self.producer
                .context()
                .write_dead_letter_file(entry, routed_topic, reason);
            let original = entry.record.payload.len().to_string();
            let file = self.settings.dead_letter_file.display().to_string();
            let headers = headers
                .insert(Header {
                    key: "truncated-from-bytes",
                    value: Some(original.as_str()),
                })
                .insert(Header {
                    key: "dead-letter-file",
                    value: Some(file.as_str()),
                });
            let head = &entry.record.payload[..entry.record.payload.len().min(1024)];
            return self.send_payload(entry, &topic, None, headers, Some(reason.to_string()), head);
        }
        self.send(entry, &topic, None, headers, Some(reason.to_string()))
    }

    fn send(
        &self,
        entry: &SpoolEntry,
        topic: &str,
        key: Option<&str>,
        headers: OwnedHeaders,
        dead_letter_reason: Option<String>,
    ) -> Result<Sent, String> {
        self.send_payload(
            entry,
            topic,
            key,
            headers,
            dead_letter_reason,
            &entry.record.payload,
        )
    }

    /// Sends a value other than the record's payload (a backfilled conversation).
    fn send_value(
        &self,
        entry: &SpoolEntry,
        topic: &str,
        key: Option<&str>,
        headers: OwnedHeaders,
        value: &[u8],
    ) -> Result<Sent, String> {
        self.send_payload(entry, topic, key, headers, None, value)
    }

    fn send_payload(
        &self,
        entry: &SpoolEntry,
        topic: &str,
        key: Option<&str>,
        headers: OwnedHeaders,
        dead_letter_reason: Option<String>,
        value: &[u8],
    ) -> Result<Sent, String> {
        {
            let pending = Box::new(Pending {
                seq: entry.seq,
                received_at_ms: entry.record.received_at_ms,
                dead_letter_reason: dead_letter_reason.clone(),
                topic: topic.to_string(),
            });
            let mut record: BaseRecord<'_, str, [u8], Box<Pending>> =
                BaseRecord::with_opaque_to(topic, pending)
                    .payload(value)
                    .headers(headers.clone());
            if let Some(key) = key {
                record = record.key(key);
            }
            self.in_flight.fetch_add(1, Ordering::AcqRel);
            let Err((error, _record)) = self.producer.send(record) else {
                return Ok(Sent::Taken);
            };
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            if error.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) {
                // librdkafka's own queue is full: deliveries will make room.
                self.metrics
                    .events_failed
                    .get_or_create(&Metrics::reason("queue_full"))
                    .inc();
                return Ok(Sent::Busy);
            }
            match classify(&error) {
                Consequence::DeadLetter if dead_letter_reason.is_none() => {
                    self.dead_letter(entry, topic, &error.to_string())
                }
                Consequence::DeadLetter => {
                    self.producer.context().write_dead_letter_file(
                        entry,
                        topic,
                        &format!("{dead_letter_reason:?}; {error}"),
                    );
                    self.producer.context().ack(entry.seq);
                    Ok(Sent::Taken)
                }
                Consequence::Fatal => Err(format!("fatal produce error: {error}")),
                Consequence::Retry => {
                    tracing::debug!(seq = entry.seq, error = %error, "produce refused for now; trying again");
                    Ok(Sent::Busy)
                }
            }
        }
    }
}
