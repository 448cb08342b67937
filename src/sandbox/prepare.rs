//! Everything the supervisor decides and builds before forking, so the setup processes only
//! execute: spec validation, the Landlock floor check against the running kernel, the compiled
//! seccomp filters, the resource mechanism (and the cgroup), the identity switch, C strings for
//! `execve`. Refusals happen here, before any process exists.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;

use nix::sys::resource::Resource;
use nix::unistd::{Pid, geteuid, getgid, getpid, getuid};

use super::cgroup::{self, Cgroup};
use super::error::SandboxError;
use super::landlock::{self as ll, Rule};
use super::net::NetMode;
use super::report::ResourcesReport;
use super::resources;
use super::seccomp::{self, Filters};
use super::setup::c_strings;
use super::spec::{Layer, SandboxSpec};

/// The supervisor's decisions for one sandbox, shared read-only with the setup processes.
pub struct Prepared {
    pub spec: SandboxSpec,
    /// The supervisor's pid (the setup processes check their parent against it).
    pub supervisor: Pid,
    pub exe: CString,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    /// `(uid, gid)` to map into a new user namespace; `None` when running as root.
    pub userns: Option<(u32, u32)>,
    /// `(uid, gid)` the server switches to; `None` in a user namespace (it keeps its own).
    pub switch_to: Option<(u32, u32)>,
    pub kernel_abi: u32,
    pub landlock_floor_required: bool,
    pub landlock_rules: Vec<Rule>,
    pub filters: Option<&'static Filters>,
    pub seccomp_may_degrade: bool,
    pub rlimits: Vec<(Resource, u64)>,
    pub cgroup: Option<Cgroup>,
    pub cgroup_procs: Option<File>,
    pub resources_report: Option<ResourcesReport>,
    /// A pre-created network namespace to join instead of creating one (root, pool enabled).
    pub netns: Option<OwnedFd>,
    /// The spec's root tmpfs template (root supervisors; set on the forking thread).
    pub root_template: Option<std::sync::Arc<super::mounts::Template>>,
}

impl Prepared {
    /// A sandbox of a root supervisor: no user namespace of its own, so the supervisor forks
    /// its reaper straight into the pid namespace and may hand it a root template.
    pub fn root_sandbox(&self) -> bool {
        self.spec.enabled && self.userns.is_none()
    }
}

/// Validates `spec` and makes every decision that may refuse the sandbox.
pub fn prepare(spec: &SandboxSpec) -> Result<Prepared, SandboxError> {
    spec.validate()?;
    let invalid = |field: &str, message: String| SandboxError::InvalidSpec {
        field: field.into(),
        message,
    };
    let exe = CString::new(spec.executable.as_os_str().as_bytes())
        .map_err(|_| invalid("executable", "contains a NUL byte".into()))?;
    let argv = c_strings(spec.argv.iter().map(|a| a.as_bytes())).map_err(|m| invalid("argv", m))?;
    let envp = c_strings(spec.env.iter().map(|(k, v)| {
        let mut entry = k.as_bytes().to_vec();
        entry.push(b'=');
        entry.extend_from_slice(v.as_bytes());
        entry
    }))
    .map_err(|m| invalid("env", m))?;
    if spec
        .env
        .iter()
        .any(|(k, _)| k.is_empty() || k.as_bytes().contains(&b'='))
    {
        return Err(invalid(
            "env",
            "a variable name is empty or contains '='".into(),
        ));
    }
    let mut prepared = Prepared {
        spec: spec.clone(),
        supervisor: getpid(),
        exe,
        argv,
        envp,
        userns: None,
        switch_to: None,
        kernel_abi: 0,
        landlock_floor_required: false,
        landlock_rules: Vec::new(),
        filters: None,
        seccomp_may_degrade: false,
        rlimits: Vec::new(),
        cgroup: None,
        cgroup_procs: None,
        resources_report: None,
        netns: None,
        root_template: None,
    };
    if !spec.enabled {
        return Ok(prepared);
    }

    // Initialized here, in the supervisor: the setup processes must never be the first to
    // initialize a process-wide lazy value (another thread could hold its lock at fork time).
    let _ = super::privileges::last_cap();
    let root = geteuid().is_root();
    if root {
        if spec.user.uid == 0 || spec.user.gid == 0 {
            return Err(invalid(
                "user",
                "the server may not run as uid or gid 0; pick an unprivileged id (default 65534)"
                    .into(),
            ));
        }
        prepared.switch_to = Some((spec.user.uid, spec.user.gid));
    } else {
        prepared.userns = Some((getuid().as_raw(), getgid().as_raw()));
    }

    let kernel = ll::kernel_abi();
    let floor = spec.landlock.min_abi;
    let landlock_may_degrade = spec.allow_degraded.contains(&Layer::Landlock);
    if kernel < floor && !landlock_may_degrade {
        return Err(SandboxError::Unavailable {
            layer: Layer::Landlock,
            reason: if kernel == 0 {
                format!(
                    "the kernel has no Landlock (or it is disabled at boot); the policy requires ABI {floor}"
                )
            } else {
                format!("the kernel's Landlock ABI is {kernel}, below the policy's floor {floor}")
            },
            hint: "run on a newer kernel with Landlock enabled (lsm=...,landlock), lower \
                   spec.sandbox.landlock.min_abi, or add `landlock` to spec.sandbox.allow_degraded"
                .into(),
        });
    }
    prepared.kernel_abi = kernel;
    prepared.landlock_floor_required = kernel >= floor;
    prepared.landlock_rules = ll::rules_for(spec);

    prepared.seccomp_may_degrade = spec.allow_degraded.contains(&Layer::Seccomp);
    match seccomp::native(spec.seccomp) {
        Ok(filters) => prepared.filters = Some(filters),
        Err(e) if prepared.seccomp_may_degrade => {
            tracing::warn!(layer = "seccomp", error = %e, "seccomp profile unavailable; degrading as the policy allows");
        }
        Err(e) => {
            return Err(SandboxError::Unavailable {
                layer: Layer::Seccomp,
                reason: e.to_string(),
                hint: "this architecture has no seccomp profiles; add `seccomp` to spec.sandbox.allow_degraded to run \
                       without"
                    .into(),
            });
        }
    }

    let hierarchy = if spec.resources.memory.is_some()
        || spec.resources.pids.is_some()
        || spec.resources.cpu.is_some()
    {
        cgroup::detect_system()
    } else {
        None
    };
    let plan = resources::plan(
        &spec.resources,
        spec.allow_degraded.contains(&Layer::Resources),
        hierarchy.as_ref(),
    )?;
    if let Some(cg) = &plan.cgroup {
        prepared.cgroup_procs = Some(
            cg.procs_file()
                .map_err(SandboxError::supervisor("open cgroup.procs"))?,
        );
    }
    prepared.rlimits = plan.rlimits;
    prepared.cgroup = plan.cgroup;
    prepared.resources_report = Some(plan.report);
    if root && !matches!(spec.net, NetMode::Host) {
        prepared.netns = super::netpool::take();
    }
    Ok(prepared)
}
