//! `aip connect`: what an MCP client's configuration runs. Connects to aipd's socket, sends the
//! hello, and on a welcome copies bytes both ways between its stdio and the socket until the
//! session ends. Copies unbuffered (the stdio descriptors are duplicated into plain files), so a
//! message is forwarded as soon as it is read.
//!
//! Must not: parse or change the JSON-RPC stream (aipd's proxy does that; the shim runs as the
//! user and enforces nothing).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::hello::{self, Hello, HelloError, Reason, Reply};

/// How long the shim waits for aipd's answer to its hello.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest reply line accepted.
const MAX_REPLY: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot reach aipd at {path}: {source}")]
    Unreachable {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("aipd did not answer the hello: {0}")]
    Hello(#[from] HelloError),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// aipd's answer to the hello.
pub enum Connected {
    /// The session runs; bridge `stream` (after writing `early`, bytes that followed the
    /// welcome line).
    Welcome {
        stream: UnixStream,
        early: Vec<u8>,
        session: String,
    },
    Refused {
        code: i64,
        reason: Reason,
        message: String,
    },
}

/// Connects to `socket` and asks for `server`.
pub fn connect(socket: &Path, server: &str) -> Result<Connected, ConnectError> {
    let stream = UnixStream::connect(socket).map_err(|source| ConnectError::Unreachable {
        path: socket.display().to_string(),
        source,
    })?;
    let mut line = serde_json::to_vec(&Hello::new(server)).map_err(io::Error::other)?;
    line.push(b'\n');
    (&stream).write_all(&line)?;
    stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
    let (reply, early) = hello::read_line(&mut &stream, MAX_REPLY)?;
    stream.set_read_timeout(None)?;
    Ok(match hello::parse_reply(&reply)? {
        Reply::Welcome { session, .. } => Connected::Welcome {
            stream,
            early,
            session,
        },
        Reply::Refused {
            code,
            reason,
            message,
            ..
        } => Connected::Refused {
            code,
            reason,
            message,
        },
    })
}

/// Copies stdin → `stream` and `stream` → stdout until aipd closes the session. Returns when
/// the daemon side is done (the client closing stdin ends the session through aipd).
pub fn bridge(stream: UnixStream, early: &[u8]) -> io::Result<()> {
    let mut stdout = File::from(io::stdout().as_fd().try_clone_to_owned()?);
    let mut stdin = File::from(io::stdin().as_fd().try_clone_to_owned()?);
    let upstream = stream.try_clone()?;
    std::thread::Builder::new()
        .name("aip-connect-in".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let mut up = &upstream;
            let _ = io::copy(&mut stdin, &mut up);
            // End of the client's input: tell aipd, which ends the session gracefully.
            let _ = upstream.shutdown(std::net::Shutdown::Write);
        })?;
    stdout.write_all(early)?;
    let mut down = &stream;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match down.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        stdout.write_all(&buf[..n])?;
    }
}
