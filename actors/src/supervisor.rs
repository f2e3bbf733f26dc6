//! Supervisor: starts the actors sink first, each on its own Arbiter, restarts any that stops
//! or panics, and owns the topic set and the shutdown order.
//!
//! actix's own `Supervisor` restarts only an actor that *stopped*; a panic in a handler closes
//! the mailbox and nothing restarts it. So this supervisor watches every child's `Addr` and
//! rebuilds a dead child from its factory on a fresh Arbiter. Peers reach children through
//! [`Slot`](crate::slot::Slot)s, which the supervisor points at the new `Addr`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::Utc;

use crate::backfill::queue::BackfillQueue;
use crate::backfill::reconcile::{ReconcileActor, ReconcileSettings};
use crate::backfill::RequestBudget;
use crate::backfill::{BackfillActor, BackfillSettings};
use crate::backoff::ExponentialBackoff;
use crate::conversations::{Conversations, LifecycleSettings};
use crate::genesys::rest::GenesysClient;
use crate::health::Health;
use crate::heartbeat::HeartbeatActor;
use crate::messages::{AreYouAlive, Flush, InjectFault, StopReading, UpdateTopics};
use crate::metrics::Metrics;
use crate::peers::Peers;
use crate::producer::{KafkaProducerActor, KafkaSettings};
use crate::shard_state::ShardStates;
use crate::slot::SlotError;
use crate::socket::budget::ChannelBudget;
use crate::socket::{ShardContext, SocketActor, SocketSettings, StartKind};
use crate::spool::Spool;
use crate::token::{TokenCell, TokenRefreshActor, TokenSettings};
use crate::topics::{assign_shards, expand, TopicTemplate};

/// Restart policy and shutdown budget.
#[derive(Debug, Clone)]
pub struct SupervisorSettings {
    /// Delay before restarting a child, growing with its recent restarts.
    pub restart_backoff: ExponentialBackoff,
    /// This many failures of one child within `crash_window` is a crash loop: exit non-zero.
    pub crash_threshold: usize,
    pub crash_window: Duration,
    /// How often children are checked.
    pub watch_interval: Duration,
}

/// The topic set to stream.
#[derive(Debug, Clone)]
pub struct TopicSettings {
    pub explicit: Vec<String>,
    pub templates: Vec<TopicTemplate>,
    pub per_channel: usize,
    pub channel_budget: usize,
    /// Legs (redundant channels) per shard: 1, 2, or `None` for 2 whenever it fits.
    pub redundancy: Option<usize>,
    pub refresh_interval: Duration,
}

/// How many legs each shard gets and how many shards the budget allows with them.
///
/// Two legs need two channels per shard and no spare (a leg rolls over while the other covers);
/// one leg needs one channel per shard plus one free slot for make-before-break rollovers.
pub fn plan_legs(
    needed_shards: usize,
    channel_budget: usize,
    redundancy: Option<usize>,
) -> Result<(usize, usize), String> {
    let fits = |legs: usize| {
        if legs >= 2 {
            needed_shards * 2 <= channel_budget
        } else {
            needed_shards < channel_budget
        }
    };
    let max_shards = |legs: usize| {
        if legs >= 2 {
            channel_budget / 2
        } else {
            channel_budget.saturating_sub(1).max(1)
        }
    };
    let legs = match redundancy {
        Some(legs) => legs.clamp(1, 2),
        None if fits(2) => 2,
        None => {
            if fits(1) {
                tracing::warn!(
                    shards = needed_shards,
                    channel_budget,
                    "the topic set needs too many channels for two legs per shard: streaming on one leg per shard, so a single socket fault costs the events of its detection window (narrow the topics to at most {} shards for redundancy)",
                    channel_budget / 2
                );
            }
            1
        }
    };
    if !fits(legs) {
        return Err(format!(
            "{needed_shards} shards with {legs} leg(s) each need {} channels{}, but the channel budget is {channel_budget} (Genesys allows 20 per OAuth client; a 21st silently evicts the oldest): at most {} shards fit. Narrow the templates, lower socket.redundancy, or use a second OAuth client for a second bridge",
            needed_shards * legs + usize::from(legs == 1),
            if legs == 1 { " (one kept free for rollovers)" } else { "" },
            max_shards(legs)
        ));
    }
    Ok((legs, max_shards(legs)))
}

