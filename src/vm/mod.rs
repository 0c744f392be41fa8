//! VM types: the [`VmType`] trait and the factory that builds the
//! configured ones.
//!
//! A new VM type is one file implementing [`VmType`] plus one arm in
//! [`build`]. The manager calls a VM type only while it holds the VM's
//! operation lock, and only with a name and definition that passed
//! validation.

pub mod dummy;
pub mod lxc;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::config::{Config, ConfigError};
use crate::definition::Definition;
use crate::error::ErrorCode;
use crate::names::{TypeName, VmName, VolumeName};
use crate::state::VmState;
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
    /// An LXC tool failed.
    #[error("lxc: cannot {step} {vm}: {detail}")]
    Lxc {
        /// What was being done.
        step: &'static str,
        /// The VM.
        vm: VmName,
        /// LXC's own error line(s).
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
    /// Injected by the dummy VM type's fault file.
    #[error("dummy: injected failure of {step} for {vm}")]
    Injected {
        /// The action.
        step: String,
        /// The VM.
        vm: VmName,
    },
    /// The operation is not available for this VM type.
    #[error("{0}")]
    NotSupported(String),
    /// Installing the OS template (by a VM type that keeps its own root
    /// directory) failed.
    #[error(transparent)]
    Template(#[from] crate::template::TemplateError),
}

impl VmError {
    /// The error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            VmError::Invalid { .. } => ErrorCode::InvalidData,
            VmError::Io { .. } => ErrorCode::Internal,
            VmError::Lxc { .. } => ErrorCode::LxcError,
            VmError::Tool { .. } | VmError::Injected { .. } => ErrorCode::ToolFailed,
            VmError::NotSupported(_) => ErrorCode::NotSupported,
            VmError::Template(e) => e.code(),
        }
    }
}

/// What a storage volume looks like to the VM type.
#[derive(Debug, Clone, Serialize)]
pub struct AttachedVolume {
    /// The volume's name.
    pub name: VolumeName,
    /// Its directory when active, if it provides one.
    pub directory: Option<PathBuf>,
    /// Its block device when active, if it provides one.
    pub block_device: Option<PathBuf>,
    /// Its image file, if it provides one.
    pub file: Option<PathBuf>,
    /// Where it is mounted in the VM (not for the root volume).
    pub mountpoint: Option<String>,
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

/// What a storage volume a VM type accepts must provide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepts {
    /// A directory (LXC).
    Directory,
    /// A block device or an image file (a future KVM type).
    BlockOrFile,
    /// Anything (dummy).
    Anything,
}

/// One VM type. Every method may assume the VM's operation lock is held
/// (except the read-only ones: `state`, `states`, `usage`, `primary_ip`,
/// `config_text`) and must be idempotent: doing it twice is doing it once.
pub trait VmType: std::fmt::Debug {
    /// What storage this VM type can use.
    fn accepts(&self) -> Accepts;

    /// Whether the manager installs `template` onto the root volume.
    fn installs_templates(&self) -> bool;

    /// Check a definition against what this type can run (NIC types,
    /// limits); no disk access.
    fn check(&self, vm: &VmName, def: &Definition) -> Result<(), VmError>;

    /// Write the guest's own configuration (hostname, firstboot config)
    /// into its root directory, which is active. Only called when
    /// [`VmType::installs_templates`] is true.
    fn write_guest_files(&self, _vm: &VmName, _def: &Definition, _root: &std::path::Path) -> Result<(), VmError> {
        Ok(())
    }

    /// The template as it must be unpacked onto `root` (active, empty) for
    /// this VM, e.g. with owners shifted into its id map. Only called when
    /// [`VmType::installs_templates`] is true.
    fn template_for(&self, _vm: &VmName, _def: &Definition, _root: &std::path::Path, t: crate::template::Template) -> Result<crate::template::Template, VmError> {
        Ok(t)
    }

    /// Create or update the VM in the hypervisor. Volumes are defined (but
    /// maybe not active). Must not leave a half-written config.
    fn define(&self, vm: &VmName, def: &Definition, volumes: &[AttachedVolume]) -> Result<(), VmError>;

    /// Remove the VM from the hypervisor (it is stopped). Its volumes are
    /// the storage layer's business.
    fn undefine(&self, vm: &VmName) -> Result<(), VmError>;

    /// Destroy data the VM type keeps itself, outside any storage volume
    /// (LXC's rootfs under `default_rootfs_prefix` for a VM without a
    /// volume). For deprovision, after undefine, also of a VM an earlier
    /// undefine kept; idempotent.
    fn destroy_data(&self, _vm: &VmName) -> Result<(), VmError> {
        Ok(())
    }

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

    /// Its state, read from the hypervisor.
    fn state(&self, vm: &VmName) -> VmState;

    /// The states of many VMs in one pass (no process per VM).
    fn states(&self, vms: &[VmName]) -> BTreeMap<VmName, VmState> {
        vms.iter().map(|v| (v.clone(), self.state(v))).collect()
    }

    /// Memory and CPU usage.
    fn usage(&self, _vm: &VmName) -> Usage {
        Usage::default()
    }

    /// The primary IPv4 address, if running and known.
    fn primary_ip(&self, _vm: &VmName, _def: &Definition) -> Option<String> {
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

    /// The generated hypervisor config, for `geats info --config`.
    fn config_text(&self, _vm: &VmName) -> Option<String> {
        None
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
    match t.driver.as_str() {
        "dummy" => Ok(Box::new(dummy::Dummy::new(config, &prefix, &t.settings)?)),
        "lxc" => Ok(Box::new(lxc::Lxc::new(config, &prefix, &t.settings)?)),
        other => Err(config.invalid(format!("{prefix}.driver"), format!("unknown VM driver {other:?} (known: lxc, dummy)"))),
    }
}
