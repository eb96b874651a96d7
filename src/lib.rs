//! cryptoserver: HMAC-SHA256 over HTTP with the secrets sealed on one host.
//!
//! - [`layout`]: the on-disk layout of the secrets and the key-selection rule.
//! - [`manifest`]: the generator's record of what it wrote.

pub mod layout;
pub mod manifest;
