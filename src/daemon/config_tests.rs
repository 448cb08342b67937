use super::*;
use std::os::unix::fs::PermissionsExt;

const POLICY: &str = "apiVersion: aip.io/v1alpha1\nkind: AgentPolicy\nmetadata:\n  name: test\nspec:\n  mode: enforce\n  allowed_tools: [echo]\n";

fn dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    p
}

#[test]
fn daemon_defaults_and_overrides() {
    let c = daemon_from_str("prewarm_netns: 2\n", Path::new("/etc/aip/aipd.yaml")).unwrap();
    assert_eq!(c.socket.path, PathBuf::from(DEFAULT_SOCKET));
    assert_eq!(c.socket.mode, 0o666);
    assert_eq!(c.control.mode, 0o600);
    assert_eq!(c.servers_dir, PathBuf::from("/etc/aip/servers.d"));
    assert_eq!(c.session_uids.first, DEFAULT_FIRST_UID);
    assert_eq!(c.limits.max_sessions, 512);
    assert_eq!(c.limits.hello_timeout, Duration::from_secs(5));
    assert!(c.audit.journald);
    assert_eq!(c.prewarm_netns, 2);

    let text = "socket:\n  path: /tmp/x.sock\n  mode: \"0660\"\n  group: 0\ncontrol:\n  admin_users: [root, 1234]\nlimits:\n  hello_timeout: 250ms\n  max_sessions: 3\nsession_users:\n  first: 70000\n  count: 10\naudit:\n  journald: false\n  jsonl: /var/log/aip/audit.jsonl\n";
    let c = daemon_from_str(text, Path::new("/x/aipd.yaml")).unwrap();
    assert_eq!(c.socket.mode, 0o660);
    assert_eq!(c.socket.group, Some(0));
    assert_eq!(c.control.admin_users, BTreeSet::from([0, 1234]));
    assert_eq!(c.limits.hello_timeout, Duration::from_millis(250));
    assert_eq!(c.limits.max_sessions, 3);
    assert!(c.session_uids.contains(70009) && !c.session_uids.contains(70010));
    assert!(!c.audit.journald);
}

#[test]
fn daemon_problems_name_line_and_field() {
    let f = Path::new("/etc/aip/aipd.yaml");
    let e =
        daemon_from_str("limits:\n  max_sessions: 3\n  max_sesions_per_user: 2\n", f).unwrap_err();
    assert_eq!(e.field, "limits.max_sesions_per_user");
    assert_eq!(e.pos.map(|p| p.line), Some(3));
    assert!(e.to_string().starts_with("/etc/aip/aipd.yaml:3:"), "{e}");
    assert!(e.message.contains("unknown field"), "{e}");

    let e = daemon_from_str("limits:\n  hello_timeout: soon\n", f).unwrap_err();
    assert_eq!(e.field, "limits.hello_timeout");
    assert_eq!(e.pos.map(|p| p.line), Some(2));

    let e = daemon_from_str("socket:\n  mode: 0660\n", f).unwrap_err();
    assert_eq!(e.field, "socket.mode");
    assert!(
        e.hint.as_deref().unwrap_or("").contains("quoted octal"),
        "{e}"
    );

    let e = daemon_from_str("control:\n  mode: \"0666\"\n", f).unwrap_err();
    assert_eq!(e.field, "control.mode");

    let e = daemon_from_str("socket:\n  user: no-such-user-aip\n", f).unwrap_err();
    assert_eq!(e.field, "socket.user");
    assert!(e.message.contains("no user named"), "{e}");

    let e = daemon_from_str("session_users:\n  first: 10\n  count: 5\n", f).unwrap_err();
    assert_eq!(e.field, "session_users.first");

    let e = daemon_from_str("socket: [\n", f).unwrap_err();
    assert!(e.pos.is_some(), "{e}");
}

#[test]
fn server_with_policy_path_and_env() {
    let d = dir();
    write(d.path(), "p.yaml", POLICY);
    let text = "name: echo\ncommand: /bin/cat\nargs: [-u]\nenv:\n  GREETING: hello\npolicy: p.yaml\nallow:\n  users: [root, 4242]\n  groups: [0]\nmax_sessions: 3\n";
    let file = write(d.path(), "echo.yaml", text);
    let s = load_server_file(&file, Trust::RootOwned).unwrap();
    assert_eq!(s.name, "echo");
    assert_eq!(
        s.command,
        vec![OsString::from("/bin/cat"), OsString::from("-u")]
    );
    assert_eq!(s.policy_path, d.path().join("p.yaml"));
    assert_eq!(s.policy.name(), "test");
    let set = &s.policy.sandbox().unwrap().env.set;
    assert_eq!(set.get("GREETING").map(String::as_str), Some("hello"));
    assert!(s.allow.permits(4242, 100, &[]));
    assert!(s.allow.permits(5000, 0, &[]));
    assert!(s.allow.permits(5000, 5000, &[0]));
    assert!(!s.allow.permits(5000, 5000, &[5001]));
    assert_eq!(s.run_as, RunAs::Dynamic);
    assert_eq!(s.approvals, ApproverKind::Queue);
}

