//! The append path: capacity policy, rotation, one `pwrite` under the writer lock.

use std::sync::atomic::Ordering;

use super::config::{WhenFull, GAP_HEADROOM_BYTES};
use super::error::SpoolError;
use super::record::{
    encode_sealed, encoded_len, frame_len, Record, RecordKind, UnsealedRecord, EVENT_INDEX_BYTES,
    MAX_PAYLOAD_BYTES, RECORD_HEADER_BYTES,
};
use super::segment::SEGMENT_HEADER_BYTES;
use super::{AppendOutcome, Shared};

/// Whether a record encoded with its event index must be encoded again without: it goes into
/// the active segment (no rotation), and that one is of format 1, which an older bridge reads.
/// (Recovery starts a new segment over a format 1 one; it is kept active only when the disk
/// had no room for a new file.)
fn without_index_here(
    indexed: bool,
    state: &super::state::WriterState,
    needs_rotation: bool,
) -> bool {
    indexed
        && !needs_rotation
        && state
            .active()
            .is_some_and(|active| active.version < super::segment::FORMAT_VERSION)
}

impl Shared {
    /// Refuses a payload that could not fit even in an empty spool.
    pub(crate) fn check_payload_size(
        &self,
        kind: RecordKind,
        payload_len: usize,
    ) -> Result<(), SpoolError> {
        let fixed_bytes = (SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES + EVENT_INDEX_BYTES) as u64;
        let limit_bytes = self
            .cap_for(kind)
            .saturating_sub(fixed_bytes)
            .min(MAX_PAYLOAD_BYTES as u64);
        let payload_bytes = payload_len as u64;
        if payload_bytes > limit_bytes {
            return Err(SpoolError::RecordTooLarge {
                payload_bytes,
                limit_bytes,
            });
        }
        Ok(())
    }

    /// The cap an append of `kind` must stay under: only gap (status) records may use the
    /// headroom; events, malformed frames and backfill records leave it to them.
    fn cap_for(&self, kind: RecordKind) -> u64 {
        match kind {
            RecordKind::Gap => self.config.max_bytes,
            RecordKind::Event | RecordKind::Reserved(_) => {
                self.config.max_bytes - GAP_HEADROOM_BYTES
            }
        }
    }

    /// Whether an event of `payload_len` bytes fits now (counting a segment header in case it
    /// has to start a new segment).
    pub(crate) fn has_room_for_event(&self, payload_len: usize) -> bool {
        let needed = (frame_len(payload_len) + EVENT_INDEX_BYTES + SEGMENT_HEADER_BYTES) as u64;
        let bytes_on_disk = self.lock_state().bytes_on_disk;
        bytes_on_disk + needed <= self.cap_for(RecordKind::Event)
    }

    /// Whether an event of `payload_len` bytes fits with the events' cap at most half used
    /// once it is in (or, for an event larger than half the cap, with the spool empty of
    /// everything else). The mark a paused reader waits for: resuming at the first free byte
    /// refills the spool at once and flaps between paused and reading.
    pub(crate) fn is_below_resume_mark(&self, payload_len: usize) -> bool {
        let needed = (frame_len(payload_len) + EVENT_INDEX_BYTES + SEGMENT_HEADER_BYTES) as u64;
        let bytes_on_disk = self.lock_state().bytes_on_disk;
        let mark = (self.cap_for(RecordKind::Event) / 2).max(needed);
        bytes_on_disk + needed <= mark
    }

