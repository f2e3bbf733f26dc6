//! Spool recovery on real files: torn tails, garbage, flipped bytes, damaged headers, a bad
//! committed-position file, a SIGKILLed writer, a write that fails half-way.
//!
//! Every test built on a record layout uses fixed-size frames: 100-byte payloads, so each frame
//! is 129 bytes and record `k` of a segment starts at `16 + (k - 1) * 129`.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use genesys_actors::spool::{
    segment_file_name, AppendOutcome, CommittedFileStatus, EventIndex, Record, Span, Spool,
    SpoolConfig, SpoolEntry, SpoolError, WhenFull, EVENT_INDEX_BYTES, FORMAT_VERSION,
    RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES,
};

const PAYLOAD: usize = 100;
const FRAME: u64 = (RECORD_HEADER_BYTES + PAYLOAD) as u64;
const HEADER: u64 = SEGMENT_HEADER_BYTES as u64;
/// With 4 KiB segments: (4096 - 16) / 129 = 31 records per segment.
const PER_SEGMENT: u64 = 31;

/// Spawning a child process briefly duplicates every open descriptor of this test process
/// (between fork and exec), the spool lock files of concurrently running tests included, and
/// an `flock` lasts as long as any duplicate: a test reopening its spool in that window would
/// find it locked. Tests that spawn take this exclusively; the others share it.
static SPAWN_GUARD: RwLock<()> = RwLock::new(());

fn no_spawn_in_flight() -> RwLockReadGuard<'static, ()> {
    SPAWN_GUARD.read().unwrap_or_else(PoisonError::into_inner)
}

fn spawning() -> RwLockWriteGuard<'static, ()> {
    SPAWN_GUARD.write().unwrap_or_else(PoisonError::into_inner)
}

fn config(dir: &Path, segment_bytes: u64) -> SpoolConfig {
    SpoolConfig {
        dir: dir.to_path_buf(),
        segment_bytes,
        max_bytes: 64 * 1024 * 1024,
        fsync_interval: Duration::from_millis(50),
        fsync_every_records: 1000,
        when_full: WhenFull::Block,
    }
}

fn fixed_event(n: u64) -> Record {
    let mut payload = format!("{{\"n\":{n:08}}}").into_bytes();
    payload.resize(PAYLOAD, b' ');
    Record::event(1, 1_700_000_000_000 + n as i64, payload)
}

fn fill(dir: &Path, segment_bytes: u64, count: u64) {
    let (spool, _) = Spool::open(config(dir, segment_bytes)).expect("open");
    for n in 1..=count {
        let outcome = spool.append(&fixed_event(n)).expect("append");
        assert!(matches!(outcome, AppendOutcome::Appended { seq, .. } if seq == n));
    }
    spool.close().expect("close");
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(segment_file_name(first_seq))
}

fn read_all(spool: &Spool, from_seq: u64) -> Vec<SpoolEntry> {
    let mut entries = Vec::new();
    let mut next = from_seq;
    loop {
        let batch = spool.read_batch(next, 50, 1 << 20).expect("read");
        let Some(last) = batch.last() else {
            return entries;
        };
        next = last.seq + 1;
        entries.extend(batch);
    }
}

fn seqs(entries: &[SpoolEntry]) -> Vec<u64> {
    entries.iter().map(|entry| entry.seq).collect()
}

fn assert_payloads_intact(entries: &[SpoolEntry]) {
    for entry in entries {
        assert_eq!(entry.record, fixed_event(entry.seq), "seq {}", entry.seq);
    }
}

fn flip_byte(path: &Path, offset: u64) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open");
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, offset).expect("read");
    byte[0] ^= 0x5A;
    file.write_all_at(&byte, offset).expect("write");
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).expect("stat").len()
}

#[test]
fn torn_tail_mid_record_is_cut_and_every_earlier_record_delivered() {
    let _shared = no_spawn_in_flight();
    let dir = tempfile::tempdir().expect("tempdir");
    fill(dir.path(), 1 << 20, 5);
    let path = segment_path(dir.path(), 1);
    assert_eq!(file_len(&path), HEADER + 5 * FRAME);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open")
        .set_len(HEADER + 5 * FRAME - 7)
        .expect("truncate");

    let (spool, report) = Spool::open(config(dir.path(), 1 << 20)).expect("reopen");
    assert_eq!(report.bytes_truncated, FRAME - 7);
    assert_eq!(report.corrupt_records_cut, 1);
    assert_eq!(report.cuts.len(), 1);
    assert_eq!(report.cuts[0].offset, HEADER + 4 * FRAME);
    assert_eq!(report.cuts[0].file, path);
    assert_eq!(report.records_replayable, 4);
    assert_eq!(
        file_len(&path),
        HEADER + 4 * FRAME,
        "the file itself was truncated"
    );
    let entries = read_all(&spool, 1);
    assert_eq!(seqs(&entries), vec![1, 2, 3, 4]);
    assert_payloads_intact(&entries);
    assert_eq!(spool.stats().corrupt_cut_total, 1);
    // Appends continue after the cut.
    let _ = spool.append(&fixed_event(5)).expect("append");
    assert_eq!(seqs(&read_all(&spool, 1)), vec![1, 2, 3, 4, 5]);
}

