//! aipd configuration: `aipd.yaml` (sockets, session uids, limits, audit, approvals) and
//! `servers.d/*.yaml` (one MCP server per file: command, environment, policy, who may use it).
//!
//! Files are parsed once by the policy loader's positioned YAML reader (`policy::yaml`), then
//! deserialized strictly (unknown keys are errors); a problem names the file, `line:column`, the
//! field path and a fix. A bad server file is reported and skipped, the others load. Inline
//! policies go through `policy::load_str` and their errors point into the server file.
//!
//! When aipd runs as root every file it trusts (config, server files, policies) and every
//! directory above them must be owned by root and writable by nobody else; anything else is
//! refused with the reason.
//!
//! Must not: open sockets, spawn anything, or evaluate policy.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::policy::sandbox_config::env_forbidden;
use crate::policy::yaml::{self, Node, NodeValue};
use crate::policy::{self, Diagnostic, Policy, PolicyError, parse_duration};

/// Where `aip daemon` looks without `--config`.
pub const DEFAULT_CONFIG: &str = "/etc/aip/aipd.yaml";
/// The client socket without configuration.
pub const DEFAULT_SOCKET: &str = "/run/aip/aipd.sock";
/// The control socket without configuration.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/aip/control.sock";
/// Default per-session uid range: above the ranges systemd hands out (nspawn containers end at
/// 1879048191) and below 2^31, which some tools mishandle.
pub const DEFAULT_FIRST_UID: u32 = 1_900_000_000;
pub const DEFAULT_UID_COUNT: u32 = 65_536;
/// Largest configuration or server file read.
const MAX_FILE_BYTES: usize = 1024 * 1024;
/// Most server files read from servers.d.
const MAX_SERVER_FILES: usize = 4096;

/// One located problem in a configuration file: the policy loader's [`Diagnostic`] (file as
/// `origin`, `line:column`, field path, message, hint), displayed the same way.
pub type Problem = Diagnostic;

fn whole(file: &Path, message: impl Into<String>, hint: Option<&str>) -> Problem {
    Problem {
        origin: file.display().to_string(),
        pos: None,
        field: String::new(),
        message: message.into(),
        hint: hint.map(str::to_owned),
    }
}

fn from_policy(err: PolicyError, file: &Path) -> Problem {
    match err {
        PolicyError::Read { path, message } => Problem {
            origin: file.display().to_string(),
            pos: None,
            field: "policy".into(),
            message: format!("cannot read the policy {}: {message}", path.display()),
            hint: Some("check the path and its permissions".into()),
        },
        PolicyError::Invalid(d) => *d,
    }
}

/// A user or group named in the configuration, before resolution.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Principal {
    Id(u32),
    Name(String),
}

/// Who a file trust check runs for: root requires root-owned, unwritable-by-others files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// Running as root: refuse files others could have changed.
    RootOwned,
    /// Not root: the files are whatever the invoking user can read.
    Any,
}

impl Trust {
    pub fn for_current_process() -> Self {
        if nix::unistd::geteuid().is_root() {
            Trust::RootOwned
        } else {
            Trust::Any
        }
    }
}

/// Checks that `path` and every directory above it are owned by root and not writable by
/// group or others (sticky directories such as /tmp excepted above the file).
pub fn check_trusted(path: &Path, trust: Trust) -> Result<(), String> {
    if trust == Trust::Any {
        return Ok(());
    }
    let real = std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut cur = Some(real.as_path());
    let mut first = true;
    while let Some(p) = cur {
        let meta = std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
        let mode = meta.permissions().mode();
        if meta.uid() != 0 {
            return Err(format!(
                "{} is owned by uid {}, not root; aipd only trusts files root alone can change\n  hint: chown root:root {}",
                p.display(),
                meta.uid(),
                p.display()
            ));
        }
        let sticky_dir = meta.is_dir() && mode & 0o1000 != 0 && !first;
        if mode & 0o022 != 0 && !sticky_dir {
            let who = if mode & 0o002 != 0 {
                "everyone".to_string()
            } else {
                format!("group {}", meta.gid())
            };
            return Err(format!(
                "{} is writable by {who} (mode {:04o}); aipd only trusts files root alone can change\n  hint: chmod go-w {}",
                p.display(),
                mode & 0o7777,
                p.display()
            ));
        }
        first = false;
        cur = p.parent();
    }
    Ok(())
}

