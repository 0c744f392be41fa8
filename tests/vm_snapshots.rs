//! Issue 18: snapshots. Per driver on real storage (a marker written
//! before a snapshot is back after restore, a file written after it is
//! gone, later snapshots are kept, undefine leaves nothing), through the
//! agent with the dummy VM type (the contract: errors, dry run, replay,
//! retention, undo, recover, `--due`), and on real LXC containers for
//! `dir`, an image file through loop + filesystem, btrfs and overlay.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use geats::names::SnapshotName;
use geats::storage::{StorageError, Volume};
use serde_json::{json, Value};

use crate::common::{self, skip};
use crate::common::leftovers;
use crate::storage::{all_under, need_root, BtrfsMount, Fixture, Releaser};

fn sn(s: &str) -> SnapshotName {
    SnapshotName::new(s).expect("snapshot name")
}

/// The snapshot life of one volume that provides a directory: snapshot
/// while active (as of a running VM), restore while inactive, later
/// snapshots kept, delete idempotent, undefine removes every snapshot.
fn directory_snapshots(fx: &Fixture, vol: &mut Box<dyn Volume>, watch: &Path) {
    vol.define().expect("define");
    vol.activate().expect("activate");
    let dir = vol.provides().path.expect("a directory while active");
    std::fs::create_dir_all(dir.join("etc")).expect("mkdir");
    std::fs::write(dir.join("etc/marker"), "before\n").expect("write");
    vol.snapshot(&sn("s1")).expect("snapshot while active");
    std::fs::write(dir.join("etc/marker"), "after\n").expect("write");
    std::fs::write(dir.join("later"), "x").expect("write");
    vol.snapshot(&sn("s2")).expect("second snapshot");
    // Replacing a snapshot of the same name is what a retried step does.
    vol.snapshot(&sn("s2")).expect("snapshot again under the same name");
    vol.deactivate().expect("deactivate");

    vol.restore(&sn("s1")).expect("restore s1");
    vol.activate().expect("activate");
    let dir = vol.provides().path.expect("dir");
    assert_eq!(std::fs::read_to_string(dir.join("etc/marker")).expect("marker"), "before\n", "restore did not bring the marker back");
    assert!(!dir.join("later").exists(), "a file written after the snapshot survived restore");
    vol.deactivate().expect("deactivate");

    vol.restore(&sn("s2")).expect("a later snapshot is kept");
    vol.activate().expect("activate");
    let dir = vol.provides().path.expect("dir");
    assert_eq!(std::fs::read_to_string(dir.join("etc/marker")).expect("marker"), "after\n");
    assert!(dir.join("later").exists());
    vol.deactivate().expect("deactivate");

    vol.delete_snapshot(&sn("s1")).expect("delete");
    vol.delete_snapshot(&sn("s1")).expect("delete again");
    match vol.restore(&sn("s1")) {
        Err(StorageError::NoSnapshot { .. }) => {}
        other => panic!("restore of a deleted snapshot: {other:?}"),
    }
    vol.undefine().expect("undefine");
    let left: Vec<PathBuf> = all_under(watch).into_iter().filter(|p| !p.components().any(|c| c.as_os_str() == ".templates")).collect();
    assert_eq!(left, Vec::<PathBuf>::new(), "undefine left files or snapshots");
    assert_eq!(leftovers(fx.root()), Vec::<String>::new(), "mounts or loop devices left");
}

#[test]
fn issue_18_dir_snapshots() {
    if !need_root("issue_18_dir_snapshots") {
        return;
    }
    let fx = Fixture::new("");
    let mut vol = fx.open("vm1", json!({"name": "root", "type": "dir"})).expect("open");
    directory_snapshots(&fx, &mut vol, &fx.root().join("var/lib/geats/volumes"));
}

#[test]
fn issue_18_image_loop_filesystem_snapshots() {
    const TEST: &str = "issue_18_image_loop_filesystem_snapshots";
    if !need_root(TEST) {
        return;
    }
    if let Some(m) = common::need_commands(&["fsfreeze", "mkfs.xfs"], "apt-get install util-linux xfsprogs") {
        return skip(TEST, &m);
    }
    for fstype in ["ext4", "xfs"] {
        let fx = Fixture::new(&format!("[storage_types.image]\ndriver = \"sparsefile\"\nadapters = [\"loop\", \"filesystem\"]\nfstype = \"{fstype}\"\n"));
        let mut vol = fx.open("vm1", json!({"name": "root", "type": "image", "size": "320M"})).expect("open");
        directory_snapshots(&fx, &mut vol, &fx.root().join("var/lib/geats/images"));
    }
}

