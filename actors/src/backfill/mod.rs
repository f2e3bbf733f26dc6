//! BackfillActor: fills recorded gaps from the analytics conversation details query.
//!
//! Genesys keeps nothing for a socket that was not listening; its advice is to fill gaps from
//! the REST API. When a shard's gap closes, the SocketActor puts it in the durable
//! [`queue::BackfillQueue`]. After `settle_delay` (analytics data lags, and pages shift on live
//! intervals) this actor queries the gap's interval padded by `margin`, split into chunks,
//! page by page within a request budget, keeps the conversations that touch the shard's queues
//! or users, deduplicates them by conversation id, and writes one record per conversation
//! through the spool to the backfill topic. Progress is saved after every page.

pub mod query;
pub mod queue;
pub mod reconcile;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::Utc;
use serde_json::{json, value::RawValue};

use crate::backoff::ExponentialBackoff;
use crate::conversations::{observe, Conversations, Source};
use crate::genesys::endpoints::Endpoints;
use crate::genesys::rest::{GenesysClient, RestError};
use crate::messages::{AreYouAlive, InjectFault};
use crate::metrics::Metrics;
use crate::spool::{AppendOutcome, Record, RecordKind, Spool, SpoolError};
use crate::token::TokenCell;
use queue::{BackfillQueue, PendingGap};

/// Spool record kind of a backfilled conversation: the producer sends it to the backfill topic.
pub const BACKFILL: RecordKind = RecordKind::Reserved(3);

/// How gaps are filled.
#[derive(Debug, Clone)]
pub struct BackfillSettings {
    pub endpoints: Endpoints,
    pub request_timeout: Duration,
    /// Wait this long after a gap ended before querying it.
    pub settle_delay: Duration,
    /// Pad the gap by this much on each side.
    pub margin: Duration,
    /// Query at most this long an interval per request series.
    pub max_chunk: Duration,
    pub page_size: u32,
    /// Request budget towards the analytics API.
    pub requests_per_minute: u32,
    /// Give up on a gap after this many failed requests in a row (reported).
    pub max_attempts: u32,
    pub backoff: ExponentialBackoff,
    pub allow_fault_injection: bool,
}

/// The payload of a [`BACKFILL`] record.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct BackfillPayload<'a> {
    pub gap: String,
    #[serde(rename = "conversationId")]
    pub conversation_id: String,
    #[serde(borrow)]
    pub conversation: &'a RawValue,
}

pub struct BackfillActor {
    settings: Arc<BackfillSettings>,
    queue: BackfillQueue,
    spool: Spool,
    token: TokenCell,
    metrics: Arc<Metrics>,
    budget: RequestBudget,
    conversations: Option<Conversations>,
}

impl BackfillActor {
    pub fn new(
        settings: Arc<BackfillSettings>,
        queue: BackfillQueue,
        spool: Spool,
        token: TokenCell,
        metrics: Arc<Metrics>,
        budget: RequestBudget,
        conversations: Option<Conversations>,
    ) -> Self {
        Self {
            settings,
            queue,
            spool,
            token,
            metrics,
            budget,
            conversations,
        }
    }
}

impl Actor for BackfillActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(8);
        let worker = Worker {
            client: GenesysClient::new(
                self.settings.endpoints.clone(),
                self.settings.request_timeout,
            ),
            settings: self.settings.clone(),
            queue: self.queue.clone(),
            spool: self.spool.clone(),
            token: self.token.clone(),
            metrics: self.metrics.clone(),
            budget: self.budget.clone(),
            conversations: self.conversations.clone(),
        };
        async move { worker.run().await }
            .into_actor(self)
            .map(|_, _, ctx| ctx.stop())
            .spawn(ctx);
    }
}

impl Handler<AreYouAlive> for BackfillActor {
    type Result = ();
    fn handle(&mut self, _: AreYouAlive, _: &mut Self::Context) {}
}

