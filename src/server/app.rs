//! The HTTP handlers: `/v1/validate` (token check with `identity::TokenService`, then
//! `policy::Engine::check_tool_call`), `/v1/revoke` (admin credential), `/v1/jwks`, `/health`,
//! `/metrics`, at the configured paths. Status codes and bodies follow the conformance vectors
//! (digest §6.1, §10.4–10.6): policy decisions are 200 with `decision`, rate limits 429, token
//! problems 401. Must not evaluate policy or check tokens itself, and must never log a token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::audit;
use crate::identity::{TokenError, TokenService, ValidToken};
use crate::policy::{self, Decision, VerdictKind};

use super::config::ServerSettings;
use super::metrics::{
    DecisionLabels, DecisionValue, Endpoint, EndpointLabels, Metrics, ResponseLabels,
    RevocationLabels, TokenLabels, TokenResult, ViolationLabels,
};

/// Most sessions tracked for the `aip_active_sessions` gauge (only sessions whose token
/// validated are tracked, so this bounds memory against issuers, not clients).
const MAX_TRACKED_SESSIONS: usize = 100_000;

/// What a server decides with.
pub struct ServerParts {
    /// The policy engine (shared with the proxy when embedded).
    pub engine: Arc<policy::Engine>,
    /// Hash of the policy in force (`/health`, metrics, audit).
    pub policy_hash: String,
    /// Identity tokens; `None` when `spec.identity` is absent or disabled.
    pub tokens: Option<Arc<TokenService>>,
    /// Where decision and revocation records go; `None`: nowhere (tracing only).
    pub audit: Option<Arc<dyn audit::Sink>>,
}

pub(crate) struct AppState {
    parts: ServerParts,
    settings: ServerSettings,
    pub(crate) metrics: Metrics,
    started: Instant,
    admin_digest: Option<[u8; 32]>,
    sessions: Mutex<HashMap<String, time::OffsetDateTime>>,
}

impl AppState {
    pub(crate) fn new(parts: ServerParts, settings: ServerSettings) -> Self {
        let metrics = Metrics::new(&parts.policy_hash);
        let admin_digest = settings
            .admin_token
            .as_deref()
            .map(|t| Sha256::digest(t.as_bytes()).into());
        Self {
            parts,
            settings,
            metrics,
            started: Instant::now(),
            admin_digest,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    fn endpoint_of(&self, path: &str) -> Endpoint {
        let e = &self.settings.endpoints;
        if path == e.validate {
            Endpoint::validate
        } else if path == e.revoke {
            Endpoint::revoke
        } else if path == e.jwks {
            Endpoint::jwks
        } else if path == e.health {
            Endpoint::health
        } else if path == e.metrics {
            Endpoint::metrics
        } else {
            Endpoint::other
        }
    }

    fn audit(&self, record: audit::Record) -> Result<(), audit::AuditError> {
        match &self.parts.audit {
            Some(sink) => sink.write(&record),
            None => Ok(()),
        }
    }

    fn track_session(&self, v: &ValidToken) {
        let now = time::OffsetDateTime::now_utc();
        let mut s = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        s.retain(|_, exp| *exp > now);
        if s.len() < MAX_TRACKED_SESSIONS || s.contains_key(&v.claims.session_id) {
            s.insert(v.claims.session_id.clone(), v.expires_at);
        }
        self.metrics
            .active_sessions
            .set(i64::try_from(s.len()).unwrap_or(i64::MAX));
    }
}

/// The router with every endpoint at its configured path.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    let e = state.settings.endpoints.clone();
    Router::new()
        .route(&e.validate, post(validate))
        .route(&e.revoke, post(revoke))
        .route(&e.jwks, get(jwks))
        .route(&e.health, get(health))
        .route(&e.metrics, get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

fn reply(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body.to_string(),
    )
        .into_response()
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    reply(status, json!({"error": code, "message": message}))
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

async fn method_not_allowed() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this endpoint",
    )
}

/// Request timeout, request counter and duration histogram around every handler.
async fn track(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let endpoint = st.endpoint_of(req.uri().path());
    st.metrics
        .requests
        .get_or_create(&EndpointLabels { endpoint })
        .inc();
    let started = Instant::now();
    let resp = match tokio::time::timeout(st.settings.request_timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => error(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "request not completed in time",
        ),
    };
    st.metrics
        .responses
        .get_or_create(&ResponseLabels {
            endpoint,
            status: resp.status().as_u16(),
        })
        .inc();
    st.metrics
        .request_duration
        .get_or_create(&EndpointLabels { endpoint })
        .observe(started.elapsed().as_secs_f64());
    resp
}

/// `Authorization: Bearer <t>` (scheme case-insensitive). Other schemes count as no token
/// (vector auth-010: `Basic` → `token_required`).
fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim().to_string())
        .filter(|t| !t.is_empty())
}

