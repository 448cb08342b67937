//! The compiled `spec.egress` policy and the pure decision over (host, port) and over resolved
//! addresses. Every decision names the rule that made it, for the audit record.
//!
//! Order of evaluation (deny wins): `denied_ports`, `denied_hosts`, the special-address guard
//! (loopback, private, CGNAT, link-local, multicast, ULA, IPv4-mapped…, always enforced, even in
//! monitor mode, unless an `allowed_hosts` CIDR lying inside that range names the address), then
//! the allow side (`allowed_hosts` per mode, `allowed_ports`). In monitor mode a denial by a policy
//! rule becomes `AllowMonitor` (let through, logged as a violation).
//!
//! This file does no I/O: resolution, sockets and audit live elsewhere in `egress`.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

use crate::policy::egress_config::{
    DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_IDLE_TIMEOUT_S, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_DNS_NAMES, EgressConfig, EgressMode, HostPattern, normalize_name,
};

use super::EgressError;

/// A destination as the client named it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A normalized DNS name (lowercase, no trailing dot).
    Name(String),
    /// An address literal.
    Ip(IpAddr),
}

impl Host {
    /// Parses a host as a client sent it (HTTP authority, SOCKS5 domain, DNS question):
    /// an IPv4 dotted quad, an IPv6 literal (brackets optional) or a DNS name (see
    /// [`normalize_name`]). Anything else is refused, so odd numeric forms such as `127.1` or
    /// `0x7f000001` never reach a resolver that would read them as addresses.
    pub fn parse(raw: &str) -> Option<Host> {
        let inner = raw
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .unwrap_or(raw);
        if let Ok(ip) = inner.parse::<IpAddr>() {
            // `[1.2.3.4]` is not a valid authority.
            if ip.is_ipv4() && inner.len() != raw.len() {
                return None;
            }
            return Some(Host::Ip(ip));
        }
        if inner.len() != raw.len() {
            return None;
        }
        normalize_name(raw).ok().map(Host::Name)
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// What happens to a connection or a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allow,
    Deny,
    /// Monitor mode: a policy rule would deny, the connection goes through, logged as a violation.
    AllowMonitor,
}

impl Outcome {
    /// The AIP audit `decision` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "ALLOW",
            Outcome::Deny => "BLOCK",
            Outcome::AllowMonitor => "ALLOW_MONITOR",
        }
    }

    pub fn allows(self) -> bool {
        !matches!(self, Outcome::Deny)
    }

    pub fn violation(self) -> bool {
        !matches!(self, Outcome::Allow)
    }
}

/// A decision and the rule that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Outcome,
    /// The deciding rule, e.g. `allowed_hosts[1]=*.example.com`, `denied_ports[0]=22`,
    /// `special_range=loopback 127.0.0.0/8`, `mode=block`.
    pub rule: String,
}

impl Decision {
    fn allow(rule: String) -> Self {
        Decision {
            outcome: Outcome::Allow,
            rule,
        }
    }
    fn deny(rule: String) -> Self {
        Decision {
            outcome: Outcome::Deny,
            rule,
        }
    }
}

/// Per-sandbox limits (`spec.egress.limits`, with defaults applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: u32,
    pub max_bytes: Option<u64>,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_dns_names: u32,
}

/// The compiled `spec.egress`.
#[derive(Debug, Clone)]
pub struct Rules {
    mode: EgressMode,
    allowed: Vec<(usize, HostPattern)>,
    denied: Vec<(usize, HostPattern)>,
    /// `None`: any port.
    allowed_ports: Option<Vec<u16>>,
    allowed_ports_explicit: bool,
    denied_ports: Vec<u16>,
    capture_ports: Vec<u16>,
    limits: Limits,
}

