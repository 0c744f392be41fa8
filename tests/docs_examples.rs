//! Every example of docs/vagoth.md and docs/operations.md runs as written
//! (the `mco rpc` ones run in `mcollective::mcollective_live_loopback`).

use std::path::Path;

use serde_json::json;

use crate::common::docs::{doc_bin, doc_blocks, line_matches, lines_match, run_doc_console};
use crate::common::procs::shell_safe;
use crate::common::sshd::{sshd_missing, Sshd};
use crate::common::{bin, dummy_definition, manifest, skip, Env, Missing};

#[test]
fn doc_matcher_is_strict() {
    assert!(line_matches(r#"{"a":...,"b":1}"#, r#"{"a":{"x":2},"b":1}"#));
    assert!(!line_matches(r#"{"a":...,"b":1}"#, r#"{"a":{"x":2},"b":2}"#));
    assert!(lines_match(&["a", "...", "c"], &["a", "b", "b", "c"]));
    assert!(!lines_match(&["a", "c"], &["a", "b", "c"]));
    assert!(!lines_match(&["a"], &[]));
}

/// Every `console` example of docs/vagoth.md but the `mco rpc` ones (those
/// run in `mcollective_live_loopback`), with an sshd on loopback as `node1`.
#[test]
fn docs_vagoth_examples() {
    if let Some(why) = sshd_missing() {
        return skip("docs_vagoth_examples", &why);
    }
    let env = Env::new();
    let bindir = doc_bin(env.root());
    let path = format!("{}:/usr/bin:/bin", bindir.display());
    let sshd = Sshd::start_with(env.root(), &format!("SetEnv PATH={path} GEATS_ROOT={}\n", shell_safe(env.root())));
    // `ssh root@node1` reaches the test's sshd: an ssh first on PATH that
    // adds the test's client config.
    let ssh_cfg = env.root().join("ssh_config");
    std::fs::write(
        &ssh_cfg,
        format!(
            "Host node1\n  HostName 127.0.0.1\n  Port {}\n  IdentityFile {}\n  IdentitiesOnly yes\n  BatchMode yes\n  StrictHostKeyChecking no\n  UserKnownHostsFile {}\n  LogLevel ERROR\n",
            sshd.port,
            sshd.key.display(),
            sshd.known_hosts.display()
        ),
    )
    .unwrap();
    let wrapper = bindir.join("ssh");
    std::fs::write(&wrapper, format!("#!/bin/sh\nexec /usr/bin/ssh -F {} \"$@\"\n", shell_safe(&ssh_cfg))).unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let vars = [("PATH", path), ("GEATS_ROOT", env.root().display().to_string()), ("HOME", env.root().display().to_string())];
    let n = run_doc_console("docs/vagoth.md", &|b| !b.contains("mco rpc"), env.root(), &vars);
    assert!(n >= 10, "only {n} commands ran");
}

/// Every `console` example of docs/operations.md, in a temporary root with
/// one VM, and every `toml` example loaded as a config.
#[test]
fn docs_operations_examples() {
    if !Path::new("/usr/bin/sqlite3").is_file() {
        return skip("docs_operations_examples", &Missing::file("/usr/bin/sqlite3", "sqlite3 is not installed (apt-get install sqlite3)"));
    }
    let env = Env::new();
    env.ok("define", json!({"vm_name": "web1", "definition": dummy_definition("web1")}));
    let bindir = doc_bin(env.root());
    let work = env.root().join("work");
    std::fs::create_dir_all(work.join("target/release")).unwrap();
    std::os::unix::fs::symlink(bin(), work.join("target/release/geats")).unwrap();
    let p = |s: &str| env.root().join(s).display().to_string();
    let vars = [
        ("PATH", format!("{}:/usr/bin:/bin", bindir.display())),
        ("GEATS_ROOT", env.root().display().to_string()),
        ("HOME", env.root().display().to_string()),
        ("DESTDIR", p("dest")),
        ("MCO_LIBDIR", p("mcolib")),
        ("CHORIA_LIBDIR", p("chorialib")),
        ("BACKUP", p("backup")),
    ];
    std::fs::create_dir_all(p("backup")).unwrap();
    let n = run_doc_console("docs/operations.md", &|_| true, &work, &vars);
    assert!(n >= 15, "only {n} commands ran");
    // What the install steps installed is what agent-ddl/ holds.
    for f in ["geats.ddl", "geats.rb", "geats/systemu_fix.rb"] {
        assert_eq!(
            std::fs::read(env.root().join("mcolib/mcollective/agent").join(f)).unwrap(),
            std::fs::read(manifest().join("agent-ddl").join(f)).unwrap(),
            "{f}"
        );
    }
    assert!(env.root().join("chorialib/mcollective/agent/geats/geats").is_file());
    assert_eq!(env.ok("info", json!({"vm_name": "web1"}))["name"], "web1", "recover brought web1 back");

    let mut tomls = 0;
    for (info, body) in doc_blocks("docs/operations.md") {
        if info != "toml" {
            continue;
        }
        let c = geats::config::Config::from_toml(&body, Some("docs/operations.md".into()), Some(env.root().to_path_buf()))
            .unwrap_or_else(|e| panic!("docs/operations.md example does not load: {e}\n{body}"));
        for t in c.vm_types.keys() {
            if let Err(e) = geats::vm::build(&c, t) {
                panic!("docs/operations.md: VM type {t} does not build: {e}\n{body}");
            }
        }
        tomls += 1;
    }
    assert!(tomls >= 2);
}

/// Every `toml` example of docs/vagoth.md loads as a geats config whose
/// VM types build (the `shutdown_timeout` advice for Vagoth's timeouts).
#[test]
fn docs_vagoth_toml_examples() {
    let env = Env::new();
    let mut n = 0;
    for (info, body) in doc_blocks("docs/vagoth.md") {
        if info != "toml" {
            continue;
        }
        let c = geats::config::Config::from_toml(&body, Some("docs/vagoth.md".into()), Some(env.root().to_path_buf()))
            .unwrap_or_else(|e| panic!("docs/vagoth.md example does not load: {e}\n{body}"));
        for t in c.vm_types.keys() {
            if let Err(e) = geats::vm::build(&c, t) {
                panic!("docs/vagoth.md: VM type {t} does not build: {e}\n{body}");
            }
        }
        n += 1;
    }
    assert!(n >= 1);
}