async fn read_body(
    st: &AppState,
    req: Request,
) -> Result<(HeaderMap, Map<String, Value>), Response> {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, st.settings.max_body_bytes)
        .await
        .map_err(|_| {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request",
                &format!(
                    "request body larger than {} bytes",
                    st.settings.max_body_bytes
                ),
            )
        })?;
    // The strict parser: duplicate or case-variant keys are refused, as on stdio.
    match crate::jsonrpc::parse_value(&bytes) {
        Ok(Value::Object(m)) => Ok((parts.headers, m)),
        Ok(_) => Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "body must be a JSON object",
        )),
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("body is not valid JSON: {e}"),
        )),
    }
}

async fn validate(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let (headers, body) = match read_body(&st, req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let tool = match body.get("tool") {
        Some(Value::String(t)) if !t.is_empty() => t.clone(),
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "`tool` must be a non-empty string",
            );
        }
        None => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "missing required field `tool`",
            );
        }
    };
    let arguments = match body.get("arguments") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(a @ Value::Object(_)) => a.clone(),
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "`arguments` must be an object",
            );
        }
    };
    let body_token = match body.get("token") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()).filter(|s| !s.is_empty()),
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "`token` must be a string",
            );
        }
    };
    // Header first, body only without a Bearer header (vectors auth-011/012).
    let token = bearer(&headers).or(body_token);

    let mut token_status = None;
    let mut ids: (Option<String>, Option<String>) = (None, None);
    if let Some(service) = &st.parts.tokens {
        match token {
            None if service.config().require_token => {
                st.metrics
                    .token_validations
                    .get_or_create(&TokenLabels {
                        result: TokenResult::invalid,
                    })
                    .inc();
                return reply(
                    StatusCode::UNAUTHORIZED,
                    json!({"error": "token_required", "message": "Identity token required for this policy"}),
                );
            }
            None => {}
            Some(t) => match service.validate(&t).await {
                Ok(v) => {
                    st.metrics
                        .token_validations
                        .get_or_create(&TokenLabels {
                            result: TokenResult::valid,
                        })
                        .inc();
                    st.track_session(&v);
                    token_status = Some(json!({"valid": true, "expires_in": v.expires_in}));
                    ids = (
                        Some(v.claims.session_id.clone()),
                        Some(v.claims.nonce.clone()),
                    );
                }
                Err(rej) => {
                    st.metrics
                        .token_validations
                        .get_or_create(&TokenLabels {
                            result: TokenResult::invalid,
                        })
                        .inc();
                    let _ = st.audit(
                        audit::Record::event("TOKEN_VALIDATION_FAILED")
                            .with_opt("session_id", rej.session_id.clone())
                            .with_opt("token_id", rej.token_id.clone())
                            .with("error", rej.error.token_error()),
                    );
                    if let TokenError::Unavailable(e) = &rej.error {
                        tracing::error!(error = %e, "token validation unavailable");
                        return reply(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            json!({"error": "internal_error", "message": "token validation is unavailable",
                                   "token_error": rej.error.token_error()}),
                        );
                    }
                    return reply(
                        StatusCode::UNAUTHORIZED,
                        json!({"error": "token_invalid", "message": rej.error.reason(),
                               "token_error": rej.error.token_error()}),
                    );
                }
            },
        }
    }

    let verdict = st.parts.engine.check_tool_call(&tool, Some(&arguments));
    let violations = violations_of(&verdict);
    for v in &violations {
        if let Some(t) = v.get("type").and_then(Value::as_str) {
            st.metrics
                .violations
                .get_or_create(&ViolationLabels {
                    r#type: t.to_string(),
                })
                .inc();
        }
    }
    let decision = match verdict.decision {
        Decision::Allow | Decision::AllowMonitor => DecisionValue::allow,
        Decision::Ask => DecisionValue::ask,
        Decision::Block => DecisionValue::block,
        Decision::RateLimited => DecisionValue::rate_limited,
    };
    st.metrics
        .decisions
        .get_or_create(&DecisionLabels { decision })
        .inc();

    let mut record = audit::Record::now()
        .with("direction", "upstream")
        .with("method", "tools/call")
        .with("tool", verdict.tool.clone())
        .with("decision", verdict.audit_decision())
        .with("policy_mode", st.parts.engine.mode().as_str())
        .with("violation", verdict.violation)
        .with_opt("failed_arg", verdict.failed_arg.clone())
        .with_opt("failed_rule", verdict.failed_rule.clone())
        .with_opt("session_id", ids.0)
        .with_opt("token_id", ids.1)
        .with("policy_hash", st.parts.policy_hash.clone());
    record.set("source", "validation_server");
    if let Err(e) = st.audit(record) {
        tracing::error!(error = %e, "audit write failed; refusing to answer");
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "audit log unavailable",
        );
    }

    if verdict.decision == Decision::RateLimited {
        return reply(
            StatusCode::TOO_MANY_REQUESTS,
            json!({"error": "rate_limited", "message": verdict.reason}),
        );
    }
    let mut out = Map::new();
    out.insert(
        "decision".into(),
        json!(match decision {
            DecisionValue::allow => "allow",
            DecisionValue::ask => "ask",
            _ => "block",
        }),
    );
    if !verdict.reason.is_empty() {
        out.insert("reason".into(), json!(verdict.reason));
    }
    if !violations.is_empty() {
        out.insert("violations".into(), Value::Array(violations));
    }
    if let Some(ts) = token_status {
        out.insert("token_status".into(), ts);
    }
    reply(StatusCode::OK, Value::Object(out))
}

