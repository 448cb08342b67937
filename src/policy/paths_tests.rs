//! Unit tests of protected-path matching: every trick listed in the issue, and the things that
//! must not be blocked.

use super::*;
use serde_json::json;

fn pp(entries: &[&str]) -> ProtectedPaths {
    ProtectedPaths::new(
        &entries.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        &[PathBuf::from("/etc/aip/policy.yaml")],
        Some(Path::new("/home/alice")),
        Path::new("/srv/app"),
        false,
    )
}

fn blocked(p: &ProtectedPaths, args: Value) -> Option<String> {
    p.scan(&args).map(|h| h.entry)
}

#[test]
fn tilde_entry_blocks_tilde_and_absolute_forms() {
    let p = pp(&["~/.ssh"]);
    for v in [
        "~/.ssh/id_rsa",
        "~/.ssh",
        "/home/alice/.ssh/id_rsa",
        "$HOME/.ssh/id_rsa",
        "${HOME}/.ssh/config",
        "/home/alice//.ssh/./id_rsa",
        "/home/alice/x/../.ssh/id_rsa",
        "file:///home/alice/.ssh/id_rsa",
        "FILE://localhost/home/alice/.ssh/id_rsa",
        "file:/home/alice/.ssh/id_rsa",
        "/home/alice/%2essh/id_rsa",
        "/home/alice/%252essh/id_rsa",
        "%2Fhome%2Falice%2F.ssh%2Fid_rsa",
        "../../home/alice/.ssh/id_rsa",
        "~alice/.ssh/known_hosts",
    ] {
        if v.starts_with("~alice") && user_home("alice").is_none() {
            continue;
        }
        assert_eq!(
            blocked(&p, json!({ "path": v })).as_deref(),
            Some("~/.ssh"),
            "{v}"
        );
    }
}

#[test]
fn paths_inside_commands_are_found() {
    let p = pp(&["~/.ssh", "/etc/shadow"]);
    for v in [
        "cat ~/.ssh/id_rsa",
        "cat ~/.ssh/id_rsa | base64",
        "scp x:/y ~/.ssh/id_rsa",
        "ssh -i=~/.ssh/key host",
        "tar czf /tmp/x.tgz /etc/shadow",
        "echo $(cat /etc/shadow)",
        "K=~/.ssh; cat $K/id_rsa",
        "cat ~/\".ssh\"/id_rsa",
        "cat ~/.s's'h/id_rsa",
        "cat ~/\\.ssh/id_rsa",
        "cat /etc/shadow\u{0}.txt",
        "less</etc/shadow",
        "cat ~/.s*h/id_rsa",
        "cat /etc/sha?ow",
        "cat /e[st]c/shadow",
    ] {
        assert!(blocked(&p, json!({ "command": v })).is_some(), "{v}");
    }
}

#[test]
fn relative_paths_resolve_against_the_server_cwd() {
    let p = pp(&["/srv/app/.env", "secrets"]);
    for v in [
        ".env",
        "./.env",
        "../app/.env",
        "secrets/db.json",
        "cat .env",
        "cat secrets/x",
    ] {
        assert!(blocked(&p, json!({ "f": v })).is_some(), "{v}");
    }
    for v in [
        "other/.env",
        "config.environment",
        "the secrets are safe",
        "README.md",
    ] {
        assert_eq!(blocked(&p, json!({ "f": v })), None, "{v}");
    }
}

#[test]
fn keys_arrays_and_nesting_are_scanned_with_their_location() {
    let p = pp(&["~/.aws"]);
    let hit = p
        .scan(&json!({"opts": {"files": ["/tmp/a", "~/.aws/credentials"]}}))
        .unwrap();
    assert_eq!(hit.arg, "opts.files[1]");
    let hit = p
        .scan(&json!({"map": {"/home/alice/.aws/config": 1}}))
        .unwrap();
    assert_eq!(hit.arg, "map./home/alice/.aws/config");
}

