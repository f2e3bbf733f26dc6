//! The committed position: the ack watermark in memory and its small file on disk.
//!
//! The file `committed.pos` is 20 bytes, replaced atomically (write `committed.pos.tmp`, fsync,
//! rename, fsync the directory):
//!
//! ```text
//! offset size field
//!      0    4 magic      b"GSPC"
//!      4    1 version    1
//!      5    3 reserved   zero
//!      8    8 committed  u64 little-endian: every seq <= committed was acked by Kafka
//!     16    4 crc32      over bytes [0, 16)
//! ```

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

pub(crate) const COMMITTED_FILE: &str = "committed.pos";
pub(crate) const COMMITTED_TMP_FILE: &str = "committed.pos.tmp";
const COMMITTED_MAGIC: [u8; 4] = *b"GSPC";
const COMMITTED_VERSION: u8 = 1;
const COMMITTED_FILE_BYTES: usize = 20;

/// What was found in the committed-position file on open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommittedFileStatus {
    /// The file was read; recovery started after the position it holds.
    Loaded(u64),
    /// No file: a new spool, or one whose file was removed. Recovery started at the first
    /// record on disk.
    Missing,
    /// The file could not be trusted (the reason says why). Recovery started at the first record
    /// on disk: records Kafka already has are sent again (at-least-once).
    Corrupt(String),
}

/// Reads the committed position of `dir`.
pub(crate) fn read_committed(dir: &Path) -> CommittedFileStatus {
    let bytes = match fs::read(dir.join(COMMITTED_FILE)) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return CommittedFileStatus::Missing
        }
        Err(error) => return CommittedFileStatus::Corrupt(format!("unreadable: {error}")),
    };
    if bytes.len() != COMMITTED_FILE_BYTES {
        return CommittedFileStatus::Corrupt(format!(
            "{} bytes instead of {COMMITTED_FILE_BYTES}",
            bytes.len()
        ));
    }
    let mut crc_bytes = [0; 4];
    crc_bytes.copy_from_slice(&bytes[16..20]);
    if u32::from_le_bytes(crc_bytes) != crc32fast::hash(&bytes[0..16]) {
        return CommittedFileStatus::Corrupt("CRC mismatch".into());
    }
    if bytes[0..4] != COMMITTED_MAGIC {
        return CommittedFileStatus::Corrupt("bad magic".into());
    }
    if bytes[4] != COMMITTED_VERSION {
        return CommittedFileStatus::Corrupt(format!("unknown version {}", bytes[4]));
    }
    let mut committed = [0; 8];
    committed.copy_from_slice(&bytes[8..16]);
    CommittedFileStatus::Loaded(u64::from_le_bytes(committed))
}

/// Replaces the committed-position file atomically and durably.
pub(crate) fn write_committed(dir: &Path, committed: u64) -> io::Result<()> {
    let mut bytes = [0u8; COMMITTED_FILE_BYTES];
    bytes[0..4].copy_from_slice(&COMMITTED_MAGIC);
    bytes[4] = COMMITTED_VERSION;
    bytes[8..16].copy_from_slice(&committed.to_le_bytes());
    let crc = crc32fast::hash(&bytes[0..16]);
    bytes[16..20].copy_from_slice(&crc.to_le_bytes());

    let tmp_path = dir.join(COMMITTED_TMP_FILE);
    let mut tmp = crate::private_fs::options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp_path)?;
    tmp.write_all(&bytes)?;
    tmp.sync_all()?;
    drop(tmp);
    fs::rename(&tmp_path, dir.join(COMMITTED_FILE))?;
    sync_dir(dir)
}

/// Makes creations, renames and deletions in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The ack watermark: `committed` is the highest seq such that every seq at or below it is
/// acked. Acks above it (Kafka acks out of order with several records in flight) wait in
/// `acked_above` as merged inclusive ranges, so a long run of early acks costs one entry.
#[derive(Debug)]
pub(crate) struct AckWatermark {
    committed: u64,
    /// start → end (inclusive); ranges are disjoint, non-adjacent, and above `committed + 1`.
    acked_above: BTreeMap<u64, u64>,
}

