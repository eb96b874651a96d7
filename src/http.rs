//! HTTP routes (`POST /hmac`, `POST /hmac/batch`, `POST /verify`, `GET /healthz`,
//! `GET /readyz`, `GET /metrics`) and the layers that guard them.
//!
//! Every error becomes a short JSON body `{"error": "..."}` in [`ApiError`]; no
//! response or log line ever carries a message body, a MAC or key material.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use axum::body::HttpBody as _;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, FromRequestParts, Query, Request, State};
use axum::http::header::{
    HeaderName, AUTHORIZATION, CONNECTION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::future::RouteFuture;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::Engine as _;
use http_body_util::BodyExt;
use serde::Deserialize;
use tower_service::Service;

use crate::access::Tokens;
use crate::batch::parse_frames;
use crate::keystore::KeyStore;
use crate::limits::{ClientId, ConcurrencyLimit, RateLimiter, Refusal};
use crate::mac::{macs_equal, parse_mac, Mac, BASE64};
use crate::metrics::{Metrics, Route};

/// Header carrying the MAC that `POST /verify` checks.
pub const MAC_HEADER: &str = "x-cryptoserver-mac";

/// After a body passes the limit, read and discard up to this many times the
/// limit more, so the client sees the 413 instead of a reset connection.
const DRAIN_FACTOR: usize = 4;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

pub struct AppState {
    pub keys: KeyStore,
    pub max_body: usize,
    pub body_timeout: Duration,
    /// Allowed bearer tokens; `None` leaves the server open, as the seed was.
    pub tokens: Option<Tokens>,
    pub rate_limiter: Option<RateLimiter>,
    pub concurrency: ConcurrencyLimit,
    pub metrics: Metrics,
}

impl AppState {
    /// Open, unlimited but for the body size: the seed's behaviour.
    pub fn open(keys: KeyStore, max_body: usize) -> Self {
        AppState {
            keys,
            max_body,
            body_timeout: Duration::from_secs(30),
            tokens: None,
            rate_limiter: None,
            concurrency: ConcurrencyLimit::new(usize::MAX),
            metrics: Metrics::default(),
        }
    }

    /// Whether requests must carry their peer address ([`ConnectInfo`]): only
    /// the rate limit of a server without tokens tells clients apart by it.
    pub fn limits_clients_by_address(&self) -> bool {
        self.rate_limiter.is_some() && self.tokens.is_none()
    }
}

static NEXT_REQUEST_ID: AtomicU64 = AtomicU64::new(1);

/// The application as a connection serves it. Every request is observed
/// (span, metrics, `x-request-id`) and refused at once beyond the concurrency
/// limit, then routed; on every route but `/healthz` it is then authorized and
/// rate-limited.
///
/// Observing wraps the router once instead of each route (as `Router::layer`
/// would, boxing and cloning the layer per request), and the authorization
/// layer is left out when there are neither tokens nor rate limits, as it would
/// let everything through: each layer costs about a quarter of what axum and
/// hyper spend on a whole request (README, Performance).
#[derive(Clone)]
pub struct App {
    router: Router,
    state: Arc<AppState>,
}

impl App {
    pub fn new(state: Arc<AppState>) -> App {
        let mut guarded = Router::new()
            .route("/hmac", post(hmac))
            .route("/hmac/batch", post(hmac_batch))
            .route("/verify", post(verify))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics));
        if state.tokens.is_some() || state.rate_limiter.is_some() {
            guarded = guarded.route_layer(from_fn_with_state(Arc::clone(&state), authorize));
        }
        let router = Router::new()
            .merge(guarded)
            .route("/healthz", get(healthz))
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
            .with_state(Arc::clone(&state));
        App { router, state }
    }
}

/// Only `GET /metrics`, for CRYPTOSERVER_METRICS_BIND. Not observed: a scrape
/// is neither counted as a request nor refused at the concurrency limit.
pub fn metrics_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(state)
}

