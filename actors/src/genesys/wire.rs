//! Wire types of the Genesys REST API and the notification envelope.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// `POST /oauth/token` answer.
#[derive(Debug, Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    #[serde(default)]
    pub token_type: Option<String>,
    /// Seconds.
    pub expires_in: u64,
}

/// Genesys' OAuth error shape.
#[derive(Debug, Deserialize, Default)]
pub struct OAuthError {
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub error_description: Option<String>,
}

/// A notification channel.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Channel {
    pub id: String,
    pub connect_uri: String,
    #[serde(default)]
    pub expires: Option<chrono::DateTime<chrono::Utc>>,
}

/// One topic in a subscription request.
#[derive(Debug, Serialize)]
pub struct TopicRef<'a> {
    pub id: &'a str,
}

/// `PUT …/subscriptions` answer.
#[derive(Debug, Deserialize, Default)]
pub struct SubscriptionResponse {
    #[serde(default)]
    pub entities: Vec<SubscribedTopic>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SubscribedTopic {
    pub id: String,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub rejection_reason: Option<String>,
    #[serde(default)]
    pub missing_permissions: Vec<String>,
}

impl SubscribedTopic {
    pub fn is_rejected(&self) -> bool {
        self.state.as_deref() == Some("Rejected")
    }
}

/// A page of entities (queues, users).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    #[serde(default = "Vec::new")]
    pub entities: Vec<T>,
    #[serde(default)]
    pub page_count: Option<u32>,
}

/// A named entity with an optional division (queues, users).
#[derive(Debug, Clone, Deserialize)]
pub struct NamedEntity {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub division: Option<Division>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Division {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

/// What a received text frame is, as far as the bridge's control logic cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameKind {
    /// `channel.metadata` with "WebSocket Heartbeat".
    Heartbeat,
    /// `channel.metadata` with "pong".
    Pong,
    /// Any other `channel.metadata` message.
    Metadata,
    /// `v2.system.socket_closing`: the server will close this socket soon.
    SocketClosing,
    /// `v2.system.token_revoked…` or `v2.system.no_longer_subscribed…`: the channel is useless.
    ChannelInvalidated(String),
    /// Some other `v2.system.*` message.
    OtherSystem(String),
    /// An event to deliver.
    Event,
}

/// A text frame read once: what the socket needs to sort it ([`Envelope::kind`]) and to merge
/// the copies its legs bring (topic, body and `CorrelationId` as received), borrowed from the
/// frame. The body is not built: it is skipped over and kept as its raw text.
#[derive(Debug)]
pub struct Envelope<'a> {
    topic: Option<Cow<'a, str>>,
    body: Option<&'a RawValue>,
    metadata: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct EnvelopeRaw<'a> {
    #[serde(rename = "topicName", default, borrow)]
    topic_name: Option<Text<'a>>,
    #[serde(rename = "eventBody", default, borrow)]
    event_body: Option<&'a RawValue>,
    #[serde(default, borrow)]
    metadata: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct BodyHead<'a> {
    /// Kept raw: only a string message is looked at, and any other value is not built.
    #[serde(default, borrow)]
    message: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct MetadataRaw<'a> {
    #[serde(rename = "CorrelationId", default, borrow)]
    correlation_id: Option<&'a RawValue>,
}

/// Why a frame could not be understood.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FrameError {
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("no topicName")]
    NoTopic,
}

impl<'a> Envelope<'a> {
    /// Reads a text frame's envelope (one parse; nothing of the body is copied).
    pub fn read(text: &'a [u8]) -> Result<Self, FrameError> {
        let raw: EnvelopeRaw<'a> =
            serde_json::from_slice(text).map_err(|e| FrameError::Json(e.to_string()))?;
        Ok(Self {
            topic: raw.topic_name.map(|t| t.0),
            body: raw.event_body,
            metadata: raw.metadata,
        })
    }

    /// The `topicName`, unescaped.
    pub fn topic(&self) -> Option<&str> {
        self.topic.as_deref()
    }

