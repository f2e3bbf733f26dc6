//! The durable spool between the socket readers and the Kafka producer.
//!
//! An append-only, segmented log on local disk. Every frame a `SocketActor` receives is
//! [`append`](Spool::append)ed raw with its receive time and shard; the producer reads in order
//! from its own cursor with [`read_batch`](Spool::read_batch), waits for more with
//! [`wait_for`](Spool::wait_for), and [`ack`](Spool::ack)s what Kafka acknowledged (in any
//! order). The committed position, the highest seq with every seq at or below it acked, is
//! persisted; segments wholly at or below it are deleted; on restart reading starts at
//! `committed + 1` (at-least-once: what was sent but not acked is sent again).
//!
//! # Durability
//! Each append is written to its segment file with one positional `write` before `append`
//! returns (an [`append_batch`](Spool::append_batch) writes its records with one `write`), so a process crash (SIGKILL included) loses nothing that was `Ok`: the kernel's page
//! cache holds it. A background thread fsyncs as a group commit every `fsync_interval` or every
//! `fsync_every_records` appends, whichever comes first, so a machine crash loses at most that
//! window; [`sync`](Spool::sync) forces it. Appends never wait for an fsync or for Kafka.
//!
//! # On disk
//! `dir/` holds `<first seq, 20 digits>.seg` segment files (format in [`segment`] and
//! [`record`]: versioned header, then length-prefixed CRC32 frames), `committed.pos` (the
//! committed position, replaced atomically) and `spool.lock` (an `flock`, one process at a time).
//! Recovery on open ([`RecoveryReport`]) cuts torn or corrupt tails and says what it cut.
//!
//! # Reading cost
//! Readers `pread` the segment files through handles kept open per segment, in chunks of at
//! least 64 KiB, and keep a cursor so sequential reads never scan. There is deliberately no
//! in-memory tail cache: the records just appended are in the page cache anyway, a cache would
//! hold a second copy of every frame and put a memcpy inside the appenders' lock, and one
//! `pread` per batch costs microseconds.
//!
//! # Concurrency
//! [`Spool`] is a cheap `Clone` (an `Arc`) and `Send + Sync`. Appends from several threads
//! serialise on one mutex whose critical section is a capacity check, 12 bytes of CRC and one
//! `pwrite` (the payload is encoded and checksummed before the lock); an
//! [`append_batch`](Spool::append_batch) holds it once for all its records, writes them with one
//! `pwrite` per segment and wakes the reader once (the socket actor hands over every event of a
//! socket read this way: a burst costs a syscall per read, not per frame). Readers hold that mutex
//! only to look up a segment; acks take a separate mutex. The waits ([`wait_for`],
//! [`wait_for_space`]) use `tokio::sync::Notify`, which works across threads and runtimes.
//!
//! [`wait_for`]: Spool::wait_for
//! [`wait_for_space`]: Spool::wait_for_space
#![forbid(unsafe_code)]

mod committed;
mod config;
mod error;
mod lock;
mod reader;
pub mod record;
mod recovery;
mod salvage;
pub mod segment;
mod state;
mod stats;
mod syncer;
mod writer;

use std::path::Path;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use tokio::sync::Notify;

pub use committed::CommittedFileStatus;
pub use config::{SpoolConfig, WhenFull, GAP_HEADROOM_BYTES, MIN_SEGMENT_BYTES};
pub use error::SpoolError;
pub use record::{
    EventIndex, Record, RecordKind, Span, SpoolEntry, EVENT_INDEX_BYTES, MAX_PAYLOAD_BYTES,
    RECORD_HEADER_BYTES,
};
pub use recovery::{RecoveryCut, RecoveryReport};
pub use segment::{segment_file_name, FORMAT_VERSION, SEGMENT_HEADER_BYTES};
pub use stats::SpoolStats;
pub use writer::BatchOutcome;