#[test]
fn issue_18_btrfs_snapshots() {
    const TEST: &str = "issue_18_btrfs_snapshots";
    if !need_root(TEST) {
        return;
    }
    if let Some(m) = common::need_commands(&["mkfs.btrfs", "btrfs"], "apt-get install btrfs-progs") {
        return skip(TEST, &m);
    }
    let fs = BtrfsMount::new();
    let root = fs.mnt.join("vols");
    let fx = Fixture::new(&format!("[storage_types.bt]\ndriver = \"btrfs\"\nroot = \"{}\"\n", root.display()));
    let mut vol = fx.open("vm1", json!({"name": "root", "type": "bt"})).expect("open");
    vol.define().expect("define");
    vol.snapshot(&sn("probe")).expect("snapshot");
    let snap = root.join("vm1/.snapshots/root/probe");
    assert!(geats::storage::btrfs::is_subvolume(&snap), "a btrfs snapshot is a subvolume");
    let ro = Command::new("btrfs").args(["property", "get", "-ts"]).arg(&snap).arg("ro").output().expect("btrfs property");
    assert_eq!(String::from_utf8_lossy(&ro.stdout).trim(), "ro=true", "snapshots are read-only");
    vol.delete_snapshot(&sn("probe")).expect("delete");
    directory_snapshots(&fx, &mut vol, &root);
    assert_eq!(fs.subvolumes(), Vec::<String>::new(), "subvolumes left");
}

#[test]
fn issue_18_overlay_snapshots_copy_no_template() {
    const TEST: &str = "issue_18_overlay_snapshots_copy_no_template";
    if !need_root(TEST) {
        return;
    }
    let fx = Fixture::new("[storage_types.ov]\ndriver = \"overlay\"\n");
    let Some(t) = crate::storage::make_template(fx.root(), "tiny") else { return };
    let mut vol = fx.open("vm1", json!({"name": "root", "type": "ov"})).expect("open");
    vol.define().expect("define");
    vol.activate().expect("activate");
    assert!(vol.clone_template(&t, true).expect("clone"));
    let dir = vol.provides().path.expect("dir");
    // A whiteout: a template file the volume deleted must stay deleted.
    std::fs::remove_file(dir.join("etc/hostname")).expect("rm");
    vol.snapshot(&sn("nohost")).expect("snapshot");
    let snap = fx.root().join("var/lib/geats/overlay/vm1/root/snapshots/nohost");
    assert!(!snap.join("upper/etc/hostname").is_file(), "the snapshot copied the template's file");
    assert!(std::fs::read_to_string(snap.join("lower")).expect("lower").starts_with("tiny@"), "the snapshot names its template");
    std::fs::write(dir.join("etc/hostname"), "back\n").expect("write");
    vol.deactivate().expect("deactivate");
    vol.restore(&sn("nohost")).expect("restore");
    vol.activate().expect("activate");
    assert!(!dir.join("etc/hostname").exists(), "the whiteout was lost");
    // An opaque directory (a template directory removed and made again)
    // keeps hiding the template's files: its trusted.overlay.opaque
    // attribute is copied with it.
    std::fs::remove_dir_all(dir.join("etc")).expect("rm etc");
    std::fs::create_dir(dir.join("etc")).expect("mkdir etc");
    std::fs::write(dir.join("etc/new"), "new\n").expect("write");
    vol.snapshot(&sn("opaque")).expect("snapshot");
    std::fs::write(dir.join("etc/hostname"), "back\n").expect("write");
    vol.deactivate().expect("deactivate");
    vol.restore(&sn("opaque")).expect("restore");
    vol.activate().expect("activate");
    assert!(!dir.join("etc/hostname").exists(), "the opaque directory lost its attribute: the template's file shows through");
    assert!(dir.join("etc/new").is_file());
    vol.deactivate().expect("deactivate");
    vol.delete_snapshot(&sn("opaque")).expect("delete");
    vol.delete_snapshot(&sn("nohost")).expect("delete");
    vol.undefine().expect("undefine");
    let mut vol = fx.open("vm1", json!({"name": "root", "type": "ov"})).expect("open");
    directory_snapshots(&fx, &mut vol, &fx.root().join("var/lib/geats/overlay"));
}

