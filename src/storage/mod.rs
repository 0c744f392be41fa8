//! Storage: the [`Volume`] trait, drivers that provide a directory, block
//! device or file, and adapters that wrap a volume and turn what it
//! provides into what a VM needs (a `loop` adapter makes a file a block
//! device; a `filesystem` adapter formats a block device and mounts it as a
//! directory).
//!
//! A configured storage type names a driver, its settings and an ordered
//! adapter chain; [`open`] builds the chain for one volume of one VM.
//!
//! A new driver is one file (a type implementing [`Volume`] and [`Driver`])
//! plus its line in the [`registry!`] below; an adapter likewise implements
//! [`Adapter`]. See `docs/plugins.md`, whose example is [`tmpfs`].

/// Declares the driver and adapter modules and the tables [`open`] looks
/// names up in: one line per plugin.
macro_rules! registry {
    (drivers: $($dm:ident::$dt:ident),* $(,)?; adapters: $($am:ident::$at:ident),* $(,)?;) => {
        $(pub mod $dm;)*
        $(pub mod $am;)*
        /// Every storage driver, by its config name.
        pub const DRIVERS: &[DriverEntry] = &[$(DriverEntry::of::<$dm::$dt>()),*];
        /// Every adapter, by its config name.
        pub const ADAPTERS: &[AdapterEntry] = &[$(AdapterEntry::of::<$am::$at>()),*];
    };
}

registry! {
    drivers: dir::Dir, dummy::DummyVolume, sparsefile::SparseFile, qcow2::Qcow2, btrfs::Btrfs, overlay::Overlay, lvm::Lvm, exec::Exec, tmpfs::Tmpfs;
    adapters: loop_adapter::LoopAdapter, fs_adapter::Filesystem;
}

mod image_file;
pub mod snapshot;
mod template_cache;

/// A storage driver: the innermost volume of a chain. Implement it with
/// [`Volume`] and add the type to the registry.
pub trait Driver: Volume + Sized + 'static {
    /// Its name in the config: `driver = "NAME"`.
    const NAME: &'static str;
    /// Where it keeps its volumes by default, relative to the config's
    /// `root`, if it keeps them under a directory (`status` reports that
    /// directory's free space). Read with [`VolumeCtx::root_setting`].
    const DEFAULT_ROOT: Option<&'static str> = None;
    /// Build the volume of one VM from its context; no disk access. Claim
    /// the settings and options it understands through the context.
    fn open(ctx: &VolumeCtx<'_>) -> Result<Self, StorageError>;
}

/// An adapter: wraps the volume built so far and turns what it provides
/// into something else (a file into a block device, a block device into a
/// directory).
pub trait Adapter: Volume + Sized + 'static {
    /// Its name in the config's `adapters` list.
    const NAME: &'static str;
    /// Wrap `inner`; `key` names this adapter in the config, for errors.
    /// Check `inner.provides().kind` here, so a wrong chain is refused
    /// before anything touches the disk.
    fn wrap(ctx: &VolumeCtx<'_>, key: &str, inner: Box<dyn Volume>) -> Result<Self, StorageError>;
}

