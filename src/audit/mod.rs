//! Audit records (AIP spec §6 fields plus session and request ids) and the sinks they go to
//! (JSONL file, journald, stderr). A record is handed to the sink, written and flushed, before the
//! message it describes is forwarded; a sink that cannot write blocks the call.
//!
//! This module decides nothing and never drops or throttles a record: callers that can be flooded
//! by an untrusted party (denied DNS queries, say) rate-limit before building records.

pub mod journald;
mod record;
mod sink;

pub use journald::JournaldSink;
pub use record::{Direction, Record};
pub use sink::{AuditError, JsonlSink, MemorySink, MultiSink, Sink, StderrSink};
