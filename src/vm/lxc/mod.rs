//! The `lxc` VM type: system containers driven through the standard
//! `lxc-*` tools (argv, never a shell; always `-P LXCPATH`).
//!
//! - [`config`]: the LXC config written at define time (pure, snapshot-tested);
//! - [`state`]: running state, usage and addresses read from `/proc` and
//!   the cgroup files, with no process per container;
//! - [`guest`]: `/etc/hostname` and `/etc/firstboot.config` inside the
//!   guest, written without following symlinks.
//!
//! Files per container, under `LXCPATH/NAME/`: `config` (LXC's), `lxc.log`
//! (LXC's log of the last start, at `log_level`), `geats.pid` (the monitor
//! pid, written by `lxc-start -p` and removed by LXC at stop) and
//! `geats.json` (where the rootfs is and whether geats owns it).
//!
//! Settings (`[vm_types.lxc]`): `lxcpath` (default `ROOT/var/lib/lxc`),
//! `shutdown_timeout` (seconds, default 30), `default_rootfs_prefix`
//! (default `ROOT/var/lib/geats/rootfs`; the rootfs of a VM with no storage
//! volume is `PREFIX/NAME`), `log_level` (default `ERROR`) and `config`
//! (extra `lxc.*` keys appended to every container's config).

mod config;
mod guest;
mod state;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{AttachedVolume, Usage, VmError, VmType};
use crate::storage::Kind;
use crate::config::{Config, ConfigError};
use crate::definition::{Definition, NicType};
use crate::names::VmName;
use crate::state::{Power, VmState};
use crate::sys::exec::{self, Cmd, ExecError};
use crate::sys::fsutil::write_atomic;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    lxcpath: Option<PathBuf>,
    shutdown_timeout: Option<u64>,
    default_rootfs_prefix: Option<PathBuf>,
    log_level: Option<String>,
    #[serde(default)]
    config: BTreeMap<String, String>,
}

/// The LXC VM type.
#[derive(Debug)]
pub struct Lxc {
    lxcpath: PathBuf,
    shutdown_timeout: Duration,
    rootfs_prefix: PathBuf,
    log_level: String,
    extra: BTreeMap<String, String>,
}

const LOG_LEVELS: [&str; 9] = ["TRACE", "DEBUG", "INFO", "NOTICE", "WARN", "ERROR", "CRIT", "ALERT", "FATAL"];

impl Lxc {
    /// Build from the config's settings table; the extra `config` keys are
    /// checked here (`^lxc\.[a-z0-9_.]+$`, one-line values).
    pub fn new(config: &Config, prefix: &str, settings: &toml::Table) -> Result<Lxc, ConfigError> {
        let s: Settings = config.settings(prefix, settings)?;
        let lxcpath = config.path_setting(&format!("{prefix}.lxcpath"), s.lxcpath, "var/lib/lxc")?;
        let rootfs_prefix = config.path_setting(&format!("{prefix}.default_rootfs_prefix"), s.default_rootfs_prefix, "var/lib/geats/rootfs")?;
        if rootfs_prefix == lxcpath {
            return Err(config.invalid(format!("{prefix}.default_rootfs_prefix"), "must differ from lxcpath (LXCPATH/NAME holds the container's config)"));
        }
        let timeout = s.shutdown_timeout.unwrap_or(30);
        if !(1..=3600).contains(&timeout) {
            return Err(config.invalid(format!("{prefix}.shutdown_timeout"), format!("{timeout} is not a number of seconds from 1 to 3600")));
        }
        let log_level = s.log_level.unwrap_or_else(|| "ERROR".into()).to_ascii_uppercase();
        if !LOG_LEVELS.contains(&log_level.as_str()) {
            return Err(config.invalid(format!("{prefix}.log_level"), format!("{log_level} is not one of {}", LOG_LEVELS.join(", "))));
        }
        for (k, v) in &s.config {
            if !config::valid_key(k) {
                return Err(config.invalid(format!("{prefix}.config"), format!("key {k:?} does not match ^lxc\\.[a-z0-9_.]+$")));
            }
            if !config::valid_value(v) || v.trim() != v {
                return Err(config.invalid(format!("{prefix}.config.{k}"), format!("value {v:?} contains a control character or surrounding whitespace")));
            }
        }
        Ok(Lxc { lxcpath, shutdown_timeout: Duration::from_secs(timeout), rootfs_prefix, log_level, extra: s.config })
    }