#[test]
fn torn_length_prefix_is_cut() {
    let _shared = no_spawn_in_flight();
    let dir = tempfile::tempdir().expect("tempdir");
    fill(dir.path(), 1 << 20, 3);
    let path = segment_path(dir.path(), 1);
    let file = OpenOptions::new().append(true).open(&path).expect("open");
    (&file)
        .write_all(&[0x10, 0x00])
        .expect("write two bytes of a prefix");
    drop(file);
    let (spool, report) = Spool::open(config(dir.path(), 1 << 20)).expect("reopen");
    assert_eq!(report.bytes_truncated, 2);
    assert_eq!(seqs(&read_all(&spool, 1)), vec![1, 2, 3]);
}

#[test]
fn garbage_after_the_last_record_is_cut() {
    let _shared = no_spawn_in_flight();
    let dir = tempfile::tempdir().expect("tempdir");
    fill(dir.path(), 1 << 20, 5);
    let path = segment_path(dir.path(), 1);
    let garbage: Vec<u8> = (0..100u32).map(|i| (i * 37 + 11) as u8).collect();
    let file = OpenOptions::new().append(true).open(&path).expect("open");
    (&file).write_all(&garbage).expect("append garbage");
    drop(file);

    let (spool, report) = Spool::open(config(dir.path(), 1 << 20)).expect("reopen");
    assert_eq!(report.bytes_truncated, 100);
    assert_eq!(report.corrupt_records_cut, 1);
    assert_eq!(report.next_seq, 6);
    let entries = read_all(&spool, 1);
    assert_eq!(seqs(&entries), vec![1, 2, 3, 4, 5]);
    assert_payloads_intact(&entries);
}

#[test]
fn a_flipped_crc_loses_only_that_record_and_reading_resumes_after_it() {
    let _shared = no_spawn_in_flight();
    let dir = tempfile::tempdir().expect("tempdir");
    fill(dir.path(), 1 << 20, 5);
    let path = segment_path(dir.path(), 1);
    flip_byte(&path, HEADER + 2 * FRAME + 5); // inside record 3's CRC field

    let (spool, report) = Spool::open(config(dir.path(), 1 << 20)).expect("reopen");
    assert_eq!(report.corrupt_records_cut, 1, "record 3 only");
    assert_eq!(report.bytes_truncated, FRAME);
    assert!(report.cuts[0].reason.contains("CRC"), "{:?}", report.cuts);
    assert!(
        report.cuts[0].reason.contains("resumed at offset"),
        "{:?}",
        report.cuts
    );
    assert_eq!(report.records_replayable, 4);
    let entries = read_all(&spool, 1);
    assert_eq!(seqs(&entries), vec![1, 2, 4, 5]);
    assert_payloads_intact(&entries);
    assert!(
        segment_path(dir.path(), 4).exists(),
        "records 4 and 5 moved"
    );
    assert_eq!(report.next_seq, 6);
    // The lost seq does not block the watermark.
    for seq in [1, 2, 4, 5] {
        spool.ack(seq).expect("ack");
    }
    assert_eq!(spool.committed_seq(), 5);
    let outcome = spool.append(&fixed_event(6)).expect("append");
    assert!(matches!(outcome, AppendOutcome::Appended { seq: 6, .. }));
    assert_eq!(seqs(&read_all(&spool, 3)), vec![4, 5, 6]);
}

