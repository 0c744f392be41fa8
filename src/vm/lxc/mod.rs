//! The `lxc` VM type: system containers driven through the standard
//! `lxc-*` tools (argv, never a shell; always `-P LXCPATH`), but for
//! `stop`, which speaks LXC's command protocol itself ([`command`]).
//!
//! - [`config`]: the LXC config written at define time (pure, snapshot-tested);
//! - [`state`]: running state, usage and addresses read from `/proc` and
//!   the cgroup files, with no process per container;
//! - [`command`]: LXC's command protocol, for `stop` (what `lxc-stop -k`
//!   sends, without the process);
//! - [`guest`]: `/etc/hostname` and `/etc/firstboot.config` inside the
//!   guest, written without following symlinks.
//!
//! Files per container, under `LXCPATH/NAME/`: `config` (LXC's), `lxc.log`
//! (LXC's log of the last start, at `log_level`), `geats.pid` (the monitor
//! pid, written by `lxc-start -p` and removed by LXC at stop) and
//! `geats-record.json` (geats' definition and volume records, for
//! `geats recover`; `geats.json` was written by earlier versions).
//!
//! Settings (`[vm_types.lxc]`): `lxcpath` (default `ROOT/var/lib/lxc`),
//! `shutdown_timeout` (seconds, default 30), `default_rootfs_prefix`
//! (default `ROOT/var/lib/geats/rootfs`; the rootfs of a VM with no storage
//! volume is `PREFIX/NAME`), `log_level` (default `ERROR`) and `config`
//! (extra `lxc.*` keys appended to every container's config), `idmap`
//! (`{uid, gid, range}` of unprivileged containers, default
//! `100000/100000/65536`), `idmapped_mounts` (`auto`, `always`, `never`:
//! whether templates are unpacked with shifted owners) and
//! `allow_devices` (`fuse`, `tun`).
//!
//! - [`confine`]: id map, idmapped mounts or shifted owners, cap drops,
//!   device allow-list, seccomp, AppArmor.

mod command;
mod config;
mod confine;
mod guest;
mod state;
mod subid;

/// Can the kernel and the filesystem under `dir` idmap a mount (the test
/// LXC's `idmapped_mounts = "auto"` makes)? `Err` says why not.
pub use confine::idmap_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{AttachedVolume, Look, Usage, VmError, VmType};
use crate::storage::{Kind, Provides, RootDirs};
use crate::config::{Config, ConfigError};
use crate::definition::{Definition, Nic, NicType};
use crate::names::VmName;
use crate::state::{Power, PowerAction, VmState};
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
    idmap: Option<IdMapSetting>,
    idmapped_mounts: Option<confine::IdmappedMounts>,
    #[serde(default)]
    allow_devices: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdMapSetting {
    uid: Option<u32>,
    gid: Option<u32>,
    range: Option<u32>,
}

/// A volume as recorded at define, for rendering the config again at start.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MetaVolume {
    name: crate::names::VolumeName,
    directory: Option<PathBuf>,
    mountpoint: Option<String>,
}

/// What geats remembers beside the LXC config.
#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    rootfs: PathBuf,
    /// The rootfs is `default_rootfs_prefix/NAME` (the implicit root the
    /// manager keeps for a definition without volumes), not a volume.
    owned: bool,
    /// The definition and volumes of the last define: `start` renders the
    /// config again with the volumes active (absent: written by an older
    /// geats; the config is used as it is).
    #[serde(default)]
    definition: Option<Definition>,
    #[serde(default)]
    volumes: Vec<MetaVolume>,
}

/// The LXC VM type.
#[derive(Debug)]
pub struct Lxc {
    lxcpath: PathBuf,
    shutdown_timeout: Duration,
    rootfs_prefix: PathBuf,
    log_level: String,
    extra: BTreeMap<String, String>,
    idmap: confine::IdShift,
    idmapped_mounts: confine::IdmappedMounts,
    devices: Vec<&'static str>,
    /// How the files of a VM's active root are owned, as
    /// `write_guest_files` found them: `define` writes the config after
    /// the manager has released the root again (an empty overlay or
    /// image mount point, which says nothing), and must write the config
    /// `start` will (docs/lxc.md).
    seen: std::sync::Mutex<Option<(VmName, confine::Files, String)>>,
}

/// geats' record of a container, beside its LXC config (`geats recover`).
const RECORD: &str = "geats-record.json";

/// The seccomp policy every container's config names, in the lxcpath:
/// the same for all, so a `define` only reads it (one file written, and
/// fsynced, per host instead of per container). Not a directory with a
/// `config`, so neither LXC nor geats takes it for a container.
const SECCOMP_FILE: &str = ".geats-seccomp";

