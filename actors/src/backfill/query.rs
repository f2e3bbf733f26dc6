//! Building and reading analytics details queries for a gap.

use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Value};

/// Splits `[start, end)` into chunks of at most `max_chunk`.
pub fn chunks(
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    max_chunk: Duration,
) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let mut out = Vec::new();
    let mut from = start;
    while from < end {
        let to = (from + max_chunk).min(end);
        out.push((from, to));
        from = to;
    }
    if out.is_empty() {
        out.push((start, end));
    }
    out
}

/// The query body for one page of one chunk.
pub fn body(from: DateTime<Utc>, to: DateTime<Utc>, page: u32, page_size: u32) -> Value {
    let format = "%Y-%m-%dT%H:%M:%S%.3fZ";
    json!({
        "interval": format!("{}/{}", from.format(format), to.format(format)),
        "order": "asc",
        "orderBy": "conversationStart",
        "paging": {"pageSize": page_size, "pageNumber": page},
    })
}

/// The conversations of a page (an empty page has no `conversations` key).
pub fn conversations(page: &Value) -> Vec<Value> {
    page.get("conversations")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// Whether a conversation touches one of `entity_ids` (a queue in a segment, a user as a
/// participant). An empty list selects everything.
pub fn touches(conversation: &Value, entity_ids: &[String]) -> bool {
    if entity_ids.is_empty() {
        return true;
    }
    fn walk(value: &Value, ids: &[String]) -> bool {
        match value {
            Value::Object(map) => map.iter().any(|(key, inner)| {
                ((key == "queueId" || key == "userId")
                    && inner.as_str().is_some_and(|id| ids.iter().any(|w| w == id)))
                    || walk(inner, ids)
            }),
            Value::Array(items) => items.iter().any(|item| walk(item, ids)),
            _ => false,
        }
    }
    walk(conversation, entity_ids)
}

/// The queue and user ids of a shard's topics, or `None` if some topic is not about a queue or
/// a user (then the query cannot be restricted).
pub fn entity_ids(topics: &[String]) -> Vec<String> {
    let mut ids = Vec::new();
    for topic in topics {
        let parts: Vec<&str> = topic.split('.').collect();
        let id = parts
            .iter()
            .position(|p| *p == "queues" || *p == "users")
            .and_then(|i| parts.get(i + 1));
        match id {
            Some(id) => ids.push((*id).to_string()),
            None => return Vec::new(),
        }
    }
    ids.sort();
    ids.dedup();
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_gaps_are_split() {
        let start = Utc::now();
        let parts = chunks(start, start + Duration::minutes(150), Duration::hours(1));
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[2].1, start + Duration::minutes(150));
    }

    #[test]
    fn conversations_are_matched_by_queue_or_user() {
        let conversation = json!({"conversationId": "c", "participants": [
            {"userId": "u1", "sessions": [{"segments": [{"queueId": "q1"}]}]}]});
        assert!(touches(&conversation, &["q1".into()]));
        assert!(touches(&conversation, &["u1".into()]));
        assert!(!touches(&conversation, &["q2".into()]));
        assert!(touches(&conversation, &[]));
    }

    #[test]
    fn topics_name_their_entities() {
        let topics = vec![
            "v2.routing.queues.q1.conversations".to_string(),
            "v2.users.u1.conversations".to_string(),
        ];
        assert_eq!(entity_ids(&topics), vec!["q1", "u1"]);
        let mixed = vec!["v2.detail.events.conversation.c.customer.end".to_string()];
        assert!(entity_ids(&mixed).is_empty());
    }
}