#[test]
fn corruption_in_a_middle_segment_loses_only_the_damaged_record() {
    let _shared = no_spawn_in_flight();
    let dir = tempfile::tempdir().expect("tempdir");
    fill(dir.path(), 4096, 100);
    // Segments start at 1, 32, 63, 94. Damage the payload of seq 40 (9th record of segment 32).
    let second = segment_path(dir.path(), 1 + PER_SEGMENT);
    assert!(second.exists());
    assert!(segment_path(dir.path(), 1 + 2 * PER_SEGMENT).exists());
    flip_byte(&second, HEADER + 8 * FRAME + 40);

    let (spool, report) = Spool::open(config(dir.path(), 4096)).expect("reopen");
    assert_eq!(report.corrupt_records_cut, 1);
    assert_eq!(report.bytes_truncated, FRAME);
    assert_eq!(report.cuts[0].file, second);
    assert_eq!(report.cuts[0].records_lost, 1);
    assert_eq!(report.records_replayable, 99);
    let entries = read_all(&spool, 1);
    let expected: Vec<u64> = (1..40).chain(41..=100).collect();
    assert_eq!(seqs(&entries), expected);
    assert_payloads_intact(&entries);
    for entry in &entries {
        spool.ack(entry.seq).expect("ack");
    }
    assert_eq!(
        spool.committed_seq(),
        100,
        "the cut seq does not hold the watermark"
    );
}

#[test]
fn several_damaged_records_in_one_segment_each_lose_only_themselves() {
    let _shared = no_spawn_in_flight();
    let dir = tempfile::tempdir().expect("tempdir");
    fill(dir.path(), 1 << 20, 30);
    let path = segment_path(dir.path(), 1);
    flip_byte(&path, HEADER + 4 * FRAME + 60); // record 5's payload
    flip_byte(&path, HEADER + 11 * FRAME); // record 12's length prefix
    flip_byte(&path, HEADER + 12 * FRAME + 10); // record 13's seq
    flip_byte(&path, HEADER + 29 * FRAME + 3); // record 30, the last

    let (spool, report) = Spool::open(config(dir.path(), 1 << 20)).expect("reopen");
    assert_eq!(report.corrupt_records_cut, 4, "{:?}", report.cuts);
    let entries = read_all(&spool, 1);
    let expected: Vec<u64> = (1..=29).filter(|seq| ![5, 12, 13].contains(seq)).collect();
    assert_eq!(seqs(&entries), expected);
    assert_payloads_intact(&entries);
    // Record 30's length was damaged and nothing valid follows it: its seq is not trusted.
    assert_eq!(report.next_seq, 30);
    drop(spool);
    let (spool, report) = Spool::open(config(dir.path(), 1 << 20)).expect("reopen again");
    assert_eq!(report.corrupt_records_cut, 0, "{:?}", report.cuts);
    assert_eq!(seqs(&read_all(&spool, 1)), expected);
}

#[test]
fn a_salvage_interrupted_before_the_cut_is_finished_by_the_next_recovery() {
    let _shared = no_spawn_in_flight();
    let dir = tempfile::tempdir().expect("tempdir");
    fill(dir.path(), 1 << 20, 10);
    let path = segment_path(dir.path(), 1);
    flip_byte(&path, HEADER + 3 * FRAME + 50); // record 4
    let damaged = std::fs::read(&path).expect("read");
    let (spool, _) = Spool::open(config(dir.path(), 1 << 20)).expect("reopen");
    drop(spool);
    // A crash after the good frames were copied but before the damaged file was cut: the copy
    // and the whole damaged file are both on disk.
    std::fs::write(&path, &damaged).expect("restore the uncut file");
    assert!(segment_path(dir.path(), 5).exists());

    let (spool, report) = Spool::open(config(dir.path(), 1 << 20)).expect("reopen again");
    assert_eq!(report.corrupt_records_cut, 1, "{:?}", report.cuts);
    let entries = read_all(&spool, 1);
    assert_eq!(
        seqs(&entries),
        vec![1, 2, 3, 5, 6, 7, 8, 9, 10],
        "no record twice"
    );
    assert_payloads_intact(&entries);
}

#[test]
fn a_middle_segment_with_a_damaged_header_is_removed_and_reported() {
    let _shared = no_spawn_in_flight();
    let dir = tempfile::tempdir().expect("tempdir");
    fill(dir.path(), 4096, 100);
    let second = segment_path(dir.path(), 1 + PER_SEGMENT);
    flip_byte(&second, 1);

    let (spool, report) = Spool::open(config(dir.path(), 4096)).expect("reopen");
    assert_eq!(report.corrupt_records_cut, PER_SEGMENT);
    assert_eq!(report.cuts[0].offset, 0);
    assert!(!second.exists());
    let expected: Vec<u64> = (1..=PER_SEGMENT).chain(1 + 2 * PER_SEGMENT..=100).collect();
    assert_eq!(seqs(&read_all(&spool, 1)), expected);
}

