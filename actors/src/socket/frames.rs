//! What the SocketActor does with each frame.

use std::time::Instant;

use actix::prelude::*;
use awc::ws;
use bytes::{Bytes, BytesMut};
use chrono::Utc;

use super::lifecycle::Place;
use super::merge::{self, Verdict};
use super::SocketActor;
use crate::genesys::wire::{Envelope, FrameKind};
use crate::spool::{Record, RecordKind};

/// Spool record kind of a frame that is not a notification envelope (binary, not JSON, no
/// topic): the producer sends it straight to the dead-letter destination.
pub const MALFORMED: RecordKind = RecordKind::Reserved(2);

/// Most frames handed over from one read of a socket ([`super::read::ReadyFrames`], which
/// also bounds a read's bytes); a read that brought more is handled in several turns.
pub const FRAMES_PER_READ: usize = 256;

/// The events of the socket read being handled: appended to the spool together, with one
/// write, when the read's frames are done or before any other frame is handled (a pong proves
/// delivery only of what is already in the spool; a close or a lost socket must find every
/// event before it there). Lifecycle derivation appends event by event instead.
#[derive(Default)]
pub(super) struct EventBatch {
    records: Vec<Record>,
    /// Per record: its connection and receive time (for `frame_handled`).
    frames: Vec<(u64, i64)>,
}

impl SocketActor {
    /// Appends the batched events of this read. A refused one is dealt with as a single append
    /// would be (`block`: held; an I/O error: reading paused); the events after it are not
    /// handled, as frames that arrive after the sockets are closed are not: they lie after
    /// the proven point the pause's gap record starts from.
    pub(super) fn flush_events(&mut self, ctx: &mut Context<Self>) {
        if self.batch.records.is_empty() {
            return;
        }
        let mut batch = std::mem::take(&mut self.batch);
        let outcome = self.spool.append_batch(&batch.records);
        let mut results = outcome
            .outcomes
            .into_iter()
            .map(Ok)
            .chain(outcome.error.map(Err));
        let total = batch.records.len();
        let mut handled = 0;
        for (record, (conn_id, received_at_ms)) in
            batch.records.drain(..).zip(batch.frames.drain(..))
        {
            let Some(result) = results.next() else {
                break;
            };
            handled += 1;
            if self.append_done(record, result, ctx) {
                self.frame_handled(conn_id, received_at_ms);
            }
        }
        if handled < total {
            tracing::debug!(
                shard = self.shard,
                not_handled = total - handled,
                "events after a refused append left to the pause's gap record"
            );
        }
        batch.records.clear();
        batch.frames.clear();
        self.batch = batch; // keeps the allocations
    }

    pub(super) fn on_frame(&mut self, conn_id: u64, frame: ws::Frame, ctx: &mut Context<Self>) {
        if self.place(conn_id).is_none() {
            return; // a closed connection's last words
        }
        match frame {
            ws::Frame::Text(text) => self.on_message(conn_id, text, true, ctx),
            ws::Frame::Binary(data) => self.on_message(conn_id, data, false, ctx),
            ws::Frame::Continuation(item) => self.on_continuation(conn_id, item, ctx),
            ws::Frame::Ping(data) => {
                if let Some(conn) = self.conn_mut(conn_id) {
                    let _ = conn.sink.write(ws::Message::Pong(data));
                }
            }
            ws::Frame::Pong(_) => {}
            ws::Frame::Close(reason) => {
                self.flush_events(ctx);
                if matches!(self.place(conn_id), Some(Place::Draining(_))) {
                    tracing::debug!(shard = self.shard, ?reason, "replaced socket closed");
                } else {
                    tracing::info!(shard = self.shard, ?reason, "server closed the socket");
                }
                if let Some(conn) = self.conn_mut(conn_id) {
                    let _ = conn.sink.write(ws::Message::Close(reason));
                }
                self.on_conn_lost(conn_id, "closed_by_server", ctx);
            }
        }
    }

