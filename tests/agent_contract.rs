//! Black-box contract tests of `geats agent` on the dummy VM type: every
//! fixture request in both transports (snapshotted with insta), and the
//! lifecycle rules of DESIGN.md: idempotency, `changed`, dry runs, request
//! id replay, the admin lock, rollback, the lost-database guard.

use std::path::Path;

use serde_json::{json, Value};

use crate::common::{check_envelope, dummy_definition, run_with_stdin, snapshot_tree, Env};

fn web1() -> Value {
    json!({"vm_type": "dummy", "ram": 256, "cpus": 1, "network": [{"name": "eth0", "ipaddr": "10.0.0.5/24"}],
           "storage": [{"name": "root", "type": "dir"}], "metadata": {"ROLE": "web"}})
}

/// A root with `web1` (stopped, one dir volume) and `locked1` (locked).
fn setup() -> Env {
    let env = Env::new();
    env.ok("define", json!({"vm_name": "web1", "definition": web1()}));
    env.ok("define", json!({"vm_name": "locked1", "definition": dummy_definition("locked1")}));
    env.ok("lock", json!({"vm_name": "locked1"}));
    env
}

fn action_of(bytes: &[u8]) -> String {
    serde_json::from_slice::<Value>(bytes).ok().and_then(|v| v["action"].as_str().map(str::to_string)).unwrap_or_default()
}

fn class_of(code: &str) -> i32 {
    match code {
        "missing_data" => 3,
        "invalid_data" => 4,
        "unknown_action" => 2,
        "config_invalid" | "internal" => 5,
        _ => 1,
    }
}

#[test]
fn every_fixture_in_both_transports() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/requests");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.path()).collect();
    files.sort();
    assert!(files.len() >= 30, "only {} fixtures", files.len());
    let mut classes = std::collections::BTreeSet::new();
    for f in files {
        let name = f.file_stem().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(&f).unwrap();
        let action = action_of(&bytes);

        let env = setup();
        let mut c = env.cmd();
        c.args(["agent", "--stdio"]);
        let out = run_with_stdin(c, &bytes);
        let stdio_code = out.status.code().unwrap_or(-1);
        let envelope: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{name}: stdout is not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
        assert_eq!(stdio_code, 0, "{name}: stdio must exit 0 when it wrote an envelope");
        check_envelope(&action, &envelope);
        let root_s = env.root().display().to_string();

        let env2 = setup();
        let req = env2.root().join("request.json");
        let rep = env2.root().join("reply.json");
        std::fs::write(&req, &bytes).unwrap();
        std::fs::write(&rep, "").unwrap();
        let mut c = env2.cmd();
        c.arg("agent").arg(&req).arg(&rep);
        let out = run_with_stdin(c, b"");
        let mco_code = out.status.code().unwrap_or(-1);
        let reply: Value = serde_json::from_str(&std::fs::read_to_string(&rep).unwrap())
            .unwrap_or_else(|e| panic!("{name}: reply file is not JSON: {e}"));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();

        // The two transports must say the same thing.
        if envelope["success"] == json!(true) {
            assert_eq!(mco_code, 0, "{name}: stderr {stderr}");
            classes.insert(0);
        } else {
            let code = envelope["errorcode"].as_str().unwrap();
            assert_eq!(mco_code, class_of(code), "{name}: exit code of {code}");
            assert_eq!(reply["errorcode"], envelope["errorcode"], "{name}");
            assert!(stderr.contains(reply["message"].as_str().unwrap()), "{name}: stderr lacks the message: {stderr}");
            classes.insert(mco_code);
        }
        let root2 = env2.root().display().to_string();
        let snap = json!({
            "stdio": envelope,
            "mcollective": {"exit": mco_code, "reply": reply, "stderr": stderr.trim_end()},
        });
        let (f1, f2) = (regex_escape(&root_s), regex_escape(&root2));
        insta::with_settings!({filters => vec![(f1.as_str(), "[ROOT]"), (f2.as_str(), "[ROOT]")]}, {
            insta::assert_json_snapshot!(name, snap, {
                ".**.created" => "[time]",
                ".**.updated" => "[time]",
                ".**.time" => "[time]",
                ".**.used_bytes" => "[bytes]",
                ".stdio.data.status" => "[host figures]",
                ".mcollective.reply.status" => "[host figures]",
            });
        });
    }
    // Every class: ok, aborted, unknown action, missing data, invalid data.
    assert_eq!(classes.into_iter().collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
}

