//! Unit tests of the planner on a fake host tree (no privileges, no real files).

use std::collections::BTreeMap;

use pretty_assertions::assert_eq;

use super::*;
use crate::policy::sandbox_config::{FilesystemConfig, UserConfig};

#[derive(Debug, Clone)]
enum Entry {
    Dir,
    File(Vec<u8>, bool),
    Link(PathBuf),
}

struct FakeFs {
    nodes: BTreeMap<PathBuf, Entry>,
    ids: (u32, u32, u32),
}

impl FakeFs {
    fn new() -> Self {
        let mut fs = FakeFs {
            nodes: BTreeMap::new(),
            ids: (0, 0, 0),
        };
        fs.nodes.insert("/".into(), Entry::Dir);
        fs.dir("/usr/bin")
            .dir("/usr/lib")
            .link("/bin", "usr/bin")
            .link("/lib", "usr/lib")
            .file("/usr/bin/env", b"\x7fELF", true)
            .file("/usr/bin/node", b"\x7fELF", true)
            .file("/usr/bin/true", b"\x7fELF", true)
            .file("/usr/bin/python3.11", b"\x7fELF", true)
            .link("/usr/bin/python3", "python3.11")
            .file("/etc/ld.so.cache", b"", false)
            .file("/etc/nsswitch.conf", b"", false)
            .link("/etc/localtime", "/usr/share/zoneinfo/Etc/UTC")
            .file("/usr/share/zoneinfo/Etc/UTC", b"TZif", false)
            .link("/etc/resolv.conf", "/run/systemd/resolve/stub-resolv.conf")
            .file(
                "/run/systemd/resolve/stub-resolv.conf",
                b"nameserver 127.0.0.53\n",
                false,
            )
            .dir("/dev")
            .dir("/proc")
            .dir("/tmp")
            .dir("/root")
    }
    fn ensure_parents(&mut self, p: &Path) {
        for a in p.ancestors().skip(1) {
            self.nodes.entry(a.to_path_buf()).or_insert(Entry::Dir);
        }
    }
    fn dir(mut self, p: &str) -> Self {
        self.ensure_parents(Path::new(p));
        self.nodes.insert(p.into(), Entry::Dir);
        self
    }
    fn file(mut self, p: &str, content: &[u8], exec: bool) -> Self {
        self.ensure_parents(Path::new(p));
        self.nodes
            .insert(p.into(), Entry::File(content.to_vec(), exec));
        self
    }
    fn link(mut self, p: &str, target: &str) -> Self {
        self.ensure_parents(Path::new(p));
        self.nodes.insert(p.into(), Entry::Link(target.into()));
        self
    }
    fn user(mut self) -> Self {
        self.ids = (1000, 1000, 1000);
        self
    }
    /// Resolves `path`; the last component is followed when `follow`.
    fn resolve(&self, path: &Path, follow: bool) -> io::Result<PathBuf> {
        let mut todo: Vec<PathBuf> = path
            .components()
            .rev()
            .map(|c| PathBuf::from(c.as_os_str()))
            .collect();
        let mut current = PathBuf::from("/");
        let mut hops = 0;
        while let Some(part) = todo.pop() {
            if part == Path::new("/") {
                current = "/".into();
                continue;
            }
            if part == Path::new("..") {
                current.pop();
                continue;
            }
            let next = current.join(&part);
            match self.nodes.get(&next) {
                Some(Entry::Link(target)) if follow || !todo.is_empty() => {
                    hops += 1;
                    if hops > 40 {
                        return Err(io::Error::other("loop"));
                    }
                    todo.extend(
                        target
                            .components()
                            .rev()
                            .map(|c| PathBuf::from(c.as_os_str())),
                    );
                }
                Some(_) => current = next,
                None => return Err(io::ErrorKind::NotFound.into()),
            }
        }
        Ok(current)
    }
}