/// Reads a configuration file: regular, bounded, UTF-8, trusted.
fn read_config_file(path: &Path, trust: Trust) -> Result<String, Problem> {
    let meta =
        std::fs::metadata(path).map_err(|e| whole(path, format!("cannot read: {e}"), None))?;
    if !meta.is_file() {
        return Err(whole(path, "not a regular file", None));
    }
    check_trusted(path, trust).map_err(|m| {
        let (message, hint) = split_hint(&m);
        whole(path, message, hint.as_deref())
    })?;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE_BYTES as u64 + 1).read_to_end(&mut bytes))
        .map_err(|e| whole(path, format!("cannot read: {e}"), None))?;
    if bytes.len() > MAX_FILE_BYTES {
        return Err(whole(
            path,
            format!("larger than {} KiB", MAX_FILE_BYTES >> 10),
            Some("a configuration file is a few KiB; is this the right file?"),
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        whole(
            path,
            format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
            None,
        )
    })
}

fn split_hint(m: &str) -> (String, Option<String>) {
    match m.split_once("\n  hint: ") {
        Some((a, b)) => (a.to_owned(), Some(b.to_owned())),
        None => (m.to_owned(), None),
    }
}

/// A parsed document: the positioned tree (for locating fields) and its path.
struct Doc<'a> {
    file: &'a Path,
    root: Node,
}

impl Doc<'_> {
    fn problem(&self, field: &str, message: impl Into<String>, hint: Option<&str>) -> Problem {
        Problem {
            origin: self.file.display().to_string(),
            pos: Some(self.root.locate(field).pos),
            field: field.to_owned(),
            message: message.into(),
            hint: hint.map(str::to_owned),
        }
    }
}

