//! The `sparsefile` driver: a sparse raw image file `ROOT/VM/VOLUME.img`
//! of the definition's `size` under the storage type's `root` (default
//! `ROOT/var/lib/geats/images`). Provides a file; with the `loop` adapter
//! a block device, and with `loop` + `filesystem` a directory.
//!
//! Settings: `root`. Options: none (`size` is required).

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use super::{io_err, remove_if_empty, Provides, StorageError, Volume, VolumeCtx, VolumeUsage};

/// A sparse image file.
#[derive(Debug)]
pub struct SparseFile {
    volume: String,
    path: PathBuf,
    size: u64,
}

impl SparseFile {
    /// Build from the context; no disk access.
    pub fn new(ctx: &VolumeCtx<'_>) -> Result<SparseFile, StorageError> {
        ctx.only_options(&[])?;
        let size = ctx.required_size()?;
        let root = ctx.root_setting("sparsefile")?;
        let path = root.join(ctx.vm.as_str()).join(format!("{}.img", ctx.name));
        Ok(SparseFile { volume: ctx.volume_label(), path, size })
    }

    /// Make the file `size` bytes long with no blocks allocated.
    fn punch(&self) -> Result<(), StorageError> {
        let f = std::fs::OpenOptions::new().write(true).open(&self.path).map_err(io_err(&self.volume, "open", &self.path))?;
        f.set_len(0).and_then(|_| f.set_len(self.size)).map_err(io_err(&self.volume, "truncate", &self.path))
    }
}

impl Volume for SparseFile {
    fn define(&mut self) -> Result<(), StorageError> {
        if self.path.is_file() {
            return Ok(());
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(&self.volume, "create directory", dir))?;
        }
        // Create under a temporary name and rename, so a crash never leaves
        // a short file that `exists` would take for a volume.
        let tmp = self.path.with_extension(format!("img.{}.tmp", std::process::id()));
        let made = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .and_then(|f| f.set_len(self.size).and_then(|_| f.sync_all()))
            .and_then(|_| std::fs::rename(&tmp, &self.path));
        if let Err(source) = made {
            let _ = std::fs::remove_file(&tmp);
            return Err(StorageError::Io { volume: self.volume.clone(), step: "create image file", path: self.path.clone(), source });
        }
        Ok(())
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
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(StorageError::Io { volume: self.volume.clone(), step: "remove", path: self.path.clone(), source }),
        }
        if let Some(dir) = self.path.parent() {
            remove_if_empty(dir);
        }
        Ok(())
    }

    fn format(&mut self) -> Result<(), StorageError> {
        if self.path.is_file() {
            self.punch()
        } else {
            self.define()
        }
    }

    fn is_active(&self) -> bool {
        false
    }

    fn provides(&self) -> Provides {
        Provides { file: Some(self.path.clone()), ..Provides::default() }
    }

    fn exists(&self) -> bool {
        self.path.is_file()
    }

    fn record(&self) -> serde_json::Value {
        serde_json::json!({"driver": "sparsefile", "path": self.path, "size": self.size})
    }

    fn usage(&self) -> VolumeUsage {
        match std::fs::metadata(&self.path) {
            Ok(m) => VolumeUsage { size_bytes: Some(m.len()), used_bytes: Some(m.blocks() * 512) },
            Err(_) => VolumeUsage::default(),
        }
    }

    fn describe(&self) -> String {
        format!("sparse image file {} of {} bytes", self.path.display(), self.size)
    }
}