#[test]
fn a_torn_segment_creation_is_removed_and_appends_continue() {
    let _shared = no_spawn_in_flight();
    let dir = tempfile::tempdir().expect("tempdir");
    fill(dir.path(), 4096, 40);
    let torn = segment_path(dir.path(), 41);
    std::fs::write(&torn, b"GSPL\x01\x00\x00").expect("write torn header");
    std::fs::write(dir.path().join("committed.pos.tmp"), b"half").expect("write tmp");

    let (spool, report) = Spool::open(config(dir.path(), 4096)).expect("reopen");
    assert_eq!(report.bytes_truncated, 7);
    assert_eq!(report.corrupt_records_cut, 0);
    assert_eq!(report.next_seq, 41);
    assert!(!dir.path().join("committed.pos.tmp").exists());
    let outcome = spool.append(&fixed_event(41)).expect("append");
    assert!(matches!(outcome, AppendOutcome::Appended { seq: 41, .. }));
    assert_eq!(read_all(&spool, 1).len(), 41);
}

#[test]
fn a_segment_of_a_newer_format_version_is_refused_untouched() {
    let _shared = no_spawn_in_flight();
    let dir = tempfile::tempdir().expect("tempdir");
    fill(dir.path(), 1 << 20, 3);
    let path = segment_path(dir.path(), 1);
    let file = OpenOptions::new().write(true).open(&path).expect("open");
    file.write_all_at(&[9], 4).expect("write version");
    drop(file);
    let before = std::fs::read(&path).expect("read");
    let error = Spool::open(config(dir.path(), 1 << 20)).expect_err("newer version");
    assert!(
        matches!(error, SpoolError::UnsupportedVersion { found: 9, .. }),
        "{error}"
    );
    assert_eq!(std::fs::read(&path).expect("read"), before);
}

/// An event with the index the socket gives it (topic and key spans of its payload).
fn indexed_event(n: u64) -> Record {
    let payload = format!(r#"{{"topicName":"v2.users.u{n:04}.conversations","eventBody":{{}}}}"#);
    let topic_start = payload.find("v2.").unwrap();
    let index = EventIndex {
        topic: Span {
            start: topic_start as u32,
            len: "v2.users.u0000.conversations".len() as u32,
        },
        key: Some(Span {
            start: (topic_start + "v2.users.".len()) as u32,
            len: 5,
        }),
        correlation: None,
    };
    Record::event(1, n as i64, payload).with_index(Some(index))
}

/// Rewrites every segment's header as format 1 (what a bridge before event indexes wrote:
/// the frames are the same).
fn make_format_1(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "seg") {
            let file = OpenOptions::new().write(true).open(&path).unwrap();
            file.write_all_at(&[1], 4).unwrap();
        }
    }
}

fn header_version(path: &Path) -> u8 {
    std::fs::read(path).unwrap()[4]
}

#[test]
fn a_format_1_spool_is_read_and_indexed_records_go_only_into_a_new_segment() {
    let _shared = no_spawn_in_flight();
    let dir = tempfile::tempdir().expect("tempdir");
    fill(dir.path(), 1 << 20, 3);
    make_format_1(dir.path());
    let old = segment_path(dir.path(), 1);
    let before = std::fs::read(&old).unwrap();

    let (spool, report) = Spool::open(config(dir.path(), 1 << 20)).expect("format 1 opens");
    assert_eq!(report.next_seq, 4);
    for n in 4..=5 {
        let outcome = spool.append(&indexed_event(n)).expect("append");
        assert!(matches!(outcome, AppendOutcome::Appended { seq, .. } if seq == n));
    }
    let entries = read_all(&spool, 1);
    assert_eq!(seqs(&entries), vec![1, 2, 3, 4, 5]);
    assert!(entries[..3].iter().all(|e| e.record.index.is_none()));
    for (entry, n) in entries[3..].iter().zip(4..) {
        assert_eq!(
            entry.record,
            indexed_event(n),
            "payload and index as appended"
        );
    }
    spool.close().expect("close");
    // The format 1 segment was not appended to (an older bridge can still read it); the
    // indexed records are in a new, format 2 segment, which an older bridge refuses.
    assert_eq!(std::fs::read(&old).unwrap(), before);
    let new = segment_path(dir.path(), 4);
    assert_eq!(header_version(&new), FORMAT_VERSION);
    assert_eq!(
        file_len(&new),
        HEADER
            + 2 * (RECORD_HEADER_BYTES + EVENT_INDEX_BYTES) as u64
            + 2 * indexed_event(4).payload.len() as u64
    );
    let (spool, _) = Spool::open(config(dir.path(), 1 << 20)).expect("reopen");
    assert_eq!(read_all(&spool, 1), entries);
}

