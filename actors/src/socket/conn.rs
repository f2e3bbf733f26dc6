//! Getting one shard onto a live channel: create → subscribe → connect.

use std::time::Duration;

use actix_codec::Framed;
use awc::error::WsClientError;
use awc::ws;
use awc::BoxedSocket;

use crate::genesys::rest::{GenesysClient, RestError};
use crate::genesys::wire::{Channel, SubscribedTopic};
use crate::secret::{short_channel_id, ConnectUri, Secret};

/// A channel, subscribed and connected.
pub struct Established {
    pub channel: Channel,
    pub rejected: Vec<SubscribedTopic>,
    pub framed: Framed<BoxedSocket, ws::Codec>,
    /// Whether the channel was reused (reconnect) rather than created.
    pub reused: bool,
}

/// Why a shard could not get onto a channel.
#[derive(Debug, thiserror::Error)]
pub enum EstablishError {
    #[error("{step}: {error}")]
    Rest {
        step: &'static str,
        error: RestError,
    },
    /// The upgrade was answered with an HTTP status: 401/403/404 mean the channel is dead.
    #[error("WebSocket upgrade refused with HTTP {0}")]
    UpgradeRefused(u16),
    #[error("WebSocket connect failed: {0}")]
    Connect(String),
}

impl EstablishError {
    /// The `Retry-After` Genesys asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            EstablishError::Rest {
                error: RestError::RateLimited { retry_after },
                ..
            } => *retry_after,
            _ => None,
        }
    }

    pub fn is_unauthorized(&self) -> bool {
        matches!(
            self,
            EstablishError::Rest {
                error: RestError::Unauthorized(_),
                ..
            }
        )
    }

    pub fn label(&self) -> &'static str {
        match self {
            EstablishError::Rest { error, .. } => error.label(),
            EstablishError::UpgradeRefused(_) => "upgrade_refused",
            EstablishError::Connect(_) => "connect_failed",
        }
    }
}

/// What to connect to.
pub struct Plan {
    pub client: GenesysClient,
    pub token: Secret,
    pub topics: Vec<String>,
    pub max_frame_bytes: usize,
    /// Reconnect to this channel first (after an unplanned drop); a dead one is replaced.
    pub reuse: Option<(Channel, Vec<SubscribedTopic>)>,
}

pub async fn establish(plan: Plan) -> Result<Established, EstablishError> {
    if let Some((channel, rejected)) = plan.reuse.clone() {
        match connect(&plan, &channel.connect_uri).await {
            Ok(framed) => {
                return Ok(Established {
                    channel,
                    rejected,
                    framed,
                    reused: true,
                })
            }
            Err(EstablishError::UpgradeRefused(status)) => {
                tracing::info!(
                    channel = %short_channel_id(&channel.id),
                    status,
                    "old channel is gone; creating a new one"
                );
            }
            Err(other) => return Err(other),
        }
    }
    let channel = plan
        .client
        .create_channel(&plan.token)
        .await
        .map_err(|error| EstablishError::Rest {
            step: "create channel",
            error,
        })?;
    let outcome = plan
        .client
        .replace_subscriptions(&plan.token, &channel.id, &plan.topics)
        .await
        .map_err(|error| EstablishError::Rest {
            step: "subscribe",
            error,
        })?;
    let rejected: Vec<SubscribedTopic> = outcome.into_iter().filter(|t| t.is_rejected()).collect();
    let framed = connect(&plan, &channel.connect_uri).await?;
    Ok(Established {
        channel,
        rejected,
        framed,
        reused: false,
    })
}

async fn connect(
    plan: &Plan,
    connect_uri: &str,
) -> Result<Framed<BoxedSocket, ws::Codec>, EstablishError> {
    let shown = ConnectUri::new(connect_uri);
    let result = plan
        .client
        .http()
        .ws(connect_uri)
        .max_frame_size(plan.max_frame_bytes)
        .connect()
        .await;
    match result {
        Ok((_response, framed)) => Ok(framed),
        Err(WsClientError::InvalidResponseStatus(status)) => {
            Err(EstablishError::UpgradeRefused(status.as_u16()))
        }
        Err(other) => Err(EstablishError::Connect(format!("{shown}: {other}"))),
    }
}
