//! The Genesys REST control plane: OAuth, channels, subscriptions, org listings.
//!
//! Every HTTP status Genesys can answer is sorted into [`RestError`] here, in one place, with its
//! consequence: retry later, get a new token, or give up on this request.

use std::time::Duration;

use awc::http::{header, StatusCode, Version};
use base64::Engine;

use super::endpoints::Endpoints;
use super::wire::{
    Channel, NamedEntity, OAuthError, Page, SubscribedTopic, SubscriptionResponse, TokenResponse,
    TopicRef,
};
use crate::secret::Secret;

/// A failed Genesys REST call, classified by what the caller should do about it.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum RestError {
    /// 401: the token is unknown, expired or revoked. Consequence: get a new token, then retry.
    #[error("unauthorized (401): {0}")]
    Unauthorized(String),
    /// 403: the client lacks a permission. Consequence: not retried; reported.
    #[error("forbidden (403): {0}")]
    Forbidden(String),
    /// 404: the channel (or other resource) does not exist. Consequence: recreate it.
    #[error("not found (404)")]
    NotFound,
    /// 429: rate limited. Consequence: retry after `retry_after` (or the backoff).
    #[error("rate limited (429), retry after {retry_after:?}")]
    RateLimited { retry_after: Option<Duration> },
    /// 5xx except 501: Genesys is struggling. Consequence: retry with backoff.
    #[error("server error ({0})")]
    Server(u16),
    /// Any other 4xx (and 501): the request is wrong. Consequence: not retried; reported.
    #[error("request refused ({status}): {body}")]
    Refused { status: u16, body: String },
    /// Connection, TLS or timeout trouble. Consequence: retry with backoff.
    #[error("transport error: {0}")]
    Transport(String),
    /// The answer did not have the documented shape. Consequence: not retried; reported.
    #[error("unexpected response: {0}")]
    Decode(String),
}

impl RestError {
    /// Whether repeating the same request later can succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            RestError::RateLimited { .. } | RestError::Server(_) | RestError::Transport(_)
        )
    }

    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            RestError::Unauthorized(_) => "unauthorized",
            RestError::Forbidden(_) => "forbidden",
            RestError::NotFound => "not_found",
            RestError::RateLimited { .. } => "rate_limited",
            RestError::Server(_) => "server",
            RestError::Refused { .. } => "refused",
            RestError::Transport(_) => "transport",
            RestError::Decode(_) => "decode",
        }
    }
}

/// Sorts a non-success status into a [`RestError`].
pub fn classify_status(status: u16, retry_after: Option<Duration>, body: &str) -> RestError {
    let body = truncate(body, 300);
    match status {
        401 => RestError::Unauthorized(body),
        403 => RestError::Forbidden(body),
        404 => RestError::NotFound,
        429 => RestError::RateLimited { retry_after },
        501 => RestError::Refused { status, body },
        500..=599 => RestError::Server(status),
        _ => RestError::Refused { status, body },
    }
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((index, _)) => format!("{}…", &text[..index]),
        None => text.to_string(),
    }
}

/// The longest wait a `Retry-After` is obeyed for: a longer one (`1e20`) is absurd, not a plan.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// The longest token lifetime believed (Genesys' client-credentials tokens last hours, 86,400 s
/// in its documented example); beyond it `expires_in` is taken as absurd.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// Parses `Retry-After` (seconds; Genesys does not send HTTP dates), at most
/// [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(value: Option<&str>) -> Option<Duration> {
    value
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|secs| secs.is_finite() && *secs >= 0.0)
        .map(|secs| Duration::from_secs_f64(secs.min(MAX_RETRY_AFTER.as_secs_f64())))
}

/// A token's `expires_in` (seconds) as a lifetime, at most [`MAX_TOKEN_LIFETIME`] (a larger one
/// would overflow deadlines computed from it).
pub fn token_lifetime(expires_in: u64) -> Duration {
    let lifetime = Duration::from_secs(expires_in);
    if lifetime > MAX_TOKEN_LIFETIME {
        tracing::warn!(
            expires_in,
            max_s = MAX_TOKEN_LIFETIME.as_secs(),
            "implausible token lifetime from the login server; using the maximum"
        );
    }
    lifetime.min(MAX_TOKEN_LIFETIME)
}