/// A row of [`DRIVERS`].
#[derive(Debug, Clone, Copy)]
pub struct DriverEntry {
    /// [`Driver::NAME`].
    pub name: &'static str,
    /// [`Driver::DEFAULT_ROOT`].
    pub default_root: Option<&'static str>,
    open: fn(&VolumeCtx<'_>) -> Result<Box<dyn Volume>, StorageError>,
}

impl DriverEntry {
    const fn of<D: Driver>() -> DriverEntry {
        DriverEntry { name: D::NAME, default_root: D::DEFAULT_ROOT, open: open_driver::<D> }
    }
}

fn open_driver<D: Driver>(ctx: &VolumeCtx<'_>) -> Result<Box<dyn Volume>, StorageError> {
    Ok(Box::new(D::open(ctx)?))
}

/// A row of [`ADAPTERS`].
#[derive(Debug, Clone, Copy)]
pub struct AdapterEntry {
    /// [`Adapter::NAME`].
    pub name: &'static str,
    wrap: WrapFn,
}

type WrapFn = fn(&VolumeCtx<'_>, &str, Box<dyn Volume>) -> Result<Box<dyn Volume>, StorageError>;

impl AdapterEntry {
    const fn of<A: Adapter>() -> AdapterEntry {
        AdapterEntry { name: A::NAME, wrap: wrap_adapter::<A> }
    }
}

fn wrap_adapter<A: Adapter>(ctx: &VolumeCtx<'_>, key: &str, inner: Box<dyn Volume>) -> Result<Box<dyn Volume>, StorageError> {
    Ok(Box::new(A::wrap(ctx, key, inner)?))
}

fn names<T>(rows: &[T], name: impl Fn(&T) -> &'static str) -> String {
    rows.iter().map(name).collect::<Vec<_>>().join(", ")
}

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::Config;
use crate::definition::VolumeSpec;
use crate::names::{SnapshotName, TypeName, VmName, VolumeName};
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
    /// An exec plugin failed, timed out or replied with garbage.
    #[error("volume {volume}")]
    Plugin {
        /// The volume.
        volume: String,
        /// What the plugin did.
        source: crate::sys::plugin::PluginError,
    },
    /// The driver (or an adapter of the chain) cannot do this, e.g. take
    /// snapshots.
    #[error("volume {volume}: {driver} cannot {what}")]
    NotSupported {
        /// The volume.
        volume: String,
        /// The driver or adapter that cannot.
        driver: &'static str,
        /// What it cannot do.
        what: &'static str,
    },
    /// A snapshot the step needs does not exist.
    #[error("volume {volume}: no snapshot named {snapshot}")]
    NoSnapshot {
        /// The volume.
        volume: String,
        /// The snapshot.
        snapshot: String,
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

/// What a volume gives a VM: its kind, fixed when the chain is built, and
/// its path, known while the volume is active (a directory's or an image
/// file's path is known always; a loop device's only while attached).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Provides {
    /// A directory, a block device, a file, or nothing.
    pub kind: Kind,
    /// Where it is, when known.
    pub path: Option<PathBuf>,
}

impl Provides {
    /// A directory at `path`.
    pub fn directory(path: PathBuf) -> Provides {
        Provides { kind: Kind::Directory, path: Some(path) }
    }

    /// An image file at `path`.
    pub fn file(path: PathBuf) -> Provides {
        Provides { kind: Kind::File, path: Some(path) }
    }

    /// A block device, at `path` while active.
    pub fn block_device(path: Option<PathBuf>) -> Provides {
        Provides { kind: Kind::BlockDevice, path }
    }

    /// Nothing (a volume that is only recorded).
    pub fn nothing() -> Provides {
        Provides { kind: Kind::Nothing, path: None }
    }

    /// The path, if it is of `kind`.
    pub fn path_of(&self, kind: Kind) -> Option<&Path> {
        (self.kind == kind).then_some(self.path.as_deref()).flatten()
    }
}

/// A VM's root directory as a `define` installs it: where its files are
/// read and where new ones are written. For an active volume both are the
/// directory it provides ([`RootDirs::active`]); for an overlay installed
/// while unmounted ([`Volume::offline_root`]), the template it shows and
/// its own `upper/` layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootDirs {
    /// What the VM will see: read the root's files here.
    pub read: PathBuf,
    /// Write new files here. The root directory's own owner and mode are
    /// this directory's (an overlay shows its upper layer's root).
    pub write: PathBuf,
    /// The type of the file system the VM will see (`statfs` magic), when
    /// it is not that of `read`.
    pub fs_type: Option<i64>,
}

impl RootDirs {
    /// An active root: read and written in place.
    pub fn active(dir: &Path) -> RootDirs {
        RootDirs { read: dir.to_path_buf(), write: dir.to_path_buf(), fs_type: None }
    }

