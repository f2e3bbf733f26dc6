//! Simulator configuration: listeners, org size, traffic, lifetimes and OAuth clients.
//!
//! Library defaults are *fast* (a conversation lives about three seconds) so tests run quickly;
//! [`StageDurations::realistic`] gives minute-scale conversations for demos.

use std::net::SocketAddr;
use std::time::Duration;

/// Permission needed to list queues and to subscribe to queue conversation topics.
pub const PERM_QUEUE_VIEW: &str = "routing:queue:view";
/// Permission needed to subscribe to queue and user conversation topics.
pub const PERM_CONVERSATION_VIEW: &str = "conversation:communication:view";
/// Permission needed to list users.
pub const PERM_USER_VIEW: &str = "directory:user:view";
/// Permission needed for the analytics details query and the detail-event topics.
pub const PERM_CONVERSATION_DETAIL: &str = "analytics:conversationDetail:view";
/// Permission needed for `v2.analytics.queues.{id}.observations`.
pub const PERM_QUEUE_OBSERVATION: &str = "analytics:queueObservation:view";

/// Every permission the simulator knows; the default client holds all of them.
pub const ALL_PERMISSIONS: [&str; 5] = [
    PERM_QUEUE_VIEW,
    PERM_CONVERSATION_VIEW,
    PERM_USER_VIEW,
    PERM_CONVERSATION_DETAIL,
    PERM_QUEUE_OBSERVATION,
];

/// One OAuth client (client-credentials grant) the simulator accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimClient {
    pub client_id: String,
    pub client_secret: String,
    /// Permission strings such as `routing:queue:view`; see [`ALL_PERMISSIONS`].
    pub permissions: Vec<String>,
}

impl SimClient {
    /// A client holding every permission the simulator checks.
    pub fn with_all_permissions(client_id: &str, client_secret: &str) -> Self {
        SimClient {
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            permissions: ALL_PERMISSIONS.iter().map(|p| p.to_string()).collect(),
        }
    }

    pub(crate) fn has_permission(&self, permission: &str) -> bool {
        self.permissions.iter().any(|p| p == permission)
    }
}

impl Default for SimClient {
    fn default() -> Self {
        SimClient::with_all_permissions("sim-client", "sim-secret")
    }
}

/// Mean duration of each stage of a conversation. Each sampled duration is uniform in
/// `[mean/2, 3*mean/2]`, drawn from the seeded generator.
#[derive(Clone, Debug, PartialEq)]
pub struct StageDurations {
    /// Customer in the IVR before the call reaches the queue.
    pub ivr: Duration,
    /// Minimum time in queue before routing offers the call to an agent.
    pub queue: Duration,
    /// Agent alerting (ringing) before answering or timing out.
    pub alerting: Duration,
    /// Connected talk time (split around hold and transfer).
    pub talk: Duration,
    /// Time on hold, when the conversation is put on hold.
    pub hold: Duration,
    /// After-call work (wrap-up) of the agent.
    pub wrapup: Duration,
}

impl StageDurations {
    /// Short stages: a conversation lives about three seconds.
    pub fn fast() -> Self {
        StageDurations {
            ivr: Duration::from_millis(200),
            queue: Duration::from_millis(200),
            alerting: Duration::from_millis(200),
            talk: Duration::from_millis(1200),
            hold: Duration::from_millis(300),
            wrapup: Duration::from_millis(300),
        }
    }

    /// Contact-centre-like stages: a conversation lives several minutes.
    pub fn realistic() -> Self {
        StageDurations {
            ivr: Duration::from_secs(30),
            queue: Duration::from_secs(20),
            alerting: Duration::from_secs(8),
            talk: Duration::from_secs(240),
            hold: Duration::from_secs(40),
            wrapup: Duration::from_secs(45),
        }
    }
}

impl Default for StageDurations {
    fn default() -> Self {
        StageDurations::fast()
    }
}

/// Probabilities of the optional branches of a conversation.
#[derive(Clone, Debug, PartialEq)]
pub struct Branching {
    /// The alerted agent does not answer (timeout); the call goes back to the queue.
    pub no_answer: f64,
    /// The call is put on hold once while connected.
    pub hold: f64,
    /// The agent blind-transfers the call to another queue (at most once per conversation).
    pub transfer: f64,
    /// The customer hangs up in the IVR: the conversation never reaches a queue or an agent, so
    /// no queue or user topic ever carries it (only the analytics query and detail events do).
    pub ivr_only: f64,
    /// The customer hangs up while waiting in the queue (before an agent is alerted).
    pub abandon: f64,
    /// After a snapshot, the previous snapshot of the same conversation is published again on
    /// the same topics: delivery out of order, as Genesys does not guarantee order.
    pub stale_snapshot: f64,
}

impl Default for Branching {
    fn default() -> Self {
        Branching {
            no_answer: 0.1,
            hold: 0.3,
            transfer: 0.1,
            ivr_only: 0.0,
            abandon: 0.0,
            stale_snapshot: 0.0,
        }
    }
}

