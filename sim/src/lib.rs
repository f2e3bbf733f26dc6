//! `genesys-sim`: a faithful fake Genesys Cloud org on loopback.
//!
//! It serves OAuth client credentials, notification channels and subscriptions, queue and user
//! lists, the analytics conversation-details query, and the streaming WebSocket (on a second
//! listener), driven by a seeded conversation model. Every frame handed to a socket is recorded
//! in a ledger, every event a subscribed channel could not be handed in the missed log, every
//! REST call is counted, every published event and every channel lifecycle event is logged, and
//! faults can be injected from the library or `POST /sim/faults`.
//!
//! ```no_run
//! let sim = genesys_sim::Simulator::start(genesys_sim::SimConfig::default())?;
//! println!("REST {} / WS {}", sim.base_url(), sim.ws_base_url());
//! sim.faults().drop_socket("all");
//! let events = sim.sent_events();
//! # Ok::<(), anyhow::Error>(())
//! ```
#![forbid(unsafe_code)]
// Handlers bail out early with a ready `HttpResponse` (`Result<_, HttpResponse>`); boxing it
// would only add noise on these cold error paths.
#![allow(clippy::result_large_err)]

mod analytics;
mod auth;
mod channel_log;
mod channels;
mod config;
mod control;
mod directory;
mod engine;
mod errors;
mod faults;
mod frames;
mod ids;
mod ledger;
mod link;
mod missed;
mod model;
mod published;
mod requests;
mod rest;
mod rest_faults;
mod server;
mod state;
mod topics;
mod ws;

use std::sync::{Arc, Mutex};

pub use analytics::ConversationTruth;
pub use channel_log::{ChannelEvent, ChannelLogEntry, DetachCause};
pub use channels::{ChannelDeath, ChannelInfo};
pub use config::{
    Branching, SimClient, SimConfig, StageDurations, ALL_PERMISSIONS, PERM_CONVERSATION_DETAIL,
    PERM_CONVERSATION_VIEW, PERM_QUEUE_OBSERVATION, PERM_QUEUE_VIEW, PERM_USER_VIEW,
};
pub use faults::{Fault, FaultOutcome, Faults, RestFault, RestFaultKind, RestScope, Target};
pub use frames::MalformedKind;
pub use ledger::{FrameKind, LedgerEntry};
pub use missed::{MissReason, MissedEntry};
pub use published::{PublishSource, PublishedEntry};
pub use requests::{EndpointGroup, GroupCounts, RestRequest, RestRequestStats};

/// Entry point: `Simulator::start(cfg)`.
pub struct Simulator;

impl Simulator {
    /// Binds both listeners, starts the simulator on a dedicated OS thread running its own actix
    /// System, and returns once both listeners serve.
    pub fn start(cfg: SimConfig) -> anyhow::Result<SimHandle> {
        let running = server::start(cfg)?;
        Ok(SimHandle {
            sim: running.sim.clone(),
            running: Arc::new(Mutex::new(running)),
        })
    }
}

/// A running simulator. Cheap to clone; the server stops when the last clone is dropped or on
/// [`SimHandle::stop`].
#[derive(Clone)]
pub struct SimHandle {
    sim: Arc<state::Sim>,
    running: Arc<Mutex<server::Running>>,
}

impl SimHandle {
    /// `http://127.0.0.1:P`: serves `/oauth/token`, `/api/v2/...` and `/sim/...`.
    pub fn base_url(&self) -> String {
        self.sim.base_url.clone()
    }

    /// `ws://127.0.0.1:Q`: the host of every `connectUri` (`{ws_base_url}/channels/{id}`).
    pub fn ws_base_url(&self) -> String {
        self.sim.ws_base_url.clone()
    }

    /// The simulated organization's id (in system messages).
    pub fn org_id(&self) -> String {
        self.sim.org_id.clone()
    }

    /// The configuration the simulator runs with.
    pub fn config(&self) -> &SimConfig {
        &self.sim.cfg
    }

    /// Every frame handed to a socket so far, in order.
    pub fn ledger(&self) -> Vec<LedgerEntry> {
        self.sim.ledger.snapshot(0, |_| true)
    }

    /// Ledger entries with `seq >= since`.
    pub fn ledger_since(&self, since: u64) -> Vec<LedgerEntry> {
        self.sim.ledger.snapshot(since, |_| true)
    }

    /// Ledger entries of kind [`FrameKind::Event`] (conversation, detail, observation, burst).
    pub fn sent_events(&self) -> Vec<LedgerEntry> {
        self.sim.ledger.snapshot(0, |e| e.kind == FrameKind::Event)
    }

    /// Number of ledger entries matching the filter, without copying them.
    pub fn ledger_count(&self, filter: impl Fn(&LedgerEntry) -> bool) -> usize {
        self.sim.ledger.count(filter)
    }

    /// Every event a live channel subscribed to its topic missed (no socket, silenced, socket
    /// being dropped, too slow), in order. With the ledger, it accounts for every event
    /// published to every subscribed live channel.
    pub fn missed(&self) -> Vec<MissedEntry> {
        self.sim.missed.snapshot(0, |_| true)
    }