#[test]
fn on_a_full_disk_a_format_1_segment_kept_active_gets_records_without_their_index() {
    let _shared = no_spawn_in_flight();
    let Some(tmpfs) = Tmpfs::mount("128k") else {
        eprintln!("SKIPPED: mounting a tmpfs needs root");
        return;
    };
    let dir = tmpfs.dir.clone();
    // Two segments, the last one half full: its last page has room for a few frames.
    fill(&dir, 4096, PER_SEGMENT + 10);
    make_format_1(&dir);
    let last = segment_path(&dir, PER_SEGMENT + 1);
    let mut filler = std::fs::File::create(dir.join("filler")).unwrap();
    while filler.write_all(&[0u8; 4096]).is_ok() {}
    let _ = filler.sync_all();

    let (spool, _) = Spool::open(config(&dir, 4096)).expect("opens on the full disk");
    assert!(
        !segment_path(&dir, PER_SEGMENT + 11).exists(),
        "no room for a new segment: the format 1 one stays active"
    );
    let len_before = file_len(&last);
    let seq = PER_SEGMENT + 11;
    let outcome = spool
        .append(&indexed_event(seq))
        .expect("fits its last page");
    assert!(matches!(outcome, AppendOutcome::Appended { seq: s, .. } if s == seq));
    // Written without the index, as a format 1 frame: an older bridge reads it as an event.
    let plain = indexed_event(seq).with_index(None);
    let frame_len = (RECORD_HEADER_BYTES + plain.payload.len()) as u64;
    assert_eq!(file_len(&last), len_before + frame_len);
    let bytes = std::fs::read(&last).unwrap();
    assert_eq!(
        bytes[len_before as usize + RECORD_HEADER_BYTES - 1],
        0,
        "kind byte: a plain event"
    );
    assert_eq!(header_version(&last), 1);
    // The socket's path: a batch.
    let batch = spool.append_batch(&[indexed_event(seq + 1)]);
    assert!(batch.error.is_none(), "{:?}", batch.error);
    let batch_frame = bytes.len() as u64;
    assert_eq!(file_len(&last), batch_frame + frame_len);
    let bytes = std::fs::read(&last).unwrap();
    assert_eq!(bytes[batch_frame as usize + RECORD_HEADER_BYTES - 1], 0);
    let entries = read_all(&spool, seq);
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].record, plain);
    assert_eq!(entries[1].record, indexed_event(seq + 1).with_index(None));
}

#[test]
fn corrupt_committed_file_falls_back_to_the_first_record_on_disk() {
    let _shared = no_spawn_in_flight();
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (spool, _) = Spool::open(config(dir.path(), 4096)).expect("open");
        for n in 1..=100 {
            let _ = spool.append(&fixed_event(n)).expect("append");
        }
        for seq in 1..=50 {
            spool.ack(seq).expect("ack");
        }
        spool.close().expect("close");
    }
    // Segment 1 (seqs 1..=31) was deleted as acked; 32.. are on disk.
    assert!(!segment_path(dir.path(), 1).exists());
    std::fs::write(dir.path().join("committed.pos"), b"not a position").expect("damage");

    let (spool, report) = Spool::open(config(dir.path(), 4096)).expect("reopen");
    assert!(matches!(
        report.committed_file,
        CommittedFileStatus::Corrupt(_)
    ));
    assert_eq!(report.committed_seq, PER_SEGMENT);
    assert_eq!(report.records_replayable, 100 - PER_SEGMENT);
    let entries = read_all(&spool, report.committed_seq + 1);
    assert_eq!(seqs(&entries), (PER_SEGMENT + 1..=100).collect::<Vec<_>>());
    drop(spool);

    // The fallback position was written back: the next open loads it.
    let (_spool, report) = Spool::open(config(dir.path(), 4096)).expect("reopen");
    assert_eq!(
        report.committed_file,
        CommittedFileStatus::Loaded(PER_SEGMENT)
    );
}

#[test]
fn missing_committed_file_replays_everything_on_disk() {
    let _shared = no_spawn_in_flight();
    let dir = tempfile::tempdir().expect("tempdir");
    fill(dir.path(), 4096, 10);
    std::fs::remove_file(dir.path().join("committed.pos")).expect("remove");
    let (spool, report) = Spool::open(config(dir.path(), 4096)).expect("reopen");
    assert_eq!(report.committed_file, CommittedFileStatus::Missing);
    assert_eq!(report.committed_seq, 0);
    assert_eq!(seqs(&read_all(&spool, 1)), (1..=10).collect::<Vec<_>>());
}

