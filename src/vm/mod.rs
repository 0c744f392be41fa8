//! VM types: the [`VmType`] trait and the factory that builds the
//! configured ones.
//!
//! A new VM type is one file (or directory) implementing [`VmType`] and
//! [`VmDriver`] plus its line in the [`vm_types!`] registry below. The
//! manager calls a VM type only while it holds the VM's operation lease,
//! and only with a name and definition that passed validation.

/// Declares the VM type modules and the table [`build`] looks names up
/// in: one line per VM type.
macro_rules! vm_types {
    ($($m:ident::$t:ident),* $(,)?) => {
        $(pub mod $m;)*
        /// Every VM type driver, by its config name.
        pub const VM_DRIVERS: &[VmDriverEntry] = &[$(VmDriverEntry::of::<$m::$t>()),*];
    };
}

vm_types!(dummy::Dummy, lxc::Lxc, exec::ExecVm);

/// How the registry builds a VM type from its `[vm_types.NAME]` table.
pub trait VmDriver: VmType + Sized + 'static {
    /// Its name in the config: `driver = "NAME"`.
    const NAME: &'static str;
    /// Build it from its settings (`prefix` is `vm_types.NAME`, for
    /// errors); no disk access.
    fn build(config: &Config, prefix: &str, settings: &toml::Table) -> Result<Self, ConfigError>;
}

/// A row of [`VM_DRIVERS`].
#[derive(Debug, Clone, Copy)]
pub struct VmDriverEntry {
    /// [`VmDriver::NAME`].
    pub name: &'static str,
    build: BuildFn,
}

type BuildFn = fn(&Config, &str, &toml::Table) -> Result<Box<dyn VmType>, ConfigError>;

impl VmDriverEntry {
    const fn of<T: VmDriver>() -> VmDriverEntry {
        VmDriverEntry { name: T::NAME, build: build_boxed::<T> }
    }
}

fn build_boxed<T: VmDriver>(config: &Config, prefix: &str, settings: &toml::Table) -> Result<Box<dyn VmType>, ConfigError> {
    Ok(Box::new(T::build(config, prefix, settings)?))
}

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::{Config, ConfigError};
use crate::definition::{Definition, Nic};
use crate::names::{TypeName, VmName, VolumeName};
use crate::state::{PowerAction, VmState};
use crate::storage::{Kind, Provides, RootDirs};
use crate::sys::exec::ExecError;

/// A VM type's failure.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A definition this VM type cannot run.
    #[error("{pointer}: {problem}")]
    Invalid {
        /// JSON pointer relative to the request data.
        pointer: String,
        /// What is wrong.
        problem: String,
    },
    /// A file of the VM type could not be read or written.
    #[error("cannot {step} {path}")]
    Io {
        /// What was being done.
        step: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The hypervisor refused or failed an operation, and said why.
    #[error("{hypervisor}: cannot {step} {vm}: {detail}")]
    Hypervisor {
        /// The hypervisor, for the message (`lxc`).
        hypervisor: &'static str,
        /// What was being done.
        step: &'static str,
        /// The VM.
        vm: VmName,
        /// The hypervisor's own error line(s).
        detail: String,
    },
    /// Another tool failed.
    #[error("cannot {step} {vm}")]
    Tool {
        /// What was being done.
        step: &'static str,
        /// The VM.
        vm: VmName,
        /// The tool's failure.
        source: ExecError,
    },
    /// The operation failed for a reason the VM type words itself (the
    /// dummy type's injected faults).
    #[error("{detail}")]
    Failed {
        /// The VM.
        vm: VmName,
        /// What happened.
        detail: String,
    },
    /// An exec plugin failed, timed out or replied with garbage.
    #[error("cannot {step} {vm}")]
    Plugin {
        /// What was being done.
        step: &'static str,
        /// The VM.
        vm: VmName,
        /// What the plugin did.
        source: crate::sys::plugin::PluginError,
    },
    /// The operation is not available for this VM type.
    #[error("{0}")]
    NotSupported(String),
    /// The VM's present state refuses the change (a memory limit below
    /// what the running VM uses).
    #[error("VM {vm}: {problem}")]
    Refused {
        /// The VM.
        vm: VmName,
        /// Why, and what to do.
        problem: String,
    },
    /// The host is not set up for what the VM needs (LXC: `/etc/subuid`
    /// grants root no range for the id map while `newuidmap` is
    /// installed); nothing was started.
    #[error("cannot start {vm}: {problem}")]
    HostSetup {
        /// The VM.
        vm: VmName,
        /// What is missing, naming the host's file, and the fix.
        problem: String,
    },
}

