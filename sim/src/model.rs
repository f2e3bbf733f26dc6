//! The conversation model's data and the SDK-shaped bodies built from it:
//! conversation snapshots (`QueueConversationEventTopicConversation` /
//! `ConversationEventTopicConversation`), detail events (`*DetailEventTopic*Event`), queue
//! observations (`StatEventQueueTopicStatsNotification`) and analytics conversations
//! (`AnalyticsConversationWithoutAttributes`).

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde_json::{json, Map, Value};

/// Formats epoch milliseconds the way Genesys does: `2022-07-04T20:04:12.131Z`.
pub(crate) fn iso(ms: i64) -> String {
    let dt: DateTime<Utc> = Utc.timestamp_millis_opt(ms).single().unwrap_or_default();
    dt.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    Customer,
    Ivr,
    Acd,
    Agent,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Purpose::Customer => "customer",
            Purpose::Ivr => "ivr",
            Purpose::Acd => "acd",
            Purpose::Agent => "agent",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CallState {
    Alerting,
    Connected,
    Disconnected,
}

impl CallState {
    fn as_str(self) -> &'static str {
        match self {
            CallState::Alerting => "alerting",
            CallState::Connected => "connected",
            CallState::Disconnected => "disconnected",
        }
    }
}

/// How a participant's call ended (snapshot spelling; detail events use upper case).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Disconnect {
    Endpoint,
    Client,
    Peer,
    Transfer,
    Timeout,
}

impl Disconnect {
    pub fn snapshot(self) -> &'static str {
        match self {
            Disconnect::Endpoint => "endpoint",
            Disconnect::Client => "client",
            Disconnect::Peer => "peer",
            Disconnect::Transfer => "transfer",
            Disconnect::Timeout => "timeout",
        }
    }

    pub fn detail(self) -> &'static str {
        match self {
            Disconnect::Endpoint => "ENDPOINT",
            Disconnect::Client => "CLIENT",
            Disconnect::Peer => "PEER",
            Disconnect::Transfer => "TRANSFER",
            Disconnect::Timeout => "TIMEOUT",
        }
    }
}

/// One analytics segment of a participant's session.
#[derive(Clone, Debug)]
pub(crate) struct Segment {
    pub kind: &'static str,
    pub start_ms: i64,
    pub end_ms: Option<i64>,
    pub queue_id: Option<String>,
    pub disconnect: Option<Disconnect>,
}

#[derive(Clone, Debug)]
pub(crate) struct Wrapup {
    pub code: String,
    pub name: String,
    pub duration_ms: i64,
    pub end_ms: i64,
}

#[derive(Clone, Debug)]
pub(crate) struct Participant {
    pub id: String,
    pub purpose: Purpose,
    pub name: String,
    pub queue_id: Option<String>,
    pub queue_name: Option<String>,
    pub user_id: Option<String>,
    /// The call's id, which is also the detail events' `sessionId`.
    pub call_id: String,
    pub state: CallState,
    pub initial_state: CallState,
    pub held: bool,
    pub start_hold_ms: Option<i64>,
    pub connected_ms: Option<i64>,
    pub end_ms: Option<i64>,
    pub disconnect: Option<Disconnect>,
    pub wrapup_required: bool,
    pub start_acw_ms: Option<i64>,
    pub wrapup: Option<Wrapup>,
    pub segments: Vec<Segment>,
}

impl Participant {
    /// Closes the open segment (if any) and opens a new one.
    pub fn segment(&mut self, kind: &'static str, at_ms: i64) {
        self.close_segment(at_ms, None);
        self.segments.push(Segment {
            kind,
            start_ms: at_ms,
            end_ms: None,
            queue_id: self.queue_id.clone(),
            disconnect: None,
        });
    }

    pub fn close_segment(&mut self, at_ms: i64, disconnect: Option<Disconnect>) {
        if let Some(open) = self.segments.last_mut().filter(|s| s.end_ms.is_none()) {
            open.end_ms = Some(at_ms);
            open.disconnect = disconnect;
        }
    }

