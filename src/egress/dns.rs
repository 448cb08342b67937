//! The DNS stub the sandbox's `resolv.conf` points at. It answers from policy alone and never
//! forwards a query anywhere: allowed names get a stable fake IPv4 address (A) and an empty
//! answer for every other type; unlisted or denied names get NXDOMAIN; `localhost` gets loopback;
//! PTR queries for fake addresses get their name back. Wire format parsing and writing is
//! `hickory-proto`'s; [`answer`] is a pure function over the query bytes (the fuzz entry point).
//!
//! This file must not resolve anything on the host: real resolution happens only when a
//! connection to an allowed name is made (see `supervisor`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use super::fakeip::FakePool;
use super::rules::{Decision, Outcome, Rules};

/// TTL of fake answers: the mapping never changes for the sandbox's lifetime.
pub const TTL: u32 = 60;
/// Largest UDP payload we advertise and answer with (the DNS flag-day value).
const EDNS_PAYLOAD: u16 = 1232;
/// Largest query we read (UDP datagrams and TCP messages alike).
pub const MAX_QUERY: usize = 4096;

/// What the stub did with one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The response to send, `None` when the input is not a DNS query worth answering (too short
    /// to carry an id, or a response rather than a query).
    pub response: Option<Vec<u8>>,
    /// Set when the query concerned a name that policy refused (or monitor let through), for the
    /// rate-limited audit record.
    pub event: Option<DnsEvent>,
}

/// A refused (or monitored) lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsEvent {
    /// The queried name as received (lowercased, escaped when not a valid host name).
    pub name: String,
    pub qtype: String,
    pub decision: Decision,
}

/// Answers one DNS query according to `rules`, assigning fake addresses from `pool`.
pub fn answer(query: &[u8], rules: &Rules, pool: &FakePool) -> Answer {
    let none = Answer {
        response: None,
        event: None,
    };
    if query.len() < 12 || query.len() > MAX_QUERY {
        return none;
    }
    let id = u16::from_be_bytes([query[0], query[1]]);
    // QR bit set: a response, never answer it (no reflection loops).
    if query[2] & 0x80 != 0 {
        return none;
    }
    let msg = match Message::from_vec(query) {
        Ok(m) => m,
        Err(_) => return error(id, OpCode::Query, ResponseCode::FormErr),
    };
    if msg.metadata.message_type != MessageType::Query {
        return none;
    }
    if msg.metadata.op_code != OpCode::Query {
        return error(id, msg.metadata.op_code, ResponseCode::NotImp);
    }
    let [q] = msg.queries.as_slice() else {
        return error(id, OpCode::Query, ResponseCode::FormErr);
    };
    let mut resp = Message::response(id, OpCode::Query);
    resp.metadata.recursion_desired = msg.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.add_query(q.clone());
    if msg.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        resp.set_edns(edns);
    }
    if q.query_class() != DNSClass::IN {
        resp.metadata.response_code = ResponseCode::Refused;
        return finish(resp, None);
    }
    let qtype = q.query_type();
    let qname = q.name();
    let Some(name) = host_name(qname) else {
        let event = DnsEvent {
            name: escaped(qname),
            qtype: qtype.to_string(),
            decision: Decision {
                outcome: Outcome::Deny,
                rule: "invalid host name".into(),
            },
        };
        resp.metadata.response_code = ResponseCode::NXDomain;
        return finish(resp, Some(event));
    };

    if name == "localhost" {
        match qtype {
            RecordType::A | RecordType::ANY => {
                resp.add_answer(Record::from_rdata(
                    qname.clone(),
                    TTL,
                    RData::A(A(Ipv4Addr::LOCALHOST)),
                ));
            }
            RecordType::AAAA => {
                resp.add_answer(Record::from_rdata(
                    qname.clone(),
                    TTL,
                    RData::AAAA(AAAA(Ipv6Addr::LOCALHOST)),
                ));
            }
            _ => {}
        }
        return finish(resp, None);
    }

    if qtype == RecordType::PTR
        && let Some(ip) = reverse_v4(&name)
        && FakePool::in_range(IpAddr::V4(ip))
    {
        match pool
            .lookup(IpAddr::V4(ip))
            .and_then(|n| Name::from_ascii(format!("{n}.")).ok())
        {
            Some(target) => {
                resp.add_answer(Record::from_rdata(
                    qname.clone(),
                    TTL,
                    RData::PTR(PTR(target)),
                ));
            }
            None => resp.metadata.response_code = ResponseCode::NXDomain,
        }
        return finish(resp, None);
    }

    let decision = rules.decide_name(&name);
    let event = decision.outcome.violation().then(|| DnsEvent {
        name: name.clone(),
        qtype: qtype.to_string(),
        decision: decision.clone(),
    });
    if !decision.outcome.allows() {
        resp.metadata.response_code = ResponseCode::NXDomain;
        return finish(resp, event);
    }
    if matches!(qtype, RecordType::A | RecordType::ANY) {
        match pool.assign(&name) {
            Some(ip) => {
                resp.add_answer(Record::from_rdata(qname.clone(), TTL, RData::A(A(ip))));
            }
            None => {
                resp.metadata.response_code = ResponseCode::ServFail;
                let event = DnsEvent {
                    name,
                    qtype: qtype.to_string(),
                    decision: Decision {
                        outcome: Outcome::Deny,
                        rule: "limits.max_dns_names (fake address pool full)".into(),
                    },
                };
                return finish(resp, Some(event));
            }
        }
    }
    // Every other type (AAAA, HTTPS/SVCB, MX, TXT…): the name exists, no data. Clients fall back
    // to A, and nothing about the real zone is revealed or fetched.
    finish(resp, event)
}

