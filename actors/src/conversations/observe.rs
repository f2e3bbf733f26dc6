//! What one conversation snapshot or one analytics conversation says about a conversation,
//! read without trusting any of it: missing fields, unknown states and absurd times leave the
//! observation incomplete, never wrong.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Communications of a participant, by the snapshot's list name, and the media type a
/// conversation with them has (the analytics spelling).
const MEDIA: [(&str, &str); 9] = [
    ("calls", "voice"),
    ("callbacks", "callback"),
    ("chats", "chat"),
    ("emails", "email"),
    ("messages", "message"),
    ("cobrowsesessions", "cobrowse"),
    ("screenshares", "screenshare"),
    ("socialExpressions", "social"),
    ("videos", "video"),
];

/// Topic names after the entity id that carry conversation snapshots.
const SNAPSHOT_SUFFIXES: [&str; 10] = [
    "conversations",
    "calls",
    "callbacks",
    "chats",
    "emails",
    "messages",
    "cobrowsesessions",
    "screenshares",
    "socialexpressions",
    "videos",
];

/// One participant as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParticipantView {
    pub id: String,
    pub purpose: Option<String>,
    pub queue_id: Option<String>,
    pub user_id: Option<String>,
    /// Every communication of the participant is disconnected or terminated (or, without any
    /// communication, the participant has an end time).
    pub terminal: bool,
    pub end_ms: Option<i64>,
    pub disconnect_type: Option<String>,
    pub wrapup: Option<WrapupView>,
}

/// A participant's wrap-up, once its code is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrapupView {
    pub code: String,
    pub name: Option<String>,
    pub duration_ms: Option<i64>,
    pub end_ms: Option<i64>,
}

/// What a snapshot says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotView {
    pub conversation_id: String,
    /// The earliest time in the snapshot (a participant's or communication's connect or
    /// alerting start): the customer's connect for an inbound conversation.
    pub start_ms: Option<i64>,
    pub media_type: Option<String>,
    pub direction: Option<String>,
    pub ani: Option<String>,
    pub dnis: Option<String>,
    pub participants: Vec<ParticipantView>,
}

/// What an analytics conversation (details query) says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnalyticsView {
    pub conversation_id: String,
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
    pub media_type: Option<String>,
    pub direction: Option<String>,
    pub ani: Option<String>,
    pub dnis: Option<String>,
    pub queue_ids: Vec<String>,
    pub user_ids: Vec<String>,
    /// The disconnect type of the customer's last segment, else of the last segment to end.
    pub disconnect_type: Option<String>,
}

