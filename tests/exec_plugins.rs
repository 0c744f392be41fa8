//! Issue 17: storage drivers and VM types as executables. The Python
//! plugins of `tests/exec_plugins/` (a directory-giving storage driver, a
//! file-giving one wrapped by `loop` + `filesystem`, and a VM type whose
//! "VM" is a process) are driven through every action in both transports;
//! each plugin logs every call it gets, so the tests check the order of
//! the calls, what each request carried, and validate the real traffic
//! against `schemas/plugin/`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{self, Env};

fn plugin(name: &str) -> PathBuf {
    common::manifest().join("tests/exec_plugins").join(name)
}

/// A geats root whose config declares the three test plugins, logging to
/// `ROOT/calls.jsonl` and reading faults from `ROOT/faults.json`.
struct Fx {
    env: Env,
}

impl Fx {
    fn new(extra: &str) -> Fx {
        Fx::with(extra, 20)
    }

    fn with(extra: &str, storage_timeout: u64) -> Fx {
        let env = Env::new();
        let root = env.root().display().to_string();
        let marker = marker();
        let common = format!("log = \"{root}/calls.jsonl\"\nfaults = \"{root}/faults.json\"\nmarker = \"{marker}\"\n");
        let config = format!(
            "[storage_types.pdir]\ndriver = \"exec\"\ncommand = [\"{dirstore}\"]\ntimeout = {storage_timeout}\nbase = \"{root}/pdir\"\n{common}\n\
             [storage_types.pfile]\ndriver = \"exec\"\nprovides = \"file\"\nadapters = [\"loop\", \"filesystem\"]\nfstype = \"ext4\"\n\
             command = [\"/usr/bin/python3\", \"{filestore}\"]\ntimeout = {storage_timeout}\nbase = \"{root}/pfile\"\n{common}\n\
             [vm_types.proc]\ndriver = \"exec\"\ncommand = [\"{procvm}\"]\ntimeout = 20\nshutdown_timeout = 5\naccepts = [\"directory\"]\n\
             valid_storage_types = [\"pdir\", \"pfile\"]\nrun_dir = \"{root}/run\"\n{common}\n{extra}",
            dirstore = plugin("dirstore.py").display(),
            filestore = plugin("filestore.py").display(),
            procvm = plugin("procvm.py").display(),
        );
        std::fs::write(&env.config, config).unwrap();
        Fx { env }
    }

    fn root(&self) -> &Path {
        self.env.root()
    }

