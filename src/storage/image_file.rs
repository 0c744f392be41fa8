//! What the file-backed drivers (`sparsefile`, `qcow2`) share: an image
//! file `ROOT/VM/VOLUME.EXT` of the definition's `size` under the storage
//! type's `root`, created under a temporary name and renamed into place (a
//! crash never leaves a short file that `exists` would take for a volume),
//! provided as a file; activation has nothing to do. A driver differs only
//! in its [`Format`]: how the file is made and erased and how big it is.

use std::marker::PhantomData;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{io_err, remove_if_empty, snapshot, Provides, StorageError, Volume, VolumeCtx, VolumeUsage};
use crate::names::SnapshotName;
use crate::sys::fsutil;

/// One image format.
pub trait Format: std::fmt::Debug + 'static {
    /// The driver's name, as recorded.
    const DRIVER: &'static str;
    /// The file's extension.
    const EXT: &'static str;
    /// What it is, for step lists: "sparse image file".
    const WHAT: &'static str;
    /// Make an empty image of `size` bytes at `tmp` (which does not exist).
    fn create(volume: &str, tmp: &Path, size: u64) -> Result<(), StorageError>;
    /// The image's capacity, read from the file.
    fn virtual_size(path: &Path) -> Option<u64>;
    /// Erase an existing image in place; `None` to make a new one beside
    /// it and rename it over (the default).
    fn erase(_volume: &str, _path: &Path, _size: u64) -> Option<Result<(), StorageError>> {
        None
    }
    /// Snapshots kept inside the image (qcow2's internal snapshots):
    /// `Some` ops for a format that has them; `None` (the default) keeps
    /// each snapshot as a copy of the file, `.snapshots/VOLUME/NAME.EXT`
    /// beside it, reflinked where the file system can.
    fn internal() -> Option<&'static dyn Internal> {
        None
    }
}

/// Snapshots a format keeps inside the image file.
pub trait Internal: Sync {
    /// Does the image hold snapshot `name`?
    fn has(&self, volume: &str, path: &Path, name: &SnapshotName) -> Result<bool, StorageError>;
    /// Take it (the image holds none of that name).
    fn create(&self, volume: &str, path: &Path, name: &SnapshotName) -> Result<(), StorageError>;
    /// Revert the image to it.
    fn apply(&self, volume: &str, path: &Path, name: &SnapshotName) -> Result<(), StorageError>;
    /// Remove it.
    fn delete(&self, volume: &str, path: &Path, name: &SnapshotName) -> Result<(), StorageError>;
}

/// An image file of format `F`.
#[derive(Debug)]
pub struct ImageFile<F: Format> {
    volume: String,
    path: PathBuf,
    size: u64,
    format: PhantomData<F>,
}

impl<F: Format> ImageFile<F> {
    /// Build from the context; no disk access. `default_root` is the
    /// driver's [`super::Driver::DEFAULT_ROOT`].
    pub fn from_ctx(ctx: &VolumeCtx<'_>, driver: &str) -> Result<ImageFile<F>, StorageError> {
        ctx.only_options(&[])?;
        let size = ctx.required_size()?;
        let root = ctx.root_setting(driver)?;
        let path = root.join(ctx.vm.as_str()).join(format!("{}.{}", ctx.name, F::EXT));
        Ok(ImageFile { volume: ctx.volume_label(), path, size, format: PhantomData })
    }

    /// Where the copy-snapshot `name` lives.
    fn snapshot_file(&self, name: &SnapshotName) -> PathBuf {
        snapshot::dir_for(&self.path).join(format!("{name}.{}", F::EXT))
    }

    /// Where [`Self::create`] makes the image before renaming it into
    /// place. One name, not one per process: the VM's lease keeps out a
    /// second writer, and a process killed half-way leaves a file that the
    /// next create replaces and undefine removes (issue 11).
    fn temp_file(&self) -> PathBuf {
        snapshot::with_suffix(&self.path, ".tmp")
    }

    /// Remove the `NAME.EXT.PID.tmp` files that binaries before the fixed
    /// [`Self::temp_file`] made, where one was killed while creating the
    /// image (found on a host upgraded after such a crash).
    fn remove_pid_temps(&self, dir: &Path) -> Result<(), StorageError> {
        let Some(name) = self.path.file_name().map(|n| n.to_string_lossy().into_owned()) else { return Ok(()) };
        let Ok(rd) = std::fs::read_dir(dir) else { return Ok(()) };
        for e in rd.flatten() {
            if e.file_name().to_str().and_then(|f| fsutil::temp_pid(f, &name, ".tmp")).is_some() {
                let path = e.path();
                fsutil::remove_file_if_exists(&path).map_err(io_err(&self.volume, "remove", &path))?;
            }
        }
        Ok(())
    }

    /// Make a fresh image beside the path and rename it into place.
    fn create(&self) -> Result<(), StorageError> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(&self.volume, "create directory", dir))?;
        }
        let tmp = self.temp_file();
        fsutil::remove_file_if_exists(&tmp).map_err(io_err(&self.volume, "remove", &tmp))?;
        let made = F::create(&self.volume, &tmp, self.size)
            .and_then(|_| std::fs::rename(&tmp, &self.path).map_err(io_err(&self.volume, "rename image into", &self.path)));
        if made.is_err() {
            let _ = fsutil::remove_file_if_exists(&tmp);
        }
        made
    }
}

