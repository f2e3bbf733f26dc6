//! The handle a channel holds on its connected socket's task, and the messages it accepts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::frames::MalformedKind;
use crate::missed::MissReason;

/// An event frame queued for one socket. The `Arc`s are shared by every channel receiving the
/// same event, so they all send byte-identical text.
#[derive(Clone, Debug)]
pub(crate) struct Outgoing {
    pub topic: Arc<str>,
    pub frame: Arc<str>,
    pub correlation_id: Arc<str>,
}

/// Control messages for a socket task; they overtake queued events.
#[derive(Debug)]
pub(crate) enum SocketCtl {
    /// Send a close frame (code 1000, this reason) and end the connection.
    Close { reason: String },
    /// End the connection without a close frame (the client sees 1006).
    Abort,
    /// Send a `v2.system.*` frame (what follows, if anything, is sent separately).
    System {
        topic: Arc<str>,
        frame: Arc<str>,
        correlation_id: Arc<str>,
    },
    /// Send a deliberately broken frame.
    Malformed { kind: MalformedKind, size: usize },
    /// Push `count` pre-built event frames as fast as the socket takes them. `burst_no` names
    /// the frames: the same number gives byte-identical frames on every socket (a fan-out);
    /// `None` gives frames of this socket's own.
    Burst {
        count: u64,
        topic: Arc<str>,
        burst_no: Option<u64>,
    },
}

/// The channel's side of a connected socket.
#[derive(Clone, Debug)]
pub(crate) struct SocketLink {
    /// Distinguishes successive connections to the same channel.
    pub conn_id: u64,
    pub data: mpsc::Sender<Outgoing>,
    pub ctl: mpsc::UnboundedSender<SocketCtl>,
    /// Wakes a task blocked on a slow client so that it sees `Close`/`Abort` promptly.
    pub stop: Arc<watch::Sender<bool>>,
    /// While set, nothing is sent: no events, heartbeats or pongs (TCP stays open).
    pub silent: Arc<AtomicBool>,
}

impl SocketLink {
    pub fn is_silent(&self) -> bool {
        self.silent.load(Ordering::Acquire)
    }

    pub fn set_silent(&self, silent: bool) {
        self.silent.store(silent, Ordering::Release);
    }

    pub fn close(&self, reason: &str) {
        let _ = self.ctl.send(SocketCtl::Close {
            reason: reason.to_owned(),
        });
        let _ = self.stop.send(true);
    }

    pub fn abort(&self) {
        let _ = self.ctl.send(SocketCtl::Abort);
        let _ = self.stop.send(true);
    }

    /// Queues an event; a full queue means the client does not keep up: drop it like Genesys.
    /// On failure, says why the event was not queued.
    pub fn push(&self, out: Outgoing) -> Result<(), MissReason> {
        match self.data.try_send(out) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                if *self.stop.borrow() {
                    return Err(MissReason::SocketDropped);
                }
                tracing::warn!(conn = self.conn_id, "socket too slow, dropping it");
                self.abort();
                Err(MissReason::TooSlow)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(MissReason::SocketDropped),
        }
    }
}

/// How long a close frame may wait for a slow client before the connection is just dropped.
pub(crate) const CLOSE_SEND_TIMEOUT: Duration = Duration::from_secs(1);
