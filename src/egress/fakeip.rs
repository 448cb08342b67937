//! The fake-address pool: the DNS stub hands each allowed name a stable IPv4 address from
//! 198.18.0.0/15 (RFC 2544 benchmarking space, never routed on the Internet); connections to that
//! address, landing on a capture listener or named to a proxy, map back to the name.
//!
//! A name keeps its address for the sandbox's lifetime and an address is never given to a second
//! name (no reuse, no hashing collisions). The pool is bounded by `limits.max_dns_names`; when it
//! is full, new names get no address (the stub answers SERVFAIL) rather than evicting old ones.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};

/// First address of the pool (198.18.0.0); offset 0 and the last address are never handed out.
const BASE: u32 = u32::from_be_bytes([198, 18, 0, 0]);
/// Addresses in 198.18.0.0/15.
const SPAN: u32 = 1 << 17;

#[derive(Debug)]
pub struct FakePool {
    capacity: u32,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    by_name: HashMap<Arc<str>, Ipv4Addr>,
    by_offset: HashMap<u32, Arc<str>>,
    next: u32,
}

impl FakePool {
    /// A pool that hands out at most `capacity` addresses (clamped to the /15 minus its ends).
    pub fn new(capacity: u32) -> Self {
        FakePool {
            capacity: capacity.min(SPAN - 2),
            inner: Mutex::new(Inner {
                next: 1,
                ..Default::default()
            }),
        }
    }

    /// Whether `ip` lies in the pool's range (mapped or not).
    pub fn in_range(ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => u32::from(v4).wrapping_sub(BASE) < SPAN,
            IpAddr::V6(_) => false,
        }
    }

    /// The address of `name`, assigning the next free one if it has none; `None` when full.
    pub fn assign(&self, name: &str) -> Option<Ipv4Addr> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ip) = inner.by_name.get(name) {
            return Some(*ip);
        }
        if inner.by_offset.len() as u32 >= self.capacity || inner.next >= SPAN - 1 {
            return None;
        }
        let offset = inner.next;
        inner.next += 1;
        let ip = Ipv4Addr::from(BASE + offset);
        let key: Arc<str> = Arc::from(name);
        inner.by_name.insert(key.clone(), ip);
        inner.by_offset.insert(offset, key);
        Some(ip)
    }

    /// The name `ip` was handed to, if any.
    pub fn lookup(&self, ip: IpAddr) -> Option<Arc<str>> {
        let IpAddr::V4(v4) = ip else { return None };
        let offset = u32::from(v4).wrapping_sub(BASE);
        if offset >= SPAN {
            return None;
        }
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.by_offset.get(&offset).cloned()
    }

    /// How many names hold an address.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_name
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_unique_and_reversible() {
        let p = FakePool::new(10);
        let a = p.assign("a.com").unwrap();
        let b = p.assign("b.com").unwrap();
        assert_ne!(a, b);
        assert_eq!(p.assign("a.com"), Some(a));
        assert_eq!(a, Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(p.lookup(IpAddr::V4(b)).as_deref(), Some("b.com"));
        assert_eq!(p.lookup("198.18.0.99".parse().unwrap()), None);
        assert_eq!(p.lookup("8.8.8.8".parse().unwrap()), None);
        assert!(FakePool::in_range("198.19.255.255".parse().unwrap()));
        assert!(!FakePool::in_range("198.20.0.0".parse().unwrap()));
        assert!(!FakePool::in_range("198.17.255.255".parse().unwrap()));
    }

    #[test]
    fn full_pool_refuses_instead_of_reusing() {
        let p = FakePool::new(2);
        let a = p.assign("a").unwrap();
        p.assign("b").unwrap();
        assert_eq!(p.assign("c"), None);
        assert_eq!(p.assign("a"), Some(a));
        assert_eq!(p.len(), 2);
    }
}
