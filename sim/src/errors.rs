//! Genesys' error bodies: the API's `ErrorBody` and the login service's OAuth error.

use std::sync::atomic::{AtomicU64, Ordering};

use actix_web::http::StatusCode;
use actix_web::HttpResponse;

static CONTEXT_SEQ: AtomicU64 = AtomicU64::new(1);

/// `{"message","code","status","messageParams","contextId","details","errors"}` as the API sends.
pub(crate) fn api_error(
    status: StatusCode,
    code: &str,
    message: impl Into<String>,
) -> HttpResponse {
    let context = CONTEXT_SEQ.fetch_add(1, Ordering::Relaxed);
    HttpResponse::build(status).json(serde_json::json!({
        "message": message.into(),
        "code": code,
        "status": status.as_u16(),
        "messageParams": {},
        "contextId": format!("sim-context-{context:08}"),
        "details": [],
        "errors": [],
    }))
}

/// `{"error","description","error_description"}` as the login service sends.
pub(crate) fn oauth_error(status: StatusCode, error: &str, description: &str) -> HttpResponse {
    HttpResponse::build(status).json(serde_json::json!({
        "error": error,
        "description": description,
        "error_description": description,
    }))
}

pub(crate) fn not_found(what: &str) -> HttpResponse {
    api_error(
        StatusCode::NOT_FOUND,
        "not.found",
        format!("The requested {what} was not found."),
    )
}

pub(crate) fn bad_request(message: impl Into<String>) -> HttpResponse {
    api_error(StatusCode::BAD_REQUEST, "bad.request", message)
}

pub(crate) fn missing_permissions(missing: &[String]) -> HttpResponse {
    api_error(
        StatusCode::FORBIDDEN,
        "missing.permissions",
        format!(
            "Unable to perform the requested action. You are missing the following permission(s): [{}]",
            missing.join(", ")
        ),
    )
}
