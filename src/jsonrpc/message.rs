//! The one strict parse of a JSON-RPC line.
//!
//! `serde_json` does the JSON work; the visitors here add what a security proxy needs on top:
//! - duplicate object keys are rejected at every depth (serde_json's `Value` would silently keep
//!   the last one, while other readers keep the first: a classic smuggling vector);
//! - keys that are case variants of `jsonrpc id method params result error` (and, inside
//!   `params`, of `name arguments`) are rejected, because some readers (Go's `encoding/json`)
//!   match keys case-insensitively and even fold `ſ` to `s`;
//! - a raw carriage return anywhere but right before the newline is rejected, because readers
//!   with universal newlines (the MCP Python SDK's) end a line there and would read other
//!   messages out of it;
//! - batches (JSON arrays, removed from MCP in 2025-06-18) and non-objects are rejected;
//! - requests must carry a string or integer-valued number id (MCP forbids null ids).
//!
//! The `id` is kept as the exact JSON text the peer sent so replies echo it byte for byte.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Number, Value};

use super::codes;

/// What kind of JSON-RPC message a line holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request,
    Notification,
    Response,
    ErrorResponse,
}

/// A parsed message. Envelope fields are decoded; `params`, `result` and `error` are kept as
/// their exact text and decoded into a `serde_json::Value` only when someone needs to look
/// inside (decoding is strict). A client's params and every error object are validated
/// strictly (no duplicate keys at any depth) right away; a server's result and params are
/// validated when decoded, because nothing decides on them otherwise.
#[derive(Debug, Clone)]
pub struct Message {
    pub kind: Kind,
    /// The id exactly as sent (`123`, `"abc"`), absent for notifications.
    pub id: Option<Box<RawValue>>,
    pub method: Option<String>,
    pub params: Option<Part>,
    pub result: Option<Part>,
    pub error: Option<Part>,
    /// The server's line has top-level members besides the JSON-RPC ones (client lines may
    /// not): forwarded as they are, so whoever scans a message must know they exist.
    pub extra_members: bool,
}

impl Message {
    /// The id's JSON text, if any.
    pub fn id_text(&self) -> Option<&str> {
        self.id.as_deref().map(RawValue::get)
    }

    /// The decoded params, if they were decoded (see [`Part::decode`]).
    pub fn params_value(&self) -> Option<&Value> {
        self.params.as_ref().and_then(Part::decoded)
    }
}

/// One of `params`, `result`, `error`: the exact text, validated, and its decoded value once
/// decoded. Decoding parses the same validated text with the same strict grammar, so it can
/// only produce the value the validation saw.
#[derive(Debug, Clone)]
pub struct Part {
    /// The text as received; absent when the part was decoded during the envelope parse.
    raw: Option<Box<RawValue>>,
    value: Option<Value>,
}

impl Part {
    fn new(raw: Box<RawValue>) -> Self {
        Part {
            raw: Some(raw),
            value: None,
        }
    }

    fn decoded_from_start(value: Value) -> Self {
        Part {
            raw: None,
            value: Some(value),
        }
    }

    /// The text as received, unless the part was decoded while the envelope was parsed.
    pub fn raw(&self) -> Option<&str> {
        self.raw.as_deref().map(RawValue::get)
    }

    /// The value, if decoded.
    pub fn decoded(&self) -> Option<&Value> {
        self.value.as_ref()
    }

    /// Decodes (once) and returns the value for reading or changing.
    pub fn decode(&mut self) -> Result<&mut Value, ParseError> {
        if self.value.is_none() {
            let raw = self.raw().unwrap_or("null");
            self.value = Some(parse_value(raw.as_bytes())?);
        }
        // Set just above.
        self.value
            .as_mut()
            .ok_or_else(|| ParseError::invalid("decode failed"))
    }

    /// Replaces the value (the part is then serialized from it).
    pub fn set(&mut self, v: Value) {
        self.value = Some(v);
    }

    /// Appends the part's JSON: the decoded value if there is one (it may have been changed),
    /// else the original text.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match (&self.value, self.raw()) {
            (Some(v), _) => {
                let _ = serde_json::to_writer(&mut *out, v);
            }
            (None, Some(raw)) => out.extend_from_slice(raw.as_bytes()),
            (None, None) => out.extend_from_slice(b"null"),
        }
    }
}

