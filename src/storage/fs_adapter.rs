//! The `filesystem` adapter: turns a volume that provides a block device
//! into a directory. `define` of a volume that holds no file system makes
//! one (`mkfs.FSTYPE`); `activate` mounts it on `MOUNT_DIR/VM/VOLUME`;
//! `deactivate` unmounts it; `format` makes a fresh file system. Whether
//! it is mounted is read from `/proc/self/mountinfo` every time.
//!
//! Settings: `fstype` (`ext4` default, `ext3`, `xfs`, `btrfs`), `mount_dir`
//! (default `ROOT/var/lib/geats/mnt`), `mount_options` (passed to `mount
//! -o`). Options: `fstype` (overrides the setting for one volume).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::loop_adapter::with_adapter;
use super::{io_err, remove_if_empty, tool_err, Kind, Provides, StorageError, Volume, VolumeCtx, VolumeUsage};
use crate::names::SnapshotName;
use crate::sys::{mkfs, mount};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    fstype: Option<String>,
    mount_dir: Option<PathBuf>,
    mount_options: Option<String>,
}

/// A file system on a block device, mounted while active.
#[derive(Debug)]
pub struct Filesystem {
    inner: Box<dyn Volume>,
    volume: String,
    fstype: String,
    target: PathBuf,
    mount_options: Option<String>,
}

impl Filesystem {
    /// Wrap `inner`, which must provide a block device. `key` names this
    /// adapter in the config, for errors.
    pub fn new(ctx: &VolumeCtx<'_>, key: &str, inner: Box<dyn Volume>) -> Result<Filesystem, StorageError> {
        ctx.only_options(&["fstype"])?;
        let s: Settings = ctx.settings_for(&["fstype", "mount_dir", "mount_options"])?;
        if inner.provides().kind != Kind::BlockDevice {
            return Err(ctx
                .config
                .invalid(key, format!("the filesystem adapter needs a volume that provides a block device; {} provides {} (put the loop adapter before it)", inner.describe(), inner.provides().kind.as_str()))
                .into());
        }
        let fstype = match ctx.option_str("fstype")? {
            Some(f) if mkfs::FSTYPES.contains(&f.as_str()) => f,
            Some(f) => {
                return Err(StorageError::BadOption {
                    pointer: format!("{}/fstype", ctx.pointer),
                    problem: format!("file system type {f:?} is not supported (supported: {})", mkfs::FSTYPES.join(", ")),
                })
            }
            None => match s.fstype {
                Some(f) if mkfs::FSTYPES.contains(&f.as_str()) => f,
                Some(f) => {
                    return Err(ctx
                        .config
                        .invalid(format!("{}.fstype", ctx.prefix), format!("file system type {f:?} is not supported (supported: {})", mkfs::FSTYPES.join(", ")))
                        .into())
                }
                None => "ext4".to_string(),
            },
        };
        let mount_dir = ctx.config.path_setting(&format!("{}.mount_dir", ctx.prefix), s.mount_dir, "var/lib/geats/mnt")?;
        Ok(Filesystem { inner, volume: ctx.volume_label(), fstype, target: ctx.path_under(&mount_dir), mount_options: s.mount_options })
    }

    fn device(&self) -> Result<PathBuf, StorageError> {
        self.inner.provides().path_of(Kind::BlockDevice).map(Path::to_path_buf).ok_or_else(|| StorageError::State {
            volume: self.volume.clone(),
            step: "find block device",
            problem: format!("{} provides no block device although it is active", self.inner.describe()),
        })
    }

    /// Deactivate the inner volume after a failure, logging (not hiding
    /// the first error behind) a failure of that cleanup.
    fn undo_inner(&mut self, was_active: bool) {
        if !was_active {
            if let Err(e) = self.inner.deactivate() {
                tracing::warn!(volume = %self.volume, error = %e, "cleanup after a failed step failed");
            }
        }
    }

    /// Is the file system mounted on its mount point?
    fn mounted(&self) -> bool {
        mount::is_mounted(&self.target)
    }

    /// Make the file system on the (active) inner device.
    fn make(&self) -> Result<(), StorageError> {
        let dev = self.device()?;
        mkfs::mkfs(&self.fstype, &dev).map_err(tool_err(&self.volume, "make file system"))
    }
}

impl Volume for Filesystem {
    fn define(&mut self) -> Result<(), StorageError> {
        let existed = self.inner.exists();
        self.inner.define()?;
        if self.mounted() {
            return Ok(());
        }
        let was_active = self.inner.is_active();
        let result = (|| {
            self.inner.activate()?;
            let dev = self.device()?;
            // Make a file system only where there is none: a volume whose
            // earlier define was interrupted gets one, data is never lost.
            if mkfs::probe(&dev).map_err(tool_err(&self.volume, "probe file system"))?.is_none() {
                self.make()?;
            }
            Ok(())
        })();
        self.undo_inner(was_active);
        if result.is_err() && !existed {
            if let Err(e) = self.inner.undefine() {
                tracing::warn!(volume = %self.volume, error = %e, "cleanup after a failed define failed");
            }
        }
        result
    }

