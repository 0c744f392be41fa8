//! geats under MCollective: its Ruby DDL in MCollective's own loader, every
//! action through MCollective's real agent code path (in Ruby, no
//! middleware), and the full loopback path (RabbitMQ + mcollectived + `mco
//! rpc`). Tests that need Ruby + MCollective or RabbitMQ check at run time
//! and print `SKIPPED ...` when something is missing.

use std::process::Command;

use serde_json::{json, Value};

use crate::common::docs::run_doc_console;
use crate::common::mco::{live_mco_missing, mco_libdir, mco_missing, LiveMco};
use crate::common::{bin, cli_ok, dummy_definition, manifest, out_text, run_with_stdin, skip, Env};

/// The Ruby DDL loads in MCollective's own loader, with everything the
/// DSL demands, and MCollective validates inputs with it.
#[test]
fn mcollective_ddl_loads_in_mcollective() {
    if let Some(why) = mco_missing() {
        return skip("mcollective_ddl_loads_in_mcollective", &why);
    }
    let env = Env::new();
    let lib = mco_libdir(env.root());
    let o = Command::new("ruby").arg(manifest().join("tests/mco/ddl_check.rb")).arg(&lib).output().unwrap();
    assert!(o.status.success(), "{}", out_text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let meta = v["meta"].as_object().unwrap();
    for k in ["name", "description", "author", "license", "version", "url", "timeout"] {
        assert!(meta.contains_key(k), "metadata lacks {k}: {meta:?}");
    }
    assert!(v["meta"]["timeout"].as_u64().unwrap() >= 300, "timeout must be well above the slowest action");
    let actions: Vec<&str> = v["actions"].as_array().unwrap().iter().filter_map(|a| a["action"].as_str()).collect();
    assert_eq!(actions, geats::request::Action::NAMES.to_vec());
    for a in v["actions"].as_array().unwrap() {
        let name = a["action"].as_str().unwrap();
        assert!(a["input"].get("definition").is_none(), "{name}: definition must stay undeclared (MCollective 2.12 cannot validate :hash)");
        for (input, spec) in a["input"].as_object().unwrap() {
            assert!(spec["prompt"].is_string() && spec["description"].is_string(), "{name}.{input}");
            if spec["type"] == "string" {
                assert!(spec["validation"].is_string() && spec["maxlength"].as_u64().unwrap() > 0, "{name}.{input}: {spec}");
            }
        }
        if !["status", "events", "reconcile"].contains(&name) {
            assert_eq!(a["input"]["vm_name"]["optional"], false, "{name}");
        }
        // Issue 13: the error keys are not outputs, so MCollective does not
        // pre-fill them (as nil) into every reply; the stub sends a failed
        // reply with empty data.
        for k in ["errorcode", "message", "retryable"] {
            assert!(!a["output"].as_array().unwrap().iter().any(|o| o == k), "{name} declares output {k}");
        }
    }
    let start = v["actions"].as_array().unwrap().iter().find(|a| a["action"] == "start").unwrap();
    assert_eq!(start["input"]["dry_run"]["type"], "boolean");
    let checks = &v["checks"];
    assert_eq!(checks["start web1"], "ok");
    assert_eq!(checks["start {}"], "Action start needs a vm_name argument");
    assert!(checks["start {:vm_name=>\"bad name\"}"].as_str().unwrap().starts_with("Cannot validate input vm_name: value should match"), "{checks}");
    assert!(checks[format!("start {{:vm_name=>\"{}\"}}", "a".repeat(64))].as_str().unwrap().contains("longer than 63"), "{checks}");
    // define without definition passes MCollective (undeclared); geats says missing_data.
    assert_eq!(checks["define {:vm_name=>\"web1\"}"], "ok");
}

/// Run requests through MCollective's real `RPC::Agent#handlemsg` and
/// `implemented_by` with the committed agent stub (`tests/mco/drive.rb`);
/// returns one `{statuscode, statusmsg, data}` per request.
fn mco_drive(env: &Env, requests: &Value) -> Vec<Value> {
    let lib = mco_libdir(env.root());
    let mut c = Command::new("ruby");
    c.arg(manifest().join("tests/mco/drive.rb"))
        .arg(&lib)
        // MCollective passes the daemon's whole environment to the command.
        .env("GEATS_ROOT", env.root())
        .env("GEATS_CONFIG", &env.config)
        .env("GEATS_COMMAND", bin());
    let o = run_with_stdin(c, requests.to_string().as_bytes());
    assert!(o.status.success(), "drive.rb failed: {}", out_text(&o));
    let lines: Vec<Value> = String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), requests.as_array().unwrap().len(), "{}", out_text(&o));
    lines
}

