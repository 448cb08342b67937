//! Level `identity` (v1alpha2 tokens and their validation, `identity/*.yaml`). Each test runs
//! against the real policy engine and a real `identity::TokenService` on a manual clock (so
//! `wait: "4m"` takes no time), with signed tokens and the memory nonce store. Shapes:
//!
//! - `input` + `expected`: one tool call; `expected` may name the decision, error code/message,
//!   `token_error`, `token_generated`, `token_fields`, and `token` pseudo-fields
//!   (`nonce_length`, `nonce_unique`, `ttl_seconds`, `policy_hash_length`,
//!   `policy_hash_deterministic`, or any claim by name);
//! - `sequence`: calls with `wait`, `capture`, and `token_id` labels / `session_preserved` /
//!   `session_id`;
//! - `policy_sequence`: `issue_token` / `change_policy` (same session, new policy hash) /
//!   `use_old_token`;
//! - `test_type` + `steps`: `issue_token` / `use_token` / `replay_token` in simulated processes
//!   (`process: A|B`: same keys and nonce store, different `binding.process_id`);
//!   `context_change` (no steps in the vector) is run as its note describes: a `strict` token
//!   must be refused after any change of process id, policy path or hostname;
//! - `policies`: policy hashes compared (`different_from_<name>` / `same_as_<name>`).
//!
//! Token conventions (digest §10.7): no `token` key = present the session's current token;
//! `null` or `""` = no token; `${VALID_TOKEN}` = a fresh token; `${var}` = a captured one.
//!
//! Must not: pass a test with an expectation it does not compare.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use serde_json::{Value, json};

use super::Outcome;
use super::compare::{equal, show};
use super::decision;
use super::vectors::{Test, VectorFile};
use crate::identity::{
    Binding, Clock, IssuedToken, KeyRing, ManualClock, MemoryStore, NonceStore,
    TOKEN_REQUIRED_MESSAGE, TokenService, codes, policy_hash,
};
use crate::policy::{load_str, parse_duration};
use crate::server::config::identity_config;

const SINGLE_EXPECTED: &[&str] = &[
    "decision",
    "error_code",
    "error_message",
    "token_error",
    "token_generated",
    "token_fields",
    "token",
    "violation",
];

pub fn run(file: &VectorFile, test: &Test<'_>) -> Outcome {
    let r = if test.get("policies").is_some() {
        policies(file, test)
    } else if test.get("policy_sequence").is_some() {
        policy_sequence(file, test)
    } else if test.get("test_type").is_some() {
        steps(file, test)
    } else if test.get("sequence").is_some() {
        sequence(file, test)
    } else {
        single(file, test)
    };
    match r {
        Ok(()) => Outcome::Pass,
        Err(e) => Outcome::Fail(e),
    }
}

/// One policy, its engine, and token services per simulated process.
struct Harness {
    env: decision::Env,
    text: String,
    origin: String,
    hash: String,
    first_tool: Option<String>,
    keys: Option<Arc<KeyRing>>,
    store: Arc<dyn NonceStore>,
    clock: ManualClock,
    processes: HashMap<String, TokenService>,
    vars: HashMap<String, String>,
}

impl Harness {
    fn new(text: &str, origin: &str) -> Result<Self, String> {
        let clock = ManualClock::starting_now();
        let store: Arc<dyn NonceStore> = Arc::new(MemoryStore::new(Arc::new(clock.clone())));
        let mut h = Harness {
            env: engine_env(text, origin)?,
            text: String::new(),
            origin: origin.to_string(),
            hash: String::new(),
            first_tool: None,
            keys: None,
            store,
            clock,
            processes: HashMap::new(),
            vars: HashMap::new(),
        };
        h.load(text)?;
        Ok(h)
    }