/// The `violations` array of a verdict (types seen in the vectors: `argument_validation`,
/// `protected_path`; the others follow the reference implementation's vocabulary).
fn violations_of(v: &policy::ToolVerdict) -> Vec<Value> {
    let field = v.failed_arg.clone().map_or(Value::Null, Value::String);
    let one = |t: &str, field: Value, message: String| {
        vec![json!({"type": t, "field": field, "message": message})]
    };
    match v.kind {
        VerdictKind::ArgumentMismatch => one(
            "argument_validation",
            field,
            format!(
                "Value does not match pattern: {}",
                v.failed_rule.as_deref().unwrap_or("")
            ),
        ),
        VerdictKind::ArgumentMissing => one(
            "argument_validation",
            field,
            "Required argument is missing".into(),
        ),
        VerdictKind::UndeclaredArgument => one(
            "argument_validation",
            field,
            "Argument is not declared in allow_args (strict_args)".into(),
        ),
        VerdictKind::ArgumentsNotObject => one(
            "argument_validation",
            json!("arguments"),
            "Arguments must be an object".into(),
        ),
        VerdictKind::ProtectedPath => one("protected_path", field, v.reason.clone()),
        VerdictKind::NotAllowlisted | VerdictKind::NoPolicy => {
            one("tool_not_allowed", json!("tool"), v.reason.clone())
        }
        VerdictKind::RuleBlock => one("tool_blocked", json!("tool"), v.reason.clone()),
        VerdictKind::RateLimited => one("rate_limited", json!("tool"), v.reason.clone()),
        VerdictKind::DlpBlocked | VerdictKind::DlpRedactionFailed => {
            one("dlp", field, v.reason.clone())
        }
        _ => Vec::new(),
    }
}

