//! The streaming WebSocket: `GET /channels/{id}` on its own listener.
//!
//! One task per connection owns the actix-ws session. It sends queued events, heartbeats and
//! pongs, obeys control messages (close, abort, system frames, malformed frames, bursts), and
//! records every frame the session accepted in the ledger (and every queued event it did not
//! send in the missed log). Control messages overtake queued events (`biased` select), so a
//! close or drop is immediate.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{CloseCode, CloseReason, Message, MessageStream, Session};
use tokio::sync::{mpsc, watch};

use crate::channels::{short, Refusal};
use crate::errors::{api_error, not_found};
use crate::frames::{self, HEARTBEAT_FRAME, METADATA_TOPIC, PONG_FRAME};
use crate::ids;
use crate::ledger::{FrameKind, Sent};
use crate::link::{Outgoing, SocketCtl, SocketLink, CLOSE_SEND_TIMEOUT};
use crate::missed::MissReason;
use crate::published::PublishSource;
use crate::state::Sim;

/// Frames built and sent per step of a burst, between checks of the control queue.
const BURST_CHUNK: u64 = 1024;

fn refusal_response(refusal: Refusal) -> HttpResponse {
    match refusal {
        Refusal::Dead(death) if death.is_auth() => api_error(
            StatusCode::UNAUTHORIZED,
            "bad.credentials",
            "The token that created this channel is no longer valid.",
        ),
        _ => not_found("channel"),
    }
}

/// `GET /channels/{id}`: refuses unknown or dead channels before the upgrade (404, or 401 when
/// the channel died with its token), else upgrades and starts the socket task.
pub(crate) async fn upgrade(
    sim: web::Data<Sim>,
    req: HttpRequest,
    body: web::Payload,
    path: web::Path<String>,
) -> HttpResponse {
    let channel_id = path.into_inner();
    if let Err(refusal) = sim
        .channels
        .lock()
        .expect("channels lock")
        .upgrade_check(&channel_id)
    {
        return refusal_response(refusal);
    }
    let (response, session, stream) = match actix_ws::handle(&req, body) {
        Ok(parts) => parts,
        Err(e) => return e.error_response(),
    };
    {
        let mut reg = sim.channels.lock().expect("channels lock");
        if reg.accept_then_close_holds(&channel_id, std::time::Instant::now()) {
            let conn_id = reg.next_conn_id();
            if let Err(refusal) = reg.attach_and_close(&channel_id, conn_id) {
                return refusal_response(refusal);
            }
            drop(reg);
            tracing::debug!(channel = %short(&channel_id), conn_id, "accept_then_close");
            actix_web::rt::spawn(accept_then_close(session, stream));
            return response;
        }
    }
    let (data_tx, data_rx) = mpsc::channel(sim.cfg.socket_buffer_frames.max(1));
    let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    let silent = Arc::new(AtomicBool::new(false));
    let conn_id = {
        let mut reg = sim.channels.lock().expect("channels lock");
        let conn_id = reg.next_conn_id();
        let link = SocketLink {
            conn_id,
            data: data_tx,
            ctl: ctl_tx,
            stop: Arc::new(stop_tx),
            silent: silent.clone(),
        };
        if let Err(refusal) = reg.attach(&channel_id, link) {
            return refusal_response(refusal);
        }
        conn_id
    };
    tracing::debug!(channel = %short(&channel_id), conn_id, "socket connected");
    let task = SocketTask {
        sim: sim.into_inner(),
        channel_id,
        conn_id,
        session: Some(session),
        silent,
        stop_rx,
        bursts: 0,
    };
    actix_web::rt::spawn(task.run(stream, data_rx, ctl_rx));
    response
}

/// The `accept_then_close` fault: a close frame (1000) before anything else, then the end.
async fn accept_then_close(session: Session, stream: MessageStream) {
    let reason = CloseReason {
        code: CloseCode::Normal,
        description: Some("accept_then_close".to_owned()),
    };
    let _ = tokio::time::timeout(CLOSE_SEND_TIMEOUT, session.close(Some(reason))).await;
    drop(stream);
}

/// How a connection ends.
enum End {
    /// Send a close frame (1000) with this reason.
    Close(String),
    /// No close frame: the client sees an abnormal closure (1006).
    Abort,
    /// The client sent a close frame: echo it.
    ClientClosed,
    /// The connection is already gone.
    Gone,
}

/// A send was not completed.
enum NotSent {
    /// The session is closed (client gone).
    Closed,
    /// A close or abort is pending: stop sending.
    Stopped,
}

struct SocketTask {
    sim: Arc<Sim>,
    channel_id: String,
    conn_id: u64,
    session: Option<Session>,
    silent: Arc<AtomicBool>,
    stop_rx: watch::Receiver<bool>,
    bursts: u64,
}

impl SocketTask {
    fn is_silent(&self) -> bool {
        self.silent.load(std::sync::atomic::Ordering::Acquire)
    }

