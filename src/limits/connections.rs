//! The limits on open connections, in all and per client address.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The address a client is known by: an IPv4 address, or an IPv6 /64 (one
/// host usually holds a whole /64, so single IPv6 addresses cost it nothing).
pub fn client_address(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX))),
        },
    }
}

/// Open connections: at most `max` in all and `per_client` from one
/// [`client_address`]. Taken once per connection, so a lock is cheap enough.
pub struct ConnectionLimit {
    max: usize,
    per_client: usize,
    open: AtomicUsize,
    by_client: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection; dropping it gives its place back.
pub struct ConnectionPermit {
    limit: Arc<ConnectionLimit>,
    client: IpAddr,
}

/// Which limit refused a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionRefusal {
    Total,
    PerClient,
}

impl ConnectionLimit {
    pub fn new(max: usize, per_client: usize) -> Self {
        ConnectionLimit {
            max,
            per_client,
            open: AtomicUsize::new(0),
            by_client: Mutex::new(HashMap::new()),
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn per_client(&self) -> usize {
        self.per_client
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Admits a connection from `peer`, or says which limit it is over.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<ConnectionPermit, ConnectionRefusal> {
        let client = client_address(peer);
        let mut by_client = self
            .by_client
            .lock()
            .expect("no panics while holding the lock");
        if self.open.load(Ordering::Relaxed) >= self.max {
            return Err(ConnectionRefusal::Total);
        }
        let count = by_client.entry(client).or_insert(0);
        if *count >= self.per_client {
            return Err(ConnectionRefusal::PerClient);
        }
        *count += 1;
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(ConnectionPermit {
            limit: Arc::clone(self),
            client,
        })
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut by_client = self
            .limit
            .by_client
            .lock()
            .expect("no panics while holding the lock");
        if let Some(count) = by_client.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                by_client.remove(&self.client);
            }
        }
        self.limit.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_limited_in_all_and_per_client() {
        let limit = Arc::new(ConnectionLimit::new(3, 2));
        let one: IpAddr = "192.0.2.1".parse().unwrap();
        let two: IpAddr = "2001:db8::1".parse().unwrap();
        let two_neighbour: IpAddr = "2001:db8::ffff:1".parse().unwrap();
        let a = limit.admit(one).unwrap();
        let _b = limit.admit(one).unwrap();
        assert_eq!(limit.admit(one).err(), Some(ConnectionRefusal::PerClient));
        let _c = limit.admit(two).unwrap();
        assert_eq!(
            limit.admit(two_neighbour).err(),
            Some(ConnectionRefusal::Total)
        );
        assert_eq!(limit.open(), 3);
        drop(a);
        assert_eq!(limit.open(), 2);
        // Same /64: one client.
        let _d = limit.admit(two_neighbour).unwrap();
        assert_eq!(
            limit.admit("192.0.2.2".parse().unwrap()).err(),
            Some(ConnectionRefusal::Total)
        );
    }

    #[test]
    fn client_addresses() {
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(
            client_address(mapped),
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
        let v6: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        assert_eq!(
            client_address(v6),
            "2001:db8:1:2::".parse::<IpAddr>().unwrap()
        );
    }
}
