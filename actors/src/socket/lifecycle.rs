//! Channel lifecycle of a shard's legs: connect, roll over one leg at a time, recover from
//! losses with a backoff that only starts over once a socket proved stable.

use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::Utc;
use futures_util::StreamExt;
use serde_json::json;

use super::conn::{establish, EstablishError, Established, Plan};
use super::{Conn, ConnItem, Establishing, Reusable, SocketActor};
use crate::messages::TokenRejected;
use crate::metrics::Metrics;
use crate::secret::short_channel_id;

/// Triggers that cannot wait: the channel is ending whatever we do.
fn urgent(trigger: &str) -> bool {
    matches!(
        trigger,
        "socket_closing" | "token_revoked" | "no_longer_subscribed"
    )
}

/// Where a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Place {
    Current(usize),
    Next(usize),
    Draining(usize),
}

/// Pings awaiting their pongs, at most (more are not sent until pongs come back).
const MAX_PINGS_IN_FLIGHT: usize = 64;

impl SocketActor {
    pub(super) fn place(&self, conn_id: u64) -> Option<Place> {
        for leg in &self.legs {
            if leg.current.as_ref().is_some_and(|c| c.id == conn_id) {
                return Some(Place::Current(leg.index));
            }
            if leg.next.as_ref().is_some_and(|c| c.id == conn_id) {
                return Some(Place::Next(leg.index));
            }
        }
        self.draining
            .iter()
            .position(|c| c.id == conn_id)
            .map(Place::Draining)
    }

    pub(super) fn conn_mut(&mut self, conn_id: u64) -> Option<&mut Conn> {
        match self.place(conn_id)? {
            Place::Current(leg) => self.legs[leg].current.as_mut(),
            Place::Next(leg) => self.legs[leg].next.as_mut(),
            Place::Draining(index) => self.draining.get_mut(index),
        }
    }

    /// Recomputes the attached sockets (for the merge) after one came or went.
    pub(super) fn lanes_changed(&mut self) {
        self.attached = self
            .legs
            .iter()
            .flat_map(|leg| [leg.current.as_ref(), leg.next.as_ref()])
            .flatten()
            .chain(self.draining.iter())
            .map(|c| c.id)
            .collect();
        self.merge.lanes_changed(&self.attached);
    }

    /// Gets a leg a socket after a start, a loss or a break-before-make rollover.
    pub(super) fn connect_leg(&mut self, leg: usize, ctx: &mut Context<Self>) {
        let state = &mut self.legs[leg];
        if self.stopping || self.paused || state.pending.is_some() || state.current.is_some() {
            return;
        }
        if let Some(handle) = state.retry_timer.take() {
            ctx.cancel_future(handle);
        }
        // The bound is for reconnects after losses (a server that accepts and closes at once);
        // planned moves are bounded by min_rollover_interval and the server's announcements.
        let reconnect = self.legs[leg].rollover_trigger.is_none();
        if let Some(wait) = self.connect_throttle(leg).filter(|_| reconnect) {
            self.metrics.connects_throttled.inc();
            tracing::warn!(
                shard = self.shard,
                leg,
                wait_ms = wait.as_millis() as u64,
                "connects per minute at their bound; waiting"
            );
            self.legs[leg].retry_timer = Some(ctx.run_later(wait, move |actor, ctx| {
                actor.legs[leg].retry_timer = None;
                actor.connect_leg(leg, ctx);
            }));
            return;
        }
        self.legs[leg].pending = Some(Establishing::Primary);
        self.spawn_establish(leg, Establishing::Primary, ctx);
        self.publish_health();
    }

    /// How long until another connect attempt of this leg is allowed, if it is not now.
    fn connect_throttle(&mut self, leg: usize) -> Option<Duration> {
        let now = Instant::now();
        let minute = Duration::from_secs(60);
        let bound = self.settings.max_connects_per_minute.max(1) as usize;
        let times = &mut self.legs[leg].connect_times;
        while times
            .front()
            .is_some_and(|at| now.duration_since(*at) >= minute)
        {
            times.pop_front();
        }
        if times.len() < bound {
            return None;
        }
        times
            .front()
            .map(|oldest| (*oldest + minute).saturating_duration_since(now))
    }

