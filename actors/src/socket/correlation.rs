//! Whether two channels get the same `CorrelationId` for one event, learnt from the traffic.
//!
//! Genesys does not document it. The merge keys copies by topic, body and `CorrelationId` while
//! the channels agree on it (then a snapshot re-sent without visible change is told apart from
//! the twin of the first copy; keyed by body, the re-send would be taken for a late twin and
//! dropped when it comes on a socket that attached meanwhile), and by topic and body alone once
//! they are seen to disagree (else every event would be delivered once per leg). It starts keyed
//! by `CorrelationId`: if the channels disagree, the first pairs are delivered twice (a
//! duplicate, never a loss) until the verdict.
//!
//! The evidence: the first unpaired copy of a body on one lane is compared with the next copy of
//! that body on another lane that was attached when the first arrived (their CorrelationIds,
//! hashed); a lane that attached later never got that copy, and what it brings with the same
//! body is a re-send, not a twin. Over the last [`SAMPLE`] pairs,
//! three quarters agreeing make the keying `CorrelationId`, three quarters differing make it
//! topic and body; a pair mismatched by a rollover (a lane that missed the first copy pairs its
//! re-send with it) cannot flip it. Bounded: copies wait at most `window`, at most `capacity`
//! of them.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use smallvec::SmallVec;

use super::merge::{Identity, IdentityMap};

/// `order` is compacted once it holds more than this and more than twice the unpaired copies.
const COMPACT_AT: usize = 1024;

/// Pairs the verdict is drawn from.
pub const SAMPLE: usize = 64;
/// Pairs needed before a first verdict.
pub const MIN_SAMPLE: usize = 16;
/// Once [`SAMPLE`] pairs were seen, one body in this many is observed (chosen by its identity,
/// so both copies of a body are): enough to follow a change of the channels' behaviour, at a
/// sixteenth of the cost (with two legs every event passed through here, and a leg that lags
/// in a burst left an unpaired copy per event waiting).
pub const SUBSAMPLE: u128 = 16;

/// What the merge keys copies by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keying {
    /// Topic and body: the channels give one event different CorrelationIds.
    TopicAndBody,
    /// Topic, body and `CorrelationId`: the channels agree on it (or nothing says otherwise
    /// yet).
    CorrelationId,
}

impl Keying {
    pub fn as_str(self) -> &'static str {
        match self {
            Keying::TopicAndBody => "topic_and_body",
            Keying::CorrelationId => "correlation_id",
        }
    }
}

/// Whether `copies` (in stamp order: pushed in it, removed from anywhere) hold `stamp`.
fn holds(copies: &Copies, stamp: u64) -> bool {
    copies.binary_search_by_key(&stamp, |c| c.stamp).is_ok()
}

/// The unpaired copies of one body: nearly always one, kept inline.
type Copies = SmallVec<[Unpaired; 1]>;

struct Unpaired {
    /// Which push into `order` this copy belongs to (paired copies leave `order` lazily).
    stamp: u64,
    lane: u64,
    correlation: u64,
    /// The lanes attached when it arrived: where its twins can come from.
    attached: SmallVec<[u64; 2]>,
}

pub struct Learner {
    capacity: usize,
    window: Duration,
    /// Body identity → unpaired copies, oldest first.
    waiting: IdentityMap<Copies>,
    /// Every unpaired copy in arrival order, for the window and the capacity (with items of
    /// copies paired since, dropped lazily).
    order: VecDeque<(Identity, Instant, u64)>,
    next_stamp: u64,
    /// Copies in `waiting`.
    unpaired: usize,
    /// The last pairs: whether their CorrelationIds agreed.
    recent: VecDeque<bool>,
    differing: usize,
    verdict: Keying,
}