fn regex_escape(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '/' || c == '_' || c == '-' { c.to_string() } else { format!("\\{c}") }).collect()
}

#[test]
fn unopenable_request_file_is_class_5_and_config_errors_too() {
    let env = Env::new();
    let rep = env.root().join("reply.json");
    let mut c = env.cmd();
    c.arg("agent").arg(env.root().join("does-not-exist.json")).arg(&rep);
    let out = run_with_stdin(c, b"");
    assert_eq!(out.status.code(), Some(5));
    let reply: Value = serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap();
    assert_eq!(reply["errorcode"], "internal");

    let bad = Env::with_config("lock_timeout = \"soon\"\n");
    let (code, reply, err) = bad.mco(r#"{"action":"status","data":{}}"#);
    assert_eq!(code, 5, "{err}");
    let reply: Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply["errorcode"], "config_invalid");
    let msg = reply["message"].as_str().unwrap();
    assert!(msg.contains("geats.toml") && msg.contains("line 1"), "{msg}");
}

#[test]
fn mcollective_environment_variables_name_the_files() {
    let env = Env::new();
    let req = env.root().join("req.json");
    let rep = env.root().join("rep.json");
    std::fs::write(&req, r#"{"action":"status","data":{"process_results":true}}"#).unwrap();
    std::fs::write(&rep, "").unwrap();
    let mut c = env.cmd();
    c.arg("agent").env("MCOLLECTIVE_REQUEST_FILE", &req).env("MCOLLECTIVE_REPLY_FILE", &rep);
    let out = run_with_stdin(c, b"");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let reply: Value = serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap();
    crate::common::schema::check_reply("status", &reply);
    assert!(out.stdout.is_empty(), "nothing on stdout in MCollective mode");
}

#[test]
fn geats_jsonagent_name_is_the_stdio_agent() {
    let env = Env::new();
    let link = env.root().join("geats_jsonagent");
    std::os::unix::fs::symlink(crate::common::bin(), &link).unwrap();
    let mut c = std::process::Command::new(&link);
    c.env_clear().env("GEATS_ROOT", env.root()).env("GEATS_CONFIG", &env.config);
    let out = run_with_stdin(c, br#"{"action": "status", "data": {}}"#);
    assert_eq!(out.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["success"], json!(true));
    check_envelope("status", &v);
}

#[test]
fn lifecycle_idempotency_and_changed() {
    let env = Env::new();
    let d = env.ok("define", json!({"vm_name": "web1", "definition": web1()}));
    assert_eq!((d["changed"].clone(), d["state"].clone()), (json!(true), json!(["stopped", "stopped"])));
    assert_eq!(d["definition"]["name"], "web1", "the stored definition names the VM");
    assert_eq!(env.ok("define", json!({"vm_name": "web1", "definition": web1()}))["changed"], json!(false));
    let mut bigger = web1();
    bigger["ram"] = json!(1024);
    assert_eq!(env.ok("define", json!({"vm_name": "web1", "definition": bigger}))["changed"], json!(true));
    assert_eq!(env.ok("info", json!({"vm_name": "web1"}))["definition"]["ram"], json!(1024));

    assert_eq!(env.ok("stop", json!({"vm_name": "web1"}))["changed"], json!(false));
    let s = env.ok("start", json!({"vm_name": "web1"}));
    assert_eq!((s["changed"].clone(), s["state"].clone()), (json!(true), json!(["running", "running"])));
    assert_eq!(env.ok("start", json!({"vm_name": "web1"}))["changed"], json!(false));
    assert_eq!(env.ok("reboot", json!({"vm_name": "web1"}))["changed"], json!(true));
    assert_eq!(env.ok("shutdown", json!({"vm_name": "web1"}))["state"], json!(["stopped", "stopped"]));
    assert_eq!(env.fail("reboot", json!({"vm_name": "web1"}))["errorcode"], "invalid_state");
    assert_eq!(env.fail("provision", json!({"vm_name": "web1", "definition": {"vm_type": "lxc"}}))["errorcode"], "invalid_data");

    // status: vms keyed by name, definition.name, a two-element state.
    env.ok("start", json!({"vm_name": "web1"}));
    let st = env.ok("status", json!({}));
    assert_eq!(st["vms"]["web1"]["definition"]["name"], "web1");
    assert_eq!(st["vms"]["web1"]["state"], json!(["running", "running"]));
    assert_eq!(st["status"]["ram_promised"], json!(1024));
    assert!(st["status"]["mem_total"].as_u64().unwrap() > 0, "host figures come from /proc");
    assert!(st["status"]["storage_dir_free_kb"].as_u64().is_some(), "{st}");

    // Undefine keeps the data, define finds it again, deprovision destroys it.
    let vol = env.root().join("var/lib/geats/volumes/web1/root");
    std::fs::write(vol.join("precious"), "data").unwrap();
    assert_eq!(env.ok("undefine", json!({"vm_name": "web1"}))["changed"], json!(true));
    assert_eq!(env.fail("info", json!({"vm_name": "web1"}))["errorcode"], "not_found");
    assert!(!env.ok("status", json!({}))["vms"].as_object().unwrap().contains_key("web1"));
    assert!(!env.root().join("var/lib/geats/dummy/web1.state").exists(), "gone from the hypervisor");
    assert_eq!(env.ok("undefine", json!({"vm_name": "web1"}))["changed"], json!(false));
    assert_eq!(std::fs::read_to_string(vol.join("precious")).unwrap(), "data");
    env.ok("define", json!({"vm_name": "web1", "definition": web1()}));
    assert_eq!(std::fs::read_to_string(vol.join("precious")).unwrap(), "data", "define found the kept data");
    env.ok("undefine", json!({"vm_name": "web1"}));
    assert_eq!(env.ok("deprovision", json!({"vm_name": "web1"}))["changed"], json!(true), "kept volumes are destroyed");
    assert!(!vol.exists());
    assert_eq!(env.ok("deprovision", json!({"vm_name": "web1"}))["changed"], json!(false));
    assert!(!env.root().join("var/lib/geats/records/web1.json").exists());
}

#[test]
fn transient_vm_loses_its_data_on_undefine() {
    let env = Env::new();
    let mut d = web1();
    d["transient"] = json!(true);
    env.ok("define", json!({"vm_name": "tmp1", "definition": d}));
    let vol = env.root().join("var/lib/geats/volumes/tmp1/root");
    assert!(vol.is_dir());
    env.ok("undefine", json!({"vm_name": "tmp1"}));
    assert!(!vol.exists());
    assert_eq!(env.ok("deprovision", json!({"vm_name": "tmp1"}))["changed"], json!(false), "nothing left to deprovision");
}

#[test]
fn admin_lock_blocks_removal_until_unlock() {
    let env = Env::new();
    env.ok("define", json!({"vm_name": "web1", "definition": web1()}));
    assert_eq!(env.ok("lock", json!({"vm_name": "web1"})), json!({"locked": true, "changed": true}));
    assert_eq!(env.ok("lock", json!({"vm_name": "web1"}))["changed"], json!(false));
    for a in ["undefine", "deprovision"] {
        let e = env.fail(a, json!({"vm_name": "web1"}));
        assert_eq!((e["errorcode"].clone(), e["retryable"].clone()), (json!("vm_locked"), json!(false)));
    }
    assert_eq!(env.ok("info", json!({"vm_name": "web1"}))["locked"], json!(true));
    env.ok("start", json!({"vm_name": "web1"}));
    env.ok("unlock", json!({"vm_name": "web1"}));
    assert_eq!(env.ok("deprovision", json!({"vm_name": "web1"}))["changed"], json!(true));
    assert_eq!(env.fail("lock", json!({"vm_name": "web1"}))["errorcode"], "not_found");
    assert_eq!(env.fail("migrate", json!({"vm_name": "web1", "vm_destination": "h2"}))["errorcode"], "not_found");
}

#[test]
fn dry_run_changes_nothing() {
    let env = Env::new();
    env.ok("define", json!({"vm_name": "web1", "definition": web1()}));
    let before = snapshot_tree(env.root());
    let cases = [
        ("define", json!({"vm_name": "new1", "definition": web1(), "dry_run": true}), true),
        ("define", json!({"vm_name": "web1", "definition": web1(), "dry_run": true}), false),
        ("provision", json!({"vm_name": "web1", "definition": web1(), "dry_run": true}), true),
        ("start", json!({"vm_name": "web1", "dry_run": true}), true),
        ("stop", json!({"vm_name": "web1", "dry_run": true}), false),
        ("lock", json!({"vm_name": "web1", "dry_run": true}), true),
        ("undefine", json!({"vm_name": "web1", "dry_run": true}), true),
        ("deprovision", json!({"vm_name": "web1", "dry_run": true}), true),
        ("deprovision", json!({"vm_name": "nosuch", "dry_run": true}), false),
    ];
    for (a, data, changes) in cases {
        let r = env.ok(a, data.clone());
        assert_eq!(r["dry_run"], json!(true), "{a}");
        assert_eq!(r["changed"], json!(changes), "{a} {data}: {r}");
        assert_eq!(!r["steps"].as_array().unwrap().is_empty(), changes, "{a}: {r}");
    }
    let steps = env.ok("start", json!({"vm_name": "web1", "dry_run": true}))["steps"].clone();
    assert_eq!(steps, json!(["activate volume root", "start VM web1"]));
    assert_eq!(snapshot_tree(env.root()), before, "a dry run wrote something");
    // A dry run on a fresh host does not even create the database.
    let fresh = Env::new();
    fresh.ok("define", json!({"vm_name": "web1", "definition": web1(), "dry_run": true}));
    assert!(!fresh.root().join("var/lib/geats/geats.db").exists());
}

#[test]
fn repeated_request_id_is_answered_from_the_journal() {
    let env = Env::new();
    env.ok("define", json!({"vm_name": "web1", "definition": web1()}));
    let first = env.ok("start", json!({"vm_name": "web1", "request_id": "req-1"}));
    env.ok("stop", json!({"vm_name": "web1"}));
    let again = env.ok("start", json!({"vm_name": "web1", "request_id": "req-1"}));
    assert_eq!(first, again, "same answer");
    assert_eq!(env.ok("info", json!({"vm_name": "web1"}))["state"], json!(["stopped", "stopped"]), "not run again");
    // MCollective's uniqid works the same way, and the sender is recorded.
    let req = r#"{"agent":"geats","action":"start","data":{"vm_name":"web1","process_results":true},"sender":"ops.client","callerid":null,"uniqid":"a5da634ae25d5f9fa1fd15b2c67d7a56"}"#;
    assert_eq!(env.mco(req).0, 0);
    env.ok("stop", json!({"vm_name": "web1"}));
    assert_eq!(env.mco(req).0, 0);
    assert_eq!(env.ok("info", json!({"vm_name": "web1"}))["state"], json!(["stopped", "stopped"]));
    let h = env.cli(&["history", "web1", "--json"]);
    let entries: Value = serde_json::from_slice(&h.stdout).unwrap();
    let starts: Vec<&Value> = entries.as_array().unwrap().iter().filter(|e| e["action"] == "start").collect();
    assert_eq!(starts.len(), 2, "each request id ran once: {entries:#}");
    assert_eq!(starts[1]["caller"], "ops.client");
    assert_eq!(starts[1]["request_id"], "a5da634ae25d5f9fa1fd15b2c67d7a56");
    assert_eq!(starts[1]["steps"], json!(["activate volume root", "start VM web1"]));
    let text = String::from_utf8_lossy(&env.cli(&["history"]).stdout).into_owned();
    assert!(text.contains("ops.client") && text.contains("start"), "{text}");
}

#[test]
fn failed_define_rolls_back() {
    let env = Env::new();
    let dummy_dir = env.root().join("var/lib/geats/dummy");
    std::fs::create_dir_all(&dummy_dir).unwrap();
    std::fs::write(dummy_dir.join("bad1.fault"), r#"{"fail": ["define"]}"#).unwrap();
    env.ok("status", json!({}));
    let before = snapshot_tree(env.root());
    let e = env.fail("define", json!({"vm_name": "bad1", "definition": web1()}));
    assert_eq!((e["errorcode"].clone(), e["retryable"].clone()), (json!("tool_failed"), json!(true)));
    assert!(!env.root().join("var/lib/geats/volumes/bad1").exists(), "the volume it created is gone");
    assert!(!env.root().join("var/lib/geats/records/bad1.json").exists());
    assert_eq!(env.fail("info", json!({"vm_name": "bad1"}))["errorcode"], "not_found");
    // Only the journal row and the (empty) storage root remain.
    let keep = |(p, _): &(String, String)| !p.ends_with(".db") && p != "var/lib/geats/volumes";
    let after: Vec<_> = snapshot_tree(env.root()).into_iter().filter(keep).collect();
    let before: Vec<_> = before.into_iter().filter(keep).collect();
    assert_eq!(after, before, "the failed define left something behind");
    let dump = crate::common::db_dump(&env.root().join("var/lib/geats/geats.db"));
    assert!(!dump.contains("vms:") && !dump.contains("volumes:") && !dump.contains("op_locks:"), "{dump}");
    assert!(dump.contains("define") && dump.contains("tool_failed"), "the failure is journaled: {dump}");
    // A failed start leaves the VM defined and stopped with its volumes inactive.
    std::fs::remove_file(dummy_dir.join("bad1.fault")).unwrap();
    env.ok("define", json!({"vm_name": "bad1", "definition": web1()}));
    std::fs::write(dummy_dir.join("bad1.fault"), r#"{"fail": ["start"]}"#).unwrap();
    assert_eq!(env.fail("start", json!({"vm_name": "bad1"}))["errorcode"], "tool_failed");
    assert_eq!(env.ok("info", json!({"vm_name": "bad1"}))["state"], json!(["stopped", "stopped"]));
}

#[test]
fn lost_database_is_refused_until_recovered() {
    let env = Env::new();
    env.ok("define", json!({"vm_name": "web1", "definition": web1()}));
    env.ok("lock", json!({"vm_name": "web1"}));
    let db = env.root().join("var/lib/geats/geats.db");
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
    }
    for (a, d) in [("status", json!({})), ("info", json!({"vm_name": "web1"})), ("define", json!({"vm_name": "x", "definition": web1()}))] {
        let e = env.fail(a, d);
        assert_eq!(e["errorcode"], "database_missing", "{a}");
        let m = e["message"].as_str().unwrap();
        assert!(m.contains("geats.db") && m.contains("geats recover"), "{m}");
    }
    assert!(!db.exists(), "no empty database was started over existing VMs");
    // Garbage in place of the database is refused the same way.
    std::fs::write(&db, "not a database").unwrap();
    assert_eq!(env.fail("status", json!({}))["errorcode"], "database_missing");
    let out = env.cli(&["recover"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("web1"));
    let info = env.ok("info", json!({"vm_name": "web1"}));
    assert_eq!(info["locked"], json!(true), "the admin lock survived");
    assert_eq!(info["definition"]["ram"], json!(256));
}

#[test]
fn cli_reads_yaml_and_reports_errors_in_one_line() {
    let env = Env::new();
    let f = env.root().join("web1.yaml");
    std::fs::write(&f, "vm_type: dummy\nram: 128\nnetwork:\n  - name: eth0\n    ipaddr: 10.0.0.9/24\nstorage:\n  - name: root\n    type: dir\n").unwrap();
    let out = env.cli(&["define", "web1", f.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = env.cli(&["start", "web1"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("running"));
    let out = env.cli(&["list", "--json"]);
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["ip"], "10.0.0.9");
    let out = env.cli(&["start", "no/such"]);
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("invalid_data"), "{err}");
    let out = env.cli(&["info", "nosuch"]);
    assert_eq!(out.status.code(), Some(1));
    for sub in ["list", "info", "define", "start", "history", "status", "lock"] {
        let out = env.cli(&[sub, "--help"]);
        assert!(out.status.success() && !out.stdout.is_empty(), "{sub} --help");
    }
}

#[test]
fn bad_input_changes_nothing_on_disk() {
    // On a fresh host: no database, no journal, no directory.
    let env = Env::new();
    let before = snapshot_tree(env.root());
    let bad = [
        ("define", json!({"vm_name": "web1", "definition": {"vm_type": "dummy", "storage": [{"name": "root", "type": "nfs"}]}})),
        ("define", json!({"vm_name": "web1", "definition": {"vm_type": "xen"}})),
        ("define", json!({"vm_name": "web1", "definition": {"vm_type": "dummy", "storage": [{"name": "root", "type": "dir", "colour": "red"}]}})),
        ("start", json!({"vm_name": "nosuch"})),
        ("lock", json!({"vm_name": "nosuch"})),
    ];
    for (a, d) in &bad {
        env.fail(a, d.clone());
    }
    assert_eq!(env.ok("deprovision", json!({"vm_name": "nosuch"}))["changed"], json!(false));
    assert_eq!(snapshot_tree(env.root()), before, "bad input or a no-op created something");

    // On a host with VMs: no journal row for bad input, but refusals of
    // valid requests are journaled.
    env.ok("define", json!({"vm_name": "web1", "definition": web1()}));
    let journal_rows = |env: &Env| {
        let conn = rusqlite::Connection::open(env.root().join("var/lib/geats/geats.db")).unwrap();
        conn.query_row("SELECT count(*) FROM journal", [], |r| r.get::<_, i64>(0)).unwrap()
    };
    let n = journal_rows(&env);
    for (a, d) in &bad[..3] {
        env.fail(a, d.clone());
    }
    assert_eq!(journal_rows(&env), n, "bad input was journaled");
    env.ok("lock", json!({"vm_name": "web1"}));
    env.fail("undefine", json!({"vm_name": "web1"}));
    assert_eq!(journal_rows(&env), n + 2, "the lock and the refused undefine are journaled");
}

#[test]
fn oversized_and_overflowing_requests_are_invalid() {
    let env = Env::with_config("request_limit = 4096\n");
    let big = json!({"action": "define", "data": {"vm_name": "web1", "definition": {"vm_type": "dummy", "description": "x".repeat(5000)}}});
    let (code, v, _) = env.stdio(&big.to_string());
    assert_eq!((code, v["errorcode"].clone()), (0, json!("invalid_data")), "{v}");
    assert!(v["message"].as_str().unwrap().contains("request_limit"), "{v}");
    let (code, reply, _) = env.mco(&big.to_string());
    assert_eq!(code, 4, "{reply}");
    for raw in [
        r#"{"action":"define","data":{"vm_name":"web1","definition":{"vm_type":"dummy","ram":1e400}}}"#,
        r#"{"action":"define","data":{"vm_name":"web1","definition":{"vm_type":"dummy","ram":18446744073709551616}}}"#,
        r#"{"action":"start","data":{"vm_name":"web\u0000"}}"#,
    ] {
        let (code, v, _) = env.stdio(raw);
        assert_eq!((code, v["errorcode"].clone()), (0, json!("invalid_data")), "{raw}: {v}");
    }
}

/// Issue 13, acceptance 5: `geats agent --help` is asked-for output, like
/// `geats --help`: usage on stdout, nothing on stderr, exit 0; a wrong
/// option is still an error (usage on stderr, class 5).
#[test]
fn issue_13_agent_help_on_stdout() {
    let env = Env::new();
    for args in [&["agent", "--help"][..], &["agent", "-h"], &["--config", "/nonexistent.toml", "agent", "--help"]] {
        let o = env.cli(args);
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert_eq!(o.status.code(), Some(0), "geats {args:?}: {}", crate::common::out_text(&o));
        assert!(stdout.starts_with("usage: geats agent") && stdout.contains("--stdio"), "geats {args:?}: {}", crate::common::out_text(&o));
        assert!(o.stderr.is_empty(), "geats {args:?}: {}", crate::common::out_text(&o));
    }
    let o = env.cli(&["agent", "--bogus"]);
    assert_eq!(o.status.code(), Some(5));
    assert!(o.stdout.is_empty() && String::from_utf8_lossy(&o.stderr).contains("usage: geats agent"), "{}", crate::common::out_text(&o));
}