/// Why a line was not accepted, with the JSON-RPC error code to reply with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub code: i64,
    pub reason: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.reason, self.code)
    }
}

impl std::error::Error for ParseError {}

impl ParseError {
    fn invalid(reason: impl Into<String>) -> Self {
        ParseError {
            code: codes::INVALID_REQUEST,
            reason: reason.into(),
        }
    }
}

const ENVELOPE_KEYS: [&str; 6] = ["jsonrpc", "id", "method", "params", "result", "error"];
const PARAMS_KEYS: [&str; 2] = ["name", "arguments"];

/// Marker our visitors put in front of semantic (non-syntax) errors so they map to -32600.
const STRICT: &str = "strict: ";

/// Which side sent the line; the client side is held to the stricter envelope rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Client,
    Server,
}

/// Parses one line (without its newline). Client lines may not carry unknown envelope keys;
/// server lines may (they are forwarded untouched), but never case variants of known ones.
pub fn parse(line: &[u8], origin: Origin) -> Result<Message, ParseError> {
    check_line_breaks(line)?;
    let first = line.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        Some(b'{') => {}
        Some(b'[') => {
            return Err(ParseError::invalid(
                "batch requests are not supported (removed from MCP in 2025-06-18)",
            ));
        }
        None => return Err(ParseError::invalid("empty message")),
        Some(_) => {
            // Either not JSON at all (-32700) or a JSON scalar (-32600); let serde_json tell.
            return match serde_json::from_slice::<de::IgnoredAny>(line) {
                Ok(_) => Err(ParseError::invalid("a JSON-RPC message must be an object")),
                Err(e) => Err(ParseError {
                    code: codes::PARSE_ERROR,
                    reason: format!("parse error: {e}"),
                }),
            };
        }
    }
    let mut de = serde_json::Deserializer::from_slice(line);
    let env = de
        .deserialize_map(EnvelopeVisitor { origin })
        .and_then(|env| de.end().map(|()| env))
        .map_err(classify)?;
    env.into_message(origin)
}

/// Refuses a carriage return anywhere but right before the newline.
///
/// To JSON a CR between tokens is whitespace, so a line can hold one message for us and several
/// for a peer whose line reader also ends lines at a lone CR: Python's `TextIOWrapper` with
/// universal newlines (the MCP Python SDK reads stdio through it) and Node's `readline` do.
/// `{"method":"tools/call","params":{"name":"allowed","arguments":{"x":␍{…blocked call…}␍}}}`
/// is one allowed call here and, to such a server, a blocked call it executes between two
/// unparsable fragments. Inside a JSON string a raw CR is already invalid. A final CR (CRLF
/// framing) is left alone: those readers take CRLF as one line end.
fn check_line_breaks(line: &[u8]) -> Result<(), ParseError> {
    match memchr::memchr(b'\r', line) {
        Some(pos) if pos + 1 < line.len() => Err(ParseError::invalid(format!(
            "carriage return at byte {pos} inside the message: some peers read it as a line \
             break, so one message could be read as several (send one message per line, \
             without raw CR)"
        ))),
        _ => Ok(()),
    }
}

fn classify(e: serde_json::Error) -> ParseError {
    let text = e.to_string();
    match text.strip_prefix(STRICT) {
        Some(rest) => ParseError::invalid(rest.to_owned()),
        None if e.is_data() => ParseError::invalid(text),
        None => ParseError {
            code: codes::PARSE_ERROR,
            reason: format!("parse error: {text}"),
        },
    }
}

/// True when `key` is not `target` but a reader that folds case would take it for `target`
/// (Go's `encoding/json` matches object keys to struct fields with `EqualFold`).
pub fn is_case_variant(key: &str, target: &str) -> bool {
    key != target && fold_eq(key, target)
}

/// Case-insensitive equality under Unicode simple case folding, including the folds that land on
/// ASCII letters (`ſ` → `s`, Kelvin sign → `k`), as Go's `strings.EqualFold` does.
pub fn fold_eq(a: &str, b: &str) -> bool {
    fn fold(c: char) -> char {
        match c {
            '\u{017F}' => 's',
            '\u{212A}' => 'k',
            '\u{212B}' => '\u{E5}',
            c => c.to_lowercase().next().unwrap_or(c),
        }
    }
    let (mut x, mut y) = (a.chars(), b.chars());
    loop {
        match (x.next(), y.next()) {
            (None, None) => return true,
            (Some(p), Some(q)) if fold(p) == fold(q) => {}
            _ => return false,
        }
    }
}

