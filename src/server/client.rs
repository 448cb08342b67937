//! Client of a remote validation server, for a proxy that delegates decisions
//! (`spec.server.failover_mode`, `timeout`, `fail_open_constraints`, v1alpha2 §6.4). Sends
//! `POST <validate>` with the agent's token as `Authorization: Bearer`, turns the answer into a
//! [`RemoteVerdict`], and when the server cannot answer in time applies the failover mode.
//! The spec has no field for the server's URL; it comes from the supervisor's configuration
//! (`--validation-server URL` / `AIP_VALIDATION_SERVER`, see docs/identity.md).
//!
//! Must not evaluate policy itself (`local_policy` failover returns
//! [`FailoverAction::EvaluateLocally`] to the caller, which owns the engine) and must never
//! turn an unreachable server into an allow except under `fail_open` and its constraints.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Uri;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;

use super::tls::{ClientTlsFiles, TlsError, client_config};

/// Largest answer read from a validation server.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// `spec.server.failover_mode`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum FailoverMode {
    /// Deny every call while the server is unavailable (default).
    #[default]
    FailClosed,
    /// Allow calls while the server is unavailable, within the constraints.
    FailOpen(FailOpenConstraints),
    /// Evaluate with the local policy.
    LocalPolicy,
}

/// `spec.server.fail_open_constraints`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FailOpenConstraints {
    /// Only these tools may pass (normalized names, compared with the normalized call);
    /// `None`: any tool.
    pub allowed_tools: Option<Vec<String>>,
    /// Longest fail-open episode; afterwards fail closed until the server answers again.
    pub max_duration: Option<Duration>,
    /// Most calls allowed in one episode; afterwards fail closed.
    pub max_requests: Option<u64>,
    /// URL that receives a JSON POST when an episode starts and when it reverts to closed.
    pub alert_webhook: Option<String>,
    /// Fail open only when a valid local policy is loaded.
    pub require_local_policy: bool,
}

/// Where and how to reach the validation server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteConfig {
    /// Full URL of the validate endpoint, `http://127.0.0.1:9443/v1/validate` or
    /// `https://aip.example:9443/v1/validate`. Plain `http` only to a loopback address.
    pub url: String,
    pub tls: ClientTlsFiles,
    /// `spec.server.timeout` (default 5 s): connect + answer.
    pub timeout: Duration,
    pub failover: FailoverMode,
}

/// What the caller does with a call the server could not decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailoverAction {
    /// Refuse with `-32001`, `reason: "validation_unavailable"`.
    Deny,
    /// `fail_open`: allow; the caller must audit it (`failover_mode=fail_open triggered`).
    AllowFailOpen,
    /// `fail_open`, but a constraint refuses this call: `-32001` with `reason`.
    DenyConstraint { reason: String },
    /// `local_policy`: evaluate with the local engine.
    EvaluateLocally,
}

/// The server's decision, or the failover outcome.
#[derive(Debug, Clone, PartialEq)]
pub enum RemoteVerdict {
    Allow {
        token_status: Option<Value>,
    },
    Block {
        reason: String,
        violations: Value,
    },
    Ask {
        reason: String,
    },
    /// HTTP 429: map to `-32002`.
    RateLimited,
    /// HTTP 401 `token_required`: map to `-32008`.
    TokenRequired,
    /// HTTP 401 `token_invalid`: map to `-32009` with `token_error`.
    TokenInvalid {
        token_error: String,
    },
    /// No usable answer (unreachable, timeout, 5xx, garbage): apply `action`.
    Unavailable {
        action: FailoverAction,
        cause: String,
    },
}

/// The remote validator could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid validation server URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error(transparent)]
    Tls(#[from] TlsError),
}

struct Target {
    https: bool,
    host: String,
    port: u16,
    path_and_query: String,
    authority: String,
}

