//! Gap records, status records and the spool's disk-cap policy, for one shard.
//!
//! Gap records are built here and nowhere else: from [`Coverage`](super::coverage) (no socket
//! covered the shard) and from drop spans (`drop-newest` discarded events). A status record the
//! spool cannot take yet is kept in the shard's durable state and written as soon as there is
//! room, in order.

use std::time::Duration;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use serde_json::json;

use super::coverage::Gap;
use super::SocketActor;
use crate::metrics::Metrics;
use crate::shard_state::{DropSpan, MAX_PENDING_STATUS};
use crate::spool::{AppendOutcome, Record, RecordKind, SpoolError};

/// A drop span (`drop-newest`) is over, and reported, after this long without a drop.
pub(super) const DROP_SPAN_QUIET_MS: i64 = 1000;

fn at(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
}

impl SocketActor {
    /// The first frame on socket `conn_id`: it covers the shard from now, closing an open gap.
    pub(super) fn lane_started(&mut self, conn_id: u64, first_ms: i64, ctx: &mut Context<Self>) {
        if self.coverage.lane_started(conn_id, first_ms) {
            self.confirm_close_later(ctx);
        }
    }

    /// A gap's end is reported once the socket that ended it proved itself (a socket gone
    /// again at once does not end the gap).
    fn confirm_close_later(&mut self, ctx: &mut Context<Self>) {
        ctx.run_later(super::coverage::CONFIRM_CLOSE, |actor, ctx| {
            if let Some(gap) = actor.coverage.confirm_close() {
                actor.emit_gap(gap, None, ctx);
                actor.sync_open_gap();
                actor.publish_health();
            }
        });
    }

    /// Socket `conn_id` stopped covering the shard; its last frame was at `last_ms`.
    pub(super) fn lane_ended(
        &mut self,
        conn_id: u64,
        last_ms: i64,
        reason: &str,
        ctx: &mut Context<Self>,
    ) {
        let was_open = self.coverage.open_gap().is_some();
        let now_ms = Utc::now().timestamp_millis();
        let (holes, pending) = self.coverage.lane_ended(conn_id, last_ms, now_ms, reason);
        for gap in holes {
            // Found after the fact: a socket presumed live was silent while another was down.
            self.emit_gap(gap, None, ctx);
        }
        if pending {
            self.confirm_close_later(ctx);
        }
        if !was_open && self.coverage.open_gap().is_some() {
            tracing::warn!(
                shard = self.shard,
                reason,
                "no socket covers the shard: gap open until the next frame"
            );
        }
        self.sync_open_gap();
    }

    /// Keeps the open gap in the durable shard state (written at once: it must survive a crash
    /// that happens right now).
    pub(super) fn sync_open_gap(&mut self) {
        let open = self.coverage.open_gap().cloned();
        let changed = {
            let mut record = self.cell.lock();
            let changed = record.open_gap != open;
            record.open_gap = open;
            changed
        };
        if changed {
            self.states.save_or_log();
        }
    }

    /// One gap record to the status topic, metrics, log, and the backfill queue.
    fn emit_gap(&mut self, gap: Gap, dropped_events: Option<u64>, ctx: &mut Context<Self>) {
        let (Some(start), Some(end)) = (at(gap.start_ms), at(gap.end_ms.max(gap.start_ms))) else {
            tracing::error!(
                shard = self.shard,
                ?gap,
                "gap with an impossible time; not reported"
            );
            return;
        };
        let seconds = (end - start).num_milliseconds().max(0) as f64 / 1000.0;
        self.metrics.gaps.inc();
        self.metrics.gap_seconds.inc_by(seconds);
        tracing::warn!(
            shard = self.shard,
            reason = %gap.reason,
            gap_seconds = seconds,
            dropped_events,
            "stream gap: events in this window may be missing"
        );
        let mut body = json!({
            "type": "gap",
            "shard": self.shard,
            "legs": self.legs.len(),
            "topics": self.topics.len(),
            "gap_start": start,
            "gap_end": end,
            "seconds": seconds,
            "reason": gap.reason,
        });
        if let Some(count) = dropped_events {
            body["dropped_events"] = json!(count);
        }
        self.write_status(body, ctx);
        self.queue_backfill(start, end);
    }

