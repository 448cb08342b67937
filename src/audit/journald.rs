//! journald sink: each audit [`Record`] becomes one structured journal entry sent over the
//! native protocol (`/run/systemd/journal/socket`), with documented `AIP_*` fields, a fixed
//! `MESSAGE_ID` per event class, a `PRIORITY` mapped from the record's severity and a readable
//! `MESSAGE`, so `journalctl AIP_DECISION=BLOCK` and `journalctl MESSAGE_ID=…` select records.
//!
//! Why `libsystemd`'s `journal_send` and not `tracing-journald`: records carry dynamic keys
//! (every top-level key becomes an `AIP_*` field, egress and sandbox records add their own), a
//! tracing event's field names are fixed at compile time, tracing filters could drop an audit
//! record, and tracing-journald discards send errors. `journal_send` takes arbitrary fields per
//! call and returns the send error, which this sink reports so the caller blocks the call it was
//! auditing. Oversized entries go through a sealed memfd inside `journal_send`.
//!
//! Must not: decide, drop, sample or rate-limit records (journald's own rate limiter is turned
//! off for the unit with `LogRateLimitIntervalSec=0`).

use std::os::unix::net::UnixDatagram;

use serde_json::Value;

use super::{AuditError, Record, Sink};

/// The journal's native-protocol socket.
pub const SOCKET: &str = "/run/systemd/journal/socket";

/// Longest `MESSAGE` (the full record is in `AIP_RECORD`).
const MAX_MESSAGE_CHARS: usize = 1024;

/// Event classes, each with a fixed 128-bit `MESSAGE_ID` (documented in docs/daemon.md; never
/// change a published id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventClass {
    /// A policy decision on a request (`decision` set, no `event`).
    Decision,
    /// `DLP_TRIGGERED`, `DLP_REQUEST_REDACTION`.
    Dlp,
    /// `EGRESS_*` (connections, DNS answers, suppressed repeats).
    Egress,
    /// `SESSION_START` (the sandbox is up, with its layer report) and `SESSION_FAILED`.
    SandboxStart,
    /// `SESSION_END` (the sandbox exited).
    SandboxExit,
    /// `APPROVAL` (the proxy's outcome) and `APPROVAL_ANSWER` (who answered, from aipd).
    Approval,
    /// `CONFIG_RELOAD` (aipd read its configuration: at start, on SIGHUP, on `aip reload`).
    ConfigReload,
    /// `SESSION_REFUSED` (aipd refused a connection: unknown server, user not allowed, limits).
    SessionRefused,
    /// Identity: `TOKEN_*`, `REVOCATION`, `POLICY_SIGNATURE_INVALID`.
    Identity,
    /// Tool integrity: `TOOL_DEFINITION_CHANGED`, `TOOLS_HIDDEN`.
    ToolIntegrity,
    /// Protocol hygiene: `MESSAGE_DROPPED`, `SERVER_MESSAGE_REJECTED`.
    Protocol,
    /// aipd itself: `DAEMON_START`, `DAEMON_STOP`.
    Daemon,
    /// Anything else.
    Other,
}

impl EventClass {
    pub const ALL: [EventClass; 13] = [
        EventClass::Decision,
        EventClass::Dlp,
        EventClass::Egress,
        EventClass::SandboxStart,
        EventClass::SandboxExit,
        EventClass::Approval,
        EventClass::ConfigReload,
        EventClass::SessionRefused,
        EventClass::Identity,
        EventClass::ToolIntegrity,
        EventClass::Protocol,
        EventClass::Daemon,
        EventClass::Other,
    ];

