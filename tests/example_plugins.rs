//! The example plugins of `examples/plugins/` (issue 17): a storage driver
//! on ZFS datasets and one that clones golden disk images, each driven
//! through geats as an operator would configure it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{self, Env};

fn example(name: &str) -> PathBuf {
    common::manifest().join("examples/plugins").join(name)
}

/// Run an example plugin directly: (exit code, stdout, stderr).
fn run_plugin(name: &str, op: &str, request: &Value) -> (i32, String, String) {
    let mut c = Command::new(example(name));
    c.arg(op).env_clear().env("PATH", geats::sys::exec::CHILD_PATH).env("GEATS_PLUGIN_OP", op);
    let out = common::run_with_stdin(c, request.to_string().as_bytes());
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn fails_with(env: &Env, def: Value, needle: &str) {
    let e = env.fail("define", json!({"vm_name": "x1", "definition": def}));
    assert_eq!(e["errorcode"], "tool_failed", "{e}");
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains(needle), "{msg} lacks {needle:?}");
    assert_eq!(env.fail("info", json!({"vm_name": "x1"}))["errorcode"], "not_found");
}

// ---- zfs_dataset.py ----------------------------------------------------

fn zfs_env(settings: &str) -> Env {
    Env::with_config(&format!("[storage_types.zfs]\ndriver = \"exec\"\ncommand = [\"{}\"]\n{settings}", example("zfs_dataset.py").display()))
}

#[test]
fn issue_17_zfs_example_checks_its_arguments() {
    // What the plugin refuses before it runs any zfs command: geats puts
    // its last stderr line into the reply.
    let def = |opts: Value| {
        let mut vol = json!({"name": "root", "type": "zfs", "size": "1G"});
        vol.as_object_mut().unwrap().extend(opts.as_object().unwrap().clone());
        json!({"vm_type": "dummy", "storage": [vol]})
    };
    let env = zfs_env("parent = \"../etc\"\n");
    fails_with(&env, def(json!({})), "zfs_dataset: setting parent must name an existing dataset");
    let env = zfs_env("parent = \"tank/geats\"\nmount_base = \"relative\"\n");
    fails_with(&env, def(json!({})), "setting mount_base must be an absolute path");
    let env = zfs_env("parent = \"tank/geats\"\nquota = 5\n");
    fails_with(&env, def(json!({})), "unknown setting quota");
    let env = zfs_env("parent = \"tank/geats\"\nzfs = \"/nonexistent/zfs\"\n");
    fails_with(&env, def(json!({"compression": "fast"})), "compression 'fast' is not one of gzip, lz4, off, on, zstd");
    fails_with(&env, def(json!({"recordsize": "3K"})), "recordsize '3K' is not a power of two");
    fails_with(&env, def(json!({"dedup": "on"})), "unknown option dedup");
    fails_with(&env, def(json!({"compression": "lz4"})), "zfs binary /nonexistent/zfs is not executable");
    // The protocol's edges, run directly.
    let (code, out, err) = run_plugin("zfs_dataset.py", "frobnicate", &json!({}));
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(err.trim_end().ends_with("unknown operation 'frobnicate' (this plugin does create, activate, deactivate, destroy, usage)"), "{err}");
    let mut c = Command::new(example("zfs_dataset.py"));
    c.arg("create");
    let out = common::run_with_stdin(c, b"not json");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the request on stdin is not JSON"), "{}", common::out_text(&out));
}

