//! HTTP/1 request heads as the proxy sees them: `CONNECT host:port` (tunnels) and absolute-form
//! `GET http://host/path` (plain HTTP forwarding), and origin-form heads arriving on the port-80
//! capture listener (whose `Host` must name the captured destination). Parsing is `httparse`'s; this
//! file adds the proxy rules on top (one target, `Host` agreeing with it, no userinfo, hop-by-hop
//! headers removed, `Connection: close` upstream) and writes the proxy's own error responses.
//!
//! Pure functions over `&[u8]` (fuzz entry points); bounded by [`MAX_HEAD`] and [`MAX_HEADERS`].
//! Must not touch sockets or decide policy.

use super::rules::Host;

/// Largest request head accepted (request line plus headers).
pub const MAX_HEAD: usize = 16 * 1024;
/// Most header fields accepted.
pub const MAX_HEADERS: usize = 64;

/// What a client asked the HTTP proxy for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyRequest {
    pub kind: ProxyKind,
    pub host: Host,
    pub port: u16,
    /// Length of the head in the client's bytes; whatever follows is body/tunnel data.
    pub head_len: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyKind {
    /// `CONNECT`: answer 200, then relay bytes.
    Connect,
    /// Absolute-form request: send `upstream_head` (origin-form, hop-by-hop headers removed,
    /// `Connection: close`) to the origin, then relay bytes.
    Forward { upstream_head: Vec<u8> },
}

/// Why a head was refused; each maps to an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("request head larger than {MAX_HEAD} bytes or more than {MAX_HEADERS} headers")]
    TooLarge,
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("{0}")]
    BadTarget(&'static str),
}

impl HttpError {
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            HttpError::TooLarge => (431, "Request Header Fields Too Large"),
            HttpError::Malformed(_) | HttpError::BadTarget(_) => (400, "Bad Request"),
        }
    }
}

/// Headers that describe the client↔proxy hop and never go upstream.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
];