    /// Are reads and writes in different directories?
    pub fn is_split(&self) -> bool {
        self.read != self.write
    }
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
/// holds the VM's operation lease.
pub trait Volume: std::fmt::Debug {
    /// Create the backing storage if it does not exist. Keeps existing data.
    fn define(&mut self) -> Result<(), StorageError>;
    /// Make it usable (attach, mount).
    fn activate(&mut self) -> Result<(), StorageError>;
    /// Release what `activate` took.
    fn deactivate(&mut self) -> Result<(), StorageError>;
    /// Destroy the backing storage and its data (deactivates first).
    fn undefine(&mut self) -> Result<(), StorageError>;
    /// Erase the contents, leaving an empty volume (defining it if it
    /// does not exist). A volume that was active is active again
    /// afterwards; an inactive one stays inactive.
    fn format(&mut self) -> Result<(), StorageError>;
    /// Is it active now?
    fn is_active(&self) -> bool;
    /// What it provides: the kind always, the path while active. An
    /// adapter checks its inner volume's kind with it when the chain is
    /// built, so the kind must not depend on the volume's state.
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
    /// unpacks the archive into the directory it provides. `durable`:
    /// `fsync` what it writes; when false, the manager syncs the file
    /// system of [`Volume::sync_path`] before it records the install.
    fn clone_template(&mut self, _template: &crate::template::Template, _durable: bool) -> Result<bool, StorageError> {
        Ok(false)
    }
    /// A directory of the file system that holds what is written into
    /// this (active, freshly cloned) volume, when one `syncfs` of it costs
    /// no more than an `fsync` of each of a few small files: an overlay,
    /// whose unmount syncs its upper file system whole anyway (not btrfs,
    /// whose `fsync` writes a log tree and whose `syncfs` commits a
    /// transaction: 1.5 against 4.5 ms here). The manager then writes the
    /// guest files of a fresh install without an `fsync` each and syncs
    /// this once, before it records the install (and asks
    /// [`Volume::clone_template`] for no `fsync` either). `None` (the
    /// default): an `fsync` per file.
    fn sync_path(&self) -> Option<PathBuf> {
        None
    }
    /// Activate it for a [`Volume::clone_template`] that follows at once:
    /// until then the manager only looks at what it provides (its file
    /// system, whether it is empty; `VmType::template_for`). A driver
    /// whose clone makes the volume anew may present it read-only until
    /// then, if that is cheaper; only one whose `clone_template` returns
    /// `true` may. Default: [`Volume::activate`].
    fn activate_to_clone(&mut self) -> Result<(), StorageError> {
        self.activate()
    }
    /// A fresh install without activating the volume: where the manager
    /// can have the VM type look at the root and write its files while
    /// the volume stays inactive, around a [`Volume::clone_template`]
    /// (which must then work on an inactive volume). `overlay` gives the
    /// template it stands on to read and its own `upper/` layer to write,
    /// as overlayfs allows while it is not mounted: its mounts, the
    /// preparation of `work/`, the copy-up of `/etc` and the unmount that
    /// syncs the whole file system under `upper/` cost more than the
    /// install's own writes (docs/performance.md, eleventh pass). Asked
    /// before the clone and again after it, only for a fresh install from
    /// a template. `None` (the default, and for an active volume): the
    /// manager activates the volume and works in what it provides.
    fn offline_root(&self) -> Option<RootDirs> {
        None
    }
    /// After an install through [`Volume::offline_root`]: make durable
    /// what `clone_template(.., false)` wrote, once the guest files have
    /// been fsynced. A driver that starts writing its files back at the
    /// clone has them carried by the guest files' journal commit, so this
    /// costs a cache flush instead of a commit of its own. Every driver
    /// that answers `offline_root` must implement it; the default has
    /// nothing to sync.
    fn sync_clone(&self) -> Result<(), StorageError> {
        Ok(())
    }
    /// Take the snapshot `name` of the volume's current contents; returns
    /// the bytes it takes when the driver knows. Called on an inactive
    /// volume, or on an active one whose VM is frozen (the driver must
    /// then capture what is written so far, e.g. by freezing the file
    /// system). A snapshot that exists already is replaced. Drivers that
    /// cannot answer [`StorageError::NotSupported`] (the default).
    fn snapshot(&mut self, _name: &SnapshotName) -> Result<Option<u64>, StorageError> {
        Err(self.not_supported("take snapshots"))
    }
    /// Bring the volume's contents back to the snapshot `name`, keeping
    /// every snapshot. Called on an inactive volume; leaves it inactive.
    /// [`StorageError::NoSnapshot`] when there is no such snapshot.
    fn restore(&mut self, _name: &SnapshotName) -> Result<(), StorageError> {
        Err(self.not_supported("restore snapshots"))
    }
    /// Remove the snapshot `name`; absent is fine.
    fn delete_snapshot(&mut self, _name: &SnapshotName) -> Result<(), StorageError> {
        Err(self.not_supported("delete snapshots"))
    }
    /// A [`StorageError::NotSupported`] naming this volume.
    fn not_supported(&self, what: &'static str) -> StorageError {
        StorageError::NotSupported { volume: self.describe(), driver: "this storage type", what }
    }
}

/// What a volume provides once active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A directory.
    Directory,
    /// A block device.
    BlockDevice,
    /// An image file.
    File,
    /// Nothing (a recorded-only volume).
    Nothing,
}

impl Kind {
    /// For messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Directory => "a directory",
            Kind::BlockDevice => "a block device",
            Kind::File => "a file",
            Kind::Nothing => "nothing",
        }
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

/// Build the volume `spec` of `vm`: the configured driver wrapped in the
/// configured adapters, innermost first. `pointer` is the volume's JSON
/// pointer in the request, for error messages. No disk access.
///
/// The storage type's `settings` table is shared by the driver and its
/// adapters: each component takes the keys it knows
/// ([`VolumeCtx::settings_for`]) and the definition options it knows
/// ([`VolumeCtx::only_options`]); a key or option that no component of the
/// chain claimed is refused, naming it.
pub fn open(config: &Config, vm: &VmName, spec: &VolumeSpec, pointer: &str) -> Result<Box<dyn Volume>, StorageError> {
    let st = config.storage_types.get(&spec.storage_type).ok_or_else(|| StorageError::TypeNotAllowed {
        pointer: format!("{pointer}/type"),
        name: spec.storage_type.to_string(),
        allowed: config.storage_types.keys().map(|k| k.as_str()).collect::<Vec<_>>().join(", "),
    })?;
    let prefix = format!("storage_types.{}", spec.storage_type);
    let ctx = VolumeCtx {
        config,
        vm,
        name: &spec.name,
        spec,
        pointer,
        prefix: &prefix,
        settings: &st.settings,
        claimed_settings: RefCell::default(),
        claimed_options: RefCell::default(),
    };
    let driver = DRIVERS.iter().find(|d| d.name == st.driver).ok_or_else(|| {
        config.invalid(format!("{prefix}.driver"), format!("unknown storage driver {:?} (known: {})", st.driver, names(DRIVERS, |d| d.name)))
    })?;
    let mut volume = (driver.open)(&ctx)?;
    for (i, name) in st.adapters.iter().enumerate() {
        let key = format!("{prefix}.adapters[{i}]");
        let adapter = ADAPTERS.iter().find(|a| a.name == name).ok_or_else(|| {
            config.invalid(key.clone(), format!("unknown adapter {name:?} (known: {})", names(ADAPTERS, |a| a.name)))
        })?;
        volume = (adapter.wrap)(&ctx, &key, volume)?;
    }
    ctx.finish(&st.driver, &st.adapters)?;
    Ok(volume)
}

/// The default `root` of a driver that keeps its volumes under a
/// directory, relative to the config's root.
pub fn default_root(driver: &str) -> Option<&'static str> {
    DRIVERS.iter().find(|d| d.name == driver).and_then(|d| d.default_root)
}