    fn dir(&self, vm: &VmName) -> PathBuf {
        self.lxcpath.join(vm.as_str())
    }

    fn file(&self, vm: &VmName, f: &str) -> PathBuf {
        self.dir(vm).join(f)
    }

    fn lxcpath_arg(&self) -> String {
        self.lxcpath.to_string_lossy().into_owned()
    }

    /// `lxc-TOOL -P LXCPATH -n NAME ARGS...`
    fn tool(&self, tool: &str, vm: &VmName, args: &[&str]) -> Cmd {
        let mut argv = vec![tool.to_string(), "-P".into(), self.lxcpath_arg(), "-n".into(), vm.to_string()];
        argv.extend(args.iter().map(|s| s.to_string()));
        Cmd::new(argv)
    }

    /// The root volume's directory (the manager passes [`VmType::own_root`]
    /// as the root volume of a definition without volumes).
    fn rootfs_of(&self, vm: &VmName, volumes: &[AttachedVolume]) -> PathBuf {
        match volumes.first().and_then(AttachedVolume::directory) {
            Some(d) => d.to_path_buf(),
            None => self.rootfs_prefix.join(vm.as_str()),
        }
    }

    fn io(step: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> VmError {
        let path = path.to_path_buf();
        move |source| VmError::Io { step, path, source }
    }

    fn is_running(&self, vm: &VmName) -> bool {
        state::abstract_sockets().contains(&state::command_socket(&self.lxcpath, vm.as_str()))
    }

    /// The monitor from geats' pid file, else from one scan of `/proc`
    /// (shared by all the VMs of one `states` call).
    fn monitor_with(&self, vm: &VmName, scan: &std::cell::OnceCell<BTreeMap<String, i32>>) -> Option<i32> {
        state::monitor_pid(&self.file(vm, "geats.pid"), &self.lxcpath, vm.as_str())
            .or_else(|| scan.get_or_init(|| state::scan_monitors(&self.lxcpath)).get(vm.as_str()).copied())
    }

    fn init(&self, vm: &VmName) -> Option<i32> {
        self.monitor_with(vm, &std::cell::OnceCell::new()).and_then(state::init_pid)
    }

    /// A failed tool: its own error lines, or the spawn failure.
    fn failed(&self, step: &'static str, vm: &VmName, e: ExecError) -> VmError {
        match e {
            ExecError::Spawn { .. } => VmError::Tool { step, vm: vm.clone(), source: e },
            other => {
                let lines: Vec<&str> = other.stderr().lines().map(str::trim).filter(|l| !l.is_empty()).collect();
                let detail = if lines.is_empty() { other.to_string() } else { lines.join("; ") };
                VmError::Hypervisor { hypervisor: "lxc", step, vm: vm.clone(), detail }
            }
        }
    }

    /// The first ERROR line of LXC's log, without its timestamp and source
    /// position:
    /// ```text
    /// lxc-start c4 20261123093556.367 ERROR    network - ../src/lxc/network.c:netdev_configure_server_veth:711 - No such file or directory - Failed to attach "vethnWju0Q" to bridge "br-missing", bridge interface doesn't exist
    /// ```
    /// gives `No such file or directory - Failed to attach ... doesn't exist`.
    fn log_error(&self, vm: &VmName) -> Option<String> {
        let text = std::fs::read_to_string(self.file(vm, "lxc.log")).ok()?;
        let line = text.lines().find(|l| l.contains(" ERROR "))?;
        let re = regex_lite::Regex::new(r":\d+ - ").ok()?;
        Some(match re.find(line) {
            Some(m) => line[m.end()..].trim().to_string(),
            None => line.trim().to_string(),
        })
    }

    /// How the container's init ended, as the monitor logs it at level
    /// INFO or finer when init exits (so only with `log_level = "INFO"`):
    /// ```text
    /// lxc-start c1 20261201120102.481 INFO     error - ../src/lxc/error.c:lxc_error_set_and_log:34 - Child <4242> ended on signal Killed(9)
    /// ```
    /// gives `init ended on signal Killed(9)`.
    fn log_exit(&self, vm: &VmName) -> Option<String> {
        let text = std::fs::read_to_string(self.file(vm, "lxc.log")).ok()?;
        let line = text.lines().rev().find(|l| l.contains("lxc_error_set_and_log"))?;
        let at = line.find("ended on ")?;
        Some(format!("init {}", line[at..].trim()))
    }

}

fn remove_if_exists(p: &Path) -> Result<(), VmError> {
    crate::sys::fsutil::remove_file_if_exists(p).map_err(|source| VmError::Io { step: "remove", path: p.to_path_buf(), source })
}

impl VmType for Lxc {
    fn accepts(&self) -> &'static [Kind] {
        &[Kind::Directory]
    }

