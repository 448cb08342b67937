//! Resource limits: cgroup v2 when a delegated hierarchy offers the controllers, rlimits
//! otherwise, decided in the supervisor before forking and reported as the mechanism actually
//! used. `RLIMIT_CORE=0` and `RLIMIT_NOFILE` are always set. A limit the policy set explicitly
//! that neither mechanism can enforce (cpu bandwidth without cgroups) makes `spawn` refuse unless
//! the policy lets resources degrade.

use std::collections::BTreeMap;

use nix::sys::resource::{Resource, setrlimit};

use super::cgroup::{self, Cgroup, Hierarchy};
use super::error::{SandboxError, SetupFailure};
use super::report::{LayerStatus, ResourcesReport};
use super::spec::{Layer, Resources};

/// What the supervisor decided, before forking.
#[derive(Debug)]
pub struct Plan {
    pub cgroup: Option<Cgroup>,
    /// Applied by the server process before it drops privileges.
    pub rlimits: Vec<(Resource, u64)>,
    pub report: ResourcesReport,
}

/// Name of an rlimit for the report.
fn rlimit_name(r: Resource) -> &'static str {
    match r {
        Resource::RLIMIT_CORE => "RLIMIT_CORE",
        Resource::RLIMIT_NOFILE => "RLIMIT_NOFILE",
        Resource::RLIMIT_DATA => "RLIMIT_DATA",
        Resource::RLIMIT_NPROC => "RLIMIT_NPROC",
        _ => "RLIMIT_OTHER",
    }
}

/// Decides the mechanism and creates the cgroup when one is used. `hierarchy` is the detected
/// cgroup2 hierarchy (injected for tests).
pub fn plan(
    spec: &Resources,
    may_degrade: bool,
    hierarchy: Option<&Hierarchy>,
) -> Result<Plan, SandboxError> {
    let mut limits = BTreeMap::new();
    let mut rlimits = vec![
        (Resource::RLIMIT_CORE, 0),
        (Resource::RLIMIT_NOFILE, spec.open_files),
    ];
    let mut missing = Vec::new();
    let mut required_missing = Vec::new();

    let mut needed = Vec::new();
    if spec.memory.is_some() {
        needed.push("memory");
    }
    if spec.pids.is_some() {
        needed.push("pids");
    }
    if spec.cpu.is_some() {
        needed.push("cpu");
    }
    let mut cgroup_reason = String::from("no limit needs a cgroup");
    let cgroup = if needed.is_empty() {
        None
    } else {
        match hierarchy {
            None => {
                cgroup_reason = "no cgroup2 hierarchy is mounted".into();
                None
            }
            Some(h) if !needed.iter().all(|c| h.has(c)) => {
                cgroup_reason = format!(
                    "the cgroup2 hierarchy at {} does not delegate the {} controller(s) (they are bound to cgroup v1 or \
                     not enabled for {})",
                    h.mount.display(),
                    needed.join(", "),
                    h.own
                );
                None
            }
            Some(h) => match h.delegate(&needed).and_then(|()| h.create_child()) {
                Ok(cg) => Some(cg),
                Err(e) => {
                    cgroup_reason = format!("cannot create a cgroup below {}: {e}", h.own);
                    None
                }
            },
        }
    };

    if let Some(cg) = &cgroup {
        let write = |file: &str, value: String, limits: &mut BTreeMap<String, String>| {
            cg.write(file, &value)
                .map_err(SandboxError::supervisor("write cgroup limit"))?;
            limits.insert(file.to_string(), value);
            Ok::<(), SandboxError>(())
        };
        if let Some(m) = spec.memory {
            write("memory.max", m.value.to_string(), &mut limits)?;
            // Optional files: absent without swap accounting.
            if cg.write("memory.swap.max", "0").is_ok() {
                limits.insert("memory.swap.max".into(), "0".into());
            }
            write("memory.oom.group", "1".into(), &mut limits)?;
        }
        if let Some(p) = spec.pids {
            write("pids.max", p.value.to_string(), &mut limits)?;
        }
        if let Some(c) = spec.cpu {
            write(
                "cpu.max",
                cgroup::cpu_max(c.quota_us, c.period_us),
                &mut limits,
            )?;
        }
    } else {
        if let Some(m) = spec.memory {
            rlimits.push((Resource::RLIMIT_DATA, m.value));
        }
        if let Some(p) = spec.pids {
            rlimits.push((Resource::RLIMIT_NPROC, p.value));
        }
        if let Some(c) = spec.cpu {
            let what = "cpu.max (no rlimit can limit CPU bandwidth)".to_string();
            if c.required {
                required_missing.push(what.clone());
            }
            missing.push(what);
        }
    }
    for (r, v) in &rlimits {
        limits.insert(rlimit_name(*r).to_string(), v.to_string());
    }

    if !required_missing.is_empty() && !may_degrade {
        if let Some(cg) = &cgroup {
            cg.remove();
        }
        return Err(SandboxError::Unavailable {
            layer: Layer::Resources,
            reason: format!("cannot enforce {}: {cgroup_reason}", required_missing.join(", ")),
            hint: "run aipd with a delegated cgroup2 subtree (systemd Delegate=yes), remove the limit, or add \
                   `resources` to spec.sandbox.allow_degraded"
                .into(),
        });
    }
    let status = if missing.is_empty() {
        LayerStatus::Enforced
    } else {
        LayerStatus::Partial { missing }
    };
    let report = ResourcesReport {
        status,
        mechanism: if cgroup.is_some() {
            "cgroup2".into()
        } else {
            "rlimit".into()
        },
        cgroup: cgroup.as_ref().map(|c| c.relative.clone()),
        limits,
    };
    Ok(Plan {
        cgroup,
        rlimits,
        report,
    })
}

