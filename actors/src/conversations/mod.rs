//! The conversation lifecycle stream: one `conversation.started` and one `conversation.ended`
//! (and, optionally, a `conversation.wrapup` per agent) for every conversation, whatever topics,
//! shards and legs its snapshots came through.
//!
//! Exactly once *as derived*: the state ([`state::State`]) changes only together with the spool.
//! Under one lock, a snapshot's lifecycle records are appended to the spool first, then the
//! snapshot itself, and only what made it into the spool changes the state. The spool is the
//! state's log: a checkpoint (`conversations.json`, every `checkpoint_interval`) records the
//! state and the spool seq it covers, the spool keeps every record from that seq on
//! ([`Spool::retain_from`]), and a restart loads the checkpoint and replays the records after
//! it (lifecycle records, snapshots, backfilled conversations) through the same functions. A
//! SIGKILL, a restart, a rollover overlap or the two legs of a shard therefore never produce a
//! second `started` or `ended`. Delivery to Kafka stays at-least-once; every record carries its
//! deterministic id (`{conversationId}:started`, …) as a header for consumers that deduplicate.

pub mod observe;
pub mod record;
pub mod state;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::{Deserialize, Serialize};

use crate::backfill::{BackfillPayload, BACKFILL};
use crate::metrics::Metrics;
use crate::spool::{AppendOutcome, Record, RecordKind, Spool, SpoolError};
pub use observe::{AnalyticsView, SnapshotView};
pub use record::{Kind, LifecycleRecord, Source, LIFECYCLE};
pub use state::Rules;
use state::State;

/// The checkpoint file in the spool directory.
pub const CHECKPOINT_FILE: &str = "conversations.json";
/// Consecutive failed checkpoints after which the spool is no longer held for the lifecycle
/// state (so that a full disk can still be freed by deleting acknowledged segments).
const CHECKPOINT_FAILURES_BEFORE_RELEASE: u32 = 3;

/// How the lifecycle stream behaves.
#[derive(Debug, Clone)]
pub struct LifecycleSettings {
    pub rules: Rules,
    /// How often the state is checkpointed; a restart replays at most this much of the spool.
    pub checkpoint_interval: Duration,
    /// How long an ended conversation is remembered, so a late snapshot does not start it again.
    pub remember_ended: Duration,
    /// An open conversation without a snapshot for this long, that analytics did not end
    /// either, is given up (counted in `conversations_abandoned`).
    pub max_open: Duration,
}

#[derive(Serialize, Deserialize)]
struct Checkpoint {
    version: u32,
    /// The state covers every spool record below this seq.
    next_seq: u64,
    #[serde(flatten)]
    state: State,
}

/// Why appending stopped short.
enum Stop {
    /// The spool is full and the policy is `drop-newest`.
    Dropped,
    Refused(SpoolError),
}

/// Why [`Conversations::append_analytics`] did not write everything; call it again later.
#[derive(Debug, thiserror::Error)]
pub enum AnalyticsStop {
    #[error("the spool is full (drop-newest)")]
    NoRoom,
    #[error(transparent)]
    Spool(SpoolError),
}

/// What opening found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OpenReport {
    pub conversations: usize,
    pub records_replayed: u64,
    /// The checkpoint could not be read and was moved aside (the state starts empty).
    pub checkpoint_unreadable: Option<String>,
}

/// A handle to the lifecycle state; cheap to clone, shared by every SocketActor, backfill and
/// reconciliation.
#[derive(Clone)]
pub struct Conversations {
    inner: Arc<Inner>,
}

struct Inner {
    settings: LifecycleSettings,
    spool: Spool,
    metrics: Arc<Metrics>,
    path: PathBuf,
    state: Mutex<State>,
    checkpoint: Mutex<CheckpointBook>,
    stop: (Mutex<bool>, Condvar),
    thread: Mutex<Option<JoinHandle<()>>>,
}

