//! Notification channels: creation with the per-client limit and eviction, subscriptions,
//! lifetimes, death (with tombstones so a dead channel's upgrade is refused), and fan-out of
//! events to the sockets of subscribed channels.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use rand::rngs::SmallRng;
use serde::Serialize;

use crate::channel_log::{ChannelEvent, ChannelLog, DetachCause};
use crate::ids;
use crate::link::{Outgoing, SocketCtl, SocketLink};
use crate::missed::{MissReason, MissedLog};

/// Why a channel died. Decides the answer to a later upgrade attempt (401 or 404).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelDeath {
    /// Reached its lifetime.
    Expired,
    /// Evicted by the 21st channel of its OAuth client.
    Evicted,
    /// The token that created it expired.
    TokenExpired,
    /// The token that created it was revoked.
    TokenRevoked,
    /// Closed after `v2.system.socket_closing` and its grace period.
    SocketClosing,
}

impl ChannelDeath {
    /// Whether an upgrade to the dead channel is answered 401 (token gone) rather than 404.
    pub(crate) fn is_auth(self) -> bool {
        matches!(
            self,
            ChannelDeath::TokenExpired | ChannelDeath::TokenRevoked
        )
    }

    fn close_reason(self) -> &'static str {
        match self {
            ChannelDeath::Expired => "channel expired",
            ChannelDeath::Evicted => "channel evicted",
            ChannelDeath::TokenExpired => "token expired",
            ChannelDeath::TokenRevoked => "token revoked",
            ChannelDeath::SocketClosing => "socket closing",
        }
    }
}

/// A snapshot of one channel, live or dead (see [`crate::SimHandle::channels`]).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelInfo {
    pub id: String,
    pub client_id: String,
    pub topics: Vec<String>,
    /// A socket is connected right now.
    pub connected: bool,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Still usable (not expired, evicted, killed with its token or after socket_closing).
    pub alive: bool,
    pub death: Option<ChannelDeath>,
    /// How many sockets have connected to it so far.
    pub connections: u64,
}

pub(crate) struct Channel {
    pub id: String,
    pub client_id: String,
    pub token: String,
    topics: Vec<String>,
    topic_set: HashSet<String>,
    created_at: DateTime<Utc>,
    created_seq: u64,
    expires_at: Instant,
    expires_at_utc: DateTime<Utc>,
    /// Set by `socket_closing`: the channel dies at this instant.
    pub doomed_at: Option<Instant>,
    /// Silence of the current socket is lifted at this instant.
    pub silent_until: Option<Instant>,
    pub socket: Option<SocketLink>,
    connections: u64,
    /// `accept_then_close` fault on this channel: `Some(None)` until cleared, `Some(Some(t))`
    /// until `t`.
    accept_then_close: Option<Option<Instant>>,
}

impl Channel {
    pub fn topics(&self) -> &[String] {
        &self.topics
    }

    pub fn entity(&self, ws_base: &str) -> serde_json::Value {
        serde_json::json!({
            "connectUri": format!("{ws_base}/channels/{}", self.id),
            "id": self.id,
            "expires": self.expires_at_utc.to_rfc3339_opts(SecondsFormat::Millis, true),
        })
    }

    fn info(&self, death: Option<ChannelDeath>) -> ChannelInfo {
        ChannelInfo {
            id: self.id.clone(),
            client_id: self.client_id.clone(),
            topics: self.topics.clone(),
            connected: death.is_none() && self.socket.is_some(),
            created_at: self.created_at,
            expires_at: self.expires_at_utc,
            alive: death.is_none(),
            death,
            connections: self.connections,
        }
    }
}

/// Answer to an upgrade request for a channel id.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    Unknown,
    Dead(ChannelDeath),
}

/// Dead channels remembered (for upgrade refusals and `channels()`); older ones are forgotten
/// and then answer 404 like unknown ids.
const DEAD_KEPT: usize = 2_000;

pub(crate) struct Registry {
    live: HashMap<String, Channel>,
    /// topic → ids of live channels subscribed to it.
    index: HashMap<String, Vec<String>>,
    dead: HashMap<String, ChannelInfo>,
    dead_order: VecDeque<String>,
    next_seq: u64,
    next_conn: u64,
    rng: SmallRng,
    /// Lifecycle events of every channel.
    pub log: ChannelLog,
    /// `accept_then_close` with target `all`: copied onto every channel created while it holds.
    accept_then_close_all: Option<Option<Instant>>,
    /// See [`SimConfig::correlation_per_channel`](crate::SimConfig::correlation_per_channel).
    correlation_per_channel: bool,
}