    fn installs_templates(&self) -> bool {
        true
    }

    fn own_root(&self, vm: &VmName) -> Option<PathBuf> {
        Some(self.rootfs_prefix.join(vm.as_str()))
    }

    fn check(&self, vm: &VmName, def: &Definition) -> Result<(), VmError> {
        let inv = |pointer: String, problem: String| VmError::Invalid { pointer, problem };
        if let Some(ram) = def.ram {
            if !(4..=16 << 20).contains(&ram) {
                return Err(inv("/definition/ram".into(), format!("{ram} MB is not between 4 MB and 16 TB")));
            }
        }
        if let Some(c) = def.cpus {
            if !(1..=4096).contains(&c) {
                return Err(inv("/definition/cpus".into(), format!("{c} is not between 1 and 4096")));
            }
        }
        for (i, nic) in def.network.iter().enumerate() {
            if nic.kind() == NicType::Macvlan && nic.bridge.is_none() {
                return Err(inv(format!("/definition/network/{i}/bridge"), "a macvlan NIC needs the host interface in bridge".into()));
            }
        }
        for (i, v) in def.storage.iter().enumerate().skip(1) {
            match &v.mountpoint {
                None => {
                    return Err(inv(format!("/definition/storage/{i}/mountpoint"), "every volume after the root needs a mountpoint in the container".into()));
                }
                Some(mp) => crate::definition::check_mountpoint(mp).map_err(|p| inv(format!("/definition/storage/{i}/mountpoint"), p))?,
            }
        }
        for (k, v) in &def.metadata {
            if guest::reserved_metadata_key(k) {
                return Err(inv(format!("/definition/metadata/{k}"), format!("{k} is set by geats or changes how the guest's shell reads the file; pick another key")));
            }
            if v.contains('\0') {
                return Err(inv(format!("/definition/metadata/{k}"), "the value contains a NUL byte".into()));
            }
        }
        // Render once with the default rootfs: every value that reaches a
        // line is checked before anything is written.
        let inputs = config::Inputs { rootfs: self.rootfs_prefix.join(vm.as_str()), volumes: &[], extra: &self.extra };
        config::render(vm, def, &inputs).map(|_| ())
    }

    fn write_guest_files(&self, vm: &VmName, def: &Definition, root: &Path) -> Result<(), VmError> {
        guest::write(vm, def, root)
    }

    fn define(&self, vm: &VmName, def: &Definition, volumes: &[AttachedVolume]) -> Result<(), VmError> {
        let rootfs = self.rootfs_of(vm, volumes);
        let text = config::render(vm, def, &config::Inputs { rootfs, volumes, extra: &self.extra })?;
        let dir = self.dir(vm);
        std::fs::create_dir_all(&dir).map_err(Self::io("create", &dir))?;
        let cfg = self.file(vm, "config");
        write_atomic(&cfg, text.as_bytes(), 0o644).map_err(Self::io("write", &cfg))
    }

