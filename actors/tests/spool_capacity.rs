//! The disk cap with both policies, the gap-record headroom, and waiting for space.
//!
//! Sizes: 4 KiB segments, `max_bytes` = 2 * 4 KiB + 64 KiB, so events may use 8 KiB. Frames of
//! 1 KiB payload are 1053 bytes; three fit in a segment (16 + 3 * 1053 = 3175), so after seven
//! events (two full segments and one frame: 2 * 3175 + 16 + 1053 = 7419) the eighth would pass
//! 8192.

use std::path::Path;
use std::time::Duration;

use genesys_actors::spool::{
    AppendOutcome, Record, RecordKind, Spool, SpoolConfig, SpoolError, WhenFull, GAP_HEADROOM_BYTES,
};

const PAYLOAD: usize = 1024;
const FITS: u64 = 7;

fn capped_config(dir: &Path, when_full: WhenFull) -> SpoolConfig {
    SpoolConfig {
        dir: dir.to_path_buf(),
        segment_bytes: 4096,
        max_bytes: 2 * 4096 + GAP_HEADROOM_BYTES,
        fsync_interval: Duration::from_millis(20),
        fsync_every_records: 1000,
        when_full,
    }
}

fn event(n: u64) -> Record {
    Record::event(0, 1_000 + n as i64, vec![b'e'; PAYLOAD])
}

fn fill_to_the_cap(spool: &Spool) {
    for n in 1..=FITS {
        let outcome = spool.append(&event(n)).expect("append below the cap");
        assert!(matches!(outcome, AppendOutcome::Appended { seq, .. } if seq == n));
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
}

#[test]
fn block_policy_refuses_events_but_keeps_room_for_gap_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, _) = Spool::open(capped_config(dir.path(), WhenFull::Block)).expect("open");
    fill_to_the_cap(&spool);
    let bytes_before = spool.stats().bytes_on_disk;

    let error = spool.append(&event(8)).expect_err("full");
    assert!(matches!(error, SpoolError::Full { .. }), "{error}");
    assert!(error.to_string().contains("full"), "{error}");
    let error = spool.append(&event(9)).expect_err("still full");
    assert!(matches!(error, SpoolError::Full { .. }));
    let stats = spool.stats();
    assert_eq!(stats.full_refusals, 2);
    assert_eq!(
        stats.bytes_on_disk, bytes_before,
        "a refused append stores nothing"
    );
    assert_eq!(stats.next_seq, FITS + 1, "a refused append takes no seq");
    assert!(stats.bytes_on_disk <= spool.config().max_bytes);

    // Malformed frames and backfill records may not: the headroom is the gap records' alone.
    for kind in [RecordKind::Reserved(2), RecordKind::Reserved(3)] {
        let record = Record {
            kind,
            shard: 0,
            received_at_ms: 1_500,
            payload: vec![b'm'; PAYLOAD].into(),
            index: None,
        };
        let error = spool
            .append(&record)
            .expect_err("a non-gap record does not use the headroom");
        assert!(matches!(error, SpoolError::Full { .. }), "{error}");
    }
    // Gap records may use the headroom.
    let gap = Record::gap(0, 2_000, &b"{\"gap\":\"socket down\"}"[..]);
    let outcome = spool.append(&gap).expect("gap fits in the headroom");
    assert!(matches!(outcome, AppendOutcome::Appended { seq, .. } if seq == FITS + 1));
    // ... but not without limit.
    let big_gap = Record::gap(0, 2_001, vec![b'g'; 60 * 1024]);
    let _ = spool.append(&big_gap).expect("still within the headroom");
    let error = spool.append(&big_gap).expect_err("headroom used up");
    assert!(matches!(error, SpoolError::Full { .. }));
    assert!(spool.stats().bytes_on_disk <= spool.config().max_bytes);
}