/// Parses a proxy request head. `Ok(None)`: incomplete, read more (unless `buf` already holds
/// [`MAX_HEAD`] bytes, which is `TooLarge`).
pub fn parse_proxy_request(buf: &[u8]) -> Result<Option<ProxyRequest>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match parse_head(&mut req, buf)? {
        Some(n) => n,
        None => return Ok(None),
    };
    let method = req.method.ok_or(HttpError::Malformed("no method"))?;
    let target = req.path.ok_or(HttpError::Malformed("no target"))?;
    let version = req.version.ok_or(HttpError::Malformed("no version"))?;
    let host_headers: Vec<&[u8]> = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"))
        .map(|h| h.value)
        .collect();
    if host_headers.len() > 1 {
        return Err(HttpError::Malformed("more than one Host header"));
    }
    if method == "CONNECT" {
        let (host, port) =
            split_authority(target, None).ok_or(HttpError::BadTarget("CONNECT needs host:port"))?;
        return Ok(Some(ProxyRequest {
            kind: ProxyKind::Connect,
            host,
            port,
            head_len,
        }));
    }
    let rest = strip_prefix_ci(target, "http://").ok_or(HttpError::BadTarget(
        "a proxy request needs an absolute http:// URL (use CONNECT for https)",
    ))?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err(HttpError::BadTarget(
            "user information in URLs is not accepted",
        ));
    }
    if path.contains('#') {
        return Err(HttpError::BadTarget(
            "fragments do not belong in a request target",
        ));
    }
    let (host, port) =
        split_authority(authority, Some(80)).ok_or(HttpError::BadTarget("bad host in URL"))?;
    if let Some(value) = host_headers.first() {
        let value = std::str::from_utf8(value).map_err(|_| HttpError::Malformed("Host header"))?;
        let (h, p) =
            split_authority(value, Some(80)).ok_or(HttpError::Malformed("bad Host header"))?;
        if h != host || p != port {
            return Err(HttpError::BadTarget(
                "Host header disagrees with the request URL",
            ));
        }
    }
    let has_cl = req
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("content-length"));
    let has_te = req
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"));
    if has_cl && has_te {
        return Err(HttpError::Malformed(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    let listed: Vec<String> = req
        .headers
        .iter()
        .filter(|h| {
            h.name.eq_ignore_ascii_case("connection")
                || h.name.eq_ignore_ascii_case("proxy-connection")
        })
        .flat_map(|h| {
            String::from_utf8_lossy(h.value)
                .split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .collect();
    let mut out = Vec::with_capacity(head_len + 32);
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    if !path.starts_with('/') {
        out.push(b'/');
    }
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(if version == 0 {
        b" HTTP/1.0\r\n"
    } else {
        b" HTTP/1.1\r\n"
    });
    if host_headers.is_empty() {
        out.extend_from_slice(b"Host: ");
        out.extend_from_slice(authority.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for h in req.headers.iter() {
        let lower = h.name.to_ascii_lowercase();
        if HOP_BY_HOP.contains(&lower.as_str()) || listed.contains(&lower) {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    Ok(Some(ProxyRequest {
        kind: ProxyKind::Forward { upstream_head: out },
        host,
        port,
        head_len,
    }))
}

/// For the port-80 capture listener: the host named by the `Host` header of an origin-form
/// request head (the bytes themselves are forwarded unchanged). `Ok(None)`: incomplete.
pub fn origin_request_host(buf: &[u8]) -> Result<Option<Host>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    if parse_head(&mut req, buf)?.is_none() {
        return Ok(None);
    }
    let mut hosts = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"));
    let value = hosts
        .next()
        .ok_or(HttpError::Malformed("no Host header"))?
        .value;
    if hosts.next().is_some() {
        return Err(HttpError::Malformed("more than one Host header"));
    }
    let value = std::str::from_utf8(value).map_err(|_| HttpError::Malformed("Host header"))?;
    let (host, _) =
        split_authority(value, Some(80)).ok_or(HttpError::Malformed("bad Host header"))?;
    Ok(Some(host))
}

fn parse_head<'h, 'b>(
    req: &mut httparse::Request<'h, 'b>,
    buf: &'b [u8],
) -> Result<Option<usize>, HttpError> {
    let window = &buf[..buf.len().min(MAX_HEAD)];
    match req.parse(window) {
        Ok(httparse::Status::Complete(n)) => Ok(Some(n)),
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => Err(HttpError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HttpError::TooLarge),
        Err(_) => Err(HttpError::Malformed("not an HTTP/1 request head")),
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    (s.len() >= prefix.len()
        && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes()))
    .then(|| &s[prefix.len()..])
}

/// `host:port`, `[v6]:port`, or (with a default port) `host` / `[v6]`.
pub fn split_authority(s: &str, default_port: Option<u16>) -> Option<(Host, u16)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']')?;
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return None,
        };
        (&s[..end + 2], port)
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port = match port {
        Some(p) => parse_port(p)?,
        None => default_port?,
    };
    if host.contains(':') && !host.starts_with('[') {
        return None;
    }
    Some((Host::parse(host)?, port))
}

fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse().ok().filter(|n| *n != 0)
}

/// The proxy's own response: status line, a plain-text body naming the reason, `Connection:
/// close`. `detail` is ours (rule names, host names we validated), never raw client bytes.
pub fn error_response(status: u16, reason: &str, detail: &str) -> Vec<u8> {
    let body = format!("aip egress: {detail}\n");
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\nX-Aip-Egress: {}\r\n\r\n{body}",
        body.len(),
        if status == 403 { "denied" } else { "error" },
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Option<ProxyRequest>, HttpError> {
        parse_proxy_request(s.as_bytes())
    }

    #[test]
    fn connect_targets() {
        let r =
            parse("CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com:443\r\n\r\nTLS")
                .unwrap()
                .unwrap();
        assert_eq!(r.kind, ProxyKind::Connect);
        assert_eq!(r.host, Host::Name("api.example.com".into()));
        assert_eq!(r.port, 443);
        assert_eq!(r.head_len, 67);
        let r = parse("CONNECT [2001:db8::1]:8443 HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            (r.host, r.port),
            (Host::Ip("2001:db8::1".parse().unwrap()), 8443)
        );
        for bad in [
            "CONNECT api.example.com HTTP/1.1\r\n\r\n",
            "CONNECT api.example.com:0 HTTP/1.1\r\n\r\n",
            "CONNECT api.example.com:99999 HTTP/1.1\r\n\r\n",
            "CONNECT 127.1:80 HTTP/1.1\r\n\r\n",
            "CONNECT http://a.com:80 HTTP/1.1\r\n\r\n",
            "CONNECT ::1:80 HTTP/1.1\r\n\r\n",
        ] {
            assert!(matches!(parse(bad), Err(HttpError::BadTarget(_))), "{bad}");
        }
    }

    #[test]
    fn absolute_form_is_rewritten_for_the_origin() {
        let r = parse(
            "GET http://Example.com:8080/a/b?c=1 HTTP/1.1\r\nHost: example.com:8080\r\nProxy-Connection: keep-alive\r\nConnection: X-Secret\r\nX-Secret: 1\r\nProxy-Authorization: Basic eA==\r\nAccept: */*\r\n\r\nbody",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (r.host.clone(), r.port),
            (Host::Name("example.com".into()), 8080)
        );
        let ProxyKind::Forward { upstream_head } = r.kind else {
            panic!()
        };
        assert_eq!(
            String::from_utf8(upstream_head).unwrap(),
            "GET /a/b?c=1 HTTP/1.1\r\nHost: example.com:8080\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        let r = parse("GET http://a.com HTTP/1.0\r\n\r\n").unwrap().unwrap();
        let ProxyKind::Forward { upstream_head } = r.kind else {
            panic!()
        };
        assert_eq!(
            String::from_utf8(upstream_head).unwrap(),
            "GET / HTTP/1.0\r\nHost: a.com\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn refusals() {
        for (req, want) in [
            ("GET /x HTTP/1.1\r\nHost: a.com\r\n\r\n", "absolute http://"),
            ("GET https://a.com/ HTTP/1.1\r\n\r\n", "absolute http://"),
            ("GET http://u:p@a.com/ HTTP/1.1\r\n\r\n", "user information"),
            (
                "GET http://a.com/ HTTP/1.1\r\nHost: b.com\r\n\r\n",
                "disagrees",
            ),
            (
                "GET http://a.com/ HTTP/1.1\r\nHost: a.com:81\r\n\r\n",
                "disagrees",
            ),
            (
                "GET http://a.com/ HTTP/1.1\r\nHost: a.com\r\nhost: a.com\r\n\r\n",
                "more than one",
            ),
            (
                "POST http://a.com/ HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                "both",
            ),
            ("GET http://a.com/#f HTTP/1.1\r\n\r\n", "fragment"),
            ("G\0T http://a.com/ HTTP/1.1\r\n\r\n", "HTTP/1"),
            ("GET http://a.com/ HTTP/1.1\r\nX: a\r\n b\r\n\r\n", "HTTP/1"),
        ] {
            let e = parse(req).unwrap_err();
            assert!(e.to_string().contains(want), "{req:?}: {e}");
        }
    }

    #[test]
    fn bounds() {
        assert_eq!(parse("GET http://a.com/ HTTP/1.1\r\nAccept: x"), Ok(None));
        let big = format!(
            "GET http://a.com/ HTTP/1.1\r\nX: {}\r\n",
            "a".repeat(MAX_HEAD)
        );
        assert_eq!(parse(&big), Err(HttpError::TooLarge));
        let mut many = String::from("GET http://a.com/ HTTP/1.1\r\n");
        for i in 0..=MAX_HEADERS {
            many.push_str(&format!("X{i}: 1\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(parse(&many), Err(HttpError::TooLarge));
    }

    #[test]
    fn origin_host() {
        let h = origin_request_host(b"GET / HTTP/1.1\r\nHost: Remote.Test:80\r\n\r\n").unwrap();
        assert_eq!(h, Some(Host::Name("remote.test".into())));
        assert_eq!(origin_request_host(b"GET / HTTP/1.1\r\nHo"), Ok(None));
        assert!(origin_request_host(b"GET / HTTP/1.1\r\n\r\n").is_err());
        assert!(origin_request_host(b"\x16\x03\x01\x00\x05hello").is_err());
    }

    #[test]
    fn error_responses_are_complete() {
        let r = String::from_utf8(error_response(
            403,
            "Forbidden",
            "a.com:443 denied by mode=block",
        ))
        .unwrap();
        assert!(r.starts_with("HTTP/1.1 403 Forbidden\r\n"));
        assert!(r.contains("X-Aip-Egress: denied"));
        assert!(r.ends_with("\r\n\r\naip egress: a.com:443 denied by mode=block\n"));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let _ = parse_proxy_request(&bytes);
            let _ = origin_request_host(&bytes);
        }

        #[test]
        fn forwarded_head_reparses_to_the_same_target(path in "/[a-z0-9/?=&]{0,20}") {
            let req = format!("GET http://a.example.com{path} HTTP/1.1\r\nAccept: x\r\n\r\n");
            let r = parse_proxy_request(req.as_bytes()).unwrap().unwrap();
            let ProxyKind::Forward { upstream_head } = r.kind else { panic!() };
            let host = origin_request_host(&upstream_head).unwrap().unwrap();
            proptest::prop_assert_eq!(host, Host::Name("a.example.com".into()));
        }
    }
}
