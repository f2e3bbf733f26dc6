//! Records waiting to be produced again, paced per key and kept in spool order per key.
//!
//! librdkafka retries transient errors itself; a record comes back here only when it timed out
//! (`message.timeout.ms` set) or hit an error librdkafka gives up on. Such a record waits in a
//! group of its *order key* (topic and Kafka key: the records that must stay in order, and
//! that share a partition). While a group exists, newer records of the same key are parked in
//! it instead of being sent, so that they cannot overtake it. A group is produced again, in
//! seq order and all at once, once its backoff passed and nothing of its key is in flight any
//! more (counted in [`Stripes`]); the group stays, holding newer records back, until a batch
//! of it resolved with nothing failed and nothing parked behind it. So a key that failed goes
//! batch by batch until it is healthy: a record of it can only time out together with the
//! records sent with it (the same instant in librdkafka's queue), never while a newer one
//! goes out. Other keys, and so other partitions, keep flowing meanwhile.
//!
//! The delivery callback reports a failure before it lowers the stripe count, and the loop
//! looks at the stripes before it reads the failures: a group seen idle has had all its
//! failures read ([`RetryBook::idle`], then the failures, then [`RetryBook::take_due`]).
//!
//! Attempts are bounded: a failure counts only when Kafka acknowledged other records while this
//! one was out (the record, or its partition, is the problem, not an outage), and a record
//! whose counted attempts reach the bound is dead-lettered instead of pinning the spool's
//! committed position for ever.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use crate::backoff::ExponentialBackoff;

/// In-flight counts per order key, hashed into a fixed number of stripes: two atomic updates
/// per record. A key is idle when its stripe is 0 (a shared stripe can only delay a retry).
pub(super) struct Stripes {
    counts: Box<[AtomicU32]>,
}

const STRIPES: usize = 4096;

impl Default for Stripes {
    fn default() -> Self {
        Self {
            counts: (0..STRIPES).map(|_| AtomicU32::new(0)).collect(),
        }
    }
}

impl Stripes {
    pub(super) fn stripe(order_key: u64) -> u16 {
        (order_key % STRIPES as u64) as u16
    }

    pub(super) fn sent(&self, stripe: u16) {
        self.counts[stripe as usize].fetch_add(1, Ordering::AcqRel);
    }

    pub(super) fn resolved(&self, stripe: u16) {
        self.counts[stripe as usize].fetch_sub(1, Ordering::AcqRel);
    }

    pub(super) fn is_idle(&self, order_key: u64) -> bool {
        self.counts[Self::stripe(order_key) as usize].load(Ordering::Acquire) == 0
    }
}

/// How often a record was tried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Attempts {
    /// Failures that count towards the bound.
    pub(super) counted: u32,
    /// Every failure (outages too): the pacing.
    pub(super) paced: u32,
}

/// A record to produce again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Due {
    pub(super) seq: u64,
    pub(super) attempts: Attempts,
    pub(super) order_key: Option<u64>,
}

/// What became of a failed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// It waits in its group.
    Waits,
    /// Its counted attempts reached the bound: dead-letter it.
    GiveUp(u32),
}

#[derive(Debug)]
struct Group {
    /// Records waiting to be sent, seq → attempts so far, in spool order.
    records: BTreeMap<u64, Attempts>,
    due: Instant,
}

impl Group {
    fn new(due: Instant) -> Self {
        Self {
            records: BTreeMap::new(),
            due,
        }
    }
}

/// Groups whose key had nothing in flight when the loop looked, before it read failures.
pub(super) struct Idle(Vec<Option<u64>>);

pub(super) struct RetryBook {
    groups: HashMap<Option<u64>, Group>,
    /// Groups a failure reached since [`Self::idle`] was taken.
    touched: std::collections::HashSet<Option<u64>>,
    backoff: ExponentialBackoff,
    /// Counted attempts after which a record is dead-lettered; 0: never.
    max_attempts: u32,
}

impl RetryBook {
    pub(super) fn new(backoff: ExponentialBackoff, max_attempts: u32) -> Self {
        Self {
            groups: HashMap::new(),
            touched: Default::default(),
            backoff,
            max_attempts,
        }
    }