struct CheckpointBook {
    written_at: Instant,
    failures: u32,
}

impl Conversations {
    /// The spool's disk reserve: files beside the spool are written through it.
    pub fn disk_reserve(&self) -> Arc<crate::disk_reserve::DiskReserve> {
        self.inner.spool.disk_reserve()
    }

    /// Loads the checkpoint in the spool directory, holds the spool from the seq it covers,
    /// replays the records after it, writes a fresh checkpoint and starts checkpointing.
    /// Call before anything appends to or acknowledges the spool.
    pub fn open(
        spool: Spool,
        settings: LifecycleSettings,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<(Conversations, OpenReport)> {
        let path = spool.dir().join(CHECKPOINT_FILE);
        let mut report = OpenReport::default();
        let (state, from_seq) = match load(&path) {
            Ok(Some(checkpoint)) => (checkpoint.state, checkpoint.next_seq),
            Ok(None) => (State::default(), 0),
            Err(error) => {
                let aside =
                    path.with_extension(format!("json.unreadable-{}", Utc::now().timestamp()));
                tracing::error!(file = %path.display(), %error, aside = %aside.display(), "lifecycle checkpoint unreadable; moved aside, starting from an empty state (conversations open now may get a second conversation.started)");
                std::fs::rename(&path, &aside)?;
                report.checkpoint_unreadable = Some(error.to_string());
                (State::default(), 0)
            }
        };
        spool.retain_from(from_seq);
        let inner = Arc::new(Inner {
            settings,
            spool,
            metrics,
            path,
            state: Mutex::new(state),
            checkpoint: Mutex::new(CheckpointBook {
                written_at: Instant::now(),
                failures: 0,
            }),
            stop: (Mutex::new(false), Condvar::new()),
            thread: Mutex::new(None),
        });
        report.records_replayed = inner.replay(from_seq)?;
        report.conversations = inner.lock().len();
        inner.checkpoint_now()?;
        let worker = Arc::clone(&inner);
        let thread = std::thread::Builder::new()
            .name("lifecycle-checkpoint".into())
            .spawn(move || worker.run_checkpoints())?;
        *inner.thread.lock().unwrap_or_else(PoisonError::into_inner) = Some(thread);
        Ok((Conversations { inner }, report))
    }

    /// Appends an event frame; a conversation snapshot first gets its lifecycle records
    /// appended. Other frames go straight to the spool. Same outcomes as [`Spool::append`]
    /// (for the frame).
    pub fn append_event(&self, record: &Record) -> Result<AppendOutcome, SpoolError> {
        let Some(view) = observe::snapshot(&record.payload) else {
            return self.inner.spool.append(record);
        };
        let now_ms = record.received_at_ms;
        let mut state = self.inner.lock();
        let (conv, planned) = state.plan_snapshot(&view, now_ms, self.inner.settings.rules);
        let (appended, written) = self.inner.append_records(&planned, record.shard, now_ms);
        // A dropped lifecycle record (`drop-newest`) drops the frame too: both are inside the
        // drop span the caller records, and backfill derives from the analytics answer.
        let outcome = match written {
            Ok(()) => self.inner.spool.append(record),
            Err(Stop::Dropped) => Ok(AppendOutcome::Dropped),
            Err(Stop::Refused(error)) => Err(error),
        };
        if matches!(outcome, Ok(AppendOutcome::Appended { .. })) {
            state.put(&view.conversation_id, conv);
        }
        // Whatever records made it into the spool count, whether or not the frame did (the
        // replay after a crash would see them just the same).
        for r in &planned[..appended] {
            state.apply(r, now_ms);
        }
        outcome
    }

    /// Derives from an analytics conversation (backfill, reconciliation) and appends the
    /// records it calls for, then `extra` (the backfilled conversation itself) if given.
    /// Returns the records written. On an error nothing more is appended; call again (it
    /// picks up where it stopped).
    pub fn append_analytics(
        &self,
        view: &AnalyticsView,
        source: Source,
        shard: u32,
        extra: Option<&Record>,
    ) -> Result<Vec<LifecycleRecord>, AnalyticsStop> {
        let now_ms = Utc::now().timestamp_millis();
        let mut state = self.inner.lock();
        let (conv, planned) = state.plan_analytics(view, source, now_ms, self.inner.settings.rules);
        let (appended, written) = self.inner.append_records(&planned, shard, now_ms);
        let outcome = match (written, extra) {
            (Ok(()), Some(extra)) => match self.inner.spool.append(extra) {
                Ok(AppendOutcome::Appended { .. }) => Ok(()),
                Ok(AppendOutcome::Dropped) => Err(AnalyticsStop::NoRoom),
                Err(error) => Err(AnalyticsStop::Spool(error)),
            },
            (Ok(()), None) => Ok(()),
            (Err(Stop::Dropped), _) => Err(AnalyticsStop::NoRoom),
            (Err(Stop::Refused(error)), _) => Err(AnalyticsStop::Spool(error)),
        };
        if outcome.is_ok() {
            state.put(&view.conversation_id, conv);
        }
        for r in &planned[..appended] {
            state.apply(r, now_ms);
        }
        outcome.map(|()| planned)
    }

    /// Open conversations whose last snapshot is older than `quiet_for` (reconciliation looks
    /// them up), oldest first, at most `limit`.
    pub fn quiet_open(&self, quiet_for: Duration, limit: usize) -> Vec<(String, i64)> {
        let cutoff = Utc::now().timestamp_millis() - quiet_for.as_millis() as i64;
        let state = self.inner.lock();
        let mut quiet: Vec<(String, i64)> = state
            .open()
            .filter(|(_, c)| c.last_seen_ms.max(c.start_ms.unwrap_or(0)) < cutoff)
            .map(|(id, c)| (id.clone(), c.start_ms.unwrap_or(0)))
            .collect();
        quiet.sort_by_key(|(_, start)| *start);
        quiet.truncate(limit);
        quiet
    }

    /// Whether the conversation ended (as far as the lifecycle stream knows).
    pub fn has_ended(&self, id: &str) -> bool {
        self.inner
            .lock()
            .get(id)
            .is_some_and(|c| c.ended_ms.is_some())
    }

    /// The conversation is known and got a snapshot within `within`.
    pub fn seen_within(&self, id: &str, within: Duration) -> bool {
        let cutoff = Utc::now().timestamp_millis() - within.as_millis() as i64;
        self.inner
            .lock()
            .get(id)
            .is_some_and(|c| c.last_seen_ms >= cutoff)
    }

    /// (open, known) conversation counts.
    pub fn counts(&self) -> (usize, usize) {
        let state = self.inner.lock();
        (state.open().count(), state.len())
    }

    /// Seconds since the last checkpoint was written.
    pub fn checkpoint_age(&self) -> f64 {
        self.inner
            .checkpoint
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .written_at
            .elapsed()
            .as_secs_f64()
    }

    /// Stops checkpointing and writes a final checkpoint.
    pub fn close(&self) {
        self.stop_checkpoints();
        if let Err(error) = self.inner.checkpoint_now() {
            tracing::error!(%error, "final lifecycle checkpoint failed; the next start replays more of the spool");
        }
    }

    fn stop_checkpoints(&self) {
        {
            let (lock, condvar) = &self.inner.stop;
            *lock.lock().unwrap_or_else(PoisonError::into_inner) = true;
            condvar.notify_all();
        }
        let thread = self
            .inner
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }

    /// Writes a checkpoint now (tests; the checkpoint thread does this on its own).
    pub fn checkpoint(&self) -> std::io::Result<()> {
        self.inner.checkpoint_now()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change to the state is a whole-statement update; a panic elsewhere leaves it
        // consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `planned` in order (the caller holds the state lock), stopping at the first that
    /// does not make it in: how many did, and why the rest did not.
    fn append_records(
        &self,
        planned: &[LifecycleRecord],
        shard: u32,
        now_ms: i64,
    ) -> (usize, Result<(), Stop>) {
        for (index, r) in planned.iter().enumerate() {
            let payload = serde_json::to_vec(r).unwrap_or_default();
            let record = Record {
                kind: LIFECYCLE,
                shard,
                received_at_ms: now_ms,
                payload: payload.into(),
                index: None,
            };
            match self.spool.append(&record) {
                Ok(AppendOutcome::Appended { .. }) => {
                    self.metrics
                        .lifecycle_records
                        .get_or_create(&Metrics::lifecycle(r.kind.as_str(), r.source.as_str()))
                        .inc();
                }
                Ok(AppendOutcome::Dropped) => return (index, Err(Stop::Dropped)),
                Err(error) => return (index, Err(Stop::Refused(error))),
            }
        }
        (planned.len(), Ok(()))
    }

    /// Applies every record from `from_seq` on, as the live path did.
    fn replay(&self, from_seq: u64) -> std::io::Result<u64> {
        let mut next = from_seq;
        let mut replayed = 0;
        let rules = self.settings.rules;
        let mut state = self.lock();
        loop {
            let batch = self
                .spool
                .read_batch(next, 1024, 16 * 1024 * 1024)
                .map_err(std::io::Error::other)?;
            let Some(last) = batch.last() else {
                break;
            };
            next = last.seq + 1;
            for entry in &batch {
                let record = &entry.record;
                let now_ms = record.received_at_ms;
                match record.kind {
                    kind if kind == LIFECYCLE => {
                        match serde_json::from_slice::<LifecycleRecord>(&record.payload) {
                            Ok(r) => state.apply(&r, now_ms),
                            Err(error) => {
                                tracing::warn!(seq = entry.seq, %error, "unreadable lifecycle record in the spool; skipped")
                            }
                        }
                    }
                    RecordKind::Event => {
                        if let Some(view) = observe::snapshot(&record.payload) {
                            let (conv, _) = state.plan_snapshot(&view, now_ms, rules);
                            state.put(&view.conversation_id, conv);
                        }
                    }
                    kind if kind == BACKFILL => {
                        let view = serde_json::from_slice::<BackfillPayload<'_>>(&record.payload)
                            .ok()
                            .and_then(|p| observe::analytics(p.conversation.get()));
                        if let Some(view) = view {
                            let (conv, _) =
                                state.plan_analytics(&view, Source::Backfill, now_ms, rules);
                            state.put(&view.conversation_id, conv);
                        }
                    }
                    _ => {}
                }
                replayed += 1;
            }
        }
        Ok(replayed)
    }

    fn run_checkpoints(&self) {
        let (lock, condvar) = &self.stop;
        loop {
            let stopped = lock.lock().unwrap_or_else(PoisonError::into_inner);
            let (stopped, _) = condvar
                .wait_timeout_while(stopped, self.settings.checkpoint_interval, |s| !*s)
                .unwrap_or_else(PoisonError::into_inner);
            if *stopped {
                return;
            }
            drop(stopped);
            if let Err(error) = self.checkpoint_now() {
                let failures = {
                    let mut book = self
                        .checkpoint
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    book.failures += 1;
                    book.failures
                };
                self.metrics.lifecycle_checkpoint_failures.inc();
                if failures.is_power_of_two() {
                    tracing::error!(%error, failures, file = %self.path.display(), "lifecycle checkpoint failed");
                }
                if failures == CHECKPOINT_FAILURES_BEFORE_RELEASE {
                    tracing::error!(file = %self.path.display(), "lifecycle checkpoint keeps failing: no longer holding acknowledged spool records for it, so a full disk can be freed; until a checkpoint succeeds, a crash may repeat lifecycle records of this period");
                }
                if failures >= CHECKPOINT_FAILURES_BEFORE_RELEASE {
                    self.spool.retain_from(self.spool.next_seq());
                }
            }
            let (open, known) = {
                let state = self.lock();
                (state.open().count(), state.len())
            };
            self.metrics.conversations_open.set(open as i64);
            self.metrics.conversations_known.set(known as i64);
            let age = self
                .checkpoint
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .written_at
                .elapsed()
                .as_secs_f64();
            self.metrics.lifecycle_checkpoint_age.set(age);
        }
    }

    /// Expires old conversations, writes the checkpoint durably, then lets the spool forget
    /// what it covers.
    fn checkpoint_now(&self) -> std::io::Result<()> {
        let (bytes, next_seq) = {
            let mut state = self.lock();
            let abandoned = state.expire(
                Utc::now().timestamp_millis(),
                self.settings.remember_ended.as_millis() as i64,
                self.settings.max_open.as_millis() as i64,
            );
            if abandoned > 0 {
                tracing::warn!(
                    abandoned,
                    "open conversations given up after lifecycle.max_open without any news"
                );
                self.metrics
                    .conversations_abandoned
                    .inc_by(abandoned as u64);
            }
            // Every record that changed the state was appended under this lock: all of them
            // are below next_seq.
            let next_seq = self.spool.next_seq();
            let checkpoint = CheckpointRef {
                version: 1,
                next_seq,
                state: &state,
            };
            (
                serde_json::to_vec(&checkpoint).map_err(std::io::Error::other)?,
                next_seq,
            )
        };
        let reserve = self.spool.disk_reserve();
        reserve.with_room(|| crate::private_fs::replace_file(&self.path, &bytes))?;
        self.spool.retain_from(next_seq);
        let mut book = self
            .checkpoint
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        book.written_at = Instant::now();
        book.failures = 0;
        Ok(())
    }
}

#[derive(Serialize)]
struct CheckpointRef<'a> {
    version: u32,
    next_seq: u64,
    #[serde(flatten)]
    state: &'a State,
}

fn load(path: &Path) -> std::io::Result<Option<Checkpoint>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let checkpoint: Checkpoint = serde_json::from_slice(&bytes).map_err(std::io::Error::other)?;
    if checkpoint.version != 1 {
        return Err(std::io::Error::other(format!(
            "checkpoint version {} is not supported",
            checkpoint.version
        )));
    }
    Ok(Some(checkpoint))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::SpoolConfig;

