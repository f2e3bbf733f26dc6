//! A lifecycle record: the JSON value written to the lifecycle topic, and the payload of its
//! spool record.

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::spool::RecordKind;

/// Spool record kind of a lifecycle record: the producer sends it to the lifecycle topic.
pub const LIFECYCLE: RecordKind = RecordKind::Reserved(4);

/// Epoch milliseconds the way Genesys writes them: `2022-07-04T20:04:12.131Z`.
pub fn iso(ms: i64) -> String {
    let dt: DateTime<Utc> = Utc.timestamp_millis_opt(ms).single().unwrap_or_default();
    dt.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    #[serde(rename = "conversation.started")]
    Started,
    #[serde(rename = "conversation.ended")]
    Ended,
    #[serde(rename = "conversation.wrapup")]
    Wrapup,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Started => "conversation.started",
            Kind::Ended => "conversation.ended",
            Kind::Wrapup => "conversation.wrapup",
        }
    }

    /// The deterministic id of a record: the same conversation and type always get the same
    /// one, whoever derived it, so consumers can deduplicate what at-least-once delivery repeats.
    pub fn record_id(self, conversation_id: &str, participant_id: Option<&str>) -> String {
        match (self, participant_id) {
            (Kind::Started, _) => format!("{conversation_id}:started"),
            (Kind::Ended, _) => format!("{conversation_id}:ended"),
            (Kind::Wrapup, Some(p)) => format!("{conversation_id}:wrapup:{p}"),
            (Kind::Wrapup, None) => format!("{conversation_id}:wrapup"),
        }
    }
}

/// What derived a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Conversation snapshots received on the WebSockets.
    Stream,
    /// The analytics details query that filled a gap.
    Backfill,
    /// The scheduled reconciliation against the analytics API.
    Reconciliation,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Stream => "stream",
            Source::Backfill => "backfill",
            Source::Reconciliation => "reconciliation",
        }
    }
}

/// A participant's wrap-up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WrapupRecord {
    pub participant_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
}

/// One `conversation.started`, `conversation.ended` or `conversation.wrapup` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LifecycleRecord {
    /// `{conversationId}:started`, `{conversationId}:ended`, `{conversationId}:wrapup:{participantId}`.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    pub conversation_id: String,
    pub source: Source,
    /// From the snapshot (the earliest connect time in it) or the analytics `conversationStart`.
    #[serde(default)]
    pub start_time: Option<String>,
    /// `ended` only: the latest participant end, or the analytics `conversationEnd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    #[serde(default)]
    pub queue_ids: Vec<String>,
    #[serde(default)]
    pub user_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disconnect_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ani: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dnis: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrapup: Option<WrapupRecord>,
    /// When the bridge derived the record (its clock).
    pub observed_at: String,
}

/// The fields the producer needs from a lifecycle payload, read without the rest.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LifecycleHead {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    pub conversation_id: String,
    pub source: Source,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_with_its_documented_names() {
        let record = LifecycleRecord {
            id: Kind::Ended.record_id("c1", None),
            kind: Kind::Ended,
            conversation_id: "c1".into(),
            source: Source::Stream,
            start_time: Some(iso(1_656_965_052_131)),
            end_time: Some(iso(1_656_965_240_528)),
            duration_ms: Some(188_397),
            media_type: Some("voice".into()),
            direction: Some("inbound".into()),
            queue_ids: vec!["q1".into()],
            user_ids: vec!["u1".into()],
            disconnect_type: Some("endpoint".into()),
            ani: None,
            dnis: None,
            wrapup: None,
            observed_at: iso(1_656_965_240_600),
        };
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["type"], "conversation.ended");
        assert_eq!(json["id"], "c1:ended");
        assert_eq!(json["conversationId"], "c1");
        assert_eq!(json["startTime"], "2022-07-04T20:04:12.131Z");
        assert_eq!(json["durationMs"], 188_397);
        assert_eq!(json["queueIds"][0], "q1");
        assert_eq!(json["source"], "stream");
        assert!(json.get("ani").is_none());
        let back: LifecycleRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, record);
    }
}
