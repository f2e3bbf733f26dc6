//! Channel lifecycle of a shard: connect, roll over make-before-break, recover from losses,
//! record gaps.

use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::Utc;
use futures_util::StreamExt;
use serde_json::json;

use super::conn::{establish, EstablishError, Established, Plan};
use super::{Conn, ConnItem, Establishing, OpenGap, SocketActor};
use crate::health::ShardPhase;
use crate::messages::TokenRejected;
use crate::metrics::Metrics;
use crate::secret::short_channel_id;
use crate::spool::{AppendOutcome, Record, SpoolError};

impl SocketActor {
    pub(super) fn is_current(&self, conn_id: u64) -> bool {
        self.current.as_ref().is_some_and(|c| c.id == conn_id)
    }

    pub(super) fn is_live(&self, conn_id: u64) -> bool {
        self.is_current(conn_id)
            || self.next.as_ref().is_some_and(|c| c.id == conn_id)
            || self.draining.iter().any(|c| c.id == conn_id)
    }

    pub(super) fn conn_mut(&mut self, conn_id: u64) -> Option<&mut Conn> {
        if self.is_current(conn_id) {
            return self.current.as_mut();
        }
        if self.next.as_ref().is_some_and(|c| c.id == conn_id) {
            return self.next.as_mut();
        }
        self.draining.iter_mut().find(|c| c.id == conn_id)
    }

    /// Gets the shard a socket after a start or a loss.
    pub(super) fn connect_primary(&mut self, ctx: &mut Context<Self>) {
        if self.stopping || self.primary_pending || self.current.is_some() {
            return;
        }
        if let Some(handle) = self.retry_timer.take() {
            ctx.cancel_future(handle);
        }
        self.primary_pending = true;
        self.health
            .shard(self.shard, |s| s.phase = ShardPhase::Connecting);
        self.spawn_establish(Establishing::Primary, ctx);
    }

    /// Starts a make-before-break rollover; the current socket keeps streaming meanwhile.
    pub(super) fn start_rollover(&mut self, trigger: &'static str, ctx: &mut Context<Self>) {
        if self.stopping || self.next.is_some() || self.rollover_pending || self.primary_pending {
            // A socket being made now already gets the current token and topics; the check in
            // `on_established` rolls over again if they changed meanwhile.
            return;
        }
        if self.current.is_none() {
            // Nothing to roll over from: a plain (re)connect does the job.
            self.connect_primary(ctx);
            return;
        }
        if let Some(handle) = self.rollover_retry.take() {
            ctx.cancel_future(handle);
        }
        tracing::info!(shard = self.shard, trigger, "rolling over to a new channel");
        self.rollover_pending = true;
        self.rollover_trigger = Some(trigger);
        self.dedup.begin_overlap();
        self.spawn_establish(Establishing::Rollover(trigger), ctx);
    }

    fn spawn_establish(&mut self, purpose: Establishing, ctx: &mut Context<Self>) {
        let Some(token) = self.token.valid() else {
            // No valid token yet (start-up, or a refresh in progress): try again shortly.
            self.clear_pending(purpose);
            ctx.run_later(
                Duration::from_millis(200),
                move |actor, ctx| match purpose {
                    Establishing::Rollover(trigger) => actor.start_rollover(trigger, ctx),
                    Establishing::Primary => actor.connect_primary(ctx),
                },
            );
            return;
        };
        let reuse = match purpose {
            Establishing::Primary => self.reusable.take(),
            Establishing::Rollover(_) => None,
        };
        let topics = self.topics.clone();
        let plan = Plan {
            client: self.client.clone(),
            token: token.token.clone(),
            topics: topics.clone(),
            max_frame_bytes: self.settings.max_frame_bytes,
            reuse,
        };
        let generation = token.generation;
        async move { establish(plan).await }
            .into_actor(self)
            .map(move |result, actor, ctx| {
                actor.on_established(purpose, result, generation, topics, ctx)
            })
            .spawn(ctx);
    }

    fn clear_pending(&mut self, purpose: Establishing) {
        match purpose {
            Establishing::Primary => self.primary_pending = false,
            Establishing::Rollover(_) => self.rollover_pending = false,
        }
    }