/// Everything the runtime needs.
#[derive(Clone)]
pub struct BridgeSettings {
    pub token: TokenSettings,
    pub socket: Arc<SocketSettings>,
    pub kafka: Arc<KafkaSettings>,
    pub topics: TopicSettings,
    pub supervisor: SupervisorSettings,
    /// Backfill of gaps from the analytics API; `None` when disabled.
    pub backfill: Option<Arc<BackfillSettings>>,
    /// The conversation lifecycle stream; `None` when disabled.
    pub lifecycle: Option<LifecycleSettings>,
    /// Reconciliation of the lifecycle stream; `None` when disabled.
    pub reconcile: Option<Arc<ReconcileSettings>>,
    /// The analytics request budget backfill and reconciliation share.
    pub request_budget: RequestBudget,
    pub allow_fault_injection: bool,
}

/// Process exit code for a crash-looping actor (EX_SOFTWARE).
pub const EXIT_CRASH_LOOP: i32 = 70;
/// Process exit code for a topic set that cannot be streamed (EX_CONFIG).
pub const EXIT_TOPICS: i32 = 78;

/// Legs a shard can have (`socket.redundancy` is 1 or 2).
const MAX_LEGS: usize = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum ChildId {
    Producer,
    Token,
    Heartbeat,
    Backfill,
    Reconcile,
    Socket(u32),
}

impl ChildId {
    fn label(self) -> &'static str {
        match self {
            ChildId::Producer => "producer",
            ChildId::Token => "token",
            ChildId::Heartbeat => "heartbeat",
            ChildId::Backfill => "backfill",
            ChildId::Reconcile => "reconcile",
            ChildId::Socket(_) => "socket",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        match name {
            "producer" => Some(ChildId::Producer),
            "token" => Some(ChildId::Token),
            "heartbeat" => Some(ChildId::Heartbeat),
            "backfill" => Some(ChildId::Backfill),
            "reconcile" => Some(ChildId::Reconcile),
            other => other
                .strip_prefix("socket")
                .map(|n| n.trim_start_matches('-').parse().unwrap_or(0))
                .map(ChildId::Socket),
        }
    }
}

struct Child {
    arbiter: Arbiter,
    /// Recent failure times (within the crash window), for the crash-loop rule and the backoff.
    failures: VecDeque<Instant>,
    restart_due: Option<Instant>,
}

pub struct Supervisor {
    settings: BridgeSettings,
    spool: Spool,
    token: TokenCell,
    peers: Peers,
    health: Health,
    metrics: Arc<Metrics>,
    children: BTreeMap<ChildId, Child>,
    shards: Vec<Vec<String>>,
    client: Option<GenesysClient>,
    shutting_down: bool,
    expanding: bool,
    backfill_queue: Option<BackfillQueue>,
    backfill: Option<Addr<BackfillActor>>,
    reconcile: Option<Addr<ReconcileActor>>,
    conversations: Option<Conversations>,
    /// Every shard's durable state (last frame, open gap, drop span, waiting status records).
    states: ShardStates,
    budget: ChannelBudget,
    /// Legs per shard, decided at the first topic expansion.
    legs: Option<usize>,
    /// Shards whose `UpdateTopics` was refused by a full mailbox: sent again on the next tick.
    topic_updates_due: std::collections::BTreeSet<u32>,
    /// Test hook (`InjectFault::RefuseTopicUpdates`): per shard, topic updates still to treat
    /// as refused by a full mailbox.
    refused_topic_updates: HashMap<u32, u32>,
}

