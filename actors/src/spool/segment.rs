//! Segment files: naming, the versioned header, and the in-memory view of one segment.
//!
//! A segment file is named by the sequence number of its first record, zero-padded to 20 digits
//! (`00000000000000000042.seg`), and starts with a 16-byte header:
//!
//! ```text
//! offset size field
//!      0    4 magic      b"GSPL"
//!      4    1 version    format version of every frame in this file: 2 since event indexes
//!                        (see [`record`](super::record)); 1 before, still read (its frames
//!                        are format 2 frames without one)
//!      5    3 reserved   zero
//!      8    8 first_seq  u64 little-endian, equal to the number in the file name
//! ```
//!
//! Frames (see [`record`](super::record)) follow back to back. Sequence numbers inside one
//! segment are contiguous: the n-th frame has `first_seq + n`.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Bytes of the segment header.
pub const SEGMENT_HEADER_BYTES: usize = 16;
/// The magic at the start of every segment file.
pub const SEGMENT_MAGIC: [u8; 4] = *b"GSPL";
/// The format version this build writes (it reads it and every older one). Version 2 added
/// the event index; version 1 segments are read as they are, and appended to without indexes.
pub const FORMAT_VERSION: u8 = 2;

/// A new sparse-index entry is kept whenever this many bytes were written since the last one, so
/// finding a sequence number reads at most this much before the wanted record.
const INDEX_STRIDE_BYTES: u64 = 64 * 1024;

const SEGMENT_SUFFIX: &str = ".seg";
const SEQ_DIGITS: usize = 20;

/// The file name of the segment whose first record is `first_seq`.
pub fn segment_file_name(first_seq: u64) -> String {
    format!("{first_seq:020}{SEGMENT_SUFFIX}")
}

/// The first sequence number encoded in a segment file name, if `name` is one.
pub(crate) fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEQ_DIGITS || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The header of a new segment.
pub(crate) fn encode_segment_header(first_seq: u64) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut header = [0; SEGMENT_HEADER_BYTES];
    header[0..4].copy_from_slice(&SEGMENT_MAGIC);
    header[4] = FORMAT_VERSION;
    header[8..16].copy_from_slice(&first_seq.to_le_bytes());
    header
}

/// What a segment header says about the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeaderCheck {
    Valid,
    /// Written by a newer (or unknown) format: refuse to touch the directory.
    UnsupportedVersion(u8),
    /// Too short, wrong magic, or a first seq that disagrees with the file name: damaged.
    Damaged(String),
}

/// Checks `bytes` (the start of the file) against the header a segment named `first_seq` needs.
pub(crate) fn check_segment_header(bytes: &[u8], first_seq: u64) -> HeaderCheck {
    if bytes.len() < SEGMENT_HEADER_BYTES {
        return HeaderCheck::Damaged(format!("header is {} bytes", bytes.len()));
    }
    if bytes[0..4] != SEGMENT_MAGIC {
        return HeaderCheck::Damaged("bad magic".into());
    }
    if !(1..=FORMAT_VERSION).contains(&bytes[4]) {
        return HeaderCheck::UnsupportedVersion(bytes[4]);
    }
    let mut seq_bytes = [0; 8];
    seq_bytes.copy_from_slice(&bytes[8..16]);
    let header_seq = u64::from_le_bytes(seq_bytes);
    if header_seq != first_seq {
        return HeaderCheck::Damaged(format!(
            "header says first seq {header_seq}, file name says {first_seq}"
        ));
    }
    HeaderCheck::Valid
}

/// Sequence number → byte offset, one entry per [`INDEX_STRIDE_BYTES`] of segment.
#[derive(Debug, Default)]
pub(crate) struct SparseIndex {
    entries: Vec<(u64, u64)>,
}

impl SparseIndex {
    /// Records that the frame of `seq` starts at `offset` (called for every frame, in order).
    pub(crate) fn note(&mut self, seq: u64, offset: u64) {
        let due = match self.entries.last() {
            None => true,
            Some(&(_, last_offset)) => offset - last_offset >= INDEX_STRIDE_BYTES,
        };
        if due {
            self.entries.push((seq, offset));
        }
    }

    /// The indexed frame at or before `seq`: where a scan for `seq` starts.
    pub(crate) fn floor(&self, seq: u64) -> Option<(u64, u64)> {
        let position = self
            .entries
            .partition_point(|&(entry_seq, _)| entry_seq <= seq);
        position.checked_sub(1).map(|index| self.entries[index])
    }