/// A volume as the VM type sees it: its name, where the VM mounts it, and
/// what it provides (a directory for LXC), its path valid while active.
#[derive(Debug, Clone, Serialize)]
pub struct AttachedVolume {
    /// The volume's name.
    pub name: VolumeName,
    /// Where it is mounted in the VM (not for the root volume).
    pub mountpoint: Option<String>,
    /// What it provides.
    pub provides: Provides,
}

impl AttachedVolume {
    /// Its directory, if it provides one and the path is known.
    pub fn directory(&self) -> Option<&Path> {
        self.provides.path_of(Kind::Directory)
    }
}

/// Resource usage of a running VM; `None` where unknown.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Usage {
    /// Memory in use, bytes.
    pub memory_bytes: Option<u64>,
    /// Memory limit, bytes.
    pub memory_limit_bytes: Option<u64>,
    /// CPU time used, seconds.
    pub cpu_seconds: Option<f64>,
    /// The init process.
    pub pid: Option<i64>,
}

/// What a reader shows of one VM's runtime, from one look at the
/// hypervisor: [`VmType::looks`] (`geats list`: state and IP) and
/// [`VmType::look_full`] (`info`: everything).
#[derive(Debug, Clone)]
pub struct Look {
    /// Its state.
    pub state: VmState,
    /// Memory and CPU usage ([`VmType::look_full`] only).
    pub usage: Usage,
    /// The primary IPv4 address.
    pub ip: Option<String>,
    /// Definition keys that wait for the next start
    /// ([`VmType::look_full`] only).
    pub pending: Vec<String>,
}

impl Look {
    /// A look that saw the state alone.
    pub fn of(state: VmState) -> Look {
        Look { state, usage: Usage::default(), ip: None, pending: Vec::new() }
    }
}

/// One VM type. Every method may assume the VM's operation lease is held
/// (except the read-only ones: `state`, `states`, `usage`, `primary_ip`,
/// `config_text`) and must be idempotent: doing it twice is doing it once.
pub trait VmType: std::fmt::Debug {
    /// What its volumes must provide: the manager refuses a definition
    /// whose storage gives anything else, naming the volume.
    fn accepts(&self) -> &'static [Kind];

    /// Whether the manager installs `template` onto the root volume (the
    /// first volume, or [`VmType::own_root`]) and calls
    /// [`VmType::write_guest_files`] there.
    fn installs_templates(&self) -> bool;

    /// The directory this type keeps a VM's root in when its definition
    /// names no volume (LXC: `default_rootfs_prefix/NAME`). The manager
    /// treats it as an implicit `dir` volume: created, filled with the
    /// template, emptied by provision and destroyed by deprovision (or by
    /// undefine of a transient VM) like any other volume, so a VM type never
    /// installs templates or destroys data itself. `None`: no implicit root.
    fn own_root(&self, _vm: &VmName) -> Option<PathBuf> {
        None
    }

    /// Check a definition against what this type can run (NIC types,
    /// limits); no disk access.
    fn check(&self, vm: &VmName, def: &Definition) -> Result<(), VmError>;

    /// Write the guest's own configuration (hostname, firstboot config)
    /// into its root directory, after the template: the files the root
    /// holds are read under `root.read`, new ones written under
    /// `root.write` (the same directory when the volume is active; an
    /// overlay's template and upper layer when it is installed unmounted,
    /// `storage::Volume::offline_root`, where a directory written into
    /// must take the owner and mode the template gives it). `durable`:
    /// `fsync` each file before it takes its name; when false, the manager
    /// syncs the root's file system whole afterwards
    /// (`storage::Volume::sync_path`). Only called when
    /// [`VmType::installs_templates`] is true.
    fn write_guest_files(&self, _vm: &VmName, _def: &Definition, _root: &RootDirs, _durable: bool) -> Result<(), VmError> {
        Ok(())
    }

    /// The template as it must be unpacked onto `root` (empty) for this
    /// VM, e.g. with owners shifted into its id map; `root.fs_type` is the
    /// file system the VM will see when `root.read` is not on it. Only
    /// called when [`VmType::installs_templates`] is true.
    fn template_for(&self, _vm: &VmName, _def: &Definition, _root: &RootDirs, t: crate::template::Template) -> Result<crate::template::Template, VmError> {
        Ok(t)
    }

