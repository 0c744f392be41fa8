//! Issue 19: a running VM takes a new `ram` and `cpus` at once, through
//! its cgroup (same init, no restart); what cannot change live (a NIC) is
//! written for the next start and listed as pending until then; a limit
//! below what the VM uses is refused and changes nothing. On real LXC.

use serde_json::{json, Value};

use crate::common::lxc::{busybox_template, missing, run, Bridge, Containers};
use crate::common::{skip, Env};

fn definition(extra: Value) -> Value {
    let mut d = json!({"template": "busybox", "ram": 64, "cpus": 1, "storage": [{"name": "root", "type": "dir"}]});
    if let (Some(o), Some(e)) = (d.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            o.insert(k.clone(), v.clone());
        }
    }
    d
}

/// `lxc-cgroup KEY` of a running container, through LXC itself.
fn lxc_cgroup(lxcpath: &str, name: &str, key: &str) -> String {
    let (c, out, err) = run(&["lxc-cgroup", "-P", lxcpath, "-n", name, key]);
    assert_eq!(c, 0, "lxc-cgroup {key}: {err}");
    out.trim().to_string()
}

/// The memory limit and CPU quota keys of this host's cgroup layout.
fn limit_keys() -> (&'static str, &'static str) {
    if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        ("memory.max", "cpu.max")
    } else {
        ("memory.limit_in_bytes", "cpu.cfs_quota_us")
    }
}

#[test]
fn issue_19_live_limits_and_pending_changes() {
    const TEST: &str = "issue_19_live_limits_and_pending_changes";
    if let Some(why) = missing() {
        return skip(TEST, &why);
    }
    let name = format!("gt{}ll", std::process::id());
    let env = Env::new();
    busybox_template(&env.root().join("var/lib/geats/templates"), "busybox");
    let lxc = Containers::new(&env.root().join("var/lib/lxc"), &[&name]);
    let lp = lxc.lxcpath.to_string_lossy().into_owned();
    let vm = json!({"vm_name": name});
    let (mem_key, cpu_key) = limit_keys();
    let v2 = mem_key == "memory.max";

    env.ok("define", json!({"vm_name": name, "definition": definition(json!({}))}));
    env.ok("start", vm.clone());
    let pid = lxc.lxc_pid(&name).expect("init pid");
    assert_eq!(lxc_cgroup(&lp, &name, mem_key), (64u64 << 20).to_string());

    // ram and cpus change at once, on the same init.
    let d = env.ok("define", json!({"vm_name": name, "definition": definition(json!({"ram": 128, "cpus": 2}))}));
    assert_eq!(d["changed"], json!(true), "{d}");
    assert_eq!(d["applied_live"], json!(["ram", "cpus"]), "{d}");
    assert!(d.get("pending").is_none(), "nothing waits: {d}");
    assert_eq!(lxc_cgroup(&lp, &name, mem_key), (128u64 << 20).to_string());
    let cpu = lxc_cgroup(&lp, &name, cpu_key);
    assert!(if v2 { cpu == "200000 100000" } else { cpu == "200000" }, "cpu quota {cpu}");
    assert_eq!(lxc.lxc_pid(&name), Some(pid), "no restart");
    assert_eq!(env.ok("info", vm.clone())["usage"]["memory_limit_bytes"], json!(128u64 << 20));

    // A limit below what the VM uses is refused, and nothing changes.
    let out = env.cli(&["exec", &name, "--", "dd", "if=/dev/zero", "of=/ballast", "bs=1M", "count=24"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let e = env.fail("define", json!({"vm_name": name, "definition": definition(json!({"ram": 8, "cpus": 2}))}));
    assert_eq!(e["errorcode"], "invalid_state", "{e}");
    assert!(e["message"].as_str().unwrap_or_default().contains("more than the new ram of 8 MB"), "{e}");
    assert_eq!(lxc_cgroup(&lp, &name, mem_key), (128u64 << 20).to_string(), "limit unchanged");
    assert_eq!(env.ok("info", vm.clone())["definition"]["ram"], json!(128), "definition unchanged");
    let config = std::fs::read_to_string(lxc.lxcpath.join(&name).join("config")).expect("config");
    assert!(config.contains("memory.limit_in_bytes = 128M"), "config unchanged: {config}");

    // A NIC cannot be added live: written for the next start, pending.
    let pid_net = std::process::id() % 100_000;
    let bridge = Bridge::new(&format!("gtlb{pid_net}"), "10.219.7.1/24");
    let nic = json!([{"name": "eth0", "type": "veth", "bridge": bridge.name, "ipaddr": "10.219.7.2/24"}]);
    let d = env.ok("define", json!({"vm_name": name, "definition": definition(json!({"ram": 128, "cpus": 2, "network": nic}))}));
    assert_eq!(d["pending"], json!(["network"]), "{d}");
    assert!(d.get("applied_live").is_none(), "{d}");
    assert_eq!(env.ok("info", vm.clone())["pending"], json!(["network"]));
    let has_eth0 = || env.cli(&["exec", &name, "--", "test", "-e", "/sys/class/net/eth0"]).status.success();
    assert!(!has_eth0(), "not live");
    assert_eq!(lxc.lxc_pid(&name), Some(pid), "still no restart");
    // The CLI says so too.
    let out = env.cli(&["info", &name]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Pending:     network"), "{}", String::from_utf8_lossy(&out.stdout));

    // The next start applies it.
    env.ok("stop", vm.clone());
    env.ok("start", vm.clone());
    assert!(has_eth0(), "the NIC is there after the restart");
    assert!(env.ok("info", vm.clone()).get("pending").is_none(), "nothing pending any more");

    // geats set: a partial define through the CLI.
    let out = env.cli(&["set", &name, "ram=96", "cpus=none"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("applied to the running VM: ram, cpus"), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(lxc_cgroup(&lp, &name, mem_key), (96u64 << 20).to_string());
    let info = env.ok("info", vm.clone());
    assert_eq!((info["definition"]["ram"].clone(), info["definition"].get("cpus")), (json!(96), None), "{info}");
    let out = env.cli(&["set", &name, "template=other"]);
    assert_eq!(out.status.code(), Some(4), "only ram, cpus and description: {}", String::from_utf8_lossy(&out.stderr));

    env.ok("deprovision", vm);
}
