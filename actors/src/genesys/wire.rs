//! Wire types of the Genesys REST API and the notification envelope.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::spool::{EventIndex, Span};

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
///
/// Read with [`Envelope::read`], the body is kept as its raw text (what the merge of two legs
/// compares); read with [`Envelope::read_ids`], only the body's own members the bridge looks at
/// are kept (the Kafka key's ids, a `channel.metadata` message), in the same one pass. Either
/// way [`Envelope::index`] tells the producer where topic, key and `CorrelationId` lie in the
/// frame, so it does not parse it again.
#[derive(Debug)]
pub struct Envelope<'a> {
    topic: Option<Cow<'a, str>>,
    body: Body<'a>,
    metadata: Option<&'a RawValue>,
}

#[derive(Debug)]
enum Body<'a> {
    /// Absent or `null`.
    Absent,
    Raw(&'a RawValue),
    Ids(BodyIdsRaw<'a>),
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

#[derive(Deserialize)]
struct EnvelopeIds<'a> {
    #[serde(rename = "topicName", default, borrow)]
    topic_name: Option<Text<'a>>,
    #[serde(rename = "eventBody", default, borrow)]
    event_body: Option<BodyIdsRaw<'a>>,
    #[serde(default, borrow)]
    metadata: Option<&'a RawValue>,
}

/// The body's members the bridge reads, each kept raw (nothing else of the body is built). A
/// body that is not an object is refused, as [`Envelope::kind`] refuses a raw one; a member
/// given twice is noted, not refused, so that the frame is sorted as the raw read sorts it and
/// the producer's own parse decides about it ([`Envelope::index`] gives none).
#[derive(Debug, Default, Clone, Copy)]
struct BodyIdsRaw<'a> {
    conversation_id: Option<&'a RawValue>,
    id: Option<&'a RawValue>,
    message: Option<&'a RawValue>,
    /// `conversationId` or `id` given twice.
    repeated_id: bool,
    /// `message` given twice.
    repeated_message: bool,
}

impl<'de: 'a, 'a> Deserialize<'de> for BodyIdsRaw<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(field_identifier)]
        enum Member {
            #[serde(rename = "conversationId")]
            ConversationId,
            #[serde(rename = "id")]
            Id,
            #[serde(rename = "message")]
            Message,
            #[serde(other)]
            Other,
        }
        struct Visit<'a>(std::marker::PhantomData<BodyIdsRaw<'a>>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = BodyIdsRaw<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an eventBody object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut body = BodyIdsRaw::default();
                while let Some(member) = map.next_key::<Member>()? {
                    let (slot, repeated) = match member {
                        Member::ConversationId => {
                            (&mut body.conversation_id, &mut body.repeated_id)
                        }
                        Member::Id => (&mut body.id, &mut body.repeated_id),
                        Member::Message => (&mut body.message, &mut body.repeated_message),
                        Member::Other => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                            continue;
                        }
                    };
                    // `null` reads as absent, as an `Option` field does.
                    let value = map.next_value::<Option<&'de RawValue>>()?;
                    if slot.is_some() {
                        *repeated = true;
                    } else {
                        *slot = value;
                    }
                }
                Ok(body)
            }
        }
        deserializer.deserialize_map(Visit(std::marker::PhantomData))
    }
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
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum FrameError {
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("no topicName")]
    NoTopic,
}

impl<'a> Envelope<'a> {
    /// Reads a text frame's envelope, keeping the body's raw text (one parse; nothing of the
    /// body is copied). For the merge, which compares bodies.
    pub fn read(text: &'a [u8]) -> Result<Self, FrameError> {
        let raw: EnvelopeRaw<'a> =
            serde_json::from_slice(text).map_err(|e| FrameError::Json(e.to_string()))?;
        Ok(Self {
            topic: raw.topic_name.map(|t| t.0),
            body: raw.event_body.map_or(Body::Absent, Body::Raw),
            metadata: raw.metadata,
        })
    }

    /// Reads a text frame's envelope and the body's ids in one pass (the body's text is not
    /// kept). A body that is not an object is a malformed frame here already.
    pub fn read_ids(text: &'a [u8]) -> Result<Self, FrameError> {
        let raw: EnvelopeIds<'a> =
            serde_json::from_slice(text).map_err(|e| FrameError::Json(e.to_string()))?;
        Ok(Self {
            topic: raw.topic_name.map(|t| t.0),
            body: raw.event_body.map_or(Body::Absent, Body::Ids),
            metadata: raw.metadata,
        })
    }