    /// Forgets entries at or after `seq` (the segment was cut there).
    pub(crate) fn truncate_from(&mut self, seq: u64) {
        self.entries.retain(|&(entry_seq, _)| entry_seq < seq);
    }
}

/// One segment file as the spool sees it.
#[derive(Debug)]
pub(crate) struct Segment {
    /// Seq of the first record; also the file name.
    pub(crate) first_seq: u64,
    pub(crate) path: PathBuf,
    /// Shared with readers, who `pread` it without holding the writer lock. Unlinking the file
    /// while a reader still holds this handle is fine on Unix.
    pub(crate) file: Arc<File>,
    /// Bytes of header plus complete frames. Nothing at or after this offset is ever read.
    pub(crate) len: u64,
    /// Seq the next frame in this segment would have (`first_seq` when empty).
    pub(crate) next_seq: u64,
    pub(crate) index: SparseIndex,
    /// A failed append could not be truncated back: bytes after `len` may be garbage, so
    /// truncation is retried before anything else is written here.
    pub(crate) tail_dirty: bool,
    /// The format version of its header: event indexes go only into version 2 segments (an
    /// older bridge refuses those, rather than misreading an indexed record).
    pub(crate) version: u8,
}

impl Segment {
    /// Creates `dir/<first_seq>.seg` with its header (not fsynced: the caller marks the
    /// directory and file for the next group commit).
    pub(crate) fn create(dir: &Path, first_seq: u64) -> io::Result<Segment> {
        let path = dir.join(segment_file_name(first_seq));
        let file = crate::private_fs::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        if let Err(error) = file.write_all_at(&encode_segment_header(first_seq), 0) {
            drop(file);
            // Best effort: a half-written header would be found damaged and removed on open.
            let _ = std::fs::remove_file(&path);
            return Err(error);
        }
        Ok(Segment {
            first_seq,
            path,
            file: Arc::new(file),
            len: SEGMENT_HEADER_BYTES as u64,
            next_seq: first_seq,
            index: SparseIndex::default(),
            tail_dirty: false,
            version: FORMAT_VERSION,
        })
    }

    /// Number of records in the segment.
    pub(crate) fn record_count(&self) -> u64 {
        self.next_seq - self.first_seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip_and_sort_numerically() {
        assert_eq!(segment_file_name(42), "00000000000000000042.seg");
        assert_eq!(parse_segment_file_name(&segment_file_name(42)), Some(42));
        assert_eq!(
            parse_segment_file_name(&segment_file_name(u64::MAX)),
            Some(u64::MAX)
        );
        assert!(segment_file_name(9) < segment_file_name(10));
        assert_eq!(parse_segment_file_name("42.seg"), None);
        assert_eq!(parse_segment_file_name("0000000000000000004x.seg"), None);
        assert_eq!(parse_segment_file_name("committed.pos"), None);
    }

    #[test]
    fn header_checks() {
        let header = encode_segment_header(7);
        assert_eq!(check_segment_header(&header, 7), HeaderCheck::Valid);
        assert!(matches!(
            check_segment_header(&header, 8),
            HeaderCheck::Damaged(_)
        ));
        assert!(matches!(
            check_segment_header(&header[..10], 7),
            HeaderCheck::Damaged(_)
        ));
        let mut older = header;
        older[4] = 1;
        assert_eq!(
            check_segment_header(&older, 7),
            HeaderCheck::Valid,
            "format 1 segments are still read"
        );
        older[4] = 0;
        assert_eq!(
            check_segment_header(&older, 7),
            HeaderCheck::UnsupportedVersion(0)
        );
        let mut newer = header;
        newer[4] = FORMAT_VERSION + 1;
        assert_eq!(
            check_segment_header(&newer, 7),
            HeaderCheck::UnsupportedVersion(FORMAT_VERSION + 1)
        );
    }

    #[test]
    fn sparse_index_floor() {
        let mut index = SparseIndex::default();
        for seq in 0..10_000u64 {
            index.note(seq, 16 + seq * 1000);
        }
        assert_eq!(index.floor(0), Some((0, 16)));
        let (seq, offset) = index.floor(5_000).expect("indexed");
        assert!(seq <= 5_000 && 5_000 - seq <= 66);
        assert_eq!(offset, 16 + seq * 1000);
        index.truncate_from(1);
        assert_eq!(index.floor(5_000), Some((0, 16)));
    }
}
