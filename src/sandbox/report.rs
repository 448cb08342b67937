//! `LayerReport`: which layer of one sandbox is in force, and how, as data for the audit record
//! and for `aip doctor`. Built from what the setup processes observed, never from what the spec
//! merely asked for.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Status of one layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum LayerStatus {
    /// Everything requested is in force.
    Enforced,
    /// In force, but without the named parts (the kernel lacks them or the policy allowed it).
    Partial { missing: Vec<String> },
    /// Not in force at all (the policy allowed that explicitly).
    NotEnforced { reason: String },
    /// The whole sandbox is off (`--no-sandbox`).
    Disabled,
}

impl LayerStatus {
    pub fn is_enforced(&self) -> bool {
        matches!(self, Self::Enforced)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespacesReport {
    #[serde(flatten)]
    pub status: LayerStatus,
    /// A user namespace was created (the supervisor is not root).
    pub user_namespace: bool,
    /// Namespaces created for the sandbox (`mount`, `pid`, `net`, `ipc`, `uts`, `cgroup`, `user`).
    pub created: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilesystemReport {
    #[serde(flatten)]
    pub status: LayerStatus,
    /// Number of mounts on the tmpfs root.
    pub mounts: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LandlockReport {
    #[serde(flatten)]
    pub status: LayerStatus,
    /// The kernel's Landlock ABI (0 = none).
    pub abi: u32,
    /// The ABI whose rights we handle.
    pub compiled_abi: u32,
    /// The floor the policy required.
    pub floor: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeccompReport {
    #[serde(flatten)]
    pub status: LayerStatus,
    pub profile: String,
    pub arch: String,
    /// Number of seccomp filters installed (1; 0 when seccomp was allowed to degrade).
    pub filters: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapabilitiesReport {
    #[serde(flatten)]
    pub status: LayerStatus,
    pub no_new_privs: bool,
    pub securebits_locked: bool,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourcesReport {
    #[serde(flatten)]
    pub status: LayerStatus,
    /// `cgroup2` or `rlimit`.
    pub mechanism: String,
    /// The sandbox's cgroup (path below the cgroup2 mount), when one is used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// The limits in force, by name (`memory.max`, `RLIMIT_NOFILE`…).
    pub limits: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkReport {
    #[serde(flatten)]
    pub status: LayerStatus,
    /// `none`, `host` or `egress`.
    pub mode: String,
    /// Number of supervisor-owned listeners created inside the namespace.
    pub listeners: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleReport {
    #[serde(flatten)]
    pub status: LayerStatus,
    /// How the sandbox dies with the supervisor and how its tree is killed.
    pub mechanism: String,
}

/// Per-layer status of one sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerReport {
    /// `false` when the sandbox was disabled (`--no-sandbox`).
    pub enabled: bool,
    pub namespaces: NamespacesReport,
    pub filesystem: FilesystemReport,
    pub landlock: LandlockReport,
    pub seccomp: SeccompReport,
    pub capabilities: CapabilitiesReport,
    pub resources: ResourcesReport,
    pub network: NetworkReport,
    pub lifecycle: LifecycleReport,
}

impl LayerReport {
    /// The report as a JSON object for the audit record.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// Whether every layer is fully enforced.
    pub fn fully_enforced(&self) -> bool {
        self.enabled
            && [
                &self.namespaces.status,
                &self.filesystem.status,
                &self.landlock.status,
                &self.seccomp.status,
                &self.capabilities.status,
                &self.resources.status,
                &self.network.status,
                &self.lifecycle.status,
            ]
            .iter()
            .all(|s| s.is_enforced())
    }

    /// Report of a disabled sandbox (`--no-sandbox`).
    pub fn disabled(uid: u32, gid: u32, lifecycle: &str) -> Self {
        LayerReport {
            enabled: false,
            namespaces: NamespacesReport {
                status: LayerStatus::Disabled,
                user_namespace: false,
                created: vec![],
            },
            filesystem: FilesystemReport {
                status: LayerStatus::Disabled,
                mounts: 0,
            },
            landlock: LandlockReport {
                status: LayerStatus::Disabled,
                abi: 0,
                compiled_abi: super::landlock::COMPILED_ABI,
                floor: 0,
            },
            seccomp: SeccompReport {
                status: LayerStatus::Disabled,
                profile: String::new(),
                arch: std::env::consts::ARCH.into(),
                filters: 0,
            },
            capabilities: CapabilitiesReport {
                status: LayerStatus::Disabled,
                no_new_privs: false,
                securebits_locked: false,
                uid,
                gid,
            },
            resources: ResourcesReport {
                status: LayerStatus::Disabled,
                mechanism: "none".into(),
                cgroup: None,
                limits: BTreeMap::new(),
            },
            network: NetworkReport {
                status: LayerStatus::Disabled,
                mode: "host".into(),
                listeners: 0,
            },
            lifecycle: LifecycleReport {
                status: LayerStatus::Enforced,
                mechanism: lifecycle.into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_flattened_into_each_layer() {
        let report = LayerReport::disabled(0, 0, "process group");
        let json = report.to_json();
        assert_eq!(json["landlock"]["status"], "disabled");
        assert_eq!(json["lifecycle"]["status"], "enforced");
        let partial = LandlockReport {
            status: LayerStatus::Partial {
                missing: vec!["scope".into()],
            },
            abi: 5,
            compiled_abi: 10,
            floor: 1,
        };
        let v = serde_json::to_value(&partial).unwrap();
        assert_eq!(v["status"], "partial");
        assert_eq!(v["missing"][0], "scope");
        assert_eq!(v["abi"], 5);
    }
}
