//! The spool's errors. Each variant names its consequence for the caller.

use std::io;
use std::path::PathBuf;

/// Errors of [`Spool`](super::Spool) operations.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file operation failed (for example ENOSPC, EIO). The operation had no effect: a partial
    /// append is truncated back, or, if even that fails, never becomes readable and is cut by
    /// recovery. Retrying later may succeed; the caller decides whether to stop reading.
    #[error("spool I/O error while {context}: {source}")]
    Io {
        /// What the spool was doing, with the file involved.
        context: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The disk cap is reached and the policy is `block` (or a gap record found even the
    /// headroom used up). Nothing was stored; see `Spool::wait_for_space`.
    #[error(
        "spool is full: {bytes_on_disk} bytes on disk, {record_bytes} more would pass the cap \
         of {limit_bytes} bytes for this record kind"
    )]
    Full {
        /// Bytes used by all segments.
        bytes_on_disk: u64,
        /// Bytes the refused record would have needed (its frame, and a segment header if it
        /// had to start a new segment).
        record_bytes: u64,
        /// The cap that applied: `max_bytes - 64 KiB` for events, `max_bytes` for gap records.
        limit_bytes: u64,
    },
    /// The disk was full and its reserve was released for the bridge's own records (see
    /// [`crate::disk_reserve`]): events are refused, nothing was stored, until deleting
    /// acknowledged segments made room to allocate the reserve again. Retry later.
    #[error(
        "disk full: the disk reserve is in use for status records; events are refused until \
         Kafka acknowledges and segments are deleted"
    )]
    DiskReserveInUse,
    /// The record can never fit, whatever is acked: its payload is larger than the format's or
    /// the configuration's limit. Nothing was stored.
    #[error("record payload of {payload_bytes} bytes exceeds the spool's limit of {limit_bytes}")]
    RecordTooLarge {
        /// The payload's size.
        payload_bytes: u64,
        /// The largest payload this spool accepts.
        limit_bytes: u64,
    },
    /// Another process (or another `Spool` in this process) has the directory open.
    #[error("spool directory {dir} is in use by another process (lock file {lock_file} is held)")]
    Locked {
        /// The spool directory.
        dir: PathBuf,
        /// The lock file that is held.
        lock_file: PathBuf,
    },
    /// The configuration is inconsistent; nothing was opened.
    #[error("invalid spool configuration: {0}")]
    Config(String),
    /// A segment was written by a newer format version than this build reads. Nothing was
    /// changed on disk; run the newer version, or move the directory away.
    #[error(
        "segment {file} has format version {found}; this build reads versions 1 to {supported}"
    )]
    UnsupportedVersion {
        /// The segment file.
        file: PathBuf,
        /// The version byte in its header.
        found: u8,
        /// The newest version this build reads (it writes it, and reads every older one).
        supported: u8,
    },
    /// An ack named a sequence number that was never appended: a bug in the caller.
    #[error("ack of seq {seq}, but the spool has only appended up to seq {next_seq} (exclusive)")]
    AckBeyondEnd {
        /// The acked sequence number.
        seq: u64,
        /// The next sequence number the spool will give out.
        next_seq: u64,
    },
}

impl SpoolError {
    /// Wraps an I/O error with what the spool was doing.
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        SpoolError::Io {
            context: context.into(),
            source,
        }
    }
}
