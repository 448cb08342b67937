//! JSON-RPC 2.0 over newline-delimited stdio: bounded framing, one strict parse per message, and
//! the error objects (standard and AIP codes) this proxy builds.