#[test]
fn the_policy_file_is_always_protected() {
    let p = pp(&[]);
    assert_eq!(
        blocked(&p, json!({"path": "/etc/aip/policy.yaml"})).as_deref(),
        Some("/etc/aip/policy.yaml")
    );
    assert!(
        blocked(
            &p,
            json!({"cmd": "sed -i s/block/allow/ /etc/aip//policy.yaml"})
        )
        .is_some()
    );
}

#[test]
fn similar_names_are_not_blocked() {
    let p = pp(&["~/.ssh", "/etc/shadow"]);
    for v in [
        "/home/alice/.sshx/key",
        "/home/alice/my.ssh",
        "/etc/shadow-backup-notes",
        "/x/etc/shadow",
        "https://example.com/etc/shadow",
        "ssh is a protocol",
        "/home/alice",
        "",
    ] {
        assert_eq!(blocked(&p, json!({ "v": v })), None, "{v}");
    }
    assert_eq!(blocked(&p, json!({"n": 1, "b": true, "z": null})), None);
}

#[test]
fn dollar_home_is_not_confused_with_longer_variables() {
    let p = pp(&["/home/alice/.ssh"]);
    assert_eq!(blocked(&p, json!({"v": "$HOMEDIR/.ssh"})), None);
    assert!(blocked(&p, json!({"v": "x$HOME/.ssh"})).is_none());
    assert!(blocked(&p, json!({"v": "x=$HOME/.ssh"})).is_some());
}

#[test]
fn symlinks_are_resolved_through_the_longest_existing_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::create_dir(&secret).unwrap();
    std::fs::write(secret.join("key"), "k").unwrap();
    let link = dir.path().join("innocent");
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    let p = ProtectedPaths::new(
        &[secret.to_string_lossy().into_owned()],
        &[],
        None,
        dir.path(),
        true,
    );
    for v in [
        link.join("key"),
        link.join("not-yet-created"),
        link.join("a/b/c"),
        PathBuf::from("innocent/key"),
        PathBuf::from("./innocent"),
    ] {
        assert!(
            p.scan(&json!({"p": v.to_string_lossy()})).is_some(),
            "{}",
            v.display()
        );
    }
    assert!(
        p.scan(&json!({"p": dir.path().join("other").to_string_lossy()}))
            .is_none()
    );

    // A protected entry that is itself a symlink protects its target too.
    let p = ProtectedPaths::new(
        &[link.to_string_lossy().into_owned()],
        &[],
        None,
        dir.path(),
        true,
    );
    assert!(
        p.scan(&json!({"p": secret.join("key").to_string_lossy()}))
            .is_some()
    );
}

#[test]
fn too_many_paths_fail_closed() {
    let dir = tempfile::tempdir().unwrap();
    let p = ProtectedPaths::new(&["/nonexistent/x".into()], &[], None, dir.path(), true);
    let many: Vec<String> = (0..MAX_RESOLUTIONS + 5)
        .map(|i| format!("/tmp/f{i}"))
        .collect();
    let hit = p.scan(&json!({"files": many})).unwrap();
    assert_eq!(hit.entry, TOO_MANY_PATHS);
}

#[test]
fn cleaning_is_lexical_and_rooted() {
    assert_eq!(clean("/a/./b/../c//d/", "/"), "/a/c/d");
    assert_eq!(clean("../../..", "/srv/app"), "/");
    assert_eq!(clean("x", "/srv/app"), "/srv/app/x");
}

#[test]
fn globs_match_component_wise() {
    assert!(glob_match("*", ".ssh"));
    assert!(glob_match(".s?h", ".ssh"));
    assert!(glob_match("[.]ssh", ".ssh"));
    assert!(glob_match("[!x]ssh", ".ssh"));
    assert!(glob_match("id_*", "id_rsa"));
    assert!(!glob_match("id_*", "known_hosts"));
    assert!(glob_match("[a-c]x", "bx"));
    assert!(!glob_match("[a-c]x", "dx"));
    assert!(glob_match("a[b", "a[b"));
}

