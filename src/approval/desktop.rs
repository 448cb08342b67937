//! Desktop approver: a zenity or kdialog question dialog.
//!
//! The dialog text is built from data the agent controls (tool name, arguments), so markup is
//! disabled: zenity gets `--no-markup`; kdialog has no such switch and renders anything that
//! looks like rich text, so `<` and `>` are replaced by look-alike quotation marks (‹ ›) before
//! the text reaches it. Control characters other than newlines are dropped. The dialog is killed
//! when the request is cancelled or the timeout passes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Answer, ApprovalRequest, Approver, Cancel};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Zenity,
    Kdialog,
}

/// Asks through a desktop dialog program.
#[derive(Debug, Clone)]
pub struct DesktopApprover {
    program: PathBuf,
    kind: Kind,
}

impl DesktopApprover {
    /// Finds zenity or kdialog on `PATH` (zenity first). None when neither is installed or there
    /// is no graphical session (`DISPLAY`/`WAYLAND_DISPLAY` unset).
    pub fn detect() -> Option<Self> {
        let graphical = std::env::var_os("DISPLAY").is_some_and(|d| !d.is_empty())
            || std::env::var_os("WAYLAND_DISPLAY").is_some_and(|d| !d.is_empty());
        if !graphical {
            return None;
        }
        ["zenity", "kdialog"]
            .into_iter()
            .find_map(|name| find_in_path(name).and_then(|p| Self::with_program(&p)))
    }

    /// Uses the given program; its file name must be `zenity` or `kdialog`.
    pub fn with_program(program: &Path) -> Option<Self> {
        let kind = match program.file_name()?.to_str()? {
            "zenity" => Kind::Zenity,
            "kdialog" => Kind::Kdialog,
            _ => return None,
        };
        Some(DesktopApprover {
            program: program.to_owned(),
            kind,
        })
    }

    fn command(&self, req: &ApprovalRequest, timeout: Duration) -> Command {
        let text = dialog_text(req, timeout);
        let mut cmd = Command::new(&self.program);
        match self.kind {
            Kind::Zenity => {
                cmd.arg("--question")
                    .arg("--no-markup")
                    .arg("--title=aip: approve tool call?")
                    .arg("--ok-label=Allow")
                    .arg("--cancel-label=Deny")
                    .arg("--width=640")
                    .arg(format!("--timeout={}", timeout.as_secs().max(1)))
                    .arg(format!("--text={text}"));
            }
            Kind::Kdialog => {
                let text = text.replace('<', "‹").replace('>', "›");
                cmd.arg("--title")
                    .arg("aip: approve tool call?")
                    .arg("--yes-label")
                    .arg("Allow")
                    .arg("--no-label")
                    .arg("Deny")
                    .arg("--yesno")
                    .arg(text);
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    }
}

impl Approver for DesktopApprover {
    fn name(&self) -> String {
        match self.kind {
            Kind::Zenity => "zenity".into(),
            Kind::Kdialog => "kdialog".into(),
        }
    }

    fn ask(&self, req: &ApprovalRequest, cancel: &Cancel, timeout: Duration) -> Answer {
        let deadline = Instant::now() + timeout;
        let mut child = match self.command(req, timeout).spawn() {
            Ok(c) => c,
            Err(e) => {
                return Answer::Unavailable(format!(
                    "cannot start {}: {e}",
                    self.program.display()
                ));
            }
        };
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    return match (self.kind, status.code()) {
                        (_, Some(0)) => Answer::Approved,
                        (_, Some(1)) => Answer::Denied("the user clicked Deny".into()),
                        (Kind::Zenity, Some(5)) => Answer::TimedOut,
                        (_, code) => Answer::Unavailable(format!(
                            "{} exited with {code:?}",
                            self.program.display()
                        )),
                    };
                }
                Ok(None) => {}
                Err(e) => {
                    end(&mut child);
                    return Answer::Unavailable(format!("waiting for the dialog: {e}"));
                }
            }
            let step = (Instant::now() + Duration::from_millis(50)).min(deadline);
            if cancel.wait_until(step) {
                end(&mut child);
                return Answer::Cancelled;
            }
            if Instant::now() >= deadline {
                end(&mut child);
                return Answer::TimedOut;
            }
        }
    }
}