/// Parses `text` once with positions, then deserializes it strictly into `T`.
fn parse<'a, T: DeserializeOwned>(file: &'a Path, text: &str) -> Result<(T, Doc<'a>), Problem> {
    if text.trim().is_empty() {
        return Err(whole(file, "the file is empty", None));
    }
    let root = yaml::parse(text).map_err(|e| Problem {
        origin: file.display().to_string(),
        pos: e.pos,
        field: String::new(),
        message: e.message,
        hint: Some("check the indentation and quoting at this position".into()),
    })?;
    if !matches!(root.value, NodeValue::Map(_)) {
        return Err(Problem {
            origin: file.display().to_string(),
            pos: Some(root.pos),
            field: String::new(),
            message: format!("expected a mapping, found {}", root.value.kind()),
            hint: None,
        });
    }
    let doc = Doc { file, root };
    match serde_path_to_error::deserialize::<_, T>(doc.root.to_json()) {
        Ok(v) => Ok((v, doc)),
        Err(e) => {
            let mut field = e.path().to_string();
            if field == "." {
                field.clear();
            }
            // The path already ends with an unknown field's name.
            let message = e.inner().to_string();
            let hint = if field.ends_with("mode") {
                Some("write the mode as a quoted octal string, e.g. \"0660\"")
            } else if message.contains("untagged enum Principal") {
                Some("name a user or group, or give its numeric id")
            } else {
                None
            };
            let message = message.replace(
                "data did not match any variant of untagged enum Principal",
                "expected a user or group name or a numeric id",
            );
            let mut problem = doc.problem(&field, message, hint);
            // An unknown key: point at the key itself rather than at its value.
            if problem.message.starts_with("unknown field") {
                let (parent, name) = field.rsplit_once('.').unwrap_or(("", field.as_str()));
                if let Some(key) = doc.root.locate(parent).get_key(name) {
                    problem.pos = Some(key.pos);
                }
            }
            Err(problem)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// aipd.yaml

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    #[serde(default)]
    socket: RawSocket,
    #[serde(default)]
    control: RawControl,
    #[serde(default)]
    servers_dir: Option<String>,
    #[serde(default)]
    session_users: Option<RawUidRange>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    approvals: RawApprovals,
    #[serde(default)]
    proxy: RawProxy,
    #[serde(default)]
    prewarm_netns: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSocket {
    path: Option<String>,
    mode: Option<String>,
    user: Option<Principal>,
    group: Option<Principal>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawControl {
    path: Option<String>,
    mode: Option<String>,
    group: Option<Principal>,
    #[serde(default)]
    admin_users: Vec<Principal>,
    #[serde(default)]
    admin_groups: Vec<Principal>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUidRange {
    first: u32,
    count: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_sessions: Option<usize>,
    max_sessions_per_user: Option<usize>,
    hello_timeout: Option<String>,
    hello_max_bytes: Option<usize>,
    max_pending_hellos: Option<usize>,
    shutdown_timeout: Option<String>,
    client_write_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    journald: Option<bool>,
    jsonl: Option<String>,
    identifier: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApprovals {
    timeout: Option<String>,
    max_pending: Option<usize>,
    prompts_per_minute: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    max_message_bytes: Option<usize>,
    shutdown_grace: Option<String>,
    kill_grace: Option<String>,
}

/// The client socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketConfig {
    pub path: PathBuf,
    pub mode: u32,
    pub user: Option<u32>,
    pub group: Option<u32>,
}

/// The control socket and who may use it (root always may).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlConfig {
    pub path: PathBuf,
    pub mode: u32,
    pub group: Option<u32>,
    pub admin_users: BTreeSet<u32>,
    pub admin_groups: BTreeSet<u32>,
}

/// Per-session uids (and gids of the same number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidRange {
    pub first: u32,
    pub count: u32,
}

impl UidRange {
    pub fn contains(&self, uid: u32) -> bool {
        uid >= self.first && uid - self.first < self.count
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_sessions: usize,
    pub max_sessions_per_user: usize,
    pub hello_timeout: Duration,
    pub hello_max_bytes: usize,
    /// Connections still in their hello at once (each holds a thread); more are refused at once.
    pub max_pending_hellos: usize,
    /// SIGTERM: how long live sessions get to end before aipd exits anyway.
    pub shutdown_timeout: Duration,
    /// How long a write to a client that does not read may block before the session ends.
    pub client_write_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    pub journald: bool,
    pub jsonl: Option<PathBuf>,
    pub identifier: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalsConfig {
    pub timeout: Duration,
    pub max_pending: usize,
    pub prompts_per_minute: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyTunables {
    pub max_message_bytes: usize,
    pub shutdown_grace: Duration,
    pub kill_grace: Duration,
}

/// `aipd.yaml`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonConfig {
    pub path: PathBuf,
    pub socket: SocketConfig,
    pub control: ControlConfig,
    pub servers_dir: PathBuf,
    pub session_uids: UidRange,
    pub limits: Limits,
    pub audit: AuditConfig,
    pub approvals: ApprovalsConfig,
    pub proxy: ProxyTunables,
    pub prewarm_netns: usize,
}

fn resolve_user(doc: &Doc<'_>, field: &str, p: &Principal) -> Result<u32, Problem> {
    match p {
        Principal::Id(id) => Ok(*id),
        Principal::Name(name) => match nix::unistd::User::from_name(name) {
            Ok(Some(u)) => Ok(u.uid.as_raw()),
            Ok(None) => Err(doc.problem(
                field,
                format!("no user named `{name}`"),
                Some("create the user, fix the name, or give a numeric uid"),
            )),
            Err(e) => Err(doc.problem(field, format!("cannot look up user `{name}`: {e}"), None)),
        },
    }
}

fn resolve_group(doc: &Doc<'_>, field: &str, p: &Principal) -> Result<u32, Problem> {
    match p {
        Principal::Id(id) => Ok(*id),
        Principal::Name(name) => match nix::unistd::Group::from_name(name) {
            Ok(Some(g)) => Ok(g.gid.as_raw()),
            Ok(None) => Err(doc.problem(
                field,
                format!("no group named `{name}`"),
                Some("create the group, fix the name, or give a numeric gid"),
            )),
            Err(e) => Err(doc.problem(field, format!("cannot look up group `{name}`: {e}"), None)),
        },
    }
}

fn duration(
    doc: &Doc<'_>,
    field: &str,
    v: &Option<String>,
    default: Duration,
) -> Result<Duration, Problem> {
    match v {
        None => Ok(default),
        Some(s) => parse_duration(s).map_err(|m| doc.problem(field, m, None)),
    }
}

fn mode(doc: &Doc<'_>, field: &str, v: &Option<String>, default: u32) -> Result<u32, Problem> {
    let Some(s) = v else { return Ok(default) };
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(doc.problem(
            field,
            format!("`{s}` is not a file mode"),
            Some("write the mode as a quoted octal string, e.g. \"0660\""),
        )),
    }
}

fn absolute_path(doc: &Doc<'_>, field: &str, s: &str) -> Result<PathBuf, Problem> {
    let p = PathBuf::from(s);
    if !p.is_absolute() {
        return Err(doc.problem(
            field,
            format!("`{s}` is not an absolute path"),
            Some("write the full path, starting with /"),
        ));
    }
    Ok(p)
}

fn positive(
    doc: &Doc<'_>,
    field: &str,
    v: Option<usize>,
    default: usize,
) -> Result<usize, Problem> {
    match v {
        Some(0) => Err(doc.problem(field, "must be at least 1", None)),
        Some(n) => Ok(n),
        None => Ok(default),
    }
}

/// Loads and validates `aipd.yaml`.
pub fn load_daemon(path: &Path, trust: Trust) -> Result<DaemonConfig, Problem> {
    let text = read_config_file(path, trust)?;
    let (raw, doc): (RawDaemon, _) = parse(path, &text)?;
    daemon_from_raw(raw, &doc)
}

/// Validates an `aipd.yaml` given as text (`file` names it in problems).
pub fn daemon_from_str(text: &str, file: &Path) -> Result<DaemonConfig, Problem> {
    let (raw, doc): (RawDaemon, _) = parse(file, text)?;
    daemon_from_raw(raw, &doc)
}

fn daemon_from_raw(raw: RawDaemon, doc: &Doc<'_>) -> Result<DaemonConfig, Problem> {
    let path = doc.file;
    let socket = SocketConfig {
        path: match &raw.socket.path {
            Some(s) => absolute_path(doc, "socket.path", s)?,
            None => DEFAULT_SOCKET.into(),
        },
        mode: mode(doc, "socket.mode", &raw.socket.mode, 0o666)?,
        user: raw
            .socket
            .user
            .as_ref()
            .map(|p| resolve_user(doc, "socket.user", p))
            .transpose()?,
        group: raw
            .socket
            .group
            .as_ref()
            .map(|p| resolve_group(doc, "socket.group", p))
            .transpose()?,
    };
    let mut admin_users = BTreeSet::new();
    for (i, p) in raw.control.admin_users.iter().enumerate() {
        admin_users.insert(resolve_user(doc, &format!("control.admin_users[{i}]"), p)?);
    }
    let mut admin_groups = BTreeSet::new();
    for (i, p) in raw.control.admin_groups.iter().enumerate() {
        admin_groups.insert(resolve_group(
            doc,
            &format!("control.admin_groups[{i}]"),
            p,
        )?);
    }
    let control = ControlConfig {
        path: match &raw.control.path {
            Some(s) => absolute_path(doc, "control.path", s)?,
            None => DEFAULT_CONTROL_SOCKET.into(),
        },
        mode: mode(doc, "control.mode", &raw.control.mode, 0o600)?,
        group: raw
            .control
            .group
            .as_ref()
            .map(|p| resolve_group(doc, "control.group", p))
            .transpose()?,
        admin_users,
        admin_groups,
    };
    if control.mode & 0o007 != 0 {
        return Err(doc.problem(
            "control.mode",
            "the control socket must not be open to others",
            Some("use 0600, or 0660 with control.group"),
        ));
    }
    if control.path == socket.path {
        return Err(doc.problem(
            "control.path",
            "the control socket and the client socket are the same path",
            None,
        ));
    }
    let servers_dir = match &raw.servers_dir {
        Some(s) => absolute_path(doc, "servers_dir", s)?,
        None => path
            .parent()
            .map(|d| d.join("servers.d"))
            .unwrap_or_else(|| PathBuf::from("/etc/aip/servers.d")),
    };
    let session_uids = match &raw.session_users {
        None => UidRange {
            first: DEFAULT_FIRST_UID,
            count: DEFAULT_UID_COUNT,
        },
        Some(r) => {
            if r.count == 0 {
                return Err(doc.problem("session_users.count", "must be at least 1", None));
            }
            if r.first < 1000 {
                return Err(doc.problem(
                    "session_users.first",
                    "per-session uids must not overlap system users (below 1000)",
                    Some("pick an unused range, e.g. first: 1900000000"),
                ));
            }
            if u64::from(r.first) + u64::from(r.count) > u64::from(u32::MAX - 1) {
                return Err(doc.problem(
                    "session_users.count",
                    "the range runs past the largest uid",
                    None,
                ));
            }
            UidRange {
                first: r.first,
                count: r.count,
            }
        }
    };
    let l = &raw.limits;
    let limits = Limits {
        max_sessions: positive(doc, "limits.max_sessions", l.max_sessions, 512)?,
        max_sessions_per_user: positive(
            doc,
            "limits.max_sessions_per_user",
            l.max_sessions_per_user,
            64,
        )?,
        hello_timeout: duration(
            doc,
            "limits.hello_timeout",
            &l.hello_timeout,
            Duration::from_secs(5),
        )?,
        hello_max_bytes: positive(doc, "limits.hello_max_bytes", l.hello_max_bytes, 4096)?,
        max_pending_hellos: positive(doc, "limits.max_pending_hellos", l.max_pending_hellos, 128)?,
        shutdown_timeout: duration(
            doc,
            "limits.shutdown_timeout",
            &l.shutdown_timeout,
            Duration::from_secs(20),
        )?,
        client_write_timeout: duration(
            doc,
            "limits.client_write_timeout",
            &l.client_write_timeout,
            Duration::from_secs(60),
        )?,
    };
    if limits.hello_max_bytes > 64 * 1024 {
        return Err(doc.problem(
            "limits.hello_max_bytes",
            "at most 65536: a hello is one short JSON line",
            None,
        ));
    }
    let audit = AuditConfig {
        journald: raw.audit.journald.unwrap_or(true),
        jsonl: raw
            .audit
            .jsonl
            .as_deref()
            .map(|s| absolute_path(doc, "audit.jsonl", s))
            .transpose()?,
        identifier: raw
            .audit
            .identifier
            .clone()
            .unwrap_or_else(|| "aipd".into()),
    };
    if audit.identifier.is_empty() || audit.identifier.len() > 64 {
        return Err(doc.problem("audit.identifier", "1 to 64 characters", None));
    }
    let a = &raw.approvals;
    let approvals = ApprovalsConfig {
        timeout: duration(
            doc,
            "approvals.timeout",
            &a.timeout,
            crate::approval::DEFAULT_TIMEOUT,
        )?,
        max_pending: positive(doc, "approvals.max_pending", a.max_pending, 64)?,
        prompts_per_minute: positive(
            doc,
            "approvals.prompts_per_minute",
            a.prompts_per_minute,
            10,
        )?,
    };
    let defaults = crate::proxy::ProxyConfig::default();
    let p = &raw.proxy;
    let proxy = ProxyTunables {
        max_message_bytes: positive(
            doc,
            "proxy.max_message_bytes",
            p.max_message_bytes,
            defaults.max_message_bytes,
        )?,
        shutdown_grace: duration(
            doc,
            "proxy.shutdown_grace",
            &p.shutdown_grace,
            defaults.shutdown_grace,
        )?,
        kill_grace: duration(doc, "proxy.kill_grace", &p.kill_grace, defaults.kill_grace)?,
    };
    Ok(DaemonConfig {
        path: path.to_owned(),
        socket,
        control,
        servers_dir,
        session_uids,
        limits,
        audit,
        approvals,
        proxy,
        prewarm_netns: raw.prewarm_netns.unwrap_or(4).min(16),
    })
}

// ---------------------------------------------------------------------------------------------
// servers.d/*.yaml

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    name: Option<String>,
    description: Option<String>,
    command: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    cwd: Option<String>,
    policy: Value,
    #[serde(default)]
    allow: RawAllow,
    run_as: Option<RunAs>,
    max_sessions: Option<usize>,
    approvals: Option<ApproverKind>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllow {
    #[serde(default)]
    everyone: bool,
    #[serde(default)]
    users: Vec<Principal>,
    #[serde(default)]
    groups: Vec<Principal>,
}

/// How a session's server is identified when aipd runs as root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunAs {
    /// A fresh uid/gid from `session_users` per session (default).
    Dynamic,
    /// `spec.sandbox.user` of the policy (65534 by default), shared by all sessions.
    Policy,
}

/// Who answers the policy's `ask` rules for this server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApproverKind {
    /// Queued for an administrator's `aip approve` (default).
    Queue,
    /// Denied at once (-32004).
    Deny,
    /// Nobody: asks time out (-32005).
    None,
}

/// Who may use a server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allow {
    pub everyone: bool,
    pub users: BTreeSet<u32>,
    pub groups: BTreeSet<u32>,
}

impl Allow {
    /// Whether a peer with `uid`, primary `gid` and supplementary `groups` may connect.
    pub fn permits(&self, uid: u32, gid: u32, groups: &[u32]) -> bool {
        self.everyone
            || self.users.contains(&uid)
            || self.groups.contains(&gid)
            || groups.iter().any(|g| self.groups.contains(g))
    }
}

/// One server definition, validated, with its policy loaded.
#[derive(Debug, Clone)]
pub struct ServerDef {
    pub name: String,
    pub description: Option<String>,
    /// The file it came from.
    pub file: PathBuf,
    /// argv: `command` then `args`.
    pub command: Vec<OsString>,
    /// The server's working directory.
    pub cwd: PathBuf,
    /// The policy, with the file's `env` added to `spec.sandbox.env.set`.
    pub policy: Arc<Policy>,
    /// The policy file (the server file itself for an inline policy).
    pub policy_path: PathBuf,
    pub allow: Allow,
    pub run_as: RunAs,
    pub max_sessions: Option<usize>,
    pub approvals: ApproverKind,
}

/// The servers of servers.d, and what was wrong with the files that did not load.
#[derive(Debug, Clone, Default)]
pub struct Servers {
    pub by_name: BTreeMap<String, Arc<ServerDef>>,
    pub problems: Vec<Problem>,
    /// Problems of files whose previous definition was kept (reload).
    pub kept: Vec<String>,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.starts_with('.')
}

/// The server files of `dir`: `*.yaml` and `*.yml`, sorted, hidden and backup files ignored.
pub fn server_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || !(name.ends_with(".yaml") || name.ends_with(".yml")) {
            continue;
        }
        files.push(entry.path());
        if files.len() > MAX_SERVER_FILES {
            return Err(format!(
                "{}: more than {MAX_SERVER_FILES} server files",
                dir.display()
            ));
        }
    }
    files.sort();
    Ok(files)
}