use crate::disk_reserve::DiskReserve;
use committed::AckWatermark;
use lock::DirLock;
use state::WriterState;
use stats::FsyncStats;
use syncer::{SyncBook, SyncSignal};

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a dropped append must be reported as a gap"]
pub enum AppendOutcome {
    /// The record is in the segment file (page cache) under `seq`.
    Appended {
        /// The record's sequence number.
        seq: u64,
    },
    /// The spool is full and the policy is `drop-newest`: the event was discarded and counted.
    Dropped,
}

/// A handle to an open spool directory. Cloning is cheap; the directory is closed (fsynced, the
/// committed position persisted, the lock released) when the last clone is dropped.
#[derive(Clone)]
pub struct Spool {
    handle: Arc<Handle>,
}

/// Owns the background syncer and the directory lock; dropping it closes the spool.
struct Handle {
    shared: Arc<Shared>,
    syncer: Mutex<Option<JoinHandle<()>>>,
    /// Dropped after `Handle::drop` ran, i.e. after the final sync: the lock outlives every write.
    _lock: DirLock,
}

/// The spool's state, shared by the handles and the syncer thread.
pub(crate) struct Shared {
    config: SpoolConfig,
    /// The writer lock: segments, next seq, byte count (see [`WriterState`]).
    state: Mutex<WriterState>,
    /// The ack watermark; separate from the writer lock so acks never wait for an append.
    acks: Mutex<AckWatermark>,
    /// `next_seq`, stored under the writer lock after each append, read without it by
    /// `wait_for` and `ack`.
    published_next_seq: AtomicU64,
    /// Woken after every append.
    appended: Notify,
    /// Woken when deleting acked segments freed disk.
    space_freed: Notify,
    /// An append was refused or someone waits for room: acks moving the watermark wake the
    /// syncer so space is freed without waiting for the next tick.
    full_hint: AtomicBool,
    signal: SyncSignal,
    /// Serialises group commits (syncer tick, `sync()`, close) and remembers what is persisted.
    book: Mutex<SyncBook>,
    fsync: FsyncStats,
    /// Real headroom on disk for gap records and `committed.pos` (and, through
    /// [`Spool::disk_reserve`], the shard state) when the disk is full.
    reserve: Arc<DiskReserve>,
    /// Records at or after this seq are kept on disk whatever the acks say (see
    /// [`Spool::retain_from`]); `u64::MAX` when nobody holds any.
    retain_from: AtomicU64,
    /// The reader's last chunk, used again by the next read once nothing else holds it.
    spare_chunk: Mutex<Option<bytes::Bytes>>,
}

impl Shared {
    fn lock_state(&self) -> MutexGuard<'_, WriterState> {
        // No code panics while holding the lock; if one did, the state is still consistent
        // between statements that update it, so keep serving rather than cascade the panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_acks(&self) -> MutexGuard<'_, AckWatermark> {
        self.acks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_book(&self) -> MutexGuard<'_, SyncBook> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Spool {
    /// Opens (creating if needed) the spool in `config.dir`, recovers it, and starts its
    /// group-commit thread.
    ///
    /// Fails with [`SpoolError::Locked`] if another process or `Spool` holds the directory,
    /// [`SpoolError::Config`] for an invalid config, [`SpoolError::UnsupportedVersion`] for
    /// segments of a newer format; never because of torn or corrupt data, which is cut and
    /// reported in the [`RecoveryReport`].
    pub fn open(config: SpoolConfig) -> Result<(Spool, RecoveryReport), SpoolError> {
        config.validate()?;
        crate::private_fs::create_dir(&config.dir)
            .map_err(|error| SpoolError::io(format!("creating {}", config.dir.display()), error))?;
        let lock = lock::lock_dir(&config.dir)?;
        let recovered = recovery::recover(&config)?;
        let report = recovered.report;
        let reserve = Arc::new(DiskReserve::open(&config.dir));
        let shared = Arc::new(Shared {
            published_next_seq: AtomicU64::new(recovered.state.next_seq),
            state: Mutex::new(recovered.state),
            acks: Mutex::new(recovered.watermark),
            appended: Notify::new(),
            space_freed: Notify::new(),
            full_hint: AtomicBool::new(false),
            signal: SyncSignal::default(),
            book: Mutex::new(SyncBook::new(recovered.persisted_committed)),
            fsync: FsyncStats::default(),
            reserve,
            retain_from: AtomicU64::new(u64::MAX),
            spare_chunk: Mutex::new(None),
            config,
        });
        let syncer = syncer::spawn(Arc::clone(&shared))
            .map_err(|error| SpoolError::io("starting the spool sync thread", error))?;
        let handle = Handle {
            shared,
            syncer: Mutex::new(Some(syncer)),
            _lock: lock,
        };
        let spool = Spool {
            handle: Arc::new(handle),
        };
        Ok((spool, report))
    }

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    /// Appends one record. Writes it to the segment file before returning (no fsync, no
    /// waiting for Kafka). Safe to call from several threads; each thread's records keep their
    /// order.
    ///
    /// When the spool is full: with `block`, `Err(SpoolError::Full)`; with `drop-newest`, events
    /// return `Ok(AppendOutcome::Dropped)`. Gap records may use the last 64 KiB of the cap
    /// ([`GAP_HEADROOM_BYTES`]) in both policies. When the *disk* is full, a gap record is
    /// written into the released disk reserve, and events get `Err(SpoolError::DiskReserveInUse)`
    /// until it is allocated again.
    pub fn append(&self, record: &Record) -> Result<AppendOutcome, SpoolError> {
        self.shared().append(record)
    }

