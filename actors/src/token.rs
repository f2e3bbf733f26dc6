//! TokenRefreshActor: holds a client-credentials token and replaces it before it expires.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, Utc};

use crate::backoff::ExponentialBackoff;
use crate::genesys::endpoints::Endpoints;
use crate::genesys::rest::{AccessToken, GenesysClient, RestError};
use crate::health::Health;
use crate::messages::{AreYouAlive, InjectFault, TokenChanged, TokenRejected};
use crate::metrics::Metrics;
use crate::peers::Peers;
use crate::secret::Secret;

/// How the token is obtained and refreshed.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    pub endpoints: Endpoints,
    pub client_id: String,
    pub client_secret: Secret,
    /// Refresh this long before expiry (halved lifetimes are used for very short tokens).
    pub refresh_margin: Duration,
    /// At most one refresh per this interval when Genesys rejects tokens.
    pub min_refresh_interval: Duration,
    pub backoff: ExponentialBackoff,
    pub request_timeout: Duration,
}

/// The current token, readable from every actor.
#[derive(Debug, Clone)]
pub struct TokenInfo {
    pub token: Secret,
    pub expires_at: Instant,
    pub expires_at_wall: DateTime<Utc>,
    /// Increases with every new token; channels remember the generation that created them.
    pub generation: u64,
}

#[derive(Clone, Default)]
pub struct TokenCell(Arc<RwLock<Option<TokenInfo>>>);

impl TokenCell {
    pub fn get(&self) -> Option<TokenInfo> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The current token if it is still valid.
    pub fn valid(&self) -> Option<TokenInfo> {
        self.get().filter(|t| t.expires_at > Instant::now())
    }

    fn set(&self, info: TokenInfo) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(info);
    }
}

/// When to refresh a token that lives `lifetime`: `margin` before expiry, or at half its life
/// when the lifetime is too short for the margin.
pub fn refresh_after(lifetime: Duration, margin: Duration) -> Duration {
    if lifetime > margin.saturating_mul(2) {
        lifetime - margin
    } else {
        lifetime / 2
    }
}

pub struct TokenRefreshActor {
    settings: TokenSettings,
    client: GenesysClient,
    cell: TokenCell,
    peers: Peers,
    health: Health,
    metrics: Arc<Metrics>,
    allow_fault_injection: bool,
    failures: u32,
    in_progress: bool,
    last_attempt: Option<Instant>,
    scheduled: Option<SpawnHandle>,
}

impl TokenRefreshActor {
    pub fn new(
        settings: TokenSettings,
        cell: TokenCell,
        peers: Peers,
        health: Health,
        metrics: Arc<Metrics>,
        allow_fault_injection: bool,
    ) -> Self {
        let client = GenesysClient::new(settings.endpoints.clone(), settings.request_timeout);
        Self {
            settings,
            client,
            cell,
            peers,
            health,
            metrics,
            allow_fault_injection,
            failures: 0,
            in_progress: false,
            last_attempt: None,
            scheduled: None,
        }
    }

    fn schedule(&mut self, after: Duration, ctx: &mut Context<Self>) {
        if let Some(handle) = self.scheduled.take() {
            ctx.cancel_future(handle);
        }
        self.scheduled = Some(ctx.run_later(after, |actor, ctx| {
            actor.scheduled = None;
            actor.refresh(ctx);
        }));
    }

    fn refresh(&mut self, ctx: &mut Context<Self>) {
        if self.in_progress {
            return;
        }
        self.in_progress = true;
        self.last_attempt = Some(Instant::now());
        let client = self.client.clone();
        let client_id = self.settings.client_id.clone();
        let secret = self.settings.client_secret.clone();
        async move { client.client_credentials(&client_id, &secret).await }
            .into_actor(self)
            .map(|result, actor, ctx| {
                actor.in_progress = false;
                match result {
                    Ok(token) => actor.on_token(token, ctx),
                    Err(error) => actor.on_failure(error, ctx),
                }
            })
            .spawn(ctx);
    }

