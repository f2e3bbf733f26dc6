//! Typed messages between the actors. Every data path uses `try_send` into a bounded mailbox;
//! where a message may be refused for lack of room, its doc says why that is harmless.

use std::time::Instant;

use actix::Message;

/// TokenRefreshActor → SocketActor: a new token is in the [`crate::token::TokenCell`]. Sockets
/// roll their channel over onto it before the old token (and with it the channel) dies.
/// Refused when full: harmless, the socket also checks the token generation on every connect.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct TokenChanged {
    pub generation: u64,
}

/// SocketActor → TokenRefreshActor: Genesys answered 401 to a token of this generation.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct TokenRejected {
    pub generation: u64,
}

/// SocketActor → HeartbeatActor: the shard's live socket showed a sign of life. Coalesced: a
/// socket sends at most one per quarter ping interval. Refused when full: harmless, the next
/// one carries the same news.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct FrameSeen {
    pub shard: u32,
    pub at: Instant,
    /// False while the shard has no socket to watch (paused by `block`, or every leg waiting
    /// to connect): the watchdog has nothing to replace and stays quiet until it is true again.
    pub watched: bool,
}

/// HeartbeatActor → SocketActor: send the `{"message":"ping"}` health check now.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct SendPing;

/// HeartbeatActor (or an operator) → SocketActor: the socket is dead; replace it.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct Reconnect {
    pub reason: &'static str,
}

/// Supervisor → SocketActor: the shard's topic set changed (re-expansion found new queues).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct UpdateTopics {
    pub topics: Vec<String>,
}

/// Supervisor → SocketActor: stop reading (shutdown); answers once the sockets are closed.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct StopReading;

/// Supervisor → any actor: answer if your event loop runs (liveness).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct AreYouAlive;

/// Test hook, only honoured when fault injection is enabled in the config: panic in a handler
/// (tests prove the supervisor restarts the actor) or block the actor's thread (tests prove
/// `/livez` notices a hung actor).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub enum InjectFault {
    Panic,
    Hang(std::time::Duration),
    /// SocketActor only: the next N status records (gap, rollover, channel) find the spool
    /// full, as if its gap headroom were used up (tests prove they wait on disk, in order).
    RefuseStatus(u32),
    /// Supervisor, for a socket actor: the next N `UpdateTopics` to it are refused as by a
    /// full mailbox (tests prove they are sent again).
    RefuseTopicUpdates(u32),
}

impl InjectFault {
    /// Applies the fault in the handler of `actor`, if fault injection is allowed.
    pub fn apply(self, allowed: bool, actor: &str) {
        if !allowed {
            tracing::warn!(actor, "fault injection is disabled; ignored");
            return;
        }
        match self {
            InjectFault::Panic => panic!("injected panic in {actor}"),
            InjectFault::Hang(duration) => {
                tracing::warn!(actor, ?duration, "injected hang");
                std::thread::sleep(duration);
            }
            InjectFault::RefuseStatus(_) => {
                tracing::warn!(
                    actor,
                    "status refusals apply to socket actors only; ignored"
                );
            }
            InjectFault::RefuseTopicUpdates(_) => {
                tracing::warn!(
                    actor,
                    "topic update refusals are applied by the supervisor; ignored"
                );
            }
        }
    }
}

/// Supervisor → KafkaProducerActor: flush what is in flight within the deadline (shutdown).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "bool")]
pub struct Flush {
    pub deadline: Instant,
}