/// Builds the HTTP/1.1-only awc client used for REST and WebSockets.
///
/// HTTP/1.1 only: an h2 ALPN offer breaks the WebSocket upgrade over TLS.
pub fn http_client(timeout: Duration) -> awc::Client {
    // Only the ring provider is compiled in; installing it as the process default lets awc build
    // its rustls config. A second install (another client) is refused harmlessly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let connector = awc::Connector::new()
        .max_http_version(Version::HTTP_11)
        .timeout(timeout);
    awc::Client::builder()
        .connector(connector)
        .timeout(timeout)
        .max_http_version(Version::HTTP_11)
        .finish()
}

/// An issued access token.
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub token: Secret,
    pub expires_in: Duration,
}

/// A Genesys REST client bound to one set of endpoints.
#[derive(Clone)]
pub struct GenesysClient {
    endpoints: Endpoints,
    http: awc::Client,
}

impl GenesysClient {
    pub fn new(endpoints: Endpoints, timeout: Duration) -> Self {
        Self {
            endpoints,
            http: http_client(timeout),
        }
    }

    /// The underlying HTTP client (also used for the WebSocket upgrade).
    pub fn http(&self) -> &awc::Client {
        &self.http
    }

    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// `POST /oauth/token` with client credentials.
    pub async fn client_credentials(
        &self,
        client_id: &str,
        client_secret: &Secret,
    ) -> Result<AccessToken, RestError> {
        let basic = base64::engine::general_purpose::STANDARD
            .encode(format!("{client_id}:{}", client_secret.expose()));
        let url = format!("{}/oauth/token", self.endpoints.login);
        let mut response = self
            .http
            .post(url)
            .insert_header((header::AUTHORIZATION, format!("Basic {basic}")))
            .send_form(&[("grant_type", "client_credentials")])
            .await
            .map_err(|e| RestError::Transport(e.to_string()))?;
        let status = response.status();
        let retry_after = retry_after_of(&response);
        let body = response
            .body()
            .limit(1 << 20)
            .await
            .map_err(|e| RestError::Transport(e.to_string()))?;
        if !status.is_success() {
            let error: OAuthError = serde_json::from_slice(&body).unwrap_or_default();
            let reason = error
                .error_description
                .or(error.description)
                .or(error.error)
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            return Err(classify_status(status.as_u16(), retry_after, &reason));
        }
        let token: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| RestError::Decode(e.to_string()))?;
        Ok(AccessToken {
            token: Secret::new(token.access_token),
            expires_in: token_lifetime(token.expires_in),
        })
    }

    /// `POST /api/v2/notifications/channels`.
    pub async fn create_channel(&self, token: &Secret) -> Result<Channel, RestError> {
        let url = format!("{}/api/v2/notifications/channels", self.endpoints.api);
        let request = self.http.post(url).bearer_auth(token.expose());
        let body = send(request, None).await?;
        serde_json::from_slice(&body).map_err(|e| RestError::Decode(e.to_string()))
    }

    /// `HEAD /api/v2/notifications/channels/{id}`: whether the channel still exists.
    pub async fn channel_exists(
        &self,
        token: &Secret,
        channel_id: &str,
    ) -> Result<bool, RestError> {
        let url = format!(
            "{}/api/v2/notifications/channels/{channel_id}",
            self.endpoints.api
        );
        let request = self.http.head(url).bearer_auth(token.expose());
        match send(request, None).await {
            Ok(_) => Ok(true),
            Err(RestError::NotFound) => Ok(false),
            Err(other) => Err(other),
        }
    }

    /// `PUT …/subscriptions?ignoreErrors=true`: replaces the channel's topics. Returns the
    /// per-topic outcome (rejected topics carry their missing permissions).
    pub async fn replace_subscriptions(
        &self,
        token: &Secret,
        channel_id: &str,
        topics: &[String],
    ) -> Result<Vec<SubscribedTopic>, RestError> {
        let url = format!(
            "{}/api/v2/notifications/channels/{channel_id}/subscriptions?ignoreErrors=true",
            self.endpoints.api
        );
        let payload: Vec<TopicRef<'_>> = topics.iter().map(|id| TopicRef { id }).collect();
        let json = serde_json::to_vec(&payload).map_err(|e| RestError::Decode(e.to_string()))?;
        let request = self
            .http
            .put(url)
            .bearer_auth(token.expose())
            .insert_header((header::CONTENT_TYPE, "application/json"));
        let body = send(request, Some(json)).await?;
        let response: SubscriptionResponse =
            serde_json::from_slice(&body).map_err(|e| RestError::Decode(e.to_string()))?;
        Ok(response.entities)
    }

    /// `POST /api/v2/analytics/conversations/details/query`: one page.
    pub async fn details_query(
        &self,
        token: &Secret,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, RestError> {
        let url = format!(
            "{}/api/v2/analytics/conversations/details/query",
            self.endpoints.api
        );
        let json = serde_json::to_vec(body).map_err(|e| RestError::Decode(e.to_string()))?;
        let request = self
            .http
            .post(url)
            .bearer_auth(token.expose())
            .insert_header((header::CONTENT_TYPE, "application/json"));
        let answer = send(request, Some(json)).await?;
        serde_json::from_slice(&answer).map_err(|e| RestError::Decode(e.to_string()))
    }

    /// `GET /api/v2/analytics/conversations/details?id=a,b`: conversations by id (at most 100;
    /// unknown ids are left out of the answer).
    pub async fn details_by_ids(
        &self,
        token: &Secret,
        ids: &[String],
    ) -> Result<serde_json::Value, RestError> {
        let mut url = url::Url::parse(&format!(
            "{}/api/v2/analytics/conversations/details",
            self.endpoints.api
        ))
        .map_err(|e| RestError::Decode(e.to_string()))?;
        url.query_pairs_mut().append_pair("id", &ids.join(","));
        let request = self.http.get(url.as_str()).bearer_auth(token.expose());
        let answer = send(request, None).await?;
        serde_json::from_slice(&answer).map_err(|e| RestError::Decode(e.to_string()))
    }

    /// Every entity of a paged listing (`/api/v2/routing/queues`, `/api/v2/users`).
    pub async fn list_all(
        &self,
        token: &Secret,
        path: &str,
    ) -> Result<Vec<NamedEntity>, RestError> {
        let mut entities = Vec::new();
        let mut page_number = 1u32;
        loop {
            let url = format!(
                "{}{path}?pageSize=100&pageNumber={page_number}",
                self.endpoints.api
            );
            let request = self.http.get(url).bearer_auth(token.expose());
            let body = send(request, None).await?;
            let page: Page<NamedEntity> =
                serde_json::from_slice(&body).map_err(|e| RestError::Decode(e.to_string()))?;
            let got = page.entities.len();
            entities.extend(page.entities);
            let last_page = page.page_count.unwrap_or(page_number);
            if got == 0 || page_number >= last_page {
                return Ok(entities);
            }
            page_number += 1;
        }
    }
}