    /// The class of a record, from its `event` (or `decision`) field.
    pub fn of(record: &Record) -> Self {
        match record.get_str("event") {
            None if record.get("decision").is_some() => EventClass::Decision,
            None => EventClass::Other,
            Some(e) => match e {
                "DLP_TRIGGERED" | "DLP_REQUEST_REDACTION" => EventClass::Dlp,
                e if e.starts_with("EGRESS_") => EventClass::Egress,
                "SESSION_START" | "SESSION_FAILED" => EventClass::SandboxStart,
                "SESSION_END" => EventClass::SandboxExit,
                "APPROVAL" | "APPROVAL_ANSWER" => EventClass::Approval,
                "CONFIG_RELOAD" => EventClass::ConfigReload,
                "SESSION_REFUSED" => EventClass::SessionRefused,
                e if e.starts_with("TOKEN_") => EventClass::Identity,
                "REVOCATION" | "POLICY_SIGNATURE_INVALID" => EventClass::Identity,
                "TOOL_DEFINITION_CHANGED" | "TOOLS_HIDDEN" => EventClass::ToolIntegrity,
                "MESSAGE_DROPPED" | "SERVER_MESSAGE_REJECTED" => EventClass::Protocol,
                "DAEMON_START" | "DAEMON_STOP" => EventClass::Daemon,
                _ => EventClass::Other,
            },
        }
    }

    /// The fixed `MESSAGE_ID` (32 lowercase hex digits, as journald prints it).
    pub fn message_id(self) -> &'static str {
        match self {
            EventClass::Decision => "568e5344e6074bcbb2a6e06e4ece33eb",
            EventClass::Dlp => "09e4df0b0f2c45b68cc2ecf43ecb3471",
            EventClass::Egress => "db2f0ce191e84099a0e46bf34fa8e13e",
            EventClass::SandboxStart => "c20326f5e5dc4ae18ecac8c8cbb2ff42",
            EventClass::SandboxExit => "f5eda928239a48339ddcc01be458f955",
            EventClass::Approval => "6b1f708d15d743b28d0623ad3749139e",
            EventClass::ConfigReload => "e9e60e7e9d654b3cb3820ee4f1696366",
            EventClass::SessionRefused => "11feae5ad4cf46919265ff65a5000bdd",
            EventClass::Identity => "4bc9ef186d4547559d9ee4fa9a9181e3",
            EventClass::ToolIntegrity => "5745b4cd45534cd2ad3639dbef00aefb",
            EventClass::Protocol => "dd741609ad9b4f7a9290981b0cfca6bc",
            EventClass::Daemon => "db8adaa16da54c54861b0c3c01a7b4a4",
            EventClass::Other => "62f4158b5b6a4b92afbf607c4e75038f",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            EventClass::Decision => "decision",
            EventClass::Dlp => "dlp",
            EventClass::Egress => "egress",
            EventClass::SandboxStart => "sandbox-start",
            EventClass::SandboxExit => "sandbox-exit",
            EventClass::Approval => "approval",
            EventClass::ConfigReload => "config-reload",
            EventClass::SessionRefused => "session-refused",
            EventClass::Identity => "identity",
            EventClass::ToolIntegrity => "tool-integrity",
            EventClass::Protocol => "protocol",
            EventClass::Daemon => "daemon",
            EventClass::Other => "other",
        }
    }
}

/// syslog priorities used (`PRIORITY=` values).
pub mod priority {
    pub const ERR: u8 = 3;
    pub const WARNING: u8 = 4;
    pub const NOTICE: u8 = 5;
    pub const INFO: u8 = 6;
}