    pub(crate) fn append(&self, record: &Record) -> Result<AppendOutcome, SpoolError> {
        self.check_payload_size(record.kind, record.payload.len())?;
        if record.kind != RecordKind::Gap && self.reserve.in_use() {
            return Err(SpoolError::DiskReserveInUse);
        }
        // Encode and checksum the payload before taking the lock.
        let mut unsealed = UnsealedRecord::new(record, true);
        let mut frame_bytes = unsealed.len() as u64;
        let cap = self.cap_for(record.kind);

        let mut state = self.lock_state();
        let needs_rotation = state.active().is_some_and(|active| {
            active.record_count() > 0 && active.len + frame_bytes > self.config.segment_bytes
        });
        if without_index_here(unsealed.indexed(), &state, needs_rotation) {
            unsealed = UnsealedRecord::new(record, false);
            frame_bytes = unsealed.len() as u64;
        }
        let record_bytes = frame_bytes
            + if needs_rotation {
                SEGMENT_HEADER_BYTES as u64
            } else {
                0
            };
        if state.bytes_on_disk + record_bytes > cap {
            self.full_hint.store(true, Ordering::Relaxed);
            if record.kind != RecordKind::Gap && self.config.when_full == WhenFull::DropNewest {
                state.note_drop();
                return Ok(AppendOutcome::Dropped);
            }
            state.full_refusals += 1;
            return Err(SpoolError::Full {
                bytes_on_disk: state.bytes_on_disk,
                record_bytes,
                limit_bytes: cap,
            });
        }
        let seq = state.next_seq;
        let sealed = unsealed.seal(seq);
        let write = |state: &mut super::state::WriterState| {
            if needs_rotation && state.active_first_seq() != Some(seq) {
                state.rotate(&self.config.dir)?;
            }
            state.write_frame(seq, sealed)
        };
        match write(&mut state) {
            // The disk (not the spool's cap) is full: a gap record goes into the disk reserve.
            Err(SpoolError::Io { source, .. })
                if record.kind == RecordKind::Gap
                    && crate::disk_reserve::is_disk_full(&source)
                    && self.reserve.release() =>
            {
                write(&mut state)?
            }
            other => other?,
        }
        // Stored under the lock: two appenders publishing after unlocking could go backwards.
        self.published_next_seq.store(seq + 1, Ordering::Release);
        let fsync_due = state.unsynced_records == self.config.fsync_every_records;
        drop(state);

        self.appended.notify_waiters();
        if fsync_due {
            self.signal.kick();
        }
        Ok(AppendOutcome::Appended { seq })
    }
}

/// What [`Spool::append_batch`](super::Spool::append_batch) did.
#[derive(Debug)]
pub struct BatchOutcome {
    /// One outcome per record, in order, for the records looked at: each is in the segment
    /// file (page cache) or was dropped (`drop-newest`).
    pub outcomes: Vec<AppendOutcome>,
    /// What stopped the batch: the record at `outcomes.len()` got this error, as
    /// [`Spool::append`](super::Spool::append) would have returned for it; the records after
    /// it were not looked at.
    pub error: Option<SpoolError>,
}

/// The largest write buffer kept for the next batch (a read of large frames, up to 1 MiB,
/// does not pin its buffer).
const MAX_KEPT_BATCH_BUFFER: usize = 256 * 1024;

/// Sealed frames waiting for their one `pwrite`, and where their outcomes start.
struct Pending {
    bytes: Vec<u8>,
    lens: Vec<usize>,
    first_seq: u64,
    first_outcome: usize,
}

impl Pending {
    fn flush(
        &mut self,
        state: &mut super::state::WriterState,
        outcomes: &mut Vec<AppendOutcome>,
    ) -> Result<(), SpoolError> {
        if self.lens.is_empty() {
            return Ok(());
        }
        let written = state.write_frames(self.first_seq, &self.bytes, &self.lens);
        if written.is_err() {
            // None of the buffered frames is in the file: neither are their outcomes (nor
            // the drops decided after the first of them, which the caller never sees).
            outcomes.truncate(self.first_outcome);
        }
        self.bytes.clear();
        self.lens.clear();
        written
    }
}

