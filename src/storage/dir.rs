//! The `dir` driver: a plain directory `ROOT/VM/VOLUME` under the storage
//! type's `root` (default `ROOT/var/lib/geats/volumes`). Provides a
//! directory; activation has nothing to do.
//!
//! Snapshots are copies `ROOT/VM/.snapshots/VOLUME/NAME` (for a VM type's
//! own root `DIR/VM`: `DIR/.snapshots/VM/NAME`), made with `cp -a
//! --reflink=auto`: on a file system that shares extents (btrfs, xfs with
//! reflink) a snapshot costs no copy of the data, elsewhere (ext4) it is a
//! full copy, in time and space. Restore copies the snapshot back beside
//! the volume and swaps it in (see [`super::snapshot`]).

use std::path::PathBuf;

use super::{empty_dir, remove_tree, snapshot, Provides, StorageError, Volume, VolumeCtx, VolumeUsage};
use crate::names::SnapshotName;

/// A directory volume.
#[derive(Debug)]
pub struct Dir {
    volume: String,
    path: PathBuf,
    /// Where its measured usage is kept a while (`None`: measured each time).
    usage_cache: Option<PathBuf>,
}

impl Dir {
    /// Build from the context; no disk access.
    pub fn new(ctx: &VolumeCtx<'_>) -> Result<Dir, StorageError> {
        ctx.only_options(&[])?;
        let root = ctx.root_setting("dir")?;
        Ok(Dir { volume: ctx.name.to_string(), path: ctx.path_under(&root), usage_cache: Some(ctx.usage_cache()) })
    }

    /// A directory volume at a fixed path (a VM type's own root directory,
    /// see `VmType::own_root`); `volume` names it in messages.
    pub fn at(volume: String, path: PathBuf) -> Dir {
        Dir { volume, path, usage_cache: None }
    }
}

impl Volume for Dir {
    fn define(&mut self) -> Result<(), StorageError> {
        std::fs::create_dir_all(&self.path).map_err(|source| StorageError::Io {
            volume: self.volume.clone(),
            step: "create",
            path: self.path.clone(),
            source,
        })
    }

    fn activate(&mut self) -> Result<(), StorageError> {
        if self.path.is_dir() {
            Ok(())
        } else {
            Err(StorageError::State { volume: self.volume.clone(), step: "activate", problem: format!("{} does not exist", self.path.display()) })
        }
    }

    fn deactivate(&mut self) -> Result<(), StorageError> {
        Ok(())
    }

    fn undefine(&mut self) -> Result<(), StorageError> {
        remove_tree(&self.volume, &self.path)?;
        // Remove the VM's directory once its last volume is gone.
        snapshot::remove_all(&self.volume, &snapshot::dir_for(&self.path))?;
        if let Some(parent) = self.path.parent() {
            let _ = std::fs::remove_dir(parent);
        }
        Ok(())
    }

    fn format(&mut self) -> Result<(), StorageError> {
        empty_dir(&self.volume, &self.path)
    }

    fn is_active(&self) -> bool {
        false
    }

    fn provides(&self) -> Provides {
        Provides::directory(self.path.clone())
    }

    fn exists(&self) -> bool {
        self.path.is_dir()
    }

    fn record(&self) -> serde_json::Value {
        serde_json::json!({"driver": "dir", "path": self.path})
    }

    fn usage(&self) -> VolumeUsage {
        let du = |p: &std::path::Path| match &self.usage_cache {
            Some(c) => crate::sys::fsutil::du_cached(p, c),
            None => crate::sys::fsutil::du(p),
        };
        VolumeUsage { size_bytes: None, used_bytes: self.exists().then(|| du(&self.path)) }
    }

    fn describe(&self) -> String {
        format!("directory {}", self.path.display())
    }

    fn snapshot(&mut self, name: &SnapshotName) -> Result<Option<u64>, StorageError> {
        let target = snapshot::dir_for(&self.path).join(name.as_str());
        remove_tree(&self.volume, &target)?;
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir).map_err(super::io_err(&self.volume, "create", dir))?;
        }
        snapshot::copy_tree(&self.volume, &self.path, &target)?;
        Ok(Some(crate::sys::fsutil::du(&target)))
    }

    fn restore(&mut self, name: &SnapshotName) -> Result<(), StorageError> {
        let source = snapshot::dir_for(&self.path).join(name.as_str());
        if !source.is_dir() {
            return Err(snapshot::missing(&self.volume, name));
        }
        snapshot::restore_tree(&self.volume, &source, &self.path)
    }

    fn delete_snapshot(&mut self, name: &SnapshotName) -> Result<(), StorageError> {
        let dir = snapshot::dir_for(&self.path);
        remove_tree(&self.volume, &dir.join(name.as_str()))?;
        super::remove_if_empty(&dir);
        if let Some(parent) = dir.parent() {
            super::remove_if_empty(parent);
        }
        Ok(())
    }
}

impl super::Driver for Dir {
    const NAME: &'static str = "dir";
    const DEFAULT_ROOT: Option<&'static str> = Some("var/lib/geats/volumes");

    fn open(ctx: &VolumeCtx<'_>) -> Result<Self, StorageError> {
        Dir::new(ctx)
    }
}