#[test]
fn issue_17_zfs_example_dataset_lifecycle() {
    let name = "issue_17_zfs_example_dataset_lifecycle";
    if let Some(m) = common::need_root("creating a zpool needs root") {
        return common::skip(name, &m);
    }
    if let Some(m) = common::need_commands(&["zfs", "zpool"], "zfsutils-linux, in Debian's contrib, with the zfs kernel module loaded") {
        return common::skip(name, &m);
    }
    // A pool on a loop file, private to this test.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pool.img");
    std::fs::File::create(&file).unwrap().set_len(256 << 20).unwrap();
    let pool = format!("geatstest{}", std::process::id());
    let (c, _, e) = common::lxc::run(&["zpool", "create", "-m", "none", &pool, &file.display().to_string()]);
    assert_eq!(c, 0, "zpool create: {e}");
    struct Pool(String);
    impl Drop for Pool {
        fn drop(&mut self) {
            let _ = Command::new("zpool").args(["destroy", "-f", &self.0]).status();
        }
    }
    let _pool = Pool(pool.clone());
    let (c, _, e) = common::lxc::run(&["zfs", "create", &format!("{pool}/geats")]);
    assert_eq!(c, 0, "{e}");
    let base = dir.path().join("mnt");
    let env = zfs_env(&format!("parent = \"{pool}/geats\"\nmount_base = \"{}\"\n", base.display()));
    let def = json!({"vm_type": "dummy", "storage": [{"name": "root", "type": "zfs", "size": "64M", "compression": "lz4"}]});
    let ds = format!("{pool}/geats/z1/root");
    let zget = |prop: &str| common::lxc::run(&["zfs", "get", "-H", "-o", "value", prop, &ds]).1.trim().to_string();
    env.ok("define", json!({"vm_name": "z1", "definition": def}));
    assert_eq!(zget("quota"), "64M");
    assert_eq!(zget("compression"), "lz4");
    assert_eq!(zget("mounted"), "no", "defined, not active");
    env.ok("start", json!({"vm_name": "z1"}));
    assert_eq!(zget("mounted"), "yes");
    std::fs::write(base.join("z1/root/file"), "data").unwrap();
    let info = env.ok("info", json!({"vm_name": "z1"}));
    assert_eq!(info["storage"][0]["size_bytes"], json!(64 << 20), "{info}");
    env.ok("stop", json!({"vm_name": "z1"}));
    assert_eq!(zget("mounted"), "no");
    env.ok("deprovision", json!({"vm_name": "z1"}));
    let (c, _, _) = common::lxc::run(&["zfs", "list", &format!("{pool}/geats/z1")]);
    assert_ne!(c, 0, "the VM's datasets are destroyed");
}

// ---- golden_image.py ---------------------------------------------------

fn golden_env(dir: &Path, extra: &str) -> Env {
    let env = Env::new();
    let config = format!(
        "[storage_types.golden]\ndriver = \"exec\"\ncommand = [\"{}\"]\nprovides = \"file\"\ngolden_dir = \"{}\"\nimages_dir = \"{}\"\n{extra}",
        example("golden_image.py").display(),
        dir.display(),
        env.root().join("golden").display()
    );
    std::fs::write(&env.config, config).unwrap();
    env
}

#[test]
fn issue_17_golden_image_example_copies_and_refuses() {
    let gold = tempfile::tempdir().unwrap();
    std::fs::write(gold.path().join("base.img"), vec![7u8; 4096]).unwrap();
    std::fs::write(gold.path().join("other.img"), b"x").unwrap();
    let env = golden_env(gold.path(), "default_image = \"base\"\n");
    let vol = |extra: Value| {
        let mut v = json!({"name": "root", "type": "golden"});
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        json!({"vm_type": "dummy", "storage": [v]})
    };
    fails_with(&env, vol(json!({"image": "missing"})), "golden image missing not found in");
    fails_with(&env, vol(json!({"image": "missing"})), "(images there: base, other)");
    fails_with(&env, vol(json!({"image": "../base"})), "image '../base' is not a name like debian12");
    fails_with(&env, vol(json!({"colour": "red"})), "unknown option colour");
    assert!(!env.root().join("golden/x1").exists(), "a refused create leaves nothing");

    // The default image, grown to the volume's size; the golden image is untouched.
    env.ok("define", json!({"vm_name": "g1", "definition": vol(json!({"size": "1M"}))}));
    let copy = env.root().join("golden/g1/root.img");
    let bytes = std::fs::read(&copy).unwrap();
    assert_eq!(bytes.len(), 1 << 20);
    assert!(bytes[..4096].iter().all(|b| *b == 7) && bytes[4096..].iter().all(|b| *b == 0));
    let info = env.ok("info", json!({"vm_name": "g1"}));
    assert_eq!(info["storage"][0]["size_bytes"], json!(1 << 20), "{info}");
    env.ok("deprovision", json!({"vm_name": "g1"}));
    assert!(!copy.exists() && !env.root().join("golden/g1").exists());
    assert_eq!(std::fs::read(gold.path().join("base.img")).unwrap(), vec![7u8; 4096]);

    let env = golden_env(gold.path(), "");
    fails_with(&env, vol(json!({})), "the volume names no image and there is no default_image setting");
    let env = golden_env(gold.path(), "colour = \"red\"\n");
    fails_with(&env, vol(json!({"image": "base"})), "unknown setting colour");
}

