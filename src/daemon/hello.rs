//! The client ↔ aipd hello: one JSON line each way before the byte stream becomes plain
//! newline-delimited JSON-RPC (documented in docs/daemon.md).
//!
//! ```text
//! client → aipd   {"aip":"hello","version":1,"server":"filesystem"}
//! aipd → client   {"aip":"welcome","version":1,"server":"filesystem","session":"<uuid>"}
//!            or   {"aip":"refused","version":1,"code":-32001,"reason":"not_allowed","message":"…"}
//! ```
//!
//! The hello is bounded (`limits.hello_max_bytes`, `limits.hello_timeout`), parsed strictly
//! (unknown or duplicate keys are refused), and nothing is spawned before the welcome. After a
//! refusal the shim answers the MCP client's requests with the refusal as a JSON-RPC error
//! ([`answer_with_error`]), so the client shows why.
//!
//! Must not: authorize (the session handler does) or know about servers.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::jsonrpc::{self, ErrorReply, Frame, Kind, LineReader, Origin};

/// The hello version this build speaks.
pub const VERSION: u32 = 1;

/// What the client sends first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// Always `"hello"`.
    pub aip: String,
    pub version: u32,
    /// The server definition's `name`.
    pub server: String,
    /// The shim and its version, for logs (`aip-connect/0.1.0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
}

impl Hello {
    pub fn new(server: &str) -> Self {
        Hello {
            aip: "hello".into(),
            version: VERSION,
            server: server.into(),
            client: Some(concat!("aip-connect/", env!("CARGO_PKG_VERSION")).into()),
        }
    }
}

/// Why a connection was refused (`reason` of the refusal; also in the audit record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The hello was malformed, too large, too slow or of another version.
    BadHello,
    /// No such server, or the user may not use it (one answer for both: the names of servers a
    /// user may not use are not revealed).
    NotAllowed,
    /// A session limit is reached (daemon, per user, per server, or no free session uid).
    Busy,
    /// aipd is stopping.
    ShuttingDown,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::BadHello => "bad_hello",
            Reason::NotAllowed => "not_allowed",
            Reason::Busy => "busy",
            Reason::ShuttingDown => "shutting_down",
        }
    }

    /// The JSON-RPC error code the MCP client sees.
    pub fn code(self) -> i64 {
        match self {
            Reason::NotAllowed => jsonrpc::codes::FORBIDDEN,
            Reason::BadHello => jsonrpc::codes::INVALID_REQUEST,
            Reason::Busy | Reason::ShuttingDown => jsonrpc::codes::INTERNAL_ERROR,
        }
    }
}

/// aipd's answer to a hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "aip", rename_all = "snake_case")]
pub enum Reply {
    Welcome {
        version: u32,
        server: String,
        session: String,
    },
    Refused {
        version: u32,
        code: i64,
        reason: Reason,
        message: String,
    },
}

impl Reply {
    pub fn refused(reason: Reason, message: impl Into<String>) -> Self {
        Reply::Refused {
            version: VERSION,
            code: reason.code(),
            reason,
            message: message.into(),
        }
    }

    /// The reply as one line.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).unwrap_or_default();
        line.push(b'\n');
        line
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HelloError {
    #[error("the connection closed before a complete hello line")]
    Eof,
    #[error("no hello within the time limit")]
    Timeout,
    #[error("the hello line is longer than {0} bytes")]
    TooLong(usize),
    #[error("the hello is not valid: {0}")]
    Invalid(String),
    #[error(transparent)]
    Io(io::Error),
}

/// Reads one line of at most `max` bytes (newline included). Returns the line without its
/// newline and whatever was read after it (the start of the JSON-RPC stream).
pub fn read_line(r: &mut impl Read, max: usize) -> Result<(Vec<u8>, Vec<u8>), HelloError> {
    let mut buf = Vec::with_capacity(256.min(max));
    let mut chunk = [0u8; 512];
    loop {
        let want = chunk.len().min(max + 1 - buf.len().min(max));
        let n = match r.read(&mut chunk[..want.max(1)]) {
            Ok(0) => return Err(HelloError::Eof),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(HelloError::Timeout);
            }
            Err(e) => return Err(HelloError::Io(e)),
        };
        let start = buf.len();
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = memchr::memchr(b'\n', &buf[start..]) {
            let end = start + i;
            if end + 1 > max {
                return Err(HelloError::TooLong(max));
            }
            let rest = buf.split_off(end + 1);
            buf.pop();
            return Ok((buf, rest));
        }
        if buf.len() >= max {
            return Err(HelloError::TooLong(max));
        }
    }
}

