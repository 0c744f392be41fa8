//! geats under Choria: its JSON DDL against Choria's schema, and requests
//! in Choria's external-agent protocol, in Choria's bare environment.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{bin, manifest, out_text, Env};

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
    assert_eq!((code("14_migrate"), data("14_migrate")["errorcode"].clone()), (1, json!("migration_failed")));
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
