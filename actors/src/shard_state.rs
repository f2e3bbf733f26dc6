//! What a shard must not forget across actor restarts, process restarts and crashes: when it
//! last received a frame, the gap open now, events the spool dropped, and status records the
//! spool could not take yet. Kept in `shard-state.json` beside the spool (mode 0600), one entry
//! per shard, written before it matters: at once when a gap opens or a drop starts, otherwise
//! every few hundred milliseconds by the supervisor.
//!
//! A shard that received nothing in a run keeps its entry as it was: its gap is still open
//! and the first frame of a later run closes exactly that gap.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::disk_reserve::DiskReserve;
use crate::socket::coverage::OpenGap;
use crate::spool::Record;

/// Events of one shard that the `drop-newest` policy discarded, not yet reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropSpan {
    pub first_ms: i64,
    pub last_ms: i64,
    pub count: u64,
}

/// The durable part of a shard's state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShardRecord {
    /// The last frame handled (appended to the spool, or a control frame), epoch ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_frame_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_gap: Option<OpenGap>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_span: Option<DropSpan>,
    /// Status records (gap records) the spool refused for lack of room, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_status: Vec<serde_json::Value>,
}

/// Pending status records kept at most per shard; older ones are merged away (logged).
pub const MAX_PENDING_STATUS: usize = 1000;

/// One shard's state: the last frame time as an atomic (written per frame), the rest behind a
/// mutex (written a few times per incident), and a frame held back by the `block` policy.
#[derive(Debug)]
pub struct ShardCell {
    last_frame_ms: AtomicI64,
    record: Mutex<ShardRecord>,
    held: Mutex<Option<Record>>,
}

impl Default for ShardCell {
    fn default() -> Self {
        Self::from_record(ShardRecord::default())
    }
}

impl ShardCell {
    fn from_record(record: ShardRecord) -> Self {
        Self {
            last_frame_ms: AtomicI64::new(record.last_frame_ms.unwrap_or(i64::MIN)),
            record: Mutex::new(record),
            held: Mutex::new(None),
        }
    }

    pub fn note_frame(&self, at_ms: i64) {
        self.last_frame_ms.fetch_max(at_ms, Ordering::Relaxed);
    }

    pub fn last_frame_ms(&self) -> Option<i64> {
        let ms = self.last_frame_ms.load(Ordering::Relaxed);
        (ms != i64::MIN).then_some(ms)
    }

    pub fn lock(&self) -> MutexGuard<'_, ShardRecord> {
        self.record.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A copy of the durable state, with the current last frame time.
    pub fn snapshot(&self) -> ShardRecord {
        let mut record = self.lock().clone();
        record.last_frame_ms = self.last_frame_ms();
        record
    }

    /// The frame held back by `block` (kept here so that an actor restart does not lose it).
    pub fn held(&self) -> MutexGuard<'_, Option<Record>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct Inner {
    path: PathBuf,
    cells: Mutex<BTreeMap<u32, Arc<ShardCell>>>,
    /// Serialises saves; the bytes last written.
    saved: Mutex<Vec<u8>>,
    /// Room for a save when the disk is full (the spool directory's reserve).
    reserve: Option<Arc<DiskReserve>>,
}

/// Every shard's state and the file that keeps it. Cheap to clone.
#[derive(Clone)]
pub struct ShardStates {
    inner: Arc<Inner>,
}

pub const FILE_NAME: &str = "shard-state.json";

