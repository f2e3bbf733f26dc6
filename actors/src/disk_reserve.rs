//! Real headroom on disk for the bridge's own small writes when the disk is full.
//!
//! The spool keeps 64 KiB of its cap for gap and status records, but that is the spool's own
//! accounting: when the *disk* fills first (another tenant of the volume, a cap set above the
//! volume's size), a gap record, `shard-state.json`, `backfill.json` and `committed.pos` could
//! not be written either, and the last one is what lets acknowledged segments be deleted. So
//! the spool directory holds a file of [`DISK_RESERVE_BYTES`] allocated on disk (`reserve`).
//! When one of those writes fails for lack of space, the reserve is released (truncated: its
//! blocks are free at once) and the write tried again (gap records in the spool writer,
//! `committed.pos` in the syncer, `shard-state.json` and `backfill.json` through
//! [`DiskReserve::with_room`]). While it is released events are refused
//! (the sockets pause, and the gap record says so), so they cannot take the room back; it is
//! allocated again once deleting acknowledged segments made room, and events flow again.

use std::fs::File;
use std::io::{self, ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Size of the reserve file.
pub const DISK_RESERVE_BYTES: u64 = 1024 * 1024;

pub const FILE_NAME: &str = "reserve";

/// Where the reserve stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReserveState {
    /// Allocated: events may be written.
    Armed,
    /// Released for a write that found the disk full: events are refused until it is allocated
    /// again.
    InUse,
    /// Never allocated (the volume had no room for it when the spool opened, or cannot
    /// allocate): no headroom, nothing refused.
    Absent,
}

impl ReserveState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReserveState::Armed => "armed",
            ReserveState::InUse => "in_use",
            ReserveState::Absent => "absent",
        }
    }
}

#[derive(Debug)]
pub struct DiskReserve {
    path: PathBuf,
    bytes: u64,
    state: Mutex<ReserveState>,
}

/// Whether an I/O error means the disk (or the quota) is full.
pub fn is_disk_full(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded
    )
}

impl DiskReserve {
    /// Opens the reserve in `dir`, allocating it if needed. A reserve file left empty by an
    /// earlier run (released, not yet allocated again) that still cannot be allocated stays in
    /// use; one that never existed and cannot be allocated is absent (logged).
    pub fn open(dir: &Path) -> Self {
        Self::open_with(dir, DISK_RESERVE_BYTES)
    }