impl Supervisor {
    pub fn new(
        settings: BridgeSettings,
        spool: Spool,
        health: Health,
        metrics: Arc<Metrics>,
        backfill_queue: Option<BackfillQueue>,
        conversations: Option<Conversations>,
    ) -> Self {
        let states = ShardStates::open(spool.dir(), Some(spool.disk_reserve()));
        let budget = ChannelBudget::new(settings.topics.channel_budget);
        Self {
            settings,
            spool,
            token: TokenCell::default(),
            peers: Peers::new(),
            health,
            metrics,
            children: BTreeMap::new(),
            shards: Vec::new(),
            client: None,
            shutting_down: false,
            expanding: false,
            states,
            budget,
            legs: None,
            topic_updates_due: Default::default(),
            refused_topic_updates: HashMap::new(),
            backfill_queue,
            backfill: None,
            reconcile: None,
            conversations,
        }
    }

    fn start_child(&mut self, id: ChildId) {
        let arbiter = Arbiter::new();
        let handle = arbiter.handle();
        let settings = self.settings.clone();
        let (peers, health, metrics, spool, token) = (
            self.peers.clone(),
            self.health.clone(),
            self.metrics.clone(),
            self.spool.clone(),
            self.token.clone(),
        );
        let fault_injection = settings.allow_fault_injection;
        match id {
            ChildId::Producer => {
                let addr = KafkaProducerActor::start_in_arbiter(&handle, move |_| {
                    KafkaProducerActor::new(settings.kafka.clone(), spool, health, metrics)
                });
                self.peers.producer.set(Some(addr));
            }
            ChildId::Token => {
                let addr = TokenRefreshActor::start_in_arbiter(&handle, move |_| {
                    TokenRefreshActor::new(
                        settings.token.clone(),
                        token,
                        peers,
                        health,
                        metrics,
                        fault_injection,
                    )
                });
                self.peers.token.set(Some(addr));
            }
            ChildId::Heartbeat => {
                let addr = HeartbeatActor::start_in_arbiter(&handle, move |_| {
                    HeartbeatActor::new(
                        settings.socket.ping_interval,
                        settings.socket.dead_after,
                        peers,
                        metrics,
                        fault_injection,
                    )
                });
                self.peers.heartbeat.set(Some(addr));
            }
            ChildId::Backfill => {
                let (Some(backfill), Some(queue)) =
                    (settings.backfill.clone(), self.backfill_queue.clone())
                else {
                    return;
                };
                let budget = settings.request_budget.clone();
                let conversations = self.conversations.clone();
                let addr = BackfillActor::start_in_arbiter(&handle, move |_| {
                    BackfillActor::new(
                        backfill,
                        queue,
                        spool,
                        token,
                        metrics,
                        budget,
                        conversations,
                    )
                });
                self.backfill = Some(addr);
            }
            ChildId::Reconcile => {
                let (Some(reconcile), Some(conversations)) =
                    (settings.reconcile.clone(), self.conversations.clone())
                else {
                    return;
                };
                let budget = settings.request_budget.clone();
                let dir = spool.dir().to_path_buf();
                let addr = ReconcileActor::start_in_arbiter(&handle, move |_| {
                    ReconcileActor::new(reconcile, conversations, token, metrics, budget, &dir)
                });
                self.reconcile = Some(addr);
            }
            ChildId::Socket(shard) => {
                let topics = self.shards.get(shard as usize).cloned().unwrap_or_default();
                let slot = self.peers.socket_slot(shard);
                let start_kind = if self.children.contains_key(&id) {
                    StartKind::ActorRestart
                } else {
                    StartKind::ProcessStart
                };
                let legs = self.legs.unwrap_or(1);
                let context = ShardContext {
                    settings: settings.socket.clone(),
                    token,
                    spool,
                    peers,
                    health,
                    metrics,
                    budget: self.budget.clone(),
                    states: self.states.clone(),
                    backfill: self.backfill_queue.clone(),
                    conversations: self.conversations.clone(),
                };
                let addr = SocketActor::start_in_arbiter(&handle, move |_| {
                    SocketActor::new(shard, topics, legs, start_kind, context)
                });
                slot.set(Some(addr));
            }
        }
        let previous = self.children.insert(
            id,
            Child {
                arbiter,
                failures: VecDeque::new(),
                restart_due: None,
            },
        );
        if let Some(previous) = previous {
            // Keep the restart history; the old thread is told to stop (a hung one never will,
            // and is abandoned).
            previous.arbiter.stop();
            if let Some(child) = self.children.get_mut(&id) {
                child.failures = previous.failures;
            }
        }
    }