    /// Begin in the background what a start or a stop of `vm` will wait
    /// for, as soon as the manager knows the VM's type: before it takes
    /// the lease and writes the journal, whose `fsync`s the work then
    /// overlaps. The guard waits for that work when dropped, and is kept
    /// until the action ends. LXC: the grace period of the kernel's
    /// cgroup migration lock, which its monitor waits for otherwise
    /// (docs/performance.md). Default: nothing. Read-only otherwise: the
    /// lease is not held yet.
    fn begin_power(&self, _vm: &VmName, _action: PowerAction) -> Option<Box<dyn std::any::Any>> {
        None
    }

    /// Create or update the VM in the hypervisor. Volumes are defined (but
    /// maybe not active). Must not leave a half-written config.
    fn define(&self, vm: &VmName, def: &Definition, volumes: &[AttachedVolume]) -> Result<(), VmError>;

    /// Check, before any step, that [`VmType::apply_live`] of `def` would
    /// succeed on the running VM (`VmError::Refused` otherwise). Called
    /// only while the VM runs.
    fn check_live(&self, _vm: &VmName, _def: &Definition) -> Result<(), VmError> {
        Ok(())
    }

    /// Apply to the running VM, after [`VmType::define`], what of `def`
    /// this type can change without a restart (LXC: `ram` and `cpus`,
    /// through the container's cgroup); return the definition keys it
    /// applied. Everything else waits for the next start
    /// ([`VmType::pending`]). Called only while the VM runs.
    fn apply_live(&self, _vm: &VmName, _def: &Definition) -> Result<Vec<&'static str>, VmError> {
        Ok(Vec::new())
    }

    /// The keys of `def` the running VM does not run with yet: they apply
    /// at its next start. Empty for a stopped VM.
    fn pending(&self, _vm: &VmName, _def: &Definition) -> Vec<String> {
        Vec::new()
    }

    /// Remove the VM from the hypervisor (it is stopped). Its volumes are
    /// the storage layer's business.
    fn undefine(&self, vm: &VmName) -> Result<(), VmError>;

    /// Does the hypervisor know this VM?
    fn exists(&self, vm: &VmName) -> bool;

    /// Start it (volumes are active).
    fn start(&self, vm: &VmName) -> Result<(), VmError>;

    /// Power it off at once.
    fn stop(&self, vm: &VmName) -> Result<(), VmError>;

    /// Ask it to halt; return once it is stopped or the timeout passed.
    fn shutdown(&self, vm: &VmName) -> Result<(), VmError>;

    /// Restart it.
    fn reboot(&self, vm: &VmName) -> Result<(), VmError>;

    /// Pause every process of the running VM, so that its volumes can be
    /// snapshotted consistently with one another; [`VmType::unfreeze`]
    /// resumes it. A type that cannot answers `NotSupported` (the default),
    /// and snapshots of its running VMs are refused.
    fn freeze(&self, vm: &VmName) -> Result<(), VmError> {
        Err(VmError::NotSupported(format!("VM {vm}'s type cannot freeze a running VM; stop it to take a snapshot")))
    }

    /// Resume a VM [`VmType::freeze`] paused; a VM that is not frozen is
    /// left alone.
    fn unfreeze(&self, _vm: &VmName) -> Result<(), VmError> {
        Ok(())
    }

    /// Its state, read from the hypervisor.
    fn state(&self, vm: &VmName) -> VmState;

    /// The states of many VMs in one pass (no process per VM).
    fn states(&self, vms: &[VmName]) -> BTreeMap<VmName, VmState> {
        vms.iter().map(|v| (v.clone(), self.state(v))).collect()
    }

    /// The states of `vms`, in their order: what `status` asks, which
    /// then needs neither a map nor a copy of each name. The default asks
    /// [`VmType::states`] (a VM missing from its answer is `unknown`); a
    /// type that reads every state at once answers it directly.
    fn states_in_order(&self, vms: &[&VmName]) -> Vec<VmState> {
        let owned: Vec<VmName> = vms.iter().map(|v| (*v).clone()).collect();
        let map = self.states(&owned);
        vms.iter().map(|v| map.get(*v).cloned().unwrap_or_else(|| VmState::plain(crate::state::Power::Unknown))).collect()
    }

    /// The state and primary IP of each VM, in order (`geats list`),
    /// given each VM's network interfaces as defined (all that choosing
    /// its primary address needs: a list reads no whole definition). By
    /// default the separate questions; a VM type that learns both from
    /// the same traces (LXC: the init process) answers in one look per VM.
    fn looks(&self, vms: &[(&VmName, &[Nic])]) -> Vec<Look> {
        let names: Vec<VmName> = vms.iter().map(|(n, _)| (*n).clone()).collect();
        let mut states = self.states(&names);
        vms.iter()
            .map(|(vm, nics)| Look {
                ip: self.primary_ip(vm, nics),
                ..Look::of(states.remove(*vm).unwrap_or_else(|| VmState::plain(crate::state::Power::Unknown)))
            })
            .collect()
    }

    /// State, usage, primary IP and pending changes of one VM (`info`).
    fn look_full(&self, vm: &VmName, def: &Definition) -> Look {
        Look { state: self.state(vm), usage: self.usage(vm), ip: self.primary_ip(vm, &def.network), pending: self.pending(vm, def) }
    }

    /// Why a VM that should run has stopped, if the VM type knows (LXC:
    /// from its log of the last start). Only asked for a stopped VM.
    fn exit_reason(&self, _vm: &VmName) -> Option<String> {
        None
    }

    /// Memory and CPU usage.
    fn usage(&self, _vm: &VmName) -> Usage {
        Usage::default()
    }

    /// The primary IPv4 address, if running and known: the first
    /// configured address of `nics` that the VM has, else its first.
    fn primary_ip(&self, _vm: &VmName, _nics: &[Nic]) -> Option<String> {
        None
    }

    /// The argv that attaches to its console.
    fn console_command(&self, _vm: &VmName) -> Option<Vec<String>> {
        None
    }

    /// The argv that runs `cmd` inside it.
    fn exec_command(&self, _vm: &VmName, _cmd: &[String]) -> Option<Vec<String>> {
        None
    }

    /// Extra fields for `info` (an exec plugin's `info` reply), shown
    /// under `plugin`; `None` for types that have none.
    fn info(&self, _vm: &VmName) -> Option<serde_json::Map<String, serde_json::Value>> {
        None
    }

    /// The generated hypervisor config, for `geats info --config`.
    fn config_text(&self, _vm: &VmName) -> Option<String> {
        None
    }

    /// Every VM this type holds on the host, whoever made it (`geats
    /// check` compares them with the database). One directory read, no
    /// process per VM. The default knows none.
    fn list(&self) -> Vec<VmName> {
        Vec::new()
    }

    /// Wait (boundedly) for the tools a killed geats left running on `vm`
    /// (an `lxc-start` or `lxc-stop` goes on after its parent dies) to
    /// finish, so that a repair sees the state they leave. The default
    /// has no tools to wait for.
    fn settle(&self, _vm: &VmName) {}

    /// Keep `record` (what only geats knows of a defined VM: its
    /// definition and volume records, JSON) beside the VM's own files, as
    /// LXD keeps `backup.yaml`, so that `geats recover` finds it even when
    /// the database and its records directory are both lost. Called
    /// after [`VmType::define`]; [`VmType::undefine`] removes it. The
    /// default keeps nothing.
    ///
    /// `written` is the records directory's copy of the same bytes, just
    /// written and fsynced: a type whose files share its file system may
    /// give that file a second name instead of writing and syncing it again.
    fn keep_record(&self, _vm: &VmName, _record: &[u8], _written: &Path) -> Result<(), VmError> {
        Ok(())
    }

    /// Every record kept by [`VmType::keep_record`] on this host, for
    /// `geats recover`.
    fn kept_records(&self) -> Vec<Vec<u8>> {
        Vec::new()
    }

    /// Whether the host can run this type (for Choria's activation check).
    fn available(&self) -> bool {
        true
    }
}

/// Build the configured VM type `name`.
pub fn build(config: &Config, name: &TypeName) -> Result<Box<dyn VmType>, ConfigError> {
    let t = config
        .vm_types
        .get(name)
        .ok_or_else(|| config.invalid(format!("vm_types.{name}"), "no such VM type"))?;
    let prefix = format!("vm_types.{name}");
    match VM_DRIVERS.iter().find(|d| d.name == t.driver) {
        Some(d) => (d.build)(config, &prefix, &t.settings),
        None => {
            let known: Vec<&str> = VM_DRIVERS.iter().map(|d| d.name).collect();
            Err(config.invalid(format!("{prefix}.driver"), format!("unknown VM driver {:?} (known: {})", t.driver, known.join(", "))))
        }
    }
}
