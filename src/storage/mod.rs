//! Storage: the [`Volume`] trait, drivers that provide a directory, block
//! device or file, and adapters that wrap a volume and turn what it
//! provides into what a VM needs (a `loop` adapter makes a file a block
//! device; a `filesystem` adapter formats a block device and mounts it as a
//! directory).
//!
//! A configured storage type names a driver, its settings and an ordered
//! adapter chain; [`open`] builds the chain for one volume of one VM. A new
//! driver is one file plus one arm in [`open`]'s match.

pub mod dir;
pub mod dummy;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::Config;
use crate::definition::VolumeSpec;
use crate::error::ErrorCode;
use crate::names::{TypeName, VmName, VolumeName};
use crate::sys::exec::ExecError;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The definition names a storage type that is not configured or not
    /// allowed for the VM type.
    #[error("{pointer}: storage type {name} is not allowed here (allowed: {allowed})")]
    TypeNotAllowed {
        /// JSON pointer of the volume's `type`.
        pointer: String,
        /// The type asked for.
        name: String,
        /// The allowed types.
        allowed: String,
    },
    /// A volume option is invalid.
    #[error("{pointer}: {problem}")]
    BadOption {
        /// JSON pointer of the option.
        pointer: String,
        /// What is wrong.
        problem: String,
    },
    /// The storage type's configuration is wrong.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A file-system step failed.
    #[error("volume {volume}: cannot {step} {path}")]
    Io {
        /// The volume.
        volume: String,
        /// The step.
        step: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A tool failed.
    #[error("volume {volume}: cannot {step}")]
    Tool {
        /// The volume.
        volume: String,
        /// The step.
        step: &'static str,
        /// The tool's failure (argv, status, stderr).
        source: ExecError,
    },
    /// The volume is in a state that forbids the step.
    #[error("volume {volume}: cannot {step}: {problem}")]
    State {
        /// The volume.
        volume: String,
        /// The step.
        step: &'static str,
        /// Why.
        problem: String,
    },
}

impl StorageError {
    /// The error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            StorageError::TypeNotAllowed { .. } | StorageError::BadOption { .. } => ErrorCode::InvalidData,
            StorageError::Config(_) => ErrorCode::ConfigInvalid,
            StorageError::Io { .. } | StorageError::Tool { .. } | StorageError::State { .. } => ErrorCode::StorageFailed,
        }
    }
}

/// What a volume provides, when active.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Provides {
    /// A directory.
    pub directory: Option<PathBuf>,
    /// A block device.
    pub block_device: Option<PathBuf>,
    /// An image file.
    pub file: Option<PathBuf>,
}

/// Size and use of a volume, bytes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VolumeUsage {
    /// Capacity, if the volume has one.
    pub size_bytes: Option<u64>,
    /// Bytes used.
    pub used_bytes: Option<u64>,
}

/// One storage volume (a driver, or an adapter around another volume).
///
/// Every method must be idempotent: `define` of a defined volume, `activate`
/// of an active one, `undefine` of an absent one all succeed and do
/// nothing. A method that fails must undo its own partial work. The caller
/// holds the VM's operation lock.
pub trait Volume: std::fmt::Debug {
    /// Create the backing storage if it does not exist. Keeps existing data.
    fn define(&mut self) -> Result<(), StorageError>;
    /// Make it usable (attach, mount).
    fn activate(&mut self) -> Result<(), StorageError>;
    /// Release what `activate` took.
    fn deactivate(&mut self) -> Result<(), StorageError>;
    /// Destroy the backing storage and its data (deactivates first).
    fn undefine(&mut self) -> Result<(), StorageError>;
    /// Erase the contents, leaving an empty volume (it is defined; the
    /// caller activates it afterwards if it needs the contents).
    fn format(&mut self) -> Result<(), StorageError>;
    /// Is it active now?
    fn is_active(&self) -> bool;
    /// What it provides (paths are valid while active).
    fn provides(&self) -> Provides;
    /// Does the backing storage exist?
    fn exists(&self) -> bool;
    /// What geats must remember about it (stored in the database and the
    /// VM's record file).
    fn record(&self) -> serde_json::Value;
    /// Size and use.
    fn usage(&self) -> VolumeUsage;
    /// A short description for step lists and dry runs.
    fn describe(&self) -> String;
    /// Put `template` onto this (active, empty) volume without unpacking
    /// it, e.g. as a btrfs snapshot or an overlay over a shared unpacked
    /// copy. Returns `false` when the driver cannot, and the manager then
    /// unpacks the archive into [`Provides::directory`].
    fn clone_template(&mut self, _template: &crate::template::Template) -> Result<bool, StorageError> {
        Ok(false)
    }
}

/// A storage root whose free space `status` reports.
#[derive(Debug, Clone)]
pub struct Root {
    /// The storage type.
    pub name: TypeName,
    /// The directory.
    pub path: PathBuf,
}

