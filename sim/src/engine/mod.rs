//! The conversation engine: a discrete-event simulation in virtual time.
//!
//! Every action (arrival, IVR end, routing, alerting, answer, hold, transfer, disconnect,
//! wrap-up, observation flush) is scheduled at a virtual instant drawn from the seeded
//! generator, and actions run in (instant, scheduling order). The wall clock only decides *when*
//! an action runs, never which one runs next, so ids, bodies and the order of events are the same
//! for a given seed (only `set_rate` and `add_queue`, which depend on when they are called, can
//! change the course). Virtual instant `t` is published as wall time `start + t`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::Rng;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::channels::outgoing;
use crate::config::{Branching, StageDurations};
use crate::frames::envelope;
use crate::ids;
use crate::link::Outgoing;
use crate::model::{observation_json, Conversation, QueueCounts};
use crate::published::PublishSource;
use crate::state::Sim;

mod lifecycle;

/// Commands from the handle and the control endpoints.
#[derive(Debug)]
pub(crate) enum EngineCmd {
    SetRate(f64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    Arrival {
        generation: u64,
    },
    IvrDone(u64),
    Abandon(u64),
    Route(u64),
    AlertDone(u64),
    HoldStart(u64),
    HoldEnd(u64),
    Transfer(u64),
    Disconnect(u64),
    WrapupDone {
        conv: u64,
        agent: usize,
        participant: usize,
    },
    ObservationFlush(usize),
}

struct Active {
    conv: Conversation,
    queue: usize,
    /// (agent index, participant index) of the agent currently on the call.
    agent: Option<(usize, usize)>,
    acd: Option<usize>,
    talk_left_us: u64,
    transfer_planned: bool,
    transfers: u8,
    no_answers: u8,
    pending_wrapups: u8,
    /// The last snapshot published and its topics (for `Branching::stale_snapshot`).
    last_snapshot: Option<(String, Vec<String>)>,
}

struct QueueSlot {
    id: String,
    name: String,
    counts: QueueCounts,
    last_emit_us: Option<u64>,
    flush_pending: bool,
}

struct Agent {
    user_id: String,
    name: String,
}

const OBSERVATION_PERIOD_US: u64 = 1_000_000;

pub(crate) struct Engine {
    sim: Arc<Sim>,
    rng: SmallRng,
    stages: StageDurations,
    branching: Branching,
    start: tokio::time::Instant,
    epoch_ms: i64,
    now_us: u64,
    agenda: BinaryHeap<Reverse<(u64, u64, Action)>>,
    scheduled: u64,
    rate: f64,
    generation: u64,
    convs: HashMap<u64, Active>,
    next_conv: u64,
    agents: Vec<Agent>,
    idle: Vec<usize>,
    waiting: VecDeque<u64>,
    queues: Vec<QueueSlot>,
    wrapup_codes: Vec<(String, String)>,
    division_id: String,
}

impl Engine {
    pub fn new(sim: Arc<Sim>) -> Self {
        let mut rng = ids::rng_for(sim.cfg.seed, ids::Stream::Model);
        let (agents, division_id) = {
            let dir = sim.directory.read().expect("directory lock");
            let agents = dir
                .users
                .iter()
                .map(|u| Agent {
                    user_id: u.id.clone(),
                    name: u.name.clone(),
                })
                .collect::<Vec<_>>();
            (agents, dir.division_id().to_owned())
        };
        let wrapup_codes = ["Resolved", "Follow-up needed", "Wrong number"]
            .iter()
            .map(|name| (ids::uuid(&mut rng), name.to_string()))
            .collect();
        let mut engine = Engine {
            stages: sim.cfg.stages.clone(),
            branching: sim.cfg.branching.clone(),
            rate: sim.cfg.rate_per_sec,
            idle: (0..agents.len()).collect(),
            agents,
            sim,
            rng,
            start: tokio::time::Instant::now(),
            epoch_ms: chrono::Utc::now().timestamp_millis(),
            now_us: 0,
            agenda: BinaryHeap::new(),
            scheduled: 0,
            generation: 0,
            convs: HashMap::new(),
            next_conv: 0,
            waiting: VecDeque::new(),
            queues: Vec::new(),
            wrapup_codes,
            division_id,
        };
        engine.sync_queues();
        engine.schedule_arrival();
        engine
    }