fn strict_err<E: de::Error>(msg: impl fmt::Display) -> E {
    E::custom(format_args!("{STRICT}{msg}"))
}

#[derive(Default)]
struct Envelope {
    /// Whether `"jsonrpc"` was present, and whether it was exactly the string "2.0".
    jsonrpc: Option<bool>,
    id: Option<Box<RawValue>>,
    method: Option<Value>,
    params: Option<Part>,
    result: Option<Box<RawValue>>,
    error: Option<Box<RawValue>>,
    extra_members: bool,
}

/// A client method that is (or, spelled oddly, may be) `tools/call`: its params are needed right
/// away, so they are decoded during the envelope parse instead of validated then decoded.
fn looks_like_tools_call(method: Option<&Value>) -> bool {
    method
        .and_then(Value::as_str)
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("tools/call"))
}

impl Envelope {
    fn into_message(self, origin: Origin) -> Result<Message, ParseError> {
        match self.jsonrpc {
            Some(true) => {}
            Some(false) => return Err(ParseError::invalid("\"jsonrpc\" must be \"2.0\"")),
            None => return Err(ParseError::invalid("missing \"jsonrpc\": \"2.0\"")),
        }
        if let Some(id) = &self.id {
            check_id(id)?;
        }
        let method = match self.method {
            None => None,
            Some(Value::String(m)) => Some(m),
            Some(_) => return Err(ParseError::invalid("\"method\" must be a string")),
        };
        if let Some(params) = &self.params {
            let keys: &'static [&'static str] = if origin == Origin::Client {
                &PARAMS_KEYS
            } else {
                &[]
            };
            match (params.raw(), params.decoded()) {
                (Some(raw), _) => {
                    if !matches!(raw.as_bytes().first(), Some(b'{' | b'[')) {
                        return Err(ParseError::invalid("\"params\" must be an object or array"));
                    }
                    // A client's params are always checked (the policy may look at them); a
                    // server's only when decoded (DLP), like its results.
                    if origin == Origin::Client {
                        validate(raw, keys, "params")?;
                    }
                }
                (None, Some(Value::Object(map))) => {
                    // Duplicates were refused while decoding; case variants are checked here.
                    for key in map.keys() {
                        if let Some(t) = keys.iter().find(|t| is_case_variant(key, t)) {
                            return Err(ParseError::invalid(format!(
                                "in \"params\": key {key:?} is a case variant of {t:?}"
                            )));
                        }
                    }
                }
                (None, Some(Value::Array(_))) => {}
                _ => {
                    return Err(ParseError::invalid("\"params\" must be an object or array"));
                }
            }
        }
        // A server's `result` is only looked into when something decides on it (DLP, tools/list),
        // and decoding is strict; otherwise its bytes are forwarded untouched and nothing here
        // depends on them, so they are not walked twice.
        let kind = match (&method, &self.result, &self.error) {
            (Some(_), None, None) => {
                if self.id.is_some() {
                    Kind::Request
                } else {
                    Kind::Notification
                }
            }
            (None, Some(_), None) => Kind::Response,
            (None, None, Some(_)) => Kind::ErrorResponse,
            (Some(_), _, _) => {
                return Err(ParseError::invalid(
                    "a message with \"method\" cannot carry \"result\" or \"error\"",
                ));
            }
            (None, Some(_), Some(_)) => {
                return Err(ParseError::invalid(
                    "a response cannot carry both \"result\" and \"error\"",
                ));
            }
            (None, None, None) => {
                return Err(ParseError::invalid(
                    "neither a request (\"method\") nor a response (\"result\"/\"error\")",
                ));
            }
        };
        if matches!(kind, Kind::Response | Kind::ErrorResponse) {
            if self.params.is_some() {
                return Err(ParseError::invalid("a response cannot carry \"params\""));
            }
            if self.id.is_none() {
                return Err(ParseError::invalid("a response must carry an \"id\""));
            }
        }
        let mut error = self.error.map(Part::new);
        if let Some(e) = error.as_mut() {
            validate(e.raw().unwrap_or("null"), &[], "error")?;
            check_error_object(e.decode()?)?;
        }
        Ok(Message {
            kind,
            id: self.id,
            method,
            params: self.params,
            result: self.result.map(Part::new),
            error,
            extra_members: self.extra_members,
        })
    }
}