    async fn run(
        mut self,
        mut stream: MessageStream,
        mut data_rx: mpsc::Receiver<Outgoing>,
        mut ctl_rx: mpsc::UnboundedReceiver<SocketCtl>,
    ) {
        let every = self.sim.cfg.heartbeat_interval;
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let end = loop {
            let step = tokio::select! {
                biased;
                ctl = ctl_rx.recv() => match ctl {
                    Some(ctl) => self.on_ctl(ctl, &mut ctl_rx).await,
                    None => Err(End::Abort),
                },
                msg = stream.recv() => self.on_client(msg).await,
                // Before events, so that a busy socket still gets its heartbeat on time.
                _ = heartbeat.tick() => self.on_heartbeat().await,
                out = data_rx.recv() => match out {
                    Some(out) => self.on_event(out).await,
                    None => Err(End::Abort),
                },
            };
            if let Err(end) = step {
                break end;
            }
        };
        // Events still queued are discarded: the channel missed them. Closing the queue first
        // makes later pushes fail, so that `deliver` records those as missed too.
        data_rx.close();
        let mut discarded = Vec::new();
        while let Ok(out) = data_rx.try_recv() {
            discarded.push(out);
        }
        self.sim
            .missed
            .record_all(&self.channel_id, &discarded, MissReason::SocketDropped);
        self.finish(end).await;
        drop(stream);
        self.sim
            .channels
            .lock()
            .expect("channels lock")
            .detach(&self.channel_id, self.conn_id);
        tracing::debug!(channel = %short(&self.channel_id), conn_id = self.conn_id, "socket ended");
    }

    async fn finish(&mut self, end: End) {
        let Some(session) = self.session.take() else {
            return;
        };
        let reason = match end {
            End::Close(description) => Some(CloseReason {
                code: CloseCode::Normal,
                description: Some(description),
            }),
            End::ClientClosed => Some(CloseReason::from(CloseCode::Normal)),
            // Dropping the session ends the response body: TCP closes without a close frame.
            End::Abort | End::Gone => return,
        };
        let _ = tokio::time::timeout(CLOSE_SEND_TIMEOUT, session.close(reason)).await;
    }

    /// Hands one frame to the session; on success it is in the ledger.
    async fn send(&mut self, sent: Sent) -> Result<(), NotSent> {
        let session = self.session.as_mut().ok_or(NotSent::Closed)?;
        let result = {
            let send = async {
                match &sent.binary {
                    Some(bytes) => session.binary(bytes.clone()).await,
                    None => session.text(&*sent.frame).await,
                }
            };
            tokio::select! {
                biased;
                r = send => r.map_err(|_| NotSent::Closed),
                _ = self.stop_rx.wait_for(|stop| *stop) => Err(NotSent::Stopped),
            }
        };
        result?;
        self.sim.ledger.record(&self.channel_id, [sent]);
        Ok(())
    }

    /// Sends unless silenced; maps failures to the end of the connection.
    async fn send_or_end(&mut self, sent: Sent) -> Result<(), End> {
        if self.is_silent() {
            return Ok(());
        }
        match self.send(sent).await {
            Ok(()) => Ok(()),
            // The pending control message is handled on the next loop turn.
            Err(NotSent::Stopped) => Ok(()),
            Err(NotSent::Closed) => Err(End::Gone),
        }
    }

    /// Sends a queued event; one that is not sent goes to the missed log.
    async fn on_event(&mut self, out: Outgoing) -> Result<(), End> {
        if self.is_silent() {
            self.sim
                .missed
                .record(&self.channel_id, &out, MissReason::Silenced);
            return Ok(());
        }
        let sent = Sent {
            topic: out.topic.clone(),
            kind: FrameKind::Event,
            frame: out.frame.clone(),
            binary: None,
            correlation_id: Some(out.correlation_id.clone()),
        };
        let result = self.send(sent).await;
        if result.is_err() {
            self.sim
                .missed
                .record(&self.channel_id, &out, MissReason::SocketDropped);
        }
        match result {
            Ok(()) => Ok(()),
            // The pending control message is handled on the next loop turn.
            Err(NotSent::Stopped) => Ok(()),
            Err(NotSent::Closed) => Err(End::Gone),
        }
    }

    async fn on_heartbeat(&mut self) -> Result<(), End> {
        self.send_or_end(metadata(FrameKind::Heartbeat, HEARTBEAT_FRAME))
            .await
    }

    async fn on_client(
        &mut self,
        msg: Option<Result<Message, actix_ws::ProtocolError>>,
    ) -> Result<(), End> {
        match msg {
            Some(Ok(Message::Text(text))) if frames::is_ping(&text) => {
                self.send_or_end(metadata(FrameKind::Pong, PONG_FRAME))
                    .await
            }
            Some(Ok(Message::Ping(payload))) => {
                if self.is_silent() {
                    return Ok(());
                }
                let session = self.session.as_mut().ok_or(End::Gone)?;
                session.pong(&payload).await.map_err(|_| End::Gone)
            }
            Some(Ok(Message::Close(_))) => Err(End::ClientClosed),
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => {
                tracing::debug!(channel = %short(&self.channel_id), error = %e, "socket read error");
                Err(End::Abort)
            }
            None => Err(End::Gone),
        }
    }

