//! geats inside other people's tools: the generated DDLs, MCollective's real
//! agent code path (in Ruby, no middleware) and the full loopback path
//! (RabbitMQ + mcollectived + `mco rpc`), Choria's external-agent protocol,
//! Vagoth's stdio driver over a real sshd, and the CLI's screens.
//!
//! Tests that need Ruby + MCollective, RabbitMQ or sshd check at run time
//! and print `SKIPPED ...` when something is missing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{bin, dummy_definition, run_with_stdin, skip, Env};

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn out_text(o: &std::process::Output) -> String {
    format!("status {:?}\nstdout:\n{}\nstderr:\n{}", o.status, String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

// ---------------------------------------------------------------- DDLs

/// `agent-ddl/` is exactly what `geats ddl` generates from the schemas.
#[test]
fn ddl_files_are_generated_from_the_schemas() {
    let env = Env::new();
    let out_dir = env.root().join("ddl");
    let o = env.cli(&["ddl", "--out", out_dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", out_text(&o));
    let committed = manifest().join("agent-ddl");
    let mut generated = Vec::new();
    for f in geats::ddl::generate().unwrap() {
        let fresh = std::fs::read_to_string(out_dir.join(f.path)).unwrap();
        assert_eq!(fresh, f.text, "{}: the binary and the library disagree", f.path);
        let old = std::fs::read_to_string(committed.join(f.path)).unwrap_or_default();
        assert!(old == fresh, "agent-ddl/{} is stale: run `geats ddl --out agent-ddl/` and commit it", f.path);
        generated.push(f.path.to_string());
    }
    // Nothing else in agent-ddl/ (a stale file would be installed too).
    let mut present = Vec::new();
    let mut stack = vec![committed.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                present.push(e.path().strip_prefix(&committed).unwrap().display().to_string());
            }
        }
    }
    present.sort();
    generated.sort();
    assert_eq!(present, generated);
    // Printing them works too.
    let o = env.cli(&["ddl"]);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("==> geats.json <=="), "{}", out_text(&o));
}

/// Why the Ruby/MCollective tests cannot run here, if they cannot.
fn mco_missing() -> Option<String> {
    let ok = Command::new("ruby")
        .args(["-e", "require 'mcollective'; require 'systemu'"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        None
    } else {
        Some("ruby with the mcollective library is not installed (apt-get install ruby mcollective mcollective-client)".into())
    }
}

/// An MCollective libdir holding the committed agent files, the way an
/// operator installs them: `LIBDIR/mcollective/agent/{geats.ddl,geats.rb,geats/}`.
fn mco_libdir(under: &Path) -> PathBuf {
    let lib = under.join("mcolib");
    let agent = lib.join("mcollective/agent");
    std::fs::create_dir_all(agent.join("geats")).unwrap();
    for f in ["geats.ddl", "geats.rb", "geats/systemu_fix.rb"] {
        std::fs::copy(manifest().join("agent-ddl").join(f), agent.join(f)).unwrap();
    }
    lib
}

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
        if name != "status" && name != "events" {
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

// ---------------------------------------------------------------- Choria

fn fixture_json(rel: &str) -> Value {
    let p = manifest().join("tests/fixtures/choria").join(rel);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

fn validator(schema: &Value) -> jsonschema::Validator {
    jsonschema::options().build(schema).unwrap_or_else(|e| panic!("schema does not compile: {e}"))
}

fn assert_valid(v: &jsonschema::Validator, instance: &Value, what: &str) {
    let errs: Vec<String> = v.iter_errors(instance).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(errs.is_empty(), "{what} is invalid: {errs:#?}\n{instance:#}");
}

/// The Choria JSON DDL validates against Choria's DDL schema, and has what
/// Choria's loader needs beyond the schema.
#[test]
fn choria_ddl_validates_against_choria_schema() {
    let ddl: Value = serde_json::from_str(&std::fs::read_to_string(manifest().join("agent-ddl/geats.json")).unwrap()).unwrap();
    assert_valid(&validator(&fixture_json("ddl_agent.schema.json")), &ddl, "agent-ddl/geats.json");
    // The upstream file itself, when a copy is at hand.
    if let Ok(p) = std::env::var("CHORIA_DDL_SCHEMA") {
        let upstream: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_valid(&validator(&upstream), &ddl, "agent-ddl/geats.json (upstream schema)");
    }
    // The schema is not a rubber stamp: it refuses what Choria refuses.
    let v = validator(&fixture_json("ddl_agent.schema.json"));
    let mut bad = ddl.clone();
    bad["actions"][0]["input"] = json!({"vm_name": {"prompt": "x", "description": "x", "optional": false, "type": "string"}});
    assert!(!v.is_valid(&bad), "a string input without validation/maxlength must be refused");
    let mut bad = ddl.clone();
    bad["metadata"]["timeout"] = json!(1);
    assert!(!v.is_valid(&bad));

    assert_eq!(ddl["metadata"]["provider"], "external");
    assert_eq!(ddl["metadata"]["name"], "geats");
    assert!(ddl["metadata"]["timeout"].as_u64().unwrap() >= 300);
    let actions = ddl["actions"].as_array().unwrap();
    let names: Vec<&str> = actions.iter().filter_map(|a| a["action"].as_str()).collect();
    assert_eq!(names, geats::request::Action::NAMES.to_vec());
    for a in actions {
        let name = a["action"].as_str().unwrap();
        // Choria rejects undeclared inputs: every key of the request schema
        // but process_results (which Choria's validator skips) is declared.
        let req: Value = serde_json::from_str(geats::schema::source(&format!("request/{name}.json")).unwrap()).unwrap();
        let mut want: Vec<&String> = req["properties"].as_object().unwrap().keys().filter(|k| *k != "process_results").collect();
        let mut have: Vec<&String> = a["input"].as_object().unwrap().keys().collect();
        want.sort();
        have.sort();
        assert_eq!(have, want, "{name}");
        for (k, i) in a["input"].as_object().unwrap() {
            // Choria skips `validation` for a string with maxlength 0.
            if i["type"] == "string" {
                assert!(i["maxlength"].as_u64().unwrap() > 0, "{name}.{k}");
            }
        }
    }
    let define = actions.iter().find(|a| a["action"] == "define").unwrap();
    assert_eq!(define["input"]["definition"]["type"], "hash");
    assert_eq!(define["input"]["definition"]["optional"], false);
}

/// A geats root reachable under Choria's bare environment: the config is
/// the file at CHORIA_EXTERNAL_CONFIG (`<dir>/plugin.d/geats`, no suffix).
struct ChoriaNode {
    env: Env,
    config: PathBuf,
}

impl ChoriaNode {
    fn new() -> ChoriaNode {
        let env = Env::new();
        let plugin_d = env.root().join("choria/plugin.d");
        std::fs::create_dir_all(&plugin_d).unwrap();
        let config = plugin_d.join("geats");
        std::fs::write(&config, format!("root = {:?}\n", env.root().display().to_string())).unwrap();
        ChoriaNode { env, config }
    }

    /// Run one request the way Choria does; returns (exit status, reply
    /// file, stderr, elapsed).
    fn run(&self, request: &Value, protocol: &str) -> (i32, String, String, Duration) {
        self.run_as(request, protocol, false)
    }

    /// As [`ChoriaNode::run`]; `agent_word`: run `geats agent REQ REPLY
    /// PROTO` instead of Choria's `geats REQ REPLY PROTO`.
    fn run_as(&self, request: &Value, protocol: &str, agent_word: bool) -> (i32, String, String, Duration) {
        let dir = self.env.root();
        let req = dir.join("choria-request");
        let rep = dir.join("choria-reply");
        let facts = dir.join("choria-facts");
        std::fs::write(&req, request.to_string()).unwrap();
        std::fs::write(&rep, "").unwrap();
        std::fs::write(&facts, "{}").unwrap();
        let mut c = Command::new(bin());
        // Choria replaces the environment: only PATH and CHORIA_EXTERNAL_*.
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CHORIA_EXTERNAL_REQUEST", &req)
            .env("CHORIA_EXTERNAL_REPLY", &rep)
            .env("CHORIA_EXTERNAL_PROTOCOL", protocol)
            .env("CHORIA_EXTERNAL_CONFIG", &self.config)
            .env("CHORIA_EXTERNAL_FACTS", &facts)
            .current_dir(std::env::temp_dir());
        if agent_word {
            c.arg("agent");
        }
        // argv[3] names the rpc protocol even for the activation check.
        c.arg(&req).arg(&rep);
        c.arg("io.choria.mcorpc.external.v1.rpc_request").stdin(Stdio::null());
        let t = Instant::now();
        let o = c.output().unwrap();
        let took = t.elapsed();
        (o.status.code().unwrap_or(-1), std::fs::read_to_string(&rep).unwrap_or_default(), String::from_utf8_lossy(&o.stderr).into_owned(), took)
    }
}

/// Is `data` acceptable to Choria's validator for `action` under our JSON
/// DDL (declared inputs only, required present, types and patterns)?
fn choria_accepts(ddl: &Value, action: &str, data: &Value) -> bool {
    let Some(a) = ddl["actions"].as_array().unwrap().iter().find(|a| a["action"] == action) else { return false };
    let inputs = a["input"].as_object().unwrap();
    let data = data.as_object().unwrap();
    for (k, v) in data {
        if k == "process_results" {
            continue;
        }
        let Some(spec) = inputs.get(k) else { return false };
        let ok = match spec["type"].as_str().unwrap() {
            "string" => v.as_str().is_some_and(|s| {
                s.chars().count() as u64 <= spec["maxlength"].as_u64().unwrap()
                    && regex_lite::Regex::new(spec["validation"].as_str().unwrap()).unwrap().is_match(s)
            }),
            "boolean" => v.is_boolean(),
            "hash" => v.is_object(),
            other => panic!("unexpected input type {other}"),
        };
        if !ok {
            return false;
        }
    }
    inputs.iter().all(|(k, spec)| spec["optional"] == true || data.contains_key(k))
}

/// Requests in Choria's published format, in a bare environment, answered
/// in Choria's reply format with exit 0.
#[test]
fn choria_protocol_fixtures() {
    let node = ChoriaNode::new();
    let reply_schema = validator(&fixture_json("rpc_reply.schema.json"));
    let ddl: Value = serde_json::from_str(&std::fs::read_to_string(manifest().join("agent-ddl/geats.json")).unwrap()).unwrap();
    let dir = manifest().join("tests/fixtures/choria/requests");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.path()).collect();
    files.sort();
    let mut replies = std::collections::BTreeMap::new();
    for f in &files {
        let name = f.file_stem().unwrap().to_string_lossy().into_owned();
        let req: Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
        for k in ["$schema", "protocol", "agent", "action", "requestid", "senderid", "callerid", "collective", "ttl", "msgtime", "data"] {
            assert!(req.get(k).is_some(), "{name}: fixture lacks {k}");
        }
        let (code, text, stderr, _) = node.run(&req, geats::agent::CHORIA_RPC);
        assert_eq!(code, 0, "{name}: Choria treats any non-zero exit as a crash; stderr: {stderr}");
        let reply: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: reply is not JSON ({e}): {text:?}"));
        assert_valid(&reply_schema, &reply, &format!("{name} reply"));
        let action = req["action"].as_str().unwrap();
        if reply["statuscode"] == 0 {
            assert_eq!(reply["statusmsg"], "OK", "{name}");
            crate::common::schema::check_reply(action, &reply["data"]);
        } else {
            crate::common::schema::check_error(&reply["data"]);
            assert_eq!(reply["statusmsg"], reply["data"]["message"], "{name}");
        }
        let accepted = choria_accepts(&ddl, action, &req["data"]);
        replies.insert(name, (reply, accepted));
    }
    let code = |n: &str| replies[n].0["statuscode"].as_u64().unwrap();
    let data = |n: &str| replies[n].0["data"].clone();
    let passes = |n: &str| replies[n].1;
    assert_eq!(data("01_status_empty")["vms"], json!({}));
    assert_eq!(data("02_define_hash")["definition"]["name"], "web1");
    assert_eq!(data("04_start")["state"], json!(["running", "running"]));
    assert_eq!((data("04_start")["changed"].clone(), data("05_start_again")["changed"].clone()), (json!(true), json!(false)));
    assert_eq!(data("06_status")["vms"]["web1"]["state"], json!(["running", "running"]));
    assert_eq!(data("06_status")["vms"]["web2"]["definition"]["name"], "web2");
    assert_eq!(data("07_info")["name"], "web1");
    assert_eq!(data("09_shutdown_dry_run")["dry_run"], true);
    assert_eq!(data("10_shutdown")["state"], json!(["stopped", "stopped"]));
    assert_eq!(data("11_lock")["locked"], true);
    assert_eq!((code("12_deprovision_locked"), data("12_deprovision_locked")["errorcode"].clone()), (1, json!("vm_locked")));
    assert_eq!((code("14_migrate"), data("14_migrate")["errorcode"].clone()), (1, json!("not_supported")));
    assert_eq!(data("16_undefine")["changed"], true);
    assert_eq!(data("18_provision")["definition"]["name"], "web3");
    assert_eq!((code("19_start_unknown"), data("19_start_unknown")["errorcode"].clone()), (1, json!("not_found")));
    // What Choria's own DDL validation would stop first (statuscode 1 or
    // 2 there) geats refuses too, with its own class.
    assert_eq!(code("20_start_bad_name"), 4);
    assert_eq!(code("21_define_missing_definition"), 3);
    assert_eq!(code("22_unknown_action"), 2);
    for n in replies.keys() {
        let refused_by_choria = ["20_start_bad_name", "21_define_missing_definition", "22_unknown_action"].contains(&n.as_str());
        assert_eq!(passes(n), !refused_by_choria, "{n}: does Choria's validator let it through under agent-ddl/geats.json?");
    }
    // `geats agent REQ REPLY PROTO` is the same agent.
    let req = fixture_json("requests/06_status.json");
    let (code, text, _, _) = node.run_as(&req, geats::agent::CHORIA_RPC, true);
    let reply: Value = serde_json::from_str(&text).unwrap();
    assert_eq!((code, reply["statuscode"].clone(), reply["data"]["vms"]["web2"]["definition"]["name"].clone()), (0, json!(0), json!("web2")));
    // The caller (AAA-verified in Choria) and request id reach the journal.
    let h = node.env.cli(&["history", "--json"]);
    let text = String::from_utf8_lossy(&h.stdout);
    assert!(text.contains("choria=rip.mcollective") && text.contains("034c527089f746248822ada8a145f403"), "{}", out_text(&h));
}

/// Choria's activation check: `{"activate": true}` well within 2 s, in a
/// bare environment, whatever argv[3] says.
#[test]
fn choria_activation_check() {
    let node = ChoriaNode::new();
    let schema = validator(&fixture_json("activation_reply.schema.json"));
    let req = json!({"$schema": "https://choria.io/schemas/mcorpc/external/v1/activation_request.json",
                     "protocol": geats::agent::CHORIA_ACTIVATION, "agent": "geats"});
    let (code, text, stderr, took) = node.run(&req, geats::agent::CHORIA_ACTIVATION);
    assert_eq!(code, 0, "stderr: {stderr}");
    let reply: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    assert_valid(&schema, &reply, "activation reply");
    // The dummy VM type is always available.
    assert_eq!(reply, json!({"activate": true}));
    assert!(took < Duration::from_secs(2), "activation took {took:?}; Choria allows 2 s");
    let (code, text, _, _) = node.run_as(&req, geats::agent::CHORIA_ACTIVATION, true);
    assert_eq!((code, serde_json::from_str::<Value>(&text).unwrap()), (0, json!({"activate": true})), "geats agent REQ REPLY PROTO");
    // A broken config says no instead of crashing.
    std::fs::write(&node.config, "this is = = not toml\n").unwrap();
    let (code, text, _, _) = node.run(&req, geats::agent::CHORIA_ACTIVATION);
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), json!({"activate": false}));
}

// ---------------------------------------------------------------- processes

/// A process the test started; killed by its pid and reaped on drop, so
/// nothing is left running when the test fails.
struct Guard {
    name: &'static str,
    child: Option<Child>,
}

impl Guard {
    fn new(name: &'static str, child: Child) -> Guard {
        Guard { name, child: Some(child) }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// SIGTERM, then SIGKILL after `grace`.
    fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else { return };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let end = Instant::now() + grace;
        while Instant::now() < end {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} (pid {}) ignored SIGTERM; killing it", self.name, child.id());
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// A free TCP port on 127.0.0.1 (free when asked; good enough for a test).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Wait until something accepts on 127.0.0.1:port.
fn wait_port(port: u16, timeout: Duration, guard: &mut Guard) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        if let Some(c) = guard.child.as_mut() {
            if let Ok(Some(st)) = c.try_wait() {
                eprintln!("{} exited early: {st}", guard.name);
                return false;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Paths that go into a remote shell command line must need no quoting.
fn shell_safe(p: &Path) -> String {
    let s = p.display().to_string();
    assert!(s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c)), "unsafe path for a remote command: {s:?}");
    s
}

// ---------------------------------------------------------------- Vagoth

/// An sshd on 127.0.0.1 with its own host key, config and authorized key,
/// all under `dir`.
struct Sshd {
    guard: Guard,
    port: u16,
    key: PathBuf,
    known_hosts: PathBuf,
}

fn sshd_missing() -> Option<String> {
    if !crate::common::is_root() {
        return Some("needs root (sshd logs in as root)".into());
    }
    for tool in ["/usr/sbin/sshd", "/usr/bin/ssh", "/usr/bin/ssh-keygen"] {
        if !Path::new(tool).is_file() {
            return Some(format!("{tool} is missing (apt-get install openssh-server openssh-client)"));
        }
    }
    None
}

fn keygen(path: &Path) {
    let o = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "geats-test", "-f"]).arg(path).output().unwrap();
    assert!(o.status.success(), "ssh-keygen: {}", out_text(&o));
}

impl Sshd {
    fn start(dir: &Path) -> Sshd {
        Sshd::start_with(dir, "")
    }

    /// Start with extra sshd_config lines.
    fn start_with(dir: &Path, extra: &str) -> Sshd {
        let d = dir.join("sshd");
        std::fs::create_dir_all(&d).unwrap();
        keygen(&d.join("host_key"));
        keygen(&d.join("client_key"));
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
        // sshd insists on its privilege separation directory.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let port = free_port();
        let config = d.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nAuthorizedKeysFile {ak}\nPidFile {pf}\n\
                 PermitRootLogin prohibit-password\nPubkeyAuthentication yes\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPrintMotd no\nLogLevel VERBOSE\n{extra}",
                hk = d.join("host_key").display(),
                ak = d.join("authorized_keys").display(),
                pf = d.join("sshd.pid").display(),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(d.join("sshd.log")).unwrap();
        // -D: stay in the foreground, so the child's pid is sshd's.
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut guard = Guard::new("sshd", child);
        let up = wait_port(port, Duration::from_secs(10), &mut guard);
        assert!(up, "sshd did not listen on {port}: {}", std::fs::read_to_string(d.join("sshd.log")).unwrap_or_default());
        Sshd { guard, port, key: d.join("client_key"), known_hosts: d.join("known_hosts") }
    }

    /// `ssh root@127.0.0.1 REMOTE` with `input` on stdin.
    fn run(&self, remote: &str, input: &[u8]) -> std::process::Output {
        let mut c = Command::new("ssh");
        c.args(["-F", "/dev/null", "-p", &self.port.to_string(), "-i"])
            .arg(&self.key)
            .args(["-o", "StrictHostKeyChecking=no", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .args(["root@127.0.0.1", remote]);
        run_with_stdin(c, input)
    }
}

/// What Vagoth's GeatsLocal driver does with one call: one JSON object in,
/// read stdout to the end, non-zero exit = crash, else exactly one JSON
/// object: `data` on success, `"errorcode: message"` on failure.
fn vagoth_call(run: &dyn Fn(&[u8]) -> std::process::Output, action: &str, data: Value) -> Result<Value, String> {
    let req = json!({"action": action, "data": data});
    let o = run(req.to_string().as_bytes());
    if !o.status.success() {
        return Err(format!("geats_jsonagent exited with {:?}; stderr: {}", o.status.code(), String::from_utf8_lossy(&o.stderr)));
    }
    let text = String::from_utf8_lossy(&o.stdout);
    let mut de = serde_json::Deserializer::from_str(&text).into_iter::<Value>();
    let v = de.next().unwrap_or_else(|| panic!("{action}: empty stdout")).unwrap_or_else(|e| panic!("{action}: stdout is not JSON ({e}): {text}"));
    assert!(de.next().is_none(), "{action}: more than one JSON value on stdout: {text}");
    assert!(v.is_object(), "{action}: not an object: {text}");
    if v["success"] == true {
        Ok(v["data"].clone())
    } else {
        Err(format!("{}: {}", v["errorcode"].as_str().unwrap_or("undefined"), v["message"].as_str().unwrap_or("check logs")))
    }
}

/// What the Vagoth monitor reads from `status`: `vms` keyed by name, each
/// with `definition.name` and a `state` that unpacks into two values; the
/// host figures flat.
fn check_vagoth_status(s: &Value) {
    for (name, vm) in s["vms"].as_object().expect("vms is an object") {
        assert_eq!(vm["definition"]["name"], name.as_str(), "vms.{name}.definition.name");
        let st = vm["state"].as_array().expect("state is an array");
        assert_eq!(st.len(), 2, "vms.{name}.state must unpack into (vm_state, vm_target_state): {st:?}");
        assert!(st.iter().all(Value::is_string));
    }
    for (k, v) in s["status"].as_object().expect("status is an object") {
        let flat = v.is_number() || v.is_string() || v.as_array().is_some_and(|a| a.len() <= 3 && a.iter().all(Value::is_number));
        assert!(flat, "status.{k} is not flat: {v}");
    }
}

/// Every action the GeatsLocal driver sends, in the order a VM's life
/// needs them, through `run`.
fn vagoth_lifecycle(run: &dyn Fn(&[u8]) -> std::process::Output) {
    let call = |a: &str, d: Value| vagoth_call(run, a, d);
    let s = call("status", json!({})).unwrap();
    check_vagoth_status(&s);
    let def = dummy_definition("vm1");
    let d = call("define", json!({"vm_name": "vm1", "definition": def})).unwrap();
    assert_eq!(d["definition"]["name"], "vm1");
    let d = call("provision", json!({"vm_name": "vm2", "definition": dummy_definition("vm2")})).unwrap();
    assert_eq!(d["definition"]["name"], "vm2");
    call("start", json!({"vm_name": "vm1"})).unwrap();
    let s = call("status", json!({})).unwrap();
    check_vagoth_status(&s);
    assert_eq!(s["vms"]["vm1"]["state"], json!(["running", "running"]));
    assert_eq!(s["vms"]["vm2"]["state"][0], "stopped");
    let info = call("info", json!({"vm_name": "vm1"})).unwrap();
    assert!(info.is_object(), "the driver adds `node` to info's object");
    assert_eq!(info["definition"]["name"], "vm1");
    assert_eq!(info["state"].as_array().map(Vec::len), Some(2));
    call("reboot", json!({"vm_name": "vm1"})).unwrap();
    call("shutdown", json!({"vm_name": "vm1"})).unwrap();
    call("start", json!({"vm_name": "vm1"})).unwrap();
    call("stop", json!({"vm_name": "vm1"})).unwrap();
    call("undefine", json!({"vm_name": "vm1"})).unwrap();
    call("deprovision", json!({"vm_name": "vm1"})).unwrap();
    call("deprovision", json!({"vm_name": "vm2"})).unwrap();
    assert_eq!(call("status", json!({})).unwrap()["vms"], json!({}));
    // A failure is an envelope with exit 0: the driver raises its message.
    let e = call("start", json!({"vm_name": "vm1"})).unwrap_err();
    assert!(e.starts_with("not_found: "), "{e}");
    let e = call("define", json!({"vm_name": "bad/name", "definition": def})).unwrap_err();
    assert!(e.starts_with("invalid_data: "), "{e}");
}

/// The stdio agent through a real sshd on loopback, as Vagoth's SSH
/// transport runs it: `ssh root@host geats agent --stdio`, and
/// `ssh root@host geats_jsonagent`.
#[test]
fn vagoth_over_ssh() {
    if let Some(why) = sshd_missing() {
        return skip("vagoth_over_ssh", &why);
    }
    let env = Env::new();
    let sshd = Sshd::start(env.root());
    let vars = format!("GEATS_ROOT={} GEATS_CONFIG={}", shell_safe(env.root()), shell_safe(&env.config));
    let remote = format!("env {vars} {} agent --stdio", shell_safe(&bin()));
    vagoth_lifecycle(&|input| sshd.run(&remote, input));

    // The name the GeatsLocal driver runs, found on the remote PATH.
    let link_dir = env.root().join("bin");
    std::fs::create_dir_all(&link_dir).unwrap();
    std::os::unix::fs::symlink(bin(), link_dir.join("geats_jsonagent")).unwrap();
    let remote = format!("env PATH={}:/usr/bin:/bin {vars} geats_jsonagent", shell_safe(&link_dir));
    let s = vagoth_call(&|input| sshd.run(&remote, input), "status", json!({})).unwrap();
    check_vagoth_status(&s);
    let mut sshd = sshd;
    eprintln!("stopping sshd pid {}", sshd.guard.pid());
    sshd.guard.stop(Duration::from_secs(5));
}

/// `geats_jsonagent` (a symlink to geats) behaves as `geats agent --stdio`,
/// locally, as GeatsLocal runs it (found on PATH, no arguments).
#[test]
fn vagoth_geats_jsonagent_symlink() {
    let env = Env::new();
    let link_dir = env.root().join("bin");
    std::fs::create_dir_all(&link_dir).unwrap();
    let link = link_dir.join("geats_jsonagent");
    std::os::unix::fs::symlink(bin(), &link).unwrap();
    let run = |input: &[u8]| {
        let mut c = Command::new("geats_jsonagent");
        c.env_clear()
            .env("PATH", format!("{}:/usr/bin:/bin", link_dir.display()))
            .env("GEATS_ROOT", env.root())
            .env("GEATS_CONFIG", &env.config);
        run_with_stdin(c, input)
    };
    vagoth_lifecycle(&run);
    // Byte for byte what `geats agent --stdio` answers.
    let req = br#"{"action": "info", "data": {"vm_name": "nosuch"}}"#;
    let a = run(req);
    let mut c = env.cmd();
    c.args(["agent", "--stdio"]);
    let b = run_with_stdin(c, req);
    assert_eq!((a.status.code(), &a.stdout), (b.status.code(), &b.stdout));
}

// ---------------------------------------------------------------- CLI

fn cli_ok(env: &Env, args: &[&str]) -> String {
    let o = env.cli(args);
    assert!(o.status.success(), "geats {args:?}: {}", out_text(&o));
    let text = String::from_utf8(o.stdout).unwrap();
    // No colour: stdout here is a pipe, and geats never colours anyway.
    assert!(!text.contains('\u{1b}'), "escape sequence in `geats {args:?}`: {text:?}");
    text
}

/// A root with a running VM, a locked stopped one and one with a dir volume.
fn cli_env() -> Env {
    let env = Env::new();
    let web1 = json!({"vm_type": "dummy", "name": "web1", "description": "Front end", "ram": 512, "cpus": 2, "template": "debian12",
        "network": [{"name": "eth0", "bridge": "br0", "ipaddr": "10.0.0.5/24", "gateway": "10.0.0.1"}],
        "storage": [{"name": "root", "type": "dir"}]});
    env.ok("define", json!({"vm_name": "web1", "definition": web1}));
    env.ok("start", json!({"vm_name": "web1"}));
    env.ok("define", json!({"vm_name": "db1", "definition": dummy_definition("db1")}));
    env.ok("lock", json!({"vm_name": "db1"}));
    env
}

/// Filters for the screens: the temp root, sizes that depend on the host's
/// filesystem, and (with `host`) the host's own figures.
fn snapshot_settings(env: &Env, host: bool) -> insta::Settings {
    let mut settings = insta::Settings::clone_current();
    settings.add_filter(&regex_lite::escape(&env.root().display().to_string()), "[ROOT]");
    settings.add_filter(r"used [0-9.]+[BKMG] of", "used [SIZE] of");
    if host {
        settings.add_filter(r"(?m)^(Host|CPUs|Load|Swap):(\s+).*$", "$1:$2[HOST]");
        settings.add_filter(r"(?m)^Memory:(\s+).* total, .* used, .* free;", "Memory:$1[HOST] total, [HOST] used, [HOST] free;");
        settings.add_filter(r"(?m)^Storage:(\s+)(\S+): .* free of .*$", "Storage:$1$2: [HOST] free of [HOST]");
    }
    settings
}

/// The screens of `geats list`, `geats info` and `geats status`.
#[test]
fn cli_screens() {
    let env = cli_env();
    snapshot_settings(&env, false).bind(|| {
        insta::assert_snapshot!("cli_list", cli_ok(&env, &["list"]));
        insta::assert_snapshot!("cli_info", cli_ok(&env, &["info", "web1"]));
        insta::assert_snapshot!("cli_info_locked", cli_ok(&env, &["info", "db1"]));
        insta::assert_snapshot!("cli_start_again", cli_ok(&env, &["start", "web1"]));
        insta::assert_snapshot!("cli_stop_dry_run", cli_ok(&env, &["stop", "web1", "--dry-run"]));
    });
    snapshot_settings(&env, true).bind(|| {
        insta::assert_snapshot!("cli_status", cli_ok(&env, &["status"]));
    });
    // NO_COLOR changes nothing (there is no colour to turn off).
    let mut c = env.cmd();
    c.env("NO_COLOR", "1").arg("list");
    let o = run_with_stdin(c, b"");
    assert_eq!(String::from_utf8(o.stdout).unwrap(), cli_ok(&env, &["list"]));
}

/// `--json` wherever a table is printed, with the same facts as the table.
#[test]
fn cli_json_everywhere() {
    let env = cli_env();
    let list: Value = serde_json::from_str(&cli_ok(&env, &["list", "--json"])).unwrap();
    let rows = list.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let web1 = rows.iter().find(|r| r["name"] == "web1").unwrap();
    assert_eq!((web1["state"].clone(), web1["locked"].clone(), web1["ram"].clone()), (json!(["running", "running"]), json!(false), json!(512)));
    assert_eq!(rows.iter().find(|r| r["name"] == "db1").unwrap()["locked"], true);
    let info: Value = serde_json::from_str(&cli_ok(&env, &["info", "web1", "--json"])).unwrap();
    crate::common::schema::check_reply("info", &info);
    let status: Value = serde_json::from_str(&cli_ok(&env, &["status", "--json"])).unwrap();
    crate::common::schema::check_reply("status", &status);
    let history: Value = serde_json::from_str(&cli_ok(&env, &["history", "--json"])).unwrap();
    assert!(history.as_array().unwrap().len() >= 4);
    let templates: Value = serde_json::from_str(&cli_ok(&env, &["templates", "--json"])).unwrap();
    assert!(templates.is_array());
    let start: Value = serde_json::from_str(&cli_ok(&env, &["start", "web1", "--json"])).unwrap();
    crate::common::schema::check_reply("start", &start);
}

/// Exit codes of the CLI are the documented classes.
#[test]
fn cli_exit_codes() {
    let env = cli_env();
    let code = |args: &[&str]| env.cli(args).status.code();
    assert_eq!(code(&["info", "nosuch"]), Some(1));
    assert_eq!(code(&["undefine", "db1"]), Some(1)); // locked
    assert_eq!(code(&["start", "bad/name"]), Some(4));
    assert_eq!(code(&["migrate", "web1", "host2"]), Some(1));
    let o = env.cli(&["info", "nosuch"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("[not_found]"), "{}", out_text(&o));
    // The man page documents them.
    let man = cli_ok(&env, &["man"]);
    for line in geats::cli::EXIT_CODES.lines() {
        let (c, text) = line.split_once("  ").unwrap();
        assert!(man.contains(&format!("\\fB{c}\\fR")) && man.contains(&text.replace('-', "\\-")), "man page lacks exit code {c}");
    }
}

/// `geats completions bash` is a script bash accepts; `geats man` is roff.
#[test]
fn cli_completions_and_man() {
    let env = Env::new();
    let script = cli_ok(&env, &["completions", "bash"]);
    assert!(script.contains("complete -F _geats") && script.contains("provision"), "{script}");
    let path = env.root().join("geats.bash");
    std::fs::write(&path, &script).unwrap();
    let o = Command::new("bash").arg("-c").arg(r#"source "$1" && complete -p geats"#).arg("bash").arg(&path).output().unwrap();
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("_geats"), "{}", out_text(&o));
    for shell in ["zsh", "fish"] {
        assert!(!cli_ok(&env, &["completions", shell]).is_empty());
    }
    assert_eq!(env.cli(&["completions", "tcsh"]).status.code(), Some(2), "clap refuses an unknown shell");
    let man = cli_ok(&env, &["man"]);
    assert!(man.contains(".TH geats 1") && man.contains(".SH SYNOPSIS") && man.contains(".SH \"EXIT STATUS\""), "{man}");
    for cmd in ["list", "provision", "agent", "ddl", "completions"] {
        assert!(man.contains(&format!("geats\\-{cmd}")) || man.contains(cmd), "man page lacks {cmd}");
    }
    // groff renders it without warnings where groff is installed.
    if Path::new("/usr/bin/groff").is_file() {
        let mut c = Command::new("groff");
        c.args(["-man", "-Tutf8", "-ww", "-z"]);
        let o = run_with_stdin(c, man.as_bytes());
        assert!(o.status.success() && o.stderr.is_empty(), "{}", out_text(&o));
    }
}

// ---------------------------------------------------------------- MCollective, live

/// Why the loopback MCollective path cannot run here, if it cannot.
fn live_mco_missing() -> Option<String> {
    if let Some(why) = mco_missing() {
        return Some(why);
    }
    if !crate::common::is_root() {
        return Some("needs root (the broker and mcollectived run as the test's user, the agent as root)".into());
    }
    for tool in ["/usr/lib/rabbitmq/bin/rabbitmq-server", "/usr/lib/rabbitmq/bin/rabbitmqctl", "/usr/sbin/mcollectived", "/usr/bin/mco"] {
        if !Path::new(tool).is_file() {
            return Some(format!("{tool} is missing (apt-get install rabbitmq-server mcollective mcollective-client)"));
        }
    }
    None
}

/// A pid the test caused to exist but did not spawn (the Erlang VM behind
/// rabbitmq-server's shell, its epmd): SIGTERM, then SIGKILL.
fn kill_pid(name: &str, pid: i32) {
    use nix::sys::signal::{kill, Signal};
    let p = nix::unistd::Pid::from_raw(pid);
    if kill(p, None).is_err() {
        return;
    }
    let _ = kill(p, Signal::SIGTERM);
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(50));
        if kill(p, None).is_err() || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z ")) {
            return;
        }
    }
    eprintln!("{name} (pid {pid}) ignored SIGTERM; killing it");
    let _ = kill(p, Signal::SIGKILL);
}

/// The epmd that our broker started (`epmd -daemon`, reparented to init):
/// the process named epmd whose environment holds our ERL_EPMD_PORT.
fn our_epmd(port: u16) -> Vec<i32> {
    let want = format!("ERL_EPMD_PORT={port}");
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        if std::fs::read_to_string(e.path().join("comm")).map(|c| c.trim() == "epmd").unwrap_or(false) {
            let env = std::fs::read(e.path().join("environ")).unwrap_or_default();
            if env.split(|b| *b == 0).any(|v| v == want.as_bytes()) {
                out.push(pid);
            }
        }
    }
    out
}