/// Ids must mean the same request to every peer, because answers are matched to requests by
/// id: an id that a server reads as another one (`-0` is `0` to Python and JavaScript; integers
/// past 2^53 are rounded by JavaScript; `"\uD800"` is not a string to anyone, so peers handle
/// its spelling differently) would let its answer be taken for the other request's, for example
/// an unfiltered `tools/list` result delivered as the answer to a `ping`.
fn check_id(id: &RawValue) -> Result<(), ParseError> {
    /// `Number.MAX_SAFE_INTEGER`: the largest integer every JSON reader keeps exactly.
    const MAX_SAFE: u64 = (1 << 53) - 1;
    let text = id.get();
    match text.as_bytes().first() {
        Some(b'"') if !text.contains('\\') || serde_json::from_str::<String>(text).is_ok() => {
            Ok(())
        }
        Some(b'"') => Err(ParseError::invalid(
            "\"id\" must be a valid string (an escape decodes to a lone surrogate)",
        )),
        Some(b'-' | b'0'..=b'9') => {
            let magnitude = text.strip_prefix('-').unwrap_or(text);
            if text.contains(['.', 'e', 'E']) {
                Err(ParseError::invalid("\"id\" must be a string or an integer"))
            } else if text == "-0" {
                Err(ParseError::invalid(
                    "\"id\" -0 is the same id as 0 to most peers",
                ))
            } else if magnitude.parse::<u64>().map_or(true, |n| n > MAX_SAFE) {
                Err(ParseError::invalid(
                    "\"id\" must be an integer within ±(2^53 − 1), which every peer reads exactly",
                ))
            } else {
                Ok(())
            }
        }
        Some(b'n') => Err(ParseError::invalid("\"id\" must not be null")),
        _ => Err(ParseError::invalid("\"id\" must be a string or an integer")),
    }
}

fn check_error_object(error: &Value) -> Result<(), ParseError> {
    let Value::Object(e) = error else {
        return Err(ParseError::invalid("\"error\" must be an object"));
    };
    if !e.get("code").is_some_and(Value::is_i64) {
        return Err(ParseError::invalid("\"error.code\" must be an integer"));
    }
    if !e.get("message").is_some_and(Value::is_string) {
        return Err(ParseError::invalid("\"error.message\" must be a string"));
    }
    Ok(())
}

struct EnvelopeVisitor {
    origin: Origin,
}

impl<'de> Visitor<'de> for EnvelopeVisitor {
    type Value = Envelope;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON-RPC object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope, A::Error> {
        let mut env = Envelope::default();
        let mut unknown = Map::new();
        while let Some(key) = map.next_key_seed(Key)? {
            if key == "params" {
                if env.params.is_some() {
                    return Err(strict_err(format_args!("duplicate key {key:?}")));
                }
                env.params = Some(
                    if self.origin == Origin::Client && looks_like_tools_call(env.method.as_ref()) {
                        Part::decoded_from_start(map.next_value_seed(StrictValue)?)
                    } else {
                        Part::new(map.next_value::<Box<RawValue>>()?)
                    },
                );
                continue;
            }
            if key == "jsonrpc" {
                if env.jsonrpc.is_some() {
                    return Err(strict_err(format_args!("duplicate key {key:?}")));
                }
                let v = map.next_value_seed(StrictValue)?;
                env.jsonrpc = Some(v.as_str() == Some("2.0"));
                continue;
            }
            let raw_slot = match key.as_ref() {
                "result" => Some(&mut env.result),
                "error" => Some(&mut env.error),
                _ => None,
            };
            if let Some(slot) = raw_slot {
                if slot.is_some() {
                    return Err(strict_err(format_args!("duplicate key {key:?}")));
                }
                *slot = Some(map.next_value::<Box<RawValue>>()?);
                continue;
            }
            let slot = match key.as_ref() {
                "method" => Some(&mut env.method),
                "id" => {
                    if env.id.is_some() {
                        return Err(strict_err(format_args!("duplicate key {key:?}")));
                    }
                    env.id = Some(map.next_value::<Box<RawValue>>()?);
                    continue;
                }
                other => {
                    if let Some(t) = ENVELOPE_KEYS.iter().find(|t| is_case_variant(other, t)) {
                        return Err(strict_err(format_args!(
                            "key {other:?} is a case variant of {t:?}"
                        )));
                    }
                    if self.origin == Origin::Client {
                        return Err(strict_err(format_args!("unknown key {other:?}")));
                    }
                    if unknown.contains_key(other) {
                        return Err(strict_err(format_args!("duplicate key {other:?}")));
                    }
                    let v = map.next_value_seed(StrictValue)?;
                    unknown.insert(other.to_owned(), v);
                    continue;
                }
            };
            let Some(slot) = slot else { continue };
            if slot.is_some() {
                return Err(strict_err(format_args!("duplicate key {key:?}")));
            }
            *slot = Some(map.next_value_seed(StrictValue)?);
        }
        env.extra_members = !unknown.is_empty();
        Ok(env)
    }
}