fn parse_target(url: &str) -> Result<Target, ClientError> {
    let err = |reason: &str| ClientError::Url {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let uri: Uri = url.parse().map_err(|_| err("not a URL"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(err("scheme must be http or https")),
    };
    let authority = uri.authority().ok_or_else(|| err("no host"))?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    if !https && !is_loopback(&host) {
        return Err(err(
            "plain http is only allowed to a loopback address; use https",
        ));
    }
    let path_and_query = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    Ok(Target {
        https,
        host,
        port,
        path_and_query,
        authority: authority.as_str().to_string(),
    })
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[derive(Default)]
struct Episode {
    started: Option<Instant>,
    requests: u64,
    /// The episode exceeded a limit: closed until the server answers again.
    exhausted: bool,
}

/// Validates tool calls against a remote AIP validation server. Share it (`Arc`); calls may run
/// concurrently.
pub struct RemoteValidator {
    target: Target,
    tls: Option<tokio_rustls::TlsConnector>,
    timeout: Duration,
    failover: FailoverMode,
    has_local_policy: bool,
    idle: tokio::sync::Mutex<Option<SendRequest<Full<Bytes>>>>,
    episode: Mutex<Episode>,
}

impl std::fmt::Debug for RemoteValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteValidator")
            .field("authority", &self.target.authority)
            .field("failover", &self.failover)
            .finish_non_exhaustive()
    }
}

impl RemoteValidator {
    /// `has_local_policy`: whether the caller holds a valid local policy (for `local_policy`
    /// and `fail_open.require_local_policy`).
    pub fn new(config: RemoteConfig, has_local_policy: bool) -> Result<Self, ClientError> {
        let target = parse_target(&config.url)?;
        let tls = if target.https {
            Some(tokio_rustls::TlsConnector::from(client_config(
                &config.tls,
            )?))
        } else {
            None
        };
        if config.failover == FailoverMode::LocalPolicy && !has_local_policy {
            return Err(ClientError::Url {
                url: config.url,
                reason: "failover_mode local_policy needs a loaded local policy".into(),
            });
        }
        Ok(Self {
            target,
            tls,
            timeout: config.timeout,
            failover: config.failover,
            has_local_policy,
            idle: tokio::sync::Mutex::new(None),
            episode: Mutex::new(Episode::default()),
        })
    }

    /// Asks the server about `tool` with `arguments`, presenting `token` if any.
    pub async fn validate(
        &self,
        tool: &str,
        arguments: &Value,
        token: Option<&str>,
    ) -> RemoteVerdict {
        let body = json!({"tool": tool, "arguments": arguments});
        let answer = tokio::time::timeout(self.timeout, self.post(&body, token)).await;
        let (status, body) = match answer {
            Ok(Ok(r)) => r,
            Ok(Err(cause)) => return self.unavailable(tool, cause),
            Err(_) => {
                return self.unavailable(tool, format!("no answer within {:?}", self.timeout));
            }
        };
        let verdict = interpret(status, &body);
        if !matches!(verdict, RemoteVerdict::Unavailable { .. }) {
            self.end_episode();
        }
        match verdict {
            RemoteVerdict::Unavailable { cause, .. } => self.unavailable(tool, cause),
            v => v,
        }
    }

    fn end_episode(&self) {
        let mut ep = self.episode.lock().unwrap_or_else(|p| p.into_inner());
        if ep.started.is_some() {
            tracing::info!(
                requests = ep.requests,
                "validation server reachable again; fail-open episode ended"
            );
        }
        *ep = Episode::default();
    }

    fn unavailable(&self, tool: &str, cause: String) -> RemoteVerdict {
        tracing::warn!(cause = %cause, "validation server unavailable");
        let action = match &self.failover {
            FailoverMode::FailClosed => FailoverAction::Deny,
            FailoverMode::LocalPolicy => FailoverAction::EvaluateLocally,
            FailoverMode::FailOpen(c) => self.fail_open(tool, c),
        };
        RemoteVerdict::Unavailable { action, cause }
    }

    /// The fail-open steps of §6.4, in order: count, max_requests, max_duration, allowed
    /// tools, require_local_policy, alert, allow.
    fn fail_open(&self, tool: &str, c: &FailOpenConstraints) -> FailoverAction {
        let now = Instant::now();
        let mut ep = self.episode.lock().unwrap_or_else(|p| p.into_inner());
        let first = ep.started.is_none();
        let started = *ep.started.get_or_insert(now);
        ep.requests += 1;
        if ep.exhausted {
            return FailoverAction::Deny;
        }
        let over = if c.max_requests.is_some_and(|m| ep.requests > m) {
            Some("fail_open max_requests exceeded")
        } else if c
            .max_duration
            .is_some_and(|d| now.duration_since(started) > d)
        {
            Some("fail_open max_duration exceeded")
        } else {
            None
        };
        if let Some(why) = over {
            ep.exhausted = true;
            drop(ep);
            tracing::warn!(reason = why, "failover reverts to fail_closed");
            self.alert(c, json!({"event": "fail_open_exhausted", "reason": why}));
            return FailoverAction::Deny;
        }
        drop(ep);
        let normalized = crate::policy::normalize(tool);
        if let Some(tools) = &c.allowed_tools
            && !tools.iter().any(|t| *t == normalized)
        {
            return FailoverAction::DenyConstraint {
                reason: "validation_unavailable: tool not allowed under fail_open".into(),
            };
        }
        if c.require_local_policy && !self.has_local_policy {
            return FailoverAction::DenyConstraint {
                reason: "validation_unavailable: fail_open requires a local policy".into(),
            };
        }
        if first {
            self.alert(c, json!({"event": "fail_open_triggered", "tool": tool}));
        }
        tracing::warn!(tool, "failover_mode=fail_open triggered");
        FailoverAction::AllowFailOpen
    }

    fn alert(&self, c: &FailOpenConstraints, payload: Value) {
        let Some(url) = c.alert_webhook.clone() else {
            return;
        };
        let tls = self.tls.clone();
        let timeout = self.timeout;
        tokio::spawn(async move {
            let result = async {
                let target = parse_target(&url).map_err(|e| e.to_string())?;
                let connector = match (target.https, tls) {
                    (true, Some(t)) => Some(t),
                    (true, None) => Some(tokio_rustls::TlsConnector::from(
                        client_config(&ClientTlsFiles::default()).map_err(|e| e.to_string())?,
                    )),
                    (false, _) => None,
                };
                let mut sender = connect(&target, connector.as_ref()).await?;
                send(&mut sender, &target, &payload, None).await.map(|_| ())
            };
            match tokio::time::timeout(timeout, result).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "fail_open alert webhook failed"),
                Err(_) => tracing::warn!("fail_open alert webhook timed out"),
            }
        });
    }

    async fn post(&self, body: &Value, token: Option<&str>) -> Result<(u16, Bytes), String> {
        let mut idle = self.idle.lock().await;
        let mut sender = match idle.take() {
            Some(s) if s.is_ready() => s,
            _ => connect(&self.target, self.tls.as_ref()).await?,
        };
        drop(idle);
        let result = send(&mut sender, &self.target, body, token).await;
        if result.is_ok() && sender.is_ready() {
            *self.idle.lock().await = Some(sender);
        }
        result
    }
}

