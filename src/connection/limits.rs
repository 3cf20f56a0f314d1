//! How many client connections may be open: per listener and per client address. A
//! [`Permit`] is held for the life of a connection and gives its place back on drop.

use pingora::protocols::l4::socket::SocketAddr;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use tollgate_plugins::sync::lock;

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// The listener has `max_connections` open.
    Listener,
    /// The client address has `max_connections_per_ip` open.
    ClientAddress,
}

impl Overflow {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Overflow::Listener => "listener",
            Overflow::ClientAddress => "client_address",
        }
    }
}

/// Open-connection counts and their bounds.
pub struct ConnectionLimits {
    per_listener: usize,
    per_ip: usize,
    listeners: Mutex<HashMap<SocketAddr, usize>>,
    // Holds an entry per address with open connections only, so it is bounded by the
    // listeners' limits.
    clients: Mutex<HashMap<IpAddr, usize>>,
}

/// A connection's place; dropping it frees the place.
pub struct Permit {
    limits: Arc<ConnectionLimits>,
    listener: Option<SocketAddr>,
    client: Option<IpAddr>,
}

impl ConnectionLimits {
    /// At most `per_listener` connections per listener and `per_ip` per client address
    /// (0: no per-address limit).
    pub fn new(per_listener: usize, per_ip: usize) -> Arc<Self> {
        Arc::new(ConnectionLimits {
            per_listener,
            per_ip,
            listeners: Mutex::new(HashMap::new()),
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// Count a new connection on `listener` from `client`, unless a bound is reached.
    /// `exempt` clients (trusted proxies, whose connections carry many clients) are not
    /// bounded per address.
    pub fn admit(
        self: &Arc<Self>,
        listener: Option<SocketAddr>,
        client: Option<IpAddr>,
        exempt: bool,
    ) -> Result<Permit, Overflow> {
        if let Some(l) = &listener {
            let mut listeners = lock(&self.listeners);
            let n = listeners.entry(l.clone()).or_insert(0);
            if *n >= self.per_listener {
                return Err(Overflow::Listener);
            }
            *n += 1;
        }
        let mut permit = Permit {
            limits: self.clone(),
            listener,
            client: None,
        };
        if let Some(ip) = client.filter(|_| self.per_ip > 0 && !exempt) {
            let mut clients = lock(&self.clients);
            let n = clients.entry(ip).or_insert(0);
            if *n >= self.per_ip {
                // The permit's drop gives the listener place back.
                return Err(Overflow::ClientAddress);
            }
            *n += 1;
            permit.client = Some(ip);
        }
        Ok(permit)
    }

    /// Connections open on all listeners.
    pub fn open(&self) -> usize {
        lock(&self.listeners).values().sum()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(l) = &self.listener {
            if let Some(n) = lock(&self.limits.listeners).get_mut(l) {
                *n = n.saturating_sub(1);
            }
        }
        if let Some(ip) = self.client {
            let mut clients = lock(&self.limits.clients);
            if let Some(n) = clients.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    clients.remove(&ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_and_release() {
        let l = ConnectionLimits::new(3, 2);
        let addr: SocketAddr = SocketAddr::Inet("127.0.0.1:80".parse().unwrap());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let p1 = l.admit(Some(addr.clone()), Some(a), false).unwrap();
        let _p2 = l.admit(Some(addr.clone()), Some(a), false).unwrap();
        assert_eq!(
            l.admit(Some(addr.clone()), Some(a), false).err(),
            Some(Overflow::ClientAddress)
        );
        assert_eq!(l.open(), 2, "the refused one gave its listener place back");
        let _p3 = l.admit(Some(addr.clone()), Some(b), false).unwrap();
        assert_eq!(
            l.admit(Some(addr.clone()), Some(a), true).err(),
            Some(Overflow::Listener)
        );
        drop(p1);
        assert!(l.admit(Some(addr), Some(a), false).is_ok());
        assert!(lock(&l.clients).len() <= 2);
    }
}