#[test]
fn acks_free_space_and_wake_a_blocked_appender() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = capped_config(dir.path(), WhenFull::Block);
    // Only acks (which kick the syncer when the spool is full) can free space in time.
    config.fsync_interval = Duration::from_secs(3600);
    let (spool, _) = Spool::open(config).expect("open");
    fill_to_the_cap(&spool);
    assert!(matches!(
        spool.append(&event(8)),
        Err(SpoolError::Full { .. })
    ));

    let waiter = {
        let spool = spool.clone();
        std::thread::spawn(move || {
            runtime().block_on(async {
                tokio::time::timeout(Duration::from_secs(10), spool.wait_for_space(PAYLOAD))
                    .await
                    .expect("space within 10 s")
                    .expect("payload can fit");
            });
        })
    };
    // The Kafka side catches up.
    for seq in 1..=FITS {
        spool.ack(seq).expect("ack");
    }
    waiter.join().expect("waiter");
    let outcome = spool.append(&event(8)).expect("room again");
    assert!(matches!(outcome, AppendOutcome::Appended { seq: 8, .. }));
}

/// A reader paused by `block` resumes once the spool is at most half full, not at its first
/// free byte: resuming at once refilled the spool within milliseconds, and every flap cost a
/// channel, a connect and a gap record (a CI run's shard flapped 14 times in 7 s and was then
/// held out by the connects-per-minute bound for 52 s).
#[test]
fn a_paused_reader_resumes_at_half_full_not_at_the_first_free_byte() {
    use futures_util::FutureExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, _) = Spool::open(capped_config(dir.path(), WhenFull::Block)).expect("open");
    fill_to_the_cap(&spool);
    assert!(spool.wait_for_space(PAYLOAD).now_or_never().is_none());
    assert!(spool.wait_for_resume_mark(PAYLOAD).now_or_never().is_none());

    // Kafka acknowledges the first segment (records 1-3); the group commit deletes it.
    for seq in 1..=3 {
        spool.ack(seq).expect("ack");
    }
    spool.sync().expect("sync");
    let used = spool.stats().bytes_on_disk;
    assert!(used > 4096, "two segments left: {used} bytes");
    assert!(
        matches!(spool.wait_for_space(PAYLOAD).now_or_never(), Some(Ok(()))),
        "room for one event"
    );
    assert!(
        spool.wait_for_resume_mark(PAYLOAD).now_or_never().is_none(),
        "but more than half of the 8 KiB events' cap is in use ({used} bytes)"
    );

    // Everything acknowledged: the active segment is rolled and deleted too.
    for seq in 4..=FITS {
        spool.ack(seq).expect("ack");
    }
    spool.sync().expect("sync");
    assert!(
        matches!(
            spool.wait_for_resume_mark(PAYLOAD).now_or_never(),
            Some(Ok(()))
        ),
        "below half: {} bytes",
        spool.stats().bytes_on_disk
    );

    // An event larger than half the cap resumes once the spool holds nothing else.
    let error = spool
        .wait_for_resume_mark(9000)
        .now_or_never()
        .expect("answers at once")
        .expect_err("never fits");
    assert!(matches!(error, SpoolError::RecordTooLarge { .. }));
}

#[test]
fn when_everything_is_acked_even_the_active_segment_is_released() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, _) = Spool::open(capped_config(dir.path(), WhenFull::Block)).expect("open");
    // Payloads just under a segment: each record fills its own segment.
    let big = |n: u64| Record::event(0, n as i64, vec![b'b'; 3900]);
    let mut appended = 0;
    while spool.append(&big(appended + 1)).is_ok() {
        appended += 1;
    }
    assert!(appended >= 2);
    for seq in 1..=appended {
        spool.ack(seq).expect("ack");
    }
    spool.sync().expect("sync");
    let stats = spool.stats();
    assert_eq!(
        stats.segments, 1,
        "only a fresh, empty active segment remains"
    );
    assert!(stats.bytes_on_disk < 100);
    let _ = spool.append(&big(appended + 1)).expect("room again");
}