async fn connect(
    target: &Target,
    tls: Option<&tokio_rustls::TlsConnector>,
) -> Result<SendRequest<Full<Bytes>>, String> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| format!("connect {}: {e}", target.authority))?;
    let _ = tcp.set_nodelay(true);
    match tls {
        Some(connector) => {
            let name = rustls_pki_types::ServerName::try_from(target.host.clone())
                .map_err(|e| format!("server name {}: {e}", target.host))?;
            let stream = connector
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            handshake(stream).await
        }
        None => handshake(tcp).await,
    }
}

async fn handshake<S>(stream: S) -> Result<SendRequest<Full<Bytes>>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    target: &Target,
    body: &Value,
    token: Option<&str>,
) -> Result<(u16, Bytes), String> {
    let bytes = serde_json::to_vec(body).map_err(|e| e.to_string())?;
    let mut req = hyper::Request::post(target.path_and_query.as_str())
        .header(hyper::header::HOST, target.authority.as_str())
        .header(hyper::header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req
        .body(Full::new(Bytes::from(bytes)))
        .map_err(|e| e.to_string())?;
    sender
        .ready()
        .await
        .map_err(|e| format!("connection: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let body = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|e| format!("response body: {e}"))?
        .to_bytes();
    Ok((status, body))
}

/// Maps an HTTP answer of `/v1/validate` to a verdict. Anything unexpected is `Unavailable`
/// (never an allow).
fn interpret(status: u16, body: &[u8]) -> RemoteVerdict {
    let unavailable = |cause: String| RemoteVerdict::Unavailable {
        action: FailoverAction::Deny,
        cause,
    };
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return unavailable(format!("HTTP {status} with a body that is not JSON"));
    };
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    match status {
        200 => match s("decision").as_deref() {
            Some("allow") => RemoteVerdict::Allow {
                token_status: v.get("token_status").cloned(),
            },
            Some("block") => RemoteVerdict::Block {
                reason: s("reason").unwrap_or_else(|| "Blocked by the validation server".into()),
                violations: v.get("violations").cloned().unwrap_or(Value::Array(vec![])),
            },
            Some("ask") => RemoteVerdict::Ask {
                reason: s("reason").unwrap_or_default(),
            },
            other => unavailable(format!("unknown decision {other:?}")),
        },
        401 => match s("error").as_deref() {
            Some("token_required") => RemoteVerdict::TokenRequired,
            Some("token_invalid") => RemoteVerdict::TokenInvalid {
                token_error: s("token_error").unwrap_or_else(|| "malformed".into()),
            },
            other => unavailable(format!("HTTP 401 with error {other:?}")),
        },
        429 => RemoteVerdict::RateLimited,
        _ => unavailable(format!("HTTP {status}: {}", s("error").unwrap_or_default())),
    }
}

/// Shared handle.
pub type SharedRemoteValidator = Arc<RemoteValidator>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_target() {
        let t = parse_target("http://127.0.0.1:9443/v1/validate").unwrap();
        assert_eq!(
            (t.https, t.host.as_str(), t.port, t.path_and_query.as_str()),
            (false, "127.0.0.1", 9443, "/v1/validate")
        );
        let t = parse_target("https://aip.example/api/v2/check").unwrap();
        assert_eq!((t.https, t.port), (true, 443));
        assert!(
            parse_target("http://aip.example/v1/validate").is_err(),
            "plaintext off-host"
        );
        assert!(parse_target("http://[::1]:80/x").is_ok());
        assert!(parse_target("ftp://127.0.0.1/x").is_err());
        assert!(parse_target("not a url").is_err());
    }

    #[test]
    fn test_interpret() {
        assert_eq!(
            interpret(200, br#"{"decision":"allow"}"#),
            RemoteVerdict::Allow { token_status: None }
        );
        assert!(matches!(
            interpret(200, br#"{"decision":"block","reason":"r"}"#),
            RemoteVerdict::Block { .. }
        ));
        assert_eq!(
            interpret(401, br#"{"error":"token_required"}"#),
            RemoteVerdict::TokenRequired
        );
        assert_eq!(
            interpret(
                401,
                br#"{"error":"token_invalid","token_error":"replay_detected"}"#
            ),
            RemoteVerdict::TokenInvalid {
                token_error: "replay_detected".into()
            }
        );
        assert_eq!(
            interpret(429, br#"{"error":"rate_limited"}"#),
            RemoteVerdict::RateLimited
        );
        for (st, b) in [
            (200, &br#"{"decision":"maybe"}"#[..]),
            (500, br#"{"error":"internal_error"}"#),
            (200, b"<html>"),
        ] {
            assert!(
                matches!(interpret(st, b), RemoteVerdict::Unavailable { .. }),
                "{st}"
            );
        }
    }

    fn validator(failover: FailoverMode, local: bool) -> RemoteValidator {
        // Port 9 on loopback: nothing listens, connect fails at once.
        RemoteValidator::new(
            RemoteConfig {
                url: "http://127.0.0.1:9/v1/validate".into(),
                tls: ClientTlsFiles::default(),
                timeout: Duration::from_secs(2),
                failover,
            },
            local,
        )
        .unwrap()
    }

    fn action(v: RemoteVerdict) -> FailoverAction {
        match v {
            RemoteVerdict::Unavailable { action, .. } => action,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn test_failover_modes() {
        let v = validator(FailoverMode::FailClosed, false);
        assert_eq!(
            action(v.validate("t", &json!({}), None).await),
            FailoverAction::Deny
        );
        let v = validator(FailoverMode::LocalPolicy, true);
        assert_eq!(
            action(v.validate("t", &json!({}), None).await),
            FailoverAction::EvaluateLocally
        );
        assert!(
            RemoteValidator::new(
                RemoteConfig {
                    url: "http://127.0.0.1:9/".into(),
                    tls: ClientTlsFiles::default(),
                    timeout: Duration::from_secs(1),
                    failover: FailoverMode::LocalPolicy
                },
                false
            )
            .is_err()
        );
    }

    #[tokio::test]
    async fn test_fail_open_constraints() {
        let c = FailOpenConstraints {
            allowed_tools: Some(vec!["read_file".into()]),
            max_requests: Some(2),
            ..Default::default()
        };
        let v = validator(FailoverMode::FailOpen(c), false);
        assert_eq!(
            action(v.validate("read_file", &json!({}), None).await),
            FailoverAction::AllowFailOpen
        );
        assert!(matches!(
            action(v.validate("exec", &json!({}), None).await),
            FailoverAction::DenyConstraint { .. }
        ));
        // Third request of the episode exceeds max_requests: closed from now on.
        assert_eq!(
            action(v.validate("read_file", &json!({}), None).await),
            FailoverAction::Deny
        );
        assert_eq!(
            action(v.validate("read_file", &json!({}), None).await),
            FailoverAction::Deny
        );

        let c = FailOpenConstraints {
            require_local_policy: true,
            ..Default::default()
        };
        let v = validator(FailoverMode::FailOpen(c.clone()), false);
        assert!(matches!(
            action(v.validate("t", &json!({}), None).await),
            FailoverAction::DenyConstraint { .. }
        ));
        let v = validator(FailoverMode::FailOpen(c), true);
        assert_eq!(
            action(v.validate("t", &json!({}), None).await),
            FailoverAction::AllowFailOpen
        );

        let c = FailOpenConstraints {
            max_duration: Some(Duration::from_millis(50)),
            ..Default::default()
        };
        let v = validator(FailoverMode::FailOpen(c), false);
        assert_eq!(
            action(v.validate("t", &json!({}), None).await),
            FailoverAction::AllowFailOpen
        );
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(
            action(v.validate("t", &json!({}), None).await),
            FailoverAction::Deny
        );
    }
}
