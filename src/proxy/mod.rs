//! The session pumps: client → server and server → client. Each line is framed, parsed once,
//! decided, audited, then forwarded byte for byte (or answered with an error built here).
