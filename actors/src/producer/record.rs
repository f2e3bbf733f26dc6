//! What a spool entry becomes in Kafka: topic, key, headers and value, or the reason it can only
//! be dead-lettered. Pure: no producer, no I/O.

use std::borrow::Cow;
use std::hash::{Hash, Hasher};

use rdkafka::message::{Header, OwnedHeaders};
use smallvec::{smallvec, SmallVec};

use crate::backfill::{BackfillPayload, BACKFILL};
use crate::conversations::record::LifecycleHead;
use crate::conversations::LIFECYCLE;
use crate::genesys::wire::{event_meta, EventMeta};
use crate::socket::frames::MALFORMED;
use crate::spool::{RecordKind, SpoolEntry};

use super::KafkaSettings;

/// A record ready for librdkafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Outgoing<'a> {
    /// Borrowed from the settings for every record the bridge routes (no copy per event).
    pub(super) topic: Cow<'a, str>,
    pub(super) key: Option<Cow<'a, str>>,
    /// Headers with text values, inline (no allocation per record for up to four).
    pub(super) headers: SmallVec<[(&'static str, Cow<'a, str>); 4]>,
    /// The `received-at-ms` and `shard` headers, formatted only into librdkafka's own copy
    /// (no `String` per record for them).
    pub(super) stamp: Option<Stamp>,
    pub(super) value: &'a [u8],
}

/// Where and when the bridge took a record: its `received-at-ms` and `shard` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp {
    pub(super) received_at_ms: i64,
    pub(super) shard: u32,
}

impl Outgoing<'_> {
    /// A hash of topic and key: records with the same one must reach Kafka in spool order.
    /// `None` for records without a key (their order does not matter).
    pub(super) fn order_key(&self) -> Option<u64> {
        let key = self.key.as_ref()?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.topic.hash(&mut hasher);
        key.hash(&mut hasher);
        Some(hasher.finish())
    }

    /// The record's Kafka headers, in order: the text ones, then the stamp (numbers formatted
    /// on the stack; librdkafka copies every value).
    pub(super) fn kafka_headers(&self) -> OwnedHeaders {
        let count = self.headers.len() + if self.stamp.is_some() { 2 } else { 0 };
        let mut headers = OwnedHeaders::new_with_capacity(count);
        for (key, value) in &self.headers {
            headers = headers.insert(Header {
                key,
                value: Some(&**value),
            });
        }
        if let Some(stamp) = self.stamp {
            let mut number = itoa::Buffer::new();
            headers = headers.insert(Header {
                key: "received-at-ms",
                value: Some(number.format(stamp.received_at_ms)),
            });
            headers = headers.insert(Header {
                key: "shard",
                value: Some(number.format(stamp.shard)),
            });
        }
        headers
    }
}

/// What to do with a spool entry.
// `Send` is much larger than `DeadLetter`; a `Built` lives for one record on
// the stack of the pump, so boxing it would add the allocation it exists to save.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Built<'a> {
    Send(Outgoing<'a>),
    /// It can never be routed: straight to the dead-letter destination.
    DeadLetter {
        routed_topic: &'static str,
        reason: String,
    },
}