    /// A leg should move to a new channel. Starts now if it may, else remembers it: one leg of
    /// a shard in transition at a time, at least `min_rollover_interval` between planned
    /// rollovers of a leg, one attempt in flight.
    pub(super) fn request_rollover(
        &mut self,
        leg: usize,
        trigger: &'static str,
        ctx: &mut Context<Self>,
    ) {
        if self.stopping || self.paused {
            return;
        }
        let state = &self.legs[leg];
        if state.current.is_none() {
            // Nothing to roll over from: a plain (re)connect gets the current token and topics.
            self.connect_leg(leg, ctx);
            return;
        }
        if state.pending.is_some() || state.next.is_some() || state.rollover_trigger.is_some() {
            self.legs[leg].wanted = Some(trigger);
            return;
        }
        let pressing = urgent(trigger);
        if !pressing {
            let floor = state
                .current
                .as_ref()
                .map(|conn| self.rollover_floor(conn))
                .unwrap_or(self.settings.min_rollover_interval);
            if let Some(wait) = state
                .last_rollover
                .map(|at| floor.saturating_sub(at.elapsed()))
                .filter(|wait| !wait.is_zero())
            {
                // `housekeeping` looks again every second.
                tracing::debug!(
                    shard = self.shard,
                    leg,
                    trigger,
                    wait_ms = wait.as_millis() as u64,
                    "rollover deferred (min_rollover_interval)"
                );
                self.legs[leg].wanted = Some(trigger);
                return;
            }
        }
        let others: Vec<&super::Leg> = self.legs.iter().filter(|l| l.index != leg).collect();
        let other_streaming = others.iter().any(|l| l.streaming());
        // Another leg rolling over: this one waits its turn (never both legs in transition by
        // plan). Another leg merely down: waiting could outlast this channel, so this leg rolls
        // over make-before-break (on a free slot of the budget, waiting for one if need be).
        let other_rolling = others
            .iter()
            .any(|l| l.rollover_trigger.is_some() || l.next.is_some());
        if !pressing && other_rolling {
            self.legs[leg].wanted = Some(trigger);
            return;
        }
        if let Some(handle) = self.legs[leg].rollover_retry.take() {
            ctx.cancel_future(handle);
        }
        self.legs[leg].wanted = None;
        self.legs[leg].last_rollover = Some(Instant::now());
        self.legs[leg].rollover_trigger = Some(trigger);
        if other_streaming {
            // Break before make: the other leg covers while this one moves.
            tracing::info!(
                shard = self.shard,
                leg,
                trigger,
                "rolling over (the other leg covers)"
            );
            let state = &mut self.legs[leg];
            let old = state.current.take();
            let timers: Vec<SpawnHandle> = state.expiry_timer.take().into_iter().collect();
            for handle in timers {
                ctx.cancel_future(handle);
            }
            if let Some(old) = old {
                self.retire_conn(old, ctx);
            }
            self.connect_leg(leg, ctx);
        } else {
            tracing::info!(
                shard = self.shard,
                leg,
                trigger,
                "rolling over make-before-break"
            );
            self.legs[leg].pending = Some(Establishing::Rollover(trigger));
            self.spawn_establish(leg, Establishing::Rollover(trigger), ctx);
        }
        self.lanes_changed();
        self.publish_health();
    }

    /// Starts rollovers that waited for their turn.
    pub(super) fn check_wanted(&mut self, ctx: &mut Context<Self>) {
        for leg in 0..self.legs.len() {
            if let Some(trigger) = self.legs[leg].wanted.take() {
                self.request_rollover(leg, trigger, ctx);
            }
        }
    }