impl AckWatermark {
    pub(crate) fn new(committed: u64) -> Self {
        AckWatermark {
            committed,
            acked_above: BTreeMap::new(),
        }
    }

    pub(crate) fn committed(&self) -> u64 {
        self.committed
    }

    /// Marks `seq` acked; returns whether `committed` moved.
    pub(crate) fn ack(&mut self, seq: u64) -> bool {
        self.ack_range(seq, seq)
    }

    /// Marks every seq in `start..=end` acked (also used for seqs that no longer exist, e.g.
    /// records cut by recovery, so the watermark can pass them). Returns whether `committed`
    /// moved.
    pub(crate) fn ack_range(&mut self, start: u64, end: u64) -> bool {
        if end < start || end <= self.committed {
            return false;
        }
        let mut start = start.max(self.committed + 1);
        let mut end = end;
        // Merge with every range that overlaps or touches [start, end].
        let touching: Vec<(u64, u64)> = self
            .acked_above
            .range(..=end.saturating_add(1))
            .rev()
            .take_while(|&(_, &range_end)| range_end.saturating_add(1) >= start)
            .map(|(&range_start, &range_end)| (range_start, range_end))
            .collect();
        for (range_start, range_end) in touching {
            self.acked_above.remove(&range_start);
            start = start.min(range_start);
            end = end.max(range_end);
        }
        if start == self.committed + 1 {
            self.committed = end;
            true
        } else {
            self.acked_above.insert(start, end);
            false
        }
    }

    /// Acked ranges waiting above the watermark (for tests and debugging).
    #[cfg(test)]
    pub(crate) fn pending_ranges(&self) -> usize {
        self.acked_above.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_acks_move_the_watermark() {
        let mut watermark = AckWatermark::new(0);
        for seq in 1..=5 {
            assert!(watermark.ack(seq));
            assert_eq!(watermark.committed(), seq);
        }
        assert!(!watermark.ack(3), "duplicate ack is ignored");
        assert_eq!(watermark.committed(), 5);
    }

    #[test]
    fn out_of_order_acks_wait_for_the_hole() {
        let mut watermark = AckWatermark::new(10);
        assert!(!watermark.ack(13));
        assert!(!watermark.ack(12));
        assert!(!watermark.ack(15));
        assert_eq!(watermark.committed(), 10);
        assert_eq!(watermark.pending_ranges(), 2, "12..=13 merged, 15 apart");
        assert!(watermark.ack(11));
        assert_eq!(watermark.committed(), 13);
        assert!(watermark.ack(14));
        assert_eq!(watermark.committed(), 15);
        assert_eq!(watermark.pending_ranges(), 0);
    }

    #[test]
    fn reverse_order_acks_coalesce_into_one_range() {
        let mut watermark = AckWatermark::new(0);
        for seq in (2..=10_000).rev() {
            watermark.ack(seq);
        }
        assert_eq!(watermark.pending_ranges(), 1);
        assert!(watermark.ack(1));
        assert_eq!(watermark.committed(), 10_000);
    }

    #[test]
    fn ranges_skip_holes() {
        let mut watermark = AckWatermark::new(0);
        assert!(!watermark.ack_range(5, 9));
        assert!(!watermark.ack_range(7, 20), "overlapping range merges");
        assert_eq!(watermark.pending_ranges(), 1);
        watermark.ack_range(1, 4);
        assert_eq!(watermark.committed(), 20);
        assert!(!watermark.ack_range(0, 3), "below the watermark: ignored");
    }

    #[test]
    fn committed_file_round_trip_and_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read_committed(dir.path()), CommittedFileStatus::Missing);
        write_committed(dir.path(), 12_345).expect("write");
        assert_eq!(
            read_committed(dir.path()),
            CommittedFileStatus::Loaded(12_345)
        );
        let path = dir.path().join(COMMITTED_FILE);
        let mut bytes = fs::read(&path).expect("read");
        bytes[9] ^= 0x40;
        fs::write(&path, &bytes).expect("write");
        assert!(matches!(
            read_committed(dir.path()),
            CommittedFileStatus::Corrupt(_)
        ));
        fs::write(&path, b"12345").expect("write");
        assert!(matches!(
            read_committed(dir.path()),
            CommittedFileStatus::Corrupt(_)
        ));
    }
}
