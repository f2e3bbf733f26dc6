//! The exact text of every frame the WebSocket sends.
//!
//! Event and system frames use the envelope
//! `{"topicName":…,"version":"2","eventBody":{…},"metadata":{"CorrelationId":"…"}}`.
//! Heartbeats and pongs are the literal `channel.metadata` frames Genesys sends (no version, no
//! metadata), as documented in `genesys-api.md` §4.

use std::sync::Arc;

use serde::Serialize;

pub(crate) const METADATA_TOPIC: &str = "channel.metadata";
pub(crate) const HEARTBEAT_FRAME: &str =
    r#"{"topicName":"channel.metadata","eventBody":{"message":"WebSocket Heartbeat"}}"#;
pub(crate) const PONG_FRAME: &str =
    r#"{"topicName":"channel.metadata","eventBody":{"message":"pong"}}"#;

/// Builds the envelope around an already-serialised JSON body.
pub(crate) fn envelope(topic: &str, body_json: &str, correlation_id: &str) -> Arc<str> {
    let mut s = String::with_capacity(topic.len() + body_json.len() + 120);
    s.push_str(r#"{"topicName":"#);
    push_json_str(&mut s, topic);
    s.push_str(r#","version":"2","eventBody":"#);
    s.push_str(body_json);
    s.push_str(r#","metadata":{"CorrelationId":"#);
    push_json_str(&mut s, correlation_id);
    s.push_str("}}");
    Arc::from(s)
}

fn push_json_str(out: &mut String, value: &str) {
    out.push_str(&serde_json::to_string(value).expect("string serialises"));
}

/// Is this client text frame the application-level health check `{"message":"ping"}`?
pub(crate) fn is_ping(text: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Ping<'a> {
        message: &'a str,
    }
    serde_json::from_str::<Ping<'_>>(text).is_ok_and(|p| p.message == "ping")
}

/// Body of `v2.system.*` frames: the SDK model `SystemMessageSystemMessage`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SystemMessage {
    pub channel_id: String,
    pub system_topic_type: String,
    pub correlation_id: String,
    pub organization_id: String,
    /// Channels made with client credentials have no user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    pub oauth_client_id: String,
    pub reason: String,
    pub message: String,
    pub data: serde_json::Value,
}

/// A system frame and the topic it is published on.
pub(crate) fn system_frame(topic: &str, body: &SystemMessage) -> Arc<str> {
    let json = serde_json::to_string(body).expect("system message serialises");
    envelope(topic, &json, &body.correlation_id)
}

/// The kinds of broken frames fault injection can send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MalformedKind {
    /// A text frame that is not JSON (a truncated envelope).
    InvalidJson,
    /// A binary frame (Genesys only sends text).
    Binary,
    /// A valid envelope padded to exactly `size` bytes.
    Oversized,
    /// A valid envelope on a topic nobody subscribed to and no template matches.
    UnknownTopic,
    /// An envelope without `topicName` and `eventBody`.
    MissingFields,
}

/// Text (or bytes, for [`MalformedKind::Binary`]) of a malformed frame.
pub(crate) fn malformed(
    kind: MalformedKind,
    topic: &str,
    correlation_id: &str,
    size: usize,
) -> (Arc<str>, Option<bytes::Bytes>) {
    let text: String = match kind {
        MalformedKind::InvalidJson => {
            let full = envelope(topic, r#"{"id":"broken"}"#, correlation_id);
            full[..full.len() / 2].to_owned()
        }
        MalformedKind::Binary => {
            let full = envelope(topic, r#"{"id":"binary"}"#, correlation_id);
            let bytes = bytes::Bytes::copy_from_slice(full.as_bytes());
            return (full, Some(bytes));
        }
        MalformedKind::Oversized => {
            let head = envelope(topic, r#"{"padding":""}"#, correlation_id);
            let pad = size.saturating_sub(head.len());
            let body = format!(r#"{{"padding":"{}"}}"#, "x".repeat(pad));
            envelope(topic, &body, correlation_id).to_string()
        }
        MalformedKind::UnknownTopic => envelope(
            "v2.sim.unknown.topic",
            r#"{"message":"nobody subscribed to this"}"#,
            correlation_id,
        )
        .to_string(),
        MalformedKind::MissingFields => {
            format!(r#"{{"version":"2","metadata":{{"CorrelationId":"{correlation_id}"}}}}"#)
        }
    };
    (Arc::from(text), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_is_valid_json_with_fields_in_genesys_order() {
        let frame = envelope("v2.users.u1.conversations", r#"{"id":"c1"}"#, "corr-1");
        assert_eq!(
            &*frame,
            r#"{"topicName":"v2.users.u1.conversations","version":"2","eventBody":{"id":"c1"},"metadata":{"CorrelationId":"corr-1"}}"#
        );
        let v: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(v["metadata"]["CorrelationId"], "corr-1");
    }

    #[test]
    fn ping_detection() {
        assert!(is_ping(r#"{"message":"ping"}"#));
        assert!(is_ping(r#"{ "message" : "ping" }"#));
        assert!(!is_ping(r#"{"message":"pong"}"#));
        assert!(!is_ping("ping"));
    }

    #[test]
    fn malformed_frames() {
        let (t, _) = malformed(MalformedKind::InvalidJson, "a.b", "c", 0);
        assert!(serde_json::from_str::<serde_json::Value>(&t).is_err());
        let (t, _) = malformed(MalformedKind::Oversized, "a.b", "c", 100_000);
        assert_eq!(t.len(), 100_000);
        assert!(serde_json::from_str::<serde_json::Value>(&t).is_ok());
        let (_, b) = malformed(MalformedKind::Binary, "a.b", "c", 0);
        assert!(b.is_some());
        let (t, _) = malformed(MalformedKind::MissingFields, "a.b", "c", 0);
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        assert!(v.get("topicName").is_none() && v.get("eventBody").is_none());
    }
}
