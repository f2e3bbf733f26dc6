//! The channel log: every lifecycle event of every notification channel (created, died, socket
//! attached, socket detached), with per-client counters that are never trimmed (the most live
//! channels a client held at once, evictions of channels that had a socket).
//!
//! It lives inside the channel registry (under its lock), so its order is the order in which
//! the registry changed.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::channels::ChannelDeath;

/// One channel lifecycle event (see [`crate::SimHandle::channel_log`]).
///
/// JSON: `{"seq","at","atMs","channelId","clientId","event":"created"|"died"|
/// "socket_attached"|"socket_detached", …the event's fields}`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelLogEntry {
    /// Position in the channel log, increasing by one per entry (gaps mean trimmed history).
    pub seq: u64,
    pub at: DateTime<Utc>,
    /// `at` in epoch milliseconds.
    pub at_ms: i64,
    pub channel_id: String,
    /// The OAuth client that owns the channel.
    pub client_id: String,
    #[serde(flatten)]
    pub event: ChannelEvent,
}

/// What happened to the channel.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(
    tag = "event",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
#[non_exhaustive]
pub enum ChannelEvent {
    /// `POST /api/v2/notifications/channels` created it (after any eviction it caused).
    Created {
        /// The access token that created it.
        token: String,
        /// End of its lifetime (the `expires` of the answer).
        expires: DateTime<Utc>,
        expires_ms: i64,
    },
    /// It died. `had_socket`: a socket was attached at that moment (it then got a close frame;
    /// a `socket_detached` entry with cause `channel_died` follows).
    Died {
        reason: ChannelDeath,
        had_socket: bool,
    },
    /// A WebSocket upgrade to it was accepted (101). `conn_id` identifies the connection.
    SocketAttached { conn_id: u64 },
    /// The socket stopped being the channel's socket.
    SocketDetached { conn_id: u64, cause: DetachCause },
}

/// Why a socket was detached from its channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DetachCause {
    /// The connection ended by itself: the client closed it or went away, a read error, or
    /// the simulator dropped it as too slow.
    ConnectionEnded,
    /// The `drop_socket` fault.
    Dropped,
    /// A newer connection to the same channel replaced it.
    Superseded,
    /// The `no_longer_subscribed` fault.
    NoLongerSubscribed,
    /// The channel died (see the `died` entry just before).
    ChannelDied,
    /// The `accept_then_close` fault: accepted, then closed at once.
    AcceptThenClose,
}

/// The log and its never-trimmed counters.
pub(crate) struct ChannelLog {
    entries: VecDeque<ChannelLogEntry>,
    next_seq: u64,
    capacity: Option<usize>,
    /// client id → the most live channels it held at once.
    max_live: HashMap<String, usize>,
    /// client id → channels evicted while a socket was attached.
    live_evictions: HashMap<String, usize>,
}

impl ChannelLog {
    pub fn new(capacity: Option<usize>) -> Self {
        ChannelLog {
            entries: VecDeque::new(),
            next_seq: 0,
            capacity,
            max_live: HashMap::new(),
            live_evictions: HashMap::new(),
        }
    }

    pub fn push(&mut self, channel_id: &str, client_id: &str, event: ChannelEvent) {
        if let ChannelEvent::Died {
            reason: ChannelDeath::Evicted,
            had_socket: true,
        } = event
        {
            *self.live_evictions.entry(client_id.to_owned()).or_default() += 1;
        }
        let at = Utc::now();
        let seq = self.next_seq;
        self.next_seq += 1;
        self.entries.push_back(ChannelLogEntry {
            seq,
            at,
            at_ms: at.timestamp_millis(),
            channel_id: channel_id.to_owned(),
            client_id: client_id.to_owned(),
            event,
        });
        if let Some(cap) = self.capacity {
            while self.entries.len() > cap {
                self.entries.pop_front();
            }
        }
    }

    /// Notes that `client_id` now holds `live` live channels.
    pub fn note_live(&mut self, client_id: &str, live: usize) {
        let max = self.max_live.entry(client_id.to_owned()).or_default();
        *max = (*max).max(live);
    }

    pub fn max_live(&self, client_id: &str) -> usize {
        self.max_live.get(client_id).copied().unwrap_or(0)
    }

    pub fn live_evictions(&self, client_id: &str) -> usize {
        self.live_evictions.get(client_id).copied().unwrap_or(0)
    }

    /// Entries with `seq >= since`, filtered.
    pub fn snapshot(
        &self,
        since: u64,
        filter: impl Fn(&ChannelLogEntry) -> bool,
    ) -> Vec<ChannelLogEntry> {
        let start = self.entries.partition_point(|e| e.seq < since);
        self.entries
            .range(start..)
            .filter(|e| filter(e))
            .cloned()
            .collect()
    }

    pub fn total(&self) -> u64 {
        self.next_seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_flat_with_an_event_tag_and_counts() {
        let mut log = ChannelLog::new(Some(2));
        log.push("a", "c", ChannelEvent::SocketAttached { conn_id: 1 });
        log.push(
            "a",
            "c",
            ChannelEvent::Died {
                reason: ChannelDeath::Evicted,
                had_socket: true,
            },
        );
        log.push(
            "a",
            "c",
            ChannelEvent::SocketDetached {
                conn_id: 1,
                cause: DetachCause::ChannelDied,
            },
        );
        log.note_live("c", 3);
        log.note_live("c", 2);
        assert_eq!(log.max_live("c"), 3);
        assert_eq!(log.live_evictions("c"), 1);
        assert_eq!(log.live_evictions("other"), 0);
        let all = log.snapshot(0, |_| true);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].seq, 1);
        assert_eq!(log.total(), 3);
        let json = serde_json::to_value(&all[0]).unwrap();
        assert_eq!(json["event"], "died");
        assert_eq!(json["reason"], "evicted");
        assert_eq!(json["hadSocket"], true);
        assert_eq!(json["channelId"], "a");
        assert_eq!(json["clientId"], "c");
        let json = serde_json::to_value(&all[1]).unwrap();
        assert_eq!(json["event"], "socket_detached");
        assert_eq!(json["cause"], "channel_died");
        assert_eq!(json["connId"], 1);
    }
}
