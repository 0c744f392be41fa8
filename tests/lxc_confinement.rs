//! Issue 12: confined containers, checked on real LXC containers from the
//! host and from inside. Unprivileged by default, with idmapped mounts or
//! (forced by `idmapped_mounts = "never"`) a template unpacked with
//! shifted owners; `"privileged": true` still fenced off (cap drops,
//! device allow-list, seccomp). Each test prints `SKIPPED ... reason`
//! without root or LXC.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::lxc::{busybox_template, missing, run, Bridge, Containers};
use crate::common::{skip, Env, Missing};

fn unique(tag: &str) -> String {
    format!("gt{}{tag}", std::process::id())
}

fn env_with(toml: &str, names: &[&str]) -> (Env, Containers) {
    let env = Env::with_config(toml);
    busybox_template(&env.root().join("var/lib/geats/templates"), "busybox");
    let guard = Containers::new(&env.root().join("var/lib/lxc"), names);
    (env, guard)
}

fn definition(extra: Value) -> Value {
    let mut d = json!({"template": "busybox", "ram": 64,
        "storage": [{"name": "root", "type": "dir"}, {"name": "data", "type": "dir", "mountpoint": "/srv/data"}]});
    if let (Some(o), Some(e)) = (d.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            o.insert(k.clone(), v.clone());
        }
    }
    d
}

