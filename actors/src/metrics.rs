//! Prometheus metrics of the bridge. Labels are bounded: shard numbers, actor names, reasons and
//! kinds from fixed sets; never a conversation id or a topic name of the org.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabel {
    pub shard: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LegLabel {
    pub shard: String,
    pub leg: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LifecycleLabel {
    /// `conversation.started`, `conversation.ended`, `conversation.wrapup`.
    pub kind: String,
    /// `stream`, `backfill`, `reconciliation`.
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActorLabel {
    pub actor: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    pub version: String,
}

/// The `actor` label of every supervised actor (`ChildId::label`): `actor_restarts` starts at 0
/// for each, so that an alert on `increase()` sees the first restart (a series that appears at 1
/// has no increase).
pub const ACTORS: [&str; 6] = [
    "producer",
    "token",
    "heartbeat",
    "backfill",
    "reconcile",
    "socket",
];

/// Dead-letter destinations (`reason` of `dead_letters`): the dead-letter topic, the local file,
/// and records the file could not take either.
pub const DEAD_LETTER_DESTINATIONS: [&str; 3] = ["topic", "file", "file_failed"];

/// `frames_received` by kind, registered once: the per-frame path increments an atomic, with no
/// label to build or family lock to take.
#[derive(Clone)]
pub struct FrameCounters {
    pub event: Counter,
    pub heartbeat: Counter,
    pub pong: Counter,
    pub metadata: Counter,
    pub socket_closing: Counter,
    pub channel_invalidated: Counter,
    pub system: Counter,
    pub malformed: Counter,
}

/// Every metric the bridge exports.
pub struct Metrics {
    pub registry: Registry,
    pub frames_received: Family<KindLabel, Counter>,
    pub frames_malformed: Counter,
    pub events_appended: Counter,
    pub events_produced: Counter,
    pub events_failed: Family<ReasonLabel, Counter>,
    pub dead_letters: Family<ReasonLabel, Counter>,
    pub duplicates_suppressed: Counter,
    pub duplicates_late: Counter,
    pub leg_up: Family<LegLabel, Gauge>,
    pub leg_losses: Family<ReasonLabel, Counter>,
    pub channels_held: Gauge,
    pub connects_throttled: Counter,
    pub delivery_latency: Histogram,
    pub reconnects: Family<ReasonLabel, Counter>,
    pub rollovers: Family<ReasonLabel, Counter>,
    pub gaps: Counter,
    pub gap_seconds: Counter<f64, AtomicU64>,
    pub heartbeat_age: Family<ShardLabel, Gauge<f64, AtomicU64>>,
    pub channel_age: Family<ShardLabel, Gauge<f64, AtomicU64>>,
    pub token_seconds_to_expiry: Gauge<f64, AtomicU64>,
    pub token_refreshes: Family<ReasonLabel, Counter>,
    pub rest_errors: Family<ReasonLabel, Counter>,
    pub topics_rejected: Gauge,
    pub topics_subscribed: Gauge,
    pub actor_restarts: Family<ActorLabel, Counter>,
    pub mailbox_rejections: Family<ActorLabel, Counter>,
    pub spool_bytes: Gauge,
    pub spool_records: Gauge,
    pub spool_oldest_age: Gauge<f64, AtomicU64>,
    pub spool_dropped: Counter,
    pub spool_fsync_seconds_max: Gauge<f64, AtomicU64>,
    pub spool_corrupt_cut: Counter,
    pub spool_disk_reserve_in_use: Gauge,
    pub in_flight: Gauge,
    pub in_flight_bytes: Gauge,
    pub retries_waiting: Gauge,
    pub producer_purges: Counter,
    pub producer_restarts: Counter,
    pub producer_failing: Gauge,
    pub gaps_backfilled: Counter,
    pub backfill_conversations: Counter,
    pub backfill_requests: Counter,
    pub backfill_failures: Counter,
    pub conversations_open: Gauge,
    pub conversations_known: Gauge,
    pub lifecycle_records: Family<LifecycleLabel, Counter>,
    pub conversations_abandoned: Counter,
    pub lifecycle_checkpoint_failures: Counter,
    pub lifecycle_checkpoint_age: Gauge<f64, AtomicU64>,
    pub reconciliation_runs: Counter,
    pub reconciliation_requests: Counter,
    pub reconciliation_failures: Counter,
    pub reconciliation_findings: Family<KindLabel, Counter>,
    pub reconciliation_watched: Gauge,
    pub ready: Gauge,
    pub shard_streaming: Family<ShardLabel, Gauge>,
    pub spool_capacity: Gauge,
    pub build_info: Family<VersionLabel, Gauge>,
    pub start_time: Gauge<f64, AtomicU64>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("genesys_bridge");
        let metrics = Self {
            frames_received: Family::default(),
            frames_malformed: Counter::default(),
            events_appended: Counter::default(),
            events_produced: Counter::default(),
            events_failed: Family::default(),
            dead_letters: Family::default(),
            duplicates_suppressed: Counter::default(),
            duplicates_late: Counter::default(),
            leg_up: Family::default(),
            leg_losses: Family::default(),
            channels_held: Gauge::default(),
            connects_throttled: Counter::default(),
            delivery_latency: Histogram::new(exponential_buckets(0.0005, 2.0, 18)),
            reconnects: Family::default(),
            rollovers: Family::default(),
            gaps: Counter::default(),
            gap_seconds: Counter::default(),
            heartbeat_age: Family::default(),
            channel_age: Family::default(),
            token_seconds_to_expiry: Gauge::default(),
            token_refreshes: Family::default(),
            rest_errors: Family::default(),
            topics_rejected: Gauge::default(),
            topics_subscribed: Gauge::default(),
            actor_restarts: Family::default(),
            mailbox_rejections: Family::default(),
            spool_bytes: Gauge::default(),
            spool_records: Gauge::default(),
            spool_oldest_age: Gauge::default(),
            spool_dropped: Counter::default(),
            spool_fsync_seconds_max: Gauge::default(),
            spool_corrupt_cut: Counter::default(),
            spool_disk_reserve_in_use: Gauge::default(),
            in_flight: Gauge::default(),
            in_flight_bytes: Gauge::default(),
            retries_waiting: Gauge::default(),
            producer_purges: Counter::default(),
            producer_restarts: Counter::default(),
            producer_failing: Gauge::default(),
            gaps_backfilled: Counter::default(),
            backfill_conversations: Counter::default(),
            backfill_requests: Counter::default(),
            backfill_failures: Counter::default(),
            conversations_open: Gauge::default(),
            conversations_known: Gauge::default(),
            lifecycle_records: Family::default(),
            conversations_abandoned: Counter::default(),
            lifecycle_checkpoint_failures: Counter::default(),
            lifecycle_checkpoint_age: Gauge::default(),
            reconciliation_runs: Counter::default(),
            reconciliation_requests: Counter::default(),
            reconciliation_failures: Counter::default(),
            reconciliation_findings: Family::default(),
            reconciliation_watched: Gauge::default(),
            ready: Gauge::default(),
            shard_streaming: Family::default(),
            spool_capacity: Gauge::default(),
            build_info: Family::default(),
            start_time: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "frames_received",
            "WebSocket frames received, by kind",
            metrics.frames_received.clone(),
        );
        registry.register(
            "frames_malformed",
            "Frames that were not a valid notification envelope (sent to the dead-letter destination)",
            metrics.frames_malformed.clone(),
        );
        registry.register(
            "events_spooled",
            "Events appended to the durable spool",
            metrics.events_appended.clone(),
        );
        registry.register(
            "events_produced",
            "Records acknowledged by Kafka",
            metrics.events_produced.clone(),
        );
        registry.register(
            "events_failed",
            "Kafka delivery failures, by reason (retried or dead-lettered)",
            metrics.events_failed.clone(),
        );
        registry.register(
            "dead_letters",
            "Records sent to the dead-letter destination, by reason",
            metrics.dead_letters.clone(),
        );
        registry.register(
            "duplicates_suppressed",
            "Copies of an event that another socket of the shard (the other leg, or a rollover overlap) brought first; not delivered",
            metrics.duplicates_suppressed.clone(),
        );
        registry.register(
            "duplicates_late",
            "Copies delivered again because they came after the merge window or capacity had dropped their twin",
            metrics.duplicates_late.clone(),
        );
        registry.register(
            "leg_up",
            "1 while a leg (one of a shard's redundant channels) has a socket that delivers frames, else 0",
            metrics.leg_up.clone(),
        );
        registry.register(
            "leg_losses",
            "Sockets of a leg lost unplanned, by reason (a gap only when no other leg of the shard covered)",
            metrics.leg_losses.clone(),
        );
        registry.register(
            "channels_held",
            "Notification channels held or being created (never above the channel budget)",
            metrics.channels_held.clone(),
        );
        registry.register(
            "connects_throttled",
            "Connect attempts delayed by the per-leg connects-per-minute bound",
            metrics.connects_throttled.clone(),
        );
        registry.register_with_unit(
            "delivery_latency",
            "Time from receiving a frame to Kafka's acknowledgement",
            prometheus_client::registry::Unit::Seconds,
            metrics.delivery_latency.clone(),
        );
        registry.register(
            "reconnects",
            "Socket reconnects, by reason",
            metrics.reconnects.clone(),
        );
        registry.register(
            "rollovers",
            "Make-before-break channel rollovers, by trigger",
            metrics.rollovers.clone(),
        );
        registry.register(
            "gaps",
            "Periods where a shard had no live socket",
            metrics.gaps.clone(),
        );
        registry.register_with_unit(
            "gap_duration",
            "Total duration of gaps",
            prometheus_client::registry::Unit::Seconds,
            metrics.gap_seconds.clone(),
        );
        registry.register_with_unit(
            "heartbeat_age",
            "Time since the last frame (heartbeat, pong or event) per shard",
            prometheus_client::registry::Unit::Seconds,
            metrics.heartbeat_age.clone(),
        );
        registry.register_with_unit(
            "channel_age",
            "Age of the channel each shard streams from",
            prometheus_client::registry::Unit::Seconds,
            metrics.channel_age.clone(),
        );
        registry.register_with_unit(
            "token_expiry",
            "Time until the current access token expires",
            prometheus_client::registry::Unit::Seconds,
            metrics.token_seconds_to_expiry.clone(),
        );
        registry.register(
            "token_refreshes",
            "Access token requests, by outcome",
            metrics.token_refreshes.clone(),
        );
        registry.register(
            "rest_errors",
            "Failed Genesys REST calls of topic expansion (listing queues and users), by class",
            metrics.rest_errors.clone(),
        );
        registry.register(
            "topics_rejected",
            "Topics Genesys refused to subscribe (see /status for reasons)",
            metrics.topics_rejected.clone(),
        );
        registry.register(
            "topics_subscribed",
            "Topics subscribed over all shards",
            metrics.topics_subscribed.clone(),
        );
        registry.register(
            "actor_restarts",
            "Actor restarts by the supervisor, by actor",
            metrics.actor_restarts.clone(),
        );
        registry.register(
            "mailbox_rejections",
            "Messages refused by a full mailbox, by receiving actor",
            metrics.mailbox_rejections.clone(),
        );
        registry.register_with_unit(
            "spool",
            "Bytes in the spool on disk",
            prometheus_client::registry::Unit::Bytes,
            metrics.spool_bytes.clone(),
        );
        registry.register(
            "spool_records",
            "Records in the spool not yet acknowledged by Kafka",
            metrics.spool_records.clone(),
        );
        registry.register_with_unit(
            "spool_oldest_unacked_age",
            "Age of the oldest record not yet acknowledged by Kafka",
            prometheus_client::registry::Unit::Seconds,
            metrics.spool_oldest_age.clone(),
        );
        registry.register(
            "spool_dropped",
            "Records dropped because the spool was full (drop-newest policy)",
            metrics.spool_dropped.clone(),
        );
        registry.register_with_unit(
            "spool_fsync_max",
            "Longest spool fsync",
            prometheus_client::registry::Unit::Seconds,
            metrics.spool_fsync_seconds_max.clone(),
        );
        registry.register(
            "spool_corrupt_cut",
            "Corrupt or torn spool records cut off at start-up",
            metrics.spool_corrupt_cut.clone(),
        );
        registry.register(
            "spool_disk_reserve_in_use",
            "1 while the disk is full and its reserve is released for status records and the spool's state (events are refused)",
            metrics.spool_disk_reserve_in_use.clone(),
        );
        registry.register(
            "kafka_in_flight",
            "Records handed to the Kafka client and not yet acknowledged",
            metrics.in_flight.clone(),
        );
        registry.register(
            "kafka_in_flight_bytes",
            "Value bytes handed to the Kafka client and not yet acknowledged",
            metrics.in_flight_bytes.clone(),
        );
        registry.register(
            "kafka_retries_waiting",
            "Records waiting to be produced again (after a failed delivery, behind one of their key, or for the dead-letter file)",
            metrics.retries_waiting.clone(),
        );
        registry.register(
            "kafka_producer_purges",
            "Purges of the Kafka client's queue, to keep per-key order behind a failed delivery",
            metrics.producer_purges.clone(),
        );
        registry.register(
            "kafka_producer_restarts",
            "Fresh Kafka producers made after a fatal error",
            metrics.producer_restarts.clone(),
        );
        registry.register(
            "kafka_producer_failing",
            "1 while Kafka refuses the producer with fatal errors (credentials, ACLs), else 0",
            metrics.producer_failing.clone(),
        );
        registry.register(
            "backfill_gaps",
            "Gaps filled from the analytics API",
            metrics.gaps_backfilled.clone(),
        );
        registry.register(
            "backfill_conversations",
            "Conversations recovered by backfill",
            metrics.backfill_conversations.clone(),
        );
        registry.register(
            "backfill_requests",
            "Analytics API requests made by backfill",
            metrics.backfill_requests.clone(),
        );
        registry.register(
            "backfill_failures",
            "Failed analytics API requests of backfill",
            metrics.backfill_failures.clone(),
        );
        registry.register(
            "conversations_open",
            "Conversations started and not yet ended, as the lifecycle stream knows them",
            metrics.conversations_open.clone(),
        );
        registry.register(
            "conversations_known",
            "Conversations in the lifecycle state: open, and ended ones still remembered",
            metrics.conversations_known.clone(),
        );
        registry.register(
            "lifecycle_records",
            "Lifecycle records written to the spool, by type and source",
            metrics.lifecycle_records.clone(),
        );
        registry.register(
            "conversations_abandoned",
            "Open conversations given up after lifecycle.max_open without a snapshot or an end from analytics",
            metrics.conversations_abandoned.clone(),
        );
        registry.register(
            "lifecycle_checkpoint_failures",
            "Failed writes of the lifecycle checkpoint (conversations.json)",
            metrics.lifecycle_checkpoint_failures.clone(),
        );
        registry.register(
            "lifecycle_checkpoint_age_seconds",
            "Seconds since the lifecycle checkpoint was last written",
            metrics.lifecycle_checkpoint_age.clone(),
        );
        registry.register(
            "reconciliation_runs",
            "Completed reconciliation runs against the analytics API",
            metrics.reconciliation_runs.clone(),
        );
        registry.register(
            "reconciliation_requests",
            "Analytics API requests made by reconciliation",
            metrics.reconciliation_requests.clone(),
        );
        registry.register(
            "reconciliation_failures",
            "Failed reconciliation runs (an analytics API request of the run failed)",
            metrics.reconciliation_failures.clone(),
        );
        registry.register(
            "reconciliation_findings",
            "Lifecycle records reconciliation wrote, by kind (started, ended)",
            metrics.reconciliation_findings.clone(),
        );
        registry.register(
            "reconciliation_watched",
            "Conversations reconciliation waits to see end in analytics",
            metrics.reconciliation_watched.clone(),
        );
        registry.register(
            "ready",
            "1 while /readyz answers 200 (a token is held, every shard streams, the spool has room), else 0",
            metrics.ready.clone(),
        );
        registry.register(
            "shard_streaming",
            "1 while a shard has a socket that streams (its phase in /status is streaming), else 0",
            metrics.shard_streaming.clone(),
        );
        registry.register_with_unit(
            "spool_capacity",
            "Bytes the spool may hold for events (spool.max_bytes less the headroom kept for gap records)",
            prometheus_client::registry::Unit::Bytes,
            metrics.spool_capacity.clone(),
        );
        registry.register(
            "build_info",
            "Always 1; the bridge's version in the label",
            metrics.build_info.clone(),
        );
        registry.register_with_unit(
            "start_time",
            "When the process started, in seconds since the Unix epoch",
            prometheus_client::registry::Unit::Seconds,
            metrics.start_time.clone(),
        );
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        metrics.start_time.set(started);
        metrics
            .build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        for actor in ACTORS {
            let _ = metrics.actor_restarts.get_or_create(&Metrics::actor(actor));
        }
        for destination in DEAD_LETTER_DESTINATIONS {
            let _ = metrics
                .dead_letters
                .get_or_create(&Metrics::reason(destination));
        }
        Self {
            registry,
            ..metrics
        }
    }

    /// The OpenMetrics text exposition (what Prometheus asks for).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The Prometheus text format 0.0.4, for clients that do not accept OpenMetrics (`curl`,
    /// `promtool check metrics`, older scrapers).
    pub fn encode_prometheus_text(&self) -> String {
        openmetrics_to_prometheus_text(&self.encode())
    }

    /// Handles on `frames_received` for every frame kind.
    pub fn frame_counters(&self) -> FrameCounters {
        let kind = |label: &str| {
            self.frames_received
                .get_or_create(&Metrics::kind(label))
                .clone()
        };
        FrameCounters {
            event: kind("event"),
            heartbeat: kind("heartbeat"),
            pong: kind("pong"),
            metadata: kind("metadata"),
            socket_closing: kind("socket_closing"),
            channel_invalidated: kind("channel_invalidated"),
            system: kind("system"),
            malformed: kind("malformed"),
        }
    }

    pub fn reason(reason: &str) -> ReasonLabel {
        ReasonLabel {
            reason: reason.to_string(),
        }
    }

    pub fn actor(actor: &str) -> ActorLabel {
        ActorLabel {
            actor: actor.to_string(),
        }
    }

    pub fn leg(shard: u32, leg: usize) -> LegLabel {
        LegLabel {
            shard: shard.to_string(),
            leg: leg.to_string(),
        }
    }

    pub fn shard(shard: u32) -> ShardLabel {
        ShardLabel {
            shard: shard.to_string(),
        }
    }

    /// Forgets the per-shard series of a shard that is no longer needed (the topic set shrank),
    /// so that its last values (a leg down, not streaming) do not stay and fire alerts.
    pub fn forget_shard(&self, shard: u32, legs: usize) {
        let label = Metrics::shard(shard);
        self.shard_streaming.remove(&label);
        self.heartbeat_age.remove(&label);
        self.channel_age.remove(&label);
        for leg in 0..legs {
            self.leg_up.remove(&Metrics::leg(shard, leg));
        }
    }

    pub fn lifecycle(kind: &str, source: &str) -> LifecycleLabel {
        LifecycleLabel {
            kind: kind.to_string(),
            source: source.to_string(),
        }
    }

    pub fn kind(kind: &str) -> KindLabel {
        KindLabel {
            kind: kind.to_string(),
        }
    }
}

/// Rewrites an OpenMetrics exposition of prometheus-client as Prometheus text format 0.0.4: a
/// counter family is named with its `_total` suffix in `# HELP` and `# TYPE` (OpenMetrics names
/// the family without it), and `# UNIT` and `# EOF` (not in 0.0.4) are dropped. prometheus-client
/// writes OpenMetrics only (prometheus/client_rust#51; a second format is proposed in #293); this
/// registry holds counters, gauges and histograms, whose samples are the same in both formats.
pub fn openmetrics_to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find(|prefix| line.starts_with(prefix));
        if let Some(prefix) = meta {
            let rest = &line[prefix.len()..];
            let name = rest.split(' ').next().unwrap_or_default();
            if counters.contains(name) && !name.ends_with("_total") {
                out.push_str(prefix);
                out.push_str(name);
                out.push_str("_total");
                out.push_str(&rest[name.len()..]);
                out.push('\n');
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_names_counter_families_with_their_suffix_and_drops_openmetrics_lines() {
        let metrics = Metrics::new();
        metrics.gaps.inc();
        metrics.gap_seconds.inc_by(1.5);
        metrics.spool_bytes.set(7);
        metrics.delivery_latency.observe(0.01);
        let text = metrics.encode_prometheus_text();
        assert!(text.contains("# TYPE genesys_bridge_gaps_total counter\n"));
        assert!(text.contains("# HELP genesys_bridge_gaps_total Periods"));
        assert!(text.contains("genesys_bridge_gaps_total 1\n"));
        assert!(text.contains("# TYPE genesys_bridge_gap_duration_seconds_total counter\n"));
        assert!(text.contains("# TYPE genesys_bridge_spool_bytes gauge\n"));
        assert!(text.contains("genesys_bridge_spool_bytes 7\n"));
        assert!(text.contains("# TYPE genesys_bridge_delivery_latency_seconds histogram\n"));
        assert!(text.contains("genesys_bridge_delivery_latency_seconds_count 1\n"));
        assert!(!text.contains("# UNIT"));
        assert!(!text.contains("# EOF"));
        // Every TYPE names a family whose samples follow it.
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = line.split(' ').nth(2).unwrap();
            assert!(
                text.lines()
                    .any(|l| !l.starts_with('#') && l.starts_with(name)),
                "no sample of {name}"
            );
        }
    }

    #[test]
    fn the_registry_holds_only_types_whose_samples_the_text_conversion_keeps() {
        // openmetrics_to_prometheus_text renames counter families only: an info, stateset or
        // unknown family would need a mapping of its own.
        let metrics = Metrics::new();
        metrics.delivery_latency.observe(0.01);
        for line in metrics.encode().lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let kind = rest.rsplit(' ').next().unwrap();
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            }
        }
    }

    #[test]
    fn families_that_alerts_count_with_increase_start_at_zero() {
        let text = Metrics::new().encode();
        for actor in ACTORS {
            assert!(
                text.contains(&format!(
                    "genesys_bridge_actor_restarts_total{{actor=\"{actor}\"}} 0"
                )),
                "{actor}"
            );
        }
        for destination in DEAD_LETTER_DESTINATIONS {
            assert!(text.contains(&format!(
                "genesys_bridge_dead_letters_total{{reason=\"{destination}\"}} 0"
            )));
        }
        assert!(text.contains("genesys_bridge_build_info{version=\""));
    }
}
