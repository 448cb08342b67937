//! seccomp: default-deny syscall allowlists per runtime, kept as reviewed data in
//! `seccomp/profiles/*.json` (every entry carries a comment naming who needs it), compiled once
//! per process with seccompiler for x86_64 and aarch64, and installed last, right before
//! `execve`, on the server process only.
//!
//! Three filters are stacked because seccompiler gives each filter exactly two actions and the
//! kernel applies the most severe result of all filters (KILL > ERRNO > ALLOW). They are
//! installed in this order, the allowlist last because it denies `seccomp(2)` itself:
//! 1. guard (hand-written, x86_64 only): kill the process on a foreign architecture and on x32
//!    syscall numbers (`nr >= 0x40000000`), which share `AUDIT_ARCH_X86_64`;
//! 2. enosys: `clone3` and `io_uring_*` → ERRNO(ENOSYS), so glibc falls back to the filterable
//!    `clone` and libuv to epoll; everything else ALLOW (this filter only decides those);
//! 3. allowlist: listed syscalls (some with argument filters) → ALLOW, anything else →
//!    ERRNO(EPERM); seccompiler kills on a foreign architecture here too. The enosys syscalls
//!    are ALLOW here so the more severe ENOSYS of filter 2 is the result, whatever the order of
//!    evaluation (equal actions would be decided by installation order). The three filters are
//!    only ever installed together.
//!
//! This module must not build rule lists in code: what is allowed lives in the JSON files.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use seccompiler::{BpfProgram, TargetArch, sock_filter};
use serde::Deserialize;
use serde_json::{Value, json};

use super::spec::SeccompProfile;

/// The profile files, by name. `common` is only ever included.
const PROFILE_FILES: [(&str, &str); 4] = [
    ("common", include_str!("seccomp/profiles/common.json")),
    ("node", include_str!("seccomp/profiles/node.json")),
    ("python", include_str!("seccomp/profiles/python.json")),
    ("generic", include_str!("seccomp/profiles/generic.json")),
];

/// Syscalls the issue and our threat model deny; no profile may allow them (checked by tests and
/// at compile time of each profile).
pub const DENIED: &[&str] = &[
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "process_madvise",
    "pidfd_getfd",
    "kcmp",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "keyctl",
    "add_key",
    "request_key",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "open_tree",
    "move_mount",
    "mount_setattr",
    "unshare",
    "setns",
    "clone3",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "open_by_handle_at",
    "name_to_handle_at",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "iopl",
    "ioperm",
    "modify_ldt",
    "reboot",
    "swapon",
    "swapoff",
    "syslog",
    "acct",
    "quotactl",
    "quotactl_fd",
    "vhangup",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "sethostname",
    "setdomainname",
    "fanotify_init",
    "memfd_secret",
    "uselib",
    "ustat",
    "sysfs",
    "_sysctl",
    "mbind",
    "set_mempolicy",
    "migrate_pages",
    "move_pages",
    "lookup_dcookie",
    "nfsservctl",
];

/// Errors compiling a profile (a bug in the shipped data, caught by the unit tests).
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp profile {profile}: {message}")]
    Profile { profile: String, message: String },
    #[error("seccomp profile {profile} for {arch}: {source}")]
    Compile {
        profile: String,
        arch: &'static str,
        #[source]
        source: seccompiler::Error,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    #[allow(dead_code)]
    comment: String,
    #[serde(default)]
    include: Vec<String>,
    allow: Vec<Entry>,
    #[serde(default)]
    enosys: Vec<Entry>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    syscall: String,
    #[allow(dead_code)]
    comment: String,
    /// Architectures the syscall exists on; absent = all.
    #[serde(default)]
    arch: Option<Vec<String>>,
    /// OR of AND-lists of argument conditions; empty = unconditional.
    #[serde(default)]
    rules: Vec<Vec<Condition>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Condition {
    arg: u8,
    #[serde(rename = "type")]
    len: String,
    op: String,
    value: u64,
    #[serde(default)]
    mask: Option<u64>,
    #[allow(dead_code)]
    comment: String,
}

/// Architectures we compile for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    fn target(self) -> TargetArch {
        match self {
            Arch::X86_64 => TargetArch::x86_64,
            Arch::Aarch64 => TargetArch::aarch64,
        }
    }

    /// The architecture this binary runs on, if we have profiles for it.
    pub fn native() -> Option<Arch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Arch::X86_64),
            "aarch64" => Some(Arch::Aarch64),
            _ => None,
        }
    }
}

/// The compiled filters of one profile, in installation order.
#[derive(Debug, Clone)]
pub struct Filters {
    pub profile: SeccompProfile,
    pub arch: Arch,
    pub programs: Vec<BpfProgram>,
}

