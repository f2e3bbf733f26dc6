//! The lifecycle of every conversation the bridge knows, and the records its changes produce.
//!
//! Pure and deterministic: the state is a function of the observations fed to it, in order,
//! with the receive time each came with. Planning a change ([`State::plan_snapshot`],
//! [`State::plan_analytics`]) does not change anything: the caller appends the planned records
//! to the spool, then [`State::put`]s the merged conversation and [`State::apply`]s each record
//! that made it in. Replaying the spool after a restart does the same (records first, as they
//! were written first), so the state after a crash is the state before it.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::observe::{AnalyticsView, SnapshotView, WrapupView};
use super::record::{iso, Kind, LifecycleRecord, Source, WrapupRecord};

/// One participant, as far as the end of the conversation is concerned. Monotonic: once
/// terminal, always terminal (a stale snapshot never brings a participant back).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    #[serde(rename = "i")]
    pub id: String,
    #[serde(rename = "t", default, skip_serializing_if = "std::ops::Not::not")]
    pub terminal: bool,
    #[serde(rename = "c", default, skip_serializing_if = "std::ops::Not::not")]
    pub customer: bool,
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    pub end_ms: Option<i64>,
    #[serde(rename = "d", default, skip_serializing_if = "Option::is_none")]
    pub disconnect_type: Option<String>,
}

/// One conversation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conv {
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    pub start_ms: Option<i64>,
    #[serde(rename = "m", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(rename = "dir", default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
    pub ani: Option<String>,
    #[serde(rename = "n", default, skip_serializing_if = "Option::is_none")]
    pub dnis: Option<String>,
    #[serde(rename = "q", default, skip_serializing_if = "Vec::is_empty")]
    pub queue_ids: Vec<String>,
    #[serde(rename = "u", default, skip_serializing_if = "Vec::is_empty")]
    pub user_ids: Vec<String>,
    #[serde(rename = "p", default, skip_serializing_if = "Vec::is_empty")]
    pub participants: Vec<Part>,
    /// Receive time of the last snapshot of it (0: only known from analytics).
    #[serde(rename = "l", default)]
    pub last_seen_ms: i64,
    #[serde(rename = "st", default, skip_serializing_if = "std::ops::Not::not")]
    pub started: bool,
    /// The end time of the `conversation.ended` record written for it.
    #[serde(rename = "end", default, skip_serializing_if = "Option::is_none")]
    pub ended_ms: Option<i64>,
    /// When the bridge wrote that record (for forgetting ended conversations).
    #[serde(rename = "ea", default, skip_serializing_if = "Option::is_none")]
    pub ended_at_ms: Option<i64>,
    /// Participants whose `conversation.wrapup` was written.
    #[serde(rename = "w", default, skip_serializing_if = "Vec::is_empty")]
    pub wrapups: Vec<String>,
}

impl Conv {
    fn add_ids(list: &mut Vec<String>, id: Option<&String>) {
        if let Some(id) = id {
            if !list.contains(id) {
                list.push(id.clone());
            }
        }
    }

    fn earliest(&mut self, start_ms: Option<i64>) {
        if let Some(start) = start_ms {
            self.start_ms = Some(self.start_ms.map_or(start, |s| s.min(start)));
        }
    }

    fn fill(slot: &mut Option<String>, value: &Option<String>) {
        if slot.is_none() {
            slot.clone_from(value);
        }
    }

    fn record(&self, id: &str, kind: Kind, source: Source, now_ms: i64) -> LifecycleRecord {
        LifecycleRecord {
            id: kind.record_id(id, None),
            kind,
            conversation_id: id.to_owned(),
            source,
            start_time: self.start_ms.map(iso),
            end_time: None,
            duration_ms: None,
            media_type: self.media_type.clone(),
            direction: self.direction.clone(),
            queue_ids: self.queue_ids.clone(),
            user_ids: self.user_ids.clone(),
            disconnect_type: None,
            ani: self.ani.clone(),
            dnis: self.dnis.clone(),
            wrapup: None,
            observed_at: iso(now_ms),
        }
    }

    fn ended_record(
        &self,
        id: &str,
        source: Source,
        end_ms: i64,
        disconnect_type: Option<String>,
        now_ms: i64,
    ) -> LifecycleRecord {
        let mut record = self.record(id, Kind::Ended, source, now_ms);
        record.end_time = Some(iso(end_ms));
        record.duration_ms = self.start_ms.map(|start| (end_ms - start).max(0));
        record.disconnect_type = disconnect_type;
        record
    }