    fn on_established(
        &mut self,
        purpose: Establishing,
        result: Result<Established, EstablishError>,
        generation: u64,
        topics: Vec<String>,
        ctx: &mut Context<Self>,
    ) {
        self.clear_pending(purpose);
        if self.stopping {
            return; // dropping the socket closes it
        }
        let established = match result {
            Ok(established) => established,
            Err(error) => return self.on_establish_failed(purpose, error, generation, ctx),
        };
        let conn = self.attach(established, generation, ctx);
        let conn_id = conn.id;
        let is_rollover = matches!(purpose, Establishing::Rollover(_));
        if is_rollover && self.current.is_some() && self.next.is_none() {
            self.next = Some(conn);
            let timeout = self.settings.rollover_timeout;
            self.rollover_deadline = Some(ctx.run_later(timeout, move |actor, ctx| {
                actor.rollover_deadline = None;
                let silent = actor
                    .next
                    .as_ref()
                    .is_some_and(|c| c.id == conn_id && !c.first_frame_seen);
                if silent {
                    tracing::warn!(
                        shard = actor.shard,
                        "rollover channel showed no frame in time"
                    );
                    actor.on_conn_lost(conn_id, "rollover_timeout", ctx);
                }
            }));
        } else if self.current.is_some() {
            // Another attempt got there first: one socket per shard.
            tracing::debug!(shard = self.shard, "surplus socket closed");
            self.close_conn(conn, ctx);
            return;
        } else {
            self.current = Some(conn);
            self.last_sign_of_life = Some(Instant::now());
            self.failures = 0;
            self.health
                .shard(self.shard, |s| s.phase = ShardPhase::Streaming);
            self.schedule_expiry(ctx);
        }
        // Provoke a pong, so that a healthy new socket proves itself at once.
        if let Some(conn) = self.conn_mut(conn_id) {
            let _ = conn
                .sink
                .write(awc::ws::Message::Text(r#"{"message":"ping"}"#.into()));
        }
        self.report_seen(true);
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
            self.start_rollover(trigger, ctx);
        }
    }

    fn attach(
        &mut self,
        established: Established,
        generation: u64,
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
        let stream =
            stream
                .map(move |item| ConnItem::Frame(id, item))
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
        self.health.shard(self.shard, |s| {
            s.channel = Some(short.clone());
            s.channel_created_at = Some(created_at);
            s.channel_expires_at = channel.expires;
            s.rejected_topics = rejected.clone();
            s.connects += 1;
            s.last_error = None;
        });
        tracing::info!(shard = self.shard, channel = %short, reused, rejected = rejected.len(), "socket connected");
        if !reused {
            self.write_status(
                json!({
                    "type": "channel_created",
                    "shard": self.shard,
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
            channel,
            rejected,
            created_at,
            token_generation: generation,
            sink,
            stream: stream_handle,
            first_frame_seen: false,
            doomed: None,
            partial: None,
        }
    }

    fn on_establish_failed(
        &mut self,
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
        let attempt = match purpose {
            Establishing::Rollover(_) => {
                self.rollover_failures += 1;
                self.rollover_failures
            }
            Establishing::Primary => {
                self.failures += 1;
                self.failures
            }
        };
        let delay = error
            .retry_after()
            .unwrap_or_else(|| self.settings.backoff.delay(attempt - 1));
        let message = error.to_string();
        tracing::warn!(shard = self.shard, error = %message, retry_in_ms = delay.as_millis() as u64, "could not get onto a channel");
        self.health.shard(self.shard, |s| {
            s.last_error = Some(message);
            if purpose == Establishing::Primary {
                s.phase = ShardPhase::Backoff;
            }
        });
        match purpose {
            Establishing::Rollover(trigger) => {
                self.dedup.end_overlap(Instant::now());
                self.rollover_retry = Some(ctx.run_later(delay, move |actor, ctx| {
                    actor.rollover_retry = None;
                    actor.start_rollover(trigger, ctx)
                }));
            }
            Establishing::Primary => {
                self.retry_timer = Some(ctx.run_later(delay, |actor, ctx| {
                    actor.retry_timer = None;
                    actor.connect_primary(ctx)
                }));
            }
        }
    }

    /// The first frame on a connection proves it live: promote a rollover candidate, close a gap.
    pub(super) fn on_first_frame(&mut self, conn_id: u64, ctx: &mut Context<Self>) {
        let Some(conn) = self.conn_mut(conn_id) else {
            return;
        };
        if conn.first_frame_seen {
            return;
        }
        conn.first_frame_seen = true;
        let is_next = self.next.as_ref().is_some_and(|c| c.id == conn_id);
        if is_next {
            self.promote_next(ctx);
        }
        self.close_gap(ctx);
    }

    fn promote_next(&mut self, ctx: &mut Context<Self>) {
        let Some(next) = self.next.take() else {
            return;
        };
        if let Some(handle) = self.rollover_deadline.take() {
            ctx.cancel_future(handle);
        }
        let trigger = self.rollover_trigger.take().unwrap_or("rollover");
        let old = self.current.replace(next);
        self.last_sign_of_life = Some(Instant::now());
        self.rollover_failures = 0;
        self.dedup.end_overlap(Instant::now());
        if let Some(old) = old {
            self.retire_conn(old, ctx);
        }
        self.metrics
            .rollovers
            .get_or_create(&Metrics::reason(trigger))
            .inc();
        self.health.shard(self.shard, |s| {
            s.rollovers += 1;
            s.phase = ShardPhase::Streaming;
        });
        let short = self
            .current
            .as_ref()
            .map(|c| short_channel_id(&c.channel.id))
            .unwrap_or_default();
        tracing::info!(shard = self.shard, channel = %short, "rolled over");
        self.write_status(
            json!({"type": "rollover", "shard": self.shard, "channel": short, "trigger": trigger}),
            ctx,
        );
        self.schedule_expiry(ctx);
        if let Some(reason) = self.current.as_ref().and_then(|c| c.doomed) {
            self.start_rollover(reason, ctx);
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
        if let Some(index) = self.draining.iter().position(|c| c.id == conn_id) {
            // A retired socket finished its close handshake: nothing more can arrive on it.
            let conn = self.draining.swap_remove(index);
            self.close_conn(conn, ctx);
            return;
        }
        if self.next.as_ref().is_some_and(|c| c.id == conn_id) {
            if let Some(next) = self.next.take() {
                self.close_conn(next, ctx);
            }
            self.dedup.end_overlap(Instant::now());
            self.rollover_failures += 1;
            let delay = self.settings.backoff.delay(self.rollover_failures - 1);
            let trigger = self.rollover_trigger.unwrap_or("retry");
            self.rollover_retry = Some(ctx.run_later(delay, move |actor, ctx| {
                actor.rollover_retry = None;
                actor.start_rollover(trigger, ctx);
            }));
            return;
        }
        if !self.is_current(conn_id) {
            return;
        }
        let Some(lost) = self.current.take() else {
            return;
        };
        if let Some(next) = self.next.take() {
            // A rollover candidate is connected and subscribed: it takes over at once.
            self.current = Some(next);
            self.last_sign_of_life = Some(Instant::now());
            self.close_conn(lost, ctx);
            self.metrics
                .rollovers
                .get_or_create(&Metrics::reason("early_close"))
                .inc();
            self.dedup.end_overlap(Instant::now());
            self.schedule_expiry(ctx);
            return;
        }
        self.metrics
            .reconnects
            .get_or_create(&Metrics::reason(reason))
            .inc();
        if self.gap.is_none() {
            let since = self.last_frame_wall.unwrap_or_else(Utc::now);
            self.gap = Some(OpenGap { since, reason });
        }
        tracing::warn!(shard = self.shard, reason, "socket lost; reconnecting");
        // Reconnect to the same channel if it is not about to expire; a dead one is replaced.
        let expiring = lost.channel.expires.is_some_and(|expires| {
            expires - chrono::Duration::from_std(self.settings.rollover_margin).unwrap_or_default()
                <= Utc::now()
        });
        let token_current = self
            .token
            .valid()
            .is_some_and(|t| t.generation == lost.token_generation);
        if !expiring && token_current && reason != "dead_socket" && lost.doomed.is_none() {
            self.reusable = Some((lost.channel.clone(), lost.rejected.clone()));
        }
        self.close_conn(lost, ctx);
        if let Some(handle) = self.expiry_timer.take() {
            ctx.cancel_future(handle);
        }
        let delay = if self.failures == 0 {
            Duration::ZERO
        } else {
            self.settings.backoff.delay(self.failures - 1)
        };
        self.health
            .shard(self.shard, |s| s.phase = ShardPhase::Backoff);
        self.retry_timer = Some(ctx.run_later(delay, |actor, ctx| {
            actor.retry_timer = None;
            actor.connect_primary(ctx);
        }));
    }

    /// Closes a replaced socket gracefully: a close frame goes out, but its stream is read until
    /// the server's close, so frames already on the wire are delivered (deduplicated against
    /// the new socket), not cut off. Forced after `rollover_timeout`.
    fn retire_conn(&mut self, mut conn: Conn, ctx: &mut Context<Self>) {
        let _ = conn.sink.write(awc::ws::Message::Close(Some(
            awc::ws::CloseCode::Normal.into(),
        )));
        let conn_id = conn.id;
        self.draining.push(conn);
        ctx.run_later(self.settings.rollover_timeout, move |actor, ctx| {
            if let Some(index) = actor.draining.iter().position(|c| c.id == conn_id) {
                let conn = actor.draining.swap_remove(index);
                actor.close_conn(conn, ctx);
            }
        });
    }

    pub(super) fn close_conn(&mut self, mut conn: Conn, ctx: &mut Context<Self>) {
        let _ = conn.sink.write(awc::ws::Message::Close(Some(
            awc::ws::CloseCode::Normal.into(),
        )));
        conn.sink.close();
        ctx.cancel_future(conn.stream);
    }

    fn close_gap(&mut self, ctx: &mut Context<Self>) {
        let Some(gap) = self.gap.take() else {
            return;
        };
        let end = Utc::now();
        let seconds = (end - gap.since).num_milliseconds().max(0) as f64 / 1000.0;
        self.metrics.gaps.inc();
        self.metrics.gap_seconds.inc_by(seconds);
        tracing::warn!(
            shard = self.shard,
            reason = gap.reason,
            gap_seconds = seconds,
            "stream gap closed: events in this window may be missing"
        );
        self.write_status(
            json!({
                "type": "gap",
                "shard": self.shard,
                "topics": self.topics.len(),
                "gap_start": gap.since,
                "gap_end": end,
                "seconds": seconds,
                "reason": gap.reason,
            }),
            ctx,
        );
        self.queue_backfill(gap.since, end);
    }

    fn schedule_expiry(&mut self, ctx: &mut Context<Self>) {
        if let Some(handle) = self.expiry_timer.take() {
            ctx.cancel_future(handle);
        }
        let Some(conn) = self.current.as_ref() else {
            return;
        };
        // Genesys channels live 24 h; assume that if the answer had no expiry.
        let expires = conn
            .channel
            .expires
            .unwrap_or(conn.created_at + chrono::Duration::hours(24));
        let margin = chrono::Duration::from_std(self.settings.rollover_margin).unwrap_or_default();
        let until = (expires - margin - Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO);
        self.expiry_timer = Some(ctx.run_later(until, |actor, ctx| {
            actor.expiry_timer = None;
            actor.start_rollover("channel_expiry", ctx);
        }));
    }

    /// Writes a status record (gap, lifecycle) through the spool to the status topic.
    pub(super) fn write_status(&mut self, body: serde_json::Value, ctx: &mut Context<Self>) {
        let payload = serde_json::to_vec(&body).unwrap_or_default();
        let record = Record::gap(self.shard, Utc::now().timestamp_millis(), payload);
        self.append(record, ctx);
    }

    /// Appends to the spool, applying the disk-cap policy.
    pub(super) fn append(&mut self, record: Record, ctx: &mut Context<Self>) {
        match self.spool.append(&record) {
            Ok(AppendOutcome::Appended { after_drop, .. }) => {
                self.metrics.events_appended.inc();
                if let Some(span) = after_drop {
                    self.report_dropped(span, ctx);
                }
            }
            Ok(AppendOutcome::Dropped) => {
                self.metrics.spool_dropped.inc();
            }
            Err(SpoolError::Full { .. }) => self.block_until_room(record, ctx),
            Err(error) => {
                // An I/O error (disk full, read-only volume): the frame cannot be made durable.
                // Stop reading rather than pretend; the gap record says what was missed.
                tracing::error!(shard = self.shard, error = %error, "spool write failed; pausing the socket");
                self.metrics
                    .events_failed
                    .get_or_create(&Metrics::reason("spool_io"))
                    .inc();
                self.pause_reading("spool_io_error", ctx);
                self.failures += 1;
                let delay = self.settings.backoff.delay(self.failures - 1);
                self.retry_timer = Some(ctx.run_later(delay, |actor, ctx| {
                    actor.retry_timer = None;
                    actor.connect_primary(ctx);
                }));
            }
        }
    }

    /// Hands a closed gap to the backfill queue (durable), when backfill is enabled.
    fn queue_backfill(&self, start: chrono::DateTime<Utc>, end: chrono::DateTime<Utc>) {
        let Some(queue) = &self.backfill else {
            return;
        };
        let ids = crate::backfill::query::entity_ids(&self.topics);
        let gap = crate::backfill::queue::PendingGap::new(self.shard, start, end, ids);
        if let Err(error) = queue.push(gap) {
            tracing::error!(shard = self.shard, error = %error, "cannot queue the gap for backfill");
        }
    }

    /// `drop-newest` discarded events while the spool was full: one gap record says which.
    fn report_dropped(&mut self, span: crate::spool::DroppedSpan, ctx: &mut Context<Self>) {
        let start = chrono::DateTime::from_timestamp_millis(span.earliest_received_at_ms);
        let end = chrono::DateTime::from_timestamp_millis(span.latest_received_at_ms);
        tracing::error!(
            shard = self.shard,
            dropped = span.records,
            "spool was full: events dropped (policy drop-newest)"
        );
        self.metrics.gaps.inc();
        self.write_status(
            json!({
                "type": "gap",
                "shard": self.shard,
                "topics": self.topics.len(),
                "gap_start": start,
                "gap_end": end,
                "dropped_events": span.records,
                "reason": "spool_full_dropped",
            }),
            ctx,
        );
        if let (Some(start), Some(end)) = (start, end) {
            self.queue_backfill(start, end);
        }
    }

    fn block_until_room(&mut self, record: Record, ctx: &mut Context<Self>) {
        if record.kind != crate::spool::RecordKind::Event {
            tracing::error!(
                shard = self.shard,
                "spool full even for status records; status record not written"
            );
            return;
        }
        tracing::warn!(
            shard = self.shard,
            "spool full (policy: block); pausing the socket until Kafka catches up"
        );
        let payload_len = record.payload.len();
        self.held_frame = Some(record);
        self.pause_reading("spool_full", ctx);
        let spool = self.spool.clone();
        async move { spool.wait_for_space(payload_len).await }
            .into_actor(self)
            .map(|_, actor, ctx| {
                if let Some(record) = actor.held_frame.take() {
                    actor.append(record, ctx);
                }
                if actor.held_frame.is_none() {
                    tracing::info!(shard = actor.shard, "spool has room again; reconnecting");
                    actor.connect_primary(ctx);
                }
            })
            .spawn(ctx);
    }

    fn pause_reading(&mut self, reason: &'static str, ctx: &mut Context<Self>) {
        if self.gap.is_none() {
            let since = self.last_frame_wall.unwrap_or_else(Utc::now);
            self.gap = Some(OpenGap { since, reason });
        }
        for conn in [self.current.take(), self.next.take()]
            .into_iter()
            .flatten()
        {
            self.close_conn(conn, ctx);
        }
        self.health
            .shard(self.shard, |s| s.phase = ShardPhase::Paused);
    }
}