#[test]
fn urls_other_than_file_urls_are_not_local_paths() {
    let p = pp(&["/etc/shadow", "~/.ssh"]);
    for v in [
        "https://example.com/etc/shadow",
        "http://localhost/../../etc/shadow",
        "curl https://x.test/home/alice/.ssh/id_rsa",
    ] {
        assert_eq!(blocked(&p, json!({ "url": v })), None, "{v}");
    }
    assert!(blocked(&p, json!({"url": "file:///etc/shadow"})).is_some());
    assert!(blocked(&p, json!({"url": "scp h:/etc/shadow ."})).is_some());
}

#[test]
fn keys_that_are_plain_words_are_not_paths() {
    let p = pp(&["/srv/app/secrets"]);
    assert_eq!(blocked(&p, json!({"secrets": "x"})), None);
    assert!(blocked(&p, json!({"f": "secrets"})).is_some());
    assert!(blocked(&p, json!({"./secrets": "x"})).is_some());
}

/// A temporary directory holding a protected `secret/` (with `sub/` and `key`), and the
/// resolving matcher for it, with the cwd at the directory.
fn secret_dir() -> (tempfile::TempDir, PathBuf, ProtectedPaths) {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::create_dir_all(secret.join("sub")).unwrap();
    std::fs::write(secret.join("key"), "k").unwrap();
    let entry = secret.to_string_lossy().into_owned();
    let p = ProtectedPaths::new(&[entry], &[], None, dir.path(), true);
    (dir, secret, p)
}

#[test]
fn dotdot_after_a_symlink_is_resolved_as_the_kernel_does() {
    let (dir, secret, p) = secret_dir();
    std::os::unix::fs::symlink(secret.join("sub"), dir.path().join("link")).unwrap();
    // Lexically `link/../key` is `<dir>/key`; the kernel opens `<dir>/secret/key`.
    assert!(p.scan(&json!({"p": "link/../key"})).is_some());
    assert!(p.scan(&json!({"p": "link/../missing/../key"})).is_some());
}

#[test]
fn dangling_symlinks_into_a_protected_directory_are_caught() {
    let (dir, secret, p) = secret_dir();
    std::os::unix::fs::symlink(secret.join("not-yet"), dir.path().join("innocent.txt")).unwrap();
    assert!(p.scan(&json!({"path": "innocent.txt"})).is_some());
    assert!(p.scan(&json!({"path": "./innocent.txt"})).is_some());
}

#[test]
fn symlink_loops_do_not_hang() {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(dir.path().join("b"), dir.path().join("a")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("a"), dir.path().join("b")).unwrap();
    let p = ProtectedPaths::new(&["/nonexistent".into()], &[], None, dir.path(), true);
    assert!(p.scan(&json!({"path": "./a/x"})).is_none());
}

#[test]
fn resolution_keeps_missing_tails_and_clean_paths() {
    let dir = tempfile::tempdir().unwrap();
    let d = std::fs::canonicalize(dir.path()).unwrap();
    let d = d.to_string_lossy();
    assert_eq!(
        resolve_prefix(&format!("{d}/x/../y/new")).as_deref(),
        Some(format!("{d}/y/new").as_str())
    );
    assert_eq!(
        resolve_prefix(&format!("{d}//.")).as_deref(),
        Some(d.as_ref())
    );
}

#[test]
fn ascii_delimiter_table_matches_is_delimiter() {
    for b in 0u8..128 {
        if b == b':' {
            continue;
        }
        let s = (b as char).to_string();
        assert_eq!(
            delimiter_at(&s, 0),
            is_delimiter(b as char),
            "byte {b:#04x}"
        );
    }
    assert!(delimiter_at("a:b", 1));
    assert!(!delimiter_at("file://x", 4));
    assert!(delimiter_at("a\u{2003}b", 1), "em space");
}