    /// Loads `text` as the policy in force. The first load creates process `A`; later loads
    /// keep every process's session and keys and only change the policy hash (a reload).
    fn load(&mut self, text: &str) -> Result<(), String> {
        let policy =
            load_str(text, &self.origin).map_err(|e| format!("the policy does not load: {e}"))?;
        self.hash = policy_hash(policy.document()).map_err(|e| e.to_string())?;
        self.first_tool = policy
            .spec()
            .allowed_tools
            .as_ref()
            .and_then(|t| t.first().cloned());
        let cfg = identity_config(&policy).map_err(|e| format!("identity configuration: {e}"))?;
        self.env = engine_env(text, &self.origin)?;
        self.text = text.to_string();
        match cfg {
            None => self.processes.clear(),
            Some(cfg) if self.processes.is_empty() => {
                let keys = Arc::new(
                    KeyRing::from_config(&cfg, self.clock.now())
                        .map_err(|e| format!("identity keys: {e}"))?,
                );
                self.keys = Some(keys);
                let svc = self.service(cfg, binding("A"))?;
                self.processes.insert("A".into(), svc);
            }
            Some(_) => {
                for svc in self.processes.values() {
                    svc.set_policy_hash(self.hash.clone());
                }
            }
        }
        Ok(())
    }

    fn service(
        &self,
        cfg: crate::identity::IdentityConfig,
        b: Binding,
    ) -> Result<TokenService, String> {
        let keys = self.keys.clone().ok_or("no keys")?;
        TokenService::builder(cfg)
            .policy_hash(self.hash.clone())
            .binding(b)
            .keys(keys)
            .store(self.store.clone())
            .clock(Arc::new(self.clock.clone()))
            .build()
            .map_err(|e| format!("token service: {e}"))
    }

    /// The token service of simulated process `p` (created on first use, same policy).
    fn process(&mut self, p: &str) -> Result<&TokenService, String> {
        if !self.processes.contains_key(p) {
            let a = self
                .processes
                .get("A")
                .ok_or("identity is not enabled by this policy")?;
            let svc = self.service(a.config().clone(), binding(p))?;
            self.processes.insert(p.to_string(), svc);
        }
        self.processes
            .get(p)
            .ok_or_else(|| "no such process".to_string())
    }

    fn identity(&self) -> Option<&TokenService> {
        self.processes.get("A")
    }

    /// `${VALID_TOKEN}` (a fresh token), `${var}`, or the literal.
    fn resolve(&mut self, s: &str, process: &str) -> Result<String, String> {
        let Some(name) = s.strip_prefix("${").and_then(|r| r.strip_suffix('}')) else {
            return Ok(s.to_string());
        };
        if name == "VALID_TOKEN" {
            let svc = self.process(process)?;
            return Ok(svc.fresh_token().map_err(|e| e.to_string())?.token.token);
        }
        self.vars
            .get(name)
            .cloned()
            .ok_or_else(|| format!("`${{{name}}}` was never captured"))
    }