fn finish(resp: Message, event: Option<DnsEvent>) -> Answer {
    Answer {
        response: resp.to_vec().ok(),
        event,
    }
}

fn error(id: u16, op: OpCode, code: ResponseCode) -> Answer {
    finish(Message::error_msg(id, op, code), None)
}

/// The question as a normalized host name, if every label is LDH (or `_`) ASCII.
fn host_name(name: &Name) -> Option<String> {
    let mut s = String::with_capacity(name.len());
    for label in name.iter() {
        if !label
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        {
            return None;
        }
        if !s.is_empty() {
            s.push('.');
        }
        s.push_str(std::str::from_utf8(label).ok()?);
    }
    if s.is_empty() {
        return None;
    }
    if s.ends_with(".in-addr.arpa") || s.ends_with(".ip6.arpa") {
        // Reverse names end in digits/hex labels that `normalize_name` would refuse.
        return Some(s.to_ascii_lowercase());
    }
    crate::policy::egress_config::normalize_name(&s).ok()
}

/// A printable form of a refused name for the audit record (bounded by the 255-byte wire limit).
fn escaped(name: &Name) -> String {
    let mut s = String::new();
    for (i, label) in name.iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        for b in label {
            if b.is_ascii_graphic() && *b != b'\\' && *b != b'.' {
                s.push(b.to_ascii_lowercase() as char);
            } else {
                s.push_str(&format!("\\{b:03}"));
            }
        }
    }
    s
}

