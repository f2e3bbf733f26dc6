//! The missed log: events the simulator published on a topic a live channel is subscribed to,
//! but could not hand to that channel's socket (no socket, silenced, being dropped, too slow).
//!
//! Together with the ledger it accounts for every published event on every subscribed live
//! channel: each (channel, event) ends up in exactly one of the two. The frame text is the very
//! `Arc<str>` queued for the other channels, so it is byte-identical to what they received.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::link::Outgoing;

/// Why an event was not handed to a subscribed channel's socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum MissReason {
    /// The channel had no connected socket.
    NoSocket,
    /// The socket was silenced (the `silence` fault).
    Silenced,
    /// The socket was being closed or dropped (`drop_socket`, superseded by a new connection,
    /// channel death, `no_longer_subscribed`, the client went away) and the event, queued or
    /// about to be sent, was discarded unsent.
    SocketDropped,
    /// The socket's queue was full (`socket_buffer_frames`): this event made the simulator drop
    /// the socket as too slow.
    TooSlow,
}

/// One event a subscribed, live channel missed.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MissedEntry {
    /// Position in the missed log, increasing by one per entry (gaps mean trimmed history).
    pub seq: u64,
    pub channel_id: String,
    pub topic: String,
    /// The exact text that would have been sent (identical to the copies other channels got).
    pub frame: Arc<str>,
    /// `metadata.CorrelationId` of the frame.
    pub correlation_id: Option<Arc<str>>,
    /// When the simulator gave up on handing it over.
    pub at: DateTime<Utc>,
    /// `at` in epoch milliseconds.
    pub at_ms: i64,
    pub reason: MissReason,
}

#[derive(Default)]
struct Inner {
    entries: VecDeque<MissedEntry>,
    next_seq: u64,
}

/// Shared, append-only (optionally bounded) record of missed events.
pub(crate) struct MissedLog {
    inner: Mutex<Inner>,
    capacity: Option<usize>,
}

impl MissedLog {
    pub fn new(capacity: Option<usize>) -> Self {
        MissedLog {
            inner: Mutex::new(Inner::default()),
            capacity,
        }
    }

    /// Records that `channel_id` missed `out`.
    pub fn record(&self, channel_id: &str, out: &Outgoing, reason: MissReason) {
        self.record_all(channel_id, std::iter::once(out), reason);
    }

    /// Records that `channel_id` missed these events, in order.
    pub fn record_all<'a>(
        &self,
        channel_id: &str,
        outs: impl IntoIterator<Item = &'a Outgoing>,
        reason: MissReason,
    ) {
        let now = Utc::now();
        let now_ms = now.timestamp_millis();
        let mut inner = self.inner.lock().expect("missed lock");
        for out in outs {
            let seq = inner.next_seq;
            inner.next_seq += 1;
            inner.entries.push_back(MissedEntry {
                seq,
                channel_id: channel_id.to_owned(),
                topic: out.topic.to_string(),
                frame: out.frame.clone(),
                correlation_id: Some(out.correlation_id.clone()),
                at: now,
                at_ms: now_ms,
                reason,
            });
        }
        if let Some(cap) = self.capacity {
            while inner.entries.len() > cap {
                inner.entries.pop_front();
            }
        }
    }

    /// Entries with `seq >= since`, filtered.
    pub fn snapshot(&self, since: u64, filter: impl Fn(&MissedEntry) -> bool) -> Vec<MissedEntry> {
        let inner = self.inner.lock().expect("missed lock");
        let start = inner.entries.partition_point(|e| e.seq < since);
        inner
            .entries
            .range(start..)
            .filter(|e| filter(e))
            .cloned()
            .collect()
    }

    /// Number of entries recorded so far (including trimmed ones).
    pub fn total(&self) -> u64 {
        self.inner.lock().expect("missed lock").next_seq
    }

    /// Counts entries matching the filter without cloning them.
    pub fn count(&self, filter: impl Fn(&MissedEntry) -> bool) -> usize {
        let inner = self.inner.lock().expect("missed lock");
        inner.entries.iter().filter(|e| filter(e)).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(frame: &str) -> Outgoing {
        Outgoing {
            topic: Arc::from("t"),
            frame: Arc::from(frame),
            correlation_id: Arc::from("corr"),
        }
    }

    #[test]
    fn records_in_order_and_trims_to_capacity() {
        let log = MissedLog::new(Some(2));
        log.record("c1", &out("a"), MissReason::NoSocket);
        log.record_all("c2", [&out("b"), &out("c")], MissReason::Silenced);
        let all = log.snapshot(0, |_| true);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].seq, 1);
        assert_eq!(&*all[1].frame, "c");
        assert_eq!(all[1].channel_id, "c2");
        assert_eq!(all[1].reason, MissReason::Silenced);
        assert_eq!(all[1].at_ms, all[1].at.timestamp_millis());
        assert_eq!(log.total(), 3);
        assert_eq!(log.snapshot(2, |_| true).len(), 1);
        assert_eq!(log.count(|e| e.reason == MissReason::NoSocket), 0);
        let json = serde_json::to_value(&all[1]).unwrap();
        assert_eq!(json["reason"], "silenced");
        assert_eq!(json["channelId"], "c2");
        assert_eq!(json["correlationId"], "corr");
    }
}
