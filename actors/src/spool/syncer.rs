//! Group commit: fsync of appended data, persisting the committed position, deleting acked
//! segments. Run by a background thread on a timer or when kicked, and by `sync()`/close.

use std::io;
use std::mem;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::committed::{sync_dir, write_committed};
use super::config::GAP_HEADROOM_BYTES;
use super::error::SpoolError;
use super::segment::Segment;
use super::stats::SpoolStats;
use super::Shared;

/// What the group commits have made durable; behind `Shared::book`, which also serialises them.
#[derive(Debug)]
pub(crate) struct SyncBook {
    /// The committed position in `committed.pos`. Only segments at or below it are deleted, so
    /// every record after the persisted position is always still on disk.
    persisted_committed: u64,
}

impl SyncBook {
    pub(crate) fn new(persisted_committed: u64) -> Self {
        SyncBook {
            persisted_committed,
        }
    }
}

/// Wakes the syncer thread early (record-count trigger, space needed) or stops it.
#[derive(Debug, Default)]
pub(crate) struct SyncSignal {
    flags: Mutex<SignalFlags>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct SignalFlags {
    kick: bool,
    stop: bool,
}

impl SyncSignal {
    pub(crate) fn kick(&self) {
        self.flags
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .kick = true;
        self.wake.notify_one();
    }

    pub(crate) fn stop(&self) {
        self.flags
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stop = true;
        self.wake.notify_one();
    }

    /// Waits for a kick, a stop or the timeout; returns whether to stop.
    fn wait(&self, timeout: Duration) -> bool {
        let mut flags = self.flags.lock().unwrap_or_else(PoisonError::into_inner);
        if !flags.kick && !flags.stop {
            flags = self
                .wake
                .wait_timeout(flags, timeout)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        flags.kick = false;
        flags.stop
    }
}

/// Starts the group-commit thread. It holds the `Shared` but not the `Handle`, so the last
/// `Spool` clone can stop and join it.
pub(crate) fn spawn(shared: Arc<Shared>) -> io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name("spool-sync".into())
        .spawn(move || run(&shared))
}

fn run(shared: &Shared) {
    let mut consecutive_failures: u64 = 0;
    loop {
        if shared.signal.wait(shared.config.fsync_interval) {
            return; // the closing handle runs the final sync
        }
        match shared.sync() {
            Ok(()) => consecutive_failures = 0,
            Err(error) => {
                consecutive_failures += 1;
                // 1st, 2nd, 4th, 8th, ... failure in a row: visible without flooding the log.
                if consecutive_failures.is_power_of_two() {
                    tracing::error!(
                        dir = %shared.config.dir.display(),
                        %error,
                        consecutive_failures,
                        "spool group commit failed"
                    );
                }
            }
        }
    }
}

impl Shared {
    /// One group commit. Also what `Spool::sync` and close run.
    pub(crate) fn sync(&self) -> Result<(), SpoolError> {
        let mut book = self.lock_book();
        self.flush_data()?;
        let held = self.retain_from.load(Ordering::Acquire).saturating_sub(1);
        let committed = self.lock_acks().committed().min(held);
        let mut persisted = Ok(());
        if committed != book.persisted_committed {
            match self
                .reserve
                .with_room(|| write_committed(&self.config.dir, committed))
            {
                Ok(()) => book.persisted_committed = committed,
                Err(error) => {
                    persisted = Err(SpoolError::io(
                        format!(
                            "persisting committed position {committed} in {}",
                            self.config.dir.display()
                        ),
                        error,
                    ))
                }
            }
        }
        // Acknowledged segments go even when the position could not be written (a full disk):
        // deleting them is what makes room to write it, and it is safe, as recovery starts
        // after the first record on disk when the file on disk says less.
        self.collect_garbage(committed);
        persisted
    }

    /// fsyncs every segment with unsynced appends, then the directory if segments were created.
    fn flush_data(&self) -> Result<(), SpoolError> {
        let (files, dir_dirty) = {
            let mut state = self.lock_state();
            let mut files = mem::take(&mut state.files_to_sync);
            if state.unsynced_records > 0 {
                if let Some(active) = state.active() {
                    files.push((active.path.clone(), Arc::clone(&active.file)));
                }
                state.unsynced_records = 0;
            }
            (files, mem::take(&mut state.dir_dirty))
        };
        if files.is_empty() && !dir_dirty {
            return Ok(());
        }
        let started = Instant::now();
        let mut outcome = Ok(());
        for (path, file) in &files {
            if let Err(error) = file.sync_data() {
                outcome = Err(SpoolError::io(
                    format!("fsync of {}", path.display()),
                    error,
                ));
                break;
            }
        }
        if outcome.is_ok() && dir_dirty {
            if let Err(error) = sync_dir(&self.config.dir) {
                let context = format!("fsync of directory {}", self.config.dir.display());
                outcome = Err(SpoolError::io(context, error));
            }
        }
        if outcome.is_err() {
            // Retry on the next commit. After a failed fsync Linux may report a later one as
            // successful although pages were lost, which is why the error is counted and logged.
            self.fsync.record_error();
            let mut state = self.lock_state();
            state.files_to_sync.extend(files);
            state.dir_dirty |= dir_dirty;
            return outcome;
        }
        let elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.fsync.record(elapsed_us);
        Ok(())
    }

