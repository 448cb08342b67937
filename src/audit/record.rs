//! One audit record: an ordered list of AIP audit fields (`timestamp`, `direction`, `method`,
//! `tool`, `args`, `decision`, `policy_mode`, `violation`, `failed_arg`, `failed_rule`, `event`,
//! `session_id`, `request_id`, …) serialized as one JSON object. Sinks write it as is (JSONL) or
//! map the well-known keys to their own fields (journald `AIP_*`).
//!
//! Records are built on the proxy's hot path (one per decision), so keys are static strings,
//! fields live in a small vector, and the timestamp's date part is formatted once per second.

use std::borrow::Cow;
use std::cell::RefCell;
use std::io::Write as _;
use std::sync::Arc;

use serde_json::Value;
use time::OffsetDateTime;

/// Which way the message described by a record was travelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client → server.
    Upstream,
    /// Server → client.
    Downstream,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Upstream => "upstream",
            Direction::Downstream => "downstream",
        }
    }
}

/// An audit record. Field order is insertion order; `timestamp` always comes first.
#[derive(Debug, Clone)]
pub struct Record {
    fields: Vec<(Cow<'static, str>, Field)>,
}

/// A field's value, stored compactly: a record is built for every message, and most of its
/// values are constant strings, booleans or small numbers that need no allocation (and keep
/// the field list small enough for the allocator's per-thread cache).
#[derive(Debug, Clone)]
enum Field {
    Static(&'static str),
    Shared(Arc<str>),
    Text(String),
    Bool(bool),
    Int(i64),
    Json(Box<Value>),
    /// JSON text serialized from a `Value` when the record was built (no copy of the value kept).
    Serialized(String),
}

impl From<Value> for Field {
    fn from(v: Value) -> Self {
        match v {
            Value::String(s) => Field::Text(s),
            Value::Bool(b) => Field::Bool(b),
            Value::Number(n) if n.is_i64() => Field::Int(n.as_i64().unwrap_or_default()),
            v => Field::Json(Box::new(v)),
        }
    }
}

impl Field {
    fn to_value(&self) -> Value {
        match self {
            Field::Static(s) => Value::from(*s),
            Field::Shared(s) => Value::from(&**s),
            Field::Text(s) => Value::from(s.as_str()),
            Field::Bool(b) => Value::Bool(*b),
            Field::Int(n) => Value::from(*n),
            Field::Json(v) => (**v).clone(),
            // Produced by serde_json from a Value, so it parses back to that value.
            Field::Serialized(text) => serde_json::from_str(text).unwrap_or(Value::Null),
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Field::Static(s) => Some(s),
            Field::Shared(s) => Some(s),
            Field::Text(s) => Some(s),
            _ => None,
        }
    }

    fn as_text(&self) -> Option<Cow<'_, str>> {
        match self {
            Field::Static(s) => Some(Cow::Borrowed(s)),
            Field::Shared(s) => Some(Cow::Borrowed(s)),
            Field::Text(s) => Some(Cow::Borrowed(s)),
            Field::Bool(b) => Some(Cow::Owned(b.to_string())),
            Field::Int(n) => Some(Cow::Owned(n.to_string())),
            Field::Json(v) => match &**v {
                Value::Null => None,
                Value::String(s) => Some(Cow::Borrowed(s)),
                v => Some(Cow::Owned(v.to_string())),
            },
            // Usually an object (a call's arguments), whose text is its JSON; a serialized
            // scalar reads as the value would.
            Field::Serialized(text) if text.starts_with(['{', '[']) => Some(Cow::Borrowed(text)),
            Field::Serialized(_) => match self.to_value() {
                Value::Null => None,
                Value::String(s) => Some(Cow::Owned(s)),
                v => Some(Cow::Owned(v.to_string())),
            },
        }
    }