    fn undefine(&self, vm: &VmName) -> Result<(), VmError> {
        let dir = self.dir(vm);
        // geats.json: written by earlier versions.
        for f in ["config", "lxc.log", "geats.pid", "geats.json"] {
            remove_if_exists(&dir.join(f))?;
        }
        if let Err(e) = crate::sys::fsutil::ignore_missing(std::fs::remove_dir(&dir)) {
            tracing::warn!(vm = %vm, dir = %dir.display(), error = %e, "left the container directory (it holds files geats did not write)");
        }
        Ok(())
    }

    fn exists(&self, vm: &VmName) -> bool {
        self.file(vm, "config").is_file()
    }

    fn start(&self, vm: &VmName) -> Result<(), VmError> {
        if self.is_running(vm) {
            return Ok(());
        }
        if !self.exists(vm) {
            return Err(VmError::Hypervisor { hypervisor: "lxc", step: "start", vm: vm.clone(), detail: format!("no LXC config at {}", self.file(vm, "config").display()) });
        }
        state::remove_stale_cgroups(vm.as_str());
        let log = self.file(vm, "lxc.log");
        let pidfile = self.file(vm, "geats.pid");
        // LXC appends to its log: start each attempt with an empty one.
        write_atomic(&log, b"", 0o640).map_err(Self::io("truncate", &log))?;
        remove_if_exists(&pidfile)?;
        let (log_s, pid_s) = (log.to_string_lossy().into_owned(), pidfile.to_string_lossy().into_owned());
        let res = self.tool("lxc-start", vm, &["-d", "-p", &pid_s, "-l", &self.log_level, "-o", &log_s]).timeout(Duration::from_secs(120)).run();
        match res {
            Ok(_) if self.is_running(vm) => Ok(()),
            Ok(_) => {
                // Give a container that died at once a moment to log why.
                std::thread::sleep(Duration::from_millis(200));
                let detail = self.log_error(vm).unwrap_or_else(|| "lxc-start succeeded but the container is not running".into());
                state::remove_stale_cgroups(vm.as_str());
                Err(VmError::Hypervisor { hypervisor: "lxc", step: "start", vm: vm.clone(), detail })
            }
            Err(e @ ExecError::Spawn { .. }) => Err(self.failed("start", vm, e)),
            Err(e) => {
                std::thread::sleep(Duration::from_millis(100));
                state::remove_stale_cgroups(vm.as_str());
                let status = match &e {
                    ExecError::Failed { status, .. } => status.clone(),
                    other => other.to_string(),
                };
                let detail = match self.log_error(vm) {
                    Some(line) => format!("{line} (lxc-start: {status}; log {})", log.display()),
                    None => self.failed("start", vm, e).to_string(),
                };
                Err(VmError::Hypervisor { hypervisor: "lxc", step: "start", vm: vm.clone(), detail })
            }
        }
    }

    fn stop(&self, vm: &VmName) -> Result<(), VmError> {
        if !self.is_running(vm) {
            return Ok(());
        }
        match self.tool("lxc-stop", vm, &["-k"]).run() {
            Ok(_) => Ok(()),
            // `lxc-stop` exits 2 "NAME is not running" when it stopped meanwhile.
            Err(e) if !self.is_running(vm) => {
                tracing::debug!(vm = %vm, error = %e, "lxc-stop failed but the container is stopped");
                Ok(())
            }
            Err(e) => Err(self.failed("stop", vm, e)),
        }
    }

    fn shutdown(&self, vm: &VmName) -> Result<(), VmError> {
        if !self.is_running(vm) {
            return Ok(());
        }
        let secs = self.shutdown_timeout.as_secs().to_string();
        let res = self.tool("lxc-stop", vm, &["-t", &secs, "--nokill"]).timeout(self.shutdown_timeout + Duration::from_secs(30)).run();
        if !self.is_running(vm) {
            return Ok(());
        }
        let why = match res {
            Ok(_) => String::new(),
            Err(e) => format!(": {}", self.failed("shutdown", vm, e)),
        };
        Err(VmError::Hypervisor { hypervisor: "lxc",
            step: "shut down",
            vm: vm.clone(),
            detail: format!("its init did not halt within {secs} s (shutdown_timeout); it is still running, use stop to power it off{why}"),
        })
    }

