//! Who may call, and how often: the client its bearer token names (when there
//! is a clients file), the routes it may call, and its rate limit, on every
//! route but the health checks. Each refusal (401, 403, 429) is logged, naming
//! the client or "unknown token" and the route, never the token.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};

use axum::extract::{ConnectInfo, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::{Method, StatusCode};

use super::error::{ApiError, ROUTES};
use super::state::AppState;
use crate::access::{presented_digest, TokenDigest};
use crate::clients::{Client, Route};
use crate::limits::{client_address, ClientId};
use crate::metrics;

/// Why a request was refused, and its client when its token named one.
pub(super) struct Refused {
    pub error: ApiError,
    pub client: Option<Arc<Client>>,
}

/// Where a route's callers present their token: cryptoserver's own routes
/// and Vault's differ in that, and in the shape of their refusals, which the
/// observing service gives them.
pub(super) trait Dialect {
    /// The SHA-256 of the token the request presents, if it presents one.
    fn presented(request: &Request) -> Option<TokenDigest>;
}

/// cryptoserver's routes: `Authorization: Bearer`.
pub(super) struct Native;

impl Dialect for Native {
    fn presented(request: &Request) -> Option<TokenDigest> {
        presented_digest(request.headers().get(AUTHORIZATION)?.as_bytes())
    }
}

/// The method and route label of every route the guard admits requests to:
/// every route but the health checks. A wrong method gets its 405 without a
/// token, as an unknown path gets its 404.
static GUARDED: LazyLock<Vec<(Method, metrics::Route)>> = LazyLock::new(|| {
    ROUTES
        .iter()
        .map(|(method, path)| {
            let method = Method::from_bytes(method.as_bytes()).expect("ROUTES names methods");
            (method, metrics::Route::of_path(path))
        })
        .filter(|(_, route)| !route.is_health())
        .collect()
});

/// Whether a request to `route` with `method` must pass [`authorize`].
pub(super) fn guards(method: &Method, route: metrics::Route) -> bool {
    GUARDED
        .iter()
        .any(|(guarded_method, guarded)| *guarded == route && guarded_method == method)
}

/// Finds the client (by its token, else its address), checks it may call
/// this route and takes one request from its rate limit, before the request
/// is routed. The handlers find the [`Client`] in the request's extensions
/// with a clients file, else the [`ClientId`]; the client is returned to be
/// counted with the response's status; the observing service answers and
/// logs a refusal ([`audit`]). A plain function the observing
/// service calls, rather than a middleware: on the hot path a middleware's
/// boxed service and future cost a noticeable share of a whole request.
pub(super) fn authorize<D: Dialect>(
    state: &AppState,
    request: &mut Request,
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
    let current = clients.current();
    let Some(client) =
        D::presented(request).and_then(|digest| current.check_digest(digest).cloned())
    else {
        state.metrics.unauthorized.fetch_add(1, Ordering::Relaxed);
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