/// Every action through MCollective's own implemented_by code path.
#[test]
fn mcollective_implemented_by_every_action() {
    if let Some(why) = mco_missing() {
        return skip("mcollective_implemented_by_every_action", &why);
    }
    let env = Env::new();
    let d1 = dummy_definition("d1");
    let d2 = json!({"vm_type": "dummy", "name": "d2", "ram": 128});
    let requests = json!([
        ["status", {}],                                                          // 0
        ["define", {"vm_name": "d1", "definition": d1}],                         // 1 definition as a hash
        ["define", {"vm_name": "d2", "definition": d2.to_string()}],             // 2 as a JSON string
        ["info", {"vm_name": "d1"}],                                             // 3
        ["start", {"vm_name": "d1"}],                                            // 4
        ["start", {"vm_name": "d1"}],                                            // 5 idempotent
        ["status", {}],                                                          // 6
        ["reboot", {"vm_name": "d1"}],                                           // 7
        ["shutdown", {"vm_name": "d1"}],                                         // 8
        ["start", {"vm_name": "d1", "dry_run": true}],                           // 9
        ["start", {"vm_name": "d1"}],                                            // 10
        ["stop", {"vm_name": "d1"}],                                             // 11
        ["lock", {"vm_name": "d1"}],                                             // 12
        ["undefine", {"vm_name": "d1"}],                                         // 13 locked
        ["unlock", {"vm_name": "d1"}],                                           // 14
        ["migrate", {"vm_name": "d1", "vm_destination": "host2"}],               // 15
        ["undefine", {"vm_name": "d1"}],                                         // 16
        ["deprovision", {"vm_name": "d1"}],                                      // 17
        ["provision", {"vm_name": "d3", "definition": {"vm_type": "dummy", "name": "d3"}}], // 18
        ["start", {"vm_name": "nosuch"}],                                        // 19 unknown VM
        ["start", {"vm_name": "bad name"}],                                      // 20 DDL regex
        ["start", {}],                                                           // 21 DDL required
        ["start", {"vm_name": "a".repeat(64)}],                                  // 22 DDL maxlength
        ["explode", {"vm_name": "d1"}],                                          // 23 not in the DDL
        ["define", {"vm_name": "d4", "definition": "{not json"}],                // 24 geats: invalid
        ["define", {"vm_name": "d4"}],                                           // 25 geats: missing
        ["info", {"vm_name": "d2"}, {"string_keys": true}],                      // 26 a JSON client
        ["start", {"vm_name": "d2", "dry_run": "yes"}],                          // 27 DDL boolean
    ]);
    let r = mco_drive(&env, &requests);
    let cmd = bin().display().to_string();
    let ok = |i: usize| -> Value {
        assert_eq!(r[i]["statuscode"], 0, "request {i} {}: {}", requests[i], r[i]);
        assert_eq!(r[i]["statusmsg"], "OK", "request {i}");
        let action = requests[i][0].as_str().unwrap();
        // Exactly what geats wrote: no nil pre-filled from the DDL, so the
        // reply schema (no additional keys) holds as it is.
        let data = r[i]["data"].clone();
        crate::common::schema::check_reply(action, &data);
        data
    };
    let failed = |i: usize, code: u64, errorcode: &str| {
        assert_eq!(r[i]["statuscode"], code, "request {i} {}: {}", requests[i], r[i]);
        let msg = r[i]["statusmsg"].as_str().unwrap();
        // geats's message and error code reach the client in statusmsg...
        assert!(msg.starts_with(&format!("Failed to run {cmd}: ")) && msg.contains(&format!("[{errorcode}]")), "request {i}: {msg}");
        // ...and the stub sends no data at all with a failure (issue 13).
        assert_eq!(r[i]["data"], json!({}), "request {i}: {}", r[i]);
    };
    let ddl_refused = |i: usize, code: u64, text: &str| {
        assert_eq!(r[i]["statuscode"], code, "request {i} {}: {}", requests[i], r[i]);
        assert!(r[i]["statusmsg"].as_str().unwrap().contains(text), "request {i}: {}", r[i]);
        assert_eq!(r[i]["data"], json!({}), "request {i}: {}", r[i]);
    };

    assert_eq!(ok(0)["vms"], json!({}));
    let d = ok(1);
    assert_eq!((d["definition"]["name"].clone(), d["state"].clone(), d["changed"].clone()), (json!("d1"), json!(["stopped", "stopped"]), json!(true)));
    assert_eq!(ok(2)["definition"]["ram"], 128);
    let info = ok(3);
    assert_eq!((info["name"].clone(), info["vm_type"].clone(), info["locked"].clone()), (json!("d1"), json!("dummy"), json!(false)));
    assert_eq!(ok(4)["state"], json!(["running", "running"]));
    assert_eq!(ok(4)["changed"], true);
    assert_eq!(ok(5)["changed"], false);
    let st = ok(6);
    assert_eq!(st["vms"]["d1"]["state"], json!(["running", "running"]));
    assert_eq!(st["vms"]["d2"]["definition"]["name"], "d2");
    assert!(st["status"]["mem_total"].as_u64().unwrap() > 0);
    assert_eq!(ok(7)["state"][0], "running");
    assert_eq!(ok(8)["state"], json!(["stopped", "stopped"]));
    let dry = ok(9);
    assert_eq!((dry["dry_run"].clone(), dry["changed"].clone()), (json!(true), json!(true)));
    assert_eq!(ok(10)["state"][0], "running");
    assert_eq!(ok(11)["state"], json!(["stopped", "stopped"]));
    assert_eq!(ok(12)["locked"], true);
    failed(13, 1, "vm_locked");
    assert_eq!(ok(14)["locked"], false);
    failed(15, 1, "migration_failed");
    assert_eq!(ok(16)["changed"], true);
    assert_eq!(ok(17)["changed"], true);
    assert_eq!(ok(18)["definition"]["name"], "d3");
    failed(19, 1, "not_found");
    assert!(r[19]["statusmsg"].as_str().unwrap().contains("no VM named nosuch"), "{}", r[19]);
    ddl_refused(20, 4, "Cannot validate input vm_name: value should match");
    ddl_refused(21, 4, "Action start needs a vm_name argument");
    ddl_refused(22, 4, "longer than 63");
    ddl_refused(23, 4, "Attempted to call action explode for geats but it's not declared in the DDL");
    failed(24, 4, "invalid_data");
    failed(25, 3, "missing_data");
    assert_eq!(ok(26)["name"], "d2");
    ddl_refused(27, 4, "Cannot validate input dry_run");
}