    fn spawn_establish(&mut self, leg: usize, purpose: Establishing, ctx: &mut Context<Self>) {
        let Some(token) = self.token.valid() else {
            // No valid token yet (start-up, or a refresh in progress): try again shortly.
            self.legs[leg].pending = None;
            ctx.run_later(
                Duration::from_millis(200),
                move |actor, ctx| match purpose {
                    Establishing::Rollover(trigger) => {
                        actor.legs[leg].rollover_trigger = None;
                        actor.request_rollover(leg, trigger, ctx)
                    }
                    Establishing::Primary => actor.connect_leg(leg, ctx),
                },
            );
            return;
        };
        if purpose == Establishing::Primary && self.legs[leg].rollover_trigger.is_none() {
            self.legs[leg].connect_times.push_back(Instant::now());
        }
        self.merge.lane_connecting(Instant::now());
        let reuse = match purpose {
            Establishing::Primary => self.legs[leg].reusable.take(),
            Establishing::Rollover(_) => None,
        };
        let topics = self.topics.clone();
        let (reuse_channel, reuse_permit) = match reuse {
            Some(Reusable {
                channel,
                rejected,
                permit,
            }) => (Some((channel, rejected)), Some(permit)),
            None => (None, None),
        };
        let plan = Plan {
            client: self.client.clone(),
            token: token.token.clone(),
            topics: topics.clone(),
            max_frame_bytes: self.settings.max_frame_bytes,
            reuse: reuse_channel,
        };
        let generation = token.generation;
        let budget = self.budget.clone();
        async move {
            // A slot in the channel budget before a channel may be created (first come, first
            // served: a rollover waits for one rather than evicting anything).
            let permit = match reuse_permit {
                Some(permit) => permit,
                None => budget.acquire().await,
            };
            (establish(plan).await, permit)
        }
        .into_actor(self)
        .map(move |(result, permit), actor, ctx| {
            actor.on_established(leg, purpose, result, permit, generation, topics, ctx)
        })
        .spawn(ctx);
    }

    #[allow(clippy::too_many_arguments)]
    fn on_established(
        &mut self,
        leg: usize,
        purpose: Establishing,
        result: Result<Established, EstablishError>,
        permit: super::ChannelPermit,
        generation: u64,
        topics: Vec<String>,
        ctx: &mut Context<Self>,
    ) {
        self.legs[leg].pending = None;
        if self.stopping || self.paused {
            return; // dropping the socket closes it, dropping the permit frees the slot
        }
        let established = match result {
            Ok(established) => established,
            Err(error) => return self.on_establish_failed(leg, purpose, error, generation, ctx),
        };
        let conn = self.attach(leg, established, generation, permit, ctx);
        let conn_id = conn.id;
        self.merge.lane_attached(Instant::now());
        let state = &mut self.legs[leg];
        let is_rollover = matches!(purpose, Establishing::Rollover(_));
        if is_rollover && state.current.is_some() && state.next.is_none() {
            state.next = Some(conn);
            let timeout = self.settings.rollover_timeout;
            state.rollover_deadline = Some(ctx.run_later(timeout, move |actor, ctx| {
                actor.legs[leg].rollover_deadline = None;
                let silent = actor.legs[leg]
                    .next
                    .as_ref()
                    .is_some_and(|c| c.id == conn_id && !c.first_frame_seen);
                if silent {
                    tracing::warn!(
                        shard = actor.shard,
                        leg,
                        "rollover channel showed no frame in time"
                    );
                    actor.on_conn_lost(conn_id, "rollover_timeout", ctx);
                }
            }));
        } else if state.current.is_some() {
            // Another attempt got there first: one socket per leg.
            tracing::debug!(shard = self.shard, leg, "surplus socket closed");
            self.close_conn(conn, "surplus", ctx);
            return;
        } else {
            state.current = Some(conn);
            self.schedule_expiry(leg, ctx);
        }
        self.lanes_changed();
        // Provoke a pong, so that a healthy new socket proves itself at once.
        self.send_ping(conn_id, ctx);
        // The token or the topic set changed while this socket was being made.
        let token_moved = self
            .token
            .get()
            .is_some_and(|token| token.generation > generation);
        if token_moved || topics != self.topics {
            let trigger = if token_moved {
                "token_refresh"
            } else {
                "topics_changed"
            };
            self.legs[leg].wanted = Some(trigger);
        }
        self.publish_health();
    }

