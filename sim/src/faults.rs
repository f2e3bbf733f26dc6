//! Fault injection, shared by `POST /sim/faults` (JSON) and the library ([`Faults`]).
//!
//! The JSON body is one [`Fault`], tagged by `"fault"`; see the README for curl examples.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::auth::TokenState;
use crate::channel_log::DetachCause;
use crate::channels::ChannelDeath;
use crate::frames::MalformedKind;
use crate::link::SocketCtl;
pub use crate::rest_faults::{RestFault, RestFaultKind, RestScope};
use crate::state::Sim;

/// Which channels a fault hits: one channel id, or `"all"`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Target {
    #[default]
    All,
    Channel(String),
}

impl From<&str> for Target {
    fn from(s: &str) -> Self {
        if s == "all" {
            Target::All
        } else {
            Target::Channel(s.to_owned())
        }
    }
}

impl From<String> for Target {
    fn from(s: String) -> Self {
        Target::from(s.as_str())
    }
}

impl From<&String> for Target {
    fn from(s: &String) -> Self {
        Target::from(s.as_str())
    }
}

impl Serialize for Target {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Target::All => s.serialize_str("all"),
            Target::Channel(id) => s.serialize_str(id),
        }
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Target::from(String::deserialize(d)?))
    }
}

/// One fault, as posted to `/sim/faults` (`{"fault": "<name>", ...}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "fault", rename_all = "snake_case")]
pub enum Fault {
    /// Drop the socket without a close frame (the client sees 1006). The channel stays alive.
    DropSocket {
        #[serde(default)]
        target: Target,
    },
    /// Keep TCP open but send nothing (no events, heartbeats, pongs); events meanwhile are lost.
    Silence {
        #[serde(default)]
        target: Target,
        /// Resume by itself after this long; without it, until `resume`.
        #[serde(default)]
        duration_ms: Option<u64>,
    },
    /// End a silence.
    Resume {
        #[serde(default)]
        target: Target,
    },
    /// Send `v2.system.socket_closing`, close after the grace period; the channel then dies.
    SocketClosing {
        #[serde(default)]
        target: Target,
        /// Defaults to the configured `socket_closing_grace`.
        #[serde(default)]
        grace_ms: Option<u64>,
    },
    /// End the channel's lifetime now (close frame, later upgrades 404).
    ExpireChannel {
        #[serde(default)]
        target: Target,
    },
    /// Expire every issued token now: their channels die, API calls get 401.
    ExpireTokens,
    /// Revoke one token (`token`), a client's tokens (`client_id`), or every token (neither):
    /// each channel gets `v2.system.token_revoked.{channelId}` then a close frame.
    RevokeToken {
        #[serde(default)]
        token: Option<String>,
        #[serde(default)]
        client_id: Option<String>,
    },
    /// Send `v2.system.no_longer_subscribed.{channelId}` on the socket, clear the channel's
    /// subscriptions, then close the socket (close frame). The channel stays alive, without
    /// subscriptions. A socket fault: only channels with a socket are affected.
    NoLongerSubscribed {
        #[serde(default)]
        target: Target,
    },
    /// Accept WebSocket upgrades to the target (101), then close at once: a close frame (1000,
    /// reason `accept_then_close`) and nothing else. The channel stays alive and subscribed;
    /// sockets already connected are not touched. With target `all` it also applies to
    /// channels created while it holds.
    AcceptThenClose {
        #[serde(default)]
        target: Target,
        /// Ends by itself after this long; without it, until `clear_accept_then_close`.
        #[serde(default)]
        duration_ms: Option<u64>,
    },
    /// End `accept_then_close` (with `all`: everywhere, and for new channels).
    ClearAcceptThenClose {
        #[serde(default)]
        target: Target,
    },
    /// Answer every subscription request (`PUT`/`POST …/subscriptions`) that names one of
    /// `topics` with 503: a shard holding them cannot subscribe, others can. Until
    /// `clear_refuse_subscriptions`, or for `duration_ms`.
    RefuseSubscriptions {
        topics: Vec<String>,
        #[serde(default)]
        duration_ms: Option<u64>,
    },
    /// End every `refuse_subscriptions`.
    ClearRefuseSubscriptions,
    /// Answer REST calls with 429/500 or late.
    Rest(RestFault),
    /// Remove every pending REST fault.
    ClearRest,
    /// Send one broken frame.
    Malformed {
        #[serde(default)]
        target: Target,
        kind: MalformedKind,
        /// Size in bytes for `oversized` (default 1 MiB).
        #[serde(default)]
        size: Option<usize>,
    },
    /// Push `count` pre-built event frames as fast as the socket takes them.
    Burst {
        #[serde(default)]
        target: Target,
        count: u64,
        /// Topic of the frames; default: the channel's first subscribed topic.
        #[serde(default)]
        topic: Option<String>,
        /// As Genesys fans an event out: the same frames (same bodies, same CorrelationIds) on
        /// every live channel subscribed to the topic, not only on the target.
        #[serde(default)]
        fan_out: bool,
    },
}

