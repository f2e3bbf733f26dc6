//! Who talks to whom: slots of every actor, shared by all of them and by the supervisor.

use std::sync::{Arc, RwLock};

use crate::heartbeat::HeartbeatActor;
use crate::producer::KafkaProducerActor;
use crate::slot::Slot;
use crate::socket::SocketActor;
use crate::token::TokenRefreshActor;

#[derive(Clone)]
pub struct Peers {
    pub token: Slot<TokenRefreshActor>,
    pub heartbeat: Slot<HeartbeatActor>,
    pub producer: Slot<KafkaProducerActor>,
    /// One slot per shard, indexed by shard number.
    pub sockets: Arc<RwLock<Vec<Slot<SocketActor>>>>,
}

impl Peers {
    pub fn new() -> Self {
        Self {
            token: Slot::new("token"),
            heartbeat: Slot::new("heartbeat"),
            producer: Slot::new("producer"),
            sockets: Arc::new(RwLock::new(Vec::new())),
        }
    }

    pub fn sockets(&self) -> Vec<Slot<SocketActor>> {
        self.sockets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn socket(&self, shard: u32) -> Option<Slot<SocketActor>> {
        self.sockets().get(shard as usize).cloned()
    }

    /// Forgets the slots of `shard` and every shard after it.
    pub fn truncate_sockets(&self, shard: u32) {
        let mut sockets = self.sockets.write().unwrap_or_else(|p| p.into_inner());
        sockets.truncate(shard as usize);
    }

    /// The slot for `shard`, created if the shard is new.
    pub fn socket_slot(&self, shard: u32) -> Slot<SocketActor> {
        let mut sockets = self.sockets.write().unwrap_or_else(|p| p.into_inner());
        while sockets.len() <= shard as usize {
            sockets.push(Slot::new("socket"));
        }
        sockets[shard as usize].clone()
    }
}

impl Default for Peers {
    fn default() -> Self {
        Self::new()
    }
}
