//! The `lxc` VM type on real LXC (issue 4): a busybox container through
//! define → start → info → shutdown → start → stop → undefine → define
//! (data kept) → deprovision via the agent binary, a veth NIC on a bridge
//! the test creates, a failed start, and the config geats writes.
//!
//! Privileged tests check for root and the LXC tools at run time and print
//! `SKIPPED ... reason` otherwise. Container names carry the test's pid:
//! LXC's cgroups (`lxc.payload.NAME`) are global, not per lxcpath.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::lxc::{busybox_template, missing, Bridge, Containers};
use crate::common::{skip, Env};

fn unique(tag: &str) -> String {
    format!("gt{}{tag}", std::process::id())
}

/// An env with a busybox template and a guard for `names`.
fn lxc_env(names: &[&str]) -> (Env, Containers) {
    let env = Env::new();
    busybox_template(&env.root().join("var/lib/geats/templates"), "busybox");
    let guard = Containers::new(&env.root().join("var/lib/lxc"), names);
    (env, guard)
}

fn definition(extra: Value) -> Value {
    let mut d = json!({"template": "busybox", "ram": 64, "cpus": 1, "storage": [{"name": "root", "type": "dir"}], "metadata": {"ROLE": "test"}});
    if let (Some(o), Some(e)) = (d.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            o.insert(k.clone(), v.clone());
        }
    }
    d
}