/// Whether an `accept_then_close` setting holds at `now`.
fn holds(setting: Option<Option<Instant>>, now: Instant) -> bool {
    setting.is_some_and(|until| until.is_none_or(|t| now < t))
}

impl Registry {
    pub fn new(seed: u64, log_capacity: Option<usize>, correlation_per_channel: bool) -> Self {
        Registry {
            live: HashMap::new(),
            index: HashMap::new(),
            dead: HashMap::new(),
            dead_order: VecDeque::new(),
            next_seq: 0,
            next_conn: 0,
            rng: ids::rng_for(seed, ids::Stream::Channels),
            log: ChannelLog::new(log_capacity),
            accept_then_close_all: None,
            correlation_per_channel,
        }
    }

    /// Creates a channel; when the client already has `max` live channels the oldest idle one
    /// (no socket), else the oldest, is evicted first. Returns the new id and the evicted one.
    pub fn create(
        &mut self,
        client_id: &str,
        token: &str,
        lifetime: Duration,
        max: usize,
    ) -> (String, Option<String>) {
        let mut evicted = None;
        let mine: Vec<&Channel> = self
            .live
            .values()
            .filter(|c| c.client_id == client_id)
            .collect();
        let mut live_after = mine.len() + 1;
        if mine.len() >= max {
            let victim = mine
                .iter()
                .filter(|c| c.socket.is_none())
                .min_by_key(|c| c.created_seq)
                .or_else(|| mine.iter().min_by_key(|c| c.created_seq))
                .map(|c| c.id.clone());
            if let Some(victim) = victim {
                self.kill(&victim, ChannelDeath::Evicted, None);
                evicted = Some(victim);
                live_after -= 1;
            }
        }
        let id = ids::channel_id(&mut self.rng);
        let now = Utc::now();
        let accept_then_close = self
            .accept_then_close_all
            .filter(|_| holds(self.accept_then_close_all, Instant::now()));
        let channel = Channel {
            id: id.clone(),
            client_id: client_id.to_owned(),
            token: token.to_owned(),
            topics: Vec::new(),
            topic_set: HashSet::new(),
            created_at: now,
            created_seq: self.next_seq,
            expires_at: Instant::now() + lifetime,
            expires_at_utc: now
                + chrono::Duration::from_std(lifetime).unwrap_or(chrono::Duration::MAX),
            doomed_at: None,
            silent_until: None,
            socket: None,
            connections: 0,
            accept_then_close,
        };
        self.next_seq += 1;
        self.log.push(
            &id,
            client_id,
            ChannelEvent::Created {
                token: token.to_owned(),
                expires: channel.expires_at_utc,
                expires_ms: channel.expires_at_utc.timestamp_millis(),
            },
        );
        self.log.note_live(client_id, live_after);
        self.live.insert(id.clone(), channel);
        (id, evicted)
    }

