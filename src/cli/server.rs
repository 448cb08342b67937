//! `aip server` (the HTTP(S) validation server) and `aip schema-hash` (tool schema hashes for
//! `tool_rules[].schema_hash`, from a saved `tools/list` JSON or from a server started with
//! `-- CMD…` through a minimal MCP client over stdio). Must not evaluate policy or re-implement
//! hashing (`identity::schema_hash`).

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Value, json};

use crate::audit;
use crate::identity;
use crate::policy::{self, Engine, EvalContext};
use crate::server::{ServerParts, ServerSettings};

/// `aip schema-hash [--json] FILE` or `aip schema-hash [--json] -- CMD [ARGS…]`
#[derive(Debug, Args)]
pub struct SchemaHashArgs {
    /// A saved `tools/list` answer: a JSON-RPC response, its `result` (`{"tools": […]}`), a bare
    /// array of tools, or an array of pages; `-` reads stdin.
    #[arg(required_unless_present = "command", conflicts_with = "command")]
    pub file: Option<PathBuf>,
    /// Print JSON (`[{"tool", "schema_hash"}]`) instead of `HASH  NAME` lines.
    #[arg(long)]
    pub json: bool,
    /// Per-message timeout when talking to a server.
    #[arg(long, default_value = "10s", value_parser = parse_secs)]
    pub timeout: Duration,
    /// Start this MCP server (without sandbox: it runs as you) and ask it for its tools.
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// `aip server --policy FILE [--listen ADDR] [--admin-token-file FILE] [--audit FILE] …`
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// The policy to validate against (its `spec.server` gives listen address, TLS and paths).
    #[arg(long, value_name = "FILE")]
    pub policy: PathBuf,
    /// Override `spec.server.listen` (`127.0.0.1:9443`, `:9443` — TLS required off loopback).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// File holding the bearer credential that authorizes `POST /v1/revoke` (without it,
    /// revocation over HTTP is disabled). Never an identity token.
    #[arg(long, value_name = "FILE", env = "AIP_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Append decision and revocation records to this JSON Lines file (mode 0600).
    #[arg(long, value_name = "FILE")]
    pub audit: Option<PathBuf>,
    /// Ed25519 public key (PEM) that `metadata.signature` of the policy must verify with.
    #[arg(long, value_name = "KEY", env = "AIP_POLICY_PUBKEY")]
    pub policy_pubkey: Option<PathBuf>,
    /// Refuse a policy without `metadata.signature`.
    #[arg(long)]
    pub require_signed_policy: bool,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = crate::server::config::DEFAULT_MAX_BODY)]
    pub max_body: usize,
}

