//! The dead-letter file: the last resort for records Kafka refuses for good (JSON lines).
//!
//! A record is acknowledged in the spool only once its line is on disk: lines are appended
//! without a sync and [`DeadLetterFile::sync`] makes a batch durable with one fsync and hands
//! back the seqs that may be acknowledged now. A write that fails keeps the record in the
//! spool (the caller tries again later). The file is capped: past `max_bytes` it is rotated
//! (`dead-letters.jsonl.1`, `.2`, …), and only `keep` rotated files are kept.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use base64::Engine;

use crate::spool::SpoolEntry;

/// The dead-letter file's size bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadLetterLimits {
    /// Bytes at which the file is rotated (a single larger line still gets a file of its own).
    pub max_bytes: u64,
    /// Rotated files kept besides the current one; older ones are deleted.
    pub keep: usize,
}

impl Default for DeadLetterLimits {
    fn default() -> Self {
        Self {
            max_bytes: 100 * 1024 * 1024,
            keep: 3,
        }
    }
}

/// One JSON line for `entry`.
pub(super) fn line(entry: &SpoolEntry, routed_topic: &str, reason: &str) -> Vec<u8> {
    let payload = &entry.record.payload;
    let mut line = serde_json::json!({
        "seq": entry.seq,
        "shard": entry.record.shard,
        "received_at_ms": entry.record.received_at_ms,
        "routed_topic": routed_topic,
        "reason": reason,
    });
    match std::str::from_utf8(payload) {
        Ok(text) => line["payload"] = text.into(),
        Err(_) => {
            line["payload_base64"] = base64::engine::general_purpose::STANDARD
                .encode(payload)
                .into()
        }
    }
    let mut bytes = line.to_string().into_bytes();
    bytes.push(b'\n');
    bytes
}

/// `T`: what a line written stands for until it is durable (the pump's dead letters).
pub(super) struct DeadLetterFile<T> {
    path: PathBuf,
    limits: DeadLetterLimits,
    file: Option<File>,
    len: u64,
    /// Lines written since the last sync.
    unsynced: Vec<T>,
}

