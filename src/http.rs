//! HTTP routes: `POST /hmac`, `POST /hmac/batch`, `POST /verify`, `GET /healthz`, `GET /readyz`.
//!
//! Every error becomes a short JSON body `{"error": "..."}` in [`ApiError`]; no
//! response or log line ever carries a message body, a MAC or key material.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use axum::body::HttpBody as _;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::header::{CONNECTION, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use http_body_util::BodyExt;
use serde::Deserialize;

use crate::batch::parse_frames;
use crate::keystore::KeyStore;
use crate::mac::{macs_equal, parse_mac, Mac, BASE64};

/// Header carrying the MAC that `POST /verify` checks.
pub const MAC_HEADER: &str = "x-cryptoserver-mac";

/// After a body passes the limit, read and discard up to this many times the
/// limit more, so the client sees the 413 instead of a reset connection.
const DRAIN_FACTOR: usize = 4;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

pub struct AppState {
    pub keys: KeyStore,
    pub max_body: usize,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/hmac", post(hmac))
        .route("/hmac/batch", post(hmac_batch))
        .route("/verify", post(verify))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no such route: use POST /hmac or POST /verify",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route (see the Allow header)",
            )
        })
        .with_state(state)
}

#[derive(Deserialize)]
struct MacQuery {
    encoding: Option<Encoding>,
}

#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Encoding {
    Raw,
    Hex,
    Base64,
}

async fn hmac(
    State(state): State<Arc<AppState>>,
    query: Result<Query<MacQuery>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    let encoding = query
        .map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "unknown encoding: use ?encoding=hex or ?encoding=base64",
            )
        })?
        .0
        .encoding
        .unwrap_or(Encoding::Raw);
    let message = read_message(body, state.max_body).await?;
    let mac = state
        .keys
        .mac(&message)
        .await
        .map_err(|_| ApiError::key_unavailable())?;
    Ok(match encoding {
        Encoding::Raw => {
            ([(CONTENT_TYPE, "application/octet-stream")], mac.to_vec()).into_response()
        }
        Encoding::Hex => ([(CONTENT_TYPE, "text/plain")], hex::encode(mac)).into_response(),
        Encoding::Base64 => ([(CONTENT_TYPE, "text/plain")], BASE64.encode(mac)).into_response(),
    })
}

/// Nothing is computed unless the whole body frames correctly.
async fn hmac_batch(State(state): State<Arc<AppState>>, body: Body) -> Result<Response, ApiError> {
    let body = read_message(body, state.max_body).await?;
    let frames = parse_frames(&body)
        .map_err(|error| ApiError::new(StatusCode::BAD_REQUEST, error.to_string()))?;
    let macs = state
        .keys
        .mac_batch(body, frames)
        .await
        .map_err(|_| ApiError::key_unavailable())?;
    Ok(([(CONTENT_TYPE, "application/octet-stream")], macs).into_response())
}

async fn verify(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let presented = decode_mac_header(headers.get(MAC_HEADER))?;
    let message = read_message(body, state.max_body).await?;
    let expected = state
        .keys
        .mac(&message)
        .await
        .map_err(|_| ApiError::key_unavailable())?;
    Ok(Json(serde_json::json!({ "valid": macs_equal(&expected, &presented) })).into_response())
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<Arc<AppState>>) -> Result<&'static str, ApiError> {
    if state.keys.is_ready().await {
        Ok("ready\n")
    } else {
        Err(ApiError::key_unavailable())
    }
}

fn decode_mac_header(value: Option<&HeaderValue>) -> Result<Mac, ApiError> {
    let value = value.ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing X-Cryptoserver-Mac header: send the MAC to check as 64 hex digits or base64",
        )
    })?;
    parse_mac(value.as_bytes()).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "X-Cryptoserver-Mac is neither 64 hex digits nor base64 of 32 bytes",
        )
    })
}

/// Reads the whole body, at most `limit` bytes.
async fn read_message(mut body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut length = 0usize;
    if body.size_hint().lower() > limit as u64 {
        return Err(refuse_too_large(body, limit).await);
    }
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| {
            ApiError::new(StatusCode::BAD_REQUEST, "could not read the request body")
        })?;
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        length += chunk.len();
        if length > limit {
            return Err(refuse_too_large(body, limit).await);
        }
        chunks.push(chunk);
    }
    Ok(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().expect("one chunk"),
        _ => chunks.concat().into(),
    })
}

/// Reads and discards a bounded rest of an oversized body, so the client reads
/// the 413 instead of a connection reset; a body declared far larger is not waited for.
async fn refuse_too_large(mut body: Body, limit: usize) -> ApiError {
    let mut budget = limit.saturating_mul(DRAIN_FACTOR) as u64;
    if body.size_hint().lower() <= budget {
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while let Some(Ok(frame)) = body.frame().await {
                let Ok(chunk) = frame.into_data() else {
                    continue;
                };
                match budget.checked_sub(chunk.len() as u64) {
                    Some(left) => budget = left,
                    None => return,
                }
            }
        })
        .await;
    }
    ApiError::payload_too_large(limit)
}

/// An error response: a status and a short JSON body that never echoes the request.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: Cow<'static, str>,
    close_connection: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<Cow<'static, str>>) -> Self {
        ApiError {
            status,
            message: message.into(),
            close_connection: false,
        }
    }

    fn payload_too_large(limit: usize) -> Self {
        ApiError {
            close_connection: true,
            ..ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("message is larger than the {limit}-byte limit (CRYPTOSERVER_MAX_BODY)"),
            )
        }
    }

    fn key_unavailable() -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "key storage is unavailable; retry later",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if self.close_connection {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}