    fn activate(&mut self) -> Result<(), StorageError> {
        if self.mounted() {
            return Ok(());
        }
        let was_active = self.inner.is_active();
        self.inner.activate()?;
        let result = (|| {
            let dev = self.device()?;
            // Only create what is missing: an existing non-directory there
            // makes mount fail with a clear message.
            if std::fs::symlink_metadata(&self.target).is_err() {
                std::fs::create_dir_all(&self.target).map_err(io_err(&self.volume, "create mount point", &self.target))?;
            }
            mount::mount(&dev, &self.target, &self.fstype, self.mount_options.as_deref()).map_err(tool_err(&self.volume, "mount file system"))
        })();
        if result.is_err() {
            self.undo_inner(was_active);
        }
        result
    }

    fn deactivate(&mut self) -> Result<(), StorageError> {
        mount::umount(&self.target).map_err(io_err(&self.volume, "unmount file system from", &self.target))?;
        self.inner.deactivate()
    }

    fn undefine(&mut self) -> Result<(), StorageError> {
        self.deactivate()?;
        self.inner.undefine()?;
        crate::sys::fsutil::ignore_missing(std::fs::remove_dir(&self.target)).map_err(io_err(&self.volume, "remove mount point", &self.target))?;
        if let Some(vm_dir) = self.target.parent() {
            remove_if_empty(vm_dir);
        }
        Ok(())
    }

    fn format(&mut self) -> Result<(), StorageError> {
        let was_mounted = self.mounted();
        self.deactivate()?;
        self.inner.format()?;
        self.inner.activate()?;
        if let Err(e) = self.make() {
            self.undo_inner(false);
            return Err(e);
        }
        if was_mounted {
            self.activate()
        } else {
            self.inner.deactivate()
        }
    }

    /// Mounted, or anything below still active (a crash between unmount
    /// and detach leaves a loop device that `deactivate` then releases).
    fn is_active(&self) -> bool {
        self.mounted() || self.inner.is_active()
    }

    fn provides(&self) -> Provides {
        Provides::directory(self.target.clone())
    }

    fn exists(&self) -> bool {
        self.inner.exists()
    }

    fn record(&self) -> serde_json::Value {
        with_adapter(self.inner.record(), "filesystem", serde_json::json!({"fstype": self.fstype, "mount_point": self.target}))
    }

    fn usage(&self) -> VolumeUsage {
        if !self.mounted() {
            return self.inner.usage();
        }
        match nix::sys::statvfs::statvfs(&self.target) {
            // The statvfs field types differ between platforms.
            #[allow(clippy::unnecessary_cast)]
            Ok(st) => {
                let frag = st.fragment_size() as u64;
                let total = st.blocks() as u64 * frag;
                let free = st.blocks_free() as u64 * frag;
                VolumeUsage { size_bytes: Some(total), used_bytes: Some(total.saturating_sub(free)) }
            }
            Err(_) => self.inner.usage(),
        }
    }

    fn describe(&self) -> String {
        format!("{} file system on {}, mounted on {}", self.fstype, self.inner.describe(), self.target.display())
    }

    /// The inner volume's snapshot. While mounted, the file system is
    /// frozen for that moment (`fsfreeze`: its dirty data is written to
    /// the device, through a loop device into the image file, and writes
    /// block), so the snapshot holds a clean file system, not one that
    /// needs a journal replay; it is thawed whatever happens.
    fn snapshot(&mut self, name: &SnapshotName) -> Result<Option<u64>, StorageError> {
        if !self.mounted() {
            return self.inner.snapshot(name);
        }
        mount::freeze(&self.target).map_err(tool_err(&self.volume, "freeze file system"))?;
        let taken = self.inner.snapshot(name);
        let thawed = mount::thaw(&self.target).map_err(tool_err(&self.volume, "thaw file system"));
        let size = taken?;
        thawed?;
        Ok(size)
    }

    /// Unmounts first (the device's contents change under it).
    fn restore(&mut self, name: &SnapshotName) -> Result<(), StorageError> {
        self.deactivate()?;
        self.inner.restore(name)
    }

    fn delete_snapshot(&mut self, name: &SnapshotName) -> Result<(), StorageError> {
        self.inner.delete_snapshot(name)
    }
}

impl super::Adapter for Filesystem {
    const NAME: &'static str = "filesystem";

    fn wrap(ctx: &VolumeCtx<'_>, key: &str, inner: Box<dyn Volume>) -> Result<Self, StorageError> {
        Filesystem::new(ctx, key, inner)
    }
}