/// The full path on loopback: `mco rpc` → RabbitMQ (STOMP, 127.0.0.1) →
/// `mcollectived` → the committed agent stub → geats, for define, start
/// and status of a dummy VM.
#[test]
fn mcollective_live_loopback() {
    if let Some(why) = live_mco_missing() {
        return skip("mcollective_live_loopback", &why);
    }
    let env = Env::new();
    let live = LiveMco::start(env.root(), &env.config);
    let d = live.dir.clone();
    let client_cfg = live.client_cfg.clone();
    let rpc = |args: &[&str]| live.rpc(args);
    let def = json!({"vm_type": "dummy", "name": "web1", "ram": 256}).to_string();
    let definition_arg = format!("definition={def}");
    // `definition` is undeclared in the Ruby DDL: mco sends it as a string,
    // which geats parses.
    let (code, r) = rpc(&["geats", "define", "vm_name=web1", &definition_arg]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!((r[0]["statuscode"].clone(), r[0]["data"]["definition"]["ram"].clone()), (json!(0), json!(256)), "{r:#}");
    let (code, r) = rpc(&["geats", "start", "vm_name=web1"]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r[0]["sender"], "node1.test");
    assert_eq!((r[0]["statuscode"].clone(), r[0]["statusmsg"].clone()), (json!(0), json!("OK")));
    assert_eq!(r[0]["data"]["state"], json!(["running", "running"]));
    let (code, r) = rpc(&["geats", "status"]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r[0]["data"]["vms"]["web1"]["state"], json!(["running", "running"]), "{r:#}");
    assert!(r[0]["data"]["status"]["mem_total"].as_u64().unwrap() > 0);
    // A failure: statuscode 1 with geats's message and error code in
    // statusmsg, no data; mco exits 2.
    let (code, r) = rpc(&["geats", "start", "vm_name=nosuch"]);
    assert_eq!((code, r[0]["statuscode"].clone(), r[0]["data"].clone()), (2, json!(1), json!({})), "{r:#}");
    assert!(r[0]["statusmsg"].as_str().unwrap().ends_with("no VM named nosuch (see `geats list`) [not_found]\n"), "{r:#}");
    // The request reached geats with MCollective's envelope: the sender
    // and request id are in the journal.
    let h = cli_ok(&env, &["history", "--json"]);
    assert!(h.contains("ops.client"), "{h}");

    // A real container, where LXC works here: start and status over the wire.
    match crate::common::lxc::missing() {
        Some(why) => skip("mcollective_live_loopback (real container part)", &why),
        None => {
            let name = format!("gt{}m", std::process::id());
            crate::common::lxc::busybox_template(&env.root().join("var/lib/geats/templates"), "busybox");
            let lxc = crate::common::lxc::Containers::new(&env.root().join("var/lib/lxc"), &[&name]);
            env.ok("define", json!({"vm_name": name, "definition": {"template": "busybox", "ram": 64, "storage": [{"name": "root", "type": "dir"}]}}));
            let vm_arg = format!("vm_name={name}");
            let (code, r) = rpc(&["geats", "start", &vm_arg]);
            assert_eq!((code, r[0]["statuscode"].clone(), r[0]["data"]["state"].clone()), (0, json!(0), json!(["running", "running"])), "{r:#}");
            assert_eq!(lxc.lxc_state(&name), "RUNNING");
            let (_, r) = rpc(&["geats", "status"]);
            assert_eq!(r[0]["data"]["vms"][&name]["state"], json!(["running", "running"]), "{r:#}");
            let (code, r) = rpc(&["geats", "stop", &vm_arg]);
            assert_eq!((code, r[0]["data"]["state"].clone()), (0, json!(["stopped", "stopped"])), "{r:#}");
            assert_eq!(lxc.lxc_state(&name), "STOPPED");
        }
    }

    // docs/vagoth.md's `mco rpc` examples, as written.
    let vars = [("PATH", "/usr/bin:/bin".to_string()), ("HOME", d.display().to_string()), ("MCO_CLIENT_CFG", client_cfg.display().to_string())];
    let n = run_doc_console("docs/vagoth.md", &|b| b.contains("mco rpc"), &d, &vars);
    assert_eq!(n, 2);

    live.stop();
}

// ---------------------------------------------------------------- issue 13

/// Python's truth value of a JSON value as a driver decodes it: empty
/// objects, arrays and strings, `null`, `false` and zero are false.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// The one node's reply among a call's results, or why there is none.
fn single(results: &Value) -> Result<&Value, String> {
    results.as_array().and_then(|a| a.first()).ok_or_else(|| "no response received".to_string())
}

/// How Vagoth's stock GeatsMcollective driver judges start, stop,
/// shutdown, reboot, undefine and deprovision, restated: any reply data
/// with content means success; otherwise statuscode 0 means success, and
/// anything else is raised with statusmsg.
fn boolean_reading(results: &Value) -> Result<bool, String> {
    let node = single(results)?;
    if truthy(&node["data"]) {
        return Ok(true);
    }
    match node["statuscode"].as_i64() {
        Some(0) => Ok(true),
        None => Err("no response received".into()),
        Some(_) => Err(node["statusmsg"].as_str().unwrap_or_default().to_string()),
    }
}

/// How the same driver reads define, provision and info: statuscode 0
/// returns the data, anything else is raised with statusmsg.
fn raising_reading(results: &Value) -> Result<Value, String> {
    let node = single(results)?;
    match node["statuscode"].as_i64() {
        Some(0) => Ok(node["data"].clone()),
        _ => Err(node["statusmsg"].as_str().unwrap_or_default().to_string()),
    }
}

/// Keep both cores busy while measuring, as on a loaded hypervisor.
struct CpuLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl CpuLoad {
    fn start(n: usize) -> CpuLoad {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..n)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                    }
                })
            })
            .collect();
        CpuLoad { stop, threads }
    }
}