    /// The `eventBody` as received (`None` when absent or `null`).
    pub fn body_raw(&self) -> Option<&'a str> {
        self.body.map(RawValue::get)
    }

    /// The `metadata.CorrelationId` as received (its JSON text), when there is one. Metadata
    /// that is not an object has none.
    pub fn correlation_raw(&self) -> Option<&'a str> {
        let metadata = self.metadata?;
        serde_json::from_str::<MetadataRaw<'a>>(metadata.get())
            .ok()?
            .correlation_id
            .map(RawValue::get)
    }

    /// What the frame is, as far as the bridge's control logic cares.
    pub fn kind(&self) -> Result<FrameKind, FrameError> {
        let topic = self.topic.as_deref().ok_or(FrameError::NoTopic)?;
        let body = self.body.map(RawValue::get);
        if body.is_some_and(|b| !b.starts_with('{')) {
            return Err(FrameError::Json("eventBody is not an object".into()));
        }
        if topic == "channel.metadata" {
            let head: BodyHead<'_> = match body {
                Some(body) => {
                    serde_json::from_str(body).map_err(|e| FrameError::Json(e.to_string()))?
                }
                None => BodyHead::default(),
            };
            let message = head.message.and_then(raw_str).unwrap_or_default();
            return Ok(match &*message {
                "WebSocket Heartbeat" => FrameKind::Heartbeat,
                "pong" => FrameKind::Pong,
                _ => FrameKind::Metadata,
            });
        }
        if let Some(system) = topic.strip_prefix("v2.system.") {
            if system.starts_with("socket_closing") {
                return Ok(FrameKind::SocketClosing);
            }
            if system.starts_with("token_revoked") || system.starts_with("no_longer_subscribed") {
                return Ok(FrameKind::ChannelInvalidated(topic.to_owned()));
            }
            return Ok(FrameKind::OtherSystem(topic.to_owned()));
        }
        Ok(FrameKind::Event)
    }
}

/// Sorts a text frame into [`FrameKind`] without copying its body.
pub fn classify_frame(text: &[u8]) -> Result<FrameKind, FrameError> {
    Envelope::read(text)?.kind()
}

/// What the Kafka producer needs from an event envelope, borrowed from the frame where the
/// JSON has no escapes (it runs for every event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMeta<'a> {
    pub topic: Cow<'a, str>,
    /// The entity id the event is about: the conversation id where the body has one, else the
    /// id inside the topic name.
    pub key: Option<Cow<'a, str>>,
    pub correlation_id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct EnvelopeFull<'a> {
    #[serde(rename = "topicName", borrow)]
    topic_name: Cow<'a, str>,
    #[serde(rename = "eventBody", default, borrow)]
    event_body: Option<BodyIds<'a>>,
    #[serde(default, borrow)]
    metadata: Option<Metadata<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct BodyIds<'a> {
    #[serde(default, borrow)]
    conversation_id: Option<Text<'a>>,
    /// Kept raw: only a string id is used, and an object or array here is not built.
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct Metadata<'a> {
    #[serde(rename = "CorrelationId", default, borrow)]
    correlation_id: Option<Text<'a>>,
}

/// A string borrowed from the frame when it has no escapes. (serde borrows a `Cow<str>` field
/// only when it is the field's whole type, not inside an `Option`: hence the newtype.)
#[derive(Deserialize)]
#[serde(transparent)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

/// A raw JSON string as text: borrowed when it has no escapes.
fn raw_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    if !text.starts_with('"') {
        return None;
    }
    if !text.contains('\\') && text.len() >= 2 {
        return Some(Cow::Borrowed(&text[1..text.len() - 1]));
    }
    serde_json::from_str::<String>(text).ok().map(Cow::Owned)
}

/// Reads topic, key and correlation id of an event envelope.
pub fn event_meta(text: &[u8]) -> Result<EventMeta<'_>, FrameError> {
    fn from_topic<'a>(topic: &Cow<'a, str>) -> Option<Cow<'a, str>> {
        match topic {
            Cow::Borrowed(topic) => topic_entity_id_str(topic).map(Cow::Borrowed),
            Cow::Owned(topic) => topic_entity_id(topic).map(Cow::Owned),
        }
    }
    let envelope: EnvelopeFull<'_> =
        serde_json::from_slice(text).map_err(|e| FrameError::Json(e.to_string()))?;
    let topic = envelope.topic_name;
    let body = envelope.event_body.unwrap_or_default();
    let key = if topic.starts_with("v2.detail.events.conversation.") {
        body.conversation_id
            .map(|t| t.0)
            .or_else(|| from_topic(&topic))
    } else {
        body.conversation_id
            .map(|t| t.0)
            .or_else(|| {
                body.id
                    .filter(|_| is_conversation_topic(&topic))
                    .and_then(raw_str)
            })
            .or_else(|| from_topic(&topic))
    };
    Ok(EventMeta {
        topic,
        key,
        correlation_id: envelope
            .metadata
            .and_then(|m| m.correlation_id)
            .map(|t| t.0),
    })
}

