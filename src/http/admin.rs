//! `PUT /admin/clients`, with CRYPTOSERVER_CLIENTS_SIGNER only: a signed
//! clients document (see [`crate::signed_clients`]) replaces the clients in
//! force. It takes no bearer token: the signature is the authority. A
//! document is applied only whole, after it is kept; any refusal changes
//! nothing.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::body::read_body;
use super::error::ApiError;
use super::state::AppState;

/// The largest document: some ten thousand clients. The route is open to
/// anyone who reaches the port, so it does not take CRYPTOSERVER_MAX_BODY's
/// gigabyte.
const MAX_DOCUMENT: usize = 1 << 20;

pub(super) async fn put_clients(
    State(state): State<Arc<AppState>>,
    body: Body,
) -> Result<Response, ApiError> {
    let result = match read_body(body, MAX_DOCUMENT, state.body_timeout).await {
        Ok(document) => {
            let applying = Arc::clone(&state);
            // Verifying, parsing and the fsyncs of keeping it block.
            tokio::task::spawn_blocking(move || apply(&applying, &document))
                .await
                .expect("applying a document does not panic")
        }
        Err(ApiError::TooLarge { limit }) => Err(ApiError::DocumentTooLarge { limit }),
        Err(error) => Err(error),
    };
    let metrics = &state.metrics;
    match &result {
        Ok((serial, count)) => {
            metrics.clients_updates.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                serial,
                clients = count,
                "signed clients update applied and kept"
            );
        }
        Err(refusal) => {
            metrics
                .clients_updates_refused
                .fetch_add(1, Ordering::Relaxed);
            // Anyone may send one: as throttled as refused requests.
            if let Some(held_back) = metrics.audit.admit() {
                tracing::warn!(%refusal, held_back, "signed clients update refused");
            }
        }
    }
    let (serial, count) = result?;
    Ok(Json(serde_json::json!({ "serial": serial, "clients": count })).into_response())
}

/// Checks the document against the signer, the keys and the serial in
/// force, keeps it, then puts it in force: its serial and client count.
fn apply(state: &AppState, document: &Bytes) -> Result<(u64, usize), ApiError> {
    let (Some(updates), Some(live)) = (&state.updates, &state.clients) else {
        unreachable!("the route exists only with a signer, which needs a clients file")
    };
    let _one_change_at_a_time = updates.changing();
    let new = updates.open(document).map_err(ApiError::Document)?;
    let in_force = live.current().serial();
    if new.serial() <= in_force {
        return Err(ApiError::StaleSerial {
            serial: new.serial(),
            in_force,
        });
    }
    if let Some(namespace) = state.namespace_not_served(&new) {
        return Err(ApiError::NamespaceNotServed {
            namespace: namespace.to_owned(),
            mode: state.keys.mode().name(),
        });
    }
    updates
        .keep(document)
        .map_err(|error| ApiError::NotKept(error.to_string()))?;
    let applied = (new.serial(), new.iter().count());
    live.replace(new);
    Ok(applied)
}