/// Address ranges never dialled unless an `allowed_hosts` CIDR inside the range names them. Order
/// matters: the first match names the range in the audit record.
const SPECIAL_RANGES: &[(&str, &str)] = &[
    ("0.0.0.0/8", "this-network"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "cgnat"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local (cloud metadata)"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "ietf-protocol-assignments"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "6to4-relay-anycast"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::ffff:0:0/96", "ipv4-mapped"),
    ("::/96", "ipv4-compatible"),
    ("64:ff9b::/96", "nat64"),
    ("64:ff9b:1::/48", "nat64-local"),
    ("100::/64", "discard-only"),
    ("2001::/32", "teredo"),
    ("2001:db8::/32", "documentation"),
    ("2002::/16", "6to4"),
    ("fc00::/7", "unique-local (ULA)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
];

/// The special range `ip` falls in, if any.
pub fn special_range(ip: IpAddr) -> Option<(IpNet, &'static str)> {
    SPECIAL_RANGES.iter().find_map(|(net, name)| {
        let net: IpNet = net.parse().ok()?;
        net.contains(&ip).then_some((net, *name))
    })
}

impl Rules {
    /// Compiles a validated config. Validation runs again here so that `Rules` never holds a
    /// pattern the policy check would have refused.
    pub fn compile(cfg: &EgressConfig) -> Result<Rules, EgressError> {
        cfg.validate()
            .map_err(|(field, message)| EgressError::Policy { field, message })?;
        let parse = |list: &[String]| -> Vec<(usize, HostPattern)> {
            list.iter()
                .enumerate()
                .filter_map(|(i, raw)| HostPattern::parse(raw).ok().map(|p| (i, p)))
                .collect()
        };
        let l = cfg.limits.clone().unwrap_or_default();
        Ok(Rules {
            mode: cfg.effective_mode(),
            allowed: parse(&cfg.allowed_hosts),
            denied: parse(&cfg.denied_hosts),
            allowed_ports: cfg.effective_allowed_ports(),
            allowed_ports_explicit: cfg.allowed_ports.is_some(),
            denied_ports: cfg.denied_ports.clone(),
            capture_ports: cfg.capture_ports(),
            limits: Limits {
                max_connections: l.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
                max_bytes: l.max_bytes,
                connect_timeout: Duration::from_millis(
                    l.connect_timeout_ms.unwrap_or(DEFAULT_CONNECT_TIMEOUT_MS),
                ),
                idle_timeout: Duration::from_secs(
                    l.idle_timeout_s.unwrap_or(DEFAULT_IDLE_TIMEOUT_S),
                ),
                max_dns_names: l.max_dns_names.unwrap_or(DEFAULT_MAX_DNS_NAMES),
            },
        })
    }

    pub fn mode(&self) -> EgressMode {
        self.mode
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// TCP ports the transparent-capture listeners take.
    pub fn capture_ports(&self) -> &[u16] {
        &self.capture_ports
    }

    /// Decides a connection to `host:port` before any resolution.
    pub fn decide(&self, host: &Host, port: u16) -> Decision {
        if let Some(i) = self.denied_ports.iter().position(|p| *p == port) {
            return self.policy_deny(format!("denied_ports[{i}]={port}"));
        }
        if let Some(rule) = self.denied_rule(host) {
            return self.policy_deny(rule);
        }
        if let Host::Ip(ip) = host
            && let Some(rule) = self.special_refusal(*ip, &OwnAddresses::default())
        {
            return Decision::deny(rule);
        }
        let host_rule = match (self.mode, self.allowed_rule(host)) {
            (_, Some(rule)) => rule,
            (EgressMode::Allow, None) => "mode=allow".to_owned(),
            (_, None) => {
                return self.policy_deny(format!(
                    "mode={} (not in allowed_hosts)",
                    self.mode.as_str()
                ));
            }
        };
        if let Some(ports) = &self.allowed_ports
            && !ports.contains(&port)
        {
            return self.policy_deny(if self.allowed_ports_explicit {
                format!("allowed_ports (port {port} not listed)")
            } else {
                format!("allowed_ports default [80, 443] (port {port} not listed)")
            });
        }
        Decision::allow(host_rule)
    }

    /// Decides whether the DNS stub may answer `name` (ports play no part here).
    pub fn decide_name(&self, name: &str) -> Decision {
        let host = Host::Name(name.to_owned());
        if let Some(rule) = self.denied_rule(&host) {
            return self.policy_deny(rule);
        }
        match (self.mode, self.allowed_rule(&host)) {
            (_, Some(rule)) => Decision::allow(rule),
            (EgressMode::Allow, None) => Decision::allow("mode=allow".to_owned()),
            (_, None) => self.policy_deny(format!(
                "mode={} (not in allowed_hosts)",
                self.mode.as_str()
            )),
        }
    }

    /// Filters the addresses an allowed name resolved to: addresses in a denied CIDR and
    /// special-range addresses not named by an `allowed_hosts` CIDR are dropped. `Err` carries
    /// the refusal when nothing is left. The first element of the `Ok` value is what was kept; in
    /// monitor mode denied-CIDR addresses are kept and reported in the second element.
    pub fn filter_resolved(
        &self,
        addrs: &[IpAddr],
    ) -> Result<(Vec<IpAddr>, Option<String>), Decision> {
        let mut kept = Vec::with_capacity(addrs.len());
        let mut first_refusal: Option<Decision> = None;
        let mut monitored: Option<String> = None;
        let own = OwnAddresses::default();
        for ip in addrs {
            if let Some(rule) = self.denied_rule(&Host::Ip(*ip)) {
                let d = self.policy_deny(format!("{rule} (resolved {ip})"));
                if d.outcome == Outcome::AllowMonitor {
                    monitored.get_or_insert(d.rule);
                } else {
                    first_refusal.get_or_insert(d);
                    continue;
                }
            }
            if let Some(rule) = self.special_refusal(*ip, &own) {
                first_refusal.get_or_insert(Decision::deny(format!("{rule} (resolved {ip})")));
                continue;
            }
            kept.push(*ip);
        }
        match (kept.is_empty(), first_refusal) {
            (true, Some(d)) => Err(d),
            (true, None) => Err(Decision::deny("resolution returned no address".to_owned())),
            (false, _) => Ok((kept, monitored)),
        }
    }

    /// A policy-rule denial: enforced in block/allow mode, let through in monitor mode.
    fn policy_deny(&self, rule: String) -> Decision {
        if self.mode == EgressMode::Monitor {
            Decision {
                outcome: Outcome::AllowMonitor,
                rule,
            }
        } else {
            Decision::deny(rule)
        }
    }

    fn denied_rule(&self, host: &Host) -> Option<String> {
        first_match(&self.denied, host).map(|(i, p)| format!("denied_hosts[{i}]={p}"))
    }

    fn allowed_rule(&self, host: &Host) -> Option<String> {
        first_match(&self.allowed, host).map(|(i, p)| format!("allowed_hosts[{i}]={p}"))
    }

    /// Why `ip` may not be dialled: a special range, unless an allowed CIDR inside the range
    /// names it; or an address of this host, unless an allowed CIDR names exactly it.
    fn special_refusal(&self, ip: IpAddr, own: &OwnAddresses) -> Option<String> {
        if let Some((range, name)) = special_range(ip) {
            let unlocked = self.allowed.iter().any(|(_, p)| match p {
                HostPattern::Cidr(net) => net.contains(&ip) && range.contains(net),
                _ => false,
            });
            if !unlocked {
                return Some(format!("special_range={name} {range}"));
            }
        }
        if own.contains(ip) {
            let named = self.allowed.iter().any(|(_, p)| match p {
                HostPattern::Cidr(net) => {
                    net.contains(&ip) && net.prefix_len() == net.max_prefix_len()
                }
                _ => false,
            });
            if !named {
                return Some(format!("own_address={ip} (an address of this host)"));
            }
        }
        None
    }
}

/// The addresses assigned to the interfaces of the network namespace aip dials from (the host's,
/// or aipd's): a host service bound to `0.0.0.0` or `[::]` answers there as it does on loopback,
/// and public or global addresses are in no special range. Read once per decision, when first
/// needed (interfaces change; a read costs a netlink dump); if they cannot be read, every address
/// counts as the host's (fail closed).
#[derive(Default)]
struct OwnAddresses(std::cell::OnceCell<Option<Vec<IpAddr>>>);

impl OwnAddresses {
    fn contains(&self, ip: IpAddr) -> bool {
        let addrs = self.0.get_or_init(|| {
            let list = nix::ifaddrs::getifaddrs().ok()?;
            Some(
                list.filter_map(|a| a.address)
                    .filter_map(|sa| {
                        sa.as_sockaddr_in()
                            .map(|v4| IpAddr::V4(v4.ip()))
                            .or_else(|| sa.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
                    })
                    .collect(),
            )
        });
        addrs.as_ref().is_none_or(|a| a.contains(&ip))
    }
}

#[cfg(test)]
fn is_own_address(ip: IpAddr) -> bool {
    OwnAddresses::default().contains(ip)
}

fn first_match<'a>(
    list: &'a [(usize, HostPattern)],
    host: &Host,
) -> Option<(usize, &'a HostPattern)> {
    list.iter()
        .find(|(_, p)| match (p, host) {
            (HostPattern::Cidr(net), Host::Ip(ip)) => net.contains(ip),
            (_, Host::Name(n)) => p.matches_name(n),
            _ => false,
        })
        .map(|(i, p)| (*i, p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::egress_config::EgressLimits;

    fn rules(mode: EgressMode, allowed: &[&str], denied: &[&str]) -> Rules {
        Rules::compile(&EgressConfig {
            mode: Some(mode),
            allowed_hosts: allowed.iter().map(|s| s.to_string()).collect(),
            denied_hosts: denied.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .unwrap()
    }

    fn name(n: &str) -> Host {
        Host::parse(n).unwrap()
    }
    fn ip(s: &str) -> Host {
        Host::Ip(s.parse().unwrap())
    }

    #[test]
    fn host_parse_accepts_names_and_literals_only() {
        assert_eq!(
            Host::parse("Example.COM."),
            Some(Host::Name("example.com".into()))
        );
        assert_eq!(Host::parse("[::1]"), Some(ip("::1")));
        assert_eq!(Host::parse("::1"), Some(ip("::1")));
        assert_eq!(Host::parse("10.0.0.1"), Some(ip("10.0.0.1")));
        for bad in [
            "127.1",
            "0x7f000001",
            "2130706433",
            "[10.0.0.1]",
            "[a.com]",
            "",
            "a b",
            "a..b",
            "é.com",
        ] {
            assert_eq!(Host::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn block_mode_allows_only_listed_hosts_on_default_ports() {
        let r = rules(EgressMode::Block, &["api.github.com", "*.example.com"], &[]);
        let d = r.decide(&name("api.github.com"), 443);
        assert_eq!(d.outcome, Outcome::Allow);
        assert_eq!(d.rule, "allowed_hosts[0]=api.github.com");
        assert_eq!(
            r.decide(&name("a.example.com"), 80).rule,
            "allowed_hosts[1]=*.example.com"
        );
        let apex = r.decide(&name("example.com"), 443);
        assert_eq!(apex.outcome, Outcome::Deny);
        assert_eq!(apex.rule, "mode=block (not in allowed_hosts)");
        assert_eq!(
            r.decide(&name("x.api.github.com"), 443).outcome,
            Outcome::Deny
        );
        let port = r.decide(&name("api.github.com"), 22);
        assert_eq!(port.outcome, Outcome::Deny);
        assert!(port.rule.contains("default [80, 443]"), "{}", port.rule);
        assert_eq!(r.decide(&ip("93.184.216.34"), 443).outcome, Outcome::Deny);
    }

    #[test]
    fn deny_wins() {
        let r = Rules::compile(&EgressConfig {
            mode: Some(EgressMode::Block),
            allowed_hosts: vec!["*.example.com".into(), "8.8.0.0/16".into()],
            denied_hosts: vec!["evil.example.com".into(), "8.8.8.0/24".into()],
            allowed_ports: Some(vec![443, 8443]),
            denied_ports: vec![22],
            ..Default::default()
        })
        .unwrap();
        let d = r.decide(&name("evil.example.com"), 443);
        assert_eq!(
            (d.outcome, d.rule.as_str()),
            (Outcome::Deny, "denied_hosts[0]=evil.example.com")
        );
        let d = r.decide(&ip("8.8.8.8"), 443);
        assert_eq!(
            (d.outcome, d.rule.as_str()),
            (Outcome::Deny, "denied_hosts[1]=8.8.8.0/24")
        );
        assert_eq!(r.decide(&ip("8.8.4.4"), 8443).outcome, Outcome::Allow);
        let d = r.decide(&name("ok.example.com"), 22);
        assert_eq!(
            (d.outcome, d.rule.as_str()),
            (Outcome::Deny, "denied_ports[0]=22")
        );
        let d = r.decide(&name("ok.example.com"), 80);
        assert_eq!(d.rule, "allowed_ports (port 80 not listed)");
    }

    #[test]
    fn special_ranges_need_a_cidr_inside_them() {
        let r = rules(
            EgressMode::Allow,
            &["127.0.0.1", "10.20.0.0/16", "0.0.0.0/0"],
            &[],
        );
        assert_eq!(r.decide(&ip("127.0.0.1"), 80).outcome, Outcome::Allow);
        assert_eq!(r.decide(&ip("10.20.3.4"), 80).outcome, Outcome::Allow);
        for (addr, range) in [
            ("127.0.0.2", "loopback"),
            ("10.21.0.1", "private"),
            ("169.254.169.254", "link-local"),
            ("100.64.1.1", "cgnat"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "reserved"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "ipv4-mapped"),
            ("::127.0.0.1", "ipv4-compatible"),
            ("64:ff9b::a9fe:a9fe", "nat64"),
            ("fd00:ec2::254", "unique-local"),
            ("fe80::1", "link-local"),
            ("ff02::1", "multicast"),
            ("2002:7f00:1::", "6to4"),
        ] {
            let d = r.decide(&ip(addr), 80);
            assert_eq!(d.outcome, Outcome::Deny, "{addr}");
            assert!(
                d.rule.starts_with("special_range=") && d.rule.contains(range),
                "{addr}: {}",
                d.rule
            );
        }
        // 0.0.0.0/0 is not inside any special range, so it opens only public addresses.
        assert_eq!(r.decide(&ip("1.1.1.1"), 80).outcome, Outcome::Allow);
        assert_eq!(r.decide(&ip("2606:4700::1111"), 80).outcome, Outcome::Allow);
    }

    #[test]
    fn the_hosts_own_addresses_need_a_rule_naming_exactly_them() {
        // 127.0.0.1 sits on `lo` of every network namespace, so it stands for any address of
        // this host here: a rule that opens its range does not open it, a rule naming it does.
        assert!(is_own_address("127.0.0.1".parse().unwrap()));
        let range = rules(EgressMode::Allow, &["127.0.0.0/8"], &[]);
        assert_eq!(range.decide(&ip("127.0.0.2"), 80).outcome, Outcome::Allow);
        let d = range.decide(&ip("127.0.0.1"), 80);
        assert_eq!(d.outcome, Outcome::Deny);
        assert!(d.rule.starts_with("own_address=127.0.0.1"), "{}", d.rule);
        assert!(range.filter_resolved(&[ip_addr("127.0.0.1")]).is_err());
        let exact = rules(EgressMode::Allow, &["127.0.0.1"], &[]);
        assert_eq!(exact.decide(&ip("127.0.0.1"), 80).outcome, Outcome::Allow);
    }

    fn ip_addr(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn resolved_addresses_are_filtered() {
        let r = rules(
            EgressMode::Block,
            &["a.com", "10.9.0.0/16"],
            &["1.2.3.0/24"],
        );
        let v = |s: &[&str]| {
            s.iter()
                .map(|a| a.parse().unwrap())
                .collect::<Vec<IpAddr>>()
        };
        let (kept, _) = r
            .filter_resolved(&v(&["127.0.0.1", "5.6.7.8", "1.2.3.4", "10.9.1.1"]))
            .unwrap();
        assert_eq!(kept, v(&["5.6.7.8", "10.9.1.1"]));
        let e = r.filter_resolved(&v(&["192.168.1.1"])).unwrap_err();
        assert_eq!(e.outcome, Outcome::Deny);
        assert!(
            e.rule.contains("private") && e.rule.contains("resolved 192.168.1.1"),
            "{}",
            e.rule
        );
        let e = r.filter_resolved(&v(&["1.2.3.9"])).unwrap_err();
        assert!(e.rule.starts_with("denied_hosts[0]"), "{}", e.rule);
        assert!(r.filter_resolved(&[]).is_err());
    }

    #[test]
    fn monitor_lets_policy_denials_through_but_not_special_ranges() {
        let r = rules(EgressMode::Monitor, &["a.com"], &["b.com"]);
        assert_eq!(r.decide(&name("a.com"), 443).outcome, Outcome::Allow);
        let d = r.decide(&name("b.com"), 443);
        assert_eq!(
            (d.outcome, d.rule.as_str()),
            (Outcome::AllowMonitor, "denied_hosts[0]=b.com")
        );
        assert_eq!(r.decide(&name("c.com"), 443).outcome, Outcome::AllowMonitor);
        assert_eq!(r.decide(&name("a.com"), 22).outcome, Outcome::AllowMonitor);
        assert_eq!(r.decide(&ip("169.254.169.254"), 80).outcome, Outcome::Deny);
        assert_eq!(r.decide_name("c.com").outcome, Outcome::AllowMonitor);
        assert!(r.filter_resolved(&["10.0.0.1".parse().unwrap()]).is_err());
    }

    #[test]
    fn allow_mode_denies_only_denied() {
        let r = rules(EgressMode::Allow, &[], &["*.ngrok.io"]);
        assert_eq!(
            r.decide(&name("anything.com"), 5432).outcome,
            Outcome::Allow
        );
        assert_eq!(r.decide(&name("x.ngrok.io"), 443).outcome, Outcome::Deny);
        assert_eq!(r.decide_name("x.ngrok.io").outcome, Outcome::Deny);
        assert_eq!(r.decide_name("ngrok.io").outcome, Outcome::Allow);
        assert_eq!(r.decide(&ip("10.0.0.1"), 443).outcome, Outcome::Deny);
    }

    #[test]
    fn limits_have_defaults() {
        let r = rules(EgressMode::Block, &[], &[]);
        assert_eq!(r.limits().max_connections, 256);
        assert_eq!(r.limits().connect_timeout, Duration::from_secs(10));
        let r = Rules::compile(&EgressConfig {
            mode: Some(EgressMode::Block),
            limits: Some(EgressLimits {
                max_bytes: Some(10),
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(r.limits().max_bytes, Some(10));
        assert!(
            Rules::compile(&EgressConfig {
                allowed_hosts: vec!["a.com".into()],
                ..Default::default()
            })
            .is_err()
        );
    }
}