/// An object key, borrowed from the input unless it contains escapes (`Cow<str>`'s own
/// `Deserialize` always allocates).
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = std::borrow::Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = std::borrow::Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Owned(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Owned(v))
    }
}

/// Builds a `serde_json::Value`, rejecting duplicate keys at every depth. Depth is bounded by
/// serde_json's recursion limit (128).
#[derive(Clone, Copy)]
pub struct StrictValue;

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| strict_err("number out of range"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(v) = seq.next_element_seed(StrictValue)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            // One hash per key: the vacant entry is filled in place.
            match out.entry(key) {
                serde_json::map::Entry::Occupied(e) => {
                    return Err(strict_err(format_args!("duplicate key {:?}", e.key())));
                }
                serde_json::map::Entry::Vacant(e) => {
                    e.insert(map.next_value_seed(StrictValue)?);
                }
            }
        }
        Ok(Value::Object(out))
    }
}

/// Checks `text` (one JSON value) strictly without building it: duplicate keys at any depth, and
/// at the top level keys that are case variants of `case_keys`. `what` names the part in errors.
fn validate(text: &str, case_keys: &'static [&'static str], what: &str) -> Result<(), ParseError> {
    let mut de = serde_json::Deserializer::from_str(text);
    de.deserialize_any(Validator { case_keys })
        .and_then(|()| de.end())
        .map_err(|e| {
            let mut p = classify(e);
            p.reason = format!("in \"{what}\": {}", p.reason);
            p
        })
}

/// Walks a value checking keys; allocates only for keys with escapes and for objects with many
/// keys.
#[derive(Clone, Copy)]
struct Validator {
    case_keys: &'static [&'static str],
}

impl<'de> DeserializeSeed<'de> for Validator {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Validator {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        Number::from_f64(v)
            .map(|_| ())
            .ok_or_else(|| strict_err("number out of range"))
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let inner = Validator { case_keys: &[] };
        while seq.next_element_seed(inner)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let inner = Validator { case_keys: &[] };
        let mut seen: Vec<std::borrow::Cow<'de, str>> = Vec::new();
        let mut many: Option<std::collections::HashSet<std::borrow::Cow<'de, str>>> = None;
        while let Some(key) = map.next_key_seed(Key)? {
            if let Some(t) = self.case_keys.iter().find(|t| is_case_variant(&key, t)) {
                return Err(strict_err(format_args!(
                    "key {key:?} is a case variant of {t:?}"
                )));
            }
            let dup = match many.as_mut() {
                Some(set) => !set.insert(key.clone()),
                None => {
                    let dup = seen.contains(&key);
                    seen.push(key.clone());
                    if seen.len() > 16 {
                        many = Some(seen.drain(..).collect());
                    }
                    dup
                }
            };
            if dup {
                return Err(strict_err(format_args!("duplicate key {key:?}")));
            }
            map.next_value_seed(inner)?;
        }
        Ok(())
    }
}