    /// Ends the participant's call now.
    pub fn end(&mut self, at_ms: i64, disconnect: Disconnect) {
        self.state = CallState::Disconnected;
        self.held = false;
        self.start_hold_ms = None;
        self.end_ms = Some(at_ms);
        self.disconnect = Some(disconnect);
        self.close_segment(at_ms, Some(disconnect));
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Conversation {
    pub id: String,
    pub start_ms: i64,
    pub end_ms: Option<i64>,
    pub division_id: String,
    pub ani: String,
    pub dnis: String,
    pub participants: Vec<Participant>,
    pub recording_state: &'static str,
    /// The customer hangs up in the IVR (ground truth for tests: no queue or user topic ever
    /// carries this conversation).
    pub ivr_only: bool,
}

impl Conversation {
    /// Distinct queue ids and user ids appearing in the conversation, in participant order.
    pub fn queues_and_users(&self) -> (Vec<&str>, Vec<&str>) {
        let mut queues: Vec<&str> = Vec::new();
        let mut users: Vec<&str> = Vec::new();
        for p in &self.participants {
            if let Some(q) = p.queue_id.as_deref() {
                if !queues.contains(&q) {
                    queues.push(q);
                }
            }
            if let Some(u) = p.user_id.as_deref() {
                if !users.contains(&u) {
                    users.push(u);
                }
            }
        }
        (queues, users)
    }

    /// Topics on which every change of this conversation is published, in a fixed order.
    pub fn snapshot_topics(&self) -> Vec<String> {
        let (queues, users) = self.queues_and_users();
        conversation_topics(&queues, &users)
    }

    /// Topics of the participants still engaged at `now_ms`, or who left at `now_ms` (see
    /// `SimConfig::engaged_topics_only`), queues first, in participant order.
    pub fn engaged_topics(&self, now_ms: i64) -> Vec<String> {
        let mut queues: Vec<&str> = Vec::new();
        let mut users: Vec<&str> = Vec::new();
        fn add<'a>(list: &mut Vec<&'a str>, id: Option<&'a str>) {
            if let Some(id) = id {
                if !list.contains(&id) {
                    list.push(id);
                }
            }
        }
        for p in &self.participants {
            let on_call = p.state != CallState::Disconnected || p.end_ms == Some(now_ms);
            match p.purpose {
                Purpose::Acd if on_call => add(&mut queues, p.queue_id.as_deref()),
                Purpose::Agent if on_call => {
                    add(&mut queues, p.queue_id.as_deref());
                    add(&mut users, p.user_id.as_deref());
                }
                Purpose::Agent => {
                    let in_acw = p.start_acw_ms.is_some()
                        && p.wrapup.as_ref().is_none_or(|w| w.end_ms == now_ms);
                    if in_acw {
                        add(&mut users, p.user_id.as_deref());
                    }
                }
                _ => {}
            }
        }
        conversation_topics(&queues, &users)
    }

    /// The conversation snapshot body.
    pub fn snapshot_json(&self) -> String {
        let participants: Vec<Value> = self
            .participants
            .iter()
            .map(|p| self.participant_json(p))
            .collect();
        let (queues, _) = self.queues_and_users();
        let body = json!({
            "id": self.id,
            "maxParticipants": 10,
            "participants": participants,
            "recordingState": self.recording_state,
            "address": self.dnis,
            "divisions": [{
                "division": {
                    "id": self.division_id,
                    "selfUri": format!("/api/v2/authorization/divisions/{}", self.division_id),
                },
                "entities": queues.iter().map(|q| json!({ "id": q })).collect::<Vec<_>>(),
            }],
        });
        body.to_string()
    }

    fn participant_json(&self, p: &Participant) -> Value {
        let mut call = Map::new();
        call.insert("id".into(), json!(p.call_id));
        call.insert("state".into(), json!(p.state.as_str()));
        call.insert("initialState".into(), json!(p.initial_state.as_str()));
        call.insert("recording".into(), json!(false));
        call.insert("recordingState".into(), json!("none"));
        call.insert("muted".into(), json!(false));
        call.insert("confined".into(), json!(false));
        call.insert("held".into(), json!(p.held));
        call.insert("securePause".into(), json!(false));
        if let Some(ms) = p.start_hold_ms {
            call.insert("startHoldTime".into(), json!(iso(ms)));
        }
        if let Some(d) = p.disconnect {
            call.insert("disconnectType".into(), json!(d.snapshot()));
        }
        call.insert("direction".into(), json!("inbound"));
        call.insert(
            "self".into(),
            json!({ "addressNormalized": self.address_of(p) }),
        );
        call.insert("other".into(), json!({ "addressNormalized": self.ani }));
        call.insert("provider".into(), json!("Edge"));
        if let Some(ms) = p.connected_ms {
            call.insert("connectedTime".into(), json!(iso(ms)));
        }
        if let Some(ms) = p.end_ms {
            call.insert("disconnectedTime".into(), json!(iso(ms)));
        }
        if p.purpose == Purpose::Agent {
            call.insert("afterCallWorkRequired".into(), json!(p.wrapup_required));
            if let Some(start) = p.start_acw_ms {
                let mut acw = json!({ "state": "pending", "startTime": iso(start) });
                if let Some(w) = &p.wrapup {
                    acw = json!({ "state": "complete", "startTime": iso(start), "endTime": iso(w.end_ms) });
                }
                call.insert("afterCallWork".into(), acw);
            }
        }

        let mut part = Map::new();
        part.insert("id".into(), json!(p.id));
        if let Some(ms) = p.connected_ms {
            part.insert("connectedTime".into(), json!(iso(ms)));
        }
        if let Some(ms) = p.end_ms {
            part.insert("endTime".into(), json!(iso(ms)));
        }
        if let Some(u) = &p.user_id {
            part.insert("userId".into(), json!(u));
        }
        if let Some(q) = &p.queue_id {
            part.insert("queueId".into(), json!(q));
        }
        if let Some(q) = &p.queue_name {
            part.insert("queueName".into(), json!(q));
        }
        part.insert("name".into(), json!(p.name));
        part.insert("purpose".into(), json!(p.purpose.as_str()));
        part.insert("address".into(), json!(self.address_of(p)));
        part.insert("ani".into(), json!(self.ani));
        part.insert("dnis".into(), json!(self.dnis));
        part.insert("wrapupRequired".into(), json!(p.wrapup_required));
        if let Some(w) = &p.wrapup {
            part.insert(
                "wrapup".into(),
                json!({
                    "code": w.code,
                    "name": w.name,
                    "notes": "",
                    "tags": [],
                    "durationSeconds": w.duration_ms / 1000,
                    "endTime": iso(w.end_ms),
                }),
            );
        }
        if let Some(ms) = p.start_acw_ms {
            part.insert("startAcwTime".into(), json!(iso(ms)));
        }
        if let Some(w) = &p.wrapup {
            part.insert("endAcwTime".into(), json!(iso(w.end_ms)));
        }
        part.insert("attributes".into(), json!({}));
        part.insert("calls".into(), json!([Value::Object(call)]));
        for media in [
            "callbacks",
            "chats",
            "cobrowsesessions",
            "emails",
            "messages",
            "screenshares",
            "socialExpressions",
            "videos",
        ] {
            part.insert(media.into(), json!([]));
        }
        Value::Object(part)
    }

    fn address_of(&self, p: &Participant) -> String {
        match p.purpose {
            Purpose::Customer => self.ani.clone(),
            Purpose::Agent => format!("sip:{}@sim.local", p.user_id.as_deref().unwrap_or("agent")),
            _ => self.dnis.clone(),
        }
    }

    /// The fields every detail event carries, for one participant.
    pub fn detail_base(&self, p: &Participant, event_ms: i64) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("eventTime".into(), json!(event_ms));
        m.insert("conversationId".into(), json!(self.id));
        m.insert("participantId".into(), json!(p.id));
        m.insert("sessionId".into(), json!(p.call_id));
        m.insert("mediaType".into(), json!("VOICE"));
        m.insert("provider".into(), json!("Edge"));
        m.insert("direction".into(), json!("INBOUND"));
        m.insert("ani".into(), json!(self.ani));
        m.insert("dnis".into(), json!(self.dnis));
        m.insert("addressTo".into(), json!(self.dnis));
        m.insert("addressFrom".into(), json!(self.ani));
        m.insert("callbackNumbers".into(), json!([]));
        m.insert("divisionId".into(), json!(self.division_id));
        m.insert("conversationExternalContactIds".into(), json!([]));
        m.insert("conversationExternalOrganizationIds".into(), json!([]));
        if let Some(q) = &p.queue_id {
            m.insert("queueId".into(), json!(q));
        }
        if let Some(u) = &p.user_id {
            m.insert("userId".into(), json!(u));
        }
        m
    }