    fn on_continuation(
        &mut self,
        conn_id: u64,
        item: actix_http::ws::Item,
        ctx: &mut Context<Self>,
    ) {
        let max = self.settings.max_frame_bytes;
        let Some(conn) = self.conn_mut(conn_id) else {
            return;
        };
        let (is_text, chunk, last) = match item {
            actix_http::ws::Item::FirstText(b) => (Some(true), b, false),
            actix_http::ws::Item::FirstBinary(b) => (Some(false), b, false),
            actix_http::ws::Item::Continue(b) => (None, b, false),
            actix_http::ws::Item::Last(b) => (None, b, true),
        };
        if let Some(is_text) = is_text {
            conn.partial = Some((is_text, BytesMut::from(&chunk[..])));
        } else if let Some((_, buffer)) = conn.partial.as_mut() {
            buffer.extend_from_slice(&chunk);
        }
        let oversized = conn
            .partial
            .as_ref()
            .is_some_and(|(_, buffer)| buffer.len() > max);
        if oversized {
            conn.partial = None;
            tracing::error!(shard = self.shard, max_frame_bytes = max, "fragmented message exceeds max_frame_bytes; discarded (raise socket.max_frame_bytes)");
            self.metrics.frames_malformed.inc();
            return;
        }
        if last {
            if let Some((is_text, buffer)) = conn.partial.take() {
                self.on_message(conn_id, buffer.freeze(), is_text, ctx);
            }
        }
    }

