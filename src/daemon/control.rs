//! The control socket: `aip ps`, `aip approve` and `aip reload` talk to aipd here, one JSON
//! request line and one JSON response line per connection. Only root and the configured
//! administrators (by uid or group, from the kernel's peer credentials) are served; the socket
//! file itself is root-owned and 0600 unless `control.group` opens it to a group.
//!
//! ```text
//! {"cmd":"ps"}                                   → {"ok":true,"sessions":[…]}
//! {"cmd":"approvals"}                            → {"ok":true,"approvals":[…]}
//! {"cmd":"answer","id":3,"approve":false,"reason":"not today"} → {"ok":true,"answered":{…}}
//! {"cmd":"reload"}                               → {"ok":true,"reload":{…}}
//! anything refused                               → {"ok":false,"error":"…"}
//! ```
//!
//! Must not: change sessions other than answering their asks.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::approval::Answer;
use crate::audit::Record;

use super::hello;
use super::peer::Peer;
use super::service::Shared;

/// Longest request or response line.
const MAX_LINE: usize = 64 * 1024;
/// Longest response line a client accepts (a `ps` of many sessions).
const MAX_RESPONSE: usize = 16 * 1024 * 1024;
const TIMEOUT: Duration = Duration::from_secs(10);

/// A control request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Ps {},
    Approvals {},
    Answer {
        id: u64,
        approve: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    Reload {},
}

fn authorized(shared: &Shared, peer: &Peer) -> bool {
    let loaded = shared.current();
    let c = &loaded.daemon.control;
    peer.uid == 0 || c.admin_users.contains(&peer.uid) || peer.in_any(&c.admin_groups)
}

fn respond(stream: &UnixStream, v: &Value) {
    let mut line = serde_json::to_vec(v).unwrap_or_default();
    line.push(b'\n');
    let _ = (&*stream).write_all(&line);
}

/// Serves one control connection.
pub(super) fn serve(shared: &Arc<Shared>, stream: UnixStream) {
    let _ = stream.set_read_timeout(Some(TIMEOUT));
    let _ = stream.set_write_timeout(Some(TIMEOUT));
    let peer = match Peer::of(&stream) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("control: cannot read the peer's credentials: {e}");
            return;
        }
    };
    if !authorized(shared, &peer) {
        tracing::warn!(
            uid = peer.uid,
            pid = peer.pid,
            "control: refused {}",
            peer.describe()
        );
        respond(
            &stream,
            &json!({"ok": false, "error": format!("{} is not an aipd administrator (control.admin_users / control.admin_groups)", peer.describe())}),
        );
        return;
    }
    let request = hello::read_line(&mut &stream, MAX_LINE)
        .map_err(|e| e.to_string())
        .and_then(|(line, _)| {
            let v = crate::jsonrpc::parse_value(&line).map_err(|e| e.to_string())?;
            serde_json::from_value::<Request>(v).map_err(|e| e.to_string())
        });
    let reply = match request {
        Err(e) => json!({"ok": false, "error": format!("bad request: {e}")}),
        Ok(req) => handle(shared, &peer, req),
    };
    respond(&stream, &reply);
}

fn handle(shared: &Arc<Shared>, peer: &Peer, req: Request) -> Value {
    match req {
        Request::Ps {} => json!({"ok": true, "sessions": shared.sessions.list()}),
        Request::Approvals {} => json!({"ok": true, "approvals": shared.approvals.list()}),
        Request::Reload {} => {
            tracing::info!("reload requested by {}", peer.describe());
            json!({"ok": true, "reload": shared.reload(&format!("aip reload by {}", peer.describe()))})
        }
        Request::Answer {
            id,
            approve,
            reason,
        } => {
            let answer = if approve {
                Answer::Approved
            } else {
                Answer::Denied(
                    reason
                        .clone()
                        .unwrap_or_else(|| format!("denied by {}", peer.describe())),
                )
            };
            match shared.approvals.answer(id, answer) {
                Err(e) => json!({"ok": false, "error": e.to_string()}),
                Ok(view) => {
                    let record = Record::event("APPROVAL_ANSWER")
                        .with("approval_id", id)
                        .with("session_id", view.session_id.as_str())
                        .with("server", view.server.as_str())
                        .with("tool", view.tool.as_str())
                        .with("request_id", view.request_id.as_str())
                        .with("uid", view.uid)
                        .with("answer", if approve { "APPROVED" } else { "DENIED" })
                        .with_opt("reason", reason)
                        .with("by_uid", peer.uid)
                        .with_opt("by_user", peer.user.clone());
                    if let Err(e) = shared.audit.write(&record) {
                        tracing::error!("cannot audit an approval answer: {e}");
                    }
                    json!({"ok": true, "answered": view})
                }
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot reach aipd's control socket {path}: {source}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket: {0}")]
    Protocol(String),
    #[error("{0}")]
    Refused(String),
}

/// Sends one request to the control socket at `path`; returns the response's fields when
/// `ok` is true.
pub fn request(path: &Path, req: &Request) -> Result<Value, ControlError> {
    let stream = UnixStream::connect(path).map_err(|source| ControlError::Connect {
        path: path.display().to_string(),
        source,
    })?;
    // A reload may load many policies; allow it more time than a listing.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let mut line = serde_json::to_vec(req).map_err(|e| ControlError::Protocol(e.to_string()))?;
    line.push(b'\n');
    (&stream)
        .write_all(&line)
        .map_err(|e| ControlError::Protocol(e.to_string()))?;
    let (reply, _) = hello::read_line(&mut &stream, MAX_RESPONSE)
        .map_err(|e| ControlError::Protocol(e.to_string()))?;
    let v: Value =
        serde_json::from_slice(&reply).map_err(|e| ControlError::Protocol(e.to_string()))?;
    if v.get("ok") == Some(&Value::Bool(true)) {
        Ok(v)
    } else {
        Err(ControlError::Refused(
            v.get("error")
                .and_then(Value::as_str)
                .unwrap_or("aipd refused the request")
                .to_owned(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_and_strict() {
        let r: Request = serde_json::from_str(r#"{"cmd":"answer","id":3,"approve":true}"#).unwrap();
        assert_eq!(
            r,
            Request::Answer {
                id: 3,
                approve: true,
                reason: None
            }
        );
        assert_eq!(
            serde_json::to_string(&Request::Ps {}).unwrap(),
            r#"{"cmd":"ps"}"#
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"ps","x":1}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"shutdown"}"#).is_err());
    }
}