    /// Every call logged so far, and forget them.
    fn take_calls(&self) -> Vec<Value> {
        let path = self.root().join("calls.jsonl");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let _ = std::fs::remove_file(&path);
        let calls: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("log line")).collect();
        for c in &calls {
            check_call(c);
        }
        calls
    }

    fn fault(&self, faults: Value) {
        std::fs::write(self.root().join("faults.json"), faults.to_string()).unwrap();
    }

    fn no_faults(&self) {
        let _ = std::fs::remove_file(self.root().join("faults.json"));
    }

    /// Run `action` through `transport` and expect success.
    fn ok(&self, t: Transport, action: &str, data: Value) -> Value {
        match t {
            Transport::Stdio => self.env.ok(action, data),
            Transport::Mco => {
                let req = json!({"agent": "geats", "action": action, "data": data, "callerid": "test", "uniqid": format!("{action}-{}", rand())});
                let (code, reply, err) = self.env.mco(&req.to_string());
                assert_eq!(code, 0, "mco {req}: reply {reply} stderr {err}");
                let v: Value = serde_json::from_str(&reply).expect("reply JSON");
                common::schema::check_reply(action, &v);
                v
            }
        }
    }

    /// Run `action` through `transport` and expect failure: (errorcode, message).
    fn fail(&self, t: Transport, action: &str, data: Value) -> (String, String) {
        match t {
            Transport::Stdio => {
                let e = self.env.fail(action, data);
                (e["errorcode"].as_str().unwrap().to_string(), e["message"].as_str().unwrap().to_string())
            }
            Transport::Mco => {
                let req = json!({"agent": "geats", "action": action, "data": data});
                let (code, reply, err) = self.env.mco(&req.to_string());
                assert_eq!(code, 1, "mco {req} should abort: reply {reply} stderr {err}");
                let v: Value = serde_json::from_str(&reply).expect("reply JSON");
                common::schema::check_error(&v);
                let msg = v["message"].as_str().unwrap().to_string();
                assert!(err.contains(&msg), "the message goes to stderr too: {err}");
                (v["errorcode"].as_str().unwrap().to_string(), msg)
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Transport {
    Stdio,
    Mco,
}

fn rand() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

/// A word unique to this test process, for the processes hung plugins start.
fn marker() -> String {
    format!("geats-hang-{}-{}", std::process::id(), rand() % 1_000_000_007)
}

/// `op(target)` of every call, e.g. `create(root)`, `start(p1)`.
fn ops(calls: &[Value]) -> Vec<String> {
    calls
        .iter()
        .map(|c| {
            let r = &c["request"];
            let target = r["volume"].as_str().or(r["vm"].as_str()).unwrap_or("?");
            format!("{}({target})", r["op"].as_str().unwrap_or("?"))
        })
        .collect()
}

fn plugin_schema(name: &str) -> jsonschema::Validator {
    let path = common::manifest().join("schemas/plugin").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    jsonschema::draft7::new(&serde_json::from_str(&text).unwrap()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn validate(name: &str, v: &Value) {
    let errors: Vec<String> = plugin_schema(name).iter_errors(v).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(errors.is_empty(), "{name} rejects {v:#}: {errors:?}");
}

/// One logged call: the protocol's envelope, and its traffic against
/// `schemas/plugin/`.
fn check_call(c: &Value) {
    let op = c["request"]["op"].as_str().expect("op");
    assert_eq!(c["argv_op"], op, "the op is the last argument: {c}");
    assert_eq!(c["env_op"], op, "and GEATS_PLUGIN_OP: {c}");
    let env: Vec<&str> = c["env"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    for k in &env {
        assert!(["GEATS_PLUGIN_OP", "LC_ALL", "PATH", "LC_CTYPE"].contains(k), "the environment is clean, but has {k}: {env:?}");
    }
    let family = if c["request"].get("volume").is_some() { "storage" } else { "vm" };
    validate(&format!("{family}-request.json"), &c["request"]);
    if c["outcome"] == "ok" {
        validate(&format!("{family}-{op}-reply.json"), &c["reply"]);
    }
}

fn def_two_dirs() -> Value {
    json!({"vm_type": "proc", "storage": [
        {"name": "root", "type": "pdir"},
        {"name": "data", "type": "pdir", "mountpoint": "/data", "flavour": "plain"}]})
}

/// The process a procvm VM runs, if it runs.
fn guest_pid(fx: &Fx, vm: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(fx.root().join("run").join(format!("{vm}.pid"))).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).ok()?;
    cmdline.contains("geats-procvm-guest").then_some(pid)
}

fn lifecycle(t: Transport) {
    let fx = Fx::new("");
    let vm = "p1";
    let v = json!({"vm_name": vm});
    let root_dir = fx.root().join("pdir/p1/root");
    let data_dir = fx.root().join("pdir/p1/data");

    // define: volumes created (with their settings and options), then the VM.
    let d = fx.ok(t, "define", json!({"vm_name": vm, "definition": def_two_dirs()}));
    assert_eq!(d["state"], json!(["stopped", "stopped"]), "{d}");
    let calls = fx.take_calls();
    assert_eq!(ops(&calls), ["create(root)", "create(data)", "define(p1)", "state(p1)"]);
    assert_eq!(calls[1]["request"]["options"], json!({"flavour": "plain"}));
    assert_eq!(calls[0]["request"]["settings"]["base"], json!(format!("{}/pdir", fx.root().display())));
    assert!(calls[0]["request"]["settings"].get("command").is_none() && calls[0]["request"]["settings"].get("timeout").is_none());
    assert!(calls[2]["request"]["settings"].get("accepts").is_none(), "geats keeps its own keys: {}", calls[2]);
    assert_eq!(calls[2]["request"]["volumes"][1], json!({"name": "data", "mountpoint": "/data", "provides": {"kind": "directory", "path": data_dir}}));
    assert!(root_dir.is_dir() && data_dir.is_dir());
    // An identical re-define asks only for the state.
    assert_eq!(fx.ok(t, "define", json!({"vm_name": vm, "definition": def_two_dirs()}))["changed"], json!(false));
    assert_eq!(ops(&fx.take_calls()), ["state(p1)"]);

    // start: volumes activated, then the VM; it runs with its root.
    let d = fx.ok(t, "start", v.clone());
    assert_eq!(d["state"], json!(["running", "running"]), "{d}");
    assert_eq!(ops(&fx.take_calls()), ["state(p1)", "activate(root)", "activate(data)", "start(p1)", "state(p1)"]);
    let pid = guest_pid(&fx, vm).expect("the guest process runs");
    assert!(root_dir.join("booted").is_file(), "the VM saw its root volume");
    assert_eq!(fx.ok(t, "start", v.clone())["changed"], json!(false));
    fx.take_calls();

    // info: state, volumes' usage from the plugin, the plugin's own info.
    let info = fx.ok(t, "info", v.clone());
    assert_eq!(info["state"], json!(["running", "running"]));
    assert_eq!(info["plugin"]["pid"], json!(pid), "{info}");
    assert_eq!(info["storage"][0]["driver"], "exec", "{info}");
    assert!(info["storage"][0]["used_bytes"].as_u64().unwrap() > 0, "{info}");
    assert_eq!(info["storage"][0]["active"], json!(true), "{info}");
    assert_eq!(info["storage"][1]["directory"], json!(data_dir), "{info}");
    let calls = ops(&fx.take_calls());
    assert_eq!(calls.iter().filter(|c| c.starts_with("usage(")).count(), 2, "{calls:?}");

    // status follows the plugin's state: the guest ends on its own.
    assert_eq!(fx.ok(t, "status", json!({}))["vms"][vm]["state"], json!(["running", "running"]));
    assert_eq!(ops(&fx.take_calls()), ["state(p1)"], "status: one plugin call per exec VM");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let t0 = Instant::now();
    while guest_pid(&fx, vm).is_some() && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(fx.ok(t, "status", json!({}))["vms"][vm]["state"], json!(["stopped", "stopped"]));
    // stop of a VM that stopped on its own tidies its volumes.
    fx.take_calls();
    assert_eq!(fx.ok(t, "stop", v.clone())["changed"], json!(false));
    assert_eq!(ops(&fx.take_calls()), ["state(p1)", "deactivate(data)", "deactivate(root)"]);

    // reboot (a shutdown and a start), shutdown, stop: volumes deactivated after.
    fx.ok(t, "start", v.clone());
    let first = guest_pid(&fx, vm).unwrap();
    fx.take_calls();
    assert_eq!(fx.ok(t, "reboot", v.clone())["state"], json!(["running", "running"]));
    assert_eq!(ops(&fx.take_calls()), ["state(p1)", "shutdown(p1)", "state(p1)", "start(p1)", "state(p1)"]);
    assert_ne!(guest_pid(&fx, vm), Some(first), "a new guest process");
    let d = fx.ok(t, "shutdown", v.clone());
    assert_eq!(d["state"], json!(["stopped", "stopped"]));
    let calls = fx.take_calls();
    assert_eq!(ops(&calls), ["state(p1)", "shutdown(p1)", "state(p1)", "deactivate(data)", "deactivate(root)", "state(p1)"]);
    assert_eq!(calls[1]["request"]["timeout"], json!(5.0), "shutdown carries its timeout");
    fx.ok(t, "start", v.clone());
    fx.take_calls();
    fx.ok(t, "stop", v.clone());
    assert_eq!(ops(&fx.take_calls()), ["state(p1)", "stop(p1)", "deactivate(data)", "deactivate(root)", "state(p1)"]);
    assert!(guest_pid(&fx, vm).is_none());

    // lock refuses undefine; unlock; undefine keeps the volumes.
    fx.ok(t, "lock", v.clone());
    assert_eq!(fx.fail(t, "undefine", v.clone()).0, "vm_locked");
    fx.ok(t, "unlock", v.clone());
    std::fs::write(root_dir.join("keep"), "data").unwrap();
    fx.take_calls();
    assert_eq!(fx.ok(t, "undefine", v.clone())["changed"], json!(true));
    assert_eq!(ops(&fx.take_calls()), ["state(p1)", "undefine(p1)"], "inactive volumes are not deactivated again");
    assert!(root_dir.join("keep").is_file(), "undefine keeps the data");
    assert!(fx.ok(t, "status", json!({}))["vms"].get(vm).is_none());
    // define finds it again: no create.
    fx.ok(t, "define", json!({"vm_name": vm, "definition": def_two_dirs()}));
    assert_eq!(ops(&fx.take_calls()), ["define(p1)", "state(p1)"]);
    assert!(root_dir.join("keep").is_file());

    // provision erases the volumes (destroy + create) and defines again.
    fx.ok(t, "provision", json!({"vm_name": vm, "definition": def_two_dirs()}));
    assert_eq!(
        ops(&fx.take_calls()),
        ["state(p1)", "destroy(root)", "create(root)", "destroy(data)", "create(data)", "define(p1)", "state(p1)"]
    );
    assert!(root_dir.is_dir() && !root_dir.join("keep").exists(), "provision erased the root");

    // migrate to a host that cannot be reached fails and leaves the VM
    // as it was; dry runs call no operation.
    assert_eq!(fx.fail(t, "migrate", json!({"vm_name": vm, "vm_destination": "host2.invalid"})).0, "migration_failed");
    fx.take_calls();
    let dry = fx.ok(t, "start", json!({"vm_name": vm, "dry_run": true}));
    assert_eq!(dry["steps"][0], "activate volume root", "{dry}");
    assert_eq!(ops(&fx.take_calls()), ["state(p1)", "state(p1)"], "a dry run only reads the state");

    // deprovision: stopped VM undefined, volumes destroyed.
    fx.ok(t, "start", v.clone());
    fx.take_calls();
    assert_eq!(fx.ok(t, "deprovision", v.clone())["changed"], json!(true));
    assert_eq!(
        ops(&fx.take_calls()),
        ["state(p1)", "stop(p1)", "deactivate(data)", "deactivate(root)", "undefine(p1)", "destroy(root)", "destroy(data)"]
    );
    assert!(!fx.root().join("pdir/p1").exists(), "volumes destroyed");
    assert!(guest_pid(&fx, vm).is_none());
    assert!(!fx.root().join("var/lib/geats/exec/vm/proc/p1.json").exists() && !fx.root().join("var/lib/geats/exec/storage/pdir/p1").exists());
    assert_eq!(fx.fail(t, "info", v.clone()).0, "not_found");
}

#[test]
fn issue_17_exec_plugins_every_action_stdio() {
    lifecycle(Transport::Stdio);
}

#[test]
fn issue_17_exec_plugins_every_action_mcollective() {
    lifecycle(Transport::Mco);
}

/// Nothing of `vm` is left: no record, no VM, no volume, no kept state.
fn nothing_left(fx: &Fx, t: Transport, vm: &str) {
    assert_eq!(fx.fail(t, "info", json!({"vm_name": vm})).0, "not_found");
    let status = fx.ok(t, "status", json!({}));
    assert!(status["vms"].get(vm).is_none() && status["kept"].get(vm).is_none(), "{status}");
    for dir in ["pdir", "pfile", "var/lib/geats/exec/storage/pdir", "var/lib/geats/exec/vm/proc"] {
        let p = fx.root().join(dir).join(vm);
        assert!(!p.exists() && !p.with_extension("json").exists(), "{} is left", p.display());
    }
    assert!(guest_pid(fx, vm).is_none());
}

fn failures(t: Transport) {
    let fx = Fx::new("");
    let def = def_two_dirs();

    // The second volume's create fails: the first is destroyed again, and
    // the plugin's last stderr line is the message.
    fx.fault(json!({"create": "fail"}));
    let (code, msg) = fx.fail(t, "define", json!({"vm_name": "f1", "definition": def}));
    assert_eq!(code, "tool_failed", "{msg}");
    assert!(msg.contains("injected failure of create for f1") && msg.contains("storage type pdir"), "{msg}");
    assert!(!msg.contains("some noise first"), "only the last line: {msg}");
    nothing_left(&fx, t, "f1");
    fx.take_calls();

    fx.no_faults();
    let calls = {
        // Fail only the second create: fault file written after the first.
        let faults = fx.root().join("faults.json");
        let _ = std::fs::remove_file(&faults);
        fx.fault(json!({"define": "fail"}));
        let (code, msg) = fx.fail(t, "define", json!({"vm_name": "f2", "definition": def}));
        assert_eq!(code, "tool_failed");
        assert!(msg.contains("injected failure of define for f2") && msg.contains("VM type proc"), "{msg}");
        fx.take_calls()
    };
    assert_eq!(ops(&calls), ["create(root)", "create(data)", "define(f2)", "destroy(data)", "destroy(root)"], "undo in reverse (a failed step cleans up after itself)");
    nothing_left(&fx, t, "f2");

    // A failed start deactivates what it activated.
    fx.no_faults();
    fx.ok(t, "define", json!({"vm_name": "f3", "definition": def}));
    fx.fault(json!({"start": "fail"}));
    fx.take_calls();
    let (code, msg) = fx.fail(t, "start", json!({"vm_name": "f3"}));
    assert_eq!(code, "tool_failed");
    assert!(msg.contains("injected failure of start for f3"), "{msg}");
    assert_eq!(
        ops(&fx.take_calls()),
        ["state(f3)", "activate(root)", "activate(data)", "start(f3)", "deactivate(data)", "deactivate(root)"]
    );
    fx.no_faults();
    let info = fx.ok(t, "info", json!({"vm_name": "f3"}));
    assert_eq!(info["state"], json!(["stopped", "stopped"]));
    assert_eq!(info["storage"][0]["active"], json!(false), "{info}");

    // A plugin that cannot answer `state` makes the VM unknown, not an error.
    fx.fault(json!({"state": "fail"}));
    assert_eq!(fx.ok(t, "status", json!({}))["vms"]["f3"]["state"], json!(["unknown", "plugin_failed"]));
    fx.no_faults();
    fx.ok(t, "deprovision", json!({"vm_name": "f3"}));
    nothing_left(&fx, t, "f3");
}

#[test]
fn issue_17_plugin_failure_reaches_the_reply_stdio() {
    failures(Transport::Stdio);
}

#[test]
fn issue_17_plugin_failure_reaches_the_reply_mcollective() {
    failures(Transport::Mco);
}

/// Is a process whose command line contains `marker` alive?
fn alive_with(marker: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        let Ok(c) = std::fs::read(e.path().join("cmdline")) else { return false };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { return false };
        let zombie = stat.rsplit(')').next().and_then(|r| r.split_whitespace().next()) == Some("Z");
        !zombie && String::from_utf8_lossy(&c).contains(marker)
    })
}

#[test]
fn issue_17_garbage_and_hung_plugins() {
    let fx = Fx::with("", 2);
    let marker = {
        let text = std::fs::read_to_string(&fx.env.config).unwrap();
        text.lines().find_map(|l| l.strip_prefix("marker = \"")).unwrap().trim_end_matches('"').to_string()
    };
    let def = def_two_dirs();
    for t in [Transport::Stdio, Transport::Mco] {
        // Output that is not one JSON object.
        fx.fault(json!({"create": "garbage"}));
        let (code, msg) = fx.fail(t, "define", json!({"vm_name": "g1", "definition": def}));
        assert_eq!(code, "tool_failed", "{msg}");
        assert!(msg.contains("plugin storage type pdir: create replied with output geats cannot use") && msg.contains("this is not JSON"), "{msg}");
        nothing_left(&fx, t, "g1");

        // A hung plugin (with a child in its process group) is killed at
        // its timeout of 2 s, and the error says so.
        fx.fault(json!({"create": "hang"}));
        let t0 = Instant::now();
        let (code, msg) = fx.fail(t, "define", json!({"vm_name": "h1", "definition": def}));
        let took = t0.elapsed();
        assert_eq!(code, "tool_failed", "{msg}");
        assert!(msg.contains("plugin storage type pdir: create did not finish within 2 s and was killed with its process group"), "{msg}");
        assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(8), "took {took:?}");
        std::thread::sleep(Duration::from_millis(200));
        assert!(!alive_with(&marker), "a process of the hung plugin is left");
        nothing_left(&fx, t, "h1");

        // A reply of the wrong shape is refused, naming the schema.
        fx.no_faults();
        fx.ok(t, "define", json!({"vm_name": "g2", "definition": def}));
        fx.fault(json!({"start": "garbage"}));
        let (code, msg) = fx.fail(t, "start", json!({"vm_name": "g2"}));
        assert_eq!(code, "tool_failed");
        assert!(msg.contains("plugin VM type proc: start replied with output geats cannot use"), "{msg}");
        fx.no_faults();
        fx.ok(t, "deprovision", json!({"vm_name": "g2"}));
        fx.take_calls();
    }
}

#[test]
fn issue_17_status_costs_one_call_per_exec_vm_and_builtins_none() {
    // The exec type's command does not exist: a VM of a built-in type must
    // not notice it is configured at all.
    let fx = Fx::new("[vm_types.broken]\ndriver = \"exec\"\ncommand = [\"/nonexistent/geats-plugin\"]\n");
    for n in ["d1", "d2"] {
        fx.env.ok("define", json!({"vm_name": n, "definition": {"vm_type": "dummy"}}));
        fx.env.ok("start", json!({"vm_name": n}));
    }
    fx.env.ok("status", json!({}));
    fx.env.ok("info", json!({"vm_name": "d1"}));
    fx.env.ok("stop", json!({"vm_name": "d1"}));
    assert!(fx.take_calls().is_empty(), "built-in VMs cost no plugin call");

    for n in ["e1", "e2", "e3"] {
        fx.env.ok("define", json!({"vm_name": n, "definition": {"vm_type": "proc", "storage": [{"name": "root", "type": "pdir"}]}}));
    }
    fx.take_calls();
    let status = fx.env.ok("status", json!({}));
    assert_eq!(status["vms"].as_object().unwrap().len(), 5);
    let mut calls = ops(&fx.take_calls());
    calls.sort();
    assert_eq!(calls, ["state(e1)", "state(e2)", "state(e3)"], "status: exactly one call per VM of an exec type");

    // A VM of the broken type fails clearly, naming the plugin.
    let e = fx.env.fail("define", json!({"vm_name": "b1", "definition": {"vm_type": "broken"}}));
    assert_eq!(e["errorcode"], "tool_failed", "{e}");
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains("plugin VM type broken (/nonexistent/geats-plugin): cannot run define"), "{msg}");
}

#[test]
fn issue_17_exec_config_errors_name_the_key() {
    let cases = [
        ("[storage_types.x]\ndriver = \"exec\"\n", "storage_types.x", "command"),
        ("[storage_types.x]\ndriver = \"exec\"\ncommand = [\"plugin.py\"]\n", "storage_types.x.command", "absolute"),
        ("[storage_types.x]\ndriver = \"exec\"\ncommand = [\"/p\"]\ntimeout = -1\n", "storage_types.x.timeout", "seconds"),
        ("[storage_types.x]\ndriver = \"exec\"\ncommand = [\"/p\"]\nprovides = \"disk\"\n", "storage_types.x.provides", "block_device"),
        ("[storage_types.x]\ndriver = \"exec\"\ncommand = [\"/p\"]\nadapters = [\"loop\"]\n", "storage_types.x.adapters[0]", "file"),
    ];
    for (toml, key, word) in cases {
        let env = Env::with_config(toml);
        let e = env.fail("define", json!({"vm_name": "c1", "definition": {"vm_type": "dummy", "storage": [{"name": "r", "type": "x"}]}}));
        assert_eq!(e["errorcode"], "config_invalid", "{toml}: {e}");
        let msg = e["message"].as_str().unwrap();
        assert!(msg.contains(key) && msg.contains(word), "{toml}: {msg}");
    }
    let env = Env::with_config("[vm_types.x]\ndriver = \"exec\"\ncommand = [\"/p\"]\naccepts = [\"disk\"]\n");
    let e = env.fail("define", json!({"vm_name": "c1", "definition": {"vm_type": "x"}}));
    assert!(e["message"].as_str().unwrap().contains("vm_types.x.accepts"), "{e}");
    // A VM type that takes directories refuses a file-giving exec storage
    // before any call.
    let fx = Fx::new("[storage_types.rawfile]\ndriver = \"exec\"\nprovides = \"file\"\ncommand = [\"/p\"]\n");
    let def = json!({"vm_type": "proc", "storage": [{"name": "root", "type": "rawfile", "size": "1M"}]});
    let text = std::fs::read_to_string(&fx.env.config).unwrap().replace("valid_storage_types = [\"pdir\", \"pfile\"]", "");
    std::fs::write(&fx.env.config, text).unwrap();
    let e = fx.env.fail("define", json!({"vm_name": "c2", "definition": def}));
    assert_eq!(e["errorcode"], "invalid_data", "{e}");
    assert!(e["message"].as_str().unwrap().contains("/definition/storage/0/type"), "{e}");
    assert!(fx.take_calls().is_empty());
}

#[test]
fn issue_17_lxc_boots_from_ext4_on_an_exec_image_file() {
    let name = "issue_17_lxc_boots_from_ext4_on_an_exec_image_file";
    if let Some(why) = common::lxc::missing() {
        return common::skip(name, &why);
    }
    let ct = format!("gt{}x17", std::process::id());
    let fx = Fx::new("[vm_types.lxc]\ndriver = \"lxc\"\nvalid_storage_types = [\"pfile\", \"dir\"]\n");
    common::lxc::busybox_template(&fx.root().join("var/lib/geats/templates"), "busybox");
    let lxc = common::lxc::Containers::new(&fx.root().join("var/lib/lxc"), &[&ct]);
    let image = fx.root().join("pfile").join(&ct).join("root.img");
    let mnt = fx.root().join("var/lib/geats/mnt").join(&ct).join("root");
    let def = json!({"template": "busybox", "ram": 64, "storage": [{"name": "root", "type": "pfile", "size": "64M"}]});
    let v = json!({"vm_name": ct});

    fx.env.ok("define", json!({"vm_name": ct, "definition": def}));
    assert!(image.is_file(), "the plugin made the image");
    assert!(common::mounts_under(fx.root()).is_empty() && !attached(&image), "define leaves nothing active");
    let d = fx.env.ok("start", v.clone());
    assert_eq!(d["state"], json!(["running", "running"]), "{d}");
    assert_eq!(lxc.lxc_state(&ct), "RUNNING");
    let m = common::mounts_under(fx.root());
    assert!(m.iter().any(|m| m.mount_point == mnt && m.fstype == "ext4"), "the root is ext4 on the image: {m:?}");
    assert!(attached(&image), "on a loop device of the plugin's image");
    let t0 = Instant::now();
    loop {
        let out = fx.env.cli(&["exec", &ct, "--", "cat", "/run/rcS.done"]);
        if String::from_utf8_lossy(&out.stdout).contains("rcS done") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "busybox did not boot: {}", common::out_text(&out));
        std::thread::sleep(Duration::from_millis(100));
    }
    fx.env.ok("stop", v.clone());
    assert!(common::mounts_under(fx.root()).is_empty() && !attached(&image), "stop releases mount and loop device");
    fx.take_calls();
    fx.env.ok("deprovision", v.clone());
    assert_eq!(ops(&fx.take_calls()), ["destroy(root)"]);
    assert!(!image.exists());
    assert!(lxc.lxc_state(&ct).starts_with("error"));
}