    fn reboot(&self, vm: &VmName) -> Result<(), VmError> {
        let secs = self.shutdown_timeout.as_secs().to_string();
        self.tool("lxc-stop", vm, &["-r", "-t", &secs]).timeout(self.shutdown_timeout + Duration::from_secs(30)).run().map_err(|e| self.failed("reboot", vm, e))?;
        Ok(())
    }

    fn state(&self, vm: &VmName) -> VmState {
        let sockets = state::abstract_sockets();
        self.state_with(vm, &sockets, &std::cell::OnceCell::new())
    }

    fn states(&self, vms: &[VmName]) -> BTreeMap<VmName, VmState> {
        // One read of /proc/net/unix for all of them; per running container
        // a few /proc and cgroup files. No process is spawned.
        let sockets = state::abstract_sockets();
        let scan = std::cell::OnceCell::new();
        vms.iter().map(|v| (v.clone(), self.state_with(v, &sockets, &scan))).collect()
    }

    fn exit_reason(&self, vm: &VmName) -> Option<String> {
        self.log_exit(vm).or_else(|| self.log_error(vm))
    }

    fn usage(&self, vm: &VmName) -> Usage {
        if !self.is_running(vm) {
            return Usage::default();
        }
        let Some(init) = self.init(vm) else { return Usage::default() };
        let cg = state::cgroups(init);
        Usage { memory_bytes: cg.memory(), memory_limit_bytes: cg.memory_limit(), cpu_seconds: cg.cpu_seconds(), pid: Some(i64::from(init)) }
    }

    fn primary_ip(&self, vm: &VmName, def: &Definition) -> Option<String> {
        if !self.is_running(vm) {
            return None;
        }
        let ips = state::ipv4s(self.init(vm)?);
        let configured = def.network.iter().find_map(|n| n.cidr().ok().flatten()).map(|c| c.addr);
        match configured {
            Some(c) if ips.contains(&c) => Some(c.to_string()),
            _ => ips.first().map(|a| a.to_string()),
        }
    }

    fn console_command(&self, vm: &VmName) -> Option<Vec<String>> {
        Some(vec!["lxc-console".into(), "-P".into(), self.lxcpath_arg(), "-n".into(), vm.to_string(), "-t".into(), "0".into()])
    }

    fn exec_command(&self, vm: &VmName, cmd: &[String]) -> Option<Vec<String>> {
        let mut argv = vec!["lxc-attach".to_string(), "-P".into(), self.lxcpath_arg(), "-n".into(), vm.to_string(), "--".into()];
        argv.extend(cmd.iter().cloned());
        Some(argv)
    }

    fn config_text(&self, vm: &VmName) -> Option<String> {
        std::fs::read_to_string(self.file(vm, "config")).ok()
    }

    fn available(&self) -> bool {
        ["lxc-start", "lxc-stop", "lxc-attach"].iter().all(|t| exec::have(t))
    }
}

impl Lxc {
    /// The state mapping. LXC's own states (`lxc-info -s`: STOPPED,
    /// STARTING, RUNNING, STOPPING, ABORTING, FREEZING, FROZEN, THAWED) are
    /// derived from the runtime traces instead of asked for, to spawn no
    /// process:
    fn state_with(&self, vm: &VmName, sockets: &std::collections::HashSet<String>, scan: &std::cell::OnceCell<BTreeMap<String, i32>>) -> VmState {
        if !self.exists(vm) {
            // Not defined in LXC (an interrupted define, or removed by hand).
            return VmState::with(Power::Unknown, "undefined");
        }
        if !sockets.contains(&state::command_socket(&self.lxcpath, vm.as_str())) {
            // No monitor: STOPPED (LXC's ABORTING ends here too).
            return VmState::plain(Power::Stopped);
        }
        match self.monitor_with(vm, scan).and_then(state::init_pid) {
            // A monitor without an init yet: STARTING (or STOPPING).
            None => VmState::with(Power::Running, "starting"),
            // FROZEN and FREEZING: init cannot run; the contract's paused.
            Some(pid) if state::cgroups(pid).frozen() => VmState::with(Power::Paused, "frozen"),
            // RUNNING (and THAWED, which is running again).
            Some(_) => VmState::plain(Power::Running),
        }
    }
}