    /// Runs until the command channel closes or the System stops.
    pub async fn run(mut self, mut commands: mpsc::UnboundedReceiver<EngineCmd>) {
        loop {
            let next_due = self.agenda.peek().map(|Reverse((due, _, _))| *due);
            let wake = async {
                match next_due {
                    Some(due) => {
                        tokio::time::sleep_until(self.start + Duration::from_micros(due)).await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(EngineCmd::SetRate(rate)) => self.set_rate(rate),
                    None => return,
                },
                _ = wake => self.process_due(),
            }
        }
    }

    fn elapsed_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    fn process_due(&mut self) {
        let horizon = self.elapsed_us();
        while let Some(Reverse((due, _, _))) = self.agenda.peek() {
            if *due > horizon {
                break;
            }
            let Reverse((due, _, action)) = self.agenda.pop().expect("peeked");
            self.now_us = due;
            self.handle(action);
        }
    }

    fn set_rate(&mut self, rate: f64) {
        self.process_due();
        self.now_us = self.now_us.max(self.elapsed_us());
        self.rate = if rate.is_finite() && rate > 0.0 {
            rate
        } else {
            0.0
        };
        self.generation += 1;
        self.schedule_arrival();
    }

    fn schedule(&mut self, after_us: u64, action: Action) {
        self.scheduled += 1;
        self.agenda
            .push(Reverse((self.now_us + after_us, self.scheduled, action)));
    }

    fn schedule_arrival(&mut self) {
        if self.rate <= 0.0 {
            return;
        }
        let u: f64 = self.rng.gen_range(0.0..1.0);
        let after_us = (-(1.0 - u).ln() / self.rate * 1e6) as u64;
        let generation = self.generation;
        self.schedule(after_us, Action::Arrival { generation });
    }

    /// A duration uniform in `[mean/2, 3*mean/2]`, in microseconds.
    fn sample(&mut self, mean: Duration) -> u64 {
        let factor: f64 = self.rng.gen_range(0.5..1.5);
        (mean.as_micros() as f64 * factor) as u64
    }

    fn now_ms(&self) -> i64 {
        self.epoch_ms + (self.now_us / 1000) as i64
    }

    fn sync_queues(&mut self) {
        let dir = self.sim.directory.read().expect("directory lock");
        for q in dir.queues.iter().skip(self.queues.len()) {
            self.queues.push(QueueSlot {
                id: q.id.clone(),
                name: q.name.clone(),
                counts: QueueCounts::default(),
                last_emit_us: None,
                flush_pending: false,
            });
        }
    }

    fn handle(&mut self, action: Action) {
        match action {
            Action::Arrival { generation } if generation == self.generation => self.arrival(),
            Action::Arrival { .. } => {}
            Action::IvrDone(c) => self.ivr_done(c),
            Action::Abandon(c) => self.abandon(c),
            Action::Route(c) => {
                self.waiting.push_back(c);
                self.dispatch();
            }
            Action::AlertDone(c) => self.alert_done(c),
            Action::HoldStart(c) => self.hold(c, true),
            Action::HoldEnd(c) => self.hold(c, false),
            Action::Transfer(c) => self.transfer(c),
            Action::Disconnect(c) => self.disconnect(c),
            Action::WrapupDone {
                conv,
                agent,
                participant,
            } => self.wrapup_done(conv, agent, participant),
            Action::ObservationFlush(q) => self.flush_observation(q),
        }
    }

    fn observation_changed(&mut self, queue: usize) {
        let slot = &mut self.queues[queue];
        if slot.flush_pending {
            return;
        }
        slot.flush_pending = true;
        let earliest = slot
            .last_emit_us
            .map_or(0, |last| last + OBSERVATION_PERIOD_US);
        let after = earliest.saturating_sub(self.now_us);
        self.schedule(after, Action::ObservationFlush(queue));
    }

    fn flush_observation(&mut self, queue: usize) {
        let now_ms = self.now_ms();
        let slot = &mut self.queues[queue];
        slot.flush_pending = false;
        slot.last_emit_us = Some(self.now_us);
        let topic = format!("v2.analytics.queues.{}.observations", slot.id);
        let (id, counts) = (slot.id.clone(), slot.counts);
        publish(&self.sim, &mut self.rng, &[topic], || {
            observation_json(&id, counts, now_ms)
        });
    }

    /// Publishes a detail event of one participant.
    fn detail(&mut self, id: u64, index: usize, suffix: &str, extra: Vec<(&str, Value)>) {
        let now = self.now_ms();
        let Some(active) = self.convs.get(&id) else {
            return;
        };
        let conv = &active.conv;
        let topic = format!("v2.detail.events.conversation.{}.{suffix}", conv.id);
        publish(&self.sim, &mut self.rng, &[topic], || {
            let mut body = conv.detail_base(&conv.participants[index], now);
            for (k, v) in extra {
                body.insert(k.to_owned(), v);
            }
            Value::Object(body).to_string()
        });
    }

    /// Publishes the conversation snapshot on its queue and user topics, and records it for
    /// the analytics query.
    fn snapshot(&mut self, id: u64) {
        let now = self.now_ms();
        let stale = self.branching.stale_snapshot;
        let Some(active) = self.convs.get_mut(&id) else {
            return;
        };
        let conv = &active.conv;
        let topics = if self.sim.cfg.engaged_topics_only {
            conv.engaged_topics(now)
        } else {
            conv.snapshot_topics()
        };
        let body = conv.snapshot_json();
        publish(&self.sim, &mut self.rng, &topics, || body.clone());
        self.sim.history.lock().expect("history lock").upsert(conv);
        // A late copy of the previous snapshot, on the topics it was sent to then.
        let previous = active.last_snapshot.replace((body, topics));
        if let Some((body, topics)) = previous {
            if stale > 0.0 && self.rng.gen_bool(stale) {
                publish(&self.sim, &mut self.rng, &topics, || body);
            }
        }
    }
}

/// Draws one correlation id per topic (always, so that ids do not depend on who listens), builds
/// the body once, records every topic's frame in the published log, and queues the
/// byte-identical frame on every subscribed channel.
fn publish(sim: &Sim, rng: &mut SmallRng, topics: &[String], body: impl FnOnce() -> String) {
    let correlation_ids: Vec<String> = topics.iter().map(|_| ids::uuid(rng)).collect();
    let body = body();
    let outs: Vec<Outgoing> = topics
        .iter()
        .zip(&correlation_ids)
        .map(|(topic, correlation_id)| {
            outgoing(
                topic,
                envelope(topic, &body, correlation_id),
                correlation_id,
            )
        })
        .collect();
    // Under the registry lock, so that the published order is the order of delivery.
    let registry = sim.channels.lock().expect("channels lock");
    sim.published.record(
        PublishSource::Model,
        None,
        outs.iter()
            .map(|o| (&*o.topic, &o.frame, &o.correlation_id)),
    );
    for out in &outs {
        registry.deliver(out, &sim.missed);
    }
}