/// Run `script` with the container's `sh`; (exit code, stdout + stderr).
fn sh(env: &Env, name: &str, script: &str) -> (i32, String) {
    let out = env.cli(&["exec", name, "--", "sh", "-c", script]);
    (out.status.code().unwrap_or(-1), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn wait_booted(env: &Env, name: &str) {
    let t = Instant::now();
    loop {
        let (_, out) = sh(env, name, "cat /run/rcS.done");
        if out.contains(&format!("rcS done: {name}")) {
            return;
        }
        if t.elapsed() > Duration::from_secs(30) {
            let (_, ps) = sh(env, name, "ps; ls -la /run /dev; cat /proc/mounts");
            let log = std::fs::read_to_string(env.root().join("var/lib/lxc").join(name).join("lxc.log")).unwrap_or_default();
            panic!("{name} did not boot: {out}\n{ps}\nlxc.log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The host uid of the container's init (`/proc/PID/status`, real uid).
fn init_uid(lxc: &Containers, name: &str) -> u32 {
    let pid = lxc.lxc_pid(name).unwrap_or_else(|| panic!("{name}: no init pid"));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("init status");
    let line = status.lines().find(|l| l.starts_with("Uid:")).expect("Uid line");
    line.split_whitespace().nth(1).and_then(|u| u.parse().ok()).expect("uid")
}

/// Can the host user `nobody` reach `path` (stat it)?
fn nobody_can_reach(path: &Path) -> bool {
    let p = path.to_string_lossy().into_owned();
    let (c, _, _) = run(&["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", "stat", &p]);
    c == 0
}

/// The device cgroup (v1) allow-list of the container's init, read on the
/// host: the kernel's own view of what the container may open. `None` on
/// a host without the v1 devices controller.
fn device_list(lxc: &Containers, name: &str) -> Option<String> {
    let pid = lxc.lxc_pid(name)?;
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = cg.lines().find_map(|l| l.split_once(":devices:").map(|(_, p)| p.to_string()))?;
    std::fs::read_to_string(format!("/sys/fs/cgroup/devices{path}/devices.list")).ok()
}

/// The allow-list is exactly null, zero, full, random, urandom, tty,
/// console, ptmx and the pts (plus mknod of any node), never everything
/// and no fuse or tun unless asked.
fn check_device_list(lxc: &Containers, name: &str) {
    let Some(list) = device_list(lxc, name) else {
        eprintln!("note: no v1 devices controller here; the allow-list is checked in the config only");
        return;
    };
    let mut got: Vec<&str> = list.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    got.sort_unstable();
    let mut want = vec!["c *:* m", "b *:* m", "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm", "c 5:0 rwm", "c 5:1 rwm", "c 5:2 rwm", "c 136:* rwm"];
    want.sort_unstable();
    assert_eq!(got, want, "{name}: devices.list of its cgroup");
}

/// Issue 12 acceptance 3, from inside: the host's root block device cannot
/// be read through a node made with mknod; the bounding set lacks
/// sys_module, sys_rawio and sys_time; /proc/sysrq-trigger and
/// /proc/sys/kernel are not writable; the uid map is (or is not) 0 → 0.
fn check_fenced_from_inside(env: &Env, name: &str, privileged: bool) {
    let dev = std::fs::metadata("/").expect("stat /").dev();
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    if major != 0 {
        let script = format!("mknod /tmp/hostroot b {major} {minor} && dd if=/tmp/hostroot of=/dev/null bs=512 count=1 && echo READ-OK; rm -f /tmp/hostroot");
        let (_, out) = sh(env, name, &script);
        assert!(!out.contains("READ-OK"), "{name}: read the host's root device {major}:{minor} from inside: {out}");
    } else {
        eprintln!("note: / is not on a block device here; the mknod check is skipped");
    }
    let (c, out) = sh(env, name, "grep CapBnd /proc/1/status");
    assert_eq!(c, 0, "{out}");
    let hex = out.split_whitespace().nth(1).unwrap_or_default();
    let bnd = u64::from_str_radix(hex, 16).unwrap_or_else(|_| panic!("{name}: CapBnd {out}"));
    for (bit, cap) in [(16, "sys_module"), (17, "sys_rawio"), (25, "sys_time"), (32, "mac_override"), (33, "mac_admin")] {
        assert_eq!(bnd & (1 << bit), 0, "{name}: CapBnd {hex} still has {cap}");
    }
    // Opening for writing is enough to tell; nothing is written.
    for f in ["/proc/sysrq-trigger", "/proc/sys/kernel/sysrq", "/proc/sys/kernel/hostname"] {
        let (c, out) = sh(env, name, &format!(": > {f} && echo WRITABLE"));
        assert!(c != 0 && !out.contains("WRITABLE"), "{name}: {f} is writable from inside: {out}");
    }
    // LXC's default seccomp policy is loaded (mode 2: filter).
    if Path::new("/proc/sys/kernel/seccomp/actions_avail").exists() {
        let (_, out) = sh(env, name, "grep Seccomp: /proc/1/status");
        assert_eq!(out.split_whitespace().nth(1), Some("2"), "{name}: init runs without a seccomp filter: {out}");
    }
    let (c, map) = sh(env, name, "cat /proc/self/uid_map");
    assert_eq!(c, 0, "{map}");
    let first: Vec<&str> = map.split_whitespace().take(3).collect();
    if privileged {
        assert_eq!(first, ["0", "0", "4294967295"], "{name}: {map}");
    } else {
        assert_eq!(first, ["0", "100000", "65536"], "{name}: uid_map {map}");
    }
}

/// Acceptance 1 with idmapped mounts (the default here): a definition that
/// says nothing about security is unprivileged; files stay root-owned on
/// the host, shown through idmapped mounts; nobody can reach them; the
/// second volume is writable by the container's root; init runs as
/// 100000; start/stop/shutdown/reboot/exec, a veth on a bridge, recover
/// and deprovision keep working.
#[test]
fn issue_12_unprivileged_by_default_idmapped() {
    const TEST: &str = "issue_12_unprivileged_by_default_idmapped";
    if let Some(why) = missing() {
        return skip(TEST, &why);
    }
    let name = unique("ui");
    let (env, lxc) = env_with("", &[&name]);
    let vols = env.root().join("var/lib/geats/volumes").join(&name);
    if let Err(why) = geats::vm::lxc::idmap_support(env.root()) {
        return skip(TEST, &Missing::unverifiable(&format!("no idmapped mounts here: {why}")));
    }
    let br = Bridge::new(&format!("gb{}", std::process::id() % 100_000), "10.212.5.1/24");
    let nic = json!([{"name": "eth0", "bridge": br.name, "ipaddr": "10.212.5.2/24", "gateway": "10.212.5.1"}]);
    let d = env.ok("define", json!({"vm_name": name, "definition": definition(json!({"network": nic}))}));
    assert!(d["definition"].get("privileged").is_none(), "default is not written: {d}");
    let config = String::from_utf8_lossy(&env.cli(&["info", "--config", &name]).stdout).into_owned();
    for line in ["lxc.idmap = u 0 100000 65536\n", "lxc.idmap = g 0 100000 65536\n", "lxc.rootfs.options = idmap=container\n", "# files: idmapped mounts"] {
        assert!(config.contains(line), "{line:?} missing from info --config:\n{config}");
    }
    assert_eq!(std::fs::symlink_metadata(vols.join("root/bin/busybox")).unwrap().uid(), 0, "idmapped: no chown at all");
    assert_eq!(env.ok("info", json!({"vm_name": name}))["privileged"], json!(false));
    assert_eq!(env.ok("status", json!({}))["vms"][&name]["privileged"], json!(false));

    env.ok("start", json!({"vm_name": name}));
    wait_booted(&env, &name);
    let config = std::fs::read_to_string(env.root().join("var/lib/lxc").join(&name).join("config")).unwrap();
    assert!(config.contains(&format!("{} srv/data none bind,create=dir,idmap=container 0 0", vols.join("data").display())), "{config}");
    assert_eq!(init_uid(&lxc, &name), 100_000, "init must run as the map's root on the host");
    check_fenced_from_inside(&env, &name, false);
    check_device_list(&lxc, &name);
    // The container's root owns / and the data volume, and writes there.
    let (c, out) = sh(&env, &name, "ls -lnd / /srv/data && touch /srv/data/by-root /root/by-root && echo ok");
    assert!(c == 0 && out.contains("ok"), "{out}");
    assert_eq!(std::fs::metadata(vols.join("data/by-root")).unwrap().uid(), 0, "idmapped: root inside writes root-owned files");
    // ... so no other host user may reach them.
    for p in [vols.join("root/bin/busybox"), vols.join("data/by-root"), vols.join("root/root/by-root")] {
        assert!(!nobody_can_reach(&p), "nobody can reach {}", p.display());
    }
    assert!(nobody_can_reach(env.root()), "the test root itself must be open, or the check above proves nothing");
    // The veth NIC on the test's bridge.
    let (_, out) = sh(&env, &name, "ip addr show eth0");
    assert!(out.contains("10.212.5.2/24"), "{out}");

    // reboot: a new init, still unprivileged.
    let before = lxc.lxc_pid(&name);
    env.ok("reboot", json!({"vm_name": name}));
    let t = Instant::now();
    while lxc.lxc_pid(&name) == before || lxc.lxc_pid(&name).is_none() {
        assert!(t.elapsed() < Duration::from_secs(30), "reboot gave no new init");
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_booted(&env, &name);
    assert_eq!(init_uid(&lxc, &name), 100_000);
    env.ok("shutdown", json!({"vm_name": name}));
    assert_eq!(lxc.lxc_state(&name), "STOPPED");

    // recover: the database is lost, rebuilt from the records, and the
    // container starts unprivileged again.
    std::fs::remove_file(env.root().join("var/lib/geats/geats.db")).unwrap();
    let out = env.cli(&["recover"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    env.ok("start", json!({"vm_name": name}));
    assert_eq!(init_uid(&lxc, &name), 100_000);
    env.ok("stop", json!({"vm_name": name}));

    // provision: the template afresh, still root-owned (idmapped).
    std::fs::write(vols.join("root/stale"), "x").unwrap();
    env.ok("provision", json!({"vm_name": name, "definition": definition(json!({"network": nic}))}));
    assert!(!vols.join("root/stale").exists(), "provision did not start from an empty root");
    assert_eq!(std::fs::symlink_metadata(vols.join("root/bin/busybox")).unwrap().uid(), 0);
    env.ok("start", json!({"vm_name": name}));
    wait_booted(&env, &name);
    env.ok("stop", json!({"vm_name": name}));

    env.ok("deprovision", json!({"vm_name": name}));
    assert!(!vols.exists(), "deprovision left {}", vols.display());
    drop(br);
}

/// Acceptance 1, the fallback forced by `idmapped_mounts = "never"`: the
/// template is unpacked with owners shifted into the map (host uid
/// 100000 is root inside), the guest files and the volume tops belong to
/// the container's root, nothing is idmapped, the same fences hold, and
/// deprovision removes the shifted files.
#[test]
fn issue_12_shifted_owners_fallback() {
    const TEST: &str = "issue_12_shifted_owners_fallback";
    if let Some(why) = missing() {
        return skip(TEST, &why);
    }
    let name = unique("us");
    let (env, lxc) = env_with("[vm_types.lxc]\ndriver = \"lxc\"\nidmapped_mounts = \"never\"\n", &[&name]);
    let vols = env.root().join("var/lib/geats/volumes").join(&name);
    env.ok("define", json!({"vm_name": name, "definition": definition(json!({}))}));
    let config = String::from_utf8_lossy(&env.cli(&["info", "--config", &name]).stdout).into_owned();
    assert!(config.contains("lxc.idmap = u 0 100000 65536\n"), "{config}");
    assert!(!config.contains("idmap=container"), "nothing is idmapped in the fallback:\n{config}");
    assert!(config.contains("# files: template unpacked with owners shifted into the id map ("), "{config}");
    for (p, uid) in [("root", 100_000), ("root/bin/busybox", 100_000), ("root/etc/firstboot.config", 100_000), ("root/etc/hostname", 100_000)] {
        let m = std::fs::symlink_metadata(vols.join(p)).unwrap();
        assert_eq!((m.uid(), m.gid()), (uid, uid), "{p}");
    }

    env.ok("start", json!({"vm_name": name}));
    wait_booted(&env, &name);
    assert_eq!(std::fs::metadata(vols.join("data")).unwrap().uid(), 100_000, "the data volume's top belongs to the container's root");
    assert_eq!(init_uid(&lxc, &name), 100_000);
    check_fenced_from_inside(&env, &name, false);
    check_device_list(&lxc, &name);
    let (c, out) = sh(&env, &name, "stat -c '%u %g' /bin/busybox /etc/firstboot.config && touch /srv/data/by-root /by-root && echo ok");
    assert!(c == 0 && out.contains("0 0\n0 0\nok"), "inside, shifted files are root's: {out}");
    assert_eq!(std::fs::metadata(vols.join("data/by-root")).unwrap().uid(), 100_000);
    for p in [vols.join("root/bin/busybox"), vols.join("data/by-root")] {
        assert!(!nobody_can_reach(&p), "nobody can reach {}", p.display());
    }
    assert!(nobody_can_reach(env.root()));

    // reboot in place (no idmapped rootfs to lose): a new init, unprivileged.
    let before = lxc.lxc_pid(&name);
    env.ok("reboot", json!({"vm_name": name}));
    let t = Instant::now();
    while lxc.lxc_pid(&name) == before || lxc.lxc_pid(&name).is_none() {
        assert!(t.elapsed() < Duration::from_secs(30), "reboot gave no new init");
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_booted(&env, &name);
    assert_eq!(init_uid(&lxc, &name), 100_000);

    // A shifted container cannot become privileged by a define.
    let e = env.fail("define", json!({"vm_name": name, "definition": definition(json!({"privileged": true}))}));
    assert!(e["message"].as_str().unwrap_or_default().contains("/definition/privileged"), "{e}");
    env.ok("stop", json!({"vm_name": name}));
    // provision installs the template afresh, shifted again, and boots.
    std::fs::write(vols.join("root/stale"), "x").unwrap();
    env.ok("provision", json!({"vm_name": name, "definition": definition(json!({}))}));
    assert!(!vols.join("root/stale").exists(), "provision did not start from an empty root");
    assert_eq!(std::fs::symlink_metadata(vols.join("root/bin/busybox")).unwrap().uid(), 100_000);
    env.ok("start", json!({"vm_name": name}));
    wait_booted(&env, &name);
    assert_eq!(init_uid(&lxc, &name), 100_000);
    env.ok("stop", json!({"vm_name": name}));
    // ... and provision is the way to make it privileged, as the refusal says.
    env.ok("provision", json!({"vm_name": name, "definition": definition(json!({"privileged": true}))}));
    assert_eq!(std::fs::symlink_metadata(vols.join("root/bin/busybox")).unwrap().uid(), 0);
    env.ok("start", json!({"vm_name": name}));
    assert_eq!(init_uid(&lxc, &name), 0);
    env.ok("stop", json!({"vm_name": name}));
    env.ok("deprovision", json!({"vm_name": name}));
    assert!(!vols.exists(), "deprovision left the shifted files in {}", vols.display());
}

/// Acceptance 2 and 3: `"privileged": true` is root on the host, but with
/// the cap drops, the device allow-list and seccomp; `status`/`info` say
/// so. On this host the mknod read is refused even without an allow-list,
/// so the allow-list itself is read from the container's device cgroup.
#[test]
fn issue_12_privileged_is_still_fenced() {
    const TEST: &str = "issue_12_privileged_is_still_fenced";
    if let Some(why) = missing() {
        return skip(TEST, &why);
    }
    let name = unique("pr");
    let (env, lxc) = env_with("", &[&name]);
    let d = env.ok("define", json!({"vm_name": name, "definition": definition(json!({"privileged": true}))}));
    assert_eq!(d["definition"]["privileged"], json!(true));
    let config = String::from_utf8_lossy(&env.cli(&["info", "--config", &name]).stdout).into_owned();
    assert!(!config.contains("lxc.idmap"), "{config}");
    assert!(config.contains("lxc.cap.drop = mac_admin mac_override sys_module sys_rawio sys_time\n"), "{config}");
    assert!(config.contains("lxc.cgroup.devices.deny = a\n"), "{config}");
    if Path::new("/proc/sys/kernel/seccomp/actions_avail").exists() {
        // One policy for every container, beside them in the lxcpath.
        let shared = env.root().join("var/lib/lxc/.geats-seccomp");
        assert!(config.contains(&format!("lxc.seccomp.profile = {}\n", shared.display())), "{config}");
        let policy = std::fs::read_to_string(&shared).unwrap();
        assert!(policy.contains("init_module errno 1"), "{policy}");
    }
    if !std::fs::read_to_string("/sys/module/apparmor/parameters/enabled").is_ok_and(|s| s.starts_with('Y')) {
        assert!(config.contains("# AppArmor: not enabled on this host, no AppArmor profile"), "{config}");
    } else {
        assert!(config.contains("lxc.apparmor.profile = generated\n"), "{config}");
    }
    env.ok("start", json!({"vm_name": name}));
    wait_booted(&env, &name);
    assert_eq!(init_uid(&lxc, &name), 0);
    assert_eq!(env.ok("info", json!({"vm_name": name}))["privileged"], json!(true));
    assert_eq!(env.ok("status", json!({}))["vms"][&name]["privileged"], json!(true));
    check_fenced_from_inside(&env, &name, true);
    check_device_list(&lxc, &name);
    let vols = env.root().join("var/lib/geats/volumes").join(&name);
    assert!(!nobody_can_reach(&vols.join("root/bin/busybox")));
    env.ok("stop", json!({"vm_name": name}));
    env.ok("deprovision", json!({"vm_name": name}));
    assert!(!vols.exists());
}

/// Where `newuidmap` and `newgidmap` are installed (Debian's `lxc`
/// recommends `uidmap`), LXC maps an unprivileged container's ids through
/// them, and they refuse a range `/etc/subuid` does not grant to root.
/// `start` says so before `lxc-start` runs: `config_invalid` (MCollective
/// exit 5, not retryable), the missing line in the message, the container
/// stopped and its files as they were. A privileged container of the same
/// type needs no map and starts; the default map, which
/// `scripts/test.sh` delegates to root as docs/operations.md tells an
/// operator to, is refused as clearly while the container's root cannot
/// traverse the way to the lxcpath, then starts through `newuidmap` as
/// uid 100000.
#[test]
fn undelegated_id_map_is_refused_before_lxc_starts() {
    const TEST: &str = "undelegated_id_map_is_refused_before_lxc_starts";
    if let Some(why) = missing() {
        return skip(TEST, &why);
    }
    for tool in ["newuidmap", "newgidmap"] {
        if !geats::sys::exec::have(tool) {
            return skip(TEST, &Missing::command(tool, &format!("{tool} is not installed (apt-get install uidmap): LXC writes every map itself")));
        }
    }
    // A map nobody delegates: the last 65536 ids below 2^32 less one.
    const FAR: u32 = 4_294_000_000;
    let delegated = |file: &str, start: u32| {
        std::fs::read_to_string(file).unwrap_or_default().lines().any(|l| {
            let f: Vec<&str> = l.split(':').collect();
            f.len() == 3 && (f[0] == "root" || f[0] == "0") && f[1].parse::<u64>().is_ok_and(|s| s <= u64::from(start)) && f[1].parse::<u64>().unwrap_or(0) + f[2].parse::<u64>().unwrap_or(0) > u64::from(start)
        })
    };
    assert!(!delegated("/etc/subuid", FAR) && !delegated("/etc/subgid", FAR), "this host delegates {FAR} to root; the test needs a range it does not");
    let (far, privileged, default) = (unique("nf"), unique("np"), unique("nd"));
    let toml = format!("[vm_types.far]\ndriver = \"lxc\"\nidmap = {{ uid = {FAR}, gid = {FAR}, range = 65536 }}\n");
    let (env, lxc) = env_with(&toml, &[&far, &privileged, &default]);
    let def = |extra: Value| {
        let mut d = json!({"template": "busybox", "ram": 64, "storage": [{"name": "root", "type": "dir"}]});
        if let (Some(o), Some(e)) = (d.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        d
    };
    env.ok("define", json!({"vm_name": far, "definition": def(json!({"vm_type": "far"}))}));
    // The container's files, its volume and its record (the journal
    // gains the refused attempts, as it does for any failed action).
    let files = || ["var/lib/lxc", "var/lib/geats/volumes", "var/lib/geats/records"].map(|d| crate::common::snapshot_tree(&env.root().join(d)));
    let before = files();

    let v = env.fail("start", json!({"vm_name": far}));
    assert_eq!(v["errorcode"], json!("config_invalid"), "{v}");
    assert_eq!(v["retryable"], json!(false), "{v}");
    let msg = v["message"].as_str().unwrap_or_default();
    assert!(msg.contains("/etc/subuid") && msg.contains(&format!("`root:{FAR}:65536`")) && msg.contains("usermod --add-subuids"), "{msg}");
    let (code, reply, _) = env.mco(&json!({"action": "start", "data": {"vm_name": far}}).to_string());
    assert_eq!(code, 5, "MCollective exit code of a config error: {reply}");
    assert!(reply.contains("config_invalid"), "{reply}");
    assert_eq!(lxc.lxc_state(&far), "STOPPED");
    assert_eq!(env.ok("info", json!({"vm_name": far}))["state"], json!(["stopped", "stopped"]));
    assert!(files() == before, "a refused start changed the container's files");

    // The same VM type, privileged: no map, no delegation needed.
    env.ok("define", json!({"vm_name": privileged, "definition": def(json!({"vm_type": "far", "privileged": true}))}));
    env.ok("start", json!({"vm_name": privileged}));
    assert_eq!(init_uid(&lxc, &privileged), 0);
    env.ok("stop", json!({"vm_name": privileged}));

    // The default map, delegated: LXC's newuidmap writes it; but first a
    // directory on the way to the lxcpath that the container's root
    // cannot traverse, which LXC's child would trip over.
    env.ok("define", json!({"vm_name": default, "definition": def(json!({}))}));
    use std::os::unix::fs::PermissionsExt;
    let mode = |m: u32| std::fs::set_permissions(env.root(), std::fs::Permissions::from_mode(m)).unwrap();
    mode(0o700);
    let v = env.fail("start", json!({"vm_name": default}));
    mode(0o755);
    assert_eq!(v["errorcode"], json!("config_invalid"), "{v}");
    let msg = v["message"].as_str().unwrap_or_default();
    assert!(msg.contains(&format!("chmod o+x {}", env.root().display())), "{msg}");
    assert_eq!(lxc.lxc_state(&default), "STOPPED");
    env.ok("start", json!({"vm_name": default}));
    assert_eq!(init_uid(&lxc, &default), 100_000);
    env.ok("stop", json!({"vm_name": default}));
    for vm in [&far, &privileged, &default] {
        env.ok("deprovision", json!({"vm_name": vm}));
    }
}