/// The allow and enosys lists of a profile after resolving includes.
#[derive(Debug, Clone)]
struct Resolved {
    allow: Vec<Entry>,
    enosys: Vec<Entry>,
}

fn load(name: &str, depth: u32) -> Result<Resolved, SeccompError> {
    let err = |message: String| SeccompError::Profile {
        profile: name.to_string(),
        message,
    };
    let text = PROFILE_FILES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
        .ok_or_else(|| err("no such profile".into()))?;
    let file: ProfileFile = serde_json::from_str(text).map_err(|e| err(e.to_string()))?;
    if depth > 2 {
        return Err(err("includes nest too deeply".into()));
    }
    let mut resolved = Resolved {
        allow: Vec::new(),
        enosys: Vec::new(),
    };
    for include in &file.include {
        let inner = load(include, depth + 1)?;
        resolved.allow.extend(inner.allow);
        resolved.enosys.extend(inner.enosys);
    }
    resolved.allow.extend(file.allow);
    resolved.enosys.extend(file.enosys);
    let mut seen = BTreeSet::new();
    for entry in resolved.allow.iter().chain(&resolved.enosys) {
        if !seen.insert(entry.syscall.as_str()) {
            return Err(err(format!("{} is listed twice", entry.syscall)));
        }
        if resolved.allow.iter().any(|e| e.syscall == entry.syscall)
            && DENIED.contains(&entry.syscall.as_str())
        {
            return Err(err(format!(
                "{} is on the deny list and may not be allowed",
                entry.syscall
            )));
        }
    }
    Ok(resolved)
}

fn condition_json(c: &Condition) -> Result<Value, String> {
    if !matches!(c.len.as_str(), "dword" | "qword") {
        return Err(format!("bad argument length {}", c.len));
    }
    let op = match (c.op.as_str(), c.mask) {
        ("masked_eq", Some(mask)) => json!({ "masked_eq": mask }),
        ("eq" | "ne" | "lt" | "le" | "gt" | "ge", None) => json!(c.op),
        _ => return Err(format!("bad operator {} (mask {:?})", c.op, c.mask)),
    };
    Ok(json!({ "index": c.arg, "type": c.len, "op": op, "val": c.value }))
}

/// Turns entries into seccompiler's JSON filter body for one architecture.
fn filter_json(entries: &[Entry], arch: Arch) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for entry in entries {
        if let Some(arches) = &entry.arch {
            if arches.iter().any(|a| a != "x86_64" && a != "aarch64") {
                return Err(format!(
                    "{}: unknown architecture in {arches:?}",
                    entry.syscall
                ));
            }
            if !arches.iter().any(|a| a == arch.name()) {
                continue;
            }
        }
        if entry.rules.is_empty() {
            out.push(json!({ "syscall": entry.syscall }));
        }
        for rule in &entry.rules {
            let args = rule
                .iter()
                .map(condition_json)
                .collect::<Result<Vec<_>, _>>()?;
            out.push(json!({ "syscall": entry.syscall, "args": args }));
        }
    }
    Ok(out)
}

/// Compiles `profile` for `arch`.
pub fn compile(profile: SeccompProfile, arch: Arch) -> Result<Filters, SeccompError> {
    let resolved = load(profile.name(), 0)?;
    let perr = |message: String| SeccompError::Profile {
        profile: profile.name().to_string(),
        message,
    };
    let mut allow = filter_json(&resolved.allow, arch).map_err(perr)?;
    let enosys = filter_json(&resolved.enosys, arch).map_err(perr)?;
    // Decided by the enosys filter (see the module documentation).
    allow.extend(enosys.iter().cloned());
    let doc = json!({
        "allow": { "mismatch_action": { "errno": libc::EPERM }, "match_action": "allow", "filter": allow },
        "enosys": { "mismatch_action": "allow", "match_action": { "errno": libc::ENOSYS }, "filter": enosys },
    });
    let text = doc.to_string();
    let mut map =
        seccompiler::compile_from_json(text.as_bytes(), arch.target()).map_err(|source| {
            SeccompError::Compile {
                profile: profile.name().to_string(),
                arch: arch.name(),
                source,
            }
        })?;
    let mut programs = Vec::new();
    if let Some(guard) = guard_program(arch) {
        programs.push(guard);
    }
    for name in ["enosys", "allow"] {
        let program = map
            .remove(name)
            .ok_or_else(|| perr(format!("filter {name} missing")))?;
        programs.push(program);
    }
    Ok(Filters {
        profile,
        arch,
        programs,
    })
}

