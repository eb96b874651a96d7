//! cryptoserver: HMAC-SHA256 over HTTP with the secrets sealed on one host.
//!
//! - [`layout`]: the on-disk layout of the secrets and the key-selection rule.
//! - [`manifest`]: the generator's record of what it wrote.
//! - [`config`]: the server's flags and environment variables.
//! - [`keystore`]: the secrets as the server holds them, checked at startup.
//! - [`mac`]: the HMAC-SHA256 engine.
//! - [`access`]: bearer tokens.
//! - [`limits`]: per-client rate limits.
//! - [`metrics`]: Prometheus metrics.
//! - [`tls`]: HTTPS and mTLS with rustls.
//! - [`batch`]: the `/hmac/batch` frame format.
//! - [`http`]: the routes and their errors.
//! - [`server`]: process lifecycle (bind, serve, graceful shutdown).

pub mod access;
pub mod batch;
pub mod config;
pub mod generate;
pub mod http;
pub mod jobs;
pub mod keystore;
pub mod layout;
pub mod limits;
pub mod mac;
pub mod manifest;
pub mod metrics;
pub mod progress;
pub mod secret_dir;
pub mod server;
pub mod tls;
pub mod verify;