/// `d.c.b.a.in-addr.arpa` → `a.b.c.d`.
fn reverse_v4(name: &str) -> Option<Ipv4Addr> {
    let head = name.strip_suffix(".in-addr.arpa")?;
    let mut octets = [0u8; 4];
    let parts: Vec<&str> = head.split('.').collect();
    if parts.len() != 4 {
        return None;
    }
    for (i, p) in parts.iter().rev().enumerate() {
        if p.len() > 1 && p.starts_with('0') {
            return None;
        }
        octets[i] = p.parse().ok()?;
    }
    Some(Ipv4Addr::from(octets))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::egress_config::{EgressConfig, EgressMode};
    use hickory_proto::op::Query;

    fn rules(mode: EgressMode, allowed: &[&str]) -> Rules {
        Rules::compile(&EgressConfig {
            mode: Some(mode),
            allowed_hosts: allowed.iter().map(|s| s.to_string()).collect(),
            denied_hosts: vec!["bad.example.com".into()],
            ..Default::default()
        })
        .unwrap()
    }

    fn query(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    fn ask(r: &Rules, p: &FakePool, name: &str, t: RecordType) -> (Message, Option<DnsEvent>) {
        let a = answer(&query(name, t), r, p);
        (Message::from_vec(&a.response.unwrap()).unwrap(), a.event)
    }

    fn a_records(m: &Message) -> Vec<Ipv4Addr> {
        m.answers
            .iter()
            .filter_map(|r| match r.data {
                RData::A(A(ip)) => Some(ip),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn allowed_names_get_stable_fake_addresses() {
        let r = rules(EgressMode::Block, &["api.example.com", "*.cdn.example.com"]);
        let p = FakePool::new(100);
        let (m, ev) = ask(&r, &p, "API.example.com.", RecordType::A);
        assert_eq!(m.metadata.id, 0x1234);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.recursion_available);
        let ip = a_records(&m);
        assert_eq!(ip.len(), 1);
        assert!(FakePool::in_range(IpAddr::V4(ip[0])));
        assert_eq!(ev, None);
        let (again, _) = ask(&r, &p, "api.example.com.", RecordType::A);
        assert_eq!(a_records(&again), ip);
        let (other, _) = ask(&r, &p, "x.cdn.example.com.", RecordType::A);
        assert_ne!(a_records(&other), ip);
        let (aaaa, _) = ask(&r, &p, "api.example.com.", RecordType::AAAA);
        assert_eq!(aaaa.metadata.response_code, ResponseCode::NoError);
        assert!(aaaa.answers.is_empty());
        // PTR of a fake address names it.
        let rev = format!(
            "{}.{}.18.198.in-addr.arpa.",
            ip[0].octets()[3],
            ip[0].octets()[2]
        );
        let (ptr, _) = ask(&r, &p, &rev, RecordType::PTR);
        assert!(
            matches!(&ptr.answers[0].data, RData::PTR(PTR(n)) if n.to_ascii() == "api.example.com.")
        );
    }

    #[test]
    fn unlisted_and_denied_names_get_nxdomain_and_an_event() {
        let r = rules(EgressMode::Block, &["api.example.com", "*.example.com"]);
        let p = FakePool::new(100);
        for (name, rule) in [
            ("x.api.example.co.", "mode=block (not in allowed_hosts)"),
            ("example.com.", "mode=block (not in allowed_hosts)"),
            ("bad.example.com.", "denied_hosts[0]=bad.example.com"),
            (
                "s3cr3t-data.attacker.net.",
                "mode=block (not in allowed_hosts)",
            ),
        ] {
            let (m, ev) = ask(&r, &p, name, RecordType::A);
            assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{name}");
            assert!(m.answers.is_empty());
            let ev = ev.unwrap();
            assert_eq!(ev.decision.rule, rule);
            assert_eq!(ev.qtype, "A");
        }
        assert!(p.is_empty());
        let (m, ev) = ask(&r, &p, "sub.api.example.com.", RecordType::TXT);
        // Covered by *.example.com: exists, but no TXT data is invented or fetched.
        assert_eq!(
            (m.metadata.response_code, m.answers.len(), ev),
            (ResponseCode::NoError, 0, None)
        );
    }

    #[test]
    fn monitor_answers_but_reports() {
        let r = rules(EgressMode::Monitor, &["a.com"]);
        let p = FakePool::new(100);
        let (m, ev) = ask(&r, &p, "other.com.", RecordType::A);
        assert_eq!(a_records(&m).len(), 1);
        assert_eq!(ev.unwrap().decision.outcome, Outcome::AllowMonitor);
    }

    #[test]
    fn pool_exhaustion_is_servfail_not_reuse() {
        let r = rules(EgressMode::Allow, &[]);
        let p = FakePool::new(1);
        assert_eq!(a_records(&ask(&r, &p, "a.com.", RecordType::A).0).len(), 1);
        let (m, ev) = ask(&r, &p, "b.com.", RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        assert!(ev.unwrap().decision.rule.contains("max_dns_names"));
    }

    #[test]
    fn localhost_and_odd_queries() {
        let r = rules(EgressMode::Block, &[]);
        let p = FakePool::new(1);
        let (m, ev) = ask(&r, &p, "localhost.", RecordType::A);
        assert_eq!(a_records(&m), vec![Ipv4Addr::LOCALHOST]);
        assert_eq!(ev, None);
        // Non-LDH label bytes: NXDOMAIN, reported escaped.
        let mut weird = Message::new(7, MessageType::Query, OpCode::Query);
        weird.add_query(Query::query(
            Name::from_labels(vec![b"a b\x01".to_vec(), b"com".to_vec()]).unwrap(),
            RecordType::A,
        ));
        let a = answer(&weird.to_vec().unwrap(), &r, &p);
        let ev = a.event.unwrap();
        assert_eq!(ev.name, "a\\032b\\001.com");
        // Garbage after a valid header: FORMERR with the id echoed.
        let a = answer(&[0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xff], &r, &p);
        let m = Message::from_vec(&a.response.unwrap()).unwrap();
        assert_eq!(
            (m.metadata.id, m.metadata.response_code),
            (0xabcd, ResponseCode::FormErr)
        );
        // Too short, or a response: silence.
        assert_eq!(answer(&[1, 2, 3], &r, &p).response, None);
        let mut resp = query("a.com.", RecordType::A);
        resp[2] |= 0x80;
        assert_eq!(answer(&resp, &r, &p).response, None);
        // Two questions: FORMERR.
        let mut two = Message::new(9, MessageType::Query, OpCode::Query);
        two.add_query(Query::query(
            Name::from_ascii("a.com.").unwrap(),
            RecordType::A,
        ));
        two.add_query(Query::query(
            Name::from_ascii("b.com.").unwrap(),
            RecordType::A,
        ));
        let m =
            Message::from_vec(&answer(&two.to_vec().unwrap(), &r, &p).response.unwrap()).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    }

    #[test]
    fn reverse_names() {
        assert_eq!(
            reverse_v4("4.3.2.1.in-addr.arpa"),
            Some(Ipv4Addr::new(1, 2, 3, 4))
        );
        assert_eq!(reverse_v4("04.3.2.1.in-addr.arpa"), None);
        assert_eq!(reverse_v4("3.2.1.in-addr.arpa"), None);
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_never_answers_a_response(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let r = rules(EgressMode::Block, &["a.com"]);
            let p = FakePool::new(4);
            let a = answer(&bytes, &r, &p);
            if let Some(resp) = a.response {
                proptest::prop_assert!(resp.len() >= 12);
                proptest::prop_assert_eq!(&resp[..2], &bytes[..2]);
            }
        }
    }
}
