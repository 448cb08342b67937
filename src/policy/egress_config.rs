//! `spec.egress` (AIP Appendix D.1, "proposed for v1beta1"; accepted by us in every apiVersion as
//! a documented extension): the raw serde model, its validation, and the one parser of host
//! patterns (`api.github.com`, `*.example.com`, `10.0.0.0/8`, `::1`) that both validation and
//! `egress::Rules` use, so the policy check and the enforcement never disagree about a pattern.
//!
//! This file does no I/O and knows nothing about sockets: `egress` compiles the validated model.
//! Fields marked *extension* are ours, not Appendix D.1's.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Ports the transparent-capture listeners always take, and the default `allowed_ports` in
/// `mode: block` when the list is absent.
pub const DEFAULT_PORTS: [u16; 2] = [80, 443];
/// Ports the supervisor's own listeners use inside the sandbox (DNS stub, SOCKS5, HTTP proxy);
/// they cannot also be capture ports.
pub const RESERVED_PORTS: [u16; 3] = [53, 1080, 3128];
/// Most ports captured transparently (80 and 443 included). Each costs an IPv4 and an IPv6
/// listening socket; with the four proxy/DNS sockets that makes at most 64 sockets handed from the
/// sandbox child to the supervisor in one `SCM_RIGHTS` message (the sandbox's limit).
pub const MAX_CAPTURE_PORTS: usize = 30;
/// Most host entries in one list.
pub const MAX_HOST_ENTRIES: usize = 4096;
/// Size of the fake-address pool (198.18.0.0/15, minus network and broadcast-like ends).
pub const FAKE_POOL_SIZE: u32 = (1 << 17) - 2;

/// `spec.egress.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EgressMode {
    /// Default deny: only `allowed_hosts` (on allowed ports) go out.
    Block,
    /// Default allow: everything except `denied_hosts` / `denied_ports` goes out.
    Allow,
    /// Evaluate as `block`, log what would be blocked, let it through.
    Monitor,
}

impl EgressMode {
    pub fn as_str(self) -> &'static str {
        match self {
            EgressMode::Block => "block",
            EgressMode::Allow => "allow",
            EgressMode::Monitor => "monitor",
        }
    }
}

/// `spec.egress`, exactly the Appendix D.1 keys plus our marked extensions. Unknown keys are errors.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EgressConfig {
    /// `block | allow | monitor`. Appendix D.1 defaults to `allow`; we apply that default only when
    /// `allowed_hosts` is empty (an allowlist under a silent `allow` would be a trap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<EgressMode>,
    /// Host names, `*.` wildcards (subdomains only, not the apex), IP addresses and CIDRs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
    /// Same syntax; deny wins over allow.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denied_hosts: Vec<String>,
    /// Absent: `[80, 443]` in `block`/`monitor` mode, any port in `allow` mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_ports: Option<Vec<u16>>,
    /// Deny wins over allow.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denied_ports: Vec<u16>,
    /// *Extension*: extra TCP ports captured transparently (besides 80, 443 and `allowed_ports`)
    /// for clients that ignore proxy settings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capture_ports: Vec<u16>,
    /// *Extension*: per-sandbox limits and timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<EgressLimits>,
}

/// *Extension*: `spec.egress.limits`. Every field has a default (see the `DEFAULT_*` consts).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EgressLimits {
    /// Concurrent upstream connections per sandbox (default 256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Total bytes (both directions, all connections) per sandbox lifetime (default: unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// Upstream connect timeout, including name resolution (default 10000 ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout_ms: Option<u64>,
    /// A connection with no traffic either way for this long is closed (default 300 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_s: Option<u64>,
    /// Distinct names the DNS stub hands fake addresses to (default 65536, at most the pool size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_dns_names: Option<u32>,
}

pub const DEFAULT_MAX_CONNECTIONS: u32 = 256;
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_IDLE_TIMEOUT_S: u64 = 300;
pub const DEFAULT_MAX_DNS_NAMES: u32 = 65_536;

impl EgressConfig {
    /// The effective mode (Appendix D.1 default `allow`; see `validate` for when it is refused).
    pub fn effective_mode(&self) -> EgressMode {
        self.mode.unwrap_or(EgressMode::Allow)
    }

    /// The effective port allowlist: `None` means any port.
    pub fn effective_allowed_ports(&self) -> Option<Vec<u16>> {
        match (&self.allowed_ports, self.effective_mode()) {
            (Some(p), _) => Some(p.clone()),
            (None, EgressMode::Allow) => None,
            (None, _) => Some(DEFAULT_PORTS.to_vec()),
        }
    }