    fn wrapup_record(
        &self,
        id: &str,
        participant_id: &str,
        user_id: Option<&String>,
        wrapup: &WrapupView,
        source: Source,
        now_ms: i64,
    ) -> LifecycleRecord {
        let mut record = self.record(id, Kind::Wrapup, source, now_ms);
        record.id = Kind::Wrapup.record_id(id, Some(participant_id));
        record.wrapup = Some(WrapupRecord {
            participant_id: participant_id.to_owned(),
            user_id: user_id.cloned(),
            code: wrapup.code.clone(),
            name: wrapup.name.clone(),
            duration_ms: wrapup.duration_ms,
            end_time: wrapup.end_ms.map(iso),
        });
        record
    }

    /// The end of a conversation whose participants are all terminal: the latest end, and the
    /// customer's disconnect type (else the one of the participant that ended last).
    fn end_of_participants(&self) -> (Option<i64>, Option<String>) {
        let end = self.participants.iter().filter_map(|p| p.end_ms).max();
        let customer = self
            .participants
            .iter()
            .find(|p| p.customer && p.disconnect_type.is_some());
        let last = self
            .participants
            .iter()
            .filter(|p| p.disconnect_type.is_some())
            .max_by_key(|p| p.end_ms.unwrap_or(i64::MIN));
        let kind = customer.or(last).and_then(|p| p.disconnect_type.clone());
        (end, kind)
    }
}

/// What derivation may emit and remember.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// Write `conversation.wrapup` records.
    pub wrapup: bool,
    /// Keep ANI and DNIS in the records.
    pub addresses: bool,
}

/// Every conversation the bridge knows.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    #[serde(rename = "conversations")]
    convs: HashMap<String, Conv>,
}

impl State {
    pub fn get(&self, id: &str) -> Option<&Conv> {
        self.convs.get(id)
    }

    pub fn len(&self) -> usize {
        self.convs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.convs.is_empty()
    }

    /// Conversations started and not ended.
    pub fn open(&self) -> impl Iterator<Item = (&String, &Conv)> {
        self.convs.iter().filter(|(_, c)| c.ended_ms.is_none())
    }

    /// The merged conversation and the records a snapshot received at `now_ms` calls for.
    pub fn plan_snapshot(
        &self,
        view: &SnapshotView,
        now_ms: i64,
        rules: Rules,
    ) -> (Conv, Vec<LifecycleRecord>) {
        let id = view.conversation_id.as_str();
        let mut conv = self.convs.get(id).cloned().unwrap_or_default();
        let mut records = Vec::new();
        let wrapups = |conv: &Conv, records: &mut Vec<LifecycleRecord>| {
            if !rules.wrapup {
                return;
            }
            for p in &view.participants {
                if let Some(wrapup) = &p.wrapup {
                    let done = conv.wrapups.contains(&p.id)
                        || records.iter().any(|r: &LifecycleRecord| {
                            r.wrapup.as_ref().is_some_and(|w| w.participant_id == p.id)
                        });
                    if !done {
                        records.push(conv.wrapup_record(
                            id,
                            &p.id,
                            p.user_id.as_ref(),
                            wrapup,
                            Source::Stream,
                            now_ms,
                        ));
                    }
                }
            }
        };
        if conv.ended_ms.is_some() {
            // Ended: a late or stale snapshot changes nothing but may bring a wrap-up.
            wrapups(&conv, &mut records);
            return (conv, records);
        }
        conv.last_seen_ms = conv.last_seen_ms.max(now_ms);
        conv.earliest(view.start_ms);
        Conv::fill(&mut conv.media_type, &view.media_type);
        Conv::fill(&mut conv.direction, &view.direction);
        if rules.addresses {
            Conv::fill(&mut conv.ani, &view.ani);
            Conv::fill(&mut conv.dnis, &view.dnis);
        }
        for p in &view.participants {
            Conv::add_ids(&mut conv.queue_ids, p.queue_id.as_ref());
            Conv::add_ids(&mut conv.user_ids, p.user_id.as_ref());
            let customer = p.purpose.as_deref() == Some("customer");
            match conv.participants.iter_mut().find(|known| known.id == p.id) {
                Some(known) => {
                    known.customer |= customer;
                    if p.terminal && !known.terminal {
                        known.terminal = true;
                        known.disconnect_type.clone_from(&p.disconnect_type);
                    }
                    if known.terminal {
                        known.end_ms = known.end_ms.max(p.end_ms);
                        Conv::fill(&mut known.disconnect_type, &p.disconnect_type);
                    }
                }
                None => conv.participants.push(Part {
                    id: p.id.clone(),
                    terminal: p.terminal,
                    customer,
                    end_ms: p.end_ms.filter(|_| p.terminal),
                    disconnect_type: p.disconnect_type.clone().filter(|_| p.terminal),
                }),
            }
        }
        if !conv.started {
            if conv.start_ms.is_none() {
                // A snapshot without any time: the bridge's receive time is the best there is.
                conv.start_ms = Some(now_ms);
            }
            records.push(conv.record(id, Kind::Started, Source::Stream, now_ms));
        }
        wrapups(&conv, &mut records);
        let all_terminal =
            !conv.participants.is_empty() && conv.participants.iter().all(|p| p.terminal);
        if all_terminal {
            let (end, kind) = conv.end_of_participants();
            let end = end.unwrap_or(now_ms);
            records.push(conv.ended_record(id, Source::Stream, end, kind, now_ms));
        }
        (conv, records)
    }

