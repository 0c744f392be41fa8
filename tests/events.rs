//! Issue 14: desired state, health, the event feed and hooks, on the dummy
//! VM type (fast; its power state is a file a test can change behind
//! geats's back). The same on real containers: `lxc_events.rs`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{dummy_definition, Env};

fn define(env: &Env, name: &str) {
    env.ok("define", json!({"vm_name": name, "definition": dummy_definition(name)}));
}

fn state_file(env: &Env, name: &str) -> std::path::PathBuf {
    env.root().join(format!("var/lib/geats/dummy/{name}.state"))
}

/// Every kept event after `since`, through stdio (the reply schema is
/// checked by `ok`).
fn events(env: &Env, since: i64) -> Value {
    env.ok("events", json!({"since": since}))
}

fn kinds(page: &Value) -> Vec<String> {
    page["events"].as_array().unwrap().iter().map(|e| format!("{}:{}", e["vm"].as_str().unwrap_or("-"), e["kind"].as_str().unwrap())).collect()
}

fn entry<'a>(status: &'a Value, name: &str) -> &'a Value {
    &status["vms"][name]
}

#[test]
fn issue_14_desired_is_set_by_intent_only() {
    let env = Env::new();
    define(&env, "a");
    let s = env.ok("status", json!({}));
    assert_eq!(entry(&s, "a")["desired"], json!("stopped"), "define of a new VM: stopped");
    assert_eq!(entry(&s, "a")["health"], json!("ok"));
    assert_eq!(entry(&s, "a")["state"], json!(["stopped", "stopped"]), "state stays the two-element array");
    env.ok("start", json!({"vm_name": "a"}));
    assert_eq!(env.ok("info", json!({"vm_name": "a"}))["desired"], json!("running"));
    // A re-define (changed) of a defined VM does not touch the intent.
    let mut d = dummy_definition("a");
    d["description"] = json!("changed");
    assert_eq!(env.ok("define", json!({"vm_name": "a", "definition": d}))["changed"], json!(true));
    assert_eq!(env.ok("info", json!({"vm_name": "a"}))["desired"], json!("running"));
    // Neither do lock/unlock.
    env.ok("lock", json!({"vm_name": "a"}));
    env.ok("unlock", json!({"vm_name": "a"}));
    assert_eq!(env.ok("info", json!({"vm_name": "a"}))["desired"], json!("running"));
    env.ok("reboot", json!({"vm_name": "a"}));
    assert_eq!(env.ok("info", json!({"vm_name": "a"}))["desired"], json!("running"));
    env.ok("shutdown", json!({"vm_name": "a"}));
    assert_eq!(env.ok("info", json!({"vm_name": "a"}))["desired"], json!("stopped"));
    env.ok("start", json!({"vm_name": "a"}));
    env.ok("stop", json!({"vm_name": "a"}));
    assert_eq!(env.ok("info", json!({"vm_name": "a"}))["desired"], json!("stopped"));
    // A failed start leaves the intent as it was.
    std::fs::write(env.root().join("var/lib/geats/dummy/a.fault"), r#"{"fail": ["start"]}"#).unwrap();
    env.fail("start", json!({"vm_name": "a"}));
    let i = env.ok("info", json!({"vm_name": "a"}));
    assert_eq!((&i["desired"], &i["health"]), (&json!("stopped"), &json!("ok")));
    // A dry run records nothing.
    std::fs::remove_file(env.root().join("var/lib/geats/dummy/a.fault")).unwrap();
    env.ok("start", json!({"vm_name": "a", "dry_run": true}));
    assert_eq!(env.ok("info", json!({"vm_name": "a"}))["desired"], json!("stopped"));
}

#[test]
fn issue_14_drift_is_reported_once_until_healthy() {
    let env = Env::new();
    define(&env, "a");
    define(&env, "b");
    env.ok("start", json!({"vm_name": "a"}));
    let base = events(&env, 0)["last_seq"].as_i64().unwrap();

    // a crashes behind geats's back.
    std::fs::write(state_file(&env, "a"), "stopped").unwrap();
    for _ in 0..3 {
        let s = env.ok("status", json!({}));
        assert_eq!(entry(&s, "a")["health"], json!("down_unexpected"), "{s}");
        assert_eq!(entry(&s, "a")["desired"], json!("running"));
        assert_eq!(entry(&s, "b")["health"], json!("ok"));
        assert_eq!(env.ok("info", json!({"vm_name": "a"}))["health"], json!("down_unexpected"));
    }
    let page = events(&env, base);
    assert_eq!(kinds(&page), vec!["a:down_unexpected"], "one event however often it is polled");
    let ev = &page["events"][0];
    assert_eq!((&ev["ok"], &ev["errorcode"]), (&json!(false), &Value::Null));

    // start: healthy again (the start's own event, no drift event).
    env.ok("start", json!({"vm_name": "a"}));
    assert_eq!(entry(&env.ok("status", json!({})), "a")["health"], json!("ok"));
    // It crashes again: a new drift, reported once more.
    std::fs::write(state_file(&env, "a"), "stopped").unwrap();
    env.ok("status", json!({}));
    env.ok("status", json!({}));
    assert_eq!(kinds(&events(&env, base)), vec!["a:down_unexpected", "a:start", "a:down_unexpected"]);

    // Healthy in between without an action (started behind geats's back):
    // seen by a read, so the next crash is reported again.
    std::fs::write(state_file(&env, "a"), "running").unwrap();
    assert_eq!(env.ok("info", json!({"vm_name": "a"}))["health"], json!("ok"));
    std::fs::write(state_file(&env, "a"), "stopped").unwrap();
    env.ok("info", json!({"vm_name": "a"}));
    env.ok("status", json!({}));
    assert_eq!(kinds(&events(&env, base)).len(), 4);

    // up_unexpected: b runs though it should not.
    std::fs::write(state_file(&env, "b"), "running").unwrap();
    let s = env.ok("status", json!({}));
    assert_eq!(entry(&s, "b")["health"], json!("up_unexpected"));
    env.ok("status", json!({}));
    // stop of it expresses the intent again and is healthy.
    env.ok("stop", json!({"vm_name": "b"}));
    let k = kinds(&events(&env, base));
    assert_eq!(&k[4..], &["b:up_unexpected", "b:stop"]);

    // unknown: the VM type cannot tell; never a guessed stopped, no event.
    std::fs::write(state_file(&env, "b"), "garbage").unwrap();
    let s = env.ok("status", json!({}));
    assert_eq!(entry(&s, "b")["health"], json!("unknown"));
    assert_eq!(entry(&s, "b")["state"][0], json!("unknown"));
    assert_eq!(kinds(&events(&env, base)).len(), 6);
}

#[test]
fn issue_14_one_event_per_change_or_failure() {
    let env = Env::new();
    let mut expect = Vec::new();
    let mut steps: Vec<(&str, Value, bool)> = vec![
        ("define", json!({"vm_name": "v", "definition": dummy_definition("v")}), true),
        ("define", json!({"vm_name": "v", "definition": dummy_definition("v")}), false),
        ("start", json!({"vm_name": "v"}), true),
        ("start", json!({"vm_name": "v"}), false),
        ("lock", json!({"vm_name": "v"}), true),
        ("lock", json!({"vm_name": "v"}), false),
        ("unlock", json!({"vm_name": "v"}), true),
        ("reboot", json!({"vm_name": "v"}), true),
        ("stop", json!({"vm_name": "v"}), true),
        ("stop", json!({"vm_name": "v"}), false),
        ("shutdown", json!({"vm_name": "v"}), false),
    ];
    steps.extend([
        ("start", json!({"vm_name": "v", "request_id": "req-1"}), true),
        ("shutdown", json!({"vm_name": "v"}), true),
        ("undefine", json!({"vm_name": "v"}), true),
        ("undefine", json!({"vm_name": "v"}), false),
        ("provision", json!({"vm_name": "v", "definition": dummy_definition("v")}), true),
        ("deprovision", json!({"vm_name": "v"}), true),
        ("deprovision", json!({"vm_name": "v"}), false),
    ]);
    for (action, data, changes) in &steps {
        let d = env.ok(action, data.clone());
        assert_eq!(d["changed"], json!(changes), "{action} {data}");
        if *changes {
            expect.push(format!("v:{action}"));
        }
    }
    // Failures append one event each, with the errorcode.
    env.fail("start", json!({"vm_name": "nosuch"}));
    expect.push("nosuch:start".into());
    define(&env, "w");
    expect.push("w:define".into());
    env.fail("reboot", json!({"vm_name": "w"}));
    expect.push("w:reboot".into());
    env.ok("lock", json!({"vm_name": "w"}));
    expect.push("w:lock".into());
    env.fail("undefine", json!({"vm_name": "w"}));
    expect.push("w:undefine".into());
    // A request refused for bad input never ran: no event.
    env.fail("start", json!({"vm_name": "-bad"}));
    // A replayed request id: answered from the journal, no second event.
    env.ok("unlock", json!({"vm_name": "w", "request_id": "once"}));
    expect.push("w:unlock".into());
    assert_eq!(env.ok("unlock", json!({"vm_name": "w", "request_id": "once"}))["changed"], json!(true));

    let page = events(&env, 0);
    assert_eq!(kinds(&page), expect);
    let evs = page["events"].as_array().unwrap();
    let seqs: Vec<i64> = evs.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "strictly increasing: {seqs:?}");
    assert_eq!(page["last_seq"], json!(seqs.last().unwrap()));
    assert!(page.get("gap").is_none());
    let by = |vm: &str, kind: &str| evs.iter().find(|e| e["vm"] == json!(vm) && e["kind"] == json!(kind)).unwrap().clone();
    assert_eq!(by("nosuch", "start")["errorcode"], json!("not_found"));
    assert_eq!(by("w", "reboot")["errorcode"], json!("invalid_state"));
    assert_eq!(by("w", "undefine")["errorcode"], json!("vm_locked"));
    assert_eq!(by("w", "undefine")["ok"], json!(false));
    assert_eq!(by("w", "define")["ok"], json!(true));
    let started = evs.iter().find(|e| e["request_id"] == json!("req-1")).unwrap();
    assert_eq!(started["kind"], json!("start"));

    // Asking again from last_seq: nothing, and the same last_seq.
    let last = page["last_seq"].as_i64().unwrap();
    let again = events(&env, last);
    assert_eq!((again["events"].as_array().unwrap().len(), &again["last_seq"]), (0, &json!(last)));
    // limit: the oldest first, last_seq is the last one returned.
    let two = env.ok("events", json!({"since": 0, "limit": 2}));
    assert_eq!(two["events"].as_array().unwrap().len(), 2);
    assert_eq!(two["last_seq"], json!(seqs[1]));
}