    fn settings() -> LifecycleSettings {
        LifecycleSettings {
            rules: Rules {
                wrapup: true,
                addresses: false,
            },
            checkpoint_interval: Duration::from_secs(3600),
            remember_ended: Duration::from_secs(3600),
            max_open: Duration::from_secs(48 * 3600),
        }
    }

    fn snapshot(conversation: &str, ended: bool, at_ms: i64) -> Record {
        let state = if ended { "disconnected" } else { "connected" };
        let end = if ended {
            format!(r#","endTime":"{}""#, record::iso(at_ms))
        } else {
            String::new()
        };
        let body = format!(
            r#"{{"topicName":"v2.routing.queues.q1.conversations","eventBody":{{"id":"{conversation}","participants":[{{"id":"p1","purpose":"customer","connectedTime":"{}"{end},"calls":[{{"state":"{state}"}}]}}]}}}}"#,
            record::iso(at_ms - 1000)
        );
        Record::event(0, at_ms, body.into_bytes())
    }

    fn open(dir: &Path) -> (Spool, Conversations) {
        let (spool, _) = Spool::open(SpoolConfig::new(dir)).unwrap();
        let (conversations, _) =
            Conversations::open(spool.clone(), settings(), Arc::new(Metrics::new())).unwrap();
        (spool, conversations)
    }

    fn lifecycle_records(spool: &Spool) -> Vec<LifecycleRecord> {
        spool
            .read_batch(0, 100_000, usize::MAX)
            .unwrap()
            .into_iter()
            .filter(|e| e.record.kind == LIFECYCLE)
            .map(|e| serde_json::from_slice(&e.record.payload).unwrap())
            .collect()
    }

    /// Appends a frame and checks it went into the spool.
    fn append(conversations: &Conversations, record: &Record) {
        let outcome = conversations.append_event(record).unwrap();
        assert!(matches!(outcome, AppendOutcome::Appended { .. }));
    }

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn lifecycle_records_precede_their_snapshot_in_the_spool_and_come_once() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, conversations) = open(dir.path());
        for _ in 0..3 {
            let outcome = conversations
                .append_event(&snapshot("c1", false, NOW))
                .unwrap();
            assert!(matches!(outcome, AppendOutcome::Appended { .. }));
        }
        append(&conversations, &snapshot("c1", true, NOW + 5_000));
        append(&conversations, &snapshot("c1", true, NOW + 5_000));
        let kinds: Vec<RecordKind> = spool
            .read_batch(0, 100, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|e| e.record.kind)
            .collect();
        use RecordKind::Event;
        assert_eq!(
            kinds,
            vec![LIFECYCLE, Event, Event, Event, LIFECYCLE, Event, Event]
        );
        let records = lifecycle_records(&spool);
        assert_eq!(records[0].kind, Kind::Started);
        assert_eq!(records[0].start_time, Some(record::iso(NOW - 1000)));
        assert_eq!(records[1].kind, Kind::Ended);
        assert_eq!(records[1].end_time, Some(record::iso(NOW + 5_000)));
        assert_eq!(conversations.counts(), (0, 1));
        conversations.close();
    }

    /// A crash after the last checkpoint: the records after it are replayed, so neither a
    /// second `started` nor a missing `ended` follows.
    #[test]
    fn a_crash_after_the_checkpoint_repeats_nothing() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (spool, conversations) = open(dir.path());
            append(&conversations, &snapshot("c1", false, NOW));
            conversations.checkpoint().unwrap();
            append(&conversations, &snapshot("c2", false, NOW));
            append(&conversations, &snapshot("c1", true, NOW + 1_000));
            // Kafka acknowledged everything: only the hold keeps the records after the
            // checkpoint on disk.
            for seq in 1..spool.next_seq() {
                spool.ack(seq).unwrap();
            }
            spool.sync().unwrap();
            // SIGKILL: no final checkpoint.
            conversations.stop_checkpoints();
        }
        let (spool, conversations) = open(dir.path());
        assert_eq!(conversations.counts(), (1, 2), "c2 open, c1 ended");
        append(&conversations, &snapshot("c1", true, NOW + 2_000));
        append(&conversations, &snapshot("c2", false, NOW + 2_000));
        append(&conversations, &snapshot("c2", true, NOW + 3_000));
        let records = lifecycle_records(&spool);
        let mut ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
        ids.sort_unstable();
        // Everything is in one segment, so even c1's start is still on disk: each id once.
        assert_eq!(
            ids,
            vec!["c1:ended", "c1:started", "c2:ended", "c2:started"]
        );
        conversations.close();
    }

    #[test]
    fn an_unreadable_checkpoint_is_moved_aside_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CHECKPOINT_FILE), b"{not json").unwrap();
        let (spool, _) = Spool::open(SpoolConfig::new(dir.path())).unwrap();
        let (conversations, report) =
            Conversations::open(spool, settings(), Arc::new(Metrics::new())).unwrap();
        assert!(report.checkpoint_unreadable.is_some());
        let aside = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().contains("unreadable"));
        assert!(aside);
        conversations.close();
    }

    #[test]
    fn the_checkpoint_is_not_world_readable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (_spool, conversations) = open(dir.path());
        conversations.close();
        let mode = std::fs::metadata(dir.path().join(CHECKPOINT_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "mode {mode:o}");
    }
}