/// What a fault touched.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FaultOutcome {
    /// Channels affected.
    pub channels: Vec<String>,
    /// Tokens affected (expire/revoke).
    pub tokens: usize,
}

/// Applies one fault now.
pub(crate) fn apply(sim: &Sim, fault: Fault) -> FaultOutcome {
    let now = Instant::now();
    let mut outcome = FaultOutcome::default();
    match fault {
        Fault::DropSocket { target } => {
            let mut reg = sim.channels.lock().expect("channels lock");
            for id in resolve(&reg.live_ids(), &target) {
                if let Some(link) = reg.take_socket(&id, DetachCause::Dropped) {
                    link.abort();
                    outcome.channels.push(id);
                }
            }
        }
        Fault::Silence {
            target,
            duration_ms,
        } => {
            let mut reg = sim.channels.lock().expect("channels lock");
            for id in resolve(&reg.live_ids(), &target) {
                let Some(channel) = reg.get_mut(&id) else {
                    continue;
                };
                if let Some(link) = &channel.socket {
                    link.set_silent(true);
                    channel.silent_until = duration_ms.map(|ms| now + Duration::from_millis(ms));
                    outcome.channels.push(id);
                }
            }
        }
        Fault::Resume { target } => {
            let mut reg = sim.channels.lock().expect("channels lock");
            for id in resolve(&reg.live_ids(), &target) {
                let Some(channel) = reg.get_mut(&id) else {
                    continue;
                };
                if let Some(link) = &channel.socket {
                    link.set_silent(false);
                    channel.silent_until = None;
                    outcome.channels.push(id);
                }
            }
        }
        Fault::SocketClosing { target, grace_ms } => {
            let grace = grace_ms
                .map(Duration::from_millis)
                .unwrap_or(sim.cfg.socket_closing_grace);
            let mut reg = sim.channels.lock().expect("channels lock");
            for id in resolve(&reg.live_ids(), &target) {
                let Some(channel) = reg.get_mut(&id) else {
                    continue;
                };
                let Some(link) = channel.socket.clone() else {
                    continue;
                };
                channel.doomed_at = Some(now + grace);
                let client_id = channel.client_id.clone();
                let ctl = sim.system_ctl(
                    &id,
                    &client_id,
                    "v2.system.socket_closing",
                    "socket_closing",
                    "maintenance",
                    "The socket will be closed in about one minute for maintenance",
                );
                let _ = link.ctl.send(ctl);
                outcome.channels.push(id);
            }
        }
        Fault::ExpireChannel { target } => {
            let mut reg = sim.channels.lock().expect("channels lock");
            for id in resolve(&reg.live_ids(), &target) {
                if reg.kill(&id, ChannelDeath::Expired, None) {
                    outcome.channels.push(id);
                }
            }
        }
        Fault::ExpireTokens => {
            let tokens: HashSet<String> = {
                let mut auth = sim.auth.lock().expect("auth lock");
                auth.tokens
                    .iter_mut()
                    .filter(|(_, t)| t.state(now) == TokenState::Valid)
                    .map(|(token, t)| {
                        t.expires_at = now;
                        t.death_handled = true;
                        token.clone()
                    })
                    .collect()
            };
            outcome.tokens = tokens.len();
            outcome.channels = kill_channels_of(sim, &tokens, ChannelDeath::TokenExpired);
        }
        Fault::RevokeToken { token, client_id } => {
            let tokens: HashSet<String> = {
                let mut auth = sim.auth.lock().expect("auth lock");
                auth.tokens
                    .iter_mut()
                    .filter(|(value, t)| {
                        t.state(now) == TokenState::Valid
                            && token.as_ref().is_none_or(|x| x == *value)
                            && client_id.as_ref().is_none_or(|c| *c == t.client_id)
                    })
                    .map(|(value, t)| {
                        t.revoked = true;
                        t.death_handled = true;
                        value.clone()
                    })
                    .collect()
            };
            outcome.tokens = tokens.len();
            outcome.channels = kill_channels_of(sim, &tokens, ChannelDeath::TokenRevoked);
        }
        Fault::NoLongerSubscribed { target } => {
            let mut reg = sim.channels.lock().expect("channels lock");
            for id in resolve(&reg.live_ids(), &target) {
                let Some(link) = reg.take_socket(&id, DetachCause::NoLongerSubscribed) else {
                    continue;
                };
                let client_id = reg
                    .get(&id)
                    .map(|c| c.client_id.clone())
                    .unwrap_or_default();
                reg.set_topics(&id, Vec::new());
                let ctl = sim.system_ctl(
                    &id,
                    &client_id,
                    &format!("v2.system.no_longer_subscribed.{id}"),
                    "no_longer_subscribed",
                    "no_longer_subscribed",
                    "The channel is no longer subscribed to its topics",
                );
                let _ = link.ctl.send(ctl);
                link.close("no longer subscribed");
                outcome.channels.push(id);
            }
        }
        Fault::AcceptThenClose {
            target,
            duration_ms,
        } => {
            let until = duration_ms.map(|ms| now + Duration::from_millis(ms));
            let mut reg = sim.channels.lock().expect("channels lock");
            outcome.channels = reg.set_accept_then_close(target_id(&target), Some(until));
        }
        Fault::ClearAcceptThenClose { target } => {
            let mut reg = sim.channels.lock().expect("channels lock");
            outcome.channels = reg.set_accept_then_close(target_id(&target), None);
        }
        Fault::RefuseSubscriptions {
            topics,
            duration_ms,
        } => {
            let until = duration_ms.map(|ms| now + Duration::from_millis(ms));
            sim.refused_subscriptions
                .lock()
                .expect("refusals lock")
                .push((topics.into_iter().collect(), until));
        }
        Fault::ClearRefuseSubscriptions => sim
            .refused_subscriptions
            .lock()
            .expect("refusals lock")
            .clear(),
        Fault::Rest(rest) => sim.rest_faults.lock().expect("faults lock").push(rest),
        Fault::ClearRest => sim.rest_faults.lock().expect("faults lock").clear(),
        Fault::Malformed { target, kind, size } => {
            let reg = sim.channels.lock().expect("channels lock");
            for id in resolve(&reg.live_ids(), &target) {
                if let Some(link) = reg.get(&id).and_then(|c| c.socket.as_ref()) {
                    let size = size.unwrap_or(1 << 20);
                    let _ = link.ctl.send(SocketCtl::Malformed { kind, size });
                    outcome.channels.push(id);
                }
            }
        }
        Fault::Burst {
            target,
            count,
            topic,
            fan_out,
        } => {
            let reg = sim.channels.lock().expect("channels lock");
            let fallback = default_burst_topic(sim);
            let live = reg.live_ids();
            let mut sent_to = HashSet::new();
            for id in resolve(&live, &target) {
                let Some(channel) = reg.get(&id) else {
                    continue;
                };
                if channel.socket.is_none() {
                    continue;
                }
                let topic: Arc<str> = Arc::from(
                    topic
                        .clone()
                        .or_else(|| channel.topics().first().cloned())
                        .unwrap_or_else(|| fallback.clone()),
                );
                let (recipients, burst_no) = if fan_out {
                    let no = sim.next_shared_burst();
                    let subscribed: Vec<String> = live
                        .iter()
                        .filter(|other| {
                            reg.get(other).is_some_and(|c| {
                                c.socket.is_some() && c.topics().iter().any(|t| **t == *topic)
                            })
                        })
                        .cloned()
                        .collect();
                    (subscribed, Some(no))
                } else {
                    (vec![id], None)
                };
                for rid in recipients {
                    if !sent_to.insert(rid.clone()) {
                        continue;
                    }
                    if let Some(link) = reg.get(&rid).and_then(|c| c.socket.as_ref()) {
                        let _ = link.ctl.send(SocketCtl::Burst {
                            count,
                            topic: topic.clone(),
                            burst_no,
                        });
                        outcome.channels.push(rid);
                    }
                }
            }
        }
    }
    outcome
}