#[test]
fn issue_18_qcow2_internal_snapshots() {
    const TEST: &str = "issue_18_qcow2_internal_snapshots";
    if let Some(m) = common::need_commands(&["qemu-img"], "apt-get install qemu-utils") {
        return skip(TEST, &m);
    }
    let fx = Fixture::new("[storage_types.disk]\ndriver = \"qcow2\"\n");
    let mut vol = fx.open("vm1", json!({"name": "disk", "type": "disk", "size": "64M"})).expect("open");
    vol.define().expect("define");
    let img = fx.root().join("var/lib/geats/images/vm1/disk.qcow2");
    let list = || String::from_utf8_lossy(&Command::new("qemu-img").args(["snapshot", "-l"]).arg(&img).output().expect("qemu-img").stdout).into_owned();
    vol.snapshot(&sn("s1")).expect("snapshot");
    vol.snapshot(&sn("s1")).expect("replace");
    vol.snapshot(&sn("s2")).expect("snapshot");
    assert_eq!(geats::storage::qcow2::parse_snapshot_list(&list()), ["s1", "s2"], "{}", list());
    vol.restore(&sn("s1")).expect("restore");
    assert!(matches!(vol.restore(&sn("nope")), Err(StorageError::NoSnapshot { .. })));
    vol.delete_snapshot(&sn("s1")).expect("delete");
    vol.delete_snapshot(&sn("s1")).expect("delete again");
    assert_eq!(geats::storage::qcow2::parse_snapshot_list(&list()), ["s2"]);
    vol.undefine().expect("undefine");
    assert!(!img.exists());
}

#[test]
fn issue_18_tmpfs_has_no_snapshots() {
    let fx = Fixture::new("[storage_types.scratch]\ndriver = \"tmpfs\"\n");
    let mut vol = fx.open("vm1", json!({"name": "s", "type": "scratch", "size": "1M"})).expect("open");
    let e = vol.snapshot(&sn("s1")).expect_err("tmpfs has no snapshots");
    assert!(matches!(e, StorageError::NotSupported { .. }), "{e:?}");
    assert_eq!(geats::error::Error::from(e).code().as_str(), "not_supported");
}

fn dummy_def(storage: Value) -> Value {
    json!({"vm_type": "dummy", "storage": storage})
}

