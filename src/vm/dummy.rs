//! The `dummy` VM type: a fake whose power state persists in files, for
//! tests, demos and fault injection. Chosen by configuration like any other
//! type.
//!
//! Files under `state_dir` (default `ROOT/var/lib/geats/dummy`):
//! - `NAME.json`: the definition as "defined in the hypervisor";
//! - `power`: the power state of every VM, one line `NAME running` or
//!   `NAME stopped` each, sorted; rewritten atomically under a lock of the
//!   directory, so `status` reads every state with one read, as the `lxc`
//!   type reads its containers' sockets from one file;
//! - `NAME.state` (written by a test or an operator to change a VM's
//!   state behind geats's back; no longer written by geats, but a root
//!   from an older geats has one per VM): its text overrides the VM's line
//!   in `power` (`running`, `stopped`, anything else reads as `corrupt`)
//!   until geats next changes that VM's power;
//! - `NAME.fault` (written by a test or an operator, never by geats):
//!   `{"fail": ["start", ...], "delay_ms": 500}` makes the named actions
//!   fail with `tool_failed`, and every action sleep first.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::Deserialize;

use super::{AttachedVolume, Usage, VmError, VmType};
use crate::storage::Kind;
use crate::config::{Config, ConfigError};
use crate::definition::{Definition, Nic};
use crate::names::VmName;
use crate::state::{Power, VmState};
use crate::sys::fsutil::{write_atomic, OpenDir};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    state_dir: Option<PathBuf>,
}

/// The dummy VM type.
#[derive(Debug)]
pub struct Dummy {
    dir: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
struct Fault {
    #[serde(default)]
    fail: Vec<String>,
    #[serde(default)]
    delay_ms: u64,
}

impl Dummy {
    /// Build from the config's settings table.
    pub fn new(config: &Config, prefix: &str, settings: &toml::Table) -> Result<Dummy, ConfigError> {
        let s: Settings = config.settings(prefix, settings)?;
        let dir = config.path_setting(&format!("{prefix}.state_dir"), s.state_dir, "var/lib/geats/dummy")?;
        Ok(Dummy { dir })
    }

    fn file(&self, vm: &VmName, ext: &str) -> PathBuf {
        self.dir.join(format!("{vm}.{ext}"))
    }

    fn io(step: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> VmError {
        let path = path.to_path_buf();
        move |source| VmError::Io { step, path, source }
    }

    /// Apply the fault file, if any, for `step`.
    fn fault(&self, vm: &VmName, step: &str) -> Result<(), VmError> {
        let Ok(text) = std::fs::read_to_string(self.file(vm, "fault")) else { return Ok(()) };
        let f: Fault = serde_json::from_str(&text).unwrap_or_default();
        if f.delay_ms > 0 {
            std::thread::sleep(std::time::Duration::from_millis(f.delay_ms.min(600_000)));
        }
        if f.fail.iter().any(|s| s == step) {
            return Err(VmError::Failed { vm: vm.clone(), detail: format!("dummy: injected failure of {step} for {vm}") });
        }
        Ok(())
    }

    /// Record `vm`'s power (`None`: forget it) in `power`, and drop its
    /// override file. Writers hold a lock of the directory: actions on
    /// different VMs run at once, and each rewrites the whole file.
    fn set_power(&self, vm: &VmName, p: Option<Power>) -> Result<(), VmError> {
        let state = self.file(vm, "state");
        if p.is_none() && !self.dir.exists() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir).map_err(Self::io("create", &self.dir))?;
        let dir = std::fs::File::open(&self.dir).map_err(Self::io("open", &self.dir))?;
        let _lock = Flock::lock(dir, FlockArg::LockExclusive)
            .map_err(|(_, e)| VmError::Io { step: "lock", path: self.dir.clone(), source: e.into() })?;
        let path = self.dir.join(POWER);
        let text = match std::fs::read_to_string(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            other => other.map_err(Self::io("read power", &path))?,
        };
        let mut lines: BTreeMap<&str, &str> = power_lines(&text).collect();
        let changed = match p {
            Some(p) => lines.insert(vm.as_str(), p.as_str()) != Some(p.as_str()),
            None => lines.remove(vm.as_str()).is_some(),
        };
        if changed && lines.is_empty() {
            crate::sys::fsutil::remove_file_if_exists(&path).map_err(Self::io("remove power", &path))?;
        } else if changed {
            let out: String = lines.iter().map(|(n, w)| format!("{n} {w}\n")).collect();
            write_atomic(&path, out.as_bytes(), 0o644).map_err(Self::io("write power", &path))?;
        }
        crate::sys::fsutil::remove_file_if_exists(&state).map_err(Self::io("remove state", &state))
    }