    /// TCP ports captured transparently: 80, 443, the explicit `allowed_ports` and
    /// `capture_ports`, minus the supervisor's own ports; sorted, without duplicates.
    pub fn capture_ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = DEFAULT_PORTS
            .iter()
            .chain(self.allowed_ports.iter().flatten())
            .chain(self.capture_ports.iter())
            .copied()
            .filter(|p| *p != 0 && !RESERVED_PORTS.contains(p))
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// Checks everything `egress::Rules` will rely on. The error is (field path relative to
    /// `spec.egress`, message with a hint).
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |path: String, msg: String| Err((path, msg));
        if self.mode.is_none() && !self.allowed_hosts.is_empty() {
            return err(
                "mode".into(),
                "`mode` is missing and `allowed_hosts` is set; Appendix D.1's default mode `allow` \
                 would ignore the allowlist. Set `mode: block` to allow only these hosts, or \
                 `mode: allow` to allow everything except `denied_hosts`"
                    .into(),
            );
        }
        let mode = self.effective_mode();
        for (list, entries) in [
            ("allowed_hosts", &self.allowed_hosts),
            ("denied_hosts", &self.denied_hosts),
        ] {
            if entries.len() > MAX_HOST_ENTRIES {
                return err(
                    list.into(),
                    format!("at most {MAX_HOST_ENTRIES} entries are supported"),
                );
            }
            for (i, raw) in entries.iter().enumerate() {
                let pattern = match HostPattern::parse(raw) {
                    Ok(p) => p,
                    Err(e) => return err(format!("{list}[{i}]"), format!("{raw:?}: {e}")),
                };
                if list == "allowed_hosts" && mode == EgressMode::Allow && !pattern.is_cidr() {
                    return err(
                        format!("{list}[{i}]"),
                        format!(
                            "{raw:?} has no effect in `mode: allow` (every host not denied is \
                             allowed; only IP/CIDR entries matter there, to open private \
                             ranges). Remove it, or use `mode: block`"
                        ),
                    );
                }
            }
        }
        for (i, raw) in self.allowed_hosts.iter().enumerate() {
            if let Some(j) = self.denied_hosts.iter().position(|d| same_entry(d, raw)) {
                return err(
                    format!("allowed_hosts[{i}]"),
                    format!(
                        "{raw:?} is also denied_hosts[{j}] (deny would win); remove it from one \
                         list"
                    ),
                );
            }
        }
        if let Some(ports) = &self.allowed_ports {
            if ports.is_empty() {
                return err(
                    "allowed_ports".into(),
                    "an empty list allows no port at all; remove `allowed_ports` for the default \
                     ([80, 443] in block/monitor mode, any port in allow mode) or list ports"
                        .into(),
                );
            }
            check_ports("allowed_ports", ports)?;
            for (i, p) in ports.iter().enumerate() {
                if self.denied_ports.contains(p) {
                    return err(
                        format!("allowed_ports[{i}]"),
                        format!(
                            "port {p} is also in denied_ports (deny would win); remove it from \
                             one list"
                        ),
                    );
                }
            }
        }
        check_ports("denied_ports", &self.denied_ports)?;
        check_ports("capture_ports", &self.capture_ports)?;
        for (i, p) in self.capture_ports.iter().enumerate() {
            if RESERVED_PORTS.contains(p) {
                return err(
                    format!("capture_ports[{i}]"),
                    format!(
                        "port {p} is used by the supervisor's own listeners inside the sandbox \
                         (53 DNS, 1080 SOCKS5, 3128 HTTP proxy); clients reach it through the \
                         proxies instead"
                    ),
                );
            }
        }
        if self.capture_ports().len() > MAX_CAPTURE_PORTS {
            return err(
                "capture_ports".into(),
                format!(
                    "80, 443, allowed_ports and capture_ports together name more than \
                     {MAX_CAPTURE_PORTS} ports to capture transparently; list fewer (clients \
                     that honour the proxy settings reach any allowed port without capture)"
                ),
            );
        }
        if let Some(l) = &self.limits {
            l.validate()?;
        }
        Ok(())
    }
}

