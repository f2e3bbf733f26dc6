//! SocketActor: one channel shard, from channel creation to frames in the spool.
//!
//! The socket reader never waits on Kafka: a frame goes straight into the durable spool (a
//! buffered file write) and the producer picks it up from there on its own thread.
//!
//! **Legs.** A shard streams on `legs` (1 or 2) channels with the same topics, each with its own
//! socket and its own watchdog (a `{"message":"ping"}` unanswered within `pong_timeout` ends
//! it). Genesys fans every event out to every subscribed channel, so with two legs a single
//! socket fault loses nothing: the [`merge`] delivers each event once, from whichever leg brings
//! it first.
//!
//! **Rollovers** (`socket_closing`, channel expiry, token refresh, topic change) replace one leg
//! at a time: with another leg streaming, the old socket is retired and the leg reconnects on a
//! new channel while the other covers, so no spare channel is needed; otherwise a leg rolls over
//! make-before-break onto a second channel (`next`) that takes over at its first frame. Every
//! channel needs a permit of the [`budget`] first.
//!
//! **Gaps** are decided in one place, [`coverage`]: an interval in which no socket of the shard
//! covered it. What a restart must not forget (last frame, the open gap, drop spans, status
//! records not yet written) is [`ShardCell`](crate::shard_state::ShardCell) state, kept on disk.

pub mod budget;
pub mod conn;
pub mod correlation;
pub mod coverage;
pub mod frames;
mod gaps;
mod lifecycle;
pub mod merge;
mod read;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::io::SinkWrite;
use actix::prelude::*;
use actix_codec::Framed;
use awc::ws;
use awc::BoxedSocket;
use chrono::{DateTime, Utc};
use futures_util::stream::SplitSink;

use crate::backfill::queue::BackfillQueue;
use crate::backoff::ExponentialBackoff;
use crate::genesys::rest::GenesysClient;
use crate::genesys::wire::{Channel, SubscribedTopic};
use crate::health::{Health, LegStatus, ShardPhase};
use crate::messages::*;
use crate::metrics::Metrics;
use crate::peers::Peers;
use crate::shard_state::{ShardCell, ShardStates};
use crate::spool::Spool;
use crate::token::TokenCell;

use budget::{ChannelBudget, ChannelPermit};
use coverage::{Coverage, OpenGap};

/// Timing and limits of a shard's sockets.
#[derive(Debug, Clone)]
pub struct SocketSettings {
    pub endpoints: crate::genesys::endpoints::Endpoints,
    /// Send `{"message":"ping"}` this often (the HeartbeatActor's tick).
    pub ping_interval: Duration,
    /// A socket that shows no frame within this time after a ping is dead.
    pub pong_timeout: Duration,
    /// A shard with no heartbeat, pong or event on any socket for this long is replaced (the
    /// HeartbeatActor's verdict; also catches a hung actor).
    pub dead_after: Duration,
    /// Roll over to a new channel this long before the current one expires (at most a quarter
    /// of the channel's lifetime).
    pub rollover_margin: Duration,
    /// Give up on a rollover candidate that shows no frame within this time.
    pub rollover_timeout: Duration,
    /// Planned rollovers of one leg are at least this far apart.
    pub min_rollover_interval: Duration,
    /// A socket that lived this long proved stable: the reconnect backoff starts over.
    pub stable_after: Duration,
    /// Connect attempts per leg and minute, at most.
    pub max_connects_per_minute: u32,
    /// Token-refresh rollovers of all shards are spread over this long.
    pub token_rollover_spread: Duration,
    /// Largest frame accepted (a larger one is a protocol error that costs the socket).
    pub max_frame_bytes: usize,
    pub request_timeout: Duration,
    pub backoff: ExponentialBackoff,
    /// Events the merge remembers while waiting for their copy from another socket.
    pub dedup_capacity: usize,
    /// How long the merge waits for an event's copy from another socket.
    pub dedup_window: Duration,
    pub allow_fault_injection: bool,
}

type WsSink = SinkWrite<ws::Message, SplitSink<Framed<BoxedSocket, ws::Codec>, ws::Message>>;