#[test]
fn issue_14_retention_reports_a_gap() {
    let env = Env::with_config("[events]\nkeep = 3\n");
    define(&env, "a");
    for _ in 0..3 {
        env.ok("start", json!({"vm_name": "a"}));
        env.ok("stop", json!({"vm_name": "a"}));
    }
    let page = events(&env, 0);
    assert_eq!(page["events"].as_array().unwrap().len(), 3);
    assert_eq!(page["gap"], json!(true), "since 0 is older than the oldest kept event");
    assert_eq!(page["last_seq"], json!(7));
    assert_eq!(page["events"][0]["seq"], json!(5));
    let page = events(&env, 4);
    assert!(page.get("gap").is_none(), "nothing after 4 was pruned: {page}");
}

#[test]
fn issue_14_events_through_mcollective_and_choria() {
    let env = Env::new();
    let req = json!({"agent": "geats", "action": "define", "data": {"vm_name": "m", "definition": dummy_definition("m"), "process_results": true},
                     "sender": "ops.client", "callerid": null, "uniqid": "a5da634ae25d5f9fa1fd15b2c67d7a56"});
    let (code, _, err) = env.mco(&req.to_string());
    assert_eq!(code, 0, "{err}");
    let poll = json!({"agent": "geats", "action": "events", "data": {"since": 0, "process_results": true}, "sender": "ops.client", "callerid": null, "uniqid": "b5da634ae25d5f9fa1fd15b2c67d7a56"});
    let (code, reply, err) = env.mco(&poll.to_string());
    assert_eq!(code, 0, "{err}");
    let page: Value = serde_json::from_str(&reply).unwrap();
    crate::common::schema::check_reply("events", &page);
    let ev = &page["events"][0];
    assert_eq!((&ev["kind"], &ev["caller"], &ev["request_id"]), (&json!("define"), &json!("ops.client"), &json!("a5da634ae25d5f9fa1fd15b2c67d7a56")));
    // Choria: since as an integer, the reply inside {statuscode, data}.
    let dir = env.root();
    let (rq, rp) = (dir.join("c-req.json"), dir.join("c-rep.json"));
    let creq = json!({"$schema": "https://choria.io/schemas/mcorpc/external/v1/rpc_request.json", "protocol": "io.choria.mcorpc.external.v1.rpc_request",
        "agent": "geats", "action": "events", "requestid": "c1", "senderid": "n1", "callerid": "choria=ops", "collective": "mcollective", "ttl": 60,
        "msgtime": 1, "data": {"since": page["last_seq"]}});
    std::fs::write(&rq, creq.to_string()).unwrap();
    std::fs::write(&rp, "").unwrap();
    let mut c = env.cmd();
    c.env("CHORIA_EXTERNAL_PROTOCOL", "io.choria.mcorpc.external.v1.rpc_request").arg("agent").arg(&rq).arg(&rp);
    let out = crate::common::run_with_stdin(c, b"");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&rp).unwrap()).unwrap();
    assert_eq!(r["statuscode"], json!(0), "{r}");
    assert_eq!((r["data"]["events"].as_array().map(Vec::len), &r["data"]["last_seq"]), (Some(0), &page["last_seq"]));
}