    /// The conversation as the analytics details query returns it.
    pub fn analytics_json(&self) -> Value {
        let participants: Vec<Value> = self
            .participants
            .iter()
            .map(|p| {
                let segments: Vec<Value> = p
                    .segments
                    .iter()
                    .map(|s| {
                        let mut seg = Map::new();
                        seg.insert("segmentStart".into(), json!(iso(s.start_ms)));
                        if let Some(end) = s.end_ms {
                            seg.insert("segmentEnd".into(), json!(iso(end)));
                        }
                        seg.insert("segmentType".into(), json!(s.kind));
                        if let Some(q) = &s.queue_id {
                            seg.insert("queueId".into(), json!(q));
                        }
                        if let Some(d) = s.disconnect {
                            seg.insert("disconnectType".into(), json!(d.snapshot()));
                        }
                        seg.insert("conference".into(), json!(false));
                        Value::Object(seg)
                    })
                    .collect();
                let mut part = Map::new();
                part.insert("participantId".into(), json!(p.id));
                part.insert("participantName".into(), json!(p.name));
                part.insert("purpose".into(), json!(p.purpose.as_str()));
                if let Some(u) = &p.user_id {
                    part.insert("userId".into(), json!(u));
                }
                part.insert(
                    "sessions".into(),
                    json!([{
                        "sessionId": p.call_id,
                        "mediaType": "voice",
                        "direction": "inbound",
                        "ani": self.ani,
                        "dnis": self.dnis,
                        "segments": segments,
                    }]),
                );
                Value::Object(part)
            })
            .collect();
        let mut conv = Map::new();
        conv.insert("conversationId".into(), json!(self.id));
        conv.insert("conversationStart".into(), json!(iso(self.start_ms)));
        if let Some(end) = self.end_ms {
            conv.insert("conversationEnd".into(), json!(iso(end)));
        }
        conv.insert("originatingDirection".into(), json!("inbound"));
        conv.insert("divisionIds".into(), json!([self.division_id]));
        conv.insert("participants".into(), Value::Array(participants));
        Value::Object(conv)
    }
}