/// Applies the rlimits (soft = hard) in the server process, before it drops privileges (raising a
/// hard limit needs `CAP_SYS_RESOURCE`).
pub fn apply_rlimits(rlimits: &[(Resource, u64)]) -> Result<(), SetupFailure> {
    for (resource, value) in rlimits {
        setrlimit(*resource, *value, *value).map_err(|e| {
            SetupFailure::reason(
                Layer::Resources,
                format!("setrlimit {}", rlimit_name(*resource)),
                e.to_string(),
            )
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::spec::{CpuLimit, Limit};

    fn resources() -> Resources {
        Resources {
            memory: None,
            pids: None,
            cpu: None,
            open_files: 1024,
        }
    }

    #[test]
    fn without_limits_only_rlimits_are_used() {
        let plan = plan(&resources(), false, None).unwrap();
        assert_eq!(plan.report.mechanism, "rlimit");
        assert!(plan.report.status.is_enforced());
        assert_eq!(
            plan.report.limits.get("RLIMIT_CORE").map(String::as_str),
            Some("0")
        );
        assert_eq!(
            plan.report.limits.get("RLIMIT_NOFILE").map(String::as_str),
            Some("1024")
        );
    }

    #[test]
    fn memory_and_pids_fall_back_to_rlimits_without_a_hierarchy() {
        let mut r = resources();
        r.memory = Some(Limit {
            value: 1 << 30,
            required: true,
        });
        r.pids = Some(Limit {
            value: 64,
            required: true,
        });
        let plan = plan(&r, false, None).unwrap();
        assert_eq!(
            plan.report.limits.get("RLIMIT_DATA").map(String::as_str),
            Some("1073741824")
        );
        assert_eq!(
            plan.report.limits.get("RLIMIT_NPROC").map(String::as_str),
            Some("64")
        );
        assert!(plan.report.status.is_enforced());
    }

    #[test]
    fn a_required_cpu_limit_without_cgroups_is_refused_unless_degradable() {
        let mut r = resources();
        r.cpu = Some(CpuLimit {
            quota_us: 50_000,
            period_us: 100_000,
            required: true,
        });
        let err = plan(&r, false, None).unwrap_err();
        assert_eq!(err.layer(), Some(Layer::Resources));
        assert!(err.to_string().contains("allow_degraded"), "{err}");
        let plan = plan(&r, true, None).unwrap();
        assert!(matches!(plan.report.status, LayerStatus::Partial { .. }));
    }

    #[test]
    fn hybrid_hierarchy_without_controllers_falls_back() {
        let h = Hierarchy {
            mount: "/sys/fs/cgroup/unified".into(),
            own: "/".into(),
            controllers: Default::default(),
        };
        let mut r = resources();
        r.pids = Some(Limit {
            value: 10,
            required: true,
        });
        let plan = plan(&r, false, Some(&h)).unwrap();
        assert_eq!(plan.report.mechanism, "rlimit");
        assert!(plan.cgroup.is_none());
    }
}