/// The filters of `profile` for the running architecture, compiled at first use.
pub fn native(profile: SeccompProfile) -> Result<&'static Filters, SeccompError> {
    static CACHE: [OnceLock<Result<Filters, String>>; 3] =
        [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let index = SeccompProfile::ALL
        .iter()
        .position(|p| *p == profile)
        .unwrap_or(0);
    let arch = Arch::native().ok_or_else(|| SeccompError::Profile {
        profile: profile.name().to_string(),
        message: format!("no profiles for architecture {}", std::env::consts::ARCH),
    })?;
    CACHE[index]
        .get_or_init(|| compile(profile, arch).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|message| SeccompError::Profile {
            profile: profile.name().to_string(),
            message: message.clone(),
        })
}

/// Installs the filters on the calling thread, in order. `seccompiler::apply_filter` sets
/// `no_new_privs` first. Scope: calling thread and its future children; irreversible.
pub fn install(filters: &Filters) -> Result<(), seccompiler::Error> {
    for program in &filters.programs {
        seccompiler::apply_filter(program)?;
    }
    Ok(())
}

/// The x86_64 guard: kill on a foreign architecture or an x32 syscall number, allow the rest
/// (the allowlist decides). aarch64 has no compat numbering to reject, and seccompiler's
/// allowlist already kills on a foreign architecture, so no guard there.
fn guard_program(arch: Arch) -> Option<BpfProgram> {
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    const OFFSET_NR: u32 = 0;
    const OFFSET_ARCH: u32 = 4;
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let stmt = |code, k| sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |code, k, jt, jf| sock_filter { code, jt, jf, k };
    match arch {
        Arch::Aarch64 => None,
        Arch::X86_64 => Some(vec![
            stmt(LD_W_ABS, OFFSET_ARCH),
            jump(JEQ_K, AUDIT_ARCH_X86_64, 0, 3),
            stmt(LD_W_ABS, OFFSET_NR),
            jump(JGE_K, X32_SYSCALL_BIT, 1, 0),
            stmt(RET_K, libc::SECCOMP_RET_ALLOW),
            stmt(RET_K, libc::SECCOMP_RET_KILL_PROCESS),
        ]),
    }
}

/// Syscall names a profile allows (after includes) for `arch`, for tests and `aip doctor`.
pub fn allowed_names(
    profile: SeccompProfile,
    arch: Arch,
) -> Result<BTreeMap<String, bool>, SeccompError> {
    let resolved = load(profile.name(), 0)?;
    Ok(resolved
        .allow
        .iter()
        .filter(|e| {
            e.arch
                .as_ref()
                .is_none_or(|a| a.iter().any(|x| x == arch.name()))
        })
        .map(|e| (e.syscall.clone(), !e.rules.is_empty()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_profile_compiles_for_every_architecture() {
        for profile in SeccompProfile::ALL {
            for arch in Arch::ALL {
                let filters = compile(profile, arch).unwrap_or_else(|e| panic!("{e}"));
                let expected = if arch == Arch::X86_64 { 3 } else { 2 };
                assert_eq!(filters.programs.len(), expected);
                for program in &filters.programs {
                    assert!(
                        program.len() < 4096,
                        "{} {} too long",
                        profile.name(),
                        arch.name()
                    );
                }
            }
        }
    }

    #[test]
    fn no_profile_allows_a_denied_syscall() {
        for profile in SeccompProfile::ALL {
            for arch in Arch::ALL {
                let names = allowed_names(profile, arch).unwrap();
                for denied in DENIED {
                    assert!(
                        !names.contains_key(*denied),
                        "{} allows {denied}",
                        profile.name()
                    );
                }
            }
        }
    }

    #[test]
    fn risky_syscalls_are_only_allowed_with_argument_filters() {
        for profile in SeccompProfile::ALL {
            let names = allowed_names(profile, Arch::X86_64).unwrap();
            for filtered in [
                "clone",
                "socket",
                "socketpair",
                "ioctl",
                "prctl",
                "personality",
            ] {
                assert_eq!(
                    names.get(filtered),
                    Some(&true),
                    "{} {filtered}",
                    profile.name()
                );
            }
        }
    }

    #[test]
    fn clone3_and_io_uring_are_in_the_enosys_filter() {
        let resolved = load("node", 0).unwrap();
        let names: Vec<_> = resolved.enosys.iter().map(|e| e.syscall.as_str()).collect();
        assert_eq!(
            names,
            [
                "clone3",
                "io_uring_setup",
                "io_uring_enter",
                "io_uring_register"
            ]
        );
    }

    #[test]
    fn every_entry_has_a_comment() {
        for (name, text) in PROFILE_FILES {
            let file: ProfileFile = serde_json::from_str(text).unwrap();
            for entry in file.allow.iter().chain(&file.enosys) {
                assert!(
                    !entry.comment.trim().is_empty(),
                    "{name}: {}",
                    entry.syscall
                );
                for cond in entry.rules.iter().flatten() {
                    assert!(!cond.comment.trim().is_empty(), "{name}: {}", entry.syscall);
                }
            }
        }
    }
}