impl Drop for CpuLoad {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Vagoth's timeouts (its drivers' `mc.timeout`): power actions 10 s,
/// info and status 5 s.
fn vagoth_timeout(action: &str) -> u64 {
    match action {
        "start" | "stop" | "shutdown" | "reboot" => 10,
        "info" | "status" => 5,
        _ => 60,
    }
}

/// Issue 13, acceptance 1-3: through real MCollective (RabbitMQ +
/// mcollectived + the committed agent-ddl/ files), called through
/// MCollective's Ruby client API as Vagoth's GeatsMcollective driver calls
/// it (string keys, the definition as a hash, its timeouts), every failure
/// of start, stop, shutdown, reboot, undefine and deprovision reads as a
/// failure under the driver's "non-empty data is success" rule, and every
/// success as a success; define, provision, info and status raise on
/// failure; info on success carries only the VM's data; and every action
/// answers well within Vagoth's timeouts on a host whose two cores are
/// busy. With LXC, the same for a real container, including a shutdown
/// whose init ignores the halt signal (a failure after shutdown_timeout,
/// the container left running).
#[test]
fn issue_13_vagoth_mcollective_driver_sees_failures() {
    if let Some(why) = live_mco_missing() {
        return skip("issue_13_vagoth_mcollective_driver_sees_failures", &why);
    }
    let lxc_missing = crate::common::lxc::missing();
    // `stubborn`: an LXC type whose containers ignore the halt signal
    // (busybox init rereads inittab on SIGHUP), with a short shutdown_timeout.
    let env = Env::with_config("[vm_types.stubborn]\ndriver = \"lxc\"\nshutdown_timeout = 2\nconfig = { \"lxc.signal.halt\" = \"SIGHUP\" }\n");
    let live = LiveMco::start(env.root(), &env.config);
    let def = |n: &str| dummy_definition(n);
    let c = |action: &str, args: Value| json!([action, args, vagoth_timeout(action)]);
    let calls = json!([
        c("status", json!({})),                                           // 0
        c("define", json!({"vm_name": "vm1", "definition": def("vm1")})),  // 1
        c("provision", json!({"vm_name": "vm2", "definition": def("vm2")})), // 2
        c("start", json!({"vm_name": "vm1"})),                            // 3
        c("start", json!({"vm_name": "vm1"})),                            // 4 already running
        c("info", json!({"vm_name": "vm1"})),                             // 5
        c("reboot", json!({"vm_name": "vm1"})),                           // 6
        c("shutdown", json!({"vm_name": "vm1"})),                         // 7
        c("stop", json!({"vm_name": "vm1"})),                             // 8 already stopped
        c("start", json!({"vm_name": "nosuch"})),                         // 9  not_found
        c("stop", json!({"vm_name": "nosuch"})),                          // 10 not_found
        c("shutdown", json!({"vm_name": "nosuch"})),                      // 11 not_found
        c("reboot", json!({"vm_name": "nosuch"})),                        // 12 not_found
        c("reboot", json!({"vm_name": "vm1"})),                           // 13 invalid_state (stopped)
        c("lock", json!({"vm_name": "vm1"})),                             // 14
        c("undefine", json!({"vm_name": "vm1"})),                         // 15 vm_locked
        c("deprovision", json!({"vm_name": "vm1"})),                      // 16 vm_locked
        c("unlock", json!({"vm_name": "vm1"})),                           // 17
        c("undefine", json!({"vm_name": "vm1"})),                         // 18
        c("status", json!({})),                                           // 19 vm1 kept
        c("deprovision", json!({"vm_name": "vm1"})),                      // 20
        c("undefine", json!({"vm_name": "nosuch"})),                      // 21 unknown: success
        c("deprovision", json!({"vm_name": "nosuch"})),                   // 22 unknown: success
        c("define", json!({"vm_name": "vm3", "definition": {"vm_type": "dummy", "ram": -1}})), // 23 invalid_data
        c("provision", json!({"vm_name": "vm3"})),                        // 24 missing_data
        c("info", json!({"vm_name": "nosuch"})),                          // 25 not_found
        c("start", json!({"vm_name": "vm2"})),                            // 26
        c("undefine", json!({"vm_name": "vm2"})),                         // 27 stops first
        c("deprovision", json!({"vm_name": "vm2"})),                      // 28
    ]);
    let load = CpuLoad::start(2);
    let r = live.api_calls(&calls);
    drop(load);
    let what = |i: usize| format!("call {i} {}: {}", calls[i], r[i].0);
    let success = |i: usize| {
        assert_eq!(boolean_reading(&r[i].0), Ok(true), "{}", what(i));
        assert_eq!(single(&r[i].0).unwrap()["statuscode"], 0, "{}", what(i));
    };
    let failure = |i: usize, errorcode: &str| {
        let e = boolean_reading(&r[i].0).expect_err(&what(i));
        assert!(e.contains(&format!("[{errorcode}]")), "the raised statusmsg names the error: {e}; {}", what(i));
        assert_eq!(single(&r[i].0).unwrap()["statuscode"], 1, "{}", what(i));
    };
    let raises = |i: usize, code: u64, errorcode: &str| {
        let e = raising_reading(&r[i].0).expect_err(&what(i));
        assert!(e.contains(&format!("[{errorcode}]")), "{e}; {}", what(i));
        assert_eq!(single(&r[i].0).unwrap()["statuscode"], code, "{}", what(i));
    };
    let data = |i: usize| {
        let d = raising_reading(&r[i].0).unwrap_or_else(|e| panic!("{e}; {}", what(i)));
        crate::common::schema::check_reply(calls[i][0].as_str().unwrap(), &d);
        d
    };

    assert_eq!(data(0)["vms"], json!({}));
    assert_eq!(data(1)["definition"]["name"], "vm1");
    assert_eq!(data(2)["definition"]["name"], "vm2");
    for i in [3, 4, 6, 7, 8, 14, 17, 18, 20, 21, 22, 26, 27, 28] {
        success(i);
    }
    assert_eq!(single(&r[4].0).unwrap()["data"]["changed"], false);
    for i in [9, 10, 11, 12] {
        failure(i, "not_found");
    }
    failure(13, "invalid_state");
    failure(15, "vm_locked");
    failure(16, "vm_locked");
    // Acceptance 2: info is only the VM's data, as over stdio.
    let info = data(5);
    for k in ["errorcode", "message", "retryable"] {
        assert!(info.get(k).is_none(), "info carries {k}: {info:#}");
    }
    let mut keys: Vec<&String> = info.as_object().unwrap().keys().collect();
    keys.sort();
    env.ok("define", json!({"vm_name": "vm9", "definition": def("vm9")}));
    let stdio = env.ok("info", json!({"vm_name": "vm9"}));
    let mut stdio_keys: Vec<&String> = stdio.as_object().unwrap().keys().collect();
    stdio_keys.sort();
    assert_eq!(keys, stdio_keys, "info through MCollective has the keys of info over stdio");
    let st = data(19);
    assert!(st["vms"].get("vm1").is_none() && st["kept"].get("vm1").is_some(), "{st:#}");
    raises(23, 4, "invalid_data");
    raises(24, 3, "missing_data");
    raises(25, 1, "not_found");
    // mco rpc users: the failure is in statuscode and statusmsg, and mco exits 2.
    let (code, v) = live.rpc(&["geats", "start", "vm_name=nosuch"]);
    assert_eq!(code, 2, "{v:#}");
    assert_eq!(v[0]["statuscode"], 1, "{v:#}");
    assert!(v[0]["statusmsg"].as_str().unwrap_or_default().contains("no VM named nosuch") && v[0]["statusmsg"].as_str().unwrap_or_default().contains("[not_found]"), "{v:#}");

    // Acceptance 3: what each action costs through the bus, both cores busy.
    let mut worst: std::collections::BTreeMap<String, f64> = std::collections::BTreeMap::new();
    for (i, (_, secs)) in r.iter().enumerate() {
        let a = calls[i][0].as_str().unwrap().to_string();
        let w = worst.entry(a).or_insert(0.0);
        *w = w.max(*secs);
    }
    let mut report = String::from("issue 13: worst seconds per action through the bus (dummy VM, both cores busy):\n");
    for (a, secs) in &worst {
        report.push_str(&format!("  {a:<12} {secs:.2} s (Vagoth allows {} s)\n", vagoth_timeout(a)));
        // "Well within": under half of the driver's timeout (measured:
        // a tenth or less; the margin absorbs a host busier than the test).
        assert!(*secs < vagoth_timeout(a) as f64 / 2.0, "{a} took {secs:.2} s through the bus\n{report}");
    }

    // A real container, where LXC works here.
    match lxc_missing {
        Some(why) => skip("issue_13_vagoth_mcollective_driver_sees_failures (real container part)", &why),
        None => {
            let ct = format!("gt{}v", std::process::id());
            let stubborn = format!("gt{}w", std::process::id());
            crate::common::lxc::busybox_template(&env.root().join("var/lib/geats/templates"), "busybox");
            let lxc = crate::common::lxc::Containers::new(&env.root().join("var/lib/lxc"), &[&ct, &stubborn]);
            let lxc_def = |name: &str, vm_type: &str| json!({"name": name, "vm_type": vm_type, "template": "busybox", "ram": 64, "storage": [{"name": "root", "type": "dir"}]});
            let calls = json!([
                c("define", json!({"vm_name": ct, "definition": lxc_def(&ct, "lxc")})),           // 0
                c("start", json!({"vm_name": ct})),                                            // 1
                c("info", json!({"vm_name": ct})),                                             // 2
                c("status", json!({})),                                                        // 3
                c("reboot", json!({"vm_name": ct})),                                           // 4
                c("shutdown", json!({"vm_name": ct})),                                         // 5
                c("start", json!({"vm_name": ct})),                                            // 6
                c("stop", json!({"vm_name": ct})),                                             // 7
                c("define", json!({"vm_name": stubborn, "definition": lxc_def(&stubborn, "stubborn")})), // 8
                c("start", json!({"vm_name": stubborn})),                                      // 9
                c("shutdown", json!({"vm_name": stubborn})),                                   // 10 does not halt
                c("stop", json!({"vm_name": stubborn})),                                       // 11
                c("deprovision", json!({"vm_name": stubborn})),                                // 12
                c("deprovision", json!({"vm_name": ct})),                                      // 13
            ]);
            let (first, rest) = calls.as_array().unwrap().split_at(11);
            let load = CpuLoad::start(2);
            let mut r = live.api_calls(&json!(first));
            // The failed shutdown left the container running.
            let after_shutdown = lxc.lxc_state(&stubborn);
            r.extend(live.api_calls(&json!(rest)));
            drop(load);
            assert_eq!(after_shutdown, "RUNNING", "a shutdown that timed out must not kill");
            let what = |i: usize| format!("call {i} {}: {}", calls[i], r[i].0);
            assert!(raising_reading(&r[0].0).is_ok(), "{}", what(0));
            for i in [1, 4, 5, 6, 7, 9, 11, 12, 13] {
                assert_eq!(boolean_reading(&r[i].0), Ok(true), "{}", what(i));
            }
            assert!(raising_reading(&r[2].0).unwrap()["usage"]["pid"].is_number(), "{}", what(2));
            assert_eq!(raising_reading(&r[3].0).unwrap()["vms"][&ct]["state"], json!(["running", "running"]), "{}", what(3));
            // The stubborn shutdown: a failure after shutdown_timeout, the
            // container still running (stop, call 11, then powered it off).
            let e = boolean_reading(&r[10].0).expect_err(&what(10));
            assert!(e.contains("did not halt within 2 s") && e.contains("use stop"), "{e}");
            assert!(r[10].1 >= 2.0, "shutdown waited shutdown_timeout: {:.2} s", r[10].1);
            report.push_str("issue 13: seconds per action through the bus (LXC busybox container, both cores busy):\n");
            for (i, (_, secs)) in r.iter().enumerate() {
                let a = calls[i][0].as_str().unwrap();
                report.push_str(&format!("  {a:<12} {secs:.2} s{}\n", if i == 10 { " (init ignores the halt signal; shutdown_timeout = 2)" } else { "" }));
                // reboot and shutdown wait for the guest's own halt (busybox
                // init takes seconds); they must still answer before the
                // driver gives up. The rest is geats's and the bus's time.
                let paced_by_guest = ["reboot", "shutdown"].contains(&a);
                let limit = if paced_by_guest { vagoth_timeout(a) as f64 * 0.8 } else { vagoth_timeout(a) as f64 / 2.0 };
                if i != 10 {
                    assert!(*secs < limit, "{a} took {secs:.2} s through the bus\n{report}");
                }
            }
        }
    }
    // status and info raise on failure too: a database that went missing
    // under a VM (vm9's record files remain) fails both with statuscode 1.
    let db = env.root().join("var/lib/geats/geats.db");
    let aside = env.root().join("geats.db.aside");
    std::fs::rename(&db, &aside).unwrap();
    let r = live.api_calls(&json!([c("status", json!({})), c("info", json!({"vm_name": "vm9"}))]));
    std::fs::rename(&aside, &db).unwrap();
    for (results, _) in &r {
        let e = raising_reading(results).expect_err(&results.to_string());
        assert!(e.contains("[database_missing]"), "{e}");
        assert_eq!(single(results).unwrap()["data"], json!({}), "{results}");
    }
    let _ = std::io::Write::write_all(&mut std::io::stderr(), report.as_bytes());
    live.stop();
}
