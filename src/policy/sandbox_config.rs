//! `spec.sandbox`: our extension describing the OS sandbox of the wrapped server, as written in
//! the policy file (raw serde model, unknown keys rejected) plus [`SandboxConfig::validate`],
//! which checks values without touching the file system. `launch::plan` turns a validated config
//! into a `sandbox::SandboxSpec`. An absent section means the sandbox is on with safe defaults.
//! This module must not import `sandbox` (policy stays independent of the kernel layer).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The `spec.sandbox` section.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxConfig {
    /// What the server can see.
    #[serde(default)]
    pub filesystem: FilesystemConfig,
    /// The server's environment.
    #[serde(default)]
    pub env: EnvConfig,
    /// Resource limits.
    #[serde(default)]
    pub resources: ResourcesConfig,
    /// seccomp profile; detected from the command when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<Runtime>,
    #[serde(default)]
    pub landlock: LandlockConfig,
    /// `none` (default): an empty network namespace. `host`: the supervisor's network, an
    /// explicit and loudly logged opt-in. (`spec.egress` adds controlled egress.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    /// Identity of the server when aip runs as root (default 65534:65534).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UserConfig>,
    /// Layers that may run weaker than requested instead of refusing to start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_degraded: Vec<DegradableLayer>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilesystemConfig {
    /// Paths visible read-only (no exec). Relative paths are relative to aip's working directory.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_only: Vec<String>,
    /// Paths visible read-write (no exec).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_write: Vec<String>,
    /// Paths visible read-only and executable (runtimes, native modules).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exec: Vec<String>,
    /// Sizes of the private tmpfs mounts.
    #[serde(default)]
    pub tmpfs: TmpfsConfig,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TmpfsConfig {
    /// Size of the private `/tmp` (default 128M).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmp: Option<Size>,
    /// Size of the private `/dev/shm` (default 64M).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm: Option<Size>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EnvConfig {
    /// Variables passed through from aip's environment, by name or `PREFIX_*` pattern, on top of
    /// the default locale/time-zone set. Loader and session variables (`LD_*`, `SSH_AUTH_SOCK`,
    /// `DBUS_*`…) are never passed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pass: Vec<String>,
    /// Fixed values (override pass-through and defaults).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesConfig {
    /// Memory limit (`512M`, `2G` or bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Size>,
    /// Maximum number of processes and threads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    /// CPU bandwidth in cores (`0.5`, `2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
    /// Maximum open files per process (default 4096).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_files: Option<u64>,
}

/// A size: bytes as an integer, or a string with a `K`, `M` or `G` suffix (powers of 1024).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Size {
    Bytes(u64),
    Text(String),
}

impl Size {
    /// The size in bytes, or a message saying what is wrong.
    pub fn bytes(&self) -> Result<u64, String> {
        match self {
            Size::Bytes(b) => Ok(*b),
            Size::Text(t) => parse_size(t),
        }
    }
}

fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&t[..i], t[i..].trim()),
        None => (t, ""),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a size (use e.g. 512M, 2G or bytes)"))?;
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        _ => return Err(format!("`{text}`: unknown unit `{unit}` (use K, M or G)")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("`{text}` is too large"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Runtime {
    Node,
    Python,
    Generic,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LandlockConfig {
    /// Lowest Landlock ABI the kernel must offer (default 1: Landlock required, any version);
    /// 0 makes Landlock optional. Rights above the floor are used when the kernel has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_abi: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    None,
    Host,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub uid: u32,
    /// Defaults to `uid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DegradableLayer {
    /// Run with partial or no Landlock when the kernel is below `landlock.min_abi`.
    Landlock,
    /// Run without seccomp when the kernel refuses the filters.
    Seccomp,
    /// Run without limits the kernel cannot enforce (cpu without cgroup v2).
    Resources,
}

/// Highest Landlock ABI whose rights aip handles (kept equal to `sandbox::landlock::COMPILED_ABI`,
/// checked by a unit test in `launch::plan`).
pub const MAX_LANDLOCK_ABI: u32 = 10;

/// Host paths that are never granted: they would undo the sandbox.
pub const FORBIDDEN_GRANTS: &[(&str, &str)] = &[
    (
        "/",
        "granting the whole file system undoes the sandbox; grant the directories the server needs",
    ),
    ("/proc", "the sandbox has its own /proc"),
    (
        "/sys",
        "/sys exposes host devices and kernel state and is never visible",
    ),
    (
        "/dev",
        "the sandbox has a minimal /dev (null, zero, full, random, urandom)",
    ),
    (
        "/run",
        "/run holds host sockets (D-Bus, docker, systemd) and is never visible",
    ),
    (
        "/var/run",
        "/var/run holds host sockets and is never visible",
    ),
    ("/boot", "kernel images are never needed by a server"),
];

/// Environment variables never passed into the sandbox, by exact name or `PREFIX*`.
pub const FORBIDDEN_ENV: &[&str] = &[
    "LD_*",
    "SSH_AUTH_SOCK",
    "SSH_AGENT_PID",
    "GPG_AGENT_INFO",
    "DBUS_*",
    "XDG_RUNTIME_DIR",
    "DISPLAY",
    "WAYLAND_*",
    "XAUTHORITY",
    "KRB5CCNAME",
    "NOTIFY_SOCKET",
    "LISTEN_*",
    "SYSTEMD_*",
    "INVOCATION_ID",
    "JOURNAL_STREAM",
    "DOCKER_HOST",
];

/// Whether `name` is on the forbidden list.
pub fn env_forbidden(name: &str) -> bool {
    FORBIDDEN_ENV.iter().any(|f| match f.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == *f,
    })
}

fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl SandboxConfig {
    /// Checks values. Errors are `(field path relative to spec.sandbox, message with a hint)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let fs = &self.filesystem;
        let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
        for (list, paths) in [
            ("read_only", &fs.read_only),
            ("read_write", &fs.read_write),
            ("exec", &fs.exec),
        ] {
            for (i, path) in paths.iter().enumerate() {
                let field = format!("filesystem.{list}[{i}]");
                validate_path(path).map_err(|m| (field.clone(), m))?;
                let normalized = path.trim_end_matches('/');
                if let Some(other) = seen.insert(normalized, list) {
                    return Err((
                        field,
                        format!(
                            "`{path}` is already listed in filesystem.{other}; list each path once"
                        ),
                    ));
                }
            }
        }
        for (name, size) in [("tmp", &fs.tmpfs.tmp), ("shm", &fs.tmpfs.shm)] {
            if let Some(size) = size {
                let bytes = size
                    .bytes()
                    .map_err(|m| (format!("filesystem.tmpfs.{name}"), m))?;
                if bytes < (1 << 20) {
                    return Err((
                        format!("filesystem.tmpfs.{name}"),
                        "must be at least 1M".into(),
                    ));
                }
            }
        }

        for (i, name) in self.env.pass.iter().enumerate() {
            let field = format!("env.pass[{i}]");
            let bare = name.strip_suffix('*').unwrap_or(name);
            if bare.is_empty() {
                return Err((
                    field,
                    "`*` would pass the whole environment; list the variables the server needs"
                        .into(),
                ));
            }
            if !valid_env_name(bare) {
                return Err((
                    field,
                    format!("`{name}` is not a variable name or `PREFIX_*` pattern"),
                ));
            }
            // Patterns that merely overlap the forbidden list are fine: the planner never passes
            // a forbidden variable, whatever pattern matched it.
            if env_forbidden(bare) {
                return Err((
                    field,
                    format!("`{name}` is never passed into the sandbox (loader or session secret)"),
                ));
            }
        }
        for name in self.env.set.keys() {
            let field = format!("env.set.{name}");
            if !valid_env_name(name) {
                return Err((field, format!("`{name}` is not a variable name")));
            }
            if env_forbidden(name) {
                return Err((
                    field,
                    format!(
                        "`{name}` may not be set inside the sandbox (it injects code or reaches host sessions)"
                    ),
                ));
            }
        }

        let r = &self.resources;
        if let Some(memory) = &r.memory {
            let bytes = memory
                .bytes()
                .map_err(|m| ("resources.memory".to_string(), m))?;
            if bytes < (16 << 20) {
                return Err(("resources.memory".into(), "must be at least 16M".into()));
            }
        }
        if r.pids == Some(0) {
            return Err(("resources.pids".into(), "must be at least 1".into()));
        }
        if let Some(cpu) = r.cpu
            && !(cpu.is_finite() && (0.01..=1024.0).contains(&cpu))
        {
            return Err((
                "resources.cpu".into(),
                "must be a number of cores between 0.01 and 1024".into(),
            ));
        }
        if let Some(n) = r.open_files
            && !(16..=1 << 20).contains(&n)
        {
            return Err((
                "resources.open_files".into(),
                "must be between 16 and 1048576".into(),
            ));
        }

        if let Some(abi) = self.landlock.min_abi
            && abi > MAX_LANDLOCK_ABI
        {
            return Err((
                "landlock.min_abi".into(),
                format!(
                    "aip handles Landlock up to ABI {MAX_LANDLOCK_ABI}; a higher floor could never be used"
                ),
            ));
        }
        if let Some(user) = &self.user
            && (user.uid == 0 || user.gid == Some(0))
        {
            return Err((
                "user".into(),
                "the server may not run as root (uid/gid 0); use an unprivileged id such as 65534"
                    .into(),
            ));
        }
        Ok(())
    }
}

fn validate_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("empty path".into());
    }
    if path.contains('\0') {
        return Err("path contains a NUL byte".into());
    }
    if path.starts_with('~') {
        return Err(format!(
            "`{path}`: `~` is not expanded; write the absolute path"
        ));
    }
    if path.split('/').any(|c| c == "..") {
        return Err(format!(
            "`{path}`: `..` is not allowed; write the path it means"
        ));
    }
    if path.starts_with('/') {
        let normalized = if path == "/" {
            "/"
        } else {
            path.trim_end_matches('/')
        };
        for (forbidden, why) in FORBIDDEN_GRANTS {
            let below = *forbidden != "/" && normalized.starts_with(&format!("{forbidden}/"));
            if normalized == *forbidden || below {
                return Err(format!("`{path}` cannot be granted: {why}"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<SandboxConfig, String> {
        serde_saphyr::from_str(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn empty_section_means_defaults() {
        let c = parse("{}").unwrap();
        assert_eq!(c, SandboxConfig::default());
        c.validate().unwrap();
    }

    #[test]
    fn full_section_parses_and_validates() {
        let c = parse(
            "filesystem:\n  read_only: [/srv/data]\n  read_write: [.]\n  exec: [/opt/tool]\n  tmpfs: {tmp: 256M, shm: 16777216}\n\
             env:\n  pass: [HTTP_PROXY, MCP_*]\n  set: {LOG_LEVEL: debug}\n\
             resources: {memory: 1G, pids: 256, cpu: 1.5, open_files: 2048}\n\
             runtime: node\nlandlock: {min_abi: 4}\nnetwork: none\nuser: {uid: 1500}\nallow_degraded: [resources]\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.resources.memory.as_ref().unwrap().bytes(), Ok(1 << 30));
        assert_eq!(
            c.filesystem.tmpfs.shm.as_ref().unwrap().bytes(),
            Ok(16 << 20)
        );
        assert_eq!(c.runtime, Some(Runtime::Node));
        assert_eq!(c.allow_degraded, vec![DegradableLayer::Resources]);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(parse("filesystem: {readonly: [/x]}").is_err());
        assert!(parse("networking: host").is_err());
        assert!(parse("allow_degraded: [namespaces]").is_err());
    }

    #[test]
    fn dangerous_grants_are_refused_with_the_field() {
        for path in [
            "/",
            "/proc",
            "/sys/class",
            "/run/user/1000",
            "/var/run/docker.sock",
            "~/.ssh",
            "a/../b",
        ] {
            let c = SandboxConfig {
                filesystem: FilesystemConfig {
                    read_only: vec![path.into()],
                    ..Default::default()
                },
                ..Default::default()
            };
            let (field, message) = c.validate().unwrap_err();
            assert_eq!(field, "filesystem.read_only[0]", "{path}: {message}");
        }
        let ok = SandboxConfig {
            filesystem: FilesystemConfig {
                read_only: vec!["/runner".into(), "/devel".into()],
                ..Default::default()
            },
            ..Default::default()
        };
        ok.validate().unwrap();
    }

    #[test]
    fn loader_and_session_variables_are_refused() {
        let c = SandboxConfig {
            env: EnvConfig {
                pass: vec!["LD_PRELOAD".into()],
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "env.pass[0]");
        let c = SandboxConfig {
            env: EnvConfig {
                set: [("DBUS_SESSION_BUS_ADDRESS".to_string(), "x".to_string())].into(),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(
            c.validate().unwrap_err().0,
            "env.set.DBUS_SESSION_BUS_ADDRESS"
        );
        let c = SandboxConfig {
            env: EnvConfig {
                pass: vec!["*".into()],
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn sizes_and_limits_are_checked() {
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("lots").is_err());
        let c = SandboxConfig {
            resources: ResourcesConfig {
                cpu: Some(0.0),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "resources.cpu");
        let c = SandboxConfig {
            user: Some(UserConfig { uid: 0, gid: None }),
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "user");
        let c = SandboxConfig {
            landlock: LandlockConfig { min_abi: Some(11) },
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "landlock.min_abi");
    }

    #[test]
    fn a_path_listed_twice_is_refused() {
        let c = SandboxConfig {
            filesystem: FilesystemConfig {
                read_only: vec!["/srv".into()],
                read_write: vec!["/srv/".into()],
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "filesystem.read_write[0]");
    }
}

#[cfg(test)]
mod schema_tests {
    use super::*;

    const SCHEMA: &str = include_str!("../../policies/schema/sandbox.schema.json");

    /// Every key of `value` (recursively, objects only) is a property of `schema` and vice versa.
    fn same_keys(value: &serde_json::Value, schema: &serde_json::Value, path: &str) {
        let Some(props) = schema.get("properties").and_then(|p| p.as_object()) else {
            return;
        };
        let Some(object) = value.as_object() else {
            return;
        };
        let in_model: Vec<&String> = object.keys().collect();
        let in_schema: Vec<&String> = props.keys().collect();
        assert_eq!(
            in_model.iter().collect::<std::collections::BTreeSet<_>>(),
            in_schema.iter().collect::<std::collections::BTreeSet<_>>(),
            "keys differ at {path}"
        );
        assert_eq!(
            schema.get("additionalProperties"),
            Some(&serde_json::Value::Bool(false)),
            "{path} must be closed"
        );
        for (key, v) in object {
            same_keys(v, &props[key], &format!("{path}.{key}"));
        }
    }

    #[test]
    fn the_json_schema_describes_exactly_the_model() {
        let full = SandboxConfig {
            filesystem: FilesystemConfig {
                read_only: vec!["/a".into()],
                read_write: vec!["/b".into()],
                exec: vec!["/c".into()],
                tmpfs: TmpfsConfig {
                    tmp: Some(Size::Bytes(1 << 20)),
                    shm: Some(Size::Text("2M".into())),
                },
            },
            env: EnvConfig {
                pass: vec!["A".into()],
                set: [("B".to_string(), "c".to_string())].into(),
            },
            resources: ResourcesConfig {
                memory: Some(Size::Bytes(1 << 30)),
                pids: Some(1),
                cpu: Some(1.0),
                open_files: Some(64),
            },
            runtime: Some(Runtime::Node),
            landlock: LandlockConfig { min_abi: Some(1) },
            network: Some(Network::None),
            user: Some(UserConfig {
                uid: 1,
                gid: Some(1),
            }),
            allow_degraded: vec![DegradableLayer::Landlock],
        };
        let value = serde_json::to_value(&full).unwrap();
        let schema: serde_json::Value = serde_json::from_str(SCHEMA).unwrap();
        // `env.set` is a free-form map in both.
        let mut value = value;
        value["env"]["set"] = serde_json::json!({});
        same_keys(&value, &schema, "spec.sandbox");
        assert_eq!(
            schema["properties"]["landlock"]["properties"]["min_abi"]["maximum"],
            MAX_LANDLOCK_ABI
        );
        let degradable: Vec<String> = schema["properties"]["allow_degraded"]["items"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert_eq!(degradable, ["landlock", "seccomp", "resources"]);
    }
}