    /// Is any state recorded for `vm`?
    fn has_state(&self, vm: &VmName) -> bool {
        self.file(vm, "state").exists() || power_word(&std::fs::read_to_string(self.dir.join(POWER)).unwrap_or_default(), vm).is_some()
    }
}

/// The file of every VM's power.
const POWER: &str = "power";

/// The `(name, word)` lines of `power`; a line that is not two words is
/// skipped. One pass over the bytes (`str` searches cost a `status` of
/// 1000 VMs 0.3M instructions).
fn power_lines(text: &str) -> impl Iterator<Item = (&str, &str)> {
    let mut rest = text;
    std::iter::from_fn(move || loop {
        if rest.is_empty() {
            return None;
        }
        let b = rest.as_bytes();
        let end = b.iter().position(|&c| c == b'\n').unwrap_or(b.len());
        let line = &b[..end];
        let space = line.iter().position(|&c| c == b' ');
        // Both split points are ASCII bytes, so char boundaries.
        let (l, r) = rest.split_at(end);
        rest = r.get(1..).unwrap_or("");
        if let Some(sp) = space.filter(|&sp| sp > 0 && !line[sp + 1..].contains(&b' ')) {
            let (name, word) = l.split_at(sp);
            return Some((name, word.get(1..).unwrap_or("").trim_end_matches('\r')));
        }
    })
}

/// `vm`'s word in `power`.
fn power_word<'t>(text: &'t str, vm: &VmName) -> Option<&'t str> {
    power_lines(text).find(|(n, _)| *n == vm.as_str()).map(|(_, w)| w)
}

