//! Micro benchmark (no criterion): append throughput and latency of the spool against an
//! in-memory `VecDeque` handoff, each with a consumer thread draining (and, for the spool,
//! acking) concurrently. Ignored by default; run in release:
//!
//! ```text
//! cargo test -p genesys-actors --release --test spool_bench -- --ignored --nocapture
//! ```
//!
//! Environment: `SPOOL_BENCH_RECORDS` (default 200000), `SPOOL_BENCH_PAYLOAD` (bytes, default
//! 1024), `SPOOL_BENCH_DIR` (default: a temp dir under the system temp directory).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use genesys_actors::spool::{AppendOutcome, Record, Spool, SpoolConfig, WhenFull};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

struct Report {
    label: String,
    records: usize,
    elapsed: Duration,
    /// Per-append latencies, nanoseconds, sorted.
    latencies: Vec<u64>,
}

impl Report {
    fn new(label: String, elapsed: Duration, mut latencies: Vec<u64>) -> Self {
        latencies.sort_unstable();
        Report {
            label,
            records: latencies.len(),
            elapsed,
            latencies,
        }
    }

    fn percentile_us(&self, fraction: f64) -> f64 {
        let index = ((self.latencies.len() as f64 - 1.0) * fraction).round() as usize;
        self.latencies[index] as f64 / 1000.0
    }

    fn print(&self) {
        println!(
            "{:<44} {:>10.0} appends/s   p50 {:>7.2} us   p99 {:>7.2} us   p99.9 {:>8.2} us   \
             max {:>9.2} us",
            self.label,
            self.records as f64 / self.elapsed.as_secs_f64(),
            self.percentile_us(0.50),
            self.percentile_us(0.99),
            self.percentile_us(0.999),
            self.percentile_us(1.0),
        );
    }
}

fn bench_spool(label: &str, payload: &Bytes, records: usize, configure: impl Fn(&mut SpoolConfig)) {
    let base = std::env::var_os("SPOOL_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(base).expect("tempdir");
    let mut config = SpoolConfig::new(dir.path());
    config.when_full = WhenFull::Block;
    configure(&mut config);
    let (spool, _) = Spool::open(config).expect("open");

    // The producer side: read in batches and ack everything, so acked segments get deleted.
    let done = Arc::new(AtomicBool::new(false));
    let consumer = {
        let spool = spool.clone();
        let done = Arc::clone(&done);
        thread::spawn(move || {
            let mut next = 1;
            loop {
                let batch = spool.read_batch(next, 1024, 8 << 20).expect("read");
                if batch.is_empty() {
                    if done.load(Ordering::Acquire) && next >= spool.next_seq() {
                        return;
                    }
                    thread::sleep(Duration::from_micros(200));
                    continue;
                }
                for entry in &batch {
                    spool.ack(entry.seq).expect("ack");
                }
                next = batch.last().map_or(next, |entry| entry.seq + 1);
            }
        })
    };

    let mut latencies = Vec::with_capacity(records);
    let started = Instant::now();
    for index in 0..records {
        let record = Record::event(0, index as i64, payload.clone());
        let before = Instant::now();
        let outcome = spool.append(&record).expect("append");
        latencies.push(before.elapsed().as_nanos() as u64);
        assert!(matches!(outcome, AppendOutcome::Appended { .. }));
    }
    let elapsed = started.elapsed();
    done.store(true, Ordering::Release);
    consumer.join().expect("consumer");
    let stats = spool.stats();
    Report::new(label.to_string(), elapsed, latencies).print();
    println!(
        "{:<44} fsyncs {}, last {} us, max {} us; committed {}, segments left {}",
        "",
        stats.fsync_count,
        stats.fsync_last_us,
        stats.fsync_max_us,
        stats.committed_seq,
        stats.segments
    );
}

fn bench_vecdeque(payload: &Bytes, records: usize) {
    let queue = Arc::new((Mutex::new(VecDeque::<Record>::new()), Condvar::new()));
    let done = Arc::new(AtomicBool::new(false));
    let consumer = {
        let queue = Arc::clone(&queue);
        let done = Arc::clone(&done);
        thread::spawn(move || {
            let (lock, ready) = &*queue;
            let mut received = 0usize;
            loop {
                let mut items = lock.lock().expect("lock");
                while items.is_empty() {
                    if done.load(Ordering::Acquire) {
                        return received;
                    }
                    items = ready
                        .wait_timeout(items, Duration::from_millis(1))
                        .expect("wait")
                        .0;
                }
                received += items.drain(..).count();
            }
        })
    };
    let mut latencies = Vec::with_capacity(records);
    let started = Instant::now();
    for index in 0..records {
        let record = Record::event(0, index as i64, payload.clone());
        let before = Instant::now();
        {
            let (lock, ready) = &*queue;
            lock.lock().expect("lock").push_back(record);
            ready.notify_one();
        }
        latencies.push(before.elapsed().as_nanos() as u64);
    }
    let elapsed = started.elapsed();
    done.store(true, Ordering::Release);
    let received = consumer.join().expect("consumer");
    assert_eq!(received, records);
    Report::new(
        "in-memory VecDeque handoff (no durability)".into(),
        elapsed,
        latencies,
    )
    .print();
}

#[test]
#[ignore = "benchmark; run with --release -- --ignored --nocapture"]
fn spool_append_benchmark() {
    let records = env_or("SPOOL_BENCH_RECORDS", 200_000);
    let payload_len = env_or("SPOOL_BENCH_PAYLOAD", 1024);
    let payload = Bytes::from(vec![b'x'; payload_len]);
    println!(
        "\n{records} appends of {payload_len}-byte payloads, one appending thread, one \
         consumer thread"
    );
    bench_vecdeque(&payload, records);
    bench_spool("spool, fsync every 100 ms", &payload, records, |config| {
        config.fsync_interval = Duration::from_millis(100);
        config.fsync_every_records = u64::MAX;
    });
    bench_spool(
        "spool, fsync every 100 ms or 1000 records",
        &payload,
        records,
        |config| {
            config.fsync_interval = Duration::from_millis(100);
            config.fsync_every_records = 1000;
        },
    );
}
