//! The routes: `POST /hmac`, `POST /hmac/batch`, `POST /verify`, `GET /whoami`,
//! `GET /healthz`, `GET /readyz`, `GET /metrics`. MACs are in the caller's
//! namespace: the one its line in the clients file names, if any.

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, FromRequestParts, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine as _;
use serde::Deserialize;

use super::body::read_message;
use super::error::ApiError;
use super::guard::{by_address, take_rate};
use super::state::AppState;
use crate::batch::parse_frames;
use crate::clients::{Client, LiveClients, Routes};
use crate::limits::{ClientId, RateLimiter};
use crate::mac::{macs_equal, parse_mac, Mac, BASE64};

/// Header carrying the MAC that `POST /verify` checks.
pub const MAC_HEADER: &str = "x-cryptoserver-mac";

#[derive(Deserialize)]
struct MacQuery {
    encoding: Option<Encoding>,
}

#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Encoding {
    Raw,
    Hex,
    Base64,
}

/// `?encoding=` of `POST /hmac`: raw bytes unless it says otherwise.
impl<S: Send + Sync> FromRequestParts<S> for Encoding {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Encoding, ApiError> {
        // The usual request has no query: no parser runs for it.
        if parts.uri.query().is_none() {
            return Ok(Encoding::Raw);
        }
        let Query(query) =
            Query::<MacQuery>::try_from_uri(&parts.uri).map_err(|_| ApiError::UnknownEncoding)?;
        Ok(query.encoding.unwrap_or(Encoding::Raw))
    }
}

/// The client the guard found, when there is a clients file.
pub(super) type Caller = Option<Extension<Arc<Client>>>;

fn namespace(caller: &Caller) -> Option<&str> {
    caller
        .as_ref()
        .and_then(|Extension(client)| client.namespace.as_deref())
}

pub(super) async fn hmac(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    encoding: Encoding,
    body: Body,
) -> Result<Response, ApiError> {
    let message = read_message(body, &state).await?;
    let mac = mac_of(&state, &caller, &message).await?;
    Ok(match encoding {
        // A Vec<u8> is already application/octet-stream.
        Encoding::Raw => mac.to_vec().into_response(),
        Encoding::Hex => ([(CONTENT_TYPE, "text/plain")], hex::encode(mac)).into_response(),
        Encoding::Base64 => ([(CONTENT_TYPE, "text/plain")], BASE64.encode(mac)).into_response(),
    })
}

/// Nothing is computed unless the whole body frames correctly.
pub(super) async fn hmac_batch(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    client: Option<Extension<ClientId>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    body: Body,
) -> Result<Response, ApiError> {
    let body = read_message(body, &state).await?;
    let frames = parse_frames(&body).map_err(ApiError::MalformedBatch)?;
    let macs = batch_macs(&state, &caller, (client, peer), body, frames).await?;
    Ok(macs.into_response())
}

/// The MACs of the messages at `frames` in `body`, concatenated in order: each
/// message counts against the rate limit (the request itself took one). The
/// client (its token, else its address) is who the batch's key reads are
/// shared by.
pub(super) async fn batch_macs(
    state: &AppState,
    caller: &Caller,
    (client, peer): (
        Option<Extension<ClientId>>,
        Option<Extension<ConnectInfo<SocketAddr>>>,
    ),
    body: Bytes,
    frames: Vec<Range<usize>>,
) -> Result<Vec<u8>, ApiError> {
    let client = match client {
        Some(Extension(client)) => {
            let cost = frames.len().saturating_sub(1) as u32;
            let own = caller.as_ref().map(|Extension(caller)| &**caller);
            take_rate(state, own, client, cost)?;
            client
        }
        None => by_address(peer.as_ref().map(|Extension(peer)| peer)),
    };
    let hashed: usize = frames.iter().map(|frame| frame.len()).sum();
    let count = frames.len();
    let macs = state
        .keys
        .mac_batch(client, namespace(caller), body, frames)
        .await?;
    record_macs(state, caller, count, hashed);
    Ok(macs)
}

pub(super) async fn verify(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let presented = decode_mac_header(headers.get(MAC_HEADER))?;
    let message = read_message(body, &state).await?;
    let expected = mac_of(&state, &caller, &message).await?;
    Ok(Json(serde_json::json!({ "valid": macs_equal(&expected, &presented) })).into_response())
}

pub(super) async fn mac_of(
    state: &AppState,
    caller: &Caller,
    message: &[u8],
) -> Result<Mac, ApiError> {
    let mac = state.keys.mac(namespace(caller), message).await?;
    record_macs(state, caller, 1, message.len());
    Ok(mac)
}

fn record_macs(state: &AppState, caller: &Caller, count: usize, bytes: usize) {
    if let Some(Extension(client)) = caller {
        client
            .counters
            .macs
            .fetch_add(count as u64, Ordering::Relaxed);
    }
    state
        .metrics
        .macs_computed
        .fetch_add(count as u64, Ordering::Relaxed);
    state
        .metrics
        .bytes_hashed
        .fetch_add(bytes as u64, Ordering::Relaxed);
}

pub(super) async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let current = state.clients.as_ref().map(LiveClients::current);
    let clients: Vec<_> = current
        .iter()
        .flat_map(|clients| clients.iter())
        .map(|client| (client.label.as_str(), &*client.counters))
        .collect();
    let text = state.metrics.render(
        state.keys.mode().name(),
        state.keys.fingerprint(),
        (state.concurrency.in_flight(), state.connections.open()),
        state.keys.read_stats(),
        &clients,
    );
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// Who the caller is, as the clients file says: its name, namespace, routes
/// and rate limit, never its token or digest. `null` name and namespace: a
/// caller without a name (an unnamed line, or a server without a clients file).
pub(super) async fn whoami(State(state): State<Arc<AppState>>, caller: Caller) -> Response {
    let client = caller.as_ref().map(|Extension(client)| &**client);
    let rate = client
        .and_then(|client| client.rate)
        .or(state.rate_limiter.as_ref().map(RateLimiter::limit))
        .map(|rate| serde_json::json!({ "per_second": rate.per_second, "burst": rate.burst }));
    Json(serde_json::json!({
        "name": client.filter(|client| client.named).map(|client| &client.label),
        "namespace": client.and_then(|client| client.namespace.as_deref()),
        "routes": client.map_or(Routes::ALL, |client| client.routes).names().collect::<Vec<_>>(),
        "rate": rate,
    }))
    .into_response()
}

pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

/// 200 while no key file is known to fail, naming the mode and the secrets'
/// fingerprint, so replicas can be checked to serve the same secrets.
pub(super) async fn readyz(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    if !state.keys.is_ready().await {
        return Err(ApiError::KeyUnavailable);
    }
    Ok(Json(serde_json::json!({
        "ready": true,
        "mode": state.keys.mode().name(),
        "fingerprint": state.keys.fingerprint().map(|fingerprint| fingerprint.to_string()),
    }))
    .into_response())
}

fn decode_mac_header(value: Option<&HeaderValue>) -> Result<Mac, ApiError> {
    let value = value.ok_or(ApiError::MissingMacHeader)?;
    parse_mac(value.as_bytes()).ok_or(ApiError::UndecodableMacHeader)
}