/// The contract through the agent, with the dummy VM type and a real
/// `dir` volume: names, errors, dry run, replay, retention, undo of a
/// half-taken snapshot, undefine keeps, recover finds, deprovision destroys.
#[test]
fn issue_18_snapshot_contract() {
    let env = common::Env::with_config("[storage_types.scratch]\ndriver = \"tmpfs\"\n[vm_types.dummy]\ndriver = \"dummy\"\n");
    let root = env.root().to_path_buf();
    let vm = json!({"vm_name": "d1"});
    let def = dummy_def(json!([{"name": "data", "type": "dir"}]));
    env.ok("define", json!({"vm_name": "d1", "definition": def}));
    env.ok("start", vm.clone());
    let data = root.join("var/lib/geats/volumes/d1/data");
    std::fs::write(data.join("marker"), "before").unwrap();
    let snapdir = root.join("var/lib/geats/volumes/d1/.snapshots/data");

    // Dry run: the steps, nothing written.
    let dry = env.ok("snapshot", json!({"vm_name": "d1", "snapshot": "s1", "dry_run": true}));
    assert_eq!(dry["steps"], json!(["freeze VM d1", "snapshot volume data as s1", "unfreeze VM d1", "record snapshot s1"]), "{dry}");
    assert!(!snapdir.exists(), "a dry run took a snapshot");

    let r = env.ok("snapshot", json!({"vm_name": "d1", "snapshot": "s1", "request_id": "snap-1"}));
    assert_eq!(r["changed"], json!(true));
    assert_eq!(r["snapshot"], json!("s1"));
    assert!(r["size_bytes"].as_u64().is_some(), "dir knows its snapshot's size: {r}");
    assert!(snapdir.join("s1/marker").is_file());
    // The same request id is answered from the journal, not refused.
    let again = env.ok("snapshot", json!({"vm_name": "d1", "snapshot": "s1", "request_id": "snap-1"}));
    assert_eq!(again, r);
    // A name it has is invalid_state; a bad name invalid_data; no name missing_data.
    assert_eq!(env.fail("snapshot", json!({"vm_name": "d1", "snapshot": "s1"}))["errorcode"], json!("invalid_state"));
    let bad = env.fail("snapshot", json!({"vm_name": "d1", "snapshot": "../x"}));
    assert_eq!(bad["errorcode"], json!("invalid_data"));
    assert!(bad["message"].as_str().unwrap().contains("/snapshot"), "{bad}");
    assert_eq!(env.fail("snapshot", json!({"vm_name": "d1"}))["errorcode"], json!("missing_data"));
    assert_eq!(env.fail("snapshot", json!({"vm_name": "nope", "snapshot": "s1"}))["errorcode"], json!("not_found"));
    assert_eq!(env.fail("restore", json!({"vm_name": "d1", "snapshot": "nope"}))["errorcode"], json!("not_found"));

    // Restore of a running VM: stopped, restored, started again.
    std::fs::write(data.join("marker"), "after").unwrap();
    std::fs::write(data.join("later"), "x").unwrap();
    env.ok("snapshot", json!({"vm_name": "d1", "snapshot": "s2"}));
    let r = env.ok("restore", json!({"vm_name": "d1", "snapshot": "s1"}));
    assert_eq!(r["state"], json!(["running", "running"]), "{r}");
    assert_eq!(std::fs::read_to_string(data.join("marker")).unwrap(), "before");
    assert!(!data.join("later").exists());
    let info = env.ok("info", vm.clone());
    let names: Vec<&str> = info["snapshots"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["s1", "s2"], "oldest first, later kept: {info}");
    assert!(info["snapshots"][0]["created"].as_str().unwrap() < info["snapshots"][1]["created"].as_str().unwrap());
    let steps = env.ok("restore", json!({"vm_name": "d1", "snapshot": "s2", "dry_run": true}))["steps"].clone();
    assert_eq!(steps, json!(["shut down VM d1", "stop VM d1", "deactivate volume data", "restore volume data to snapshot s2", "activate volume data", "start VM d1"]));

    // Delete: changed, then not.
    assert_eq!(env.ok("delete_snapshot", json!({"vm_name": "d1", "snapshot": "s2"}))["changed"], json!(true));
    assert_eq!(env.ok("delete_snapshot", json!({"vm_name": "d1", "snapshot": "s2"}))["changed"], json!(false));
    assert!(!snapdir.join("s2").exists());

    // A volume whose driver has no snapshots: not_supported, and the
    // snapshot already taken of the other volume is undone.
    let def2 = dummy_def(json!([{"name": "data", "type": "dir"}, {"name": "tmp", "type": "scratch", "size": "1M"}]));
    env.ok("define", json!({"vm_name": "d2", "definition": def2}));
    env.ok("start", json!({"vm_name": "d2"}));
    let e = env.fail("snapshot", json!({"vm_name": "d2", "snapshot": "s3"}));
    assert_eq!(e["errorcode"], json!("not_supported"), "{e}");
    assert!(!root.join("var/lib/geats/volumes/d2/.snapshots/data/s3").exists(), "the half-taken snapshot was not undone");
    assert!(!root.join("var/lib/geats/volumes/d2/.snapshots").exists());
    assert_eq!(env.ok("info", json!({"vm_name": "d2"}))["snapshots"], json!([]));
    assert_eq!(env.ok("info", json!({"vm_name": "d2"}))["state"], json!(["running", "running"]));
    let dummy_dir = root.join("var/lib/geats/dummy");
    env.ok("deprovision", json!({"vm_name": "d2"}));

    // Retention: keep 2; a failed freeze leaves nothing.
    let keep = dummy_def(json!([{"name": "data", "type": "dir"}]));
    let mut keep = keep.as_object().unwrap().clone();
    keep.insert("snapshots".into(), json!({"keep": 2}));
    env.ok("define", json!({"vm_name": "d1", "definition": keep}));
    env.ok("snapshot", json!({"vm_name": "d1", "snapshot": "k1"}));
    let r = env.ok("snapshot", json!({"vm_name": "d1", "snapshot": "k2"}));
    assert_eq!(r["expired"], json!(["s1"]), "{r}");
    assert!(!snapdir.join("s1").exists());
    std::fs::write(dummy_dir.join("d1.fault"), r#"{"fail": ["unfreeze"]}"#).unwrap();
    let e = env.fail("snapshot", json!({"vm_name": "d1", "snapshot": "k3"}));
    assert_eq!(e["errorcode"], json!("tool_failed"), "{e}");
    assert!(!snapdir.join("k3").exists(), "a failed snapshot left its copy");
    std::fs::remove_file(dummy_dir.join("d1.fault")).unwrap();
    let list = String::from_utf8_lossy(&env.cli(&["snapshots", "d1"]).stdout).into_owned();
    assert!(list.starts_with("NAME") && list.contains("k1") && list.contains("k2") && !list.contains("k3"), "{list}");

    // Undefine keeps them; recover finds them; deprovision destroys them.
    env.ok("undefine", vm.clone());
    assert!(snapdir.join("k1").is_dir(), "undefine dropped a snapshot");
    std::fs::remove_file(root.join("var/lib/geats/geats.db")).unwrap();
    let out = env.cli(&["recover"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list = String::from_utf8_lossy(&env.cli(&["snapshots", "d1", "--json"]).stdout).into_owned();
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list.as_array().map(|a| a.len()), Some(2), "recover lost the snapshots: {list}");
    // A kept VM's snapshot can be deleted; it cannot be restored or taken.
    assert_eq!(env.ok("delete_snapshot", json!({"vm_name": "d1", "snapshot": "k2"}))["changed"], json!(true));
    assert!(!snapdir.join("k2").exists());
    assert_eq!(env.fail("snapshot", json!({"vm_name": "d1", "snapshot": "k9"}))["errorcode"], json!("not_found"));
    env.ok("define", json!({"vm_name": "d1", "definition": keep}));
    env.ok("restore", json!({"vm_name": "d1", "snapshot": "k1"}));
    assert_eq!(std::fs::read_to_string(data.join("marker")).unwrap(), "before");
    env.ok("deprovision", vm.clone());
    assert!(!root.join("var/lib/geats/volumes/d1").exists(), "deprovision left the volume or its snapshots");
    assert_eq!(env.fail("restore", json!({"vm_name": "d1", "snapshot": "k1"}))["errorcode"], json!("not_found"));
}

/// `geats snapshot --due`: a VM whose schedule is due gets an `auto-`
/// snapshot, once; a VM without a schedule gets none.
#[test]
fn issue_18_snapshot_due() {
    let env = common::Env::new();
    let mut sched = dummy_def(json!([{"name": "data", "type": "dir"}])).as_object().unwrap().clone();
    sched.insert("snapshots".into(), json!({"schedule": "daily", "keep": 3}));
    env.ok("define", json!({"vm_name": "sched", "definition": sched}));
    env.ok("define", json!({"vm_name": "plain", "definition": dummy_def(json!([{"name": "data", "type": "dir"}]))}));
    let out = env.cli(&["snapshot", "--due"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("sched: snapshot auto-"), "{text}");
    assert!(!text.contains("plain"), "{text}");
    let info = env.ok("info", json!({"vm_name": "sched"}));
    assert_eq!(info["snapshots"].as_array().unwrap().len(), 1, "{info}");
    assert!(info["snapshots"][0]["name"].as_str().unwrap().starts_with("auto-"));
    // Not due again within the day.
    let out = env.cli(&["snapshot", "--due"]);
    assert!(out.status.success() && out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(env.ok("info", json!({"vm_name": "plain"}))["snapshots"], json!([]));
    // The CLI forms.
    let ok = |args: &[&str]| {
        let o = env.cli(args);
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert!(ok(&["snapshot", "plain", "p1"]).contains("plain: snapshot p1 taken at"));
    assert!(ok(&["restore", "plain", "p1"]).contains("plain: restored snapshot p1"));
    assert!(ok(&["snapshot", "--delete", "plain", "p1"]).contains("plain: delete_snapshot: done"));
    let e = env.cli(&["snapshot", "plain"]);
    assert!(!e.status.success());
    // The MCollective transport: exit codes by class, the reply file.
    let (code, reply, err) = env.mco(r#"{"agent":"geats","action":"snapshot","data":{"vm_name":"plain","snapshot":"m1","process_results":true},"sender":"ops","uniqid":"u18"}"#);
    assert_eq!(code, 0, "{err}");
    let reply: Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply["snapshot"], json!("m1"), "{reply}");
    common::schema::check_reply("snapshot", &reply);
    let (code, reply, _) = env.mco(r#"{"agent":"geats","action":"restore","data":{"vm_name":"plain","snapshot":"nope"}}"#);
    assert_eq!(code, 1, "not_found is class 1: {reply}");
    assert!(reply.contains("not_found"), "{reply}");
    let (code, reply, _) = env.mco(r#"{"agent":"geats","action":"delete_snapshot","data":{"vm_name":"plain","snapshot":"m1"}}"#);
    assert_eq!((code, serde_json::from_str::<Value>(&reply).unwrap()), (0, json!({"changed": true})));
    let (code, _, _) = env.mco(r#"{"agent":"geats","action":"delete_snapshot","data":{"vm_name":"plain","snapshot":"-x"}}"#);
    assert_eq!(code, 4, "a bad snapshot name is invalid_data");
}

/// Wait until `name` has booted (its rcS wrote the marker).
fn wait_boot(env: &common::Env, name: &str) {
    let t = Instant::now();
    loop {
        let out = env.cli(&["exec", name, "--", "cat", "/run/rcS.done"]);
        if String::from_utf8_lossy(&out.stdout).contains(&format!("rcS done: {name}")) {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "{name} did not boot: {}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sh(env: &common::Env, name: &str, script: &str) -> String {
    let out = env.cli(&["exec", name, "--", "sh", "-c", script]);
    assert!(out.status.success(), "{name}: {script}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Acceptance 5 on real containers: dir, sparsefile + loop + filesystem
/// (two volumes), btrfs, overlay. A snapshot of a running container
/// leaves it running; a marker written before it is back after restore
/// and a file written after it is gone; deprovision leaves no volume,
/// image, subvolume, snapshot, mount or loop device.
#[test]
fn issue_18_lxc_snapshots_on_every_driver() {
    const TEST: &str = "issue_18_lxc_snapshots_on_every_driver";
    if let Some(why) = common::lxc::missing() {
        return skip(TEST, &why);
    }
    if let Some(m) = common::need_commands(&["mkfs.btrfs", "fsfreeze"], "apt-get install btrfs-progs util-linux") {
        return skip(TEST, &m);
    }
    let fs = BtrfsMount::new();
    let btrfs_root = fs.mnt.join("vols");
    let toml = format!(
        "[storage_types.image]\ndriver = \"sparsefile\"\nadapters = [\"loop\", \"filesystem\"]\n\
         [storage_types.bt]\ndriver = \"btrfs\"\nroot = \"{}\"\n\
         [storage_types.ov]\ndriver = \"overlay\"\n",
        btrfs_root.display()
    );
    let env = common::Env::with_config(&toml);
    let root = env.root().to_path_buf();
    common::lxc::busybox_template(&root.join("var/lib/geats/templates"), "busybox");
    let pid = std::process::id();
    let cases: Vec<(String, Value)> = vec![
        (format!("gs{pid}dir"), json!([{"name": "root", "type": "dir"}])),
        (
            format!("gs{pid}img"),
            json!([{"name": "root", "type": "image", "size": "128M"},
                   {"name": "data", "type": "image", "size": "320M", "fstype": "xfs", "mountpoint": "/srv/data"}]),
        ),
        (format!("gs{pid}bt"), json!([{"name": "root", "type": "bt"}])),
        (format!("gs{pid}ov"), json!([{"name": "root", "type": "ov"}])),
    ];
    let _release = Releaser(root.clone());
    let names: Vec<&str> = cases.iter().map(|(n, _)| n.as_str()).collect();
    let lxc = common::lxc::Containers::new(&root.join("var/lib/lxc"), &names);
    for (name, storage) in &cases {
        let vm = json!({"vm_name": name});
        let two = storage.as_array().map(|a| a.len()) == Some(2);
        env.ok("define", json!({"vm_name": name, "definition": {"template": "busybox", "ram": 64, "storage": storage}}));
        env.ok("start", vm.clone());
        wait_boot(&env, name);
        let init = lxc.lxc_pid(name).expect("init pid");
        sh(&env, name, "echo before > /marker");
        if two {
            sh(&env, name, "echo before > /srv/data/marker");
        }
        let r = env.ok("snapshot", json!({"vm_name": name, "snapshot": "s1"}));
        assert_eq!(r["changed"], json!(true), "{name}: {r}");
        assert_eq!(lxc.lxc_state(name), "RUNNING", "{name}: the snapshot left it {}", lxc.lxc_state(name));
        assert_eq!(lxc.lxc_pid(name), Some(init), "{name}: the container was restarted by a snapshot");
        let h: Value = serde_json::from_slice(&env.cli(&["history", name, "-n", "1", "--json"]).stdout).unwrap();
        let steps: Vec<&str> = h[0]["steps"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
        assert_eq!(steps.first().copied(), Some(format!("freeze VM {name}").as_str()), "{name}: not frozen first: {steps:?}");
        assert_eq!(steps.get(steps.len() - 2).copied(), Some(format!("unfreeze VM {name}").as_str()), "{name}: {steps:?}");
        // It still runs commands: it was unfrozen.
        sh(&env, name, "echo after > /marker && echo x > /later");
        if two {
            sh(&env, name, "echo after > /srv/data/marker");
        }
        env.ok("snapshot", json!({"vm_name": name, "snapshot": "s2"}));
        let r = env.ok("restore", json!({"vm_name": name, "snapshot": "s1"}));
        assert_eq!(r["state"][0], json!("running"), "{name}: {r}");
        wait_boot(&env, name);
        assert_eq!(sh(&env, name, "cat /marker"), "before\n", "{name}: the marker is not back");
        assert_eq!(sh(&env, name, "test -e /later && echo present || echo gone"), "gone\n", "{name}: a later file survived");
        if two {
            assert_eq!(sh(&env, name, "cat /srv/data/marker"), "before\n", "{name}: the second volume was not restored");
        }
        let info = env.ok("info", vm.clone());
        let snaps: Vec<&str> = info["snapshots"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
        assert_eq!(snaps, ["s1", "s2"], "{name}: {info}");
        // Restoring the later one works too (it was kept).
        env.ok("stop", vm.clone());
        env.ok("restore", json!({"vm_name": name, "snapshot": "s2"}));
        assert_eq!(lxc.lxc_state(name), "STOPPED", "{name}: restore of a stopped VM started it");
        assert_eq!(leftovers(&root), Vec::<String>::new(), "{name}: restore left volumes active");
        env.ok("start", vm.clone());
        wait_boot(&env, name);
        assert_eq!(sh(&env, name, "cat /marker"), "after\n", "{name}");
        env.ok("deprovision", vm.clone());
        assert_eq!(leftovers(&root), Vec::<String>::new(), "{name}: deprovision left mounts or loop devices");
        for dir in ["var/lib/geats/volumes", "var/lib/geats/images", "var/lib/geats/overlay", "var/lib/geats/mnt"] {
            assert!(!root.join(dir).join(name).exists(), "{name}: deprovision left {dir}/{name}");
        }
        assert!(!btrfs_root.join(name).exists(), "{name}: deprovision left its subvolume or snapshots");
    }
    assert_eq!(fs.subvolumes(), Vec::<String>::new(), "subvolumes left");
}

/// The shipped unit runs a command line this binary accepts, and the
/// timer starts that unit.
#[test]
fn issue_18_contrib_snapshot_units() {
    let unit = std::fs::read_to_string(common::manifest().join("contrib/geats-snapshot.service")).expect("service unit");
    let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("ExecStart");
    let mut argv = exec.split_whitespace();
    assert_eq!(argv.next(), Some("/usr/bin/geats"), "docs/operations.md installs the binary as /usr/bin/geats");
    let args: Vec<&str> = argv.collect();
    assert_eq!(args, ["snapshot", "--due"]);
    let env = common::Env::new();
    let out = env.cli(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let timer = std::fs::read_to_string(common::manifest().join("contrib/geats-snapshot.timer")).expect("timer unit");
    assert!(timer.contains("OnCalendar=hourly") && timer.contains("[Install]"), "{timer}");
}

/// Poll `geats history VM --json` until the newest entry has completed
/// the step `step`; panics after 30 s.
fn wait_for_step(env: &common::Env, vm: &str, step: &str) {
    let t = Instant::now();
    loop {
        let out = env.cli(&["history", vm, "-n", "1", "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if v[0]["steps"].as_array().is_some_and(|s| s.iter().any(|x| x == step)) {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "step {step:?} never completed: {v}");
        std::thread::sleep(Duration::from_millis(30));
    }
}

/// Acceptance 5, SIGKILL: a snapshot killed after its volume's copy but
/// before its record, and a restore killed after restoring the volume but
/// before starting the VM, both converge when run again: the dead owner's
/// lease is taken over, the orphaned copy is replaced, no temporary copy
/// is left, and the volume holds the snapshot. (Restarting the VM the
/// killed restore had stopped is the journal's roll-forward, issue 11.)
#[test]
fn issue_18_sigkill_during_snapshot_and_restore_converges() {
    let env = common::Env::new();
    let root = env.root().to_path_buf();
    let vm = json!({"vm_name": "k1"});
    env.ok("define", json!({"vm_name": "k1", "definition": dummy_def(json!([{"name": "data", "type": "dir"}]))}));
    env.ok("start", vm.clone());
    let data = root.join("var/lib/geats/volumes/k1/data");
    let snaps = root.join("var/lib/geats/volumes/k1/.snapshots/data");
    std::fs::write(data.join("marker"), "before").unwrap();
    let fault = root.join("var/lib/geats/dummy/k1.fault");
    // Every VM step of the dummy now takes 2 s: a window to kill in.
    std::fs::write(&fault, r#"{"delay_ms": 2000}"#).unwrap();

    let mut c = env.cmd();
    c.args(["snapshot", "k1", "s1"]).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let mut child = c.spawn().unwrap();
    wait_for_step(&env, "k1", "snapshot volume data as s1");
    child.kill().unwrap();
    child.wait().unwrap();
    std::fs::remove_file(&fault).unwrap();
    assert!(snaps.join("s1").is_dir(), "the kill came before the copy");
    assert_eq!(env.ok("info", vm.clone())["snapshots"], json!([]), "the kill came after the record");
    std::fs::write(data.join("marker"), "after").unwrap();
    // The retry takes the dead owner's lease and replaces the orphan.
    env.ok("snapshot", json!({"vm_name": "k1", "snapshot": "s1"}));
    assert_eq!(std::fs::read_to_string(snaps.join("s1/marker")).unwrap(), "after", "the orphaned copy was kept");
    let names: Vec<String> = std::fs::read_dir(&snaps).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["s1"], "temporary copies left");
    assert_eq!(env.ok("info", vm.clone())["snapshots"].as_array().unwrap().len(), 1);

    std::fs::write(data.join("marker"), "later").unwrap();
    std::fs::write(data.join("extra"), "x").unwrap();
    std::fs::write(&fault, r#"{"delay_ms": 2000}"#).unwrap();
    let mut c = env.cmd();
    c.args(["restore", "k1", "s1"]).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let mut child = c.spawn().unwrap();
    wait_for_step(&env, "k1", "restore volume data to snapshot s1");
    child.kill().unwrap();
    child.wait().unwrap();
    std::fs::remove_file(&fault).unwrap();
    env.ok("restore", json!({"vm_name": "k1", "snapshot": "s1"}));
    assert_eq!(std::fs::read_to_string(data.join("marker")).unwrap(), "after");
    assert!(!data.join("extra").exists());
    let beside: Vec<String> = std::fs::read_dir(data.parent().unwrap()).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    let mut beside = beside;
    beside.sort();
    assert_eq!(beside, [".snapshots", "data"], "a restore left a temporary copy beside the volume");
    let hist = env.cli(&["history", "k1", "--json"]);
    let hist: Value = serde_json::from_slice(&hist.stdout).unwrap();
    // The next request on the VM resolved both killed entries (issue 11):
    // the unrecorded snapshot rolled back (its VM unfrozen), the restore
    // rolled forward (its VM started again).
    let resolved: Vec<(&str, &str)> = hist
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["outcome"].as_str().is_some_and(|o| o.starts_with("rolled_")))
        .map(|e| (e["action"].as_str().unwrap_or_default(), e["outcome"].as_str().unwrap_or_default()))
        .collect();
    assert_eq!(resolved, [("snapshot", "rolled_back"), ("restore", "rolled_forward")], "{hist}");
    let snap = hist.as_array().unwrap().iter().find(|e| e["outcome"] == "rolled_back" && e["action"] == "snapshot").unwrap();
    assert!(snap["steps"].as_array().unwrap().iter().any(|s| s.as_str().is_some_and(|s| s.starts_with("(killed during or just after: unfreeze"))), "{snap}");
    assert_eq!(env.ok("info", vm.clone())["state"], json!(["running", "running"]), "never left frozen or stopped");
}
