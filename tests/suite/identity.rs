//! Integration tests: identity. The real `aip` binary for `policy keygen|sign|verify` and
//! `schema-hash` (against real MCP peers of both protocol eras), and the Redis nonce store
//! against a real `redis-server` started on a random loopback port, shared by two token services
//! with separate connections (what two supervisors on two hosts see).

// Helpers outside #[test] fns are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aip::identity::{
    Binding, IdentityConfig, KeyRing, NonceBackend, NonceStore, RedisStore, RevocationKind,
    SigningAlgorithm, TokenError, TokenService,
};

use crate::support::aip_bin;

fn aip(args: &[&str], dir: &Path) -> Output {
    Command::new(aip_bin())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run aip")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const POLICY: &str = "# Team policy — comments must survive signing\napiVersion: aip.io/v1alpha2\nkind: AgentPolicy\nmetadata:\n  name: signed-agent   # the agent\n  version: \"1.0.0\"\n\n# what it may do\nspec:\n  allowed_tools: [read_file]\n";

#[test]
fn policy_keygen_sign_verify_roundtrip() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = aip(&["policy", "keygen", "team"], d);
    assert!(o.status.success(), "{}", stderr(&o));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(d.join("team.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    assert!(
        std::fs::read_to_string(d.join("team.pub"))
            .unwrap()
            .starts_with("-----BEGIN PUBLIC KEY-----")
    );
    // Never overwrite a key by accident.
    let o = aip(&["policy", "keygen", "team"], d);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));

    std::fs::write(d.join("p.yaml"), POLICY).unwrap();
    std::fs::set_permissions(d.join("p.yaml"), std::fs::Permissions::from_mode(0o640)).unwrap();
    // Unsigned → verify fails with a hint.
    let o = aip(&["policy", "verify", "--pubkey", "team.pub", "p.yaml"], d);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not signed"), "{}", stderr(&o));

    let o = aip(&["policy", "sign", "--key", "team.key", "p.yaml"], d);
    assert!(o.status.success(), "{}", stderr(&o));
    let signed = std::fs::read_to_string(d.join("p.yaml")).unwrap();
    // Only one line was added; every comment and blank line survived.
    let sig_line = signed
        .lines()
        .find(|l| l.starts_with("  signature: \"ed25519:"))
        .expect("signature line");
    assert_eq!(signed.replace(&format!("{sig_line}\n"), ""), POLICY);
    assert_eq!(
        std::fs::metadata(d.join("p.yaml"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o640
    );

    let o = aip(&["policy", "verify", "--pubkey", "team.pub", "p.yaml"], d);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("signature OK"));

    // Re-signing is idempotent.
    assert!(
        aip(&["policy", "sign", "--key", "team.key", "p.yaml"], d)
            .status
            .success()
    );
    assert_eq!(std::fs::read_to_string(d.join("p.yaml")).unwrap(), signed);

    // Tampering with the policy (or with the signature) is detected.
    std::fs::write(
        d.join("t.yaml"),
        signed.replace("[read_file]", "[read_file, exec_command]"),
    )
    .unwrap();
    let o = aip(&["policy", "verify", "--pubkey", "team.pub", "t.yaml"], d);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("does not verify"), "{}", stderr(&o));
    let at = sig_line.find("ed25519:").unwrap() + "ed25519:".len();
    let swap = if &sig_line[at..=at] == "A" { "B" } else { "A" };
    let flipped = format!("{}{swap}{}", &sig_line[..at], &sig_line[at + 1..]);
    std::fs::write(d.join("t2.yaml"), signed.replace(sig_line, &flipped)).unwrap();
    assert_eq!(
        aip(&["policy", "verify", "--pubkey", "team.pub", "t2.yaml"], d)
            .status
            .code(),
        Some(1)
    );

    // Another key does not verify it.
    assert!(aip(&["policy", "keygen", "other"], d).status.success());
    assert_eq!(
        aip(&["policy", "verify", "--pubkey", "other.pub", "p.yaml"], d)
            .status
            .code(),
        Some(1)
    );
    // A private key is not a public key.
    assert_eq!(
        aip(&["policy", "verify", "--pubkey", "team.key", "p.yaml"], d)
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn policy_sign_interoperates_with_openssl_keys() {
    if Command::new("openssl").arg("version").output().is_err() {
        println!("SKIP policy_sign_interoperates_with_openssl_keys: openssl not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ok = |args: &[&str]| {
        assert!(
            Command::new("openssl")
                .args(args)
                .current_dir(d)
                .status()
                .unwrap()
                .success()
        )
    };
    ok(&["genpkey", "-algorithm", "ed25519", "-out", "o.key"]);
    ok(&["pkey", "-in", "o.key", "-pubout", "-out", "o.pub"]);
    std::fs::write(d.join("p.yaml"), POLICY).unwrap();
    let o = aip(
        &["policy", "sign", "--key", "o.key", "-o", "s.yaml", "p.yaml"],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(d.join("p.yaml")).unwrap(),
        POLICY,
        "-o leaves the input alone"
    );
    assert!(
        aip(&["policy", "verify", "--pubkey", "o.pub", "s.yaml"], d)
            .status
            .success()
    );
    // And the other way: our private key file is readable by openssl.
    assert!(aip(&["policy", "keygen", "k"], d).status.success());
    let out = Command::new("openssl")
        .args(["pkey", "-in", "k.key", "-pubout"])
        .current_dir(d)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        std::fs::read_to_string(d.join("k.pub")).unwrap()
    );
}

#[test]
fn policy_sign_refuses_unsafe_edits_and_leaves_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert!(aip(&["policy", "keygen", "k"], d).status.success());
    let flow = "apiVersion: aip.io/v1alpha2\nkind: AgentPolicy\nmetadata: {name: flow}\nspec: {}\n";
    std::fs::write(d.join("f.yaml"), flow).unwrap();
    let o = aip(&["policy", "sign", "--key", "k.key", "f.yaml"], d);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("block style"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(d.join("f.yaml")).unwrap(), flow);
    // A policy the loader refuses is not signed.
    let typo = "apiVersion: aip.io/v1alpha2\nkind: AgentPolicy\nmetadata:\n  name: typo\nspec:\n  allowed_toolz: []\n";
    std::fs::write(d.join("typo.yaml"), typo).unwrap();
    let o = aip(&["policy", "sign", "--key", "k.key", "typo.yaml"], d);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("allowed_toolz"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(d.join("typo.yaml")).unwrap(), typo);
    std::fs::write(d.join("bad.yaml"), "metadata:\n  name: [unclosed\n").unwrap();
    assert_eq!(
        aip(&["policy", "sign", "--key", "k.key", "bad.yaml"], d)
            .status
            .code(),
        Some(2)
    );
}

