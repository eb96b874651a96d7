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
use crate::signed_clients::DocumentError;

/// Every route a client calls, as the 404 text lists them. The operator's
/// `PUT /admin/clients` is left out: it exists only with a signer.
pub const ROUTES: [(&str, &str); 7] = [
    ("POST", "/hmac"),
    ("POST", "/hmac/batch"),
    ("POST", "/verify"),
    ("GET", "/whoami"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
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
    /// A signed clients update that is refused for what it is.
    Document(DocumentError),
    /// A signed clients update larger than this.
    DocumentTooLarge {
        limit: usize,
    },
    /// A signed clients update naming a namespace the keys do not serve.
    NamespaceNotServed {
        namespace: String,
        mode: &'static str,
    },
    /// A signed clients update whose serial is not above the one in force.
    StaleSerial {
        serial: u64,
        in_force: u64,
    },
    /// A signed clients update that could not be kept in the state directory.
    NotKept(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::UnknownEncoding
            | ApiError::MissingMacHeader
            | ApiError::UndecodableMacHeader
            | ApiError::MalformedBatch(_)
            | ApiError::UnreadableBody
            | ApiError::NamespaceNotServed { .. } => StatusCode::BAD_REQUEST,
            ApiError::Document(DocumentError::OtherKey | DocumentError::Altered) => {
                StatusCode::FORBIDDEN
            }
            ApiError::Document(_) => StatusCode::BAD_REQUEST,
            ApiError::StaleSerial { .. } => StatusCode::CONFLICT,
            ApiError::NotKept(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::DocumentTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
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
    fn message(&self) -> String {
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
            ApiError::NotFound => {
                let routes: Vec<String> = ROUTES
                    .iter()
                    .map(|(method, path)| format!("{method} {path}"))
                    .collect();
                format!("no such route: use {}", routes.join(", "))
            }
            ApiError::MethodNotAllowed => {
                "method not allowed on this route (see the Allow header)".into()
            }
            ApiError::Document(error) => error.to_string(),
            ApiError::DocumentTooLarge { limit } => format!(
                "a signed clients document is at most {limit} bytes; nothing changed"
            ),
            ApiError::NamespaceNotServed { namespace, mode } => format!(
                "namespace '{namespace}' is new, and {mode} derives the namespaces' keys at \
                 startup: put it in the clients file (CRYPTOSERVER_TOKENS_FILE) and restart or \
                 replace the server; nothing changed"
            ),
            ApiError::StaleSerial { serial, in_force } => format!(
                "serial {serial} is not above the serial in force, {in_force}: an older document \
                 cannot be replayed; sign the file again with serial={} or more",
                in_force + 1
            ),
            ApiError::NotKept(error) => format!(
                "cannot keep the signed clients document in the state directory \
                 (CRYPTOSERVER_STATE_DIR): {error}; nothing changed"
            ),
        }
    }

    fn header(&self) -> Option<(HeaderName, HeaderValue)> {
        match self {
            // The client may still be sending, and closing is the only way to
            // stop it; or the body's framing broke, and nothing after it on the
            // connection can be read.
            ApiError::BodyTimeout
            | ApiError::TooLarge { .. }
            | ApiError::DocumentTooLarge { .. }
            | ApiError::UnreadableBody => Some((CONNECTION, HeaderValue::from_static("close"))),
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

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for ApiError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ApiError::MalformedBatch(error) => Some(error),
            ApiError::Document(error) => Some(error),
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
        let mut body = serde_json::json!({ "error": self.message() });
        if let ApiError::StaleSerial { in_force, .. } = self {
            body["serial_in_force"] = in_force.into();
        }
        let mut response = (self.status(), Json(body)).into_response();
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