    fn attach(
        &mut self,
        leg: usize,
        established: Established,
        generation: u64,
        permit: super::ChannelPermit,
        ctx: &mut Context<Self>,
    ) -> Conn {
        let id = self.next_conn_id;
        self.next_conn_id += 1;
        let Established {
            channel,
            rejected,
            framed,
            reused,
        } = established;
        let (sink, stream) = framed.split();
        let stream = super::read::ReadyFrames::new(
            stream,
            super::frames::FRAMES_PER_READ,
            super::read::BYTES_PER_READ,
            super::read::frame_bytes,
        )
        .map(move |frames| ConnItem::Frames(id, frames))
        .chain(futures_util::stream::once(
            async move { ConnItem::Ended(id) },
        ));
        let stream_handle = ctx.add_stream(stream);
        let sink = actix::io::SinkWrite::new(sink, ctx);
        let short = short_channel_id(&channel.id);
        for topic in &rejected {
            tracing::warn!(
                shard = self.shard,
                topic = %topic.id,
                reason = topic.rejection_reason.as_deref().unwrap_or(""),
                missing_permissions = ?topic.missing_permissions,
                "Genesys rejected a topic"
            );
        }
        let created_at = Utc::now();
        let status = &mut self.legs[leg].status;
        status.channel = Some(short.clone());
        status.channel_created_at = Some(created_at);
        status.channel_expires_at = channel.expires;
        status.connects += 1;
        status.last_error = None;
        let rejected_topics = rejected.clone();
        self.health
            .shard(self.shard, |s| s.rejected_topics = rejected_topics);
        tracing::info!(shard = self.shard, leg, channel = %short, reused, rejected = rejected.len(), "socket connected");
        if !reused {
            self.write_status(
                json!({
                    "type": "channel_created",
                    "shard": self.shard,
                    "leg": leg,
                    "channel": short,
                    "expires": channel.expires,
                    "topics": self.topics.len(),
                    "rejected_topics": rejected.len(),
                }),
                ctx,
            );
        }
        Conn {
            id,
            leg,
            channel,
            rejected,
            created_at,
            connected_at: Instant::now(),
            token_generation: generation,
            sink,
            stream: stream_handle,
            first_frame_seen: false,
            covering: true,
            last_frame_ms: created_at.timestamp_millis(),
            last_frame_at: Instant::now(),
            proven_ms: created_at.timestamp_millis(),
            pings_in_flight: std::collections::VecDeque::new(),
            doomed: None,
            partial: None,
            ping_timer: None,
            permit: Some(permit),
        }
    }

    fn on_establish_failed(
        &mut self,
        leg: usize,
        purpose: Establishing,
        error: EstablishError,
        generation: u64,
        ctx: &mut Context<Self>,
    ) {
        self.metrics
            .reconnects
            .get_or_create(&Metrics::reason(error.label()))
            .inc();
        if error.is_unauthorized() {
            let _ = self
                .peers
                .token
                .try_send(TokenRejected { generation }, &self.metrics);
        }
        let state = &mut self.legs[leg];
        let attempt = match purpose {
            Establishing::Rollover(_) => {
                state.rollover_failures += 1;
                state.rollover_failures
            }
            Establishing::Primary => {
                state.failures += 1;
                state.failures
            }
        };
        let delay = error
            .retry_after()
            .unwrap_or_else(|| self.settings.backoff.delay(attempt - 1));
        let message = error.to_string();
        tracing::warn!(shard = self.shard, leg, error = %message, retry_in_ms = delay.as_millis() as u64, "could not get onto a channel");
        state.status.last_error = Some(message);
        match purpose {
            Establishing::Rollover(trigger) => {
                state.rollover_trigger = None;
                state.rollover_retry = Some(ctx.run_later(delay, move |actor, ctx| {
                    actor.legs[leg].rollover_retry = None;
                    actor.request_rollover(leg, trigger, ctx)
                }));
            }
            Establishing::Primary => {
                state.retry_timer = Some(ctx.run_later(delay, move |actor, ctx| {
                    actor.legs[leg].retry_timer = None;
                    actor.connect_leg(leg, ctx)
                }));
            }
        }
        self.publish_health();
    }

    /// The first frame on a connection proves it live: a rollover candidate takes over, a
    /// break-before-make rollover is complete.
    pub(super) fn on_first_frame(&mut self, conn_id: u64, ctx: &mut Context<Self>) {
        match self.place(conn_id) {
            Some(super::lifecycle::Place::Next(leg)) => self.promote_next(leg, "rollover", ctx),
            Some(super::lifecycle::Place::Current(leg)) => {
                if let Some(trigger) = self.legs[leg].rollover_trigger.take() {
                    self.rollover_done(leg, trigger, ctx);
                }
            }
            _ => {}
        }
        self.check_wanted(ctx);
        self.publish_health();
    }