/// The spool only counts what `drop-newest` discards; the span of it (when, how many, which
/// shard) is the socket actor's, kept in the shard state (see tests/gaps.rs).
#[test]
fn drop_newest_discards_and_counts_and_appends_again_once_there_is_room() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, _) = Spool::open(capped_config(dir.path(), WhenFull::DropNewest)).expect("open");
    fill_to_the_cap(&spool);
    for n in 8..=12 {
        let outcome = spool.append(&event(n)).expect("drop is not an error");
        assert_eq!(outcome, AppendOutcome::Dropped);
    }
    let stats = spool.stats();
    assert_eq!(stats.dropped_records, 5);
    assert_eq!(stats.full_refusals, 0);
    assert_eq!(stats.next_seq, FITS + 1, "dropped events take no seq");

    // Gap records still go in while events are dropped.
    let outcome = spool
        .append(&Record::gap(0, 5, &b"{}"[..]))
        .expect("gap in the headroom");
    assert!(matches!(outcome, AppendOutcome::Appended { .. }));

    for seq in 1..=FITS + 1 {
        spool.ack(seq).expect("ack");
    }
    spool.sync().expect("sync frees acked segments");
    let outcome = spool.append(&event(13)).expect("room again");
    assert!(matches!(outcome, AppendOutcome::Appended { seq, .. } if seq == FITS + 2));
    assert_eq!(
        spool.stats().dropped_records,
        5,
        "the counter is cumulative"
    );
}

#[test]
fn a_record_that_can_never_fit_is_refused_as_too_large() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, _) = Spool::open(capped_config(dir.path(), WhenFull::Block)).expect("open");
    let huge = Record::event(0, 0, vec![0; 9000]);
    let error = spool.append(&huge).expect_err("too large");
    assert!(
        matches!(
            error,
            SpoolError::RecordTooLarge {
                payload_bytes: 9000,
                ..
            }
        ),
        "{error}"
    );
    let error = runtime()
        .block_on(spool.wait_for_space(9000))
        .expect_err("never fits");
    assert!(matches!(error, SpoolError::RecordTooLarge { .. }));
}

/// Issue #14 defect 3: on a full disk the committed position cannot be written; acknowledged
/// segments must still be deleted (that is what makes room), and nothing acknowledged comes
/// back after a restart.
#[test]
fn acked_segments_are_deleted_even_when_the_committed_position_cannot_be_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, _) = Spool::open(capped_config(dir.path(), WhenFull::Block)).expect("open");
    fill_to_the_cap(&spool);
    assert!(spool.stats().segments >= 3);
    // As on a full disk: the committed position's temporary file cannot be created (its name
    // is taken by a directory).
    let blocker = dir.path().join("committed.pos.tmp");
    std::fs::create_dir(&blocker).unwrap();
    for seq in 1..=FITS {
        spool.ack(seq).expect("ack");
    }
    let error = spool.sync().expect_err("the position cannot be written");
    assert!(error.to_string().contains("committed position"), "{error}");
    let stats = spool.stats();
    assert_eq!(stats.segments, 1, "only the active segment is left");
    assert!(
        spool.append(&event(8)).is_ok(),
        "room again although the position is not on disk"
    );
    drop(spool);
    std::fs::remove_dir(&blocker).unwrap();
    let (spool, report) = Spool::open(capped_config(dir.path(), WhenFull::Block)).expect("reopen");
    // The deleted segments' records do not come back; acknowledged records of the segment that
    // was active may (at least once), and the unacknowledged one does.
    let read: Vec<u64> = spool
        .read_batch(0, 10, 1 << 20)
        .expect("read")
        .iter()
        .map(|e| e.seq)
        .collect();
    assert!(read.contains(&(FITS + 1)), "{read:?} {report:?}");
    assert!(read.iter().all(|seq| *seq >= FITS), "{read:?} {report:?}");
}