/// One WebSocket on one channel: a *lane* of the shard's coverage.
struct Conn {
    id: u64,
    leg: usize,
    channel: Channel,
    rejected: Vec<SubscribedTopic>,
    created_at: DateTime<Utc>,
    connected_at: Instant,
    token_generation: u64,
    sink: WsSink,
    stream: SpawnHandle,
    /// Its first frame arrived (it covers the shard from then on).
    first_frame_seen: bool,
    /// Whether its frames count as coverage (not after `token_revoked`/`no_longer_subscribed`).
    covering: bool,
    /// The last frame handled, epoch ms, and when (monotonic).
    last_frame_ms: i64,
    last_frame_at: Instant,
    /// Every frame the server sent before this instant (epoch ms) has been handled: the send
    /// time of the last ping whose pong came back (the server answers behind what it queued
    /// before it), or the connect. A frame's *receive* time proves less: frames queued on the
    /// wire behind it were sent before it arrived, and are lost when the bridge stops reading
    /// (a pause, a shutdown, a crash) or the socket dies.
    proven_ms: i64,
    /// Send times (epoch ms) of the pings whose pongs have not come back yet, oldest first.
    pings_in_flight: std::collections::VecDeque<i64>,
    /// The server announced this channel's end (the reason).
    doomed: Option<&'static str>,
    /// A fragmented message being reassembled: (is text, bytes so far).
    partial: Option<(bool, bytes::BytesMut)>,
    /// A ping awaiting its answer: the pong-timeout timer.
    ping_timer: Option<SpawnHandle>,
    /// This channel's slot in the channel budget.
    permit: Option<ChannelPermit>,
}

/// What an attempt to get onto a channel is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Establishing {
    /// Getting the leg's `current` (first start, after a loss, or a break-before-make rollover).
    Primary,
    /// Getting the leg's `next` for a make-before-break rollover, with its trigger.
    Rollover(&'static str),
}

/// A channel to reconnect to after an unplanned drop (still subscribed, not expiring).
struct Reusable {
    channel: Channel,
    rejected: Vec<SubscribedTopic>,
    permit: ChannelPermit,
}

/// One leg: its sockets, timers and counters.
struct Leg {
    index: usize,
    current: Option<Conn>,
    next: Option<Conn>,
    pending: Option<Establishing>,
    /// Consecutive failures, for the backoff (reset once a socket proved stable).
    failures: u32,
    rollover_failures: u32,
    retry_timer: Option<SpawnHandle>,
    rollover_retry: Option<SpawnHandle>,
    rollover_deadline: Option<SpawnHandle>,
    expiry_timer: Option<SpawnHandle>,
    /// The rollover in progress (until the new socket's first frame), for metrics.
    rollover_trigger: Option<&'static str>,
    /// A rollover waiting for its turn (the other leg in transition, the floor, an attempt in
    /// flight).
    wanted: Option<&'static str>,
    reusable: Option<Reusable>,
    last_rollover: Option<Instant>,
    /// Connect attempts within the last minute.
    connect_times: VecDeque<Instant>,
    status: LegStatus,
}

impl Leg {
    fn new(index: usize) -> Self {
        Self {
            index,
            current: None,
            next: None,
            pending: None,
            failures: 0,
            rollover_failures: 0,
            retry_timer: None,
            rollover_retry: None,
            rollover_deadline: None,
            expiry_timer: None,
            rollover_trigger: None,
            wanted: None,
            reusable: None,
            last_rollover: None,
            connect_times: VecDeque::new(),
            status: LegStatus::new(index),
        }
    }

    /// Streaming: a current socket that delivered its first frame, nothing being replaced.
    fn streaming(&self) -> bool {
        self.current
            .as_ref()
            .is_some_and(|c| c.first_frame_seen && c.covering && c.doomed.is_none())
            && self.pending.is_none()
            && self.next.is_none()
            && self.rollover_trigger.is_none()
    }

