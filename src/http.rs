//! HTTP routes (`POST /hmac`, `POST /hmac/batch`, `POST /verify`, `GET /healthz`,
//! `GET /readyz`, `GET /metrics`) and the layers that guard them.
//!
//! Every error becomes a short JSON body `{"error": "..."}` in [`ApiError`]; no
//! response or log line ever carries a message body, a MAC or key material.

use std::borrow::Cow;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use axum::body::HttpBody as _;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, MatchedPath, Query, Request, State};
use axum::http::header::{
    HeaderName, AUTHORIZATION, CONNECTION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::Engine as _;
use http_body_util::BodyExt;
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_layer::Layer;
use tower_service::Service;

use crate::access::Tokens;
use crate::batch::parse_frames;
use crate::keystore::KeyStore;
use crate::limits::{ClientId, RateLimiter, Refusal};
use crate::mac::{macs_equal, parse_mac, Mac, BASE64};
use crate::metrics::Metrics;

/// Header carrying the MAC that `POST /verify` checks.
pub const MAC_HEADER: &str = "x-cryptoserver-mac";

/// After a body passes the limit, read and discard up to this many times the
/// limit more, so the client sees the 413 instead of a reset connection.
const DRAIN_FACTOR: usize = 4;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Route patterns, the only values the metrics' `route` label takes.
const ROUTES: [&str; 6] = [
    "/hmac",
    "/hmac/batch",
    "/verify",
    "/healthz",
    "/readyz",
    "/metrics",
];

pub struct AppState {
    pub keys: KeyStore,
    pub max_body: usize,
    pub body_timeout: Duration,
    /// Allowed bearer tokens; `None` leaves the server open, as the seed was.
    pub tokens: Option<Tokens>,
    pub rate_limiter: Option<RateLimiter>,
    /// One permit per request being served; none left means shed load.
    pub concurrency: Arc<Semaphore>,
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
            concurrency: Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)),
            metrics: Metrics::default(),
        }
    }
}

/// Layers, outermost first: observe (request span, metrics) and shed load at the
/// concurrency limit, then on every route but `/healthz`: authorize and rate-limit.
/// Each `from_fn` middleware layer costs about a quarter of what axum and hyper
/// spend on a whole request (README, Performance), so there are as few as
/// possible: observing (with shedding) is a hand-written service, and the
/// authorization layer is left out when there are neither tokens nor rate
/// limits, as it would let everything through.
pub fn router(state: Arc<AppState>) -> Router {
    let mut guarded = Router::new()
        .route("/hmac", post(hmac))
        .route("/hmac/batch", post(hmac_batch))
        .route("/verify", post(verify))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    if state.tokens.is_some() || state.rate_limiter.is_some() {
        guarded = guarded.route_layer(from_fn_with_state(Arc::clone(&state), authorize));
    }
    Router::new()
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
        .layer(ObserveLayer(Arc::clone(&state)))
        .with_state(state)
}

/// A router serving only `GET /metrics`, for CRYPTOSERVER_METRICS_BIND.
pub fn metrics_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(state)
}

static NEXT_REQUEST_ID: AtomicU64 = AtomicU64::new(1);

/// Observes every request (span, metrics, `x-request-id`) and refuses at once
/// beyond the concurrency limit: a queue would only add latency.
#[derive(Clone)]
struct ObserveLayer(Arc<AppState>);

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            state: Arc::clone(&self.0),
        }
    }
}

#[derive(Clone)]
struct Observe<S> {
    inner: S,
    state: Arc<AppState>,
}

impl<S> Service<Request> for Observe<S>
where
    S: Service<Request, Response = Response>,
    S::Future: Unpin,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Observed<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .and_then(|matched| ROUTES.into_iter().find(|route| *route == matched.as_str()))
            .unwrap_or("unmatched");
        let id = NEXT_REQUEST_ID.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!("request", id, method = %request.method(), route);
        let metrics = &self.state.metrics;
        metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        let stage = match Arc::clone(&self.state.concurrency).try_acquire_owned() {
            Ok(permit) => Stage::Serving {
                response: span.in_scope(|| self.inner.call(request)),
                _permit: permit,
            },
            Err(_) => {
                metrics.shed.fetch_add(1, Ordering::Relaxed);
                Stage::Shed(
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "server is at its concurrency limit (CRYPTOSERVER_MAX_CONCURRENT); retry shortly",
                    )
                    .with_header(RETRY_AFTER, HeaderValue::from_static("1"))
                    .into_response(),
                )
            }
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

enum Stage<F> {
    /// Holds a concurrency permit until the response is out.
    Serving {
        response: F,
        _permit: OwnedSemaphorePermit,
    },
    Shed(Response),
}

/// A request being observed; counted in flight until it answers or is dropped
/// (the client went away).
struct Observed<F> {
    /// `None` once the response is out.
    stage: Option<Stage<F>>,
    state: Arc<AppState>,
    span: tracing::Span,
    route: &'static str,
    id: u64,
    started: Instant,
}

impl<F, E> Future for Observed<F>
where
    F: Future<Output = Result<Response, E>> + Unpin,
{
    type Output = Result<Response, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let mut response = match this.stage.as_mut().expect("polled after completion") {
            Stage::Serving { response, .. } => {
                let _entered = this.span.enter();
                match ready!(Pin::new(response).poll(cx)) {
                    Ok(response) => response,
                    Err(error) => return Poll::Ready(Err(error)),
                }
            }
            Stage::Shed(response) => std::mem::take(response),
        };
        this.stage = None;
        let metrics = &this.state.metrics;
        metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
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

impl<F> Drop for Observed<F> {
    fn drop(&mut self) {
        if self.stage.is_some() {
            self.state.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
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
    let message = read_message(body, &state).await?;
    let mac = mac_of(&state, &message).await?;
    Ok(match encoding {
        Encoding::Raw => {
            ([(CONTENT_TYPE, "application/octet-stream")], mac.to_vec()).into_response()
        }
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
    Ok(([(CONTENT_TYPE, "application/octet-stream")], macs).into_response())
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
    let text = state
        .metrics
        .render(state.keys.mode().name(), state.keys.read_stats());
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
/// trickling bytes cannot hold a connection and a worker for long.
async fn read_message(body: Body, state: &AppState) -> Result<Bytes, ApiError> {
    tokio::time::timeout(state.body_timeout, read_limited(body, state.max_body))
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