    /// Writes a status record (gap, rollover, channel) through the spool to the status topic.
    /// If the spool cannot take it now, it waits in the durable shard state, in order.
    pub(super) fn write_status(&mut self, body: serde_json::Value, ctx: &mut Context<Self>) {
        let waiting = !self.cell.lock().pending_status.is_empty();
        if !waiting && self.append_status(&body) {
            return;
        }
        {
            let mut record = self.cell.lock();
            if record.pending_status.len() >= MAX_PENDING_STATUS {
                let dropped = record.pending_status.remove(0);
                tracing::error!(shard = self.shard, record = %dropped, "too many status records waiting for room in the spool; the oldest is dropped");
                self.metrics
                    .events_failed
                    .get_or_create(&Metrics::reason("status_dropped"))
                    .inc();
            }
            record.pending_status.push(body);
        }
        self.states.save_or_log();
        self.flush_pending_status(ctx);
    }

    fn append_status(&mut self, body: &serde_json::Value) -> bool {
        if self.refuse_status > 0 {
            self.refuse_status -= 1;
            tracing::warn!(
                shard = self.shard,
                "status record waits for room in the spool (injected)"
            );
            return false;
        }
        let payload = serde_json::to_vec(body).unwrap_or_default();
        let record = Record::gap(self.shard, Utc::now().timestamp_millis(), payload);
        match self.spool.append(&record) {
            // Not an event: `events_spooled` counts what Genesys sent, nothing of the bridge's.
            Ok(_) => true,
            Err(error) => {
                tracing::warn!(shard = self.shard, error = %error, "status record waits for room in the spool");
                false
            }
        }
    }

    /// Writes waiting status records in order; retried every second until they are all in.
    pub(super) fn flush_pending_status(&mut self, ctx: &mut Context<Self>) {
        let mut written = false;
        loop {
            let next = self.cell.lock().pending_status.first().cloned();
            let Some(body) = next else {
                break;
            };
            if !self.append_status(&body) {
                break;
            }
            self.cell.lock().pending_status.remove(0);
            written = true;
        }
        if written {
            self.states.save_or_log();
        }
        let left = !self.cell.lock().pending_status.is_empty();
        if left && self.status_retry.is_none() {
            self.status_retry = Some(ctx.run_later(Duration::from_secs(1), |actor, ctx| {
                actor.status_retry = None;
                actor.flush_pending_status(ctx);
            }));
        }
    }

    /// Appends a frame to the spool, applying the disk-cap policy. True when the frame is dealt
    /// with (appended, or dropped and recorded in the drop span); false when it is held back
    /// (`block`) or could not be written.
    pub(super) fn append(&mut self, record: Record, ctx: &mut Context<Self>) -> bool {
        let appended = match &self.conversations {
            Some(conversations) if record.kind == RecordKind::Event => {
                conversations.append_event(&record)
            }
            _ => self.spool.append(&record),
        };
        self.append_done(record, appended, ctx)
    }

    /// What [`append`](Self::append) does once the spool answered for `record`.
    pub(super) fn append_done(
        &mut self,
        record: Record,
        appended: Result<AppendOutcome, SpoolError>,
        ctx: &mut Context<Self>,
    ) -> bool {
        match appended {
            Ok(AppendOutcome::Appended { .. }) => {
                self.spool_io_failures = 0;
                self.metrics.events_appended.inc();
                if record.kind == RecordKind::Event {
                    self.report_dropped_if_over(ctx);
                }
                true
            }
            Ok(AppendOutcome::Dropped) => {
                self.metrics.spool_dropped.inc();
                self.note_dropped(record.received_at_ms);
                true
            }
            Err(SpoolError::Full { .. }) => {
                self.block_until_room(record, ctx);
                false
            }
            Err(error) => {
                // An I/O error (disk full, read-only volume): the frame cannot be made durable.
                // Stop reading rather than pretend; the gap record says what was missed.
                tracing::error!(shard = self.shard, error = %error, "spool write failed; pausing the sockets");
                self.metrics
                    .events_failed
                    .get_or_create(&Metrics::reason("spool_io"))
                    .inc();
                self.pause_reading("spool_io_error", ctx);
                let delay = self.settings.backoff.delay(self.spool_io_failures);
                self.spool_io_failures = self.spool_io_failures.saturating_add(1);
                ctx.run_later(delay, |actor, ctx| actor.resume_reading(ctx));
                false
            }
        }
    }