pub fn server(args: ServerArgs) -> anyhow::Result<ExitCode> {
    let policy = policy::load_file(&args.policy).map_err(|e| anyhow::anyhow!("{e}"))?;
    let key = args
        .policy_pubkey
        .as_deref()
        .map(identity::PolicyVerifyingKey::from_file)
        .transpose()?;
    match identity::check_policy_signature(
        policy.document(),
        key.as_ref(),
        args.require_signed_policy,
    ) {
        Ok(identity::SignatureStatus::Verified) => say(&format!(
            "policy signature verified ({})",
            key.as_ref().map(|k| k.key_id()).unwrap_or_default()
        )),
        Ok(identity::SignatureStatus::Unsigned) => {}
        Err(e) => bail!(
            "{}: policy signature invalid: {}\n  hint: verify with `aip policy verify --pubkey KEY {}`",
            args.policy.display(),
            e.reason(),
            args.policy.display()
        ),
    }
    for w in policy.warnings() {
        say(&format!("warning: {w}"));
    }
    let admin_token = match &args.admin_token_file {
        Some(p) => {
            let t = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            let t = t.trim().to_string();
            if t.len() < 16 {
                bail!(
                    "{}: the admin credential must be at least 16 characters",
                    p.display()
                );
            }
            Some(t)
        }
        None => None,
    };
    let server_cfg = policy.server().cloned();
    let mut settings = match &server_cfg {
        Some(s) => ServerSettings::from_policy(s, policy.identity()),
        None => ServerSettings {
            listen: "127.0.0.1:9443".into(),
            tls: None,
            endpoints: Default::default(),
            admin_token: None,
            limits: Default::default(),
            max_body_bytes: args.max_body,
            request_timeout: Duration::from_secs(10),
        },
    };
    if let Some(l) = &args.listen {
        settings.listen = l.clone();
    }
    settings.admin_token = admin_token;
    settings.max_body_bytes = args.max_body;
    let hash = identity::policy_hash(policy.document())?;
    let id_cfg = crate::server::identity_config(&policy)?;
    let mut ctx = EvalContext::from_process();
    if let Some(a) = &args.audit {
        ctx = ctx.with_protected_file(a);
    }
    let audit: Option<Arc<dyn audit::Sink>> = match &args.audit {
        Some(p) => Some(Arc::new(audit::JsonlSink::open(p)?)),
        None => None,
    };
    let policy_path = args.policy.clone();
    let engine = Arc::new(Engine::new(Arc::new(policy), ctx));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let tokens = match id_cfg {
            None => None,
            Some(cfg) => {
                if cfg.key_source == identity::KeySource::Generate {
                    say("warning: keys.key_source is generate: only tokens signed by this process validate; \
                         share a key file (keys.key_source: file) with the supervisors that issue tokens");
                }
                if cfg.session_binding != identity::BindingMode::Policy {
                    say(&format!(
                        "note: session_binding {} binds tokens to the issuing supervisor, which a standalone \
                         server cannot observe; it checks signature, policy hash, audience, expiry, revocation and replay",
                        cfg.session_binding.as_str()
                    ));
                }
                let svc = identity::TokenService::builder(cfg)
                    .policy_hash(hash.clone())
                    .policy_path(&policy_path)
                    .binding_check(identity::BindingCheck::IssuedElsewhere)
                    .build_connected()
                    .await?;
                Some(Arc::new(svc))
            }
        };
        let parts = ServerParts { engine, policy_hash: hash, tokens, audit };
        let handle = crate::server::start(settings, parts).await?;
        say(&format!(
            "aip server: listening on {}://{}",
            if handle.is_tls() { "https" } else { "http" },
            handle.local_addr()
        ));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        say("aip server: shutting down");
        handle.shutdown().await;
        Ok::<_, anyhow::Error>(ExitCode::SUCCESS)
    })
}

fn say(msg: &str) {
    #[allow(clippy::print_stderr)]
    {
        eprintln!("{msg}");
    }
}

fn schema_hash_cmd_output(tools: &[Value], as_json: bool) -> String {
    if as_json {
        let rows: Vec<Value> = tools
            .iter()
            .map(|t| json!({"tool": t.get("name").cloned().unwrap_or(Value::Null), "schema_hash": identity::schema_hash(t)}))
            .collect();
        let mut s = serde_json::to_string_pretty(&rows).unwrap_or_default();
        s.push('\n');
        s
    } else {
        tools
            .iter()
            .map(|t| {
                format!(
                    "{}  {}\n",
                    identity::schema_hash(t),
                    t.get("name").and_then(Value::as_str).unwrap_or("<unnamed>")
                )
            })
            .collect()
    }
}