    fn is_connected(&self, id: ChildId) -> bool {
        match id {
            ChildId::Producer => self.peers.producer.get().is_some(),
            ChildId::Token => self.peers.token.get().is_some(),
            ChildId::Heartbeat => self.peers.heartbeat.get().is_some(),
            ChildId::Backfill => self.backfill.as_ref().is_some_and(|a| a.connected()),
            ChildId::Reconcile => self.reconcile.as_ref().is_some_and(|a| a.connected()),
            ChildId::Socket(shard) => self
                .peers
                .socket(shard)
                .is_some_and(|slot| slot.get().is_some()),
        }
    }

    /// Finds dead children and restarts them after their backoff.
    fn watch(&mut self, _ctx: &mut Context<Self>) {
        if self.shutting_down {
            return;
        }
        if !self.topic_updates_due.is_empty() {
            self.send_topic_updates();
        }
        let now = Instant::now();
        let ids: Vec<ChildId> = self.children.keys().copied().collect();
        for id in ids {
            if self.is_connected(id) {
                continue;
            }
            let window = self.settings.supervisor.crash_window;
            let threshold = self.settings.supervisor.crash_threshold;
            let backoff = self.settings.supervisor.restart_backoff;
            let Some(child) = self.children.get_mut(&id) else {
                continue;
            };
            while child
                .failures
                .front()
                .is_some_and(|at| now.duration_since(*at) > window)
            {
                child.failures.pop_front();
            }
            let due = match child.restart_due {
                Some(due) => due,
                None => {
                    // A new failure: count it, then decide between a restart and an exit.
                    child.failures.push_back(now);
                    if child.failures.len() >= threshold {
                        tracing::error!(
                            actor = id.label(),
                            failures = child.failures.len(),
                            window_s = window.as_secs(),
                            "actor is crash-looping; exiting so that the orchestrator restarts the process"
                        );
                        System::current().stop_with_code(EXIT_CRASH_LOOP);
                        return;
                    }
                    let delay = backoff.delay(child.failures.len() as u32 - 1);
                    tracing::warn!(
                        actor = id.label(),
                        restart_in_ms = delay.as_millis() as u64,
                        "actor stopped or panicked; restarting"
                    );
                    child.restart_due = Some(now + delay);
                    now + delay
                }
            };
            if now < due {
                continue;
            }
            child.restart_due = None;
            self.metrics
                .actor_restarts
                .get_or_create(&Metrics::actor(id.label()))
                .inc();
            *self
                .health
                .lock()
                .restarts
                .entry(id.label().to_string())
                .or_default() += 1;
            self.start_child(id);
        }
    }

