//! Requests in flight, in both directions, keyed by their id.
//!
//! The client table remembers, for each request forwarded to the server (or waiting for a human),
//! its normalized method and tool: the server's response is matched against it (tools/list
//! filtering, errors for oversized replies, failing pending calls when the server dies), and the
//! egress audit asks it which tool call is in flight. The server table remembers server→client
//! requests so that only answers to them pass from the client. Both tables are bounded.

use std::collections::HashMap;
use std::time::Instant;

use serde_json::value::RawValue;

use crate::approval::Cancel;

/// A client request the server has not answered yet.
#[derive(Debug, Clone)]
pub struct ClientRequest {
    /// The id exactly as the client wrote it (for replies we build).
    pub id_text: String,
    pub method: String,
    pub tool: Option<String>,
    /// Set while the call waits for a human; cancelling wakes the approval thread.
    pub approval: Option<Cancel>,
    /// Sequence number (insertion order), to find the most recent tool call.
    seq: u64,
}

/// Why a request could not be recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    DuplicateId,
    Full,
}

#[derive(Debug)]
pub struct Pending {
    client: HashMap<String, ClientRequest>,
    server: HashMap<String, Instant>,
    max: usize,
    seq: u64,
}

/// A canonical key for an id: numbers by their exact text, strings by their decoded value, so
/// `"a"` and `"\u0061"` are the same request.
pub fn id_key(id: &RawValue) -> String {
    let text = id.get().trim();
    let key = |tag: &str, body: &str| {
        let mut key = String::with_capacity(tag.len() + body.len());
        key.push_str(tag);
        key.push_str(body);
        key
    };
    if let Some(quoted) = text.strip_prefix('"') {
        // Valid JSON (the id was parsed): without a backslash, the text between the quotes is
        // the value itself.
        if let Some(plain) = quoted.strip_suffix('"').filter(|t| !t.contains('\\')) {
            return key("s:", plain);
        }
        if let Ok(s) = serde_json::from_str::<String>(text) {
            return key("s:", &s);
        }
    }
    key("n:", text)
}

impl Pending {
    pub fn new(max: usize) -> Self {
        Pending {
            client: HashMap::new(),
            server: HashMap::new(),
            max,
            seq: 0,
        }
    }

    pub fn insert_client(
        &mut self,
        id: &RawValue,
        method: &str,
        tool: Option<&str>,
        approval: Option<Cancel>,
    ) -> Result<(), Refused> {
        let full = self.client.len() >= self.max;
        let std::collections::hash_map::Entry::Vacant(slot) = self.client.entry(id_key(id)) else {
            return Err(Refused::DuplicateId);
        };
        if full {
            return Err(Refused::Full);
        }
        self.seq += 1;
        slot.insert(ClientRequest {
            id_text: id.get().to_owned(),
            method: method.to_owned(),
            tool: tool.map(str::to_owned),
            approval,
            seq: self.seq,
        });
        Ok(())
    }

    /// Marks an approved call as no longer waiting for a human.
    pub fn approval_done(&mut self, id: &RawValue) {
        if let Some(r) = self.client.get_mut(&id_key(id)) {
            r.approval = None;
        }
    }

    /// Removes the client request `id` only if it is waiting for a human (not yet forwarded),
    /// and returns its cancel handle. A forwarded request keeps its entry, and so its id.
    pub fn take_waiting_approval(&mut self, id: &RawValue) -> Option<Cancel> {
        let std::collections::hash_map::Entry::Occupied(entry) = self.client.entry(id_key(id))
        else {
            return None;
        };
        entry.get().approval.as_ref()?;
        entry.remove().approval
    }

    pub fn take_client(&mut self, id: &RawValue) -> Option<ClientRequest> {
        self.client.remove(&id_key(id))
    }

    pub fn take_client_by_text(&mut self, id_text: &str) -> Option<ClientRequest> {
        let raw = RawValue::from_string(id_text.to_owned()).ok()?;
        self.take_client(&raw)
    }

    /// Removes and returns every client request (the server is gone).
    pub fn drain_client(&mut self) -> Vec<ClientRequest> {
        let mut all: Vec<_> = self.client.drain().map(|(_, v)| v).collect();
        all.sort_by_key(|r| r.seq);
        all
    }