impl VmType for Dummy {
    fn accepts(&self) -> &'static [Kind] {
        &[Kind::Directory, Kind::BlockDevice, Kind::File, Kind::Nothing]
    }

    fn installs_templates(&self) -> bool {
        false
    }

    fn check(&self, _vm: &VmName, _def: &Definition) -> Result<(), VmError> {
        Ok(())
    }

    fn define(&self, vm: &VmName, def: &Definition, _volumes: &[AttachedVolume]) -> Result<(), VmError> {
        self.fault(vm, "define")?;
        std::fs::create_dir_all(&self.dir).map_err(Self::io("create", &self.dir))?;
        let path = self.file(vm, "json");
        let text = serde_json::to_vec_pretty(def).unwrap_or_default();
        write_atomic(&path, &text, 0o644).map_err(Self::io("write", &path))?;
        if !self.has_state(vm) {
            self.set_power(vm, Some(Power::Stopped))?;
        }
        Ok(())
    }

    fn undefine(&self, vm: &VmName) -> Result<(), VmError> {
        self.fault(vm, "undefine")?;
        let p = self.file(vm, "json");
        crate::sys::fsutil::remove_file_if_exists(&p).map_err(|source| VmError::Io { step: "remove", path: p.clone(), source })?;
        self.set_power(vm, None)
    }

    fn exists(&self, vm: &VmName) -> bool {
        self.file(vm, "json").exists()
    }

    fn list(&self) -> Vec<VmName> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        let mut out: Vec<VmName> = rd
            .flatten()
            .filter_map(|e| e.file_name().to_string_lossy().strip_suffix(".json").and_then(|n| VmName::new(n).ok()))
            .collect();
        out.sort();
        out
    }

    fn start(&self, vm: &VmName) -> Result<(), VmError> {
        self.fault(vm, "start")?;
        self.set_power(vm, Some(Power::Running))
    }

    fn stop(&self, vm: &VmName) -> Result<(), VmError> {
        self.fault(vm, "stop")?;
        self.set_power(vm, Some(Power::Stopped))
    }

    fn shutdown(&self, vm: &VmName) -> Result<(), VmError> {
        self.fault(vm, "shutdown")?;
        self.set_power(vm, Some(Power::Stopped))
    }

    /// The dummy has nothing to pause; `fault` can fail or delay it.
    fn freeze(&self, vm: &VmName) -> Result<(), VmError> {
        self.fault(vm, "freeze")
    }

    fn unfreeze(&self, vm: &VmName) -> Result<(), VmError> {
        self.fault(vm, "unfreeze")
    }

    fn reboot(&self, vm: &VmName) -> Result<(), VmError> {
        self.fault(vm, "reboot")?;
        self.set_power(vm, Some(Power::Running))
    }

    fn state(&self, vm: &VmName) -> VmState {
        match std::fs::read_to_string(self.file(vm, "state")) {
            Ok(text) => power_state(Ok(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                power_state(power_word(&std::fs::read_to_string(self.dir.join(POWER)).unwrap_or_default(), vm).ok_or(()))
            }
            // An override that cannot be read (or is not UTF-8).
            Err(_) => power_state(Err(())),
        }
    }

    fn states(&self, vms: &[VmName]) -> BTreeMap<VmName, VmState> {
        let refs: Vec<&VmName> = vms.iter().collect();
        vms.iter().cloned().zip(self.states_in_order(&refs)).collect()
    }

    /// One read of `power` and one listing of the directory for every VM;
    /// a file read only for a VM with an override file.
    fn states_in_order(&self, vms: &[&VmName]) -> Vec<VmState> {
        let text = std::fs::read_to_string(self.dir.join(POWER)).unwrap_or_default();
        let mut words: Vec<(&str, &str)> = power_lines(&text).collect();
        if !words.windows(2).all(|w| w[0].0 < w[1].0) {
            words.sort_unstable();
        }
        let overrides: std::collections::BTreeSet<String> = std::fs::read_dir(&self.dir)
            .map(|rd| rd.flatten().filter_map(|e| e.file_name().to_str()?.strip_suffix(".state").map(str::to_owned)).collect())
            .unwrap_or_default();
        let dir = if overrides.is_empty() { None } else { OpenDir::open(&self.dir).ok() };
        let mut name = Vec::with_capacity(80);
        let mut buf = [0u8; 64];
        // Names asked in order (as `status` does) are found by walking the
        // sorted lines once; others by a binary search.
        let in_order = vms.windows(2).all(|w| w[0] < w[1]);
        let mut at = 0;
        let mut word = |vm: &VmName| {
            if in_order {
                while words.get(at).is_some_and(|(n, _)| *n < vm.as_str()) {
                    at += 1;
                }
                words.get(at).filter(|(n, _)| *n == vm.as_str()).map(|(_, w)| *w)
            } else {
                words.binary_search_by(|(n, _)| (*n).cmp(vm.as_str())).ok().map(|i| words[i].1)
            }
        };
        vms.iter()
            .map(|vm| match &dir {
                Some(dir) if overrides.contains(vm.as_str()) => {
                    name.clear();
                    name.extend_from_slice(vm.as_str().as_bytes());
                    name.extend_from_slice(b".state");
                    match dir.read_start(&name, &mut buf) {
                        // A longer file than any state: read it whole, as `state`.
                        Ok(n) if n == buf.len() => self.state(vm),
                        Ok(n) => power_state(std::str::from_utf8(&buf[..n]).map_err(drop)),
                        // Gone since the listing: what `power` says.
                        Err(_) => self.state(vm),
                    }
                }
                _ => power_state(word(vm).ok_or(())),
            })
            .collect()
    }

    fn usage(&self, vm: &VmName) -> Usage {
        let running = self.state(vm).is_running();
        Usage {
            memory_bytes: running.then_some(0),
            memory_limit_bytes: None,
            cpu_seconds: running.then_some(0.0),
            pid: None,
        }
    }

    fn primary_ip(&self, _vm: &VmName, nics: &[Nic]) -> Option<String> {
        nics.iter().find_map(|n| n.cidr().ok().flatten()).map(|c| c.addr.to_string())
    }
}

/// The state a `.state` file's text says; `Err` when it cannot be read
/// (or is not UTF-8, as `read_to_string` fails then).
fn power_state(text: Result<&str, ()>) -> VmState {
    match text.map(str::trim) {
        Ok("running") => VmState::plain(Power::Running),
        Ok("stopped") => VmState::plain(Power::Stopped),
        Ok(_) => VmState::with(Power::Unknown, "corrupt"),
        // Not defined in the "hypervisor".
        Err(()) => VmState::with(Power::Unknown, "undefined"),
    }
}

impl super::VmDriver for Dummy {
    const NAME: &'static str = "dummy";

