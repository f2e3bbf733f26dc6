//! OAuth client credentials: `POST /oauth/token`, token bookkeeping and bearer checks.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine as _;
use rand::rngs::SmallRng;

use crate::config::SimClient;
use crate::errors::{api_error, oauth_error};
use crate::ids;
use crate::state::Sim;

/// Why a token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokenState {
    Valid,
    Expired,
    Revoked,
}

pub(crate) struct Token {
    pub client_id: String,
    pub expires_at: Instant,
    pub revoked: bool,
    /// Set once the janitor killed this token's channels after expiry.
    pub death_handled: bool,
}

impl Token {
    pub fn state(&self, now: Instant) -> TokenState {
        if self.revoked {
            TokenState::Revoked
        } else if now >= self.expires_at {
            TokenState::Expired
        } else {
            TokenState::Valid
        }
    }
}

pub(crate) struct AuthState {
    pub tokens: HashMap<String, Token>,
    pub issued: u64,
    rng: SmallRng,
}

impl AuthState {
    pub fn new(seed: u64) -> Self {
        AuthState {
            tokens: HashMap::new(),
            issued: 0,
            // Tokens share the channel stream's seed but not its sequence.
            rng: ids::rng_for(seed ^ 0x5EED_70CE, ids::Stream::Channels),
        }
    }

    pub fn issue(&mut self, client_id: &str, lifetime: Duration) -> String {
        let token = ids::token(&mut self.rng);
        self.tokens.insert(
            token.clone(),
            Token {
                client_id: client_id.to_owned(),
                expires_at: Instant::now() + lifetime,
                revoked: false,
                death_handled: false,
            },
        );
        self.issued += 1;
        token
    }
}

/// An authenticated API caller.
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    pub token: String,
    pub client: SimClient,
}

impl Caller {
    pub fn missing(&self, needed: &[&str]) -> Vec<String> {
        needed
            .iter()
            .filter(|p| !self.client.has_permission(p))
            .map(|p| p.to_string())
            .collect()
    }
}

/// Checks the `Authorization: Bearer` header; the error is the 401 to send.
pub(crate) fn authenticate(sim: &Sim, req: &HttpRequest) -> Result<Caller, HttpResponse> {
    let header_value = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(token) = header_value
        .strip_prefix("Bearer ")
        .or_else(|| header_value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
    else {
        return Err(api_error(
            StatusCode::UNAUTHORIZED,
            "authentication.required",
            "No authentication bearer token specified in authorization header.",
        ));
    };
    let auth = sim.auth.lock().expect("auth lock");
    let invalid = || {
        api_error(
            StatusCode::UNAUTHORIZED,
            "bad.credentials",
            "Invalid login credentials.",
        )
    };
    let Some(entry) = auth.tokens.get(token) else {
        return Err(invalid());
    };
    if entry.state(Instant::now()) != TokenState::Valid {
        return Err(invalid());
    }
    let client = sim.client(&entry.client_id).cloned().ok_or_else(invalid)?;
    Ok(Caller {
        token: token.to_owned(),
        client,
    })
}

fn basic_credentials(req: &HttpRequest) -> Option<(String, String)> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

/// `POST /oauth/token` with `grant_type=client_credentials`.
pub(crate) async fn token_endpoint(
    sim: web::Data<Sim>,
    req: HttpRequest,
    form: web::Bytes,
) -> HttpResponse {
    let fields: HashMap<String, String> = serde_urlencoded_pairs(&form);
    match fields.get("grant_type").map(String::as_str) {
        Some("client_credentials") => {}
        Some(_) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "grant type is not supported",
            )
        }
        None => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "grant_type is required",
            )
        }
    }
    let credentials = basic_credentials(&req).or_else(|| {
        Some((
            fields.get("client_id")?.clone(),
            fields.get("client_secret")?.clone(),
        ))
    });
    let Some((client_id, secret)) = credentials else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication is required",
        );
    };
    let client_ok = sim
        .client(&client_id)
        .is_some_and(|c| c.client_secret == secret);
    if !client_ok {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client not found or bad client secret",
        );
    }
    let lifetime = sim.cfg.token_lifetime;
    let token = sim
        .auth
        .lock()
        .expect("auth lock")
        .issue(&client_id, lifetime);
    HttpResponse::Ok().json(serde_json::json!({
        "access_token": token,
        "token_type": "bearer",
        "expires_in": lifetime.as_secs().max(1),
    }))
}

/// Minimal `application/x-www-form-urlencoded` parser (keys and values percent-decoded).
fn serde_urlencoded_pairs(body: &[u8]) -> HashMap<String, String> {
    let text = String::from_utf8_lossy(body);
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_parsing() {
        let f = serde_urlencoded_pairs(b"grant_type=client_credentials&client_id=a%3Ab+c");
        assert_eq!(f["grant_type"], "client_credentials");
        assert_eq!(f["client_id"], "a:b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%4"), "%4");
    }
}
