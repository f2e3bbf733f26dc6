//! When a shard had no live socket: the one place that decides what a gap is.
//!
//! Every socket of a shard (each leg's, a rollover candidate's, a replaced one still draining)
//! is a *lane*. A lane covers the shard from when it connected (once its first frame proved it
//! works) until the server's close frame: everything sent before it was read, as TCP keeps
//! order. A lane that ended otherwise (no close frame, found dead, or closed by the bridge, which
//! stops reading what is still on the wire) covered only as far as it proved: up to the send
//! time of its last answered ping (the actor passes that as the lane's last point). While a lane
//! is attached it is assumed to cover up to now. A **gap** is an interval no lane covered.
//!
//! The assumption "covers up to now" can turn out wrong: a silent socket is only found dead
//! after a ping went unanswered, and then its coverage ends at its last frame, in the past. If
//! another lane was down in that window too, the shard had a hole there, which is reported then,
//! retroactively, as a closed gap. So however losses interleave, every interval without a
//! covering lane is reported exactly once, and no reported interval had one.
//!
//! A gap closes only once the socket that ended it proved itself: if every socket is gone again
//! within [`CONFIRM_CLOSE`] (a server that accepts and closes at once, a pong and then nothing),
//! the gap goes on from where it started, so one outage is one gap record, not one per attempt.
//!
//! Pure bookkeeping on epoch milliseconds, no I/O: the actor feeds it lane starts and ends.

use std::collections::BTreeMap;
use std::time::Duration;

/// How long the shard must stay covered after a gap's end before the gap is reported.
pub const CONFIRM_CLOSE: Duration = Duration::from_millis(500);

/// A closed interval without any covering lane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub start_ms: i64,
    pub end_ms: i64,
    pub reason: String,
}

/// No lane covers the shard since `since_ms`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OpenGap {
    pub since_ms: i64,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct Coverage {
    /// Lanes covering now: lane → its first frame.
    live: BTreeMap<u64, i64>,
    /// Ended lanes' spans (first, last) that a later retraction may still need.
    past: Vec<(i64, i64)>,
    open: Option<OpenGap>,
    /// A gap ended by a lane's first frame (at the `i64`), waiting for confirmation.
    closing: Option<(OpenGap, i64)>,
}

impl Coverage {
    /// `open`: a gap already open when the shard starts (a restart, an actor restart).
    pub fn new(open: Option<OpenGap>) -> Self {
        Self {
            live: BTreeMap::new(),
            past: Vec::new(),
            open,
            closing: None,
        }
    }

    /// The gap open now (also while its end awaits confirmation: until then it is not over).
    pub fn open_gap(&self) -> Option<&OpenGap> {
        self.open
            .as_ref()
            .or(self.closing.as_ref().map(|(open, _)| open))
    }

    /// The first frame on `lane` (at `first_ms`). True if it ends an open gap: call
    /// [`confirm_close`](Self::confirm_close) after [`CONFIRM_CLOSE`].
    pub fn lane_started(&mut self, lane: u64, first_ms: i64) -> bool {
        if self.live.contains_key(&lane) {
            return false;
        }
        self.live.insert(lane, first_ms);
        match self.open.take() {
            Some(open) => {
                self.closing = Some((open, first_ms));
                true
            }
            None => false,
        }
    }

    /// The gap whose end awaited confirmation, if the shard is still covered.
    pub fn confirm_close(&mut self) -> Option<Gap> {
        if self.live.is_empty() {
            return None;
        }
        self.closing.take().map(|(open, end_ms)| Gap {
            start_ms: open.since_ms,
            end_ms: end_ms.max(open.since_ms),
            reason: open.reason,
        })
    }

