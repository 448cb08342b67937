//! Audit records (AIP spec §6 fields plus session and request ids) and the sinks they go to
//! (JSONL file, journald, stderr). A record is handed to the sink, written and flushed, before the
//! message it describes is forwarded; a sink that cannot write blocks the call.
