//! The read path: locate a segment under the lock, `pread` and decode outside it.

use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::PoisonError;

use bytes::Bytes;

use super::error::SpoolError;
use super::record::{decode_frame, FrameError, SpoolEntry};
use super::state::{ReadCursor, SegmentView};
use super::Shared;

/// Smallest read: enough for the skip from an index entry (at most 64 KiB) plus a record.
const MIN_CHUNK_BYTES: usize = 64 * 1024;
/// Largest read unless a single frame is bigger; a batch needing more reads again.
const MAX_CHUNK_BYTES: usize = 1024 * 1024;
/// Most entries a batch makes room for before it reads (a larger batch grows as it fills).
const MAX_PRESIZED_ENTRIES: usize = 1024;
/// Per-record guess used to size the first read of a batch (Genesys frames are mostly smaller).
const TYPICAL_FRAME_BYTES: usize = 4 * 1024;

/// Whether a read moves the producer's cursor (the stats peek must not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cursor {
    Remember,
    Leave,
}

/// Why a segment could not be read past some frame.
struct Unreadable {
    offset: u64,
    seq: u64,
    reason: String,
}

/// How reading one segment view ended.
enum ViewEnd {
    /// The batch is full; the cursor points at the next frame.
    BatchFull(ReadCursor),
    /// Every frame of the view was consumed.
    Exhausted(ReadCursor),
    Corrupt(Unreadable),
}

impl Shared {
    pub(crate) fn read_batch(
        &self,
        from_seq: u64,
        max_records: usize,
        max_bytes: usize,
        cursor: Cursor,
    ) -> Result<Vec<SpoolEntry>, SpoolError> {
        // Grown push by push, a batch of 1,024 reallocated ten times (issue #16's profile); sized
        // to what is there, as a large block freed makes glibc consolidate its heap.
        let there = self
            .published_next_seq
            .load(Ordering::Acquire)
            .saturating_sub(from_seq);
        let mut batch = Batch {
            entries: Vec::with_capacity(
                max_records
                    .min(usize::try_from(there).unwrap_or(usize::MAX))
                    .min(MAX_PRESIZED_ENTRIES),
            ),
            payload_bytes: 0,
            max_records,
            max_bytes,
        };
        if max_records == 0 {
            return Ok(batch.entries);
        }
        // Sized to the batch, so `read_batch(seq, 1, usize::MAX)` does not read a megabyte.
        let chunk_bytes = max_records
            .saturating_mul(TYPICAL_FRAME_BYTES)
            .min(max_bytes)
            .saturating_add(MIN_CHUNK_BYTES)
            .min(MAX_CHUNK_BYTES);
        let mut wanted = from_seq;
        let mut last_position = None;
        loop {
            let Some(view) = self.lock_state().view_for(wanted) else {
                break;
            };
            wanted = wanted.max(view.first_seq);
            match self.read_view(&view, wanted, chunk_bytes, &mut batch)? {
                ViewEnd::BatchFull(position) => {
                    last_position = Some(position);
                    break;
                }
                ViewEnd::Exhausted(position) => {
                    wanted = position.seq;
                    last_position = Some(position);
                }
                ViewEnd::Corrupt(unreadable) => {
                    self.cut_unreadable(&view, &unreadable)?;
                    // `view_for` now skips the cut seqs.
                    wanted = unreadable.seq;
                    last_position = None;
                }
            }
        }
        if cursor == Cursor::Remember {
            if let Some(position) = last_position {
                self.lock_state().read_cursor = Some(position);
            }
        }
        Ok(batch.entries)
    }

    /// Cuts a segment at a frame that failed to decode, the way recovery would: truncate the
    /// file, count and log the lost records, and ack their seqs so the watermark can pass.
    fn cut_unreadable(
        &self,
        view: &SegmentView,
        unreadable: &Unreadable,
    ) -> Result<(), SpoolError> {
        let lost_seqs = {
            let mut state = self.lock_state();
            let still_there = state
                .segments
                .get(&view.first_seq)
                .is_some_and(|segment| unreadable.seq < segment.next_seq);
            if !still_there {
                return Ok(()); // deleted meanwhile, or another reader cut it already
            }
            if state.active_first_seq() == Some(view.first_seq) {
                // New appends must not follow the damage in the same file.
                state.rotate(&self.config.dir)?;
            }
            let Some(segment) = state.segments.get_mut(&view.first_seq) else {
                return Ok(());
            };
            // The good frames behind the damage move to a segment of their own; only the
            // seqs in between are lost.
            let salvaged = match super::salvage::find_resync(
                &segment.file,
                unreadable.offset,
                segment.len,
                unreadable.seq,
                segment.next_seq,
            )
            .and_then(|found| match found {
                Some(resync) => super::salvage::copy_into_segment(
                    &self.config.dir,
                    &segment.file,
                    resync,
                    segment.len,
                )
                .map(|mut copy| {
                    copy.next_seq = segment.next_seq;
                    copy.index
                        .note(resync.seq, super::segment::SEGMENT_HEADER_BYTES as u64);
                    Some(copy)
                }),
                None => Ok(None),
            }) {
                Ok(salvaged) => salvaged,
                Err(error) => {
                    tracing::warn!(file = %view.path.display(), %error, "could not keep the good frames behind damage in a spool segment; cutting them too");
                    None
                }
            };
            let lost_seqs = unreadable.seq
                ..salvaged
                    .as_ref()
                    .map_or(segment.next_seq, |copy| copy.first_seq);
            let bytes_cut = segment.len - unreadable.offset;
            segment.len = unreadable.offset;
            segment.next_seq = unreadable.seq;
            segment.index.truncate_from(unreadable.seq);
            if let Err(error) = segment.file.set_len(unreadable.offset) {
                // The in-memory cut stands; recovery will find the same damage and cut it.
                tracing::warn!(file = %view.path.display(), %error, "could not truncate corrupt spool segment");
            }
            let records_lost = lost_seqs.end - lost_seqs.start;
            tracing::warn!(
                file = %view.path.display(),
                offset = unreadable.offset,
                bytes_cut,
                records_lost,
                first_lost_seq = unreadable.seq,
                reason = %unreadable.reason,
                "spool segment corrupt while reading; cut it and continue with the next segment"
            );
            state.bytes_on_disk -= bytes_cut;
            if let Some(copy) = salvaged {
                tracing::warn!(
                    file = %copy.path.display(),
                    first_seq = copy.first_seq,
                    records = copy.record_count(),
                    "the good frames behind the damage were kept"
                );
                state.bytes_on_disk += copy.len;
                state.segments.insert(copy.first_seq, copy);
            }
            state.corrupt_cut_total += records_lost;
            state.read_cursor = None;
            lost_seqs
        };
        if !lost_seqs.is_empty() {
            self.lock_acks()
                .ack_range(lost_seqs.start, lost_seqs.end - 1);
        }
        Ok(())
    }
}

