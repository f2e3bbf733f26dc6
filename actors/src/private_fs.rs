//! Files that hold customer data (spool segments, the dead-letter file, the shard state and
//! the files beside them) are readable by their owner only (0600), in directories only the
//! owner can list (0700), whatever the process umask.

use std::fs::{OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

pub const FILE_MODE: u32 = 0o600;
pub const DIR_MODE: u32 = 0o700;

/// `OpenOptions` whose newly created files are 0600.
pub fn options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(FILE_MODE);
    options
}

/// Creates `dir` and missing parents 0700. An existing `dir` that others may read is narrowed
/// to 0700; where that is refused (a mount point owned by someone else) a warning says so.
pub fn create_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    narrow(dir, DIR_MODE);
    Ok(())
}

/// Narrows an existing file or directory that others may read (one written by an older
/// version) to `mode`; a refusal is a warning, not an error.
pub fn narrow(path: &Path, mode: u32) {
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    if meta.permissions().mode() & 0o077 == 0 {
        return;
    }
    if let Err(error) = std::fs::set_permissions(path, Permissions::from_mode(mode)) {
        tracing::warn!(path = %path.display(), error = %error, "could not make it private to this user (it may hold customer data)");
    }
}

/// Replaces `path` with `bytes` durably: a 0600 temp file beside it (`*.json.tmp`), fsync,
/// rename over `path`, fsync of the directory. A crash leaves the old file or the new one.
pub fn replace_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let temp = path.with_extension("json.tmp");
    let mut file = options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temp)?;
    file.write_all(bytes)?;
    file.sync_data()?;
    drop(file);
    std::fs::rename(&temp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn files_and_directories_are_private_whatever_existed() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        create_dir(&dir).unwrap();
        assert_eq!(mode(&dir), DIR_MODE);
        assert_eq!(mode(&root.path().join("a")), DIR_MODE);
        let file = dir.join("f");
        options().create(true).append(true).open(&file).unwrap();
        assert_eq!(mode(&file), FILE_MODE);
        // An older, readable one is narrowed.
        std::fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&file, Permissions::from_mode(0o644)).unwrap();
        create_dir(&dir).unwrap();
        narrow(&file, FILE_MODE);
        assert_eq!(mode(&dir), DIR_MODE);
        assert_eq!(mode(&file), FILE_MODE);
    }
}
