//! AIP v1alpha2 identity: signed session tokens (issue, rotate, validate, revoke), signing keys
//! and JWKS, the JCS policy hash, policy signatures, tool schema hashes, the stdio token
//! convention, and the nonce/revocation store (memory, Redis). A leaf module: it must not serve
//! HTTP, read policy files, evaluate policy or depend on `policy`; callers hand in plain
//! configuration ([`IdentityConfig`]) and documents as `serde_json::Value`.

mod binding;
mod canonical;
mod clock;
mod config;
mod keys;
mod redis_store;
mod service;
mod signature;
mod stdio;
mod store;
mod token;
mod yaml_edit;

pub use binding::{Binding, BindingField};
pub use canonical::{
    CanonicalError, SchemaHashAlgorithm, SchemaHashFormatError, SchemaHashMismatch, canonical_json,
    canonical_policy, check_schema_hash, parse_schema_hash, policy_hash, schema_hash,
    schema_hash_with, schema_object, try_schema_hash_with,
};
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{
    BindingMode, ConfigError, IdentityConfig, KeySource, MAX_TOKEN_TTL, NonceBackend,
    NonceStorageConfig, SigningAlgorithm, fmt_duration,
};
pub use keys::{KeyError, KeyRing, MAX_TOKEN_LEN, TOKEN_TYP, VerifyError};
pub use redis_store::RedisStore;
pub use service::{
    BindingCheck, IdentityError, IssueEvent, IssuedToken, Rejection, TokenGrant, TokenService,
    TokenServiceBuilder, ValidToken, store_from_config,
};
pub use signature::{
    ED25519_PREFIX, PolicySigningKey, PolicyVerifyingKey, SignatureError, SignatureStatus,
    check_policy_signature, sign_policy, verify_policy_signature,
};
pub use stdio::{StdioTokenError, TOKEN_META_KEY, TOKEN_METHOD, take_stdio_token, token_result};
pub use store::{MemoryStore, NonceStore, Revocation, RevocationKind, StoreError, StoreFuture};
pub use token::{
    TOKEN_REQUIRED_MESSAGE, TOKEN_VERSION, TokenClaims, TokenError, codes, format_time, parse_time,
    token_required_data,
};
pub use yaml_edit::{YamlEditError, set_metadata_signature};
