//! The v1alpha2 parts of an instance: the policy signature gate, the session's token service,
//! and the validation server embedded when `spec.server.enabled`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::audit::Sink;
use crate::identity::{PolicyVerifyingKey, SignatureStatus, TokenService, check_policy_signature};
use crate::policy::{Engine, Policy};
use crate::server::{self, ServerHandle, ServerParts, ServerSettings};

use super::LaunchError;

/// How a policy's `metadata.signature` is checked.
#[derive(Debug, Clone, Default)]
pub struct SignaturePolicy {
    /// Ed25519 public key (PEM SPKI) that signed policies must verify against.
    pub pubkey: Option<PathBuf>,
    /// Refuse unsigned policies.
    pub require_signed: bool,
}

/// Verifies the policy's signature as configured. `Err` carries the reason for -32010.
pub fn check_signature(policy: &Policy, sig: &SignaturePolicy) -> Result<SignatureStatus, String> {
    let key = match &sig.pubkey {
        Some(p) => Some(PolicyVerifyingKey::from_file(p).map_err(|e| e.to_string())?),
        None => None,
    };
    check_policy_signature(policy.document(), key.as_ref(), sig.require_signed)
        .map_err(|e| e.reason())
}

/// The policy hash (SHA-256 of the canonical document).
pub fn policy_hash(policy: &Policy) -> Result<String, LaunchError> {
    crate::identity::policy_hash(policy.document())
        .map_err(|e| LaunchError::Identity(format!("cannot hash the policy: {e}")))
}

/// The session's token service, when `spec.identity.enabled`.
pub fn token_service(
    rt: &tokio::runtime::Handle,
    policy: &Policy,
    policy_path: &Path,
    hash: &str,
) -> Result<Option<Arc<TokenService>>, LaunchError> {
    let Some(cfg) =
        server::identity_config(policy).map_err(|e| LaunchError::Identity(e.to_string()))?
    else {
        return Ok(None);
    };
    let svc = rt
        .block_on(
            TokenService::builder(cfg)
                .policy_hash(hash)
                .policy_path(policy_path)
                .build_connected(),
        )
        .map_err(|e| LaunchError::Identity(e.to_string()))?;
    Ok(Some(Arc::new(svc)))
}

/// Starts the validation server when `spec.server.enabled`.
pub fn embedded_server(
    rt: &tokio::runtime::Handle,
    policy: &Policy,
    engine: Arc<Engine>,
    hash: &str,
    tokens: Option<Arc<TokenService>>,
    audit: Arc<dyn Sink>,
) -> Result<Option<ServerHandle>, LaunchError> {
    let Some(cfg) = policy.server().filter(|s| s.enabled) else {
        return Ok(None);
    };
    let settings = ServerSettings::from_policy(cfg, policy.identity());
    let parts = ServerParts {
        engine,
        policy_hash: hash.to_owned(),
        tokens,
        audit: Some(audit),
    };
    let handle = rt
        .block_on(server::start(settings, parts))
        .map_err(|e| LaunchError::Identity(format!("validation server: {e}")))?;
    tracing::info!(addr = %handle.local_addr(), "validation server listening");
    Ok(Some(handle))
}
