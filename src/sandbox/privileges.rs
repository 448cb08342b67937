//! Privileges of the server process: securebits locked, every capability set emptied
//! (bounding, ambient, inheritable, effective, permitted), the uid/gid switch, `no_new_privs`.
//! Applied in the server process after the mounts and rlimits, before Landlock and seccomp.
//! The result is verified by reading the sets back; this module grants nothing.

use caps::CapSet;
use nix::unistd::{Gid, Uid, setgroups, setresgid, setresuid};

use super::error::SetupFailure;
use super::spec::Layer;
use super::sys;

/// `SECBIT_NOROOT | _LOCKED`, `SECBIT_NO_SETUID_FIXUP_LOCKED` (fixup stays on: a uid change
/// clears capabilities), `SECBIT_KEEP_CAPS_LOCKED`, `SECBIT_NO_CAP_AMBIENT_RAISE | _LOCKED`.
pub const SECUREBITS: u32 = (1 << 0) | (1 << 1) | (1 << 3) | (1 << 5) | (1 << 6) | (1 << 7);

/// Highest capability number of the running kernel (`/proc/sys/kernel/cap_last_cap`; read by the
/// setup processes before `/proc` is replaced), or 63 to cover every possible bit.
pub fn last_cap() -> u32 {
    static LAST: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *LAST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(63)
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub securebits_locked: bool,
    pub no_new_privs: bool,
}

fn fail(step: &str, err: impl std::fmt::Display) -> SetupFailure {
    SetupFailure::reason(Layer::Capabilities, step, err.to_string())
}

/// Drops everything. `switch` is the uid/gid to become when the supervisor is root; `None` in a
/// user namespace, where only the caller's own ids are mapped and it keeps them.
pub fn drop_all(switch: Option<(u32, u32)>) -> Result<Outcome, SetupFailure> {
    sys::set_securebits(SECUREBITS).map_err(|e| fail("lock securebits", e))?;
    sys::clear_bounding_set(last_cap()).map_err(|e| fail("clear bounding set", e))?;
    caps::clear(None, CapSet::Ambient).map_err(|e| fail("clear ambient set", e))?;
    caps::clear(None, CapSet::Inheritable).map_err(|e| fail("clear inheritable set", e))?;
    if let Some((uid, gid)) = switch {
        let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
        setgroups(&[gid]).map_err(|e| fail("setgroups", e))?;
        setresgid(gid, gid, gid).map_err(|e| fail("setresgid", e))?;
        setresuid(uid, uid, uid).map_err(|e| fail("setresuid", e))?;
    }
    caps::clear(None, CapSet::Effective).map_err(|e| fail("clear effective set", e))?;
    caps::clear(None, CapSet::Permitted).map_err(|e| fail("clear permitted set", e))?;
    nix::sys::prctl::set_no_new_privs().map_err(|e| fail("no_new_privs", e))?;

    for set in [
        CapSet::Bounding,
        CapSet::Ambient,
        CapSet::Inheritable,
        CapSet::Effective,
        CapSet::Permitted,
    ] {
        let left = caps::read(None, set).map_err(|e| fail("read capabilities back", e))?;
        if !left.is_empty() {
            return Err(fail("verify", format!("{set:?} set still holds {left:?}")));
        }
    }
    let bits = sys::securebits().map_err(|e| fail("read securebits back", e))?;
    Ok(Outcome {
        securebits_locked: bits & SECUREBITS == SECUREBITS,
        no_new_privs: nix::sys::prctl::get_no_new_privs().unwrap_or(false),
    })
}

/// The reaper's first reduction, before it starts the server (which inherits it and drops the
/// same anyway): non-dumpable, bounding, ambient and inheritable sets emptied, `no_new_privs`.
/// Only the effective and permitted sets, which the server still needs for its own steps, are
/// left for [`reduce_to_kill`]; the server's `execve` waits for nothing else in the reaper.
pub fn prepare_reaper() -> Result<(), SetupFailure> {
    nix::sys::prctl::set_dumpable(false).map_err(|e| fail("reaper dumpable", e))?;
    sys::clear_bounding_set(last_cap()).map_err(|e| fail("reaper bounding set", e))?;
    caps::clear(None, CapSet::Ambient).map_err(|e| fail("reaper ambient set", e))?;
    caps::clear(None, CapSet::Inheritable).map_err(|e| fail("reaper inheritable set", e))?;
    nix::sys::prctl::set_no_new_privs().map_err(|e| fail("reaper no_new_privs", e))?;
    Ok(())
}

/// After [`prepare_reaper`], once the server runs: the reaper keeps only `CAP_KILL` (to signal
/// the server's processes whatever their uid); with `prepare_reaper` it is non-dumpable, so
/// nothing in the sandbox can read its memory through `/proc`.
pub fn reduce_to_kill() -> Result<(), SetupFailure> {
    let keep: caps::CapsHashSet = [caps::Capability::CAP_KILL].into_iter().collect();
    caps::set(None, CapSet::Effective, &keep).map_err(|e| fail("reaper effective set", e))?;
    caps::set(None, CapSet::Permitted, &keep).map_err(|e| fail("reaper permitted set", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn securebits_lock_everything_but_keep_the_setuid_fixup() {
        assert_eq!(SECUREBITS, 0b1110_1011);
        assert_eq!(
            SECUREBITS & (1 << 2),
            0,
            "SECBIT_NO_SETUID_FIXUP must stay off"
        );
        assert_eq!(SECUREBITS & (1 << 4), 0, "SECBIT_KEEP_CAPS must stay off");
    }
}