#[test]
fn seqs_never_go_back_when_data_is_lost_behind_the_committed_position() {
    let _shared = no_spawn_in_flight();
    // As after a power loss: the committed position (fsynced) is ahead of the segment data
    // that survived.
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (spool, _) = Spool::open(config(dir.path(), 1 << 20)).expect("open");
        for n in 1..=20 {
            let _ = spool.append(&fixed_event(n)).expect("append");
            spool.ack(n).expect("ack");
        }
        spool.close().expect("close");
    }
    let path = segment_path(dir.path(), 1);
    OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open")
        .set_len(HEADER + 12 * FRAME)
        .expect("truncate at a frame boundary");
    let (spool, report) = Spool::open(config(dir.path(), 1 << 20)).expect("reopen");
    assert_eq!(report.committed_seq, 20);
    assert_eq!(report.next_seq, 21);
    assert_eq!(report.records_replayable, 0);
    let outcome = spool.append(&fixed_event(21)).expect("append");
    assert!(matches!(outcome, AppendOutcome::Appended { seq: 21, .. }));
    assert_eq!(seqs(&read_all(&spool, 21)), vec![21]);
}

#[test]
fn corruption_found_while_reading_loses_only_the_damaged_record() {
    let _shared = no_spawn_in_flight();
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, _) = Spool::open(config(dir.path(), 1 << 20)).expect("open");
    for n in 1..=10 {
        let _ = spool.append(&fixed_event(n)).expect("append");
    }
    // Damage record 5 behind the spool's back (same page cache).
    flip_byte(&segment_path(dir.path(), 1), HEADER + 4 * FRAME + 50);
    let entries = read_all(&spool, 1);
    assert_eq!(seqs(&entries), vec![1, 2, 3, 4, 6, 7, 8, 9, 10]);
    assert_payloads_intact(&entries);
    assert_eq!(spool.stats().corrupt_cut_total, 1);
    // New appends go to a fresh segment and are readable.
    let outcome = spool.append(&fixed_event(11)).expect("append");
    assert!(matches!(outcome, AppendOutcome::Appended { seq: 11, .. }));
    assert_eq!(seqs(&read_all(&spool, 5)), vec![6, 7, 8, 9, 10, 11]);
    assert!(segment_path(dir.path(), 11).exists());
    for seq in (1..=4).chain(6..=10) {
        spool.ack(seq).expect("ack");
    }
    assert_eq!(spool.committed_seq(), 10);
    drop(spool);
    // The next open agrees with what the reader cut.
    let (spool, report) = Spool::open(config(dir.path(), 1 << 20)).expect("reopen");
    assert_eq!(report.corrupt_records_cut, 0);
    assert_eq!(seqs(&read_all(&spool, 1)), vec![11]);
}

/// #14 defect 3: a spool reopened on a disk so full that no new segment fits. Before, the open
/// failed (the process exited 73 and delivered nothing, although delivering is what frees the
/// disk). Now the last segment stays active, everything reads, appends fail until acknowledged
/// segments are deleted, then work again. Needs root for the tmpfs (CI runs as root).
#[test]
fn a_spool_opens_on_a_disk_with_no_room_for_a_new_segment_and_recovers_once_acked() {
    let _shared = no_spawn_in_flight();
    let Some(tmpfs) = Tmpfs::mount("128k") else {
        eprintln!("SKIPPED: mounting a tmpfs needs root");
        return;
    };
    let dir = tmpfs.dir.clone();
    // 107-byte payloads make 136-byte frames: 30 fill a 4 KiB segment exactly.
    let exact = |n: u64| {
        let mut payload = format!("{{\"n\":{n:08}}}").into_bytes();
        payload.resize(107, b' ');
        Record::event(1, n as i64, payload)
    };
    let (spool, _) = Spool::open(config(&dir, 4096)).expect("open");
    for n in 1..=90 {
        let _ = spool.append(&exact(n)).expect("append");
    }
    spool.close().expect("close");
    assert!(segment_path(&dir, 61).exists() && !segment_path(&dir, 91).exists());
    // Fill the disk to the last page.
    let mut filler = std::fs::File::create(dir.join("filler")).unwrap();
    while filler.write_all(&[0u8; 4096]).is_ok() {}
    let _ = filler.sync_all();

    let (spool, report) = Spool::open(config(&dir, 4096)).expect("opens on the full disk");
    assert_eq!(report.next_seq, 91);
    let entries = read_all(&spool, 1);
    assert_eq!(seqs(&entries), (1..=90).collect::<Vec<u64>>());
    assert!(
        spool.append(&exact(91)).is_err(),
        "no room for a new segment yet"
    );
    // Kafka acknowledges the first 60: their segments go, and the room with them.
    for seq in 1..=60 {
        spool.ack(seq).expect("ack");
    }
    let _ = spool.sync();
    assert!(!segment_path(&dir, 1).exists() && !segment_path(&dir, 31).exists());
    let outcome = spool.append(&exact(91)).expect("room again");
    assert!(matches!(outcome, AppendOutcome::Appended { seq: 91, .. }));
    spool.close().expect("close");
    let (spool, _) = Spool::open(config(&dir, 4096)).expect("reopen");
    assert_eq!(seqs(&read_all(&spool, 61)), (61..=91).collect::<Vec<u64>>());
}

