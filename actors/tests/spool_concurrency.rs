//! Several appending threads, a reader on another thread and runtime, acks from yet another:
//! per-thread order, no loss, no duplicates, and `wait_for` wakes across threads.

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use genesys_actors::spool::{AppendOutcome, Record, Spool, SpoolConfig, WhenFull};

fn config(dir: &Path) -> SpoolConfig {
    SpoolConfig {
        dir: dir.to_path_buf(),
        segment_bytes: 16 * 1024,
        max_bytes: 64 * 1024 * 1024,
        fsync_interval: Duration::from_millis(5),
        fsync_every_records: 50,
        when_full: WhenFull::Block,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
}

/// Payload `"<thread>:<index>"`, so the reader can check each thread's order.
fn parse(payload: &[u8]) -> (u32, u64) {
    let text = std::str::from_utf8(payload).expect("utf8");
    let (thread, index) = text.split_once(':').expect("thread:index");
    (
        thread.parse().expect("thread"),
        index.parse().expect("index"),
    )
}

#[test]
fn concurrent_appenders_keep_per_thread_order_and_lose_nothing() {
    const THREADS: u32 = 4;
    const PER_THREAD: u64 = 2_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, _) = Spool::open(config(dir.path())).expect("open");

    // A reader that follows the appenders live, on its own thread and runtime, and acks.
    let reader = {
        let spool = spool.clone();
        thread::spawn(move || {
            runtime().block_on(async move {
                let total = u64::from(THREADS) * PER_THREAD;
                let mut next = 1;
                let mut last_index: HashMap<u32, u64> = HashMap::new();
                while next <= total {
                    tokio::time::timeout(Duration::from_secs(20), spool.wait_for(next))
                        .await
                        .expect("appends keep coming");
                    let batch = spool.read_batch(next, 100, 256 * 1024).expect("read");
                    assert!(
                        !batch.is_empty(),
                        "wait_for({next}) returned but nothing to read"
                    );
                    for entry in batch {
                        assert_eq!(entry.seq, next, "seqs are contiguous");
                        let (thread, index) = parse(&entry.record.payload);
                        let previous = last_index.insert(thread, index);
                        assert_eq!(
                            index,
                            previous.map_or(0, |previous| previous + 1),
                            "thread {thread} out of order or lost"
                        );
                        assert_eq!(entry.record.shard, thread);
                        spool.ack(entry.seq).expect("ack");
                        next += 1;
                    }
                }
                last_index
            })
        })
    };

    let appenders: Vec<_> = (0..THREADS)
        .map(|thread_id| {
            let spool = spool.clone();
            thread::spawn(move || {
                let mut seqs = Vec::with_capacity(PER_THREAD as usize);
                for index in 0..PER_THREAD {
                    let record = Record::event(thread_id, 0, format!("{thread_id}:{index}"));
                    match spool.append(&record).expect("append") {
                        AppendOutcome::Appended { seq, .. } => seqs.push(seq),
                        AppendOutcome::Dropped => panic!("dropped"),
                    }
                }
                seqs
            })
        })
        .collect();
    for appender in appenders {
        let seqs = appender.join().expect("appender");
        assert!(
            seqs.windows(2).all(|pair| pair[0] < pair[1]),
            "seqs grow per thread"
        );
    }
    let last_index = reader.join().expect("reader");
    assert_eq!(last_index.len(), THREADS as usize);
    assert!(last_index.values().all(|&last| last == PER_THREAD - 1));

    let total = u64::from(THREADS) * PER_THREAD;
    assert_eq!(spool.committed_seq(), total);
    spool.sync().expect("sync");
    let stats = spool.stats();
    assert_eq!(stats.records_unacked, 0);
    assert_eq!(
        stats.segments, 1,
        "acked segments were deleted while appending went on"
    );
    assert!(stats.fsync_count > 0);
}

#[test]
fn wait_for_wakes_a_reader_on_another_thread_and_runtime() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, _) = Spool::open(config(dir.path())).expect("open");
    let (waiting_tx, waiting_rx) = mpsc::channel::<u64>();
    let (received_tx, received_rx) = mpsc::channel::<u64>();

    // Ping-pong: the writer appends record n only after the reader has received n - 1 and
    // announced it is about to wait for n, so most waits really park and get woken.
    let reader = {
        let spool = spool.clone();
        thread::spawn(move || {
            runtime().block_on(async move {
                for seq in 1..=200u64 {
                    waiting_tx.send(seq).expect("announce");
                    tokio::time::timeout(Duration::from_secs(10), spool.wait_for(seq))
                        .await
                        .expect("woken by the append");
                    let batch = spool.read_batch(seq, 10, 1 << 20).expect("read");
                    assert_eq!(batch[0].seq, seq);
                    received_tx.send(seq).expect("report");
                }
            });
        })
    };
    for seq in 1..=200u64 {
        assert_eq!(waiting_rx.recv().expect("reader waiting"), seq);
        if seq % 50 == 0 {
            // Make sure some waits are parked well before the append.
            thread::sleep(Duration::from_millis(20));
        }
        let outcome = spool
            .append(&Record::event(0, seq as i64, format!("0:{seq}")))
            .expect("append");
        assert!(
            matches!(outcome, AppendOutcome::Appended { seq: appended, .. } if appended == seq)
        );
        assert_eq!(received_rx.recv().expect("reader got it"), seq);
    }
    reader.join().expect("reader");
}

#[test]
fn wait_for_returns_at_once_for_an_existing_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, _) = Spool::open(config(dir.path())).expect("open");
    let _ = spool.append(&Record::event(0, 0, "0:0")).expect("append");
    runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(1), spool.wait_for(1))
            .await
            .expect("already there");
        assert!(
            tokio::time::timeout(Duration::from_millis(30), spool.wait_for(2))
                .await
                .is_err(),
            "seq 2 does not exist yet"
        );
    });
}
