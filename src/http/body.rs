//! Reading a request body: at most the size limit, within the body timeout,
//! and an oversized body drained a little so the client reads its 413.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use axum::body::HttpBody as _;
use axum::body::{Body, Bytes};
use http_body_util::BodyExt;

use super::error::ApiError;
use super::state::AppState;

/// After a body passes the limit, read and discard up to this many times the
/// limit more, so the client sees the 413 instead of a reset connection.
const DRAIN_FACTOR: usize = 4;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads the whole body, at most `max_body` bytes, within `body_timeout`: a client
/// trickling bytes cannot hold a connection and a worker for long. A body that
/// came with the head is complete at the first poll and needs no timer.
pub(super) async fn read_message(body: Body, state: &AppState) -> Result<Bytes, ApiError> {
    read_body(body, state.max_body, state.body_timeout).await
}

/// Reads the whole body, at most `limit` bytes, within `timeout`.
pub(super) async fn read_body(
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    let mut reading = pin!(read_limited(body, limit));
    if let Poll::Ready(read) = poll_fn(|cx| Poll::Ready(reading.as_mut().poll(cx))).await {
        return read;
    }
    tokio::time::timeout(timeout, reading)
        .await
        .unwrap_or(Err(ApiError::BodyTimeout))
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
        let frame = frame.map_err(|_| ApiError::UnreadableBody)?;
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
    ApiError::TooLarge { limit }
}
