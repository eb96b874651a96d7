//! The HTTP application: its state, its routes and the layers that guard them.
//!
//! - [`state`]: what every request shares.
//! - [`observe`]: every request's span, metrics and `x-request-id`, and load shedding.
//! - [`guard`]: bearer tokens and per-client rate limits.
//! - [`handlers`]: the routes themselves.
//! - [`body`]: reading a request body within its size and time limits.
//! - [`leftover`]: the rest of a body the app answered without reading.
//! - [`error`]: every failure as a response, in one place.
//! - [`vault`]: Vault's transit HMAC API over the same keys and limits.
//!
//! No response or log line ever carries a message body, a MAC or key material.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use axum::extract::Request;
use axum::http::Uri;
use axum::middleware::from_fn_with_state;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use tower_service::Service;

mod body;
mod error;
mod guard;
mod handlers;
mod leftover;
mod observe;
mod state;
mod vault;

pub use error::{ApiError, ROUTES};
pub use handlers::MAC_HEADER;
pub use leftover::{watch_body, BodyLimits, Settled};
pub use observe::Observed;
pub use state::AppState;

/// The application as a connection serves it. Every request is observed
/// (span, metrics, `x-request-id`) and, but for the health checks, refused at
/// once beyond the concurrency limit, then routed; on every route but `/healthz` and `/readyz` it is then
/// authorized and rate-limited. Those two are for health checkers, which send
/// no token (an AWS Network Load Balancer cannot), and cost next to nothing:
/// a 401 or 429 there would take a healthy server out of its load balancer.
///
/// Observing wraps the router once instead of each route (as `Router::layer`
/// would, boxing and cloning the layer per request), and the authorization
/// layer is left out when there are neither tokens nor rate limits, as it would
/// let everything through: on the hot path each layer costs a noticeable share
/// of what axum and hyper spend on a whole request.
#[derive(Clone)]
pub struct App {
    router: Router,
    state: Arc<AppState>,
}

impl App {
    pub fn new(state: Arc<AppState>) -> App {
        let mut guarded = Router::new()
            .route("/hmac", post(handlers::hmac))
            .route("/hmac/batch", post(handlers::hmac_batch))
            .route("/verify", post(handlers::verify))
            .route("/whoami", get(handlers::whoami))
            .route("/metrics", get(handlers::metrics));
        if state.clients.is_some() || state.rate_limiter.is_some() {
            guarded = guarded.route_layer(from_fn_with_state(Arc::clone(&state), guard::authorize));
        }
        let router = Router::new()
            .merge(guarded)
            .merge(vault_router(&state))
            .route("/healthz", get(handlers::healthz))
            .route("/readyz", get(handlers::readyz))
            .fallback(|uri: Uri| async move { refuse(&uri, ApiError::NotFound) })
            .method_not_allowed_fallback(|uri: Uri| async move {
                refuse(&uri, ApiError::MethodNotAllowed)
            })
            .with_state(Arc::clone(&state));
        App { router, state }
    }
}

impl Service<Request> for App {
    type Response = Response;
    type Error = Infallible;
    type Future = Observed;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Observed {
        Observed::start(&self.state, &mut self.router, request)
    }
}

/// A refusal in the shape of the API the path is under: Vault's below `/v1/`.
fn refuse(uri: &Uri, error: ApiError) -> Response {
    if uri.path().starts_with("/v1/") {
        vault::VaultError::from(error).into_response()
    } else {
        error.into_response()
    }
}

/// Vault's routes, guarded as the others but with Vault's token header and
/// errors; `/v1/sys/health` needs no token, as in Vault.
fn vault_router(state: &Arc<AppState>) -> Router<Arc<AppState>> {
    let mut guarded = Router::new()
        .route(
            "/v1/transit/hmac/{name}",
            post(vault::hmac).put(vault::hmac),
        )
        .route(
            "/v1/transit/hmac/{name}/{algorithm}",
            post(vault::hmac).put(vault::hmac),
        )
        .route(
            "/v1/transit/verify/{name}",
            post(vault::verify).put(vault::verify),
        )
        .route(
            "/v1/transit/verify/{name}/{algorithm}",
            post(vault::verify).put(vault::verify),
        );
    if state.clients.is_some() || state.rate_limiter.is_some() {
        guarded = guarded.route_layer(from_fn_with_state(Arc::clone(state), vault::authorize));
    }
    guarded.route("/v1/sys/health", get(vault::health))
}

/// Only `GET /metrics`, for CRYPTOSERVER_METRICS_BIND. Not observed: a scrape
/// is neither counted as a request nor refused at the concurrency limit.
pub fn metrics_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(handlers::metrics))
        .with_state(state)
}
