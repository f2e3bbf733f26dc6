//! The state behind the writer lock: the segments, the next seq, the byte count, the drop count.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::SpoolError;
use super::segment::Segment;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReadCursor {
    pub(crate) seq: u64,
    pub(crate) segment_first_seq: u64,
    pub(crate) offset: u64,
}

/// What a reader needs to read one segment without the lock.
#[derive(Debug, Clone)]
pub(crate) struct SegmentView {
    pub(crate) first_seq: u64,
    pub(crate) path: PathBuf,
    pub(crate) file: Arc<File>,
    /// A frame boundary at or before the wanted seq, and its seq.
    pub(crate) start_seq: u64,
    pub(crate) start_offset: u64,
    /// End of the complete frames when the view was taken, and the seq that follows them.
    pub(crate) end_offset: u64,
    pub(crate) end_seq: u64,
}

/// Everything the writer lock protects.
///
/// Invariants: `segments` is never empty after open; its last entry is the active segment,
/// the only one appended to, and `active.next_seq == next_seq`.
#[derive(Debug)]
pub(crate) struct WriterState {
    pub(crate) segments: BTreeMap<u64, Segment>,
    pub(crate) next_seq: u64,
    /// Sum of `len` over `segments`.
    pub(crate) bytes_on_disk: u64,
    /// Appends to the active segment since its last fsync.
    pub(crate) unsynced_records: u64,
    /// Closed segments not fsynced since their last append.
    pub(crate) files_to_sync: Vec<(PathBuf, Arc<File>)>,
    /// A segment was created or deleted since the directory was last fsynced.
    pub(crate) dir_dirty: bool,
    pub(crate) dropped_total: u64,
    pub(crate) full_refusals: u64,
    pub(crate) corrupt_cut_total: u64,
    pub(crate) read_cursor: Option<ReadCursor>,
    /// `(committed, receive time of the first record after it)`, so `stats()` reads the disk
    /// only when the watermark moved.
    pub(crate) oldest_unacked_cache: Option<(u64, Option<i64>)>,
    /// `append_batch`'s write buffer, empty between batches (see `writer.rs`).
    pub(crate) batch_buffer: Vec<u8>,
}

impl WriterState {
    pub(crate) fn new(segments: BTreeMap<u64, Segment>, next_seq: u64, corrupt_cut: u64) -> Self {
        let bytes_on_disk = segments.values().map(|segment| segment.len).sum();
        WriterState {
            segments,
            next_seq,
            bytes_on_disk,
            unsynced_records: 0,
            files_to_sync: Vec::new(),
            dir_dirty: false,
            dropped_total: 0,
            full_refusals: 0,
            corrupt_cut_total: corrupt_cut,
            read_cursor: None,
            oldest_unacked_cache: None,
            batch_buffer: Vec::new(),
        }
    }

    pub(crate) fn active(&self) -> Option<&Segment> {
        self.segments.values().next_back()
    }

    fn active_mut(&mut self) -> Option<&mut Segment> {
        self.segments.values_mut().next_back()
    }

    pub(crate) fn active_first_seq(&self) -> Option<u64> {
        self.segments.keys().next_back().copied()
    }

    /// `drop-newest` discarded an event (the caller, which knows the shard, records when).
    pub(crate) fn note_drop(&mut self) {
        self.dropped_total += 1;
    }

    /// Closes the active segment and starts a new one at `next_seq`. The caller makes sure the
    /// active segment holds at least one record (else the new file's name would be taken).
    pub(crate) fn rotate(&mut self, dir: &Path) -> Result<(), SpoolError> {
        debug_assert!(self.active().is_none_or(|active| active.record_count() > 0));
        let segment = Segment::create(dir, self.next_seq).map_err(|error| {
            SpoolError::io(
                format!("creating segment {} in {}", self.next_seq, dir.display()),
                error,
            )
        })?;
        if let Some(previous) = self.active() {
            let pending = (previous.path.clone(), Arc::clone(&previous.file));
            self.files_to_sync.push(pending);
        }
        self.bytes_on_disk += segment.len;
        self.dir_dirty = true;
        self.segments.insert(segment.first_seq, segment);
        Ok(())
    }

