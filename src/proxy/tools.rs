//! What the proxy knows about the server's tools, from its `tools/list` replies (all pages):
//! - every definition is remembered by exact name; a definition that changes during the session
//!   (a "rug pull": same name, new description or schema) is audited;
//! - in enforce mode, tools the policy blocks whatever their arguments are removed from the list,
//!   so the agent is not invited to call them;
//! - at `tools/call`: once the server has listed its tools, a call to a tool it never listed is
//!   refused (-32001), and a rule's `schema_hash` must match the listed definition (-32013,
//!   enforced in monitor mode too); a rule with `schema_hash` needs a listing first.
//!
//! A listing starts with a `tools/list` request without `cursor` and ends with the page that has
//! no `nextCursor`; until it ends, names from the previous listing stay known.

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};

use crate::audit::Record;
use crate::identity::{check_schema_hash, schema_hash};
use crate::jsonrpc::{ErrorReply, codes};

use super::{Shared, records};

/// Tool definitions seen in this session.
#[derive(Debug, Default)]
pub(super) struct ToolCache {
    /// Latest definition of every tool ever listed, by exact name.
    defs: HashMap<String, Value>,
    /// Names of the last complete listing (`None` until one completed).
    listed: Option<HashSet<String>>,
    /// Names of the listing in progress.
    partial: HashSet<String>,
}

pub(super) struct ListReport {
    pub changed: bool,
    pub records: Vec<Record>,
}

/// Updates the cache from one page of a `tools/list` result and filters it in place.
pub(super) fn on_tools_list(sh: &Shared, result: &mut Value) -> ListReport {
    let mut report = ListReport {
        changed: false,
        records: Vec::new(),
    };
    let last_page = result.get("nextCursor").is_none_or(Value::is_null);
    let Some(tools) = result.get_mut("tools").and_then(Value::as_array_mut) else {
        return report;
    };
    {
        let mut cache = sh.tools.lock().unwrap_or_else(|p| p.into_inner());
        for tool in tools.iter() {
            let Some(name) = tool.get("name").and_then(Value::as_str) else {
                continue;
            };
            if let Some(old) = cache.defs.insert(name.to_owned(), tool.clone()) {
                let (before, after) = (schema_hash(&old), schema_hash(tool));
                if before != after {
                    report
                        .records
                        .push(records::tool_definition_changed(sh, name, &before, &after));
                }
            }
            cache.partial.insert(name.to_owned());
        }
        if last_page {
            let done = std::mem::take(&mut cache.partial);
            cache.listed = Some(done);
        }
    }
    if sh.cfg.filter_tools_list && sh.enforcing() {
        let before = tools.len();
        let mut hidden = Vec::new();
        tools.retain(|t| {
            let name = t.get("name").and_then(Value::as_str).unwrap_or_default();
            let keep = sh.engine.tool_visible(name);
            if !keep {
                hidden.push(name.to_owned());
            }
            keep
        });
        if tools.len() != before {
            report.changed = true;
            report.records.push(records::tools_hidden(sh, &hidden));
        }
    }
    report
}

/// A client's `tools/list` without a cursor starts a new listing.
pub(super) fn listing_started(sh: &Shared, msg: &mut crate::jsonrpc::Message) {
    let has_cursor = msg
        .params
        .as_mut()
        .and_then(|p| p.decode().ok())
        .is_some_and(|p| p.get("cursor").is_some_and(|c| !c.is_null()));
    if !has_cursor {
        sh.tools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .partial
            .clear();
    }
}

/// Why a call is refused on the basis of the listed tools.
pub(super) struct Refusal {
    pub error: ErrorReply,
    /// Enforced in monitor mode too (schema mismatches).
    pub always: bool,
    pub reason: String,
}

/// Checks a call to `name` (exact, as the server will look it up; `normalized` for the policy)
/// against the listed tools and the rule's `schema_hash`.
pub(super) fn check_call(sh: &Shared, name: &str, normalized: &str) -> Option<Refusal> {
    let expected = sh
        .engine
        .policy()
        .and_then(|p| p.rule(normalized))
        .and_then(|r| r.schema_hash.as_ref())
        .map(|h| format!("{}:{}", h.algorithm.as_str(), h.hex));
    let cache = sh.tools.lock().unwrap_or_else(|p| p.into_inner());
    let listed = cache
        .listed
        .as_ref()
        .map(|l| l.contains(name) || cache.partial.contains(name));
    let forbidden = |reason: String, always: bool| Refusal {
        error: ErrorReply::new(
            codes::FORBIDDEN,
            "Forbidden",
            Some(json!({"tool": normalized, "reason": reason})),
        ),
        always,
        reason,
    };
    match (expected, cache.defs.get(name), listed) {
        (_, _, Some(false)) => Some(forbidden(
            "Tool not in the server's tools/list".into(),
            false,
        )),
        (Some(_), None, _) => Some(forbidden(
            "Tool has a schema_hash rule but the server has not listed it yet; call tools/list first"
                .into(),
            true,
        )),
        (Some(expected), Some(def), _) => match check_schema_hash(&expected, def) {
            Ok(()) => None,
            Err(m) => {
                let reason = "Tool definition does not match the policy's schema_hash".to_owned();
                Some(Refusal {
                    error: ErrorReply::new(
                        codes::SCHEMA_MISMATCH,
                        "Schema mismatch",
                        Some(json!({
                            "tool": normalized,
                            "reason": reason,
                            "expected_hash": m.expected,
                            "actual_hash": m.actual,
                        })),
                    ),
                    always: true,
                    reason,
                })
            }
        },
        (None, _, _) => None,
    }
}