    /// The most recent `tools/call` that the server is working on (not waiting for a human).
    pub fn current_tool_call(&self) -> Option<(String, String)> {
        self.client
            .values()
            .filter(|r| r.approval.is_none())
            .filter_map(|r| {
                r.tool
                    .as_ref()
                    .map(|t| (r.seq, r.id_text.clone(), t.clone()))
            })
            .max_by_key(|(seq, _, _)| *seq)
            .map(|(_, id, tool)| (id, tool))
    }

    pub fn insert_server(&mut self, id: &RawValue) -> Result<(), Refused> {
        let key = id_key(id);
        if self.server.contains_key(&key) {
            return Err(Refused::DuplicateId);
        }
        if self.server.len() >= self.max {
            return Err(Refused::Full);
        }
        self.server.insert(key, Instant::now());
        Ok(())
    }

    /// True (and forgets it) when `id` answers a server→client request.
    pub fn take_server(&mut self, id: &RawValue) -> bool {
        self.server.remove(&id_key(id)).is_some()
    }

    /// Cancels every call waiting for a human (their threads answer `Cancelled`).
    pub fn cancel_approvals(&self) {
        for r in self.client.values() {
            if let Some(c) = &r.approval {
                c.cancel();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn ids_match_by_value_and_type() {
        let mut p = Pending::new(8);
        p.insert_client(&raw(r#""a""#), "tools/list", None, None)
            .unwrap();
        assert_eq!(
            p.insert_client(&raw(r#""\u0061""#), "ping", None, None),
            Err(Refused::DuplicateId)
        );
        p.insert_client(&raw("1"), "ping", None, None).unwrap();
        // The string "1" and the number 1 are different ids.
        p.insert_client(&raw(r#""1""#), "ping", None, None).unwrap();
        assert_eq!(p.take_client(&raw(r#""a""#)).unwrap().method, "tools/list");
        assert!(p.take_client(&raw(r#""a""#)).is_none());
        p.insert_client(&raw(r#""q\"x""#), "ping", None, None)
            .unwrap();
        assert!(p.take_client(&raw(r#""q\u0022x""#)).is_some());
        assert_eq!(id_key(&raw(r#""\u0031""#)), "s:1");
        assert_eq!(id_key(&raw("1")), "n:1");
    }

    #[test]
    fn bounded() {
        let mut p = Pending::new(2);
        p.insert_client(&raw("1"), "ping", None, None).unwrap();
        p.insert_client(&raw("2"), "ping", None, None).unwrap();
        assert_eq!(
            p.insert_client(&raw("3"), "ping", None, None),
            Err(Refused::Full)
        );
        p.insert_server(&raw("1")).unwrap();
        p.insert_server(&raw("2")).unwrap();
        assert_eq!(p.insert_server(&raw("3")), Err(Refused::Full));
        assert!(p.take_server(&raw("1")));
        assert!(!p.take_server(&raw("1")));
    }

    #[test]
    fn only_a_call_waiting_for_a_human_is_taken_by_a_cancellation() {
        let mut p = Pending::new(8);
        p.insert_client(&raw("1"), "tools/list", None, None)
            .unwrap();
        p.insert_client(&raw("2"), "tools/call", Some("ask_me"), Some(Cancel::new()))
            .unwrap();
        assert!(p.take_waiting_approval(&raw("1")).is_none());
        assert_eq!(
            p.insert_client(&raw("1"), "ping", None, None),
            Err(Refused::DuplicateId),
            "a forwarded request keeps its id"
        );
        assert!(p.take_waiting_approval(&raw("2")).is_some());
        assert!(p.take_waiting_approval(&raw("2")).is_none());
        assert!(p.insert_client(&raw("2"), "ping", None, None).is_ok());
    }

    #[test]
    fn current_tool_call_skips_calls_waiting_for_a_human() {
        let mut p = Pending::new(8);
        p.insert_client(&raw("1"), "tools/call", Some("read"), None)
            .unwrap();
        p.insert_client(&raw("2"), "tools/call", Some("ask_me"), Some(Cancel::new()))
            .unwrap();
        assert_eq!(p.current_tool_call(), Some(("1".into(), "read".into())));
        p.approval_done(&raw("2"));
        assert_eq!(p.current_tool_call(), Some(("2".into(), "ask_me".into())));
        let all = p.drain_client();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].id_text, "1");
    }
}