    fn write_json(&self, out: &mut Vec<u8>) {
        // Writing into a Vec cannot fail, and a Value always serializes.
        let _ = match self {
            Field::Static(s) => serde_json::to_writer(&mut *out, s),
            Field::Shared(s) => serde_json::to_writer(&mut *out, &**s),
            Field::Text(s) => serde_json::to_writer(&mut *out, s),
            Field::Bool(b) => {
                out.extend_from_slice(if *b { b"true" } else { b"false" });
                Ok(())
            }
            Field::Int(n) => {
                let _ = write!(out, "{n}");
                Ok(())
            }
            Field::Json(v) => serde_json::to_writer(&mut *out, v),
            Field::Serialized(text) => {
                out.extend_from_slice(text.as_bytes());
                Ok(())
            }
        };
    }
}

/// Records are equal when they have the same keys in the same order with equal JSON values,
/// however each value is stored.
impl PartialEq for Record {
    fn eq(&self, other: &Self) -> bool {
        self.fields.len() == other.fields.len()
            && self
                .fields
                .iter()
                .zip(&other.fields)
                .all(|((ka, a), (kb, b))| ka == kb && a.to_value() == b.to_value())
    }
}

impl Record {
    /// A record stamped with the current UTC time (RFC 3339, millisecond precision).
    pub fn now() -> Self {
        Self::at(OffsetDateTime::now_utc())
    }

    /// A record stamped with `when`.
    pub fn at(when: OffsetDateTime) -> Self {
        let mut fields = Vec::with_capacity(16);
        fields.push((
            Cow::Borrowed("timestamp"),
            Field::Text(format_timestamp(when)),
        ));
        Record { fields }
    }

    /// An event record (`event` field set), stamped now.
    pub fn event(name: &str) -> Self {
        Self::now().with("event", name)
    }

    /// Sets `key` to `value` (builder style).
    pub fn with(mut self, key: impl Into<Cow<'static, str>>, value: impl Into<Value>) -> Self {
        self.set(key, value);
        self
    }

    /// Sets `key` to a constant string (no allocation; builder style).
    pub fn with_static(mut self, key: &'static str, value: &'static str) -> Self {
        self.put(Cow::Borrowed(key), Field::Static(value));
        self
    }

    /// Sets `key` to a string shared by many records (a session id; no copy; builder style).
    pub fn with_shared(mut self, key: &'static str, value: &Arc<str>) -> Self {
        self.put(Cow::Borrowed(key), Field::Shared(Arc::clone(value)));
        self
    }

    /// Sets `key` to `value`, serialized now: for a large value borrowed from a message, instead
    /// of a copy of it (builder style).
    pub fn with_serialized(mut self, key: &'static str, value: &Value) -> Self {
        let text = serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned());
        self.put(Cow::Borrowed(key), Field::Serialized(text));
        self
    }

    /// Sets `key` unless `value` is `None`.
    pub fn with_opt<V: Into<Value>>(
        mut self,
        key: impl Into<Cow<'static, str>>,
        value: Option<V>,
    ) -> Self {
        if let Some(v) = value {
            self.set(key, v);
        }
        self
    }

    /// Sets `key` (replacing an earlier value of the same key).
    pub fn set(&mut self, key: impl Into<Cow<'static, str>>, value: impl Into<Value>) {
        self.put(key.into(), Field::from(value.into()));
    }