/// Loads every server file of `dir`. A file that fails keeps the definition `previous` had
/// from the same file (reload), or is skipped (start).
pub fn load_servers(dir: &Path, trust: Trust, previous: Option<&Servers>) -> Servers {
    let mut out = Servers::default();
    let files = match server_files(dir) {
        Ok(f) => f,
        Err(m) => {
            out.problems
                .push(whole(dir, m, Some("create servers.d or set servers_dir")));
            return out;
        }
    };
    if let Err(m) = check_trusted(dir, trust) {
        let (message, hint) = split_hint(&m);
        out.problems.push(whole(dir, message, hint.as_deref()));
        return out;
    }
    for file in files {
        let result =
            load_server_file(&file, trust).and_then(|def| match out.by_name.get(&def.name) {
                Some(other) => Err(Problem {
                    origin: file.display().to_string(),
                    pos: None,
                    field: "name".into(),
                    message: format!(
                        "server `{}` is already defined in {}",
                        def.name,
                        other.file.display()
                    ),
                    hint: Some("each server name must be unique across servers.d".into()),
                }),
                None => Ok(def),
            });
        match result {
            Ok(def) => {
                out.by_name.insert(def.name.clone(), Arc::new(def));
            }
            Err(problem) => {
                let old = previous.and_then(|p| {
                    p.by_name
                        .values()
                        .find(|d| d.file == file && !out.by_name.contains_key(&d.name))
                });
                if let Some(old) = old {
                    out.kept.push(old.name.clone());
                    out.by_name.insert(old.name.clone(), Arc::clone(old));
                }
                out.problems.push(problem);
            }
        }
    }
    out
}

