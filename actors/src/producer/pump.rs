//! The send loop: moves records from the spool into librdkafka, bounded in records and bytes,
//! and decides what becomes of records whose delivery failed (`delivery.rs` reports them).
//!
//! Nothing here blocks the actor's thread: every wait is a `select` on deliveries, new spool
//! records, a due retry or a stop, so the actor keeps answering and `/livez` stays up.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, PurgeConfig};
use smallvec::{smallvec, SmallVec};
use tokio::sync::{mpsc, Notify};

use super::dead_letter::{self, DeadLetterFile};
use super::delivery::{DeadLetterCopy, DeliveryContext, Failed, Pending};
use super::errors::{classify, is_purged, is_queue_full, is_too_large, label, Consequence};
use super::events::EventQueue;
use super::record::{build, Built, Outgoing};
use super::retry::{Attempts, Due, RetryBook, Stripes, Verdict};
use super::KafkaSettings;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::spool::{Spool, SpoolEntry};

/// Largest read from the spool in one go.
const MAX_BATCH_RECORDS: usize = 1024;
const MAX_BATCH_BYTES: usize = 8 << 20;
/// How often the loop looks around when nothing wakes it.
const IDLE_TICK: Duration = Duration::from_millis(250);
/// The shortest wait for a due retry.
const MIN_TICK: Duration = Duration::from_millis(10);
/// Most librdkafka events (a delivery report event holds a batch of records) served per round
/// of the loop; the rest wait for the next round, which comes at once.
const MAX_EVENTS_PER_ROUND: usize = 256;

/// Whether librdkafka took a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// Taken (or dealt with: parked, dead-lettered).
    Taken,
    /// Not now (librdkafka's queue is full, or a transient produce error): the record stays
    /// where it is and the loop waits before trying it again.
    Busy,
}

/// A dead letter the file could not take yet: the record stays in the spool until it can.
#[derive(Debug, Clone)]
struct FileDue {
    seq: u64,
    routed_topic: String,
    reason: String,
    /// Whether the record's head goes to the dead-letter topic once the file holds the whole.
    too_large: bool,
}

/// What a line of the dead-letter file stands for until it is durable.
#[derive(Debug, Clone)]
struct Line {
    due: FileDue,
    /// Acknowledge the record once durable (not when its head goes to the topic).
    acks: bool,
}

/// The send loop's own state.
struct State {
    cursor: u64,
    book: RetryBook,
    dead_letters: DeadLetterFile<Line>,
    /// Dead letters waiting for the file to work again.
    file_backlog: Vec<FileDue>,
    file_attempt: u32,
    file_due: Option<Instant>,
    /// Whether anything reached librdkafka's queue since it was last purged.
    sent_since_purge: bool,
}

pub(super) struct Pump {
    settings: Arc<KafkaSettings>,
    spool: Spool,
    metrics: Arc<Metrics>,
    health: Health,
    /// Declared before `producer`, so its handle on librdkafka's queue goes before the client.
    events: EventQueue,
    /// Polled on the loop's own thread (see `events.rs`): the delivery callbacks run there.
    producer: BaseProducer<DeliveryContext>,
    failures: tokio::sync::Mutex<mpsc::UnboundedReceiver<Failed>>,
    in_flight: Arc<AtomicUsize>,
    in_flight_bytes: Arc<AtomicUsize>,
    stripes: Arc<Stripes>,
    /// Wakes a waiting loop to see `stopped`.
    stop: Notify,
    stopped: AtomicBool,
    /// librdkafka times records out (`message.timeout.ms` set): one batch per key at a time.
    one_batch_per_key: bool,
}

impl Pump {
    pub(super) fn new(
        settings: Arc<KafkaSettings>,
        spool: Spool,
        health: Health,
        metrics: Arc<Metrics>,
    ) -> Result<Self, KafkaError> {
        let (sender, receiver) = mpsc::unbounded_channel();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let in_flight_bytes = Arc::new(AtomicUsize::new(0));
        let stripes = Arc::new(Stripes::default());
        let context = DeliveryContext {
            spool: spool.clone(),
            metrics: metrics.clone(),
            health: health.clone(),
            in_flight: in_flight.clone(),
            in_flight_bytes: in_flight_bytes.clone(),
            stripes: stripes.clone(),
            failures: sender,
        };
        let producer: BaseProducer<DeliveryContext> =
            settings.client_config().create_with_context(context)?;
        let events = EventQueue::new(producer.client());
        let settings_times_out = settings.records_time_out();
        Ok(Self {
            settings,
            spool,
            metrics,
            health,
            events,
            producer,
            failures: tokio::sync::Mutex::new(receiver),
            in_flight,
            in_flight_bytes,
            stripes,
            stop: Notify::new(),
            stopped: AtomicBool::new(false),
            one_batch_per_key: settings_times_out,
        })
    }

