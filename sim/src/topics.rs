//! Topic templates the simulator knows, and the permissions each needs.
//!
//! | template | permissions |
//! |---|---|
//! | `v2.routing.queues.{queueId}.conversations` (and `.calls` `.chats` `.emails` `.messages` `.callbacks`) | `routing:queue:view`, `conversation:communication:view` |
//! | `v2.users.{userId}.conversations` (and the same media suffixes) | `conversation:communication:view` |
//! | `v2.detail.events.conversation.{conversationId}.{customer.start,customer.end,acd.start,acd.end,user.start,user.end,acw,wrapup}` | `analytics:conversationDetail:view` |
//! | `v2.analytics.queues.{queueId}.observations` | `analytics:queueObservation:view` |
//!
//! `channel.metadata` and `v2.system.*` arrive without subscribing and are refused in a
//! subscription request with a 400 for the whole request (see README).

use crate::config::{
    PERM_CONVERSATION_DETAIL, PERM_CONVERSATION_VIEW, PERM_QUEUE_OBSERVATION, PERM_QUEUE_VIEW,
};

/// Media suffixes of the queue and user conversation topics.
pub(crate) const CONVERSATION_SUFFIXES: [&str; 6] = [
    "conversations",
    "calls",
    "chats",
    "emails",
    "messages",
    "callbacks",
];

/// Suffixes of the per-conversation detail-event topics.
pub(crate) const DETAIL_SUFFIXES: [&str; 8] = [
    "customer.start",
    "customer.end",
    "acd.start",
    "acd.end",
    "user.start",
    "user.end",
    "acw",
    "wrapup",
];

/// A parsed topic name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Topic<'a> {
    QueueConversations { queue_id: &'a str },
    UserConversations { user_id: &'a str },
    Detail { conversation_id: &'a str },
    QueueObservations { queue_id: &'a str },
}

/// Why a topic cannot be subscribed at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TopicError {
    /// `channel.metadata` / `v2.system.*`: never valid in a subscription (400).
    Reserved,
    /// No template matches (the reason goes into `rejectionReason`).
    Unknown(String),
}

pub(crate) fn is_reserved(topic: &str) -> bool {
    topic == "channel.metadata" || topic.starts_with("v2.system.") || topic == "v2.system"
}

/// Parses a topic name against the known templates (without checking that ids exist).
pub(crate) fn parse(topic: &str) -> Result<Topic<'_>, TopicError> {
    if is_reserved(topic) {
        return Err(TopicError::Reserved);
    }
    if let Some(rest) = topic.strip_prefix("v2.routing.queues.") {
        if let Some((id, suffix)) = rest.split_once('.') {
            if CONVERSATION_SUFFIXES.contains(&suffix) && !id.is_empty() {
                return Ok(Topic::QueueConversations { queue_id: id });
            }
        }
    } else if let Some(rest) = topic.strip_prefix("v2.users.") {
        if let Some((id, suffix)) = rest.split_once('.') {
            if CONVERSATION_SUFFIXES.contains(&suffix) && !id.is_empty() {
                return Ok(Topic::UserConversations { user_id: id });
            }
        }
    } else if let Some(rest) = topic.strip_prefix("v2.detail.events.conversation.") {
        if let Some((id, suffix)) = rest.split_once('.') {
            if DETAIL_SUFFIXES.contains(&suffix) {
                if uuid::Uuid::parse_str(id).is_ok() {
                    return Ok(Topic::Detail {
                        conversation_id: id,
                    });
                }
                return Err(TopicError::Unknown(format!(
                    "{id} is not a valid conversation id"
                )));
            }
        }
    } else if let Some(rest) = topic.strip_prefix("v2.analytics.queues.") {
        if let Some(id) = rest.strip_suffix(".observations") {
            if !id.is_empty() && !id.contains('.') {
                return Ok(Topic::QueueObservations { queue_id: id });
            }
        }
    }
    Err(TopicError::Unknown(format!(
        "{topic} does not match any available topic"
    )))
}

/// Permissions a client needs to subscribe to the topic.
pub(crate) fn required_permissions(topic: &Topic<'_>) -> &'static [&'static str] {
    match topic {
        Topic::QueueConversations { .. } => &[PERM_QUEUE_VIEW, PERM_CONVERSATION_VIEW],
        Topic::UserConversations { .. } => &[PERM_CONVERSATION_VIEW],
        Topic::Detail { .. } => &[PERM_CONVERSATION_DETAIL],
        Topic::QueueObservations { .. } => &[PERM_QUEUE_OBSERVATION],
    }
}

/// The topic catalogue served by `GET /api/v2/notifications/availabletopics`.
pub(crate) fn catalogue() -> serde_json::Value {
    let entry = |id: &str, description: &str, perms: &[&str]| {
        serde_json::json!({
            "id": id,
            "description": description,
            "requiresPermissions": perms,
            "transports": ["Websocket"],
            "publicApiTemplateUriPaths": [],
            "visibility": "Public",
        })
    };
    let mut entities = Vec::new();
    for suffix in CONVERSATION_SUFFIXES {
        entities.push(entry(
            &format!("v2.routing.queues.{{id}}.{suffix}"),
            "Conversation snapshots of a queue",
            &[PERM_QUEUE_VIEW, PERM_CONVERSATION_VIEW],
        ));
        entities.push(entry(
            &format!("v2.users.{{id}}.{suffix}"),
            "Conversation snapshots of a user",
            &[PERM_CONVERSATION_VIEW],
        ));
    }
    for suffix in DETAIL_SUFFIXES {
        entities.push(entry(
            &format!("v2.detail.events.conversation.{{id}}.{suffix}"),
            "Conversation detail event",
            &[PERM_CONVERSATION_DETAIL],
        ));
    }
    entities.push(entry(
        "v2.analytics.queues.{id}.observations",
        "Queue observations",
        &[PERM_QUEUE_OBSERVATION],
    ));
    serde_json::json!({ "entities": entities })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_templates() {
        assert_eq!(
            parse("v2.routing.queues.q1.conversations"),
            Ok(Topic::QueueConversations { queue_id: "q1" })
        );
        assert_eq!(
            parse("v2.users.u1.calls"),
            Ok(Topic::UserConversations { user_id: "u1" })
        );
        assert_eq!(
            parse("v2.analytics.queues.q1.observations"),
            Ok(Topic::QueueObservations { queue_id: "q1" })
        );
        let cid = "0b5b7a4e-0e32-4f3c-9e0f-6f1f0e3d2a10";
        assert_eq!(
            parse(&format!("v2.detail.events.conversation.{cid}.acd.start")),
            Ok(Topic::Detail {
                conversation_id: cid
            })
        );
    }

    #[test]
    fn refuses_reserved_and_unknown() {
        assert_eq!(parse("channel.metadata"), Err(TopicError::Reserved));
        assert_eq!(parse("v2.system.socket_closing"), Err(TopicError::Reserved));
        assert!(matches!(
            parse("v2.routing.queues.q1.bogus"),
            Err(TopicError::Unknown(_))
        ));
        assert!(matches!(
            parse("v2.detail.events.conversation.nope.acd.start"),
            Err(TopicError::Unknown(_))
        ));
        assert!(matches!(parse("hello"), Err(TopicError::Unknown(_))));
    }
}
