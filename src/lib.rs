//! cryptoserver: HMAC-SHA256 over HTTP with the secrets sealed on one host.
//!
//! The library serves two applications. Shared by both:
//! - [`layout`]: the on-disk layout of the secrets and the key-selection rule.
//! - [`manifest`]: the format of the record of what the generator wrote.
//! - [`mac`]: the HMAC-SHA256 engine.
//! - [`sys`]: every libc call, wrapped once.
//!
//! The server (`cryptoserver`):
//! - [`config`]: its flags and environment variables (the only place they are parsed).
//! - [`keystore`]: the secrets as the server holds them, checked at startup.
//! - [`access`]: bearer tokens; [`clients`]: the clients file (who may call, in
//!   which namespace, on which routes, how often); [`signed_clients`]: its signed
//!   updates; [`limits`]: rate and concurrency limits.
//! - [`batch`]: the `/hmac/batch` frame format.
//! - [`http`]: the routes, their guards and their errors.
//! - [`metrics`]: Prometheus metrics; [`tls`]: HTTPS and mTLS with rustls.
//! - [`server`]: process lifecycle (bind, serve, graceful shutdown).
//!
//! The secret tools (`cryptoserver-secrets`, `cargo xtask gen-secrets|verify-secrets`):
//! - [`secrets`]: generate a secrets directory, verify it against its manifest.

pub mod access;
pub mod batch;
pub mod clients;
pub mod config;
pub mod http;
pub mod keystore;
pub mod layout;
pub mod limits;
pub mod mac;
pub mod manifest;
pub mod metrics;
pub mod secrets;
pub mod server;
pub mod signed_clients;
pub mod sys;
pub mod tls;