    /// The merged conversation and the records an analytics conversation calls for (from a
    /// backfill or a reconciliation): `started` if it was never started, `ended` if analytics
    /// knows its end and it was never ended.
    pub fn plan_analytics(
        &self,
        view: &AnalyticsView,
        source: Source,
        now_ms: i64,
        rules: Rules,
    ) -> (Conv, Vec<LifecycleRecord>) {
        let id = view.conversation_id.as_str();
        let mut conv = self.convs.get(id).cloned().unwrap_or_default();
        let mut records = Vec::new();
        if conv.ended_ms.is_some() {
            return (conv, records);
        }
        conv.earliest(view.start_ms);
        Conv::fill(&mut conv.media_type, &view.media_type);
        Conv::fill(&mut conv.direction, &view.direction);
        if rules.addresses {
            Conv::fill(&mut conv.ani, &view.ani);
            Conv::fill(&mut conv.dnis, &view.dnis);
        }
        for q in &view.queue_ids {
            Conv::add_ids(&mut conv.queue_ids, Some(q));
        }
        for u in &view.user_ids {
            Conv::add_ids(&mut conv.user_ids, Some(u));
        }
        if !conv.started {
            if conv.start_ms.is_none() {
                conv.start_ms = Some(now_ms);
            }
            records.push(conv.record(id, Kind::Started, source, now_ms));
        }
        if let Some(end) = view.end_ms {
            records.push(conv.ended_record(id, source, end, view.disconnect_type.clone(), now_ms));
        }
        (conv, records)
    }

    /// Stores a planned conversation (before applying the records that made it into the spool).
    pub fn put(&mut self, id: &str, conv: Conv) {
        match self.convs.get_mut(id) {
            Some(slot) => *slot = conv,
            None => {
                self.convs.insert(id.to_owned(), conv);
            }
        }
    }

    /// A record is in the spool: the conversation has started, ended or wrapped up.
    pub fn apply(&mut self, record: &LifecycleRecord, now_ms: i64) {
        let conv = self
            .convs
            .entry(record.conversation_id.clone())
            .or_default();
        // The same fields the plan merged in, so that a replay of the records alone rebuilds
        // what the live path stored.
        conv.earliest(
            record
                .start_time
                .as_deref()
                .and_then(|t| super::observe::parse_time(Some(t))),
        );
        Conv::fill(&mut conv.media_type, &record.media_type);
        Conv::fill(&mut conv.direction, &record.direction);
        for q in &record.queue_ids {
            Conv::add_ids(&mut conv.queue_ids, Some(q));
        }
        for u in &record.user_ids {
            Conv::add_ids(&mut conv.user_ids, Some(u));
        }
        match record.kind {
            Kind::Started => conv.started = true,
            Kind::Ended => {
                conv.started = true;
                conv.ended_ms = Some(
                    record
                        .end_time
                        .as_deref()
                        .and_then(|t| super::observe::parse_time(Some(t)))
                        .unwrap_or(now_ms),
                );
                conv.ended_at_ms = Some(now_ms);
                // What decided the end is not needed any more; wrap-ups may still come.
                conv.participants = Vec::new();
                conv.ani = None;
                conv.dnis = None;
            }
            Kind::Wrapup => {
                if let Some(w) = &record.wrapup {
                    if !conv.wrapups.contains(&w.participant_id) {
                        conv.wrapups.push(w.participant_id.clone());
                    }
                }
            }
        }
    }