/// The directories whose free space `status` reports, one per storage type
/// whose driver keeps its volumes under a root directory. A type whose
/// `root` setting is unusable is left out (its volumes fail with the
/// config error).
pub fn roots(config: &Config) -> Vec<Root> {
    config
        .storage_types
        .iter()
        .filter_map(|(name, st)| {
            let default = default_root(&st.driver)?;
            let key = format!("storage_types.{name}.root");
            let given = match st.settings.get("root") {
                None => None,
                Some(toml::Value::String(s)) => Some(PathBuf::from(s)),
                Some(_) => return None,
            };
            let path = config.path_setting(&key, given, default).ok()?;
            Some(Root { name: name.clone(), path })
        })
        .collect()
}

/// Everything a driver's or adapter's constructor gets.
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
    /// The storage type's settings, shared by the driver and its adapters.
    pub settings: &'a toml::Table,
    /// Setting keys claimed so far by the chain's components.
    pub claimed_settings: RefCell<BTreeSet<String>>,
    /// Option keys claimed so far by the chain's components.
    pub claimed_options: RefCell<BTreeSet<String>>,
}

impl VolumeCtx<'_> {
    /// Where a tree-walking driver keeps its measured usage a while
    /// ([`crate::sys::fsutil::du_cached`]).
    pub fn usage_cache(&self) -> PathBuf {
        self.config.cache_dir.join("usage")
    }

    /// Claim the definition options this component understands (`size`
    /// and `mountpoint` are separate fields and always allowed). [`open`]
    /// refuses an option that no component of the chain claimed.
    pub fn only_options(&self, allowed: &[&str]) -> Result<(), StorageError> {
        self.claimed_options.borrow_mut().extend(allowed.iter().map(|s| s.to_string()));
        Ok(())
    }

    /// Claim every setting and option there is: for a driver that only
    /// records what it is given (`dummy`).
    pub fn claim_everything(&self) {
        self.claimed_settings.borrow_mut().extend(self.settings.keys().cloned());
        self.claimed_options.borrow_mut().extend(self.spec.options.keys().cloned());
    }

    /// Take the setting keys this component knows out of the shared
    /// settings table and deserialize them into `T` (which should deny
    /// unknown fields). Keys absent from the table are left to `T`'s
    /// defaults; [`open`] refuses keys nobody took.
    pub fn settings_for<T: serde::de::DeserializeOwned>(&self, keys: &[&str]) -> Result<T, StorageError> {
        let mut sub = toml::Table::new();
        for k in keys {
            if let Some(v) = self.settings.get(*k) {
                sub.insert(k.to_string(), v.clone());
            }
            self.claimed_settings.borrow_mut().insert(k.to_string());
        }
        Ok(self.config.settings(self.prefix, &sub)?)
    }

    /// Check that every setting and option was claimed by a component.
    fn finish(&self, driver: &str, adapters: &[String]) -> Result<(), StorageError> {
        let chain = std::iter::once(format!("driver {driver}")).chain(adapters.iter().map(|a| format!("adapter {a}"))).collect::<Vec<_>>().join(", ");
        let claimed = self.claimed_settings.borrow();
        for k in self.settings.keys() {
            if !claimed.contains(k) {
                let known = if claimed.is_empty() { "none".to_string() } else { claimed.iter().cloned().collect::<Vec<_>>().join(", ") };
                return Err(self
                    .config
                    .invalid(format!("{}.{k}", self.prefix), format!("unknown key {k:?} for {chain} (known keys: driver, adapters, {known})"))
                    .into());
            }
        }
        let claimed = self.claimed_options.borrow();
        for k in self.spec.options.keys() {
            if !claimed.contains(k) {
                let known = if claimed.is_empty() { "none".to_string() } else { claimed.iter().cloned().collect::<Vec<_>>().join(", ") };
                return Err(StorageError::BadOption {
                    pointer: format!("{}/{k}", self.pointer),
                    problem: format!("option {k:?} is not known to storage type {} (its options: {known})", self.spec.storage_type),
                });
            }
        }
        Ok(())
    }

    /// A string option of the definition, or a `BadOption` naming it.
    pub fn option_str(&self, key: &str) -> Result<Option<String>, StorageError> {
        match self.spec.options.get(key) {
            None => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(StorageError::BadOption { pointer: format!("{}/{key}", self.pointer), problem: format!("{key} must be a string, not {other}") }),
        }
    }

    /// The volume's `size` in bytes, required for sized drivers.
    pub fn required_size(&self) -> Result<u64, StorageError> {
        let bad = |problem: String| StorageError::BadOption { pointer: format!("{}/size", self.pointer), problem };
        match &self.spec.size {
            None => Err(bad(format!("storage type {} needs a size, like \"size\": \"10G\"", self.spec.storage_type))),
            Some(v) => parse_size(v).map_err(bad),
        }
    }

    /// The `root` setting of a driver that keeps volumes under a directory
    /// (claims the key), absolute, defaulting to [`default_root`].
    pub fn root_setting(&self, driver: &str) -> Result<PathBuf, StorageError> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct S {
            root: Option<PathBuf>,
        }
        let s: S = self.settings_for(&["root"])?;
        let default = default_root(driver).unwrap_or("var/lib/geats/volumes");
        Ok(self.config.path_setting(&format!("{}.root", self.prefix), s.root, default)?)
    }

    /// Where this volume lives under a driver root: `ROOT/VM/VOLUME`.
    pub fn path_under(&self, root: &Path) -> PathBuf {
        root.join(self.vm.as_str()).join(self.name.as_str())
    }

    /// The volume's name, for errors.
    pub fn volume_label(&self) -> String {
        format!("{}/{}", self.vm, self.name)
    }
}

/// A [`StorageError::Tool`] for `volume` failing at `step`.
pub fn tool_err<'a>(volume: &'a str, step: &'static str) -> impl FnOnce(ExecError) -> StorageError + 'a {
    move |source| StorageError::Tool { volume: volume.to_string(), step, source }
}

/// A [`StorageError::Io`] for `volume` failing at `step` on `path`.
pub fn io_err<'a>(volume: &'a str, step: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StorageError + 'a {
    move |source| StorageError::Io { volume: volume.to_string(), step, path: path.to_path_buf(), source }
}

/// Remove `dir` if it is empty (e.g. a VM's directory after its last
/// volume went); anything else is left alone.
pub fn remove_if_empty(dir: &Path) {
    let _ = std::fs::remove_dir(dir);
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
    crate::sys::fsutil::remove_tree_if_exists(path).map_err(io_err(volume, "remove", path))
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