    /// One tool call in `process`: the token step (v1alpha2 step 0) then the engine.
    fn call(&mut self, input: Option<&Value>, process: &str) -> Result<Actual, String> {
        let default_input;
        let input = match input {
            Some(i) => i,
            None => {
                let tool = self
                    .first_tool
                    .clone()
                    .ok_or("a step without input needs a policy with allowed_tools")?;
                default_input = json!({"method": "tools/call", "tool": tool, "args": {}});
                &default_input
            }
        };
        let mut obj = input
            .as_object()
            .cloned()
            .ok_or("`input` must be a mapping")?;
        if obj.get("method").is_none() {
            // `use_token` steps carry only a token: a call of the policy's allowed tool.
            let tool = self
                .first_tool
                .clone()
                .ok_or("input without method needs allowed_tools")?;
            obj.insert("method".into(), json!("tools/call"));
            obj.insert("tool".into(), json!(tool));
            obj.insert("args".into(), json!({}));
        }
        let token_field = obj.remove("token");
        let mut actual = Actual::default();
        if self.identity().is_some() {
            let svc = self.process(process)?;
            let current = svc
                .current_token()
                .map_err(|e| format!("token issuance: {e}"))?
                .token;
            let require = svc.config().require_token;
            let presented = match &token_field {
                None => Some(current.token.clone()),
                Some(Value::Null) => None,
                Some(Value::String(s)) if s.is_empty() => None,
                Some(Value::String(s)) => Some(self.resolve(s, process)?),
                Some(other) => {
                    return Err(format!("`token` must be a string or null, got {other}"));
                }
            };
            actual.token = Some(current);
            match presented {
                None if require => {
                    actual.decision = "BLOCK".into();
                    actual.error_code = Some(codes::TOKEN_REQUIRED);
                    actual.error_message = Some(TOKEN_REQUIRED_MESSAGE.into());
                    actual.violation = true;
                    return Ok(actual);
                }
                None => {}
                Some(t) => {
                    let svc = self.process(process)?;
                    let rt = runtime()?;
                    if let Err(rej) = rt.block_on(svc.validate(&t)) {
                        actual.decision = "BLOCK".into();
                        actual.error_code = Some(rej.error.rpc_code());
                        actual.error_message = Some(rej.error.rpc_message().into());
                        actual.token_error = Some(rej.error.token_error().into());
                        actual.violation = true;
                        return Ok(actual);
                    }
                }
            }
        } else if matches!(&token_field, Some(Value::String(s)) if !s.is_empty()) {
            return Err("the test presents a token but the policy does not enable identity".into());
        }
        let d = decision::evaluate(&self.env, &Value::Object(obj))?;
        actual.decision = d.decision;
        actual.error_code = d.error_code;
        actual.error_message = d.error_message;
        actual.violation = d.violation;
        Ok(actual)
    }
}

#[derive(Debug, Default)]
struct Actual {
    decision: String,
    error_code: Option<i64>,
    error_message: Option<String>,
    token_error: Option<String>,
    violation: bool,
    /// The session's current token after the call (`None`: identity off).
    token: Option<IssuedToken>,
}

fn engine_env(text: &str, origin: &str) -> Result<decision::Env, String> {
    let doc = json!({"policy": text});
    let file = VectorFile {
        rel: origin.to_string(),
        doc: json!({"tests": [doc.clone()]}),
    };
    let t = Test { value: &doc };
    decision::env(&file, &t)
}

/// Simulated process identities: `A` is this process; others differ in `process_id` only.
fn binding(process: &str) -> Binding {
    let mut b = Binding::current(Path::new("/etc/aip/conformance-policy.yaml"));
    let offset: u32 = process
        .bytes()
        .map(u32::from)
        .sum::<u32>()
        .saturating_sub(u32::from(b'A'));
    b.process_id = b.process_id.wrapping_add(offset);
    b
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

fn policy_text<'a>(file: &VectorFile, test: &Test<'a>) -> Result<(&'a str, String), String> {
    match test.policy()? {
        Some(t) => Ok((t, test.origin(file))),
        None => Err("identity tests need a policy".into()),
    }
}

fn check_keys(
    obj: &serde_json::Map<String, Value>,
    known: &[&str],
    what: &str,
) -> Result<(), String> {
    match obj.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(format!("unsupported {what} field `{k}`")),
        None => Ok(()),
    }
}

fn single(file: &VectorFile, test: &Test<'_>) -> Result<(), String> {
    if let Some(k) = test
        .unknown_keys(&["id", "description", "note", "policy", "input", "expected"])
        .first()
    {
        return Err(format!("unsupported test field `{k}`"));
    }
    let (text, origin) = policy_text(file, test)?;
    let mut h = Harness::new(text, &origin)?;
    let input = test.get("input").ok_or("the test has no `input`")?;
    let expected = test
        .get("expected")
        .and_then(Value::as_object)
        .ok_or("`expected` must be a mapping")?;
    check_keys(expected, SINGLE_EXPECTED, "expected")?;
    let actual = h.call(Some(input), "A")?;
    check_call(expected, &actual)?;
    check_token_expectations(&mut h, expected, &actual)
}