pub fn schema_hash(args: SchemaHashArgs) -> anyhow::Result<ExitCode> {
    let tools = if args.command.is_empty() {
        let path = args
            .file
            .as_deref()
            .context("a FILE or `-- CMD…` is required")?;
        let text = if path == std::path::Path::new("-") {
            let mut s = String::new();
            std::io::Read::read_to_string(
                &mut std::io::Read::take(std::io::stdin(), MAX_MESSAGE_BYTES as u64),
                &mut s,
            )?;
            s
        } else {
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?
        };
        let doc: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        tools_from_document(doc)?
    } else {
        tools_from_server(&args.command, args.timeout)?
    };
    let mut names = std::collections::HashSet::new();
    for t in &tools {
        let name = t.get("name").and_then(Value::as_str).unwrap_or("");
        if !names.insert(name.to_string()) {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("aip: warning: tool {name:?} is listed more than once");
            }
        }
    }
    #[allow(clippy::print_stdout)]
    {
        print!("{}", schema_hash_cmd_output(&tools, args.json));
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (e.g. 10s, 500ms, 1m)"))?;
    if !(v.is_finite() && v > 0.0) {
        return Err(format!("invalid duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(v * mult))
}

/// Accepts the shapes documented on [`SchemaHashArgs::file`].
fn tools_from_document(doc: Value) -> anyhow::Result<Vec<Value>> {
    fn page(v: Value) -> anyhow::Result<Vec<Value>> {
        let v = match v {
            Value::Object(mut o) if o.contains_key("result") => {
                o.remove("result").unwrap_or(Value::Null)
            }
            Value::Object(o) if o.contains_key("error") => {
                bail!("the saved answer is a JSON-RPC error")
            }
            other => other,
        };
        match v {
            Value::Object(mut o) => match o.remove("tools") {
                Some(Value::Array(tools)) => Ok(tools),
                _ => bail!("expected {{\"tools\": [...]}}"),
            },
            _ => bail!("expected a tools/list result"),
        }
    }
    match doc {
        Value::Array(items) if items.iter().all(|i| i.get("name").is_some()) => Ok(items),
        Value::Array(pages) => pages.into_iter().try_fold(Vec::new(), |mut acc, p| {
            acc.extend(page(p)?);
            Ok(acc)
        }),
        other => page(other),
    }
}

/// Largest line accepted from a server.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Most `tools/list` pages followed.
const MAX_PAGES: usize = 1000;

const MODERN_VERSION: &str = "2026-07-28";
const LEGACY_VERSION: &str = "2025-11-25";

struct Peer {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    lines: std::sync::mpsc::Receiver<anyhow::Result<Value>>,
    next_id: u64,
    modern: bool,
}

/// Why a request got no result.
enum Failure {
    Rpc(Value),
    Other(anyhow::Error),
}

impl Drop for Peer {
    fn drop(&mut self) {
        drop(self.stdin.take());
        // Give a well-behaved server a moment to exit on stdin EOF, then make sure.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while std::time::Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Peer {
    fn spawn(command: &[String]) -> anyhow::Result<Self> {
        let (program, args) = command.split_first().context("empty command")?;
        let mut child = std::process::Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {program}"))?;
        let stdin = child.stdin.take().context("no stdin pipe")?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let (tx, lines) = std::sync::mpsc::sync_channel(64);
        std::thread::spawn(move || read_messages(stdout, &tx));
        Ok(Self {
            child,
            stdin: Some(stdin),
            lines,
            next_id: 0,
            modern: true,
        })
    }

    fn send(&mut self, msg: &Value) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(msg)?;
        line.push(b'\n');
        let stdin = self.stdin.as_mut().context("stdin already closed")?;
        stdin.write_all(&line).context("server closed its stdin")?;
        stdin.flush()?;
        Ok(())
    }

    fn meta(&self) -> Value {
        json!({
            "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": {"name": "aip-schema-hash", "version": env!("CARGO_PKG_VERSION")},
        })
    }

    fn request(
        &mut self,
        method: &str,
        mut params: Value,
        timeout: Duration,
    ) -> Result<Value, Failure> {
        self.next_id += 1;
        let id = self.next_id;
        if self.modern
            && let Some(p) = params.as_object_mut()
        {
            p.insert("_meta".into(), self.meta());
        }
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .map_err(Failure::Other)?;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let msg = match self.lines.recv_timeout(left) {
                Ok(r) => r.map_err(Failure::Other)?,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    return Err(Failure::Other(anyhow::anyhow!(
                        "no answer to {method} within {timeout:?}"
                    )));
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(Failure::Other(anyhow::anyhow!(
                        "server exited (stdout closed)"
                    )));
                }
            };
            if msg.get("method").is_some() {
                // Server→client request: we offer no client features. Notifications: ignored.
                if let Some(req_id) = msg.get("id") {
                    let reply = json!({"jsonrpc": "2.0", "id": req_id,
                        "error": {"code": -32601, "message": "Method not found"}});
                    self.send(&reply).map_err(Failure::Other)?;
                }
                continue;
            }
            if msg.get("id") != Some(&json!(id)) {
                continue;
            }
            if let Some(err) = msg.get("error") {
                return Err(Failure::Rpc(err.clone()));
            }
            return msg.get("result").cloned().ok_or_else(|| {
                Failure::Other(anyhow::anyhow!(
                    "{method}: response has neither result nor error"
                ))
            });
        }
    }
}

/// Reader thread: one JSON value per line, bounded; stops at EOF or the first error.
fn read_messages(
    stdout: std::process::ChildStdout,
    tx: &std::sync::mpsc::SyncSender<anyhow::Result<Value>>,
) {
    let mut reader = std::io::BufReader::new(stdout);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = match std::io::Read::take(&mut reader, MAX_MESSAGE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(n) => n,
            Err(e) => {
                let _ = tx.send(Err(e.into()));
                return;
            }
        };
        if n == 0 {
            return;
        }
        if line.len() > MAX_MESSAGE_BYTES {
            let _ = tx.send(Err(anyhow::anyhow!(
                "server sent a message larger than {MAX_MESSAGE_BYTES} bytes"
            )));
            return;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let msg = serde_json::from_slice(&line).context("server wrote a line that is not JSON");
        let stop = msg.is_err();
        if tx.send(msg).is_err() || stop {
            return;
        }
    }
}

fn tools_from_server(command: &[String], timeout: Duration) -> anyhow::Result<Vec<Value>> {
    let mut peer = Peer::spawn(command)?;

    // Both eras: probe `server/discover` (2026-07-28); on an error answer or silence fall back
    // to the `initialize` handshake (≤ 2025-11-25).
    let probe = peer.request(
        "server/discover",
        json!({}),
        timeout.min(Duration::from_secs(5)),
    );
    if probe.is_err() {
        if !matches!(peer.child.try_wait(), Ok(None)) {
            bail!("server exited during the handshake");
        }
        peer.modern = false;
        let init = json!({"protocolVersion": LEGACY_VERSION, "capabilities": {},
            "clientInfo": {"name": "aip-schema-hash", "version": env!("CARGO_PKG_VERSION")}});
        match peer.request("initialize", init, timeout) {
            Ok(_) => {}
            Err(Failure::Rpc(e)) => bail!("server refused initialize: {e}"),
            Err(Failure::Other(e)) => return Err(e.context("initialize failed")),
        }
        peer.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))?;
    }

    let mut tools = Vec::new();
    let mut cursor: Option<Value> = None;
    for _ in 0..MAX_PAGES {
        let params = match &cursor {
            Some(c) => json!({"cursor": c}),
            None => json!({}),
        };
        let page = match peer.request("tools/list", params, timeout) {
            Ok(p) => p,
            Err(Failure::Rpc(e)) => bail!("tools/list failed: {e}"),
            Err(Failure::Other(e)) => return Err(e.context("tools/list failed")),
        };
        match page.get("tools") {
            Some(Value::Array(t)) => tools.extend(t.iter().cloned()),
            _ => bail!("tools/list result has no tools array"),
        }
        cursor = page.get("nextCursor").filter(|c| !c.is_null()).cloned();
        if cursor.is_none() {
            return Ok(tools);
        }
    }
    bail!("server returned more than {MAX_PAGES} tools/list pages")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_tools_from_document_shapes() {
        let tools = json!([{"name": "a", "inputSchema": {"type": "object"}}]);
        let n = |v: Value| tools_from_document(v).unwrap().len();
        assert_eq!(n(tools.clone()), 1);
        assert_eq!(n(json!({"tools": tools.clone()})), 1);
        assert_eq!(
            n(json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": tools.clone()}})),
            1
        );
        assert_eq!(
            n(
                json!([{"result": {"tools": tools.clone(), "nextCursor": "x"}}, {"tools": tools.clone()}])
            ),
            2
        );
        assert!(tools_from_document(json!({"error": {"code": 1}})).is_err());
        assert!(tools_from_document(json!({"nope": 1})).is_err());
    }

    #[test]
    fn test_output_formats() {
        let tools = vec![json!({"name": "a", "inputSchema": {"type": "object"}})];
        let line = schema_hash_cmd_output(&tools, false);
        assert!(line.starts_with("sha256:") && line.ends_with("  a\n"));
        let j: Value = serde_json::from_str(&schema_hash_cmd_output(&tools, true)).unwrap();
        assert_eq!(j[0]["tool"], "a");
        assert_eq!(
            j[0]["schema_hash"],
            Value::String(crate::identity::schema_hash(&tools[0]))
        );
    }

    #[test]
    fn test_parse_secs() {
        assert_eq!(parse_secs("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_secs("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_secs("2"), Ok(Duration::from_secs(2)));
        assert!(parse_secs("0s").is_err());
        assert!(parse_secs("x").is_err());
    }
}