impl EgressLimits {
    fn validate(&self) -> Result<(), (String, String)> {
        fn range<T: PartialOrd + fmt::Display + Copy>(
            field: &str,
            v: Option<T>,
            lo: T,
            hi: T,
        ) -> Result<(), (String, String)> {
            match v {
                Some(v) if v < lo || v > hi => Err((
                    format!("limits.{field}"),
                    format!("{v} is out of range; use a value from {lo} to {hi}"),
                )),
                _ => Ok(()),
            }
        }
        range("max_connections", self.max_connections, 1, 65_536)?;
        range("max_bytes", self.max_bytes, 1, u64::MAX)?;
        range("connect_timeout_ms", self.connect_timeout_ms, 1, 300_000)?;
        range("idle_timeout_s", self.idle_timeout_s, 1, 86_400)?;
        range("max_dns_names", self.max_dns_names, 1, FAKE_POOL_SIZE)?;
        Ok(())
    }
}

fn check_ports(list: &str, ports: &[u16]) -> Result<(), (String, String)> {
    for (i, p) in ports.iter().enumerate() {
        if *p == 0 {
            return Err((
                format!("{list}[{i}]"),
                "port 0 is not a destination port; use 1 to 65535".into(),
            ));
        }
    }
    Ok(())
}

fn same_entry(a: &str, b: &str) -> bool {
    matches!((HostPattern::parse(a), HostPattern::parse(b)), (Ok(x), Ok(y)) if x == y)
}

/// One entry of `allowed_hosts` / `denied_hosts`, normalized (lowercase, no trailing dot).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// Exactly this name.
    Name(String),
    /// Any name strictly below this suffix (`*.example.com` → `example.com`): `a.example.com` and
    /// `a.b.example.com` match, `example.com` itself does not.
    Subdomains(String),
    /// An address range (a bare address is a /32 or /128).
    Cidr(IpNet),
}

impl HostPattern {
    /// Parses one policy entry; the error says what is wrong and how to write it instead.
    pub fn parse(raw: &str) -> Result<HostPattern, String> {
        if raw.is_empty() {
            return Err("empty entry".into());
        }
        if !raw.is_ascii() {
            return Err(
                "non-ASCII host names are not accepted; write the IDNA (punycode, `xn--…`) form"
                    .into(),
            );
        }
        if raw.contains("://") || (raw.contains('/') && raw.contains(char::is_alphabetic)) {
            if let Ok(net) = raw.parse::<IpNet>() {
                return Self::cidr(raw, net);
            }
            return Err("write a host name, IP address or CIDR, not a URL or path".into());
        }
        if raw.chars().any(|c| c.is_ascii_whitespace()) {
            return Err("whitespace is not allowed in a host entry".into());
        }
        if raw.starts_with('[') {
            return Err("write IPv6 addresses without brackets (e.g. `2001:db8::1`)".into());
        }
        if raw.contains('/') {
            return match raw.parse::<IpNet>() {
                Ok(net) => Self::cidr(raw, net),
                Err(_) => Err("not a valid CIDR (e.g. `10.0.0.0/8`, `2001:db8::/32`)".into()),
            };
        }
        if let Ok(ip) = raw.parse::<IpAddr>() {
            return Ok(HostPattern::Cidr(IpNet::from(ip)));
        }
        if raw.contains(':') {
            return Err(
                "ports do not belong in host entries; list the port in `allowed_ports` or \
                 `denied_ports`"
                    .into(),
            );
        }
        if raw == "*" {
            return Err(
                "`*` alone is not a host pattern; use `mode: allow` to allow every host \
                 not denied"
                    .into(),
            );
        }
        if let Some(suffix) = raw.strip_prefix("*.") {
            let name = normalize_name(suffix).map_err(|e| format!("after `*.`: {e}"))?;
            return Ok(HostPattern::Subdomains(name));
        }
        if raw.contains('*') {
            return Err(
                "`*` is only allowed as the whole first label (`*.example.com`, which matches \
                 subdomains but not `example.com` itself)"
                    .into(),
            );
        }
        Ok(HostPattern::Name(normalize_name(raw)?))
    }

    fn cidr(raw: &str, net: IpNet) -> Result<HostPattern, String> {
        if net.trunc() != net {
            return Err(format!(
                "host bits are set in {raw}; did you mean {}?",
                net.trunc()
            ));
        }
        Ok(HostPattern::Cidr(net))
    }

    pub fn is_cidr(&self) -> bool {
        matches!(self, HostPattern::Cidr(_))
    }