    /// `lane` stopped covering; its last frame was at `last_ms`. Returns the holes this
    /// uncovers between `last_ms` and `now_ms` that ended already (another lane started in
    /// them), and opens a gap if no lane covers now. A hole ended by a lane that still covers
    /// awaits confirmation like any gap's end (the flag: call [`confirm_close`](Self::confirm_close)
    /// after [`CONFIRM_CLOSE`]).
    pub fn lane_ended(
        &mut self,
        lane: u64,
        last_ms: i64,
        now_ms: i64,
        reason: &str,
    ) -> (Vec<Gap>, bool) {
        let Some(first) = self.live.remove(&lane) else {
            return (Vec::new(), false);
        };
        let last = last_ms.max(first);
        self.past.push((first, last));
        if self.live.is_empty() {
            if let Some((open, _)) = self.closing.take() {
                // The socket that ended the gap did not last: it goes on.
                self.open = Some(open);
                self.prune();
                return (Vec::new(), false);
            }
        }
        let mut spans: Vec<(i64, i64)> = self
            .past
            .iter()
            .copied()
            .chain(self.live.values().map(|first| (*first, i64::MAX)))
            .filter(|(_, end)| *end > last)
            .collect();
        spans.sort_unstable();
        let mut cursor = last;
        let mut gaps = Vec::new();
        for (start, end) in spans {
            if start >= now_ms {
                break;
            }
            if start > cursor {
                gaps.push(Gap {
                    start_ms: cursor,
                    end_ms: start,
                    reason: reason.to_string(),
                });
            }
            cursor = cursor.max(end);
        }
        if self.live.is_empty() && self.open.is_none() {
            self.open = Some(OpenGap {
                since_ms: cursor.min(now_ms),
                reason: reason.to_string(),
            });
        }
        // The last hole ended when a lane that still covers started: like any gap's end, it
        // counts once that lane proved itself.
        let mut pending = false;
        let ended_by_live = gaps
            .last()
            .is_some_and(|hole| self.live.values().any(|first| *first == hole.end_ms));
        if ended_by_live && self.closing.is_none() && self.open.is_none() {
            if let Some(hole) = gaps.pop() {
                self.closing = Some((
                    OpenGap {
                        since_ms: hole.start_ms,
                        reason: hole.reason,
                    },
                    hole.end_ms,
                ));
                pending = true;
            }
        }
        self.prune();
        (gaps, pending)
    }

