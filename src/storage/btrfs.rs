//! The `btrfs` driver: each volume is a subvolume `ROOT/VM/VOLUME` of the
//! btrfs file system holding the storage type's `root` (default
//! `ROOT/var/lib/geats/btrfs`). Provides a directory; activation has
//! nothing to do.
//!
//! Templates are cloned, not copied: the first volume made from a
//! template unpacks it once into the read-only subvolume
//! `ROOT/.templates/NAME@STAMP` (see [`super::template_cache`]); every
//! volume made from it is a writable
//! snapshot of that subvolume, which costs no copy and no space until the
//! guest writes.
//!
//! Subvolumes are made, snapshotted and deleted through the kernel's
//! ioctls ([`crate::sys::btrfs`]), as the `btrfs` tool does.
//!
//! Snapshots are read-only subvolume snapshots
//! `ROOT/VM/.snapshots/VOLUME/NAME` (`btrfs subvolume snapshot -r`):
//! atomic, instant, and no space until the volume and the snapshot
//! diverge. Restore makes a writable snapshot of the snapshot beside the
//! volume, deletes the volume's subvolume and renames the new one into
//! place; every snapshot stays. Their size is not known without quotas,
//! so none is reported.
//!
//! Settings: `root`. Options: none.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::template_cache::{self, CacheOps};
use super::{empty_dir, io_err, remove_if_empty, Provides, StorageError, Volume, VolumeCtx, VolumeUsage};
use crate::sys;
use crate::names::SnapshotName;
use crate::storage::snapshot;
use crate::template::Template;

/// `statfs` magic of btrfs.
const BTRFS_MAGIC: i64 = 0x9123_683E;

/// Is `path` on a btrfs file system?
pub fn on_btrfs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).map(|s| s.filesystem_type().0 == BTRFS_MAGIC).unwrap_or(false)
}

/// Is `path` the top of a btrfs subvolume (inode 256 on btrfs)?
pub fn is_subvolume(path: &Path) -> bool {
    std::fs::symlink_metadata(path).map(|m| m.is_dir() && m.ino() == 256).unwrap_or(false) && on_btrfs(path)
}



/// `btrfs subvolume create PATH` (the ioctl, [`sys::btrfs`]).
fn create(volume: &str, path: &Path) -> Result<(), StorageError> {
    sys::btrfs::create(path).map_err(io_err(volume, "create subvolume", path))
}

/// `btrfs subvolume delete PATH`, if it is one.
fn delete(volume: &str, path: &Path) -> Result<(), StorageError> {
    if !is_subvolume(path) {
        return Ok(());
    }
    sys::btrfs::delete(path).map_err(io_err(volume, "delete subvolume", path))
}

/// A subvolume volume.
#[derive(Debug)]
pub struct Btrfs {
    volume: String,
    root: PathBuf,
    path: PathBuf,
    usage_cache: PathBuf,
}

impl Btrfs {
    /// Build from the context; no disk access.
    pub fn new(ctx: &VolumeCtx<'_>) -> Result<Btrfs, StorageError> {
        ctx.only_options(&[])?;
        let root = ctx.root_setting("btrfs")?;
        Ok(Btrfs { volume: ctx.volume_label(), path: ctx.path_under(&root), root, usage_cache: ctx.usage_cache() })
    }

    fn templates(&self) -> PathBuf {
        self.root.join(".templates")
    }

    fn snapshots(&self) -> PathBuf {
        snapshot::dir_for(&self.path)
    }
}

/// `btrfs subvolume snapshot [-r] FROM TO`.
fn snapshot_of(volume: &str, from: &Path, to: &Path, read_only: bool, step: &'static str) -> Result<(), StorageError> {
    sys::btrfs::snapshot(from, to, read_only).map_err(io_err(volume, step, to))
}

struct SubvolumeCache<'a>(&'a str);

impl CacheOps for SubvolumeCache<'_> {
    fn create(&self, path: &Path) -> Result<(), StorageError> {
        create(self.0, path)
    }
    fn seal(&self, path: &Path) -> Result<(), StorageError> {
        sys::btrfs::set_read_only(path).map_err(io_err(self.0, "make read-only the template subvolume", path))
    }
    fn discard(&self, path: &Path) -> Result<(), StorageError> {
        delete(self.0, path)
    }
}