    /// Whether a new record of this order key must wait behind failed ones.
    pub(super) fn holds(&self, order_key: Option<u64>) -> bool {
        order_key.is_some() && self.groups.contains_key(&order_key)
    }

    /// Records waiting, parked ones included.
    pub(super) fn len(&self) -> usize {
        self.groups.values().map(|group| group.records.len()).sum()
    }

    /// A new record behind a failed one of its key: it waits, with no attempt.
    pub(super) fn park(&mut self, seq: u64, order_key: Option<u64>, now: Instant) {
        self.groups
            .entry(order_key)
            .or_insert_with(|| Group::new(now))
            .records
            .insert(seq, Attempts::default());
    }

    /// A delivery failed. `counts`: other records were acknowledged while it was out.
    /// `purged`: the bridge purged librdkafka's queue (paced, never counted).
    pub(super) fn failed(
        &mut self,
        seq: u64,
        order_key: Option<u64>,
        before: Attempts,
        counts: bool,
        purged: bool,
        now: Instant,
    ) -> Verdict {
        // A purged record did not fail itself, but pacing it too keeps an outage (where every
        // failure purges a full queue) from turning into a produce-purge loop.
        let mut attempts = before;
        attempts.paced += 1;
        if counts && !purged {
            attempts.counted += 1;
        }
        if self.max_attempts > 0 && attempts.counted >= self.max_attempts {
            return Verdict::GiveUp(attempts.counted);
        }
        let delay = self.backoff.delay(attempts.paced.saturating_sub(1));
        self.touched.insert(order_key);
        let group = self
            .groups
            .entry(order_key)
            .or_insert_with(|| Group::new(now + delay));
        group.due = group.due.max(now + delay);
        group.records.insert(seq, attempts);
        Verdict::Waits
    }

    /// The groups whose key has nothing in flight now. Taken before the failures are read.
    pub(super) fn idle(&mut self, stripes: &Stripes) -> Idle {
        self.touched.clear();
        Idle(
            self.groups
                .keys()
                .filter(|key| key.is_none_or(|key| stripes.is_idle(key)))
                .copied()
                .collect(),
        )
    }

    /// For every group that was idle and no failure reached since: with nothing waiting, it
    /// is done (its key flows freely again); when due, its records, all of them (in spool
    /// order; the group stays and holds newer records back until they resolved).
    pub(super) fn take_due(&mut self, now: Instant, idle: Idle) -> Vec<Due> {
        let mut records = Vec::new();
        for key in idle.0 {
            if self.touched.contains(&key) {
                continue;
            }
            let Some(group) = self.groups.get_mut(&key) else {
                continue;
            };
            if group.records.is_empty() {
                self.groups.remove(&key);
            } else if group.due <= now {
                records.extend(std::mem::take(&mut group.records).into_iter().map(
                    |(seq, attempts)| Due {
                        seq,
                        attempts,
                        order_key: key,
                    },
                ));
            }
        }
        records.sort_unstable_by_key(|due| due.seq);
        records
    }

    /// Puts back records taken by [`Self::take_due`] that could not be sent yet (librdkafka's
    /// queue was full), due at once, ahead of anything parked since.
    pub(super) fn put_back(&mut self, due: Due, now: Instant) {
        let group = self
            .groups
            .entry(due.order_key)
            .or_insert_with(|| Group::new(now));
        group.due = group.due.min(now);
        group.records.insert(due.seq, due.attempts);
    }

    /// When the next group with records falls due.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.groups
            .values()
            .filter(|group| !group.records.is_empty())
            .map(|group| group.due)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn book(max_attempts: u32) -> RetryBook {
        RetryBook::new(
            ExponentialBackoff::new(Duration::from_millis(100), Duration::from_secs(5), 0.0)
                .unwrap(),
            max_attempts,
        )
    }

