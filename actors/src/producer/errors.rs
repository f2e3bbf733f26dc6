//! Kafka errors, sorted in one place by their consequence.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// What to do about a failed delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consequence {
    /// Transient (broker down, leader moving, timeout): produce the record again, in order.
    Retry,
    /// This record can never be delivered where it was routed (too large, topic refused or
    /// missing): send it to the dead-letter destination and move on.
    DeadLetter,
    /// The producer instance is unusable (fenced, fatal idempotence error): stop the actor; the
    /// supervisor restarts it with a fresh producer from the spool's committed position.
    Fatal,
}

pub fn classify(error: &KafkaError) -> Consequence {
    match error.rdkafka_error_code() {
        Some(code) => classify_code(code),
        // No broker or librdkafka code (client-side trouble): try again.
        None => Consequence::Retry,
    }
}

pub fn classify_code(code: RDKafkaErrorCode) -> Consequence {
    use RDKafkaErrorCode::*;
    match code {
        MessageSizeTooLarge
        | InvalidMessageSize
        | InvalidRecord
        | TopicAuthorizationFailed
        | ClusterAuthorizationFailed
        | UnknownTopic
        | InvalidRequiredAcks
        | PolicyViolation
        | UnsupportedForMessageFormat
        | InvalidTopic
        | UnknownPartition => Consequence::DeadLetter,
        Fatal
        | ProducerFenced
        | InvalidProducerEpoch
        | OutOfOrderSequenceNumber
        | UnknownProducerId
        | InvalidProducerIdMapping
        | TransactionalIdAuthorizationFailed => Consequence::Fatal,
        _ => Consequence::Retry,
    }
}

/// A label for metrics.
pub fn label(error: &KafkaError) -> String {
    match error.rdkafka_error_code() {
        Some(code) => format!("{code:?}").to_lowercase(),
        None => "client".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_consequence_per_class() {
        assert_eq!(
            classify_code(RDKafkaErrorCode::MessageSizeTooLarge),
            Consequence::DeadLetter
        );
        assert_eq!(
            classify_code(RDKafkaErrorCode::TopicAuthorizationFailed),
            Consequence::DeadLetter
        );
        assert_eq!(
            classify_code(RDKafkaErrorCode::MessageTimedOut),
            Consequence::Retry
        );
        assert_eq!(
            classify_code(RDKafkaErrorCode::BrokerTransportFailure),
            Consequence::Retry
        );
        assert_eq!(
            classify_code(RDKafkaErrorCode::NotLeaderForPartition),
            Consequence::Retry
        );
        assert_eq!(
            classify_code(RDKafkaErrorCode::ProducerFenced),
            Consequence::Fatal
        );
    }
}
