//! A handle on an actor that survives its restarts.
//!
//! When the supervisor restarts an actor it gets a new `Addr`; everyone who talks to the actor
//! holds a [`Slot`] and so reaches the new one without noticing.

use std::sync::{Arc, RwLock};

use actix::dev::ToEnvelope;
use actix::prelude::*;

use crate::metrics::Metrics;

pub struct Slot<A: Actor> {
    name: &'static str,
    addr: Arc<RwLock<Option<Addr<A>>>>,
}

impl<A: Actor> Clone for Slot<A> {
    fn clone(&self) -> Self {
        Self {
            name: self.name,
            addr: self.addr.clone(),
        }
    }
}

/// Why a message did not reach the actor.
#[derive(Debug, PartialEq, Eq)]
pub enum SlotError {
    /// No actor is running (not started yet, or between a crash and its restart).
    Absent,
    /// The mailbox is at its capacity.
    Full,
}

impl<A: Actor> Slot<A> {
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            addr: Arc::new(RwLock::new(None)),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn set(&self, addr: Option<Addr<A>>) {
        *self.addr.write().unwrap_or_else(|p| p.into_inner()) = addr;
    }

    pub fn get(&self) -> Option<Addr<A>> {
        self.addr
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .filter(|addr| addr.connected())
    }

    /// Sends without waiting; a full mailbox is counted as a rejection for this actor.
    pub fn try_send<M>(&self, message: M, metrics: &Metrics) -> Result<(), SlotError>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        A: Handler<M>,
        A::Context: ToEnvelope<A, M>,
    {
        let Some(addr) = self.get() else {
            return Err(SlotError::Absent);
        };
        match addr.try_send(message) {
            Ok(()) => Ok(()),
            Err(SendError::Full(_)) => {
                metrics
                    .mailbox_rejections
                    .get_or_create(&Metrics::actor(self.name))
                    .inc();
                Err(SlotError::Full)
            }
            Err(SendError::Closed(_)) => Err(SlotError::Absent),
        }
    }
}