    #[test]
    fn a_failed_key_holds_its_newer_records_and_releases_all_in_seq_order() {
        let stripes = Stripes::default();
        let mut book = book(10);
        let now = Instant::now();
        let key = Some(42);
        assert!(!book.holds(key));
        assert_eq!(
            book.failed(5, key, Attempts::default(), false, false, now),
            Verdict::Waits
        );
        assert!(book.holds(key));
        assert!(!book.holds(Some(43)), "other keys flow");
        assert!(!book.holds(None), "records without a key never wait");
        book.park(9, key, now);
        book.park(7, key, now);
        let idle = book.idle(&stripes);
        assert!(book.take_due(now, idle).is_empty(), "backoff first");
        let later = now + Duration::from_millis(100);
        let idle = book.idle(&stripes);
        let taken: Vec<u64> = book.take_due(later, idle).iter().map(|d| d.seq).collect();
        assert_eq!(taken, vec![5, 7, 9]);
        assert_eq!(book.len(), 0);
        // Sent again: the key still holds newer records back until that batch resolved.
        assert!(book.holds(key));
        let stripe = Stripes::stripe(42);
        stripes.sent(stripe);
        book.park(11, key, later);
        let idle = book.idle(&stripes);
        assert!(book.take_due(later, idle).is_empty(), "the batch is out");
        stripes.resolved(stripe);
        let idle = book.idle(&stripes);
        let taken: Vec<u64> = book.take_due(later, idle).iter().map(|d| d.seq).collect();
        assert_eq!(taken, vec![11], "then the records parked behind it");
        let idle = book.idle(&stripes);
        assert!(book.take_due(later, idle).is_empty());
        assert!(
            !book.holds(key),
            "a batch resolved with nothing behind it: healthy again"
        );
    }

    #[test]
    fn a_failure_read_after_the_stripes_were_seen_idle_keeps_the_group() {
        let stripes = Stripes::default();
        let mut book = book(10);
        let now = Instant::now();
        let key = Some(7);
        book.failed(1, key, Attempts::default(), false, false, now);
        let later = now + Duration::from_secs(1);
        let idle = book.idle(&stripes);
        let taken = book.take_due(later, idle);
        assert_eq!(taken.len(), 1);
        // The batch went out and resolved; its failure is read after the idle snapshot.
        let idle = book.idle(&stripes);
        book.failed(1, key, taken[0].attempts, false, false, later);
        assert!(book.take_due(later, idle).is_empty());
        assert!(book.holds(key), "the failed record still holds its key");
    }

    #[test]
    fn a_group_waits_while_anything_of_its_key_is_in_flight() {
        let stripes = Stripes::default();
        let mut book = book(10);
        let now = Instant::now();
        let key = 1234u64;
        book.failed(1, Some(key), Attempts::default(), false, false, now);
        let stripe = Stripes::stripe(key);
        stripes.sent(stripe);
        let later = now + Duration::from_secs(1);
        let idle = book.idle(&stripes);
        assert!(book.take_due(later, idle).is_empty());
        stripes.resolved(stripe);
        let idle = book.idle(&stripes);
        assert_eq!(book.take_due(later, idle).len(), 1);
    }

    #[test]
    fn pacing_doubles_with_every_failure_and_purges_and_outages_never_count() {
        let mut book = book(10);
        let now = Instant::now();
        let third = Attempts {
            counted: 0,
            paced: 2,
        };
        book.failed(1, Some(1), third, false, false, now);
        assert_eq!(book.next_due(), Some(now + Duration::from_millis(400)));
        let mut book2 = self::book(1);
        assert_eq!(
            book2.failed(2, Some(2), Attempts::default(), false, true, now),
            Verdict::Waits,
            "a purge never counts"
        );
        assert_eq!(
            book2.failed(3, Some(3), Attempts::default(), false, false, now),
            Verdict::Waits,
            "an outage (nothing else acknowledged) does not count"
        );
        assert_eq!(
            book2.failed(4, Some(4), Attempts::default(), true, false, now),
            Verdict::GiveUp(1)
        );
    }

    #[test]
    fn a_record_failing_while_others_land_is_given_up_after_the_bound() {
        let stripes = Stripes::default();
        let mut book = book(3);
        let mut now = Instant::now();
        let mut attempts = Attempts::default();
        for round in 1..=3 {
            match book.failed(8, Some(8), attempts, true, false, now) {
                Verdict::Waits => {
                    now += Duration::from_secs(10);
                    let idle = book.idle(&stripes);
                    let taken = book.take_due(now, idle);
                    assert_eq!(taken.len(), 1);
                    attempts = taken[0].attempts;
                    assert_eq!(attempts.counted, round);
                }
                Verdict::GiveUp(n) => {
                    assert_eq!((round, n), (3, 3));
                    return;
                }
            }
        }
        panic!("never given up");
    }
}
