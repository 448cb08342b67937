//! Host-side name resolution for allowed names, done by the supervisor (never by the sandbox).
//!
//! [`SystemResolver`] uses the host's own resolver (`getaddrinfo` through
//! `tokio::net::lookup_host`): it honours `/etc/hosts`, nsswitch, systemd-resolved, VPN and
//! corporate DNS exactly as every other host process does, which is what an administrator expects
//! the supervisor to do, and it adds no dependency. Its cost (a blocking-pool thread per lookup)
//! is bounded by the supervisor's resolution semaphore and connect timeout. The returned addresses
//! are pinned by the caller for the one connection they were resolved for. [`StaticResolver`]
//! answers from a fixed table (tests, benchmarks, and callers that pin names by configuration).
//!
//! Must not decide policy: filtering the addresses is `Rules::filter_resolved`'s job.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;

/// A boxed resolution future.
pub type ResolveFuture<'a> = Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send + 'a>>;

/// Resolves an (already allowed, normalized) host name to addresses.
pub trait Resolve: Send + Sync + 'static {
    fn resolve<'a>(&'a self, name: &'a str) -> ResolveFuture<'a>;
}

/// The host's resolver (`getaddrinfo`).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve<'a>(&'a self, name: &'a str) -> ResolveFuture<'a> {
        Box::pin(async move {
            // The port is irrelevant to the answer; getaddrinfo wants one to build sockaddrs.
            let mut out: Vec<IpAddr> = Vec::new();
            for sa in tokio::net::lookup_host((name, 0)).await? {
                if !out.contains(&sa.ip()) {
                    out.push(sa.ip());
                }
            }
            Ok(out)
        })
    }
}

/// A fixed name → addresses table; unknown names fail like NXDOMAIN.
#[derive(Debug, Default, Clone)]
pub struct StaticResolver {
    table: HashMap<String, Vec<IpAddr>>,
}

impl StaticResolver {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) an entry; `name` is matched case-insensitively.
    pub fn with(mut self, name: &str, addrs: &[IpAddr]) -> Self {
        self.table.insert(name.to_ascii_lowercase(), addrs.to_vec());
        self
    }
}

impl Resolve for StaticResolver {
    fn resolve<'a>(&'a self, name: &'a str) -> ResolveFuture<'a> {
        let r = self
            .table
            .get(&name.to_ascii_lowercase())
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "name not found"));
        Box::pin(async move { r })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn system_resolver_reads_the_host_configuration() {
        let a = SystemResolver.resolve("localhost").await.unwrap();
        assert!(a.iter().all(|ip| ip.is_loopback()), "{a:?}");
        assert!(!a.is_empty());
        assert!(
            SystemResolver
                .resolve("name-that-does-not-exist.invalid")
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn static_resolver() {
        let r = StaticResolver::new().with("A.test", &["10.0.0.1".parse().unwrap()]);
        assert_eq!(r.resolve("a.test").await.unwrap().len(), 1);
        assert!(r.resolve("b.test").await.is_err());
    }
}