impl Learner {
    pub fn new(capacity: usize, window: Duration) -> Self {
        Self {
            capacity: capacity.max(1),
            window,
            waiting: IdentityMap::default(),
            order: VecDeque::new(),
            next_stamp: 0,
            unpaired: 0,
            recent: VecDeque::with_capacity(SAMPLE),
            differing: 0,
            verdict: Keying::CorrelationId,
        }
    }

    pub fn verdict(&self) -> Keying {
        self.verdict
    }

    /// A copy of the event with body identity `body` and CorrelationId hash `correlation`
    /// arrived on `lane`, with `attached` the lanes attached now. The new verdict, when this
    /// copy changed it.
    pub fn observe(
        &mut self,
        body: Identity,
        correlation: u64,
        lane: u64,
        attached: &[u64],
        now: Instant,
    ) -> Option<Keying> {
        self.expire(now);
        if self.recent.len() == SAMPLE
            && !body.is_multiple_of(SUBSAMPLE)
            && !self.waiting.contains_key(&body)
        {
            return None;
        }
        if let Some(copies) = self.waiting.get_mut(&body) {
            let twin = copies
                .iter()
                .position(|first| first.lane != lane && first.attached.contains(&lane));
            if let Some(theirs) = twin.map(|at| copies.remove(at)) {
                self.unpaired -= 1;
                if copies.is_empty() {
                    self.waiting.remove(&body);
                }
                return self.record(theirs.correlation == correlation);
            }
        }
        if attached.iter().all(|&other| other == lane) {
            // No other lane is attached: no twin of this copy can come (a twin comes on a lane
            // that was attached when the first copy arrived), so it is no evidence to keep.
            // A one-leg shard passes here during the grace after each connect.
            return None;
        }
        while self.unpaired >= self.capacity {
            self.drop_oldest();
        }
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        self.waiting.entry(body).or_default().push(Unpaired {
            stamp,
            lane,
            correlation,
            attached: SmallVec::from_slice(attached),
        });
        self.unpaired += 1;
        self.order.push_back((body, now, stamp));
        None
    }

    fn record(&mut self, agreed: bool) -> Option<Keying> {
        if self.recent.len() == SAMPLE && self.recent.pop_front() == Some(false) {
            self.differing -= 1;
        }
        self.recent.push_back(agreed);
        if !agreed {
            self.differing += 1;
        }
        if self.recent.len() < MIN_SAMPLE {
            return None;
        }
        let pairs = self.recent.len();
        let next = match self.verdict {
            Keying::TopicAndBody if self.differing * 4 <= pairs => Keying::CorrelationId,
            Keying::CorrelationId if self.differing * 4 >= pairs * 3 => Keying::TopicAndBody,
            unchanged => unchanged,
        };
        (next != self.verdict).then(|| {
            self.verdict = next;
            next
        })
    }

    fn live(&self, body: &Identity, stamp: u64) -> bool {
        self.waiting
            .get(body)
            .is_some_and(|copies| holds(copies, stamp))
    }

    /// Forgets the copies older than `window`, and the items of `order` of copies paired
    /// since: those at its front at once, the others once they outnumber the unpaired copies.
    fn expire(&mut self, now: Instant) {
        while let Some(&(body, at, stamp)) = self.order.front() {
            if self.live(&body, stamp) && now.duration_since(at) < self.window {
                break;
            }
            self.order.pop_front();
            self.forget(body, stamp);
        }
        if self.order.len() > COMPACT_AT.max(2 * self.unpaired) {
            let waiting = &self.waiting;
            self.order.retain(|(body, _, stamp)| {
                waiting
                    .get(body)
                    .is_some_and(|copies| holds(copies, *stamp))
            });
        }
    }

    /// Forgets the oldest unpaired copy.
    fn drop_oldest(&mut self) {
        while let Some((body, _, stamp)) = self.order.pop_front() {
            if self.forget(body, stamp) {
                return;
            }
        }
    }

