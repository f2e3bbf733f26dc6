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
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::channels::outgoing;
use crate::config::{Branching, StageDurations};
use crate::frames::envelope;
use crate::ids;
use crate::model::{
    observation_json, CallState, Conversation, Disconnect, Participant, Purpose, QueueCounts,
    Wrapup,
};
use crate::state::Sim;

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

    fn new_participant(
        &mut self,
        purpose: Purpose,
        name: String,
        queue: Option<usize>,
        agent: Option<usize>,
        state: CallState,
    ) -> Participant {
        let now = self.now_ms();
        let mut p = Participant {
            id: ids::uuid(&mut self.rng),
            call_id: ids::uuid(&mut self.rng),
            purpose,
            name,
            queue_id: queue.map(|q| self.queues[q].id.clone()),
            queue_name: queue.map(|q| self.queues[q].name.clone()),
            user_id: agent.map(|a| self.agents[a].user_id.clone()),
            state,
            initial_state: state,
            held: false,
            start_hold_ms: None,
            connected_ms: (state == CallState::Connected).then_some(now),
            end_ms: None,
            disconnect: None,
            wrapup_required: purpose == Purpose::Agent,
            start_acw_ms: None,
            wrapup: None,
            segments: Vec::new(),
        };
        let segment = match (purpose, state) {
            (Purpose::Ivr, _) => "ivr",
            (_, CallState::Alerting) => "alert",
            _ => "interact",
        };
        p.segment(segment, now);
        p
    }

    fn arrival(&mut self) {
        self.sync_queues();
        let queue = self.rng.gen_range(0..self.queues.len());
        let id = self.next_conv;
        self.next_conv += 1;
        let conversation_id = ids::uuid(&mut self.rng);
        let ani = format!("tel:+1555{:07}", self.rng.gen_range(0..10_000_000u32));
        let customer = self.new_participant(
            Purpose::Customer,
            "Customer".into(),
            Some(queue),
            None,
            CallState::Connected,
        );
        let ivr = self.new_participant(
            Purpose::Ivr,
            "Main IVR".into(),
            None,
            None,
            CallState::Connected,
        );
        let conv = Conversation {
            id: conversation_id,
            start_ms: self.now_ms(),
            end_ms: None,
            division_id: self.division_id.clone(),
            ani,
            dnis: "tel:+18005550100".into(),
            participants: vec![customer, ivr],
            recording_state: "none",
        };
        self.convs.insert(
            id,
            Active {
                conv,
                queue,
                agent: None,
                acd: None,
                talk_left_us: 0,
                transfer_planned: false,
                transfers: 0,
                no_answers: 0,
                pending_wrapups: 0,
            },
        );
        self.detail(id, 0, "customer.start", vec![]);
        self.snapshot(id);
        let ivr_us = self.sample(self.stages.ivr);
        self.schedule(ivr_us, Action::IvrDone(id));
        self.schedule_arrival();
    }

    fn ivr_done(&mut self, id: u64) {
        let now = self.now_ms();
        let Some(queue) = self.convs.get(&id).map(|a| a.queue) else {
            return;
        };
        let acd = self.new_participant(
            Purpose::Acd,
            self.queues[queue].name.clone(),
            Some(queue),
            None,
            CallState::Connected,
        );
        let active = self.convs.get_mut(&id).expect("active");
        active.conv.participants[1].end(now, Disconnect::Transfer);
        active.conv.participants.push(acd);
        let acd_index = active.conv.participants.len() - 1;
        active.acd = Some(acd_index);
        self.queues[queue].counts.waiting += 1;
        self.observation_changed(queue);
        self.detail(id, acd_index, "acd.start", vec![]);
        self.snapshot(id);
        let wait = self.sample(self.stages.queue);
        self.schedule(wait, Action::Route(id));
    }

    /// Offers waiting conversations to idle agents, oldest conversation first.
    fn dispatch(&mut self) {
        while !self.idle.is_empty() {
            let Some(id) = self.waiting.pop_front() else {
                return;
            };
            if !self.convs.contains_key(&id) {
                continue;
            }
            let pick = self.rng.gen_range(0..self.idle.len());
            let agent = self.idle.swap_remove(pick);
            self.alert(id, agent);
        }
    }

    fn alert(&mut self, id: u64, agent: usize) {
        let queue = self.convs[&id].queue;
        let participant = self.new_participant(
            Purpose::Agent,
            self.agents[agent].name.clone(),
            Some(queue),
            Some(agent),
            CallState::Alerting,
        );
        let active = self.convs.get_mut(&id).expect("active");
        active.conv.participants.push(participant);
        let index = active.conv.participants.len() - 1;
        active.agent = Some((agent, index));
        let counts = &mut self.queues[queue].counts;
        counts.waiting = counts.waiting.saturating_sub(1);
        counts.alerting += 1;
        self.observation_changed(queue);
        self.detail(id, index, "user.start", vec![]);
        self.snapshot(id);
        let ring = self.sample(self.stages.alerting);
        self.schedule(ring, Action::AlertDone(id));
    }

    fn alert_done(&mut self, id: u64) {
        let now = self.now_ms();
        let Some((agent, index, queue, no_answers)) = self
            .convs
            .get(&id)
            .and_then(|a| a.agent.map(|(ag, i)| (ag, i, a.queue, a.no_answers)))
        else {
            return;
        };
        let no_answer = no_answers < 2 && self.rng.gen_bool(self.branching.no_answer);
        let counts = &mut self.queues[queue].counts;
        counts.alerting = counts.alerting.saturating_sub(1);
        if no_answer {
            counts.waiting += 1;
            let active = self.convs.get_mut(&id).expect("active");
            let p = &mut active.conv.participants[index];
            p.end(now, Disconnect::Timeout);
            p.wrapup_required = false;
            active.agent = None;
            active.no_answers += 1;
            self.observation_changed(queue);
            self.detail(
                id,
                index,
                "user.end",
                vec![
                    ("disconnectType", json!(Disconnect::Timeout.detail())),
                    ("interactingDurationMs", json!(0)),
                ],
            );
            self.snapshot(id);
            self.schedule(0, Action::Route(id));
            self.idle.push(agent);
            self.dispatch();
            return;
        }
        counts.interacting += 1;
        let active = self.convs.get_mut(&id).expect("active");
        let p = &mut active.conv.participants[index];
        p.state = CallState::Connected;
        p.connected_ms = Some(now);
        p.segment("interact", now);
        let acd_index = active.acd.take();
        let mut acd_connected_ms = now;
        if let Some(acd) = acd_index {
            let acd_p = &mut active.conv.participants[acd];
            acd_connected_ms = acd_p.connected_ms.unwrap_or(now);
            acd_p.end(now, Disconnect::Transfer);
        }
        self.observation_changed(queue);
        if let Some(acd) = acd_index {
            let user_id = self.agents[agent].user_id.clone();
            self.detail(
                id,
                acd,
                "acd.end",
                vec![
                    ("disconnectType", json!(Disconnect::Transfer.detail())),
                    ("acdOutcome", json!("ANSWERED")),
                    ("answeredUserId", json!(user_id)),
                    ("connectedDurationMs", json!(now - acd_connected_ms)),
                    ("requestedRoutings", json!(["Standard"])),
                    ("usedRouting", json!("Standard")),
                ],
            );
        }
        self.snapshot(id);
        let talk = self.sample(self.stages.talk);
        let hold = self.rng.gen_bool(self.branching.hold);
        let transfer = self.rng.gen_bool(self.branching.transfer);
        let active = self.convs.get_mut(&id).expect("active");
        active.transfer_planned = transfer && active.transfers == 0 && self.queues.len() > 1;
        if hold {
            let before = talk * 3 / 10;
            active.talk_left_us = talk - before;
            self.schedule(before, Action::HoldStart(id));
        } else {
            active.talk_left_us = 0;
            self.schedule_after_talk(id, talk);
        }
    }

    fn schedule_after_talk(&mut self, id: u64, after_us: u64) {
        let transfer = self.convs.get(&id).is_some_and(|a| a.transfer_planned);
        let action = if transfer {
            Action::Transfer(id)
        } else {
            Action::Disconnect(id)
        };
        self.schedule(after_us, action);
    }

    fn hold(&mut self, id: u64, start: bool) {
        let now = self.now_ms();
        let Some(active) = self.convs.get_mut(&id) else {
            return;
        };
        let customer = &mut active.conv.participants[0];
        customer.held = start;
        customer.start_hold_ms = start.then_some(now);
        if let Some((_, index)) = active.agent {
            let kind = if start { "hold" } else { "interact" };
            active.conv.participants[index].segment(kind, now);
        }
        let talk_left = active.talk_left_us;
        self.snapshot(id);
        if start {
            let hold = self.sample(self.stages.hold);
            self.schedule(hold, Action::HoldEnd(id));
        } else {
            self.schedule_after_talk(id, talk_left);
        }
    }

    /// Ends the agent's part of the call and starts their after-call work.
    fn agent_leaves(&mut self, id: u64, disconnect: Disconnect) -> Option<(usize, usize)> {
        let now = self.now_ms();
        let active = self.convs.get_mut(&id)?;
        let (agent, index) = active.agent.take()?;
        let p = &mut active.conv.participants[index];
        let interacting_ms = now - p.connected_ms.unwrap_or(now);
        p.end(now, disconnect);
        p.start_acw_ms = Some(now);
        p.segment("wrapup", now);
        active.pending_wrapups += 1;
        let queue = active.queue;
        let counts = &mut self.queues[queue].counts;
        counts.interacting = counts.interacting.saturating_sub(1);
        self.observation_changed(queue);
        self.detail(
            id,
            index,
            "user.end",
            vec![
                ("disconnectType", json!(disconnect.detail())),
                ("interactingDurationMs", json!(interacting_ms)),
            ],
        );
        let wrapup = self.sample(self.stages.wrapup);
        self.schedule(
            wrapup,
            Action::WrapupDone {
                conv: id,
                agent,
                participant: index,
            },
        );
        Some((agent, index))
    }

    fn transfer(&mut self, id: u64) {
        if self.agent_leaves(id, Disconnect::Transfer).is_none() {
            return;
        }
        let current = self.convs[&id].queue;
        let offset = self.rng.gen_range(1..self.queues.len());
        let target = (current + offset) % self.queues.len();
        let acd = self.new_participant(
            Purpose::Acd,
            self.queues[target].name.clone(),
            Some(target),
            None,
            CallState::Connected,
        );
        let active = self.convs.get_mut(&id).expect("active");
        active.queue = target;
        active.transfers += 1;
        active.transfer_planned = false;
        active.conv.participants.push(acd);
        let acd_index = active.conv.participants.len() - 1;
        active.acd = Some(acd_index);
        self.queues[target].counts.waiting += 1;
        self.observation_changed(target);
        self.detail(id, acd_index, "acd.start", vec![]);
        self.snapshot(id);
        let wait = self.sample(self.stages.queue);
        self.schedule(wait, Action::Route(id));
    }

    fn disconnect(&mut self, id: u64) {
        let customer_hangs_up = self.rng.gen_bool(0.6);
        let (customer_side, agent_side) = if customer_hangs_up {
            (Disconnect::Endpoint, Disconnect::Peer)
        } else {
            (Disconnect::Peer, Disconnect::Client)
        };
        if self.agent_leaves(id, agent_side).is_none() {
            return;
        }
        let now = self.now_ms();
        let active = self.convs.get_mut(&id).expect("active");
        let customer = &mut active.conv.participants[0];
        let interacting_ms = now - customer.connected_ms.unwrap_or(now);
        customer.end(now, customer_side);
        active.conv.end_ms = Some(now);
        self.detail(
            id,
            0,
            "customer.end",
            vec![
                ("disconnectType", json!(customer_side.detail())),
                ("interactingDurationMs", json!(interacting_ms)),
            ],
        );
        self.snapshot(id);
    }

    fn wrapup_done(&mut self, id: u64, agent: usize, index: usize) {
        let now = self.now_ms();
        let code = self.wrapup_codes[self.rng.gen_range(0..self.wrapup_codes.len())].clone();
        let Some(active) = self.convs.get_mut(&id) else {
            return;
        };
        let p = &mut active.conv.participants[index];
        let duration_ms = now - p.start_acw_ms.unwrap_or(now);
        p.wrapup = Some(Wrapup {
            code: code.0.clone(),
            name: code.1,
            duration_ms,
            end_ms: now,
        });
        p.close_segment(now, None);
        active.pending_wrapups -= 1;
        let finished = active.conv.end_ms.is_some() && active.pending_wrapups == 0;
        let fields = vec![
            ("wrapupCode", json!(code.0)),
            ("wrapupNotes", json!("")),
            ("wrapupDurationMs", json!(duration_ms)),
        ];
        self.detail(id, index, "acw", fields.clone());
        self.detail(id, index, "wrapup", fields);
        self.snapshot(id);
        if finished {
            self.convs.remove(&id);
        }
        self.idle.push(agent);
        self.dispatch();
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
        let Some(active) = self.convs.get(&id) else {
            return;
        };
        let conv = &active.conv;
        let topics = conv.snapshot_topics();
        publish(&self.sim, &mut self.rng, &topics, || conv.snapshot_json());
        self.sim.history.lock().expect("history lock").upsert(conv);
    }
}

/// Draws one correlation id per topic (always, so that ids do not depend on who listens), then
/// builds the body once and queues the byte-identical frame on every subscribed channel.
fn publish(sim: &Sim, rng: &mut SmallRng, topics: &[String], body: impl FnOnce() -> String) {
    let correlation_ids: Vec<String> = topics.iter().map(|_| ids::uuid(rng)).collect();
    let registry = sim.channels.lock().expect("channels lock");
    let mut body_fn = Some(body);
    let mut body_text: Option<String> = None;
    for (topic, correlation_id) in topics.iter().zip(&correlation_ids) {
        if !registry.has_subscribers(topic) {
            continue;
        }
        let text = body_text.get_or_insert_with(|| (body_fn.take().expect("built once"))());
        let frame = envelope(topic, text, correlation_id);
        registry.deliver(&outgoing(topic, frame, correlation_id));
    }
}
