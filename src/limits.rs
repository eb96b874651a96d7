//! Per-client rate limiting (one token bucket per client: its token when
//! authenticated, else its source address), the server-wide concurrency limit,
//! the key reads batches may have in flight and how long a key read may take,
//! what work that outlives its request keeps taken, and the limits on open
//! connections, in all and per client address.
//!
//! - [`rate`]: the per-client token buckets.
//! - [`concurrency`]: the requests served at once.
//! - [`reads`]: the key reads batches may have in flight, shared between clients.
//! - [`work`]: what work that outlives its request keeps taken.
//! - [`connections`]: the connections open at once.

mod concurrency;
mod connections;
mod rate;
mod reads;
mod work;

pub use concurrency::{ConcurrencyLimit, HeldSlot};
pub use connections::{client_address, ConnectionLimit, ConnectionPermit, ConnectionRefusal};
pub use rate::{ClientId, RateLimit, RateLimiter, Refusal};
#[cfg(test)]
pub(crate) use reads::take_now;
pub use reads::{BatchReads, BatchReadsError, BatchShare, ReadBudget, ReadLimits, ReadPermits};
pub use work::{MessageReads, Work, WorkGuard};