    fn on_token(&mut self, issued: AccessToken, ctx: &mut Context<Self>) {
        self.failures = 0;
        let generation = self.cell.get().map_or(1, |t| t.generation + 1);
        let lifetime = issued.expires_in;
        let expires_at_wall =
            Utc::now() + chrono::Duration::from_std(lifetime).unwrap_or(chrono::Duration::zero());
        self.cell.set(TokenInfo {
            token: issued.token,
            expires_at: Instant::now() + lifetime,
            expires_at_wall,
            generation,
        });
        {
            let mut health = self.health.lock();
            health.token.expires_at = Some(expires_at_wall);
            health.token.refreshed_at = Some(Utc::now());
            health.token.last_error = None;
        }
        self.metrics
            .token_refreshes
            .get_or_create(&Metrics::reason("ok"))
            .inc();
        let refresh_in = refresh_after(lifetime, self.settings.refresh_margin);
        tracing::info!(
            generation,
            lifetime_s = lifetime.as_secs(),
            refresh_in_s = refresh_in.as_secs(),
            "access token obtained"
        );
        for socket in self.peers.sockets() {
            // Refused when full: the socket checks the generation on its own schedule too.
            let _ = socket.try_send(TokenChanged { generation }, &self.metrics);
        }
        self.schedule(refresh_in, ctx);
    }

    fn on_failure(&mut self, error: RestError, ctx: &mut Context<Self>) {
        self.metrics
            .token_refreshes
            .get_or_create(&Metrics::reason(error.label()))
            .inc();
        let delay = match &error {
            RestError::RateLimited {
                retry_after: Some(after),
            } => *after,
            _ => self.settings.backoff.delay(self.failures),
        };
        self.failures = self.failures.saturating_add(1);
        let hint = match error {
            RestError::Unauthorized(_) | RestError::Refused { .. } => {
                " (check the client id and secret, and that the OAuth client uses the client-credentials grant)"
            }
            _ => "",
        };
        tracing::error!(error = %error, retry_in_ms = delay.as_millis() as u64, "could not get an access token{hint}");
        self.health.lock().token.last_error = Some(format!("{error}{hint}"));
        self.schedule(delay, ctx);
    }
}

impl Actor for TokenRefreshActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(16);
        self.refresh(ctx);
    }
}

impl Handler<TokenRejected> for TokenRefreshActor {
    type Result = ();

    fn handle(&mut self, msg: TokenRejected, ctx: &mut Self::Context) {
        let current = self.cell.get().map_or(0, |t| t.generation);
        if msg.generation < current {
            return; // already replaced
        }
        let recently = self
            .last_attempt
            .is_some_and(|at| at.elapsed() < self.settings.min_refresh_interval);
        if recently {
            let wait = self.settings.min_refresh_interval
                - self.last_attempt.map_or(Duration::ZERO, |at| at.elapsed());
            self.schedule(wait, ctx);
            return;
        }
        tracing::warn!(
            generation = msg.generation,
            "Genesys rejected the token; refreshing now"
        );
        self.refresh(ctx);
    }
}

impl Handler<AreYouAlive> for TokenRefreshActor {
    type Result = ();
    fn handle(&mut self, _: AreYouAlive, _: &mut Self::Context) {}
}

impl Handler<InjectFault> for TokenRefreshActor {
    type Result = ();
    fn handle(&mut self, fault: InjectFault, _: &mut Self::Context) {
        fault.apply(self.allow_fault_injection, "TokenRefreshActor");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refreshes_before_expiry() {
        let minute = Duration::from_secs(60);
        assert_eq!(
            refresh_after(minute * 60 * 24, minute),
            minute * (60 * 24 - 1)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(10), minute),
            Duration::from_secs(5)
        );
    }
}