    /// `drop-newest` discarded an event of this shard: widen the shard's drop span (durable).
    fn note_dropped(&mut self, received_at_ms: i64) {
        let fresh = {
            let mut record = self.cell.lock();
            let span = match record.drop_span {
                None => DropSpan {
                    first_ms: received_at_ms,
                    last_ms: received_at_ms,
                    count: 1,
                },
                Some(span) => DropSpan {
                    first_ms: span.first_ms.min(received_at_ms),
                    last_ms: span.last_ms.max(received_at_ms),
                    count: span.count + 1,
                },
            };
            let fresh = record.drop_span.is_none();
            record.drop_span = Some(span);
            fresh
        };
        self.drop_pending = true;
        if fresh {
            tracing::error!(
                shard = self.shard,
                "spool full: events dropped (policy drop-newest) until there is room"
            );
            self.states.save_or_log();
        }
    }

    /// Reports the drop span once it is over: no drop for [`DROP_SPAN_QUIET_MS`]. A spool that
    /// takes an event now and then while it stays full (room for one, then full again) makes
    /// one record for the episode, not one per flip. Called on every event appended and from
    /// the housekeeping tick (drops that stop because traffic stops are reported too).
    pub(super) fn report_dropped_if_over(&mut self, ctx: &mut Context<Self>) {
        if !self.drop_pending {
            return;
        }
        let last_drop = self.cell.lock().drop_span.map(|span| span.last_ms);
        let over =
            last_drop.is_none_or(|last| Utc::now().timestamp_millis() - last >= DROP_SPAN_QUIET_MS);
        if over {
            self.report_dropped(ctx);
        }
    }

    /// One gap record for what this shard's drop span lost.
    pub(super) fn report_dropped(&mut self, ctx: &mut Context<Self>) {
        self.drop_pending = false;
        let span = self.cell.lock().drop_span.take();
        let Some(span) = span else {
            return;
        };
        let gap = Gap {
            start_ms: span.first_ms,
            end_ms: span.last_ms,
            reason: "spool_full_dropped".into(),
        };
        self.emit_gap(gap, Some(span.count), ctx);
        self.states.save_or_log();
    }

    /// `block`: hold the frame (in the shard state, which survives an actor restart), stop
    /// reading, and resume once the spool is at most half full (not at its first free byte:
    /// see [`Spool::wait_for_resume_mark`](crate::spool::Spool::wait_for_resume_mark)).
    fn block_until_room(&mut self, record: Record, ctx: &mut Context<Self>) {
        tracing::warn!(
            shard = self.shard,
            "spool full (policy: block); pausing the sockets until Kafka catches up"
        );
        let payload_len = record.payload.len();
        *self.cell.held() = Some(record);
        self.pause_reading("spool_full", ctx);
        let spool = self.spool.clone();
        async move { spool.wait_for_resume_mark(payload_len).await }
            .into_actor(self)
            .map(|_, actor, ctx| {
                let held = actor.cell.held().take();
                if let Some(record) = held {
                    if !actor.append(record, ctx) {
                        return; // still full: held again, waiting again
                    }
                }
                tracing::info!(shard = actor.shard, "spool has room again; reconnecting");
                actor.resume_reading(ctx);
            })
            .spawn(ctx);
    }

    /// Stops reading: every socket closed, every timer and pending connect void until
    /// [`resume_reading`](Self::resume_reading).
    fn pause_reading(&mut self, reason: &'static str, ctx: &mut Context<Self>) {
        if self.paused {
            return;
        }
        self.paused = true;
        self.close_everything(reason, ctx);
        self.publish_health();
    }

    pub(super) fn resume_reading(&mut self, ctx: &mut Context<Self>) {
        if !self.paused || self.stopping {
            return;
        }
        self.paused = false;
        for leg in 0..self.legs.len() {
            self.connect_leg(leg, ctx);
        }
        self.publish_health();
    }

    /// Hands a closed gap to the backfill queue (durable), when backfill is enabled.
    fn queue_backfill(&self, start: DateTime<Utc>, end: DateTime<Utc>) {
        let Some(queue) = &self.backfill else {
            return;
        };
        let ids = crate::backfill::query::entity_ids(&self.topics);
        let gap = crate::backfill::queue::PendingGap::new(self.shard, start, end, ids);
        if let Err(error) = queue.push(gap) {
            tracing::error!(shard = self.shard, error = %error, "cannot queue the gap for backfill");
        }
    }
}