    fn on_message(&mut self, conn_id: u64, data: Bytes, is_text: bool, ctx: &mut Context<Self>) {
        let now = Utc::now();
        let now_ms = now.timestamp_millis();
        let seen_at = Instant::now();
        let Some(conn) = self.conn_mut(conn_id) else {
            return;
        };
        conn.last_frame_at = seen_at;
        let ping_timer = conn.ping_timer.take();
        let first = !conn.first_frame_seen;
        conn.first_frame_seen = true;
        let covering = conn.covering;
        // The first frame proves the socket worked since it connected: it covers from then.
        let connected_ms = conn.created_at.timestamp_millis();
        if let Some(timer) = ping_timer {
            ctx.cancel_future(timer);
        }
        if first && covering {
            self.lane_started(conn_id, connected_ms, ctx);
        }
        if first {
            self.on_first_frame(conn_id, ctx);
        }
        self.last_frame_wall = Some(now);
        self.report_seen(seen_at, false);
        // One parse per frame: its kind, for an event the identities the merge needs and
        // where the producer finds topic, key and CorrelationId (the spool keeps that beside
        // the frame). With the merge the body's text is kept, to compare the legs' copies;
        // without it only the body's ids are read.
        // One clock read for every merge decision about this frame, so the attach grace
        // cannot end between deciding to take the identities and offering them.
        self.sync_connect_pending();
        let merging = self.merge.needed(&self.attached, seen_at);
        let envelope = is_text.then(|| {
            if merging {
                Envelope::read(&data)
            } else {
                Envelope::read_ids(&data)
            }
        });
        let (kind, ids) = match &envelope {
            Some(Ok(envelope)) => {
                let kind = envelope.kind();
                let ids = (matches!(kind, Ok(FrameKind::Event)) && merging)
                    .then(|| merge::identities(envelope))
                    .flatten();
                (kind, ids)
            }
            Some(Err(error)) => (Err(error.clone()), None),
            None => (
                Err(crate::genesys::wire::FrameError::Json(
                    "binary frame".into(),
                )),
                None,
            ),
        };
        let envelope = envelope.as_ref().and_then(|read| read.as_ref().ok());
        let counter = match &kind {
            Ok(FrameKind::Heartbeat) => &self.frames.heartbeat,
            Ok(FrameKind::Pong) => &self.frames.pong,
            Ok(FrameKind::Metadata) => &self.frames.metadata,
            Ok(FrameKind::SocketClosing) => &self.frames.socket_closing,
            Ok(FrameKind::ChannelInvalidated(_)) => &self.frames.channel_invalidated,
            Ok(FrameKind::OtherSystem(_)) => &self.frames.system,
            Ok(FrameKind::Event) => &self.frames.event,
            Err(_) => &self.frames.malformed,
        };
        counter.inc();
        if !matches!(kind, Ok(FrameKind::Event)) {
            // Whatever this frame says (a pong's proof, a close, a malformed frame's place in
            // the spool), the events before it are in the spool first.
            self.flush_events(ctx);
        }
        match kind {
            Ok(FrameKind::Pong) => {
                // Everything the server queued before answering the oldest ping is handled.
                if let Some(conn) = self.conn_mut(conn_id) {
                    if let Some(sent_ms) = conn.pings_in_flight.pop_front() {
                        conn.proven_ms = conn.proven_ms.max(sent_ms);
                    }
                }
                self.frame_handled(conn_id, now_ms);
            }
            Ok(FrameKind::Heartbeat | FrameKind::Metadata) => {
                self.frame_handled(conn_id, now_ms);
            }
            Ok(FrameKind::SocketClosing) => {
                self.frame_handled(conn_id, now_ms);
                self.on_doomed(conn_id, "socket_closing", ctx);
            }
            Ok(FrameKind::ChannelInvalidated(topic)) => {
                self.frame_handled(conn_id, now_ms);
                let reason = if topic.contains("token_revoked") {
                    "token_revoked"
                } else {
                    "no_longer_subscribed"
                };
                self.on_doomed(conn_id, reason, ctx);
            }
            Ok(FrameKind::OtherSystem(topic)) => {
                self.frame_handled(conn_id, now_ms);
                tracing::info!(shard = self.shard, topic = %topic, "system message");
            }
            Ok(FrameKind::Event) => {
                let due = self
                    .last_event_published
                    .is_none_or(|at| seen_at.duration_since(at) >= super::EVENT_HEALTH_EVERY);
                if due {
                    self.last_event_published = Some(seen_at);
                    self.health
                        .shard(self.shard, |s| s.last_event_at = Some(now));
                }
                self.deliver(conn_id, data.clone(), envelope, ids, now_ms, seen_at, ctx);
            }
            Err(error) => {
                // Lose nothing: the raw frame goes through the spool to the dead-letter
                // destination, where it can be inspected (once, if both legs brought it).
                if merging {
                    let identity = merge::raw_identity(&data);
                    let verdict = self.merge.offer(identity, conn_id, &self.attached, seen_at);
                    if verdict == Verdict::Duplicate {
                        self.metrics.duplicates_suppressed.inc();
                        self.frame_handled(conn_id, now_ms);
                        return;
                    }
                }
                self.metrics.frames_malformed.inc();
                tracing::warn!(shard = self.shard, error = %error, bytes = data.len(), "malformed frame; dead-lettering it");
                let record = Record {
                    kind: MALFORMED,
                    shard: self.shard,
                    received_at_ms: now_ms,
                    payload: data,
                    index: None,
                };
                if self.append(record, ctx) {
                    self.frame_handled(conn_id, now_ms);
                }
            }
        }
    }

    /// Tells the merge whether a socket is being connected (it keeps complete entries for
    /// one only while that can bring copies).
    fn sync_connect_pending(&mut self) {
        let pending = self.legs.iter().any(|leg| leg.pending.is_some());
        self.merge.set_connect_pending(pending);
    }

    /// A frame of `conn_id` is dealt with (durably, for an event). A restart's gap starts where
    /// the socket proved delivery (see `Conn::proven_ms`), not at this frame's receive time.
    fn frame_handled(&mut self, conn_id: u64, at_ms: i64) {
        let Some(conn) = self.conn_mut(conn_id) else {
            return;
        };
        conn.last_frame_ms = at_ms;
        let proven_ms = conn.proven_ms;
        self.cell.note_frame(proven_ms);
    }