    /// Forgets the copy of `body` pushed as `stamp`; false if it was paired already.
    fn forget(&mut self, body: Identity, stamp: u64) -> bool {
        let Some(copies) = self.waiting.get_mut(&body) else {
            return false;
        };
        let Ok(at) = copies.binary_search_by_key(&stamp, |c| c.stamp) else {
            return false;
        };
        copies.remove(at);
        self.unpaired -= 1;
        if copies.is_empty() {
            self.waiting.remove(&body);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(learner: &mut Learner, events: u128, same_correlation: bool) -> Vec<Keying> {
        let now = Instant::now();
        let mut changes = Vec::new();
        for body in 0..events {
            let correlation = body as u64 * 10;
            let theirs = if same_correlation {
                correlation
            } else {
                correlation + 1
            };
            changes.extend(learner.observe(body, correlation, 1, &[1, 2], now));
            changes.extend(learner.observe(body, theirs, 2, &[1, 2], now));
        }
        changes
    }

    #[test]
    fn channels_that_differ_make_it_key_by_topic_and_body() {
        let mut learner = Learner::new(1000, Duration::from_secs(10));
        assert_eq!(
            learner.verdict(),
            Keying::CorrelationId,
            "until shown otherwise"
        );
        let changes = run(&mut learner, MIN_SAMPLE as u128 - 1, false);
        assert!(changes.is_empty(), "no verdict on too few pairs");
        assert_eq!(
            run(&mut learner, 1, false),
            vec![Keying::TopicAndBody],
            "the sixteenth pair decides"
        );
        assert!(learner.waiting.is_empty() && learner.order.len() <= 2 * MIN_SAMPLE);
        assert!(run(&mut learner, 200, false).is_empty());
    }

    #[test]
    fn channels_that_agree_keep_it_by_correlation_id_and_a_few_mismatches_flip_nothing() {
        let mut agreeing = Learner::new(1000, Duration::from_secs(10));
        assert!(run(&mut agreeing, 100, true).is_empty());
        // Rollovers pair a re-send with the first copy now and then: ten observed pairs in a row
        // (one body in SUBSAMPLE is observed once the sample is full) change nothing.
        let n = SUBSAMPLE;
        assert!(run(&mut agreeing, 10 * n, false).is_empty());
        assert_eq!(agreeing.verdict(), Keying::CorrelationId);
        // Genesys changing its mind does, and back.
        assert_eq!(
            run(&mut agreeing, 64 * n, false),
            vec![Keying::TopicAndBody]
        );
        assert_eq!(
            run(&mut agreeing, 64 * n, true),
            vec![Keying::CorrelationId]
        );
    }

    /// heaptrack of the two-leg burst (bench/README.md): with one leg thousands of events
    /// behind, the learner held an unpaired copy (and a `VecDeque` and a `Vec`) per event, 12 of
    /// the 30 MiB of peak heap. Once the sample is full it observes one body in SUBSAMPLE.
    #[test]
    fn once_the_sample_is_full_one_body_in_subsample_is_observed() {
        let now = Instant::now();
        let mut learner = Learner::new(100_000, Duration::from_secs(120));
        assert!(run(&mut learner, SAMPLE as u128, true).is_empty());
        assert_eq!(learner.recent.len(), SAMPLE);
        // Lane 1 runs 16,000 events ahead.
        for body in 1_000..17_000u128 {
            learner.observe(body, 1, 1, &[1, 2], now);
        }
        assert_eq!(learner.unpaired, 1_000, "one body in 16 held");
        for body in 1_000..17_000u128 {
            learner.observe(body, 1, 2, &[1, 2], now);
        }
        assert_eq!(learner.unpaired, 0, "and paired");
    }

    /// Review finding (bench/README.md, peak RSS at 10,000 events/s on one channel): a one-leg
    /// shard uses the merge during the grace after each connect, and the learner kept every
    /// copy of it, unpaired for good (no other lane was attached to bring a twin), until the
    /// capacity: ~9.5 MB of tables that the one lane then held for the process's life.
    #[test]
    fn copies_on_the_only_attached_lane_are_not_kept() {
        let now = Instant::now();
        let mut learner = Learner::new(100_000, Duration::from_secs(120));
        for body in 0..10_000u128 {
            assert_eq!(learner.observe(body, 1, 1, &[1], now), None);
        }
        assert_eq!(learner.unpaired, 0);
        assert!(learner.waiting.is_empty() && learner.order.is_empty());
        // A copy that came while another lane was attached still pairs with that lane's twin.
        learner.observe(1, 5, 1, &[1, 2], now);
        learner.observe(1, 5, 2, &[1, 2], now);
        assert_eq!(learner.recent, VecDeque::from([true]));
    }

    #[test]
    fn a_re_send_on_a_socket_that_attached_later_is_no_evidence() {
        let now = Instant::now();
        let mut learner = Learner::new(1000, Duration::from_secs(10));
        for body in 0..100 {
            // Lane `body` alone got the first copy; lane `body + 1` attached, then the snapshot
            // was re-sent (another CorrelationId) on it.
            let (old, new) = (body as u64, body as u64 + 1);
            learner.observe(body, 1, old, &[old], now);
            learner.observe(body, 2, new, &[old, new], now);
        }
        assert!(learner.recent.is_empty(), "no pair compared");
        assert_eq!(learner.verdict(), Keying::CorrelationId);
    }

    #[test]
    fn a_lane_ahead_pairs_in_order_and_unpaired_copies_are_bounded() {
        let now = Instant::now();
        let mut learner = Learner::new(8, Duration::from_secs(1));
        // The same body twice on lane 1 before lane 2 brings either: first with first.
        let both = [1, 2];
        learner.observe(7, 70, 1, &both, now);
        learner.observe(7, 71, 1, &both, now);
        learner.observe(7, 70, 2, &both, now);
        learner.observe(7, 71, 2, &both, now);
        assert_eq!(learner.recent, VecDeque::from([true, true]));
        for body in 100..200 {
            learner.observe(body, 1, 1, &both, now);
        }
        assert!(learner.order.len() <= 8 && learner.waiting.len() <= 8);
        learner.observe(500, 1, 1, &both, now + Duration::from_secs(2));
        assert_eq!(learner.order.len(), 1, "the window expired the rest");
    }

    /// Review finding: paired copies stayed in `order` until `window` or `capacity` pushed them
    /// out (100,000 items at a steady rate), and dropping one for the capacity could forget a
    /// newer unpaired copy of the same body.
    #[test]
    fn paired_copies_leave_no_trace_and_the_capacity_drops_the_oldest_unpaired_copy() {
        let now = Instant::now();
        let mut learner = Learner::new(10_000, Duration::from_secs(120));
        for body in 0..50_000u128 {
            learner.observe(body, 1, 1, &[1, 2], now);
            learner.observe(body, 1, 2, &[1, 2], now);
        }
        assert_eq!(learner.unpaired, 0);
        assert!(
            learner.order.len() <= COMPACT_AT + 1,
            "{}",
            learner.order.len()
        );

        let mut learner = Learner::new(3, Duration::from_secs(120));
        learner.observe(7, 1, 1, &[1, 2], now); // paired at once
        learner.observe(7, 1, 2, &[1, 2], now);
        learner.observe(8, 3, 1, &[1, 2], now);
        learner.observe(7, 2, 1, &[1, 2], now); // a re-send of body 7, unpaired
        learner.observe(9, 4, 1, &[1, 2], now); // three unpaired: within the capacity
        assert_eq!(learner.unpaired, 3);
        assert!(learner.waiting.contains_key(&7), "the re-send is kept");
        learner.observe(10, 5, 1, &[1, 2], now); // over it: the oldest unpaired (8) goes
        assert!(!learner.waiting.contains_key(&8));
        assert!(learner.waiting.contains_key(&7));
        assert!(learner.waiting.contains_key(&9) && learner.waiting.contains_key(&10));
    }
}