/// Whether a Genesys topic carries conversation snapshots (`v2.routing.queues.{id}.…` and
/// `v2.users.{id}.conversations…`).
pub fn is_snapshot_topic(topic: &str) -> bool {
    let rest = if let Some(rest) = topic.strip_prefix("v2.routing.queues.") {
        rest
    } else if let Some(rest) = topic.strip_prefix("v2.users.") {
        rest
    } else {
        return false;
    };
    let mut segments = rest.split('.');
    let _id = segments.next();
    segments
        .next()
        .is_some_and(|kind| SNAPSHOT_SUFFIXES.contains(&kind))
        && segments.all(|kind| SNAPSHOT_SUFFIXES.contains(&kind))
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "topicName", borrow)]
    topic_name: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "eventBody", borrow)]
    event_body: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Snapshot {
    id: Option<String>,
    participants: Option<Vec<SnapParticipant>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct SnapParticipant {
    id: Option<String>,
    purpose: Option<String>,
    queue_id: Option<String>,
    user_id: Option<String>,
    connected_time: Option<String>,
    start_time: Option<String>,
    end_time: Option<String>,
    ani: Option<String>,
    dnis: Option<String>,
    wrapup: Option<SnapWrapup>,
    calls: Vec<Communication>,
    callbacks: Vec<Communication>,
    chats: Vec<Communication>,
    emails: Vec<Communication>,
    messages: Vec<Communication>,
    cobrowsesessions: Vec<Communication>,
    screenshares: Vec<Communication>,
    social_expressions: Vec<Communication>,
    videos: Vec<Communication>,
}

impl SnapParticipant {
    fn media(&self) -> [&[Communication]; 9] {
        [
            &self.calls,
            &self.callbacks,
            &self.chats,
            &self.emails,
            &self.messages,
            &self.cobrowsesessions,
            &self.screenshares,
            &self.social_expressions,
            &self.videos,
        ]
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Communication {
    state: Option<String>,
    disconnect_type: Option<String>,
    direction: Option<String>,
    connected_time: Option<String>,
    start_alerting_time: Option<String>,
    disconnected_time: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct SnapWrapup {
    code: Option<String>,
    name: Option<String>,
    duration_seconds: Option<i64>,
    end_time: Option<String>,
}

/// Epoch milliseconds of a Genesys timestamp; `None` for anything unparseable or outside
/// years 2000..=9999 (absurd numbers from the network are not times).
pub fn parse_time(text: Option<&str>) -> Option<i64> {
    let parsed = DateTime::parse_from_rfc3339(text?).ok()?;
    let ms = parsed.with_timezone(&Utc).timestamp_millis();
    (946_684_800_000..=253_402_300_799_999)
        .contains(&ms)
        .then_some(ms)
}

fn is_terminal(state: Option<&str>) -> bool {
    matches!(
        state.map(str::to_ascii_lowercase).as_deref(),
        Some("disconnected" | "terminated")
    )
}

/// The Genesys topic of an event frame and its body, if the frame is a notification envelope.
pub fn envelope(frame: &[u8]) -> Option<(std::borrow::Cow<'_, str>, &RawValue)> {
    let envelope: Envelope<'_> = serde_json::from_slice(frame).ok()?;
    Some((envelope.topic_name?, envelope.event_body?))
}

/// Reads a conversation snapshot frame. `None` when the frame is not one (another topic, no
/// conversation id, no participants), or is not JSON.
pub fn snapshot(frame: &[u8]) -> Option<SnapshotView> {
    let (topic, body) = envelope(frame)?;
    if !is_snapshot_topic(&topic) {
        return None;
    }
    let snapshot: Snapshot = serde_json::from_str(body.get()).ok()?;
    let conversation_id = snapshot.id.filter(|id| !id.is_empty())?;
    let participants = snapshot.participants?;
    let mut view = SnapshotView {
        conversation_id,
        start_ms: None,
        media_type: None,
        direction: None,
        ani: None,
        dnis: None,
        participants: Vec::with_capacity(participants.len()),
    };
    let mut earliest = |ms: Option<i64>| {
        if let Some(ms) = ms {
            view.start_ms = Some(view.start_ms.map_or(ms, |s: i64| s.min(ms)));
        }
    };
    for p in &participants {
        earliest(parse_time(p.connected_time.as_deref()));
        earliest(parse_time(p.start_time.as_deref()));
        for comms in p.media() {
            for c in comms {
                earliest(parse_time(c.connected_time.as_deref()));
                earliest(parse_time(c.start_alerting_time.as_deref()));
            }
        }
    }
    // The customer decides media and direction; else the first participant that has them.
    let mut ordered: Vec<&SnapParticipant> = participants.iter().collect();
    ordered.sort_by_key(|p| p.purpose.as_deref() != Some("customer"));
    for p in &ordered {
        if view.media_type.is_none() {
            view.media_type = MEDIA
                .iter()
                .zip(p.media())
                .find(|(_, comms)| !comms.is_empty())
                .map(|((_, media), _)| (*media).to_owned());
        }
        if view.direction.is_none() {
            view.direction = p
                .media()
                .iter()
                .flat_map(|comms| comms.iter())
                .find_map(|c| c.direction.clone());
        }
        if view.ani.is_none() {
            view.ani = p.ani.clone();
        }
        if view.dnis.is_none() {
            view.dnis = p.dnis.clone();
        }
    }
    for p in participants {
        let Some(id) = p.id.clone().filter(|id| !id.is_empty()) else {
            continue;
        };
        let comms: Vec<&Communication> = p.media().into_iter().flatten().collect();
        let end_ms = parse_time(p.end_time.as_deref()).or_else(|| {
            comms
                .iter()
                .filter_map(|c| parse_time(c.disconnected_time.as_deref()))
                .max()
        });
        let terminal = if comms.is_empty() {
            end_ms.is_some()
        } else {
            comms.iter().all(|c| is_terminal(c.state.as_deref()))
        };
        let disconnect_type = comms.iter().rev().find_map(|c| c.disconnect_type.clone());
        let wrapup = p.wrapup.as_ref().and_then(|w| {
            Some(WrapupView {
                code: w.code.clone().filter(|c| !c.is_empty())?,
                name: w.name.clone(),
                duration_ms: w
                    .duration_seconds
                    .filter(|s| (0..=31_536_000).contains(s))
                    .map(|s| s * 1000),
                end_ms: parse_time(w.end_time.as_deref()),
            })
        });
        view.participants.push(ParticipantView {
            id,
            purpose: p.purpose,
            queue_id: p.queue_id.filter(|q| !q.is_empty()),
            user_id: p.user_id.filter(|u| !u.is_empty()),
            terminal,
            end_ms,
            disconnect_type,
            wrapup,
        });
    }
    Some(view)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnalyticsConversation {
    conversation_id: Option<String>,
    conversation_start: Option<String>,
    conversation_end: Option<String>,
    originating_direction: Option<String>,
    #[serde(default)]
    participants: Vec<AnalyticsParticipant>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct AnalyticsParticipant {
    purpose: Option<String>,
    user_id: Option<String>,
    sessions: Vec<AnalyticsSession>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct AnalyticsSession {
    media_type: Option<String>,
    direction: Option<String>,
    ani: Option<String>,
    dnis: Option<String>,
    segments: Vec<AnalyticsSegment>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct AnalyticsSegment {
    segment_end: Option<String>,
    queue_id: Option<String>,
    disconnect_type: Option<String>,
}

/// Reads an analytics conversation (`AnalyticsConversationWithoutAttributes`).
pub fn analytics(conversation: &str) -> Option<AnalyticsView> {
    let conv: AnalyticsConversation = serde_json::from_str(conversation).ok()?;
    let conversation_id = conv.conversation_id.filter(|id| !id.is_empty())?;
    let mut view = AnalyticsView {
        conversation_id,
        start_ms: parse_time(conv.conversation_start.as_deref()),
        end_ms: parse_time(conv.conversation_end.as_deref()),
        media_type: None,
        direction: conv.originating_direction,
        ani: None,
        dnis: None,
        queue_ids: Vec::new(),
        user_ids: Vec::new(),
        disconnect_type: None,
    };
    let mut last_end: Option<(i64, bool, String)> = None;
    for p in &conv.participants {
        let customer = p.purpose.as_deref() == Some("customer");
        if let Some(user) = p.user_id.as_ref().filter(|u| !u.is_empty()) {
            if !view.user_ids.contains(user) {
                view.user_ids.push(user.clone());
            }
        }
        for s in &p.sessions {
            if view.media_type.is_none() || customer {
                view.media_type = s.media_type.clone().or(view.media_type.take());
            }
            if view.ani.is_none() {
                view.ani = s.ani.clone();
            }
            if view.dnis.is_none() {
                view.dnis = s.dnis.clone();
            }
            if view.direction.is_none() {
                view.direction = s.direction.clone();
            }
            for seg in &s.segments {
                if let Some(queue) = seg.queue_id.as_ref().filter(|q| !q.is_empty()) {
                    if !view.queue_ids.contains(queue) {
                        view.queue_ids.push(queue.clone());
                    }
                }
                if let (Some(end), Some(kind)) =
                    (parse_time(seg.segment_end.as_deref()), &seg.disconnect_type)
                {
                    let better = match &last_end {
                        None => true,
                        Some((at, was_customer, _)) => {
                            (customer && !was_customer) || (customer == *was_customer && end >= *at)
                        }
                    };
                    if better {
                        last_end = Some((end, customer, kind.clone()));
                    }
                }
            }
        }
    }
    view.disconnect_type = last_end.map(|(_, _, kind)| kind);
    Some(view)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(topic: &str, body: &str) -> Vec<u8> {
        format!(r#"{{"topicName":"{topic}","version":"2","eventBody":{body}}}"#).into_bytes()
    }

    const SNAPSHOT: &str = r#"{"id":"c1","participants":[
        {"id":"p1","purpose":"customer","queueId":"q1","connectedTime":"2022-07-04T20:04:12.131Z",
         "ani":"tel:+1","dnis":"tel:+2",
         "calls":[{"state":"connected","direction":"inbound","connectedTime":"2022-07-04T20:04:12.131Z"}]},
        {"id":"p2","purpose":"agent","userId":"u1","endTime":"2022-07-04T20:07:20.528Z",
         "wrapup":{"code":"w1","name":"Resolved","durationSeconds":12,"endTime":"2022-07-04T20:07:40.000Z"},
         "calls":[{"state":"disconnected","disconnectType":"client"}]}]}"#;

    #[test]
    fn snapshot_topics_are_queue_and_user_conversation_topics() {
        assert!(is_snapshot_topic("v2.routing.queues.q1.conversations"));
        assert!(is_snapshot_topic(
            "v2.routing.queues.q1.conversations.calls"
        ));
        assert!(is_snapshot_topic("v2.routing.queues.q1.calls"));
        assert!(is_snapshot_topic("v2.users.u1.conversations"));
        assert!(is_snapshot_topic("v2.users.u1.conversations.chats"));
        assert!(!is_snapshot_topic("v2.routing.queues.q1.observations"));
        assert!(!is_snapshot_topic("v2.users.u1.presence"));
        assert!(!is_snapshot_topic(
            "v2.detail.events.conversation.c1.customer.end"
        ));
        assert!(!is_snapshot_topic("v2.analytics.queues.q1.observations"));
    }

    #[test]
    fn a_snapshot_is_read_field_by_field() {
        let view = snapshot(&frame("v2.routing.queues.q1.conversations", SNAPSHOT)).unwrap();
        assert_eq!(view.conversation_id, "c1");
        assert_eq!(view.start_ms, parse_time(Some("2022-07-04T20:04:12.131Z")));
        assert_eq!(view.media_type.as_deref(), Some("voice"));
        assert_eq!(view.direction.as_deref(), Some("inbound"));
        assert_eq!(view.ani.as_deref(), Some("tel:+1"));
        assert_eq!(view.participants.len(), 2);
        assert!(!view.participants[0].terminal);
        assert!(view.participants[1].terminal);
        assert_eq!(
            view.participants[1].disconnect_type.as_deref(),
            Some("client")
        );
        let wrapup = view.participants[1].wrapup.as_ref().unwrap();
        assert_eq!(wrapup.code, "w1");
        assert_eq!(wrapup.duration_ms, Some(12_000));
    }

    #[test]
    fn other_topics_and_broken_bodies_are_not_snapshots() {
        assert!(snapshot(&frame("v2.routing.queues.q1.observations", SNAPSHOT)).is_none());
        assert!(snapshot(&frame("v2.users.u1.conversations", r#"{"id":"c1"}"#)).is_none());
        assert!(snapshot(&frame(
            "v2.users.u1.conversations",
            r#"{"participants":[]}"#
        ))
        .is_none());
        assert!(snapshot(&frame("v2.users.u1.conversations", r#"[1,2]"#)).is_none());
        assert!(snapshot(b"not json").is_none());
        assert!(snapshot(br#"{"topicName":"v2.users.u1.conversations"}"#).is_none());
    }

    #[test]
    fn absurd_times_are_not_times() {
        assert_eq!(parse_time(Some("1970-01-01T00:00:00.000Z")), None);
        assert_eq!(parse_time(Some("yesterday")), None);
        assert_eq!(parse_time(None), None);
        assert!(parse_time(Some("2026-12-02T10:00:00.000Z")).is_some());
        let body = r#"{"id":"c1","participants":[{"id":"p1","connectedTime":"0001-01-01T00:00:00Z",
            "calls":[{"state":"connected"}]}]}"#;
        let view = snapshot(&frame("v2.users.u1.conversations", body)).unwrap();
        assert_eq!(view.start_ms, None);
    }

    #[test]
    fn a_participant_without_communications_is_terminal_once_it_has_an_end() {
        let body = r#"{"id":"c1","participants":[{"id":"p1"},{"id":"p2","endTime":"2026-12-02T10:00:00.000Z"}]}"#;
        let view = snapshot(&frame("v2.users.u1.conversations", body)).unwrap();
        assert!(!view.participants[0].terminal);
        assert!(view.participants[1].terminal);
    }

    #[test]
    fn an_analytics_conversation_is_read() {
        let body = r#"{"conversationId":"c1","conversationStart":"2026-12-02T10:00:00.000Z",
          "conversationEnd":"2026-12-02T10:05:00.000Z","originatingDirection":"inbound",
          "participants":[
            {"purpose":"customer","sessions":[{"mediaType":"voice","ani":"tel:+1","dnis":"tel:+2",
              "segments":[{"segmentEnd":"2026-12-02T10:05:00.000Z","queueId":"q1","disconnectType":"endpoint"}]}]},
            {"purpose":"agent","userId":"u1","sessions":[{"mediaType":"voice",
              "segments":[{"segmentEnd":"2026-12-02T10:05:00.000Z","queueId":"q1","disconnectType":"peer"}]}]}]}"#;
        let view = analytics(body).unwrap();
        assert_eq!(view.conversation_id, "c1");
        assert_eq!(view.end_ms, parse_time(Some("2026-12-02T10:05:00.000Z")));
        assert_eq!(view.queue_ids, vec!["q1"]);
        assert_eq!(view.user_ids, vec!["u1"]);
        assert_eq!(view.disconnect_type.as_deref(), Some("endpoint"));
        assert_eq!(view.media_type.as_deref(), Some("voice"));
        assert!(analytics(r#"{"conversationStart":"x"}"#).is_none());
    }
}
