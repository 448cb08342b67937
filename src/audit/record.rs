//! One audit record: an ordered JSON object whose keys are the AIP audit field names
//! (`timestamp`, `direction`, `method`, `tool`, `args`, `decision`, `policy_mode`, `violation`,
//! `failed_arg`, `failed_rule`, `event`, `session_id`, `request_id`, …). Sinks serialize it as is
//! (JSONL) or map the well-known keys to their own fields (journald `AIP_*`).

use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

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
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    fields: Map<String, Value>,
}

impl Record {
    /// A record stamped with the current UTC time (RFC 3339, millisecond precision).
    pub fn now() -> Self {
        Self::at(OffsetDateTime::now_utc())
    }

    /// A record stamped with `when`.
    pub fn at(when: OffsetDateTime) -> Self {
        let mut fields = Map::new();
        fields.insert("timestamp".into(), Value::String(format_timestamp(when)));
        Record { fields }
    }

    /// An event record (`event` field set), stamped now.
    pub fn event(name: &str) -> Self {
        Self::now().with("event", name)
    }

    /// Sets `key` to `value` (builder style).
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.set(key, value);
        self
    }

    /// Sets `key` to `value` unless `value` is `None`.
    pub fn with_opt<V: Into<Value>>(mut self, key: &str, value: Option<V>) -> Self {
        if let Some(v) = value {
            self.set(key, v);
        }
        self
    }

    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.fields.insert(key.to_owned(), value.into());
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.fields.get(key)
    }

    /// The string value of `key`, if it is a string.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.fields.get(key).and_then(Value::as_str)
    }

    pub fn fields(&self) -> &Map<String, Value> {
        &self.fields
    }

    /// The record as one JSON line (no trailing newline).
    pub fn to_json(&self) -> String {
        // Serializing a Map of Values cannot fail.
        serde_json::to_string(&self.fields).unwrap_or_default()
    }
}

fn format_timestamp(when: OffsetDateTime) -> String {
    let ms = when.replace_nanosecond(when.millisecond() as u32 * 1_000_000);
    ms.unwrap_or(when)
        .format(&Rfc3339)
        .unwrap_or_else(|_| when.unix_timestamp().to_string())
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
}
