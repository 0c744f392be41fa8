//! geats under MCollective: its Ruby DDL in MCollective's own loader, every
//! action through MCollective's real agent code path (in Ruby, no
//! middleware), and the full loopback path (RabbitMQ + mcollectived + `mco
//! rpc`). Tests that need Ruby + MCollective or RabbitMQ check at run time
//! and print `SKIPPED ...` when something is missing.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::docs::run_doc_console;
use crate::common::mco::{live_mco_missing, mco_cfg, mco_libdir, mco_missing, our_epmd, Broker};
use crate::common::procs::Guard;
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
        if name != "status" {
            assert_eq!(a["input"]["vm_name"]["optional"], false, "{name}");
        }
        assert!(a["output"].as_array().unwrap().iter().any(|o| o == "errorcode"), "{name}");
    }
    let status = v["actions"].as_array().unwrap().iter().find(|a| a["action"] == "status").unwrap();
    assert!(status["aggregate"].as_array().is_some_and(|a| !a.is_empty()), "status needs a summarize block: {status}");
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

/// The reply data without the keys MCollective pre-filled with nil (every
/// output the DDL declares); `ip` is legitimately null in `info`.
fn non_nil(data: &Value) -> Value {
    let mut m = data.as_object().cloned().unwrap_or_default();
    m.retain(|k, v| !v.is_null() || k == "ip");
    Value::Object(m)
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
        let data = non_nil(&r[i]["data"]);
        crate::common::schema::check_reply(action, &data);
        data
    };
    let failed = |i: usize, code: u64, errorcode: &str| {
        assert_eq!(r[i]["statuscode"], code, "request {i} {}: {}", requests[i], r[i]);
        let msg = r[i]["statusmsg"].as_str().unwrap();
        assert!(msg.starts_with(&format!("Failed to run {cmd}: ")) && msg.contains(&format!("[{errorcode}]")), "request {i}: {msg}");
        // The error object reaches the client as data too.
        assert_eq!(r[i]["data"]["errorcode"], errorcode, "request {i}: {}", r[i]);
        assert!(r[i]["data"]["message"].as_str().is_some_and(|m| !m.is_empty()), "request {i}");
        crate::common::schema::check_error(&json!({
            "errorcode": r[i]["data"]["errorcode"], "message": r[i]["data"]["message"], "retryable": r[i]["data"]["retryable"]}));
    };
    let ddl_refused = |i: usize, code: u64, text: &str| {
        assert_eq!(r[i]["statuscode"], code, "request {i} {}: {}", requests[i], r[i]);
        assert!(r[i]["statusmsg"].as_str().unwrap().contains(text), "request {i}: {}", r[i]);
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
    failed(15, 1, "not_supported");
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
    // DDL refusals never ran geats: nothing in the error keys.
    assert!(r[20]["data"]["errorcode"].is_null());
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
    let d = env.root().join("mco");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("facts.yaml"), "--- {}\n").unwrap();
    let lib = mco_libdir(env.root());
    let mut broker = Broker::start(env.root());
    let stomp = broker.stomp_port;

    let server_cfg = d.join("server.cfg");
    let log = d.join("mcollectived.log");
    std::fs::write(
        &server_cfg,
        mco_cfg(&d, &lib, stomp, &format!(
            "identity = node1.test\nlogfile = {}\nloglevel = debug\ndaemonize = 0\nregisterinterval = 0\nplugin.geats.command = {}\n",
            log.display(),
            bin().display()
        )),
    )
    .unwrap();
    let client_cfg = d.join("client.cfg");
    std::fs::write(&client_cfg, mco_cfg(&d, &lib, stomp, &format!("identity = ops.client\nlogger_type = file\nlogfile = {}\nloglevel = info\n", d.join("client.log").display()))).unwrap();

    // mcollectived passes its whole environment to implemented_by commands.
    let daemon = Command::new("/usr/sbin/mcollectived")
        .arg("--config")
        .arg(&server_cfg)
        .arg("--no-daemonize")
        .env("GEATS_ROOT", env.root())
        .env("GEATS_CONFIG", &env.config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(d.join("mcollectived.out")).unwrap())
        .spawn()
        .unwrap();
    let mut daemon = Guard::new("mcollectived", daemon);
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("Subscribing to /exchange/mcollective_broadcast/geats") && text.contains("Subscribing to /exchange/mcollective_directed/node1.test") {
            break;
        }
        let died = daemon.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
        assert!(died.is_none() && Instant::now() < end, "mcollectived did not subscribe:\n{text}\n{}", std::fs::read_to_string(d.join("mcollectived.out")).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(100));
    }

    let rpc = |args: &[&str]| -> (i32, Value) {
        let o = Command::new("mco")
            .arg("rpc")
            .args(args)
            .arg("--config")
            .arg(&client_cfg)
            .args(["-I", "node1.test", "-j"])
            .env("HOME", &d)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("mco rpc {args:?}: not JSON ({e}): {}", out_text(&o)));
        (o.status.code().unwrap_or(-1), v)
    };
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
    // A failure: statuscode 1 with geats's message; mco exits 2.
    let (code, r) = rpc(&["geats", "start", "vm_name=nosuch"]);
    assert_eq!((code, r[0]["statuscode"].clone(), r[0]["data"]["errorcode"].clone()), (2, json!(1), json!("not_found")), "{r:#}");
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

    daemon.stop(Duration::from_secs(10));
    broker.stop();
    assert!(our_epmd(broker.epmd_port).is_empty(), "epmd left running");
}
