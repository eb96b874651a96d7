//! The rest of a request body the app answered without reading (a 401, 429, 503,
//! 404, 405 or 400 decided from the head), settled before the response goes out.
//!
//! hyper, finding such a body dropped, discards what of it has already arrived
//! and, if more is to come, closes the connection once the response is out; but
//! that response went out without `Connection: close`, so a client sending its
//! next request on the connection fails. Here the rest is read and discarded
//! instead, at most the body size limit within the body timeout, as any body
//! is: the connection stays open. A rest that cannot be read so (larger, too
//! slow, broken, or not sent yet because the client waits for
//! `100 Continue`) gets `Connection: close` on its response, which tells the
//! client before it sends anything more.
//!
//! The server does not hold a place under the concurrency limit meanwhile: the
//! app has answered.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::header::{CONNECTION, EXPECT};
use axum::http::HeaderValue;
use axum::response::Response;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use tokio::time::Sleep;

/// How much of a body the server reads at most, and for how long.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimits {
    pub max: usize,
    pub timeout: Duration,
}

/// A body dropped before its end, and how many bytes the app had read of it.
type Rest = Arc<Mutex<Option<(Incoming, u64)>>>;

/// What the connection keeps of a request whose body the app may leave unread.
pub struct Leftover {
    rest: Rest,
    /// False when the client waits for `100 Continue` before sending the body:
    /// reading it would ask for the very body the server does not want.
    drainable: bool,
}

/// Hands the request to the app with a body that, dropped before its end,
/// comes back to the connection; a request without a body passes as it is.
pub fn watch_body(request: hyper::Request<Incoming>) -> (Request, Option<Leftover>) {
    if request.body().is_end_stream() {
        return (request.map(Body::new), None);
    }
    let leftover = Leftover {
        rest: Arc::default(),
        drainable: !request.headers().contains_key(EXPECT),
    };
    let rest = Arc::clone(&leftover.rest);
    let request = request.map(|body| {
        Body::new(Watched {
            body: Some(body),
            read: 0,
            ended: false,
            rest,
        })
    });
    (request, Some(leftover))
}

/// The request body as the app reads it.
struct Watched {
    /// Taken only when dropped.
    body: Option<Incoming>,
    read: u64,
    /// The body has ended, or failed: nothing is left to read.
    ended: bool,
    rest: Rest,
}

impl hyper::body::Body for Watched {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let body = this.body.as_mut().expect("present until dropped");
        let frame = ready!(Pin::new(body).poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.read += data.len() as u64;
                }
            }
            Some(Err(_)) | None => this.ended = true,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.body.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Incoming::size_hint)
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        if let Some(body) = self.body.take() {
            if !body.is_end_stream() {
                *self
                    .rest
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner()) = Some((body, self.read));
            }
        }
    }
}

/// The app's response, held back while the rest of an unread body is read.
pub struct Settled<F> {
    stage: Stage<F>,
    limits: BodyLimits,
}

enum Stage<F> {
    Answering {
        response: F,
        leftover: Option<Leftover>,
    },
    Draining {
        response: Option<Response>,
        body: Incoming,
        budget: u64,
        deadline: Pin<Box<Sleep>>,
    },
}

impl<F> Settled<F> {
    pub fn new(response: F, leftover: Option<Leftover>, limits: BodyLimits) -> Settled<F> {
        Settled {
            stage: Stage::Answering { response, leftover },
            limits,
        }
    }
}

impl<F> Future for Settled<F>
where
    F: Future<Output = Result<Response, Infallible>> + Unpin,
{
    type Output = Result<Response, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let limits = self.limits;
        match &mut self.stage {
            Stage::Answering { response, leftover } => {
                let Ok(mut response) = ready!(Pin::new(response).poll(cx));
                let Some(leftover) = leftover.take() else {
                    return Poll::Ready(Ok(response));
                };
                let rest = leftover
                    .rest
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner())
                    .take();
                let Some((body, read)) = rest else {
                    return Poll::Ready(Ok(response));
                };
                // A response that closes the connection needs nothing read.
                if closes(&response) {
                    return Poll::Ready(Ok(response));
                }
                let budget = (limits.max as u64).saturating_sub(read);
                if !leftover.drainable || body.size_hint().lower() > budget {
                    close(&mut response);
                    return Poll::Ready(Ok(response));
                }
                self.stage = Stage::Draining {
                    response: Some(response),
                    body,
                    budget,
                    deadline: Box::pin(tokio::time::sleep(limits.timeout)),
                };
                self.poll(cx)
            }
            Stage::Draining {
                response,
                body,
                budget,
                deadline,
            } => {
                let drained = loop {
                    match Pin::new(&mut *body).poll_frame(cx) {
                        Poll::Ready(None) => break true,
                        Poll::Ready(Some(Ok(frame))) => {
                            let Some(data) = frame.data_ref() else {
                                continue;
                            };
                            match budget.checked_sub(data.len() as u64) {
                                Some(left) => *budget = left,
                                None => break false,
                            }
                        }
                        Poll::Ready(Some(Err(_))) => break false,
                        Poll::Pending => {
                            ready!(deadline.as_mut().poll(cx));
                            break false;
                        }
                    }
                };
                let mut response = response.take().expect("polled after completion");
                if !drained {
                    close(&mut response);
                }
                Poll::Ready(Ok(response))
            }
        }
    }
}

fn closes(response: &Response) -> bool {
    response
        .headers()
        .get(CONNECTION)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"close"))
}

fn close(response: &mut Response) {
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
}
