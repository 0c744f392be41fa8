//! Skips are visible and checked: what `common::skip` records is what
//! `scripts/test.sh` lists, and under CI the script accepts a skip only
//! when its stated precondition really holds on this machine.

use std::path::Path;
use std::process::Command;

use crate::common::{out_text, record_skip, Env, Missing};

/// Run `scripts/test.sh --check-skips LOG`, with or without CI set.
fn check_skips(log: &Path, ci: bool) -> (bool, String) {
    let mut c = Command::new("bash");
    c.arg(crate::common::manifest().join("scripts/test.sh")).arg("--check-skips").arg(log).env_remove("CI");
    if ci {
        c.env("CI", "true");
    }
    let o = c.output().unwrap();
    (o.status.success(), out_text(&o))
}

/// One skip in a fresh log: accepted under CI?
fn accepted(env: &Env, missing: &Missing) -> bool {
    let log = env.root().join(format!("skips-{}", missing.check.replace('/', "_")));
    record_skip(&log, "some_test", missing);
    let (ok, text) = check_skips(&log, true);
    assert!(text.contains(&format!("SKIPPED some_test: {}", missing.why)), "the skip and its reason are listed: {text}");
    // Without CI the run never fails on a skip, it only lists it.
    assert!(check_skips(&log, false).0, "{text}");
    ok
}

#[test]
fn issue_10_skip_is_accepted_only_when_its_precondition_holds() {
    let env = Env::new();
    let root = crate::common::is_root();
    // A file that is absent here justifies a skip; one that exists does not.
    assert!(accepted(&env, &Missing::file("/nonexistent/geats-test-tool", "tool missing")));
    assert!(!accepted(&env, &Missing::file("/bin/sh", "sh missing")), "/bin/sh exists: the test could have run");
    // A command geats would find vs one it would not.
    assert!(!accepted(&env, &Missing::command("sh", "sh is not installed")));
    assert!(accepted(&env, &Missing::command("geats-no-such-tool", "not installed")));
    // Root: a "needs root" skip is a lie when we are root.
    assert_eq!(accepted(&env, &Missing::root("needs root")), !root);
    // A Ruby library: json ships with every ruby; a made-up one does not.
    if geats::sys::exec::have("ruby") {
        assert!(!accepted(&env, &Missing::ruby_lib("json", "json missing")));
        assert!(accepted(&env, &Missing::ruby_lib("geats_no_such_lib", "missing")));
    }
    // A reason no script can check is never accepted under CI.
    assert!(!accepted(&env, &Missing::unverifiable("not implemented yet")));
    // The one expected skip on this project's CI machine: LVM without
    // device-mapper is accepted exactly when /dev/mapper/control is absent.
    let dm = Missing::file("/dev/mapper/control", "device-mapper is not available");
    assert_eq!(accepted(&env, &dm), !Path::new("/dev/mapper/control").exists());

    // A log with one justified and one unjustified skip fails CI and says which.
    let log = env.root().join("mixed");
    record_skip(&log, "justified", &Missing::file("/nonexistent/x", "x missing"));
    record_skip(&log, "unjustified", &Missing::file("/bin/sh", "sh missing"));
    let (ok, text) = check_skips(&log, true);
    assert!(!ok, "{text}");
    assert!(text.contains("SKIPPED unjustified: sh missing") && text.contains("DOES NOT HOLD"), "{text}");
    // No skip at all: says so and passes.
    let empty = env.root().join("empty");
    std::fs::write(&empty, "").unwrap();
    let (ok, text) = check_skips(&empty, true);
    assert!(ok && text.contains("no test skipped"), "{text}");
}