/// Wait until `f` holds (containers boot asynchronously).
fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(secs), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn issue_4_lifecycle_through_the_agent() {
    if let Some(why) = missing() {
        return skip("issue_4_lifecycle_through_the_agent", &why);
    }
    let name = unique("l");
    let (env, lxc) = lxc_env(&[&name]);
    let vm = json!({"vm_name": name});
    let dir = env.root().join("var/lib/lxc").join(&name);
    let rootfs = env.root().join("var/lib/geats/volumes").join(&name).join("root");

    // define: config and guest files written, stopped.
    let d = env.ok("define", json!({"vm_name": name, "definition": definition(json!({}))}));
    assert_eq!(d["state"], json!(["stopped", "stopped"]));
    let config = std::fs::read_to_string(dir.join("config")).expect("config written");
    assert!(config.contains(&format!("lxc.rootfs.path = dir:{}\n", rootfs.display())), "{config}");
    assert!(config.contains("lxc.cgroup.memory.limit_in_bytes = 64M\n"), "{config}");
    assert!(config.contains("lxc.net.0.type = empty\n"), "{config}");
    assert_eq!(std::fs::read_to_string(rootfs.join("etc/hostname")).unwrap(), format!("{name}\n"));
    let fb = std::fs::read_to_string(rootfs.join("etc/firstboot.config")).unwrap();
    assert!(fb.contains(&format!("NAME='{name}'")) && fb.contains("ROLE='test'"), "{fb}");
    assert!(rootfs.join("bin/busybox").is_file() && rootfs.join("sbin/init").is_symlink());
    assert_eq!(lxc.lxc_state(&name), "STOPPED");

    // start
    let d = env.ok("start", vm.clone());
    assert_eq!(d["state"], json!(["running", "running"]));
    assert_eq!(lxc.lxc_state(&name), "RUNNING");
    assert_eq!(env.ok("start", vm.clone())["changed"], json!(false), "start of a running VM is a no-op");

    // info: usage from the cgroup, the init pid, the console command.
    let info = env.ok("info", vm.clone());
    assert_eq!(info["state"], json!(["running", "running"]));
    assert_eq!(info["usage"]["pid"].as_i64(), lxc.lxc_pid(&name), "{info}");
    assert!(info["usage"]["memory_bytes"].as_u64().unwrap_or(0) > 0, "{info}");
    assert_eq!(info["usage"]["memory_limit_bytes"], json!(64 << 20), "{info}");
    assert!(info["usage"]["cpu_seconds"].as_f64().is_some(), "{info}");
    assert_eq!(info["console"][0], "lxc-console", "{info}");
    // status reads the same state in one pass.
    let status = env.ok("status", json!({}));
    assert_eq!(status["vms"][&name]["state"], json!(["running", "running"]));

    // The guest applied its firstboot config (exec through the CLI).
    wait_for("rcS", 20, || {
        let out = env.cli(&["exec", &name, "--", "cat", "/run/rcS.done"]);
        String::from_utf8_lossy(&out.stdout).contains(&format!("rcS done: {name}"))
    });

    // reboot: still running, with a new init.
    let before = lxc.lxc_pid(&name);
    let d = env.ok("reboot", vm.clone());
    assert_eq!(d["state"], json!(["running", "running"]));
    wait_for("a new init", 20, || lxc.lxc_pid(&name).is_some() && lxc.lxc_pid(&name) != before);
    assert_eq!(lxc.lxc_state(&name), "RUNNING");

    // A frozen container is paused.
    let lp = lxc.lxcpath.to_string_lossy().into_owned();
    let (c, _, e) = crate::common::lxc::run(&["lxc-freeze", "-P", &lp, "-n", &name]);
    assert_eq!(c, 0, "lxc-freeze: {e}");
    assert_eq!(env.ok("info", vm.clone())["state"], json!(["paused", "frozen"]));
    let (c, _, e) = crate::common::lxc::run(&["lxc-unfreeze", "-P", &lp, "-n", &name]);
    assert_eq!(c, 0, "lxc-unfreeze: {e}");
    assert_eq!(env.ok("info", vm.clone())["state"], json!(["running", "running"]));

    // A container whose pid file is gone (started outside geats) is found
    // by its monitor's command line.
    std::fs::remove_file(dir.join("geats.pid")).unwrap();
    let info = env.ok("info", vm.clone());
    assert_eq!(info["usage"]["pid"].as_i64(), lxc.lxc_pid(&name), "{info}");

    // shutdown: init halts cleanly.
    let d = env.ok("shutdown", vm.clone());
    assert_eq!(d["state"], json!(["stopped", "stopped"]));
    assert_eq!(lxc.lxc_state(&name), "STOPPED");

    // start again, then stop (power off).
    env.ok("start", vm.clone());
    assert_eq!(lxc.lxc_state(&name), "RUNNING");
    let d = env.ok("stop", vm.clone());
    assert_eq!(d["state"], json!(["stopped", "stopped"]));
    assert_eq!(lxc.lxc_state(&name), "STOPPED");

    // Data written into the rootfs survives undefine + define.
    std::fs::write(rootfs.join("root/keep.txt"), "precious").unwrap();
    let d = env.ok("undefine", vm.clone());
    assert_eq!(d["changed"], json!(true));
    assert!(!dir.exists(), "LXCPATH/NAME must be gone");
    assert!(lxc.lxc_state(&name).starts_with("error"), "LXC still knows {name}");
    assert_eq!(env.fail("info", vm.clone())["errorcode"], "not_found");
    assert_eq!(std::fs::read_to_string(rootfs.join("root/keep.txt")).unwrap(), "precious");

    env.ok("define", json!({"vm_name": name, "definition": definition(json!({}))}));
    assert!(dir.join("config").is_file());
    assert_eq!(lxc.lxc_state(&name), "STOPPED");
    assert_eq!(std::fs::read_to_string(rootfs.join("root/keep.txt")).unwrap(), "precious", "define must not reinstall over data");

    // deprovision destroys everything.
    let d = env.ok("deprovision", vm.clone());
    assert_eq!(d["changed"], json!(true));
    assert!(!dir.exists());
    assert!(!rootfs.exists(), "the root volume must be destroyed");
    assert!(lxc.lxc_state(&name).starts_with("error"));
}