fn retry_after_of<T>(response: &awc::ClientResponse<T>) -> Option<Duration> {
    parse_retry_after(
        response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok()),
    )
}

async fn send(
    request: awc::ClientRequest,
    body: Option<Vec<u8>>,
) -> Result<bytes::Bytes, RestError> {
    let sent = match body {
        Some(body) => request.send_body(body).await,
        None => request.send().await,
    };
    let mut response = sent.map_err(|e| RestError::Transport(e.to_string()))?;
    let status = response.status();
    let retry_after = retry_after_of(&response);
    if status == StatusCode::NO_CONTENT {
        return Ok(bytes::Bytes::new());
    }
    let body = response
        .body()
        .limit(64 << 20)
        .await
        .map_err(|e| RestError::Transport(e.to_string()))?;
    if status.is_success() {
        return Ok(body);
    }
    Err(classify_status(
        status.as_u16(),
        retry_after,
        &String::from_utf8_lossy(&body),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_have_one_consequence_each() {
        assert!(classify_status(429, Some(Duration::from_secs(3)), "").is_retriable());
        assert!(classify_status(503, None, "").is_retriable());
        assert!(!classify_status(501, None, "").is_retriable());
        assert!(!classify_status(401, None, "").is_retriable());
        assert_eq!(classify_status(404, None, ""), RestError::NotFound);
        assert!(matches!(
            classify_status(400, None, "bad"),
            RestError::Refused { status: 400, .. }
        ));
    }

    #[test]
    fn retry_after_in_seconds() {
        assert_eq!(parse_retry_after(Some("3")), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after(Some(" 1.5 ")),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_retry_after(Some("-1")), None);
        assert_eq!(parse_retry_after(None), None);
    }

    #[test]
    fn absurd_durations_from_the_network_are_clamped_not_fatal() {
        // `Duration::from_secs_f64(1e20)` panics; a deadline a century away overflows.
        assert_eq!(parse_retry_after(Some("1e20")), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after(Some("1e400")), None, "infinite");
        assert_eq!(parse_retry_after(Some("NaN")), None);
        assert_eq!(token_lifetime(u64::MAX), MAX_TOKEN_LIFETIME);
        assert_eq!(token_lifetime(86_400), Duration::from_secs(86_400));
        let _deadline = std::time::Instant::now() + token_lifetime(u64::MAX);
    }
}
