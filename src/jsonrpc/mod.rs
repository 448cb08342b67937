//! JSON-RPC 2.0 over newline-delimited stdio: bounded framing, one strict parse per message, and
//! the error objects (standard and AIP codes) this proxy builds.
//!
//! Must not know policy. Whatever the parser accepts is exactly what the policy engine sees and
//! what is forwarded; anything two JSON implementations could read differently (duplicate keys,
//! case variants of envelope keys, batches, bad UTF-8) is rejected here.

pub mod error;
pub mod frame;
pub mod message;

pub use error::{ErrorReply, codes};
pub use frame::{Frame, LineReader, Oversize};
pub use message::{
    Kind, Message, Origin, ParseError, Part, StrictValue, fold_eq, is_case_variant, parse,
    parse_value, recover_id,
};