#[test]
fn issue_4_veth_on_a_bridge_shows_the_address_inside() {
    if let Some(why) = missing() {
        return skip("issue_4_veth_on_a_bridge_shows_the_address_inside", &why);
    }
    let pid = std::process::id();
    let net = format!("10.213.{}", pid % 250 + 1);
    let bridge = Bridge::new(&format!("gtbr{}", pid % 100_000), &format!("{net}.1/24"));
    let name = unique("n");
    let (env, lxc) = lxc_env(&[&name]);
    let ip = format!("{net}.2");
    let nic = json!([{"name": "eth0", "type": "veth", "bridge": bridge.name, "hwaddr": "02:00:0a:d5:00:02", "ipaddr": format!("{ip}/24"), "gateway": format!("{net}.1")}]);
    // A second volume is bind-mounted at its mountpoint.
    let storage = json!([{"name": "root", "type": "dir"}, {"name": "data", "type": "dir", "mountpoint": "/srv/data"}]);
    env.ok("define", json!({"vm_name": name, "definition": definition(json!({"network": nic, "storage": storage}))}));
    std::fs::write(env.root().join("var/lib/geats/volumes").join(&name).join("data/hello"), "from the host").unwrap();
    env.ok("start", json!({"vm_name": name}));
    assert_eq!(lxc.lxc_state(&name), "RUNNING");
    let out = env.cli(&["exec", &name, "--", "cat", "/srv/data/hello"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from the host", "{}", String::from_utf8_lossy(&out.stderr));
    let out = env.cli(&["exec", &name, "--", "ip", "addr"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "geats exec failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains(&format!("inet {ip}/24 brd {net}.255")), "{text}");
    assert!(text.contains("link/ether 02:00:0a:d5:00:02"), "{text}");
    let info = env.ok("info", json!({"vm_name": name}));
    assert_eq!(info["ip"], json!(ip), "{info}");
    // `list` among more containers: the address reaches its own row only.
    for i in 0..8 {
        env.ok("define", json!({"vm_name": format!("{name}x{i}"), "definition": {"ram": 64, "storage": [{"name": "root", "type": "dir"}]}}));
    }
    let out = env.cli(&["list", "--json"]);
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 9, "{rows:?}");
    let row = rows.iter().find(|r| r["name"] == json!(name)).unwrap();
    assert_eq!(row["ip"], json!(ip), "{rows:?}");
    assert!(rows.iter().filter(|r| r["name"] != json!(name)).all(|r| r["ip"].is_null()), "{rows:?}");
    // The host end is on the bridge.
    let (_, links, _) = crate::common::lxc::run(&["ip", "-o", "link", "show", "master", &bridge.name]);
    assert!(!links.trim().is_empty(), "no veth on {}", bridge.name);
    env.ok("deprovision", json!({"vm_name": name}));
    assert!(lxc.lxc_state(&name).starts_with("error"));
}

#[test]
fn issue_4_failed_start_reports_lxcs_own_error() {
    if let Some(why) = missing() {
        return skip("issue_4_failed_start_reports_lxcs_own_error", &why);
    }
    let name = unique("f");
    let (env, lxc) = lxc_env(&[&name]);
    let missing_bridge = format!("gtnb{}", std::process::id() % 100_000);
    let nic = json!([{"name": "eth0", "type": "veth", "bridge": missing_bridge, "ipaddr": "10.214.0.2/24"}]);
    env.ok("define", json!({"vm_name": name, "definition": definition(json!({"network": nic}))}));
    let e = env.fail("start", json!({"vm_name": name}));
    assert_eq!(e["errorcode"], "lxc_error", "{e}");
    let msg = e["message"].as_str().unwrap_or_default();
    assert!(msg.contains(&format!("to bridge \"{missing_bridge}\", bridge interface doesn't exist")), "LXC's own line is missing: {msg}");
    // Still defined, and stopped.
    assert_eq!(lxc.lxc_state(&name), "STOPPED");
    let info = env.ok("info", json!({"vm_name": name}));
    assert_eq!(info["state"], json!(["stopped", "stopped"]));
    env.ok("deprovision", json!({"vm_name": name}));
}

#[test]
fn issue_4_request_cannot_add_config_lines() {
    // No LXC needed: define only writes files (no template: the rootfs is
    // created empty under default_rootfs_prefix).
    let env = Env::with_config("[vm_types.lxc]\ndriver = \"lxc\"\nconfig = { \"lxc.apparmor.profile\" = \"unconfined\" }\n");
    let lxcpath = env.root().join("var/lib/lxc");
    let def = json!({"description": "line one\nlxc.cgroup.devices.allow = a", "ram": 128,
        "network": [{"name": "eth0", "bridge": "br0", "hwaddr": "02:00:00:00:00:01", "ipaddr": "10.0.0.5", "netmask": "255.255.255.0", "gateway": "10.0.0.1"}]});
    env.ok("define", json!({"vm_name": "safe1", "definition": def}));
    let out = env.cli(&["info", "--config", "safe1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(text, std::fs::read_to_string(lxcpath.join("safe1/config")).unwrap());
    assert!(!text.contains("devices.allow = a\n") && !text.contains("line one"), "{text}");
    let root = env.root().display().to_string();
    insta::with_settings!({filters => vec![(root.as_str(), "[ROOT]")]}, {
        insta::assert_snapshot!(text);
    });

    // Invalid values are refused before anything is written.
    let cases = [
        (json!({"metadata": {"PATH": "/tmp"}}), "/definition/metadata/PATH"),
        (json!({"network": [{"name": "eth0", "type": "macvlan"}]}), "/definition/network/0/bridge"),
        (json!({"network": [{"name": "eth0", "ipaddr": "10.0.0.5\nlxc.x = 1"}]}), "/definition/network/0/ipaddr"),
        (json!({"ram": 1}), "/definition/ram"),
        (json!({"storage": [{"name": "root", "type": "dir"}, {"name": "data", "type": "dir", "mountpoint": "/srv/../etc"}]}), "/definition/storage/1/mountpoint"),
    ];
    for (def, pointer) in cases {
        let e = env.fail("define", json!({"vm_name": "bad1", "definition": def}));
        assert_eq!(e["errorcode"], "invalid_data", "{e}");
        assert!(e["message"].as_str().unwrap_or_default().contains(pointer), "{pointer}: {e}");
        assert!(!lxcpath.join("bad1").exists(), "{pointer}: files written for a refused define");
    }

    // A bad extra key in the VM type's settings is a config error.
    let bad = Env::with_config("[vm_types.lxc]\ndriver = \"lxc\"\nconfig = { \"lxc.x\\nlxc.y\" = \"1\" }\n");
    let e = bad.fail("define", json!({"vm_name": "x1", "definition": {}}));
    assert!(e["message"].as_str().unwrap_or_default().contains("does not match"), "{e}");
    let bad = Env::with_config("[vm_types.lxc]\ndriver = \"lxc\"\nconfig = { \"lxc.apparmor.profile\" = \"a\\nlxc.y = 1\" }\n");
    let e = bad.fail("define", json!({"vm_name": "x1", "definition": {}}));
    assert!(e["message"].as_str().unwrap_or_default().contains("control character"), "{e}");
}

#[test]
fn issue_4_shutdown_that_times_out_is_reported_not_forced() {
    if let Some(why) = missing() {
        return skip("issue_4_shutdown_that_times_out_is_reported_not_forced", &why);
    }
    let name = unique("s");
    // busybox init ignores SIGHUP as a halt request (it rereads inittab).
    let env = Env::with_config("[vm_types.lxc]\ndriver = \"lxc\"\nshutdown_timeout = 1\nconfig = { \"lxc.signal.halt\" = \"SIGHUP\" }\n");
    busybox_template(&env.root().join("var/lib/geats/templates"), "busybox");
    let lxc = Containers::new(&env.root().join("var/lib/lxc"), &[&name]);
    let vm = json!({"vm_name": name});
    env.ok("define", json!({"vm_name": name, "definition": definition(json!({}))}));
    env.ok("start", vm.clone());
    let e = env.fail("shutdown", vm.clone());
    assert_eq!(e["errorcode"], "lxc_error", "{e}");
    assert!(e["message"].as_str().unwrap_or_default().contains("did not halt within 1 s"), "{e}");
    assert_eq!(lxc.lxc_state(&name), "RUNNING", "shutdown must not kill");
    assert_eq!(env.ok("stop", vm.clone())["state"], json!(["stopped", "stopped"]));
    assert_eq!(lxc.lxc_state(&name), "STOPPED");
    env.ok("deprovision", vm);
}

#[test]
fn issue_4_rootfs_without_a_volume() {
    if let Some(why) = missing() {
        return skip("issue_4_rootfs_without_a_volume", &why);
    }
    let name = unique("t");
    let other = unique("u");
    let (env, lxc) = lxc_env(&[&name, &other]);
    let rootfs = env.root().join("var/lib/geats/rootfs").join(&name);
    let vm = json!({"vm_name": name});
    // Kept across undefine when not transient...
    env.ok("define", json!({"vm_name": name, "definition": {"template": "busybox"}}));
    assert!(rootfs.join("bin/busybox").is_file(), "template installed into the default rootfs");
    assert!(rootfs.join("etc/firstboot.config").is_file());
    env.ok("start", vm.clone());
    assert_eq!(lxc.lxc_state(&name), "RUNNING");
    // Provision reinstalls the template over a used rootfs.
    env.ok("stop", vm.clone());
    std::fs::write(rootfs.join("root/scratch.txt"), "old").unwrap();
    std::fs::remove_file(rootfs.join("bin/busybox")).unwrap();
    env.ok("provision", json!({"vm_name": name, "definition": {"template": "busybox"}}));
    assert!(!rootfs.join("root/scratch.txt").exists(), "provision erased the old root");
    assert!(rootfs.join("bin/busybox").is_file(), "provision reinstalled the template");
    env.ok("start", vm.clone());
    assert_eq!(lxc.lxc_state(&name), "RUNNING");
    env.ok("undefine", vm.clone());
    assert!(rootfs.join("bin/busybox").is_file(), "a non-transient rootfs is kept");
    env.ok("deprovision", vm.clone());
    assert!(!rootfs.exists(), "deprovision destroys the rootfs geats created");
    // ...removed with a transient VM.
    let rootfs2 = env.root().join("var/lib/geats/rootfs").join(&other);
    env.ok("define", json!({"vm_name": other, "definition": {"template": "busybox", "transient": true}}));
    assert!(rootfs2.join("bin/busybox").is_file());
    env.ok("undefine", json!({"vm_name": other}));
    assert!(!rootfs2.exists(), "a transient VM's rootfs is removed");
}

/// Unmounts whatever a failed test left mounted under a root (declared
/// before the `Containers` guard, so it runs after their power-off).
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        crate::common::release_under(&self.0);
    }
}

/// Every path under `dir`, relative, sorted.
fn tree(dir: &std::path::Path) -> Vec<String> {
    fn walk(base: &std::path::Path, d: &std::path::Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(base).unwrap_or(&p).to_string_lossy().into_owned());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Issue 15: a fresh install on an overlay goes into the volume's own
/// layer while it is unmounted (`Volume::offline_root`): `define` mounts
/// nothing, its upper layer holds the guest files and an `/etc` made as
/// the template's, the shared template is untouched, and the container
/// sees what it saw when `define` wrote through a mounted overlay.
#[test]
fn issue_15_overlay_install_writes_the_upper_layer_unmounted() {
    const TEST: &str = "issue_15_overlay_install_writes_the_upper_layer_unmounted";
    if let Some(why) = missing() {
        return skip(TEST, &why);
    }
    use std::os::unix::fs::MetadataExt;
    let name = unique("o");
    let env = Env::with_config("[storage_types.ov]\ndriver = \"overlay\"\n");
    busybox_template(&env.root().join("var/lib/geats/templates"), "busybox");
    let _unmount = Unmount(env.root().to_path_buf());
    let lxc = Containers::new(&env.root().join("var/lib/lxc"), &[&name]);
    let vm = json!({"vm_name": name});
    let vol = env.root().join("var/lib/geats/overlay").join(&name).join("root");
    let none: Vec<String> = Vec::new();
    let mounts = || crate::common::mounts_under(env.root()).into_iter().map(|m| m.mount_point.display().to_string()).collect::<Vec<_>>();

    let def = json!({"vm_name": name, "definition": definition(json!({"storage": [{"name": "root", "type": "ov"}]}))});
    // A dry run plans the same steps as the run takes: no activation.
    let mut dry = def.clone();
    dry["dry_run"] = json!(true);
    let planned = env.ok("define", dry)["steps"].clone();
    let d = env.ok("define", def);
    assert_eq!(d["state"], json!(["stopped", "stopped"]));
    assert_eq!(mounts(), none, "define left something mounted");
    let history: Value = serde_json::from_str(&crate::common::cli_ok(&env, &["history", &name, "--json"])).expect("history JSON");
    let steps = history.as_array().and_then(|h| h.last()).map(|e| e["steps"].clone()).expect("a journal entry");
    let ov = env.root().join("var/lib/geats/overlay").join(&name).join("root");
    let expect = json!([
        format!("define volume root (overlay {})", ov.display()),
        "install template busybox",
        "write guest configuration",
        format!("define lxc VM {name}"),
        "record definition"
    ]);
    assert_eq!(steps, expect, "define activated the overlay");
    assert_eq!(planned, expect, "the dry run plans other steps");
    let upper = vol.join("upper");
    assert_eq!(tree(&upper), ["etc", "etc/firstboot.config", "etc/hostname"], "the upper layer holds more than the guest files");
    assert_eq!(std::fs::read_to_string(upper.join("etc/hostname")).expect("hostname"), format!("{name}\n"));
    let fb = std::fs::read_to_string(upper.join("etc/firstboot.config")).expect("firstboot.config");
    assert!(fb.contains(&format!("NAME='{name}'")) && fb.contains("ROLE='test'"), "{fb}");
    let entry = std::fs::read_to_string(vol.join("lower")).expect("lower");
    let lower = env.root().join("var/lib/geats/overlay/.templates").join(entry.trim());
    // /etc as the template has it, the files and the layer's top owned
    // by the container's root (the template is shifted: overlayfs cannot
    // be mounted idmapped).
    let (le, ue) = (std::fs::metadata(lower.join("etc")).expect("template etc"), std::fs::metadata(upper.join("etc")).expect("upper etc"));
    assert_eq!((ue.uid(), ue.gid(), ue.mode()), (le.uid(), le.gid(), le.mode()), "/etc differs from the template's");
    assert_ne!(le.uid(), 0, "the template was not shifted");
    for f in ["etc/hostname", "etc/firstboot.config", ""] {
        let m = std::fs::metadata(upper.join(f)).expect("upper file");
        assert_eq!((m.uid(), m.gid()), (le.uid(), le.gid()), "owner of upper/{f}");
    }
    assert_eq!(std::fs::metadata(upper.join("etc/firstboot.config")).expect("fb").mode() & 0o777, 0o600);
    assert!(!lower.join("etc/hostname").exists() && !lower.join("etc/firstboot.config").exists(), "define wrote into the shared template");
    let config = std::fs::read_to_string(env.root().join("var/lib/lxc").join(&name).join("config")).expect("config");
    assert!(config.contains(&format!("lxc.rootfs.path = dir:{}\n", vol.join("merged").display())), "{config}");
    assert!(!config.contains("idmap=container"), "shifted files are not mounted idmapped: {config}");

    // The container sees the template with the guest files, as its own.
    env.ok("start", vm.clone());
    assert_eq!(lxc.lxc_state(&name), "RUNNING");
    let inside = |cmd: &[&str]| {
        let mut args = vec!["exec", name.as_str(), "--"];
        args.extend_from_slice(cmd);
        let o = env.cli(&args);
        assert!(o.status.success(), "{cmd:?}: {}", crate::common::out_text(&o));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    assert_eq!(inside(&["cat", "/etc/hostname"]), name);
    assert_eq!(inside(&["stat", "-c", "%u:%g %a", "/", "/etc", "/etc/firstboot.config"]), "0:0 755\n0:0 755\n0:0 600");
    assert!(inside(&["cat", "/etc/passwd"]).starts_with("root:"), "the template does not show through");
    env.ok("stop", vm.clone());
    assert_eq!(mounts(), none, "stop left the overlay mounted");

    env.ok("deprovision", vm);
    assert!(!vol.exists(), "deprovision left the volume");
    assert_eq!(mounts(), none);
}

/// A tar.gz with `etc` or `etc/hostname` as a symlink to `target`.
fn symlink_template(dir: &std::path::Path, name: &str, link: &str, target: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    let f = std::fs::File::create(dir.join(format!("{name}.tar.gz"))).unwrap();
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(f, flate2::Compression::fast()));
    if link.contains('/') {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, "etc", std::io::empty()).unwrap();
    }
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, link, target).unwrap();
    b.into_inner().unwrap().finish().unwrap();
}

/// Define from two hostile templates on storage type `kind`: `/etc` a
/// symlink to a host directory (refused, nothing written there, nothing
/// left defined), and `/etc/hostname` a symlink to a host file (defined as
/// `evil2`, the host file untouched).
fn define_from_symlinked_templates(env: &Env, kind: &str) {
    let templates = env.root().join("var/lib/geats/templates");
    let outside = env.root().join("host");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("file"), "host data").unwrap();
    symlink_template(&templates, "etclink", "etc", &outside);
    symlink_template(&templates, "filelink", "etc/hostname", &outside.join("file"));
    let storage = json!([{"name": "root", "type": kind}]);

    let e = env.fail("define", json!({"vm_name": "evil1", "definition": {"template": "etclink", "storage": storage}}));
    assert_eq!(e["errorcode"], "invalid_data", "{e}");
    assert!(e["message"].as_str().unwrap_or_default().contains("symlink"), "{e}");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1, "geats wrote outside the rootfs");
    assert!(!env.root().join("var/lib/lxc/evil1").exists());

    env.ok("define", json!({"vm_name": "evil2", "definition": {"template": "filelink", "storage": storage}}));
    assert_eq!(std::fs::read_to_string(outside.join("file")).unwrap(), "host data");
}

