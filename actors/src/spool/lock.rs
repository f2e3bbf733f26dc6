//! One process per spool directory: an advisory `flock` on `spool.lock`.
//!
//! `flock` (unlike a pid file) is released by the kernel when the process dies, SIGKILL
//! included, so a crash never leaves a stale lock. It is per open file description, so a second
//! `Spool::open` of the same directory inside one process is refused too.
//!
//! Caveat: a child process spawned while the spool is open holds a duplicate of the descriptor
//! between `fork` and `exec` (all spool files are close-on-exec), so in that short window a
//! closed spool still counts as locked. The bridge spawns no children; the recovery tests, which
//! do, serialise around it.

use std::fs::{File, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::error::SpoolError;

pub(crate) const LOCK_FILE: &str = "spool.lock";

/// Holds the lock until dropped.
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

/// Takes the lock of `dir` without waiting.
// `File::try_lock` is stable since Rust 1.89; the workspace declares 1.85 but builds with a
// newer toolchain. The alternative, an O_EXCL pid file, goes stale on SIGKILL.
pub(crate) fn lock_dir(dir: &Path) -> Result<DirLock, SpoolError> {
    let lock_path: PathBuf = dir.join(LOCK_FILE);
    let mut file = crate::private_fs::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|error| {
            SpoolError::io(format!("opening lock file {}", lock_path.display()), error)
        })?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            return Err(SpoolError::Locked {
                dir: dir.to_path_buf(),
                lock_file: lock_path,
            })
        }
        Err(TryLockError::Error(error)) => {
            return Err(SpoolError::io(
                format!("locking {}", lock_path.display()),
                error,
            ))
        }
    }
    // For a human who finds the directory locked: which process holds it.
    let pid_line = format!("{}\n", std::process::id());
    let written = file
        .set_len(0)
        .and_then(|()| file.write_all(pid_line.as_bytes()));
    if let Err(error) = written {
        tracing::debug!(file = %lock_path.display(), %error, "could not write pid into spool lock file");
    }
    Ok(DirLock { _file: file })
}
