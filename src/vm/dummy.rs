//! The `dummy` VM type: a fake whose power state persists in files, for
//! tests, demos and fault injection. Chosen by configuration like any other
//! type.
//!
//! Files under `state_dir` (default `ROOT/var/lib/geats/dummy`):
//! - `NAME.json`: the definition as "defined in the hypervisor";
//! - `NAME.state`: `running` or `stopped`;
//! - `NAME.fault` (written by a test or an operator, never by geats):
//!   `{"fail": ["start", ...], "delay_ms": 500}` makes the named actions
//!   fail with `tool_failed`, and every action sleep first.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{AttachedVolume, Usage, VmError, VmType};
use crate::storage::Kind;
use crate::config::{Config, ConfigError};
use crate::definition::Definition;
use crate::names::VmName;
use crate::state::{Power, VmState};
use crate::sys::fsutil::write_atomic;

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

    fn set_power(&self, vm: &VmName, p: Power) -> Result<(), VmError> {
        let path = self.file(vm, "state");
        write_atomic(&path, p.as_str().as_bytes(), 0o644).map_err(Self::io("write state", &path))
    }
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
        if !self.file(vm, "state").exists() {
            self.set_power(vm, Power::Stopped)?;
        }
        Ok(())
    }

    fn undefine(&self, vm: &VmName) -> Result<(), VmError> {
        self.fault(vm, "undefine")?;
        for ext in ["json", "state"] {
            let p = self.file(vm, ext);
            crate::sys::fsutil::remove_file_if_exists(&p).map_err(|source| VmError::Io { step: "remove", path: p.clone(), source })?;
        }
        Ok(())
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
        self.set_power(vm, Power::Running)
    }

    fn stop(&self, vm: &VmName) -> Result<(), VmError> {
        self.fault(vm, "stop")?;
        self.set_power(vm, Power::Stopped)
    }

    fn shutdown(&self, vm: &VmName) -> Result<(), VmError> {
        self.fault(vm, "shutdown")?;
        self.set_power(vm, Power::Stopped)
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
        self.set_power(vm, Power::Running)
    }

    fn state(&self, vm: &VmName) -> VmState {
        match std::fs::read_to_string(self.file(vm, "state")).as_deref().map(str::trim) {
            Ok("running") => VmState::plain(Power::Running),
            Ok("stopped") => VmState::plain(Power::Stopped),
            Ok(_) => VmState::with(Power::Unknown, "corrupt"),
            // Not defined in the "hypervisor".
            Err(_) => VmState::with(Power::Unknown, "undefined"),
        }
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

    fn primary_ip(&self, _vm: &VmName, def: &Definition) -> Option<String> {
        def.network.iter().find_map(|n| n.cidr().ok().flatten()).map(|c| c.addr.to_string())
    }
}

impl super::VmDriver for Dummy {
    const NAME: &'static str = "dummy";

    fn build(config: &Config, prefix: &str, settings: &toml::Table) -> Result<Self, ConfigError> {
        Dummy::new(config, prefix, settings)
    }
}