    pub fn get(&self, id: &str) -> Option<&Channel> {
        self.live.get(id)
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut Channel> {
        self.live.get_mut(id)
    }

    /// Live channels matching the predicate, oldest first.
    pub fn list(&self, pred: impl Fn(&Channel) -> bool) -> Vec<&Channel> {
        let mut v: Vec<&Channel> = self.live.values().filter(|c| pred(c)).collect();
        v.sort_by_key(|c| c.created_seq);
        v
    }

    pub fn live_ids(&self) -> Vec<String> {
        self.list(|_| true).iter().map(|c| c.id.clone()).collect()
    }

    /// Replaces the channel's topic list (order of first appearance kept, duplicates removed).
    pub fn set_topics(&mut self, id: &str, topics: Vec<String>) {
        let Some(channel) = self.live.get_mut(id) else {
            return;
        };
        for old in channel.topics.drain(..) {
            if let Some(ids) = self.index.get_mut(&old) {
                ids.retain(|c| c != id);
                if ids.is_empty() {
                    self.index.remove(&old);
                }
            }
        }
        channel.topic_set.clear();
        for topic in topics {
            if channel.topic_set.insert(topic.clone()) {
                self.index
                    .entry(topic.clone())
                    .or_default()
                    .push(id.to_owned());
                channel.topics.push(topic);
            }
        }
    }

    /// Kills a live channel: it disappears, its socket gets `final_ctl` (if any) and then a
    /// close frame, and later upgrades are refused according to `death`.
    pub fn kill(&mut self, id: &str, death: ChannelDeath, final_ctl: Option<SocketCtl>) -> bool {
        let Some(mut channel) = self.live.remove(id) else {
            return false;
        };
        for topic in &channel.topics {
            if let Some(ids) = self.index.get_mut(topic) {
                ids.retain(|c| c != id);
                if ids.is_empty() {
                    self.index.remove(topic);
                }
            }
        }
        let had_socket = channel.socket.is_some();
        self.log.push(
            id,
            &channel.client_id,
            ChannelEvent::Died {
                reason: death,
                had_socket,
            },
        );
        if let Some(link) = channel.socket.take() {
            if let Some(ctl) = final_ctl {
                let _ = link.ctl.send(ctl);
            }
            link.close(death.close_reason());
            self.log.push(
                id,
                &channel.client_id,
                ChannelEvent::SocketDetached {
                    conn_id: link.conn_id,
                    cause: DetachCause::ChannelDied,
                },
            );
        }
        tracing::debug!(channel = %short(id), ?death, "channel died");
        self.dead.insert(id.to_owned(), channel.info(Some(death)));
        self.dead_order.push_back(id.to_owned());
        while self.dead_order.len() > DEAD_KEPT {
            if let Some(old) = self.dead_order.pop_front() {
                self.dead.remove(&old);
            }
        }
        true
    }

    /// Whether a socket may connect to `id`.
    pub fn upgrade_check(&self, id: &str) -> Result<(), Refusal> {
        if self.live.contains_key(id) {
            return Ok(());
        }
        match self.dead.get(id).and_then(|i| i.death) {
            Some(death) => Err(Refusal::Dead(death)),
            None => Err(Refusal::Unknown),
        }
    }

    pub fn next_conn_id(&mut self) -> u64 {
        self.next_conn += 1;
        self.next_conn
    }

    /// Attaches a new socket; a previous socket of the channel is closed (one socket per channel).
    pub fn attach(&mut self, id: &str, link: SocketLink) -> Result<(), Refusal> {
        let conn_id = link.conn_id;
        self.attach_conn(id, conn_id, Some(link))
    }

    /// Records an upgrade accepted under `accept_then_close`: the connection supersedes the
    /// channel's socket (if any) like any other, but is never attached (it is being closed), so
    /// the channel has no socket afterwards. Logged as attach then detach.
    pub fn attach_and_close(&mut self, id: &str, conn_id: u64) -> Result<(), Refusal> {
        self.attach_conn(id, conn_id, None)?;
        let client_id = self.live[id].client_id.clone();
        self.log.push(
            id,
            &client_id,
            ChannelEvent::SocketDetached {
                conn_id,
                cause: DetachCause::AcceptThenClose,
            },
        );
        Ok(())
    }

    fn attach_conn(
        &mut self,
        id: &str,
        conn_id: u64,
        link: Option<SocketLink>,
    ) -> Result<(), Refusal> {
        self.upgrade_check(id)?;
        let channel = self.live.get_mut(id).expect("checked live");
        let old = std::mem::replace(&mut channel.socket, link);
        channel.silent_until = None;
        channel.connections += 1;
        let client_id = channel.client_id.clone();
        if let Some(old) = old {
            old.close("superseded by a new connection to this channel");
            self.log.push(
                id,
                &client_id,
                ChannelEvent::SocketDetached {
                    conn_id: old.conn_id,
                    cause: DetachCause::Superseded,
                },
            );
        }
        self.log
            .push(id, &client_id, ChannelEvent::SocketAttached { conn_id });
        Ok(())
    }

    /// Forgets a socket that ended, unless a newer one replaced it already.
    pub fn detach(&mut self, id: &str, conn_id: u64) {
        let current = self
            .live
            .get(id)
            .and_then(|c| c.socket.as_ref())
            .is_some_and(|l| l.conn_id == conn_id);
        if current {
            self.take_socket(id, DetachCause::ConnectionEnded);
        }
    }

    /// Detaches the channel's socket (the caller closes or aborts it) and logs why.
    pub fn take_socket(&mut self, id: &str, cause: DetachCause) -> Option<SocketLink> {
        let channel = self.live.get_mut(id)?;
        let link = channel.socket.take()?;
        channel.silent_until = None;
        let client_id = channel.client_id.clone();
        self.log.push(
            id,
            &client_id,
            ChannelEvent::SocketDetached {
                conn_id: link.conn_id,
                cause,
            },
        );
        Some(link)
    }

    /// Whether an upgrade to `id` must be accepted and closed at once (`accept_then_close`).
    pub fn accept_then_close_holds(&self, id: &str, now: Instant) -> bool {
        self.live
            .get(id)
            .is_some_and(|c| holds(c.accept_then_close, now))
    }

    /// Sets (`Some(until)`) or clears (`None`) `accept_then_close` on the target channels: with
    /// `all`, every live channel and every channel created while it holds. Returns the live
    /// channels set or cleared.
    pub fn set_accept_then_close(
        &mut self,
        channel: Option<&str>,
        setting: Option<Option<Instant>>,
    ) -> Vec<String> {
        let ids = match channel {
            None => {
                self.accept_then_close_all = setting;
                self.live_ids()
            }
            Some(id) if self.live.contains_key(id) => vec![id.to_owned()],
            Some(_) => Vec::new(),
        };
        for id in &ids {
            if let Some(c) = self.live.get_mut(id) {
                c.accept_then_close = setting;
            }
        }
        ids
    }

    #[cfg(test)]
    pub fn has_subscribers(&self, topic: &str) -> bool {
        self.index.contains_key(topic)
    }

    /// Queues the same frame on every connected, non-silent socket subscribed to the topic;
    /// every other subscribed channel gets the event in the missed log.
    pub fn deliver(&self, out: &Outgoing, missed: &MissedLog) {
        let Some(ids) = self.index.get(&*out.topic) else {
            return;
        };
        for id in ids {
            let Some(channel) = self.live.get(id) else {
                continue;
            };
            let result = match &channel.socket {
                None => Err(MissReason::NoSocket),
                Some(link) if link.is_silent() => Err(MissReason::Silenced),
                Some(link) if self.correlation_per_channel => link.push(for_channel(out, id)),
                Some(link) => link.push(out.clone()),
            };
            if let Err(reason) = result {
                missed.record(id, out, reason);
            }
        }
    }

    /// Channels whose lifetime ended or whose `socket_closing` grace is over.
    pub fn due_deaths(&self, now: Instant) -> Vec<(String, ChannelDeath)> {
        let mut due: Vec<(u64, String, ChannelDeath)> = Vec::new();
        for c in self.live.values() {
            if now >= c.expires_at {
                due.push((c.created_seq, c.id.clone(), ChannelDeath::Expired));
            } else if c.doomed_at.is_some_and(|d| now >= d) {
                due.push((c.created_seq, c.id.clone(), ChannelDeath::SocketClosing));
            }
        }
        due.sort();
        due.into_iter().map(|(_, id, d)| (id, d)).collect()
    }

    /// Lifts silences and `accept_then_close` faults whose duration is over.
    pub fn lift_timed_faults(&mut self, now: Instant) {
        if !holds(self.accept_then_close_all, now) {
            self.accept_then_close_all = None;
        }
        for c in self.live.values_mut() {
            if !holds(c.accept_then_close, now) {
                c.accept_then_close = None;
            }
            if c.silent_until.is_some_and(|t| now >= t) {
                c.silent_until = None;
                if let Some(link) = &c.socket {
                    link.set_silent(false);
                }
            }
        }
    }

    /// Ids of live channels created with one of these tokens.
    pub fn ids_of_tokens(&self, tokens: &HashSet<String>) -> Vec<String> {
        self.list(|c| tokens.contains(&c.token))
            .iter()
            .map(|c| c.id.clone())
            .collect()
    }

    /// Every live channel, then the remembered dead ones.
    pub fn infos(&self) -> Vec<ChannelInfo> {
        let mut out: Vec<ChannelInfo> = self.list(|_| true).iter().map(|c| c.info(None)).collect();
        out.extend(
            self.dead_order
                .iter()
                .filter_map(|id| self.dead.get(id))
                .cloned(),
        );
        out
    }
}

/// A channel id shortened for logs: the channel id is the socket's only secret.
pub(crate) fn short(id: &str) -> String {
    let tail: String = id
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("…{tail}")
}

/// The copy of `out` channel `channel_id` gets when every channel has its own `CorrelationId`:
/// the last 12 hex digits replaced by a hash of the id and the channel (same length, still a
/// UUID).
pub(crate) fn for_channel(out: &Outgoing, channel_id: &str) -> Outgoing {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    out.correlation_id.hash(&mut hasher);
    channel_id.hash(&mut hasher);
    let tail = format!("{:012x}", hasher.finish() & 0xffff_ffff_ffff);
    let keep = out.correlation_id.len().saturating_sub(12);
    let correlation_id = format!("{}{tail}", &out.correlation_id[..keep]);
    let frame = out.frame.replacen(&*out.correlation_id, &correlation_id, 1);
    Outgoing {
        topic: Arc::clone(&out.topic),
        frame: Arc::from(frame),
        correlation_id: Arc::from(correlation_id),
    }
}

/// Builds an [`Outgoing`] for an event on one topic.
pub(crate) fn outgoing(topic: &str, frame: Arc<str>, correlation_id: &str) -> Outgoing {
    Outgoing {
        topic: Arc::from(topic),
        frame,
        correlation_id: Arc::from(correlation_id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_channel_correlation_ids_change_only_the_correlation_id() {
        let correlation = "2074b130-f0a0-4722-9063-cdbac74c0aee";
        let frame = format!(
            r#"{{"topicName":"t","eventBody":{{"id":"x"}},"metadata":{{"CorrelationId":"{correlation}"}}}}"#
        );
        let out = outgoing("t", Arc::from(frame.as_str()), correlation);
        let a = for_channel(&out, "streaming-0-a");
        let b = for_channel(&out, "streaming-0-b");
        assert_eq!(
            for_channel(&out, "streaming-0-a").frame,
            a.frame,
            "deterministic"
        );
        assert_ne!(a.correlation_id, b.correlation_id);
        assert_ne!(&*a.correlation_id, correlation);
        for copy in [&a, &b] {
            assert_eq!(copy.correlation_id.len(), correlation.len());
            assert_eq!(copy.correlation_id[..24], correlation[..24]);
            assert_eq!(
                &*copy.frame,
                frame.replace(correlation, &copy.correlation_id),
                "the rest of the frame is untouched"
            );
        }
    }

    #[test]
    fn eviction_prefers_the_oldest_idle_channel() {
        let mut reg = Registry::new(1, None, false);
        let day = Duration::from_secs(86_400);
        let (a, _) = reg.create("c", "t", day, 2);
        let (b, _) = reg.create("c", "t", day, 2);
        // Give `a` a socket: `b` is now the oldest idle one.
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let (ctl, _crx) = tokio::sync::mpsc::unbounded_channel();
        let link = SocketLink {
            conn_id: 1,
            data: tx,
            ctl,
            stop: Arc::new(tokio::sync::watch::channel(false).0),
            silent: Arc::default(),
        };
        reg.attach(&a, link).unwrap();
        let (_c, evicted) = reg.create("c", "t", day, 2);
        assert_eq!(evicted.as_deref(), Some(b.as_str()));
        assert_eq!(
            reg.upgrade_check(&b),
            Err(Refusal::Dead(ChannelDeath::Evicted))
        );
        assert_eq!(reg.upgrade_check("nope"), Err(Refusal::Unknown));
        // Another client is not affected by this client's limit.
        let (_d, evicted) = reg.create("other", "t2", day, 2);
        assert!(evicted.is_none());
    }

    #[test]
    fn topic_index_follows_subscriptions_and_death() {
        let mut reg = Registry::new(1, None, false);
        let (a, _) = reg.create("c", "t", Duration::from_secs(60), 20);
        reg.set_topics(&a, vec!["x".into(), "y".into(), "x".into()]);
        assert_eq!(reg.get(&a).unwrap().topics(), ["x", "y"]);
        assert!(reg.has_subscribers("x"));
        reg.set_topics(&a, vec!["y".into()]);
        assert!(!reg.has_subscribers("x"));
        reg.kill(&a, ChannelDeath::Expired, None);
        assert!(!reg.has_subscribers("y"));
        assert!(!reg.infos()[0].alive);
    }
}