    /// Forgets conversations ended more than `remember_ended_ms` ago and open ones without a
    /// snapshot for `max_open_ms`; returns how many open ones were given up.
    pub fn expire(&mut self, now_ms: i64, remember_ended_ms: i64, max_open_ms: i64) -> usize {
        let mut abandoned = 0;
        self.convs.retain(|_, c| match c.ended_at_ms {
            Some(at) => now_ms - at <= remember_ended_ms,
            None => {
                let keep = now_ms - c.last_seen_ms.max(c.start_ms.unwrap_or(0)) <= max_open_ms;
                if !keep {
                    abandoned += 1;
                }
                keep
            }
        });
        abandoned
    }
}

#[cfg(test)]
mod tests {
    use super::super::observe::ParticipantView;
    use super::*;

    const RULES: Rules = Rules {
        wrapup: true,
        addresses: false,
    };

    fn part(id: &str, purpose: &str, terminal: bool, end_ms: Option<i64>) -> ParticipantView {
        ParticipantView {
            id: id.into(),
            purpose: Some(purpose.into()),
            queue_id: Some("q1".into()),
            user_id: (purpose == "agent").then(|| "u1".to_string()),
            terminal,
            end_ms,
            disconnect_type: terminal.then(|| format!("{purpose}-dc")),
            wrapup: None,
        }
    }

    fn view(participants: Vec<ParticipantView>) -> SnapshotView {
        SnapshotView {
            conversation_id: "c1".into(),
            start_ms: Some(1_000),
            media_type: Some("voice".into()),
            direction: Some("inbound".into()),
            ani: Some("tel:+1".into()),
            dnis: None,
            participants,
        }
    }

    /// Plans, then stores and applies everything, as a successful append would.
    fn feed(state: &mut State, v: &SnapshotView, now_ms: i64) -> Vec<LifecycleRecord> {
        let (conv, records) = state.plan_snapshot(v, now_ms, RULES);
        state.put(&v.conversation_id, conv);
        for r in &records {
            state.apply(r, now_ms);
        }
        records
    }

    fn kinds(records: &[LifecycleRecord]) -> Vec<Kind> {
        records.iter().map(|r| r.kind).collect()
    }

    #[test]
    fn started_once_then_ended_once_when_every_participant_is_terminal() {
        let mut state = State::default();
        let first = feed(
            &mut state,
            &view(vec![part("cust", "customer", false, None)]),
            10,
        );
        assert_eq!(kinds(&first), vec![Kind::Started]);
        assert_eq!(first[0].start_time.as_deref(), Some(iso(1_000).as_str()));
        assert_eq!(first[0].id, "c1:started");
        // An agent leaves (a transfer, a rejected alert): not the end.
        let agent_left = feed(
            &mut state,
            &view(vec![
                part("cust", "customer", false, None),
                part("agent", "agent", true, Some(5_000)),
            ]),
            20,
        );
        assert!(agent_left.is_empty());
        let end = feed(
            &mut state,
            &view(vec![
                part("cust", "customer", true, Some(9_000)),
                part("agent", "agent", true, Some(5_000)),
            ]),
            30,
        );
        assert_eq!(kinds(&end), vec![Kind::Ended]);
        assert_eq!(end[0].end_time.as_deref(), Some(iso(9_000).as_str()));
        assert_eq!(end[0].duration_ms, Some(8_000));
        assert_eq!(end[0].disconnect_type.as_deref(), Some("customer-dc"));
        assert_eq!(end[0].user_ids, vec!["u1"]);
        // The same end again (another topic, another leg, a stale copy): nothing.
        let again = feed(
            &mut state,
            &view(vec![part("cust", "customer", true, Some(9_000))]),
            40,
        );
        assert!(again.is_empty());
    }

    #[test]
    fn a_stale_snapshot_never_moves_a_conversation_back() {
        let mut state = State::default();
        feed(
            &mut state,
            &view(vec![
                part("cust", "customer", false, None),
                part("agent", "agent", true, Some(5_000)),
            ]),
            10,
        );
        // Older: the agent still connected. The agent stays terminal.
        feed(
            &mut state,
            &view(vec![
                part("cust", "customer", false, None),
                part("agent", "agent", false, None),
            ]),
            11,
        );
        let end = feed(
            &mut state,
            &view(vec![part("cust", "customer", true, Some(9_000))]),
            12,
        );
        assert_eq!(kinds(&end), vec![Kind::Ended]);
    }