    fn expand_topics(&mut self, ctx: &mut Context<Self>) {
        if self.expanding || self.shutting_down {
            return;
        }
        let Some(token) = self.token.valid() else {
            ctx.run_later(Duration::from_millis(200), |actor, ctx| {
                actor.expand_topics(ctx)
            });
            return;
        };
        self.expanding = true;
        let client = self
            .client
            .get_or_insert_with(|| {
                GenesysClient::new(
                    self.settings.token.endpoints.clone(),
                    self.settings.token.request_timeout,
                )
            })
            .clone();
        let explicit = self.settings.topics.explicit.clone();
        let templates = self.settings.topics.templates.clone();
        async move { expand(&client, &token.token, &explicit, &templates).await }
            .into_actor(self)
            .map(|result, actor, ctx| {
                actor.expanding = false;
                match result {
                    Ok(topics) => actor.apply_topics(topics, ctx),
                    Err(error) => {
                        let delay = Duration::from_secs(5);
                        tracing::error!(error = %error, "could not expand topic templates; retrying");
                        actor
                            .metrics
                            .rest_errors
                            .get_or_create(&Metrics::reason(error.label()))
                            .inc();
                        if actor.shards.is_empty() {
                            ctx.run_later(delay, |actor, ctx| actor.expand_topics(ctx));
                        }
                    }
                }
            })
            .spawn(ctx);
    }

    fn apply_topics(
        &mut self,
        topics: std::collections::BTreeSet<String>,
        _ctx: &mut Context<Self>,
    ) {
        let limits = &self.settings.topics;
        let needed = topics.len().div_ceil(limits.per_channel.max(1)).max(1);
        let redundancy = self.legs.or(limits.redundancy);
        let planned =
            plan_legs(needed, limits.channel_budget, redundancy).and_then(|(legs, max)| {
                assign_shards(&self.shards, &topics, limits.per_channel, max)
                    .map(|shards| (legs, shards))
                    .map_err(|error| error.to_string())
            });
        let (legs, shards) = match planned {
            Ok(planned) => planned,
            Err(error) => {
                tracing::error!(error = %error, "the topic set cannot be streamed");
                if self.shards.is_empty() {
                    eprintln!("the topic set cannot be streamed: {error}");
                    System::current().stop_with_code(EXIT_TOPICS);
                }
                // Keep streaming the current set rather than evicting our own channels.
                return;
            }
        };
        if self.legs.is_none() {
            tracing::info!(
                legs,
                shards = shards.len(),
                channels = shards.len() * legs,
                channel_budget = limits.channel_budget,
                "legs per shard"
            );
            self.legs = Some(legs);
        }
        self.metrics.topics_subscribed.set(topics.len() as i64);
        self.health.lock().topics_expanded_at = Some(Utc::now());
        let first_time = self.shards.is_empty();
        if first_time {
            tracing::info!(
                topics = topics.len(),
                shards = shards.len(),
                "topics expanded"
            );
        }
        let old = std::mem::replace(&mut self.shards, shards);
        // Shards that no longer exist stop, closing their channels (and free their slots).
        for shard in self.shards.len() as u32..old.len() as u32 {
            self.stop_shard(shard);
        }
        if old.len() > self.shards.len() {
            self.peers.truncate_sockets(self.shards.len() as u32);
        }
        for (index, topics) in self.shards.clone().into_iter().enumerate() {
            let shard = index as u32;
            let id = ChildId::Socket(shard);
            if !self.children.contains_key(&id) {
                self.health.shard(shard, |s| s.topic_count = topics.len());
                self.start_child(id);
                continue;
            }
            if old.get(index) != Some(&topics) {
                tracing::info!(shard, topics = topics.len(), "shard topics changed");
                self.topic_updates_due.insert(shard);
            }
        }
        self.send_topic_updates();
    }

    /// Sends each shard whose topics changed its new set; a full mailbox is tried again on the
    /// next watch tick.
    fn send_topic_updates(&mut self) {
        let due: Vec<u32> = self.topic_updates_due.iter().copied().collect();
        for shard in due {
            let Some(topics) = self.shards.get(shard as usize).cloned() else {
                self.topic_updates_due.remove(&shard);
                continue;
            };
            if let Some(left) = self
                .refused_topic_updates
                .get_mut(&shard)
                .filter(|n| **n > 0)
            {
                *left -= 1;
                self.metrics
                    .mailbox_rejections
                    .get_or_create(&Metrics::actor("socket"))
                    .inc();
                tracing::warn!(shard, "injected: topic update refused as by a full mailbox");
                continue;
            }
            let sent = self.peers.socket(shard).is_some_and(|slot| {
                slot.try_send(UpdateTopics { topics }, &self.metrics)
                    .is_ok()
            });
            if sent {
                self.topic_updates_due.remove(&shard);
            }
        }
    }