/// Parses a hello line strictly (the JSON-RPC parser's rules: no duplicate or case-variant
/// keys), checking the tag and version.
pub fn parse_hello(line: &[u8]) -> Result<Hello, HelloError> {
    let value = jsonrpc::parse_value(line).map_err(|e| HelloError::Invalid(e.to_string()))?;
    let hello: Hello =
        serde_json::from_value(value).map_err(|e| HelloError::Invalid(e.to_string()))?;
    if hello.aip != "hello" {
        return Err(HelloError::Invalid(format!(
            "expected \"aip\":\"hello\", got {:?}",
            hello.aip
        )));
    }
    if hello.version != VERSION {
        return Err(HelloError::Invalid(format!(
            "hello version {} is not supported (aipd speaks {VERSION})",
            hello.version
        )));
    }
    Ok(hello)
}

/// Parses aipd's reply line (lenient about fields added by later versions).
pub fn parse_reply(line: &[u8]) -> Result<Reply, HelloError> {
    serde_json::from_slice(line).map_err(|e| HelloError::Invalid(e.to_string()))
}

/// Answers every JSON-RPC request read from `input` with the same error until `input` ends or
/// `max_requests` were answered (0: no limit); notifications and unparsable lines get nothing.
/// Returns the number of requests answered.
pub fn answer_with_error(
    input: impl Read,
    output: &mut impl Write,
    code: i64,
    message: &str,
    data: Option<Value>,
    max_line: usize,
    max_requests: usize,
) -> usize {
    let err = ErrorReply::new(code, message, data);
    let mut reader = LineReader::new(input, max_line);
    let mut answered = 0;
    while let Ok(Some(frame)) = reader.next_frame() {
        let Frame::Line(line) = frame else { continue };
        let id = jsonrpc::parse(line, Origin::Client)
            .ok()
            .filter(|m| m.kind == Kind::Request)
            .and_then(|m| m.id_text().map(str::to_owned));
        let Some(id) = id else { continue };
        if output
            .write_all(&err.to_line(Some(&id)))
            .and_then(|()| output.flush())
            .is_err()
        {
            break;
        }
        answered += 1;
        if max_requests != 0 && answered >= max_requests {
            break;
        }
    }
    answered
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trip_and_strictness() {
        let line = serde_json::to_vec(&Hello::new("fs")).unwrap();
        let h = parse_hello(&line).unwrap();
        assert_eq!(h.server, "fs");
        for bad in [
            r#"{"aip":"hello","version":1,"server":"a","server":"b"}"#,
            r#"{"aip":"hello","version":1,"server":"a","Server":"b"}"#,
            r#"{"aip":"hello","version":1,"server":"a","extra":1}"#,
            r#"{"aip":"hello","version":2,"server":"a"}"#,
            r#"{"aip":"welcome","version":1,"server":"a"}"#,
            r#"{"aip":"hello","version":1}"#,
            "not json",
        ] {
            assert!(parse_hello(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn read_line_keeps_what_follows_and_is_bounded() {
        let mut r = &b"{\"a\":1}\n{\"jsonrpc\":\"2.0\"}\n"[..];
        let (line, rest) = read_line(&mut r, 64).unwrap();
        assert_eq!(line, b"{\"a\":1}");
        assert_eq!(rest, b"{\"jsonrpc\":\"2.0\"}\n");
        let long = [b'x'; 100];
        assert!(matches!(
            read_line(&mut &long[..], 64),
            Err(HelloError::TooLong(64))
        ));
        let mut exact = vec![b'x'; 63];
        exact.push(b'\n');
        assert!(read_line(&mut &exact[..], 64).is_ok());
        let mut over = vec![b'x'; 64];
        over.push(b'\n');
        assert!(read_line(&mut &over[..], 64).is_err());
        assert!(matches!(
            read_line(&mut &b"abc"[..], 64),
            Err(HelloError::Eof)
        ));
    }

    #[test]
    fn replies_serialize_with_their_tag() {
        let w = Reply::Welcome {
            version: 1,
            server: "fs".into(),
            session: "s".into(),
        };
        let line = w.to_line();
        assert!(line.starts_with(br#"{"aip":"welcome""#));
        assert_eq!(parse_reply(&line[..line.len() - 1]).unwrap(), w);
        let r = Reply::refused(Reason::NotAllowed, "no");
        let v: Value = serde_json::from_slice(&r.to_line()).unwrap();
        assert_eq!(v["reason"], "not_allowed");
        assert_eq!(v["code"], -32001);
    }

    #[test]
    fn refusal_answers_requests_only() {
        let input = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\"}\n{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\ngarbage\n{\"jsonrpc\":\"2.0\",\"id\":\"x\",\"method\":\"tools/list\"}\n";
        let mut out = Vec::new();
        let n = answer_with_error(&input[..], &mut out, -32001, "refused", None, 4096, 0);
        assert_eq!(n, 2);
        let lines: Vec<Value> = out
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines[0]["id"], 1);
        assert_eq!(lines[1]["id"], "x");
        assert_eq!(lines[1]["error"]["code"], -32001);
        assert_eq!(lines[1]["error"]["message"], "refused");
        let mut out = Vec::new();
        assert_eq!(
            answer_with_error(&input[..], &mut out, -1, "m", None, 4096, 1),
            1
        );
    }
}