impl super::VmDriver for Lxc {
    const NAME: &'static str = "lxc";

    fn build(config: &Config, prefix: &str, settings: &toml::Table) -> Result<Self, ConfigError> {
        Lxc::new(config, prefix, settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lxc(root: &Path, extra: &str) -> Lxc {
        let cfg = Config::from_toml(&format!("[vm_types.lxc]\ndriver = \"lxc\"\n{extra}"), None, Some(root.to_path_buf())).unwrap();
        let t = &cfg.vm_types[&crate::names::TypeName::new("lxc").unwrap()];
        Lxc::new(&cfg, "vm_types.lxc", &t.settings).unwrap()
    }

    fn def(v: serde_json::Value) -> Definition {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn settings_are_checked() {
        let d = tempfile::tempdir().unwrap();
        let cfg = Config::from_toml("", None, Some(d.path().into())).unwrap();
        let bad = |toml: &str| {
            let t: toml::Table = toml::from_str(toml).unwrap();
            Lxc::new(&cfg, "vm_types.lxc", &t).unwrap_err().to_string()
        };
        assert!(bad("nope = 1").contains("nope"));
        assert!(bad("config = { \"lxc.a\\nb\" = \"1\" }").contains("does not match"));
        assert!(bad("config = { \"lxc.a\" = \"1\\nlxc.b = 2\" }").contains("control character"));
        assert!(bad("shutdown_timeout = 0").contains("shutdown_timeout"));
        assert!(bad("log_level = \"LOUD\"").contains("log_level"));
        let l = lxc(d.path(), "");
        assert_eq!(l.lxcpath, d.path().join("var/lib/lxc"));
        assert_eq!(l.shutdown_timeout, Duration::from_secs(30));
    }

    #[test]
    fn check_names_the_pointer_and_writes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let l = lxc(d.path(), "");
        let vm = VmName::new("c1").unwrap();
        let cases = [
            (serde_json::json!({"cpus": 0}), "/definition/cpus"),
            (serde_json::json!({"metadata": {"IFS": "x"}}), "/definition/metadata/IFS"),
            (serde_json::json!({"metadata": {"OK": "a\u{0}b"}}), "/definition/metadata/OK"),
            (serde_json::json!({"storage": [{"name": "r", "type": "dir"}, {"name": "d", "type": "dir"}]}), "/definition/storage/1/mountpoint"),
        ];
        for (v, ptr) in cases {
            match l.check(&vm, &def(v)) {
                Err(VmError::Invalid { pointer, .. }) => assert_eq!(pointer, ptr),
                other => panic!("{ptr}: {other:?}"),
            }
        }
        assert!(!d.path().join("var").exists());
    }

    #[test]
    fn own_root_is_the_rootfs_of_a_definition_without_volumes() {
        let d = tempfile::tempdir().unwrap();
        let l = lxc(d.path(), "");
        let vm = VmName::new("c1").unwrap();
        let rootfs = d.path().join("var/lib/geats/rootfs/c1");
        assert_eq!(l.own_root(&vm), Some(rootfs.clone()));
        l.define(&vm, &def(serde_json::json!({})), &[]).unwrap();
        let text = std::fs::read_to_string(d.path().join("var/lib/lxc/c1/config")).unwrap();
        assert!(text.contains(&format!("lxc.rootfs.path = dir:{}", rootfs.display())), "{text}");
        assert!(l.exists(&vm));
        assert_eq!(l.state(&vm), VmState::plain(Power::Stopped));
        l.undefine(&vm).unwrap();
        assert!(!l.exists(&vm) && !d.path().join("var/lib/lxc/c1").exists());
        assert_eq!(l.state(&vm), VmState::with(Power::Unknown, "undefined"));
    }
}
