//! Level `server` (v1alpha2 HTTP validation endpoints, `server/*.yaml`). Every test starts the
//! real validation server (`server::start`) for its policy on a loopback port chosen by the
//! kernel — the vectors' ports (9443, 9444) are remapped to it — and sends each
//! `http_request` over a real TCP socket with hyper's HTTP/1.1 client. Identity tokens come
//! from the server's own `TokenService` (the harness's "mint" hook) on a manual clock, so
//! `wait: "2s"` takes no time. Shapes: `http_request` + `expected` (with optional `setup`),
//! `sequence` and `tests` lists of them, and `policy_sequence` + `steps` (several servers at
//! once, sharing one signing key, as auth-030 needs).
//!
//! `expected`: `http_status` (exact), `body` (subset; `">0"`, `">=0"`, `"!null"`, and the
//! pseudo-field `policy_hash_length`), `content_type` (prefix), `body_contains` (substrings).
//!
//! Must not: pass a request whose answer it did not compare, or talk to anything but the
//! server it started.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};

use super::Outcome;
use super::compare::{show, subset};
use super::decision;
use super::vectors::{Test, VectorFile};
use crate::identity::{
    Binding, Clock, KeyRing, ManualClock, MemoryStore, NonceStore, TokenService, policy_hash,
};
use crate::policy::{load_str, parse_duration};
use crate::server::config::{ServerSettings, identity_config};
use crate::server::{ServerHandle, ServerParts, start};

const EXPECTED: &[&str] = &["http_status", "body", "content_type", "body_contains"];

pub fn run(file: &VectorFile, test: &Test<'_>) -> Outcome {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return Outcome::Fail(format!("cannot start a runtime: {e}")),
    };
    let r = rt.block_on(async {
        let mut h = Harness::new();
        let r = run_test(&mut h, file, test).await;
        h.stop().await;
        r
    });
    match r {
        Ok(()) => Outcome::Pass,
        Err(e) => Outcome::Fail(e),
    }
}

struct Running {
    /// The port the policy asked for (`spec.server.listen`), as the vectors name it.
    vector_port: u16,
    handle: ServerHandle,
    tokens: Option<Arc<TokenService>>,
}

struct Harness {
    clock: ManualClock,
    store: Arc<dyn NonceStore>,
    keys: Option<Arc<KeyRing>>,
    servers: Vec<Running>,
    /// Index of the server `get_valid_token` mints for (the last one loaded).
    current: usize,
    vars: HashMap<String, String>,
}

impl Harness {
    fn new() -> Self {
        let clock = ManualClock::starting_now();
        let store: Arc<dyn NonceStore> = Arc::new(MemoryStore::new(Arc::new(clock.clone())));
        Self {
            clock,
            store,
            keys: None,
            servers: Vec::new(),
            current: 0,
            vars: HashMap::new(),
        }
    }

    async fn stop(&mut self) {
        for s in self.servers.drain(..) {
            s.handle.shutdown().await;
        }
    }

    /// Starts the server of `text` on 127.0.0.1:0.
    async fn load(&mut self, text: &str, origin: &str) -> Result<(), String> {
        let policy =
            load_str(text, origin).map_err(|e| format!("the policy does not load: {e}"))?;
        let server_cfg = policy
            .server()
            .cloned()
            .ok_or("the policy has no spec.server")?;
        let vector_port = server_cfg
            .listen
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .ok_or("spec.server.listen has no port")?;
        let hash = policy_hash(policy.document()).map_err(|e| e.to_string())?;
        let tokens =
            match identity_config(&policy).map_err(|e| format!("identity configuration: {e}"))? {
                None => None,
                Some(cfg) => {
                    let keys = match &self.keys {
                        Some(k) => k.clone(),
                        None => {
                            let k = Arc::new(
                                KeyRing::from_config(&cfg, self.clock.now())
                                    .map_err(|e| e.to_string())?,
                            );
                            self.keys = Some(k.clone());
                            k
                        }
                    };
                    let svc = TokenService::builder(cfg)
                        .policy_hash(hash.clone())
                        .binding(Binding::current(Path::new(
                            "/etc/aip/conformance-policy.yaml",
                        )))
                        .keys(keys)
                        .store(self.store.clone())
                        .clock(Arc::new(self.clock.clone()))
                        .build()
                        .map_err(|e| format!("token service: {e}"))?;
                    Some(Arc::new(svc))
                }
            };
        let env = {
            let doc = json!({"policy": text});
            let file = VectorFile {
                rel: origin.to_string(),
                doc: json!({"tests": [doc.clone()]}),
            };
            decision::env(&file, &Test { value: &doc })?
        };
        let mut settings = ServerSettings::from_policy(&server_cfg, policy.identity());
        // Port remapping: the kernel picks a free loopback port.
        settings.listen = "127.0.0.1:0".into();
        settings.tls = None;
        let parts = ServerParts {
            engine: Arc::new(env.engine),
            policy_hash: hash,
            tokens: tokens.clone(),
            audit: None,
        };
        let handle = start(settings, parts)
            .await
            .map_err(|e| format!("server did not start: {e}"))?;
        self.servers.push(Running {
            vector_port,
            handle,
            tokens,
        });
        self.current = self.servers.len() - 1;
        Ok(())
    }