/// Everything the simulator can be configured with.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// REST listener (`/oauth/token`, `/api/v2/...`, `/sim/...`). Loopback only.
    pub listen: SocketAddr,
    /// WebSocket listener serving the `connectUri`s. Loopback only.
    pub ws_listen: SocketAddr,
    /// Number of routing queues in the org.
    pub queues: usize,
    /// Number of agents (users) in the org.
    pub agents: usize,
    /// New conversations per second (Poisson arrivals); 0 pauses arrivals.
    pub rate_per_sec: f64,
    /// Seed of every generator: ids, arrivals, durations, correlation ids.
    pub seed: u64,
    /// `expires_in` of issued tokens; an expired token gets 401 and kills its channels.
    pub token_lifetime: Duration,
    /// Lifetime of a notification channel (Genesys: 24 h).
    pub channel_lifetime: Duration,
    /// Interval of the `channel.metadata` "WebSocket Heartbeat" frame (Genesys: ~30 s).
    pub heartbeat_interval: Duration,
    /// Delay between `v2.system.socket_closing` and the close (Genesys: ~1 min).
    pub socket_closing_grace: Duration,
    /// Accepted OAuth clients.
    pub clients: Vec<SimClient>,
    /// Channels per OAuth client before the oldest (idle first) is evicted (Genesys: 20).
    pub max_channels_per_client: usize,
    /// Topics per channel (Genesys: 1,000); more is a 400.
    pub max_topics_per_channel: usize,
    /// Stage durations of the conversation model.
    pub stages: StageDurations,
    /// Branch probabilities of the conversation model.
    pub branching: Branching,
    /// Frames waiting for one socket before the simulator drops that socket as too slow.
    pub socket_buffer_frames: usize,
    /// Each channel gets its own `CorrelationId` for an event (derived from the event's and the
    /// channel's ids) instead of the one the published log holds. Genesys does not document
    /// which it does; a client must not depend on either.
    pub correlation_per_channel: bool,
    /// Entries kept by the ledger, and likewise by the missed log, the published log, the
    /// channel log and the REST request log (oldest dropped first); `None` keeps everything.
    /// REST counters and the channel log's per-client counters are never trimmed.
    pub ledger_capacity: Option<usize>,
    /// Conversations kept for the analytics query (oldest dropped first).
    pub history_capacity: usize,
    /// Snapshots go only to the topics of participants still engaged in the conversation (an
    /// ACD participant waiting in its queue, an agent alerted or connected: queue and user
    /// topics; an agent in after-call work: the user topic), plus those of participants who left
    /// with this very change. With `false` (the default), every queue and user the conversation
    /// ever had gets every snapshot. With `true`, a conversation transferred to a queue the
    /// client does not subscribe disappears from its topics, as users of Genesys see it.
    pub engaged_topics_only: bool,
    /// actix worker threads per listener.
    pub workers: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ws_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            queues: 5,
            agents: 20,
            rate_per_sec: 2.0,
            seed: 7,
            token_lifetime: Duration::from_secs(86_400),
            channel_lifetime: Duration::from_secs(86_400),
            heartbeat_interval: Duration::from_secs(30),
            socket_closing_grace: Duration::from_secs(60),
            clients: vec![SimClient::default()],
            max_channels_per_client: 20,
            max_topics_per_channel: 1_000,
            stages: StageDurations::fast(),
            branching: Branching::default(),
            socket_buffer_frames: 100_000,
            correlation_per_channel: false,
            ledger_capacity: None,
            history_capacity: 50_000,
            engaged_topics_only: false,
            workers: 1,
        }
    }
}

impl SimConfig {
    /// Rejects configurations the simulator cannot honour (non-loopback listeners, etc.).
    pub fn validate(&self) -> anyhow::Result<()> {
        for (name, addr) in [("listen", self.listen), ("ws_listen", self.ws_listen)] {
            if !addr.ip().is_loopback() {
                anyhow::bail!("{name} must be a loopback address, got {addr}");
            }
        }
        if self.queues == 0 {
            anyhow::bail!("queues must be at least 1");
        }
        if self.agents == 0 {
            anyhow::bail!("agents must be at least 1");
        }
        if !(self.rate_per_sec.is_finite() && self.rate_per_sec >= 0.0) {
            anyhow::bail!("rate_per_sec must be a finite number >= 0");
        }
        if self.clients.is_empty() {
            anyhow::bail!("at least one OAuth client is needed");
        }
        if self.heartbeat_interval.is_zero() {
            anyhow::bail!("heartbeat_interval must be positive");
        }
        if self.max_channels_per_client == 0 || self.max_topics_per_channel == 0 {
            anyhow::bail!("channel and topic limits must be positive");
        }
        if self.workers == 0 {
            anyhow::bail!("workers must be at least 1");
        }
        let b = &self.branching;
        for (name, p) in [
            ("no_answer", b.no_answer),
            ("hold", b.hold),
            ("transfer", b.transfer),
            ("ivr_only", b.ivr_only),
            ("abandon", b.abandon),
            ("stale_snapshot", b.stale_snapshot),
        ] {
            if !(0.0..=1.0).contains(&p) {
                anyhow::bail!("branching.{name} must be a probability in 0..=1, got {p}");
            }
        }
        Ok(())
    }
}
