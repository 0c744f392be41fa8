//! The `tmpfs` driver: scratch space in memory. A volume is a directory
//! `ROOT/VM/VOLUME` under the storage type's `root` (default
//! `ROOT/var/lib/geats/tmpfs`) on which `activate` mounts a tmpfs of the
//! definition's `size`; `deactivate` unmounts it, so what the VM wrote
//! there is gone at every stop, like Docker's tmpfs mounts. Provides a
//! directory.
//!
//! Settings: `root`, `mode` (of the tmpfs root, octal string, default
//! `"1777"`). Options: none (`size` is required).
//!
//! This file is the complete example of `docs/plugins.md`: a driver is
//! this file plus its line in the registry of `storage/mod.rs`.

use std::path::PathBuf;

use serde::Deserialize;

use super::{io_err, remove_if_empty, Driver, Provides, StorageError, Volume, VolumeCtx, VolumeUsage};
use crate::sys::{fsutil, mount};

/// A tmpfs volume.
#[derive(Debug)]
pub struct Tmpfs {
    volume: String,
    path: PathBuf,
    size: u64,
    mode: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    mode: Option<String>,
}

impl Driver for Tmpfs {
    const NAME: &'static str = "tmpfs";
    const DEFAULT_ROOT: Option<&'static str> = Some("var/lib/geats/tmpfs");

    fn open(ctx: &VolumeCtx<'_>) -> Result<Tmpfs, StorageError> {
        ctx.only_options(&[])?;
        let settings: Settings = ctx.settings_for(&["mode"])?;
        let mode = settings.mode.unwrap_or_else(|| "1777".into());
        if mode.is_empty() || mode.len() > 4 || !mode.chars().all(|c| ('0'..='7').contains(&c)) {
            let key = format!("{}.mode", ctx.prefix);
            return Err(ctx.config.invalid(key, format!("{mode:?} is not an octal mode like \"1777\"")).into());
        }
        let root = ctx.root_setting(Self::NAME)?;
        Ok(Tmpfs { volume: ctx.volume_label(), path: ctx.path_under(&root), size: ctx.required_size()?, mode })
    }
}

impl Volume for Tmpfs {
    fn define(&mut self) -> Result<(), StorageError> {
        std::fs::create_dir_all(&self.path).map_err(io_err(&self.volume, "create", &self.path))
    }

    fn activate(&mut self) -> Result<(), StorageError> {
        if mount::is_mounted(&self.path) {
            return Ok(());
        }
        let options = format!("size={},mode={}", self.size, self.mode);
        let flags = nix::mount::MsFlags::MS_NODEV | nix::mount::MsFlags::MS_NOSUID;
        mount::mount_data("tmpfs", &self.path, "tmpfs", flags, &options).map_err(io_err(&self.volume, "mount tmpfs on", &self.path))
    }

    fn deactivate(&mut self) -> Result<(), StorageError> {
        mount::umount(&self.path).map_err(io_err(&self.volume, "unmount tmpfs from", &self.path))
    }

    fn undefine(&mut self) -> Result<(), StorageError> {
        self.deactivate()?;
        fsutil::remove_tree_if_exists(&self.path).map_err(io_err(&self.volume, "remove", &self.path))?;
        if let Some(vm_dir) = self.path.parent() {
            remove_if_empty(vm_dir);
        }
        Ok(())
    }

    fn format(&mut self) -> Result<(), StorageError> {
        // A fresh tmpfs is empty: remount it if it is mounted.
        if self.is_active() {
            self.deactivate()?;
            return self.activate();
        }
        self.define()
    }

    fn is_active(&self) -> bool {
        mount::is_mounted(&self.path)
    }

    fn provides(&self) -> Provides {
        Provides::directory(self.path.clone())
    }

    fn exists(&self) -> bool {
        self.path.is_dir()
    }

    fn record(&self) -> serde_json::Value {
        serde_json::json!({"driver": Self::NAME, "path": self.path, "size": self.size})
    }

    fn usage(&self) -> VolumeUsage {
        let used = self.is_active().then(|| fsutil::space(&self.path).map(|(total, free)| total - free)).flatten();
        VolumeUsage { size_bytes: Some(self.size), used_bytes: used }
    }

    fn describe(&self) -> String {
        format!("tmpfs of {} bytes at {}", self.size, self.path.display())
    }
}