/// The severity of a record as a syslog priority: refusals and violations are warnings, failures
/// of the machinery are errors, human-relevant outcomes are notices, routine events are info.
pub fn priority_of(record: &Record, class: EventClass) -> u8 {
    use priority::*;
    let s = |k: &str| record.get_str(k).unwrap_or("");
    let truthy = |k: &str| record.get_bool(k).unwrap_or(false);
    match class {
        EventClass::Decision => match s("decision") {
            "ALLOW" => INFO,
            "ASK" | "ALLOW_MONITOR" => NOTICE,
            _ => WARNING,
        },
        EventClass::Dlp => {
            if record.get_bool("forwarded") == Some(false) {
                WARNING
            } else {
                NOTICE
            }
        }
        EventClass::Egress => match s("decision") {
            "ALLOW" | "" => INFO,
            _ => WARNING,
        },
        EventClass::SandboxStart => {
            if s("event") == "SESSION_FAILED" {
                ERR
            } else {
                INFO
            }
        }
        EventClass::SandboxExit => {
            if record
                .get("exit")
                .is_some_and(|e| e.get("signal").is_some())
            {
                NOTICE
            } else {
                INFO
            }
        }
        EventClass::Approval => NOTICE,
        EventClass::ConfigReload => match s("status") {
            "ok" => NOTICE,
            "partial" => WARNING,
            _ => ERR,
        },
        EventClass::SessionRefused => WARNING,
        EventClass::Identity => match s("event") {
            "POLICY_SIGNATURE_INVALID" => ERR,
            "REVOCATION" => NOTICE,
            _ if truthy("violation") => WARNING,
            e if e.contains("FAILED") || e.contains("INVALID") => WARNING,
            _ => INFO,
        },
        EventClass::ToolIntegrity => {
            if s("event") == "TOOL_DEFINITION_CHANGED" {
                WARNING
            } else {
                INFO
            }
        }
        EventClass::Protocol => WARNING,
        EventClass::Daemon => NOTICE,
        EventClass::Other => {
            if truthy("violation") {
                WARNING
            } else {
                INFO
            }
        }
    }
}

/// One journal entry, before encoding.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub priority: u8,
    pub message: String,
    /// Every other field (`MESSAGE_ID`, `SYSLOG_IDENTIFIER`, `AIP_*`), in record order.
    pub fields: Vec<(String, String)>,
}

impl Entry {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The journal field name of a record key: `AIP_` + the key upper-cased, every character
/// journald does not accept replaced by `_`, at most 64 bytes. `session_id` is `AIP_SESSION`.
pub fn field_name(key: &str) -> String {
    if key == "session_id" {
        return "AIP_SESSION".into();
    }
    let mut name = String::with_capacity(4 + key.len());
    name.push_str("AIP_");
    for c in key.chars() {
        let c = c.to_ascii_uppercase();
        name.push(if c.is_ascii_uppercase() || c.is_ascii_digit() {
            c
        } else {
            '_'
        });
        if name.len() >= 64 {
            break;
        }
    }
    name
}

fn field_value(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Array(_) | Value::Object(_) => Some(v.to_string()),
    }
}

/// Builds the journal entry of `record`.
pub fn entry(record: &Record, identifier: &str) -> Entry {
    let class = EventClass::of(record);
    let mut fields = Vec::with_capacity(24);
    fields.push(("MESSAGE_ID".to_string(), class.message_id().to_string()));
    fields.push(("SYSLOG_IDENTIFIER".to_string(), identifier.to_string()));
    fields.push(("AIP_CLASS".to_string(), class.name().to_string()));
    for (k, v) in record.fields_as_text() {
        if let Some(text) = v {
            fields.push((field_name(k), text.into_owned()));
        }
    }
    fields.push(("AIP_RECORD".to_string(), record.to_json()));
    Entry {
        priority: priority_of(record, class),
        message: message(record, class),
        fields,
    }
}