/// How long `stop` waits for the monitor to finish (that of `lxc-stop -k`
/// as a tool: `Cmd`'s default).
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

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
        let d = confine::DEFAULT_MAP;
        let idmap = match s.idmap {
            None => d,
            Some(m) => confine::IdShift { uid: m.uid.unwrap_or(d.uid), gid: m.gid.unwrap_or(d.gid), range: m.range.unwrap_or(d.range) },
        };
        if idmap.uid == 0 || idmap.gid == 0 || idmap.range == 0 || idmap.uid.checked_add(idmap.range).is_none() || idmap.gid.checked_add(idmap.range).is_none() {
            return Err(config.invalid(
                format!("{prefix}.idmap"),
                format!("uid {} gid {} range {}: the host ids must start above 0 and the range must be at least 1 and fit below 2^32", idmap.uid, idmap.gid, idmap.range),
            ));
        }
        let mut devices = Vec::new();
        for name in &s.allow_devices {
            devices.push(confine::optional_device(name).ok_or_else(|| config.invalid(format!("{prefix}.allow_devices"), format!("{name:?} is not one of fuse, tun")))?);
        }
        Ok(Lxc {
            lxcpath,
            shutdown_timeout: Duration::from_secs(timeout),
            rootfs_prefix,
            log_level,
            extra: s.config,
            idmap,
            idmapped_mounts: s.idmapped_mounts.unwrap_or(confine::IdmappedMounts::Auto),
            devices,
            seen: std::sync::Mutex::new(None),
        })
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

    /// The root volume's directory, and whether it is this type's own
    /// root (the manager passes [`VmType::own_root`] as the root volume of
    /// a definition without volumes).
    fn rootfs_of(&self, vm: &VmName, volumes: &[AttachedVolume]) -> (PathBuf, bool) {
        let own = self.rootfs_prefix.join(vm.as_str());
        match volumes.first().and_then(AttachedVolume::directory) {
            Some(d) => (d.to_path_buf(), d == own),
            None => (own, true),
        }
    }

    fn io(step: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> VmError {
        let path = path.to_path_buf();
        move |source| VmError::Io { step, path, source }
    }

    fn is_running(&self, vm: &VmName) -> bool {
        state::listening(&state::command_socket(&self.lxcpath, vm.as_str()))
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

    /// `lxc-stop -P LXCPATH -n NAME -k`, the fallback of [`command::stop`].
    fn stop_with_tool(&self, vm: &VmName) -> Result<(), VmError> {
        if !self.is_running(vm) {
            return Ok(());
        }
        match self.tool("lxc-stop", vm, &["-k"]).timeout(STOP_TIMEOUT).run() {
            Ok(_) => Ok(()),
            // `lxc-stop` exits 2 "NAME is not running" when it stopped meanwhile.
            Err(e) if !self.is_running(vm) => {
                tracing::debug!(vm = %vm, error = %e, "lxc-stop failed but the container is stopped");
                Ok(())
            }
            Err(e) => Err(self.failed("stop", vm, e)),
        }
    }

    /// After the monitor closed the stop command's connection, until its
    /// command socket is gone (what `is_running` and LXC's tools ask).
    /// LXC 3.0 to 6 close that connection only as the monitor exits, after
    /// it closed the socket, so this returns at once; should a monitor
    /// close it earlier, wait for the monitor's exit (its pidfd), then
    /// look again with growing pauses, until `deadline`.
    fn wait_gone(&self, vm: &VmName, socket: &str, deadline: std::time::Instant) -> Result<(), VmError> {
        if !state::listening(socket) {
            return Ok(());
        }
        if let Some(pid) = self.monitor_with(vm, &std::cell::OnceCell::new()) {
            tracing::debug!(vm = %vm, monitor = pid, "the command socket still listens; waiting for the monitor to exit");
            command::wait_exit(pid, deadline);
        }
        let mut pause = Duration::from_millis(1);
        while state::listening(socket) {
            if std::time::Instant::now() >= deadline {
                return Err(VmError::Hypervisor {
                    hypervisor: "lxc",
                    step: "stop",
                    vm: vm.clone(),
                    detail: format!("LXC's monitor took the stop command but its command socket still listens after {} s", STOP_TIMEOUT.as_secs()),
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
        Ok(())
    }

    /// The first ERROR line of LXC's log, without its timestamp and source
    /// position:
    /// ```text
    /// lxc-start c4 20261123093556.367 ERROR    network - ../src/lxc/network.c:netdev_configure_server_veth:711 - No such file or directory - Failed to attach "vethnWju0Q" to bridge "br-missing", bridge interface doesn't exist
    /// ```
    /// gives `No such file or directory - Failed to attach ... doesn't exist`.
    fn log_error(&self, vm: &VmName) -> Option<String> {
        log_error_in(&self.read_log(vm)?)
    }

    /// LXC's log of the container's last start (truncated at each).
    fn read_log(&self, vm: &VmName) -> Option<String> {
        std::fs::read_to_string(self.file(vm, "lxc.log")).ok()
    }

    fn read_meta(&self, vm: &VmName) -> Option<Meta> {
        serde_json::from_str(&std::fs::read_to_string(self.file(vm, "geats.json")).ok()?).ok()
    }

    /// The definition the running container started with (and what
    /// [`VmType::apply_live`] changed since), beside its config.
    fn running_file(&self, vm: &VmName) -> PathBuf {
        self.file(vm, "geats.running.json")
    }

    fn read_running(&self, vm: &VmName) -> Option<Definition> {
        serde_json::from_str(&std::fs::read_to_string(self.running_file(vm)).ok()?).ok()
    }

    /// The definition keys that differ between `def` and what the running
    /// container started with.
    fn pending_now(&self, vm: &VmName, def: &Definition) -> Vec<String> {
        let Some(running) = self.read_running(vm) else { return Vec::new() };
        let (Ok(serde_json::Value::Object(now)), Ok(serde_json::Value::Object(then))) = (serde_json::to_value(def), serde_json::to_value(&running)) else {
            return Vec::new();
        };
        let mut keys: Vec<String> = now.keys().chain(then.keys()).filter(|k| now.get(*k) != then.get(*k)).cloned().collect();
        keys.sort();
        keys.dedup();
        // The description is only recorded; it needs no restart.
        keys.retain(|k| k != "description");
        keys
    }

    fn write_running(&self, vm: &VmName, def: &Definition) -> Result<(), VmError> {
        let p = self.running_file(vm);
        // 0600: the definition may carry secrets in its metadata. No
        // fsync: it describes a running container, which a host crash
        // ends; the next start writes it again. In place over the last
        // run's (`write_into`): on ext4 a rename over it, or its unlink
        // first, cost 0.5-3 ms of a restart here; a reader that meets a
        // half-written one sees no pending changes, as for a missing one.
        crate::sys::fsutil::write_into(&p, &serde_json::to_vec(def).unwrap_or_default(), 0o600).map_err(Self::io("write", &p))
    }

    /// After a start: the definition of the last define is what runs now.
    fn record_running(&self, vm: &VmName) -> Result<(), VmError> {
        match self.read_meta(vm).and_then(|m| m.definition) {
            Some(def) => self.write_running(vm, &def),
            None => remove_if_exists(&self.running_file(vm)),
        }
    }

    /// The running container's cgroups, through its init.
    fn live_cgroups(&self, vm: &VmName) -> Result<state::Cgroups, VmError> {
        let init = self.init(vm).ok_or_else(|| VmError::Refused { vm: vm.clone(), problem: "it has no init process yet; try again once it has started".into() })?;
        Ok(state::cgroups(init))
    }

    /// Fence off `default_rootfs_prefix`, which holds the roots of every
    /// VM without volumes: no other host user may enter it.
    fn fence_own_roots(&self, rootfs: &Path) -> Result<(), VmError> {
        match rootfs.parent() {
            Some(parent) => std::fs::set_permissions(parent, std::os::unix::fs::PermissionsExt::from_mode(0o700)).map_err(Self::io("restrict", parent)),
            None => Ok(()),
        }
    }

    /// How the files of `vm` with its root at `rootfs` are owned, read
    /// from the disk first (what is unpacked stays as it is), then from the
    /// settings and the filesystem for an empty root; and a note saying why.
    ///
    /// The owner of the root's `/etc` (else of the root itself) tells:
    /// the map's root uid means shifted, 0 means root-owned files (shown
    /// through idmapped mounts when unprivileged).
    fn files(&self, vm: &VmName, def: &Definition, rootfs: &Path) -> Result<(confine::Files, String), VmError> {
        self.files_in(vm, def, &RootDirs::active(rootfs))
    }

    /// [`Lxc::files`] of a root read and written in different places (an
    /// overlay installed unmounted, `storage::Volume::offline_root`): its
    /// files are those under `root.read` and its own top directory is
    /// `root.write`, and it will be on a file system of `root.fs_type`.
    fn files_in(&self, vm: &VmName, def: &Definition, root: &RootDirs) -> Result<(confine::Files, String), VmError> {
        use confine::Files;
        let etc = root.read.join("etc");
        let probe = if std::fs::symlink_metadata(&etc).is_ok() { etc } else { root.write.clone() };
        let shows_files = |d: &Path| std::fs::read_dir(d).is_ok_and(|rd| rd.flatten().any(|e| e.file_name() != "lost+found"));
        let nonempty = shows_files(&root.read) || (root.is_split() && shows_files(&root.write));
        let owner = if nonempty { confine::owner(&probe) } else { None };
        let rootfs = root.read.as_path();
        let idmap_support = || confine::idmap_support_of(rootfs, root.fs_type);
        let inv = |pointer: &str, problem: String| VmError::Invalid { pointer: pointer.into(), problem };
        if def.privileged {
            if owner == Some(self.idmap.uid) {
                return Err(inv("/definition/privileged", format!("the files of VM {vm} were unpacked with owners shifted into the id map (uid {}); provision it to make it privileged", self.idmap.uid)));
            }
            return Ok((Files::Privileged, "privileged = true".into()));
        }
        match owner {
            Some(u) if u == self.idmap.uid => {
                let fs = idmap_support().err().map(|why| format!("; {why}")).unwrap_or_default();
                Ok((Files::Shifted, format!("its files are owned by uid {u}, the id map's root{fs}")))
            }
            Some(0) => match idmap_support() {
                Ok(()) => Ok((Files::Idmapped, "its files are owned by host root".into())),
                Err(why) => Err(inv(
                    "/definition/privileged",
                    format!("the files of VM {vm} are owned by host root and {why}; provision it to unpack the template with shifted owners, or make it privileged"),
                )),
            },
            Some(u) => Err(inv("/definition/storage/0", format!("the root of VM {vm} is owned by uid {u}, neither 0 nor the id map's root {}; provision it", self.idmap.uid))),
            None => match self.idmapped_mounts {
                confine::IdmappedMounts::Never => Ok((Files::Shifted, "idmapped_mounts = never".into())),
                confine::IdmappedMounts::Always => Ok((Files::Idmapped, "idmapped_mounts = always".into())),
                confine::IdmappedMounts::Auto => match idmap_support() {
                    Ok(()) => Ok((Files::Idmapped, "idmapped_mounts = auto, and the filesystem supports them".into())),
                    Err(why) => Ok((Files::Shifted, format!("idmapped_mounts = auto, and {why}"))),
                },
            },
        }
    }

    /// [`Lxc::files`] for a config: on a root that shows no files (a
    /// released mount point), what this process saw on the active root
    /// (`write_guest_files` of the same `define`). Without it an overlay
    /// root was probed as the empty directory under it, and `define`
    /// wrote `idmap=container` for files unpacked shifted; `start`
    /// rewrote the config, and an `lxc-start` before it got files owned
    /// by nobody.
    fn files_for_config(&self, vm: &VmName, def: &Definition, rootfs: &Path) -> Result<(confine::Files, String), VmError> {
        let empty = std::fs::read_dir(rootfs).map_or(true, |mut rd| rd.all(|e| e.is_ok_and(|e| e.file_name() == "lost+found")));
        if empty && !def.privileged {
            let seen = self.seen.lock().ok().and_then(|s| s.clone());
            if let Some((_, files, why)) = seen.filter(|(v, files, _)| v == vm && *files != confine::Files::Privileged) {
                return Ok((files, why));
            }
        }
        self.files(vm, def, rootfs)
    }

    /// The mapped root's host ids, when the files are shifted.
    fn shifted_owner(&self, files: confine::Files) -> Option<(u32, u32)> {
        (files == confine::Files::Shifted).then_some((self.idmap.uid, self.idmap.gid))
    }

    /// The confinement of `vm` for a config, and the directories whose top
    /// must belong to the container's root (not idmapped, unprivileged).
    fn security(&self, rootfs: &Path, volumes: &[AttachedVolume], files: confine::Files, why: &str) -> (config::Security, Vec<PathBuf>) {
        use confine::Files;
        let m = self.idmap;
        let mut notes = Vec::new();
        let mut chown_tops = Vec::new();
        match files {
            Files::Privileged => notes.push(format!("privileged ({why}): no user namespace, root inside is root on the host")),
            Files::Idmapped | Files::Shifted => {
                let last = u64::from(m.range) - 1;
                notes.push(format!(
                    "unprivileged: container ids 0-{last} are host uids {}-{} and gids {}-{}",
                    m.uid,
                    u64::from(m.uid) + last,
                    m.gid,
                    u64::from(m.gid) + last
                ));
            }
        }
        match files {
            Files::Privileged => {}
            Files::Idmapped => notes.push(format!("files: idmapped mounts, owned by host root on disk ({why})")),
            Files::Shifted => {
                notes.push(format!("files: template unpacked with owners shifted into the id map ({why})"));
                chown_tops.push(rootfs.to_path_buf());
            }
        }
        let mut idmapped_volumes = vec![files == Files::Idmapped];
        for v in volumes.iter().skip(1) {
            let Some(dir) = v.directory() else {
                idmapped_volumes.push(false);
                continue;
            };
            let ok = match files {
                Files::Privileged => false,
                Files::Shifted => {
                    chown_tops.push(dir.to_path_buf());
                    false
                }
                Files::Idmapped => match confine::idmap_support(dir) {
                    Ok(()) if confine::owner(dir) != Some(m.uid) => true,
                    Ok(()) => {
                        notes.push(format!("volume {}: owned by the id map's root, bound without an idmapped mount", v.name));
                        false
                    }
                    Err(e) => {
                        notes.push(format!("volume {}: {e}; its top directory belongs to the container's root instead", v.name));
                        chown_tops.push(dir.to_path_buf());
                        false
                    }
                },
            };
            idmapped_volumes.push(ok);
        }
        let seccomp = confine::seccomp_supported().then(|| self.lxcpath.join(SECCOMP_FILE));
        if seccomp.is_none() {
            notes.push("seccomp: not supported by this kernel, no seccomp policy".into());
        }
        let apparmor = confine::apparmor_enabled();
        if !apparmor {
            notes.push("AppArmor: not enabled on this host, no AppArmor profile".into());
        }
        let idmap = (files != Files::Privileged).then_some(m);
        (config::Security { idmap, rootfs_idmapped: files == Files::Idmapped, idmapped_volumes, seccomp, apparmor, devices: self.devices.clone(), notes }, chown_tops)
    }

    /// Render the config of `vm` (and write its seccomp policy); with
    /// `active`, the volumes are active: the container's directories are
    /// fenced off and the tops of shifted ones given to its root.
    fn write_config(&self, vm: &VmName, def: &Definition, volumes: &[AttachedVolume], rootfs: &Path, owned: bool, active: bool) -> Result<(), VmError> {
        if let Some((cfg, text)) = self.config_to_write(vm, def, volumes, rootfs, owned, active)? {
            write_atomic(&cfg, text.as_bytes(), 0o644).map_err(Self::io("write", &cfg))?;
        }
        Ok(())
    }

    /// What [`Lxc::write_config`] checks and prepares; the config file and
    /// its new text, unless it holds that text already.
    fn config_to_write(&self, vm: &VmName, def: &Definition, volumes: &[AttachedVolume], rootfs: &Path, owned: bool, active: bool) -> Result<Option<(PathBuf, String)>, VmError> {
        let (files, why) = self.files_for_config(vm, def, rootfs)?;
        let (security, tops) = self.security(rootfs, volumes, files, &why);
        let mapped = (files != confine::Files::Privileged).then_some((self.idmap.uid, self.idmap.gid));
        if active {
            let mut dirs: Vec<&Path> = vec![rootfs];
            dirs.extend(volumes.iter().skip(1).filter_map(AttachedVolume::directory));
            for (i, dir) in dirs.iter().enumerate() {
                // The prefix of geats' own rootfs is shared (mode 0700 root):
                // LXC's parent process idmaps a rootfs, its child (as the
                // mapped root) the volumes, so only those need the map's owner.
                if !(i == 0 && owned) {
                    confine::guard_parent(dir, mapped).map_err(Self::io("fence off the parent of", dir))?;
                }
                if let (Some((u, g)), true) = (mapped, i > 0) {
                    if let Some(block) = confine::blocked_for(dir, u, g) {
                        return Err(VmError::Hypervisor {
                            hypervisor: "lxc",
                            step: "start",
                            vm: vm.clone(),
                            detail: format!("the container's root (host uid {u}) cannot reach the volume {}: {} is not traversable; make it so (chmod o+x)", dir.display(), block.display()),
                        });
                    }
                }
            }
            for top in &tops {
                if confine::owner(top) == Some(0) {
                    std::os::unix::fs::lchown(top, Some(self.idmap.uid), Some(self.idmap.gid)).map_err(Self::io("chown", top))?;
                }
            }
        }
        if let Some(p) = &security.seccomp {
            // Written once per host (and again when geats' policy
            // changes): every define and start renders the config again.
            if std::fs::read(p).ok().as_deref() != Some(confine::SECCOMP_POLICY.as_bytes()) {
                write_atomic(p, confine::SECCOMP_POLICY.as_bytes(), 0o644).map_err(Self::io("write", p))?;
            }
        }
        let text = config::render(vm, def, &config::Inputs { rootfs: rootfs.to_path_buf(), volumes, extra: &self.extra, security })?;
        let cfg = self.file(vm, "config");
        Ok((std::fs::read_to_string(&cfg).ok().as_deref() != Some(text.as_str())).then_some((cfg, text)))
    }
}

/// Empty (or create) a log file, mode 0640.
fn truncate_log(p: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o640).open(p).map(drop)
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
        let inputs = config::Inputs { rootfs: self.rootfs_prefix.join(vm.as_str()), volumes: &[], extra: &self.extra, security: config::Security::default() };
        config::render(vm, def, &inputs).map(|_| ())
    }

    fn template_for(&self, vm: &VmName, def: &Definition, root: &RootDirs, mut t: crate::template::Template) -> Result<crate::template::Template, VmError> {
        let (files, _) = self.files_in(vm, def, root)?;
        t.shift = (files == confine::Files::Shifted).then_some(self.idmap);
        Ok(t)
    }

    fn write_guest_files(&self, vm: &VmName, def: &Definition, root: &RootDirs, durable: bool) -> Result<(), VmError> {
        let (files, why) = self.files_in(vm, def, root)?;
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some((vm.clone(), files, why));
        }
        let owner = self.shifted_owner(files);
        if let Some((u, g)) = owner {
            // A root with no template (or an overlay's upper layer, whose
            // top directory is the root's): record the decision on the disk.
            let top = &root.write;
            if confine::owner(top) == Some(0) {
                std::os::unix::fs::lchown(top, Some(u), Some(g)).map_err(Self::io("chown", top))?;
            }
        }
        guest::write(vm, def, root, owner, durable)
    }

    /// The cgroup warm-up of [`state::MigrationWarmup`], begun only when
    /// the action will run `lxc-start` or stop a monitor: a start of a
    /// defined container that is not running, a stop of a running one.
    /// A no-op (stop of a stopped container) must not wait a grace
    /// period at its end for nothing.
    fn begin_power(&self, vm: &VmName, action: PowerAction) -> Option<Box<dyn std::any::Any>> {
        let useful = match action {
            PowerAction::Start => !self.is_running(vm) && self.exists(vm),
            PowerAction::Stop => self.is_running(vm),
            PowerAction::Shutdown | PowerAction::Reboot => false,
        };
        useful.then(|| Box::new(state::MigrationWarmup::begin()) as Box<dyn std::any::Any>)
    }

    fn define(&self, vm: &VmName, def: &Definition, volumes: &[AttachedVolume]) -> Result<(), VmError> {
        let (rootfs, owned) = self.rootfs_of(vm, volumes);
        // Every value is checked before anything is written.
        config::render(vm, def, &config::Inputs { rootfs: rootfs.clone(), volumes, extra: &self.extra, security: config::Security::default() })?;
        let dir = self.dir(vm);
        std::fs::create_dir_all(&dir).map_err(Self::io("create", &dir))?;
        if owned {
            self.fence_own_roots(&rootfs)?;
        }
        let meta = Meta {
            rootfs: rootfs.clone(),
            owned,
            definition: Some(def.clone()),
            volumes: volumes
                .iter()
                .map(|v| MetaVolume { name: v.name.clone(), directory: v.directory().map(Path::to_path_buf), mountpoint: v.mountpoint.clone() })
                .collect(),
        };
        let meta_path = self.file(vm, "geats.json");
        let meta_text = serde_json::to_vec_pretty(&meta).unwrap_or_default();
        // The volumes may be inactive now: start renders it again.
        let config = self.config_to_write(vm, def, volumes, &rootfs, owned, owned)?;
        // 0600: the definition may carry secrets in its metadata. Both
        // files synced together (`write_atomic_all`), the config last.
        let mut files: Vec<(&Path, &[u8], u32)> = vec![(&meta_path, &meta_text, 0o600)];
        if let Some((cfg, text)) = &config {
            files.push((cfg, text.as_bytes(), 0o644));
        }
        crate::sys::fsutil::write_atomic_all(&files).map_err(|(path, source)| VmError::Io { step: "write", path: path.to_path_buf(), source })
    }

    fn undefine(&self, vm: &VmName) -> Result<(), VmError> {
        let dir = self.dir(vm);
        const OWN: [&str; 7] = ["config", "lxc.log", "geats.pid", "geats.json", "geats.running.json", "seccomp", RECORD];
        for f in OWN {
            remove_if_exists(&dir.join(f))?;
        }
        // A process killed while writing one left its temp file (issue 11).
        crate::sys::fsutil::remove_stale_temps(&dir, &OWN).map_err(Self::io("remove temp files in", &dir))?;
        if let Err(e) = crate::sys::fsutil::ignore_missing(std::fs::remove_dir(&dir)) {
            tracing::warn!(vm = %vm, dir = %dir.display(), error = %e, "left the container directory (it holds files geats did not write)");
        }
        Ok(())
    }

    fn exists(&self, vm: &VmName) -> bool {
        self.file(vm, "config").is_file()
    }

    fn check_live(&self, vm: &VmName, def: &Definition) -> Result<(), VmError> {
        let Some(mb) = def.ram else { return Ok(()) };
        if self.read_running(vm).is_some_and(|r| r.ram == def.ram) {
            return Ok(());
        }
        let used = self.live_cgroups(vm)?.memory().unwrap_or(0);
        if mb.saturating_mul(1 << 20) < used {
            return Err(VmError::Refused {
                vm: vm.clone(),
                problem: format!("it uses {} MB now, more than the new ram of {mb} MB; free memory inside it, or stop it and define it then", used.div_ceil(1 << 20)),
            });
        }
        Ok(())
    }

    fn apply_live(&self, vm: &VmName, def: &Definition) -> Result<Vec<&'static str>, VmError> {
        if !self.is_running(vm) {
            return Ok(Vec::new());
        }
        let Some(mut running) = self.read_running(vm) else {
            // Started by an older geats: what it runs with is unknown.
            return Ok(Vec::new());
        };
        let cg = self.live_cgroups(vm)?;
        let mut applied = Vec::new();
        let fail = |what: &'static str| {
            move |e: std::io::Error| VmError::Refused { vm: vm.clone(), problem: format!("the kernel refused the new {what} limit: {e}") }
        };
        if running.ram != def.ram {
            cg.set_memory_limit(def.ram.map(|mb| mb << 20)).map_err(fail("memory"))?;
            running.ram = def.ram;
            applied.push("ram");
        }
        if running.cpus != def.cpus {
            cg.set_cpu_quota(def.cpus.map(|c| u64::from(c) * config::CPU_PERIOD_US), config::CPU_PERIOD_US).map_err(fail("CPU"))?;
            running.cpus = def.cpus;
            applied.push("cpus");
        }
        if !applied.is_empty() {
            self.write_running(vm, &running)?;
        }
        Ok(applied)
    }

    fn pending(&self, vm: &VmName, def: &Definition) -> Vec<String> {
        if !self.is_running(vm) {
            return Vec::new();
        }
        self.pending_now(vm, def)
    }

    /// Waits while an `lxc-*` tool runs on this container (`-P LXCPATH
    /// -n NAME` in its command line, as geats runs them), up to the
    /// shutdown timeout plus 10 s.
    fn settle(&self, vm: &VmName) {
        let limit = self.shutdown_timeout + Duration::from_secs(10);
        let t = std::time::Instant::now();
        while t.elapsed() < limit && state::tools_running(&self.lxcpath, vm.as_str()) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A hard link to the records directory's copy (the same inode, its
    /// data already fsynced), which a lost records directory leaves in
    /// place; a copy of its own where the two are on different file systems.
    fn keep_record(&self, vm: &VmName, record: &[u8], written: &Path) -> Result<(), VmError> {
        let path = self.file(vm, RECORD);
        if crate::sys::fsutil::link_atomic(written, &path).is_ok() {
            return Ok(());
        }
        write_atomic(&path, record, 0o600).map_err(Self::io("write", &path))
    }

    fn kept_records(&self) -> Vec<Vec<u8>> {
        self.list().iter().filter_map(|vm| std::fs::read(self.file(vm, RECORD)).ok()).collect()
    }

    /// The containers of the lxcpath: its directories holding a `config`.
    fn list(&self) -> Vec<VmName> {
        let Ok(rd) = std::fs::read_dir(&self.lxcpath) else { return Vec::new() };
        let mut out: Vec<VmName> = rd
            .flatten()
            .filter(|e| e.path().join("config").is_file())
            .filter_map(|e| VmName::new(e.file_name().to_string_lossy().as_ref()).ok())
            .collect();
        out.sort();
        out
    }

    fn start(&self, vm: &VmName) -> Result<(), VmError> {
        if self.is_running(vm) {
            return Ok(());
        }
        if !self.exists(vm) {
            return Err(VmError::Hypervisor { hypervisor: "lxc", step: "start", vm: vm.clone(), detail: format!("no LXC config at {}", self.file(vm, "config").display()) });
        }
        let meta = self.read_meta(vm);
        if let Some(Meta { definition: Some(def), .. }) = &meta {
            if let Some(problem) = (!def.privileged).then(|| self.refuses_unprivileged(vm)).flatten() {
                return Err(VmError::HostSetup { vm: vm.clone(), problem });
            }
        }
        // The monitor's migration into its cgroup waits a grace period
        // unless one began recently: begin it now, beside the work below.
        let _warm = state::MigrationWarmup::begin();
        // A monitor of this container still running while it is not
        // running is a stop in progress (e.g. an `lxc-stop` left by a
        // killed geats, issue 11): starting now fails to enter the
        // cgroup it is removing, so let it finish first.
        // A monitor lives in its `lxc.monitor.NAME` cgroup: without one
        // (the usual case) there is none to wait for, and no stale cgroup
        // to remove, so /proc is not scanned.
        let traces = state::has_cgroups(vm.as_str());
        let t = std::time::Instant::now();
        while traces && t.elapsed() < Duration::from_secs(10) && state::scan_monitors(&self.lxcpath).contains_key(vm.as_str()) && !self.is_running(vm) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(Meta { rootfs, owned, definition: Some(def), volumes, .. }) = meta {
            let att: Vec<AttachedVolume> = volumes
                .into_iter()
                .map(|v| AttachedVolume { name: v.name, mountpoint: v.mountpoint, provides: Provides { kind: Kind::Directory, path: v.directory } })
                .collect();
            self.write_config(vm, &def, &att, &rootfs, owned, true)?;
        }
        if traces {
            state::remove_stale_cgroups(vm.as_str());
        }
        let log = self.file(vm, "lxc.log");
        let pidfile = self.file(vm, "geats.pid");
        // LXC appends to its log: start each attempt with an empty one (a
        // log needs no fsync).
        truncate_log(&log).map_err(Self::io("truncate", &log))?;
        remove_if_exists(&pidfile)?;
        let (log_s, pid_s) = (log.to_string_lossy().into_owned(), pidfile.to_string_lossy().into_owned());
        let res = self.tool("lxc-start", vm, &["-d", "-p", &pid_s, "-l", &self.log_level, "-o", &log_s]).timeout(Duration::from_secs(120)).run();
        match res {
            Ok(_) if self.is_running(vm) => self.record_running(vm),
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

    /// Power off: LXC's stop command spoken on the monitor's command
    /// socket, exactly as `lxc-stop -k` sends it ([`command`]), which
    /// saves starting `lxc-stop` (about half of what a stop cost). When
    /// the protocol fails otherwise than "not running" or "timed out"
    /// (an answer, a socket error), `lxc-stop -k` runs instead.
    fn stop(&self, vm: &VmName) -> Result<(), VmError> {
        let socket = state::command_socket(&self.lxcpath, vm.as_str());
        let deadline = std::time::Instant::now() + STOP_TIMEOUT;
        // The monitor migrates out of its cgroup before it closes the
        // socket: begin the grace period that waits for.
        let _warm = state::listening(&socket).then(state::MigrationWarmup::begin);
        match command::stop(&socket, STOP_TIMEOUT) {
            Ok(command::Stopped::NotRunning) => {
                tracing::debug!(vm = %vm, "not running: nothing listens on LXC's command socket");
                Ok(())
            }
            Ok(command::Stopped::Closed) => {
                tracing::debug!(vm = %vm, "stopped through LXC's command socket");
                self.wait_gone(vm, &socket, deadline)
            }
            // A monitor that does not finish would hang `lxc-stop` as well.
            Err(e @ command::CommandError::Timeout(_)) => Err(VmError::Hypervisor { hypervisor: "lxc", step: "stop", vm: vm.clone(), detail: e.to_string() }),
            Err(e) => {
                tracing::warn!(vm = %vm, error = %e, "LXC's stop command failed; running lxc-stop -k");
                self.stop_with_tool(vm)
            }
        }
    }
    /// `lxc-freeze -P LXCPATH -n NAME` (the cgroup freezer: every task
    /// of the container stops until `lxc-unfreeze`).
    fn freeze(&self, vm: &VmName) -> Result<(), VmError> {
        self.tool("lxc-freeze", vm, &[]).run().map(|_| ()).map_err(|e| self.failed("freeze", vm, e))
    }

    /// `lxc-unfreeze -P LXCPATH -n NAME`; a container that is not frozen
    /// (or not running) is left alone.
    fn unfreeze(&self, vm: &VmName) -> Result<(), VmError> {
        if !self.is_running(vm) {
            return Ok(());
        }
        self.tool("lxc-unfreeze", vm, &[]).run().map(|_| ()).map_err(|e| self.failed("unfreeze", vm, e))
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
        Err(VmError::Hypervisor {
            hypervisor: "lxc",
            step: "shut down",
            vm: vm.clone(),
            detail: format!("its init did not halt within {secs} s (shutdown_timeout); it is still running, use stop to power it off{why}"),
        })
    }

    fn reboot(&self, vm: &VmName) -> Result<(), VmError> {
        let secs = self.shutdown_timeout.as_secs().to_string();
        let pending = self.read_meta(vm).and_then(|m| m.definition).is_some_and(|d| !self.pending(vm, &d).is_empty());
        if pending || self.config_text(vm).is_some_and(|c| c.contains("\nlxc.rootfs.options = idmap=container\n")) {
            // Changes wait for the next start (a NIC, a volume): LXC reboots
            // in place with the config it started with, so halt and start.
            // LXC 5.0 forgets lxc.rootfs.options when it reboots a
            // container in place ("Mounted rootfs ... with options (null)"):
            // the new init would see every file as nobody's. So halt it
            // (killed after shutdown_timeout, as `lxc-stop -r` does) and
            // start it again, which reads the config afresh.
            if let Err(e) = self.tool("lxc-stop", vm, &["-t", &secs]).timeout(self.shutdown_timeout + Duration::from_secs(30)).run() {
                if self.is_running(vm) {
                    return Err(self.failed("reboot", vm, e));
                }
            }
            return self.start(vm);
        }
        self.tool("lxc-stop", vm, &["-r", "-t", &secs]).timeout(self.shutdown_timeout + Duration::from_secs(30)).run().map_err(|e| self.failed("reboot", vm, e))?;
        Ok(())
    }

    fn state(&self, vm: &VmName) -> VmState {
        self.probe_one(vm).state
    }

    fn states(&self, vms: &[VmName]) -> BTreeMap<VmName, VmState> {
        // The monitors' sockets asked for at once (or, for a few, one
        // `connect` each); per running container a few /proc and cgroup
        // files. No process is spawned.
        let sockets = state::Listeners::for_count(vms.len());
        let scan = std::cell::OnceCell::new();
        vms.iter().map(|v| (v.clone(), self.probe(v, |s| sockets.contains(s), &scan).state)).collect()
    }

    fn looks(&self, vms: &[(&VmName, &[Nic])]) -> Vec<Look> {
        // State and IP both come from the init process: find it once per
        // VM; the monitors' sockets asked for the way that costs less for
        // this many.
        let sockets = state::Listeners::for_count(vms.len());
        let scan = std::cell::OnceCell::new();
        let probes: Vec<Probe> = vms.iter().map(|(vm, _)| self.probe(vm, |s| sockets.contains(s), &scan)).collect();
        // Then the addresses of all running ones, through one socket.
        let inits: Vec<i32> = probes.iter().filter_map(|p| p.live.as_ref().map(|(init, _)| *init)).collect();
        let mut ips = state::ipv4s_of(&inits).into_iter();
        probes
            .into_iter()
            .zip(vms)
            .map(|(p, (_, nics))| {
                let ip = p.live.as_ref().and_then(|_| primary_of(&ips.next().unwrap_or_default(), nics));
                Look { ip, ..Look::of(p.state) }
            })
            .collect()
    }

    fn look_full(&self, vm: &VmName, def: &Definition) -> Look {
        // State, usage and IP from one look at the init process.
        let p = self.probe_one(vm);
        let Some((init, cg)) = &p.live else { return Look::of(p.state) };
        Look { usage: usage_of(*init, cg), ip: ip_of(*init, &def.network), pending: self.pending_now(vm, def), state: p.state }
    }

    fn exit_reason(&self, vm: &VmName) -> Option<String> {
        // One read of the log for both.
        let text = self.read_log(vm)?;
        log_exit_in(&text).or_else(|| log_error_in(&text))
    }

    /// The running container's cgroups, through its init.
    fn usage(&self, vm: &VmName) -> Usage {
        match self.probe_one(vm).live {
            Some((init, cg)) => usage_of(init, &cg),
            None => Usage::default(),
        }
    }

    fn primary_ip(&self, vm: &VmName, nics: &[Nic]) -> Option<String> {
        let (init, _) = self.probe_one(vm).live?;
        ip_of(init, nics)
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

/// What one look at a container's runtime traces found: its state and,
/// while it has an init, that init and its cgroups.
struct Probe {
    state: VmState,
    live: Option<(i32, state::Cgroups)>,
}

fn usage_of(init: i32, cg: &state::Cgroups) -> Usage {
    Usage { memory_bytes: cg.memory(), memory_limit_bytes: cg.memory_limit(), cpu_seconds: cg.cpu_seconds(), pid: Some(i64::from(init)) }
}

/// The first ERROR line of LXC's log `text`, without its timestamp and
/// source position ([`Lxc::log_error`]).
fn log_error_in(text: &str) -> Option<String> {
    let line = text.lines().find(|l| l.contains(" ERROR "))?;
    let re = regex_lite::Regex::new(r":\d+ - ").ok()?;
    Some(match re.find(line) {
        Some(m) => line[m.end()..].trim().to_string(),
        None => line.trim().to_string(),
    })
}

/// How the container's init ended, as the monitor logs it at level INFO
/// or finer when init exits (so only with `log_level = "INFO"`):
/// ```text
/// lxc-start c1 20261201120102.481 INFO     error - ../src/lxc/error.c:lxc_error_set_and_log:34 - Child <4242> ended on signal Killed(9)
/// ```
/// gives `init ended on signal Killed(9)`.
fn log_exit_in(text: &str) -> Option<String> {
    let line = text.lines().rev().find(|l| l.contains("lxc_error_set_and_log"))?;
    let at = line.find("ended on ")?;
    Some(format!("init {}", line[at..].trim()))
}

/// The configured address if the container has it, else its first one.
fn ip_of(init: i32, nics: &[Nic]) -> Option<String> {
    primary_of(&state::ipv4s_of(&[init]).concat(), nics)
}

/// Of the addresses `ips` a container has, the first configured in `nics`,
/// else the first; the definition is not looked at for one address.
fn primary_of(ips: &[std::net::Ipv4Addr], nics: &[Nic]) -> Option<String> {
    let configured = || nics.iter().find_map(|n| n.cidr().ok().flatten()).map(|c| c.addr);
    match ips {
        [] => None,
        [one] => Some(one.to_string()),
        _ => Some(configured().filter(|c| ips.contains(c)).unwrap_or(ips[0]).to_string()),
    }
}

impl Lxc {
    /// What on this host keeps LXC from starting an unprivileged
    /// container of this type, asked before `lxc-start` so that the
    /// operator reads the fix instead of LXC's log line: the id map not
    /// delegated to root where `newuidmap` is installed ([`subid`]), or a
    /// directory on the way to the lxcpath that the container's root
    /// cannot traverse (LXC's child checks `access(lxcpath, X_OK)` as that
    /// user).
    fn refuses_unprivileged(&self, vm: &VmName) -> Option<String> {
        if let Some((_, why)) = subid::undelegated(&self.idmap, exec::CHILD_PATH, Path::new(subid::SUBUID), Path::new(subid::SUBGID)) {
            return Some(why);
        }
        let (u, g) = (self.idmap.uid, self.idmap.gid);
        confine::blocked_for(&self.lxcpath.join(vm.as_str()), u, g).map(|dir| {
            format!(
                "the container's root (host uid {u}, gid {g}) cannot traverse {} on the way to the lxcpath {}, and LXC needs it to; make it traversable (chmod o+x {})",
                dir.display(),
                self.lxcpath.display(),
                dir.display()
            )
        })
    }

    /// The state mapping. LXC's own states (`lxc-info -s`: STOPPED,
    /// STARTING, RUNNING, STOPPING, ABORTING, FREEZING, FROZEN, THAWED) are
    /// derived from the runtime traces instead of asked for, to spawn no
    /// process:
    /// One VM alone: its socket searched for by itself, /proc scanned only
    /// if its pid file is gone.
    fn probe_one(&self, vm: &VmName) -> Probe {
        self.probe(vm, state::listening, &std::cell::OnceCell::new())
    }

    fn probe(&self, vm: &VmName, listening: impl Fn(&str) -> bool, scan: &std::cell::OnceCell<BTreeMap<String, i32>>) -> Probe {
        let plain = |state| Probe { state, live: None };
        if !self.exists(vm) {
            // Not defined in LXC (an interrupted define, or removed by hand).
            return plain(VmState::with(Power::Unknown, "undefined"));
        }
        if !listening(&state::command_socket(&self.lxcpath, vm.as_str())) {
            // No monitor: STOPPED (LXC's ABORTING ends here too).
            return plain(VmState::plain(Power::Stopped));
        }
        let Some(pid) = self.monitor_with(vm, scan).and_then(state::init_pid) else {
            // A monitor without an init yet: STARTING (or STOPPING).
            return plain(VmState::with(Power::Running, "starting"));
        };
        let cg = state::cgroups(pid);
        let state = if cg.frozen() {
            // FROZEN and FREEZING: init cannot run; the contract's paused.
            VmState::with(Power::Paused, "frozen")
        } else {
            // RUNNING (and THAWED, which is running again).
            VmState::plain(Power::Running)
        };
        Probe { state, live: Some((pid, cg)) }
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
    fn power_warms_up_only_when_lxc_will_run() {
        let d = tempfile::tempdir().unwrap();
        let l = lxc(d.path(), "");
        let vm = VmName::new("w1").unwrap();
        // Nothing to start without a config, nothing to stop without a
        // monitor: no thread, so the no-op ends without a grace period.
        assert!(l.begin_power(&vm, PowerAction::Start).is_none());
        assert!(l.begin_power(&vm, PowerAction::Stop).is_none());
        std::fs::create_dir_all(l.dir(&vm)).unwrap();
        std::fs::write(l.file(&vm, "config"), "lxc.uts.name = w1\n").unwrap();
        assert!(l.begin_power(&vm, PowerAction::Start).is_some(), "a defined, stopped container is about to run lxc-start");
        assert!(l.begin_power(&vm, PowerAction::Stop).is_none());
        assert!(l.begin_power(&vm, PowerAction::Shutdown).is_none(), "the monitor migrates only when the guest has halted, seconds later");
    }

    #[test]
    fn the_configured_address_is_primary() {
        let ips: Vec<std::net::Ipv4Addr> = ["10.0.3.7", "192.168.1.5"].iter().map(|a| a.parse().unwrap()).collect();
        let nics = def(serde_json::json!({"network": [{"name": "eth0", "type": "veth", "ipaddr": "192.168.1.5/24"}]})).network;
        assert_eq!(primary_of(&ips, &nics).as_deref(), Some("192.168.1.5"));
        assert_eq!(primary_of(&ips, &[]).as_deref(), Some("10.0.3.7"), "none configured: the first");
        let other = def(serde_json::json!({"network": [{"name": "eth0", "type": "veth", "ipaddr": "172.16.0.2/16"}]})).network;
        assert_eq!(primary_of(&ips, &other).as_deref(), Some("10.0.3.7"), "configured but absent: the first");
        assert_eq!(primary_of(&ips[..1], &nics).as_deref(), Some("10.0.3.7"));
        assert_eq!(primary_of(&[], &nics), None);
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
        assert!(bad("idmap = { uid = 0 }").contains("idmap"));
        assert!(bad("idmap = { uid = 4294967000 }").contains("idmap"));
        assert!(bad("idmap = { range = 0 }").contains("idmap"));
        assert!(bad("idmap = { base = 1 }").contains("base"));
        assert!(bad("idmapped_mounts = \"sometimes\"").contains("sometimes"));
        assert!(bad("allow_devices = [\"sda\"]").contains("allow_devices"));
        let l = lxc(d.path(), "");
        assert_eq!(l.lxcpath, d.path().join("var/lib/lxc"));
        assert_eq!(l.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(l.idmap, confine::DEFAULT_MAP);
        let l = lxc(d.path(), "idmap = { uid = 1000000, gid = 2000000 }\nallow_devices = [\"tun\", \"fuse\"]\nidmapped_mounts = \"never\"");
        assert_eq!(l.idmap, confine::IdShift { uid: 1_000_000, gid: 2_000_000, range: 65_536 });
        assert_eq!(l.devices, ["c 10:200 rwm", "c 10:229 rwm"]);
        assert_eq!(l.idmapped_mounts, confine::IdmappedMounts::Never);
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
        // The manager creates the implicit root before define.
        std::fs::create_dir_all(&rootfs).unwrap();
        l.define(&vm, &def(serde_json::json!({})), &[]).unwrap();
        let text = std::fs::read_to_string(d.path().join("var/lib/lxc/c1/config")).unwrap();
        assert!(text.contains(&format!("lxc.rootfs.path = dir:{}", rootfs.display())), "{text}");
        use std::os::unix::fs::PermissionsExt;
        let prefix_mode = std::fs::metadata(rootfs.parent().unwrap()).unwrap().permissions().mode() & 0o777;
        assert_eq!(prefix_mode, 0o700, "the prefix of own roots is fenced off");
        assert!(l.exists(&vm));
        assert_eq!(l.state(&vm), VmState::plain(Power::Stopped));
        l.undefine(&vm).unwrap();
        assert!(!l.exists(&vm) && !d.path().join("var/lib/lxc/c1").exists());
        assert_eq!(l.state(&vm), VmState::with(Power::Unknown, "undefined"));
    }
}
