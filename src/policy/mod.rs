//! AIP `AgentPolicy`: the model, loading from YAML with positions, name normalization, the pure
//! evaluation engine, protected paths, rate limits and DLP.
//!
//! Entry points: [`load_file`] / [`load_str`] build an immutable [`Policy`] (share it with
//! `Arc`); [`Engine::new`] evaluates messages against it ([`Engine::no_policy`] fails closed);
//! [`Dlp`] (from [`Policy::dlp`]) redacts content. Files: `yaml` (one parse, positions), `de`
//! (typed, located deserialization), `raw` (the file as written), `validate`/`check` and the
//! section files (load-time rules), `model` (validated types), `effective` (defaults filled
//! in), `normalize`, `re2` (RE2 meaning on the `regex` crate), `engine` (+ `args`, `paths`,
//! `ratelimit`, `verdict`, `context`), `dlp` (+ `dlp_encoding`, `stderr_filter`), `units`.
//!
//! Must not: do I/O after load (except protected-path symlink resolution), know about pipes,
//! processes or audit sinks.

mod args;
mod check;
mod context;
mod de;
mod dlp;
mod dlp_encoding;
mod effective;
pub mod egress_config;
mod engine;
mod error;
mod identity_config;
mod load;
mod model;
mod normalize;
mod paths;
mod ratelimit;
mod raw;
mod re2;
pub mod sandbox_config;
mod server_config;
mod stderr_filter;
mod units;
mod validate;
mod verdict;
pub mod yaml;

pub use args::string_of;
pub use context::{Clock, EvalContext, ManualClock, MonotonicClock};
pub use dlp::{
    DEFAULT_MAX_SCAN_SIZE, Direction, Dlp, DlpHit, DlpPattern, OnRedactionFailure, OnRequestMatch,
    Redaction, Scope,
};
pub use engine::{Engine, NOT_ALLOWLISTED_REASON, RequestDlp, RequestDlpAction};
pub use error::{Diagnostic, PolicyError, PolicyWarning};
pub use identity_config::{
    ExternalKey, IdentityConfig, KeyConfig, KeySource, NonceStorage, NonceStorageKind,
    SessionBinding, SigningAlgorithm,
};
pub use load::{load_file, load_str};
pub use model::{
    Action, ApiVersion, ArgPattern, DEFAULT_ALLOWED_METHODS, HashAlgorithm, Metadata, Mode, Policy,
    SchemaHash, Spec, ToolRule,
};
pub use normalize::normalize;
pub use paths::{MAX_RESOLUTIONS, TOO_MANY_PATHS};
pub use server_config::{Endpoints, FailOpenConstraints, FailoverMode, ServerConfig, TlsConfig};
pub use stderr_filter::StderrFilter;
pub use units::{RateLimit, format_duration, parse_duration};
pub use verdict::{
    ApprovalOutcome, Decision, Denial, MethodVerdict, ToolVerdict, VerdictKind, codes,
};
pub use yaml::MAX_POLICY_BYTES;
