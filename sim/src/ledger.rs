//! The ledger: every frame the simulator handed to a socket, on which channel, and when.
//!
//! A frame enters the ledger only after the socket's writer accepted it. A frame that could not
//! be handed over (socket gone, silenced, dropped as too slow) is not in the ledger, exactly as
//! Genesys loses events sent while no socket is open. Tests compare what reached Kafka with it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Serialize, Serializer};

/// What kind of frame a ledger entry records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FrameKind {
    /// A notification on a subscribed topic (conversation, detail, observation, burst).
    Event,
    /// The periodic `channel.metadata` "WebSocket Heartbeat".
    Heartbeat,
    /// The `channel.metadata` "pong" answering a `{"message":"ping"}`.
    Pong,
    /// A `v2.system.*` frame (`socket_closing`, `token_revoked`).
    System,
    /// A deliberately broken frame sent by fault injection.
    Malformed,
}

/// One frame sent on one channel's socket.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LedgerEntry {
    /// Position in the ledger, increasing by one per entry (gaps mean trimmed history only).
    pub seq: u64,
    pub channel_id: String,
    /// `topicName` of the frame (`channel.metadata` for heartbeats and pongs; best guess for
    /// malformed frames).
    pub topic: String,
    pub kind: FrameKind,
    /// The exact text sent. For a binary frame: its bytes decoded as lossy UTF-8.
    pub frame: Arc<str>,
    /// The exact bytes of a binary frame (base64 in JSON), `None` for text frames.
    #[serde(serialize_with = "ser_bytes")]
    pub binary: Option<Bytes>,
    /// `metadata.CorrelationId` of the frame, when it has one.
    pub correlation_id: Option<Arc<str>>,
    pub sent_at: DateTime<Utc>,
    /// `sent_at` in epoch milliseconds.
    pub sent_at_ms: i64,
}

fn ser_bytes<S: Serializer>(bytes: &Option<Bytes>, s: S) -> Result<S::Ok, S::Error> {
    use base64::Engine as _;
    match bytes {
        Some(b) => s.serialize_some(&base64::engine::general_purpose::STANDARD.encode(b)),
        None => s.serialize_none(),
    }
}

/// A frame about to be recorded (the ledger assigns `seq` and the timestamp).
#[derive(Clone, Debug)]
pub(crate) struct Sent {
    pub topic: Arc<str>,
    pub kind: FrameKind,
    pub frame: Arc<str>,
    pub binary: Option<Bytes>,
    pub correlation_id: Option<Arc<str>>,
}

#[derive(Default)]
struct Inner {
    entries: VecDeque<LedgerEntry>,
    next_seq: u64,
}

/// Shared, append-only (optionally bounded) record of sent frames.
pub(crate) struct Ledger {
    inner: Mutex<Inner>,
    capacity: Option<usize>,
}

impl Ledger {
    pub fn new(capacity: Option<usize>) -> Self {
        Ledger {
            inner: Mutex::new(Inner::default()),
            capacity,
        }
    }

    /// Records frames that were just handed to `channel_id`'s socket, in order.
    pub fn record(&self, channel_id: &str, sent: impl IntoIterator<Item = Sent>) {
        let now = Utc::now();
        let now_ms = now.timestamp_millis();
        let mut inner = self.inner.lock().expect("ledger lock");
        for s in sent {
            let seq = inner.next_seq;
            inner.next_seq += 1;
            inner.entries.push_back(LedgerEntry {
                seq,
                channel_id: channel_id.to_owned(),
                topic: s.topic.to_string(),
                kind: s.kind,
                frame: s.frame,
                binary: s.binary,
                correlation_id: s.correlation_id,
                sent_at: now,
                sent_at_ms: now_ms,
            });
        }
        if let Some(cap) = self.capacity {
            while inner.entries.len() > cap {
                inner.entries.pop_front();
            }
        }
    }

    /// Entries with `seq >= since`, filtered.
    pub fn snapshot(&self, since: u64, filter: impl Fn(&LedgerEntry) -> bool) -> Vec<LedgerEntry> {
        let inner = self.inner.lock().expect("ledger lock");
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
        self.inner.lock().expect("ledger lock").next_seq
    }

    /// Counts entries matching the filter without cloning them.
    pub fn count(&self, filter: impl Fn(&LedgerEntry) -> bool) -> usize {
        let inner = self.inner.lock().expect("ledger lock");
        inner.entries.iter().filter(|e| filter(e)).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(kind: FrameKind, text: &str) -> Sent {
        Sent {
            topic: Arc::from("t"),
            kind,
            frame: Arc::from(text),
            binary: None,
            correlation_id: None,
        }
    }

    #[test]
    fn records_in_order_and_trims_to_capacity() {
        let ledger = Ledger::new(Some(2));
        ledger.record(
            "c1",
            [sent(FrameKind::Event, "a"), sent(FrameKind::Heartbeat, "b")],
        );
        ledger.record("c2", [sent(FrameKind::Event, "c")]);
        let all = ledger.snapshot(0, |_| true);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].seq, 1);
        assert_eq!(&*all[1].frame, "c");
        assert_eq!(all[1].channel_id, "c2");
        assert_eq!(ledger.total(), 3);
        assert_eq!(ledger.snapshot(2, |_| true).len(), 1);
        assert_eq!(ledger.count(|e| e.kind == FrameKind::Event), 1);
    }
}
