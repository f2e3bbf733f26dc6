//! Spool configuration: where it lives, how big it may grow, how often it fsyncs, what happens
//! when it is full.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::SpoolError;

/// Bytes of `max_bytes` that only gap/status records may use, so that the one gap record that
/// reports dropped frames can still be written when the spool is full of events.
pub const GAP_HEADROOM_BYTES: u64 = 64 * 1024;

/// The smallest `segment_bytes` accepted (small segments are for tests).
pub const MIN_SEGMENT_BYTES: u64 = 4 * 1024;

/// What an append does when the spool has reached `max_bytes`.
///
/// Whatever the policy, being full is never silent: the refused or dropped appends are counted
/// in [`SpoolStats`](super::SpoolStats) and the caller sees a distinct result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub enum WhenFull {
    /// `append` returns `Err(SpoolError::Full)` and stores nothing; the caller stops reading
    /// (and may await [`Spool::wait_for_space`](super::Spool::wait_for_space)).
    ///
    /// Data-loss trade-off: the spool itself loses nothing, but the pressure moves upstream.
    /// Genesys does not buffer for us: a socket reader that stops reading gets its socket
    /// dropped, and every event sent while nobody listened is lost *before* the bridge, reported
    /// only as the gap between the last frame and the reconnect.
    #[default]
    Block,
    /// `append` of an event returns `Ok(AppendOutcome::Dropped)`: the new frame is discarded,
    /// counted, and its receive time widens the current drop span. The first successful event
    /// append afterwards returns that span once, so the caller writes exactly one gap record.
    ///
    /// Data-loss trade-off: the socket keeps streaming (heartbeats and rollovers keep working)
    /// and everything already spooled is kept, but the newest frames are lost while Kafka is
    /// down long enough to fill the disk; the gap record says from when to when.
    DropNewest,
}

/// Configuration of one spool directory.
///
/// Every field has a default (see [`SpoolConfig::default`]); unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpoolConfig {
    /// Directory of the segment files, the committed-position file and the lock file. Created if
    /// missing. One process at a time (enforced by a lock). Default:
    /// `/var/lib/genesys-kafka-bridge/spool`.
    pub dir: PathBuf,
    /// A segment is closed and a new one started once appending would pass this size. Acked
    /// segments are deleted whole, so this is also the granularity at which disk is freed.
    /// Default: 64 MiB; at least 4 KiB.
    pub segment_bytes: u64,
    /// Cap on the bytes of all segments together. Events may use `max_bytes - 64 KiB`; the last
    /// 64 KiB are kept for gap/status records. Default: 1 GiB; at least
    /// `2 * segment_bytes + 64 KiB`.
    pub max_bytes: u64,
    /// Group commit: appended records are fsynced at least this often. The committed position
    /// is persisted (and acked segments deleted) on the same tick. Every append is written to
    /// the file at once regardless, so a process crash loses nothing; this interval bounds what
    /// a machine crash can lose. Default: 100 ms.
    #[serde(with = "humantime_serde")]
    pub fsync_interval: Duration,
    /// Group commit: fsync early once this many records are unsynced. Default: 1000.
    pub fsync_every_records: u64,
    /// What an append does when the spool is full. Default: `block`.
    pub when_full: WhenFull,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            dir: PathBuf::from("/var/lib/genesys-kafka-bridge/spool"),
            segment_bytes: 64 * 1024 * 1024,
            max_bytes: 1024 * 1024 * 1024,
            fsync_interval: Duration::from_millis(100),
            fsync_every_records: 1000,
            when_full: WhenFull::Block,
        }
    }
}

impl SpoolConfig {
    /// A default configuration for `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        SpoolConfig {
            dir: dir.into(),
            ..SpoolConfig::default()
        }
    }

    /// Checks the relations between the fields. [`Spool::open`](super::Spool::open) calls it.
    pub fn validate(&self) -> Result<(), SpoolError> {
        if self.dir.as_os_str().is_empty() {
            return Err(SpoolError::Config("dir must not be empty".into()));
        }
        if self.segment_bytes < MIN_SEGMENT_BYTES {
            return Err(SpoolError::Config(format!(
                "segment_bytes is {}, must be at least {MIN_SEGMENT_BYTES}",
                self.segment_bytes
            )));
        }
        // Two segments, so that a full, acked segment can be deleted while another takes appends.
        let min_max_bytes = 2 * self.segment_bytes + GAP_HEADROOM_BYTES;
        if self.max_bytes < min_max_bytes {
            return Err(SpoolError::Config(format!(
                "max_bytes is {}, must be at least 2 * segment_bytes + {GAP_HEADROOM_BYTES} = \
                 {min_max_bytes}",
                self.max_bytes
            )));
        }
        if self.fsync_interval.is_zero() {
            return Err(SpoolError::Config(
                "fsync_interval must be greater than zero".into(),
            ));
        }
        if self.fsync_every_records == 0 {
            return Err(SpoolError::Config(
                "fsync_every_records must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        SpoolConfig::default().validate().expect("defaults valid");
    }

    #[test]
    fn parses_kebab_case_policy_and_humantime_durations() {
        let config: SpoolConfig = serde_json::from_str(
            r#"{"dir": "/tmp/x", "fsync_interval": "250ms", "when_full": "drop-newest"}"#,
        )
        .expect("parses");
        assert_eq!(config.fsync_interval, Duration::from_millis(250));
        assert_eq!(config.when_full, WhenFull::DropNewest);
        assert_eq!(config.segment_bytes, SpoolConfig::default().segment_bytes);
        let block: WhenFull = serde_json::from_str(r#""block""#).expect("parses");
        assert_eq!(block, WhenFull::Block);
    }

    #[test]
    fn unknown_keys_and_values_are_errors() {
        assert!(serde_json::from_str::<SpoolConfig>(r#"{"dirr": "/tmp"}"#).is_err());
        assert!(serde_json::from_str::<WhenFull>(r#""drop_newest""#).is_err());
    }

    #[test]
    fn validation_rejects_impossible_sizes() {
        let mut config = SpoolConfig::new("/tmp/x");
        config.max_bytes = config.segment_bytes;
        assert!(matches!(config.validate(), Err(SpoolError::Config(_))));
        let mut config = SpoolConfig::new("/tmp/x");
        config.fsync_every_records = 0;
        assert!(config.validate().is_err());
        let mut config = SpoolConfig::new("/tmp/x");
        config.fsync_interval = Duration::ZERO;
        assert!(config.validate().is_err());
    }
}