struct Batch {
    entries: Vec<SpoolEntry>,
    payload_bytes: usize,
    max_records: usize,
    max_bytes: usize,
}

impl Batch {
    /// Whether a record with this payload still fits (the first always does).
    fn fits(&self, payload_len: usize) -> bool {
        self.entries.is_empty()
            || (self.entries.len() < self.max_records
                && self.payload_bytes + payload_len <= self.max_bytes)
    }

    fn push(&mut self, entry: SpoolEntry) {
        self.payload_bytes += entry.record.payload.len();
        self.entries.push(entry);
    }

    fn is_full(&self) -> bool {
        self.entries.len() >= self.max_records
    }
}

impl Shared {
    /// Reads the frames of `view` from its start, adding those at or after `wanted` to `batch`.
    fn read_view(
        &self,
        view: &SegmentView,
        wanted: u64,
        chunk_bytes: usize,
        batch: &mut Batch,
    ) -> Result<ViewEnd, SpoolError> {
        let mut offset = view.start_offset;
        let mut seq = view.start_seq;
        let mut chunk = Bytes::new();
        let mut chunk_start = offset;
        while offset < view.end_offset {
            let position = ReadCursor {
                seq,
                segment_first_seq: view.first_seq,
                offset,
            };
            let rest = chunk.slice((offset - chunk_start) as usize..);
            let frame = match decode_frame(&rest) {
                Ok(frame) => frame,
                Err(FrameError::Truncated { needed }) => {
                    let available = view.end_offset - offset;
                    if needed as u64 > available {
                        return Ok(ViewEnd::Corrupt(Unreadable {
                            offset,
                            seq,
                            reason: format!(
                                "frame of {needed} bytes runs past the end of the segment's data"
                            ),
                        }));
                    }
                    let read_len = needed.max(chunk_bytes).min(available as usize);
                    chunk = self.read_chunk(view, offset, read_len)?;
                    chunk_start = offset;
                    continue;
                }
                Err(error) => {
                    return Ok(ViewEnd::Corrupt(Unreadable {
                        offset,
                        seq,
                        reason: error.to_string(),
                    }))
                }
            };
            if frame.seq != seq {
                return Ok(ViewEnd::Corrupt(Unreadable {
                    offset,
                    seq,
                    reason: format!("frame has seq {}, expected {seq}", frame.seq),
                }));
            }
            let frame_bytes = frame.frame_len as u64;
            if seq >= wanted {
                if !batch.fits(frame.payload.len()) {
                    return Ok(ViewEnd::BatchFull(position));
                }
                batch.push(frame.into_entry(&rest));
            }
            offset += frame_bytes;
            seq += 1;
            if batch.is_full() {
                return Ok(ViewEnd::BatchFull(ReadCursor {
                    seq,
                    segment_first_seq: view.first_seq,
                    offset,
                }));
            }
        }
        // Frames up to `end_offset` were all decoded, so their seqs ran up to `end_seq`.
        debug_assert_eq!(seq, view.end_seq);
        Ok(ViewEnd::Exhausted(ReadCursor {
            seq,
            segment_first_seq: view.first_seq,
            offset,
        }))
    }

    /// Reads `len` bytes at `offset` into the reader's spare chunk when nothing holds it any more
    /// (the entries of the batch before are gone), else into a new one. A megabyte allocated and
    /// freed per batch made glibc consolidate its heap each time (issue #16's profile).
    fn read_chunk(&self, view: &SegmentView, offset: u64, len: usize) -> Result<Bytes, SpoolError> {
        let spare = self
            .spare_chunk
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .and_then(|chunk| chunk.try_into_mut().ok());
        let mut buffer = spare.unwrap_or_default();
        buffer.clear();
        buffer.resize(len, 0);
        view.file
            .read_exact_at(&mut buffer, offset)
            .map_err(|error| {
                SpoolError::io(
                    format!(
                        "reading {len} bytes at offset {offset} of {}",
                        view.path.display()
                    ),
                    error,
                )
            })?;
        let chunk = buffer.freeze();
        if len <= MAX_CHUNK_BYTES {
            // A chunk for one larger frame is not kept.
            *self
                .spare_chunk
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(chunk.clone());
        }
        Ok(chunk)
    }
}
