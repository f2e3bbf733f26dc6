//! HeartbeatActor: the JSON ping every `ping_interval`, and the watchdog that replaces a socket
//! that showed no heartbeat, pong or event for `dead_after`.
//!
//! It runs on its own Arbiter, so a socket actor that is busy (or hung) cannot delay the verdict
//! on its own health.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::messages::{AreYouAlive, FrameSeen, InjectFault, Reconnect, SendPing};
use crate::metrics::Metrics;
use crate::peers::Peers;

pub struct HeartbeatActor {
    ping_interval: Duration,
    dead_after: Duration,
    peers: Peers,
    metrics: Arc<Metrics>,
    allow_fault_injection: bool,
    /// Last sign of life per shard; a shard absent here is timed from when it was first seen.
    last_seen: HashMap<u32, Instant>,
    /// When a reconnect was last ordered per shard, so one dead socket gets one order per period.
    ordered_at: HashMap<u32, Instant>,
    /// Shards with no socket to watch (paused, or every leg waiting to connect): nothing to
    /// replace, so no order and no warning, while their heartbeat age keeps growing.
    unwatched: HashSet<u32>,
}

impl HeartbeatActor {
    pub fn new(
        ping_interval: Duration,
        dead_after: Duration,
        peers: Peers,
        metrics: Arc<Metrics>,
        allow_fault_injection: bool,
    ) -> Self {
        Self {
            ping_interval,
            dead_after,
            peers,
            metrics,
            allow_fault_injection,
            last_seen: HashMap::new(),
            ordered_at: HashMap::new(),
            unwatched: HashSet::new(),
        }
    }

    /// A shard's report: a sign of life at `at`, or that it has no socket to watch.
    fn seen(&mut self, msg: FrameSeen) {
        if !msg.watched {
            self.unwatched.insert(msg.shard);
            return;
        }
        self.unwatched.remove(&msg.shard);
        let entry = self.last_seen.entry(msg.shard).or_insert(msg.at);
        if msg.at > *entry {
            *entry = msg.at;
        }
    }

    /// Updates each shard's heartbeat age, orders a reconnect for a shard silent for
    /// `dead_after` (once per `dead_after`), and sends the JSON ping when `send_pings`.
    fn check(&mut self, send_pings: bool) {
        let now = Instant::now();
        for (index, socket) in self.peers.sockets().into_iter().enumerate() {
            let shard = index as u32;
            let last_seen = *self.last_seen.entry(shard).or_insert(now);
            let silent_for = now.duration_since(last_seen);
            self.metrics
                .heartbeat_age
                .get_or_create(&Metrics::shard(shard))
                .set(silent_for.as_secs_f64());
            let recently_ordered = self
                .ordered_at
                .get(&shard)
                .is_some_and(|at| now.duration_since(*at) < self.dead_after);
            let watched = !self.unwatched.contains(&shard);
            if watched && silent_for >= self.dead_after && !recently_ordered {
                tracing::warn!(
                    shard,
                    silent_ms = silent_for.as_millis() as u64,
                    "no heartbeat, pong or event within dead_after; replacing the socket"
                );
                self.ordered_at.insert(shard, now);
                let _ = socket.try_send(
                    Reconnect {
                        reason: "dead_socket",
                    },
                    &self.metrics,
                );
                continue;
            }
            if send_pings {
                // Refused when full: the socket actor is not keeping up with control messages;
                // the missing pongs will make the watchdog act.
                let _ = socket.try_send(SendPing, &self.metrics);
            }
        }
    }
}

impl Actor for HeartbeatActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // FrameSeen from every shard, coalesced: a few per ping interval per shard.
        ctx.set_mailbox_capacity(256);
        let tick_every = (self.ping_interval)
            .min(self.dead_after / 4)
            .max(Duration::from_millis(20));
        let mut last_ping = Instant::now();
        let ping_interval = self.ping_interval;
        ctx.run_interval(tick_every, move |actor, _ctx| {
            // The watchdog checks often; pings go out once per ping interval.
            let now = Instant::now();
            let send_pings = now.duration_since(last_ping) >= ping_interval;
            if send_pings {
                last_ping = now;
            }
            actor.check(send_pings);
        });
    }
}

impl Handler<FrameSeen> for HeartbeatActor {
    type Result = ();

    fn handle(&mut self, msg: FrameSeen, _: &mut Self::Context) {
        self.seen(msg);
    }
}

impl Handler<AreYouAlive> for HeartbeatActor {
    type Result = ();
    fn handle(&mut self, _: AreYouAlive, _: &mut Self::Context) {}
}

impl Handler<InjectFault> for HeartbeatActor {
    type Result = ();
    fn handle(&mut self, fault: InjectFault, _: &mut Self::Context) {
        fault.apply(self.allow_fault_injection, "HeartbeatActor");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watchdog(peers: &Peers) -> HeartbeatActor {
        peers.socket_slot(0);
        HeartbeatActor::new(
            Duration::from_secs(30),
            Duration::from_millis(100),
            peers.clone(),
            Arc::new(Metrics::new()),
            false,
        )
    }

    fn seen(shard: u32, ago: Duration, watched: bool) -> FrameSeen {
        FrameSeen {
            shard,
            at: Instant::now() - ago,
            watched,
        }
    }

    #[test]
    fn a_silent_watched_shard_gets_a_reconnect_order() {
        let peers = Peers::new();
        let mut watchdog = watchdog(&peers);
        watchdog.seen(seen(0, Duration::from_secs(1), true));
        watchdog.check(false);
        assert!(watchdog.ordered_at.contains_key(&0));
    }

    /// A CI log had "no heartbeat, pong or event within dead_after; replacing the socket" every
    /// 2 s for 52 s while the shard was paused and waiting for its connect budget: there was no
    /// socket to replace.
    #[test]
    fn a_shard_without_a_socket_is_not_ordered_to_reconnect_until_one_connects() {
        let peers = Peers::new();
        let mut watchdog = watchdog(&peers);
        watchdog.seen(seen(0, Duration::from_secs(1), true));
        watchdog.seen(seen(0, Duration::ZERO, false));
        watchdog.check(false);
        assert!(watchdog.ordered_at.is_empty(), "nothing to replace");
        let age = watchdog
            .metrics
            .heartbeat_age
            .get_or_create(&Metrics::shard(0))
            .get();
        assert!(age >= 1.0, "the age still grows: {age}");

        // A socket connects now: it is timed from its connect, not from the last frame.
        watchdog.seen(seen(0, Duration::ZERO, true));
        watchdog.check(false);
        assert!(watchdog.ordered_at.is_empty(), "a fresh socket is not dead");

        // And it is watched again: silent for dead_after, it is replaced.
        watchdog.seen(seen(0, Duration::from_secs(1), true));
        watchdog
            .last_seen
            .insert(0, Instant::now() - Duration::from_secs(1));
        watchdog.check(false);
        assert!(watchdog.ordered_at.contains_key(&0));
    }
}
