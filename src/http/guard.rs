//! Who may call, and how often: the client its bearer token names (when there
//! is a clients file), the routes it may call, and its rate limit, on every
//! route but `/healthz` and `/readyz`.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;

use super::error::ApiError;
use super::state::AppState;
use crate::clients::{Client, Route};
use crate::limits::{client_address, ClientId};

/// Finds the client (by its token, else its address), checks it may call
/// this route and takes one request from its rate limit. The handlers find
/// the [`ClientId`] and, with a clients file, the [`Client`] in the
/// request's extensions.
pub(super) async fn authorize(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(clients) = &state.clients else {
        let client = by_address(request.extensions().get::<ConnectInfo<SocketAddr>>());
        take_rate(&state, None, client, 1)?;
        request.extensions_mut().insert(client);
        return Ok(next.run(request).await);
    };
    let authorization = request
        .headers()
        .get(AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    let Some(client) = clients.check(authorization) else {
        state.metrics.unauthorized.fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::Unauthorized);
    };
    if let Some(route) = Route::of_path(request.uri().path()) {
        if !client.routes.allows(route) {
            return Err(ApiError::RouteNotAllowed(route));
        }
    }
    take_rate(&state, Some(client), client.id, 1)?;
    request.extensions_mut().insert(client.id);
    request.extensions_mut().insert(Arc::clone(client));
    Ok(next.run(request).await)
}

/// A client without a token: its address, when the connection passed it on.
pub(super) fn by_address(peer: Option<&ConnectInfo<SocketAddr>>) -> ClientId {
    ClientId::Address(peer.map_or([0u8; 4].into(), |ConnectInfo(peer)| {
        client_address(peer.ip())
    }))
}

/// Takes `cost` requests from the rate limit of the client: its own, else
/// the server's, if there is one.
pub(super) fn take_rate(
    state: &AppState,
    client: Option<&Client>,
    id: ClientId,
    cost: u32,
) -> Result<(), ApiError> {
    let Some(limiter) = client
        .and_then(|client| client.limiter.as_ref())
        .or(state.rate_limiter.as_ref())
    else {
        return Ok(());
    };
    limiter.take(id, cost).map_err(|refusal| {
        state.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
        ApiError::RateLimited(refusal)
    })
}