fn attached(image: &Path) -> bool {
    common::loop_devices().iter().any(|(_, f)| f.starts_with(&image.display().to_string()))
}

/// The configuration examples of docs/plugins.md's "Exec plugins" section
/// load, and every exec type in them builds (no plugin runs: building
/// touches no disk).
#[test]
fn issue_17_plugins_doc_exec_examples_load() {
    let env = Env::new();
    let mut built = 0;
    for (info, body) in common::docs::doc_blocks("docs/plugins.md") {
        if info != "toml" || !body.contains("driver = \"exec\"") {
            continue;
        }
        let config = geats::config::Config::from_toml(&body, Some("docs/plugins.md".into()), Some(env.root().to_path_buf()))
            .unwrap_or_else(|e| panic!("{e}\n{body}"));
        let vm = geats::names::VmName::new("web1").unwrap();
        for (name, st) in &config.storage_types {
            if st.driver == "exec" {
                let spec: geats::definition::VolumeSpec = serde_json::from_value(json!({"name": "root", "type": name.as_str(), "size": "1G"})).unwrap();
                let vol = geats::storage::open(&config, &vm, &spec, "/definition/storage/0").unwrap_or_else(|e| panic!("{name}: {e}"));
                assert!(vol.describe().contains("exec plugin"), "{}", vol.describe());
                built += 1;
            }
        }
        for (name, t) in &config.vm_types {
            if t.driver == "exec" {
                geats::vm::build(&config, name).unwrap_or_else(|e| panic!("{name}: {e}"));
                built += 1;
            }
        }
    }
    assert_eq!(built, 3, "the zfs and golden storage types and the myhv VM type");
}