#[test]
fn issue_4_template_symlinks_cannot_redirect_guest_files() {
    // No LXC needed: define unpacks and writes the guest files.
    let env = Env::new();
    define_from_symlinked_templates(&env, "dir");
    // /etc/hostname was replaced inside the rootfs.
    let hostname = env.root().join("var/lib/geats/volumes/evil2/root/etc/hostname");
    assert!(!hostname.is_symlink());
    assert_eq!(std::fs::read_to_string(hostname).unwrap(), "evil2\n");
}

/// Issue 15: the same refusals when the install goes into an overlay's
/// upper layer unmounted (the template's `/etc` is read from the shared
/// template, the files written beside it in the volume's own layer).
#[test]
fn issue_15_overlay_install_refuses_template_symlinks() {
    let env = Env::with_config("[storage_types.ov]\ndriver = \"overlay\"\n");
    let _unmount = Unmount(env.root().to_path_buf());
    define_from_symlinked_templates(&env, "ov");
    assert!(!env.root().join("var/lib/geats/overlay/evil1").exists(), "the failed define left its volume");
    let vol = env.root().join("var/lib/geats/overlay/evil2/root");
    let hostname = vol.join("upper/etc/hostname");
    assert!(!hostname.is_symlink());
    assert_eq!(std::fs::read_to_string(hostname).unwrap(), "evil2\n");
    // The shared template keeps its link.
    let entry = std::fs::read_to_string(vol.join("lower")).expect("lower");
    let lower = env.root().join("var/lib/geats/overlay/.templates").join(entry.trim());
    assert!(lower.join("etc/hostname").is_symlink(), "the template's own file was replaced");
    assert_eq!(crate::common::mounts_under(env.root()), Vec::new());
    env.ok("deprovision", json!({"vm_name": "evil2"}));
}

