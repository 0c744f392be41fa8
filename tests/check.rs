//! Issue 11, point 2: `geats check [--json] [--repair]` against real LXC
//! and loop-mounted volumes, and a lost database refused
//! (`database_missing`) and rebuilt by `geats recover` so that `status`
//! lists the same VMs in the same states and each can be driven and
//! deprovisioned.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;

use serde_json::{json, Value};

use crate::common::lxc::{busybox_template, missing, run, Containers};
use crate::common::{self, leftovers, run_with_stdin, skip, Env};

const IMAGE: &str = "[storage_types.img]\ndriver = \"sparsefile\"\nadapters = [\"loop\", \"filesystem\"]\nfstype = \"ext4\"\n[vm_types.lxc]\ndriver = \"lxc\"\nvalid_storage_types = [\"img\", \"dir\"]\n";

struct Released(PathBuf);

impl Drop for Released {
    fn drop(&mut self) {
        common::release_under(&self.0);
    }
}

/// One difference: (vm, kind, repaired).
type Diff = (String, String, Option<bool>);

/// `geats check --json [--repair]`: (exit code, the array as triples, the
/// array).
fn check(env: &Env, repair: bool) -> (i32, Vec<Diff>, Value) {
    let mut args = vec!["check", "--json"];
    if repair {
        args.push("--repair");
    }
    let out = env.cli(&args);
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("check --json printed no JSON ({e}): {} {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)));
    let list = v
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["vm"].as_str().unwrap().to_string(), d["kind"].as_str().unwrap().to_string(), d["repaired"].as_bool()))
        .collect();
    (out.status.code().unwrap_or(-1), list, v)
}

fn s(vm: &str, kind: &str, repaired: Option<bool>) -> Diff {
    (vm.to_string(), kind.to_string(), repaired)
}

#[test]
fn issue_11_check_lists_and_repairs_differences() {
    if let Some(why) = missing() {
        return skip("issue_11_check_lists_and_repairs_differences", &why);
    }
    let p = std::process::id();
    let [a, b, c, d, stranger] = ["a", "b", "c", "d", "s"].map(|t| format!("gc{p}{t}"));
    let env = Env::with_config(IMAGE);
    busybox_template(&env.root().join("var/lib/geats/templates"), "busybox");
    let _rel = Released(env.root().to_path_buf());
    let lxcpath = env.root().join("var/lib/lxc");
    let lxc = Containers::new(&lxcpath, &[&a, &b, &c, &d, &stranger]);
    let img = json!({"template": "busybox", "storage": [{"name": "root", "type": "img", "size": "64M"}]});
    let dir = json!({"template": "busybox"});
    // A fresh host: nothing to say.
    assert_eq!(check(&env, false).0, 0);
    env.ok("define", json!({"vm_name": a, "definition": img}));
    env.ok("start", json!({"vm_name": a}));
    for vm in [&b, &c] {
        env.ok("define", json!({"vm_name": vm, "definition": dir}));
    }
    let (code, list, v) = check(&env, false);
    assert_eq!((code, list.len()), (0, 0), "{v}");
    // Stopped behind geats' back: not a difference (state is read live).
    let lp = lxcpath.to_string_lossy().into_owned();
    let (rc, _, err) = run(&["lxc-stop", "-P", &lp, "-n", &a, "-k"]);
    assert_eq!(rc, 0, "{err}");
    let (code, _, v) = check(&env, false);
    assert_eq!(code, 0, "{v}");
    // Four kinds of difference.
    std::fs::remove_file(lxcpath.join(&b).join("config")).unwrap();
    std::fs::remove_dir_all(env.root().join("var/lib/geats/rootfs").join(&c)).unwrap();
    std::fs::create_dir_all(lxcpath.join(&stranger)).unwrap();
    std::fs::write(lxcpath.join(&stranger).join("config"), "lxc.uts.name = stranger\n").unwrap();
    let mut k = env.cmd();
    k.args(["agent", "--stdio"]).env("GEATS_FAULT_KILL_AT", "define:2");
    let out = run_with_stdin(k, json!({"action": "define", "data": {"vm_name": d, "definition": img}}).to_string().as_bytes());
    assert_eq!(out.status.signal(), Some(9));
    let (code, list, v) = check(&env, false);
    assert_eq!(code, 1, "{v}");
    let mut want = vec![
        s(&b, "config_missing", None),
        s(&c, "volume_missing", None),
        s(&d, "interrupted", None),
        s(&stranger, "unknown_container", None),
    ];
    want.sort();
    assert_eq!(list, want, "{v:#}");
    // The human form names the same.
    let out = env.cli(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("config_missing") && text.contains(&stranger), "{text}");
    // --repair fixes what is safe: not a lost volume, not a stranger.
    let (code, list, v) = check(&env, true);
    assert_eq!(code, 1, "{v}");
    let mut want = vec![
        s(&b, "config_missing", Some(true)),
        s(&c, "volume_missing", Some(false)),
        s(&d, "interrupted", Some(true)),
        s(&stranger, "unknown_container", Some(false)),
    ];
    want.sort();
    assert_eq!(list, want, "{v:#}");
    assert!(lxcpath.join(&b).join("config").is_file(), "b's config was written again");
    assert_eq!(env.fail("info", json!({"vm_name": d}))["errorcode"], json!("not_found"), "the killed define was undone");
    // a stopped on its own: its root stays mounted until the next action
    // on it, which releases it.
    let stop = env.ok("stop", json!({"vm_name": a}));
    assert_eq!(stop["changed"], json!(false), "{stop}");
    assert_eq!(leftovers(env.root()), Vec::<String>::new(), "mounts or loops left (a's stopped root, d's image)");
    env.ok("start", json!({"vm_name": b}));
    assert_eq!(lxc.lxc_state(&b), "RUNNING");
    env.ok("stop", json!({"vm_name": b}));
    // What is left is what check still reports.
    std::fs::remove_dir_all(lxcpath.join(&stranger)).unwrap();
    env.ok("deprovision", json!({"vm_name": c}));
    let (code, list, v) = check(&env, false);
    assert_eq!((code, list.len()), (0, 0), "{v}");
    for vm in [&a, &b] {
        env.ok("deprovision", json!({"vm_name": vm}));
    }
    assert_eq!(leftovers(env.root()), Vec::<String>::new());
}

