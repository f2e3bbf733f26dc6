//! ReconcileActor: completes the lifecycle stream from the analytics API.
//!
//! WebSocket topics cannot see every conversation end: a conversation that ends in the IVR or a
//! flow never touches a queue or user topic, a blind transfer can move one to a queue the bridge
//! cannot subscribe to, and a gap hides whatever happened in it. Every `interval` this actor:
//! 1. sweeps the details query over the conversations that started since the last sweep (up to
//!    `settle` ago: analytics lags): an ended one the lifecycle state did not end gets its
//!    `started` (if missing) and `ended` records with `source: reconciliation`; one still going
//!    that the stream does not see is watched;
//! 2. adds the open conversations without a snapshot for `quiet_after` to the watch list;
//! 3. looks the watched ones up by id (100 per request) and ends those analytics has ended.
//!
//! Requests come out of the budget backfill uses. The sweep position and the watch list are
//! saved in `reconcile.json`; the lifecycle state makes a repeated finding harmless.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{query, RequestBudget};
use crate::backoff::ExponentialBackoff;
use crate::conversations::{observe, Conversations, Kind, Source};
use crate::genesys::endpoints::Endpoints;
use crate::genesys::rest::{GenesysClient, RestError};
use crate::messages::AreYouAlive;
use crate::metrics::Metrics;
use crate::token::TokenCell;

/// The state file in the spool directory.
pub const RECONCILE_FILE: &str = "reconcile.json";
/// Ids per lookup request (the API takes at most 100).
const IDS_PER_REQUEST: usize = 100;
/// Watched conversations at most (the oldest are given up beyond it).
const MAX_WATCHED: usize = 100_000;

#[derive(Debug, Clone)]
pub struct ReconcileSettings {
    pub endpoints: Endpoints,
    pub request_timeout: Duration,
    pub interval: Duration,
    pub settle: Duration,
    pub quiet_after: Duration,
    /// Never sweep or watch further back than this (below the lifecycle memory of ended
    /// conversations, so a finding can never repeat an end that was forgotten).
    pub lookback: Duration,
    pub page_size: u32,
    pub backoff: ExponentialBackoff,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    /// Conversations that started before this were swept.
    swept_to: Option<DateTime<Utc>>,
    /// Conversation id → its start (epoch ms).
    watched: BTreeMap<String, i64>,
}

pub struct ReconcileActor {
    /// Taken when the actor starts: it runs the schedule.
    worker: Option<Worker>,
}

impl ReconcileActor {
    pub fn new(
        settings: Arc<ReconcileSettings>,
        conversations: Conversations,
        token: TokenCell,
        metrics: Arc<Metrics>,
        budget: RequestBudget,
        spool_dir: &std::path::Path,
    ) -> Self {
        let client = GenesysClient::new(settings.endpoints.clone(), settings.request_timeout);
        let worker = Worker {
            client,
            settings,
            conversations,
            token,
            metrics,
            budget,
            path: spool_dir.join(RECONCILE_FILE),
            saved: Saved::default(),
        };
        Self {
            worker: Some(worker),
        }
    }
}

impl Actor for ReconcileActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(8);
        let Some(mut worker) = self.worker.take() else {
            return;
        };
        worker.saved = std::fs::read(&worker.path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Saved>(&bytes).ok())
            .unwrap_or_default();
        async move { worker.run().await }
            .into_actor(self)
            .map(|_, _, ctx| ctx.stop())
            .spawn(ctx);
    }
}

impl Handler<AreYouAlive> for ReconcileActor {
    type Result = ();
    fn handle(&mut self, _: AreYouAlive, _: &mut Self::Context) {}
}

struct Worker {
    client: GenesysClient,
    settings: Arc<ReconcileSettings>,
    conversations: Conversations,
    token: TokenCell,
    metrics: Arc<Metrics>,
    budget: RequestBudget,
    path: PathBuf,
    saved: Saved,
}

impl Worker {
    async fn run(mut self) {
        loop {
            tokio::time::sleep(self.settings.interval).await;
            match self.reconcile().await {
                Ok(found) => {
                    self.metrics.reconciliation_runs.inc();
                    if found > 0 {
                        tracing::info!(
                            records = found,
                            watched = self.saved.watched.len(),
                            "reconciliation completed the lifecycle stream"
                        );
                    }
                }
                Err(error) => {
                    self.metrics.reconciliation_failures.inc();
                    tracing::warn!(%error, "reconciliation run failed; the next run goes on from here");
                }
            }
            self.metrics
                .reconciliation_watched
                .set(self.saved.watched.len() as i64);
            self.save();
        }
    }