impl HostFs for FakeFs {
    fn kind(&self, path: &Path) -> io::Result<Kind> {
        let p = self.resolve(path, false)?;
        Ok(match &self.nodes[&p] {
            Entry::Dir => Kind::Dir,
            Entry::File(_, exec) => Kind::File { executable: *exec },
            Entry::Link(_) => Kind::Symlink,
        })
    }
    fn read_link(&self, path: &Path) -> io::Result<PathBuf> {
        match self.nodes.get(&self.resolve(path, false)?) {
            Some(Entry::Link(t)) => Ok(t.clone()),
            _ => Err(io::ErrorKind::InvalidInput.into()),
        }
    }
    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf> {
        self.resolve(path, true)
    }
    fn read_head(&self, path: &Path, len: usize) -> io::Result<Vec<u8>> {
        match self.nodes.get(&self.resolve(path, true)?) {
            Some(Entry::File(c, _)) => Ok(c.iter().copied().take(len).collect()),
            _ => Err(io::ErrorKind::InvalidInput.into()),
        }
    }
    fn read_small(&self, path: &Path) -> io::Result<String> {
        self.read_head(path, 65536)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }
    fn ids(&self) -> (u32, u32, u32) {
        self.ids
    }
}

fn env(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
    pairs
        .iter()
        .map(|(k, v)| (OsString::from(k), OsString::from(v)))
        .collect()
}

fn run(
    fs: &FakeFs,
    config: &SandboxConfig,
    command: &[&str],
    cwd: &str,
    overrides: &Overrides,
) -> Result<Plan, PlanError> {
    let command: Vec<OsString> = command.iter().map(OsString::from).collect();
    let host_env = env(&[
        ("PATH", "/root/.pyenv/shims:/usr/local/bin:/usr/bin:/bin"),
        ("LANG", "C.UTF-8"),
        ("LD_PRELOAD", "/evil.so"),
        ("SSH_AUTH_SOCK", "/run/user/0/ssh"),
        ("SSH_CONNECTION", "x"),
        ("MCP_TOKEN", "t"),
        ("SECRET", "s"),
    ]);
    let hidden = vec![PathBuf::from("/etc/aip/policy.yaml")];
    let input = PlanInput {
        config,
        command: &command,
        cwd: Path::new(cwd),
        overrides,
        env: &host_env,
        hidden: &hidden,
    };
    let plan = plan(&input, fs)?;
    plan.spec
        .validate()
        .unwrap_or_else(|e| panic!("planned spec is invalid: {e}"));
    Ok(plan)
}

fn exec_targets(plan: &Plan) -> Vec<String> {
    plan.spec
        .mounts
        .iter()
        .filter(|m| {
            matches!(
                m.kind,
                MountKind::Bind {
                    access: Access::Exec,
                    ..
                }
            )
        })
        .map(|m| m.target.display().to_string())
        .collect()
}

fn env_of(plan: &Plan, name: &str) -> Option<String> {
    plan.spec
        .env
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.to_string_lossy().into_owned())
}