impl Service<Request> for App {
    type Response = Response;
    type Error = Infallible;
    type Future = Observed;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Observed {
        let route = Route::of_path(request.uri().path());
        let id = NEXT_REQUEST_ID.fetch_add(1, Ordering::Relaxed);
        let span =
            tracing::info_span!("request", id, method = %request.method(), route = route.label());
        let stage = if self.state.concurrency.try_enter() {
            Stage::Serving(span.in_scope(|| self.router.call(request)))
        } else {
            self.state.metrics.shed.fetch_add(1, Ordering::Relaxed);
            Stage::Shed(
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server is at its concurrency limit (CRYPTOSERVER_MAX_CONCURRENT); retry shortly",
                )
                .with_header(RETRY_AFTER, HeaderValue::from_static("1"))
                .into_response(),
            )
        };
        Observed {
            stage: Some(stage),
            state: Arc::clone(&self.state),
            span,
            route,
            id,
            started: Instant::now(),
        }
    }
}

enum Stage {
    /// Counted in by the concurrency limit until the response is out.
    Serving(RouteFuture<Infallible>),
    Shed(Response),
}

/// A request being observed; it holds its place under the concurrency limit
/// until it answers or is dropped (the client went away).
pub struct Observed {
    /// `None` once the response is out.
    stage: Option<Stage>,
    state: Arc<AppState>,
    span: tracing::Span,
    route: Route,
    id: u64,
    started: Instant,
}

impl Future for Observed {
    type Output = Result<Response, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let mut response = match this.stage.as_mut().expect("polled after completion") {
            Stage::Serving(response) => {
                let _entered = this.span.enter();
                let Ok(response) = ready!(Pin::new(response).poll(cx));
                this.state.concurrency.leave();
                response
            }
            Stage::Shed(response) => std::mem::take(response),
        };
        this.stage = None;
        let metrics = &this.state.metrics;
        let elapsed = this.started.elapsed();
        metrics.request_latency.observe(elapsed);
        metrics.count_request(this.route, response.status().as_u16());
        this.span.in_scope(|| {
            tracing::debug!(
                status = response.status().as_u16(),
                ?elapsed,
                "request finished"
            )
        });
        response
            .headers_mut()
            .insert("x-request-id", HeaderValue::from(this.id));
        Poll::Ready(Ok(response))
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        if let Some(Stage::Serving(_)) = self.stage {
            self.state.concurrency.leave();
        }
    }
}

/// Identifies the client (its token, else its address), checks its token and
/// takes one request from its rate limit.
async fn authorize(
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
                return Err(ApiError::unauthorized());
            };
            ClientId::Token(digest)
        }
        None => ClientId::Address(
            request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map_or([0u8; 4].into(), |ConnectInfo(peer)| peer.ip()),
        ),
    };
    take_rate(&state, client, 1)?;
    request.extensions_mut().insert(client);
    Ok(next.run(request).await)
}

fn take_rate(state: &AppState, client: ClientId, cost: u32) -> Result<(), ApiError> {
    let Some(limiter) = &state.rate_limiter else {
        return Ok(());
    };
    limiter.take(client, cost).map_err(|refusal| {
        state.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
        ApiError::rate_limited(refusal)
    })
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

/// `?encoding=` of `POST /hmac`: raw bytes unless it says otherwise.
impl<S: Send + Sync> FromRequestParts<S> for Encoding {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Encoding, ApiError> {
        // The usual request has no query: no parser runs for it.
        if parts.uri.query().is_none() {
            return Ok(Encoding::Raw);
        }
        let Query(query) = Query::<MacQuery>::try_from_uri(&parts.uri).map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "unknown encoding: use ?encoding=hex or ?encoding=base64",
            )
        })?;
        Ok(query.encoding.unwrap_or(Encoding::Raw))
    }
}

async fn hmac(
    State(state): State<Arc<AppState>>,
    encoding: Encoding,
    body: Body,
) -> Result<Response, ApiError> {
    let message = read_message(body, &state).await?;
    let mac = mac_of(&state, &message).await?;
    Ok(match encoding {
        // A Vec<u8> is already application/octet-stream.
        Encoding::Raw => mac.to_vec().into_response(),
        Encoding::Hex => ([(CONTENT_TYPE, "text/plain")], hex::encode(mac)).into_response(),
        Encoding::Base64 => ([(CONTENT_TYPE, "text/plain")], BASE64.encode(mac)).into_response(),
    })
}