/// The index of the first `call` in `calls`, at or after `from`.
fn at(calls: &[String], call: &str, from: usize) -> usize {
    calls.iter().skip(from).position(|c| c == call).map(|i| i + from).unwrap_or_else(|| panic!("no {call} after #{from} in {calls:?}"))
}

fn file_chain(t: Transport, test: &str) {
    if let Some(m) = common::need_root("loop devices and mounts need root") {
        return common::skip(test, &m);
    }
    let fx = Fx::new("");
    let (vm, v) = ("q1", json!({"vm_name": "q1"}));
    let def = json!({"vm_type": "proc", "storage": [
        {"name": "root", "type": "pdir"},
        {"name": "scratch", "type": "pfile", "size": "16M", "mountpoint": "/scratch"}]});
    let image = fx.root().join("pfile/q1/scratch.img");
    let mnt = fx.root().join("var/lib/geats/mnt/q1/scratch");
    let active = |want: bool| {
        let mounted = common::mounts_under(fx.root()).iter().any(|m| m.mount_point == mnt && m.fstype == "ext4");
        let attached = common::loop_devices().iter().any(|(_, f)| f.starts_with(&image.display().to_string()));
        assert_eq!((mounted, attached), (want, want), "ext4 mounted over a loop device of the plugin's image");
    };
    let vols = ["root", "scratch"];

    // define: every volume created (the image formatted) before the VM.
    fx.ok(t, "define", json!({"vm_name": vm, "definition": def}));
    let c = ops(&fx.take_calls());
    let d = at(&c, "define(q1)", 0);
    for vol in vols {
        assert!(at(&c, &format!("create({vol})"), 0) < d, "{c:?}");
    }
    assert!(image.is_file());
    active(false);

    // start: every volume activated before the VM starts.
    fx.ok(t, "start", v.clone());
    let c = ops(&fx.take_calls());
    let s = at(&c, "start(q1)", 0);
    for vol in vols {
        assert!(at(&c, &format!("activate({vol})"), 0) < s, "{c:?}");
    }
    active(true);
    let info = fx.ok(t, "info", v.clone());
    assert_eq!(info["storage"][1]["active"], json!(true), "{info}");
    assert!(info["storage"][1]["size_bytes"].as_u64().unwrap() > 8 << 20, "{info}");
    assert_eq!(fx.ok(t, "status", json!({}))["vms"][vm]["state"], json!(["running", "running"]));

    // reboot keeps the volumes active; shutdown and stop deactivate them after.
    fx.take_calls();
    fx.ok(t, "reboot", v.clone());
    assert!(!ops(&fx.take_calls()).iter().any(|c| c.starts_with("deactivate(")));
    active(true);
    for (action, op) in [("shutdown", "shutdown(q1)"), ("stop", "stop(q1)")] {
        fx.take_calls();
        fx.ok(t, action, v.clone());
        let c = ops(&fx.take_calls());
        let end = at(&c, op, 0);
        for vol in vols {
            at(&c, &format!("deactivate({vol})"), end);
        }
        active(false);
        if action == "shutdown" {
            fx.ok(t, "start", v.clone());
            active(true);
        }
    }

    // lock, unlock, undefine (keeps), define (finds it), provision (erases).
    fx.ok(t, "lock", v.clone());
    assert_eq!(fx.fail(t, "deprovision", v.clone()).0, "vm_locked");
    fx.ok(t, "unlock", v.clone());
    fx.take_calls();
    fx.ok(t, "undefine", v.clone());
    assert!(!ops(&fx.take_calls()).iter().any(|c| c.starts_with("destroy(")), "undefine keeps the volumes");
    assert!(image.is_file());
    fx.ok(t, "define", json!({"vm_name": vm, "definition": def}));
    assert!(!ops(&fx.take_calls()).iter().any(|c| c.starts_with("create(")), "define finds them again");
    fx.ok(t, "provision", json!({"vm_name": vm, "definition": def}));
    let c = ops(&fx.take_calls());
    let d = at(&c, "define(q1)", 0);
    for vol in vols {
        assert!(at(&c, &format!("destroy({vol})"), 0) < at(&c, &format!("create({vol})"), 0) && at(&c, &format!("create({vol})"), 0) < d, "{c:?}");
    }
    active(false);
    assert_eq!(fx.fail(t, "migrate", json!({"vm_name": vm, "vm_destination": "host2.invalid"})).0, "migration_failed");
    fx.take_calls();

    // deprovision of a running VM: stopped, deactivated, undefined, destroyed.
    fx.ok(t, "start", v.clone());
    fx.take_calls();
    fx.ok(t, "deprovision", v.clone());
    let c = ops(&fx.take_calls());
    let u = at(&c, "undefine(q1)", at(&c, "stop(q1)", 0));
    for vol in vols {
        at(&c, &format!("destroy({vol})"), u);
    }
    active(false);
    assert!(!image.exists() && !mnt.exists());
    nothing_left(&fx, t, vm);
}