/// A tmpfs of `size` (as `mount -o size=` takes it) in a temporary directory, unmounted on drop;
/// `None` where mounting is not allowed (not root).
struct Tmpfs {
    dir: PathBuf,
    _outer: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let outer = tempfile::tempdir().expect("tempdir");
        let dir = outer.path().join("tmpfs");
        std::fs::create_dir(&dir).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|status| status.success());
        mounted.then_some(Tmpfs { dir, _outer: outer })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// #13: on a full *disk* (not the spool's cap) a gap record and the shard state could not be
/// written either (ENOSPC), so what the bridge knew about the outage waited in memory only.
/// Now the disk reserve is released for them; events are refused meanwhile (so they cannot take
/// the room), and accepted again once acknowledged segments are deleted.
#[test]
fn on_a_full_disk_gap_records_and_the_shard_state_are_written_into_the_disk_reserve() {
    let _shared = no_spawn_in_flight();
    let Some(tmpfs) = Tmpfs::mount("2m") else {
        eprintln!("SKIPPED: mounting a tmpfs needs root");
        return;
    };
    let dir = tmpfs.dir.clone();
    let (spool, _) = Spool::open(config(&dir, 64 * 1024)).expect("open");
    assert!(dir.join("reserve").exists(), "the reserve is allocated");
    let mut seq = 0;
    let error = loop {
        seq += 1;
        match spool.append(&fixed_event(seq)) {
            Ok(_) => continue,
            Err(error) => break error,
        }
    };
    assert!(
        matches!(&error, SpoolError::Io { source, .. } if source.raw_os_error() == Some(28)),
        "the disk filled: {error}"
    );
    let appended = seq - 1;
    // More than the last page the event could not fill: without the reserve they fail.
    for n in 0..8 {
        let mut payload = format!("{{\"type\":\"gap\",\"n\":{n}}}").into_bytes();
        payload.resize(1024, b' ');
        let written = spool
            .append(&Record::gap(1, n, payload))
            .expect("a gap record on the full disk");
        assert!(matches!(written, AppendOutcome::Appended { .. }));
    }
    assert!(matches!(
        spool.append(&fixed_event(seq)),
        Err(SpoolError::DiskReserveInUse)
    ));
    let states = genesys_actors::shard_state::ShardStates::open(&dir, Some(spool.disk_reserve()));
    states.cell(1).note_frame(42);
    states.save().expect("the shard state on the full disk");
    // Kafka acknowledges everything: the segments go, the reserve is allocated again, events
    // are accepted.
    for acked in 1..=appended + 8 {
        spool.ack(acked).expect("ack");
    }
    spool.sync().expect("sync");
    assert_eq!(
        std::fs::metadata(dir.join("reserve")).unwrap().len(),
        genesys_actors::disk_reserve::DISK_RESERVE_BYTES
    );
    assert!(matches!(
        spool.append(&fixed_event(seq)),
        Ok(AppendOutcome::Appended { .. })
    ));
}

// --- Crashes and failing writes, in child processes --------------------------------------------

const CHILD_DIR_ENV: &str = "SPOOL_TEST_CHILD_DIR";

fn child_command(test_name: &str, dir: &Path) -> Command {
    let exe = std::env::current_exe().expect("test binary");
    let mut command = Command::new(exe);
    command
        .args([
            "--ignored",
            "--exact",
            test_name,
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_ENV, dir)
        .stdout(Stdio::piped());
    command
}

/// Reads the child's stdout until a line containing `prefix`; returns what follows it.
fn wait_for_line(stdout: impl std::io::Read, prefix: &str) -> String {
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("child stdout");
        // libtest may print "test name ... " on the same line before the child's output.
        if let Some(start) = line.find(prefix) {
            return line[start + prefix.len()..].trim().to_string();
        }
    }
    panic!("child exited without printing {prefix}");
}