    /// `next` replaces `current` (make-before-break, or at once when `current` was lost).
    fn promote_next(&mut self, leg: usize, default_trigger: &'static str, ctx: &mut Context<Self>) {
        let state = &mut self.legs[leg];
        let Some(next) = state.next.take() else {
            return;
        };
        if let Some(handle) = state.rollover_deadline.take() {
            ctx.cancel_future(handle);
        }
        let trigger = state.rollover_trigger.take().unwrap_or(default_trigger);
        let old = state.current.replace(next);
        state.rollover_failures = 0;
        if let Some(old) = old {
            self.retire_conn(old, ctx);
        }
        self.rollover_done(leg, trigger, ctx);
    }

    fn rollover_done(&mut self, leg: usize, trigger: &'static str, ctx: &mut Context<Self>) {
        self.metrics
            .rollovers
            .get_or_create(&Metrics::reason(trigger))
            .inc();
        self.legs[leg].status.rollovers += 1;
        let short = self.legs[leg]
            .current
            .as_ref()
            .map(|c| short_channel_id(&c.channel.id))
            .unwrap_or_default();
        tracing::info!(shard = self.shard, leg, channel = %short, trigger, "rolled over");
        self.write_status(
            json!({"type": "rollover", "shard": self.shard, "leg": leg, "channel": short, "trigger": trigger}),
            ctx,
        );
        self.schedule_expiry(leg, ctx);
        self.lanes_changed();
        if let Some(reason) = self.legs[leg].current.as_ref().and_then(|c| c.doomed) {
            // The channel we moved to was announced ending while it was a candidate.
            self.request_rollover(leg, reason, ctx);
        }
    }

    /// A connection ended (closed, errored, declared dead). Planned ends never get here: the
    /// actor forgets a connection before closing it.
    pub(super) fn on_conn_lost(
        &mut self,
        conn_id: u64,
        reason: &'static str,
        ctx: &mut Context<Self>,
    ) {
        match self.place(conn_id) {
            None => {}
            Some(Place::Draining(index)) => {
                // A retired socket finished its close handshake (the server's close frame came:
                // everything sent before it was read), or ended without one (then it covered
                // only what it proved).
                let conn = self.draining.swap_remove(index);
                let reason = if reason == "closed_by_server" {
                    reason
                } else {
                    "retired"
                };
                self.close_conn(conn, reason, ctx);
                self.lanes_changed();
            }
            Some(Place::Next(leg)) => {
                let state = &mut self.legs[leg];
                let next = state.next.take();
                if let Some(handle) = state.rollover_deadline.take() {
                    ctx.cancel_future(handle);
                }
                state.rollover_failures += 1;
                let delay = self.settings.backoff.delay(state.rollover_failures - 1);
                let trigger = state.rollover_trigger.take().unwrap_or("retry");
                state.rollover_retry = Some(ctx.run_later(delay, move |actor, ctx| {
                    actor.legs[leg].rollover_retry = None;
                    actor.request_rollover(leg, trigger, ctx);
                }));
                if let Some(next) = next {
                    self.close_conn(next, reason, ctx);
                }
                self.lanes_changed();
            }
            Some(Place::Current(leg)) => self.on_current_lost(leg, reason, ctx),
        }
        self.publish_health();
    }