    /// Whether the (normalized) name matches this pattern. CIDRs never match names.
    pub fn matches_name(&self, name: &str) -> bool {
        match self {
            HostPattern::Name(n) => n == name,
            HostPattern::Subdomains(suffix) => name
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            HostPattern::Cidr(_) => false,
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Name(n) => f.write_str(n),
            HostPattern::Subdomains(s) => write!(f, "*.{s}"),
            HostPattern::Cidr(net) => write!(f, "{net}"),
        }
    }
}

/// Normalizes a DNS host name: ASCII letters lowercased, one trailing dot removed; labels of
/// 1–63 letters, digits, `-` or `_` (not starting or ending with `-`), at most 253 bytes; the last
/// label must start with a letter, so numeric forms like `127.1` or `0x7f.1` (which `inet_aton`
/// would read as addresses) are never names. The error says why a name is refused.
pub fn normalize_name(raw: &str) -> Result<String, String> {
    let s = raw.strip_suffix('.').unwrap_or(raw);
    if s.is_empty() {
        return Err("empty host name".into());
    }
    if s.len() > 253 {
        return Err("host name longer than 253 bytes".into());
    }
    let mut last = "";
    for label in s.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("each dot-separated label must be 1 to 63 characters".into());
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(
                "host names may contain only letters, digits, `-`, `_` and dots (write IDNs in \
                 punycode)"
                    .into(),
            );
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label may not start or end with `-`".into());
        }
        last = label;
    }
    if !last.as_bytes()[0].is_ascii_alphabetic() {
        return Err(
            "not a valid IP address, and the last label of a host name must start with a \
             letter"
                .into(),
        );
    }
    Ok(s.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(yaml_like: impl FnOnce(&mut EgressConfig)) -> EgressConfig {
        let mut c = EgressConfig {
            mode: Some(EgressMode::Block),
            ..Default::default()
        };
        yaml_like(&mut c);
        c
    }

    #[test]
    fn patterns_parse_and_normalize() {
        assert_eq!(
            HostPattern::parse("API.GitHub.com.").unwrap(),
            HostPattern::Name("api.github.com".into())
        );
        assert_eq!(
            HostPattern::parse("*.Example.com").unwrap(),
            HostPattern::Subdomains("example.com".into())
        );
        assert_eq!(
            HostPattern::parse("10.0.0.0/8").unwrap(),
            HostPattern::Cidr("10.0.0.0/8".parse().unwrap())
        );
        assert_eq!(
            HostPattern::parse("::1").unwrap(),
            HostPattern::Cidr("::1/128".parse().unwrap())
        );
        assert_eq!(
            HostPattern::parse("192.0.2.7").unwrap(),
            HostPattern::Cidr("192.0.2.7/32".parse().unwrap())
        );
        assert_eq!(
            HostPattern::parse("_dmarc.example.com").unwrap(),
            HostPattern::Name("_dmarc.example.com".into())
        );
    }

    #[test]
    fn bad_patterns_say_why() {
        for (raw, hint) in [
            ("", "empty"),
            ("*", "mode: allow"),
            ("a.*.com", "first label"),
            ("*example.com", "first label"),
            ("example.com:443", "allowed_ports"),
            ("https://example.com", "URL"),
            ("example.com/path", "URL"),
            ("10.1.2.3/8", "did you mean 10.0.0.0/8"),
            ("10.0.0.0/33", "CIDR"),
            ("[::1]", "brackets"),
            ("bücher.de", "punycode"),
            ("127.1", "last label"),
            ("0x7f.1", "last label"),
            ("999.1.1.1", "last label"),
            ("-a.example.com", "`-`"),
            ("a..b", "1 to 63"),
            ("exa mple.com", "whitespace"),
            ("a_b!.com", "letters, digits"),
        ] {
            let e = HostPattern::parse(raw).unwrap_err();
            assert!(e.contains(hint), "{raw:?}: {e}");
        }
        let long = format!("{}.com", "a".repeat(64));
        assert!(HostPattern::parse(&long).is_err());
    }

    #[test]
    fn wildcard_matches_subdomains_not_apex() {
        let p = HostPattern::parse("*.example.com").unwrap();
        assert!(p.matches_name("a.example.com"));
        assert!(p.matches_name("a.b.example.com"));
        assert!(!p.matches_name("example.com"));
        assert!(!p.matches_name("badexample.com"));
        assert!(!p.matches_name("a.example.com.evil"));
        assert!(!p.matches_name(".example.com"));
        let n = HostPattern::parse("example.com").unwrap();
        assert!(n.matches_name("example.com"));
        assert!(!n.matches_name("a.example.com"));
    }

    #[test]
    fn appendix_d1_example_validates() {
        let c = cfg(|c| {
            c.allowed_hosts = vec![
                "api.github.com".into(),
                "*.openai.com".into(),
                "10.0.0.0/8".into(),
            ];
            c.denied_hosts = vec!["*.ngrok.io".into(), "*.requestbin.com".into()];
            c.allowed_ports = Some(vec![443, 80]);
            c.denied_ports = vec![22, 3389];
        });
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn validation_errors_name_the_field() {
        let cases: Vec<(EgressConfig, &str, &str)> = vec![
            (
                EgressConfig {
                    allowed_hosts: vec!["a.com".into()],
                    ..Default::default()
                },
                "mode",
                "mode: block",
            ),
            (
                cfg(|c| c.allowed_hosts = vec!["ok.com".into(), "bad:1".into()]),
                "allowed_hosts[1]",
                "allowed_ports",
            ),
            (
                cfg(|c| c.denied_hosts = vec!["*".into()]),
                "denied_hosts[0]",
                "mode: allow",
            ),
            (
                cfg(|c| {
                    c.mode = Some(EgressMode::Allow);
                    c.allowed_hosts = vec!["a.com".into()];
                }),
                "allowed_hosts[0]",
                "no effect",
            ),
            (
                cfg(|c| {
                    c.allowed_hosts = vec!["a.com".into()];
                    c.denied_hosts = vec!["A.com.".into()];
                }),
                "allowed_hosts[0]",
                "denied_hosts[0]",
            ),
            (
                cfg(|c| c.allowed_ports = Some(vec![])),
                "allowed_ports",
                "no port",
            ),
            (
                cfg(|c| c.allowed_ports = Some(vec![443, 0])),
                "allowed_ports[1]",
                "port 0",
            ),
            (
                cfg(|c| {
                    c.allowed_ports = Some(vec![22]);
                    c.denied_ports = vec![22];
                }),
                "allowed_ports[0]",
                "deny would win",
            ),
            (
                cfg(|c| c.capture_ports = vec![8080, 53]),
                "capture_ports[1]",
                "DNS",
            ),
            (
                cfg(|c| {
                    c.limits = Some(EgressLimits {
                        max_connections: Some(0),
                        ..Default::default()
                    })
                }),
                "limits.max_connections",
                "out of range",
            ),
            (
                cfg(|c| {
                    c.limits = Some(EgressLimits {
                        max_dns_names: Some(FAKE_POOL_SIZE + 1),
                        ..Default::default()
                    })
                }),
                "limits.max_dns_names",
                "out of range",
            ),
        ];
        for (c, path, hint) in cases {
            let (p, msg) = c.validate().unwrap_err();
            assert_eq!(p, path, "{msg}");
            assert!(msg.contains(hint), "{path}: {msg}");
        }
    }

    #[test]
    fn allow_mode_accepts_cidr_exemptions_and_defaults() {
        let c = EgressConfig {
            mode: Some(EgressMode::Allow),
            allowed_hosts: vec!["10.1.0.0/16".into()],
            ..Default::default()
        };
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.effective_allowed_ports(), None);
        let b = cfg(|_| {});
        assert_eq!(b.effective_allowed_ports(), Some(vec![80, 443]));
        let none = EgressConfig::default();
        assert_eq!(none.validate(), Ok(()));
        assert_eq!(none.effective_mode(), EgressMode::Allow);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e = serde_json::from_str::<EgressConfig>(r#"{"mode":"block","alowed_hosts":[]}"#)
            .unwrap_err();
        assert!(e.to_string().contains("alowed_hosts"), "{e}");
        let e = serde_json::from_str::<EgressConfig>(r#"{"mode":"deny"}"#).unwrap_err();
        assert!(e.to_string().contains("deny"), "{e}");
        let e = serde_json::from_str::<EgressConfig>(r#"{"limits":{"max_conns":1}}"#).unwrap_err();
        assert!(e.to_string().contains("max_conns"), "{e}");
        let ok: EgressConfig = serde_json::from_str(
            r#"{"mode":"monitor","allowed_hosts":["a.com"],"allowed_ports":[443],"capture_ports":[8443],"limits":{"max_bytes":1000}}"#,
        )
        .unwrap();
        assert_eq!(ok.validate(), Ok(()));
    }
}