impl Handler<InjectFault> for BackfillActor {
    type Result = ();
    fn handle(&mut self, fault: InjectFault, _: &mut Self::Context) {
        fault.apply(self.settings.allow_fault_injection, "BackfillActor");
    }
}

/// A request budget towards the analytics API: at most `per_minute` requests in any minute,
/// spaced evenly, shared by backfill and reconciliation.
#[derive(Clone, Debug)]
pub struct RequestBudget {
    spacing: Duration,
    next: Arc<std::sync::Mutex<Instant>>,
}

impl RequestBudget {
    pub fn new(per_minute: u32) -> Self {
        Self {
            spacing: Duration::from_secs(60) / per_minute.max(1),
            next: Arc::new(std::sync::Mutex::new(Instant::now())),
        }
    }

    /// Waits for the next free request slot.
    pub async fn acquire(&self) {
        let slot = {
            let mut next = self
                .next
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let slot = Instant::now().max(*next);
            *next = slot + self.spacing;
            slot
        };
        let now = Instant::now();
        if slot > now {
            tokio::time::sleep(slot - now).await;
        }
    }
}

struct Worker {
    client: GenesysClient,
    settings: Arc<BackfillSettings>,
    queue: BackfillQueue,
    spool: Spool,
    token: TokenCell,
    metrics: Arc<Metrics>,
    budget: RequestBudget,
    conversations: Option<Conversations>,
}

impl Worker {
    async fn run(mut self) {
        loop {
            let settle = chrono::Duration::from_std(self.settings.settle_delay).unwrap_or_default();
            let now = Utc::now();
            let pending = self.queue.pending();
            let due = pending
                .iter()
                .filter(|g| g.end + settle <= now)
                .min_by_key(|g| g.end)
                .cloned();
            let Some(gap) = due else {
                let next_due = pending
                    .iter()
                    .map(|g| (g.end + settle - now).to_std().unwrap_or_default())
                    .min()
                    .unwrap_or(Duration::from_secs(60));
                tokio::select! {
                    _ = self.queue.added() => {}
                    _ = tokio::time::sleep(next_due.min(Duration::from_secs(60))) => {}
                }
                continue;
            };
            self.fill(gap).await;
        }
    }

    async fn fill(&mut self, mut gap: PendingGap) {
        if !gap.started {
            gap.started = true;
            self.status(&gap, json!({"type": "backfill_started"})).await;
            self.save(&gap);
        }
        let margin = chrono::Duration::from_std(self.settings.margin).unwrap_or_default();
        let max_chunk = chrono::Duration::from_std(self.settings.max_chunk)
            .unwrap_or(chrono::Duration::hours(1));
        let chunks = query::chunks(gap.start - margin, gap.end + margin, max_chunk);
        let mut seen: HashSet<String> = HashSet::new();
        while gap.chunk < chunks.len() {
            let (from, to) = chunks[gap.chunk];
            self.budget.acquire().await;
            let Some(token) = self.token.valid() else {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            };
            let body = query::body(from, to, gap.page, self.settings.page_size);
            self.metrics.backfill_requests.inc();
            gap.requests += 1;
            match self.client.details_query(&token.token, &body).await {
                Ok(page) => {
                    gap.attempts = 0;
                    let conversations = query::conversations(&page);
                    let full_page = conversations.len() >= self.settings.page_size as usize;
                    for conversation in conversations {
                        let Some(id) = conversation
                            .get("conversationId")
                            .and_then(|v| v.as_str())
                            .map(str::to_owned)
                        else {
                            continue;
                        };
                        if !query::touches(&conversation, &gap.entity_ids)
                            || !seen.insert(id.clone())
                        {
                            continue;
                        }
                        self.write_conversation(&gap, &id, &conversation).await;
                        gap.recovered += 1;
                        self.metrics.backfill_conversations.inc();
                    }
                    if full_page {
                        gap.page += 1;
                    } else {
                        gap.chunk += 1;
                        gap.page = 1;
                    }
                    self.save(&gap);
                }
                Err(RestError::RateLimited { retry_after }) => {
                    let wait = retry_after.unwrap_or_else(|| self.settings.backoff.delay(0));
                    tracing::info!(gap = %gap.id, wait_ms = wait.as_millis() as u64, "backfill rate limited; waiting as told");
                    tokio::time::sleep(wait).await;
                }
                Err(error) => {
                    gap.attempts += 1;
                    self.metrics.backfill_failures.inc();
                    tracing::warn!(gap = %gap.id, error = %error, attempt = gap.attempts, "backfill request failed");
                    self.status(&gap, json!({"type": "backfill_failed", "error": error.to_string(), "attempt": gap.attempts, "final": gap.attempts >= self.settings.max_attempts})).await;
                    if gap.attempts >= self.settings.max_attempts {
                        tracing::error!(gap = %gap.id, "backfill abandoned after repeated failures");
                        self.forget(&gap);
                        return;
                    }
                    self.save(&gap);
                    tokio::time::sleep(self.settings.backoff.delay(gap.attempts - 1)).await;
                }
            }
        }
        tracing::info!(gap = %gap.id, recovered = gap.recovered, requests = gap.requests, "gap backfilled");
        self.status(&gap, json!({"type": "backfill_completed", "conversations": gap.recovered, "requests": gap.requests})).await;
        self.metrics.gaps_backfilled.inc();
        self.forget(&gap);
    }