    fn put(&mut self, key: Cow<'static, str>, value: Field) {
        match self.fields.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.fields.push((key, value)),
        }
    }

    /// The value of `key`, as JSON.
    pub fn get(&self, key: &str) -> Option<Value> {
        self.field(key).map(Field::to_value)
    }

    fn field(&self, key: &str) -> Option<&Field> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The string value of `key`, if it is a string.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.field(key).and_then(Field::as_str)
    }

    /// The boolean value of `key`, if it is a boolean.
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        match self.field(key) {
            Some(Field::Bool(b)) => Some(*b),
            Some(Field::Json(v)) => v.as_bool(),
            _ => None,
        }
    }

    /// The fields in order as text (what journald stores): strings as they are, other values as
    /// JSON, `null` as nothing. No value is rebuilt to get there.
    pub fn fields_as_text(&self) -> impl Iterator<Item = (&str, Option<Cow<'_, str>>)> {
        self.fields.iter().map(|(k, v)| (k.as_ref(), v.as_text()))
    }

    /// Appends the record as one JSON object (no newline) to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        for (i, (k, v)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let _ = serde_json::to_writer(&mut *out, k.as_ref());
            out.push(b':');
            v.write_json(out);
        }
        out.push(b'}');
    }

    /// The record as one JSON line (no trailing newline).
    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(256);
        self.write_json(&mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

thread_local! {
    /// The last second formatted on this thread: (unix second, "YYYY-MM-DDTHH:MM:SS").
    static SECOND: RefCell<(i64, String)> = const { RefCell::new((i64::MIN, String::new())) };
}

fn format_timestamp(when: OffsetDateTime) -> String {
    let second = when.unix_timestamp();
    SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != second {
            cached.0 = second;
            cached.1 = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                when.year(),
                u8::from(when.month()),
                when.day(),
                when.hour(),
                when.minute(),
                when.second()
            );
        }
        let ms = when.millisecond();
        let mut out = String::with_capacity(24);
        out.push_str(&cached.1);
        out.push('.');
        for d in [ms / 100, ms / 10 % 10, ms % 10] {
            out.push(char::from(b'0' + d as u8));
        }
        out.push('Z');
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn timestamp_first_then_insertion_order() {
        let r = Record::at(datetime!(2026-01-24 10:30:45.123456 UTC))
            .with("direction", Direction::Upstream.as_str())
            .with("decision", "BLOCK")
            .with("violation", true)
            .with_opt::<String>("tool", None);
        assert_eq!(
            r.to_json(),
            r#"{"timestamp":"2026-01-24T10:30:45.123Z","direction":"upstream","decision":"BLOCK","violation":true}"#
        );
    }

    #[test]
    fn set_replaces_and_values_are_escaped() {
        let mut r = Record::at(datetime!(2026-01-24 10:30:45 UTC)).with("a", 1);
        r.set("a", "x\"y\n");
        r.set(String::from("dyn"), serde_json::json!({"k": [1, 2]}));
        assert_eq!(
            r.to_json(),
            r#"{"timestamp":"2026-01-24T10:30:45.000Z","a":"x\"y\n","dyn":{"k":[1,2]}}"#
        );
        assert_eq!(r.get_str("a"), Some("x\"y\n"));
    }

    #[test]
    fn text_of_each_field_is_the_value_not_its_json_quoting() {
        let args = serde_json::json!({"path": "/tmp/a"});
        let r = Record::at(datetime!(2026-01-24 10:30:45 UTC))
            .with_static("decision", "ALLOW")
            .with("violation", false)
            .with("request_id", 7)
            .with("reason", Value::Null)
            .with_serialized("args", &args)
            .with_serialized("quoted", &serde_json::json!("x"));
        let texts: Vec<(&str, Option<String>)> = r
            .fields_as_text()
            .map(|(k, v)| (k, v.map(Cow::into_owned)))
            .collect();
        assert_eq!(
            texts[1..],
            [
                ("decision", Some("ALLOW".to_owned())),
                ("violation", Some("false".to_owned())),
                ("request_id", Some("7".to_owned())),
                ("reason", None),
                ("args", Some(r#"{"path":"/tmp/a"}"#.to_owned())),
                ("quoted", Some("x".to_owned())),
            ]
        );
        assert_eq!(r.get("args"), Some(args));
    }

    #[test]
    fn the_cached_second_changes_with_the_clock() {
        let a = format_timestamp(datetime!(2026-12-31 23:59:59.999 UTC));
        let b = format_timestamp(datetime!(2027-01-01 00:00:00.001 UTC));
        assert_eq!(a, "2026-12-31T23:59:59.999Z");
        assert_eq!(b, "2027-01-01T00:00:00.001Z");
    }
}
