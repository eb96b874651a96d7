//! Who may call, and how often: the client its bearer token names (when there
//! is a clients file), the routes it may call, and its rate limit, on every
//! route but `/healthz` and `/readyz`. Each refusal (401, 403, 429) is logged,
//! naming the client or "unknown token" and the route, never the token.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::state::AppState;
use crate::access::{presented_digest, TokenDigest};
use crate::clients::{Client, Route};
use crate::limits::{client_address, ClientId};
use crate::metrics;

/// Where a route's callers present their token, and how its refusals read:
/// cryptoserver's own routes and Vault's differ in both, and in nothing else.
pub(super) trait Dialect {
    /// The SHA-256 of the token the request presents, if it presents one.
    fn presented(request: &Request) -> Option<TokenDigest>;
    fn refuse(error: ApiError) -> Response;
}

/// cryptoserver's routes: `Authorization: Bearer`, errors as [`ApiError`] renders them.
pub(super) struct Native;

impl Dialect for Native {
    fn presented(request: &Request) -> Option<TokenDigest> {
        presented_digest(request.headers().get(AUTHORIZATION)?.as_bytes())
    }

    fn refuse(error: ApiError) -> Response {
        error.into_response()
    }
}

/// [`admit`] for cryptoserver's own routes.
pub(super) async fn authorize(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    admit::<Native>(state, request, next).await
}

/// Finds the client (by its token, else its address), checks it may call
/// this route and takes one request from its rate limit. The handlers find
/// the [`ClientId`] and, with a clients file, the [`Client`] in the
/// request's extensions, and the response carries the [`Client`] out to be
/// counted.
pub(super) async fn admit<D: Dialect>(
    state: Arc<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(clients) = &state.clients else {
        let client = by_address(request.extensions().get::<ConnectInfo<SocketAddr>>());
        if let Err(refusal) = take_rate(&state, None, client, 1) {
            return D::refuse(refusal);
        }
        request.extensions_mut().insert(client);
        return next.run(request).await;
    };
    let label = metrics::Route::of_path(request.uri().path());
    let route = Route::of_path(request.uri().path());
    let current = clients.current();
    let Some(client) =
        D::presented(&request).and_then(|digest| current.check_digest(digest).cloned())
    else {
        state.metrics.unauthorized.fetch_add(1, Ordering::Relaxed);
        audit(&state, None, label, StatusCode::UNAUTHORIZED);
        return D::refuse(ApiError::Unauthorized);
    };
    let allowed = match route {
        Some(route) if !client.routes.allows(route) => Err(ApiError::RouteNotAllowed(route)),
        _ => take_rate(&state, Some(&client), client.id, 1),
    };
    let mut response = match allowed {
        Ok(()) => {
            request.extensions_mut().insert(client.id);
            request.extensions_mut().insert(Arc::clone(&client));
            let response = next.run(request).await;
            if response.status() == StatusCode::TOO_MANY_REQUESTS {
                audit(&state, Some(&client), label, response.status());
            }
            response
        }
        Err(refusal) => {
            let response = D::refuse(refusal);
            audit(&state, Some(&client), label, response.status());
            response
        }
    };
    response.extensions_mut().insert(client);
    response
}

/// One line at `info` for a refused request, as many a second as
/// [`metrics::AuditThrottle`] lets through. The route is its label: a path a
/// client chose never reaches the log.
fn audit(state: &AppState, client: Option<&Client>, route: metrics::Route, status: StatusCode) {
    if let Some(held_back) = state.metrics.audit.admit() {
        tracing::info!(
            client = client.map_or("unknown token", |client| &client.label),
            route = route.label(),
            status = status.as_u16(),
            held_back,
            "request refused"
        );
    }
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
        .and_then(|client| client.limiter.as_deref())
        .or(state.rate_limiter.as_ref())
    else {
        return Ok(());
    };
    limiter.take(id, cost).map_err(|refusal| {
        state.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
        if let Some(client) = client {
            client.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
        }
        ApiError::RateLimited(refusal)
    })
}