    pub(super) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.stop.notify_one();
    }

    /// Runs until stopped (Ok) or until the producer is unusable (Err).
    pub(super) async fn run(&self) -> Result<(), String> {
        let mut failures = self.failures.lock().await;
        let mut state = State {
            cursor: self.spool.committed_seq() + 1,
            book: RetryBook::new(
                self.settings.retry_backoff,
                self.settings.max_delivery_attempts,
            ),
            dead_letters: DeadLetterFile::new(
                self.settings.dead_letter_file.clone(),
                self.settings.dead_letter_limits,
            ),
            file_backlog: Vec::new(),
            file_attempt: 0,
            file_due: None,
            sent_since_purge: false,
        };
        let started_ms = chrono::Utc::now().timestamp_millis();
        let mut recovered = false;
        loop {
            // Delivery reports first: they make room in flight and free keys.
            self.serve_events();
            if self.stopped.load(Ordering::Acquire) {
                self.sync_dead_letters(&mut state);
                return Ok(());
            }
            if let Some((code, reason)) = self.producer.client().fatal_error() {
                return Err(format!("fatal Kafka error {code:?}: {reason}"));
            }
            // The stripes before the failures: a group seen idle has had its failures read
            // (the callback reports a failure before it lowers the count).
            let idle = state.book.idle(&self.stripes);
            while let Ok(failed) = failures.try_recv() {
                self.on_failed(&mut state, failed)?;
            }
            if !recovered && self.health.last_ack_ms() > started_ms {
                // This producer delivered: whatever failed fatally before is over.
                recovered = true;
                self.metrics.producer_failing.set(0);
                let mut health = self.health.lock();
                if health.kafka.failing_since.take().is_some() {
                    tracing::info!("Kafka accepts the producer again");
                }
                health.kafka.fatal_error = None;
            }
            self.sync_dead_letters(&mut state);
            self.retry_file_backlog(&mut state)?;
            self.update_gauges(&state);
            if self.full() {
                self.wait(&mut state, &mut failures, None).await?;
                continue;
            }
            // Retries first: they are older than anything new.
            let due = state.book.take_due(Instant::now(), idle);
            if !due.is_empty() {
                if self.send_again(&mut state, due)? == Sent::Busy {
                    self.wait(&mut state, &mut failures, None).await?;
                }
                continue;
            }
            if state.book.len() >= self.settings.max_in_flight {
                // Enough waits in the retry book (seqs only, read again when sent): newer
                // records stay in the spool until it shrinks.
                self.wait(&mut state, &mut failures, None).await?;
                continue;
            }
            let room = self
                .settings
                .max_in_flight
                .saturating_sub(self.in_flight.load(Ordering::Acquire));
            let bytes_room = self
                .settings
                .max_in_flight_bytes
                .saturating_sub(self.in_flight_bytes.load(Ordering::Acquire))
                .max(1);
            let batch = self
                .spool
                .read_batch(
                    state.cursor,
                    room.clamp(1, MAX_BATCH_RECORDS),
                    bytes_room.min(MAX_BATCH_BYTES),
                )
                .map_err(|e| format!("spool read failed: {e}"))?;
            if batch.is_empty() {
                let cursor = state.cursor;
                self.wait(&mut state, &mut failures, Some(cursor)).await?;
                continue;
            }
            for entry in &batch {
                if self.full() {
                    break;
                }
                if self.produce(&mut state, entry, Attempts::default(), true)? == Sent::Busy {
                    // This one and the rest of the batch are read again once deliveries made
                    // room.
                    self.wait(&mut state, &mut failures, None).await?;
                    break;
                }
                state.cursor = entry.seq + 1;
            }
        }
    }

    /// The producer's own fatal error (what caused it: refused credentials, an ACL) rather
    /// than the generic one the records it failed carry.
    fn fatal_reason(&self, fallback: String) -> String {
        match self.producer.client().fatal_error() {
            Some((code, reason)) => format!("fatal Kafka error {code:?}: {reason}"),
            None => fallback,
        }
    }

    /// In flight at the bound (records, or bytes: a record larger than the byte bound still
    /// goes, alone).
    fn full(&self) -> bool {
        let records = self.in_flight.load(Ordering::Acquire);
        records >= self.settings.max_in_flight
            || (records > 0
                && self.in_flight_bytes.load(Ordering::Acquire)
                    >= self.settings.max_in_flight_bytes)
    }

    fn update_gauges(&self, state: &State) {
        self.metrics
            .in_flight
            .set(self.in_flight.load(Ordering::Acquire) as i64);
        self.metrics
            .in_flight_bytes
            .set(self.in_flight_bytes.load(Ordering::Acquire) as i64);
        self.metrics
            .retries_waiting
            .set((state.book.len() + state.file_backlog.len()) as i64);
    }

    /// Serves what librdkafka queued (delivery reports run their callbacks here, on the
    /// loop's thread), up to [`MAX_EVENTS_PER_ROUND`] events.
    fn serve_events(&self) {
        for _ in 0..MAX_EVENTS_PER_ROUND {
            if self.events.len() == 0 {
                break;
            }
            // A zero timeout serves one event.
            self.producer.poll(Duration::ZERO);
        }
    }

    /// Waits, never blocking the thread, for an event from librdkafka (a delivery report:
    /// room in flight, a key's records resolved), for new records from `new_records_from`
    /// (given), and for a failure, a due retry or a stop.
    async fn wait(
        &self,
        state: &mut State,
        failures: &mut mpsc::UnboundedReceiver<Failed>,
        new_records_from: Option<u64>,
    ) -> Result<(), String> {
        let now = Instant::now();
        let spool = self.spool.clone();
        let appended = async move {
            match new_records_from {
                Some(seq) => spool.wait_for(seq).await,
                None => std::future::pending().await,
            }
        };
        // Never a zero sleep for a group already due, which would spin.
        let tick = [state.book.next_due(), state.file_due]
            .into_iter()
            .flatten()
            .map(|due| due.saturating_duration_since(now).max(MIN_TICK))
            .fold(IDLE_TICK, Duration::min);
        tokio::select! {
            failed = failures.recv() => {
                if let Some(failed) = failed {
                    self.on_failed(state, failed)?;
                }
            }
            _ = self.events.ready() => {}
            _ = self.stop.notified() => {}
            _ = appended => {}
            _ = tokio::time::sleep(tick) => {}
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

    /// Produces records taken from the retry book, in order.
    fn send_again(&self, state: &mut State, due: Vec<Due>) -> Result<Sent, String> {
        let mut rest = due.into_iter();
        while let Some(record) = rest.next() {
            // Gone means acknowledged meanwhile or lost to spool damage (reported there).
            let Some(entry) = self.read_one(record.seq)? else {
                continue;
            };
            if self.produce(state, &entry, record.attempts, false)? == Sent::Busy {
                let now = Instant::now();
                state.book.put_back(record, now);
                for later in rest {
                    state.book.put_back(later, now);
                }
                return Ok(Sent::Busy);
            }
        }
        Ok(Sent::Taken)
    }

    /// Builds and sends one spool entry. `hold`: a new record, which waits behind failed
    /// records of its key.
    fn produce(
        &self,
        state: &mut State,
        entry: &SpoolEntry,
        attempts: Attempts,
        hold: bool,
    ) -> Result<Sent, String> {
        match build(entry, &self.settings) {
            Built::DeadLetter {
                routed_topic,
                reason,
            } => self.dead_letter(state, entry, routed_topic, &reason, false),
            Built::Send(outgoing) => {
                let order_key = outgoing.order_key();
                // With message timeouts, librdkafka fails records one by one as each one's
                // deadline passes (at its periodic scan, or when a connection comes back),
                // and sends the newer ones behind it: a key with records out sends nothing
                // more until they resolved, or a newer record could overtake an older one.
                let busy_key = self.one_batch_per_key
                    && order_key.is_some_and(|key| !self.stripes.is_idle(key));
                if hold && (busy_key || state.book.holds(order_key)) {
                    state.book.park(entry.seq, order_key, Instant::now());
                    return Ok(Sent::Taken);
                }
                self.send(state, entry, &outgoing, order_key, attempts, None)
            }
        }
    }

    /// Hands one record to librdkafka.
    fn send(
        &self,
        state: &mut State,
        entry: &SpoolEntry,
        outgoing: &Outgoing<'_>,
        order_key: Option<u64>,
        attempts: Attempts,
        dead_letter: Option<DeadLetterCopy>,
    ) -> Result<Sent, String> {
        let headers = outgoing.kafka_headers();
        let stripe = order_key.map(Stripes::stripe);
        let bytes = outgoing.value.len();
        let pending = Box::new(Pending {
            seq: entry.seq,
            received_at_ms: entry.record.received_at_ms,
            sent_at_ms: chrono::Utc::now().timestamp_millis(),
            dead_letter: dead_letter.clone(),
            order_key,
            stripe,
            bytes,
            attempts,
        });
        let mut record: BaseRecord<'_, str, [u8], Box<Pending>> =
            BaseRecord::with_opaque_to(&outgoing.topic, pending)
                .payload(outgoing.value)
                .headers(headers);
        if let Some(key) = &outgoing.key {
            record = record.key(&**key);
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.in_flight_bytes.fetch_add(bytes, Ordering::AcqRel);
        if let Some(stripe) = stripe {
            self.stripes.sent(stripe);
        }
        let Err((error, _record)) = self.producer.send(record) else {
            state.sent_since_purge = true;
            return Ok(Sent::Taken);
        };
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.in_flight_bytes.fetch_sub(bytes, Ordering::AcqRel);
        if let Some(stripe) = stripe {
            self.stripes.resolved(stripe);
        }
        if is_queue_full(&error) {
            // librdkafka's own queue is full: deliveries will make room.
            self.metrics
                .events_failed
                .get_or_create(&Metrics::reason("queue_full"))
                .inc();
            return Ok(Sent::Busy);
        }
        match (classify(&error), dead_letter) {
            (Consequence::DeadLetter, None) => self.dead_letter(
                state,
                entry,
                &outgoing.topic,
                &error.to_string(),
                is_too_large(&error),
            ),
            (Consequence::DeadLetter, Some(copy)) => {
                // The dead-letter topic refuses it too: the file is the last resort.
                let reason = format!("{}; dead-letter topic: {error}", copy.reason);
                self.to_file(state, entry, &copy.routed_topic, &reason);
                Ok(Sent::Taken)
            }
            (Consequence::Fatal, _) => {
                Err(self.fatal_reason(format!("fatal produce error: {error}")))
            }
            (Consequence::Retry, _) => {
                tracing::debug!(seq = entry.seq, error = %error, "produce refused for now; trying again");
                Ok(Sent::Busy)
            }
        }
    }

    /// A failed delivery, reported by the delivery callback.
    fn on_failed(&self, state: &mut State, failed: Failed) -> Result<(), String> {
        let Failed {
            pending,
            error,
            routed_topic,
        } = failed;
        let purged = is_purged(&error);
        if !purged {
            self.metrics
                .events_failed
                .get_or_create(&Metrics::reason(&label(&error)))
                .inc();
        }
        let consequence = if purged {
            Consequence::Retry
        } else {
            classify(&error)
        };
        match (consequence, &pending.dead_letter) {
            (Consequence::Fatal, _) => {
                Err(self.fatal_reason(format!("fatal delivery error: {error}")))
            }
            (Consequence::DeadLetter, Some(copy)) => {
                let reason = format!("{}; dead-letter topic: {error}", copy.reason);
                self.seq_to_file(state, pending.seq, &copy.routed_topic, &reason)
            }
            (Consequence::DeadLetter, None) => {
                let Some(entry) = self.read_one(pending.seq)? else {
                    return Ok(());
                };
                let sent = self.dead_letter(
                    state,
                    &entry,
                    &routed_topic,
                    &error.to_string(),
                    is_too_large(&error),
                )?;
                self.again_if_busy(state, sent, &pending);
                Ok(())
            }
            (Consequence::Retry, _) => {
                // It counts against the bound only if Kafka took other records meanwhile.
                let counts = self.health.last_ack_ms() > pending.sent_at_ms;
                let newly_held = !state.book.holds(pending.order_key);
                let verdict = state.book.failed(
                    pending.seq,
                    pending.order_key,
                    pending.attempts,
                    counts,
                    purged,
                    Instant::now(),
                );
                match verdict {
                    Verdict::Waits => {
                        tracing::debug!(seq = pending.seq, error = %error, "delivery failed; producing it again in order");
                        if !purged && newly_held && state.sent_since_purge {
                            // Newer records of its key may wait in librdkafka's queue; sent
                            // after a failed one they would overtake it. Back into the
                            // retry book with them (they come back as purged).
                            self.producer.purge(PurgeConfig::default().queue());
                            state.sent_since_purge = false;
                            self.metrics.producer_purges.inc();
                        }
                        Ok(())
                    }
                    Verdict::GiveUp(attempts) => {
                        let Some(entry) = self.read_one(pending.seq)? else {
                            return Ok(());
                        };
                        let reason = format!(
                            "delivery failed {attempts} times while Kafka took other records: {error}"
                        );
                        let sent =
                            self.dead_letter(state, &entry, &routed_topic, &reason, false)?;
                        self.again_if_busy(state, sent, &pending);
                        Ok(())
                    }
                }
            }
        }
    }

    /// A dead letter librdkafka's full queue did not take: the record goes through the retry
    /// book again (with its attempts, so a record given up on is given up on at once).
    fn again_if_busy(&self, state: &mut State, sent: Sent, pending: &Pending) {
        if sent == Sent::Busy {
            let due = Due {
                seq: pending.seq,
                attempts: pending.attempts,
                order_key: None,
            };
            state.book.put_back(due, Instant::now());
        }
    }

    /// Sends a record Kafka can never take where it was routed to the dead-letter topic, or to
    /// the dead-letter file when there is no such topic.
    fn dead_letter(
        &self,
        state: &mut State,
        entry: &SpoolEntry,
        routed_topic: &str,
        reason: &str,
        too_large: bool,
    ) -> Result<Sent, String> {
        tracing::warn!(
            seq = entry.seq,
            reason,
            "record cannot be delivered; dead-lettering it"
        );
        let Some(topic) = self.settings.dead_letter_topic.clone() else {
            self.to_file(state, entry, routed_topic, reason);
            return Ok(Sent::Taken);
        };
        let mut headers: SmallVec<[(&'static str, std::borrow::Cow<'_, str>); 4]> = smallvec![
            ("dead-letter-reason", reason.into()),
            ("routed-topic", routed_topic.into()),
        ];
        let mut value: &[u8] = &entry.record.payload;
        if too_large {
            // The dead-letter topic has the same size limit: the whole record goes to the
            // file (durable before the topic's copy can acknowledge it), the topic gets its
            // first KiB with a pointer to the file.
            if !self.to_file_now(state, entry, routed_topic, reason)? {
                return Ok(Sent::Taken);
            }
            headers.push(("truncated-from-bytes", value.len().to_string().into()));
            headers.push((
                "dead-letter-file",
                self.settings.dead_letter_file.display().to_string().into(),
            ));
            value = &value[..value.len().min(1024)];
        }
        let outgoing = Outgoing {
            topic: topic.into(),
            key: None,
            headers,
            stamp: None,
            value,
        };
        let copy = DeadLetterCopy {
            reason: reason.to_string(),
            routed_topic: routed_topic.to_string(),
        };
        self.send(
            state,
            entry,
            &outgoing,
            None,
            Attempts::default(),
            Some(copy),
        )
    }

    /// Writes a dead letter to the file; the record is acknowledged once the line is durable
    /// (the next sync), or kept in the spool and tried again while the file fails.
    fn to_file(&self, state: &mut State, entry: &SpoolEntry, routed_topic: &str, reason: &str) {
        let due = FileDue {
            seq: entry.seq,
            routed_topic: routed_topic.to_string(),
            reason: reason.to_string(),
            too_large: false,
        };
        self.append_line(state, entry, due, true);
    }

    /// [`Self::to_file`] for a record known by its seq (a delivery report).
    fn seq_to_file(
        &self,
        state: &mut State,
        seq: u64,
        routed_topic: &str,
        reason: &str,
    ) -> Result<(), String> {
        if let Some(entry) = self.read_one(seq)? {
            self.to_file(state, &entry, routed_topic, reason);
        }
        Ok(())
    }

    /// Writes the whole of a record whose head goes to the dead-letter topic, synced now;
    /// false when the file failed (the record waits in the backlog).
    fn to_file_now(
        &self,
        state: &mut State,
        entry: &SpoolEntry,
        routed_topic: &str,
        reason: &str,
    ) -> Result<bool, String> {
        let due = FileDue {
            seq: entry.seq,
            routed_topic: routed_topic.to_string(),
            reason: reason.to_string(),
            too_large: true,
        };
        if !self.append_line(state, entry, due, false) {
            return Ok(false);
        }
        Ok(self.sync_dead_letters(state))
    }

    /// Appends a dead-letter line; on failure the record goes to the backlog.
    fn append_line(&self, state: &mut State, entry: &SpoolEntry, due: FileDue, acks: bool) -> bool {
        let line = dead_letter::line(entry, &due.routed_topic, &due.reason);
        match state.dead_letters.append(
            Line {
                due: due.clone(),
                acks,
            },
            &line,
        ) {
            Ok(()) => true,
            Err(error) => {
                self.file_failed(state, vec![due], &error);
                false
            }
        }
    }

    /// Makes written dead-letter lines durable and acknowledges their records; false when the
    /// sync failed (they are written again later).
    fn sync_dead_letters(&self, state: &mut State) -> bool {
        if !state.dead_letters.has_unsynced() {
            return true;
        }
        match state.dead_letters.sync() {
            Ok(lines) => {
                for line in lines {
                    tracing::error!(seq = line.due.seq, reason = %line.due.reason, file = %state.dead_letters.path().display(), "record written to the dead-letter file");
                    self.metrics
                        .dead_letters
                        .get_or_create(&Metrics::reason("file"))
                        .inc();
                    if line.acks {
                        self.producer.context().ack(line.due.seq);
                    }
                }
                true
            }
            Err((error, lines)) => {
                let dues = lines.into_iter().map(|line| line.due).collect();
                self.file_failed(state, dues, &error);
                false
            }
        }
    }

    fn file_failed(&self, state: &mut State, dues: Vec<FileDue>, error: &std::io::Error) {
        self.metrics
            .dead_letters
            .get_or_create(&Metrics::reason("file_failed"))
            .inc_by(dues.len() as u64);
        let delay = self.settings.retry_backoff.delay(state.file_attempt);
        state.file_attempt = state.file_attempt.saturating_add(1);
        state.file_due = Some(Instant::now() + delay);
        tracing::error!(
            records = dues.len(),
            file = %state.dead_letters.path().display(),
            error = %error,
            retry_in_ms = delay.as_millis() as u64,
            "dead-letter file write failed; the records stay in the spool and are written again"
        );
        let mut health = self.health.lock();
        health.kafka.last_error = Some(format!("dead-letter file: {error}"));
        health.kafka.last_error_at = Some(chrono::Utc::now());
        drop(health);
        state.file_backlog.extend(dues);
    }

    /// Writes the dead letters the file could not take, once their backoff passed.
    fn retry_file_backlog(&self, state: &mut State) -> Result<(), String> {
        if state.file_backlog.is_empty() || state.file_due.is_some_and(|due| Instant::now() < due) {
            return Ok(());
        }
        state.file_due = None;
        let backlog = std::mem::take(&mut state.file_backlog);
        for due in backlog {
            let Some(entry) = self.read_one(due.seq)? else {
                continue;
            };
            if due.too_large {
                // The whole record first, then its head to the topic, as the first time.
                self.dead_letter(state, &entry, &due.routed_topic, &due.reason, true)?;
            } else {
                self.append_line(state, &entry, due, true);
            }
        }
        if self.sync_dead_letters(state) && state.file_backlog.is_empty() {
            state.file_attempt = 0;
        }
        Ok(())
    }
}