    fn on_current_lost(&mut self, leg: usize, reason: &'static str, ctx: &mut Context<Self>) {
        let state = &mut self.legs[leg];
        let Some(mut lost) = state.current.take() else {
            return;
        };
        if let Some(handle) = state.expiry_timer.take() {
            ctx.cancel_future(handle);
        }
        if state.next.is_some() {
            // A rollover candidate is connected and subscribed: it takes over at once (and
            // rolls over again if its own channel was announced ending meanwhile).
            state.rollover_trigger = Some("early_close");
            self.promote_next(leg, "early_close", ctx);
            self.close_conn(lost, reason, ctx);
            self.lanes_changed();
            return;
        }
        // A break-before-make rollover in progress ends as a plain reconnect.
        state.rollover_trigger = None;
        self.metrics
            .reconnects
            .get_or_create(&Metrics::reason(reason))
            .inc();
        self.metrics
            .leg_losses
            .get_or_create(&Metrics::reason(reason))
            .inc();
        state.status.losses += 1;
        let others_cover = self
            .legs
            .iter()
            .filter(|l| l.index != leg)
            .any(|l| l.current.as_ref().is_some_and(|c| c.first_frame_seen));
        if others_cover {
            tracing::warn!(
                shard = self.shard,
                leg,
                reason,
                "one leg lost; the other covers; reconnecting it"
            );
        } else {
            tracing::warn!(shard = self.shard, leg, reason, "socket lost; reconnecting");
        }
        // Reconnect to the same channel if it is not about to expire; a dead one is replaced.
        let margin = self.effective_margin(&lost);
        let expiring = lost
            .channel
            .expires
            .is_some_and(|expires| expires - margin <= Utc::now());
        let token_current = self
            .token
            .valid()
            .is_some_and(|t| t.generation == lost.token_generation);
        let reusable = !expiring
            && token_current
            && !matches!(reason, "dead_socket" | "pong_timeout")
            && lost.doomed.is_none();
        let state = &mut self.legs[leg];
        if reusable {
            if let Some(permit) = lost.permit.take() {
                state.reusable = Some(Reusable {
                    channel: lost.channel.clone(),
                    rejected: lost.rejected.clone(),
                    permit,
                });
            }
        }
        // The backoff starts over only after a socket that lived long enough: a server that
        // accepts and closes at once gets growing delays, not a loop at network speed.
        if lost.connected_at.elapsed() >= self.settings.stable_after {
            state.failures = 0;
        }
        let delay = if state.failures == 0 {
            Duration::ZERO
        } else {
            self.settings.backoff.delay(state.failures - 1)
        };
        state.failures += 1;
        state.retry_timer = Some(ctx.run_later(delay, move |actor, ctx| {
            actor.legs[leg].retry_timer = None;
            actor.connect_leg(leg, ctx);
        }));
        self.close_conn(lost, reason, ctx);
        self.lanes_changed();
    }

    /// Closes a replaced socket gracefully: a close frame goes out, but its stream is read until
    /// the server's close, so frames already on the wire are delivered (merged with the new
    /// socket's), not cut off. Forced after `rollover_timeout`. Its channel slot is given back
    /// only once it is closed.
    pub(super) fn retire_conn(&mut self, mut conn: Conn, ctx: &mut Context<Self>) {
        let _ = conn.sink.write(awc::ws::Message::Close(Some(
            awc::ws::CloseCode::Normal.into(),
        )));
        if let Some(timer) = conn.ping_timer.take() {
            ctx.cancel_future(timer);
        }
        let conn_id = conn.id;
        self.draining.push(conn);
        ctx.run_later(self.settings.rollover_timeout, move |actor, ctx| {
            if let Some(index) = actor.draining.iter().position(|c| c.id == conn_id) {
                let conn = actor.draining.swap_remove(index);
                actor.close_conn(conn, "retired", ctx);
                actor.lanes_changed();
            }
        });
    }

    /// Closes a socket for good: its coverage ends at its last frame (which may reveal or open
    /// a gap), and its channel slot is freed unless the leg keeps the channel to reconnect to.
    pub(super) fn close_conn(&mut self, mut conn: Conn, reason: &str, ctx: &mut Context<Self>) {
        let _ = conn.sink.write(awc::ws::Message::Close(Some(
            awc::ws::CloseCode::Normal.into(),
        )));
        conn.sink.close();
        ctx.cancel_future(conn.stream);
        if let Some(timer) = conn.ping_timer.take() {
            ctx.cancel_future(timer);
        }
        // A socket whose close frame we read delivered everything sent before it: TCP keeps
        // order. One that ended without a close frame or was found dead (no pong, silent,
        // broken frames) covered the shard as far as its last frame. One the bridge closed
        // itself (a pause, a shutdown, a retired socket that did not finish its handshake)
        // stopped being read with frames still on the wire, sent before the last frame read
        // arrived: it covered only as far as it proved, its last answered ping.
        let found_dead = matches!(
            reason,
            "closed" | "pong_timeout" | "dead_socket" | "protocol_error" | "rollover_timeout"
        );
        let last_ms = if reason == "closed_by_server" && conn.first_frame_seen {
            Utc::now().timestamp_millis()
        } else if found_dead {
            conn.last_frame_ms
        } else {
            conn.proven_ms
        };
        self.lane_ended(conn.id, last_ms, reason, ctx);
        drop(conn);
        self.metrics.channels_held.set(self.budget.held() as i64);
    }