    /// The server announced the end of this connection's channel (`socket_closing`,
    /// `token_revoked`, `no_longer_subscribed`). A leg's current socket rolls over at once (a
    /// candidate is promoted by its first frame, this one included, before this runs); a
    /// replaced socket needs nothing. A revoked or unsubscribed channel delivers nothing from
    /// this moment, so its coverage ends now; `socket_closing` leaves about a minute.
    fn on_doomed(&mut self, conn_id: u64, reason: &'static str, ctx: &mut Context<Self>) {
        let Some(conn) = self.conn_mut(conn_id) else {
            return;
        };
        conn.doomed = Some(reason);
        let last_ms = conn.last_frame_ms;
        if reason != "socket_closing" && conn.covering {
            conn.covering = false;
            self.lane_ended(conn_id, last_ms, reason, ctx);
        }
        match self.place(conn_id) {
            Some(Place::Current(leg)) => {
                tracing::info!(
                    shard = self.shard,
                    leg,
                    reason,
                    "channel ending; rolling over"
                );
                self.request_rollover(leg, reason, ctx);
            }
            Some(Place::Next(leg)) => {
                // Not reached while `on_message` promotes a candidate on its first frame, before
                // it reads what the frame says (so a candidate never holds a doom, and the early
                // close of issue #13 defect 9 cannot meet one). Kept for a change of that order:
                // `rollover_done`, which every promotion goes through, rolls over again.
                debug_assert!(
                    false,
                    "a rollover candidate got a frame without being promoted"
                );
                tracing::info!(
                    shard = self.shard,
                    leg,
                    reason,
                    "rollover channel ending too; will roll over again"
                );
            }
            _ => {}
        }
    }

    /// `envelope` is `data` read (an event always has one; `None` stores the event without
    /// an index, and the producer parses it): a copy the merge lets through is stored with the
    /// envelope's index. `ids` are the frame's identities, taken in `on_message` exactly when
    /// the merge was needed at `seen_at`: the merge judges the copy at that same instant.
    #[allow(clippy::too_many_arguments)]
    fn deliver(
        &mut self,
        conn_id: u64,
        data: Bytes,
        envelope: Option<&Envelope<'_>>,
        ids: Option<merge::Identities>,
        received_at_ms: i64,
        seen_at: Instant,
        ctx: &mut Context<Self>,
    ) {
        if let Some(ids) = ids {
            let keys = self.merge.identify(&ids, conn_id, &self.attached, seen_at);
            if let Some(keying) = self.merge.take_keying_change() {
                self.health
                    .shard(self.shard, |s| s.merge_keying = keying.as_str());
                tracing::info!(
                    shard = self.shard,
                    keying = keying.as_str(),
                    "merge keying learnt: the channels {} on CorrelationIds",
                    match keying {
                        super::correlation::Keying::CorrelationId => "agree",
                        super::correlation::Keying::TopicAndBody => "disagree",
                    }
                );
            }
            match self
                .merge
                .offer_keyed(keys, conn_id, &self.attached, seen_at)
            {
                Verdict::Deliver => {}
                Verdict::Duplicate => {
                    self.metrics.duplicates_suppressed.inc();
                    self.frame_handled(conn_id, received_at_ms);
                    return;
                }
                Verdict::LateDuplicate => {
                    self.metrics.duplicates_late.inc();
                }
            }
        }
        let index = envelope.and_then(|envelope| envelope.index(&data));
        let record = Record::event(self.shard, received_at_ms, data).with_index(index);
        if self.conversations.is_some() {
            // Lifecycle records are derived under the conversations' lock, event by event.
            if self.append(record, ctx) {
                self.frame_handled(conn_id, received_at_ms);
            }
            return;
        }
        self.batch.records.push(record);
        self.batch.frames.push((conn_id, received_at_ms));
    }
}