    /// Past spans that no future retraction can reach are forgotten: a live lane retracts at
    /// most to its last frame, which is after its first.
    fn prune(&mut self) {
        match self.live.values().min() {
            None => self.past.clear(),
            Some(&earliest) => self.past.retain(|(_, end)| *end >= earliest),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gap(start_ms: i64, end_ms: i64, reason: &str) -> Gap {
        Gap {
            start_ms,
            end_ms,
            reason: reason.into(),
        }
    }

    #[test]
    fn one_lane_lost_and_back() {
        let mut c = Coverage::new(None);
        assert!(!c.lane_started(1, 0));
        assert!(c.lane_ended(1, 100, 150, "closed").0.is_empty());
        assert_eq!(c.open_gap().unwrap().since_ms, 100);
        assert!(c.lane_started(2, 170));
        assert_eq!(
            c.open_gap().unwrap().since_ms,
            100,
            "not over until confirmed"
        );
        assert_eq!(c.confirm_close(), Some(gap(100, 170, "closed")));
        assert!(c.open_gap().is_none());
        assert_eq!(c.confirm_close(), None);
    }

    #[test]
    fn one_of_two_legs_lost_is_no_gap() {
        let mut c = Coverage::new(None);
        c.lane_started(1, 0);
        c.lane_started(2, 1);
        assert!(c.lane_ended(1, 100, 101, "closed").0.is_empty());
        assert!(c.open_gap().is_none());
        c.lane_started(3, 120);
        assert!(c.lane_ended(2, 300, 301, "closed").0.is_empty());
        assert!(c.open_gap().is_none());
    }

    #[test]
    fn both_lost_at_once_is_one_gap_from_the_last_frame_on_either() {
        let mut c = Coverage::new(None);
        c.lane_started(1, 0);
        c.lane_started(2, 0);
        assert!(c.lane_ended(1, 100, 101, "closed").0.is_empty());
        assert!(c.lane_ended(2, 99, 101, "closed").0.is_empty());
        assert_eq!(c.open_gap().unwrap().since_ms, 100);
        assert!(c.lane_started(3, 130));
        assert!(!c.lane_started(4, 131), "one gap, closed once");
        assert_eq!(c.confirm_close(), Some(gap(100, 130, "closed")));
    }

    #[test]
    fn a_silent_lane_found_dead_late_reveals_the_hole_behind_it() {
        let mut c = Coverage::new(None);
        c.lane_started(1, 0); // leg A
        c.lane_started(2, 0); // leg B: silent after 50, nobody knows yet
        assert!(c.lane_ended(1, 100, 101, "closed").0.is_empty()); // A drops
        c.lane_started(3, 120); // A is back
                                // B's ping goes unanswered: its coverage ends at its last frame.
        assert_eq!(
            c.lane_ended(2, 50, 2000, "pong_timeout"),
            (vec![], true),
            "the hole ended when the lane that still covers started: confirmed later"
        );
        assert_eq!(c.open_gap().unwrap().since_ms, 100);
        assert_eq!(c.confirm_close(), Some(gap(100, 120, "pong_timeout")));
        assert!(c.open_gap().is_none());
    }

    #[test]
    fn the_last_lane_found_dead_opens_the_gap_at_its_last_frame() {
        let mut c = Coverage::new(None);
        c.lane_started(1, 0);
        assert!(c.lane_ended(1, 50, 2000, "pong_timeout").0.is_empty());
        assert_eq!(c.open_gap().unwrap().since_ms, 50);
    }

    #[test]
    fn a_restart_gap_is_closed_by_the_first_frame() {
        let mut c = Coverage::new(Some(OpenGap {
            since_ms: 10,
            reason: "restart".into(),
        }));
        assert!(c.lane_started(1, 500));
        assert_eq!(c.confirm_close(), Some(gap(10, 500, "restart")));
    }

    #[test]
    fn a_socket_that_does_not_last_does_not_end_the_gap() {
        let mut c = Coverage::new(None);
        c.lane_started(1, 0);
        c.lane_ended(1, 100, 101, "closed");
        // Accept, one frame, close: again and again.
        for lane in 2..50u64 {
            let t = lane as i64 * 1000;
            assert!(c.lane_started(lane, t));
            assert!(c.lane_ended(lane, t + 1, t + 2, "closed").0.is_empty());
            assert_eq!(c.open_gap().unwrap().since_ms, 100);
        }
        assert!(c.lane_started(99, 60_000));
        assert_eq!(c.confirm_close(), Some(gap(100, 60_000, "closed")));
    }

    #[test]
    fn a_hole_found_late_and_then_the_new_socket_gone_is_one_gap() {
        let mut c = Coverage::new(None);
        c.lane_started(1, 0);
        c.lane_started(2, 0);
        c.lane_ended(1, 100, 101, "closed"); // both dropped; leg A noticed first
        c.lane_started(3, 103); // A back at once
        assert_eq!(c.lane_ended(2, 100, 104, "closed"), (vec![], true));
        // ... and A's new socket is closed by the server right away.
        assert_eq!(
            c.lane_ended(3, 103, 105, "closed_by_server"),
            (vec![], false)
        );
        assert_eq!(c.open_gap().unwrap().since_ms, 100, "one gap goes on");
        c.lane_started(4, 60_000);
        assert_eq!(c.confirm_close(), Some(gap(100, 60_000, "closed")));
    }

    #[test]
    fn memory_stays_small() {
        let mut c = Coverage::new(None);
        c.lane_started(0, 0);
        for lane in 1..1000u64 {
            let t = lane as i64 * 10;
            c.lane_started(lane, t);
            c.lane_ended(lane - 1, t + 5, t + 6, "closed");
        }
        assert!(c.past.len() <= 2, "{}", c.past.len());
    }
}