    /// Deletes the segments whose records are all at or below `committed` (acknowledged).
    fn collect_garbage(&self, persisted_committed: u64) {
        let doomed: Vec<Segment> = {
            let mut state = self.lock_state();
            let everything_acked = state.next_seq.saturating_sub(1) <= persisted_committed;
            let active_has_records = state
                .active()
                .is_some_and(|active| active.record_count() > 0);
            if self.full_hint.load(Ordering::Relaxed) && everything_acked && active_has_records {
                // Full, and all of it in the active segment: start a new one so it can go.
                if let Err(error) = state.rotate(&self.config.dir) {
                    tracing::warn!(%error, "could not roll the fully acked active spool segment");
                }
            }
            // A segment's records all precede the next segment's first seq.
            let firsts: Vec<u64> = state.segments.keys().copied().collect();
            let deletable: Vec<u64> = firsts
                .windows(2)
                .filter(|pair| pair[1] - 1 <= persisted_committed)
                .map(|pair| pair[0])
                .collect();
            let mut doomed = Vec::with_capacity(deletable.len());
            for first_seq in deletable {
                if let Some(segment) = state.segments.remove(&first_seq) {
                    state.bytes_on_disk -= segment.len;
                    if state
                        .read_cursor
                        .is_some_and(|cursor| cursor.segment_first_seq == first_seq)
                    {
                        state.read_cursor = None;
                    }
                    doomed.push(segment);
                }
            }
            if !doomed.is_empty() {
                state.dir_dirty = true;
                let event_cap = self.config.max_bytes - GAP_HEADROOM_BYTES;
                if state.bytes_on_disk < event_cap {
                    self.full_hint.store(false, Ordering::Relaxed);
                }
            }
            doomed
        };
        if doomed.is_empty() {
            return;
        }
        for segment in &doomed {
            if let Err(error) = std::fs::remove_file(&segment.path) {
                // Not counted any more; the next open deletes it (it is below the committed
                // position).
                tracing::warn!(file = %segment.path.display(), %error, "could not delete acked spool segment");
            }
        }
        tracing::debug!(
            segments = doomed.len(),
            persisted_committed,
            "deleted acked spool segments"
        );
        // The blocks are free once the last handle is closed.
        drop(doomed);
        self.reserve.rearm();
        self.space_freed.notify_waiters();
    }

    pub(crate) fn stats(&self) -> SpoolStats {
        let committed_seq = self.lock_acks().committed();
        let mut stats = {
            let state = self.lock_state();
            SpoolStats {
                bytes_on_disk: state.bytes_on_disk,
                segments: state.segments.len(),
                next_seq: state.next_seq,
                committed_seq,
                records_unacked: state.next_seq.saturating_sub(committed_seq + 1),
                dropped_records: state.dropped_total,
                full_refusals: state.full_refusals,
                corrupt_cut_total: state.corrupt_cut_total,
                ..SpoolStats::default()
            }
        };
        let (count, last_us, max_us, errors) = self.fsync.snapshot();
        stats.fsync_count = count;
        stats.fsync_last_us = last_us;
        stats.fsync_max_us = max_us;
        stats.fsync_errors = errors;
        if stats.records_unacked > 0 {
            stats.oldest_unacked_received_at_ms = self.oldest_unacked(committed_seq);
        }
        stats
    }

    /// Receive time of the first record after `committed`, cached per committed value.
    fn oldest_unacked(&self, committed: u64) -> Option<i64> {
        let cached = self.lock_state().oldest_unacked_cache;
        if let Some((cached_committed, received_at_ms)) = cached {
            if cached_committed == committed {
                return received_at_ms;
            }
        }
        let first = self
            .read_batch(committed + 1, 1, 0, super::reader::Cursor::Leave)
            .ok()?;
        let received_at_ms = first.first().map(|entry| entry.record.received_at_ms);
        self.lock_state().oldest_unacked_cache = Some((committed, received_at_ms));
        received_at_ms
    }
}
