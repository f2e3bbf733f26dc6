//! What the SocketActor does with each frame.

use std::time::Instant;

use actix::prelude::*;
use awc::ws;
use bytes::{Bytes, BytesMut};
use chrono::Utc;

use super::{dedup, SocketActor};
use crate::genesys::wire::{classify_frame, FrameKind};
use crate::metrics::Metrics;
use crate::spool::{Record, RecordKind};

/// Spool record kind of a frame that is not a notification envelope (binary, not JSON, no
/// topic): the producer sends it straight to the dead-letter destination.
pub const MALFORMED: RecordKind = RecordKind::Reserved(2);

impl SocketActor {
    pub(super) fn on_frame(&mut self, conn_id: u64, frame: ws::Frame, ctx: &mut Context<Self>) {
        if !self.is_live(conn_id) {
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
                if self.is_current(conn_id) {
                    tracing::info!(shard = self.shard, ?reason, "server closed the socket");
                } else {
                    tracing::debug!(shard = self.shard, ?reason, "replaced socket closed");
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
        self.last_frame_wall = Some(now);
        if self.is_current(conn_id) {
            self.last_sign_of_life = Some(Instant::now());
        }
        self.on_first_frame(conn_id, ctx);
        self.report_seen(false);
        let kind = if is_text {
            classify_frame(&data)
        } else {
            Err(crate::genesys::wire::FrameError::Json(
                "binary frame".into(),
            ))
        };
        let label = match &kind {
            Ok(FrameKind::Heartbeat) => "heartbeat",
            Ok(FrameKind::Pong) => "pong",
            Ok(FrameKind::Metadata) => "metadata",
            Ok(FrameKind::SocketClosing) => "socket_closing",
            Ok(FrameKind::ChannelInvalidated(_)) => "channel_invalidated",
            Ok(FrameKind::OtherSystem(_)) => "system",
            Ok(FrameKind::Event) => "event",
            Err(_) => "malformed",
        };
        self.metrics
            .frames_received
            .get_or_create(&Metrics::kind(label))
            .inc();
        match kind {
            Ok(FrameKind::Heartbeat | FrameKind::Pong | FrameKind::Metadata) => {}
            Ok(FrameKind::SocketClosing) => self.on_doomed(conn_id, "socket_closing", ctx),
            Ok(FrameKind::ChannelInvalidated(topic)) => {
                let reason = if topic.contains("token_revoked") {
                    "token_revoked"
                } else {
                    "no_longer_subscribed"
                };
                self.on_doomed(conn_id, reason, ctx);
            }
            Ok(FrameKind::OtherSystem(topic)) => {
                tracing::info!(shard = self.shard, topic = %topic, "system message");
            }
            Ok(FrameKind::Event) => {
                self.health
                    .shard(self.shard, |s| s.last_event_at = Some(now));
                self.deliver(conn_id, data, now.timestamp_millis(), ctx);
            }
            Err(error) => {
                // Lose nothing: the raw frame goes through the spool to the dead-letter
                // destination, where it can be inspected.
                self.metrics.frames_malformed.inc();
                tracing::warn!(shard = self.shard, error = %error, bytes = data.len(), "malformed frame; dead-lettering it");
                let record = Record {
                    kind: MALFORMED,
                    shard: self.shard,
                    received_at_ms: now.timestamp_millis(),
                    payload: data,
                };
                self.append(record, ctx);
            }
        }
    }

    /// The server announced the end of this connection's channel (`socket_closing`,
    /// `token_revoked`, `no_longer_subscribed`). The current socket rolls over at once; a rollover
    /// candidate remembers it and rolls over again as soon as it is promoted; a replaced socket
    /// needs nothing.
    fn on_doomed(&mut self, conn_id: u64, reason: &'static str, ctx: &mut Context<Self>) {
        if self.is_current(conn_id) {
            tracing::info!(shard = self.shard, reason, "channel ending; rolling over");
            if let Some(current) = self.current.as_mut() {
                // Never reconnect to this channel: it is closing, or lost its subscriptions.
                current.doomed = Some(reason);
            }
            if reason != "socket_closing" && self.gap.is_none() {
                // A revoked or unsubscribed channel delivers nothing more from this moment,
                // while socket_closing leaves about a minute to roll over without a gap.
                self.gap = Some(super::OpenGap {
                    since: chrono::Utc::now(),
                    reason,
                });
            }
            self.start_rollover(reason, ctx);
        } else if let Some(next) = self.next.as_mut().filter(|c| c.id == conn_id) {
            tracing::info!(
                shard = self.shard,
                reason,
                "rollover channel ending too; will roll over again"
            );
            next.doomed = Some(reason);
        }
    }

    fn deliver(&mut self, conn_id: u64, data: Bytes, received_at_ms: i64, ctx: &mut Context<Self>) {
        if self.dedup.is_active() {
            if let Some(identity) = dedup::event_identity(&data) {
                if self.dedup.is_duplicate(identity, conn_id, Instant::now()) {
                    self.metrics.duplicates_suppressed.inc();
                    return;
                }
            }
        }
        let record = Record::event(self.shard, received_at_ms, data);
        self.append(record, ctx);
    }
}