    #[test]
    fn the_first_snapshot_seen_may_be_the_last() {
        let mut state = State::default();
        let records = feed(
            &mut state,
            &view(vec![part("cust", "customer", true, Some(9_000))]),
            10,
        );
        assert_eq!(kinds(&records), vec![Kind::Started, Kind::Ended]);
    }

    #[test]
    fn a_wrapup_after_the_end_is_written_once() {
        let mut state = State::default();
        feed(
            &mut state,
            &view(vec![
                part("cust", "customer", true, Some(9_000)),
                part("agent", "agent", true, Some(9_000)),
            ]),
            10,
        );
        let mut with_wrapup = part("agent", "agent", true, Some(9_000));
        with_wrapup.wrapup = Some(WrapupView {
            code: "w1".into(),
            name: Some("Resolved".into()),
            duration_ms: Some(3_000),
            end_ms: Some(12_000),
        });
        let v = view(vec![
            part("cust", "customer", true, Some(9_000)),
            with_wrapup,
        ]);
        let records = feed(&mut state, &v, 20);
        assert_eq!(kinds(&records), vec![Kind::Wrapup]);
        assert_eq!(records[0].id, "c1:wrapup:agent");
        assert_eq!(records[0].wrapup.as_ref().unwrap().code, "w1");
        assert!(feed(&mut state, &v, 21).is_empty());
    }

    #[test]
    fn planning_changes_nothing_until_stored() {
        let state = State::default();
        let (_, records) =
            state.plan_snapshot(&view(vec![part("c", "customer", false, None)]), 1, RULES);
        assert_eq!(records.len(), 1);
        assert!(state.is_empty());
    }

    #[test]
    fn analytics_ends_what_the_stream_could_not() {
        let mut state = State::default();
        feed(
            &mut state,
            &view(vec![part("cust", "customer", false, None)]),
            10,
        );
        let analytics = AnalyticsView {
            conversation_id: "c1".into(),
            start_ms: Some(1_000),
            end_ms: Some(20_000),
            media_type: Some("voice".into()),
            direction: None,
            ani: None,
            dnis: None,
            queue_ids: vec!["q2".into()],
            user_ids: vec![],
            disconnect_type: Some("endpoint".into()),
        };
        let (conv, records) = state.plan_analytics(&analytics, Source::Reconciliation, 30, RULES);
        assert_eq!(kinds(&records), vec![Kind::Ended]);
        assert_eq!(records[0].source, Source::Reconciliation);
        assert_eq!(records[0].queue_ids, vec!["q1", "q2"]);
        state.put("c1", conv);
        state.apply(&records[0], 30);
        let (_, again) = state.plan_analytics(&analytics, Source::Reconciliation, 31, RULES);
        assert!(again.is_empty());
        // Never seen at all (IVR only): started and ended together.
        let mut ivr = analytics.clone();
        ivr.conversation_id = "c2".into();
        let (_, records) = state.plan_analytics(&ivr, Source::Reconciliation, 32, RULES);
        assert_eq!(kinds(&records), vec![Kind::Started, Kind::Ended]);
    }

    #[test]
    fn replaying_records_then_the_snapshot_gives_the_same_state() {
        let v = view(vec![part("cust", "customer", false, None)]);
        let mut live = State::default();
        let records = feed(&mut live, &v, 10);
        // Replay: the records were written before the snapshot.
        let mut replayed = State::default();
        for r in &records {
            replayed.apply(r, 10);
        }
        let (conv, again) = replayed.plan_snapshot(&v, 10, RULES);
        assert!(again.is_empty());
        replayed.put("c1", conv);
        assert_eq!(live, replayed);
    }

    #[test]
    fn ended_conversations_are_forgotten_after_a_while_and_stale_open_ones_given_up() {
        let mut state = State::default();
        feed(
            &mut state,
            &view(vec![part("cust", "customer", true, Some(2_000))]),
            10,
        );
        let mut other = view(vec![part("cust", "customer", false, None)]);
        other.conversation_id = "c2".into();
        feed(&mut state, &other, 10);
        assert_eq!(state.expire(100, 1_000, 1_000), 0);
        assert_eq!(state.len(), 2);
        assert_eq!(state.expire(5_000, 1_000, 100_000), 0);
        assert_eq!(state.len(), 1);
        assert_eq!(state.expire(200_000, 1_000, 100_000), 1);
        assert!(state.is_empty());
    }
}