impl Shared {
    /// [`append`](Self::append) for several records under one lock and, per segment, one
    /// `pwrite`: the same checks, outcomes and order as appending them one by one, stopping at
    /// the first error. Records are written before this returns, so a process crash loses
    /// none of those reported appended. (Gap records do not take the disk-reserve path here:
    /// append them one by one.)
    pub(crate) fn append_batch(&self, records: &[Record]) -> BatchOutcome {
        let mut outcomes = Vec::with_capacity(records.len());
        // Checks outside the lock, up to the first record that cannot go in. The frames are
        // encoded under it, straight into the buffer of the write: one copy of each payload
        // there, where encoding outside it copied each payload twice (into a buffer of its
        // own, then under the lock into the write's), at the price of the CRC of frames up to
        // 16 KiB under the lock (socket actors of other shards, on their own threads, wait for
        // that).
        let mut accepted = 0;
        let mut early_error = None;
        for record in records {
            if let Err(error) = self.check_payload_size(record.kind, record.payload.len()) {
                early_error = Some(error);
                break;
            }
            if record.kind != RecordKind::Gap && self.reserve.in_use() {
                early_error = Some(SpoolError::DiskReserveInUse);
                break;
            }
            accepted += 1;
        }
        let records = &records[..accepted];
        let mut error = None;
        let mut state = self.lock_state();
        let seq_before = state.next_seq;
        let unsynced_before = state.unsynced_records;
        // The write buffer of the last batch, kept (a fresh one per batch, ~100 KiB for a read
        // of 256 snapshots, made glibc consolidate its free lists every time).
        let mut bytes = std::mem::take(&mut state.batch_buffer);
        bytes.clear();
        bytes.reserve(records.iter().map(|r| encoded_len(r, true)).sum());
        let mut pending = Pending {
            bytes,
            lens: Vec::with_capacity(records.len()),
            first_seq: state.next_seq,
            first_outcome: 0,
        };
        for record in records {
            let mut with_index = record.index.is_some();
            let mut frame_bytes = encoded_len(record, with_index) as u64;
            let cap = self.cap_for(record.kind);
            let buffered_bytes = pending.bytes.len() as u64;
            let needs_rotation = state.active().is_some_and(|active| {
                active.record_count() + (pending.lens.len() as u64) > 0
                    && active.len + buffered_bytes + frame_bytes > self.config.segment_bytes
            });
            if without_index_here(with_index, &state, needs_rotation) {
                with_index = false;
                frame_bytes = encoded_len(record, with_index) as u64;
            }
            let record_bytes = frame_bytes
                + if needs_rotation {
                    SEGMENT_HEADER_BYTES as u64
                } else {
                    0
                };
            if state.bytes_on_disk + buffered_bytes + record_bytes > cap {
                self.full_hint.store(true, Ordering::Relaxed);
                if record.kind != RecordKind::Gap && self.config.when_full == WhenFull::DropNewest {
                    state.note_drop();
                    outcomes.push(AppendOutcome::Dropped);
                    continue;
                }
                state.full_refusals += 1;
                error = Some(SpoolError::Full {
                    bytes_on_disk: state.bytes_on_disk + buffered_bytes,
                    record_bytes,
                    limit_bytes: cap,
                });
                break;
            }
            if needs_rotation {
                if let Err(failed) = pending.flush(&mut state, &mut outcomes) {
                    error = Some(failed);
                    break;
                }
                let seq = state.next_seq;
                if state.active_first_seq() != Some(seq) {
                    if let Err(failed) = state.rotate(&self.config.dir) {
                        error = Some(failed);
                        break;
                    }
                }
            }
            let seq = state.next_seq + pending.lens.len() as u64;
            if pending.lens.is_empty() {
                pending.first_seq = seq;
                pending.first_outcome = outcomes.len();
            }
            let len = encode_sealed(&mut pending.bytes, record, with_index, seq);
            pending.lens.push(len);
            outcomes.push(AppendOutcome::Appended { seq });
        }
        // The records before a refusal are appended whatever stopped the batch (a failed
        // flush or rotation left nothing buffered). If this write fails, its error belongs to
        // the first record it held, and replaces a refusal of a later one.
        if let Err(failed) = pending.flush(&mut state, &mut outcomes) {
            error = Some(failed);
        }
        if pending.bytes.capacity() <= MAX_KEPT_BATCH_BUFFER {
            state.batch_buffer = std::mem::take(&mut pending.bytes);
        }
        let error = error.or(early_error);
        let appended = state.next_seq > seq_before;
        let every = self.config.fsync_every_records;
        let fsync_due = unsynced_before < every && state.unsynced_records >= every;
        if appended {
            self.published_next_seq
                .store(state.next_seq, Ordering::Release);
        }
        drop(state);
        if appended {
            self.appended.notify_waiters();
        }
        if fsync_due {
            self.signal.kick();
        }
        BatchOutcome { outcomes, error }
    }
}