    fn mint(&self) -> Result<String, String> {
        let s = self
            .servers
            .get(self.current)
            .ok_or("no server is running")?;
        let t = s
            .tokens
            .as_ref()
            .ok_or("get_valid_token: the policy does not enable identity")?;
        Ok(t.fresh_token().map_err(|e| e.to_string())?.token.token)
    }

    fn port(&self, vector_port: Option<u64>) -> Result<u16, String> {
        let s = match vector_port {
            Some(p) => self
                .servers
                .iter()
                .find(|s| u64::from(s.vector_port) == p)
                .ok_or_else(|| format!("no server was started for port {p}"))?,
            None => self.servers.first().ok_or("no server is running")?,
        };
        Ok(s.handle.local_addr().port())
    }

    /// `${var}` / `${VALID_TOKEN}` substitution in every string of `v`. `VALID_TOKEN` is minted
    /// once per request so a header and a body naming it carry the same token.
    fn substitute(&self, v: &Value, valid: &mut Option<String>) -> Result<Value, String> {
        Ok(match v {
            Value::String(s) => Value::String(self.subst_str(s, valid)?),
            Value::Array(a) => Value::Array(
                a.iter()
                    .map(|x| self.substitute(x, valid))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(o) => {
                let mut m = Map::new();
                for (k, x) in o {
                    m.insert(k.clone(), self.substitute(x, valid)?);
                }
                Value::Object(m)
            }
            other => other.clone(),
        })
    }

    fn subst_str(&self, s: &str, valid: &mut Option<String>) -> Result<String, String> {
        let mut out = String::new();
        let mut rest = s;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let end = rest[start..]
                .find('}')
                .ok_or_else(|| format!("unterminated `${{` in {s:?}"))?
                + start;
            let name = &rest[start + 2..end];
            let value = if name == "VALID_TOKEN" {
                if valid.is_none() {
                    *valid = Some(self.mint()?);
                }
                valid.clone().unwrap_or_default()
            } else {
                self.vars
                    .get(name)
                    .cloned()
                    .ok_or_else(|| format!("`${{{name}}}` was never captured"))?
            };
            out.push_str(&value);
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    async fn setup(&mut self, actions: &Value) -> Result<(), String> {
        for (i, a) in actions
            .as_array()
            .ok_or("`setup` must be a list")?
            .iter()
            .enumerate()
        {
            self.action(a)
                .await
                .map_err(|e| format!("setup {}: {e}", i + 1))?;
        }
        Ok(())
    }

    /// `get_valid_token` (+ `capture {token: var}`), `wait` (+ `duration`).
    async fn action(&mut self, a: &Value) -> Result<(), String> {
        let obj = a.as_object().ok_or("must be a mapping")?;
        match obj.get("action").and_then(Value::as_str) {
            Some("get_valid_token") => {
                only(obj, &["action", "capture"])?;
                let tok = self.mint()?;
                let cap = obj
                    .get("capture")
                    .and_then(Value::as_object)
                    .ok_or("`get_valid_token` needs `capture`")?;
                for (what, var) in cap {
                    if what != "token" {
                        return Err(format!("cannot capture `{what}`"));
                    }
                    self.vars.insert(
                        var.as_str().ok_or("capture names are text")?.to_string(),
                        tok.clone(),
                    );
                }
            }
            Some("wait") => {
                only(obj, &["action", "duration"])?;
                let d = obj
                    .get("duration")
                    .and_then(Value::as_str)
                    .ok_or("`wait` needs `duration`")?;
                self.clock
                    .advance(parse_duration(d).map_err(|e| e.to_string())?);
            }
            other => {
                return Err(format!(
                    "unsupported action {}",
                    show(other.map(Value::from).as_ref())
                ));
            }
        }
        Ok(())
    }

    /// Sends one `http_request` and compares the answer with `expected`.
    async fn exchange(&mut self, req: &Value, expected: &Value) -> Result<(), String> {
        let req = req.as_object().ok_or("`http_request` must be a mapping")?;
        only(req, &["method", "path", "headers", "body", "port"])?;
        let exp = expected
            .as_object()
            .filter(|e| !e.is_empty())
            .ok_or("`expected` must be a non-empty mapping")?;
        only(exp, EXPECTED)?;
        let mut valid = None;
        let method = req
            .get("method")
            .and_then(Value::as_str)
            .ok_or("`method` is required")?;
        let path = req
            .get("path")
            .and_then(Value::as_str)
            .ok_or("`path` is required")?;
        let port = self.port(
            req.get("port")
                .map(|p| p.as_u64().ok_or("`port` must be a number"))
                .transpose()?,
        )?;
        let mut headers: Vec<(String, String)> = Vec::new();
        if let Some(h) = req.get("headers") {
            for (k, v) in h.as_object().ok_or("`headers` must be a mapping")? {
                let v = v.as_str().ok_or("header values are text")?;
                headers.push((k.clone(), self.subst_str(v, &mut valid)?));
            }
        }
        let body = match req.get("body") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(self.subst_str(s, &mut valid)?.into_bytes()),
            Some(v) => Some(
                serde_json::to_vec(&self.substitute(v, &mut valid)?).map_err(|e| e.to_string())?,
            ),
        };
        if body.is_some()
            && !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            headers.push(("Content-Type".into(), "application/json".into()));
        }
        let (status, ctype, text) = http(port, method, path, &headers, body).await?;
        if let Some(s) = exp.get("http_status")
            && s.as_u64() != Some(u64::from(status))
        {
            return Err(format!("expected HTTP {s}, got {status}: {text}"));
        }
        if let Some(c) = exp.get("content_type") {
            let c = c.as_str().ok_or("`content_type` must be text")?;
            if !ctype.starts_with(c) {
                return Err(format!("expected Content-Type {c}…, got {ctype:?}"));
            }
        }
        if let Some(list) = exp.get("body_contains") {
            for s in list.as_array().ok_or("`body_contains` must be a list")? {
                let s = s.as_str().ok_or("`body_contains` entries are text")?;
                if !text.contains(s) {
                    return Err(format!("body does not contain {s:?}"));
                }
            }
        }
        if let Some(want) = exp.get("body") {
            let got: Value =
                serde_json::from_str(&text).map_err(|_| format!("body is not JSON: {text}"))?;
            let mut want = want
                .as_object()
                .cloned()
                .ok_or("`expected.body` must be a mapping")?;
            if let Some(n) = want.remove("policy_hash_length") {
                let len = got.get("policy_hash").and_then(Value::as_str).map(str::len);
                if n.as_u64() != len.map(|l| l as u64) {
                    return Err(format!(
                        "expected policy_hash_length {n}, got {}",
                        show(got.get("policy_hash"))
                    ));
                }
            }
            subset(&Value::Object(want), &got, "body")?;
        }
        Ok(())
    }
}