    fn timers(&mut self) -> Vec<SpawnHandle> {
        [
            self.retry_timer.take(),
            self.rollover_retry.take(),
            self.rollover_deadline.take(),
            self.expiry_timer.take(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

/// Tagged stream items, so that several connections can feed one actor.
pub(crate) enum ConnItem {
    /// The frames one read of the socket brought ([`read::ReadyFrames`]: all that were ready,
    /// at most `FRAMES_PER_READ` and about `BYTES_PER_READ`).
    Frames(u64, Vec<Result<ws::Frame, actix_http::ws::ProtocolError>>),
    Ended(u64),
}

impl Message for ConnItem {
    type Result = ();
}

/// Why a shard starts with a gap open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartKind {
    /// The process started: an earlier run's last frame opens a `restart` gap.
    ProcessStart,
    /// The supervisor restarted this actor: its predecessor's sockets are gone.
    ActorRestart,
}

/// Everything a SocketActor is started with.
#[derive(Clone)]
pub struct ShardContext {
    pub settings: Arc<SocketSettings>,
    pub token: TokenCell,
    pub spool: Spool,
    pub peers: Peers,
    pub health: Health,
    pub metrics: Arc<Metrics>,
    pub budget: ChannelBudget,
    pub states: ShardStates,
    pub backfill: Option<BackfillQueue>,
    /// The lifecycle stream: snapshots are appended through it.
    pub conversations: Option<crate::conversations::Conversations>,
}

pub struct SocketActor {
    shard: u32,
    topics: Vec<String>,
    settings: Arc<SocketSettings>,
    client: GenesysClient,
    token: TokenCell,
    spool: Spool,
    peers: Peers,
    health: Health,
    metrics: Arc<Metrics>,
    budget: ChannelBudget,
    states: ShardStates,
    cell: Arc<ShardCell>,
    start_kind: StartKind,
    next_conn_id: u64,
    legs: Vec<Leg>,
    /// Replaced sockets still delivering what was on the wire before their close.
    draining: Vec<Conn>,
    /// Ids of every attached socket (legs' current and next, draining), for the merge.
    attached: Vec<u64>,
    coverage: Coverage,
    merge: merge::Merge,
    stopping: bool,
    /// Reading paused (spool full under `block`, or a spool I/O error).
    paused: bool,
    last_frame_wall: Option<DateTime<Utc>>,
    last_seen_report: Option<Instant>,
    /// What the watchdog was last told: whether the shard has a socket to watch.
    watched_reported: Option<bool>,
    /// The shard's drop span holds events not yet reported.
    drop_pending: bool,
    /// Spool writes that failed in a row (disk full, read-only volume): the pause before
    /// reading again grows with them.
    spool_io_failures: u32,
    /// A retry of status records the spool refused.
    status_retry: Option<SpawnHandle>,
    /// Test hook (`InjectFault::RefuseStatus`): status appends still to refuse.
    refuse_status: u32,
    /// Where closed gaps go to be filled from the analytics API (when backfill is enabled).
    backfill: Option<BackfillQueue>,
    conversations: Option<crate::conversations::Conversations>,
    frames: crate::metrics::FrameCounters,
    /// When `last_event_at` was last written to the health state (at most every
    /// `EVENT_HEALTH_EVERY`, not per event).
    last_event_published: Option<Instant>,
    /// Events of the socket read being handled, appended together at its end (see
    /// `frames::EventBatch`).
    batch: frames::EventBatch,
}

/// How often an event stream updates the shard's `last_event_at` in `/status`.
const EVENT_HEALTH_EVERY: Duration = Duration::from_millis(100);

impl SocketActor {
    pub fn new(
        shard: u32,
        topics: Vec<String>,
        legs: usize,
        start_kind: StartKind,
        context: ShardContext,
    ) -> Self {
        let ShardContext {
            settings,
            token,
            spool,
            peers,
            health,
            metrics,
            budget,
            states,
            backfill,
            conversations,
        } = context;
        let client = GenesysClient::new(settings.endpoints.clone(), settings.request_timeout);
        let merge = merge::Merge::new(settings.dedup_capacity, settings.dedup_window);
        let cell = states.cell(shard);
        let frames = metrics.frame_counters();
        Self {
            frames,
            last_event_published: None,
            batch: frames::EventBatch::default(),
            shard,
            topics,
            client,
            token,
            spool,
            peers,
            health,
            metrics,
            budget,
            states,
            cell,
            start_kind,
            next_conn_id: 1,
            legs: (0..legs.clamp(1, 2)).map(Leg::new).collect(),
            draining: Vec::new(),
            attached: Vec::new(),
            coverage: Coverage::default(),
            merge,
            stopping: false,
            paused: false,
            last_frame_wall: None,
            last_seen_report: None,
            watched_reported: None,
            drop_pending: false,
            spool_io_failures: 0,
            status_retry: None,
            refuse_status: 0,
            backfill,
            conversations,
            settings,
        }
    }

    /// Tells the heartbeat watchdog when the shard last showed a sign of life (any socket).
    /// Coalesced: at most one report per quarter ping interval unless `force`d.
    fn report_seen(&mut self, at: Instant, force: bool) {
        let now = Instant::now();
        let due = self
            .last_seen_report
            .is_none_or(|last| now.duration_since(last) >= self.settings.ping_interval / 4);
        if !(due || force) {
            return;
        }
        self.last_seen_report = Some(now);
        // Refused when full: harmless, the next report carries the same news.
        let watched = !self.paused;
        if self
            .peers
            .heartbeat
            .try_send(
                FrameSeen {
                    shard: self.shard,
                    at,
                    watched,
                },
                &self.metrics,
            )
            .is_ok()
        {
            self.watched_reported = Some(watched);
        }
        self.publish_health();
    }

    /// Tells the watchdog when the shard starts or stops having a socket to watch (paused, or
    /// every leg waiting to connect): it orders no replacement for a shard with none. Retried
    /// on the next change or ping tick if the watchdog's mailbox was full.
    fn report_watch_state(&mut self) {
        let last = self.last_sign_of_life();
        let watched = last.is_some() && !self.paused;
        if self.watched_reported == Some(watched) {
            return;
        }
        let report = FrameSeen {
            shard: self.shard,
            at: last.unwrap_or_else(Instant::now),
            watched,
        };
        if self.peers.heartbeat.try_send(report, &self.metrics).is_ok() {
            self.watched_reported = Some(watched);
        }
    }

    /// Writes the legs' state to `/status` and the metrics (on changes, not per frame).
    fn publish_health(&mut self) {
        if self.stopping {
            // A stopped shard may have been removed from the topic set: its status must not
            // come back (and a process shutting down reports nothing more per shard).
            return;
        }
        self.report_watch_state();
        let last_frame = self.last_frame_wall;
        let mut legs = Vec::with_capacity(self.legs.len());
        for leg in &mut self.legs {
            let up = leg
                .current
                .as_ref()
                .is_some_and(|c| c.first_frame_seen && c.covering);
            leg.status.phase = if self.paused {
                ShardPhase::Paused
            } else if up {
                ShardPhase::Streaming
            } else if leg.pending.is_some() {
                ShardPhase::Connecting
            } else {
                ShardPhase::Backoff
            };
            if let Some(conn) = leg.current.as_ref() {
                let at = chrono::DateTime::from_timestamp_millis(conn.last_frame_ms);
                leg.status.last_frame_at = at.filter(|_| conn.first_frame_seen);
            }
            self.metrics
                .leg_up
                .get_or_create(&Metrics::leg(self.shard, leg.index))
                .set(i64::from(up));
            legs.push(leg.status.clone());
        }
        self.metrics.channels_held.set(self.budget.held() as i64);
        let phase = if self.paused || self.stopping {
            ShardPhase::Paused
        } else if legs.iter().any(|l| l.phase == ShardPhase::Streaming) {
            ShardPhase::Streaming
        } else if legs.iter().any(|l| l.phase == ShardPhase::Connecting) {
            ShardPhase::Connecting
        } else {
            ShardPhase::Backoff
        };
        let gap_since = self
            .coverage
            .open_gap()
            .and_then(|g| chrono::DateTime::from_timestamp_millis(g.since_ms));
        let first = legs.first().cloned();
        let redundancy = self.legs.len();
        self.health.shard(self.shard, |status| {
            status.phase = phase;
            status.redundancy = redundancy;
            status.gap_open_since = gap_since;
            if let Some(first) = first {
                status.channel = first.channel.clone();
                status.channel_created_at = first.channel_created_at;
                status.channel_expires_at = first.channel_expires_at;
                status.last_error = first.last_error.clone();
            }
            status.connects = legs.iter().map(|l| l.connects).sum();
            status.rollovers = legs.iter().map(|l| l.rollovers).sum();
            if last_frame.is_some() {
                status.last_frame_at = last_frame;
            }
            status.legs = legs;
        });
    }
}

impl Actor for SocketActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Control messages only (pings, reconnects, token news): a small mailbox is plenty, and a
        // full one means this actor is hung, which the heartbeat and /livez notice.
        ctx.set_mailbox_capacity(64);
        let topic_count = self.topics.len();
        self.health.shard(self.shard, |status| {
            status.topic_count = topic_count;
        });
        self.resume_state(ctx);
        // Queued rollovers, refused status records and topic changes are looked at again
        // every second, whatever else happens.
        ctx.run_interval(Duration::from_secs(1), |actor, ctx| actor.housekeeping(ctx));
        if !self.paused {
            for leg in 0..self.legs.len() {
                self.connect_leg(leg, ctx);
            }
        }
        self.publish_health();
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        tracing::info!(shard = self.shard, "socket actor stopped");
    }
}

impl StreamHandler<ConnItem> for SocketActor {
    fn handle(&mut self, item: ConnItem, ctx: &mut Self::Context) {
        match item {
            ConnItem::Frames(conn, frames) => {
                for frame in frames {
                    match frame {
                        Ok(frame) => self.on_frame(conn, frame, ctx),
                        Err(error) => {
                            self.flush_events(ctx);
                            tracing::warn!(shard = self.shard, error = %error, "WebSocket protocol error");
                            self.metrics
                                .frames_received
                                .get_or_create(&Metrics::kind("protocol_error"))
                                .inc();
                            self.on_conn_lost(conn, "protocol_error", ctx);
                        }
                    }
                }
                // The events of this read go into the spool together.
                self.flush_events(ctx);
            }
            ConnItem::Ended(conn) => {
                self.flush_events(ctx);
                self.on_conn_lost(conn, "closed", ctx);
            }
        }
    }

