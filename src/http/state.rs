//! What every request shares: the keys, the limits and the metrics.

use std::sync::Arc;
use std::time::Duration;

use crate::clients::{Clients, LiveClients};
use crate::keystore::KeyStore;
use crate::limits::{ConcurrencyLimit, ConnectionLimit, RateLimiter};
use crate::metrics::Metrics;
use crate::signed_clients::SignedUpdates;

pub struct AppState {
    pub keys: KeyStore,
    pub max_body: usize,
    pub body_timeout: Duration,
    /// The clients file; `None` leaves the server open, as the original design has it.
    pub clients: Option<LiveClients>,
    /// With CRYPTOSERVER_CLIENTS_SIGNER: `PUT /admin/clients` replaces the clients.
    pub updates: Option<SignedUpdates>,
    pub rate_limiter: Option<RateLimiter>,
    pub concurrency: Arc<ConcurrencyLimit>,
    /// Connections to the main listener.
    pub connections: Arc<ConnectionLimit>,
    pub metrics: Metrics,
}

impl AppState {
    /// Whether requests must carry their peer address (`ConnectInfo`): only
    /// a server without tokens tells clients apart by it, for its rate limit
    /// and for sharing the batches' key reads (keys on disk).
    pub fn limits_clients_by_address(&self) -> bool {
        self.clients.is_none() && (self.rate_limiter.is_some() || self.keys.read_stats().is_some())
    }

    /// A namespace of `clients` the keys do not serve: MODE0 and MODE16 derive
    /// the namespaces' keys at startup, so a set read later cannot add one.
    pub fn namespace_not_served<'c>(&self, clients: &'c Clients) -> Option<&'c str> {
        clients
            .namespaces()
            .into_iter()
            .find(|namespace| !self.keys.derives(namespace))
    }
}