#[test]
fn sigkill_after_append_loses_nothing_and_replays_after_the_persisted_position() {
    let _exclusive = spawning();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = child_command("child_appends_then_waits_for_sigkill", dir.path())
        .spawn()
        .expect("spawn child");
    let appended: u64 = wait_for_line(child.stdout.take().expect("stdout"), "READY")
        .parse()
        .expect("count");
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");

    let (spool, report) = Spool::open(config(dir.path(), 4096)).expect("reopen after SIGKILL");
    assert_eq!(report.bytes_truncated, 0);
    assert_eq!(
        report.committed_seq, 100,
        "acks after the last sync are replayed"
    );
    assert_eq!(report.next_seq, appended + 1);
    let entries = read_all(&spool, report.committed_seq + 1);
    assert_eq!(seqs(&entries), (101..=appended).collect::<Vec<_>>());
    assert_payloads_intact(&entries);
}

#[test]
#[ignore = "run by sigkill_after_append_loses_nothing_and_replays_after_the_persisted_position"]
fn child_appends_then_waits_for_sigkill() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return;
    };
    let mut config = config(Path::new(&dir), 4096);
    // Nothing is fsynced by the timer: durability across SIGKILL comes from write() alone.
    config.fsync_interval = Duration::from_secs(3600);
    config.fsync_every_records = u64::MAX;
    let (spool, _) = Spool::open(config).expect("open");
    for n in 1..=500 {
        let _ = spool.append(&fixed_event(n)).expect("append");
    }
    for seq in 1..=100 {
        spool.ack(seq).expect("ack");
    }
    spool.sync().expect("sync");
    for seq in 101..=200 {
        spool.ack(seq).expect("ack");
    }
    println!("\nREADY 500");
    std::io::stdout().flush().expect("flush");
    loop {
        std::thread::park();
    }
}

#[test]
fn a_write_failing_half_way_is_truncated_back_and_reported_as_io() {
    let _exclusive = spawning();
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary");
    // RLIMIT_FSIZE makes writes past ~128 KiB fail with EFBIG (SIGXFSZ ignored, which exec
    // keeps): a partial write followed by an error, like a disk filling up mid-record.
    let output = Command::new("sh")
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f 256 || exit 99; exec \"$0\" \"$@\"")
        .arg(exe)
        .args([
            "--ignored",
            "--exact",
            "child_appends_until_the_file_size_limit",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_ENV, dir.path())
        .output()
        .expect("run child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let appended: u64 = wait_for_line(stdout.as_bytes(), "APPENDED")
        .parse()
        .expect("count");
    assert!(appended > 10, "only {appended} appends fit");

    let (spool, report) = Spool::open(config(dir.path(), 1 << 20)).expect("reopen");
    assert_eq!(
        report.bytes_truncated, 0,
        "the partial write was already undone"
    );
    assert_eq!(report.next_seq, appended + 1);
    let entries = read_all(&spool, 1);
    assert_eq!(entries.len() as u64, appended);
    assert!(entries
        .iter()
        .all(|entry| entry.record.payload.len() == 1000));
}

#[test]
#[ignore = "run by a_write_failing_half_way_is_truncated_back_and_reported_as_io"]
fn child_appends_until_the_file_size_limit() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return;
    };
    let (spool, _) = Spool::open(config(Path::new(&dir), 1 << 20)).expect("open");
    let record = Record::event(0, 1, vec![b'z'; 1000]);
    let mut appended = 0u64;
    let error = loop {
        match spool.append(&record) {
            Ok(_) => appended += 1,
            Err(error) => break error,
        }
        assert!(appended < 10_000, "the file size limit never hit");
    };
    assert!(matches!(error, SpoolError::Io { .. }), "{error}");
    eprintln!("append failed as expected: {error}");
    let path = segment_path(Path::new(&dir), 1);
    let frame = (RECORD_HEADER_BYTES + 1000) as u64;
    assert_eq!(
        file_len(&path),
        HEADER + appended * frame,
        "partial frame left behind"
    );
    // Still failing, still clean, and the seq was not consumed.
    assert!(spool.append(&record).is_err());
    assert_eq!(file_len(&path), HEADER + appended * frame);
    assert_eq!(spool.next_seq(), appended + 1);
    println!("\nAPPENDED {appended}");
    std::io::stdout().flush().expect("flush");
}