/// A RabbitMQ broker with STOMP on 127.0.0.1, all of it (node name, ports,
/// epmd, cookie, data) private to the test directory.
struct Broker {
    shell: Guard,
    pid_file: PathBuf,
    epmd_port: u16,
    stomp_port: u16,
}

impl Broker {
    fn start(dir: &Path) -> Broker {
        let r = dir.join("rmq");
        for d in ["home", "mnesia", "log"] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        let (amqp, stomp, dist, epmd) = (free_port(), free_port(), free_port(), free_port());
        std::fs::write(
            r.join("definitions.json"),
            json!({
                "users": [{"name": "mcollective", "password": "marionette", "tags": "administrator"}],
                "vhosts": [{"name": "/mcollective"}],
                "permissions": [{"user": "mcollective", "vhost": "/mcollective", "configure": ".*", "write": ".*", "read": ".*"}],
                "exchanges": [
                    {"name": "mcollective_broadcast", "vhost": "/mcollective", "type": "topic", "durable": true, "auto_delete": false, "internal": false, "arguments": {}},
                    {"name": "mcollective_directed", "vhost": "/mcollective", "type": "direct", "durable": true, "auto_delete": false, "internal": false, "arguments": {}}
                ]
            })
            .to_string(),
        )
        .unwrap();
        std::fs::write(
            r.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.default = 127.0.0.1:{amqp}\nstomp.listeners.tcp.1 = 127.0.0.1:{stomp}\nloopback_users = none\n\
                 definitions.import_backend = local_filesystem\ndefinitions.local.path = {}\n\
                 log.console = true\nlog.console.level = warning\nlog.file = false\n",
                r.join("definitions.json").display()
            ),
        )
        .unwrap();
        std::fs::write(r.join("enabled_plugins"), "[rabbitmq_stomp].\n").unwrap();
        let p = |s: &str| r.join(s).display().to_string();
        let env: Vec<(String, String)> = [
            ("HOME", p("home")),
            ("RABBITMQ_NODENAME", format!("geatstest{}@localhost", std::process::id())),
            ("RABBITMQ_DIST_PORT", dist.to_string()),
            ("ERL_EPMD_PORT", epmd.to_string()),
            ("ERL_EPMD_ADDRESS", "127.0.0.1".into()),
            ("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", "-kernel inet_dist_use_interface {127,0,0,1}".into()),
            ("RABBITMQ_CONFIG_FILE", p("rabbitmq.conf")),
            ("RABBITMQ_MNESIA_BASE", p("mnesia")),
            ("RABBITMQ_LOG_BASE", p("log")),
            ("RABBITMQ_PID_FILE", p("rabbit.pid")),
            ("RABBITMQ_ENABLED_PLUGINS_FILE", p("enabled_plugins")),
            ("RABBITMQ_ENABLED_PLUGINS", "rabbitmq_stomp".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let out = std::fs::File::create(r.join("server.out")).unwrap();
        let child = Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(&r)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let mut b = Broker { shell: Guard::new("rabbitmq-server", child), pid_file: r.join("rabbit.pid"), epmd_port: epmd, stomp_port: stomp };
        let up = wait_port(stomp, Duration::from_secs(90), &mut b.shell);
        assert!(up, "RabbitMQ did not open STOMP on {stomp}:\n{}", std::fs::read_to_string(r.join("server.out")).unwrap_or_default());
        b
    }

    fn stop(&mut self) {
        let beam = std::fs::read_to_string(&self.pid_file).ok().and_then(|s| s.trim().parse::<i32>().ok());
        // rabbitmq-server's shell turns SIGTERM into a clean broker stop.
        self.shell.stop(Duration::from_secs(30));
        if let Some(pid) = beam {
            kill_pid("beam (rabbitmq)", pid);
        }
        for pid in our_epmd(self.epmd_port) {
            kill_pid("epmd", pid);
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

fn mco_cfg(dir: &Path, lib: &Path, stomp: u16, extra: &str) -> String {
    format!(
        "main_collective = mcollective\ncollectives = mcollective\nlibdir = {lib}\nsecurityprovider = psk\nplugin.psk = geats-test-psk\n\
         connector = rabbitmq\nplugin.rabbitmq.vhost = /mcollective\nplugin.rabbitmq.pool.size = 1\n\
         plugin.rabbitmq.pool.1.host = 127.0.0.1\nplugin.rabbitmq.pool.1.port = {stomp}\n\
         plugin.rabbitmq.pool.1.user = mcollective\nplugin.rabbitmq.pool.1.password = marionette\n\
         factsource = yaml\nplugin.yaml = {facts}\ncolor = 0\n{extra}",
        lib = lib.display(),
        facts = dir.join("facts.yaml").display()
    )
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

// ---------------------------------------------------------------- docs

/// The fenced blocks of a doc: (info string, text).
fn doc_blocks(doc: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(manifest().join(doc)).unwrap();
    let mut out = Vec::new();
    let mut cur: Option<(String, String, usize)> = None;
    for line in text.lines() {
        let t = line.trim_start();
        match &mut cur {
            None => {
                if let Some(info) = t.strip_prefix("```") {
                    cur = Some((info.trim().to_string(), String::new(), line.len() - t.len()));
                }
            }
            Some((info, body, indent)) => {
                if t.starts_with("```") {
                    out.push((info.clone(), body.clone()));
                    cur = None;
                } else {
                    body.push_str(line.get(*indent..).unwrap_or(line.trim_start()));
                    body.push('\n');
                }
            }
        }
    }
    out
}

/// Does `text` match the pattern line, where `...` stands for any text?
fn line_matches(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split("...").collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || !text[first.len()..].ends_with(last) || text.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for p in &parts[1..parts.len() - 1] {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    true
}

/// Do the output lines match the expected ones (a line `...` = any lines)?
fn lines_match(expected: &[&str], actual: &[&str]) -> bool {
    match expected.split_first() {
        None => actual.is_empty(),
        Some((&"...", rest)) => (0..=actual.len()).any(|i| lines_match(rest, &actual[i..])),
        Some((e, rest)) => actual.split_first().is_some_and(|(a, arest)| line_matches(e, a) && lines_match(rest, arest)),
    }
}

/// Run every `console` block of `doc` that `pick` selects: each `$ ` line
/// is a command run by bash in `cwd` with exactly `vars` as environment;
/// the lines up to the next `$ ` are its expected stdout. Returns how many
/// commands ran.
fn run_doc_console(doc: &str, pick: &dyn Fn(&str) -> bool, cwd: &Path, vars: &[(&str, String)]) -> usize {
    let mut n = 0;
    for (info, body) in doc_blocks(doc) {
        if info != "console" || !pick(&body) {
            continue;
        }
        let mut cmds: Vec<(String, Vec<&str>)> = Vec::new();
        for line in body.lines() {
            match line.strip_prefix("$ ") {
                Some(c) => cmds.push((c.to_string(), Vec::new())),
                None => cmds.last_mut().unwrap_or_else(|| panic!("{doc}: output before a command in:\n{body}")).1.push(line),
            }
        }
        for (cmd, expected) in cmds {
            let o = Command::new("bash")
                .args(["-c", &cmd])
                .env_clear()
                .envs(vars.iter().map(|(k, v)| (*k, v)))
                .current_dir(cwd)
                .stdin(Stdio::null())
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&o.stdout);
            let actual: Vec<&str> = stdout.lines().collect();
            assert!(o.status.success(), "{doc}: `{cmd}` failed: {}", out_text(&o));
            assert!(lines_match(&expected, &actual), "{doc}: `{cmd}`\nexpected:\n{}\ngot:\n{stdout}\nstderr:\n{}", expected.join("\n"), String::from_utf8_lossy(&o.stderr));
            n += 1;
        }
    }
    n
}

#[test]
fn doc_matcher_is_strict() {
    assert!(line_matches(r#"{"a":...,"b":1}"#, r#"{"a":{"x":2},"b":1}"#));
    assert!(!line_matches(r#"{"a":...,"b":1}"#, r#"{"a":{"x":2},"b":2}"#));
    assert!(lines_match(&["a", "...", "c"], &["a", "b", "b", "c"]));
    assert!(!lines_match(&["a", "c"], &["a", "b", "c"]));
    assert!(!lines_match(&["a"], &[]));
}

/// A `bin` directory with `geats` on it, for doc commands.
fn doc_bin(dir: &Path) -> PathBuf {
    let b = dir.join("bin");
    std::fs::create_dir_all(&b).unwrap();
    std::os::unix::fs::symlink(bin(), b.join("geats")).unwrap();
    b
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
        return skip("docs_operations_examples", "sqlite3 is not installed (apt-get install sqlite3)");
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