/// Loads one server file.
pub fn load_server_file(file: &Path, trust: Trust) -> Result<ServerDef, Problem> {
    let text = read_config_file(file, trust)?;
    server_from_str(&text, file, trust)
}

/// Validates a server definition given as text (`file` names it and anchors relative paths).
pub fn server_from_str(text: &str, file: &Path, trust: Trust) -> Result<ServerDef, Problem> {
    let (raw, doc): (RawServer, _) = parse(file, text)?;
    let stem = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_owned();
    let name = raw.name.clone().unwrap_or(stem);
    if !valid_name(&name) {
        return Err(doc.problem(
            "name",
            format!("`{name}` is not a valid server name"),
            Some("use letters, digits, `-`, `_` and `.` (at most 64), not starting with `.`"),
        ));
    }
    let base = file.parent().unwrap_or(Path::new("/"));
    if raw.command.is_empty() {
        return Err(doc.problem("command", "empty command", None));
    }
    let mut command = vec![OsString::from(&raw.command)];
    command.extend(raw.args.iter().map(OsString::from));
    let cwd = match &raw.cwd {
        Some(c) => absolute_path(&doc, "cwd", c)?,
        None => PathBuf::from("/"),
    };
    if !cwd.is_dir() {
        return Err(doc.problem("cwd", format!("{} is not a directory", cwd.display()), None));
    }

    let (policy, policy_path) = match &raw.policy {
        Value::String(p) => {
            let path = base.join(p);
            check_trusted(&path, trust).map_err(|m| {
                let (message, hint) = split_hint(&m);
                doc.problem("policy", message, hint.as_deref())
            })?;
            let policy = policy::load_file(&path).map_err(|e| from_policy(e, file))?;
            (policy, path)
        }
        Value::Object(_) => (inline_policy(&doc, text)?, file.to_owned()),
        other => {
            return Err(doc.problem(
                "policy",
                format!("expected a policy file path or an inline policy, found {other}"),
                Some("write `policy: /etc/aip/policies/NAME.yaml`, or the policy as a block mapping below `policy:`"),
            ));
        }
    };
    let policy = with_env(policy, &raw.env, &doc)?;

    let mut allow = Allow {
        everyone: raw.allow.everyone,
        ..Allow::default()
    };
    for (i, p) in raw.allow.users.iter().enumerate() {
        allow
            .users
            .insert(resolve_user(&doc, &format!("allow.users[{i}]"), p)?);
    }
    for (i, p) in raw.allow.groups.iter().enumerate() {
        allow
            .groups
            .insert(resolve_group(&doc, &format!("allow.groups[{i}]"), p)?);
    }
    if raw.max_sessions == Some(0) {
        return Err(doc.problem("max_sessions", "must be at least 1", None));
    }
    Ok(ServerDef {
        name,
        description: raw.description,
        file: file.to_owned(),
        command,
        cwd,
        policy: Arc::new(policy),
        policy_path,
        allow,
        run_as: raw.run_as.unwrap_or(RunAs::Dynamic),
        max_sessions: raw.max_sessions,
        approvals: raw.approvals.unwrap_or(ApproverKind::Queue),
    })
}