    async fn token(&self) -> crate::secret::Secret {
        loop {
            if let Some(token) = self.token.valid() {
                return token.token;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// One run; the number of lifecycle records written.
    async fn reconcile(&mut self) -> Result<usize, RestError> {
        let now = Utc::now();
        let lookback = chrono::Duration::from_std(self.settings.lookback).unwrap_or_default();
        let settle = chrono::Duration::from_std(self.settings.settle).unwrap_or_default();
        let quiet = self.settings.quiet_after;
        let mut found = 0;
        let to = now - settle;
        let from = self
            .saved
            .swept_to
            .unwrap_or(to - chrono::Duration::from_std(self.settings.interval).unwrap_or_default())
            .max(now - lookback);
        if to > from {
            let mut page = 1;
            loop {
                let body = query::body(from, to, page, self.settings.page_size);
                self.budget.acquire().await;
                let token = self.token().await;
                self.metrics.reconciliation_requests.inc();
                let answer = self.client.details_query(&token, &body).await?;
                let conversations = query::conversations(&answer);
                let full = conversations.len() >= self.settings.page_size as usize;
                for conversation in conversations {
                    let Some(view) = observe::analytics(&conversation.to_string()) else {
                        continue;
                    };
                    if view.end_ms.is_some() {
                        found += self.end(&view).await;
                    } else if !self.conversations.seen_within(&view.conversation_id, quiet) {
                        let start = view.start_ms.unwrap_or(now.timestamp_millis());
                        self.saved.watched.insert(view.conversation_id, start);
                    }
                }
                if !full {
                    break;
                }
                page += 1;
            }
            self.saved.swept_to = Some(to);
        }
        for (id, start) in self.conversations.quiet_open(quiet, MAX_WATCHED) {
            self.saved.watched.entry(id).or_insert(start);
        }
        let horizon = (now - lookback).timestamp_millis();
        let conversations = &self.conversations;
        self.saved.watched.retain(|id, start| {
            *start >= horizon
                && !conversations.has_ended(id)
                && !conversations.seen_within(id, quiet)
        });
        while self.saved.watched.len() > MAX_WATCHED {
            let oldest = self
                .saved
                .watched
                .iter()
                .min_by_key(|(_, s)| **s)
                .map(|(id, _)| id.clone());
            if let Some(id) = oldest {
                self.saved.watched.remove(&id);
            }
        }
        let ids: Vec<String> = self.saved.watched.keys().cloned().collect();
        for batch in ids.chunks(IDS_PER_REQUEST) {
            self.budget.acquire().await;
            let token = self.token().await;
            self.metrics.reconciliation_requests.inc();
            let answer = self.client.details_by_ids(&token, batch).await?;
            for conversation in query::conversations(&answer) {
                let Some(view) = observe::analytics(&conversation.to_string()) else {
                    continue;
                };
                if view.end_ms.is_some() {
                    found += self.end(&view).await;
                    self.saved.watched.remove(&view.conversation_id);
                }
            }
        }
        Ok(found)
    }

    /// Writes what an ended analytics conversation calls for; waits for room in the spool.
    async fn end(&self, view: &crate::conversations::AnalyticsView) -> usize {
        loop {
            match self
                .conversations
                .append_analytics(view, Source::Reconciliation, 0, None)
            {
                Ok(records) => {
                    for r in &records {
                        let kind = match r.kind {
                            Kind::Started => "started",
                            Kind::Ended => "ended",
                            Kind::Wrapup => "wrapup",
                        };
                        self.metrics
                            .reconciliation_findings
                            .get_or_create(&Metrics::kind(kind))
                            .inc();
                    }
                    return records.len();
                }
                Err(error) => {
                    tracing::debug!(%error, "reconciliation waits for room in the spool");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    fn save(&self) {
        let Ok(bytes) = serde_json::to_vec(&self.saved) else {
            return;
        };
        let reserve = self.conversations.disk_reserve();
        if let Err(error) =
            reserve.with_room(|| crate::private_fs::replace_file(&self.path, &bytes))
        {
            tracing::warn!(%error, file = %self.path.display(), "cannot save the reconciliation state");
        }
    }
}