/// A check that cannot run exits 2 or more, not 1.
#[test]
fn issue_11_check_that_cannot_run_is_not_a_difference() {
    let env = Env::new();
    env.ok("define", json!({"vm_name": "x", "definition": common::dummy_definition("x")}));
    std::fs::write(env.root().join("var/lib/geats/geats.db"), "not a database").unwrap();
    let out = env.cli(&["check", "--json"]);
    assert!(out.status.code().is_some_and(|c| c >= 2), "{:?} {}", out.status, String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("geats recover"));
}

/// The database and the records directory are lost while containers run:
/// every request is `database_missing` (MCollective exit 1, stdio envelope
/// exit 0), no empty database is started; `geats recover` rebuilds it
/// from the records kept beside the containers, `status` says what it
/// said before, and every VM can be driven and deprovisioned.
#[test]
fn issue_11_lost_database_recovered_on_real_lxc() {
    if let Some(why) = missing() {
        return skip("issue_11_lost_database_recovered_on_real_lxc", &why);
    }
    let p = std::process::id();
    let [a, b] = ["a", "b"].map(|t| format!("gr{p}{t}"));
    let env = Env::with_config(IMAGE);
    busybox_template(&env.root().join("var/lib/geats/templates"), "busybox");
    let _rel = Released(env.root().to_path_buf());
    let lxc = Containers::new(&env.root().join("var/lib/lxc"), &[&a, &b]);
    env.ok("define", json!({"vm_name": a, "definition": {"template": "busybox", "storage": [{"name": "root", "type": "img", "size": "64M"}]}}));
    env.ok("define", json!({"vm_name": b, "definition": {"template": "busybox"}}));
    env.ok("start", json!({"vm_name": a}));
    // The copy beside each container is the records directory's file
    // under a second name (one fsync per record, not two).
    for vm in [&a, &b] {
        use std::os::unix::fs::MetadataExt;
        let kept = std::fs::metadata(env.root().join("var/lib/lxc").join(vm).join("geats-record.json")).unwrap();
        let record = std::fs::metadata(env.root().join("var/lib/geats/records").join(format!("{vm}.json"))).unwrap();
        assert_eq!((kept.ino(), kept.nlink(), kept.mode() & 0o777), (record.ino(), 2, 0o600), "{vm}");
    }
    let before = env.ok("status", json!({}))["vms"].clone();
    let db = env.root().join("var/lib/geats/geats.db");
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
    }
    for req in [json!({"action": "status", "data": {}}), json!({"action": "start", "data": {"vm_name": b}})] {
        let (code, reply, _) = env.mco(&req.to_string());
        assert_eq!(code, 1, "{reply}");
        let e = env.fail(req["action"].as_str().unwrap(), req["data"].clone());
        assert_eq!(e["errorcode"], json!("database_missing"));
        let m = e["message"].as_str().unwrap();
        assert!(m.contains(&*db.to_string_lossy()) && m.contains("geats recover"), "{m}");
    }
    assert!(!db.exists(), "an empty database was started over existing VMs");
    // The records directory is lost too: the containers alone are enough
    // to refuse, and what geats keeps beside each is enough to recover.
    std::fs::remove_dir_all(env.root().join("var/lib/geats/records")).unwrap();
    assert_eq!(env.fail("status", json!({}))["errorcode"], json!("database_missing"));
    let out = env.cli(&["recover"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&a) && text.contains(&b), "{text}");
    assert_eq!(env.ok("status", json!({}))["vms"], before, "status after recover");
    let (code, _, v) = check(&env, false);
    assert_eq!(code, 0, "{v}");
    env.ok("stop", json!({"vm_name": a}));
    env.ok("start", json!({"vm_name": b}));
    assert_eq!(lxc.lxc_state(&b), "RUNNING");
    for vm in [&a, &b] {
        env.ok("deprovision", json!({"vm_name": vm}));
    }
    assert_eq!(leftovers(env.root()), Vec::<String>::new());
    assert!(!env.root().join("var/lib/geats/images").join(&a).join("root.img").exists(), "a's volume was known again and destroyed");
}

/// A fresh install (no database, nothing under the roots) just creates one.
#[test]
fn issue_11_fresh_install_creates_the_database() {
    let env = Env::new();
    env.ok("status", json!({}));
    assert!(!env.root().join("var/lib/geats/geats.db").exists(), "a read created the database");
    env.ok("define", json!({"vm_name": "x", "definition": common::dummy_definition("x")}));
    assert!(env.root().join("var/lib/geats/geats.db").is_file());
}