/// Builds the Kafka record for `entry`.
pub(super) fn build<'a>(entry: &'a SpoolEntry, settings: &'a KafkaSettings) -> Built<'a> {
    let record = &entry.record;
    let stamp = Some(Stamp {
        received_at_ms: record.received_at_ms,
        shard: record.shard,
    });
    match record.kind {
        RecordKind::Event => match record
            .index
            .as_ref()
            .and_then(|index| EventMeta::from_index(index, &record.payload))
            .map_or_else(|| event_meta(&record.payload), Ok)
        {
            Ok(meta) => {
                let topic = Cow::Borrowed(settings.router.route(&meta.topic));
                let mut headers = SmallVec::new();
                headers.push(("genesys-topic", meta.topic));
                if let Some(correlation) = meta.correlation_id {
                    headers.push(("genesys-correlation-id", correlation));
                }
                Built::Send(Outgoing {
                    topic,
                    key: meta.key,
                    headers,
                    stamp,
                    value: &record.payload,
                })
            }
            Err(error) => Built::DeadLetter {
                routed_topic: "(unrouted)",
                reason: format!("malformed frame: {error}"),
            },
        },
        kind if kind == BACKFILL => {
            let Ok(payload) = serde_json::from_slice::<BackfillPayload<'_>>(&record.payload) else {
                return Built::DeadLetter {
                    routed_topic: "(backfill)",
                    reason: "unreadable backfill record".into(),
                };
            };
            let topic = Cow::Borrowed(
                settings
                    .backfill_topic
                    .as_deref()
                    .unwrap_or(&settings.status_topic),
            );
            Built::Send(Outgoing {
                topic,
                key: Some(payload.conversation_id.into()),
                headers: smallvec![
                    ("bridge-record", "backfill".into()),
                    ("backfill-gap", payload.gap.into()),
                ],
                stamp: None,
                value: payload.conversation.get().as_bytes(),
            })
        }
        kind if kind == LIFECYCLE => {
            let Ok(head) = serde_json::from_slice::<LifecycleHead>(&record.payload) else {
                return Built::DeadLetter {
                    routed_topic: "(lifecycle)",
                    reason: "unreadable lifecycle record".into(),
                };
            };
            Built::Send(Outgoing {
                topic: Cow::Borrowed(&settings.lifecycle_topic),
                key: Some(head.conversation_id.into()),
                headers: smallvec![
                    ("bridge-record", "lifecycle".into()),
                    ("lifecycle-id", head.id.into()),
                    ("lifecycle-type", head.kind.as_str().into()),
                    ("lifecycle-source", head.source.as_str().into()),
                ],
                stamp,
                value: &record.payload,
            })
        }
        kind if kind == MALFORMED => Built::DeadLetter {
            routed_topic: "(unrouted)",
            reason: match std::str::from_utf8(&record.payload) {
                Ok(_) => "malformed frame: not a notification envelope".into(),
                Err(_) => "malformed frame: binary, not UTF-8".into(),
            },
        },
        RecordKind::Gap | RecordKind::Reserved(_) => Built::Send(Outgoing {
            topic: Cow::Borrowed(&settings.status_topic),
            key: Some(format!("shard-{}", record.shard).into()),
            headers: smallvec![("bridge-record", "status".into())],
            stamp,
            value: &record.payload,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::producer::routing::Router;
    use crate::spool::Record;

    fn settings(backfill_topic: Option<&str>) -> KafkaSettings {
        KafkaSettings {
            router: Router::new(
                &[crate::producer::routing::Route {
                    pattern: "v2.users.*.conversations".into(),
                    topic: "user-conversations".into(),
                }],
                "events",
            ),
            status_topic: "status".into(),
            backfill_topic: backfill_topic.map(str::to_string),
            ..KafkaSettings::for_tests()
        }
    }

    fn entry(record: Record) -> SpoolEntry {
        SpoolEntry { seq: 7, record }
    }

    /// A header as librdkafka gets it.
    fn header(outgoing: &Outgoing<'_>, name: &str) -> Option<String> {
        use rdkafka::message::Headers;
        outgoing
            .kafka_headers()
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8(v.to_vec()).expect("UTF-8"))
    }

    #[test]
    fn an_event_is_routed_keyed_by_its_conversation_and_carries_its_metadata() {
        let frame = r#"{"topicName":"v2.users.u1.conversations","version":"2","eventBody":{"id":"c1"},"metadata":{"CorrelationId":"k9"}}"#;
        let entry = entry(Record::event(3, 1_700_000_000_123, frame));
        let settings_1 = settings(None);
        let Built::Send(outgoing) = build(&entry, &settings_1) else {
            panic!("routable");
        };
        assert_eq!(outgoing.topic, "user-conversations");
        assert_eq!(outgoing.key.as_deref(), Some("c1"));
        assert_eq!(
            outgoing.value,
            frame.as_bytes(),
            "the frame exactly as received"
        );
        assert_eq!(
            header(&outgoing, "genesys-topic").as_deref(),
            Some("v2.users.u1.conversations")
        );
        assert_eq!(
            header(&outgoing, "genesys-correlation-id").as_deref(),
            Some("k9")
        );
        assert_eq!(
            header(&outgoing, "received-at-ms").as_deref(),
            Some("1700000000123")
        );
        assert_eq!(header(&outgoing, "shard").as_deref(), Some("3"));
        assert!(outgoing.order_key().is_some());
    }

    #[test]
    fn an_indexed_event_is_built_from_its_index_as_from_its_parse() {
        let frame = r#"{"topicName":"v2.users.u1.conversations","eventBody":{"id":"c1"},"metadata":{"CorrelationId":"k9"}}"#;
        let index = crate::genesys::wire::Envelope::read_ids(frame.as_bytes())
            .unwrap()
            .index(frame.as_bytes());
        assert!(index.is_some());
        let settings = settings(None);
        let plain = entry(Record::event(3, 11, frame));
        let indexed = entry(Record::event(3, 11, frame).with_index(index));
        assert_eq!(build(&indexed, &settings), build(&plain, &settings));
        // The topic and key come from the index, not a parse: an index that says otherwise
        // (only a bug could write one) is what the record is built from.
        let mut other = index.unwrap();
        other.key = other.correlation;
        let misled = entry(Record::event(3, 11, frame).with_index(Some(other)));
        let Built::Send(outgoing) = build(&misled, &settings) else {
            panic!("routable");
        };
        assert_eq!(outgoing.key.as_deref(), Some("k9"));
        // An index that does not fit the frame is not used: the frame is parsed.
        let mut outside = index.unwrap();
        outside.topic.start = frame.len() as u32;
        let parsed = entry(Record::event(3, 11, frame).with_index(Some(outside)));
        assert_eq!(build(&parsed, &settings), build(&plain, &settings));
    }

    #[test]
    fn an_event_no_route_matches_goes_to_the_default_topic() {
        let frame = r#"{"topicName":"v2.routing.queues.q1.conversations","eventBody":{"id":"c2"}}"#;
        let entry = entry(Record::event(0, 1, frame));
        let settings_2 = settings(None);
        let Built::Send(outgoing) = build(&entry, &settings_2) else {
            panic!("routable");
        };
        assert_eq!(outgoing.topic, "events");
        assert_eq!(header(&outgoing, "genesys-correlation-id"), None);
        assert_eq!(header(&outgoing, "shard").as_deref(), Some("0"));
    }

    #[test]
    fn malformed_and_binary_frames_are_dead_letters_with_a_reason() {
        let broken = entry(Record::event(0, 1, "{not json"));
        assert!(matches!(
            build(&broken, &settings(None)),
            Built::DeadLetter { routed_topic: "(unrouted)", reason } if reason.starts_with("malformed frame")
        ));
        let mut binary = Record::event(0, 1, vec![0xff, 0xfe]);
        binary.kind = MALFORMED;
        assert!(matches!(
            build(&entry(binary), &settings(None)),
            Built::DeadLetter { reason, .. } if reason.contains("not UTF-8")
        ));
    }

    #[test]
    fn a_backfilled_conversation_goes_to_the_backfill_topic_as_the_conversation_itself() {
        let payload = r#"{"gap":"g1","conversationId":"c3","conversation":{"id":"c3","x":1}}"#;
        let mut record = Record::event(2, 5, payload);
        record.kind = BACKFILL;
        let entry = entry(record);
        let backfill_settings = settings(Some("backfill"));
        let Built::Send(outgoing) = build(&entry, &backfill_settings) else {
            panic!("routable");
        };
        assert_eq!(outgoing.topic, "backfill");
        assert_eq!(outgoing.key.as_deref(), Some("c3"));
        assert_eq!(outgoing.value, br#"{"id":"c3","x":1}"#);
        assert_eq!(header(&outgoing, "backfill-gap").as_deref(), Some("g1"));
        assert_eq!(
            header(&outgoing, "shard"),
            None,
            "a backfilled record has no stamp"
        );
        let settings_3 = settings(None);
        let Built::Send(outgoing) = build(&entry, &settings_3) else {
            panic!("routable");
        };
        assert_eq!(
            outgoing.topic, "status",
            "no backfill topic: the status topic"
        );
    }

    #[test]
    fn a_gap_record_goes_to_the_status_topic_keyed_by_shard() {
        let entry = entry(Record::gap(4, 9, r#"{"type":"gap"}"#));
        let settings_4 = settings(None);
        let Built::Send(outgoing) = build(&entry, &settings_4) else {
            panic!("routable");
        };
        assert_eq!(outgoing.topic, "status");
        assert_eq!(outgoing.key.as_deref(), Some("shard-4"));
        assert_eq!(
            header(&outgoing, "bridge-record").as_deref(),
            Some("status")
        );
    }
}
