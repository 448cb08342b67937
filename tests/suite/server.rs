//! Integration tests: server. The real `aip server` binary on loopback: endpoints and error
//! answers, request limits, TLS and mTLS with a CA generated at test time (rcgen), identity
//! tokens minted with the same key file and rejected on every path (replay, expiry is covered
//! by the vectors, revocation, tampering, wrong policy), `/v1/revoke` with the admin
//! credential and its audit record, signed-policy enforcement at start, Redis-shared replay
//! and revocation between two server processes, and the remote-validation client's failover.

// Helpers outside #[test] fns are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aip::identity::{IdentityConfig, MemoryStore, SystemClock, TokenService, policy_hash};
use aip::server::{
    ClientTlsFiles, FailOpenConstraints, FailoverAction, FailoverMode, RemoteConfig,
    RemoteValidator, RemoteVerdict,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use serde_json::{Value, json};

use super::identity::RedisServer;
use crate::support::aip_bin;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `aip server`, killed on drop.
struct Server {
    child: Child,
    port: u16,
    stderr: PathBuf,
}

impl Server {
    fn start(dir: &Path, policy: &Path, extra: &[&str]) -> Server {
        Self::start_on(dir, policy, "127.0.0.1", extra)
    }

    /// Listens on `host:<free port>`; connects through loopback.
    fn start_on(dir: &Path, policy: &Path, host: &str, extra: &[&str]) -> Server {
        Self::try_start(dir, policy, host, extra).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_start(dir: &Path, policy: &Path, host: &str, extra: &[&str]) -> Result<Server, String> {
        let port = free_port();
        let stderr = dir.join(format!("server-{port}.log"));
        let child = Command::new(aip_bin())
            .arg("server")
            .arg("--policy")
            .arg(policy)
            .args(["--listen", &format!("{host}:{port}")])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let mut s = Server {
            child,
            port,
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = s.child.try_wait() {
                return Err(format!("aip server exited with {status}: {}", s.log()));
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("aip server did not listen: {}", s.log()))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One plaintext HTTP/1.1 exchange (`Connection: close`), written by hand on purpose: an
/// independent client, not the one under test.
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let ctype = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    (status, ctype, body.to_string())
}

fn post(port: u16, body: &Value, token: Option<&str>) -> (u16, Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a));
    }
    let (status, _, text) = http(
        port,
        "POST",
        "/v1/validate",
        &headers,
        body.to_string().as_bytes(),
    );
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

const BASE: &str = "apiVersion: aip.io/v1alpha2\nkind: AgentPolicy\nmetadata:\n  name: server-it\nspec:\n  allowed_tools: [read_file]\n  tool_rules:\n    - tool: read_file\n      allow_args:\n        path: \"^/srv/.*\"\n  protected_paths: [\"/etc/shadow\"]\n";

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn endpoints_and_error_answers() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write(dir.path(), "p.yaml", BASE);
    let s = Server::start(dir.path(), &policy, &["--max-body", "4096"]);

    let (st, body) = post(
        s.port,
        &json!({"tool": "read_file", "arguments": {"path": "/srv/a"}}),
        None,
    );
    assert_eq!(
        (st, body["decision"].as_str()),
        (200, Some("allow")),
        "{body}"
    );
    let (st, body) = post(
        s.port,
        &json!({"tool": "READ_FILE", "arguments": {"path": "/tmp/a"}}),
        None,
    );
    assert_eq!(st, 200);
    assert_eq!(body["decision"], "block");
    assert_eq!(
        body["violations"][0],
        json!({"type": "argument_validation", "field": "path", "message": "Value does not match pattern: ^/srv/.*"})
    );
    let (_, body) = post(
        s.port,
        &json!({"tool": "read_file", "arguments": {"path": "/srv/../etc/shadow"}}),
        None,
    );
    assert_eq!(body["violations"][0]["type"], "protected_path", "{body}");
    let (_, body) = post(s.port, &json!({"tool": "exec", "arguments": {}}), None);
    assert_eq!(body["reason"], "Tool not in allowed_tools list");

    // Bad requests.
    let (st, _, text) = http(s.port, "POST", "/v1/validate", &[], b"not json");
    assert_eq!(st, 400, "{text}");
    assert!(text.contains("invalid_request"));
    let (st, _, _) = http(s.port, "POST", "/v1/validate", &[], br#"{"arguments":{}}"#);
    assert_eq!(st, 400);
    // Duplicate keys are refused (one parse, no second interpretation of `tool`).
    let (st, _, text) = http(
        s.port,
        "POST",
        "/v1/validate",
        &[],
        br#"{"tool":"read_file","tool":"exec"}"#,
    );
    assert_eq!(st, 400, "{text}");
    let (st, _, _) = http(
        s.port,
        "POST",
        "/v1/validate",
        &[],
        br#"{"tool":"read_file","arguments":"x"}"#,
    );
    assert_eq!(st, 400);
    let big = format!(
        r#"{{"tool":"read_file","arguments":{{"path":"{}"}}}}"#,
        "a".repeat(5000)
    );
    let (st, _, text) = http(s.port, "POST", "/v1/validate", &[], big.as_bytes());
    assert_eq!(st, 413, "{text}");
    let (st, _, _) = http(s.port, "GET", "/v1/validate", &[], b"");
    assert_eq!(st, 405);
    let (st, _, text) = http(s.port, "GET", "/nope", &[], b"");
    assert_eq!(st, 404);
    assert!(text.contains("not_found"));
    // JWKS without identity.
    assert_eq!(http(s.port, "GET", "/v1/jwks", &[], b"").0, 404);
    // Revocation is disabled without an admin credential.
    assert_eq!(
        http(
            s.port,
            "POST",
            "/v1/revoke",
            &[("Authorization", "Bearer x")],
            b"{}"
        )
        .0,
        401
    );

    let (st, _, text) = http(s.port, "GET", "/health", &[], b"");
    let h: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(st, 200);
    let doc = aip::policy::load_file(&policy).unwrap();
    assert_eq!(h["policy_hash"], policy_hash(doc.document()).unwrap());
    assert_eq!(h["version"], "v1alpha2");

    let (st, ctype, text) = http(s.port, "GET", "/metrics", &[], b"");
    assert_eq!(st, 200);
    assert!(ctype.starts_with("text/plain"), "{ctype}");
    for needle in [
        "aip_requests_total{endpoint=\"validate\"} 10",
        "aip_decisions_total{decision=\"allow\"} 1",
        "aip_decisions_total{decision=\"block\"} 3",
        "aip_violations_total{type=\"protected_path\"} 1",
        "aip_responses_total{endpoint=\"validate\",status=\"413\"} 1",
        "aip_request_duration_seconds_count{endpoint=\"validate\"} 10",
    ] {
        assert!(text.contains(needle), "{needle} missing:\n{text}");
    }
    let (_, ctype, _) = http(
        s.port,
        "GET",
        "/metrics",
        &[("Accept", "application/openmetrics-text")],
        b"",
    );
    assert!(ctype.starts_with("application/openmetrics-text"));
}

#[test]
fn refuses_plaintext_off_loopback_and_bad_policies() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write(dir.path(), "p.yaml", BASE);
    let out = Command::new(aip_bin())
        .args([
            "server",
            "--policy",
            policy.to_str().unwrap(),
            "--listen",
            "0.0.0.0:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no TLS"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = write(
        dir.path(),
        "bad.yaml",
        "apiVersion: aip.io/v1alpha2\nkind: AgentPolicy\nmetadata: {name: x}\nspec: {allowed_toolz: []}\n",
    );
    let out = Command::new(aip_bin())
        .args(["server", "--policy", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("allowed_toolz"));
}

#[test]
fn signed_policy_is_enforced_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = |args: &[&str]| {
        Command::new(aip_bin())
            .args(args)
            .current_dir(d)
            .output()
            .unwrap()
    };
    assert!(run(&["policy", "keygen", "k"]).status.success());
    write(d, "p.yaml", BASE);
    // Unsigned + --require-signed-policy → refused.
    let out = run(&[
        "server",
        "--policy",
        "p.yaml",
        "--require-signed-policy",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not signed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        run(&["policy", "sign", "--key", "k.key", "p.yaml"])
            .status
            .success()
    );
    // Signed but no key configured → refused (a signature exists to be checked).
    let out = run(&["server", "--policy", "p.yaml", "--listen", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no public key"));
    // Tampered → refused with the spec's reason.
    let signed = std::fs::read_to_string(d.join("p.yaml")).unwrap();
    write(
        d,
        "t.yaml",
        &signed.replace("[read_file]", "[read_file, exec]"),
    );
    let out = run(&[
        "server",
        "--policy",
        "t.yaml",
        "--policy-pubkey",
        "k.pub",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Signature verification failed"));
    // Good signature → serves.
    let pubkey = d.join("k.pub");
    let s = Server::start(
        d,
        &d.join("p.yaml"),
        &[
            "--policy-pubkey",
            pubkey.to_str().unwrap(),
            "--require-signed-policy",
        ],
    );
    assert!(s.log().contains("policy signature verified"), "{}", s.log());
    assert_eq!(
        post(
            s.port,
            &json!({"tool": "read_file", "arguments": {"path": "/srv/x"}}),
            None
        )
        .0,
        200
    );
}

fn identity_policy(dir: &Path, key: &Path, extra_identity: &str) -> PathBuf {
    write(
        dir,
        "id.yaml",
        &format!(
            "{BASE}  identity:\n    enabled: true\n    require_token: true\n    session_binding: policy\n    keys:\n      signing_algorithm: ES256\n      key_source: file\n      key_path: {}\n{extra_identity}",
            key.display()
        ),
    )
}

fn ec_key(dir: &Path) -> PathBuf {
    let key = KeyPair::generate().unwrap(); // P-256 ECDSA
    write(dir, "jwt.pem", &key.serialize_pem())
}

/// What a supervisor sharing the key file would issue (same policy, same key).
fn issuer(policy: &Path) -> TokenService {
    let p = aip::policy::load_file(policy).unwrap();
    let cfg: IdentityConfig = aip::server::identity_config(&p).unwrap().unwrap();
    // Only issues here, so a memory store is enough whatever the policy's nonce_storage says.
    let store = std::sync::Arc::new(MemoryStore::new(std::sync::Arc::new(SystemClock)));
    TokenService::builder(cfg)
        .policy_hash(policy_hash(p.document()).unwrap())
        .policy_path(policy)
        .store(store)
        .build()
        .unwrap()
}

#[test]
fn tokens_revocation_and_jwks() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = ec_key(d);
    let policy = identity_policy(d, &key, "");
    write(d, "admin", "correct-horse-battery-staple\n");
    let audit = d.join("audit.jsonl");
    let s = Server::start(
        d,
        &policy,
        &[
            "--admin-token-file",
            d.join("admin").to_str().unwrap(),
            "--audit",
            audit.to_str().unwrap(),
        ],
    );
    let iss = issuer(&policy);
    let call = json!({"tool": "read_file", "arguments": {"path": "/srv/a"}});

    // No token / not a Bearer token → token_required.
    assert_eq!(post(s.port, &call, None).1["error"], "token_required");
    let (st, _, text) = http(
        s.port,
        "POST",
        "/v1/validate",
        &[("Authorization", "Basic dXNlcjpwYXNz")],
        call.to_string().as_bytes(),
    );
    assert_eq!(st, 401);
    assert!(text.contains("token_required"));

    // Valid → allow with token_status; replay → replay_detected.
    let t = iss.fresh_token().unwrap().token;
    let (st, body) = post(s.port, &call, Some(&t.token));
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["token_status"]["valid"], true);
    assert!(body["token_status"]["expires_in"].as_u64().unwrap() > 0);
    let (st, body) = post(s.port, &call, Some(&t.token));
    assert_eq!(
        (st, body["token_error"].as_str()),
        (401, Some("replay_detected"))
    );

    // Tampered payload, junk, a token of another key, a token of another policy.
    let mut parts: Vec<String> = t.token.split('.').map(str::to_string).collect();
    parts[1].insert(5, 'A');
    let (st, body) = post(s.port, &call, Some(&parts.join(".")));
    assert_eq!((st, body["token_error"].as_str()), (401, Some("malformed")));
    assert_eq!(
        post(s.port, &call, Some("expired-token-xyz")).1["token_error"],
        "malformed"
    );
    let other_dir = tempfile::tempdir().unwrap();
    let other_policy = identity_policy(other_dir.path(), &ec_key(other_dir.path()), "");
    let foreign = issuer(&other_policy).fresh_token().unwrap().token;
    assert_eq!(
        post(s.port, &call, Some(&foreign.token)).1["token_error"],
        "malformed"
    );
    let changed = write(
        d,
        "changed.yaml",
        &std::fs::read_to_string(&policy)
            .unwrap()
            .replace("[read_file]", "[read_file, list]"),
    );
    let stale = issuer(&changed).fresh_token().unwrap().token;
    assert_eq!(
        post(s.port, &call, Some(&stale.token)).1["token_error"],
        "policy_changed"
    );

    // JWKS carries the file key's kid.
    let (st, _, text) = http(s.port, "GET", "/v1/jwks", &[], b"");
    assert_eq!(st, 200);
    let jwks: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(jwks["keys"][0]["kid"], iss.keys().current_kid().as_str());
    assert_eq!(jwks["keys"][0]["kty"], "EC");

    // /v1/revoke: wrong admin credential, an identity token as credential, bad body.
    let t2 = iss.fresh_token().unwrap().token;
    let rev_body =
        json!({"type": "session", "session_id": t2.claims.session_id, "reason": "laptop stolen"})
            .to_string();
    for bad in [
        "Bearer wrong-credential-000000",
        &format!("Bearer {}", t2.token),
        "Basic Y29ycmVjdA==",
    ] {
        let (st, _, text) = http(
            s.port,
            "POST",
            "/v1/revoke",
            &[("Authorization", bad)],
            rev_body.as_bytes(),
        );
        assert_eq!(st, 401, "{bad}: {text}");
        assert!(text.contains("unauthorized"));
    }
    let admin = [("Authorization", "Bearer correct-horse-battery-staple")];
    assert_eq!(
        http(
            s.port,
            "POST",
            "/v1/revoke",
            &admin,
            br#"{"type":"session","session_id":"nope"}"#
        )
        .0,
        400
    );
    assert_eq!(
        http(
            s.port,
            "POST",
            "/v1/revoke",
            &admin,
            br#"{"type":"everything"}"#
        )
        .0,
        400
    );
    let (st, _, text) = http(s.port, "POST", "/v1/revoke", &admin, rev_body.as_bytes());
    assert_eq!(st, 200, "{text}");
    let r: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (r["revoked"].as_bool(), r["type"].as_str()),
        (Some(true), Some("session"))
    );
    assert_eq!(r["target"], t2.claims.session_id.as_str());
    let (st, body) = post(s.port, &call, Some(&t2.token));
    assert_eq!(
        (st, body["token_error"].as_str()),
        (401, Some("session_revoked")),
        "{body}"
    );
    // Token revocation.
    let iss2 = issuer(&policy); // another session
    let t3 = iss2.fresh_token().unwrap().token;
    let t4 = iss2.fresh_token().unwrap().token;
    let tok_body = json!({"type": "token", "token_nonce": t3.claims.nonce}).to_string();
    assert_eq!(
        http(s.port, "POST", "/v1/revoke", &admin, tok_body.as_bytes()).0,
        200
    );
    assert_eq!(
        post(s.port, &call, Some(&t3.token)).1["token_error"],
        "token_revoked"
    );
    assert_eq!(
        post(s.port, &call, Some(&t4.token)).0,
        200,
        "only the one token is revoked"
    );

    // The audit log has the REVOCATION records and no token.
    let log = std::fs::read_to_string(&audit).unwrap();
    let recs: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let revs: Vec<&Value> = recs.iter().filter(|r| r["event"] == "REVOCATION").collect();
    assert_eq!(revs.len(), 2);
    assert_eq!(revs[0]["type"], "session");
    assert_eq!(revs[0]["reason"], "laptop stolen");
    assert!(revs[0]["admin"].as_str().unwrap().starts_with("bearer:"));
    assert!(
        recs.iter()
            .any(|r| r["event"] == "TOKEN_VALIDATION_FAILED" && r["error"] == "replay_detected")
    );
    assert!(
        recs.iter()
            .any(|r| r["decision"] == "ALLOW" && r["token_id"] == t.claims.nonce.as_str())
    );
    assert!(
        !log.contains(&t.token) && !log.contains("correct-horse"),
        "no token or credential in the audit log"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&audit).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn redis_shares_replay_and_revocation_between_two_servers() {
    let Some(redis) = RedisServer::start("redis_shares_replay_and_revocation_between_two_servers")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = ec_key(d);
    let storage = format!(
        "    nonce_storage:\n      type: redis\n      address: \"{}\"\n      key_prefix: \"aip:it:{}:\"\n",
        redis.url(),
        std::process::id()
    );
    let policy = identity_policy(d, &key, &storage);
    write(d, "admin", "correct-horse-battery-staple\n");
    let admin_file = d.join("admin");
    let admin_args = ["--admin-token-file", admin_file.to_str().unwrap()];
    let a = Server::start(d, &policy, &admin_args);
    let b = Server::start(d, &policy, &admin_args);
    let iss = issuer(&policy);
    let call = json!({"tool": "read_file", "arguments": {"path": "/srv/a"}});

    let t = iss.fresh_token().unwrap().token;
    assert_eq!(post(a.port, &call, Some(&t.token)).0, 200);
    let (st, body) = post(b.port, &call, Some(&t.token));
    assert_eq!(
        (st, body["token_error"].as_str()),
        (401, Some("replay_detected")),
        "{body}"
    );

    let t2 = iss.fresh_token().unwrap().token;
    let rev = json!({"type": "session", "session_id": t2.claims.session_id}).to_string();
    let admin = [("Authorization", "Bearer correct-horse-battery-staple")];
    assert_eq!(
        http(a.port, "POST", "/v1/revoke", &admin, rev.as_bytes()).0,
        200
    );
    assert_eq!(
        post(b.port, &call, Some(&t2.token)).1["token_error"],
        "session_revoked"
    );
    drop(redis);
    // Redis gone: fail closed with a 500, never an allow.
    let t3 = iss.fresh_token().unwrap().token;
    let (st, body) = post(a.port, &call, Some(&t3.token));
    assert_eq!(st, 500, "{body}");
    assert_eq!(body["token_error"], "validation_unavailable");
}

struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn pki(dir: &Path, name: &str) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(DnType::CommonName, format!("{name} CA"));
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf = |sans: Vec<String>| {
        let k = KeyPair::generate().unwrap();
        let c = CertificateParams::new(sans)
            .unwrap()
            .signed_by(&k, &issuer)
            .unwrap();
        (c.pem(), k.serialize_pem())
    };
    let (sc, sk) = leaf(vec!["localhost".into(), "127.0.0.1".into()]);
    let (cc, ck) = leaf(vec!["agent".into()]);
    Pki {
        ca: write(dir, &format!("{name}-ca.pem"), &ca_cert.pem()),
        server_cert: write(dir, &format!("{name}-server.pem"), &sc),
        server_key: write(dir, &format!("{name}-server.key"), &sk),
        client_cert: write(dir, &format!("{name}-client.pem"), &cc),
        client_key: write(dir, &format!("{name}-client.key"), &ck),
    }
}

fn remote(
    port: u16,
    ca: &Path,
    client: Option<(&Path, &Path)>,
    failover: FailoverMode,
) -> RemoteValidator {
    RemoteValidator::new(
        RemoteConfig {
            url: format!("https://localhost:{port}/v1/validate"),
            tls: ClientTlsFiles {
                ca: Some(ca.to_path_buf()),
                client_cert: client.map(|(c, k)| (c.to_path_buf(), k.to_path_buf())),
            },
            timeout: Duration::from_secs(5),
            failover,
        },
        true,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_mutual_tls_with_a_test_ca() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = pki(d, "t");
    let other = pki(d, "other");
    let tls_policy = |client: &str| {
        format!(
            "{BASE}  server:\n    enabled: true\n    listen: \"127.0.0.1:9443\"\n    tls:\n      cert: {}\n      key: {}\n{client}",
            p.server_cert.display(),
            p.server_key.display()
        )
    };
    let policy = write(d, "tls.yaml", &tls_policy(""));
    // Off-loopback listen is accepted once TLS is configured.
    let s = tokio::task::block_in_place(|| Server::start_on(d, &policy, "0.0.0.0", &[]));
    let call = json!({"path": "/srv/a"});
    let v = remote(s.port, &p.ca, None, FailoverMode::FailClosed);
    assert_eq!(
        v.validate("read_file", &call, None).await,
        RemoteVerdict::Allow { token_status: None }
    );
    assert!(matches!(
        v.validate("exec", &json!({}), None).await,
        RemoteVerdict::Block { .. }
    ));
    // A client trusting another CA refuses the server; plaintext gets no HTTP answer.
    let wrong = remote(s.port, &other.ca, None, FailoverMode::FailClosed);
    assert!(matches!(
        wrong.validate("read_file", &call, None).await,
        RemoteVerdict::Unavailable {
            action: FailoverAction::Deny,
            ..
        }
    ));
    let port = s.port;
    let plain = tokio::task::block_in_place(|| http(port, "GET", "/health", &[], b""));
    assert_ne!(plain.0, 200);
    drop(s);

    // mTLS required.
    let policy = write(
        d,
        "mtls.yaml",
        &tls_policy(&format!(
            "      client_ca: {}\n      require_client_cert: true\n",
            p.ca.display()
        )),
    );
    let s = tokio::task::block_in_place(|| Server::start(d, &policy, &[]));
    let anonymous = remote(s.port, &p.ca, None, FailoverMode::FailClosed);
    assert!(matches!(
        anonymous.validate("read_file", &call, None).await,
        RemoteVerdict::Unavailable { .. }
    ));
    let good = remote(
        s.port,
        &p.ca,
        Some((&p.client_cert, &p.client_key)),
        FailoverMode::FailClosed,
    );
    assert_eq!(
        good.validate("read_file", &call, None).await,
        RemoteVerdict::Allow { token_status: None }
    );
    let stranger = remote(
        s.port,
        &p.ca,
        Some((&other.client_cert, &other.client_key)),
        FailoverMode::FailClosed,
    );
    assert!(matches!(
        stranger.validate("read_file", &call, None).await,
        RemoteVerdict::Unavailable { .. }
    ));
    // curl agrees (an independent TLS client).
    let out = Command::new("curl")
        .args([
            "-s",
            "--cacert",
            p.ca.to_str().unwrap(),
            "--cert",
            p.client_cert.to_str().unwrap(),
            "--key",
            p.client_key.to_str().unwrap(),
        ])
        .arg(format!("https://localhost:{}/health", s.port))
        .output();
    if let Ok(out) = out {
        let h: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        assert_eq!(
            h["status"],
            "healthy",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The server goes away: failover modes decide.
    drop(s);
    let closed = remote(
        port,
        &p.ca,
        Some((&p.client_cert, &p.client_key)),
        FailoverMode::FailClosed,
    );
    assert!(matches!(
        closed.validate("read_file", &call, None).await,
        RemoteVerdict::Unavailable {
            action: FailoverAction::Deny,
            ..
        }
    ));
    let local = remote(port, &p.ca, None, FailoverMode::LocalPolicy);
    assert!(matches!(
        local.validate("read_file", &call, None).await,
        RemoteVerdict::Unavailable {
            action: FailoverAction::EvaluateLocally,
            ..
        }
    ));
    let open = remote(
        port,
        &p.ca,
        None,
        FailoverMode::FailOpen(FailOpenConstraints {
            allowed_tools: Some(vec!["read_file".into()]),
            ..Default::default()
        }),
    );
    assert!(matches!(
        open.validate("READ_FILE", &call, None).await,
        RemoteVerdict::Unavailable {
            action: FailoverAction::AllowFailOpen,
            ..
        }
    ));
    assert!(matches!(
        open.validate("exec", &call, None).await,
        RemoteVerdict::Unavailable {
            action: FailoverAction::DenyConstraint { .. },
            ..
        }
    ));
}

#[test]
fn conformance_identity_and_server_levels_pass() {
    let dir = crate::support::conformance_dir();
    if !dir.join("server").is_dir() {
        println!(
            "SKIP conformance_identity_and_server_levels_pass: no vectors at {}",
            dir.display()
        );
        return;
    }
    let out = Command::new(aip_bin())
        .args(["conformance", "--level", "identity", "--level", "server"])
        .arg(&dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("FAIL"), "{text}");
    assert!(text.contains("47 passed, 0 failed"), "{text}");
}