    async fn on_ctl(
        &mut self,
        ctl: SocketCtl,
        ctl_rx: &mut mpsc::UnboundedReceiver<SocketCtl>,
    ) -> Result<(), End> {
        match ctl {
            SocketCtl::Close { reason } => Err(End::Close(reason)),
            SocketCtl::Abort => Err(End::Abort),
            SocketCtl::System {
                topic,
                frame,
                correlation_id,
            } => {
                let sent = Sent {
                    topic,
                    kind: FrameKind::System,
                    frame,
                    binary: None,
                    correlation_id: Some(correlation_id),
                };
                self.send_or_end(sent).await
            }
            SocketCtl::Malformed { kind, size } => {
                let topic = self.default_topic();
                let correlation_id = ids::uuid(&mut self.sim.sys_rng.lock().expect("rng lock"));
                let (frame, binary) = frames::malformed(kind, &topic, &correlation_id, size);
                let sent = Sent {
                    topic: Arc::from(topic),
                    kind: FrameKind::Malformed,
                    frame,
                    binary,
                    correlation_id: Some(Arc::from(correlation_id)),
                };
                self.send_or_end(sent).await
            }
            SocketCtl::Burst {
                count,
                topic,
                burst_no,
            } => self.burst(count, topic, burst_no, ctl_rx).await,
        }
    }

    fn default_topic(&self) -> String {
        let reg = self.sim.channels.lock().expect("channels lock");
        reg.get(&self.channel_id)
            .and_then(|c| c.topics().first().cloned())
            .unwrap_or_else(|| "v2.sim.unsubscribed".to_owned())
    }

    /// Pushes `count` event frames as fast as the session accepts them, building them in
    /// chunks and checking for close/abort between chunks.
    async fn burst(
        &mut self,
        count: u64,
        topic: Arc<str>,
        shared: Option<u64>,
        ctl_rx: &mut mpsc::UnboundedReceiver<SocketCtl>,
    ) -> Result<(), End> {
        self.bursts += 1;
        let burst_no = shared.unwrap_or_else(|| {
            self.sim.cfg.seed.wrapping_mul(1_000_003) ^ (self.conn_id << 20) ^ self.bursts
        });
        let mut built = 0u64;
        while built < count {
            let n = BURST_CHUNK.min(count - built);
            let frames: Vec<(Arc<str>, Arc<str>)> = (built..built + n)
                .map(|i| burst_frame(&topic, burst_no, i))
                .collect();
            built += n;
            self.sim.published.record(
                PublishSource::Burst,
                Some(&self.channel_id),
                frames.iter().map(|(f, c)| (&*topic, f, c)),
            );
            let mut sent_batch = Vec::with_capacity(frames.len());
            let mut failure = None;
            for (frame, correlation_id) in frames {
                if self.is_silent() {
                    continue;
                }
                let Some(session) = self.session.as_mut() else {
                    failure = Some(End::Gone);
                    break;
                };
                let sent = tokio::select! {
                    biased;
                    r = session.text(&*frame) => r.map_err(|_| NotSent::Closed),
                    _ = self.stop_rx.wait_for(|stop| *stop) => Err(NotSent::Stopped),
                };
                match sent {
                    Ok(()) => {}
                    Err(NotSent::Stopped) => break,
                    Err(NotSent::Closed) => {
                        failure = Some(End::Gone);
                        break;
                    }
                }
                sent_batch.push(Sent {
                    topic: topic.clone(),
                    kind: FrameKind::Event,
                    frame,
                    binary: None,
                    correlation_id: Some(correlation_id),
                });
            }
            self.sim.ledger.record(&self.channel_id, sent_batch);
            if let Some(end) = failure {
                return Err(end);
            }
            if *self.stop_rx.borrow() {
                return Ok(());
            }
            // Let other control messages (other than another burst) take effect mid-burst.
            while let Ok(ctl) = ctl_rx.try_recv() {
                match ctl {
                    SocketCtl::Burst { .. } => {}
                    other => Box::pin(self.on_ctl(other, ctl_rx)).await?,
                }
            }
        }
        Ok(())
    }
}

fn metadata(kind: FrameKind, text: &'static str) -> Sent {
    Sent {
        topic: Arc::from(METADATA_TOPIC),
        kind,
        frame: Arc::from(text),
        binary: None,
        correlation_id: None,
    }
}

/// One pre-built burst event: a small conversation snapshot with unique ids.
fn burst_frame(topic: &str, burst_no: u64, i: u64) -> (Arc<str>, Arc<str>) {
    let b = burst_no & 0xffff_ffff;
    let conversation_id = format!("{b:08x}-0000-4000-8000-{i:012x}");
    let correlation_id = format!("{b:08x}-0001-4000-8000-{i:012x}");
    let body = format!(
        r#"{{"id":"{conversation_id}","participants":[{{"id":"{b:08x}-0002-4000-8000-{i:012x}","purpose":"customer","calls":[{{"id":"{b:08x}-0003-4000-8000-{i:012x}","state":"connected","direction":"inbound"}}]}}],"recordingState":"none"}}"#
    );
    let frame = frames::envelope(topic, &body, &correlation_id);
    (frame, Arc::from(correlation_id))
}