#[test]
fn inline_policy_errors_point_into_the_server_file() {
    let d = dir();
    let good = format!(
        "command: /bin/cat\npolicy:\n{}allow:\n  everyone: true\n",
        POLICY
            .lines()
            .map(|l| format!("  {l}\n"))
            .collect::<String>()
    );
    let f = write(d.path(), "cat.yaml", &good);
    let s = load_server_file(&f, Trust::RootOwned).unwrap();
    assert_eq!(s.name, "cat");
    assert_eq!(s.policy.name(), "test");
    assert_eq!(s.policy_path, f);
    assert!(s.allow.everyone);

    // Line 8 of the server file: `mode: enforce` misspelled inside the inline policy.
    let bad = good.replace("mode: enforce", "mode: enforcing");
    let f = write(d.path(), "bad.yaml", &bad);
    let e = load_server_file(&f, Trust::RootOwned).unwrap_err();
    assert_eq!(e.origin, f.display().to_string());
    assert_eq!(e.field, "policy.spec.mode");
    assert_eq!(e.pos.map(|p| (p.line, p.column)), Some((8, 11)), "{e}");

    let flow = "command: /bin/cat\npolicy: {apiVersion: aip.io/v1alpha1}\n";
    let f = write(d.path(), "flow.yaml", flow);
    let e = load_server_file(&f, Trust::RootOwned).unwrap_err();
    assert_eq!(e.field, "policy");
}

#[test]
fn server_problems() {
    let d = dir();
    write(d.path(), "p.yaml", POLICY);
    let cases = [
        (
            "command: /bin/cat\npolicy: p.yaml\nallow:\n  grops: [x]\n",
            "allow.grops",
            4,
        ),
        (
            "command: /bin/cat\npolicy: p.yaml\nallow:\n  users: [root, no-such-user-aip]\n",
            "allow.users[1]",
            4,
        ),
        (
            "command: /bin/cat\npolicy: p.yaml\nenv:\n  LD_PRELOAD: /x.so\n",
            "env.LD_PRELOAD",
            4,
        ),
        (
            "command: /bin/cat\npolicy: p.yaml\nrun_as: root\n",
            "run_as",
            3,
        ),
        (
            "command: /bin/cat\npolicy: p.yaml\ncwd: relative\n",
            "cwd",
            3,
        ),
        (
            "name: \"../x\"\ncommand: /bin/cat\npolicy: p.yaml\n",
            "name",
            1,
        ),
        ("command: /bin/cat\npolicy: 42\n", "policy", 2),
    ];
    for (text, field, line) in cases {
        let f = write(d.path(), "s.yaml", text);
        let e = load_server_file(&f, Trust::RootOwned).unwrap_err();
        assert_eq!(e.field, field, "{e}");
        assert_eq!(e.pos.map(|p| p.line), Some(line), "{e}");
    }
    let f = write(
        d.path(),
        "s.yaml",
        "command: /bin/cat\npolicy: missing.yaml\n",
    );
    let e = load_server_file(&f, Trust::RootOwned).unwrap_err();
    assert_eq!(e.field, "policy", "{e}");
}

#[test]
fn bad_files_are_skipped_and_reload_keeps_their_previous_definition() {
    let d = dir();
    write(d.path(), "p.yaml.policy", POLICY);
    let srv = d.path().join("servers.d");
    std::fs::create_dir(&srv).unwrap();
    std::fs::set_permissions(&srv, std::fs::Permissions::from_mode(0o755)).unwrap();
    let ok = "command: /bin/cat\npolicy: ../p.yaml.policy\nallow: {everyone: true}\n";
    write(&srv, "a.yaml", ok);
    write(&srv, "b.yaml", ok);
    write(
        &srv,
        "c.yaml",
        "command: /bin/cat\npolicy: ../p.yaml.policy\nbogus: 1\n",
    );
    write(&srv, "dup.yaml", &format!("name: a\n{ok}"));
    write(&srv, "README", "not yaml");
    let first = load_servers(&srv, Trust::RootOwned, None);
    assert_eq!(first.by_name.keys().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(first.problems.len(), 2, "{:?}", first.problems);
    assert!(first.problems.iter().any(|p| p.field == "bogus"));
    assert!(
        first
            .problems
            .iter()
            .any(|p| p.message.contains("already defined"))
    );

    // b breaks: the reload keeps its previous definition and says so.
    write(&srv, "b.yaml", "command: [\n");
    let second = load_servers(&srv, Trust::RootOwned, Some(&first));
    assert_eq!(second.by_name.keys().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(second.kept, ["b"]);
    assert!(Arc::ptr_eq(&first.by_name["b"], &second.by_name["b"]));
}

#[test]
fn files_others_can_write_are_not_trusted() {
    let d = dir();
    let p = write(d.path(), "p.yaml", POLICY);
    assert!(check_trusted(&p, Trust::RootOwned).is_ok());
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o646)).unwrap();
    let e = check_trusted(&p, Trust::RootOwned).unwrap_err();
    assert!(e.contains("writable by everyone"), "{e}");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o664)).unwrap();
    let e = check_trusted(&p, Trust::RootOwned).unwrap_err();
    assert!(e.contains("writable by group"), "{e}");
    assert!(check_trusted(&p, Trust::Any).is_ok());
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::chown(&p, Some(65534), None).unwrap();
        let e = check_trusted(&p, Trust::RootOwned).unwrap_err();
        assert!(e.contains("owned by uid 65534"), "{e}");
        // A directory others can write to (not sticky) above the file.
        std::os::unix::fs::chown(&p, Some(0), None).unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = check_trusted(&p, Trust::RootOwned).unwrap_err();
        assert!(e.contains(&d.path().display().to_string()), "{e}");
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();

        // A server file naming such a policy is refused with the reason.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        let f = write(d.path(), "s.yaml", "command: /bin/cat\npolicy: p.yaml\n");
        let e = load_server_file(&f, Trust::RootOwned).unwrap_err();
        assert_eq!(e.field, "policy");
        assert!(e.message.contains("writable by everyone"), "{e}");
    }
}