fn end(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn dialog_text(req: &ApprovalRequest, timeout: Duration) -> String {
    let raw = format!(
        "The MCP server \"{}\" wants to run the tool \"{}\".\n\n\
         Arguments (sensitive values redacted, long values truncated):\n{}\n\n\
         Session {}, request {}. No answer within {} s denies the call.",
        req.server,
        req.tool,
        req.args_preview,
        req.session_id,
        req.request_id,
        timeout.as_secs()
    );
    raw.chars()
        .filter(|c| *c == '\n' || !c.is_control())
        .collect()
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn req() -> ApprovalRequest {
        ApprovalRequest {
            server: "fs".into(),
            session_id: "s-1".into(),
            request_id: "7".into(),
            tool: "<b>delete</b>".into(),
            args_preview: "{\"path\":\"/tmp/x\u{7}\"}".into(),
        }
    }

    /// A stand-in dialog program: records its arguments, then exits with `code` after `delay`.
    fn fake(dir: &Path, name: &str, code: i32, delay: &str) -> PathBuf {
        let p = dir.join(name);
        let log = dir.join("argv");
        std::fs::write(
            &p,
            format!(
                "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n--\\n' \"$a\"; done > {}\nsleep {delay}\nexit {code}\n",
                log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn zenity_exit_codes_map_to_answers_and_markup_is_off() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cancel::new();
        for (code, want) in [(0, Answer::Approved), (5, Answer::TimedOut)] {
            let a = DesktopApprover::with_program(&fake(dir.path(), "zenity", code, "0")).unwrap();
            assert_eq!(a.ask(&req(), &c, Duration::from_secs(5)), want);
        }
        let a = DesktopApprover::with_program(&fake(dir.path(), "zenity", 1, "0")).unwrap();
        assert!(matches!(
            a.ask(&req(), &c, Duration::from_secs(5)),
            Answer::Denied(_)
        ));
        let argv = std::fs::read_to_string(dir.path().join("argv")).unwrap();
        assert!(argv.contains("--no-markup"), "{argv}");
        assert!(argv.contains("<b>delete</b>"));
        assert!(
            !argv.contains('\u{7}'),
            "control characters must be dropped"
        );
    }

    #[test]
    fn kdialog_text_cannot_be_rich_text() {
        let dir = tempfile::tempdir().unwrap();
        let a = DesktopApprover::with_program(&fake(dir.path(), "kdialog", 0, "0")).unwrap();
        assert_eq!(
            a.ask(&req(), &Cancel::new(), Duration::from_secs(5)),
            Answer::Approved
        );
        let argv = std::fs::read_to_string(dir.path().join("argv")).unwrap();
        assert!(argv.contains("‹b›delete‹/b›"), "{argv}");
        assert!(!argv.contains('<'));
    }

    #[test]
    fn timeout_and_cancel_kill_the_dialog() {
        let dir = tempfile::tempdir().unwrap();
        let a = DesktopApprover::with_program(&fake(dir.path(), "kdialog", 0, "30")).unwrap();
        let t0 = Instant::now();
        assert_eq!(
            a.ask(&req(), &Cancel::new(), Duration::from_millis(200)),
            Answer::TimedOut
        );
        assert!(t0.elapsed() < Duration::from_secs(10));
        let c = Cancel::new();
        let c2 = c.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            c2.cancel();
        });
        assert_eq!(
            a.ask(&req(), &c, Duration::from_secs(30)),
            Answer::Cancelled
        );
        t.join().unwrap();
    }

    #[test]
    fn only_known_programs_are_accepted() {
        assert!(DesktopApprover::with_program(Path::new("/usr/bin/sh")).is_none());
    }
}