impl<F: Format> Volume for ImageFile<F> {
    fn define(&mut self) -> Result<(), StorageError> {
        if self.path.is_file() {
            return Ok(());
        }
        self.create()
    }

    fn activate(&mut self) -> Result<(), StorageError> {
        if self.path.is_file() {
            Ok(())
        } else {
            Err(StorageError::State { volume: self.volume.clone(), step: "activate", problem: format!("{} does not exist; define it first", self.path.display()) })
        }
    }

    fn deactivate(&mut self) -> Result<(), StorageError> {
        Ok(())
    }

    fn undefine(&mut self) -> Result<(), StorageError> {
        snapshot::remove_all(&self.volume, &snapshot::dir_for(&self.path))?;
        for leftover in [snapshot::with_suffix(&self.path, ".restore"), snapshot::with_suffix(&self.path, ".old"), self.temp_file()] {
            fsutil::remove_file_if_exists(&leftover).map_err(io_err(&self.volume, "remove", &leftover))?;
        }
        fsutil::remove_file_if_exists(&self.path).map_err(io_err(&self.volume, "remove", &self.path))?;
        if let Some(dir) = self.path.parent() {
            self.remove_pid_temps(dir)?;
            remove_if_empty(dir);
        }
        Ok(())
    }

    fn format(&mut self) -> Result<(), StorageError> {
        if !self.path.is_file() {
            return self.create();
        }
        F::erase(&self.volume, &self.path, self.size).unwrap_or_else(|| self.create())
    }

    fn is_active(&self) -> bool {
        false
    }

    fn provides(&self) -> Provides {
        Provides::file(self.path.clone())
    }

    fn exists(&self) -> bool {
        self.path.is_file()
    }

    fn record(&self) -> serde_json::Value {
        serde_json::json!({"driver": F::DRIVER, "path": self.path, "size": self.size})
    }

    fn usage(&self) -> VolumeUsage {
        match std::fs::metadata(&self.path) {
            Ok(m) => VolumeUsage { size_bytes: F::virtual_size(&self.path).or(Some(m.len())), used_bytes: Some(m.blocks() * 512) },
            Err(_) => VolumeUsage::default(),
        }
    }

    fn describe(&self) -> String {
        format!("{} {} of {} bytes", F::WHAT, self.path.display(), self.size)
    }

    fn snapshot(&mut self, name: &SnapshotName) -> Result<Option<u64>, StorageError> {
        if let Some(int) = F::internal() {
            if int.has(&self.volume, &self.path, name)? {
                int.delete(&self.volume, &self.path, name)?;
            }
            int.create(&self.volume, &self.path, name)?;
            return Ok(None);
        }
        let target = self.snapshot_file(name);
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(&self.volume, "create", dir))?;
        }
        snapshot::copy_file(&self.volume, &self.path, &target)?;
        Ok(std::fs::metadata(&target).ok().map(|m| m.blocks() * 512))
    }

    fn restore(&mut self, name: &SnapshotName) -> Result<(), StorageError> {
        if let Some(int) = F::internal() {
            if !int.has(&self.volume, &self.path, name)? {
                return Err(snapshot::missing(&self.volume, name));
            }
            return int.apply(&self.volume, &self.path, name);
        }
        let source = self.snapshot_file(name);
        if !source.is_file() {
            return Err(snapshot::missing(&self.volume, name));
        }
        snapshot::restore_file(&self.volume, &source, &self.path)
    }

    fn delete_snapshot(&mut self, name: &SnapshotName) -> Result<(), StorageError> {
        if let Some(int) = F::internal() {
            if self.path.is_file() && int.has(&self.volume, &self.path, name)? {
                int.delete(&self.volume, &self.path, name)?;
            }
            return Ok(());
        }
        let file = self.snapshot_file(name);
        fsutil::remove_file_if_exists(&file).map_err(io_err(&self.volume, "remove", &file))?;
        let dir = snapshot::dir_for(&self.path);
        remove_if_empty(&dir);
        if let Some(parent) = dir.parent() {
            remove_if_empty(parent);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sparsefile::Raw;

    /// A process killed between making the image under its temp name and
    /// renaming it leaves the temp file: the next define makes the image
    /// anyway, and undefine (a rollback's, too) leaves no directory.
    #[test]
    fn a_killed_create_leaves_nothing_that_define_or_undefine_keeps() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("vm1");
        let mut img: ImageFile<Raw> = ImageFile { volume: "vm1/root".into(), path: dir.join("root.img"), size: 1 << 20, format: PhantomData };
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(img.temp_file(), "half").unwrap();
        img.undefine().unwrap();
        assert!(!dir.exists(), "undefine after a killed create left {:?}", std::fs::read_dir(&dir).map(|rd| rd.count()));

        // An older binary's temp name, with its pid, and a file that is
        // not a temp of this volume.
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("root.img.4242.tmp"), "half").unwrap();
        std::fs::write(dir.join("root.img.x.tmp"), "someone's").unwrap();
        img.undefine().unwrap();
        assert_eq!(std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect::<Vec<_>>(), ["root.img.x.tmp"]);
        std::fs::remove_dir_all(&dir).unwrap();

        std::fs::create_dir(&dir).unwrap();
        std::fs::write(img.temp_file(), "half").unwrap();
        img.define().unwrap();
        assert_eq!(std::fs::metadata(dir.join("root.img")).unwrap().len(), 1 << 20);
        assert!(!img.temp_file().exists());
        img.undefine().unwrap();
        assert!(!dir.exists());
    }
}
