//! The simulator's shared state and the janitor that enforces lifetimes.
//!
//! Locks are plain `std` mutexes held for short, non-async sections. Lock order, where two are
//! held: `auth` before `channels`; `channels` before `sys_rng`; the ledger, missed, published
//! and requests locks are leaves.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use tokio::sync::mpsc;

use crate::analytics::History;
use crate::auth::{AuthState, TokenState};
use crate::channels::{ChannelDeath, Registry};
use crate::config::{SimClient, SimConfig};
use crate::directory::Directory;
use crate::engine::EngineCmd;
use crate::frames::{self, SystemMessage};
use crate::ids;
use crate::ledger::Ledger;
use crate::link::SocketCtl;
use crate::missed::MissedLog;
use crate::published::PublishedLog;
use crate::requests::RequestLog;
use crate::rest_faults::RestFaults;

/// How often the janitor checks token and channel lifetimes.
pub(crate) const JANITOR_TICK: Duration = Duration::from_millis(20);

pub(crate) struct Sim {
    pub cfg: SimConfig,
    pub org_id: String,
    pub base_url: String,
    pub ws_base_url: String,
    pub directory: RwLock<Directory>,
    pub auth: Mutex<AuthState>,
    pub channels: Mutex<Registry>,
    pub ledger: Ledger,
    pub missed: MissedLog,
    pub published: PublishedLog,
    pub requests: Mutex<RequestLog>,
    pub rest_faults: Mutex<RestFaults>,
    pub history: Mutex<History>,
    pub sys_rng: Mutex<SmallRng>,
    pub engine_tx: mpsc::UnboundedSender<EngineCmd>,
    /// `refuse_subscriptions` faults: topics, and until when (`None`: until cleared).
    pub refused_subscriptions: Mutex<Vec<(HashSet<String>, Option<Instant>)>>,
    /// Fan-out bursts started so far (names their frames: see [`Sim::next_shared_burst`]).
    shared_bursts: AtomicU64,
}

impl Sim {
    pub fn new(
        cfg: SimConfig,
        base_url: String,
        ws_base_url: String,
        engine_tx: mpsc::UnboundedSender<EngineCmd>,
    ) -> Self {
        let mut sys_rng = ids::rng_for(cfg.seed, ids::Stream::System);
        let org_id = ids::uuid(&mut sys_rng);
        Sim {
            org_id,
            base_url,
            ws_base_url,
            directory: RwLock::new(Directory::new(cfg.seed, cfg.queues, cfg.agents)),
            auth: Mutex::new(AuthState::new(cfg.seed)),
            channels: Mutex::new(Registry::new(
                cfg.seed,
                cfg.ledger_capacity,
                cfg.correlation_per_channel,
            )),
            ledger: Ledger::new(cfg.ledger_capacity),
            missed: MissedLog::new(cfg.ledger_capacity),
            published: PublishedLog::new(cfg.ledger_capacity),
            requests: Mutex::new(RequestLog::new(cfg.ledger_capacity)),
            rest_faults: Mutex::new(RestFaults::default()),
            history: Mutex::new(History::new(cfg.history_capacity)),
            sys_rng: Mutex::new(sys_rng),
            engine_tx,
            refused_subscriptions: Mutex::new(Vec::new()),
            shared_bursts: AtomicU64::new(0),
            cfg,
        }
    }

    /// The first of `topics` that a `refuse_subscriptions` fault in force names.
    pub fn refused_topic<'a>(&self, topics: &'a [String]) -> Option<&'a str> {
        let now = Instant::now();
        let mut refusals = self.refused_subscriptions.lock().expect("refusals lock");
        refusals.retain(|(_, until)| until.is_none_or(|u| u > now));
        topics
            .iter()
            .find(|t| refusals.iter().any(|(set, _)| set.contains(*t)))
            .map(String::as_str)
    }

    /// The number naming the frames of a new fan-out burst: the same on every socket it goes
    /// to, different from every other burst of this simulator (per-socket bursts mix the
    /// connection id in; these set the top bit of the 32 bits that reach the frame ids).
    pub fn next_shared_burst(&self) -> u64 {
        let n = self.shared_bursts.fetch_add(1, Ordering::Relaxed);
        (self.cfg.seed.wrapping_mul(7_919).wrapping_add(n) & 0x7fff_ffff) | 0x8000_0000
    }

    pub fn client(&self, client_id: &str) -> Option<&SimClient> {
        self.cfg.clients.iter().find(|c| c.client_id == client_id)
    }

    /// A `v2.system.*` frame for a channel, with a fresh deterministic correlation id.
    pub fn system_ctl(
        &self,
        channel_id: &str,
        client_id: &str,
        topic: &str,
        system_topic_type: &str,
        reason: &str,
        message: &str,
    ) -> SocketCtl {
        let correlation_id = ids::uuid(&mut self.sys_rng.lock().expect("rng lock"));
        let body = SystemMessage {
            channel_id: channel_id.to_owned(),
            system_topic_type: system_topic_type.to_owned(),
            correlation_id: correlation_id.clone(),
            organization_id: self.org_id.clone(),
            user_id: None,
            oauth_client_id: client_id.to_owned(),
            reason: reason.to_owned(),
            message: message.to_owned(),
            data: serde_json::json!({}),
        };
        SocketCtl::System {
            topic: Arc::from(topic),
            frame: frames::system_frame(topic, &body),
            correlation_id: Arc::from(correlation_id),
        }
    }

    /// Kills every live channel created with one of these tokens.
    pub fn kill_token_channels(&self, tokens: &HashSet<String>, death: ChannelDeath) -> usize {
        let mut reg = self.channels.lock().expect("channels lock");
        let ids = reg.ids_of_tokens(tokens);
        for id in &ids {
            let final_ctl = if death == ChannelDeath::TokenRevoked {
                let client_id = reg.get(id).map(|c| c.client_id.clone()).unwrap_or_default();
                Some(self.system_ctl(
                    id,
                    &client_id,
                    &format!("v2.system.token_revoked.{id}"),
                    "token_revoked",
                    "token_revoked",
                    "The OAuth token used to create this channel was revoked",
                ))
            } else {
                None
            };
            reg.kill(id, death, final_ctl);
        }
        ids.len()
    }

    /// One pass of lifetime enforcement: expired tokens kill their channels, expired and
    /// `socket_closing` channels die, timed silences and `accept_then_close` faults end.
    pub fn janitor_tick(&self) {
        let now = Instant::now();
        let newly_dead: HashSet<String> = {
            let mut auth = self.auth.lock().expect("auth lock");
            auth.tokens
                .iter_mut()
                .filter(|(_, t)| !t.death_handled && t.state(now) == TokenState::Expired)
                .map(|(token, t)| {
                    t.death_handled = true;
                    token.clone()
                })
                .collect()
        };
        if !newly_dead.is_empty() {
            self.kill_token_channels(&newly_dead, ChannelDeath::TokenExpired);
        }
        let mut reg = self.channels.lock().expect("channels lock");
        for (id, death) in reg.due_deaths(now) {
            reg.kill(&id, death, None);
        }
        reg.lift_timed_faults(now);
    }
}

/// Runs the janitor until the System stops.
pub(crate) async fn run_janitor(sim: Arc<Sim>) {
    let mut tick = tokio::time::interval(JANITOR_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        sim.janitor_tick();
    }
}
