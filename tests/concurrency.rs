//! Many agent processes at once: no "database is locked" ever reaches a
//! reply, actions on one VM serialize, actions on different VMs do not
//! block each other, a killed lock holder does not block the next request,
//! and a live one makes it fail with `busy` after `lock_timeout`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{check_envelope, dummy_definition, Env};

fn spawn(env: &Env, req: &Value) -> Child {
    let mut c: Command = env.cmd();
    c.args(["agent", "--stdio"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn geats");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(req.to_string().as_bytes()).unwrap();
    child
}

fn fault(env: &Env, vm: &str, text: &str) {
    let d = env.root().join("var/lib/geats/dummy");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join(format!("{vm}.fault")), text).unwrap();
}

fn wait_for_lock(env: &Env, vm: &str) {
    let db = env.root().join("var/lib/geats/geats.db");
    let start = Instant::now();
    loop {
        let conn = rusqlite::Connection::open(&db).unwrap();
        let n: i64 = conn.query_row("SELECT count(*) FROM op_locks WHERE vm = ?1", [vm], |r| r.get(0)).unwrap_or(0);
        if n > 0 {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "the holder never took the lock");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sixteen_agents_at_once() {
    let env = Env::new();
    env.ok("define", json!({"vm_name": "shared", "definition": dummy_definition("shared")}));
    // Every action on `shared` takes 100 ms, so overlapping would show.
    fault(&env, "shared", r#"{"delay_ms": 100}"#);
    let mut children = Vec::new();
    for i in 0..16 {
        let req = if i % 2 == 0 {
            let action = if i % 4 == 0 { "start" } else { "stop" };
            json!({"action": action, "data": {"vm_name": "shared"}})
        } else {
            let name = format!("own{i}");
            json!({"action": "define", "data": {"vm_name": name, "definition": dummy_definition(&name)}})
        };
        children.push((req.clone(), spawn(&env, &req)));
    }
    for (req, child) in children {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stdout.contains("locked") && !stderr.contains("database is locked"), "{req}: {stdout} {stderr}");
        assert_eq!(out.status.code(), Some(0), "{req}: {stderr}");
        let v: Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(v["success"], json!(true), "{req}: {v} {stderr}");
        check_envelope(req["action"].as_str().unwrap(), &v);
    }
    // Same-VM actions ran one after the other: their journal intervals
    // (taken inside the lock) do not overlap.
    let conn = rusqlite::Connection::open(env.root().join("var/lib/geats/geats.db")).unwrap();
    let mut st = conn.prepare("SELECT started, ended FROM journal WHERE vm = 'shared' AND action != 'define' ORDER BY started").unwrap();
    let spans: Vec<(String, String)> = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect();
    assert_eq!(spans.len(), 8);
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0, "overlapping actions on one VM: {w:?}");
    }
    let vms = env.ok("status", json!({}))["vms"].as_object().unwrap().len();
    assert_eq!(vms, 9);
    let locks: i64 = conn.query_row("SELECT count(*) FROM op_locks", [], |r| r.get(0)).unwrap();
    assert_eq!(locks, 0, "every lock was released");
}

#[test]
fn killed_lock_holder_does_not_block() {
    let env = Env::with_config("lock_timeout = 3\n");
    env.ok("define", json!({"vm_name": "slow", "definition": dummy_definition("slow")}));
    fault(&env, "slow", r#"{"delay_ms": 60000}"#);
    let mut holder = spawn(&env, &json!({"action": "start", "data": {"vm_name": "slow"}}));
    wait_for_lock(&env, "slow");
    holder.kill().unwrap();
    holder.wait().unwrap();
    fault(&env, "slow", "{}");
    let t = Instant::now();
    let r = env.ok("start", json!({"vm_name": "slow"}));
    assert_eq!(r["state"], json!(["running", "running"]));
    assert!(t.elapsed() < Duration::from_secs(3), "waited for a dead holder: {:?}", t.elapsed());
    let h: Value = serde_json::from_slice(&env.cli(&["history", "slow", "--json"]).stdout).unwrap();
    let starts: Vec<&Value> = h.as_array().unwrap().iter().filter(|e| e["action"] == "start").collect();
    assert_eq!(starts[0]["outcome"], "rolled_forward", "the killed start was finished by the next request: {h:#}");
    assert_eq!(starts[1]["outcome"], "ok");
}

#[test]
fn live_lock_holder_makes_others_busy() {
    let env = Env::with_config("lock_timeout = 1\n");
    env.ok("define", json!({"vm_name": "slow", "definition": dummy_definition("slow")}));
    env.ok("define", json!({"vm_name": "other", "definition": dummy_definition("other")}));
    fault(&env, "slow", r#"{"delay_ms": 4000}"#);
    let mut holder = spawn(&env, &json!({"action": "start", "data": {"vm_name": "slow"}}));
    wait_for_lock(&env, "slow");
    // Another VM is not blocked.
    env.ok("start", json!({"vm_name": "other"}));
    // Reads take no lock.
    env.ok("info", json!({"vm_name": "slow"}));
    let t = Instant::now();
    let e = env.fail("stop", json!({"vm_name": "slow"}));
    assert_eq!((e["errorcode"].clone(), e["retryable"].clone()), (json!("busy"), json!(true)), "{e}");
    assert!(e["message"].as_str().unwrap().contains("start"), "names what holds the lock: {e}");
    let waited = t.elapsed();
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(3), "{waited:?}");
    let (code, reply, _) = env.mco(r#"{"action":"stop","data":{"vm_name":"slow"}}"#);
    assert_eq!(code, 1, "busy is class 1: {reply}");
    let status = holder.wait().unwrap();
    assert!(status.success());
    assert_eq!(env.ok("stop", json!({"vm_name": "slow"}))["changed"], json!(true));
}

/// Issue 11: many first requests on a fresh host create the database at
/// once; none may fail with "database is locked" (switching the new file
/// to WAL needs it to itself, and SQLite reports that without waiting).
#[test]
fn issue_11_first_requests_race_to_create_the_database() {
    for round in 0..8 {
        let env = Env::new();
        let children: Vec<(Value, Child)> = (0..8)
            .map(|i| {
                let name = format!("first{i}");
                let req = json!({"action": "define", "data": {"vm_name": name, "definition": dummy_definition(&name)}});
                let c = spawn(&env, &req);
                (req, c)
            })
            .collect();
        for (req, child) in children {
            let out = child.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            let v: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{req}: {e}: {stdout}"));
            assert_eq!(v["success"], json!(true), "round {round}: {req}: {v}");
        }
        assert_eq!(env.ok("status", json!({}))["vms"].as_object().unwrap().len(), 8);
        let conn = rusqlite::Connection::open(env.root().join("var/lib/geats/geats.db")).unwrap();
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal", "round {round}: the racing creators left the database out of WAL mode");
    }
}
