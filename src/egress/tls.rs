//! The TLS ClientHello's server name (SNI), read from the first bytes a client sends on a captured
//! or tunnelled port-443 connection, so the supervisor can require it to match the destination it
//! is about to dial (domain-fronting check). Parsing is rustls's (`server::Acceptor`, no crypto
//! provider needed to read a ClientHello): it handles records split across reads and handshake
//! messages split across records, and refuses malformed hellos.
//!
//! Pure function over `&[u8]` (fuzz entry point), bounded by [`MAX_HELLO`]. Must not terminate or
//! inspect TLS beyond the ClientHello.

use rustls::server::Acceptor;

/// Most bytes read while waiting for a complete ClientHello (two full records).
pub const MAX_HELLO: usize = 2 * (16 * 1024 + 5);

/// What the first bytes of a connection say about its TLS server name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sni {
    /// A complete ClientHello; its server name (lowercased), if it carries one.
    Hello(Option<String>),
    /// Looks like TLS so far; read more.
    Incomplete,
    /// The first byte is not a TLS handshake record.
    NotTls,
    /// A TLS record that rustls refuses as a ClientHello.
    Malformed,
}

/// Examines the bytes received so far on a connection.
pub fn client_hello_sni(buf: &[u8]) -> Sni {
    match buf.first() {
        None => return Sni::Incomplete,
        Some(0x16) => {}
        Some(_) => return Sni::NotTls,
    }
    if buf.len() > MAX_HELLO {
        return Sni::Malformed;
    }
    let mut acceptor = Acceptor::default();
    let mut rest = buf;
    while !rest.is_empty() {
        match acceptor.read_tls(&mut rest) {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => return Sni::Malformed,
        }
        match acceptor.accept() {
            Ok(None) => continue,
            Ok(Some(accepted)) => {
                let hello = accepted.client_hello();
                return Sni::Hello(hello.server_name().map(str::to_ascii_lowercase));
            }
            Err(_) => return Sni::Malformed,
        }
    }
    Sni::Incomplete
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real ClientHello (TLS 1.3, SNI "remote.test"), as sent by `openssl s_client`.
    pub(crate) fn hello(sni: &str) -> Vec<u8> {
        // record header + handshake header + body assembled by hand from the RFC 8446 layout.
        let mut ext = Vec::new();
        // server_name
        let name = sni.as_bytes();
        let mut sn = Vec::new();
        sn.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
        sn.push(0);
        sn.extend_from_slice(&(name.len() as u16).to_be_bytes());
        sn.extend_from_slice(name);
        if !sni.is_empty() {
            ext.extend_from_slice(&0u16.to_be_bytes());
            ext.extend_from_slice(&(sn.len() as u16).to_be_bytes());
            ext.extend_from_slice(&sn);
        }
        // supported_versions: TLS 1.3
        ext.extend_from_slice(&[0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);
        // signature_algorithms: ecdsa_secp256r1_sha256
        ext.extend_from_slice(&[0x00, 0x0d, 0x00, 0x04, 0x00, 0x02, 0x04, 0x03]);
        // supported_groups: x25519
        ext.extend_from_slice(&[0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x1d]);
        // key_share: x25519 with 32 zero bytes
        ext.extend_from_slice(&[0x00, 0x33, 0x00, 0x26, 0x00, 0x24, 0x00, 0x1d, 0x00, 0x20]);
        ext.extend_from_slice(&[0u8; 32]);
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7u8; 32]); // random
        body.push(0); // session id
        body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]); // TLS_AES_128_GCM_SHA256
        body.extend_from_slice(&[0x01, 0x00]); // null compression
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![0x01];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 0x03, 0x01];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn reads_the_server_name() {
        let h = hello("Remote.Test");
        assert_eq!(client_hello_sni(&h), Sni::Hello(Some("remote.test".into())));
        assert_eq!(client_hello_sni(&hello("")), Sni::Hello(None));
        for cut in [1, 5, 40, h.len() - 1] {
            assert_eq!(client_hello_sni(&h[..cut]), Sni::Incomplete, "cut at {cut}");
        }
        assert_eq!(client_hello_sni(b"GET / HTTP/1.1\r\n"), Sni::NotTls);
        assert_eq!(client_hello_sni(b""), Sni::Incomplete);
    }

    #[test]
    fn split_across_records() {
        let h = hello("a.example.com");
        let hs = &h[5..];
        let mut two = Vec::new();
        for part in [&hs[..20], &hs[20..]] {
            two.extend_from_slice(&[0x16, 0x03, 0x01]);
            two.extend_from_slice(&(part.len() as u16).to_be_bytes());
            two.extend_from_slice(part);
        }
        assert_eq!(
            client_hello_sni(&two),
            Sni::Hello(Some("a.example.com".into()))
        );
    }

    #[test]
    fn garbage_is_malformed() {
        let mut h = hello("a.example.com");
        h[6] = 0xff; // a handshake length beyond any record
        assert!(matches!(
            client_hello_sni(&h),
            Sni::Malformed | Sni::Incomplete
        ));
        assert_eq!(
            client_hello_sni(&[0x16, 0x03, 0x01, 0x00, 0x04, 0x02, 0, 0, 0]),
            Sni::Malformed
        );
        assert_eq!(client_hello_sni(&vec![0x16; MAX_HELLO + 1]), Sni::Malformed);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(mut bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            if let Some(b) = bytes.first_mut() { *b = 0x16; }
            let _ = client_hello_sni(&bytes);
        }
    }
}