/// decision / error_code / error_message / token_error / violation.
fn check_call(expected: &serde_json::Map<String, Value>, a: &Actual) -> Result<(), String> {
    if let Some(d) = expected.get("decision")
        && d.as_str() != Some(a.decision.as_str())
    {
        return Err(format!("expected decision {d}, got {}", a.decision));
    }
    if let Some(c) = expected.get("error_code") {
        let got = a.error_code.map(Value::from).unwrap_or(Value::Null);
        if !equal(c, &got) {
            return Err(format!("expected error_code {c}, got {got}"));
        }
    }
    if let Some(m) = expected.get("error_message") {
        let got = a
            .error_message
            .clone()
            .map(Value::from)
            .unwrap_or(Value::Null);
        if !equal(m, &got) {
            return Err(format!("expected error_message {m}, got {got}"));
        }
    }
    if let Some(t) = expected.get("token_error") {
        let got = a
            .token_error
            .clone()
            .map(Value::from)
            .unwrap_or(Value::Null);
        if !equal(t, &got) {
            return Err(format!("expected token_error {t}, got {got}"));
        }
    }
    if let Some(v) = expected.get("violation")
        && v.as_bool() != Some(a.violation)
    {
        return Err(format!("expected violation {v}, got {}", a.violation));
    }
    Ok(())
}

/// `token_generated`, `token_fields`, `token {…}`.
fn check_token_expectations(
    h: &mut Harness,
    expected: &serde_json::Map<String, Value>,
    a: &Actual,
) -> Result<(), String> {
    if let Some(g) = expected.get("token_generated") {
        let got = a.token.is_some();
        if g.as_bool() != Some(got) {
            return Err(format!("expected token_generated {g}, got {got}"));
        }
    }
    if let Some(fields) = expected.get("token_fields") {
        let fields = fields.as_array().ok_or("`token_fields` must be a list")?;
        let tok = a
            .token
            .as_ref()
            .ok_or("expected token fields, but no token was generated")?;
        let payload = jwt_payload(&tok.token)?;
        for f in fields {
            let name = f.as_str().ok_or("`token_fields` entries must be strings")?;
            if payload.get(name).is_none_or(Value::is_null) {
                return Err(format!("token has no `{name}` field: {payload}"));
            }
        }
    }
    let Some(want) = expected.get("token") else {
        return Ok(());
    };
    let want = want
        .as_object()
        .ok_or("`expected.token` must be a mapping")?;
    let tok = a
        .token
        .clone()
        .ok_or("expected a token, but none was generated")?;
    let payload = jwt_payload(&tok.token)?;
    for (k, v) in want {
        match k.as_str() {
            "nonce_length" => {
                let n = tok.claims.nonce.len();
                if v.as_u64() != Some(n as u64) {
                    return Err(format!("expected nonce_length {v}, got {n}"));
                }
            }
            "policy_hash_length" => {
                let n = tok.claims.policy_hash.len();
                if v.as_u64() != Some(n as u64) {
                    return Err(format!("expected policy_hash_length {v}, got {n}"));
                }
            }
            "ttl_seconds" => {
                let ttl = (tok.expires_at - tok.issued_at).whole_seconds();
                if v.as_i64() != Some(ttl) {
                    return Err(format!("expected ttl_seconds {v}, got {ttl}"));
                }
            }
            "nonce_unique" => {
                if v.as_bool() != Some(true) {
                    return Err(format!("unsupported nonce_unique {v}"));
                }
                let svc = h.process("A")?;
                let mut seen = std::collections::HashSet::from([tok.claims.nonce.clone()]);
                for _ in 0..256 {
                    let n = svc
                        .fresh_token()
                        .map_err(|e| e.to_string())?
                        .token
                        .claims
                        .nonce;
                    if !seen.insert(n.clone()) {
                        return Err(format!("nonce {n} issued twice"));
                    }
                }
            }
            "policy_hash_deterministic" => {
                if v.as_bool() != Some(true) {
                    return Err(format!("unsupported policy_hash_deterministic {v}"));
                }
                for _ in 0..2 {
                    let p = load_str(&h.text, &h.origin).map_err(|e| e.to_string())?;
                    let again = policy_hash(p.document()).map_err(|e| e.to_string())?;
                    if again != tok.claims.policy_hash {
                        return Err(format!(
                            "policy hash not deterministic: token {} vs recomputed {again}",
                            tok.claims.policy_hash
                        ));
                    }
                }
            }
            claim => match payload.get(claim) {
                Some(got) if equal(v, got) => {}
                got => return Err(format!("expected token.{claim} = {v}, got {}", show(got))),
            },
        }
    }
    Ok(())
}

