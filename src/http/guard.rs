//! Who may call, and how often: the client its bearer token names (when there
//! is a clients file), the routes it may call, and its rate limit, on every
//! route but `/healthz` and `/readyz`. Each refusal (401, 403, 429) is logged,
//! naming the client or "unknown token" and the route, never the token.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderValue, Method, StatusCode};

use super::error::{ApiError, ROUTES};
use super::state::AppState;
use crate::clients::{Client, Route};
use crate::limits::{client_address, ClientId};
use crate::metrics;

/// Why a request was refused, and its client when its token named one.
pub(super) struct Refused {
    pub error: ApiError,
    pub client: Option<Arc<Client>>,
}

/// Whether a request must pass [`authorize`]: every route but the health
/// checks, and only a route the router will serve with this method (a wrong
/// method gets its 405 without a token, as an unknown path gets its 404).
pub(super) fn guards(method: &Method, path: &str) -> bool {
    ROUTES
        .iter()
        .any(|(route_method, route_path)| *route_path == path && method.as_str() == *route_method)
        && !metrics::Route::of_path(path).is_health()
}

/// Finds the client (by its token, else its address), checks it may call
/// this route and takes one request from its rate limit, before the request
/// is routed. The handlers find the [`Client`] in the request's extensions
/// with a clients file, else the [`ClientId`]; the client is returned to be
/// counted with the response's status. A plain function the observing
/// service calls, rather than a middleware: on the hot path a middleware's
/// boxed service and future cost a noticeable share of a whole request.
pub(super) fn authorize(
    state: &AppState,
    request: &mut Request,
    label: metrics::Route,
) -> Result<Option<Arc<Client>>, Refused> {
    let Some(clients) = &state.clients else {
        let client = by_address(request.extensions().get::<ConnectInfo<SocketAddr>>());
        take_rate(state, None, client, 1).map_err(|error| Refused {
            error,
            client: None,
        })?;
        request.extensions_mut().insert(client);
        return Ok(None);
    };
    let authorization = request
        .headers()
        .get(AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    let Some(client) = clients.current().check(authorization).cloned() else {
        state.metrics.unauthorized.fetch_add(1, Ordering::Relaxed);
        audit(state, None, label, StatusCode::UNAUTHORIZED);
        return Err(Refused {
            error: ApiError::Unauthorized,
            client: None,
        });
    };
    let allowed = match Route::of_path(request.uri().path()) {
        Some(route) if !client.routes.allows(route) => Err(ApiError::RouteNotAllowed(route)),
        _ => take_rate(state, Some(&client), client.id, 1),
    };
    if let Err(error) = allowed {
        audit(state, Some(&client), label, error.status());
        return Err(Refused {
            error,
            client: Some(client),
        });
    }
    request.extensions_mut().insert(Arc::clone(&client));
    Ok(Some(client))
}

/// One line at `info` for a refused request, as many a second as
/// [`metrics::AuditThrottle`] lets through. The route is its label: a path a
/// client chose never reaches the log.
pub(super) fn audit(
    state: &AppState,
    client: Option<&Client>,
    route: metrics::Route,
    status: StatusCode,
) {
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
