//! Which Kafka topic a Genesys topic goes to.

use serde::{Deserialize, Serialize};

/// One routing rule: Genesys topics matching `pattern` go to Kafka topic `topic`.
///
/// Patterns are dot-separated like Genesys topics; `*` matches exactly one segment and `**`
/// matches any number of segments (including none), e.g. `v2.routing.queues.*.conversations` or
/// `v2.detail.events.conversation.**`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub pattern: String,
    pub topic: String,
}

/// Routing rules in order; the first match wins, else the default topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Router {
    routes: Vec<(Vec<String>, String)>,
    default_topic: String,
}

impl Router {
    pub fn new(routes: &[Route], default_topic: &str) -> Self {
        Self {
            routes: routes
                .iter()
                .map(|r| {
                    (
                        r.pattern.split('.').map(str::to_owned).collect(),
                        r.topic.clone(),
                    )
                })
                .collect(),
            default_topic: default_topic.to_string(),
        }
    }

    pub fn route(&self, genesys_topic: &str) -> &str {
        if self.routes.is_empty() {
            return &self.default_topic;
        }
        // Genesys topics have a handful of segments: split them on the stack (this runs for
        // every event), on the heap only for an unusually long name.
        let mut stack = [""; 16];
        let mut count = 0;
        let mut heap = Vec::new();
        for segment in genesys_topic.split('.') {
            if count < stack.len() {
                stack[count] = segment;
            } else {
                if heap.is_empty() {
                    heap.extend_from_slice(&stack);
                }
                heap.push(segment);
            }
            count += 1;
        }
        let segments = if heap.is_empty() {
            &stack[..count]
        } else {
            &heap[..]
        };
        self.routes
            .iter()
            .find(|(pattern, _)| matches(pattern, segments))
            .map_or(self.default_topic.as_str(), |(_, topic)| topic.as_str())
    }

    /// Every Kafka topic the router can send to.
    pub fn topics(&self) -> Vec<&str> {
        let mut topics: Vec<&str> = self.routes.iter().map(|(_, t)| t.as_str()).collect();
        topics.push(&self.default_topic);
        topics.sort_unstable();
        topics.dedup();
        topics
    }
}

fn matches(pattern: &[String], segments: &[&str]) -> bool {
    match (pattern.first(), segments.first()) {
        (None, None) => true,
        (Some(p), _) if p == "**" => {
            (0..=segments.len()).any(|skip| matches(&pattern[1..], &segments[skip..]))
        }
        (Some(p), Some(s)) if p == "*" || p == s => matches(&pattern[1..], &segments[1..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_with_more_segments_than_the_stack_holds_route_the_same() {
        let router = Router::new(
            &[Route {
                pattern: "v2.a.**.z".into(),
                topic: "deep".into(),
            }],
            "events",
        );
        let long: String = (0..40).map(|i| format!("s{i}.")).collect();
        assert_eq!(router.route(&format!("v2.a.{long}z")), "deep");
        assert_eq!(router.route(&format!("v2.a.{long}y")), "events");
        assert_eq!(router.route("v2.a.z"), "deep");
        assert_eq!(router.route("v2.b.z"), "events");
    }

    #[test]
    fn first_matching_rule_wins() {
        let router = Router::new(
            &[
                Route {
                    pattern: "v2.routing.queues.*.conversations".into(),
                    topic: "conversations".into(),
                },
                Route {
                    pattern: "v2.detail.events.**".into(),
                    topic: "details".into(),
                },
                Route {
                    pattern: "v2.**".into(),
                    topic: "other".into(),
                },
            ],
            "default",
        );
        assert_eq!(
            router.route("v2.routing.queues.q1.conversations"),
            "conversations"
        );
        assert_eq!(router.route("v2.routing.queues.q1.observations"), "other");
        assert_eq!(
            router.route("v2.detail.events.conversation.c.customer.end"),
            "details"
        );
        assert_eq!(router.route("channel.metadata"), "default");
        assert_eq!(
            router.topics(),
            vec!["conversations", "default", "details", "other"]
        );
    }
}
