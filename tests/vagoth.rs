//! geats under Vagoth's GeatsLocal driver: the stdio agent as the driver
//! reads it, through a real sshd on loopback and as `geats_jsonagent`.

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::sshd::{sshd_missing, Sshd};
use crate::common::procs::shell_safe;
use crate::common::{bin, dummy_definition, run_with_stdin, skip, Env};


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

/// Issue 13, acceptance 6: the shipped wrapper `contrib/geats_jsonagent-ssh`,
/// installed on the controller as `geats_jsonagent`, lets the stock
/// GeatsLocal driver (which only runs `geats_jsonagent` locally) drive a
/// node over SSH: every action lands in the node's geats (a real sshd on
/// loopback), with no geats on the controller's PATH at all. The node comes
/// from GEATS_SSH_HOST or the host file; without one, and with an
/// unreachable node, the driver sees a failure.
#[test]
fn issue_13_geats_jsonagent_ssh_wrapper() {
    if let Some(why) = sshd_missing() {
        return skip("issue_13_geats_jsonagent_ssh_wrapper", &why);
    }
    // The node: geats on the login's PATH, its own root.
    let node = Env::new();
    let node_bin = node.root().join("bin");
    std::fs::create_dir_all(&node_bin).unwrap();
    std::os::unix::fs::symlink(bin(), node_bin.join("geats")).unwrap();
    let sshd = Sshd::start_with(
        node.root(),
        &format!("SetEnv PATH={}:/usr/bin:/bin GEATS_ROOT={} GEATS_CONFIG={}\n", shell_safe(&node_bin), shell_safe(node.root()), shell_safe(&node.config)),
    );
    // The controller: only the wrapper, named as GeatsLocal runs it.
    let controller = tempfile::Builder::new().prefix("geats-controller-").tempdir().unwrap();
    let ctl_bin = controller.path().join("bin");
    std::fs::create_dir_all(&ctl_bin).unwrap();
    std::fs::copy(crate::common::manifest().join("contrib/geats_jsonagent-ssh"), ctl_bin.join("geats_jsonagent")).unwrap();
    let ssh_cfg = controller.path().join("ssh_config");
    std::fs::write(
        &ssh_cfg,
        format!(
            "Host node1\n  HostName 127.0.0.1\n  User root\n  Port {}\n  IdentityFile {}\n  IdentitiesOnly yes\n  StrictHostKeyChecking no\n  UserKnownHostsFile {}\n  LogLevel ERROR\n",
            sshd.port,
            sshd.key.display(),
            sshd.known_hosts.display()
        ),
    )
    .unwrap();
    let ctl_path = format!("{}:/usr/bin:/bin", ctl_bin.display());
    assert!(!std::env::split_paths(&ctl_path).any(|d| d.join("geats").exists()), "the controller must not have a local geats");
    let wrapper = |vars: &[(&str, String)]| {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        let ctl_path = ctl_path.clone();
        let home = controller.path().to_path_buf();
        move |input: &[u8]| {
            let mut c = Command::new("geats_jsonagent");
            c.env_clear().env("PATH", &ctl_path).env("HOME", &home).envs(vars.iter().map(|(k, v)| (k, v)));
            run_with_stdin(c, input)
        }
    };
    let opts = format!("-F {}", shell_safe(&ssh_cfg));
    let run = wrapper(&[("GEATS_SSH_HOST", "node1".into()), ("GEATS_SSH_OPTIONS", opts.clone())]);
    vagoth_lifecycle(&run);
    // It all happened on the node: its journal has the lifecycle.
    let h = node.cli(&["history", "--json"]);
    let text = String::from_utf8_lossy(&h.stdout);
    assert!(text.contains("\"vm1\"") && text.contains("deprovision"), "{text}");

    // The node from the host file instead of the environment.
    let host_file = controller.path().join("jsonagent-ssh-host");
    std::fs::write(&host_file, "node1\n").unwrap();
    let run = wrapper(&[("GEATS_SSH_HOST_FILE", host_file.display().to_string()), ("GEATS_SSH_OPTIONS", opts.clone())]);
    check_vagoth_status(&vagoth_call(&run, "status", json!({})).unwrap());

    // No node named: exit 2 with the reason; the driver raises.
    let run = wrapper(&[("GEATS_SSH_HOST_FILE", controller.path().join("none").display().to_string())]);
    let e = vagoth_call(&run, "status", json!({})).unwrap_err();
    assert!(e.contains("exited with Some(2)") && e.contains("set GEATS_SSH_HOST"), "{e}");
    // An unreachable node: ssh's own 255; the driver raises.
    let run = wrapper(&[("GEATS_SSH_HOST", "root@127.0.0.1".into()), ("GEATS_SSH_OPTIONS", "-p 1 -o ConnectTimeout=5".into())]);
    let e = vagoth_call(&run, "start", json!({"vm_name": "vm1"})).unwrap_err();
    assert!(e.contains("exited with Some(255)"), "{e}");
}
