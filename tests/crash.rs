//! Issue 11, point 1: a SIGKILL of the agent at every step of define,
//! provision, start, stop, undefine and deprovision, on real LXC with a
//! sparsefile+loop+ext4 root volume. The kill comes from the
//! fault-injection point `GEATS_FAULT_KILL_AT=ACTION:N` (just before step
//! N's side effect, after it was journaled as begun) and `ACTION:N+` (just
//! after the side effect, before it was journaled as done). After each
//! kill the next request, `info`, must answer within 10 s with success or
//! `not_found`; the VM must be wholly there (LXC config, state agreeing
//! with `lxc-info`, every template entry in its root, no mount or loop
//! device while stopped) or wholly gone (no config, mount, loop device or
//! volume; undefine keeps its volume); a file written before a killed
//! start, stop, undefine or rolled-back deprovision is intact; and the VM
//! can be driven: (defined again if gone) start → RUNNING, stop →
//! STOPPED, deprovision → nothing left.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::lxc::{busybox_template, missing, Containers};
use crate::common::{self, check_envelope, leftovers, run_with_stdin, skip, Env};

const IMAGE: &str = "[storage_types.img]\ndriver = \"sparsefile\"\nadapters = [\"loop\", \"filesystem\"]\nfstype = \"ext4\"\n[vm_types.lxc]\ndriver = \"lxc\"\nvalid_storage_types = [\"img\", \"dir\"]\nshutdown_timeout = 5\n";
const MARKER: &str = "written before the killed request\n";

struct Rig {
    /// The VM exists (defined, stopped, a marker in its root) before the
    /// killed define or provision; a killed define adds a volume.
    existing: bool,
    env: Env,
    lxc: Containers,
    vm: String,
    template: PathBuf,
    _released: Released,
}

struct Released(PathBuf);

impl Drop for Released {
    fn drop(&mut self) {
        common::release_under(&self.0);
    }
}

impl Rig {
    fn new(tag: &str, existing: bool) -> Rig {
        let env = Env::with_config(IMAGE);
        let template = busybox_template(&env.root().join("var/lib/geats/templates"), "busybox");
        let vm = format!("gk{}{tag}", std::process::id());
        let lxc = Containers::new(&env.root().join("var/lib/lxc"), &[&vm]);
        let released = Released(env.root().to_path_buf());
        Rig { existing, env, lxc, vm, template, _released: released }
    }

    fn definition(&self) -> Value {
        json!({"template": "busybox", "storage": [{"name": "root", "type": "img", "size": "64M"}]})
    }

    fn request(&self, action: &str) -> Value {
        let mut data = json!({"vm_name": self.vm});
        if action == "define" || action == "provision" {
            data["definition"] = self.definition();
        }
        json!({"action": action, "data": data})
    }

    /// The request that gets killed: a re-define of an existing VM adds a
    /// volume.
    fn killed_request(&self, action: &str) -> Value {
        let mut r = self.request(action);
        if self.existing && action == "define" {
            r["data"]["definition"]["storage"]
                .as_array_mut()
                .unwrap()
                .push(json!({"name": "data", "type": "img", "size": "32M", "mountpoint": "/srv"}));
        }
        r
    }

    fn config(&self) -> PathBuf {
        self.env.root().join("var/lib/lxc").join(&self.vm).join("config")
    }

    fn image(&self) -> PathBuf {
        self.env.root().join("var/lib/geats/images").join(&self.vm).join("root.img")
    }

    fn ok(&self, action: &str) -> Value {
        let req = self.request(action);
        self.env.ok(action, req["data"].clone())
    }

    /// The directory of the root volume while it is active.
    fn root_dir(&self) -> PathBuf {
        let info = self.env.ok("info", json!({"vm_name": self.vm}));
        PathBuf::from(info["storage"][0]["directory"].as_str().unwrap_or_else(|| panic!("no root directory: {info}")))
    }

    fn lxc_state(&self) -> String {
        self.lxc.lxc_state(&self.vm)
    }