fn jwt_payload(token: &str) -> Result<Value, String> {
    let seg = token.split('.').nth(1).ok_or("token is not a JWS")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(seg)
        .map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

fn sequence(file: &VectorFile, test: &Test<'_>) -> Result<(), String> {
    if let Some(k) = test
        .unknown_keys(&["id", "description", "note", "policy", "sequence"])
        .first()
    {
        return Err(format!("unsupported test field `{k}`"));
    }
    let (text, origin) = policy_text(file, test)?;
    let mut h = Harness::new(text, &origin)?;
    let steps = test
        .get("sequence")
        .and_then(Value::as_array)
        .filter(|s| !s.is_empty())
        .ok_or("`sequence` must be a non-empty list")?;
    let mut labels: HashMap<String, String> = HashMap::new();
    let mut first_session: Option<String> = None;
    let mut checked = 0usize;
    for (i, step) in steps.iter().enumerate() {
        let n = i + 1;
        let err = |e: String| format!("step {n}: {e}");
        let obj = step
            .as_object()
            .ok_or_else(|| err("must be a mapping".into()))?;
        check_keys(
            obj,
            &["action", "wait", "input", "expected", "capture"],
            "step",
        )
        .map_err(err)?;
        if obj.get("action").and_then(Value::as_str) != Some("call") {
            return Err(err(format!(
                "unsupported action {}",
                show(obj.get("action"))
            )));
        }
        if let Some(w) = obj.get("wait") {
            let d = w
                .as_str()
                .map(parse_duration)
                .ok_or_else(|| err("`wait` must be a duration".into()))?;
            h.clock.advance(d.map_err(|e| err(e.to_string()))?);
        }
        let actual = h.call(obj.get("input"), "A").map_err(err)?;
        let tok = actual
            .token
            .clone()
            .ok_or_else(|| err("identity is not enabled".into()))?;
        let session = tok.claims.session_id.clone();
        let first = first_session.get_or_insert_with(|| session.clone()).clone();
        if let Some(exp) = obj.get("expected") {
            let exp = exp
                .as_object()
                .ok_or_else(|| err("`expected` must be a mapping".into()))?;
            let mut known: Vec<&str> = SINGLE_EXPECTED.to_vec();
            known.extend(["token_id", "session_preserved", "session_id"]);
            check_keys(exp, &known, "expected").map_err(err)?;
            check_call(exp, &actual).map_err(err)?;
            check_token_expectations(&mut h, exp, &actual).map_err(err)?;
            if let Some(label) = exp.get("token_id") {
                let label = label
                    .as_str()
                    .ok_or_else(|| err("`token_id` must be a label".into()))?;
                match labels.get(label) {
                    Some(t) if *t != tok.token => {
                        return Err(err(format!(
                            "token `{label}` changed although the label is the same"
                        )));
                    }
                    Some(_) => {}
                    None => {
                        if let Some((other, _)) = labels.iter().find(|(_, t)| **t == tok.token) {
                            return Err(err(format!(
                                "expected a new token `{label}`, got the same token as `{other}`"
                            )));
                        }
                        labels.insert(label.to_string(), tok.token.clone());
                    }
                }
            }
            if let Some(p) = exp.get("session_preserved")
                && p.as_bool() != Some(session == first)
            {
                return Err(err(format!(
                    "expected session_preserved {p}, session {first} → {session}"
                )));
            }
            if let Some(s) = exp.get("session_id") {
                let want = h
                    .resolve(
                        s.as_str()
                            .ok_or_else(|| err("`session_id` must be text".into()))?,
                        "A",
                    )
                    .map_err(err)?;
                if want != session {
                    return Err(err(format!("expected session_id {want}, got {session}")));
                }
            }
            checked += 1;
        }
        if let Some(cap) = obj.get("capture") {
            capture(&mut h, cap, &tok).map_err(err)?;
        }
    }
    if checked == 0 {
        return Err("the sequence has no expectations".into());
    }
    Ok(())
}

/// `capture: {session_id: var}` / `{token: var}` from the session's current token.
fn capture(h: &mut Harness, cap: &Value, tok: &IssuedToken) -> Result<(), String> {
    let cap = cap.as_object().ok_or("`capture` must be a mapping")?;
    for (what, var) in cap {
        let var = var.as_str().ok_or("capture variables are names")?;
        let value = match what.as_str() {
            "session_id" => tok.claims.session_id.clone(),
            "token" => tok.token.clone(),
            other => return Err(format!("cannot capture `{other}`")),
        };
        h.vars.insert(var.to_string(), value);
    }
    Ok(())
}

fn policy_sequence(file: &VectorFile, test: &Test<'_>) -> Result<(), String> {
    if let Some(k) = test
        .unknown_keys(&["id", "description", "note", "policy_sequence"])
        .first()
    {
        return Err(format!("unsupported test field `{k}`"));
    }
    let steps = test
        .get("policy_sequence")
        .and_then(Value::as_array)
        .filter(|s| !s.is_empty())
        .ok_or("`policy_sequence` must be a non-empty list")?;
    let origin = test.origin(file);
    let mut h: Option<Harness> = None;
    let mut checked = 0;
    for (i, step) in steps.iter().enumerate() {
        let n = i + 1;
        let err = |e: String| format!("step {n}: {e}");
        let obj = step
            .as_object()
            .ok_or_else(|| err("must be a mapping".into()))?;
        check_keys(obj, &["step", "policy", "input", "expected"], "step").map_err(err)?;
        let policy = obj.get("policy").and_then(Value::as_str);
        match obj.get("step").and_then(Value::as_str) {
            Some("issue_token") => {
                let text = policy.ok_or_else(|| err("`issue_token` needs `policy`".into()))?;
                match h.as_mut() {
                    None => h = Some(Harness::new(text, &origin).map_err(err)?),
                    Some(h) => h.load(text).map_err(err)?,
                }
                let h = h.as_mut().ok_or_else(|| err("no policy".into()))?;
                let svc = h.process("A").map_err(err)?;
                let tok = svc
                    .fresh_token()
                    .map_err(|e| err(e.to_string()))?
                    .token
                    .token;
                h.vars.insert(format!("token_from_step_{n}"), tok);
            }
            Some("change_policy") => {
                let text = policy.ok_or_else(|| err("`change_policy` needs `policy`".into()))?;
                h.as_mut()
                    .ok_or_else(|| err("no policy loaded yet".into()))?
                    .load(text)
                    .map_err(err)?;
            }
            Some("use_old_token") | Some("call") => {
                let h = h
                    .as_mut()
                    .ok_or_else(|| err("no policy loaded yet".into()))?;
                let exp = obj
                    .get("expected")
                    .and_then(Value::as_object)
                    .ok_or_else(|| err("needs `expected`".into()))?;
                check_keys(exp, SINGLE_EXPECTED, "expected").map_err(err)?;
                let a = h.call(obj.get("input"), "A").map_err(err)?;
                check_call(exp, &a).map_err(err)?;
                check_token_expectations(h, exp, &a).map_err(err)?;
                checked += 1;
            }
            other => {
                return Err(err(format!(
                    "unsupported step {}",
                    show(other.map(Value::from).as_ref())
                )));
            }
        }
    }
    if checked == 0 {
        return Err("the policy sequence has no expectations".into());
    }
    Ok(())
}

fn steps(file: &VectorFile, test: &Test<'_>) -> Result<(), String> {
    if let Some(k) = test
        .unknown_keys(&["id", "description", "note", "policy", "test_type", "steps"])
        .first()
    {
        return Err(format!("unsupported test field `{k}`"));
    }
    let (text, origin) = policy_text(file, test)?;
    let mut h = Harness::new(text, &origin)?;
    let kind = test
        .get("test_type")
        .and_then(Value::as_str)
        .ok_or("`test_type` must be text")?;
    let Some(steps) = test.get("steps") else {
        return match kind {
            "context_change" => context_change(&mut h),
            other => Err(format!("test_type `{other}` has no steps")),
        };
    };
    if !matches!(kind, "cross_process" | "same_process" | "replay") {
        return Err(format!("unsupported test_type `{kind}`"));
    }
    let steps = steps
        .as_array()
        .filter(|s| !s.is_empty())
        .ok_or("`steps` must be a non-empty list")?;
    let mut checked = 0;
    for (i, step) in steps.iter().enumerate() {
        let n = i + 1;
        let err = |e: String| format!("step {n}: {e}");
        let obj = step
            .as_object()
            .ok_or_else(|| err("must be a mapping".into()))?;
        check_keys(
            obj,
            &["process", "action", "input", "capture", "expected"],
            "step",
        )
        .map_err(err)?;
        let process = obj
            .get("process")
            .and_then(Value::as_str)
            .unwrap_or("A")
            .to_string();
        match obj.get("action").and_then(Value::as_str) {
            Some("issue_token") => {
                let svc = h.process(&process).map_err(err)?;
                let tok = svc.fresh_token().map_err(|e| err(e.to_string()))?.token;
                if let Some(cap) = obj.get("capture") {
                    capture(&mut h, cap, &tok).map_err(err)?;
                }
                if obj.contains_key("expected") {
                    return Err(err("`issue_token` steps have nothing to expect".into()));
                }
            }
            Some("use_token" | "replay_token") => {
                let exp = obj
                    .get("expected")
                    .and_then(Value::as_object)
                    .ok_or_else(|| err("needs `expected`".into()))?;
                check_keys(exp, SINGLE_EXPECTED, "expected").map_err(err)?;
                let input = obj
                    .get("input")
                    .ok_or_else(|| err("needs `input`".into()))?;
                if input.get("token").is_none() {
                    return Err(err("`input.token` is required".into()));
                }
                let a = h.call(Some(input), &process).map_err(err)?;
                check_call(exp, &a).map_err(err)?;
                checked += 1;
            }
            other => {
                return Err(err(format!(
                    "unsupported action {}",
                    show(other.map(Value::from).as_ref())
                )));
            }
        }
    }
    if checked == 0 {
        return Err("the test has no expectations".into());
    }
    Ok(())
}

/// `context_change` (validation-060) has no steps: run what its note states for `strict`
/// binding — the issuing context accepts the token; a different process id, policy path or
/// hostname each refuses it with `binding_mismatch`.
fn context_change(h: &mut Harness) -> Result<(), String> {
    let svc = h.process("A")?;
    if svc.config().session_binding != crate::identity::BindingMode::Strict {
        return Err("context_change expects session_binding: strict".into());
    }
    let cfg = svc.config().clone();
    let base = svc.binding().clone();
    let rt = runtime()?;
    let ok = svc.fresh_token().map_err(|e| e.to_string())?.token.token;
    rt.block_on(svc.validate(&ok))
        .map_err(|r| format!("the issuing context refused its own token: {}", r.error))?;
    type Change = Box<dyn Fn(&mut Binding)>;
    let changes: [(&str, Change); 3] = [
        (
            "process id",
            Box::new(|b| b.process_id = b.process_id.wrapping_add(1)),
        ),
        (
            "policy path",
            Box::new(|b| b.policy_path.push_str(".moved")),
        ),
        ("hostname", Box::new(|b| b.hostname.push_str(".elsewhere"))),
    ];
    for (what, change) in changes {
        let tok = h
            .process("A")?
            .fresh_token()
            .map_err(|e| e.to_string())?
            .token
            .token;
        let mut b = base.clone();
        change(&mut b);
        let other = h.service(cfg.clone(), b)?;
        match rt.block_on(other.validate(&tok)) {
            Err(r) if r.error.token_error() == "binding_mismatch" => {}
            Err(r) => {
                return Err(format!(
                    "after a {what} change: expected binding_mismatch, got {}",
                    r.error.token_error()
                ));
            }
            Ok(_) => return Err(format!("a {what} change did not invalidate the token")),
        }
    }
    Ok(())
}

fn policies(file: &VectorFile, test: &Test<'_>) -> Result<(), String> {
    if let Some(k) = test
        .unknown_keys(&["id", "description", "note", "policies", "expected"])
        .first()
    {
        return Err(format!("unsupported test field `{k}`"));
    }
    let list = test
        .get("policies")
        .and_then(Value::as_array)
        .filter(|l| l.len() >= 2)
        .ok_or("`policies` must list at least two policies")?;
    let mut hashes: Vec<(String, String)> = Vec::new();
    for p in list {
        let name = p
            .get("name")
            .and_then(Value::as_str)
            .ok_or("each policy needs a `name`")?;
        let content = p
            .get("content")
            .and_then(Value::as_str)
            .ok_or("each policy needs `content`")?;
        let origin = format!("{}#{name}", test.origin(file));
        let hash = |_: ()| -> Result<String, String> {
            let pol =
                load_str(content, &origin).map_err(|e| format!("{name} does not load: {e}"))?;
            policy_hash(pol.document()).map_err(|e| e.to_string())
        };
        let h = hash(())?;
        if hash(())? != h {
            return Err(format!("hash of {name} is not deterministic"));
        }
        hashes.push((name.replace('-', "_"), h));
    }
    let expected = test
        .get("expected")
        .and_then(Value::as_object)
        .filter(|e| !e.is_empty())
        .ok_or("`expected` must be a non-empty mapping")?;
    let find = |n: &str| {
        hashes
            .iter()
            .find(|(name, _)| name == n || name.ends_with(&format!("_{n}")))
            .map(|(_, h)| h.clone())
            .ok_or_else(|| format!("no policy named like `{n}`"))
    };
    for (k, v) in expected {
        let subject = k
            .strip_prefix("hash_")
            .ok_or_else(|| format!("unsupported expected field `{k}`"))?;
        let mine = find(subject)?;
        let v = v.as_str().ok_or_else(|| format!("`{k}` must be text"))?;
        if let Some(other) = v.strip_prefix("different_from_") {
            if mine == find(other)? {
                return Err(format!("{subject} and {other} hash the same ({mine})"));
            }
        } else if let Some(other) = v.strip_prefix("same_as_") {
            if mine != find(other)? {
                return Err(format!("{subject} and {other} hash differently"));
            }
        } else {
            return Err(format!("unsupported expectation `{k}: {v}`"));
        }
    }
    Ok(())
}