fn peers() -> PathBuf {
    std::env::var_os("AIP_PEERS")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::support::repo_root().join(".peers"))
}

/// Fetches tools/list with a tiny independent client (Python, legacy handshake) so the
/// comparison does not rely on our own MCP client.
fn saved_tools_list(cmd: &[&str], out: &Path) -> bool {
    let python = peers().join("py/bin/python");
    if !python.exists() {
        return false;
    }
    let script = r#"
import json, subprocess, sys
p = subprocess.Popen(sys.argv[2:], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
def send(m): p.stdin.write(json.dumps(m) + "\n"); p.stdin.flush()
def recv(i):
    while True:
        m = json.loads(p.stdout.readline())
        if m.get("id") == i: return m
send({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
recv(1)
send({"jsonrpc": "2.0", "method": "notifications/initialized"})
send({"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}})
open(sys.argv[1], "w").write(json.dumps(recv(2)))
p.kill()
"#;
    let mut args = vec!["-c", script, out.to_str().unwrap()];
    args.extend_from_slice(cmd);
    Command::new(python)
        .args(&args)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[test]
fn schema_hash_from_server_matches_saved_list_both_eras() {
    let time_server = peers().join("py/bin/mcp-server-time");
    let fs_server = peers().join("node/node_modules/.bin/mcp-server-filesystem");
    if !time_server.exists() || !fs_server.exists() {
        println!(
            "SKIP schema_hash_from_server_matches_saved_list_both_eras: peers not installed (scripts/install-peers.sh)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap().to_string();
    // mcp-server-time answers server/discover (2026-07-28); the filesystem server only speaks
    // the initialize handshake, so this covers both paths of the client.
    for cmd in [
        vec![time_server.to_str().unwrap().to_string()],
        vec![fs_server.to_str().unwrap().to_string(), root.clone()],
    ] {
        let cmd_ref: Vec<&str> = cmd.iter().map(String::as_str).collect();
        let saved = dir.path().join("tools.json");
        assert!(
            saved_tools_list(&cmd_ref, &saved),
            "python client failed for {cmd:?}"
        );
        let from_file = aip(&["schema-hash", saved.to_str().unwrap()], dir.path());
        assert!(from_file.status.success(), "{}", stderr(&from_file));
        let mut args = vec!["schema-hash", "--"];
        args.extend(cmd_ref.iter());
        let from_server = aip(&args, dir.path());
        assert!(from_server.status.success(), "{}", stderr(&from_server));
        let a = String::from_utf8(from_file.stdout).unwrap();
        assert_eq!(a, String::from_utf8(from_server.stdout).unwrap());
        assert!(a.lines().count() >= 2);
        for line in a.lines() {
            let (hash, name) = line.split_once("  ").unwrap();
            assert!(hash.starts_with("sha256:") && hash.len() == 71, "{line}");
            assert!(!name.is_empty());
        }
    }
}

#[test]
fn schema_hash_json_output_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tools = serde_json::json!({"tools": [
        {"name": "read_file", "description": "Read a file", "inputSchema": {"type": "object", "properties": {"path": {"type": "string"}}}},
        {"name": "no_desc", "inputSchema": {"type": "object"}}
    ]});
    std::fs::write(d.join("t.json"), tools.to_string()).unwrap();
    let o = aip(&["schema-hash", "--json", "t.json"], d);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rows[0]["tool"], "read_file");
    assert_eq!(
        rows[0]["schema_hash"],
        aip::identity::schema_hash(&tools["tools"][0]).as_str()
    );
    std::fs::write(d.join("bad.json"), "{").unwrap();
    assert_eq!(aip(&["schema-hash", "bad.json"], d).status.code(), Some(2));
    let o = aip(&["schema-hash", "--timeout", "2s", "--", "/bin/cat"], d);
    assert_eq!(
        o.status.code(),
        Some(2),
        "cat never answers: must time out, not hang"
    );
}

// ---------------------------------------------------------------------------------------------
// Redis

/// A private `redis-server` on a random loopback port, killed on drop.
pub(crate) struct RedisServer {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts one, installing the Debian package first if needed (CI runs as root). `None`
    /// (after printing why) only when the binary cannot be had.
    pub(crate) fn start(test: &str) -> Option<Self> {
        let Some(bin) = redis_binary() else {
            println!(
                "SKIP {test}: redis-server is not installed and `apt-get install redis-server` failed"
            );
            return None;
        };
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .ok()?
                .local_addr()
                .ok()?
                .port();
            let dir = tempfile::tempdir().ok()?;
            let child = Command::new(&bin)
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .arg("--dir")
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .ok()?;
            let mut server = RedisServer {
                child,
                port,
                _dir: dir,
            };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = server.child.try_wait() {
                    break; // port taken: try another
                }
                if ping(port) {
                    return Some(server);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = server.child.kill();
        }
        println!("SKIP {test}: redis-server did not start");
        None
    }

    pub(crate) fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

fn redis_binary() -> Option<PathBuf> {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    let find = || {
        [
            "/usr/bin/redis-server",
            "/usr/local/bin/redis-server",
            "/usr/sbin/redis-server",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
    };
    if let Some(p) = find() {
        return Some(p);
    }
    INSTALL.call_once(|| {
        let _ = Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "redis-server"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    });
    find()
}

fn binding(pid: u32) -> Binding {
    Binding {
        process_id: pid,
        policy_path: "/etc/aip/policy.yaml".into(),
        hostname: "host-a".into(),
        container_id: None,
        pod_uid: None,
    }
}

const HASH: &str = "abababababababababababababababababababababababababababababababab";

/// One "supervisor": its own Redis connection, keys loaded from the shared key file.
async fn supervisor(redis: &RedisServer, key_pem: &Path, pid: u32) -> TokenService {
    let mut cfg = IdentityConfig::new("shared-agent");
    cfg.algorithm = SigningAlgorithm::Es256;
    cfg.key_source = aip::identity::KeySource::File(key_pem.to_path_buf());
    cfg.session_binding = aip::identity::BindingMode::Policy;
    cfg.nonce_storage.backend = NonceBackend::Redis {
        address: redis.url(),
    };
    cfg.nonce_storage.key_prefix = format!("aip:test:{}:", std::process::id());
    TokenService::builder(cfg)
        .policy_hash(HASH)
        .binding(binding(pid))
        .build_connected()
        .await
        .unwrap()
}

fn write_ec_key(dir: &Path) -> PathBuf {
    let out = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .output();
    let path = dir.join("jwt.pem");
    match out {
        Ok(o) if o.status.success() => std::fs::write(&path, o.stdout).unwrap(),
        _ => {
            // No openssl: a generated ring cannot be exported, so build the PEM with aws-lc.
            let rng = aws_lc_rs::rand::SystemRandom::new();
            let doc = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
                &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                &rng,
            )
            .unwrap();
            use base64::Engine;
            let b64 = base64::engine::general_purpose::STANDARD.encode(doc.as_ref());
            std::fs::write(
                &path,
                format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n"),
            )
            .unwrap();
        }
    }
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_shares_replay_and_revocation_between_supervisors() {
    let Some(mut redis) =
        RedisServer::start("redis_store_shares_replay_and_revocation_between_supervisors")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let key = write_ec_key(dir.path());
    let a = supervisor(&redis, &key, 1001).await;
    let b = supervisor(&redis, &key, 2002).await;
    assert_eq!(
        a.keys().current_kid(),
        b.keys().current_kid(),
        "same key file, same kid"
    );

    // A's token, first used at A, replayed at B.
    let t = a.fresh_token().unwrap().token;
    a.validate(&t.token).await.unwrap();
    assert_eq!(
        b.validate(&t.token).await.unwrap_err().error,
        TokenError::ReplayDetected
    );
    // First use at B counts too: replay at A.
    let t2 = a.fresh_token().unwrap().token;
    b.validate(&t2.token).await.unwrap();
    assert_eq!(
        a.validate(&t2.token).await.unwrap_err().error,
        TokenError::ReplayDetected
    );

    // Revocations made through B apply at A.
    let t3 = a.fresh_token().unwrap().token;
    let rev = b
        .revoke_session(&t3.claims.session_id, Some("incident"))
        .await
        .unwrap();
    assert_eq!(rev.kind, RevocationKind::Session);
    match a.validate(&t3.token).await.unwrap_err().error {
        TokenError::Revoked(r) => {
            assert_eq!(r.target, t3.claims.session_id);
            assert_eq!(r.reason.as_deref(), Some("incident"));
        }
        other => panic!("expected revocation, got {other:?}"),
    }
    let t4 = b.fresh_token().unwrap().token;
    b.revoke_token(&t4.claims.nonce, None).await.unwrap();
    assert!(matches!(
        a.validate(&t4.token).await.unwrap_err().error,
        TokenError::Revoked(_)
    ));
    let t5 = b.fresh_token().unwrap().token;
    a.validate(&t5.token).await.unwrap();

    // Nonces carry a TTL (nonce window + skew) in Redis.
    let store = RedisStore::connect(&redis.url(), "aip:ttl-probe:", Duration::from_secs(2))
        .await
        .unwrap();
    assert!(
        store
            .check_and_record("n", Duration::from_millis(300))
            .await
            .unwrap()
    );
    assert!(
        !store
            .check_and_record("n", Duration::from_millis(300))
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        store
            .check_and_record("n", Duration::from_millis(300))
            .await
            .unwrap()
    );

    // Redis gone: validation fails closed.
    redis.stop();
    let t6 = a.fresh_token().unwrap().token;
    let e = a.validate(&t6.token).await.unwrap_err().error;
    assert!(matches!(e, TokenError::Unavailable(_)), "{e:?}");
    assert_eq!(e.token_error(), "validation_unavailable");
}

#[tokio::test]
async fn redis_unreachable_refuses_to_build() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = IdentityConfig::new("a");
    cfg.nonce_storage.backend = NonceBackend::Redis {
        address: format!("redis://127.0.0.1:{port}/"),
    };
    let started = Instant::now();
    let r = TokenService::builder(cfg)
        .policy_hash(HASH)
        .build_connected()
        .await;
    assert!(r.is_err());
    assert!(started.elapsed() < Duration::from_secs(10));
    // The error never echoes the address (it may hold a password).
    let mut cfg = IdentityConfig::new("a");
    cfg.nonce_storage.backend = NonceBackend::Redis {
        address: "redis://:s3cret@127.0.0.1:1/".into(),
    };
    let msg = TokenService::builder(cfg)
        .policy_hash(HASH)
        .build_connected()
        .await
        .unwrap_err()
        .to_string();
    assert!(!msg.contains("s3cret"), "{msg}");
}

#[test]
fn key_file_shared_between_rings() {
    let dir = tempfile::tempdir().unwrap();
    let key = write_ec_key(dir.path());
    let now = time::OffsetDateTime::now_utc();
    let a = KeyRing::from_file(SigningAlgorithm::Es256, &key, now).unwrap();
    let b = KeyRing::from_file(SigningAlgorithm::Es256, &key, now).unwrap();
    assert_eq!(a.jwks(now), b.jwks(now));
    assert!(KeyRing::from_file(SigningAlgorithm::EdDsa, &key, now).is_err());
    assert!(
        KeyRing::from_file(
            SigningAlgorithm::Es256,
            &dir.path().join("missing.pem"),
            now
        )
        .is_err()
    );
    let _ = Arc::new(a);
}

/// Two real `aip run` supervisors sharing a key file and a Redis nonce store: a token either
/// issued is accepted by the other, and spent in one it is a replay in the other.
#[test]
fn two_aip_run_supervisors_share_replay_state_through_redis() {
    use crate::support::{Driver, mock_server};
    use serde_json::{Value, json};
    let Some(redis) =
        RedisServer::start("two_aip_run_supervisors_share_replay_state_through_redis")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let key = write_ec_key(dir.path());
    let policy = dir.path().join("shared.yaml");
    std::fs::write(
        &policy,
        format!(
            "apiVersion: aip.io/v1alpha2\nkind: AgentPolicy\nmetadata: {{name: shared}}\nspec:\n  allowed_tools: [echo]\n  identity:\n    enabled: true\n    require_token: true\n    session_binding: policy\n    nonce_storage: {{type: redis, address: \"{}\", key_prefix: \"aip:e2e:{}:\"}}\n    keys: {{key_source: file, key_path: \"{}\", signing_algorithm: ES256}}\n",
            redis.url(),
            std::process::id(),
            key.display()
        ),
    )
    .unwrap();
    let start = |name: &str| {
        let mut cmd = Command::new(aip_bin());
        cmd.args(["run", "--no-sandbox", "--policy"])
            .arg(&policy)
            .arg("--audit")
            .arg(dir.path().join(format!("{name}.jsonl")))
            .arg("--")
            .arg(mock_server());
        Driver::spawn(cmd)
    };
    let (mut a, mut b) = (start("a"), start("b"));
    let token = |d: &mut Driver, id: i64| -> String {
        let r = d.call(&json!({"jsonrpc":"2.0","id":id,"method":"aip/token"}).to_string());
        r["result"]["token"].as_str().expect("a token").to_owned()
    };
    let call = |d: &mut Driver, id: i64, t: &str| -> Value {
        d.call(
            &json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{
                "name":"echo","arguments":{},"_meta":{"aip.io/token": t}}})
            .to_string(),
        )
    };
    // Issued by A, accepted by B (same key, same policy), then a replay in A.
    let t1 = token(&mut a, 1);
    let r = call(&mut b, 2, &t1);
    assert!(r["result"].is_object(), "{r}");
    let r = call(&mut a, 3, &t1);
    assert_eq!(r["error"]["data"]["token_error"], "replay_detected", "{r}");
    // Spent in A first, refused in B.
    let t2 = token(&mut a, 4);
    assert!(call(&mut a, 5, &t2)["result"].is_object());
    let r = call(&mut b, 6, &t2);
    assert_eq!(r["error"]["code"], -32009, "{r}");
    assert_eq!(r["error"]["data"]["token_error"], "replay_detected");
}
