//! What the proxy does with `tools/list` replies: remember every tool definition the server
//! listed (all pages), notice when a definition changes during the session (a "rug pull"), and,
//! in enforce mode, remove the tools the policy would block whatever their arguments so the agent
//! is not invited to call them.

use std::collections::HashMap;

use serde_json::Value;

use crate::audit::Record;

use super::{Shared, records};

/// Tool definitions seen in this session, by exact tool name.
#[derive(Debug, Default)]
pub(super) struct ToolCache {
    hashes: HashMap<String, String>,
}

pub(super) struct ListReport {
    pub changed: bool,
    pub records: Vec<Record>,
}

/// Hash of the parts of a tool definition the agent relies on.
fn definition_hash(tool: &Value) -> String {
    use sha2::{Digest, Sha256};
    let view = serde_json::json!({
        "name": tool.get("name"),
        "description": tool.get("description"),
        "inputSchema": tool.get("inputSchema"),
    });
    let bytes = serde_json::to_vec(&view).unwrap_or_default();
    format!("sha256:{}", hex::encode(Sha256::digest(&bytes)))
}

/// Updates the cache from one page of a `tools/list` result and filters it in place.
pub(super) fn on_tools_list(sh: &Shared, result: &mut Value) -> ListReport {
    let mut report = ListReport {
        changed: false,
        records: Vec::new(),
    };
    let Some(tools) = result.get_mut("tools").and_then(Value::as_array_mut) else {
        return report;
    };
    {
        let mut cache = sh.tools.lock().unwrap_or_else(|p| p.into_inner());
        for tool in tools.iter() {
            let Some(name) = tool.get("name").and_then(Value::as_str) else {
                continue;
            };
            let hash = definition_hash(tool);
            if let Some(old) = cache.hashes.insert(name.to_owned(), hash.clone())
                && old != hash
            {
                report
                    .records
                    .push(records::tool_definition_changed(sh, name, &old, &hash));
            }
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