    /// Each connection's stream ends with `ConnItem::Ended`; the actor lives on.
    fn finished(&mut self, _ctx: &mut Self::Context) {}
}

impl actix::io::WriteHandler<actix_http::ws::ProtocolError> for SocketActor {
    fn error(&mut self, err: actix_http::ws::ProtocolError, _ctx: &mut Self::Context) -> Running {
        // The read side notices the broken socket and ends its stream; keep the actor.
        tracing::warn!(shard = self.shard, error = %err, "WebSocket write failed");
        Running::Continue
    }

    fn finished(&mut self, _ctx: &mut Self::Context) {}
}

impl Handler<SendPing> for SocketActor {
    type Result = ();

    fn handle(&mut self, _: SendPing, ctx: &mut Self::Context) {
        let ids: Vec<u64> = self
            .legs
            .iter()
            .flat_map(|leg| [leg.current.as_ref(), leg.next.as_ref()])
            .flatten()
            .map(|c| c.id)
            .collect();
        for id in ids {
            self.send_ping(id, ctx);
        }
        if let Some(at) = self.last_sign_of_life() {
            self.report_seen(at, false);
        }
        self.report_watch_state();
    }
}

impl Handler<Reconnect> for SocketActor {
    type Result = ();

    /// The watchdog found the whole shard silent for `dead_after`: replace every socket that
    /// showed nothing for that long.
    fn handle(&mut self, msg: Reconnect, ctx: &mut Self::Context) {
        let dead_after = self.settings.dead_after;
        let silent: Vec<u64> = self
            .legs
            .iter()
            .filter_map(|leg| leg.current.as_ref())
            .filter(|c| c.last_frame_at.elapsed() >= dead_after)
            .map(|c| c.id)
            .collect();
        for id in silent {
            tracing::warn!(
                shard = self.shard,
                reason = msg.reason,
                "replacing the socket"
            );
            self.on_conn_lost(id, msg.reason, ctx);
        }
    }
}

impl Handler<TokenChanged> for SocketActor {
    type Result = ();

