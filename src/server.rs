//! Process lifecycle: load the secrets (fail closed), bind, serve, drain on SIGTERM/SIGINT.

use std::future::IntoFuture;
use std::sync::Arc;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::config::Config;
use crate::http::{router, AppState};
use crate::keystore::KeyStore;

/// Runs the server until a termination signal; an `Err` means it never served.
pub fn run(config: Config) -> Result<(), String> {
    // Everything that can be wrong with the secrets is found before the port is bound.
    let keys =
        KeyStore::load(config.mode, &config.secret_dir).map_err(|error| error.to_string())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start the async runtime: {error}"))?;
    runtime.block_on(serve(config, keys))
}

async fn serve(config: Config, keys: KeyStore) -> Result<(), String> {
    let listener = TcpListener::bind(config.bind).await.map_err(|error| {
        format!(
            "cannot listen on {} (CRYPTOSERVER_BIND): {error}",
            config.bind
        )
    })?;
    let address = listener.local_addr().map_err(|error| error.to_string())?;
    let listener = listener.tap_io(|tcp| {
        // Responses are one small write: do not let Nagle hold them back.
        let _ = tcp.set_nodelay(true);
    });
    tracing::info!(
        mode = %keys.mode(),
        dir = %config.secret_dir.display(),
        addr = %address,
        "cryptoserver started"
    );
    let app = router(Arc::new(AppState {
        keys,
        max_body: config.max_body,
    }));

    let (stopping_tx, mut stopping) = watch::channel(false);
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        termination_signal().await;
        tracing::info!("shutting down: no new connections, finishing in-flight requests");
        let _ = stopping_tx.send(true);
    });
    tokio::select! {
        result = server.into_future() => result.map_err(|error| format!("server failed: {error}"))?,
        _ = async {
            let _ = stopping.wait_for(|&stopping| stopping).await;
            tokio::time::sleep(config.shutdown_grace).await;
        } => tracing::warn!(grace = ?config.shutdown_grace, "in-flight requests outlived the shutdown grace; exiting"),
    }
    tracing::info!("cryptoserver stopped");
    Ok(())
}

async fn termination_signal() {
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
}