    pub fn open_with(dir: &Path, bytes: u64) -> Self {
        let path = dir.join(FILE_NAME);
        let existed = path.exists();
        let state = match allocate(&path, bytes) {
            Ok(()) => ReserveState::Armed,
            Err(error) if existed && is_disk_full(&error) => {
                tracing::warn!(file = %path.display(), "the disk reserve is still in use (disk full): events are refused until acknowledged segments make room");
                ReserveState::InUse
            }
            Err(error) => {
                let _ = std::fs::remove_file(&path);
                tracing::warn!(file = %path.display(), bytes, error = %error, "no disk reserve: on a full disk, status records and the spool's own state may not be written");
                ReserveState::Absent
            }
        };
        DiskReserve {
            path,
            bytes,
            state: Mutex::new(state),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ReserveState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn state(&self) -> ReserveState {
        *self.lock()
    }

    /// Whether events must be refused: the reserve was given to the bridge's own records.
    pub fn in_use(&self) -> bool {
        self.state() == ReserveState::InUse
    }

    /// Frees the reserve's blocks. True if that made room (it was armed, or is in use already:
    /// whatever it freed is there to use).
    pub fn release(&self) -> bool {
        let mut state = self.lock();
        match *state {
            ReserveState::Absent => false,
            ReserveState::InUse => true,
            ReserveState::Armed => {
                let freed = File::options()
                    .write(true)
                    .open(&self.path)
                    .and_then(|file| file.set_len(0));
                match freed {
                    Ok(()) => {
                        tracing::error!(file = %self.path.display(), bytes = self.bytes, "disk full: the disk reserve is released for status records and the spool's state; events are refused until Kafka acknowledges and segments are deleted");
                        *state = ReserveState::InUse;
                        true
                    }
                    Err(error) => {
                        tracing::error!(file = %self.path.display(), error = %error, "disk full, and the disk reserve could not be released");
                        false
                    }
                }
            }
        }
    }

    /// Allocates the reserve again if it is in use; true if it is armed now. Called after
    /// acknowledged segments were deleted.
    pub fn rearm(&self) -> bool {
        let mut state = self.lock();
        if *state != ReserveState::InUse {
            return *state == ReserveState::Armed;
        }
        match allocate(&self.path, self.bytes) {
            Ok(()) => {
                tracing::info!(file = %self.path.display(), "disk reserve allocated again; events are accepted");
                *state = ReserveState::Armed;
                true
            }
            Err(error) => {
                tracing::debug!(error = %error, "disk reserve not allocated yet");
                false
            }
        }
    }

    /// Runs `write`; if it fails because the disk is full, releases the reserve and runs it
    /// once more.
    pub fn with_room<T>(&self, mut write: impl FnMut() -> io::Result<T>) -> io::Result<T> {
        match write() {
            Err(error) if is_disk_full(&error) && self.release() => write(),
            other => other,
        }
    }
}

/// Allocates `bytes` for the file at `path` (created 0600): `fallocate`, or zeros where the
/// filesystem cannot allocate; durable on return. On failure the file is left empty.
fn allocate(path: &Path, bytes: u64) -> io::Result<()> {
    let mut file = crate::private_fs::options()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    if file.metadata()?.len() == bytes && allocated_bytes(&file)? >= bytes {
        return Ok(());
    }
    let result =
        match rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, bytes) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::OPNOTSUPP) => write_zeros(&mut file, bytes),
            Err(errno) => Err(io::Error::from(errno)),
        }
        .and_then(|()| file.sync_all());
    if result.is_err() {
        let _ = file.set_len(0);
    }
    result
}

fn write_zeros(file: &mut File, bytes: u64) -> io::Result<()> {
    file.set_len(0)?;
    let chunk = [0u8; 64 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// Bytes the file really has on disk (a sparse file has fewer than its length).
fn allocated_bytes(file: &File) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(file.metadata()?.blocks() * 512)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn armed_released_then_armed_again() {
        let dir = tempfile::tempdir().unwrap();
        let reserve = DiskReserve::open_with(dir.path(), 64 * 1024);
        assert_eq!(reserve.state(), ReserveState::Armed);
        let file = dir.path().join(FILE_NAME);
        assert!(std::fs::metadata(&file).unwrap().len() == 64 * 1024);
        assert!(reserve.release());
        assert!(reserve.in_use());
        assert_eq!(std::fs::metadata(&file).unwrap().len(), 0);
        // A restart while in use, with room again: armed at open.
        drop(reserve);
        let reserve = DiskReserve::open_with(dir.path(), 64 * 1024);
        assert_eq!(reserve.state(), ReserveState::Armed);
        assert!(reserve.release());
        assert!(reserve.rearm());
        assert_eq!(reserve.state(), ReserveState::Armed);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0);
    }

    #[test]
    fn with_room_retries_once_after_releasing() {
        let dir = tempfile::tempdir().unwrap();
        let reserve = DiskReserve::open_with(dir.path(), 4096);
        let mut calls = 0;
        let result = reserve.with_room(|| {
            calls += 1;
            if calls == 1 {
                Err(io::Error::from(ErrorKind::StorageFull))
            } else {
                Ok(calls)
            }
        });
        assert_eq!(result.unwrap(), 2);
        assert!(reserve.in_use());
        // Not a full disk: no retry, the reserve is not touched.
        let other = DiskReserve::open_with(&dir.path().join("nope"), 4096);
        assert_eq!(other.state(), ReserveState::Absent);
        let mut calls = 0;
        let result: io::Result<()> = other.with_room(|| {
            calls += 1;
            Err(io::Error::from(ErrorKind::StorageFull))
        });
        assert!(result.is_err());
        assert_eq!(calls, 1);
    }
}
