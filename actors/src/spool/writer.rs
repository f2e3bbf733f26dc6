//! The append path: capacity policy, rotation, one `pwrite` under the writer lock.

use std::sync::atomic::Ordering;

use super::config::{WhenFull, GAP_HEADROOM_BYTES};
use super::error::SpoolError;
use super::record::{
    frame_len, Record, RecordKind, UnsealedRecord, MAX_PAYLOAD_BYTES, RECORD_HEADER_BYTES,
};
use super::segment::SEGMENT_HEADER_BYTES;
use super::{AppendOutcome, Shared};

impl Shared {
    /// Refuses a payload that could not fit even in an empty spool.
    pub(crate) fn check_payload_size(
        &self,
        kind: RecordKind,
        payload_len: usize,
    ) -> Result<(), SpoolError> {
        let fixed_bytes = (SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES) as u64;
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
        let needed = (frame_len(payload_len) + SEGMENT_HEADER_BYTES) as u64;
        let bytes_on_disk = self.lock_state().bytes_on_disk;
        bytes_on_disk + needed <= self.cap_for(RecordKind::Event)
    }

    pub(crate) fn append(&self, record: &Record) -> Result<AppendOutcome, SpoolError> {
        self.check_payload_size(record.kind, record.payload.len())?;
        if record.kind != RecordKind::Gap && self.reserve.in_use() {
            return Err(SpoolError::DiskReserveInUse);
        }
        // Encode and checksum the payload before taking the lock.
        let mut unsealed = UnsealedRecord::new(record);
        let frame_bytes = unsealed.len() as u64;
        let cap = self.cap_for(record.kind);

        let mut state = self.lock_state();
        let needs_rotation = state.active().is_some_and(|active| {
            active.record_count() > 0 && active.len + frame_bytes > self.config.segment_bytes
        });
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
