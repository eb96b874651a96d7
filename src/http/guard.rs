//! Who may call, and how often: the bearer token (when tokens are configured)
//! and the per-client rate limit, on every route but `/healthz` and `/readyz`.

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
use crate::limits::{client_address, ClientId};

/// Identifies the client (its token, else its address), checks its token and
/// takes one request from its rate limit.
pub(super) async fn authorize(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let client = match &state.tokens {
        Some(tokens) => {
            let authorization = request
                .headers()
                .get(AUTHORIZATION)
                .map(HeaderValue::as_bytes);
            let Some(digest) = tokens.check(authorization) else {
                state.metrics.unauthorized.fetch_add(1, Ordering::Relaxed);
                return Err(ApiError::Unauthorized);
            };
            ClientId::Token(digest)
        }
        None => by_address(request.extensions().get::<ConnectInfo<SocketAddr>>()),
    };
    take_rate(&state, client, 1)?;
    request.extensions_mut().insert(client);
    Ok(next.run(request).await)
}

/// A client without a token: its address, when the connection passed it on.
pub(super) fn by_address(peer: Option<&ConnectInfo<SocketAddr>>) -> ClientId {
    ClientId::Address(peer.map_or([0u8; 4].into(), |ConnectInfo(peer)| {
        client_address(peer.ip())
    }))
}

/// Takes `cost` requests from the client's rate limit, if there is one.
pub(super) fn take_rate(state: &AppState, client: ClientId, cost: u32) -> Result<(), ApiError> {
    let Some(limiter) = &state.rate_limiter else {
        return Ok(());
    };
    limiter.take(client, cost).map_err(|refusal| {
        state.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
        ApiError::RateLimited(refusal)
    })
}