#[test]
fn system_binary_through_a_symlinked_bin_runs_from_usr() {
    let fs = FakeFs::new();
    let plan = run(
        &fs,
        &SandboxConfig::default(),
        &["/bin/true"],
        "/",
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(plan.spec.executable, PathBuf::from("/usr/bin/true"));
    assert_eq!(exec_targets(&plan), ["/usr"]);
    assert!(
        plan.spec
            .symlinks
            .iter()
            .any(|l| l.path == Path::new("/bin") && l.target == Path::new("usr/bin"))
    );
    assert_eq!(plan.spec.seccomp, SeccompProfile::Generic);
    assert_eq!(
        plan.spec.user,
        User {
            uid: 65534,
            gid: 65534
        }
    );
    assert_eq!(plan.spec.landlock.min_abi, 1);
    assert_eq!(plan.spec.net, NetMode::None);
}

#[test]
fn node_modules_bin_link_with_env_shebang_mounts_the_node_modules_tree() {
    let fs = FakeFs::new()
        .file(
            "/proj/node_modules/@scope/server/dist/index.js",
            b"#!/usr/bin/env node\nconsole.log(1)\n",
            true,
        )
        .link(
            "/proj/node_modules/.bin/server",
            "../@scope/server/dist/index.js",
        );
    let plan = run(
        &fs,
        &SandboxConfig::default(),
        &["/proj/node_modules/.bin/server"],
        "/",
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(exec_targets(&plan), ["/proj/node_modules", "/usr"]);
    assert_eq!(plan.spec.seccomp, SeccompProfile::Node);
    assert_eq!(
        plan.spec.executable,
        PathBuf::from("/proj/node_modules/.bin/server")
    );
    assert_eq!(
        env_of(&plan, "PATH").unwrap(),
        "/usr/bin:/usr/local/bin:/bin"
    );
}

#[test]
fn venv_script_mounts_the_venv_and_the_base_interpreter_prefix() {
    let fs = FakeFs::new()
        .file(
            "/root/.pyenv/versions/3.11.7/bin/python3.11",
            b"\x7fELF",
            true,
        )
        .link("/root/.pyenv/versions/3.11.7/bin/python3", "python3.11")
        .dir("/root/.pyenv/versions/3.11.7/lib/python3.11")
        .file(
            "/srv/py/pyvenv.cfg",
            b"home = /root/.pyenv/versions/3.11.7/bin\nversion = 3.11.7\n",
            false,
        )
        .link(
            "/srv/py/bin/python3",
            "/root/.pyenv/versions/3.11.7/bin/python3",
        )
        .file(
            "/srv/py/bin/mcp-server-time",
            b"#!/srv/py/bin/python3\nimport sys\n",
            true,
        );
    let plan = run(
        &fs,
        &SandboxConfig::default(),
        &["/srv/py/bin/mcp-server-time"],
        "/",
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(
        exec_targets(&plan),
        ["/root/.pyenv/versions/3.11.7", "/srv/py", "/usr"]
    );
    assert_eq!(plan.spec.seccomp, SeccompProfile::Python);
}

#[test]
fn pyenv_shims_resolve_to_the_selected_version() {
    let fs = FakeFs::new()
        .file(
            "/root/.pyenv/shims/python3",
            b"#!/usr/bin/env bash\nexec pyenv exec python3\n",
            true,
        )
        .file("/root/.pyenv/version", b"3.11.7\n", false)
        .file(
            "/root/.pyenv/versions/3.11.7/bin/python3.11",
            b"\x7fELF",
            true,
        )
        .link("/root/.pyenv/versions/3.11.7/bin/python3", "python3.11")
        .dir("/root/.pyenv/versions/3.11.7/lib")
        .file("/app/server.py", b"print(1)\n", false);
    let plan = run(
        &fs,
        &SandboxConfig::default(),
        &["python3", "server.py"],
        "/app",
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(
        plan.spec.executable,
        PathBuf::from("/root/.pyenv/versions/3.11.7/bin/python3")
    );
    assert_eq!(
        exec_targets(&plan),
        ["/app", "/root/.pyenv/versions/3.11.7", "/usr"]
    );
    assert_eq!(plan.spec.cwd, PathBuf::from("/app"));
    assert_eq!(plan.spec.seccomp, SeccompProfile::Python);
}

#[test]
fn node_script_argument_mounts_its_package_root() {
    let fs = FakeFs::new()
        .file("/work/app/package.json", b"{}", false)
        .file("/work/app/src/server.js", b"", false)
        .dir("/work/app/node_modules/zod");
    let plan = run(
        &fs,
        &SandboxConfig::default(),
        &["node", "src/server.js"],
        "/work/app",
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(exec_targets(&plan), ["/usr", "/work/app"]);
    assert_eq!(plan.spec.seccomp, SeccompProfile::Node);
}

#[test]
fn environment_is_scrubbed_to_the_allowlist() {
    let fs = FakeFs::new();
    let mut config = SandboxConfig::default();
    config.env.pass = vec!["MCP_*".into(), "SSH_*".into()];
    config.env.set.insert("LOG".into(), "debug".into());
    let plan = run(&fs, &config, &["true"], "/", &Overrides::default()).unwrap();
    let names: Vec<String> = plan
        .spec
        .env
        .iter()
        .map(|(k, _)| k.to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "HOME",
            "LANG",
            "LOG",
            "LOGNAME",
            "MCP_TOKEN",
            "PATH",
            "SSH_CONNECTION",
            "TMPDIR",
            "USER"
        ]
    );
    assert_eq!(env_of(&plan, "HOME").unwrap(), "/tmp");
}

#[test]
fn grants_are_canonical_and_cwd_falls_back_to_root_when_not_granted() {
    let fs = FakeFs::new()
        .dir("/data/real")
        .link("/data/alias", "real")
        .dir("/home/u");
    let overrides = Overrides {
        allow_read: vec!["/data/alias".into()],
        ..Default::default()
    };
    let plan = run(
        &fs,
        &SandboxConfig::default(),
        &["true"],
        "/home/u",
        &overrides,
    )
    .unwrap();
    assert!(
        plan.spec
            .mounts
            .iter()
            .any(|m| m.target == Path::new("/data/real")
                && m.kind
                    == MountKind::Bind {
                        source: "/data/real".into(),
                        access: Access::ReadOnly
                    })
    );
    assert_eq!(plan.spec.cwd, PathBuf::from("/"));
    assert!(
        plan.notes
            .iter()
            .any(|n| n.message.contains("working directory"))
    );
}

#[test]
fn relative_grants_are_relative_to_the_working_directory() {
    let fs = FakeFs::new().dir("/home/u/proj/out");
    let config = SandboxConfig {
        filesystem: FilesystemConfig {
            read_write: vec![".".into()],
            ..Default::default()
        },
        ..Default::default()
    };
    let plan = run(
        &fs,
        &config,
        &["true"],
        "/home/u/proj",
        &Overrides::default(),
    )
    .unwrap();
    assert!(
        plan.spec
            .mounts
            .iter()
            .any(|m| m.target == Path::new("/home/u/proj")
                && matches!(
                    m.kind,
                    MountKind::Bind {
                        access: Access::ReadWrite,
                        ..
                    }
                ))
    );
    assert_eq!(plan.spec.cwd, PathBuf::from("/home/u/proj"));
}

#[test]
fn a_grant_exposing_the_policy_file_is_refused() {
    let fs = FakeFs::new().file("/etc/aip/policy.yaml", b"", false);
    let overrides = Overrides {
        allow_read: vec!["/etc/aip".into()],
        ..Default::default()
    };
    let err = run(&fs, &SandboxConfig::default(), &["true"], "/", &overrides).unwrap_err();
    assert!(matches!(err, PlanError::Exposed { .. }), "{err}");
}

#[test]
fn a_symlink_to_a_forbidden_tree_cannot_be_granted() {
    let fs = FakeFs::new()
        .dir("/run/user/0")
        .link("/home/u/sock", "/run/user/0");
    let overrides = Overrides {
        allow_write: vec!["/home/u/sock".into()],
        ..Default::default()
    };
    let err = run(&fs, &SandboxConfig::default(), &["true"], "/", &overrides).unwrap_err();
    assert!(err.to_string().contains("/run"), "{err}");
}

#[test]
fn the_runtime_directory_cannot_be_made_writable() {
    let fs = FakeFs::new()
        .file(
            "/proj/node_modules/x/cli.js",
            b"#!/usr/bin/env node\n",
            true,
        )
        .dir("/proj/node_modules/.bin");
    let overrides = Overrides {
        allow_write: vec!["/proj/node_modules".into()],
        ..Default::default()
    };
    let err = run(
        &fs,
        &SandboxConfig::default(),
        &["/proj/node_modules/x/cli.js"],
        "/",
        &overrides,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("writable paths are never executable"),
        "{err}"
    );
}

#[test]
fn host_network_copies_the_real_resolver_and_warns() {
    let fs = FakeFs::new();
    let config = SandboxConfig {
        network: Some(Network::Host),
        ..Default::default()
    };
    let plan = run(&fs, &config, &["true"], "/", &Overrides::default()).unwrap();
    assert_eq!(plan.spec.net, NetMode::Host);
    // The host's resolver file (behind a symlink into /run) is copied, never generated.
    let resolv: Vec<_> = plan
        .spec
        .files
        .iter()
        .filter(|f| f.path == Path::new("/etc/resolv.conf"))
        .collect();
    assert_eq!(resolv.len(), 1);
    assert_eq!(&resolv[0].contents[..], b"nameserver 127.0.0.53\n");
    assert!(plan.notes.iter().any(|n| n.level == NoteLevel::Warn));
}

#[test]
fn default_network_generates_resolver_files_and_passwd() {
    let fs = FakeFs::new();
    let plan = run(
        &fs,
        &SandboxConfig::default(),
        &["true"],
        "/",
        &Overrides::default(),
    )
    .unwrap();
    let passwd = plan
        .spec
        .files
        .iter()
        .find(|f| f.path == Path::new("/etc/passwd"))
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&passwd.contents),
        "root:x:0:0:root:/root:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/tmp:/usr/sbin/nologin\n"
    );
    assert!(
        plan.spec
            .files
            .iter()
            .any(|f| f.path == Path::new("/etc/resolv.conf"))
    );
    assert!(
        plan.spec
            .symlinks
            .iter()
            .any(|l| l.path == Path::new("/etc/localtime"))
            || plan
                .spec
                .mounts
                .iter()
                .any(|m| m.target == Path::new("/etc/localtime"))
    );
}

#[test]
fn unprivileged_supervisor_keeps_its_own_ids() {
    let fs = FakeFs::new().user();
    let config = SandboxConfig {
        user: Some(UserConfig {
            uid: 2000,
            gid: None,
        }),
        ..Default::default()
    };
    let plan = run(&fs, &config, &["true"], "/", &Overrides::default()).unwrap();
    assert_eq!(
        plan.spec.user,
        User {
            uid: 1000,
            gid: 1000
        }
    );
    assert!(
        plan.notes
            .iter()
            .any(|n| n.message.contains("only when aip runs as root"))
    );
}

#[test]
fn no_sandbox_is_a_plain_spawn_with_the_full_environment() {
    let fs = FakeFs::new();
    let overrides = Overrides {
        no_sandbox: true,
        ..Default::default()
    };
    let plan = run(&fs, &SandboxConfig::default(), &["true"], "/", &overrides).unwrap();
    assert!(!plan.spec.enabled);
    assert!(plan.spec.env.iter().any(|(k, _)| k == "SECRET"));
    assert_eq!(plan.notes[0].level, NoteLevel::Warn);
}

#[test]
fn unknown_command_is_reported() {
    let fs = FakeFs::new();
    let err = run(
        &fs,
        &SandboxConfig::default(),
        &["no-such-server"],
        "/",
        &Overrides::default(),
    )
    .unwrap_err();
    assert_eq!(
        err,
        PlanError::NotFound {
            command: "no-such-server".into()
        }
    );
}

#[test]
fn policy_and_sandbox_agree_on_the_landlock_abi() {
    assert_eq!(
        crate::policy::sandbox_config::MAX_LANDLOCK_ABI,
        crate::sandbox::landlock::COMPILED_ABI
    );
}

/// A package's `#!` line and `pyvenv.cfg` are the server's own (untrusted) files: what they name
/// must not make another host directory visible.
#[test]
fn env_options_on_a_shebang_cannot_mount_another_directory() {
    let fs = FakeFs::new()
        .file("/home/u/.ssh/id_ed25519", b"KEY", false)
        .file(
            "/proj/node_modules/evil/cli.js",
            b"#!/usr/bin/env -S -u /home/u/.ssh/id_ed25519 node\n",
            true,
        )
        .link("/proj/node_modules/.bin/evil", "../evil/cli.js");
    let plan = run(
        &fs,
        &SandboxConfig::default(),
        &["/proj/node_modules/.bin/evil"],
        "/",
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(exec_targets(&plan), ["/proj/node_modules", "/usr"]);

    for (line, why) in [
        (
            &b"#!/usr/bin/env --frobnicate node\n"[..],
            "unknown env option",
        ),
        (
            b"#!/usr/bin/env /home/u/.ssh/id_ed25519\n",
            "not an executable",
        ),
    ] {
        let fs = FakeFs::new()
            .file("/home/u/.ssh/id_ed25519", b"KEY", false)
            .file("/proj/node_modules/evil/cli.js", line, true)
            .link("/proj/node_modules/.bin/evil", "../evil/cli.js");
        let err = run(
            &fs,
            &SandboxConfig::default(),
            &["/proj/node_modules/.bin/evil"],
            "/",
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains(why), "{err}");
    }
}

#[test]
fn a_venv_home_without_an_interpreter_is_not_mounted() {
    let fs = FakeFs::new()
        .file("/home/u/.ssh/id_ed25519", b"KEY", false)
        .file("/srv/py/pyvenv.cfg", b"home = /home/u/.ssh\n", false)
        .link("/srv/py/bin/python3", "/usr/bin/python3")
        .file("/srv/py/bin/server", b"#!/srv/py/bin/python3\n", true);
    let plan = run(
        &fs,
        &SandboxConfig::default(),
        &["/srv/py/bin/server"],
        "/",
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(exec_targets(&plan), ["/srv/py", "/usr"]);
}

#[test]
fn a_runtime_directory_in_a_forbidden_tree_is_refused() {
    let fs = FakeFs::new()
        .file("/usr/bin/python3.11", b"\x7fELF", true)
        .file("/run/evil/bin/python3", b"\x7fELF", true)
        .file("/srv/py/pyvenv.cfg", b"home = /run/evil/bin\n", false)
        .link("/srv/py/bin/python3", "/usr/bin/python3")
        .file("/srv/py/bin/server", b"#!/srv/py/bin/python3\n", true);
    let err = run(
        &fs,
        &SandboxConfig::default(),
        &["/srv/py/bin/server"],
        "/",
        &Overrides::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("/run"), "{err}");
}
