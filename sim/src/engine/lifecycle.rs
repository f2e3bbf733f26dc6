//! The life of one conversation: arrival, IVR, queue, alerting (answer or no-answer), hold,
//! transfer, disconnect and wrap-up. Every step updates the participants, the queue counters,
//! and publishes its detail events and the new snapshot.

use serde_json::json;

use super::{Action, Active, Engine};
use crate::ids;
use crate::model::{CallState, Conversation, Disconnect, Participant, Purpose, Wrapup};
use rand::Rng;

impl Engine {
    pub(super) fn new_participant(
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

    pub(super) fn arrival(&mut self) {
        self.sync_queues();
        let queue = self.rng.gen_range(0..self.queues.len());
        let id = self.next_conv;
        self.next_conv += 1;
        let conversation_id = ids::uuid(&mut self.rng);
        let ani = format!("tel:+1555{:07}", self.rng.gen_range(0..10_000_000u32));
        let ivr_only = self.branching.ivr_only > 0.0 && self.rng.gen_bool(self.branching.ivr_only);
        // A customer headed for a queue carries it from the start; one who hangs up in the IVR
        // never has one.
        let customer = self.new_participant(
            Purpose::Customer,
            "Customer".into(),
            (!ivr_only).then_some(queue),
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
            ivr_only,
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
                last_snapshot: None,
            },
        );
        self.detail(id, 0, "customer.start", vec![]);
        self.snapshot(id);
        let ivr_us = self.sample(self.stages.ivr);
        self.schedule(ivr_us, Action::IvrDone(id));
        self.schedule_arrival();
    }

    pub(super) fn ivr_done(&mut self, id: u64) {
        let now = self.now_ms();
        let Some((queue, ivr_only)) = self.convs.get(&id).map(|a| (a.queue, a.conv.ivr_only))
        else {
            return;
        };
        if ivr_only {
            self.hang_up_in_ivr(id);
            return;
        }
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
        if self.branching.abandon > 0.0 && self.rng.gen_bool(self.branching.abandon) {
            // Hangs up before the earliest moment an agent could be offered the call.
            self.schedule(wait / 2, Action::Abandon(id));
        }
        self.schedule(wait, Action::Route(id));
    }

    /// The customer hangs up in the IVR: the IVR and the customer end, nothing else happened.
    fn hang_up_in_ivr(&mut self, id: u64) {
        let now = self.now_ms();
        let active = self.convs.get_mut(&id).expect("active");
        active.conv.participants[1].end(now, Disconnect::Peer);
        self.customer_leaves(id, Disconnect::Endpoint);
        self.snapshot(id);
        self.convs.remove(&id);
    }

    /// Ends the customer's call, and with it the conversation; publishes `customer.end`.
    fn customer_leaves(&mut self, id: u64, disconnect: Disconnect) {
        let now = self.now_ms();
        let Some(active) = self.convs.get_mut(&id) else {
            return;
        };
        let customer = &mut active.conv.participants[0];
        let interacting_ms = now - customer.connected_ms.unwrap_or(now);
        customer.end(now, disconnect);
        active.conv.end_ms = Some(now);
        self.detail(
            id,
            0,
            "customer.end",
            vec![
                ("disconnectType", json!(disconnect.detail())),
                ("interactingDurationMs", json!(interacting_ms)),
            ],
        );
    }

    /// The customer hangs up while waiting in the queue (no agent alerted at the moment).
    pub(super) fn abandon(&mut self, id: u64) {
        let now = self.now_ms();
        let Some(active) = self.convs.get_mut(&id) else {
            return;
        };
        let (Some(acd), None) = (active.acd, active.agent) else {
            return;
        };
        let queue = active.queue;
        let acd_p = &mut active.conv.participants[acd];
        let acd_connected_ms = acd_p.connected_ms.unwrap_or(now);
        acd_p.end(now, Disconnect::Peer);
        active.acd = None;
        let counts = &mut self.queues[queue].counts;
        counts.waiting = counts.waiting.saturating_sub(1);
        self.waiting.retain(|c| *c != id);
        self.observation_changed(queue);
        self.detail(
            id,
            acd,
            "acd.end",
            vec![
                ("disconnectType", json!(Disconnect::Peer.detail())),
                ("acdOutcome", json!("ABANDONED")),
                ("connectedDurationMs", json!(now - acd_connected_ms)),
                ("requestedRoutings", json!(["Standard"])),
            ],
        );
        self.customer_leaves(id, Disconnect::Endpoint);
        self.snapshot(id);
        self.convs.remove(&id);
    }

    /// Offers waiting conversations to idle agents, oldest conversation first.
    pub(super) fn dispatch(&mut self) {
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

    pub(super) fn alert(&mut self, id: u64, agent: usize) {
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

    pub(super) fn alert_done(&mut self, id: u64) {
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

    pub(super) fn schedule_after_talk(&mut self, id: u64, after_us: u64) {
        let transfer = self.convs.get(&id).is_some_and(|a| a.transfer_planned);
        let action = if transfer {
            Action::Transfer(id)
        } else {
            Action::Disconnect(id)
        };
        self.schedule(after_us, action);
    }

    pub(super) fn hold(&mut self, id: u64, start: bool) {
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
    pub(super) fn agent_leaves(
        &mut self,
        id: u64,
        disconnect: Disconnect,
    ) -> Option<(usize, usize)> {
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

    pub(super) fn transfer(&mut self, id: u64) {
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

    pub(super) fn disconnect(&mut self, id: u64) {
        let customer_hangs_up = self.rng.gen_bool(0.6);
        let (customer_side, agent_side) = if customer_hangs_up {
            (Disconnect::Endpoint, Disconnect::Peer)
        } else {
            (Disconnect::Peer, Disconnect::Client)
        };
        if self.agent_leaves(id, agent_side).is_none() {
            return;
        }
        self.customer_leaves(id, customer_side);
        self.snapshot(id);
    }

    pub(super) fn wrapup_done(&mut self, id: u64, agent: usize, index: usize) {
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
}