    /// Where the producer's fields lie in `frame` (the bytes this envelope was read from):
    /// topic, Kafka key and `CorrelationId`, exactly as [`event_meta`] reads them. `None` when
    /// any of them is not a plain string in the frame (an escape, a number, a member given
    /// twice, metadata that is not an object): the producer then parses the frame itself, and
    /// decides about it as before.
    pub fn index(&self, frame: &[u8]) -> Option<EventIndex> {
        let Some(Cow::Borrowed(topic)) = &self.topic else {
            return None;
        };
        let correlation = match self.metadata {
            None => None,
            Some(metadata) => {
                let metadata: MetadataRaw<'_> = serde_json::from_str(metadata.get()).ok()?;
                match metadata.correlation_id {
                    None => None,
                    Some(raw) => Some(plain_str(raw)?),
                }
            }
        };
        let ids = match self.body {
            Body::Absent => BodyIdsRaw::default(),
            Body::Ids(ids) => ids,
            Body::Raw(raw) => serde_json::from_str(raw.get()).ok()?,
        };
        if ids.repeated_id {
            return None;
        }
        let conversation_id = match ids.conversation_id {
            None => None,
            Some(raw) => Some(plain_str(raw)?),
        };
        let key = if topic.starts_with("v2.detail.events.conversation.") {
            conversation_id.or_else(|| topic_entity_id_str(topic))
        } else {
            let id = match ids.id {
                Some(raw) if conversation_id.is_none() && is_conversation_topic(topic) => {
                    // Only a string is a key; any other value is passed over.
                    if raw.get().starts_with('"') {
                        Some(plain_str(raw)?)
                    } else {
                        None
                    }
                }
                _ => None,
            };
            conversation_id
                .or(id)
                .or_else(|| topic_entity_id_str(topic))
        };
        Some(EventIndex {
            topic: Span::of(topic, frame)?,
            key: match key {
                Some(key) => Some(Span::of(key, frame)?),
                None => None,
            },
            correlation: match correlation {
                Some(correlation) => Some(Span::of(correlation, frame)?),
                None => None,
            },
        })
    }

    /// The `topicName`, unescaped.
    pub fn topic(&self) -> Option<&str> {
        self.topic.as_deref()
    }

