//! REST faults: 429 with `Retry-After`, 500, or a delay, for the next N calls or for a
//! duration, applied by a middleware to `/oauth/*` and `/api/*` (never `/sim/*`).

use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage as _};
use serde::{Deserialize, Serialize};

use crate::errors::api_error;
use crate::requests::InjectedFault;
use crate::state::Sim;

/// What a REST fault answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestFaultKind {
    /// 429 with `Retry-After: retry_after_s`.
    TooManyRequests,
    /// 500.
    ServerError,
    /// The real answer, `delay_ms` late.
    Delay,
}

/// Which REST calls a REST fault applies to (never `/sim/*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestScope {
    #[default]
    All,
    /// `/api/v2/*` only.
    Api,
    /// `/oauth/token` only.
    Oauth,
}

/// A REST fault: for the next `count` matching calls, or for `duration_ms`; with neither, the
/// next call only.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RestFault {
    pub kind: RestFaultKind,
    #[serde(default)]
    pub count: Option<u32>,
    #[serde(default)]
    pub duration_ms: Option<u64>,
    #[serde(default)]
    pub scope: RestScope,
    #[serde(default = "one")]
    pub retry_after_s: u64,
    #[serde(default = "thousand")]
    pub delay_ms: u64,
}

fn one() -> u64 {
    1
}

fn thousand() -> u64 {
    1000
}

impl RestFault {
    /// A fault of this kind for the next `count` calls, with default parameters.
    pub fn next_calls(kind: RestFaultKind, count: u32) -> Self {
        RestFault {
            kind,
            count: Some(count),
            duration_ms: None,
            scope: RestScope::All,
            retry_after_s: 1,
            delay_ms: 1000,
        }
    }
}

struct ActiveRestFault {
    fault: RestFault,
    remaining: Option<u32>,
    until: Option<Instant>,
}

/// Pending REST faults, first match wins.
#[derive(Default)]
pub(crate) struct RestFaults {
    active: Vec<ActiveRestFault>,
}

impl RestFaults {
    pub(crate) fn push(&mut self, fault: RestFault) {
        let until = fault
            .duration_ms
            .map(|ms| Instant::now() + Duration::from_millis(ms));
        let remaining = match (fault.count, until) {
            (Some(n), _) => Some(n),
            (None, Some(_)) => None,
            (None, None) => Some(1),
        };
        self.active.push(ActiveRestFault {
            fault,
            remaining,
            until,
        });
    }

    pub(crate) fn clear(&mut self) {
        self.active.clear();
    }

    /// The fault to apply to one call in `scope`, consuming it.
    fn take(&mut self, scope: RestScope) -> Option<RestFault> {
        let now = Instant::now();
        self.active
            .retain(|f| f.remaining != Some(0) && f.until.is_none_or(|u| now < u));
        let f = self
            .active
            .iter_mut()
            .find(|f| f.fault.scope == RestScope::All || f.fault.scope == scope)?;
        if let Some(n) = f.remaining.as_mut() {
            *n -= 1;
        }
        Some(f.fault.clone())
    }
}

/// Middleware applying pending REST faults to `/oauth/*` and `/api/*`.
pub(crate) async fn rest_fault_layer(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let scope = if req.path().starts_with("/oauth/") {
        Some(RestScope::Oauth)
    } else if req.path().starts_with("/api/") {
        Some(RestScope::Api)
    } else {
        None
    };
    let fault = match (scope, req.app_data::<web::Data<Sim>>()) {
        (Some(scope), Some(sim)) => sim.rest_faults.lock().expect("faults lock").take(scope),
        _ => None,
    };
    let Some(fault) = fault else {
        return next.call(req).await.map(|r| r.map_into_boxed_body());
    };
    req.extensions_mut().insert(InjectedFault(fault.kind));
    match fault.kind {
        RestFaultKind::Delay => {
            tokio::time::sleep(Duration::from_millis(fault.delay_ms)).await;
            next.call(req).await.map(|r| r.map_into_boxed_body())
        }
        RestFaultKind::TooManyRequests => {
            let mut resp = api_error(
                StatusCode::TOO_MANY_REQUESTS,
                "too.many.requests",
                format!(
                    "Rate limit exceeded the maximum. Retry the request in [{}] seconds",
                    fault.retry_after_s
                ),
            );
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from(fault.retry_after_s),
            );
            Ok(req.into_response(resp).map_into_boxed_body())
        }
        RestFaultKind::ServerError => {
            let resp = api_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal.server.error",
                "The server encountered an unexpected condition.",
            );
            Ok(req.into_response(resp).map_into_boxed_body())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_faults_count_and_scope() {
        let mut faults = RestFaults::default();
        let mut f = RestFault::next_calls(RestFaultKind::ServerError, 2);
        f.scope = RestScope::Oauth;
        faults.push(f);
        assert!(faults.take(RestScope::Api).is_none());
        assert!(faults.take(RestScope::Oauth).is_some());
        assert!(faults.take(RestScope::Oauth).is_some());
        assert!(faults.take(RestScope::Oauth).is_none());
    }
}