/// The inline policy below `policy:`: its lines are cut out of the file, dedented and loaded
/// with `policy::load_str`, and error positions are moved back into the server file.
fn inline_policy(doc: &Doc<'_>, text: &str) -> Result<Policy, Problem> {
    let (Some(key), Some(value)) = (doc.root.get_key("policy"), doc.root.get("policy")) else {
        return Err(doc.problem("policy", "missing", None));
    };
    let first = match &value.value {
        NodeValue::Map(entries) => entries.first().map(|(k, _)| k.pos),
        _ => None,
    };
    let Some(first) = first.filter(|p| p.line > key.pos.line) else {
        return Err(doc.problem(
            "policy",
            "an inline policy must be a block mapping on the lines below `policy:`",
            Some("indent the policy's `apiVersion:`, `kind:`, `metadata:` and `spec:` under `policy:`"),
        ));
    };
    let indent = (first.column.saturating_sub(1)) as usize;
    let start = (first.line.saturating_sub(1)) as usize;
    let mut block = String::new();
    for line in text.lines().skip(start) {
        let lead = line.len() - line.trim_start_matches(' ').len();
        let content = line.trim();
        if !content.is_empty() && !content.starts_with('#') && lead < indent {
            break;
        }
        block.push_str(line.get(indent.min(lead)..).unwrap_or(""));
        block.push('\n');
    }
    let origin = doc.file.display().to_string();
    policy::load_str(&block, &origin).map_err(|e| {
        let mut p = from_policy(e, doc.file);
        p.origin = doc.file.display().to_string();
        if let Some(pos) = p.pos.as_mut() {
            pos.line += first.line - 1;
            pos.column += indent as u64;
        }
        p.field = if p.field.is_empty() {
            "policy".into()
        } else {
            format!("policy.{}", p.field)
        };
        p
    })
}

