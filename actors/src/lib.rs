//! The supervised runtime of genesys-kafka-bridge.
//!
//! Four actors, each on its own Arbiter, talk through typed messages with bounded mailboxes:
//! [`token::TokenRefreshActor`], [`socket::SocketActor`] (one per channel shard),
//! [`heartbeat::HeartbeatActor`] and [`producer::KafkaProducerActor`]. The [`supervisor`]
//! starts them sink first and restarts any that stops or panics. Frames travel from the socket
//! into the durable [`spool`] and from there to Kafka; the spool only forgets a record once Kafka
//! acknowledged it.
// One module, `producer/events.rs`, calls librdkafka's C API where the rdkafka crate has no wrapper.
#![deny(unsafe_code)]

pub mod backfill;
pub mod backoff;
pub mod conversations;
pub mod disk_reserve;
pub mod genesys;
pub mod health;
pub mod heartbeat;
pub mod messages;
pub mod metrics;
pub mod peers;
pub mod private_fs;
pub mod producer;
pub mod secret;
pub mod shard_state;
pub mod slot;
pub mod socket;
pub mod spool;
pub mod supervisor;
pub mod token;
pub mod topics;