    /// Appends several records in order, as [`append`](Self::append) would one by one, under
    /// one lock and with one positional write per segment (a socket read hands over dozens of
    /// frames at once). Stops at the first error, which belongs to the record after the last
    /// outcome. Everything reported appended is written before this returns.
    pub fn append_batch(&self, records: &[Record]) -> BatchOutcome {
        self.shared().append_batch(records)
    }

    /// Reads records in seq order starting at `from_seq`: at most `max_records`, and payloads
    /// totalling at most `max_bytes` (but always at least one record if one exists, so a large
    /// frame cannot stall the reader). Empty when nothing at or after `from_seq` exists yet.
    ///
    /// Seqs that no longer exist (acked and deleted, or cut by recovery, which reported them)
    /// are skipped: the entries carry their seqs. A record found corrupt while reading is cut
    /// like recovery would (logged, counted in `corrupt_cut_total`, treated as acked) and
    /// reading continues with the next segment.
    pub fn read_batch(
        &self,
        from_seq: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<SpoolEntry>, SpoolError> {
        self.shared()
            .read_batch(from_seq, max_records, max_bytes, reader::Cursor::Remember)
    }

    /// Resolves once the record `seq` has been appended (immediately if it already was).
    /// Cancel-safe; combine with a timeout or a shutdown signal.
    pub async fn wait_for(&self, seq: u64) {
        let shared = self.shared();
        loop {
            let mut notified = pin!(shared.appended.notified());
            // Register before checking, so an append between the check and the await still
            // wakes us.
            notified.as_mut().enable();
            if shared.published_next_seq.load(Ordering::Acquire) > seq {
                return;
            }
            notified.await;
        }
    }

    /// Marks `seq` as acknowledged by Kafka. Acks may come in any order and twice; the
    /// committed position moves over a seq only once every seq up to it is acked. It is
    /// persisted, and fully acked segments deleted, on the next group commit.
    pub fn ack(&self, seq: u64) -> Result<(), SpoolError> {
        let shared = self.shared();
        let next_seq = shared.published_next_seq.load(Ordering::Acquire);
        if seq >= next_seq {
            return Err(SpoolError::AckBeyondEnd { seq, next_seq });
        }
        let advanced = shared.lock_acks().ack(seq);
        if advanced && shared.full_hint.load(Ordering::Relaxed) {
            // Someone waits for room: free acked segments now rather than on the next tick.
            shared.signal.kick();
        }
        Ok(())
    }

    /// Resolves once an event with a payload of `payload_len` bytes would be accepted. Fails
    /// only if it never could be ([`SpoolError::RecordTooLarge`]). Room appears when acked
    /// segments are deleted, so this waits for Kafka.
    pub async fn wait_for_space(&self, payload_len: usize) -> Result<(), SpoolError> {
        let shared = self.shared();
        shared.check_payload_size(RecordKind::Event, payload_len)?;
        loop {
            let mut notified = pin!(shared.space_freed.notified());
            notified.as_mut().enable();
            if shared.has_room_for_event(payload_len) {
                return Ok(());
            }
            shared.full_hint.store(true, Ordering::Relaxed);
            notified.await;
        }
    }

    /// Like [`wait_for_space`](Self::wait_for_space), but resolves only once the events' cap is
    /// at most half used with this event in: what a reader paused by `block` waits for before it
    /// reconnects. Waiting for the first free byte instead made a paused shard flap (reconnect,
    /// full again within milliseconds, pause), each flap a new channel, a connect and a gap
    /// record, until the connects-per-minute bound held the shard out for most of a minute.
    pub async fn wait_for_resume_mark(&self, payload_len: usize) -> Result<(), SpoolError> {
        let shared = self.shared();
        shared.check_payload_size(RecordKind::Event, payload_len)?;
        loop {
            let mut notified = pin!(shared.space_freed.notified());
            notified.as_mut().enable();
            if shared.is_below_resume_mark(payload_len) {
                return Ok(());
            }
            shared.full_hint.store(true, Ordering::Relaxed);
            notified.await;
        }
    }

    /// Group commit now: fsyncs unsynced appends and the directory, persists the committed
    /// position, deletes fully acked segments.
    pub fn sync(&self) -> Result<(), SpoolError> {
        self.shared().sync()
    }

    /// Syncs (returning any error, unlike `Drop`) and drops this handle. The directory closes
    /// when the last clone is gone.
    pub fn close(self) -> Result<(), SpoolError> {
        self.sync()
    }

    /// Counters and state, for metrics and `/status`.
    pub fn stats(&self) -> SpoolStats {
        self.shared().stats()
    }

    /// The seq the next append will get.
    pub fn next_seq(&self) -> u64 {
        self.shared().published_next_seq.load(Ordering::Acquire)
    }

    /// Every seq at or below this is acked (or no longer exists). Reading after a restart
    /// starts at `committed_seq() + 1`.
    pub fn committed_seq(&self) -> u64 {
        self.shared().lock_acks().committed()
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.shared().config.dir
    }

    /// The disk reserve of the spool directory: other small files beside the spool (the shard
    /// state) write through [`DiskReserve::with_room`] too.
    pub fn disk_reserve(&self) -> Arc<DiskReserve> {
        Arc::clone(&self.shared().reserve)
    }

    /// Keeps every record at or after `seq` on disk, acknowledged or not: the committed position
    /// that is persisted (and below which segments are deleted, now and by the next open) stays
    /// below `seq`. A deriver whose state is a checkpoint plus the records after it (the
    /// conversation lifecycle) moves this forward after each durable checkpoint, like a log
    /// that keeps what the last snapshot does not cover. Acks still count: after a restart the
    /// records between the hold and the acks are sent again, as acks not yet persisted are.
    pub fn retain_from(&self, seq: u64) {
        self.shared().retain_from.store(seq, Ordering::Release);
    }

    /// The configuration the spool was opened with.
    pub fn config(&self) -> &SpoolConfig {
        &self.shared().config
    }
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.dir())
            .field("next_seq", &self.next_seq())
            .finish_non_exhaustive()
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.signal.stop();
        let syncer = self
            .syncer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(syncer) = syncer {
            if syncer.join().is_err() {
                tracing::error!(dir = %self.shared.config.dir.display(), "spool sync thread panicked");
            }
        }
        if let Err(error) = self.shared.sync() {
            tracing::error!(
                dir = %self.shared.config.dir.display(),
                %error,
                "final spool sync failed on close; unsynced appends may be lost on a machine crash"
            );
        }
    }
}
