//! `Spool::append_batch` is `Spool::append` record by record, with fewer writes: same outcomes,
//! same seqs, same bytes in the same segment files, same counters, in every policy and at
//! every boundary (segment rotation, the cap, the gap headroom, records that can never fit).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use genesys_actors::spool::{
    AppendOutcome, Record, RecordKind, Spool, SpoolConfig, SpoolEntry, SpoolError, WhenFull,
    GAP_HEADROOM_BYTES,
};

fn config(dir: &Path, when_full: WhenFull, max_bytes: u64) -> SpoolConfig {
    SpoolConfig {
        dir: dir.to_path_buf(),
        segment_bytes: 4096,
        max_bytes,
        fsync_interval: Duration::from_secs(3600),
        fsync_every_records: 50,
        when_full,
    }
}

/// xorshift: the same "random" records in every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn record(rng: &mut Rng, n: u64) -> Record {
    let kind = match rng.next() % 20 {
        0 => RecordKind::Gap,
        1 => RecordKind::Reserved(2),
        _ => RecordKind::Event,
    };
    // Mostly Genesys-sized frames, sometimes one bigger than a segment.
    let len = match rng.next() % 25 {
        0 => 5000,
        _ => 50 + (rng.next() % 1500) as usize,
    };
    Record {
        kind,
        shard: (n % 3) as u32,
        received_at_ms: 1_700_000_000_000 + n as i64,
        payload: format!("{n:08}{}", "p".repeat(len)).into_bytes().into(),
        index: None,
    }
}

/// Outcome as text, so that two runs compare with `assert_eq!` (errors have no `PartialEq`).
fn describe(result: &Result<AppendOutcome, SpoolError>) -> String {
    match result {
        Ok(outcome) => format!("{outcome:?}"),
        Err(SpoolError::Full { .. }) => "Full".into(),
        Err(error) => format!("error: {error}"),
    }
}

fn segment_bytes(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .expect("spool dir")
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).expect("segment"))
        })
        .collect()
}

fn read_all(spool: &Spool) -> Vec<SpoolEntry> {
    let mut entries = Vec::new();
    let mut next = 1;
    loop {
        let batch = spool.read_batch(next, 64, 1 << 20).expect("read");
        let Some(last) = batch.last() else {
            return entries;
        };
        next = last.seq + 1;
        entries.extend(batch);
    }
}

/// Appends `records` one by one into one spool and in batches (cut where `cuts` says, and
/// continued after each error the way the socket actor goes on with the next read) into
/// another, then compares everything observable.
fn compare(when_full: WhenFull, max_bytes: u64, seed: u64, count: u64) {
    let one_dir = tempfile::tempdir().expect("tempdir");
    let batch_dir = tempfile::tempdir().expect("tempdir");
    let (one, _) = Spool::open(config(one_dir.path(), when_full, max_bytes)).expect("open");
    let (batched, _) = Spool::open(config(batch_dir.path(), when_full, max_bytes)).expect("open");
    let mut rng = Rng(seed);
    let records: Vec<Record> = (1..=count).map(|n| record(&mut rng, n)).collect();

    let expected: Vec<String> = records
        .iter()
        .map(|record| describe(&one.append(record)))
        .collect();

    let mut got = Vec::new();
    let mut at = 0;
    let mut batches = 0;
    while at < records.len() {
        let len = 1 + (rng.next() % 40) as usize;
        let slice = &records[at..records.len().min(at + len)];
        let outcome = batched.append_batch(slice);
        batches += 1;
        got.extend(outcome.outcomes.iter().map(|o| describe(&Ok(*o))));
        at += outcome.outcomes.len();
        match outcome.error {
            Some(error) => {
                got.push(describe(&Err(error)));
                at += 1; // the refused record is dealt with by the caller
            }
            None => assert_eq!(
                outcome.outcomes.len(),
                slice.len(),
                "no error, every record"
            ),
        }
    }
    assert!(batches > 1);
    assert_eq!(got, expected, "outcomes, seed {seed}");

    let (a, b) = (one.stats(), batched.stats());
    assert_eq!(a.next_seq, b.next_seq);
    assert_eq!(a.bytes_on_disk, b.bytes_on_disk);
    assert_eq!(a.dropped_records, b.dropped_records);
    assert_eq!(a.full_refusals, b.full_refusals);
    assert_eq!(
        segment_bytes(one_dir.path()),
        segment_bytes(batch_dir.path()),
        "the same segment files, byte for byte"
    );
    let (a, b) = (read_all(&one), read_all(&batched));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.seq, y.seq);
        assert_eq!(x.record, y.record);
    }
}

#[test]
fn a_batch_is_the_same_as_its_records_one_by_one_with_room() {
    for seed in [1, 7, 42] {
        compare(WhenFull::Block, 64 << 20, seed, 600);
    }
}

#[test]
fn a_batch_is_the_same_as_its_records_one_by_one_at_the_cap_with_drop_newest() {
    // 24 KiB for events, the headroom for gap records: drops, gap records into the headroom,
    // and "can never fit" refusals for the 5 KB records once the cap is near.
    for seed in [3, 11, 99] {
        compare(
            WhenFull::DropNewest,
            24 * 1024 + GAP_HEADROOM_BYTES,
            seed,
            400,
        );
    }
}

#[test]
fn a_batch_is_the_same_as_its_records_one_by_one_at_the_cap_with_block() {
    for seed in [5, 13, 77] {
        compare(WhenFull::Block, 24 * 1024 + GAP_HEADROOM_BYTES, seed, 400);
    }
}

#[test]
fn a_batch_wakes_the_reader_once_and_survives_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), WhenFull::Block, 64 << 20);
    let (spool, _) = Spool::open(cfg.clone()).expect("open");
    let records: Vec<Record> = (1..=30)
        .map(|n| Record::event(0, n, format!("{{\"n\":{n}}}")))
        .collect();
    let waiter = {
        let spool = spool.clone();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("runtime")
                .block_on(async {
                    tokio::time::timeout(Duration::from_secs(30), spool.wait_for(30))
                        .await
                        .is_ok()
                })
        })
    };
    let outcome = spool.append_batch(&records);
    assert!(outcome.error.is_none());
    assert_eq!(
        outcome.outcomes.last(),
        Some(&AppendOutcome::Appended { seq: 30 })
    );
    assert!(waiter.join().expect("waiter"), "wait_for saw the batch");
    // An empty batch is nothing.
    let empty = spool.append_batch(&[]);
    assert!(empty.outcomes.is_empty() && empty.error.is_none());
    drop(spool);

    let (spool, report) = Spool::open(cfg).expect("reopen");
    assert_eq!(report.bytes_truncated, 0, "{report:?}");
    let entries = read_all(&spool);
    assert_eq!(entries.len(), 30);
    assert_eq!(entries[29].record, records[29]);
}
