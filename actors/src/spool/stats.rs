//! Numbers the spool exposes; the caller turns them into metrics.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of the spool's state and counters, from [`Spool::stats`](super::Spool::stats).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SpoolStats {
    /// Bytes of all segment files (headers included).
    pub bytes_on_disk: u64,
    /// Segment files, the active one included.
    pub segments: usize,
    /// The seq the next append will get.
    pub next_seq: u64,
    /// Every seq at or below this was acked (or no longer exists).
    pub committed_seq: u64,
    /// `next_seq - committed_seq - 1`: records not yet acknowledged by Kafka.
    pub records_unacked: u64,
    /// Receive time of the oldest record not yet acked: how far behind Kafka is.
    pub oldest_unacked_received_at_ms: Option<i64>,
    /// Group commits done (each fsyncs every file with unsynced appends, and the directory if
    /// files were created).
    pub fsync_count: u64,
    /// Duration of the last group commit, microseconds.
    pub fsync_last_us: u64,
    /// Longest group commit since open, microseconds.
    pub fsync_max_us: u64,
    /// Group commits that failed (the error was logged; durability of the affected appends is
    /// unknown).
    pub fsync_errors: u64,
    /// Event appends discarded by the `drop-newest` policy since open.
    pub dropped_records: u64,
    /// Appends refused with `SpoolError::Full` since open.
    pub full_refusals: u64,
    /// Records cut as corrupt, by recovery on open and by reads since.
    pub corrupt_cut_total: u64,
}

/// Group-commit latency counters, updated by whoever runs the commit.
#[derive(Debug, Default)]
pub(crate) struct FsyncStats {
    count: AtomicU64,
    last_us: AtomicU64,
    max_us: AtomicU64,
    errors: AtomicU64,
}

impl FsyncStats {
    pub(crate) fn record(&self, elapsed_us: u64) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.last_us.store(elapsed_us, Ordering::Relaxed);
        self.max_us.fetch_max(elapsed_us, Ordering::Relaxed);
    }

    pub(crate) fn record_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// (count, last, max, errors)
    pub(crate) fn snapshot(&self) -> (u64, u64, u64, u64) {
        (
            self.count.load(Ordering::Relaxed),
            self.last_us.load(Ordering::Relaxed),
            self.max_us.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }
}