    /// The `eventBody` as received (`None` when absent or `null`, or when read with
    /// [`Envelope::read_ids`], which does not keep it).
    pub fn body_raw(&self) -> Option<&'a str> {
        match self.body {
            Body::Raw(raw) => Some(raw.get()),
            Body::Absent | Body::Ids(_) => None,
        }
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
        if let Body::Raw(raw) = self.body {
            if !raw.get().starts_with('{') {
                return Err(FrameError::Json("eventBody is not an object".into()));
            }
        }
        if topic == "channel.metadata" {
            let message = match self.body {
                Body::Absent => None,
                Body::Raw(raw) => {
                    let head: BodyHead<'_> = serde_json::from_str(raw.get())
                        .map_err(|e| FrameError::Json(e.to_string()))?;
                    head.message
                }
                Body::Ids(ids) if ids.repeated_message => {
                    return Err(FrameError::Json("duplicate field `message`".into()));
                }
                Body::Ids(ids) => ids.message,
            };
            let message = message.and_then(raw_str).unwrap_or_default();
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

impl<'a> EventMeta<'a> {
    /// The fields an [`EventIndex`] points at in `frame`, or `None` when it does not fit the
    /// frame (then the frame is parsed: [`event_meta`]).
    pub fn from_index(index: &EventIndex, frame: &'a [u8]) -> Option<EventMeta<'a>> {
        let text = |span: Option<Span>| match span {
            None => Some(None),
            Some(span) => span.get(frame).map(|text| Some(Cow::Borrowed(text))),
        };
        Some(EventMeta {
            topic: Cow::Borrowed(index.topic.get(frame)?),
            key: text(index.key)?,
            correlation_id: text(index.correlation)?,
        })
    }
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
    plain_str(raw)
        .map(Cow::Borrowed)
        .or_else(|| serde_json::from_str::<String>(text).ok().map(Cow::Owned))
}

/// A raw JSON string's text when it has no escapes (what it stands for is then the text
/// between its quotes, in place in the frame); `None` for an escaped string or another value.
fn plain_str(raw: &RawValue) -> Option<&str> {
    let text = raw.get();
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    (!inner.contains('\\')).then_some(inner)
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

    /// Frames whose topic, key and CorrelationId are plain strings: the socket indexes them.
    const PLAIN: &[&str] = &[
        r#"{"topicName":"v2.routing.queues.q1.conversations","eventBody":{"id":"c1","participants":[{"id":"p"}]},"metadata":{"CorrelationId":"k"}}"#,
        r#"{"topicName":"v2.detail.events.conversation.c9.customer.start","eventBody":{"conversationId":"c9","x":1}}"#,
        r#"{"topicName":"v2.detail.events.conversation.c9.customer.end","eventBody":{"x":{"conversationId":"no"}}}"#,
        r#"{"topicName":"v2.users.u1.presence","eventBody":{"id":"u1"}}"#,
        r#"{"topicName":"v2.users.u1.presence"}"#,
        r#"{"topicName":"v2.users.u1.conversations","eventBody":null,"metadata":null}"#,
        r#"{"topicName":"v2.users.u1.conversations","eventBody":{"id":null},"metadata":{"CorrelationId":null}}"#,
        r#"{"topicName":"v2.routing.queues.q1.conversations","eventBody":{"id":5}}"#,
        r#"{"topicName":"v2.users.u1.conversations","eventBody":{"participants":[{"id":"p1"}],"id":"c2"}}"#,
        r#"{"metadata":{"CorrelationId":"k2","other":[1]},"eventBody":{"conversationId":"c4","id":"x"},"topicName":"v2.users.u1.conversations"}"#,
        r#"{ "topicName" : "v2.users.u1.conversations" , "eventBody" : { "id" : "c3" } , "version" : "2" }"#,
        r#"{"topicName":"v2.conversations.calls.c5","eventBody":{"id":"c5"}}"#,
        r#"{"topicName":"v2.analytics.queues.q1.observations","eventBody":{}}"#,
        r#"{"topicName":"channel.metadata.x","eventBody":{"message":"m"}}"#,
    ];

    /// Frames with an escape, a value of another type, a member twice, metadata that is not
    /// an object: no index (the producer parses them, and keeps deciding about them).
    const ODD: &[&str] = &[
        r#"{"topicName":"v2.users.u\u0031.conversations","eventBody":{"id":"c1"}}"#,
        r#"{"topicName":"v2.users.u1.conversations","eventBody":{"id":"c\u0031"}}"#,
        r#"{"topicName":"v2.users.u1.conversations","eventBody":{"id":"c1"},"metadata":{"CorrelationId":"k\n"}}"#,
        r#"{"topicName":"v2.users.u1.conversations","eventBody":{"id":"c1"},"metadata":{"CorrelationId":7}}"#,
        r#"{"topicName":"v2.users.u1.conversations","eventBody":{"id":"c1"},"metadata":7}"#,
        r#"{"topicName":"v2.users.u1.conversations","eventBody":{"conversationId":7}}"#,
        r#"{"topicName":"v2.users.u1.conversations","eventBody":{"id":"a","id":"b"}}"#,
        r#"{"topicName":"v2.users.u1.conversations","eventBody":{"conversationId":"a","conversationId":"b"}}"#,
        r#"{"topicName":"v2.users.u1.conversations","metadata":{"CorrelationId":"a","CorrelationId":"b"}}"#,
    ];

    #[test]
    fn the_index_points_at_exactly_what_the_producers_parse_reads() {
        for (frames, plain) in [(PLAIN, true), (ODD, false)] {
            for frame in frames {
                let bytes = frame.as_bytes();
                for envelope in [Envelope::read(bytes), Envelope::read_ids(bytes)] {
                    let envelope = envelope.unwrap_or_else(|e| panic!("{frame}: {e}"));
                    assert_eq!(envelope.kind(), Ok(FrameKind::Event), "{frame}");
                    let index = envelope.index(bytes);
                    assert_eq!(index.is_some(), plain, "{frame}");
                    if let Some(index) = index {
                        assert_eq!(
                            EventMeta::from_index(&index, bytes),
                            Some(event_meta(bytes).unwrap()),
                            "{frame}"
                        );
                    }
                }
            }
        }
        // An index is of the bytes it was read from: another buffer has no spans of it.
        let frame = PLAIN[0].as_bytes();
        let copy = frame.to_vec();
        assert_eq!(Envelope::read_ids(frame).unwrap().index(&copy), None);
    }

    #[test]
    fn reading_the_body_raw_or_its_ids_sorts_every_frame_alike() {
        let mut frames: Vec<&str> = PLAIN.iter().chain(ODD).copied().collect();
        frames.extend([
            r#"{"topicName":"t","eventBody":5}"#,
            r#"{"topicName":"t","eventBody":"x"}"#,
            r#"{"topicName":"t","eventBody":[1,2]}"#,
            r#"{"topicName":"t","eventBody":[]}"#,
            r#"{"topicName":"channel.metadata","eventBody":{"message":"pong"}}"#,
            r#"{"topicName":"channel.metadata","eventBody":{"message":"WebSocket Heartbeat","id":1,"id":2}}"#,
            r#"{"topicName":"channel.metadata","eventBody":{"message":"pong","message":"x"}}"#,
            r#"{"topicName":"channel.metadata","eventBody":{"message":null}}"#,
            r#"{"topicName":"channel.metadata","eventBody":{"message":{"a":1}}}"#,
            r#"{"topicName":"channel.metadata","eventBody":[]}"#,
            r#"{"topicName":"channel.metadata"}"#,
            r#"{"topicName":"v2.system.socket_closing","eventBody":{"a":1}}"#,
            r#"{"topicName":"v2.system.token_revoked.x","eventBody":{}}"#,
            r#"{"eventBody":{}}"#,
            r#"["v2.users.u1.conversations",{"id":"c1"},null]"#,
            r#"{"topicName":"t","eventBody":{"a":}"#,
            "{not json",
        ]);
        for frame in frames {
            let bytes = frame.as_bytes();
            let raw = Envelope::read(bytes).and_then(|e| e.kind());
            let ids = Envelope::read_ids(bytes).and_then(|e| e.kind());
            match (&raw, &ids) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{frame}"),
                (Err(_), Err(_)) => {}
                _ => panic!("{frame}: raw {raw:?}, ids {ids:?}"),
            }
        }
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
