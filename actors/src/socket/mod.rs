//! SocketActor: one channel shard, from channel creation to frames in the spool.
//!
//! The socket reader never waits on Kafka: a frame goes straight into the durable spool (a
//! buffered file write) and the producer picks it up from there on its own thread.
//!
//! Connections: `current` streams; during a make-before-break rollover `next` is a second
//! channel, subscribed and connected, that replaces `current` as soon as it shows its first
//! frame (a ping is sent at once to provoke a pong). Events seen on both are delivered once
//! ([`dedup`]). An unplanned loss of `current` opens a gap that the first frame of its
//! successor closes; the gap is written to the spool as a status record.

pub mod conn;
pub mod dedup;
pub mod frames;
mod lifecycle;

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
use crate::health::Health;
use crate::messages::*;
use crate::metrics::Metrics;
use crate::peers::Peers;
use crate::spool::Spool;
use crate::token::TokenCell;

/// Timing and limits of a shard's sockets.
#[derive(Debug, Clone)]
pub struct SocketSettings {
    pub endpoints: crate::genesys::endpoints::Endpoints,
    /// Send `{"message":"ping"}` this often (the HeartbeatActor's tick).
    pub ping_interval: Duration,
    /// A socket with no heartbeat, pong or event for this long is replaced.
    pub dead_after: Duration,
    /// Roll over to a new channel this long before the current one expires.
    pub rollover_margin: Duration,
    /// Give up on a rollover candidate that shows no frame within this time.
    pub rollover_timeout: Duration,
    /// Largest frame accepted (a larger one is a protocol error that costs the socket).
    pub max_frame_bytes: usize,
    pub request_timeout: Duration,
    pub backoff: ExponentialBackoff,
    /// Events remembered for deduplication during a rollover overlap.
    pub dedup_capacity: usize,
    /// How long after a rollover the dedup table is kept.
    pub dedup_window: Duration,
    pub allow_fault_injection: bool,
}

type WsSink = SinkWrite<ws::Message, SplitSink<Framed<BoxedSocket, ws::Codec>, ws::Message>>;

/// One live WebSocket on one channel.
struct Conn {
    id: u64,
    channel: Channel,
    rejected: Vec<SubscribedTopic>,
    created_at: DateTime<Utc>,
    token_generation: u64,
    sink: WsSink,
    stream: SpawnHandle,
    first_frame_seen: bool,
    /// The server announced this channel's end (the reason), while it was a rollover candidate.
    doomed: Option<&'static str>,
    /// A fragmented message being reassembled: (is text, bytes so far).
    partial: Option<(bool, bytes::BytesMut)>,
}

/// What an attempt to get onto a channel is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Establishing {
    /// Getting `current` back (first start or after a loss).
    Primary,
    /// Getting `next` for a rollover, with its trigger.
    Rollover(&'static str),
}

/// An open gap: no live socket since `since` (the last frame before the loss).
struct OpenGap {
    since: DateTime<Utc>,
    reason: &'static str,
}

/// Tagged stream items, so that two connections can feed one actor.
pub(crate) enum ConnItem {
    Frame(u64, Result<ws::Frame, actix_http::ws::ProtocolError>),
    Ended(u64),
}

impl Message for ConnItem {
    type Result = ();
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
    next_conn_id: u64,
    current: Option<Conn>,
    next: Option<Conn>,
    /// Replaced sockets still delivering what was on the wire before their close.
    draining: Vec<Conn>,
    /// An attempt to get `current` is in flight.
    primary_pending: bool,
    /// An attempt to get `next` is in flight.
    rollover_pending: bool,
    /// Consecutive failures, for the backoff.
    failures: u32,
    rollover_failures: u32,
    gap: Option<OpenGap>,
    last_frame_wall: Option<DateTime<Utc>>,
    last_seen_report: Option<Instant>,
    /// The last frame on the current socket, or when it connected.
    last_sign_of_life: Option<Instant>,
    dedup: dedup::Dedup,
    expiry_timer: Option<SpawnHandle>,
    rollover_deadline: Option<SpawnHandle>,
    retry_timer: Option<SpawnHandle>,
    rollover_retry: Option<SpawnHandle>,
    stopping: bool,
    /// What started the rollover in progress, for metrics.
    rollover_trigger: Option<&'static str>,
    /// The channel to reconnect to after an unplanned drop (still subscribed, not expiring).
    reusable: Option<(Channel, Vec<SubscribedTopic>)>,
    /// A frame that found the spool full under the `block` policy, kept until there is room.
    held_frame: Option<crate::spool::Record>,
    /// Where closed gaps go to be filled from the analytics API (when backfill is enabled).
    backfill: Option<BackfillQueue>,
}