/// Build the volume `spec` of `vm`. `pointer` is the volume's JSON pointer
/// in the request, for error messages. No disk access.
pub fn open(config: &Config, vm: &VmName, spec: &VolumeSpec, pointer: &str) -> Result<Box<dyn Volume>, StorageError> {
    let st = config.storage_types.get(&spec.storage_type).ok_or_else(|| StorageError::TypeNotAllowed {
        pointer: format!("{pointer}/type"),
        name: spec.storage_type.to_string(),
        allowed: config.storage_types.keys().map(|k| k.as_str()).collect::<Vec<_>>().join(", "),
    })?;
    let prefix = format!("storage_types.{}", spec.storage_type);
    let ctx = VolumeCtx { config, vm, name: &spec.name, spec, pointer, prefix: &prefix, settings: &st.settings };
    let volume: Box<dyn Volume> = match st.driver.as_str() {
        "dir" => Box::new(dir::Dir::new(&ctx)?),
        "dummy" => Box::new(dummy::DummyVolume::new(&ctx)?),
        other => {
            return Err(config.invalid(format!("{prefix}.driver"), format!("unknown storage driver {other:?} (known: dir, dummy)")).into())
        }
    };
    let v = volume;
    if let Some(other) = st.adapters.first() {
        return Err(config.invalid(format!("{prefix}.adapters"), format!("unknown adapter {other:?}")).into());
    }
    Ok(v)
}

/// The directories whose free space `status` reports, one per storage type
/// that has a root.
pub fn roots(config: &Config) -> Vec<Root> {
    config
        .storage_types
        .iter()
        .filter_map(|(name, st)| {
            let root = match st.driver.as_str() {
                "dir" => dir::root_of(config, name, &st.settings),
                _ => None,
            }?;
            Some(Root { name: name.clone(), path: root })
        })
        .collect()
}

/// Everything a driver's constructor gets.
#[derive(Debug)]
pub struct VolumeCtx<'a> {
    /// The configuration.
    pub config: &'a Config,
    /// The VM.
    pub vm: &'a VmName,
    /// The volume's name.
    pub name: &'a VolumeName,
    /// Its definition.
    pub spec: &'a VolumeSpec,
    /// Its JSON pointer in the request.
    pub pointer: &'a str,
    /// `storage_types.NAME`, for config errors.
    pub prefix: &'a str,
    /// The storage type's settings.
    pub settings: &'a toml::Table,
}

impl VolumeCtx<'_> {
    /// Refuse options other than `allowed` (`size` and `mountpoint` are
    /// always allowed).
    pub fn only_options(&self, allowed: &[&str]) -> Result<(), StorageError> {
        for k in self.spec.options.keys() {
            if !allowed.contains(&k.as_str()) {
                let known = if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") };
                return Err(StorageError::BadOption {
                    pointer: format!("{}/{k}", self.pointer),
                    problem: format!("option {k:?} is not known to storage type {} (its options: {known})", self.spec.storage_type),
                });
            }
        }
        Ok(())
    }

    /// Where this volume lives under a driver root: `ROOT/VM/VOLUME`.
    pub fn path_under(&self, root: &Path) -> PathBuf {
        root.join(self.vm.as_str()).join(self.name.as_str())
    }
}

/// Parse a size: bytes, or a number with K, M, G or T (powers of 1024).
pub fn parse_size(v: &serde_json::Value) -> Result<u64, String> {
    let text = match v {
        serde_json::Value::Number(n) => return n.as_u64().filter(|n| *n > 0).ok_or_else(|| format!("size {n} is not a positive number of bytes")),
        serde_json::Value::String(s) => s.as_str(),
        other => return Err(format!("size {other} is not a size like 512M")),
    };
    let (num, mult) = match text.chars().last() {
        Some('K') => (&text[..text.len() - 1], 1u64 << 10),
        Some('M') => (&text[..text.len() - 1], 1 << 20),
        Some('G') => (&text[..text.len() - 1], 1 << 30),
        Some('T') => (&text[..text.len() - 1], 1 << 40),
        _ => (text, 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("size {text:?} is not a size like 512M"))?;
    n.checked_mul(mult).filter(|b| *b > 0).ok_or_else(|| format!("size {text:?} is out of range"))
}

/// Remove a directory tree, succeeding if it is already gone.
pub fn remove_tree(volume: &str, path: &Path) -> Result<(), StorageError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StorageError::Io { volume: volume.to_string(), step: "remove", path: path.to_path_buf(), source }),
    }
}

/// Empty a directory, keeping the directory itself.
pub fn empty_dir(volume: &str, path: &Path) -> Result<(), StorageError> {
    let rd = match std::fs::read_dir(path) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(StorageError::Io { volume: volume.into(), step: "read", path: path.into(), source }),
    };
    for e in rd.flatten() {
        let p = e.path();
        let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
        let r = if is_dir { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        r.map_err(|source| StorageError::Io { volume: volume.into(), step: "remove", path: p.clone(), source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size(&serde_json::json!("512M")).unwrap(), 512 << 20);
        assert_eq!(parse_size(&serde_json::json!(4096)).unwrap(), 4096);
        assert!(parse_size(&serde_json::json!("0")).is_err());
        assert!(parse_size(&serde_json::json!("99999999999T")).is_err());
        assert!(parse_size(&serde_json::json!("1X")).is_err());
    }
}