    fn save(&self, gap: &PendingGap) {
        if let Err(error) = self.queue.update(gap) {
            tracing::error!(gap = %gap.id, error = %error, "cannot save backfill progress");
        }
    }

    fn forget(&self, gap: &PendingGap) {
        if let Err(error) = self.queue.remove(&gap.id) {
            tracing::error!(gap = %gap.id, error = %error, "cannot update the backfill queue");
        }
    }

    async fn write_conversation(
        &self,
        gap: &PendingGap,
        id: &str,
        conversation: &serde_json::Value,
    ) {
        let raw = serde_json::to_string(conversation).unwrap_or_default();
        let Ok(raw) = RawValue::from_string(raw) else {
            return;
        };
        let payload = BackfillPayload {
            gap: gap.id.clone(),
            conversation_id: id.to_string(),
            conversation: &raw,
        };
        let bytes = serde_json::to_vec(&payload).unwrap_or_default();
        let record = Record {
            kind: BACKFILL,
            shard: gap.shard,
            received_at_ms: Utc::now().timestamp_millis(),
            payload: bytes.into(),
            index: None,
        };
        let view = self
            .conversations
            .as_ref()
            .and_then(|c| Some((c, observe::analytics(raw.get())?)));
        let Some((conversations, view)) = view else {
            self.append(record).await;
            return;
        };
        // The lifecycle records it calls for, then the conversation, under the lifecycle lock.
        loop {
            match conversations.append_analytics(&view, Source::Backfill, gap.shard, Some(&record))
            {
                Ok(_) => return,
                Err(error) => {
                    tracing::debug!(%error, "backfill waits for room in the spool");
                    let _ = self.spool.wait_for_space(record.payload.len()).await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn status(&self, gap: &PendingGap, mut body: serde_json::Value) {
        body["gap"] = json!(gap.id);
        body["shard"] = json!(gap.shard);
        body["gap_start"] = json!(gap.start);
        body["gap_end"] = json!(gap.end);
        let record = Record::gap(
            gap.shard,
            Utc::now().timestamp_millis(),
            serde_json::to_vec(&body).unwrap_or_default(),
        );
        self.append(record).await;
    }

    /// Appends, waiting for room when the spool is full: backfill can wait, it never drops.
    async fn append(&self, record: Record) {
        loop {
            match self.spool.append(&record) {
                Ok(AppendOutcome::Appended { .. }) => return,
                Ok(AppendOutcome::Dropped) | Err(SpoolError::Full { .. }) => {
                    let _ = self.spool.wait_for_space(record.payload.len()).await;
                }
                Err(error) => {
                    tracing::error!(error = %error, "spool write failed for a backfill record; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}
