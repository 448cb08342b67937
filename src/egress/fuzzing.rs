//! Entry points for `cargo fuzz` targets (wired in `fuzz/` by the lead): each takes arbitrary
//! bytes from the sandbox side of a parser and must neither panic nor loop. They return nothing;
//! the parsers' own unit tests check results.

use std::sync::OnceLock;

use crate::policy::egress_config::{EgressConfig, EgressMode, HostPattern};

use super::fakeip::FakePool;
use super::rules::{Host, Rules};
use super::{dns, http, socks, tls};

fn rules() -> Option<&'static (Rules, FakePool)> {
    static R: OnceLock<Option<(Rules, FakePool)>> = OnceLock::new();
    R.get_or_init(|| {
        let cfg = EgressConfig {
            mode: Some(EgressMode::Block),
            allowed_hosts: vec!["a.example.com".into(), "*.b.example.com".into()],
            denied_hosts: vec!["bad.b.example.com".into()],
            ..Default::default()
        };
        Rules::compile(&cfg).ok().map(|r| (r, FakePool::new(1024)))
    })
    .as_ref()
}

/// A DNS query as the stub receives it (UDP payload or TCP message).
pub fn dns_query(data: &[u8]) {
    if let Some((r, pool)) = rules() {
        let _ = dns::answer(data, r, pool);
    }
}

/// An HTTP proxy request head, and the same bytes as an origin-form head on the port-80 capture.
pub fn http_request(data: &[u8]) {
    let _ = http::parse_proxy_request(data);
    let _ = http::origin_request_host(data);
}

/// SOCKS5 greeting and request.
pub fn socks5(data: &[u8]) {
    let _ = socks::parse_greeting(data);
    let _ = socks::parse_request(data);
}

/// The first bytes of a TLS connection (ClientHello → SNI).
pub fn tls_client_hello(data: &[u8]) {
    let _ = tls::client_hello_sni(data);
}

/// Host strings: policy patterns and client-supplied hosts.
pub fn host(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = HostPattern::parse(s);
        if let (Some(h), Some((r, _))) = (Host::parse(s), rules()) {
            let _ = r.decide(&h, 443);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn entry_points_accept_anything() {
        assert!(super::rules().is_some());
        for data in [
            &b""[..],
            b"\x16\x03\x01\x00\x01",
            b"\x05\x01\x00",
            b"GET http://a/ HTTP/1.1\r\n\r\n",
            &[0xff; 64],
        ] {
            super::dns_query(data);
            super::http_request(data);
            super::socks5(data);
            super::tls_client_hello(data);
            super::host(data);
        }
    }
}
