//! SOCKS5 (RFC 1928) as the sandbox's `ALL_PROXY=socks5h://127.0.0.1:1080` speaks it: the
//! no-authentication method and the CONNECT command, with IPv4, IPv6 or domain-name targets
//! (`socks5h`: the name reaches us unresolved). BIND and UDP ASSOCIATE are refused. No crate is
//! used: the two messages are a dozen bytes each, parsed here by pure, bounded functions over
//! `&[u8]` (fuzz entry points). Must not touch sockets or decide policy.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::rules::Host;

/// Reply codes (RFC 1928 §6).
pub const REP_SUCCEEDED: u8 = 0x00;
pub const REP_GENERAL_FAILURE: u8 = 0x01;
pub const REP_NOT_ALLOWED: u8 = 0x02;
pub const REP_HOST_UNREACHABLE: u8 = 0x04;
pub const REP_CONNECTION_REFUSED: u8 = 0x05;
pub const REP_TTL_EXPIRED: u8 = 0x06;
pub const REP_COMMAND_NOT_SUPPORTED: u8 = 0x07;
pub const REP_ADDRESS_NOT_SUPPORTED: u8 = 0x08;

/// Largest greeting: version, count, 255 methods.
pub const MAX_GREETING: usize = 2 + 255;
/// Largest request: header, a 255-byte name with its length, port.
pub const MAX_REQUEST: usize = 4 + 1 + 255 + 2;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SocksError {
    #[error("not SOCKS version 5")]
    Version,
    #[error("client offers no acceptable authentication method (only \"no authentication\")")]
    NoAcceptableMethod,
    #[error("SOCKS command {0} not supported (only CONNECT)")]
    Command(u8),
    #[error("SOCKS address type {0} not supported")]
    AddressType(u8),
    #[error("invalid SOCKS target host")]
    BadHost,
    #[error("malformed SOCKS request")]
    Malformed,
}

impl SocksError {
    /// The reply code to send, when the error happens at the request stage.
    pub fn reply_code(&self) -> u8 {
        match self {
            SocksError::Command(_) => REP_COMMAND_NOT_SUPPORTED,
            SocksError::AddressType(_) => REP_ADDRESS_NOT_SUPPORTED,
            SocksError::BadHost => REP_HOST_UNREACHABLE,
            _ => REP_GENERAL_FAILURE,
        }
    }
}

/// Parses the method-selection greeting. `Ok(Some(n))`: complete, `n` bytes long, and "no
/// authentication" is offered; `Ok(None)`: incomplete.
pub fn parse_greeting(buf: &[u8]) -> Result<Option<usize>, SocksError> {
    let Some(&ver) = buf.first() else {
        return Ok(None);
    };
    if ver != 5 {
        return Err(SocksError::Version);
    }
    let Some(&n) = buf.get(1) else {
        return Ok(None);
    };
    let len = 2 + n as usize;
    let Some(methods) = buf.get(2..len) else {
        return Ok(None);
    };
    if methods.contains(&0x00) {
        Ok(Some(len))
    } else {
        Err(SocksError::NoAcceptableMethod)
    }
}

/// The CONNECT target of a request. `Ok(Some((n, host, port)))`: complete, `n` bytes long;
/// `Ok(None)`: incomplete.
pub fn parse_request(buf: &[u8]) -> Result<Option<(usize, Host, u16)>, SocksError> {
    if buf.len() < 4 {
        if buf.first().is_some_and(|v| *v != 5) {
            return Err(SocksError::Version);
        }
        return Ok(None);
    }
    if buf[0] != 5 {
        return Err(SocksError::Version);
    }
    if buf[2] != 0 {
        return Err(SocksError::Malformed);
    }
    let (addr_len, host_at) = match buf[3] {
        1 => (4, 4),
        4 => (16, 4),
        3 => match buf.get(4) {
            Some(0) => return Err(SocksError::BadHost),
            Some(n) => (*n as usize, 5),
            None => return Ok(None),
        },
        t => return Err(SocksError::AddressType(t)),
    };
    let end = host_at + addr_len + 2;
    let Some(body) = buf.get(host_at..end) else {
        return Ok(None);
    };
    // The command is checked after the length is known so the error reply is well-timed, but
    // before the target is interpreted.
    if buf[1] != 1 {
        return Err(SocksError::Command(buf[1]));
    }
    let (addr, port) = body.split_at(addr_len);
    let port = u16::from_be_bytes([port[0], port[1]]);
    let host = match buf[3] {
        1 => Host::Ip(IpAddr::V4(Ipv4Addr::new(
            addr[0], addr[1], addr[2], addr[3],
        ))),
        4 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(addr);
            Host::Ip(IpAddr::V6(Ipv6Addr::from(o)))
        }
        _ => {
            let s = std::str::from_utf8(addr).map_err(|_| SocksError::BadHost)?;
            Host::parse(s).ok_or(SocksError::BadHost)?
        }
    };
    if port == 0 {
        return Err(SocksError::BadHost);
    }
    Ok(Some((end, host, port)))
}

