//! The HTTP floor for `cargo xtask bench`: the least an axum server can do for
//! `POST /hmac`. It reads the whole body and answers 32 constant bytes, on the
//! same runtime (tokio multi-thread, one worker per core), HTTP/1.1 keep-alive
//! and TCP_NODELAY as cryptoserver, so the difference between the two is the
//! cost of cryptoserver's own code: key selection, the MAC and its middleware.
//!
//! Usage: `floor ADDRESS` (e.g. `127.0.0.1:8081`).

use axum::body::Bytes;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::post;
use axum::serve::ListenerExt as _;
use axum::Router;

const CONSTANT_MAC: [u8; 32] = [0x5a; 32];

async fn constant_mac(_message: Bytes) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "application/octet-stream")],
        CONSTANT_MAC.to_vec(),
    )
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let address = std::env::args()
        .nth(1)
        .ok_or("usage: floor ADDRESS (e.g. 127.0.0.1:8081)")?;
    let listener = tokio::net::TcpListener::bind(&address)
        .await
        .map_err(|error| format!("cannot listen on {address}: {error}"))?
        .tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
    let app = Router::new().route("/hmac", post(constant_mac));
    axum::serve(listener, app)
        .await
        .map_err(|error| format!("serving failed: {error}"))
}