    fn handle(&mut self, msg: TokenChanged, ctx: &mut Self::Context) {
        // The channel dies with the token that made it: move before it does, one leg at a time,
        // and shard after shard so that Genesys does not see every channel replaced at once.
        let step = self.settings.token_rollover_spread / crate::topics::MAX_CHANNELS as u32;
        let delay = step * self.shard;
        for leg in 0..self.legs.len() {
            let stale = self.legs[leg]
                .current
                .as_ref()
                .is_some_and(|conn| conn.token_generation < msg.generation);
            if stale {
                ctx.run_later(delay, move |actor, ctx| {
                    let still_stale = actor.legs[leg]
                        .current
                        .as_ref()
                        .is_some_and(|conn| conn.token_generation < msg.generation);
                    if still_stale {
                        actor.request_rollover(leg, "token_refresh", ctx);
                    }
                });
            }
        }
    }
}

impl Handler<UpdateTopics> for SocketActor {
    type Result = ();

    fn handle(&mut self, msg: UpdateTopics, ctx: &mut Self::Context) {
        if msg.topics == self.topics {
            return;
        }
        self.topics = msg.topics;
        let topic_count = self.topics.len();
        self.health
            .shard(self.shard, |s| s.topic_count = topic_count);
        for leg in 0..self.legs.len() {
            self.request_rollover(leg, "topics_changed", ctx);
        }
    }
}

impl Handler<StopReading> for SocketActor {
    type Result = ();