fn kill_channels_of(sim: &Sim, tokens: &HashSet<String>, death: ChannelDeath) -> Vec<String> {
    let ids = sim
        .channels
        .lock()
        .expect("channels lock")
        .ids_of_tokens(tokens);
    sim.kill_token_channels(tokens, death);
    ids
}

fn default_burst_topic(sim: &Sim) -> String {
    let dir = sim.directory.read().expect("directory lock");
    format!("v2.routing.queues.{}.conversations", dir.queues[0].id)
}

fn target_id(target: &Target) -> Option<&str> {
    match target {
        Target::All => None,
        Target::Channel(id) => Some(id),
    }
}

fn resolve(live: &[String], target: &Target) -> Vec<String> {
    match target {
        Target::All => live.to_vec(),
        Target::Channel(id) => live.iter().filter(|c| *c == id).cloned().collect(),
    }
}

/// `POST /sim/faults`: body is one [`Fault`]; answers the [`FaultOutcome`], or 404 when a
/// channel-targeted fault touched nothing.
pub(crate) async fn faults_endpoint(sim: web::Data<Sim>, body: web::Bytes) -> HttpResponse {
    let fault: Fault = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(e) => return crate::errors::bad_request(format!("invalid fault: {e}")),
    };
    let targeted = matches!(
        &fault,
        Fault::DropSocket {
            target: Target::Channel(_)
        } | Fault::Silence {
            target: Target::Channel(_),
            ..
        } | Fault::Resume {
            target: Target::Channel(_)
        } | Fault::SocketClosing {
            target: Target::Channel(_),
            ..
        } | Fault::ExpireChannel {
            target: Target::Channel(_)
        } | Fault::NoLongerSubscribed {
            target: Target::Channel(_)
        } | Fault::Malformed {
            target: Target::Channel(_),
            ..
        } | Fault::Burst {
            target: Target::Channel(_),
            ..
        } | Fault::AcceptThenClose {
            target: Target::Channel(_),
            ..
        } | Fault::ClearAcceptThenClose {
            target: Target::Channel(_)
        }
    );
    let outcome = apply(&sim, fault);
    if targeted && outcome.channels.is_empty() {
        return crate::errors::not_found("channel (live and, for socket faults, connected)");
    }
    HttpResponse::Ok().json(outcome)
}