/// A one-line human summary: what happened, to what, why, and in which session.
pub fn message(record: &Record, class: EventClass) -> String {
    let s = |k: &str| record.get_str(k);
    let mut out = String::with_capacity(160);
    match class {
        EventClass::Decision => {
            out.push_str(s("decision").unwrap_or("?"));
            if let Some(m) = s("method") {
                out.push(' ');
                out.push_str(m);
            }
            if let Some(t) = s("tool") {
                out.push(' ');
                out.push_str(t);
            }
            if let Some(r) = s("reason") {
                out.push_str(": ");
                out.push_str(r);
            }
        }
        _ => {
            out.push_str(s("event").unwrap_or("AUDIT"));
            for key in [
                "server", "tool", "approval", "answer", "dlp_rule", "host", "status", "pid",
                "exit", "reason", "error",
            ] {
                if let Some(v) = record.get(key).as_ref().and_then(field_value) {
                    out.push(' ');
                    out.push_str(key);
                    out.push('=');
                    out.push_str(&v);
                }
            }
        }
    }
    let mut ctx = Vec::new();
    if class == EventClass::Decision
        && let Some(server) = s("server")
    {
        ctx.push(format!("server {server}"));
    }
    if let Some(uid) = record.get("uid").as_ref().and_then(field_value) {
        ctx.push(format!("uid {uid}"));
    }
    if let Some(session) = s("session_id") {
        ctx.push(format!("session {}", session.get(..8).unwrap_or(session)));
    }
    if !ctx.is_empty() {
        out.push_str(" (");
        out.push_str(&ctx.join(", "));
        out.push(')');
    }
    if let Some((cut, _)) = out.char_indices().nth(MAX_MESSAGE_CHARS) {
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// Audit records as journal entries.
pub struct JournaldSink {
    identifier: String,
}

impl JournaldSink {
    /// Checks that journald listens on its socket; `identifier` becomes `SYSLOG_IDENTIFIER`.
    pub fn connect(identifier: &str) -> Result<Self, AuditError> {
        let probe = UnixDatagram::unbound().and_then(|s| s.connect(SOCKET));
        probe.map_err(|source| AuditError::Write {
            target: format!("journald ({SOCKET})"),
            source,
        })?;
        Ok(JournaldSink {
            identifier: identifier.to_owned(),
        })
    }

    /// Whether journald's socket accepts datagrams here.
    pub fn available() -> bool {
        UnixDatagram::unbound()
            .and_then(|s| s.connect(SOCKET))
            .is_ok()
    }
}

fn level(p: u8) -> libsystemd::logging::Priority {
    use libsystemd::logging::Priority as P;
    match p {
        0 => P::Emergency,
        1 => P::Alert,
        2 => P::Critical,
        3 => P::Error,
        4 => P::Warning,
        5 => P::Notice,
        6 => P::Info,
        _ => P::Debug,
    }
}

impl Sink for JournaldSink {
    fn write(&self, record: &Record) -> Result<(), AuditError> {
        let e = entry(record, &self.identifier);
        libsystemd::logging::journal_send(
            level(e.priority),
            &e.message,
            e.fields.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )
        .map_err(|err| AuditError::Write {
            target: "journald".into(),
            source: std::io::Error::other(err.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// journald's rule (journal_field_valid): `[A-Z0-9_]`, not starting with `_` or a digit,
    /// at most 64 bytes. Fields that break it would be dropped by the sender.
    fn valid(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= 64
            && !name.starts_with('_')
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    }

    fn block() -> Record {
        Record::now()
            .with("session_id", "0123456789abcdef")
            .with("direction", "upstream")
            .with("request_id", 7)
            .with("method", "tools/call")
            .with("tool", "write_file")
            .with("args", json!({"path": "/etc/passwd"}))
            .with("decision", "BLOCK")
            .with("policy_mode", "enforce")
            .with("violation", true)
            .with("failed_rule", "tool_rules[0]")
            .with("error_code", -32001)
            .with("reason", "tool is blocked")
            .with("server", "filesystem")
            .with("uid", 1001)
            .with("policy", "filesystem-readonly")
    }

    #[test]
    fn documented_fields_of_a_block_decision() {
        let e = entry(&block(), "aipd");
        assert_eq!(e.priority, priority::WARNING);
        assert_eq!(
            e.field("MESSAGE_ID"),
            Some(EventClass::Decision.message_id())
        );
        assert_eq!(e.field("SYSLOG_IDENTIFIER"), Some("aipd"));
        assert_eq!(e.field("AIP_DECISION"), Some("BLOCK"));
        assert_eq!(e.field("AIP_TOOL"), Some("write_file"));
        assert_eq!(e.field("AIP_METHOD"), Some("tools/call"));
        assert_eq!(e.field("AIP_SERVER"), Some("filesystem"));
        assert_eq!(e.field("AIP_SESSION"), Some("0123456789abcdef"));
        assert_eq!(e.field("AIP_UID"), Some("1001"));
        assert_eq!(e.field("AIP_POLICY"), Some("filesystem-readonly"));
        assert_eq!(e.field("AIP_VIOLATION"), Some("true"));
        assert_eq!(e.field("AIP_ERROR_CODE"), Some("-32001"));
        assert_eq!(e.field("AIP_ARGS"), Some(r#"{"path":"/etc/passwd"}"#));
        let full: Value = serde_json::from_str(e.field("AIP_RECORD").unwrap()).unwrap();
        assert_eq!(full["decision"], "BLOCK");
        assert_eq!(
            e.message,
            "BLOCK tools/call write_file: tool is blocked (server filesystem, uid 1001, session 01234567)"
        );
        assert!(e.fields.iter().all(|(k, _)| valid(k)), "{:?}", e.fields);
    }

    #[test]
    fn every_field_name_is_valid_for_journald() {
        for key in [
            "a",
            "dlp-rule",
            "x.y",
            "é",
            "session_id",
            "9lives",
            &"k".repeat(100),
        ] {
            let name = field_name(key);
            assert!(valid(&name), "{key} -> {name}");
        }
        assert_eq!(field_name("dlp-rule"), "AIP_DLP_RULE");
    }

    #[test]
    fn classes_priorities_and_distinct_ids() {
        let cases = [
            (
                Record::event("SESSION_START").with("pid", 5),
                EventClass::SandboxStart,
                priority::INFO,
            ),
            (
                Record::event("SESSION_FAILED"),
                EventClass::SandboxStart,
                priority::ERR,
            ),
            (
                Record::event("SESSION_END").with("exit", json!({"signal": 9})),
                EventClass::SandboxExit,
                priority::NOTICE,
            ),
            (
                Record::event("DLP_TRIGGERED"),
                EventClass::Dlp,
                priority::NOTICE,
            ),
            (
                Record::event("DLP_REQUEST_REDACTION").with("forwarded", false),
                EventClass::Dlp,
                priority::WARNING,
            ),
            (
                Record::event("EGRESS_CONNECTION").with("decision", "BLOCK"),
                EventClass::Egress,
                priority::WARNING,
            ),
            (
                Record::event("APPROVAL"),
                EventClass::Approval,
                priority::NOTICE,
            ),
            (
                Record::event("CONFIG_RELOAD").with("status", "failed"),
                EventClass::ConfigReload,
                priority::ERR,
            ),
            (
                Record::event("SESSION_REFUSED"),
                EventClass::SessionRefused,
                priority::WARNING,
            ),
            (
                Record::event("POLICY_SIGNATURE_INVALID"),
                EventClass::Identity,
                priority::ERR,
            ),
            (
                Record::now().with("decision", "ALLOW"),
                EventClass::Decision,
                priority::INFO,
            ),
            (
                Record::event("SOMETHING_NEW"),
                EventClass::Other,
                priority::INFO,
            ),
        ];
        for (r, class, prio) in cases {
            assert_eq!(EventClass::of(&r), class, "{}", r.to_json());
            assert_eq!(priority_of(&r, class), prio, "{}", r.to_json());
        }
        let mut ids: Vec<&str> = EventClass::ALL.iter().map(|c| c.message_id()).collect();
        assert!(
            ids.iter()
                .all(|i| i.len() == 32 && i.bytes().all(|b| b.is_ascii_hexdigit()))
        );
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), EventClass::ALL.len());
    }

    #[test]
    fn event_messages_name_the_essentials_and_are_bounded() {
        let r = Record::event("SESSION_REFUSED")
            .with("server", "fs")
            .with("uid", 1002)
            .with("reason", "user not allowed");
        let e = entry(&r, "aipd");
        assert_eq!(
            e.message,
            "SESSION_REFUSED server=fs reason=user not allowed (uid 1002)"
        );
        let long = Record::event("X").with("reason", "r".repeat(5000));
        assert!(message(&long, EventClass::Other).chars().count() <= MAX_MESSAGE_CHARS + 1);
        // Nulls are left out rather than written as "null".
        let n = entry(&Record::event("X").with("request_id", Value::Null), "aipd");
        assert_eq!(n.field("AIP_REQUEST_ID"), None);
    }
}