#[test]
fn issue_17_golden_image_example_boots_lxc_without_a_template() {
    let name = "issue_17_golden_image_example_boots_lxc_without_a_template";
    if let Some(why) = common::lxc::missing().or_else(|| common::need_commands(&["mkfs.ext4", "resize2fs", "e2fsck", "tar"], "golden images are ext4")) {
        return common::skip(name, &why);
    }
    // A golden ext4 image of the busybox root, made the way an operator
    // would: unpack a root file system, `mkfs.ext4 -d` it into an image.
    let gold = tempfile::tempdir().unwrap();
    let archive = common::lxc::busybox_template(gold.path(), "busybox");
    let rootfs = gold.path().join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    let (c, _, e) = common::lxc::run(&["tar", "-xzf", &archive.display().to_string(), "-C", &rootfs.display().to_string()]);
    assert_eq!(c, 0, "{e}");
    let image = gold.path().join("busybox.img");
    let (c, _, e) = common::lxc::run(&["mkfs.ext4", "-q", "-F", "-d", &rootfs.display().to_string(), &image.display().to_string(), "32M"]);
    assert_eq!(c, 0, "{e}");

    let ct = format!("gt{}gold", std::process::id());
    let env = golden_env(gold.path(), "adapters = [\"loop\", \"filesystem\"]\n[vm_types.lxc]\ndriver = \"lxc\"\nvalid_storage_types = [\"golden\"]\n");
    let lxc = common::lxc::Containers::new(&env.root().join("var/lib/lxc"), &[&ct]);
    let def = json!({"ram": 64, "storage": [{"name": "root", "type": "golden", "image": "busybox", "size": "96M"}]});
    let v = json!({"vm_name": ct});
    env.ok("define", json!({"vm_name": ct, "definition": def}));
    env.ok("start", v.clone());
    assert_eq!(lxc.lxc_state(&ct), "RUNNING");
    let mnt = env.root().join("var/lib/geats/mnt").join(&ct).join("root");
    let (total, _) = geats::sys::fsutil::space(&mnt).expect("the root is mounted");
    assert!(total > 64 << 20, "the file system was grown to the volume's size: {total}");
    assert_eq!(std::fs::read_to_string(mnt.join("etc/hostname")).unwrap(), format!("{ct}\n"), "geats wrote the guest files");
    let t0 = Instant::now();
    loop {
        let out = env.cli(&["exec", &ct, "--", "cat", "/run/rcS.done"]);
        if String::from_utf8_lossy(&out.stdout).contains(&format!("rcS done: {ct}")) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "the cloned root did not boot: {}", common::out_text(&out));
        std::thread::sleep(Duration::from_millis(100));
    }
    env.ok("stop", v.clone());
    assert!(common::mounts_under(env.root()).is_empty());
    env.ok("deprovision", v.clone());
    assert!(!env.root().join("golden").join(&ct).exists());
    assert!(image.is_file(), "the golden image stays");
}