/// A reply with the given code and an unspecified bound address.
pub fn reply(code: u8) -> [u8; 10] {
    [5, code, 0, 1, 0, 0, 0, 0, 0, 0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting() {
        assert_eq!(parse_greeting(&[5, 2, 2, 0]), Ok(Some(4)));
        assert_eq!(parse_greeting(&[5, 2, 2]), Ok(None));
        assert_eq!(parse_greeting(&[]), Ok(None));
        assert_eq!(
            parse_greeting(&[5, 1, 2]),
            Err(SocksError::NoAcceptableMethod)
        );
        assert_eq!(parse_greeting(&[4, 1, 0]), Err(SocksError::Version));
        assert_eq!(parse_greeting(&[5, 0]), Err(SocksError::NoAcceptableMethod));
    }

    #[test]
    fn requests() {
        let mut r = vec![5, 1, 0, 3, 11];
        r.extend_from_slice(b"Example.COM");
        r.extend_from_slice(&443u16.to_be_bytes());
        r.extend_from_slice(b"extra");
        assert_eq!(
            parse_request(&r),
            Ok(Some((18, Host::Name("example.com".into()), 443)))
        );
        assert_eq!(parse_request(&r[..10]), Ok(None));
        assert_eq!(
            parse_request(&[5, 1, 0, 1, 10, 0, 0, 1, 0, 80]),
            Ok(Some((10, Host::Ip("10.0.0.1".parse().unwrap()), 80)))
        );
        let mut v6 = vec![5, 1, 0, 4];
        v6.extend_from_slice(&"::1".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(&[0, 22]);
        assert_eq!(
            parse_request(&v6),
            Ok(Some((22, Host::Ip("::1".parse().unwrap()), 22)))
        );
        assert_eq!(
            parse_request(&[5, 2, 0, 1, 1, 2, 3, 4, 0, 80]),
            Err(SocksError::Command(2))
        );
        assert_eq!(
            parse_request(&[5, 3, 0, 1, 1, 2, 3, 4, 0, 80]),
            Err(SocksError::Command(3))
        );
        assert_eq!(
            parse_request(&[5, 1, 0, 9, 1]),
            Err(SocksError::AddressType(9))
        );
        assert_eq!(parse_request(&[5, 1, 0, 3, 0]), Err(SocksError::BadHost));
        assert_eq!(
            parse_request(&[5, 1, 0, 3, 5, b'1', b'2', b'7', b'.', b'1', 0, 80]),
            Err(SocksError::BadHost)
        );
        assert_eq!(
            parse_request(&[5, 1, 0, 1, 1, 2, 3, 4, 0, 0]),
            Err(SocksError::BadHost)
        );
        assert_eq!(parse_request(&[5, 1, 1, 1]), Err(SocksError::Malformed));
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_stays_in_bounds(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            if let Ok(Some(n)) = parse_greeting(&bytes) {
                proptest::prop_assert!(n <= bytes.len() && n <= MAX_GREETING);
            }
            if let Ok(Some((n, _, _))) = parse_request(&bytes) {
                proptest::prop_assert!(n <= bytes.len() && n <= MAX_REQUEST);
            }
        }
    }
}
