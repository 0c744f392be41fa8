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

/// The init's start time, clock ticks since boot (`/proc/PID/stat` field 22).
fn start_ticks(pid: i64) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    after.split_whitespace().nth(19).and_then(|s| s.parse().ok()).expect("starttime")
}

#[test]
fn issue_19_reconcile_brings_back_what_should_run() {
    const TEST: &str = "issue_19_reconcile_brings_back_what_should_run";
    if let Some(why) = missing() {
        return skip(TEST, &why);
    }
    let p = std::process::id();
    let [first, second, stopped, manual] = ["ra", "rb", "rc", "rd"].map(|t| format!("gt{p}{t}"));
    let env = Env::with_config("boot_parallel = 2\n");
    busybox_template(&env.root().join("var/lib/geats/templates"), "busybox");
    let lxc = Containers::new(&env.root().join("var/lib/lxc"), &[&first, &second, &stopped, &manual]);
    let lp = lxc.lxcpath.to_string_lossy().into_owned();
    let define = |name: &str, extra: Value| env.ok("define", json!({"vm_name": name, "definition": definition(extra)}));
    // Lower priority defined first, so the order is the priority's doing.
    define(&second, json!({"boot_priority": 0}));
    define(&first, json!({"boot_priority": 10, "boot_delay": 1}));
    define(&stopped, json!({}));
    define(&manual, json!({"autostart": false}));
    for n in [&first, &second, &stopped, &manual] {
        env.ok("start", json!({"vm_name": n}));
    }
    env.ok("stop", json!({"vm_name": stopped}));
    // Every container killed behind geats's back (a host crash).
    for n in [&first, &second, &manual] {
        let (c, _, e) = run(&["lxc-stop", "-P", &lp, "-n", n, "-k"]);
        assert_eq!(c, 0, "lxc-stop -k {n}: {e}");
        assert_eq!(lxc.lxc_state(n), "STOPPED");
    }

    // A dry run says what it would do and does nothing.
    let out = env.cli(&["reconcile", "--dry-run", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(r["started"], json!([first, second]), "{r}");
    assert_eq!(lxc.lxc_state(&first), "STOPPED");

    let out = env.cli(&["reconcile", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).expect("json");
    crate::common::schema::check_reply("reconcile", &r);
    assert_eq!(r["started"], json!([first, second]), "priority order: {r}");
    assert_eq!(r["skipped"], json!([manual]), "autostart false: {r}");
    assert_eq!((r["failed"].clone(), r["changed"].clone()), (json!([]), json!(true)), "{r}");
    assert_eq!((lxc.lxc_state(&first), lxc.lxc_state(&second)), ("RUNNING".into(), "RUNNING".into()));
    assert_eq!(lxc.lxc_state(&stopped), "STOPPED", "desired stopped is never started");
    assert_eq!(lxc.lxc_state(&manual), "STOPPED", "autostart false is left alone");
    // boot_priority order, seen from the inits' start times (boot_delay 1 s).
    let (a, b) = (start_ticks(lxc.lxc_pid(&first).expect("pid")), start_ticks(lxc.lxc_pid(&second).expect("pid")));
    assert!(a < b, "{first} started at tick {a}, {second} at {b}");
    for n in [&first, &second] {
        assert_eq!(env.ok("info", json!({"vm_name": n}))["health"], "ok");
    }

    // Run again: nothing to do.
    let r = env.ok("reconcile", json!({}));
    assert_eq!((r["started"].clone(), r["changed"].clone()), (json!([]), json!(false)), "{r}");

    for n in [&first, &second, &stopped, &manual] {
        env.ok("deprovision", json!({"vm_name": n}));
    }
}

#[test]
fn issue_19_reconcile_unit_runs_a_command_geats_accepts() {
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/geats-reconcile.service")).expect("unit");
    let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("ExecStart");
    let argv: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(argv, ["/usr/bin/geats", "reconcile"], "{exec}");
    assert!(unit.contains("Type=oneshot") && unit.contains("WantedBy=multi-user.target"), "{unit}");
    // The same arguments on a fresh root: nothing to start, exit 0.
    let env = Env::new();
    let out = env.cli(&argv[1..]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("reconcile: started: none"), "{}", String::from_utf8_lossy(&out.stdout));
}