fn is_conversation_topic(topic: &str) -> bool {
    let last = topic.rsplit('.').next().unwrap_or("");
    matches!(
        last,
        "conversations" | "calls" | "chats" | "emails" | "messages" | "callbacks"
    ) || topic.starts_with("v2.conversations.")
}

/// The id inside a topic name: the segment after the entity kind
/// (`v2.routing.queues.{id}.…`, `v2.users.{id}.…`, `v2.detail.events.conversation.{id}.…`).
pub fn topic_entity_id(topic: &str) -> Option<String> {
    topic_entity_id_str(topic).map(str::to_string)
}

/// [`topic_entity_id`], borrowed.
pub fn topic_entity_id_str(topic: &str) -> Option<&str> {
    let kinds = ["queues", "users", "conversation", "conversations", "groups"];
    let mut parts = topic.split('.');
    parts.by_ref().find(|part| kinds.contains(part))?;
    parts.next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_control_frames() {
        let heartbeat =
            br#"{"topicName":"channel.metadata","eventBody":{"message":"WebSocket Heartbeat"}}"#;
        assert_eq!(classify_frame(heartbeat), Ok(FrameKind::Heartbeat));
        let pong = br#"{"topicName":"channel.metadata","eventBody":{"message":"pong"}}"#;
        assert_eq!(classify_frame(pong), Ok(FrameKind::Pong));
        let closing = br#"{"topicName":"v2.system.socket_closing","eventBody":{"reason":"x"}}"#;
        assert_eq!(classify_frame(closing), Ok(FrameKind::SocketClosing));
        let revoked = br#"{"topicName":"v2.system.token_revoked.abc","eventBody":{}}"#;
        assert!(matches!(
            classify_frame(revoked),
            Ok(FrameKind::ChannelInvalidated(_))
        ));
        assert!(matches!(
            classify_frame(b"{not json"),
            Err(FrameError::Json(_))
        ));
        assert_eq!(
            classify_frame(br#"{"eventBody":{}}"#),
            Err(FrameError::NoTopic)
        );
        assert_eq!(
            classify_frame(br#"{"topicName":null,"eventBody":{}}"#),
            Err(FrameError::NoTopic)
        );
        // Escapes are read, not compared raw; a message that is not a string is other metadata.
        let escaped =
            br#"{"topicName":"channel.meta\u0064ata","eventBody":{"message":"po\u006eg"}}"#;
        assert_eq!(classify_frame(escaped), Ok(FrameKind::Pong));
        let odd = br#"{"topicName":"channel.metadata","eventBody":{"message":{"a":[1]}}}"#;
        assert_eq!(classify_frame(odd), Ok(FrameKind::Metadata));
        let event = br#"{"topicName":"v2.users.u1.presence","eventBody":{"a":{"b":[{"c":1}]}}}"#;
        assert_eq!(classify_frame(event), Ok(FrameKind::Event));
        let no_longer = br#"{"topicName":"v2.system.no_longer_subscribed.x","eventBody":{}}"#;
        assert_eq!(
            classify_frame(no_longer),
            Ok(FrameKind::ChannelInvalidated(
                "v2.system.no_longer_subscribed.x".into()
            ))
        );
    }

    #[test]
    fn an_envelope_is_read_once_for_its_kind_and_its_merge_identity() {
        let frame = br#"{"topicName":"v2.users.u\u0031.presence","eventBody":{"a":[1,{"b":2}]},"metadata":{"CorrelationId":"k1"}}"#;
        let envelope = Envelope::read(frame).unwrap();
        assert_eq!(envelope.topic(), Some("v2.users.u1.presence"));
        assert_eq!(envelope.body_raw(), Some(r#"{"a":[1,{"b":2}]}"#));
        assert_eq!(envelope.correlation_raw(), Some(r#""k1""#));
        assert_eq!(envelope.kind(), Ok(FrameKind::Event));
        // Metadata that is not an object, or without a CorrelationId: none, and still an event.
        for odd in [
            &br#"{"topicName":"t","eventBody":{},"metadata":7}"#[..],
            br#"{"topicName":"t","eventBody":{},"metadata":{"other":1}}"#,
            br#"{"topicName":"t","eventBody":{}}"#,
        ] {
            let envelope = Envelope::read(odd).unwrap();
            assert_eq!(envelope.correlation_raw(), None);
            assert_eq!(envelope.kind(), Ok(FrameKind::Event));
        }
        // A body that is not an object is a malformed frame, as a missing topic is.
        let scalar = Envelope::read(br#"{"topicName":"t","eventBody":5}"#).unwrap();
        assert!(matches!(scalar.kind(), Err(FrameError::Json(_))));
        let null_body = Envelope::read(br#"{"topicName":"t","eventBody":null}"#).unwrap();
        assert_eq!(null_body.body_raw(), None);
        assert_eq!(null_body.kind(), Ok(FrameKind::Event));
        let no_topic = Envelope::read(br#"{"eventBody":{}}"#).unwrap();
        assert_eq!(no_topic.kind(), Err(FrameError::NoTopic));
    }

    #[test]
    fn keys_events_by_the_entity_they_are_about() {
        let snapshot = br#"{"topicName":"v2.routing.queues.q1.conversations","version":"2","eventBody":{"id":"c1","participants":[]},"metadata":{"CorrelationId":"k"}}"#;
        let meta = event_meta(snapshot).unwrap();
        assert_eq!(meta.key.as_deref(), Some("c1"));
        assert_eq!(meta.correlation_id.as_deref(), Some("k"));
        let detail = br#"{"topicName":"v2.detail.events.conversation.c2.customer.end","eventBody":{"conversationId":"c2","eventTime":1}}"#;
        assert_eq!(event_meta(detail).unwrap().key.as_deref(), Some("c2"));
        let stats = br#"{"topicName":"v2.analytics.queues.q9.observations","eventBody":{"group":{"queueId":"q9"}}}"#;
        assert_eq!(event_meta(stats).unwrap().key.as_deref(), Some("q9"));
        let user = br#"{"topicName":"v2.users.u1.presence","eventBody":{"id":"p"}}"#;
        assert_eq!(event_meta(user).unwrap().key.as_deref(), Some("u1"));
        // An id that is not a string is not a key; an escaped one is unescaped.
        let numeric = br#"{"topicName":"v2.routing.queues.q1.conversations","eventBody":{"id":7}}"#;
        assert_eq!(event_meta(numeric).unwrap().key.as_deref(), Some("q1"));
        let nested =
            br#"{"topicName":"v2.routing.queues.q1.conversations","eventBody":{"id":{"a":[1]}}}"#;
        assert_eq!(event_meta(nested).unwrap().key.as_deref(), Some("q1"));
        let escaped =
            br#"{"topicName":"v2.routing.queues.q1.conversations","eventBody":{"id":"c\u0031"}}"#;
        assert_eq!(event_meta(escaped).unwrap().key.as_deref(), Some("c1"));
        // Escapes anywhere (topic, key, correlation id): unescaped copies, the same values.
        let escaped_all = br#"{"topicName":"v2.users.u\u0031.presence","eventBody":{"id":"p"},"metadata":{"CorrelationId":"k\u0039"}}"#;
        let meta = event_meta(escaped_all).unwrap();
        assert_eq!(meta.topic, "v2.users.u1.presence");
        assert_eq!(meta.key.as_deref(), Some("u1"));
        assert_eq!(meta.correlation_id.as_deref(), Some("k9"));
        let borrowed = event_meta(snapshot).unwrap();
        assert!(matches!(borrowed.topic, Cow::Borrowed(_)));
        assert!(matches!(borrowed.key, Some(Cow::Borrowed(_))));
        assert!(matches!(borrowed.correlation_id, Some(Cow::Borrowed(_))));
        let detail_key = event_meta(detail).unwrap().key;
        assert!(matches!(detail_key, Some(Cow::Borrowed("c2"))));
        assert_eq!(
            topic_entity_id("v2.users.u1.presence").as_deref(),
            Some("u1")
        );
        assert_eq!(topic_entity_id("v2.users"), None);
        assert_eq!(topic_entity_id("v2.system.socket_closing"), None);
    }
}