/// Nothing is computed unless the whole body frames correctly; each message
/// counts against the rate limit (the request itself took one).
async fn hmac_batch(
    State(state): State<Arc<AppState>>,
    client: Option<Extension<ClientId>>,
    body: Body,
) -> Result<Response, ApiError> {
    let body = read_message(body, &state).await?;
    let frames = parse_frames(&body)
        .map_err(|error| ApiError::new(StatusCode::BAD_REQUEST, error.to_string()))?;
    if let Some(Extension(client)) = client {
        take_rate(&state, client, frames.len().saturating_sub(1) as u32)?;
    }
    let hashed: usize = frames.iter().map(|frame| frame.len()).sum();
    let count = frames.len();
    let macs = state
        .keys
        .mac_batch(body, frames)
        .await
        .map_err(|_| ApiError::key_unavailable())?;
    record_macs(&state, count, hashed);
    Ok(macs.into_response())
}

async fn verify(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let presented = decode_mac_header(headers.get(MAC_HEADER))?;
    let message = read_message(body, &state).await?;
    let expected = mac_of(&state, &message).await?;
    Ok(Json(serde_json::json!({ "valid": macs_equal(&expected, &presented) })).into_response())
}

async fn mac_of(state: &AppState, message: &[u8]) -> Result<Mac, ApiError> {
    let mac = state
        .keys
        .mac(message)
        .await
        .map_err(|_| ApiError::key_unavailable())?;
    record_macs(state, 1, message.len());
    Ok(mac)
}

fn record_macs(state: &AppState, count: usize, bytes: usize) {
    state
        .metrics
        .macs_computed
        .fetch_add(count as u64, Ordering::Relaxed);
    state
        .metrics
        .bytes_hashed
        .fetch_add(bytes as u64, Ordering::Relaxed);
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let text = state.metrics.render(
        state.keys.mode().name(),
        state.concurrency.in_flight(),
        state.keys.read_stats(),
    );
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
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

/// Reads the whole body, at most `max_body` bytes, within `body_timeout`: a client
/// trickling bytes cannot hold a connection and a worker for long. A body that
/// came with the head is complete at the first poll and needs no timer.
async fn read_message(body: Body, state: &AppState) -> Result<Bytes, ApiError> {
    let mut reading = pin!(read_limited(body, state.max_body));
    if let Poll::Ready(read) = poll_fn(|cx| Poll::Ready(reading.as_mut().poll(cx))).await {
        return read;
    }
    tokio::time::timeout(state.body_timeout, reading)
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "the request body was not received in time (CRYPTOSERVER_BODY_TIMEOUT)",
            )
            .with_header(CONNECTION, HeaderValue::from_static("close")))
        })
}

async fn read_limited(mut body: Body, limit: usize) -> Result<Bytes, ApiError> {
    if body.size_hint().lower() > limit as u64 {
        return Err(refuse_too_large(body, limit).await);
    }
    let mut message = Bytes::new();
    // Only a body that arrives in several chunks needs them joined.
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut length = 0usize;
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
        if message.is_empty() {
            message = chunk;
        } else {
            chunks.push(chunk);
        }
    }
    if !chunks.is_empty() {
        chunks.insert(0, message);
        message = chunks.concat().into();
    }
    Ok(message)
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
    header: Option<(HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<Cow<'static, str>>) -> Self {
        ApiError {
            status,
            message: message.into(),
            header: None,
        }
    }

    fn with_header(self, name: HeaderName, value: HeaderValue) -> Self {
        ApiError {
            header: Some((name, value)),
            ..self
        }
    }

    fn payload_too_large(limit: usize) -> Self {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("message is larger than the {limit}-byte limit (CRYPTOSERVER_MAX_BODY)"),
        )
        .with_header(CONNECTION, HeaderValue::from_static("close"))
    }

    fn key_unavailable() -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "key storage is unavailable; retry later",
        )
    }

    fn unauthorized() -> Self {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or unknown bearer token: send Authorization: Bearer <token>",
        )
        .with_header(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"cryptoserver\""),
        )
    }

    fn rate_limited(refusal: Refusal) -> Self {
        match refusal {
            Refusal::RetryAfter(wait) => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate limit exceeded (CRYPTOSERVER_RATE_LIMIT); retry after the Retry-After seconds",
            )
            .with_header(RETRY_AFTER, HeaderValue::from(wait.as_secs_f64().ceil().max(1.0) as u64)),
            Refusal::LargerThanBurst => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "this batch has more messages than the rate limit's burst allows; split it",
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if let Some((name, value)) = self.header {
            response.headers_mut().insert(name, value);
        }
        response
    }
}