    /// Bring the VM to the state `action` starts from; returns whether a
    /// marker file was written into its root.
    fn prepare(&self, action: &str) -> bool {
        match action {
            "define" | "provision" if !self.existing => false,
            _ => {
                self.ok("define");
                self.ok("start");
                std::fs::write(self.root_dir().join("marker"), MARKER).unwrap();
                if matches!(action, "start" | "define" | "provision") {
                    self.ok("stop");
                }
                true
            }
        }
    }

    /// Run `action` with the kill point set; it must die of SIGKILL.
    fn killed(&self, action: &str, at: &str) {
        let mut c = self.env.cmd();
        c.args(["agent", "--stdio"]).env("GEATS_FAULT_KILL_AT", format!("{action}:{at}"));
        let out = run_with_stdin(c, self.killed_request(action).to_string().as_bytes());
        assert_eq!(
            out.status.signal(),
            Some(9),
            "{action} with kill point {at} was not killed: {:?} {} {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The steps of one unkilled run of `action` from its starting state.
    fn step_count(&self, action: &str) -> usize {
        self.prepare(action);
        let req = self.killed_request(action);
        self.env.ok(action, req["data"].clone());
        let h: Value = serde_json::from_slice(&self.env.cli(&["history", &self.vm, "--json"]).stdout).unwrap();
        let last = h.as_array().unwrap().iter().rev().find(|e| e["action"] == action).unwrap().clone();
        self.ok("deprovision");
        last["steps"].as_array().unwrap().len()
    }

    /// Every entry of the template exists under `dir`.
    fn check_template(&self, dir: &Path) {
        let gz = flate2::read::GzDecoder::new(std::fs::File::open(&self.template).unwrap());
        let mut ar = tar::Archive::new(gz);
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            let p = e.path().unwrap().into_owned();
            assert!(std::fs::symlink_metadata(dir.join(&p)).is_ok(), "the root lacks template entry {}", p.display());
        }
    }

    /// The checks after one kill, then drive the VM to the end.
    fn check_after_kill(&self, action: &str, at: &str, marker: bool) {
        self.check_after(action, at, marker, true);
    }

    /// The checks after one kill; `interrupted`: the kill came between the
    /// action's first step and its end (always so for the step kill
    /// points), so a repair must have happened.
    fn check_after(&self, action: &str, at: &str, marker: bool, interrupted: bool) {
        let what = format!("{action} killed at {at}");
        // The next request answers within 10 s: success or not_found.
        let t = Instant::now();
        let req = json!({"action": "info", "data": {"vm_name": self.vm}});
        let (code, v, err) = self.env.stdio(&req.to_string());
        assert!(t.elapsed() < Duration::from_secs(10), "{what}: info took {:?}: {v} {err}", t.elapsed());
        assert_eq!(code, 0, "{what}: {err}");
        check_envelope("info", &v);
        let db = rusqlite::Connection::open(self.env.root().join("var/lib/geats/geats.db")).unwrap();
        let open: i64 = db.query_row("SELECT count(*) FROM journal WHERE ended IS NULL", [], |r| r.get(0)).unwrap();
        assert_eq!(open, 0, "{what}: info left an interrupted journal entry");
        if interrupted {
            let outcome: String = db
                .query_row("SELECT outcome FROM journal WHERE action = ?1 ORDER BY id DESC LIMIT 1", [action], |r| r.get(0))
                .unwrap();
            assert!(outcome == "rolled_back" || outcome == "rolled_forward", "{what}: outcome {outcome}");
        }
        let there = if v["success"] == json!(true) {
            if interrupted {
                let repaired = v["data"]["repaired"].as_array().unwrap_or_else(|| panic!("{what}: the reply does not say a repair happened: {v}"));
                assert_eq!(repaired[0]["action"], json!(action), "{what}: {v}");
            }
            assert!(self.config().is_file(), "{what}: info succeeds but the LXC config is gone");
            let running = v["data"]["state"][0] == json!("running");
            assert_eq!(running, self.lxc_state() == "RUNNING", "{what}: info says {} but lxc-info {}", v["data"]["state"], self.lxc_state());
            if !running {
                assert_eq!(leftovers(self.env.root()), Vec::<String>::new(), "{what}: a stopped VM holds mounts or loop devices");
            }
            true
        } else {
            assert_eq!(v["errorcode"], json!("not_found"), "{what}: {v}");
            assert!(!matches!(action, "start" | "stop"), "{what}: a killed {action} made the VM disappear");
            let lxc_dir = self.config().parent().map(Path::to_path_buf).unwrap_or_default();
            let lxc_left: Vec<_> = std::fs::read_dir(&lxc_dir).map(|rd| rd.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
            assert!(!lxc_dir.exists(), "{what}: not_found but the container directory is left, holding {lxc_left:?}");
            assert_eq!(leftovers(self.env.root()), Vec::<String>::new(), "{what}: mounts or loop devices left");
            if action == "undefine" {
                assert!(self.image().is_file(), "{what}: undefine lost the volume");
            } else {
                assert!(!self.image().exists(), "{what}: the volume is left");
                let images = self.env.root().join("var/lib/geats/images");
                let left: Vec<_> = std::fs::read_dir(&images).map(|rd| rd.flatten().map(|e| e.path()).collect()).unwrap_or_default();
                let files: Vec<_> = left.iter().filter(|p| std::fs::read_dir(p).map(|mut rd| rd.next().is_some()).unwrap_or(true)).collect();
                assert!(files.is_empty(), "{what}: files left under the image root: {files:?}");
            }
            false
        };
        // Drive it: define again if gone, start, stop, deprovision.
        // A provision erases the data on purpose.
        let keeps_data = marker && (there || action == "undefine") && action != "provision";
        if !there {
            self.ok("define");
        }
        let r = self.ok("start");
        assert_eq!(r["state"][0], json!("running"), "{what}: {r}");
        assert_eq!(self.lxc_state(), "RUNNING", "{what}");
        let dir = self.root_dir();
        self.check_template(&dir);
        if keeps_data {
            assert_eq!(std::fs::read_to_string(dir.join("marker")).ok().as_deref(), Some(MARKER), "{what}: the data written before is lost");
        }
        self.ok("stop");
        assert_eq!(self.lxc_state(), "STOPPED", "{what}");
        assert_eq!(leftovers(self.env.root()), Vec::<String>::new(), "{what}: stop left mounts or loop devices");
        self.ok("deprovision");
        assert!(!self.config().exists() && !self.image().exists(), "{what}: deprovision left the config or the image");
        let images = self.env.root().join("var/lib/geats/images");
        let files: Vec<_> = std::fs::read_dir(&images).map(|rd| rd.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        assert!(files.is_empty(), "{what}: deprovision left {files:?}");
        assert_eq!(leftovers(self.env.root()), Vec::<String>::new(), "{what}: deprovision left mounts or loop devices");
    }
}

fn kill_at_every_step(test: &str, action: &str, existing: bool) {
    if let Some(why) = missing() {
        return skip(test, &why);
    }
    if !Path::new("/sbin/mkfs.ext4").exists() && !Path::new("/usr/sbin/mkfs.ext4").exists() {
        return skip(test, &crate::common::Missing::command("mkfs.ext4", "mkfs.ext4 is not installed (apt-get install e2fsprogs)"));
    }
    let rig = Rig::new(&format!("{}{}", &action[..3], if existing { "x" } else { "" }), existing);
    let n = rig.step_count(action);
    assert!(n >= 2, "{action} ran {n} steps");
    let mut points = 0;
    for k in 0..n {
        for at in [k.to_string(), format!("{k}+")] {
            let marker = rig.prepare(action);
            rig.killed(action, &at);
            rig.check_after_kill(action, &at, marker);
            points += 1;
        }
    }
    eprintln!("{test}: {action} killed at {points} points of {n} steps, each converged");
}

#[test]
fn issue_11_crash_define() {
    kill_at_every_step("issue_11_crash_define", "define", false);
}

#[test]
fn issue_11_crash_provision() {
    kill_at_every_step("issue_11_crash_provision", "provision", false);
}

#[test]
fn issue_11_crash_start() {
    kill_at_every_step("issue_11_crash_start", "start", false);
}

#[test]
fn issue_11_crash_stop() {
    kill_at_every_step("issue_11_crash_stop", "stop", false);
}

#[test]
fn issue_11_crash_undefine() {
    kill_at_every_step("issue_11_crash_undefine", "undefine", false);
}

#[test]
fn issue_11_crash_deprovision() {
    kill_at_every_step("issue_11_crash_deprovision", "deprovision", false);
}

#[test]
fn issue_11_crash_define_of_an_existing_vm() {
    kill_at_every_step("issue_11_crash_define_of_an_existing_vm", "define", true);
}

#[test]
fn issue_11_crash_provision_of_an_existing_vm() {
    kill_at_every_step("issue_11_crash_provision_of_an_existing_vm", "provision", true);
}

/// Issue 15 with issue 11: a fresh `define` on `overlay` installs into the
/// volume's upper layer without mounting it (`Volume::offline_root`), in
/// steps of its own. A SIGKILL before and after each of them converges:
/// the next `info` answers, the VM is wholly there (config, the guest
/// files in `upper/`) or wholly gone (no container directory, no volume),
/// nothing is mounted, and the VM then starts with its hostname, stops and
/// is deprovisioned without a trace.
#[test]
fn issue_15_crash_overlay_define_at_every_step() {
    const TEST: &str = "issue_15_crash_overlay_define_at_every_step";
    if let Some(why) = missing() {
        return skip(TEST, &why);
    }
    let env = Env::with_config("[storage_types.ov]\ndriver = \"overlay\"\n");
    busybox_template(&env.root().join("var/lib/geats/templates"), "busybox");
    let _released = Released(env.root().to_path_buf());
    let vm = format!("gk{}ov", std::process::id());
    let lxc = Containers::new(&env.root().join("var/lib/lxc"), &[&vm]);
    let data = json!({"vm_name": vm, "definition": {"template": "busybox", "storage": [{"name": "root", "type": "ov"}]}});
    let config = env.root().join("var/lib/lxc").join(&vm).join("config");
    let vol = env.root().join("var/lib/geats/overlay").join(&vm);
    let none = Vec::<String>::new();
    env.ok("define", data.clone());
    let h: Value = serde_json::from_slice(&env.cli(&["history", &vm, "--json"]).stdout).unwrap();
    let steps = h.as_array().and_then(|h| h.last()).map(|e| e["steps"].as_array().map_or(0, Vec::len)).unwrap_or(0);
    assert_eq!(steps, 5, "an overlay define without activation: {h:#}");
    env.ok("deprovision", json!({"vm_name": vm}));
    for k in 0..steps {
        for at in [k.to_string(), format!("{k}+")] {
            let what = format!("overlay define killed at {at}");
            let mut c = env.cmd();
            c.args(["agent", "--stdio"]).env("GEATS_FAULT_KILL_AT", format!("define:{at}"));
            let out = run_with_stdin(c, json!({"action": "define", "data": data}).to_string().as_bytes());
            assert_eq!(out.status.signal(), Some(9), "{what}: not killed: {}", String::from_utf8_lossy(&out.stderr));
            let (code, v, err) = env.stdio(&json!({"action": "info", "data": {"vm_name": vm}}).to_string());
            assert_eq!(code, 0, "{what}: {err}");
            assert_eq!(leftovers(env.root()), none, "{what}: something is mounted");
            if v["success"] == json!(true) {
                assert!(config.is_file(), "{what}: info succeeds without a config");
                assert!(vol.join("root/upper/etc/hostname").is_file(), "{what}: defined without its guest files");
            } else {
                assert_eq!(v["errorcode"], json!("not_found"), "{what}: {v}");
                assert!(!config.exists(), "{what}: gone, but its config is left");
                assert!(!vol.exists(), "{what}: gone, but its volume is left");
                env.ok("define", data.clone());
            }
            env.ok("start", json!({"vm_name": vm}));
            assert_eq!(lxc.lxc_state(&vm), "RUNNING", "{what}");
            let hostname = std::fs::read_to_string(vol.join("root/merged/etc/hostname")).unwrap_or_default();
            assert_eq!(hostname, format!("{vm}\n"), "{what}");
            env.ok("stop", json!({"vm_name": vm}));
            env.ok("deprovision", json!({"vm_name": vm}));
            assert!(!vol.exists() && !config.exists(), "{what}: deprovision left the volume or the config");
            assert_eq!(leftovers(env.root()), none, "{what}: deprovision left a mount");
        }
    }
}

/// A mutating request repairs first too, and says so; a repair is
/// journaled into the interrupted entry.
#[test]
fn issue_11_next_mutating_request_repairs_first() {
    let env = Env::new();
    let def = crate::common::dummy_definition("d");
    let mut c = env.cmd();
    c.args(["agent", "--stdio"]).env("GEATS_FAULT_KILL_AT", "define:1");
    let out = run_with_stdin(c, json!({"action": "define", "data": {"vm_name": "d", "definition": def}}).to_string().as_bytes());
    assert_eq!(out.status.signal(), Some(9), "{}", String::from_utf8_lossy(&out.stderr));
    let r = env.ok("define", json!({"vm_name": "d", "definition": def}));
    assert_eq!(r["changed"], json!(true), "{r}");
    let rep = &r["repaired"][0];
    assert_eq!((rep["action"].as_str(), rep["resolution"].as_str()), (Some("define"), Some("rolled_back")), "{r}");
    let h: Value = serde_json::from_slice(&env.cli(&["history", "d", "--json"]).stdout).unwrap();
    let first = &h[0];
    assert_eq!(first["outcome"], json!("rolled_back"), "{h:#}");
    assert!(first["steps"].as_array().unwrap().iter().any(|s| s.as_str().unwrap().starts_with("(killed during")), "{h:#}");
    // Nothing left to repair: the next reply is the plain one.
    let r = env.ok("start", json!({"vm_name": "d"}));
    assert!(r.get("repaired").is_none(), "{r}");
}

/// The issue's own experiment: SIGKILL of the agent's pid alone at k/7 of
/// an action's run time, whatever it is doing (its children, `lxc-start`,
/// `mkfs`, may go on and finish on their own), then the same checks.
fn kill_at_fractions(test: &str, action: &str) {
    if let Some(why) = missing() {
        return skip(test, &why);
    }
    let rig = Rig::new(&format!("{}t", &action[..3]), false);
    rig.prepare(action);
    let t = Instant::now();
    rig.ok(action);
    let run = t.elapsed();
    rig.ok("deprovision");
    for k in 1..7u32 {
        let at = run * k / 7;
        let marker = rig.prepare(action);
        let mut c = rig.env.cmd();
        c.args(["agent", "--stdio"]).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        let mut child = c.spawn().unwrap();
        {
            use std::io::Write;
            let mut sin = child.stdin.take().unwrap();
            sin.write_all(rig.request(action).to_string().as_bytes()).unwrap();
        }
        std::thread::sleep(at);
        let _ = child.kill();
        let _ = child.wait();
        rig.check_after_kill_any(action, &format!("{k}/7 of {run:?}"), marker);
    }
}

impl Rig {
    /// As `check_after_kill`, for a kill that may have come before the
    /// action's first step or after its end (then nothing is repaired).
    fn check_after_kill_any(&self, action: &str, at: &str, marker: bool) {
        let db = rusqlite::Connection::open(self.env.root().join("var/lib/geats/geats.db")).ok();
        let open: i64 = db.and_then(|db| db.query_row("SELECT count(*) FROM journal WHERE ended IS NULL", [], |r| r.get(0)).ok()).unwrap_or(0);
        self.check_after(action, at, marker, open > 0);
    }
}

#[test]
fn issue_11_crash_define_at_fractions_of_its_run_time() {
    kill_at_fractions("issue_11_crash_define_at_fractions_of_its_run_time", "define");
}

#[test]
fn issue_11_crash_start_at_fractions_of_its_run_time() {
    kill_at_fractions("issue_11_crash_start_at_fractions_of_its_run_time", "start");
}

#[test]
fn issue_11_crash_deprovision_at_fractions_of_its_run_time() {
    kill_at_fractions("issue_11_crash_deprovision_at_fractions_of_its_run_time", "deprovision");
}
