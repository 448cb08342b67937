//! Session lifecycle: who ends the session and how the server is shut down.
//!
//! Client end of input, a closed client output, or SIGINT/SIGTERM/SIGHUP start the shutdown:
//! once no call waits for a human, the server's stdin is closed; if the server has not exited
//! after `shutdown_grace`, every process of it gets SIGTERM, then SIGKILL after `kill_grace`.
//! Server output keeps being drained and forwarded meanwhile; the session ends when the server
//! has exited and its stdout is fully read (bounded by `drain_timeout` after exit, in case a
//! stray process kept the pipe open). Requests still unanswered then get an error reply.

use std::sync::Mutex;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::{ServerExit, ServerProcess, Shared};

/// Something the lifecycle must react to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The client closed its output (our stdin).
    ClientEof,
    /// Writing to the client failed (it closed our stdout).
    ClientGone,
    /// Writing to the server failed (it closed its stdin).
    ServerInputGone,
    /// The server closed its stdout and everything was forwarded.
    ServerStdoutEof,
    /// The server (the whole sandbox) exited.
    ServerExited(ServerExit),
    /// Waiting for the server failed.
    WaitFailed(String),
    /// SIGINT, SIGTERM or SIGHUP reached the proxy.
    Signal(i32),
}

/// Coordinates closing the server's stdin with calls still waiting for approval.
#[derive(Default)]
pub(super) struct Shutdown {
    state: Mutex<ShutdownState>,
}

#[derive(Default)]
struct ShutdownState {
    requested: bool,
    stdin_closed: bool,
}

impl Shutdown {
    /// Asks for the server's stdin to be closed as soon as no call waits for approval.
    /// Returns true if it was closed now.
    pub fn request(&self, sh: &Shared) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.requested = true;
        Self::close_if_idle(&mut st, sh)
    }

    /// Closes stdin if shutdown was requested and nothing waits for approval any more.
    pub fn poll(&self, sh: &Shared) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        Self::close_if_idle(&mut st, sh)
    }

    fn close_if_idle(st: &mut ShutdownState, sh: &Shared) -> bool {
        if st.requested
            && !st.stdin_closed
            && sh.asks.load(std::sync::atomic::Ordering::SeqCst) == 0
        {
            sh.to_server.close();
            st.stdin_closed = true;
            return true;
        }
        false
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    /// Waiting for approvals to finish before closing stdin.
    Closing,
    /// stdin closed; waiting for the server to exit by itself.
    Draining(Instant),
    /// SIGTERM sent.
    Terminating(Instant),
    /// SIGKILL sent.
    Killed,
}

/// Runs until the server has exited and its output is drained. Returns its exit status.
pub(super) fn supervise(
    sh: &Shared,
    server: &dyn ServerProcess,
    events: &Receiver<Event>,
) -> ServerExit {
    let mut phase = Phase::Running;
    let mut exited: Option<ServerExit> = None;
    let mut exit_seen_at: Option<Instant> = None;
    let mut stdout_done = false;
    // Start-up memory is given back on the first quiet tick, once every pump thread is past its
    // own start-up; done earlier, those threads would fault much of it straight back in.
    let mut release_memory = sh.cfg.release_startup_memory;
    loop {
        if let (Some(status), true) = (exited, stdout_done) {
            return status;
        }
        if let (Some(status), Some(at)) = (exited, exit_seen_at)
            && at.elapsed() >= sh.cfg.drain_timeout
        {
            tracing::warn!("server exited but its stdout stayed open; stopping the drain");
            server.kill();
            return status;
        }
        if phase == Phase::Closing && sh.shutdown.poll(sh) {
            phase = Phase::Draining(Instant::now());
        }
        let deadline = match phase {
            Phase::Draining(t) => Some(t + sh.cfg.shutdown_grace),
            Phase::Terminating(t) => Some(t + sh.cfg.kill_grace),
            _ => None,
        };
        let mut wait = Duration::from_millis(200);
        if let Some(d) = deadline {
            wait = wait.min(d.saturating_duration_since(Instant::now()));
        }
        if let Some(at) = exit_seen_at {
            wait = wait.min((at + sh.cfg.drain_timeout).saturating_duration_since(Instant::now()));
        }
        match events.recv_timeout(wait) {
            Ok(ev) => {
                tracing::debug!(event = ?ev, phase = ?phase, "lifecycle event");
                match ev {
                    Event::ClientEof
                    | Event::ClientGone
                    | Event::Signal(_)
                    | Event::ServerInputGone => {
                        if let Event::Signal(n) = ev {
                            sh.cancel_approvals();
                            tracing::info!(signal = n, "signal received; shutting the server down");
                        }
                        if phase == Phase::Running {
                            phase = if sh.shutdown.request(sh) {
                                Phase::Draining(Instant::now())
                            } else {
                                Phase::Closing
                            };
                        }
                    }
                    Event::ServerStdoutEof => {
                        stdout_done = true;
                        // A server that closed its stdout can no longer answer: end it.
                        if phase == Phase::Running {
                            sh.cancel_approvals();
                            phase = if sh.shutdown.request(sh) {
                                Phase::Draining(Instant::now())
                            } else {
                                Phase::Closing
                            };
                        }
                    }
                    Event::ServerExited(status) => {
                        exited = Some(status);
                        exit_seen_at = Some(Instant::now());
                        sh.cancel_approvals();
                        sh.shutdown.request(sh);
                    }
                    Event::WaitFailed(why) => {
                        tracing::error!(error = %why, "waiting for the server failed");
                        server.kill();
                        exited = Some(ServerExit::Code(1));
                        exit_seen_at = Some(Instant::now());
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                if release_memory && phase == Phase::Running {
                    release_memory = false;
                    super::memory::release_startup_pages();
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                return exited.unwrap_or(ServerExit::Code(1));
            }
        }
        if exited.is_none() {
            match phase {
                Phase::Draining(t) if t.elapsed() >= sh.cfg.shutdown_grace => {
                    tracing::info!("server still running after its stdin closed; sending SIGTERM");
                    server.terminate();
                    phase = Phase::Terminating(Instant::now());
                }
                Phase::Terminating(t) if t.elapsed() >= sh.cfg.kill_grace => {
                    tracing::warn!("server ignored SIGTERM; sending SIGKILL");
                    server.kill();
                    phase = Phase::Killed;
                }
                _ => {}
            }
        }
    }
}