/// Issue 13, acceptance 7: a definition in the original Geats's form
/// (address plus dotted netmask) gives the guest the original's
/// `IPADDRESS` and `NETMASK` beside geats's own keys, read back by a shell
/// sourcing the file the way a guest's boot script does.
#[test]
fn issue_13_firstboot_carries_the_original_ipaddress_and_netmask() {
    if let Some(why) = missing() {
        return skip("issue_13_firstboot_carries_the_original_ipaddress_and_netmask", &why);
    }
    let name = unique("f");
    let (env, _lxc) = lxc_env(&[&name]);
    let rootfs = env.root().join("var/lib/geats/volumes").join(&name).join("root");
    let fb = rootfs.join("etc/firstboot.config");
    let read = |fb: &std::path::Path| {
        let script = ". \"$1\"; printf '%s|%s|%s|%s' \"$IPADDRESS\" \"$NETMASK\" \"$IPV4\" \"$GATEWAY\"";
        let o = std::process::Command::new("sh").args(["-c", script, "sh"]).arg(fb).output().unwrap();
        assert!(o.status.success(), "{}", crate::common::out_text(&o));
        String::from_utf8(o.stdout).unwrap()
    };
    // The original's form: ipaddr and netmask apart (no start: the bridge
    // need not exist for define).
    let nic = json!([{"name": "eth0", "bridge": "br0", "ipaddr": "192.168.1.200", "netmask": "255.255.255.0", "gateway": "192.168.1.1", "hwaddr": "02:03:04:05:06:07"}]);
    env.ok("define", json!({"vm_name": name, "definition": definition(json!({"network": nic}))}));
    assert_eq!(read(&fb), "192.168.1.200|255.255.255.0|192.168.1.200/24|192.168.1.1");
    // geats's prefix form gives the same dotted netmask.
    let nic = json!([{"name": "eth0", "bridge": "br0", "ipaddr": "10.1.2.3/20", "gateway": "10.1.0.1"}]);
    env.ok("define", json!({"vm_name": name, "definition": definition(json!({"network": nic}))}));
    assert_eq!(read(&fb), "10.1.2.3|255.255.240.0|10.1.2.3/20|10.1.0.1");
    env.ok("deprovision", json!({"vm_name": name}));
}
