//! When each shard last received a frame, kept on disk so that a restarted bridge can report the
//! gap its own restart caused: from the previous run's last frame to this run's first.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

/// `last-frames.json` in the spool directory: shard → last frame time.
pub struct LastFrames {
    path: PathBuf,
    saved: BTreeMap<u32, DateTime<Utc>>,
}

impl LastFrames {
    pub fn new(dir: &Path) -> Self {
        Self {
            path: dir.join("last-frames.json"),
            saved: BTreeMap::new(),
        }
    }

    /// What the previous run saved; empty when there was none (or it is unreadable: a missing
    /// restart gap is reported in the log, never a crash).
    pub fn load(&self) -> BTreeMap<u32, DateTime<Utc>> {
        let Ok(bytes) = std::fs::read(&self.path) else {
            return BTreeMap::new();
        };
        serde_json::from_slice(&bytes).unwrap_or_else(|error| {
            tracing::warn!(error = %error, file = %self.path.display(), "unreadable; no restart gap reported");
            BTreeMap::new()
        })
    }

    /// Saves `frames` if they changed since the last save (write to a temp file, then rename).
    pub fn save(&mut self, frames: BTreeMap<u32, DateTime<Utc>>) {
        if frames.is_empty() || frames == self.saved {
            return;
        }
        let temp = self.path.with_extension("json.tmp");
        let written = serde_json::to_vec(&frames)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                let mut file = std::fs::File::create(&temp)?;
                file.write_all(&bytes)
            })
            .and_then(|_| std::fs::rename(&temp, &self.path));
        match written {
            Ok(()) => self.saved = frames,
            Err(error) => tracing::warn!(error = %error, "cannot save the last frame times"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut frames = LastFrames::new(dir.path());
        assert!(frames.load().is_empty());
        let now = Utc::now();
        frames.save(BTreeMap::from([(0, now), (3, now)]));
        assert_eq!(
            LastFrames::new(dir.path()).load(),
            BTreeMap::from([(0, now), (3, now)])
        );
        std::fs::write(dir.path().join("last-frames.json"), b"garbage").unwrap();
        assert!(LastFrames::new(dir.path()).load().is_empty());
    }
}