    /// Stops a shard that the topic set no longer needs.
    fn stop_shard(&mut self, shard: u32) {
        tracing::info!(shard, "shard no longer needed; closing its channels");
        if let Some(child) = self.children.remove(&ChildId::Socket(shard)) {
            if let Some(slot) = self.peers.socket(shard) {
                if let Some(addr) = slot.get() {
                    let arbiter = child.arbiter;
                    let health = self.health.clone();
                    let metrics = self.metrics.clone();
                    actix_rt::spawn(async move {
                        let _ =
                            tokio::time::timeout(Duration::from_secs(5), addr.send(StopReading))
                                .await;
                        arbiter.stop();
                        // It publishes nothing once stopping; what it published before the
                        // stop reached it must not bring the shard back into /status.
                        health.remove_shard(shard);
                        metrics.forget_shard(shard, MAX_LEGS);
                    });
                } else {
                    child.arbiter.stop();
                }
                slot.set(None);
            }
        }
        self.topic_updates_due.remove(&shard);
        self.states.remove(shard);
        self.health.remove_shard(shard);
        self.metrics.forget_shard(shard, MAX_LEGS);
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(64);
        self.health.lock().started_at = Some(Utc::now());
        // Sink first: the producer drains what an earlier run left in the spool at once.
        self.start_child(ChildId::Producer);
        self.start_child(ChildId::Token);
        self.start_child(ChildId::Heartbeat);
        if self.settings.backfill.is_some() && self.backfill_queue.is_some() {
            self.start_child(ChildId::Backfill);
        }
        if self.settings.reconcile.is_some() && self.conversations.is_some() {
            self.start_child(ChildId::Reconcile);
        }
        self.expand_topics(ctx);
        ctx.run_interval(self.settings.supervisor.watch_interval, |actor, ctx| {
            actor.watch(ctx)
        });
        ctx.run_interval(self.settings.topics.refresh_interval, |actor, ctx| {
            if !actor.shards.is_empty() {
                actor.expand_topics(ctx);
            }
        });
        let spool = self.spool.clone();
        let metrics = self.metrics.clone();
        let health = self.health.clone();
        let mut refusals_seen = 0;
        ctx.run_interval(Duration::from_secs(1), move |_, _| {
            publish_spool_stats(&spool, &metrics, &health, &mut refusals_seen);
        });
        // Each shard's last frame time is kept on disk this often (a restart's gap starts at most
        // this much before the real last frame); gaps and drops are written at once.
        let states = self.states.clone();
        ctx.run_interval(Duration::from_millis(200), move |_, _| states.save_or_log());
    }
}

