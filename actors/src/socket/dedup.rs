//! Delivering once what two overlapping sockets both received.
//!
//! During a make-before-break rollover the old and the new channel are both subscribed, so an
//! event can arrive on both. Genesys gives no unique event id (`CorrelationId` uniqueness is not
//! documented), so events are identified by a hash of (topic, eventBody, CorrelationId): two
//! channels carry the same event with the same CorrelationId, while two *different* events can
//! have identical bodies (a snapshot re-sent without visible change) and must both be delivered.
//! Where CorrelationId is missing, (topic, eventBody) alone identifies the event. An event is a
//! duplicate only if the same hash was seen on *another* connection: repeats on one socket are
//! real events.
//! The table only exists from the start of a rollover until `window` after it ended, and holds
//! at most `capacity` entries, so steady streaming pays nothing and memory stays bounded.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::value::RawValue;

#[derive(Deserialize)]
struct TopicAndBody<'a> {
    #[serde(rename = "topicName", borrow)]
    topic_name: &'a RawValue,
    #[serde(rename = "eventBody", borrow, default)]
    event_body: Option<&'a RawValue>,
    #[serde(borrow, default)]
    metadata: Option<MetadataRef<'a>>,
}

#[derive(Deserialize)]
struct MetadataRef<'a> {
    #[serde(rename = "CorrelationId", borrow, default)]
    correlation_id: Option<&'a RawValue>,
}

/// The identity of an event: a hash of its topic, its body as received and its CorrelationId.
pub fn event_identity(frame: &[u8]) -> Option<u64> {
    let parsed: TopicAndBody<'_> = serde_json::from_slice(frame).ok()?;
    let mut hasher = DefaultHasher::new();
    parsed.topic_name.get().hash(&mut hasher);
    parsed.event_body.map(RawValue::get).hash(&mut hasher);
    parsed
        .metadata
        .and_then(|m| m.correlation_id)
        .map(RawValue::get)
        .hash(&mut hasher);
    Some(hasher.finish())
}

pub struct Dedup {
    capacity: usize,
    window: Duration,
    /// When the table may be dropped; `None` while a rollover is in progress.
    active_until: Option<Instant>,
    active: bool,
    seen: HashMap<u64, u64>,
    order: VecDeque<(u64, Instant)>,
}

impl Dedup {
    pub fn new(capacity: usize, window: Duration) -> Self {
        Self {
            capacity,
            window,
            active_until: None,
            active: false,
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// A rollover starts: remember events from now on.
    pub fn begin_overlap(&mut self) {
        self.active = true;
        self.active_until = None;
    }

    /// The rollover ended (either way): keep remembering for `window`, then forget.
    pub fn end_overlap(&mut self, now: Instant) {
        if self.active {
            self.active_until = Some(now + self.window);
        }
    }

    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Records an event seen on connection `conn`; true if it was already seen on another one.
    pub fn is_duplicate(&mut self, identity: u64, conn: u64, now: Instant) -> bool {
        if let Some(until) = self.active_until {
            if now >= until {
                self.active = false;
                self.active_until = None;
                self.seen.clear();
                self.order.clear();
            }
        }
        if !self.active {
            return false;
        }
        if let Some(first_conn) = self.seen.get(&identity) {
            return *first_conn != conn;
        }
        while self.order.len() >= self.capacity {
            if let Some((old, _)) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.seen.insert(identity, conn);
        self.order.push_back((identity, now));
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &[u8] = br#"{"topicName":"v2.users.u.conversations","eventBody":{"id":"c","n":1},"metadata":{"CorrelationId":"x"}}"#;
    const A_OTHER_META: &[u8] = br#"{"topicName":"v2.users.u.conversations","eventBody":{"id":"c","n":1},"metadata":{"CorrelationId":"y"}}"#;
    const B: &[u8] = br#"{"topicName":"v2.users.u.conversations","eventBody":{"id":"c","n":2}}"#;

    #[test]
    fn identity_covers_topic_body_and_correlation_id() {
        assert_eq!(event_identity(A), event_identity(A));
        assert_ne!(
            event_identity(A),
            event_identity(A_OTHER_META),
            "same body, another CorrelationId: another event"
        );
        assert_ne!(event_identity(A), event_identity(B));
        assert_eq!(event_identity(b"not json"), None);
        let spaced = br#"{"topicName":"v2.users.u.conversations", "eventBody":{"id":"c","n":1},"metadata":{"CorrelationId":"x"}}"#;
        assert_eq!(
            event_identity(A),
            event_identity(spaced),
            "envelope whitespace is not identity"
        );
    }

    #[test]
    fn duplicates_only_across_connections_and_only_during_overlap() {
        let now = Instant::now();
        let mut dedup = Dedup::new(10, Duration::from_secs(5));
        let a = event_identity(A).unwrap();
        assert!(!dedup.is_duplicate(a, 1, now), "inactive table never drops");
        dedup.begin_overlap();
        assert!(!dedup.is_duplicate(a, 1, now));
        assert!(
            !dedup.is_duplicate(a, 1, now),
            "a repeat on one socket is a real event"
        );
        assert!(dedup.is_duplicate(a, 2, now));
        dedup.end_overlap(now);
        assert!(dedup.is_duplicate(a, 2, now + Duration::from_secs(4)));
        assert!(!dedup.is_duplicate(a, 2, now + Duration::from_secs(6)));
        assert!(!dedup.is_active());
    }

    #[test]
    fn memory_is_bounded() {
        let now = Instant::now();
        let mut dedup = Dedup::new(3, Duration::from_secs(5));
        dedup.begin_overlap();
        for identity in 0..10 {
            dedup.is_duplicate(identity, 1, now);
        }
        assert_eq!(dedup.seen.len(), 3);
        assert!(
            !dedup.is_duplicate(0, 2, now),
            "evicted entries are forgotten"
        );
        assert!(dedup.is_duplicate(9, 2, now));
    }
}
