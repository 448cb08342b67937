//! Errors of `sandbox::spawn`. Every error names the layer and the rule or step that failed and,
//! where the fix is known, carries a hint on its own line. Failures inside the sandbox's setup
//! processes travel to the supervisor as [`SetupFailure`] (serialized over a close-on-exec pipe),
//! so `spawn` reports them synchronously. Nothing here prints or logs.

use std::fmt;
use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::spec::Layer;

/// Why a sandbox could not be started. Serializable so the daemon's spawn server can hand it to
/// aipd with its text and layer intact.
#[derive(Debug, thiserror::Error, Serialize, Deserialize)]
pub enum SandboxError {
    #[error("invalid sandbox spec: {field}: {message}")]
    InvalidSpec { field: String, message: String },

    #[error("filesystem: {what} {} is not visible in the sandbox\nhint: {hint}", path.display())]
    NotVisible {
        what: String,
        path: PathBuf,
        hint: String,
    },

    #[error(
        "filesystem: {} would be visible inside the sandbox through the grant {}\nhint: move it out of granted \
         directories or narrow the grant; the policy and audit files must never be reachable by the server",
        hidden.display(),
        through.display()
    )]
    Exposed { hidden: PathBuf, through: PathBuf },

    /// A layer the spec requires is not available on this kernel (and may not degrade).
    #[error("{layer}: {reason}\nhint: {hint}")]
    Unavailable {
        layer: Layer,
        reason: String,
        hint: String,
    },

    /// A step failed inside the sandbox's setup processes.
    #[error("{0}")]
    Setup(SetupFailure),

    /// A step failed in the supervisor itself (pipes, fork, cgroup files).
    #[error("sandbox: {step}: {source}")]
    Supervisor {
        step: std::borrow::Cow<'static, str>,
        #[source]
        #[serde(with = "io_error_wire")]
        source: io::Error,
    },

    #[error("sandbox: setup did not finish within {0} ms; the sandbox was killed")]
    Timeout(u64),

    #[error("sandbox: a setup process died without reporting why ({0})")]
    Died(String),
}

impl SandboxError {
    pub(crate) fn supervisor(step: &'static str) -> impl FnOnce(io::Error) -> SandboxError {
        move |source| SandboxError::Supervisor {
            step: step.into(),
            source,
        }
    }

    /// The layer at fault, when one is known.
    pub fn layer(&self) -> Option<Layer> {
        match self {
            Self::NotVisible { .. } | Self::Exposed { .. } => Some(Layer::Filesystem),
            Self::Unavailable { layer, .. } => Some(*layer),
            Self::Setup(failure) => Some(failure.layer),
            _ => None,
        }
    }
}

/// A failure inside the sandbox's setup, as reported by the process that hit it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetupFailure {
    pub layer: Layer,
    /// The step, e.g. `"bind /usr"` or `"execve"`.
    pub step: String,
    /// The OS error number, when the step was a syscall.
    pub errno: Option<i32>,
    /// Extra detail (the OS error text, or a reason).
    pub detail: String,
    pub hint: Option<String>,
}

impl SetupFailure {
    pub fn new(layer: Layer, step: impl Into<String>, err: &io::Error) -> Self {
        SetupFailure {
            layer,
            step: step.into(),
            errno: err.raw_os_error(),
            detail: err.to_string(),
            hint: None,
        }
    }

    pub fn reason(layer: Layer, step: impl Into<String>, detail: impl Into<String>) -> Self {
        SetupFailure {
            layer,
            step: step.into(),
            errno: None,
            detail: detail.into(),
            hint: None,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for SetupFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.layer, self.step, self.detail)?;
        if let Some(hint) = &self.hint {
            write!(f, "\nhint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SetupFailure {}

/// An `io::Error` across a socket: its errno when it has one (so `kind()` and the text come back
/// the same), else its text.
mod io_error_wire {
    use std::io;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Wire {
        errno: Option<i32>,
        message: String,
    }

    pub fn serialize<S: Serializer>(e: &io::Error, s: S) -> Result<S::Ok, S::Error> {
        Wire {
            errno: e.raw_os_error(),
            message: e.to_string(),
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<io::Error, D::Error> {
        let w = Wire::deserialize(d)?;
        Ok(match w.errno {
            Some(n) => io::Error::from_raw_os_error(n),
            None => io::Error::other(w.message),
        })
    }
}