#[test]
fn clean_borrows_only_paths_that_are_already_clean() {
    for p in ["/", "/a", "/a/b.c", "/a/.b", "/a/..b"] {
        assert!(matches!(clean_cow(p, "/x"), Cow::Borrowed(_)), "{p}");
        assert_eq!(clean(p, "/x"), p);
    }
    for (p, want) in [
        ("/a/", "/a"),
        ("/a//b", "/a/b"),
        ("/a/./b", "/a/b"),
        ("/a/../b", "/b"),
        ("/a/..", "/"),
        ("/a/.", "/a"),
        ("rel", "/x/rel"),
    ] {
        assert_eq!(clean_cow(p, "/x"), want, "{p}");
    }
}

#[test]
fn word_splitting_characters_do_not_hide_a_path_from_its_dotdot() {
    // A server takes the argument whole and collapses `..` lexically; no directory named
    // `a b` needs to exist.
    let p = pp(&["/srv/secret", "~/.ssh"]);
    for v in [
        "/srv/a b/../secret/key",
        "/srv/a=b/../secret/key",
        "/srv/a:b/../secret/key",
        "/srv/a,b/../secret/key",
        "/srv/app/(x)/../../secret/key",
        "/srv/a{b}/../secret",
        "~/x y/../.ssh/id_rsa",
        "/etc/aip/p q/../policy.yaml",
    ] {
        assert!(blocked(&p, json!({ "path": v })).is_some(), "{v}");
    }
    // The same in commands, as a shell splits words.
    for v in [
        "cat \"/srv/a b/../secret/key\"",
        "cat '/srv/a b/../secret/key' /../..",
        "cat /srv/a\\ b/../secret/key",
        "cat /srv/a=b/../secret/key",
    ] {
        assert!(blocked(&p, json!({ "command": v })).is_some(), "{v}");
    }
    assert_eq!(blocked(&p, json!({"path": "/srv/a b/../public/key"})), None);
    assert_eq!(blocked(&p, json!({"text": "see /srv/a and b/c"})), None);
}

#[test]
fn only_a_leading_scheme_makes_a_url() {
    let p = pp(&["/srv/secret", "~/.ssh"]);
    for v in [
        "/srv/x://../secret/key",
        "~/a://../.ssh/id_rsa",
        "/srv/x:///../secret",
    ] {
        assert!(blocked(&p, json!({ "path": v })).is_some(), "{v}");
    }
    assert!(starts_with_url_scheme("git+ssh://h/x"));
    assert!(!starts_with_url_scheme("/srv/x://y"));
    assert!(!starts_with_url_scheme("://x"));
}

#[test]
fn symlinks_on_the_cleaned_form_are_followed_too() {
    let (dir, secret, p) = secret_dir();
    std::os::unix::fs::symlink(&secret, dir.path().join("lnk")).unwrap();
    std::fs::write(dir.path().join("file"), "f").unwrap();
    // The kernel's walk of the raw form stops at `missing` (or at a file used as a directory)
    // and never meets `lnk`; a server that cleans first opens `<dir>/lnk/key`.
    for v in [
        "missing/../lnk/key",
        "file/../lnk/key",
        "missing/../lnk/new-file",
    ] {
        assert!(p.scan(&json!({ "path": v })).is_some(), "{v}");
    }
    assert!(p.scan(&json!({"path": "missing/../other"})).is_none());
}

#[test]
fn composed_and_decomposed_spellings_are_the_same_name() {
    let composed = pp(&["/srv/caf\u{e9}"]);
    let decomposed = pp(&["/srv/cafe\u{301}"]);
    for (p, v) in [
        (&composed, "/srv/cafe\u{301}/key"),
        (&composed, "cat /srv/cafe\u{301}/key"),
        (&decomposed, "/srv/caf\u{e9}/key"),
    ] {
        assert!(blocked(p, json!({ "path": v })).is_some(), "{v}");
    }
    assert_eq!(blocked(&composed, json!({"path": "/srv/cafes/key"})), None);
}
