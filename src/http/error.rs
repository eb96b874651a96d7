//! Every way a request can fail, turned into a response in one place: a status,
//! a short JSON body `{"error": "..."}` that never echoes the request, and the
//! header the status calls for.

use std::fmt;
use std::time::Duration;

use axum::http::header::{CONNECTION, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::batch::FrameError;
use crate::clients::Route;
use crate::keystore::KeyError;
use crate::limits::Refusal;

/// Every route the server answers, as the 404 text lists them.
pub const ROUTES: [(&str, &str); 16] = [
    ("POST", "/hmac"),
    ("POST", "/hmac/batch"),
    ("POST", "/verify"),
    ("GET", "/whoami"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("POST", "/v1/transit/hmac/{name}"),
    ("PUT", "/v1/transit/hmac/{name}"),
    ("POST", "/v1/transit/hmac/{name}/{algorithm}"),
    ("PUT", "/v1/transit/hmac/{name}/{algorithm}"),
    ("POST", "/v1/transit/verify/{name}"),
    ("PUT", "/v1/transit/verify/{name}"),
    ("POST", "/v1/transit/verify/{name}/{algorithm}"),
    ("PUT", "/v1/transit/verify/{name}/{algorithm}"),
    ("GET", "/v1/sys/health"),
];

#[derive(Debug)]
pub enum ApiError {
    /// `?encoding=` names no known encoding.
    UnknownEncoding,
    MissingMacHeader,
    UndecodableMacHeader,
    MalformedBatch(FrameError),
    UnreadableBody,
    BodyTimeout,
    TooLarge {
        limit: usize,
    },
    /// A key could not be read (MODE32, MODE32X): never a wrong MAC.
    KeyUnavailable,
    /// A key read took longer than this (CRYPTOSERVER_KEY_READ_TIMEOUT).
    KeyReadTimedOut(Duration),
    /// Batches held every key read they may have (CRYPTOSERVER_BATCH_READS),
    /// and the queue for them was full or none came in time.
    BatchReadsBusy,
    Unauthorized,
    /// The client's `routes=` leaves this route out.
    RouteNotAllowed(Route),
    RateLimited(Refusal),
    /// At the concurrency limit: refused at once rather than queued.
    Shed,
    NotFound,
    MethodNotAllowed,
}

impl ApiError {
    pub(super) fn status(&self) -> StatusCode {
        match self {
            ApiError::UnknownEncoding
            | ApiError::MissingMacHeader
            | ApiError::UndecodableMacHeader
            | ApiError::MalformedBatch(_)
            | ApiError::UnreadableBody => StatusCode::BAD_REQUEST,
            ApiError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::KeyUnavailable
            | ApiError::KeyReadTimedOut(_)
            | ApiError::BatchReadsBusy
            | ApiError::Shed => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::RouteNotAllowed(_) => StatusCode::FORBIDDEN,
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// What the client reads: what went wrong and what to do, never its data.
    pub(super) fn message(&self) -> String {
        match self {
            ApiError::UnknownEncoding => {
                "unknown encoding: use ?encoding=hex or ?encoding=base64".into()
            }
            ApiError::MissingMacHeader => {
                "missing X-Cryptoserver-Mac header: send the MAC to check as 64 hex digits or base64"
                    .into()
            }
            ApiError::UndecodableMacHeader => {
                "X-Cryptoserver-Mac is neither 64 hex digits nor base64 of 32 bytes".into()
            }
            ApiError::MalformedBatch(error) => error.to_string(),
            ApiError::UnreadableBody => "could not read the request body".into(),
            ApiError::BodyTimeout => {
                "the request body was not received in time (CRYPTOSERVER_BODY_TIMEOUT)".into()
            }
            ApiError::TooLarge { limit } => format!(
                "message is larger than the {limit}-byte limit (CRYPTOSERVER_MAX_BODY)"
            ),
            ApiError::KeyUnavailable => "key storage is unavailable; retry later".into(),
            ApiError::KeyReadTimedOut(timeout) => format!(
                "a key read took longer than {} s (CRYPTOSERVER_KEY_READ_TIMEOUT): the key storage is \
                 overloaded; retry after the Retry-After seconds",
                timeout.as_secs_f64()
            ),
            ApiError::BatchReadsBusy => {
                "batches are using every key read the server gives them (CRYPTOSERVER_BATCH_READS): \
                 too many batches are waiting, or none came free in this batch's turn in time; \
                 retry after the Retry-After seconds"
                    .into()
            }
            ApiError::Unauthorized => {
                "missing or unknown bearer token: send Authorization: Bearer <token>".into()
            }
            ApiError::RouteNotAllowed(route) => format!(
                "this client may not call the {} route: its routes= in the clients file leaves it out",
                route.name()
            ),
            ApiError::RateLimited(Refusal::RetryAfter(_)) => {
                "rate limit exceeded (CRYPTOSERVER_RATE_LIMIT, or the client's rate= in the clients file); \
                 retry after the Retry-After seconds"
                    .into()
            }
            ApiError::RateLimited(Refusal::LargerThanBurst) => {
                "this batch has more messages than the rate limit's burst allows; split it".into()
            }
            ApiError::Shed => {
                "server is at its concurrency limit (CRYPTOSERVER_MAX_CONCURRENT); retry shortly"
                    .into()
            }
            ApiError::NotFound => format!("no such route: use {}", routes_under("/")),
            ApiError::MethodNotAllowed => {
                "method not allowed on this route (see the Allow header)".into()
            }
        }
    }

    pub(super) fn header(&self) -> Option<(HeaderName, HeaderValue)> {
        match self {
            // The client may still be sending, and closing is the only way to
            // stop it; or the body's framing broke, and nothing after it on the
            // connection can be read.
            ApiError::BodyTimeout | ApiError::TooLarge { .. } | ApiError::UnreadableBody => {
                Some((CONNECTION, HeaderValue::from_static("close")))
            }
            ApiError::Unauthorized => Some((
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"cryptoserver\""),
            )),
            ApiError::RateLimited(Refusal::RetryAfter(wait)) => Some((
                RETRY_AFTER,
                HeaderValue::from(wait.as_secs_f64().ceil().max(1.0) as u64),
            )),
            ApiError::Shed | ApiError::KeyReadTimedOut(_) | ApiError::BatchReadsBusy => {
                Some((RETRY_AFTER, HeaderValue::from_static("1")))
            }
            _ => None,
        }
    }
}

/// The routes whose path starts with `prefix`, as `METHOD /path, ...`.
pub(super) fn routes_under(prefix: &str) -> String {
    let routes: Vec<String> = ROUTES
        .iter()
        .filter(|(_, path)| path.starts_with(prefix))
        .map(|(method, path)| format!("{method} {path}"))
        .collect();
    routes.join(", ")
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for ApiError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ApiError::MalformedBatch(error) => Some(error),
            _ => None,
        }
    }
}

impl From<KeyError> for ApiError {
    fn from(error: KeyError) -> Self {
        match error {
            KeyError::Unavailable(_) => ApiError::KeyUnavailable,
            KeyError::TimedOut(timeout) => ApiError::KeyReadTimedOut(timeout),
            KeyError::BatchReadsBusy => ApiError::BatchReadsBusy,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status(),
            Json(serde_json::json!({ "error": self.message() })),
        )
            .into_response();
        if let Some((name, value)) = self.header() {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_404_text_lists_every_route() {
        let text = ApiError::NotFound.message();
        for (method, path) in ROUTES {
            assert!(text.contains(&format!("{method} {path}")), "{text}");
        }
    }
}