    fn handle(&mut self, _: StopReading, ctx: &mut Self::Context) {
        self.stopping = true;
        self.close_everything("restart", ctx);
        self.publish_health();
    }
}

impl Handler<AreYouAlive> for SocketActor {
    type Result = ();
    fn handle(&mut self, _: AreYouAlive, _: &mut Self::Context) {}
}

impl Handler<InjectFault> for SocketActor {
    type Result = ();
    fn handle(&mut self, fault: InjectFault, _: &mut Self::Context) {
        match fault {
            InjectFault::RefuseStatus(count) if self.settings.allow_fault_injection => {
                tracing::warn!(
                    shard = self.shard,
                    count,
                    "injected: the next status records find the spool full"
                );
                self.refuse_status = count;
            }
            other => other.apply(self.settings.allow_fault_injection, "SocketActor"),
        }
    }
}

impl SocketActor {
    /// The latest frame on any current socket.
    fn last_sign_of_life(&self) -> Option<Instant> {
        self.legs
            .iter()
            .filter_map(|leg| leg.current.as_ref())
            .map(|c| c.last_frame_at)
            .max()
    }

    /// Picks up what the shard's durable state says: a gap still open, or the last frame of a
    /// predecessor (an earlier run, or this actor before a restart), status records and a drop
    /// span not yet reported, a frame held back by `block`.
    fn resume_state(&mut self, ctx: &mut Context<Self>) {
        let record = self.cell.snapshot();
        let reason = match self.start_kind {
            StartKind::ProcessStart => "restart",
            StartKind::ActorRestart => "actor_restart",
        };
        let open = record.open_gap.clone().or_else(|| {
            record.last_frame_ms.map(|since_ms| OpenGap {
                since_ms,
                reason: reason.to_string(),
            })
        });
        if let Some(open) = &open {
            tracing::info!(
                shard = self.shard,
                reason = %open.reason,
                since = ?chrono::DateTime::from_timestamp_millis(open.since_ms),
                "gap open since an earlier socket's last frame; the first frame closes it"
            );
        }
        self.coverage = Coverage::new(open);
        self.sync_open_gap();
        self.drop_pending = record.drop_span.is_some();
        if !record.pending_status.is_empty() {
            self.flush_pending_status(ctx);
        }
        let held = self.cell.held().take();
        if let Some(held) = held {
            // Appended first; if the spool is still full this pauses reading again.
            self.append(held, ctx);
        }
    }

    /// Once a second: rollovers waiting for their turn, refused status records.
    fn housekeeping(&mut self, ctx: &mut Context<Self>) {
        if self.stopping {
            return;
        }
        self.check_wanted(ctx);
        self.report_dropped_if_over(ctx);
        if !self.cell.lock().pending_status.is_empty() {
            self.flush_pending_status(ctx);
        }
        self.publish_health();
    }
}