impl<T> DeadLetterFile<T> {
    pub(super) fn new(path: PathBuf, limits: DeadLetterLimits) -> Self {
        // One written 0644 by an earlier version holds customer data too.
        crate::private_fs::narrow(&path, crate::private_fs::FILE_MODE);
        Self {
            path,
            limits,
            file: None,
            len: 0,
            unsynced: Vec::new(),
        }
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Whether lines wait for [`Self::sync`].
    pub(super) fn has_unsynced(&self) -> bool {
        !self.unsynced.is_empty()
    }

    /// Appends a line (not yet durable). On error nothing of it stays in the file.
    pub(super) fn append(&mut self, tag: T, line: &[u8]) -> io::Result<()> {
        if self.len > 0 && self.len + line.len() as u64 > self.limits.max_bytes {
            self.rotate()?;
        }
        self.open()?;
        let len = self.len;
        let file = self.file.as_mut().expect("just opened");
        if let Err(error) = file.write_all(line) {
            let _ = file.set_len(len);
            self.file = None;
            return Err(error);
        }
        self.len += line.len() as u64;
        self.unsynced.push(tag);
        Ok(())
    }

    /// Makes every appended line durable; returns what they stand for. On error the caller
    /// writes those again (a line may then appear twice).
    pub(super) fn sync(&mut self) -> Result<Vec<T>, (io::Error, Vec<T>)> {
        let written: Vec<T> = self.unsynced.drain(..).collect();
        let Some(file) = self.file.as_mut() else {
            return Ok(written);
        };
        match file.sync_data() {
            Ok(()) => Ok(written),
            Err(error) => {
                self.file = None;
                Err((error, written))
            }
        }
    }

    fn open(&mut self) -> io::Result<()> {
        if self.file.is_none() {
            let file = crate::private_fs::options()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.len = file.metadata()?.len();
            self.file = Some(file);
        }
        Ok(())
    }

    fn rotated(&self, n: usize) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    /// `file` → `file.1` → `file.2` … up to `keep`; the oldest beyond that is deleted.
    fn rotate(&mut self) -> io::Result<()> {
        if let Some(file) = self.file.take() {
            file.sync_data()?;
        }
        if self.limits.keep == 0 {
            fs::remove_file(&self.path).or_else(ignore_missing)?;
        } else {
            fs::remove_file(self.rotated(self.limits.keep)).or_else(ignore_missing)?;
            for n in (1..self.limits.keep).rev() {
                fs::rename(self.rotated(n), self.rotated(n + 1)).or_else(ignore_missing)?;
            }
            fs::rename(&self.path, self.rotated(1)).or_else(ignore_missing)?;
        }
        self.len = 0;
        if let Some(dir) = self.path.parent() {
            let _ = File::open(dir).and_then(|dir| dir.sync_all());
        }
        tracing::warn!(file = %self.path.display(), kept = self.limits.keep, "dead-letter file rotated");
        Ok(())
    }
}

fn ignore_missing(error: io::Error) -> io::Result<()> {
    if error.kind() == io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::Record;
    use std::os::unix::fs::PermissionsExt;

    fn entry(seq: u64, payload: &str) -> SpoolEntry {
        SpoolEntry {
            seq,
            record: Record::event(1, 2, payload.to_string()),
        }
    }

    #[test]
    fn lines_are_acknowledged_only_after_one_sync_for_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead.jsonl");
        let mut file = DeadLetterFile::new(path.clone(), DeadLetterLimits::default());
        for seq in 1..=3 {
            file.append(seq, &line(&entry(seq, "x"), "t", "why"))
                .unwrap();
        }
        file.append(4, b"{}\n").unwrap();
        assert!(file.has_unsynced());
        assert_eq!(file.sync().unwrap(), vec![1, 2, 3, 4]);
        assert!(!file.has_unsynced());
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 4);
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["seq"], 1);
        assert_eq!(first["reason"], "why");
        assert_eq!(first["payload"], "x");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_binary_payload_is_kept_as_base64() {
        let entry = SpoolEntry {
            seq: 1,
            record: Record::event(1, 2, vec![0xff, 0x00]),
        };
        let value: serde_json::Value = serde_json::from_slice(&line(&entry, "t", "r")).unwrap();
        assert_eq!(value["payload_base64"], "/wA=");
    }

    #[test]
    fn a_write_that_fails_keeps_nothing_and_works_once_the_path_does() {
        let dir = tempfile::tempdir().unwrap();
        let blocked = dir.path().join("blocked");
        fs::write(&blocked, b"a file where a directory should be").unwrap();
        let path = blocked.join("dead.jsonl");
        let mut file = DeadLetterFile::new(path.clone(), DeadLetterLimits::default());
        assert!(file.append(1, b"{}\n").is_err());
        assert!(!file.has_unsynced(), "a failed write acknowledges nothing");
        fs::remove_file(&blocked).unwrap();
        fs::create_dir(&blocked).unwrap();
        file.append(1, b"{}\n").unwrap();
        assert_eq!(file.sync().unwrap(), vec![1]);
        assert_eq!(fs::read_to_string(&path).unwrap(), "{}\n");
    }

    #[test]
    fn the_file_is_rotated_at_its_cap_and_only_keep_rotations_stay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead.jsonl");
        let limits = DeadLetterLimits {
            max_bytes: 100,
            keep: 2,
        };
        let mut file = DeadLetterFile::<u64>::new(path.clone(), limits);
        let line = [b'x'; 39]
            .iter()
            .copied()
            .chain([b'\n'])
            .collect::<Vec<u8>>();
        for seq in 1..=10 {
            file.append(seq, &line).unwrap();
            file.sync().unwrap();
        }
        // 40-byte lines, two per file: 10 lines made 5 files, of which 3 are kept.
        let size = |p: &Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        assert_eq!(size(&path), 80);
        assert_eq!(size(&file.rotated(1)), 80);
        assert_eq!(size(&file.rotated(2)), 80);
        assert!(!file.rotated(3).exists());
        let total: u64 = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(total <= limits.max_bytes * (limits.keep as u64 + 1));
    }
}
