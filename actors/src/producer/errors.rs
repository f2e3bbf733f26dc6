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

/// Whether librdkafka failed the record because the bridge purged its queue (to keep per-key
/// order behind a failed record): not an attempt, the record is produced again in order.
pub fn is_purged(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight)
    )
}

/// Whether librdkafka's own queue is full (deliveries will make room): not an error of the
/// record.
pub fn is_queue_full(error: &KafkaError) -> bool {
    error.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull)
}

/// Whether the record is too large for the topic (the dead-letter topic has the same limit:
/// only its head goes there, the whole record to the dead-letter file).
pub fn is_too_large(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize)
    )
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
        assert_eq!(
            classify_code(RDKafkaErrorCode::PurgeQueue),
            Consequence::Retry
        );
        let too_large = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        assert!(is_too_large(&too_large));
        assert!(!is_purged(&too_large));
        assert!(is_purged(&KafkaError::MessageProduction(
            RDKafkaErrorCode::PurgeQueue
        )));
        assert!(is_queue_full(&KafkaError::MessageProduction(
            RDKafkaErrorCode::QueueFull
        )));
    }
}