/// Publishes the spool's numbers; the spool counts as full while it refuses or drops appends
/// (compared with the last tick) or has reached its cap for events.
fn publish_spool_stats(spool: &Spool, metrics: &Metrics, health: &Health, refusals_seen: &mut u64) {
    let stats = spool.stats();
    let refusals = stats.full_refusals + stats.dropped_records;
    let refusing = refusals > *refusals_seen;
    *refusals_seen = refusals;
    let event_cap = spool
        .config()
        .max_bytes
        .saturating_sub(crate::spool::GAP_HEADROOM_BYTES);
    let full = refusing || stats.bytes_on_disk >= event_cap;
    let now_ms = Utc::now().timestamp_millis();
    let oldest_age = stats
        .oldest_unacked_received_at_ms
        .map(|at| (now_ms - at).max(0) as f64 / 1000.0);
    let reserve = spool.disk_reserve().state();
    let reserve_in_use = reserve == crate::disk_reserve::ReserveState::InUse;
    metrics
        .spool_disk_reserve_in_use
        .set(i64::from(reserve_in_use));
    metrics.spool_bytes.set(stats.bytes_on_disk as i64);
    metrics.spool_capacity.set(event_cap as i64);
    metrics.spool_records.set(stats.records_unacked as i64);
    metrics.spool_oldest_age.set(oldest_age.unwrap_or(0.0));
    metrics
        .spool_fsync_seconds_max
        .set(stats.fsync_max_us as f64 / 1e6);
    let mut state = health.lock();
    state.spool.bytes = stats.bytes_on_disk;
    state.spool.records = stats.records_unacked;
    state.spool.oldest_unacked_age_seconds = oldest_age;
    state.spool.dropped = stats.dropped_records;
    state.spool.full = full;
    state.spool.disk_reserve = reserve.as_str();
}

/// Asks every actor to answer within `deadline`; the names of those that did not.
#[derive(Message)]
#[rtype(result = "Result<(), Vec<String>>")]
pub struct CheckLive {
    pub deadline: Duration,
}

impl Handler<CheckLive> for Supervisor {
    type Result = ResponseFuture<Result<(), Vec<String>>>;

    fn handle(&mut self, msg: CheckLive, _: &mut Self::Context) -> Self::Result {
        let mut probes: Vec<(String, futures_util::future::BoxFuture<'static, bool>)> = Vec::new();
        let deadline = msg.deadline;
        fn probe<A>(
            addr: Option<Addr<A>>,
            deadline: Duration,
        ) -> futures_util::future::BoxFuture<'static, bool>
        where
            A: Actor + Handler<AreYouAlive>,
            A::Context: actix::dev::ToEnvelope<A, AreYouAlive>,
        {
            Box::pin(async move {
                match addr {
                    Some(addr) => matches!(
                        tokio::time::timeout(deadline, addr.send(AreYouAlive)).await,
                        Ok(Ok(()))
                    ),
                    None => false,
                }
            })
        }
        // A child between a crash and its restart is not a liveness failure: the supervisor is
        // handling it. A crash loop ends the process instead.
        let restarting = |id: ChildId| {
            self.children
                .get(&id)
                .is_some_and(|c| c.restart_due.is_some())
        };
        if !restarting(ChildId::Producer) {
            probes.push((
                "producer".into(),
                probe(self.peers.producer.get(), deadline),
            ));
        }
        if !restarting(ChildId::Token) {
            probes.push(("token".into(), probe(self.peers.token.get(), deadline)));
        }
        if !restarting(ChildId::Heartbeat) {
            probes.push((
                "heartbeat".into(),
                probe(self.peers.heartbeat.get(), deadline),
            ));
        }
        for (index, slot) in self.peers.sockets().into_iter().enumerate() {
            if !restarting(ChildId::Socket(index as u32)) {
                probes.push((format!("socket-{index}"), probe(slot.get(), deadline)));
            }
        }
        Box::pin(async move {
            let names: Vec<String> = probes.iter().map(|(n, _)| n.clone()).collect();
            let results = futures_util::future::join_all(probes.into_iter().map(|(_, p)| p)).await;
            let dead: Vec<String> = names
                .into_iter()
                .zip(results)
                .filter(|(_, ok)| !ok)
                .map(|(name, _)| name)
                .collect();
            if dead.is_empty() {
                Ok(())
            } else {
                Err(dead)
            }
        })
    }
}

/// Graceful shutdown: stop reading, flush the spool to Kafka within the deadline.
/// Answers whether everything received was acknowledged by Kafka.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct Shutdown {
    pub deadline: Instant,
}

impl Handler<Shutdown> for Supervisor {
    type Result = ResponseFuture<bool>;

