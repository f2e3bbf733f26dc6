//! The published log: every event frame the simulator published (conversation model and
//! `burst` fault), whether or not any channel was subscribed to its topic or had a socket.
//!
//! It is the ground truth the ledger and the missed log are measured against: the frame text is
//! the very `Arc<str>` queued for every subscribed channel, so it is byte-identical to what the
//! ledger (or the missed log) records for that event. Heartbeats, pongs, system and malformed
//! frames are not published events.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Who published an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PublishSource {
    /// The conversation model (snapshots, detail events, queue observations).
    Model,
    /// The `burst` fault (frames built for one socket; see [`PublishedEntry::channel_id`]).
    Burst,
}

/// One published event frame.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishedEntry {
    /// Position in the published log, increasing by one per entry (gaps mean trimmed history).
    pub seq: u64,
    /// The Genesys topic name (`topicName` of the frame).
    pub topic: String,
    /// The simulator's wall clock at publication, in epoch milliseconds.
    pub published_at_ms: i64,
    /// `published_at_ms` as a timestamp.
    pub published_at: DateTime<Utc>,
    /// The exact text a subscribed socket receives (byte-identical to the ledger's copy).
    pub frame: Arc<str>,
    /// `metadata.CorrelationId` of the frame.
    pub correlation_id: Arc<str>,
    pub source: PublishSource,
    /// For a burst: the channel whose socket it was built for; `None` for model events.
    pub channel_id: Option<String>,
}

#[derive(Default)]
struct Inner {
    entries: VecDeque<PublishedEntry>,
    next_seq: u64,
}

/// Shared, append-only (optionally bounded) record of published events.
pub(crate) struct PublishedLog {
    inner: Mutex<Inner>,
    capacity: Option<usize>,
}

impl PublishedLog {
    pub fn new(capacity: Option<usize>) -> Self {
        PublishedLog {
            inner: Mutex::new(Inner::default()),
            capacity,
        }
    }

    /// Records frames published now, in order: `(topic, frame, correlation_id)`.
    pub fn record<'a>(
        &self,
        source: PublishSource,
        channel_id: Option<&str>,
        frames: impl IntoIterator<Item = (&'a str, &'a Arc<str>, &'a Arc<str>)>,
    ) {
        let now = Utc::now();
        let now_ms = now.timestamp_millis();
        let mut inner = self.inner.lock().expect("published lock");
        for (topic, frame, correlation_id) in frames {
            let seq = inner.next_seq;
            inner.next_seq += 1;
            inner.entries.push_back(PublishedEntry {
                seq,
                topic: topic.to_owned(),
                published_at_ms: now_ms,
                published_at: now,
                frame: frame.clone(),
                correlation_id: correlation_id.clone(),
                source,
                channel_id: channel_id.map(str::to_owned),
            });
        }
        if let Some(cap) = self.capacity {
            while inner.entries.len() > cap {
                inner.entries.pop_front();
            }
        }
    }

    /// Entries with `seq >= since`, filtered.
    pub fn snapshot(
        &self,
        since: u64,
        filter: impl Fn(&PublishedEntry) -> bool,
    ) -> Vec<PublishedEntry> {
        let inner = self.inner.lock().expect("published lock");
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
        self.inner.lock().expect("published lock").next_seq
    }

    /// Counts entries matching the filter without cloning them.
    pub fn count(&self, filter: impl Fn(&PublishedEntry) -> bool) -> usize {
        let inner = self.inner.lock().expect("published lock");
        inner.entries.iter().filter(|e| filter(e)).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_in_order_and_trims_to_capacity() {
        let log = PublishedLog::new(Some(2));
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = (Arc::from("a"), "b".into(), "c".into());
        let corr: Arc<str> = Arc::from("corr");
        log.record(PublishSource::Model, None, [("t1", &a, &corr)]);
        log.record(
            PublishSource::Burst,
            Some("ch"),
            [("t2", &b, &corr), ("t2", &c, &corr)],
        );
        let all = log.snapshot(0, |_| true);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].seq, 1);
        assert_eq!(&*all[1].frame, "c");
        assert_eq!(all[1].channel_id.as_deref(), Some("ch"));
        assert_eq!(
            all[1].published_at_ms,
            all[1].published_at.timestamp_millis()
        );
        assert_eq!(log.total(), 3);
        assert_eq!(log.snapshot(2, |_| true).len(), 1);
        assert_eq!(log.count(|e| e.source == PublishSource::Model), 0);
        let json = serde_json::to_value(&all[1]).unwrap();
        assert_eq!(json["source"], "burst");
        assert_eq!(json["topic"], "t2");
        assert_eq!(json["correlationId"], "corr");
        assert!(json["publishedAtMs"].is_i64());
    }
}
