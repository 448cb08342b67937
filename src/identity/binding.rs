//! Session binding (v1alpha2 §5.3.2, §5.6): the facts about the issuing context written into
//! every token (`process_id`, `policy_path`, `hostname`, optional `container_id`, `pod_uid`) and
//! the per-mode comparison. Owns hostname normalization; must not read policy files (the caller
//! passes the policy path) or decide anything beyond "same context or not".

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::config::BindingMode;

/// Where a token was issued. Serialized as the token's `binding` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    pub process_id: u32,
    pub policy_path: String,
    pub hostname: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
}

/// Which binding field differs; the token error string depends on the mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindingField {
    ProcessId,
    PolicyPath,
    Hostname,
    ContainerId,
    PodUid,
}

impl Binding {
    /// The binding of this process for a policy loaded from `policy_path` (made absolute
    /// against the current directory when relative; not resolved through symlinks, so the
    /// same file named two ways is two bindings).
    pub fn current(policy_path: &Path) -> Self {
        let policy_path = if policy_path.is_absolute() {
            policy_path.to_path_buf()
        } else {
            std::env::current_dir()
                .map(|d| d.join(policy_path))
                .unwrap_or_else(|_| policy_path.to_path_buf())
        };
        let container_id = container_id();
        let pod_uid = std::env::var("POD_UID").ok().filter(|s| !s.is_empty());
        Self {
            process_id: std::process::id(),
            policy_path: policy_path.to_string_lossy().into_owned(),
            hostname: normalized_hostname(pod_uid.as_deref(), container_id.as_deref()),
            container_id,
            pod_uid,
        }
    }

    /// First field that differs from `expected` under `mode`, if any. `process` compares the
    /// pid only, `policy` nothing (the policy hash is checked separately), `strict` everything
    /// including container id and pod uid when either side has one.
    pub fn mismatch(&self, expected: &Binding, mode: BindingMode) -> Option<BindingField> {
        match mode {
            BindingMode::Policy => None,
            BindingMode::Process => {
                (self.process_id != expected.process_id).then_some(BindingField::ProcessId)
            }
            BindingMode::Strict => {
                if self.process_id != expected.process_id {
                    Some(BindingField::ProcessId)
                } else if self.policy_path != expected.policy_path {
                    Some(BindingField::PolicyPath)
                } else if self.hostname != expected.hostname {
                    Some(BindingField::Hostname)
                } else if self.container_id != expected.container_id {
                    Some(BindingField::ContainerId)
                } else if self.pod_uid != expected.pod_uid {
                    Some(BindingField::PodUid)
                } else {
                    None
                }
            }
        }
    }
}

/// Hostname per §5.3.2, in priority order: `k8s:<POD_UID>`; `container:<first 12 of id>`; a
/// dotted `gethostname()` lowercased; the short name plus the first `search`/`domain` of
/// `/etc/resolv.conf`; the short name.
fn normalized_hostname(pod_uid: Option<&str>, container_id: Option<&str>) -> String {
    if let Some(uid) = pod_uid {
        return format!("k8s:{uid}");
    }
    if let Some(id) = container_id {
        return format!("container:{}", &id[..id.len().min(12)]);
    }
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if host.contains('.') || host.is_empty() {
        return host;
    }
    match std::fs::read_to_string("/etc/resolv.conf")
        .ok()
        .as_deref()
        .and_then(first_search_domain)
    {
        Some(domain) => format!("{host}.{}", domain.to_ascii_lowercase()),
        None => host,
    }
}

fn first_search_domain(resolv_conf: &str) -> Option<&str> {
    resolv_conf.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("search" | "domain") => words.next().filter(|d| *d != "."),
            _ => None,
        }
    })
}

/// Container id (64 hex) from this process's cgroup paths, as docker, containerd, podman and
/// CRI-O write them (`…/docker/<id>`, `…/cri-containerd-<id>.scope`, `…/libpod-<id>.scope`).
fn container_id() -> Option<String> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    container_id_from_cgroup(&cgroup)
}

fn container_id_from_cgroup(cgroup: &str) -> Option<String> {
    for line in cgroup.lines() {
        let path = line.splitn(3, ':').nth(2)?;
        for segment in path.split('/') {
            let segment = segment.strip_suffix(".scope").unwrap_or(segment);
            let candidate = segment.rsplit(['-', ':']).next().unwrap_or(segment);
            if candidate.len() == 64 && candidate.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Some(candidate.to_ascii_lowercase());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b() -> Binding {
        Binding {
            process_id: 10,
            policy_path: "/etc/aip/p.yaml".into(),
            hostname: "h.example".into(),
            container_id: None,
            pod_uid: None,
        }
    }

    #[test]
    fn test_mismatch_per_mode() {
        let mut other = b();
        other.process_id = 11;
        assert_eq!(
            other.mismatch(&b(), BindingMode::Process),
            Some(BindingField::ProcessId)
        );
        assert_eq!(other.mismatch(&b(), BindingMode::Policy), None);
        assert_eq!(
            other.mismatch(&b(), BindingMode::Strict),
            Some(BindingField::ProcessId)
        );

        let mut other = b();
        other.hostname = "elsewhere".into();
        assert_eq!(other.mismatch(&b(), BindingMode::Process), None);
        assert_eq!(
            other.mismatch(&b(), BindingMode::Strict),
            Some(BindingField::Hostname)
        );

        let mut other = b();
        other.policy_path = "/tmp/p.yaml".into();
        assert_eq!(
            other.mismatch(&b(), BindingMode::Strict),
            Some(BindingField::PolicyPath)
        );

        let mut other = b();
        other.container_id = Some("abc".into());
        assert_eq!(
            other.mismatch(&b(), BindingMode::Strict),
            Some(BindingField::ContainerId)
        );
        assert_eq!(b().mismatch(&b(), BindingMode::Strict), None);
    }

    #[test]
    fn test_current_binding() {
        let cur = Binding::current(Path::new("policy.yaml"));
        assert_eq!(cur.process_id, std::process::id());
        assert!(Path::new(&cur.policy_path).is_absolute());
        assert!(cur.policy_path.ends_with("/policy.yaml"));
        assert!(!cur.hostname.is_empty());
    }

    #[test]
    fn test_container_id_from_cgroup() {
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(
            container_id_from_cgroup(&format!("0::/docker/{id}\n")).as_deref(),
            Some(id)
        );
        assert_eq!(
            container_id_from_cgroup(&format!("0::/system.slice/cri-containerd-{id}.scope\n"))
                .as_deref(),
            Some(id)
        );
        assert_eq!(
            container_id_from_cgroup("0::/user.slice/user-0.slice/session-1.scope\n"),
            None
        );
        assert_eq!(
            normalized_hostname(None, Some(id)),
            "container:0123456789ab"
        );
        assert_eq!(normalized_hostname(Some("uid-1"), Some(id)), "k8s:uid-1");
    }

    #[test]
    fn test_first_search_domain() {
        assert_eq!(
            first_search_domain("nameserver 1.1.1.1\nsearch corp.example lan\n"),
            Some("corp.example")
        );
        assert_eq!(first_search_domain("domain x.y\n"), Some("x.y"));
        assert_eq!(first_search_domain("nameserver 1.1.1.1\n"), None);
    }

    #[test]
    fn test_serde_shape() {
        let v = serde_json::to_value(b()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"process_id": 10, "policy_path": "/etc/aip/p.yaml", "hostname": "h.example"})
        );
        assert!(serde_json::from_value::<Binding>(serde_json::json!({"process_id": 1})).is_err());
    }
}