    /// Writes a sealed frame for `seq` at the end of the active segment.
    ///
    /// On failure the partial write is truncated away; if that fails too, the segment is marked
    /// so the truncation is retried before the next write, and the bytes after `len` are never
    /// read (recovery would cut them).
    pub(crate) fn write_frame(&mut self, seq: u64, frame: &[u8]) -> Result<(), SpoolError> {
        self.write_frames(seq, frame, &[frame.len()])
    }

    /// Writes sealed frames for `first_seq..first_seq + lens.len()`, laid end to end in
    /// `frames` (`lens` their lengths, in order), at the end of the active segment with one
    /// positional write. All or nothing: on failure none of them counts.
    pub(crate) fn write_frames(
        &mut self,
        first_seq: u64,
        frames: &[u8],
        lens: &[usize],
    ) -> Result<(), SpoolError> {
        debug_assert_eq!(first_seq, self.next_seq);
        debug_assert_eq!(lens.iter().sum::<usize>(), frames.len());
        let Some(active) = self.active_mut() else {
            return Err(SpoolError::Config("spool has no active segment".into()));
        };
        if active.tail_dirty {
            active.file.set_len(active.len).map_err(|error| {
                SpoolError::io(
                    format!(
                        "truncating {} back to {} after a failed append",
                        active.path.display(),
                        active.len
                    ),
                    error,
                )
            })?;
            active.tail_dirty = false;
        }
        let offset = active.len;
        if let Err(error) = active.file.write_all_at(frames, offset) {
            if let Err(truncate_error) = active.file.set_len(offset) {
                active.tail_dirty = true;
                tracing::warn!(
                    file = %active.path.display(),
                    offset,
                    error = %truncate_error,
                    "could not truncate a failed spool append; retrying before the next write"
                );
            }
            let seqs = match lens.len() {
                1 => format!("seq {first_seq}"),
                n => format!("seqs {first_seq}..={}", first_seq + n as u64 - 1),
            };
            return Err(SpoolError::io(
                format!(
                    "appending {seqs} ({} bytes) at offset {offset} of {}",
                    frames.len(),
                    active.path.display()
                ),
                error,
            ));
        }
        let mut frame_offset = offset;
        for (i, len) in lens.iter().enumerate() {
            active.index.note(first_seq + i as u64, frame_offset);
            frame_offset += *len as u64;
        }
        let count = lens.len() as u64;
        let frame_bytes = frames.len() as u64;
        active.len += frame_bytes;
        active.next_seq = first_seq + count;
        self.next_seq = first_seq + count;
        self.bytes_on_disk += frame_bytes;
        self.unsynced_records += count;
        Ok(())
    }

    /// The segment to read for `seq`: the one holding it, or, when `seq` was deleted or cut,
    /// the first later one holding records. `None` when nothing at or after `seq` exists yet.
    pub(crate) fn view_for(&self, seq: u64) -> Option<SegmentView> {
        if seq >= self.next_seq {
            return None;
        }
        let holding = self
            .segments
            .range(..=seq)
            .next_back()
            .map(|(_, segment)| segment)
            .filter(|segment| seq < segment.next_seq);
        let segment = match holding {
            Some(segment) => segment,
            None => self
                .segments
                .range(seq.saturating_add(1)..)
                .map(|(_, segment)| segment)
                .find(|segment| segment.record_count() > 0)?,
        };
        let wanted = seq.max(segment.first_seq);
        let (mut start_seq, mut start_offset) = segment.index.floor(wanted)?;
        if let Some(cursor) = self.read_cursor {
            let usable = cursor.segment_first_seq == segment.first_seq
                && cursor.seq <= wanted
                && cursor.seq >= start_seq
                && cursor.seq < segment.next_seq;
            if usable {
                start_seq = cursor.seq;
                start_offset = cursor.offset;
            }
        }
        Some(SegmentView {
            first_seq: segment.first_seq,
            path: segment.path.clone(),
            file: Arc::clone(&segment.file),
            start_seq,
            start_offset,
            end_offset: segment.len,
            end_seq: segment.next_seq,
        })
    }
}
