//! Whether two channels get the same `CorrelationId` for one event, learnt from the traffic.
//!
//! Genesys does not document it. The merge keys copies by topic, body and `CorrelationId` when
//! the channels agree on it (then a snapshot re-sent without visible change is told apart from
//! the twin of the first copy), and by topic and body alone when they do not (else every event
//! would be delivered once per leg). Until the traffic says which, it keys by topic and body:
//! never a duplicate, and a re-sent snapshot still arrives with its body.
//!
//! The evidence: the first unpaired copy of a body on one lane is compared with the next copy of
//! that body on another lane (their CorrelationIds, hashed). Over the last [`SAMPLE`] pairs,
//! three quarters agreeing make the keying `CorrelationId`, three quarters differing make it
//! topic and body; a pair mismatched by a rollover (a lane that missed the first copy pairs its
//! re-send with it) cannot flip it. Bounded: copies wait at most `window`, at most `capacity`
//! of them.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::merge::Identity;

/// Pairs the verdict is drawn from.
pub const SAMPLE: usize = 64;
/// Pairs needed before a first verdict.
pub const MIN_SAMPLE: usize = 16;

/// What the merge keys copies by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keying {
    /// Topic and body: the channels give one event different CorrelationIds (or it is not known
    /// yet).
    TopicAndBody,
    /// Topic, body and `CorrelationId`: the channels agree on it.
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

pub struct Learner {
    capacity: usize,
    window: Duration,
    /// Body identity → unpaired copies (lane, CorrelationId hash), oldest first.
    waiting: HashMap<Identity, VecDeque<(u64, u64)>>,
    /// Every unpaired copy in arrival order, for the window and the capacity.
    order: VecDeque<(Identity, Instant)>,
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
            waiting: HashMap::new(),
            order: VecDeque::new(),
            recent: VecDeque::with_capacity(SAMPLE),
            differing: 0,
            verdict: Keying::TopicAndBody,
        }
    }

    pub fn verdict(&self) -> Keying {
        self.verdict
    }

    /// A copy of the event with body identity `body` and CorrelationId hash `correlation`
    /// arrived on `lane`. The new verdict, when this copy changed it.
    pub fn observe(
        &mut self,
        body: Identity,
        correlation: u64,
        lane: u64,
        now: Instant,
    ) -> Option<Keying> {
        self.expire(now);
        if let Some(copies) = self.waiting.get_mut(&body) {
            if let Some(at) = copies.iter().position(|(other, _)| *other != lane) {
                let (_, theirs) = copies.remove(at).unwrap_or_default();
                if copies.is_empty() {
                    self.waiting.remove(&body);
                }
                return self.record(theirs == correlation);
            }
        }
        while self.order.len() >= self.capacity {
            self.drop_oldest();
        }
        self.waiting
            .entry(body)
            .or_default()
            .push_back((lane, correlation));
        self.order.push_back((body, now));
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

    fn expire(&mut self, now: Instant) {
        while self
            .order
            .front()
            .is_some_and(|(_, at)| now.duration_since(*at) >= self.window)
        {
            self.drop_oldest();
        }
    }

    /// Forgets the oldest unpaired copy (approximately: the oldest of its body).
    fn drop_oldest(&mut self) {
        let Some((body, _)) = self.order.pop_front() else {
            return;
        };
        if let Some(copies) = self.waiting.get_mut(&body) {
            copies.pop_front();
            if copies.is_empty() {
                self.waiting.remove(&body);
            }
        }
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
            changes.extend(learner.observe(body, correlation, 1, now));
            changes.extend(learner.observe(body, theirs, 2, now));
        }
        changes
    }

    #[test]
    fn channels_that_agree_make_it_key_by_correlation_id() {
        let mut learner = Learner::new(1000, Duration::from_secs(10));
        assert_eq!(learner.verdict(), Keying::TopicAndBody, "until known");
        let changes = run(&mut learner, MIN_SAMPLE as u128 - 1, true);
        assert!(changes.is_empty(), "no verdict on too few pairs");
        assert_eq!(
            run(&mut learner, 1, true),
            vec![Keying::CorrelationId],
            "the sixteenth pair decides"
        );
        assert!(learner.waiting.is_empty() && learner.order.len() <= 2 * MIN_SAMPLE);
    }

    #[test]
    fn channels_that_differ_keep_it_by_topic_and_body_and_a_few_mismatches_flip_nothing() {
        let mut learner = Learner::new(1000, Duration::from_secs(10));
        assert!(run(&mut learner, 200, false).is_empty());
        assert_eq!(learner.verdict(), Keying::TopicAndBody);
        let mut agreeing = Learner::new(1000, Duration::from_secs(10));
        run(&mut agreeing, 100, true);
        // Rollovers pair a re-send with the first copy now and then: ten in a row change nothing.
        assert!(run(&mut agreeing, 10, false).is_empty());
        assert_eq!(agreeing.verdict(), Keying::CorrelationId);
        // Genesys changing its mind does.
        assert_eq!(run(&mut agreeing, 64, false), vec![Keying::TopicAndBody]);
    }

    #[test]
    fn a_lane_ahead_pairs_in_order_and_unpaired_copies_are_bounded() {
        let now = Instant::now();
        let mut learner = Learner::new(8, Duration::from_secs(1));
        // The same body twice on lane 1 before lane 2 brings either: first with first.
        learner.observe(7, 70, 1, now);
        learner.observe(7, 71, 1, now);
        learner.observe(7, 70, 2, now);
        learner.observe(7, 71, 2, now);
        assert_eq!(learner.recent, VecDeque::from([true, true]));
        for body in 100..200 {
            learner.observe(body, 1, 1, now);
        }
        assert!(learner.order.len() <= 8 && learner.waiting.len() <= 8);
        learner.observe(500, 1, 1, now + Duration::from_secs(2));
        assert_eq!(learner.order.len(), 1, "the window expired the rest");
    }
}