/// The snapshot topics of some queues and users: `conversations` and `calls` of each, queues
/// first.
fn conversation_topics(queues: &[&str], users: &[&str]) -> Vec<String> {
    let mut topics = Vec::with_capacity(2 * (queues.len() + users.len()));
    for q in queues {
        topics.push(format!("v2.routing.queues.{q}.conversations"));
        topics.push(format!("v2.routing.queues.{q}.calls"));
    }
    for u in users {
        topics.push(format!("v2.users.{u}.conversations"));
        topics.push(format!("v2.users.{u}.calls"));
    }
    topics
}

/// Counters behind `v2.analytics.queues.{id}.observations`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct QueueCounts {
    pub waiting: u32,
    pub alerting: u32,
    pub interacting: u32,
}

/// A `StatEventQueueTopicStatsNotification` body.
pub(crate) fn observation_json(queue_id: &str, counts: QueueCounts, at_ms: i64) -> String {
    let metric = |name: &str, count: u32| json!({ "metric": name, "stats": { "count": count } });
    json!({
        "group": { "queueId": queue_id, "mediaType": "voice" },
        "data": [{
            "interval": format!("{}/{}", iso(at_ms), iso(at_ms + 1000)),
            "metrics": [
                metric("oWaiting", counts.waiting),
                metric("oAlerting", counts.alerting),
                metric("oInteracting", counts.interacting),
            ],
        }],
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_format_matches_genesys() {
        assert_eq!(iso(1_656_965_052_131), "2022-07-04T20:04:12.131Z");
    }

    #[test]
    fn observation_shape() {
        let body: Value = serde_json::from_str(&observation_json(
            "q",
            QueueCounts {
                waiting: 2,
                alerting: 0,
                interacting: 1,
            },
            0,
        ))
        .unwrap();
        assert_eq!(body["group"]["queueId"], "q");
        assert_eq!(body["data"][0]["metrics"][0]["metric"], "oWaiting");
        assert_eq!(body["data"][0]["metrics"][0]["stats"]["count"], 2);
    }
}