fn only(obj: &Map<String, Value>, known: &[&str]) -> Result<(), String> {
    match obj.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(format!("unsupported field `{k}`")),
        None => Ok(()),
    }
}

async fn run_test(h: &mut Harness, file: &VectorFile, test: &Test<'_>) -> Result<(), String> {
    if let Some(seq) = test.get("policy_sequence") {
        if let Some(k) = test
            .unknown_keys(&["id", "description", "note", "policy_sequence", "steps"])
            .first()
        {
            return Err(format!("unsupported test field `{k}`"));
        }
        let mut named: HashMap<String, String> = HashMap::new();
        for p in seq.as_array().ok_or("`policy_sequence` must be a list")? {
            let name = p
                .get("name")
                .and_then(Value::as_str)
                .ok_or("policies need a `name`")?;
            let content = p
                .get("content")
                .and_then(Value::as_str)
                .ok_or("policies need `content`")?;
            named.insert(name.to_string(), content.to_string());
        }
        let steps = test
            .get("steps")
            .and_then(Value::as_array)
            .filter(|s| !s.is_empty())
            .ok_or("`steps` must be a non-empty list")?;
        let mut checked = 0;
        for (i, step) in steps.iter().enumerate() {
            let err = |e: String| format!("step {}: {e}", i + 1);
            let obj = step
                .as_object()
                .ok_or_else(|| err("must be a mapping".into()))?;
            if obj.get("action").and_then(Value::as_str) == Some("load_policy") {
                only(obj, &["action", "policy"]).map_err(err)?;
                let name = obj
                    .get("policy")
                    .and_then(Value::as_str)
                    .ok_or_else(|| err("needs `policy`".into()))?;
                let text = named
                    .get(name)
                    .ok_or_else(|| err(format!("no policy named {name}")))?
                    .clone();
                h.load(&text, &format!("{}#{name}", test.origin(file)))
                    .await
                    .map_err(err)?;
            } else if obj.contains_key("action") {
                h.action(step).await.map_err(err)?;
            } else {
                only(obj, &["http_request", "expected"]).map_err(err)?;
                let (Some(r), Some(e)) = (obj.get("http_request"), obj.get("expected")) else {
                    return Err(err("needs `http_request` and `expected`".into()));
                };
                h.exchange(r, e).await.map_err(err)?;
                checked += 1;
            }
        }
        return if checked == 0 {
            Err("no request was checked".into())
        } else {
            Ok(())
        };
    }

    if let Some(k) = test
        .unknown_keys(&[
            "id",
            "description",
            "note",
            "policy",
            "setup",
            "http_request",
            "expected",
            "sequence",
            "tests",
        ])
        .first()
    {
        return Err(format!("unsupported test field `{k}`"));
    }
    let text = test.policy()?.ok_or("server tests need a policy")?;
    h.load(text, &test.origin(file)).await?;
    if let Some(s) = test.get("setup") {
        h.setup(s).await?;
    }
    let mut pairs: Vec<(&Value, &Value)> = Vec::new();
    if let (Some(r), Some(e)) = (test.get("http_request"), test.get("expected")) {
        pairs.push((r, e));
    } else if test.get("http_request").is_some() || test.get("expected").is_some() {
        return Err("`http_request` and `expected` go together".into());
    }
    for key in ["sequence", "tests"] {
        if let Some(list) = test.get(key) {
            for (i, item) in list
                .as_array()
                .ok_or_else(|| format!("`{key}` must be a list"))?
                .iter()
                .enumerate()
            {
                let obj = item
                    .as_object()
                    .ok_or_else(|| format!("{key} {}: must be a mapping", i + 1))?;
                only(obj, &["http_request", "expected"])
                    .map_err(|e| format!("{key} {}: {e}", i + 1))?;
                match (obj.get("http_request"), obj.get("expected")) {
                    (Some(r), Some(e)) => pairs.push((r, e)),
                    _ => {
                        return Err(format!(
                            "{key} {}: needs `http_request` and `expected`",
                            i + 1
                        ));
                    }
                }
            }
        }
    }
    if pairs.is_empty() {
        return Err("the test sends no request".into());
    }
    for (i, (r, e)) in pairs.into_iter().enumerate() {
        h.exchange(r, e)
            .await
            .map_err(|m| format!("request {}: {m}", i + 1))?;
    }
    Ok(())
}

/// One HTTP/1.1 exchange with 127.0.0.1:`port`; returns status, Content-Type and body text.
async fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: Option<Vec<u8>>,
) -> Result<(u16, String, String), String> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let conn = tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, format!("127.0.0.1:{port}"));
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(std::time::Duration::from_secs(10), sender.send_request(req))
        .await
        .map_err(|_| "no answer within 10s".to_string())?
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    drop(sender);
    conn.abort();
    Ok((status, ctype, String::from_utf8_lossy(&bytes).into_owned()))
}