    /// Closes every socket and stops every timer (shutdown, or reading paused).
    pub(super) fn close_everything(&mut self, reason: &'static str, ctx: &mut Context<Self>) {
        let mut conns = Vec::new();
        for leg in &mut self.legs {
            for handle in leg.timers() {
                ctx.cancel_future(handle);
            }
            leg.wanted = None;
            leg.rollover_trigger = None;
            conns.extend(leg.current.take());
            conns.extend(leg.next.take());
        }
        conns.append(&mut self.draining);
        for conn in conns {
            self.close_conn(conn, reason, ctx);
        }
        self.lanes_changed();
    }

    /// Sends `{"message":"ping"}` on a socket; no frame within `pong_timeout` ends it.
    pub(super) fn send_ping(&mut self, conn_id: u64, ctx: &mut Context<Self>) {
        let timeout = self.settings.pong_timeout;
        let Some(conn) = self.conn_mut(conn_id) else {
            return;
        };
        if conn.ping_timer.is_some() {
            return; // the earlier ping's verdict is pending
        }
        if conn.pings_in_flight.len() >= MAX_PINGS_IN_FLIGHT {
            // A server that stopped answering pings but sends frames: nothing more to prove
            // with pings; `dead_after` still watches the socket.
            return;
        }
        conn.pings_in_flight
            .push_back(Utc::now().timestamp_millis());
        let _ = conn
            .sink
            .write(awc::ws::Message::Text(r#"{"message":"ping"}"#.into()));
        let timer = ctx.run_later(timeout, move |actor, ctx| {
            let Some(conn) = actor.conn_mut(conn_id) else {
                return;
            };
            conn.ping_timer = None;
            let leg = conn.leg;
            tracing::warn!(
                shard = actor.shard,
                leg,
                timeout_ms = timeout.as_millis() as u64,
                "no frame after a ping within pong_timeout; the socket is dead"
            );
            actor.on_conn_lost(conn_id, "pong_timeout", ctx);
        });
        if let Some(conn) = self.conn_mut(conn_id) {
            conn.ping_timer = Some(timer);
        }
    }

    /// The rollover margin for this channel: `rollover_margin`, but at most a quarter of the
    /// channel's real lifetime, so short-lived channels are not rolled over at once (and onto
    /// another channel with the same problem).
    fn effective_margin(&self, conn: &Conn) -> chrono::Duration {
        let configured =
            chrono::Duration::from_std(self.settings.rollover_margin).unwrap_or_default();
        match conn.channel.expires {
            Some(expires) => {
                let lifetime = expires - conn.created_at;
                if lifetime <= chrono::Duration::zero() {
                    configured
                } else {
                    configured.min(lifetime / 4)
                }
            }
            None => configured,
        }
    }

    /// The least time between planned rollovers of a leg: `min_rollover_interval`, but at most a
    /// quarter of the channel's lifetime (so that the floor cannot outlast a short channel).
    fn rollover_floor(&self, conn: &Conn) -> Duration {
        let configured = self.settings.min_rollover_interval;
        match conn.channel.expires {
            Some(expires) => (expires - conn.created_at)
                .to_std()
                .ok()
                .filter(|lifetime| !lifetime.is_zero())
                .map(|lifetime| configured.min(lifetime / 4))
                .unwrap_or(configured),
            None => configured,
        }
    }

    fn schedule_expiry(&mut self, leg: usize, ctx: &mut Context<Self>) {
        if let Some(handle) = self.legs[leg].expiry_timer.take() {
            ctx.cancel_future(handle);
        }
        let Some(conn) = self.legs[leg].current.as_ref() else {
            return;
        };
        // Genesys channels live 24 h; assume that if the answer had no expiry.
        let expires = conn
            .channel
            .expires
            .unwrap_or(conn.created_at + chrono::Duration::hours(24));
        let margin = self.effective_margin(conn);
        let floor = self.rollover_floor(conn);
        let until = (expires - margin - Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO)
            // A skewed clock can put the expiry in the past: the floor still holds.
            .max(floor);
        self.legs[leg].expiry_timer = Some(ctx.run_later(until, move |actor, ctx| {
            actor.legs[leg].expiry_timer = None;
            actor.request_rollover(leg, "channel_expiry", ctx);
        }));
    }
}