#[test]
fn issue_14_cli_events() {
    let env = Env::new();
    define(&env, "c");
    let out = env.cli(&["start", "c"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = env.cli(&["events", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let page: Value = serde_json::from_slice(&out.stdout).unwrap();
    crate::common::schema::check_reply("events", &page);
    assert_eq!(kinds(&page), vec!["c:define", "c:start"]);
    assert!(page["events"][1]["caller"].as_str().unwrap().starts_with("cli:"), "{page}");
    let out = env.cli(&["events", "--since", "1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains(" c  start  ok  cli:"), "{text}");
    // status and info show desired and health.
    let out = env.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l.starts_with("c ") && l.contains("running") && l.contains(" ok")), "{text}");
    let out = env.cli(&["info", "c"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Health:      ok"));
}

#[test]
fn issue_14_cli_follow_prints_events_as_they_come() {
    let env = Env::new();
    define(&env, "f");
    let mut c = env.cmd();
    c.args(["events", "--follow", "--json", "--interval", "0.1"]).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null());
    // Guarded: a failing assertion below must not leave it running.
    let mut child = crate::common::procs::Guard::new("geats events --follow", c.spawn().unwrap());
    let stdout = child.child.as_mut().and_then(|c| c.stdout.take()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = |rx: &std::sync::mpsc::Receiver<String>| -> Value { serde_json::from_str(&rx.recv_timeout(Duration::from_secs(10)).expect("an event line")).unwrap() };
    assert_eq!(next(&rx)["kind"], json!("define"));
    env.ok("start", json!({"vm_name": "f"}));
    assert_eq!(next(&rx)["kind"], json!("start"));
    env.ok("start", json!({"vm_name": "f"}));
    env.ok("stop", json!({"vm_name": "f"}));
    let e = next(&rx);
    assert_eq!((&e["kind"], &e["seq"]), (&json!("stop"), &json!(3)), "the no-op start printed nothing");
    child.stop(Duration::from_secs(5));
}

/// A hook: a script that appends its stdin and a newline to `log`.
pub fn hook_script(dir: &std::path::Path, name: &str, log: &std::path::Path, extra: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{extra}\ncat >> '{}'\necho >> '{}'\n", log.display(), log.display())).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

#[test]
fn issue_14_hooks_receive_events_after_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let all = tmp.path().join("all.log");
    let drift = tmp.path().join("drift.log");
    let h_all = hook_script(tmp.path(), "all.sh", &all, "");
    let h_drift = hook_script(tmp.path(), "drift.sh", &drift, "");
    let env = Env::with_config(&format!("[hooks]\non_event = \"{}\"\n[hooks.by_kind]\ndown_unexpected = \"{}\"\n", h_all.display(), h_drift.display()));
    define(&env, "h");
    env.ok("start", json!({"vm_name": "h"}));
    env.ok("start", json!({"vm_name": "h"}));
    std::fs::write(state_file(&env, "h"), "stopped").unwrap();
    env.ok("status", json!({}));
    env.ok("status", json!({}));
    let lines = |p: &std::path::Path| -> Vec<Value> {
        std::fs::read_to_string(p).unwrap_or_default().lines().filter(|l| !l.is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let got: Vec<String> = lines(&all).iter().map(|e| e["kind"].as_str().unwrap().to_string()).collect();
    assert_eq!(got, vec!["define", "start"], "one hook run per event, none for the no-op");
    let d = lines(&drift);
    assert_eq!(d.len(), 1, "the drift went to its own hook once: {d:?}");
    assert_eq!(d[0]["kind"], json!("down_unexpected"));
    // What the hook got is the committed event, as the feed has it.
    let feed = events(&env, 0);
    assert_eq!(feed["events"][2], d[0]);
    crate::common::schema::check_reply("events", &json!({"events": lines(&all), "last_seq": 2}));
}

#[test]
fn issue_14_slow_or_failing_hook_never_undoes_or_delays_the_reply() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    let slow = hook_script(tmp.path(), "slow.sh", &log, "sleep 30");
    let env = Env::with_config(&format!("[hooks]\non_event = \"{}\"\ntimeout = 1\n", slow.display()));
    let t = Instant::now();
    let req = json!({"action": "define", "data": {"vm_name": "s", "definition": dummy_definition("s")}});
    let (code, v, err) = env.stdio(&req.to_string());
    let took = t.elapsed();
    assert_eq!((code, &v["success"]), (0, &json!(true)), "{err}");
    assert!(took < Duration::from_secs(8), "the slow hook was killed after its timeout: {took:?}");
    assert!(took >= Duration::from_secs(1), "the hook did run: {took:?}");
    assert!(err.contains("hook failed") && err.contains("did not finish"), "{err}");
    assert_eq!(kinds(&events(&env, 0)), vec!["s:define"]);
    // A failing hook: logged, the action stands.
    let failing = hook_script(tmp.path(), "fail.sh", &log, "exit 3");
    std::fs::write(&env.config, format!("[hooks]\non_event = \"{}\"\n", failing.display())).unwrap();
    let (code, v, err) = env.stdio(&json!({"action": "start", "data": {"vm_name": "s"}}).to_string());
    assert_eq!((code, &v["success"]), (0, &json!(true)), "{err}");
    assert!(err.contains("hook failed") && err.contains("exit status 3"), "{err}");
    assert_eq!(env.ok("info", json!({"vm_name": "s"}))["state"], json!(["running", "running"]));
    assert_eq!(kinds(&events(&env, 0)), vec!["s:define", "s:start"]);
}

/// Reads take no write transaction when nothing drifted: with another
/// connection holding the write lock, status and info answer at once and
/// log nothing; with a drift they try to write (and say they could not).
#[test]
fn issue_14_reads_write_only_on_a_drift() {
    // A read that waited would take the whole busy timeout: 5 s, far
    // from the 2.5 s a loaded machine may need for one debug-build call.
    let env = Env::with_config("busy_timeout = 5\n");
    define(&env, "r");
    env.ok("start", json!({"vm_name": "r"}));
    let db = rusqlite::Connection::open(env.root().join("var/lib/geats/geats.db")).unwrap();
    db.execute_batch("BEGIN IMMEDIATE").unwrap();
    for action in ["status", "info", "events"] {
        let data = if action == "info" { json!({"vm_name": "r"}) } else { json!({}) };
        let t = Instant::now();
        let (code, v, err) = env.stdio(&json!({"action": action, "data": data}).to_string());
        assert_eq!((code, &v["success"]), (0, &json!(true)), "{err}");
        assert!(t.elapsed() < Duration::from_millis(2500), "{action} waited for the write lock: {:?}", t.elapsed());
        assert!(!err.contains("cannot record"), "{action}: {err}");
    }
    // The drift's write gives up after the busy timeout: 1 s is enough.
    std::fs::write(&env.config, "busy_timeout = 1\n").unwrap();
    std::fs::write(state_file(&env, "r"), "stopped").unwrap();
    let (_, v, err) = env.stdio(&json!({"action": "status", "data": {}}).to_string());
    assert_eq!(v["data"]["vms"]["r"]["health"], json!("down_unexpected"), "the read still answers");
    assert!(err.contains("cannot record a drift"), "a drift is the one write a read makes: {err}");
    db.execute_batch("ROLLBACK").unwrap();
    env.ok("status", json!({}));
    assert_eq!(kinds(&events(&env, 0)), vec!["r:define", "r:start", "r:down_unexpected"]);
}

/// A database from before events (schema version 3) is migrated: its VMs have no intent
/// (desired null, health ok) until the next intent action.
#[test]
fn issue_14_migration_from_version_1() {
    let env = Env::new();
    define(&env, "old");
    env.ok("start", json!({"vm_name": "old"}));
    let path = env.root().join("var/lib/geats/geats.db");
    {
        let db = rusqlite::Connection::open(&path).unwrap();
        db.execute_batch("DROP TABLE events; DROP INDEX IF EXISTS events_vm; ALTER TABLE vms DROP COLUMN desired; ALTER TABLE vms DROP COLUMN drift; PRAGMA user_version = 3;").unwrap();
    }
    let s = env.ok("status", json!({}));
    assert_eq!((&s["vms"]["old"]["desired"], &s["vms"]["old"]["health"]), (&Value::Null, &json!("ok")));
    assert_eq!(events(&env, 0)["events"], json!([]));
    std::fs::write(state_file(&env, "old"), "stopped").unwrap();
    assert_eq!(env.ok("info", json!({"vm_name": "old"}))["health"], json!("ok"), "no intent, no drift");
    env.ok("start", json!({"vm_name": "old"}));
    assert_eq!(env.ok("info", json!({"vm_name": "old"}))["desired"], json!("running"));
}