/// Parses any JSON text strictly (duplicate keys rejected at every depth).
pub fn parse_value(text: &[u8]) -> Result<Value, ParseError> {
    let mut de = serde_json::Deserializer::from_slice(text);
    StrictValue
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
        .map_err(classify)
}

/// Best-effort recovery of a top-level `"id"` for an error reply to a line that could not be
/// accepted (invalid or oversized). Never used to decide or forward anything: the peer controls
/// the id either way. Returns the id's JSON text.
pub fn recover_id(head: &[u8], tail: &[u8]) -> Option<String> {
    if let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(head) {
        return m.get("id").and_then(id_text);
    }
    scan_head_for_id(head).or_else(|| scan_tail_for_id(tail))
}

fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::String(_) => serde_json::to_string(v).ok(),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

/// Walks the first bytes of an object at depth 1 looking for `"id": <scalar>`.
fn scan_head_for_id(head: &[u8]) -> Option<String> {
    let mut depth = 0usize;
    let mut i = 0;
    let mut expect_key = false;
    while i < head.len() {
        match head[i] {
            b'{' | b'[' => {
                depth += 1;
                expect_key = head[i] == b'{' && depth == 1;
                i += 1;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b',' => {
                expect_key = depth == 1;
                i += 1;
            }
            b'"' => {
                let end = string_end(head, i)?;
                if depth == 1 && expect_key {
                    let key: String = serde_json::from_slice(&head[i..=end]).ok()?;
                    let mut j = end + 1;
                    while j < head.len() && (head[j].is_ascii_whitespace() || head[j] == b':') {
                        j += 1;
                    }
                    if key == "id" {
                        return scalar_at(head, j);
                    }
                    expect_key = false;
                    i = j;
                } else {
                    i = end + 1;
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// Looks at the end of a line for `"id": <scalar> }` (servers often put the id last).
fn scan_tail_for_id(tail: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(tail).ok()?.trim_end();
    let body = text.strip_suffix('}')?.trim_end();
    let pos = body.rfind("\"id\"")?;
    let rest = body[pos + 4..].trim_start().strip_prefix(':')?.trim_start();
    let v: Value = serde_json::from_str(rest).ok()?;
    id_text(&v)
}

fn string_end(buf: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while i < buf.len() {
        match buf[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

fn scalar_at(buf: &[u8], i: usize) -> Option<String> {
    let end = if buf.get(i) == Some(&b'"') {
        string_end(buf, i)? + 1
    } else {
        i + buf[i..]
            .iter()
            .position(|b| matches!(b, b',' | b'}' | b' ' | b'\t' | b'\r' | b'\n'))?
    };
    let v: Value = serde_json::from_slice(&buf[i..end]).ok()?;
    id_text(&v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    fn client(s: &str) -> Result<Message, ParseError> {
        parse(s.as_bytes(), Origin::Client)
    }

    fn server(s: &str) -> Result<Message, ParseError> {
        parse(s.as_bytes(), Origin::Server)
    }

    fn code(r: Result<Message, ParseError>) -> i64 {
        r.expect_err("expected rejection").code
    }

    #[test]
    fn parses_a_tools_call_request() {
        let m = client(
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"read","arguments":{"path":"/tmp/x"}}}"#,
        )
        .unwrap();
        assert_eq!(m.kind, Kind::Request);
        assert_eq!(m.id_text(), Some("7"));
        assert_eq!(m.method.as_deref(), Some("tools/call"));
        // tools/call params are decoded with the envelope (they are needed right away) …
        let mut params = m.params.unwrap();
        assert!(params.decoded().is_some());
        assert_eq!(params.decode().unwrap()["arguments"]["path"], "/tmp/x");
        // … others only on demand, and so are tools/call params sent before the method.
        for s in [
            r#"{"jsonrpc":"2.0","id":7,"method":"resources/read","params":{"uri":"x"}}"#,
            r#"{"jsonrpc":"2.0","id":7,"params":{"name":"a"},"method":"tools/call"}"#,
        ] {
            let mut p = client(s).unwrap().params.unwrap();
            assert!(p.decoded().is_none(), "{s}");
            assert!(p.decode().is_ok());
        }
    }

    #[test]
    fn id_text_is_kept_exactly() {
        let m = client(r#"{"jsonrpc":"2.0","id":"abc-123","method":"ping"}"#).unwrap();
        assert_eq!(m.id_text(), Some(r#""abc-123""#));
        let m = client(r#"{"jsonrpc":"2.0","id":  9007199254740991 ,"method":"ping"}"#).unwrap();
        assert_eq!(m.id_text(), Some("9007199254740991"));
    }

    #[test]
    fn kinds() {
        assert_eq!(
            client(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
                .unwrap()
                .kind,
            Kind::Notification
        );
        assert_eq!(
            server(r#"{"result":{},"jsonrpc":"2.0","id":2}"#)
                .unwrap()
                .kind,
            Kind::Response
        );
        assert_eq!(
            server(r#"{"jsonrpc":"2.0","id":2,"error":{"code":-32601,"message":"nope"}}"#)
                .unwrap()
                .kind,
            Kind::ErrorResponse
        );
    }

    #[test]
    fn duplicate_keys_are_rejected_at_every_level() {
        for s in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call"}"#,
            r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name":"b"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"p":1,"p":2}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"x":[{"q":1,"q":1}]}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","na\u006de":"b"}}"#,
        ] {
            assert_eq!(code(client(s)), codes::INVALID_REQUEST, "{s}");
        }
        // A server's result is forwarded untouched unless decoded, and decoding is strict.
        let mut m = server(r#"{"jsonrpc":"2.0","id":1,"result":{"a":1,"a":2}}"#).unwrap();
        assert_eq!(
            m.result.as_mut().unwrap().decode().unwrap_err().code,
            codes::INVALID_REQUEST
        );
    }

    #[test]
    fn a_carriage_return_inside_a_line_is_rejected_in_both_directions() {
        // One allowed call to us; to a reader that also ends lines at CR, a blocked call between
        // two broken fragments.
        let smuggled = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"arguments\":{\"x\":\r{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/call\",\"params\":{\"name\":\"delete_file\",\"arguments\":{}}}\r}}}";
        assert!(
            serde_json::from_str::<Value>(smuggled).is_ok(),
            "valid JSON"
        );
        for s in [
            smuggled,
            "{\"jsonrpc\":\"2.0\",\r\"id\":1,\"method\":\"ping\"}",
            "\r{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}",
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\r\r",
        ] {
            let e = client(s).unwrap_err();
            assert_eq!(e.code, codes::INVALID_REQUEST, "{s:?}");
            assert!(e.reason.contains("carriage return"), "{}", e.reason);
        }
        let e = server("{\"jsonrpc\":\"2.0\",\"id\":1,\r\"result\":{}}").unwrap_err();
        assert_eq!(e.code, codes::INVALID_REQUEST);
        // CRLF framing: the CR right before the newline is one line end to every reader.
        assert_eq!(
            client("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\r")
                .unwrap()
                .kind,
            Kind::Request
        );
        // Escaped inside a string it is just a character.
        assert!(
            client(r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"a":"x\ry"}}"#).is_ok()
        );
    }

    #[test]
    fn ids_that_peers_would_read_as_another_id_are_rejected() {
        for id in [
            "-0",
            "9007199254740992",
            "-9007199254740992",
            "123456789012345678901234567890",
            r#""\uD800""#,
            r#""a\udc00""#,
        ] {
            let line = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/list"}}"#);
            assert_eq!(code(client(&line)), codes::INVALID_REQUEST, "{id}");
            let line = format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{{}}}}"#);
            assert_eq!(code(server(&line)), codes::INVALID_REQUEST, "{id}");
        }
        for id in [
            "0",
            "-1",
            "9007199254740991",
            "-9007199254740991",
            r#""\u00e9""#,
            r#""\ud83d\ude00""#,
        ] {
            let line = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/list"}}"#);
            assert!(client(&line).is_ok(), "{id}");
        }
    }

    #[test]
    fn case_variants_of_known_keys_are_rejected() {
        for s in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","Method":"tools/call"}"#,
            r#"{"jsonrpc":"2.0","ID":1,"method":"ping"}"#,
            r#"{"JSONRPC":"2.0","id":1,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","PARAMS":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","Name":"b"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","argumentſ":{}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","ARGUMENTS":{}}}"#,
        ] {
            assert_eq!(code(client(s)), codes::INVALID_REQUEST, "{s}");
        }
        assert_eq!(
            code(server(
                r#"{"jsonrpc":"2.0","id":1,"Result":{},"result":{}}"#
            )),
            codes::INVALID_REQUEST
        );
    }

    #[test]
    fn client_may_not_add_envelope_keys_but_server_may() {
        assert_eq!(
            code(client(
                r#"{"jsonrpc":"2.0","id":1,"method":"ping","extra":1}"#
            )),
            codes::INVALID_REQUEST
        );
        assert!(server(r#"{"jsonrpc":"2.0","id":1,"result":{},"extra":1}"#).is_ok());
    }

    #[test]
    fn batches_scalars_and_garbage() {
        assert_eq!(
            code(client(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#)),
            codes::INVALID_REQUEST
        );
        assert_eq!(code(client("42")), codes::INVALID_REQUEST);
        assert_eq!(code(client("{not json")), codes::PARSE_ERROR);
        assert_eq!(code(client("hello")), codes::PARSE_ERROR);
        assert_eq!(
            code(client(
                r#"{"jsonrpc":"2.0","id":1,"method":"ping"} trailing"#
            )),
            codes::PARSE_ERROR
        );
        assert_eq!(code(client("")), codes::INVALID_REQUEST);
        assert_eq!(
            code(parse(
                b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"\xff\"}",
                Origin::Client
            )),
            codes::PARSE_ERROR
        );
    }

    #[test]
    fn envelope_shape_rules() {
        for s in [
            r#"{"id":1,"method":"ping"}"#,
            r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":7}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":"x"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","result":{}}"#,
            r#"{"jsonrpc":"2.0","id":1}"#,
        ] {
            assert_eq!(code(client(s)), codes::INVALID_REQUEST, "{s}");
        }
        for s in [
            r#"{"jsonrpc":"2.0","result":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{},"error":{"code":1,"message":"x"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"error":"boom"}"#,
        ] {
            assert_eq!(code(server(s)), codes::INVALID_REQUEST, "{s}");
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"x","params":{{"a":{}1{}}}}}"#,
            "[".repeat(1000),
            "]".repeat(1000)
        );
        assert!(client(&deep).is_err());
    }

    #[test]
    fn validation_without_decoding_still_rejects_duplicates_deep_inside() {
        let many: String = (0..40).map(|i| format!("\"k{i}\":{i},")).collect();
        let s =
            format!(r#"{{"jsonrpc":"2.0","id":1,"method":"x","params":{{"a":{{{many}"k7":0}}}}}}"#);
        assert_eq!(code(client(&s)), codes::INVALID_REQUEST);
        let s =
            format!(r#"{{"jsonrpc":"2.0","id":1,"method":"x","params":{{"a":{{{many}"z":0}}}}}}"#);
        assert!(client(&s).is_ok());
        let m = server(r#"{"jsonrpc":"2.0","id":1,"result":{"a": [1, {"b": "\u0041"}]}}"#).unwrap();
        assert_eq!(
            m.result.unwrap().raw(),
            Some(r#"{"a": [1, {"b": "\u0041"}]}"#)
        );
    }

    #[test]
    fn case_variant_detection() {
        assert!(is_case_variant("Method", "method"));
        assert!(is_case_variant("argumentſ", "arguments"));
        assert!(!is_case_variant("method", "method"));
        assert!(!is_case_variant("methods", "method"));
        assert!(!is_case_variant("mëthod", "method"));
    }

    #[test]
    fn recovers_ids_from_bad_or_truncated_lines() {
        assert_eq!(
            recover_id(
                br#"{"jsonrpc":"2.0","id":5,"method":"a","method":"b"}"#,
                b""
            ),
            Some("5".into())
        );
        assert_eq!(
            recover_id(
                br#"{"jsonrpc":"2.0","params":{"id":9},"id":"x-1","method":"aaaa"#,
                b""
            ),
            Some(r#""x-1""#.into())
        );
        assert_eq!(
            recover_id(
                br#"{"result":{"content":[{"text":"aaaa"#,
                br#"aaaa"}]},"jsonrpc":"2.0","id":42}"#
            ),
            Some("42".into())
        );
        assert_eq!(recover_id(b"garbage", b"garbage"), None);
    }
}