#[test]
fn issue_17_file_plugin_under_loop_and_filesystem_stdio() {
    file_chain(Transport::Stdio, "issue_17_file_plugin_under_loop_and_filesystem_stdio");
}

#[test]
fn issue_17_file_plugin_under_loop_and_filesystem_mcollective() {
    file_chain(Transport::Mco, "issue_17_file_plugin_under_loop_and_filesystem_mcollective");
}

#[test]
fn issue_17_exec_volumes_survive_a_lost_database() {
    // The plugin's record is in the VM's record file like any driver's:
    // after `geats recover`, deprovision hands it back to the plugin.
    let fx = Fx::new("");
    fx.env.ok("define", json!({"vm_name": "r1", "definition": def_two_dirs()}));
    let record = std::fs::read_to_string(fx.root().join("var/lib/geats/records/r1.json")).unwrap();
    assert!(record.contains("\"made_by\": \"dirstore\""), "{record}");
    std::fs::remove_file(fx.root().join("var/lib/geats/geats.db")).unwrap();
    assert_eq!(fx.env.fail("status", json!({}))["errorcode"], "database_missing");
    let out = fx.env.cli(&["recover"]);
    assert!(out.status.success(), "{}", common::out_text(&out));
    fx.take_calls();
    fx.env.ok("deprovision", json!({"vm_name": "r1"}));
    let calls = fx.take_calls();
    assert_eq!(ops(&calls), ["state(r1)", "undefine(r1)", "destroy(root)", "destroy(data)"]);
    assert_eq!(calls[2]["request"]["record"]["made_by"], "dirstore");
    assert!(!fx.root().join("pdir/r1").exists());
}

