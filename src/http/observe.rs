//! Every request observed: a span with its id, the latency histogram and the
//! per-route status counts, an `x-request-id` header; and refused at once with
//! 503 when the concurrency limit is reached. `/healthz` and `/readyz` take no
//! place under the limit: requests filling it must not make a load balancer
//! take a busy server out of service, and an Auto Scaling group replace it.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context as TaskContext, Poll};
use std::time::Instant;

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::routing::future::RouteFuture;
use axum::Router;
use tower_service::Service;

use super::error::ApiError;
use super::state::AppState;
use super::vault::VaultError;
use crate::clients::Client;
use crate::metrics::Route;

static NEXT_REQUEST_ID: AtomicU64 = AtomicU64::new(1);

enum Stage {
    /// Being served; `counted` in by the concurrency limit until the response
    /// is out, unless it is a health check.
    Serving {
        response: RouteFuture<Infallible>,
        counted: bool,
    },
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

impl Observed {
    /// Counts the request in and routes it, or refuses it at the concurrency limit.
    pub(super) fn start(state: &Arc<AppState>, router: &mut Router, request: Request) -> Observed {
        let route = Route::of_path(request.uri().path());
        let id = NEXT_REQUEST_ID.fetch_add(1, Ordering::Relaxed);
        let span =
            tracing::info_span!("request", id, method = %request.method(), route = route.label());
        let counted = !route.is_health();
        let stage = if !counted || state.concurrency.try_enter() {
            Stage::Serving {
                response: span.in_scope(|| router.call(request)),
                counted,
            }
        } else {
            state.metrics.shed.fetch_add(1, Ordering::Relaxed);
            Stage::Shed(if route.is_vault() {
                VaultError::from(ApiError::Shed).into_response()
            } else {
                ApiError::Shed.into_response()
            })
        };
        Observed {
            stage: Some(stage),
            state: Arc::clone(state),
            span,
            route,
            id,
            started: Instant::now(),
        }
    }
}

impl Future for Observed {
    type Output = Result<Response, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let mut response = match this.stage.as_mut().expect("polled after completion") {
            Stage::Serving { response, counted } => {
                let _entered = this.span.enter();
                let Ok(response) = ready!(Pin::new(response).poll(cx));
                if *counted {
                    this.state.concurrency.leave();
                }
                response
            }
            Stage::Shed(response) => std::mem::take(response),
        };
        this.stage = None;
        let metrics = &this.state.metrics;
        let elapsed = this.started.elapsed();
        metrics.request_latency.observe(elapsed);
        metrics.count_request(this.route, response.status().as_u16());
        if let Some(client) = response.extensions_mut().remove::<Arc<Client>>() {
            client
                .counters
                .count_request(this.route, response.status().as_u16());
        }
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
        if let Some(Stage::Serving { counted: true, .. }) = self.stage {
            self.state.concurrency.leave();
        }
    }
}
