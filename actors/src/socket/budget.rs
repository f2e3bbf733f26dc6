//! The channel budget: channels held plus channels being created never exceed it.
//!
//! Genesys lets an OAuth client hold 20 channels; creating a 21st silently evicts the oldest
//! (idle ones first). So every channel the bridge creates needs a permit first, held for as long
//! as the bridge may still use the channel (its socket open, draining, or kept to reconnect to)
//! and given back when the channel is abandoned with its socket closed, idle and therefore the
//! first Genesys would evict. Permits are handed out first come, first served: a rollover that
//! finds no free slot waits for one instead of evicting anything.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The right to hold one channel.
pub type ChannelPermit = OwnedSemaphorePermit;

#[derive(Clone, Debug)]
pub struct ChannelBudget {
    semaphore: Arc<Semaphore>,
    total: usize,
}

impl ChannelBudget {
    pub fn new(total: usize) -> Self {
        Self {
            semaphore: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// Waits for a free slot (FIFO among waiters).
    pub async fn acquire(&self) -> ChannelPermit {
        Arc::clone(&self.semaphore)
            .acquire_owned()
            .await
            .expect("the budget's semaphore is never closed")
    }

    /// Channels held or being created now.
    pub fn held(&self) -> usize {
        self.total - self.semaphore.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn never_more_than_the_budget_and_waiters_in_order() {
        let budget = ChannelBudget::new(2);
        let first = budget.acquire().await;
        let _second = budget.acquire().await;
        assert_eq!(budget.held(), 2);
        let waiting = {
            let budget = budget.clone();
            actix_rt::spawn(async move { budget.acquire().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(first);
        let _third = waiting.await.unwrap();
        assert_eq!(budget.held(), 2);
    }
}