/// Adds the server file's `env` to the policy's `spec.sandbox.env.set`: the file supplies
/// values, the sandbox planner still refuses loader and session variables.
fn with_env(
    policy: Policy,
    env: &BTreeMap<String, String>,
    doc: &Doc<'_>,
) -> Result<Policy, Problem> {
    if env.is_empty() {
        return Ok(policy);
    }
    let mut policy = policy;
    let sandbox = policy.spec.sandbox.get_or_insert_with(Default::default);
    for (k, v) in env {
        let field = format!("env.{k}");
        if env_forbidden(k) {
            return Err(doc.problem(
                &field,
                format!("`{k}` is never passed to a sandboxed server (loader or session variable)"),
                None,
            ));
        }
        if sandbox.env.set.contains_key(k) {
            return Err(doc.problem(
                &field,
                format!("`{k}` is also set by the policy's spec.sandbox.env.set"),
                Some("set it in one place"),
            ));
        }
        sandbox.env.set.insert(k.clone(), v.clone());
    }
    sandbox.validate().map_err(|(f, m)| {
        let field = f
            .strip_prefix("env.set.")
            .map(|k| format!("env.{k}"))
            .unwrap_or_else(|| "env".into());
        doc.problem(&field, m, None)
    })?;
    Ok(policy)
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
