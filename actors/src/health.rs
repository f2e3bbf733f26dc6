//! The bridge's observable state, shared by the actors (writers) and the HTTP endpoints
//! (readers). Plain data behind one mutex: written a few times a second at most.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::genesys::wire::SubscribedTopic;

/// Where one shard's socket stands.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ShardPhase {
    /// Creating a channel, subscribing or connecting.
    Connecting,
    /// Subscribed and connected; frames flow.
    Streaming,
    /// Waiting for the next attempt after a failure.
    Backoff,
    /// Reading stopped (shutdown or spool full with the `block` policy).
    Paused,
}

/// One leg of a shard: one of its redundant channels and the socket on it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LegStatus {
    pub leg: usize,
    pub phase: ShardPhase,
    /// Shortened channel id.
    pub channel: Option<String>,
    pub channel_created_at: Option<DateTime<Utc>>,
    pub channel_expires_at: Option<DateTime<Utc>>,
    pub last_frame_at: Option<DateTime<Utc>>,
    pub connects: u64,
    pub rollovers: u64,
    pub losses: u64,
    pub last_error: Option<String>,
}

impl LegStatus {
    pub fn new(leg: usize) -> Self {
        Self {
            leg,
            phase: ShardPhase::Connecting,
            channel: None,
            channel_created_at: None,
            channel_expires_at: None,
            last_frame_at: None,
            connects: 0,
            rollovers: 0,
            losses: 0,
            last_error: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ShardStatus {
    pub shard: u32,
    /// Streaming while at least one leg streams.
    pub phase: ShardPhase,
    /// Legs (redundant channels) of this shard: 1 or 2.
    pub redundancy: usize,
    pub legs: Vec<LegStatus>,
    /// What the merge of the legs keys copies by: `correlation_id` (topic, body and
    /// CorrelationId, while the channels agree on it) or `topic_and_body` (once they are seen to
    /// disagree).
    pub merge_keying: &'static str,
    /// Since when no leg covers the shard (a gap is open), if one is.
    pub gap_open_since: Option<DateTime<Utc>>,
    pub topic_count: usize,
    pub rejected_topics: Vec<SubscribedTopic>,
    /// Shortened channel id (never the full id: it is the socket's credential).
    pub channel: Option<String>,
    pub channel_created_at: Option<DateTime<Utc>>,
    pub channel_expires_at: Option<DateTime<Utc>>,
    pub last_frame_at: Option<DateTime<Utc>>,
    pub last_event_at: Option<DateTime<Utc>>,
    pub connects: u64,
    pub rollovers: u64,
    pub last_error: Option<String>,
}

impl ShardStatus {
    pub fn new(shard: u32, topic_count: usize) -> Self {
        Self {
            shard,
            phase: ShardPhase::Connecting,
            redundancy: 1,
            legs: Vec::new(),
            merge_keying: "correlation_id",
            gap_open_since: None,
            topic_count,
            rejected_topics: Vec::new(),
            channel: None,
            channel_created_at: None,
            channel_expires_at: None,
            last_frame_at: None,
            last_event_at: None,
            connects: 0,
            rollovers: 0,
            last_error: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct TokenStatus {
    pub expires_at: Option<DateTime<Utc>>,
    pub refreshed_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct KafkaStatus {
    pub last_ack_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    /// Set while producers keep failing fatally (refused credentials or ACLs, fenced): since
    /// when, and the last such error. Cleared by the next acknowledgement.
    pub failing_since: Option<DateTime<Utc>>,
    pub fatal_error: Option<String>,
    /// Fresh producers made after fatal errors since start.
    pub producer_restarts: u64,
    pub produced: u64,
    pub dead_lettered: u64,
    pub in_flight: u64,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct SpoolStatus {
    pub bytes: u64,
    pub records: u64,
    pub oldest_unacked_age_seconds: Option<f64>,
    pub full: bool,
    pub dropped: u64,
    /// The disk reserve of the spool directory: `armed`, `in_use` (the disk was full: released
    /// for the bridge's own records, events refused until it is allocated again) or `absent`.
    pub disk_reserve: &'static str,
}

/// Everything `/status` shows and `/readyz` decides on.
#[derive(Debug, Clone, Serialize, Default)]
pub struct HealthSnapshot {
    pub started_at: Option<DateTime<Utc>>,
    pub shards: Vec<ShardStatus>,
    pub token: TokenStatus,
    pub kafka: KafkaStatus,
    pub spool: SpoolStatus,
    pub restarts: BTreeMap<String, u64>,
    pub topics_expanded_at: Option<DateTime<Utc>>,
    pub shutting_down: bool,
}

impl HealthSnapshot {
    /// Why the bridge is not ready, or `None` when it is: a valid token, every shard streaming,
    /// room in the spool. Kafka being down does not make it unready: the spool holds events.
    pub fn not_ready_reason(&self, now: DateTime<Utc>) -> Option<String> {
        if self.shutting_down {
            return Some("shutting down".into());
        }
        match self.token.expires_at {
            None => {
                let detail = self.token.last_error.clone().unwrap_or_default();
                return Some(format!("no access token yet {detail}").trim().to_string());
            }
            Some(expiry) if expiry <= now => return Some("access token expired".into()),
            Some(_) => {}
        }
        if self.shards.is_empty() {
            return Some("topics not expanded yet".into());
        }
        let not_streaming: Vec<String> = self
            .shards
            .iter()
            .filter(|s| s.phase != ShardPhase::Streaming)
            .map(|s| format!("shard {} is {:?}", s.shard, s.phase).to_lowercase())
            .collect();
        if !not_streaming.is_empty() {
            return Some(not_streaming.join(", "));
        }
        if self.spool.disk_reserve == "in_use" {
            return Some(
                "disk full: events are refused until Kafka acknowledges and segments are deleted"
                    .into(),
            );
        }
        if self.spool.full {
            return Some("spool is full".into());
        }
        if let Some(since) = self.kafka.failing_since {
            // Not an outage (that leaves it ready): Kafka refuses this producer for good
            // until someone fixes credentials or ACLs.
            let error = self.kafka.fatal_error.as_deref().unwrap_or("unknown");
            return Some(format!(
                "Kafka refuses the producer since {}: {error}",
                since.to_rfc3339()
            ));
        }
        None
    }
}

/// Shared handle on the health state.
#[derive(Clone, Default)]
pub struct Health {
    state: Arc<Mutex<HealthSnapshot>>,
    /// Epoch ms of the last Kafka acknowledgement; an atomic because it changes per record.
    last_ack_ms: Arc<AtomicI64>,
}

impl Health {
    pub fn lock(&self) -> MutexGuard<'_, HealthSnapshot> {
        // A panic while holding this lock leaves plain data behind: keep serving it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn snapshot(&self) -> HealthSnapshot {
        let mut snapshot = self.lock().clone();
        let last_ack_ms = self.last_ack_ms.load(Ordering::Relaxed);
        if last_ack_ms > 0 {
            snapshot.kafka.last_ack_at = DateTime::from_timestamp_millis(last_ack_ms);
        }
        snapshot
    }

    pub fn record_ack(&self, at_ms: i64) {
        self.last_ack_ms.store(at_ms, Ordering::Relaxed);
    }

    /// Epoch ms of the last Kafka acknowledgement (0: none yet).
    pub fn last_ack_ms(&self) -> i64 {
        self.last_ack_ms.load(Ordering::Relaxed)
    }

    /// Forgets a shard that no longer exists.
    pub fn remove_shard(&self, shard: u32) {
        self.lock().shards.retain(|s| s.shard != shard);
    }

    /// Runs `update` on one shard's status, creating it if needed.
    pub fn shard(&self, shard: u32, update: impl FnOnce(&mut ShardStatus)) {
        let mut state = self.lock();
        if let Some(existing) = state.shards.iter_mut().find(|s| s.shard == shard) {
            update(existing);
            return;
        }
        let mut fresh = ShardStatus::new(shard, 0);
        update(&mut fresh);
        state.shards.push(fresh);
        state.shards.sort_by_key(|s| s.shard);
    }
}
