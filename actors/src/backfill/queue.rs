//! The durable list of gaps waiting to be backfilled: a small JSON file in the spool directory,
//! replaced atomically on every change, so a restart forgets no gap and resumes a backfill at
//! the page it had reached.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// One gap to fill, with its progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingGap {
    /// `shard-<n>-<gap start ms>`: names the gap in headers and status records.
    pub id: String,
    pub shard: u32,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// Queue and user ids the shard subscribes to; empty when the topics cannot restrict the
    /// query (then every conversation of the interval is taken).
    pub entity_ids: Vec<String>,
    /// Progress: the chunk of the interval being queried and its next page.
    #[serde(default)]
    pub chunk: usize,
    #[serde(default = "first_page")]
    pub page: u32,
    #[serde(default)]
    pub recovered: u64,
    #[serde(default)]
    pub requests: u64,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub started: bool,
}

fn first_page() -> u32 {
    1
}

impl PendingGap {
    pub fn new(
        shard: u32,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        entity_ids: Vec<String>,
    ) -> Self {
        Self {
            id: format!("shard-{shard}-{}", start.timestamp_millis()),
            shard,
            start,
            end,
            entity_ids,
            chunk: 0,
            page: 1,
            recovered: 0,
            requests: 0,
            attempts: 0,
            started: false,
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct QueueFile {
    gaps: Vec<PendingGap>,
}

/// Shared handle on the backfill queue.
#[derive(Clone)]
pub struct BackfillQueue {
    path: PathBuf,
    gaps: Arc<Mutex<Vec<PendingGap>>>,
    added: Arc<Notify>,
    /// Room for a write when the disk is full (the spool directory's reserve).
    reserve: Option<Arc<crate::disk_reserve::DiskReserve>>,
}

impl BackfillQueue {
    /// Opens (or creates) `dir/backfill.json`. A damaged file is set aside, not trusted.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        crate::private_fs::create_dir(dir)?;
        let path = dir.join("backfill.json");
        let gaps = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<QueueFile>(&bytes) {
                Ok(file) => file.gaps,
                Err(error) => {
                    let aside = dir.join("backfill.json.damaged");
                    tracing::error!(error = %error, aside = %aside.display(), "backfill queue unreadable; set aside");
                    std::fs::rename(&path, aside)?;
                    Vec::new()
                }
            },
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(error) => return Err(error),
        };
        Ok(Self {
            path,
            gaps: Arc::new(Mutex::new(gaps)),
            added: Arc::new(Notify::new()),
            reserve: None,
        })
    }

    /// Writes through `reserve` (released for a write that finds the disk full).
    pub fn with_disk_reserve(mut self, reserve: Arc<crate::disk_reserve::DiskReserve>) -> Self {
        self.reserve = Some(reserve);
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<PendingGap>> {
        self.gaps.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn persist(&self, gaps: &[PendingGap]) -> std::io::Result<()> {
        let temp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(&QueueFile {
            gaps: gaps.to_vec(),
        })?;
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut file = crate::private_fs::options()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&temp)?;
            file.write_all(&bytes)?;
            file.sync_data()?;
            drop(file);
            std::fs::rename(&temp, &self.path)
        };
        match &self.reserve {
            Some(reserve) => reserve.with_room(write),
            None => write(),
        }
    }

    /// Adds a gap (durably) and wakes the backfill actor.
    pub fn push(&self, gap: PendingGap) -> std::io::Result<()> {
        let mut gaps = self.lock();
        gaps.push(gap);
        let result = self.persist(&gaps);
        drop(gaps);
        self.added.notify_one();
        result
    }

    /// Replaces a gap's progress (by id).
    pub fn update(&self, gap: &PendingGap) -> std::io::Result<()> {
        let mut gaps = self.lock();
        if let Some(slot) = gaps.iter_mut().find(|g| g.id == gap.id) {
            *slot = gap.clone();
        }
        self.persist(&gaps)
    }

    /// Removes a finished (or abandoned) gap.
    pub fn remove(&self, id: &str) -> std::io::Result<()> {
        let mut gaps = self.lock();
        gaps.retain(|g| g.id != id);
        self.persist(&gaps)
    }

    pub fn pending(&self) -> Vec<PendingGap> {
        self.lock().clone()
    }

    /// Resolves when a gap is pushed (or at once if one was pushed since the last wait).
    pub async fn added(&self) {
        self.added.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_a_reopen_with_progress() {
        let dir = tempfile::tempdir().unwrap();
        let queue = BackfillQueue::open(dir.path()).unwrap();
        let start = Utc::now();
        let mut gap = PendingGap::new(
            1,
            start,
            start + chrono::Duration::seconds(5),
            vec!["q".into()],
        );
        queue.push(gap.clone()).unwrap();
        gap.page = 3;
        gap.recovered = 42;
        queue.update(&gap).unwrap();
        let reopened = BackfillQueue::open(dir.path()).unwrap();
        assert_eq!(reopened.pending(), vec![gap.clone()]);
        reopened.remove(&gap.id).unwrap();
        assert!(BackfillQueue::open(dir.path())
            .unwrap()
            .pending()
            .is_empty());
    }

    #[test]
    fn a_damaged_file_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("backfill.json"), b"{not json").unwrap();
        let queue = BackfillQueue::open(dir.path()).unwrap();
        assert!(queue.pending().is_empty());
        assert!(dir.path().join("backfill.json.damaged").exists());
    }
}