    fn handle(&mut self, msg: Shutdown, _: &mut Self::Context) -> Self::Result {
        self.shutting_down = true;
        self.health.lock().shutting_down = true;
        let sockets: Vec<_> = self
            .peers
            .sockets()
            .iter()
            .filter_map(|s| s.get())
            .collect();
        let producer = self.peers.producer.get();
        let spool = self.spool.clone();
        let states = self.states.clone();
        Box::pin(async move {
            for socket in sockets {
                let left = msg.deadline.saturating_duration_since(Instant::now());
                let _ = tokio::time::timeout(left, socket.send(StopReading)).await;
            }
            states.save_or_log();
            let flushed = match producer {
                Some(producer) => {
                    let left = msg.deadline.saturating_duration_since(Instant::now());
                    matches!(
                        tokio::time::timeout(
                            left,
                            producer.send(Flush {
                                deadline: msg.deadline
                            })
                        )
                        .await,
                        Ok(Ok(true))
                    )
                }
                None => false,
            };
            if let Err(error) = spool.sync() {
                tracing::error!(error = %error, "spool sync at shutdown failed");
            }
            flushed
        })
    }
}

/// Test hook: make the named actor panic or hang (only with fault injection enabled).
#[derive(Message)]
#[rtype(result = "bool")]
pub struct FaultActor {
    pub name: String,
    pub fault: InjectFault,
}

impl Handler<FaultActor> for Supervisor {
    type Result = bool;

    fn handle(&mut self, msg: FaultActor, _: &mut Self::Context) -> bool {
        if !self.settings.allow_fault_injection {
            return false;
        }
        let Some(id) = ChildId::parse(&msg.name) else {
            return false;
        };
        if let (InjectFault::RefuseTopicUpdates(count), ChildId::Socket(shard)) = (msg.fault, id) {
            self.refused_topic_updates.insert(shard, count);
            return true;
        }
        let metrics = &self.metrics;
        let sent = match id {
            ChildId::Producer => self.peers.producer.try_send(msg.fault, metrics),
            ChildId::Token => self.peers.token.try_send(msg.fault, metrics),
            ChildId::Heartbeat => self.peers.heartbeat.try_send(msg.fault, metrics),
            ChildId::Backfill => match self.backfill.as_ref() {
                Some(addr) => addr.try_send(msg.fault).map_err(|_| SlotError::Full),
                None => return false,
            },
            ChildId::Reconcile => return false,
            ChildId::Socket(shard) => match self.peers.socket(shard) {
                Some(slot) => slot.try_send(msg.fault, metrics),
                None => return false,
            },
        };
        sent.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::{plan_legs, ChildId};

    #[test]
    fn every_actor_label_starts_at_zero_in_the_metrics() {
        for id in [
            ChildId::Producer,
            ChildId::Token,
            ChildId::Heartbeat,
            ChildId::Backfill,
            ChildId::Reconcile,
            ChildId::Socket(3),
        ] {
            assert!(crate::metrics::ACTORS.contains(&id.label()), "{id:?}");
        }
    }

    #[test]
    fn legs_follow_the_budget_arithmetic() {
        // Two legs whenever 2 x shards fit; otherwise one leg and one slot kept free.
        assert_eq!(plan_legs(10, 20, None), Ok((2, 10)));
        assert_eq!(plan_legs(11, 20, None), Ok((1, 19)));
        assert_eq!(plan_legs(19, 20, None), Ok((1, 19)));
        assert!(
            plan_legs(20, 20, None).is_err(),
            "no slot left for rollovers"
        );
        assert!(plan_legs(20, 20, Some(1)).is_err());
        assert_eq!(plan_legs(19, 20, Some(1)), Ok((1, 19)));
        let error = plan_legs(11, 20, Some(2)).unwrap_err();
        assert!(error.contains("at most 10 shards"), "{error}");
        assert_eq!(plan_legs(1, 2, None), Ok((2, 1)));
        assert_eq!(plan_legs(1, 3, Some(1)), Ok((1, 2)));
    }
}