impl ShardStates {
    /// Loads `shard-state.json` from `dir` (or the `last-frames.json` of older versions). An
    /// unreadable file is logged and starts empty: a missing restart gap is reported in the
    /// log, never a crash.
    ///
    /// `reserve`: the disk reserve of that directory, released for a save that finds the disk
    /// full.
    pub fn open(dir: &Path, reserve: Option<Arc<DiskReserve>>) -> Self {
        let path = dir.join(FILE_NAME);
        let records: BTreeMap<u32, ShardRecord> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|error| {
                tracing::error!(error = %error, file = %path.display(), "unreadable shard state; restart gaps of the last run are not reported");
                BTreeMap::new()
            }),
            Err(_) => Self::legacy(dir),
        };
        let cells = records
            .into_iter()
            .map(|(shard, record)| (shard, Arc::new(ShardCell::from_record(record))))
            .collect();
        Self {
            inner: Arc::new(Inner {
                path,
                cells: Mutex::new(cells),
                saved: Mutex::new(Vec::new()),
                reserve,
            }),
        }
    }

    /// `last-frames.json` (shard → last frame time) of versions before `shard-state.json`.
    fn legacy(dir: &Path) -> BTreeMap<u32, ShardRecord> {
        let Ok(bytes) = std::fs::read(dir.join("last-frames.json")) else {
            return BTreeMap::new();
        };
        let frames: BTreeMap<u32, DateTime<Utc>> =
            serde_json::from_slice(&bytes).unwrap_or_default();
        frames
            .into_iter()
            .map(|(shard, at)| {
                let record = ShardRecord {
                    last_frame_ms: Some(at.timestamp_millis()),
                    ..ShardRecord::default()
                };
                (shard, record)
            })
            .collect()
    }

    fn cells(&self) -> MutexGuard<'_, BTreeMap<u32, Arc<ShardCell>>> {
        self.inner
            .cells
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The state of `shard`, created empty for a shard never seen.
    pub fn cell(&self, shard: u32) -> Arc<ShardCell> {
        Arc::clone(self.cells().entry(shard).or_default())
    }

    /// Forgets a shard that no longer exists.
    pub fn remove(&self, shard: u32) {
        self.cells().remove(&shard);
    }

    pub fn shards(&self) -> Vec<u32> {
        self.cells().keys().copied().collect()
    }

    /// Writes the file if anything changed (temp file, then rename; mode 0600).
    pub fn save(&self) -> std::io::Result<()> {
        let records: BTreeMap<u32, ShardRecord> = self
            .cells()
            .iter()
            .map(|(shard, cell)| (*shard, cell.snapshot()))
            .collect();
        let bytes = serde_json::to_vec(&records).map_err(std::io::Error::other)?;
        let mut saved = self
            .inner
            .saved
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *saved == bytes {
            return Ok(());
        }
        let temp = self.inner.path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            let mut file = crate::private_fs::options()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&temp)?;
            file.write_all(&bytes)?;
            drop(file);
            std::fs::rename(&temp, &self.inner.path)
        };
        match &self.inner.reserve {
            Some(reserve) => reserve.with_room(write)?,
            None => write()?,
        }
        *saved = bytes;
        Ok(())
    }

    /// [`save`](Self::save), logging a failure (the next save tries again).
    pub fn save_or_log(&self) {
        if let Err(error) = self.save() {
            tracing::warn!(error = %error, file = %self.inner.path.display(), "cannot save the shard state");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_shards_that_saw_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let states = ShardStates::open(dir.path(), None);
        states.cell(0).note_frame(100);
        states.cell(3).lock().open_gap = Some(OpenGap {
            since_ms: 50,
            reason: "closed".into(),
        });
        states.save().unwrap();
        // The next run: shard 0 gets nothing, shard 3 gets a frame.
        let again = ShardStates::open(dir.path(), None);
        again.cell(3).note_frame(900);
        again.save().unwrap();
        let third = ShardStates::open(dir.path(), None);
        assert_eq!(third.cell(0).last_frame_ms(), Some(100));
        assert_eq!(third.cell(3).last_frame_ms(), Some(900));
        assert_eq!(third.cell(3).snapshot().open_gap.unwrap().since_ms, 50);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(FILE_NAME))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "not readable by others");
    }

    #[test]
    fn a_shard_never_seen_has_no_last_frame() {
        let dir = tempfile::tempdir().unwrap();
        let states = ShardStates::open(dir.path(), None);
        assert_eq!(states.cell(7).last_frame_ms(), None);
        assert_eq!(states.cell(7).snapshot(), ShardRecord::default());
    }

    #[test]
    fn legacy_file_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("last-frames.json"),
            br#"{"2":"2026-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        let states = ShardStates::open(dir.path(), None);
        assert_eq!(states.cell(2).last_frame_ms(), Some(1_767_225_600_000));
        std::fs::write(dir.path().join(FILE_NAME), b"garbage").unwrap();
        assert!(ShardStates::open(dir.path(), None).shards().is_empty());
    }
}