async fn revoke(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let Some(expected) = st.admin_digest else {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "revocation over HTTP is disabled: no admin credential is configured",
        );
    };
    let presented = bearer(req.headers()).map(|t| Sha256::digest(t.as_bytes()));
    let ok = presented
        .is_some_and(|p| aws_lc_rs::constant_time::verify_slices_are_equal(&p, &expected).is_ok());
    if !ok {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "admin credential required",
        );
    }
    let Some(service) = st.parts.tokens.clone() else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "identity is not enabled on this server",
        );
    };
    let (_, body) = match read_body(&st, req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let s = |k: &str| body.get(k).and_then(Value::as_str);
    let reason = s("reason");
    if reason.is_some_and(|r| r.len() > 1024) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "`reason` longer than 1024 bytes",
        );
    }
    let result = match s("type") {
        Some("session") => match s("session_id") {
            Some(id) if uuid::Uuid::try_parse(id).is_ok() => {
                service.revoke_session(id, reason).await
            }
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "`session_id` (a UUID) is required",
                );
            }
        },
        Some("token") => match s("token_nonce") {
            Some(n)
                if n.len() == 32 && n.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
            {
                service.revoke_token(n, reason).await
            }
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "`token_nonce` (32 lowercase hex) is required",
                );
            }
        },
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "`type` must be \"session\" or \"token\"",
            );
        }
    };
    let rev = match result {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "revocation failed");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "revocation store unavailable",
            );
        }
    };
    st.metrics
        .revocations
        .get_or_create(&RevocationLabels {
            r#type: rev.kind.as_str().to_string(),
        })
        .inc();
    let admin = format!("bearer:{}", &hex::encode(expected)[..12]);
    let record = audit::Record::event("REVOCATION")
        .with("type", rev.kind.as_str())
        .with("target", rev.target.clone())
        .with_opt("reason", rev.reason.clone())
        .with("admin", admin);
    if let Err(e) = st.audit(record) {
        tracing::error!(error = %e, "REVOCATION audit record not written");
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "revoked, but the audit record could not be written",
        );
    }
    tracing::info!(kind = rev.kind.as_str(), "revocation recorded");
    reply(
        StatusCode::OK,
        json!({"revoked": true, "type": rev.kind.as_str(), "target": rev.target, "revoked_at": rev.revoked_at}),
    )
}

async fn jwks(State(st): State<Arc<AppState>>) -> Response {
    let Some(service) = &st.parts.tokens else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "identity is not enabled on this server",
        );
    };
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            ),
        ],
        service.jwks().to_string(),
    )
        .into_response()
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    reply(
        StatusCode::OK,
        json!({
            "status": "healthy",
            // Always v1alpha2, even for a v1alpha1 policy (digest §10.26).
            "version": "v1alpha2",
            "policy_hash": st.parts.policy_hash,
            "uptime_seconds": st.started.elapsed().as_secs(),
        }),
    )
}

async fn metrics(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    let ctype = if openmetrics {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; version=0.0.4; charset=utf-8"
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, HeaderValue::from_static(ctype))],
        st.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_bearer() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            bearer(&m)
        };
        assert_eq!(h("Bearer abc"), Some("abc".into()));
        assert_eq!(h("bearer  abc "), Some("abc".into()));
        assert_eq!(h("Basic dXNlcjpwYXNz"), None);
        assert_eq!(h("Bearer "), None);
        assert_eq!(h("Bearerabc"), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }

    #[test]
    fn test_violations_shapes() {
        let p = Arc::new(
            policy::load_str(
                "apiVersion: aip.io/v1alpha2\nkind: AgentPolicy\nmetadata: {name: v}\nspec:\n  allowed_tools: [w]\n  tool_rules:\n    - tool: w\n      allow_args: {path: \"^/ok/.*\"}\n  protected_paths: [/etc/shadow]\n",
                "t",
            )
            .unwrap(),
        );
        let e = policy::Engine::new(
            p,
            policy::EvalContext::new("/").with_symlink_resolution(false),
        );
        let v = e.check_tool_call("w", Some(&json!({"path": "/bad"})));
        assert_eq!(
            violations_of(&v),
            vec![
                json!({"type": "argument_validation", "field": "path", "message": "Value does not match pattern: ^/ok/.*"})
            ]
        );
        let v = e.check_tool_call("w", Some(&json!({"path": "/etc/shadow"})));
        assert_eq!(violations_of(&v)[0]["type"], "protected_path");
        assert_eq!(violations_of(&v)[0]["field"], "path");
        let v = e.check_tool_call("x", Some(&json!({})));
        assert_eq!(violations_of(&v)[0]["type"], "tool_not_allowed");
        let v = e.check_tool_call("w", Some(&json!({"path": "/ok/1"})));
        assert!(violations_of(&v).is_empty());
    }
}