impl SocketActor {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        shard: u32,
        topics: Vec<String>,
        settings: Arc<SocketSettings>,
        token: TokenCell,
        spool: Spool,
        peers: Peers,
        health: Health,
        metrics: Arc<Metrics>,
        backfill: Option<BackfillQueue>,
    ) -> Self {
        let client = GenesysClient::new(settings.endpoints.clone(), settings.request_timeout);
        let dedup = dedup::Dedup::new(settings.dedup_capacity, settings.dedup_window);
        Self {
            shard,
            topics,
            settings,
            client,
            token,
            spool,
            peers,
            health,
            metrics,
            next_conn_id: 1,
            current: None,
            next: None,
            draining: Vec::new(),
            primary_pending: false,
            rollover_pending: false,
            failures: 0,
            rollover_failures: 0,
            gap: None,
            last_frame_wall: None,
            last_seen_report: None,
            last_sign_of_life: None,
            dedup,
            expiry_timer: None,
            rollover_deadline: None,
            retry_timer: None,
            rollover_retry: None,
            stopping: false,
            rollover_trigger: None,
            reusable: None,
            held_frame: None,
            backfill,
        }
    }

    /// Tells the heartbeat watchdog when the live socket last showed a sign of life.
    /// Coalesced: at most one report per quarter ping interval unless `force`d.
    fn report_seen(&mut self, force: bool) {
        let now = Instant::now();
        let due = self
            .last_seen_report
            .is_none_or(|at| now.duration_since(at) >= self.settings.ping_interval / 4);
        if !(due || force) {
            return;
        }
        let Some(at) = self.last_sign_of_life else {
            return;
        };
        self.last_seen_report = Some(now);
        // Refused when full: harmless, the next report carries the same news.
        let _ = self.peers.heartbeat.try_send(
            FrameSeen {
                shard: self.shard,
                at,
            },
            &self.metrics,
        );
        let last_frame = self.last_frame_wall;
        self.health.shard(self.shard, |status| {
            status.last_frame_at = last_frame;
        });
    }
}

impl SocketActor {
    /// The previous run of the bridge last received a frame on this shard at `since`: the
    /// first frame of this run closes that gap (reason `restart`).
    pub fn with_restart_gap(mut self, since: Option<DateTime<Utc>>) -> Self {
        if let Some(since) = since {
            self.gap = Some(OpenGap {
                since,
                reason: "restart",
            });
        }
        self
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
        self.connect_primary(ctx);
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        tracing::info!(shard = self.shard, "socket actor stopped");
    }
}

impl StreamHandler<ConnItem> for SocketActor {
    fn handle(&mut self, item: ConnItem, ctx: &mut Self::Context) {
        match item {
            ConnItem::Frame(conn, Ok(frame)) => self.on_frame(conn, frame, ctx),
            ConnItem::Frame(conn, Err(error)) => {
                tracing::warn!(shard = self.shard, error = %error, "WebSocket protocol error");
                self.metrics
                    .frames_received
                    .get_or_create(&Metrics::kind("protocol_error"))
                    .inc();
                self.on_conn_lost(conn, "protocol_error", ctx);
            }
            ConnItem::Ended(conn) => self.on_conn_lost(conn, "closed", ctx),
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

    fn handle(&mut self, _: SendPing, _ctx: &mut Self::Context) {
        for conn in [self.current.as_mut(), self.next.as_mut()]
            .into_iter()
            .flatten()
        {
            let _ = conn
                .sink
                .write(ws::Message::Text(r#"{"message":"ping"}"#.into()));
        }
        self.report_seen(false);
    }
}

impl Handler<Reconnect> for SocketActor {
    type Result = ();

    fn handle(&mut self, msg: Reconnect, ctx: &mut Self::Context) {
        let Some(conn) = self.current.as_ref() else {
            return; // already getting a new socket
        };
        tracing::warn!(
            shard = self.shard,
            reason = msg.reason,
            "replacing the socket"
        );
        let id = conn.id;
        self.on_conn_lost(id, msg.reason, ctx);
    }
}

impl Handler<TokenChanged> for SocketActor {
    type Result = ();

    fn handle(&mut self, msg: TokenChanged, ctx: &mut Self::Context) {
        let stale = self
            .current
            .as_ref()
            .is_some_and(|conn| conn.token_generation < msg.generation);
        if stale {
            // The channel dies with the token that made it: move before it does.
            self.start_rollover("token_refresh", ctx);
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
        self.start_rollover("topics_changed", ctx);
    }
}

impl Handler<StopReading> for SocketActor {
    type Result = ();

    fn handle(&mut self, _: StopReading, ctx: &mut Self::Context) {
        self.stopping = true;
        for handle in [
            self.expiry_timer.take(),
            self.rollover_deadline.take(),
            self.retry_timer.take(),
            self.rollover_retry.take(),
        ]
        .into_iter()
        .flatten()
        {
            ctx.cancel_future(handle);
        }
        for conn in [self.current.take(), self.next.take()]
            .into_iter()
            .flatten()
        {
            self.close_conn(conn, ctx);
        }
        self.health
            .shard(self.shard, |s| s.phase = crate::health::ShardPhase::Paused);
    }
}

impl Handler<AreYouAlive> for SocketActor {
    type Result = ();
    fn handle(&mut self, _: AreYouAlive, _: &mut Self::Context) {}
}

impl Handler<InjectFault> for SocketActor {
    type Result = ();
    fn handle(&mut self, fault: InjectFault, _: &mut Self::Context) {
        fault.apply(self.settings.allow_fault_injection, "SocketActor");
    }
}