/// Fault injection from the library; see [`crate::SimHandle::faults`].
pub struct Faults<'a> {
    pub(crate) sim: &'a Sim,
}

impl Faults<'_> {
    /// Applies any fault (the same type `POST /sim/faults` takes).
    pub fn apply(&self, fault: Fault) -> FaultOutcome {
        apply(self.sim, fault)
    }

    /// Drops the socket(s) without a close frame; returns the affected channel ids.
    pub fn drop_socket(&self, target: impl Into<Target>) -> Vec<String> {
        let target = target.into();
        self.apply(Fault::DropSocket { target }).channels
    }

    /// Silences the socket(s) until [`Faults::resume`] or for `duration`.
    pub fn silence(&self, target: impl Into<Target>, duration: Option<Duration>) -> Vec<String> {
        let target = target.into();
        let duration_ms = duration.map(|d| d.as_millis() as u64);
        self.apply(Fault::Silence {
            target,
            duration_ms,
        })
        .channels
    }

    /// Ends a silence.
    pub fn resume(&self, target: impl Into<Target>) -> Vec<String> {
        let target = target.into();
        self.apply(Fault::Resume { target }).channels
    }

    /// Sends `v2.system.socket_closing`; the socket closes after `grace` (default: configured).
    pub fn socket_closing(
        &self,
        target: impl Into<Target>,
        grace: Option<Duration>,
    ) -> Vec<String> {
        let target = target.into();
        let grace_ms = grace.map(|d| d.as_millis() as u64);
        self.apply(Fault::SocketClosing { target, grace_ms })
            .channels
    }

    /// Expires the channel(s) now.
    pub fn expire_channel(&self, target: impl Into<Target>) -> Vec<String> {
        let target = target.into();
        self.apply(Fault::ExpireChannel { target }).channels
    }

    /// Expires every token now; returns how many were valid.
    pub fn expire_all_tokens(&self) -> usize {
        self.apply(Fault::ExpireTokens).tokens
    }

    /// Revokes one token; returns whether it was valid.
    pub fn revoke_token(&self, token: &str) -> bool {
        let fault = Fault::RevokeToken {
            token: Some(token.to_owned()),
            client_id: None,
        };
        self.apply(fault).tokens > 0
    }

    /// Revokes every valid token of a client; returns how many.
    pub fn revoke_client_tokens(&self, client_id: &str) -> usize {
        let fault = Fault::RevokeToken {
            token: None,
            client_id: Some(client_id.to_owned()),
        };
        self.apply(fault).tokens
    }

    /// Sends `v2.system.no_longer_subscribed.{channelId}`, clears the channel's subscriptions
    /// and closes the socket; returns the affected (connected) channel ids.
    pub fn no_longer_subscribed(&self, target: impl Into<Target>) -> Vec<String> {
        let target = target.into();
        self.apply(Fault::NoLongerSubscribed { target }).channels
    }

    /// Accepts upgrades to the target and closes them at once (close frame 1000, nothing
    /// else), until [`Faults::clear_accept_then_close`] or for `duration`. With `"all"` it also
    /// applies to channels created meanwhile. Returns the live channels it was set on.
    pub fn accept_then_close(
        &self,
        target: impl Into<Target>,
        duration: Option<Duration>,
    ) -> Vec<String> {
        let target = target.into();
        let duration_ms = duration.map(|d| d.as_millis() as u64);
        self.apply(Fault::AcceptThenClose {
            target,
            duration_ms,
        })
        .channels
    }

    /// Ends `accept_then_close` on the target (`"all"`: on every channel and for new ones).
    /// Returns the live channels it was cleared on.
    pub fn clear_accept_then_close(&self, target: impl Into<Target>) -> Vec<String> {
        let target = target.into();
        self.apply(Fault::ClearAcceptThenClose { target }).channels
    }

    /// Adds a REST fault.
    pub fn rest(&self, fault: RestFault) {
        self.apply(Fault::Rest(fault));
    }

    /// Removes every pending REST fault.
    pub fn clear_rest(&self) {
        self.apply(Fault::ClearRest);
    }

    /// Subscription requests naming one of `topics` get 503 (until cleared, or for `duration`).
    pub fn refuse_subscriptions(&self, topics: &[String], duration: Option<Duration>) {
        self.apply(Fault::RefuseSubscriptions {
            topics: topics.to_vec(),
            duration_ms: duration.map(|d| d.as_millis() as u64),
        });
    }

    /// Ends every `refuse_subscriptions`.
    pub fn clear_refuse_subscriptions(&self) {
        self.apply(Fault::ClearRefuseSubscriptions);
    }

    /// Sends one malformed frame (`size` is used by `Oversized`).
    pub fn malformed(
        &self,
        target: impl Into<Target>,
        kind: MalformedKind,
        size: Option<usize>,
    ) -> Vec<String> {
        let target = target.into();
        self.apply(Fault::Malformed { target, kind, size }).channels
    }

    /// Pushes `count` pre-built events as fast as the socket takes them.
    pub fn burst(&self, target: impl Into<Target>, count: u64, topic: Option<&str>) -> Vec<String> {
        self.burst_with(target.into(), count, topic, false)
    }

    /// Like [`Self::burst`], but the same frames go to every live channel subscribed to the
    /// topic (the target's first topic by default), as Genesys fans an event out.
    pub fn burst_fan_out(
        &self,
        target: impl Into<Target>,
        count: u64,
        topic: Option<&str>,
    ) -> Vec<String> {
        self.burst_with(target.into(), count, topic, true)
    }

    fn burst_with(
        &self,
        target: Target,
        count: u64,
        topic: Option<&str>,
        fan_out: bool,
    ) -> Vec<String> {
        let topic = topic.map(str::to_owned);
        self.apply(Fault::Burst {
            target,
            count,
            topic,
            fan_out,
        })
        .channels
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_json_round_trip() {
        let f: Fault =
            serde_json::from_str(r#"{"fault":"drop_socket","target":"streaming-0-x"}"#).unwrap();
        assert_eq!(
            f,
            Fault::DropSocket {
                target: Target::Channel("streaming-0-x".into())
            }
        );
        let f: Fault = serde_json::from_str(
            r#"{"fault":"rest","kind":"too_many_requests","retry_after_s":3,"count":2}"#,
        )
        .unwrap();
        let Fault::Rest(r) = f else { panic!() };
        assert_eq!(r.retry_after_s, 3);
        assert_eq!(r.count, Some(2));
        let f: Fault = serde_json::from_str(r#"{"fault":"no_longer_subscribed"}"#).unwrap();
        assert_eq!(
            f,
            Fault::NoLongerSubscribed {
                target: Target::All
            }
        );
        let f: Fault = serde_json::from_str(
            r#"{"fault":"accept_then_close","target":"all","duration_ms":5000}"#,
        )
        .unwrap();
        assert_eq!(
            f,
            Fault::AcceptThenClose {
                target: Target::All,
                duration_ms: Some(5000)
            }
        );
        let f: Fault =
            serde_json::from_str(r#"{"fault":"clear_accept_then_close","target":"streaming-0-x"}"#)
                .unwrap();
        assert_eq!(
            f,
            Fault::ClearAcceptThenClose {
                target: Target::Channel("streaming-0-x".into())
            }
        );
        let f: Fault = serde_json::from_str(r#"{"fault":"expire_tokens"}"#).unwrap();
        assert_eq!(f, Fault::ExpireTokens);
        let f: Fault =
            serde_json::from_str(r#"{"fault":"malformed","kind":"oversized","size":10}"#).unwrap();
        assert!(matches!(
            f,
            Fault::Malformed {
                target: Target::All,
                ..
            }
        ));
    }
}