impl Volume for Btrfs {
    fn define(&mut self) -> Result<(), StorageError> {
        if is_subvolume(&self.path) {
            return Ok(());
        }
        std::fs::create_dir_all(&self.root).map_err(io_err(&self.volume, "create", &self.root))?;
        if !on_btrfs(&self.root) {
            return Err(StorageError::State {
                volume: self.volume.clone(),
                step: "define",
                problem: format!("{} is not on a btrfs file system; set the storage type's root to a directory on btrfs", self.root.display()),
            });
        }
        if self.path.exists() {
            return Err(StorageError::State {
                volume: self.volume.clone(),
                step: "define",
                problem: format!("{} exists and is not a subvolume; move it away", self.path.display()),
            });
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(&self.volume, "create", dir))?;
        }
        create(&self.volume, &self.path)
    }

    fn activate(&mut self) -> Result<(), StorageError> {
        if is_subvolume(&self.path) {
            Ok(())
        } else {
            Err(StorageError::State { volume: self.volume.clone(), step: "activate", problem: format!("subvolume {} does not exist; define it first", self.path.display()) })
        }
    }

    fn deactivate(&mut self) -> Result<(), StorageError> {
        Ok(())
    }

    fn undefine(&mut self) -> Result<(), StorageError> {
        let snaps = self.snapshots();
        if let Ok(rd) = std::fs::read_dir(&snaps) {
            for e in rd.flatten() {
                delete(&self.volume, &e.path())?;
            }
        }
        snapshot::remove_all(&self.volume, &snaps)?;
        // What an interrupted restore may have left beside the volume.
        delete(&self.volume, &snapshot::with_suffix(&self.path, ".restore"))?;
        delete(&self.volume, &snapshot::with_suffix(&self.path, ".old"))?;
        delete(&self.volume, &self.path)?;
        if let Some(dir) = self.path.parent() {
            remove_if_empty(dir);
        }
        Ok(())
    }

    fn format(&mut self) -> Result<(), StorageError> {
        if !is_subvolume(&self.path) {
            return self.define();
        }
        // An empty volume is a fresh subvolume; this also drops a snapshot's
        // link to its template.
        delete(&self.volume, &self.path)?;
        create(&self.volume, &self.path)
    }

    fn is_active(&self) -> bool {
        false
    }

    fn provides(&self) -> Provides {
        Provides::directory(self.path.clone())
    }

    fn exists(&self) -> bool {
        is_subvolume(&self.path)
    }

    fn record(&self) -> serde_json::Value {
        serde_json::json!({"driver": "btrfs", "path": self.path})
    }

    fn usage(&self) -> VolumeUsage {
        VolumeUsage { size_bytes: None, used_bytes: self.exists().then(|| crate::sys::fsutil::du_cached(&self.path, &self.usage_cache)) }
    }

    fn describe(&self) -> String {
        format!("btrfs subvolume {}", self.path.display())
    }

    fn clone_template(&mut self, template: &Template, _durable: bool) -> Result<bool, StorageError> {
        let source = template_cache::ensure(&self.volume, &self.templates(), template, &SubvolumeCache(&self.volume))?;
        // The volume is empty (the manager only installs onto an empty
        // one); replace it by a writable snapshot of the template.
        empty_dir(&self.volume, &self.path)?;
        delete(&self.volume, &self.path)?;
        if let Err(e) = snapshot_of(&self.volume, &source, &self.path, false, "snapshot the template to") {
            // Leave an empty volume, as before.
            if let Err(c) = create(&self.volume, &self.path) {
                tracing::warn!(volume = %self.volume, error = %c, "cannot re-create the empty subvolume");
            }
            return Err(e);
        }
        Ok(true)
    }

    fn snapshot(&mut self, name: &SnapshotName) -> Result<Option<u64>, StorageError> {
        let dir = self.snapshots();
        std::fs::create_dir_all(&dir).map_err(io_err(&self.volume, "create", &dir))?;
        let target = dir.join(name.as_str());
        delete(&self.volume, &target)?;
        snapshot_of(&self.volume, &self.path, &target, true, "snapshot subvolume")?;
        Ok(None)
    }

    fn restore(&mut self, name: &SnapshotName) -> Result<(), StorageError> {
        let source = self.snapshots().join(name.as_str());
        if !is_subvolume(&source) {
            return Err(snapshot::missing(&self.volume, name));
        }
        let fresh = snapshot::with_suffix(&self.path, ".restore");
        delete(&self.volume, &fresh)?;
        snapshot_of(&self.volume, &source, &fresh, false, "snapshot the snapshot")?;
        snapshot::swap_in(&self.volume, &fresh, &self.path, |p| delete(&self.volume, p))
    }

    fn delete_snapshot(&mut self, name: &SnapshotName) -> Result<(), StorageError> {
        let dir = self.snapshots();
        delete(&self.volume, &dir.join(name.as_str()))?;
        remove_if_empty(&dir);
        if let Some(parent) = dir.parent() {
            remove_if_empty(parent);
        }
        Ok(())
    }
}

impl super::Driver for Btrfs {
    const NAME: &'static str = "btrfs";
    const DEFAULT_ROOT: Option<&'static str> = Some("var/lib/geats/btrfs");

    fn open(ctx: &VolumeCtx<'_>) -> Result<Self, StorageError> {
        Btrfs::new(ctx)
    }
}