    fn build(config: &Config, prefix: &str, settings: &toml::Table) -> Result<Self, ConfigError> {
        Dummy::new(config, prefix, settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The batched read says what one read per VM says, whatever the file.
    #[test]
    fn states_agree_with_state() {
        let d = tempfile::tempdir().unwrap();
        let dummy = Dummy { dir: d.path().to_path_buf() };
        let (padded, long) = (format!("running{}", " ".repeat(100)), "x".repeat(200));
        let files: &[(&str, &[u8])] = &[
            ("a", b"running"),
            ("b", b"stopped\n"),
            ("c", b"  running \n"),
            ("d", b"garbage"),
            ("e", b"\xff\xfe"),
            ("g", b""),
            ("h", padded.as_bytes()),
            ("i", long.as_bytes()),
        ];
        let mut names: Vec<VmName> = files.iter().map(|(n, _)| VmName::new(*n).unwrap()).collect();
        for (n, text) in files {
            std::fs::write(d.path().join(format!("{n}.state")), text).unwrap();
        }
        std::os::unix::fs::symlink(d.path().join("a.state"), d.path().join("s.state")).unwrap();
        // States in `power`, some overridden.
        std::fs::write(d.path().join(POWER), "a stopped\np1 running\np2 stopped\n\np3 bogus\nb running\nbad line here\n nameless\nzz running").unwrap();
        let text = std::fs::read_to_string(d.path().join(POWER)).unwrap();
        let lines: Vec<_> = power_lines(&text).collect();
        assert_eq!(lines, [("a", "stopped"), ("p1", "running"), ("p2", "stopped"), ("p3", "bogus"), ("b", "running"), ("zz", "running")]);
        for n in ["s", "missing", "p1", "p2", "p3"] {
            names.push(VmName::new(n).unwrap());
        }
        names.sort();
        let batch = dummy.states(&names);
        let backwards: Vec<&VmName> = names.iter().rev().collect();
        let mut again = dummy.states_in_order(&backwards);
        again.reverse();
        assert_eq!(again, batch.values().cloned().collect::<Vec<_>>(), "asked out of order");
        for n in &names {
            assert_eq!(batch.get(n), Some(&dummy.state(n)), "{n}");
        }
        assert_eq!(batch[&VmName::new("h").unwrap()], VmState::plain(Power::Running));
        assert_eq!(batch[&VmName::new("e").unwrap()], VmState::with(Power::Unknown, "undefined"));
        assert_eq!(batch[&VmName::new("a").unwrap()], VmState::plain(Power::Running), "the override wins");
        assert_eq!(batch[&VmName::new("p1").unwrap()], VmState::plain(Power::Running));
        assert_eq!(batch[&VmName::new("p2").unwrap()], VmState::plain(Power::Stopped));
        assert_eq!(batch[&VmName::new("p3").unwrap()], VmState::with(Power::Unknown, "corrupt"));
        assert_eq!(batch[&VmName::new("missing").unwrap()], VmState::with(Power::Unknown, "undefined"));
        let gone = Dummy { dir: d.path().join("nope") };
        assert_eq!(gone.states(&names[..1]).values().next(), Some(&VmState::with(Power::Unknown, "undefined")));
    }
}

#[cfg(test)]
mod power_tests {
    use super::*;

    /// Power changes go to `power`, drop the VM's override, and leave
    /// nothing behind when the last VM goes.
    #[test]
    fn power_file_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let dummy = Dummy { dir: d.path().join("dummy") };
        let (a, b) = (VmName::new("a").unwrap(), VmName::new("b").unwrap());
        dummy.set_power(&a, None).unwrap();
        assert!(!dummy.dir.exists(), "forgetting nothing writes nothing");
        let def: Definition = serde_json::from_value(serde_json::json!({"vm_type": "dummy"})).unwrap();
        dummy.define(&a, &def, &[]).unwrap();
        dummy.define(&b, &def, &[]).unwrap();
        dummy.start(&b).unwrap();
        assert_eq!(std::fs::read_to_string(dummy.dir.join(POWER)).unwrap(), "a stopped\nb running\n");
        dummy.define(&b, &def, &[]).unwrap();
        assert_eq!(dummy.state(&b), VmState::plain(Power::Running), "a re-define keeps the power");
        std::fs::write(dummy.file(&a, "state"), "running").unwrap();
        assert_eq!(dummy.state(&a), VmState::plain(Power::Running), "an override written behind geats's back");
        dummy.stop(&a).unwrap();
        assert!(!dummy.file(&a, "state").exists());
        assert_eq!(dummy.state(&a), VmState::plain(Power::Stopped));
        dummy.undefine(&a).unwrap();
        dummy.undefine(&b).unwrap();
        assert_eq!(std::fs::read_dir(&dummy.dir).unwrap().count(), 0, "nothing left");
        assert_eq!(dummy.state(&a), VmState::with(Power::Unknown, "undefined"));
    }

    /// Concurrent power changes of different VMs are all kept.
    #[test]
    fn concurrent_writers_lose_nothing() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().to_path_buf();
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let dummy = Dummy { dir: dir.clone() };
                std::thread::spawn(move || {
                    let vm = VmName::new(format!("vm{i}")).unwrap();
                    for _ in 0..10 {
                        dummy.start(&vm).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let dummy = Dummy { dir };
        let names: Vec<VmName> = (0..8).map(|i| VmName::new(format!("vm{i}")).unwrap()).collect();
        assert!(dummy.states(&names).values().all(|s| *s == VmState::plain(Power::Running)));
    }
}