    /// Missed-log entries with `seq >= since`.
    pub fn missed_since(&self, since: u64) -> Vec<MissedEntry> {
        self.sim.missed.snapshot(since, |_| true)
    }

    /// Number of missed-log entries matching the filter, without copying them.
    pub fn missed_count(&self, filter: impl Fn(&MissedEntry) -> bool) -> usize {
        self.sim.missed.count(filter)
    }

    /// Every event frame published so far (conversation model and `burst` fault), whether or
    /// not any channel was subscribed or connected, in order. For a subscribed live channel,
    /// each of these on its topics is in exactly one of the ledger and the missed log, with the
    /// byte-identical frame (burst frames: only on the channel they were built for, and never
    /// in the missed log).
    pub fn published(&self) -> Vec<PublishedEntry> {
        self.sim.published.snapshot(0, |_| true)
    }

    /// Published-log entries with `seq >= since`.
    pub fn published_since(&self, since: u64) -> Vec<PublishedEntry> {
        self.sim.published.snapshot(since, |_| true)
    }

    /// Number of published-log entries matching the filter, without copying them.
    pub fn published_count(&self, filter: impl Fn(&PublishedEntry) -> bool) -> usize {
        self.sim.published.count(filter)
    }

    /// Every channel lifecycle event so far (created, died, socket attached/detached), in
    /// order.
    pub fn channel_log(&self) -> Vec<ChannelLogEntry> {
        let reg = self.sim.channels.lock().expect("channels lock");
        reg.log.snapshot(0, |_| true)
    }

    /// Channel-log entries with `seq >= since`.
    pub fn channel_log_since(&self, since: u64) -> Vec<ChannelLogEntry> {
        let reg = self.sim.channels.lock().expect("channels lock");
        reg.log.snapshot(since, |_| true)
    }

    /// The largest number of live channels the OAuth client ever held at once (0 if none).
    /// Never trimmed.
    pub fn max_live_channels(&self, client_id: &str) -> usize {
        let reg = self.sim.channels.lock().expect("channels lock");
        reg.log.max_live(client_id)
    }

    /// How many of the client's channels were evicted while a socket was attached to them.
    /// Never trimmed.
    pub fn evictions_of_live_channels(&self, client_id: &str) -> usize {
        let reg = self.sim.channels.lock().expect("channels lock");
        reg.log.live_evictions(client_id)
    }

    /// REST calls to `/oauth/*` and `/api/*` answered so far (injected faults included): counts
    /// per endpoint group, status and route, and the most recent calls with timestamps.
    pub fn rest_requests(&self) -> RestRequestStats {
        self.sim.requests.lock().expect("requests lock").snapshot(0)
    }

    /// Fault injection.
    pub fn faults(&self) -> Faults<'_> {
        Faults { sim: &self.sim }
    }

    /// New conversations per second; 0 pauses new arrivals (conversations in progress finish).
    pub fn set_rate(&self, conversations_per_sec: f64) {
        let _ = self
            .sim
            .engine_tx
            .send(engine::EngineCmd::SetRate(conversations_per_sec));
    }

    /// Ids of every queue, in creation order.
    pub fn queue_ids(&self) -> Vec<String> {
        let dir = self.sim.directory.read().expect("directory lock");
        dir.queues.iter().map(|q| q.id.clone()).collect()
    }

    /// Ids of every user (agent), in creation order.
    pub fn user_ids(&self) -> Vec<String> {
        let dir = self.sim.directory.read().expect("directory lock");
        dir.users.iter().map(|u| u.id.clone()).collect()
    }

    /// Adds a queue at runtime (it gets conversations from now on); returns its id.
    pub fn add_queue(&self, name: &str) -> String {
        self.sim
            .directory
            .write()
            .expect("directory lock")
            .add_queue(name)
    }

    /// Stops listing a queue in `GET /api/v2/routing/queues` (a topic set discovered from the
    /// directory shrinks); the model and subscriptions still know it. True if it was listed.
    pub fn delist_queue(&self, id: &str) -> bool {
        self.sim
            .directory
            .write()
            .expect("directory lock")
            .delist_queue(id)
    }

    /// Every channel, live first (oldest first), then the dead ones remembered.
    pub fn channels(&self) -> Vec<ChannelInfo> {
        self.sim.channels.lock().expect("channels lock").infos()
    }

    /// Tokens issued by `POST /oauth/token` so far.
    pub fn tokens_issued(&self) -> u64 {
        self.sim.auth.lock().expect("auth lock").issued
    }

    /// Conversations started so far (as kept for the analytics query).
    pub fn conversations_started(&self) -> usize {
        self.sim.history.lock().expect("history lock").len()
    }

    /// The model's truth of every conversation it started (kept as for the analytics query),
    /// in start order: true start and end, and whether it ended in the IVR.
    pub fn conversations(&self) -> Vec<ConversationTruth> {
        self.sim.history.lock().expect("history lock").truth()
    }

    /// Stops the server and joins its thread (other clones become inert).
    pub fn stop(self) {
        self.running.lock().expect("running lock").shutdown();
    }
}