/// Issue 18 on the exec protocol: snapshot, restore and delete_snapshot are
/// optional ops. A plugin that has them takes, restores and deletes
/// snapshots through the ordinary actions; one that answers
/// `{"not_supported": true}` makes the action `not_supported`. Every call
/// is checked against `schemas/plugin/` (`take_calls`).
#[test]
fn issue_18_exec_plugin_snapshot_ops() {
    let fx = Fx::new("");
    let t = Transport::Stdio;
    let v = json!({"vm_name": "s1"});
    fx.ok(t, "define", json!({"vm_name": "s1", "definition": def_two_dirs()}));
    let root_dir = fx.root().join("pdir/s1/root");
    std::fs::write(root_dir.join("marker"), "before").unwrap();
    fx.take_calls();

    let r = fx.ok(t, "snapshot", json!({"vm_name": "s1", "snapshot": "first"}));
    assert_eq!(r["changed"], json!(true), "{r}");
    let calls = fx.take_calls();
    let snaps: Vec<&Value> = calls.iter().filter(|c| c["request"]["op"] == "snapshot").collect();
    assert_eq!(snaps.len(), 2, "one per volume: {calls:?}");
    assert!(snaps.iter().all(|c| c["request"]["snapshot"] == "first"));
    assert_eq!(fx.ok(t, "info", v.clone())["snapshots"][0]["name"], json!("first"));

    std::fs::write(root_dir.join("marker"), "after").unwrap();
    std::fs::write(root_dir.join("extra"), "x").unwrap();
    fx.ok(t, "restore", json!({"vm_name": "s1", "snapshot": "first"}));
    assert_eq!(std::fs::read_to_string(root_dir.join("marker")).unwrap(), "before");
    assert!(!root_dir.join("extra").exists());
    let calls = fx.take_calls();
    assert_eq!(calls.iter().filter(|c| c["request"]["op"] == "restore").count(), 2, "{calls:?}");

    let r = fx.ok(t, "delete_snapshot", json!({"vm_name": "s1", "snapshot": "first"}));
    assert_eq!(r["changed"], json!(true), "{r}");
    let calls = fx.take_calls();
    assert_eq!(calls.iter().filter(|c| c["request"]["op"] == "delete_snapshot").count(), 2, "{calls:?}");
    assert!(!fx.root().join("pdir/.snapshots/s1/root/first").exists());
    fx.ok(t, "deprovision", v);
    assert!(!fx.root().join("pdir/.snapshots/s1").exists(), "destroy removes a volume's snapshots");

    // A plugin without snapshots declines: not_supported, nothing recorded.
    if !common::is_root() {
        return;
    }
    fx.ok(t, "define", json!({"vm_name": "s2", "definition": {"vm_type": "proc", "storage": [{"name": "root", "type": "pfile", "size": "16M"}]}}));
    fx.take_calls();
    let (code, msg) = fx.fail(t, "snapshot", json!({"vm_name": "s2", "snapshot": "first"}));
    assert_eq!(code, "not_supported", "{msg}");
    let calls = fx.take_calls();
    assert!(calls.iter().any(|c| c["request"]["op"] == "snapshot" && c["reply"] == json!({"not_supported": true})), "{calls:?}");
    assert_eq!(fx.ok(t, "info", json!({"vm_name": "s2"}))["snapshots"], json!([]));
    fx.ok(t, "deprovision", json!({"vm_name": "s2"}));
}
